//! Counters the domain alone can see (a reuse detection looks like any `invalid_grant` from
//! outside). The server renders them with its own request metrics; no exporter crate here.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Counters {
    pub logins_ok: AtomicU64,
    pub logins_failed: AtomicU64,
    /// Login, password-grant and sign-up attempts refused by the guessing limits.
    pub throttled: AtomicU64,
    pub refreshes: AtomicU64,
    pub reuse_detections: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// The state of revocation checking on this node, for `/readyz` and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevocationStatus {
    pub mode: crate::config::RevocationMode,
    /// `cached` only: the feed was heard within `max_staleness`, so the cache is trusted.
    /// Always `true` in the other modes, which do not depend on the feed.
    pub fresh: bool,
    /// Milliseconds since the feed was last heard (0 when no feed is used).
    pub feed_silence_ms: u64,
    /// Milliseconds between the last applied revocation event's creation and its application
    /// on this node: the revocation lag.
    pub last_lag_ms: u64,
    /// What carries the feed and how it fares; followed in every mode (withdrawn keys).
    pub feed: crate::revocation::FeedStatus,
}
