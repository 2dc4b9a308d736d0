-- Deleting a user deletes their sessions and refresh tokens, and with them the revocations a
-- node reads when it warms its cache; a deleted user's access tokens must still be refused
-- until they expire. One row per deleted user keeps the id and its last epoch (bumped at the
-- deletion, so every token issued before is dead by it) for as long as such a token can live.
CREATE TABLE deleted_users (
    id                 TEXT    NOT NULL PRIMARY KEY,
    tokens_valid_after INTEGER NOT NULL,
    deleted_at         INTEGER NOT NULL
);
CREATE INDEX deleted_users_by_tokens_valid_after ON deleted_users (tokens_valid_after);
CREATE INDEX deleted_users_by_deleted_at ON deleted_users (deleted_at);
