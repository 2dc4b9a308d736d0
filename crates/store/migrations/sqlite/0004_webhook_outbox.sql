-- The webhook outbox (SPEC §3): one row per (event, endpoint), inserted in the transaction of
-- the change the event reports, so the two commit or vanish together. Delivery is
-- at-least-once: a row stops being due only when it is delivered or given up, so a crash or
-- restart at any point sends it again rather than losing it.
CREATE TABLE webhook_outbox (
    id              TEXT    NOT NULL PRIMARY KEY,
    -- The body's `id`, shared by every endpoint's copy of one event.
    event_id        TEXT    NOT NULL,
    -- The endpoint's URL as configured; its secret is looked up in the configuration at
    -- delivery time and never stored here.
    endpoint        TEXT    NOT NULL,
    event_type      TEXT    NOT NULL,
    -- The exact JSON POSTed, `{id, type, created_at, data}`: ids, times and roles, nothing
    -- secret.
    body            TEXT    NOT NULL,
    -- Failed attempts so far.
    attempts        INTEGER NOT NULL DEFAULT 0,
    -- Due from then: the change's time at first, later the backoff or a worker's claim.
    next_attempt_at INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    delivered_at    INTEGER,
    given_up_at     INTEGER,
    -- Why the last attempt failed, in a few words (never the body).
    last_error      TEXT
);
-- Workers poll for due rows; delivered and abandoned ones stay out of the index.
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at)
    WHERE delivered_at IS NULL AND given_up_at IS NULL;
