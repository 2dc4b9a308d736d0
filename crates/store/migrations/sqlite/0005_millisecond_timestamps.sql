-- Timestamps move from whole Unix seconds to Unix milliseconds, so expiry, refresh grace and
-- epochs compare at that resolution. Every stored time is multiplied by 1000; the idle timeout
-- becomes milliseconds too. NULLs stay NULL, and epoch 0 (never bumped) stays 0.

UPDATE users SET
    created_at = created_at * 1000,
    tokens_valid_after = tokens_valid_after * 1000;

ALTER TABLE sessions RENAME COLUMN idle_timeout_secs TO idle_timeout_ms;
UPDATE sessions SET
    created_at = created_at * 1000,
    last_seen_at = last_seen_at * 1000,
    idle_timeout_ms = idle_timeout_ms * 1000,
    expires_at = expires_at * 1000,
    revoked_at = revoked_at * 1000;

UPDATE refresh_tokens SET
    issued_at = issued_at * 1000,
    rotated_at = rotated_at * 1000;

UPDATE signing_keys SET
    created_at = created_at * 1000,
    retired_at = retired_at * 1000;

UPDATE admin_keys SET
    created_at = created_at * 1000,
    revoked_at = revoked_at * 1000;

UPDATE denied_jtis SET expires_at = expires_at * 1000;

UPDATE revocation_events SET at = at * 1000;

UPDATE webhook_outbox SET
    next_attempt_at = next_attempt_at * 1000,
    created_at = created_at * 1000,
    delivered_at = delivered_at * 1000,
    given_up_at = given_up_at * 1000;
