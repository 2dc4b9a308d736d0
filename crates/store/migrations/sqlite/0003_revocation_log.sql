-- The durable log behind the revocation feed: every node appends what it revoked and polls
-- for what the others did. AUTOINCREMENT keeps sequence numbers strictly increasing even
-- after pruning, so a cursor never sees a reused number.
CREATE TABLE revocation_events (
    seq   INTEGER PRIMARY KEY AUTOINCREMENT,
    at    INTEGER NOT NULL,
    event TEXT    NOT NULL
);
CREATE INDEX revocation_events_at ON revocation_events (at);
