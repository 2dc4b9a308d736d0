//! Push-based revocation feeds: PostgreSQL `LISTEN/NOTIFY` and Redis pub/sub (SPEC §5, §6).
//!
//! A push channel carries no revocation, only "look now": the durable log in the store stays
//! the one truth, so a message lost on the wire, a dropped connection or a flushed Redis can
//! delay a node but never make it miss a revocation. [`PushFeed`] follows the log exactly as
//! the polling [`StoreFeed`](crate::revocation::StoreFeed) does, and waits on a [`Bell`]
//! between reads instead of sleeping.
//!
//! Trust is the subtle part. A push channel can be down, or worse, silent: a LISTEN connection
//! whose peer vanished can stay "open" for minutes without an error. So each node sends itself
//! a heartbeat over the channel, and the driver that owns the connection declares the bell
//! lost when its own heartbeat has not come back within the heartbeat timeout. Every
//! (re)connection, resubscription or recovery from a missed heartbeat starts a new
//! *generation*; a follower trusts the feed only after a read of the log that began and ended
//! within one healthy generation, so after any break it resynchronises from the log before it
//! trusts the feed again. While the bell is down the follower still reads the log (at the
//! polling interval) and applies what it finds, but no longer vouches for freshness: after
//! `max_staleness` the node verifies strictly against the store until the bell is back.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::model::{RevocationEvent, Timestamp};
use crate::revocation::{FeedStatus, RevocationFeed};
use crate::store::{Store, StoreError};

/// Events read from the log per round.
const LOG_BATCH: u32 = 1_000;

/// The state of one push channel, written by the driver task that owns its connection and
/// read by the node's follower. Drivers live with their client crates (`tessera-store`).
pub struct Bell {
    name: &'static str,
    healthy: AtomicBool,
    generation: AtomicU64,
    reconnects: AtomicU64,
    /// Rung when another node's commit asks this node to look; one stored permit coalesces
    /// rings that arrive while the follower is reading.
    inbound: Notify,
    /// Rung by this node's commits; the driver publishes (a bell whose store announces
    /// commits itself, like PostgreSQL's transactional NOTIFY, ignores it).
    outbound: Notify,
}

impl Bell {
    /// A bell that is down until its driver reports a connection.
    pub fn new(name: &'static str) -> Arc<Self> {
        Arc::new(Self {
            name,
            healthy: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            inbound: Notify::new(),
            outbound: Notify::new(),
        })
    }

    /// Driver: the channel is subscribed and heard. Starts a new generation, so followers
    /// read the log once more before they trust it; also rings, so they do so at once.
    pub fn connected(&self) {
        if self.generation.fetch_add(1, Ordering::AcqRel) > 0 {
            self.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        self.healthy.store(true, Ordering::Release);
        self.inbound.notify_one();
    }

    /// Driver: the connection dropped, or the heartbeat did not come back in time.
    pub fn lost(&self) {
        self.healthy.store(false, Ordering::Release);
        // Wakes a follower waiting on the bell, so it falls back to polling at once.
        self.inbound.notify_one();
    }

    /// Driver: another node (or this one) committed revocations.
    pub fn rang(&self) {
        self.inbound.notify_one();
    }

    /// Driver: waits until this node has committed something to announce.
    pub async fn to_announce(&self) {
        self.outbound.notified().await;
    }

    /// Follower: asks the driver to tell every node that this one committed revocations.
    pub fn announce(&self) {
        self.outbound.notify_one();
    }

    /// Follower: waits up to `wait` for a ring (or a change of health); whether one came.
    pub async fn wait_for_ring(&self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.inbound.notified())
            .await
            .is_ok()
    }

    /// The generation when healthy, `None` when down.
    pub fn health(&self) -> Option<u64> {
        self.healthy
            .load(Ordering::Acquire)
            .then(|| self.generation.load(Ordering::Acquire))
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// How often the channel was re-established after its first connection.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }
}

/// How often a driver sends its heartbeat, and how long it waits for its own heartbeat to come
/// back before it declares the channel lost: both derived from `max_staleness`, so a silent
/// connection is found well within the bound (SPEC §5) and the node falls back to `strict`
/// before a stale cache could matter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    pub interval: Duration,
    pub timeout: Duration,
}

