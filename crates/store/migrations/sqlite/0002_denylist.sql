-- Revocation state that is read in bulk (cache warming) or cleaned up periodically.

-- The access-token `jti` denylist (SPEC §5). A row matters only until its token's `exp`, after
-- which pruning deletes it, so the table holds at most the tokens alive at once.
CREATE TABLE denied_jtis (
    jti        TEXT    NOT NULL PRIMARY KEY,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
-- Pruning and the cache-warming scan both select by expiry.
CREATE INDEX denied_jtis_by_expires_at ON denied_jtis (expires_at);

-- Recent revocations and epochs, for warming a revocation cache. Most sessions are never
-- revoked, so the partial index holds only the revoked ones.
CREATE INDEX sessions_by_revoked_at ON sessions (revoked_at) WHERE revoked_at IS NOT NULL;
CREATE INDEX users_by_tokens_valid_after ON users (tokens_valid_after);
