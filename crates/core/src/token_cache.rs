//! The verified-access-token cache (SPEC §2 `token_cache_size`, `token_cache_ttl`).
//!
//! A client presents the same access token on every request for up to its whole lifetime, and
//! checking its signature is most of the cost of a bearer request (about 60 µs for Ed25519, far
//! more for ES256 and RS256). A node therefore remembers, for a short while, the claims of the
//! tokens it has verified, under the SHA-256 of the whole token: only the exact bytes that were
//! verified hit, and a forged token cannot be made to collide with a cached one.
//!
//! A hit replaces the signature and claim checks only. It still requires `now < exp` (without
//! the verifier's clock leeway, so a hit never serves a token past its `exp`), `nbf` within the
//! verifier's leeway, and the key ring it was verified under to still be the one in force (a
//! withdrawn key stops its tokens at once); the revocation check that follows in the caller is
//! the same for hits and misses, so a revoked token is refused on its very next request.

use std::sync::Arc;

use quick_cache::sync::Cache;

use crate::config::TokenCacheLimits;
use crate::keys::KeyRing;
use crate::model::{duration_millis, Timestamp};
use crate::secret::SecretHash;
use crate::verify::{Claims, LEEWAY_SECS, MAX_TOKEN_BYTES};

/// Claims verified once, with what a hit must still hold to stand for a fresh verification.
struct Entry {
    claims: Arc<Claims>,
    /// The key ring the signature was checked against; a hit under any other ring misses, so
    /// a rotation or withdrawal is honoured without clearing the cache.
    ring: Arc<KeyRing>,
    verified_at_ms: i64,
}

/// Bounded: at most `token_cache_size` entries, evicted by S3-FIFO, so one-off tokens (a scan,
/// or many clients each sending a token once) cannot push out the ones in steady use.
pub struct TokenCache {
    entries: Option<Cache<SecretHash, Arc<Entry>>>,
    ttl_ms: i64,
}

impl TokenCache {
    pub fn new(limits: TokenCacheLimits) -> Self {
        Self {
            entries: (limits.size > 0 && !limits.ttl.is_zero()).then(|| Cache::new(limits.size)),
            ttl_ms: duration_millis(limits.ttl),
        }
    }

    /// The key under which `token` is remembered; `None` when the cache is off, so the caller
    /// spends nothing on hashing.
    pub fn key(&self, token: &str) -> Option<SecretHash> {
        // An oversized token is refused by the verifier before any work; hashing it first
        // would only let junk cost more.
        self.entries
            .as_ref()
            .filter(|_| token.len() <= MAX_TOKEN_BYTES)
            .map(|_| SecretHash::of(token.as_bytes()))
    }

    /// The claims of a token verified under `ring` that still hold at `now`.
    pub fn get(
        &self,
        key: &SecretHash,
        ring: &Arc<KeyRing>,
        now: Timestamp,
    ) -> Option<Arc<Claims>> {
        let entries = self.entries.as_ref()?;
        let verified = entries.get(key)?;
        let now_ms = now.as_unix_millis();
        let fresh = now_ms.saturating_sub(verified.verified_at_ms) < self.ttl_ms;
        let claims = &verified.claims;
        let unexpired = now_ms < claims.exp.saturating_mul(1_000);
        let started = claims.nbf.is_none_or(|nbf| {
            nbf.saturating_sub(i64::try_from(LEEWAY_SECS).unwrap_or(i64::MAX))
                .saturating_mul(1_000)
                <= now_ms
        });
        if fresh && unexpired && started && Arc::ptr_eq(&verified.ring, ring) {
            return Some(Arc::clone(claims));
        }
        entries.remove(key);
        None
    }

    /// Remembers the claims of a token just verified under `ring` at `now`.
    /// A token already past its `exp` is not kept: no hit could serve it.
    pub fn insert(&self, key: SecretHash, claims: Arc<Claims>, ring: Arc<KeyRing>, now: Timestamp) {
        if now.as_unix_millis() >= claims.exp.saturating_mul(1_000) {
            return;
        }
        if let Some(entries) = &self.entries {
            entries.insert(
                key,
                Arc::new(Entry {
                    claims,
                    ring,
                    verified_at_ms: now.as_unix_millis(),
                }),
            );
        }
    }