impl Heartbeat {
    pub fn for_staleness(max_staleness: Duration) -> Self {
        let interval = (max_staleness / 5).clamp(Duration::from_millis(20), Duration::from_secs(1));
        Self {
            interval,
            timeout: (interval * 3).min(max_staleness / 2).max(interval * 2),
        }
    }
}

/// The revocation feed over the store's log, woken by a [`Bell`]; see the module
/// documentation.
pub struct PushFeed {
    store: Arc<dyn Store>,
    bell: Arc<Bell>,
    /// How long a follower waits on a healthy bell before it reads the log anyway: a bound on
    /// what a lost message can cost.
    safety_poll: Duration,
    /// How often the log is read while the bell is down.
    degraded_poll: Duration,
    trusted: AtomicBool,
    resyncs: AtomicU64,
}

impl PushFeed {
    pub fn new(
        store: Arc<dyn Store>,
        bell: Arc<Bell>,
        safety_poll: Duration,
        degraded_poll: Duration,
    ) -> Self {
        Self {
            store,
            bell,
            safety_poll,
            degraded_poll,
            trusted: AtomicBool::new(false),
            resyncs: AtomicU64::new(0),
        }
    }

    /// Trust is earned by a read that began and ended within one healthy generation.
    fn judge(&self, before: Option<u64>) {
        let trusted = before.is_some() && self.bell.health() == before;
        self.trusted.store(trusted, Ordering::Release);
    }
}

#[async_trait]
impl RevocationFeed for PushFeed {
    fn wake(&self) {
        self.bell.announce();
    }

    async fn cursor(&self) -> Result<u64, StoreError> {
        self.resyncs.fetch_add(1, Ordering::Relaxed);
        let before = self.bell.health();
        let position = self.store.latest_event().await?;
        self.judge(before);
        Ok(position)
    }

    async fn next(
        &self,
        cursor: u64,
        wait: Duration,
    ) -> Result<Vec<(u64, Timestamp, RevocationEvent)>, StoreError> {
        let before = self.bell.health();
        let mut events = self.store.events_after(cursor, LOG_BATCH).await?;
        if events.is_empty() {
            if before.is_some() {
                self.bell.wait_for_ring(self.safety_poll.min(wait)).await;
            } else {
                tokio::time::sleep(self.degraded_poll.min(wait)).await;
            }
            events = self.store.events_after(cursor, LOG_BATCH).await?;
        }
        self.judge(before);
        Ok(events)
    }

    fn trusted(&self) -> bool {
        self.trusted.load(Ordering::Acquire)
    }

    fn status(&self) -> FeedStatus {
        FeedStatus {
            name: self.bell.name(),
            connected: self.bell.health().is_some(),
            reconnects: self.bell.reconnects(),
            resyncs: self.resyncs.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn generations_start_at_each_connection_and_count_reconnects() {
        let bell = Bell::new("test");
        assert_eq!(bell.health(), None, "down until its driver connects");
        bell.connected();
        assert_eq!(bell.health(), Some(1));
        assert_eq!(bell.reconnects(), 0, "the first connection is no reconnect");
        bell.lost();
        assert_eq!(bell.health(), None);
        bell.connected();
        assert_eq!(bell.health(), Some(2));
        assert_eq!(bell.reconnects(), 1);
    }

    #[test]
    fn heartbeats_find_a_silent_channel_within_the_staleness_bound() {
        for staleness in [100, 1_000, 5_000, 60_000] {
            let bound = Duration::from_millis(staleness);
            let beat = Heartbeat::for_staleness(bound);
            assert!(beat.interval < beat.timeout, "{beat:?}");
            // Lost is declared, and the next beat sent, before the bound runs out.
            assert!(
                beat.timeout + beat.interval < bound,
                "{staleness} ms: {beat:?}"
            );
        }
    }
}
