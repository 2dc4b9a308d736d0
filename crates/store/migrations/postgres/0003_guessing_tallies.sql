-- The guessing limits' tallies (SPEC §2, §7), one per counted subject (an account's email
-- hash, a client address, a device), shared by every node so that one limit holds across
-- them. A row past `expires_at` counts for nothing and is pruned, so the table holds at most
-- the subjects attempted within about one window.
CREATE TABLE guessing_tallies (
    key         TEXT   NOT NULL PRIMARY KEY,
    count       BIGINT NOT NULL,
    window_ends BIGINT NOT NULL,
    last_at     BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX guessing_tallies_by_expires_at ON guessing_tallies (expires_at);
