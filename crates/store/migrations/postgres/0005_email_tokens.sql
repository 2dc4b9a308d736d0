-- Email verification and recovery by email (SPEC §3 "Account lifecycle").

-- When the user proved they read mail at their address; NULL until then. Unix milliseconds.
ALTER TABLE users ADD COLUMN email_verified_at BIGINT;

-- The tokens of mailed links, stored as their SHA-256 only: the database never holds a usable
-- link. `spent_at` is set when a token is used or superseded by a newer one of its purpose.
CREATE TABLE email_tokens (
    id         UUID   NOT NULL PRIMARY KEY,
    user_id    UUID   NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose    TEXT   NOT NULL CHECK (purpose IN ('recovery', 'verification')),
    hash       BYTEA  NOT NULL CHECK (length(hash) = 32),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    spent_at   BIGINT
);
CREATE UNIQUE INDEX email_tokens_by_hash ON email_tokens (hash);
CREATE INDEX email_tokens_unspent_by_user ON email_tokens (user_id, purpose) WHERE spent_at IS NULL;
CREATE INDEX email_tokens_by_expires_at ON email_tokens (expires_at);
