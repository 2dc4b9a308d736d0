-- Tessera's PostgreSQL schema: in one step, the schema SQLite reaches after its five
-- migrations. Timestamps are BIGINT Unix milliseconds (the core's resolution, so every backend
-- compares the same integers), identifiers are native UUIDs (16 bytes, and the same text the
-- API shows when printed), and secret hashes are 32-byte SHA-256 BYTEA: the database never
-- holds a usable cookie, refresh token or admin key.
--
-- SQLite orders ties by its implicit `rowid`; PostgreSQL has none, so the tables whose lists
-- promise an order (users, sessions, signing keys, the outbox) carry `row_seq`, an identity
-- column that plays the same part: the order rows were inserted in.

CREATE TABLE users (
    id                 UUID   NOT NULL PRIMARY KEY,
    -- Normalised by the core (trimmed, NFKC, lower-cased), so plain equality is the rule.
    email              TEXT   NOT NULL,
    password_hash      TEXT   NOT NULL,
    -- TEXT[] rather than JSONB: an array of strings is exactly what roles are, it round-trips
    -- any character (commas and quotes included) without a serialiser on either side, and
    -- psql shows it readably. A NULL element could not be read back, so none is admitted.
    roles              TEXT[] NOT NULL DEFAULT '{}' CHECK (array_position(roles, NULL) IS NULL),
    created_at         BIGINT NOT NULL,
    -- The per-user epoch (SPEC §5); only ever raised.
    tokens_valid_after BIGINT NOT NULL,
    row_seq            BIGINT NOT NULL GENERATED ALWAYS AS IDENTITY
);
CREATE UNIQUE INDEX users_by_email ON users (email);
CREATE INDEX users_by_created_at ON users (created_at, row_seq);
-- Recent epochs, for warming a revocation cache.
CREATE INDEX users_by_tokens_valid_after ON users (tokens_valid_after);

CREATE TABLE sessions (
    id              UUID   NOT NULL PRIMARY KEY,
    user_id         UUID   NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- SHA-256 of the cookie secret; NULL for token sessions (NULLs never collide in a
    -- UNIQUE index, and pass the CHECK).
    secret_hash     BYTEA  CHECK (octet_length(secret_hash) = 32),
    via             TEXT   NOT NULL CHECK (via IN ('cookie', 'token')),
    created_at      BIGINT NOT NULL,
    last_seen_at    BIGINT NOT NULL,
    idle_timeout_ms BIGINT NOT NULL CHECK (idle_timeout_ms >= 0),
    expires_at      BIGINT NOT NULL,
    user_agent      TEXT,
    ip              TEXT,
    revoked_at      BIGINT,
    row_seq         BIGINT NOT NULL GENERATED ALWAYS AS IDENTITY
);
CREATE UNIQUE INDEX sessions_by_secret_hash ON sessions (secret_hash);
CREATE INDEX sessions_by_user ON sessions (user_id, created_at);
-- Recent revocations, for warming a revocation cache. Most sessions are never revoked, so the
-- partial index holds only the revoked ones.
CREATE INDEX sessions_by_revoked_at ON sessions (revoked_at) WHERE revoked_at IS NOT NULL;

-- One row per refresh token ever issued; a family is the set of rows of one session.
CREATE TABLE refresh_tokens (
    hash       BYTEA  NOT NULL PRIMARY KEY CHECK (octet_length(hash) = 32),
    session_id UUID   NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    issued_at  BIGINT NOT NULL,
    -- Set, together with `successor`, when the token is exchanged (RFC 9700 §4.14.2).
    rotated_at BIGINT,
    successor  BYTEA  CHECK (octet_length(successor) = 32)
);
CREATE INDEX refresh_tokens_by_session ON refresh_tokens (session_id);

CREATE TABLE signing_keys (
    kid            TEXT   NOT NULL PRIMARY KEY,
    alg            TEXT   NOT NULL,
    -- Nonce and AEAD ciphertext under the master key: never the plain private key.
    sealed_private BYTEA  NOT NULL,
    public_jwk     TEXT,
    created_at     BIGINT NOT NULL,
    retired_at     BIGINT,
    row_seq        BIGINT NOT NULL GENERATED ALWAYS AS IDENTITY
);
CREATE INDEX signing_keys_by_created_at ON signing_keys (created_at, row_seq);

CREATE TABLE admin_keys (
    id         UUID   NOT NULL PRIMARY KEY,
    name       TEXT   NOT NULL,
    hash       BYTEA  NOT NULL CHECK (octet_length(hash) = 32),
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE UNIQUE INDEX admin_keys_by_hash ON admin_keys (hash);

-- The access-token `jti` denylist (SPEC §5). A row matters only until its token's `exp`, after
-- which pruning deletes it, so the table holds at most the tokens alive at once.
CREATE TABLE denied_jtis (
    jti        TEXT   NOT NULL PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
-- Pruning and the cache-warming scan both select by expiry.
CREATE INDEX denied_jtis_by_expires_at ON denied_jtis (expires_at);

-- The durable log behind the revocation feed: every node appends what it revoked and reads
-- what the others did. A sequence never hands out a number twice, also after pruning, so a
-- cursor never sees a reused position. Its cache stays at 1 (one number per call, from the
-- shared sequence): with a per-connection cache, two connections would hold separate ranges
-- and hand out positions out of order, which no lock around the append could put right.
-- Appenders serialise on an advisory lock until they commit (see `postgres.rs`), so positions
-- also become visible in order.
CREATE TABLE revocation_events (
    seq   BIGINT NOT NULL GENERATED ALWAYS AS IDENTITY (CACHE 1) PRIMARY KEY,
    at    BIGINT NOT NULL,
    -- JSONB rather than TEXT: the server checks it is JSON, and an operator can query it
    -- (`event->>'type'`); the feed reads it back through serde, so key order does not matter.
    event JSONB  NOT NULL
);
CREATE INDEX revocation_events_at ON revocation_events (at);

-- The webhook outbox (SPEC §3): one row per (event, endpoint), inserted in the transaction of
-- the change the event reports, so the two commit or vanish together. Delivery is
-- at-least-once: a row stops being due only when it is delivered or given up, so a crash or
-- restart at any point sends it again rather than losing it.
CREATE TABLE webhook_outbox (
    id              UUID   NOT NULL PRIMARY KEY,
    -- The body's `id`, shared by every endpoint's copy of one event.
    event_id        UUID   NOT NULL,
    -- The endpoint's URL as configured; its secret is looked up in the configuration at
    -- delivery time and never stored here.
    endpoint        TEXT   NOT NULL,
    event_type      TEXT   NOT NULL,
    -- The exact JSON POSTed, `{id, type, created_at, data}`: ids, times and roles, nothing
    -- secret. TEXT, not JSONB: the bytes signed and sent must be the bytes stored, and JSONB
    -- would reorder keys and drop whitespace.
    body            TEXT   NOT NULL,
    -- Failed attempts so far.
    attempts        BIGINT NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- Due from then: the change's time at first, later the backoff or a worker's claim.
    next_attempt_at BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    delivered_at    BIGINT,
    given_up_at     BIGINT,
    -- Why the last attempt failed, in a few words (never the body).
    last_error      TEXT,
    row_seq         BIGINT NOT NULL GENERATED ALWAYS AS IDENTITY
);
-- Workers poll for due rows, earliest first and ties in queueing order; delivered and
-- abandoned ones stay out of the index.
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at, row_seq)
    WHERE delivered_at IS NULL AND given_up_at IS NULL;