    /// Drops `token`'s entry, if any.
    pub fn forget(&self, token: &str) {
        if let (Some(entries), Some(key)) = (&self.entries, self.key(token)) {
            entries.remove(&key);
        }
    }

    /// Entries held now, for tests and `tessera bench`.
    pub fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, Cache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::time::Duration;

    use super::*;
    use crate::keys::{MasterKey, SigningKey};
    use crate::verify::Algorithm;

    const NOW: i64 = 1_700_000_000;

    fn new_ring() -> Arc<KeyRing> {
        let master = MasterKey::generate();
        let now = Timestamp::from_unix(NOW);
        let sealed = SigningKey::generate(Algorithm::HS256)
            .unwrap()
            .seal(&master, now)
            .unwrap();
        Arc::new(
            KeyRing::from_sealed(
                &[sealed],
                &master,
                now,
                Duration::from_secs(900),
                "iss",
                "aud",
            )
            .unwrap(),
        )
    }

    fn claims(exp: i64, nbf: Option<i64>) -> Arc<Claims> {
        Arc::new(Claims {
            iss: "iss".into(),
            sub: "sub".into(),
            aud: "aud".into(),
            exp,
            iat: NOW,
            jti: "jti".into(),
            sid: "sid".into(),
            roles: Vec::new(),
            scope: None,
            nbf,
        })
    }

    fn cache(ttl: Duration) -> TokenCache {
        TokenCache::new(TokenCacheLimits { size: 16, ttl })
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_unix(NOW + seconds)
    }

    #[test]
    fn a_hit_needs_the_same_ring_an_unexpired_token_and_a_fresh_entry() {
        let cache = cache(Duration::from_secs(60));
        let ring = new_ring();
        let key = cache.key("token").unwrap();
        cache.insert(key, claims(NOW + 100, None), Arc::clone(&ring), at(0));
        assert!(cache.get(&key, &ring, at(1)).is_some());
        assert!(cache.key("token2") != Some(key));

        // Another ring (a rotation or a withdrawal) misses and drops the entry.
        assert!(cache.get(&key, &new_ring(), at(1)).is_none());
        assert!(cache.is_empty());

        // Past the entry's ttl.
        cache.insert(key, claims(NOW + 100, None), Arc::clone(&ring), at(0));
        assert!(cache.get(&key, &ring, at(59)).is_some());
        assert!(cache.get(&key, &ring, at(60)).is_none());

        // At `exp` itself, whatever the verifier's leeway would allow.
        cache.insert(key, claims(NOW + 10, None), Arc::clone(&ring), at(0));
        assert!(cache.get(&key, &ring, at(9)).is_some());
        assert!(cache.get(&key, &ring, at(10)).is_none());

        // `nbf` as the verifier judges it: within its leeway.
        let leeway = i64::try_from(LEEWAY_SECS).unwrap();
        cache.insert(
            key,
            claims(NOW + 100, Some(NOW + leeway + 5)),
            Arc::clone(&ring),
            at(0),
        );
        assert!(cache.get(&key, &ring, at(4)).is_none());
        cache.insert(
            key,
            claims(NOW + 100, Some(NOW + leeway + 5)),
            Arc::clone(&ring),
            at(0),
        );
        assert!(cache.get(&key, &ring, at(5)).is_some());
    }

    #[test]
    fn a_cache_of_zero_entries_or_zero_ttl_is_off_and_oversized_tokens_are_not_hashed() {
        for limits in [
            TokenCacheLimits {
                size: 0,
                ttl: Duration::from_secs(60),
            },
            TokenCacheLimits {
                size: 16,
                ttl: Duration::ZERO,
            },
        ] {
            let cache = TokenCache::new(limits);
            assert!(cache.key("token").is_none());
        }
        let cache = cache(Duration::from_secs(60));
        assert!(cache.key(&"x".repeat(MAX_TOKEN_BYTES + 1)).is_none());
    }

    #[test]
    fn the_cache_stays_within_its_size() {
        let cache = cache(Duration::from_secs(60));
        let ring = new_ring();
        for i in 0..1_000 {
            let key = cache.key(&format!("token-{i}")).unwrap();
            cache.insert(key, claims(NOW + 100, None), Arc::clone(&ring), at(0));
        }
        assert!(cache.len() <= 16, "{} entries", cache.len());
    }
}
