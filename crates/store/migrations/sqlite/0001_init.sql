-- Tessera's SQLite schema. Timestamps are INTEGER unix seconds (the resolution of JWT
-- `iat`/`exp`), identifiers are the UUID string form (readable in a shell, the same text the
-- API shows), and secret hashes are 32-byte SHA-256 BLOBs: the database never holds a usable
-- cookie, refresh token or admin key.

CREATE TABLE users (
    id                 TEXT    NOT NULL PRIMARY KEY,
    -- Normalised by the core (trimmed, NFKC, lower-cased), so plain equality is the rule.
    email              TEXT    NOT NULL,
    password_hash      TEXT    NOT NULL,
    -- JSON array of strings: roles may contain any character, including commas.
    roles              TEXT    NOT NULL DEFAULT '[]',
    created_at         INTEGER NOT NULL,
    -- The per-user epoch (SPEC §5); only ever raised.
    tokens_valid_after INTEGER NOT NULL
);
CREATE UNIQUE INDEX users_by_email ON users (email);
CREATE INDEX users_by_created_at ON users (created_at);

CREATE TABLE sessions (
    id                TEXT    NOT NULL PRIMARY KEY,
    user_id           TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- SHA-256 of the cookie secret; NULL for token sessions (NULLs never collide in a
    -- UNIQUE index).
    secret_hash       BLOB    CHECK (secret_hash IS NULL OR length(secret_hash) = 32),
    via               TEXT    NOT NULL CHECK (via IN ('cookie', 'token')),
    created_at        INTEGER NOT NULL,
    last_seen_at      INTEGER NOT NULL,
    idle_timeout_secs INTEGER NOT NULL,
    expires_at        INTEGER NOT NULL,
    user_agent        TEXT,
    ip                TEXT,
    revoked_at        INTEGER
);
CREATE UNIQUE INDEX sessions_by_secret_hash ON sessions (secret_hash);
CREATE INDEX sessions_by_user ON sessions (user_id, created_at);

-- One row per refresh token ever issued; a family is the set of rows of one session.
CREATE TABLE refresh_tokens (
    hash       BLOB    NOT NULL PRIMARY KEY CHECK (length(hash) = 32),
    session_id TEXT    NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    issued_at  INTEGER NOT NULL,
    -- Set, together with `successor`, when the token is exchanged (RFC 9700 §4.14.2).
    rotated_at INTEGER,
    successor  BLOB
) WITHOUT ROWID;
CREATE INDEX refresh_tokens_by_session ON refresh_tokens (session_id);

CREATE TABLE signing_keys (
    kid            TEXT    NOT NULL PRIMARY KEY,
    alg            TEXT    NOT NULL,
    -- Nonce and AEAD ciphertext under the master key: never the plain private key.
    sealed_private BLOB    NOT NULL,
    public_jwk     TEXT,
    created_at     INTEGER NOT NULL,
    retired_at     INTEGER
);
CREATE INDEX signing_keys_by_created_at ON signing_keys (created_at);

CREATE TABLE admin_keys (
    id         TEXT    NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    hash       BLOB    NOT NULL CHECK (length(hash) = 32),
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE UNIQUE INDEX admin_keys_by_hash ON admin_keys (hash);
