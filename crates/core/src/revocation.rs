//! Instant revocation at the speed of stateless verification (SPEC §5).
//!
//! Each node keeps, in process, exactly the revocation state that can still change a verdict:
//! sessions revoked within the last access-token lifetime, per-user epochs bumped within it,
//! and denylisted `jti`s until their `exp`. A verification in `cached` mode reads only this
//! state (three hash lookups under a read lock) and makes no store round trip.
//!
//! The state is kept current by a [`RevocationFeed`]. The node that revokes applies the event
//! to its own cache *before* answering, so the very next request anywhere on that node is
//! refused; other nodes apply it when their feed delivers it. If the feed has not been heard
//! within `max_staleness`, the cache is not trusted and verification falls back to `strict`
//! (the store) until the feed is heard again, so a revoked credential is never accepted for
//! longer than that bound.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};

use crossbeam_utils::sync::{ShardedLock, ShardedLockReadGuard, ShardedLockWriteGuard};
use std::time::Duration;

use async_trait::async_trait;
use tessera_verify::revocation::{RevocationState, TokenFacts};

use crate::model::{RevocationEvent, Session, SessionId, Timestamp, UserId};
use crate::secret::SecretHash;
use crate::store::{Store, StoreError};

/// How a node hears about revocations made elsewhere. The events themselves are in the
/// store's revocation log, written in the transaction of each revocation; a feed only follows
/// that log and, for push-based feeds, wakes the followers sooner.
#[async_trait]
pub trait RevocationFeed: Send + Sync + 'static {
    /// Called after a transaction that appended to the log has committed: tells the other
    /// nodes to look now. Carries nothing the log does not hold, and may be lost (followers
    /// also poll), so it cannot fail. A polling feed does nothing.
    fn wake(&self) {}
    /// The position to start listening from: everything after it is yet to be heard.
    async fn cursor(&self) -> Result<u64, StoreError>;
    /// Waits up to about `wait` for events after `cursor`. `Ok` — even empty — means the feed
    /// is alive and nothing else happened up to the returned events: that is what freshness
    /// measures.
    async fn next(
        &self,
        cursor: u64,
        wait: Duration,
    ) -> Result<Vec<(u64, Timestamp, RevocationEvent)>, StoreError>;
    /// Whether the last answer of [`cursor`](Self::cursor) or [`next`](Self::next) vouches
    /// for freshness. A push feed whose channel is down still reads the log (and its events
    /// are applied) but does not, so the node falls back to `strict` after `max_staleness`.
    fn trusted(&self) -> bool {
        true
    }
    /// For logs, `/readyz` and `/metrics`.
    fn status(&self) -> FeedStatus;
}

/// What a feed reports about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedStatus {
    /// What carries the feed: `store log (polled)`, `PostgreSQL LISTEN/NOTIFY`, `Redis pub/sub`.
    pub name: &'static str,
    /// The push channel is up and its heartbeat heard (always `true` for a polled log).
    pub connected: bool,
    /// Times the push channel was re-established after its first connection.
    pub reconnects: u64,
    /// Times the node (re)synchronised from the log, the first time included.
    pub resyncs: u64,
}

/// The feed over the store's own durable log, polled: in-process for the memory store, and
/// across processes sharing one SQLite file (so `tessera` admin commands reach a running
/// server). Push-based feeds (PostgreSQL `NOTIFY`, Redis pub/sub) wake the same loop sooner.
pub struct StoreFeed {
    store: Arc<dyn Store>,
    poll_interval: Duration,
    resyncs: AtomicU64,
}

impl StoreFeed {
    pub fn new(store: Arc<dyn Store>, poll_interval: Duration) -> Self {
        Self {
            store,
            poll_interval,
            resyncs: AtomicU64::new(0),
        }
    }
}

#[async_trait]
impl RevocationFeed for StoreFeed {
    async fn cursor(&self) -> Result<u64, StoreError> {
        self.resyncs.fetch_add(1, Ordering::Relaxed);
        self.store.latest_event().await
    }

    async fn next(
        &self,
        cursor: u64,
        wait: Duration,
    ) -> Result<Vec<(u64, Timestamp, RevocationEvent)>, StoreError> {
        let events = self.store.events_after(cursor, 1_000).await?;
        if events.is_empty() {
            tokio::time::sleep(self.poll_interval.min(wait)).await;
        }
        Ok(events)
    }

    fn status(&self) -> FeedStatus {
        FeedStatus {
            name: "store log (polled)",
            connected: true,
            reconnects: 0,
            resyncs: self.resyncs.load(Ordering::Relaxed),
        }
    }
}

/// A cookie session held in memory: what a verification answers with, and nothing else (the
/// device's user agent and address stay in the store, for the device list). A node may hold
/// one for every signed-in browser, so its size is the cache's size.
#[derive(Debug, Clone)]
pub struct CachedSession {
    pub id: SessionId,
    pub user_id: UserId,
    pub created_at: Timestamp,
    pub last_seen_at: Timestamp,
    pub idle_timeout: Duration,
    pub expires_at: Timestamp,
    /// The user's roles, shared by every cached session with the same set (see
    /// [`RevocationCache::insert_cookie`]): most users have one of a handful of sets.
    pub roles: Arc<[String]>,
    /// When it was read from the store; an epoch bump after that makes it stale.
    pub loaded_at: Timestamp,
}

impl CachedSession {
    /// What verification keeps of a live cookie session read at `loaded_at`.
    pub fn of(session: &Session, roles: &[String], loaded_at: Timestamp) -> Self {
        Self {
            id: session.id,
            user_id: session.user_id,
            created_at: session.created_at,
            last_seen_at: session.last_seen_at,
            idle_timeout: session.idle_timeout,
            expires_at: session.expires_at,
            roles: roles.into(),
            loaded_at,
        }
    }

    /// The session record as the store holds it, without the device details.
    pub fn session(&self, secret_hash: SecretHash) -> Session {
        Session {
            id: self.id,
            user_id: self.user_id,
            secret_hash: Some(secret_hash),
            via: crate::model::Via::Cookie,
            created_at: self.created_at,
            last_seen_at: self.last_seen_at,
            idle_timeout: self.idle_timeout,
            expires_at: self.expires_at,
            user_agent: None,
            ip: None,
            revoked_at: None,
        }
    }

    fn is_live(&self, now: Timestamp) -> bool {
        let idle_end = self
            .last_seen_at
            .saturating_add(self.idle_timeout)
            .min(self.expires_at);
        now < idle_end
    }
}

#[derive(Default)]
struct State {
    /// The token half: revoked sessions, users' epochs and denylisted `jti`s, in the type
    /// `tessera-verify` gives resource servers, so both decide alike (the cookie half below
    /// reads its sessions and epochs too).
    tokens: RevocationState,
    /// Cookie sessions by their secret's hash. A revoked one may linger until the next prune,
    /// but is refused on sight (`revoked_sessions` is checked on every hit), so no second map
    /// from session id to hash is kept for removing it at once.
    cookies: HashMap<SecretHash, CachedSession>,
    /// One copy of each set of roles the cached sessions grant.
    role_sets: HashSet<Arc<[String]>>,
}

/// Why the cache refused a token; `None` means it found nothing against it.
pub use tessera_verify::revocation::Revoked;

/// The in-process revocation state of one node.
pub struct RevocationCache {
    /// Read on every cached verification, written on a revocation, a cache miss or a touch.
    /// Sharded by thread: a reader takes only its thread's shard, so the workers of a busy
    /// node do not pass one lock word from core to core on every request (a writer takes them
    /// all).
    state: ShardedLock<State>,
    /// Milliseconds after `origin` when the feed was last heard; 0 = never (not yet
    /// synchronised, or lost). Monotonic: a wall-clock step cannot make a dead feed look fresh.
    last_heard_ms: AtomicI64,
    origin: std::time::Instant,
    /// Milliseconds between the last applied remote event's stamp and its application.
    last_lag_ms: AtomicU64,
    /// How long revocation entries can matter: the longest life of an access token.
    horizon: Duration,
    /// Cookie sessions held at most; past it, lookups go to the store (bounded memory).
    cookie_capacity: usize,
}

impl RevocationCache {
    pub fn new(horizon: Duration, cookie_capacity: usize) -> Self {
        Self {
            state: ShardedLock::new(State::default()),
            last_heard_ms: AtomicI64::new(0),
            origin: std::time::Instant::now(),
            last_lag_ms: AtomicU64::new(0),
            horizon,
            cookie_capacity,
        }
    }

    fn read(&self) -> ShardedLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> ShardedLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Monotonic milliseconds since this cache was made, never 0.
    fn elapsed_ms(&self) -> i64 {
        i64::try_from(self.origin.elapsed().as_millis())
            .unwrap_or(i64::MAX)
            .saturating_add(1)
    }

    /// Merges a snapshot read from the store into the state (at start, and after the feed was
    /// lost, since events may have been missed). Merging, not replacing: a revocation applied
    /// locally while the snapshot was read must not be dropped; extra entries only refuse what
    /// is already revoked, and are pruned in time.
    pub async fn load(&self, store: &dyn Store) -> Result<(), StoreError> {
        let now = Timestamp::now();
        let since = now.saturating_sub(self.horizon);
        let revoked = store.revoked_sessions_since(since).await?;
        let epochs = store.epochs_since(since).await?;
        let denied = store.denied_jtis(now).await?;
        let forget_after = |at: Timestamp| at.saturating_add(self.horizon).as_unix_millis();
        let mut state = self.write();
        for (session, _, at) in revoked {
            state
                .tokens
                .revoke_session(*session.as_uuid(), forget_after(at));
        }
        for (user, epoch) in epochs {
            state
                .tokens
                .bump_epoch(*user.as_uuid(), epoch.as_unix_millis());
        }
        for (jti, exp) in denied {
            state.tokens.deny_jti(&jti, exp.as_unix_millis());
        }
        // Cookie sessions may have been revoked while the feed was away: re-read them.
        state.cookies.clear();
        Ok(())
    }

    /// Applies one event. Idempotent, so a node hearing its own event again changes nothing.
    pub fn apply(&self, event: &RevocationEvent) {
        let mut state = self.write();
        match event {
            RevocationEvent::SessionRevoked { session, .. } => {
                let forget_after = Timestamp::now().saturating_add(self.horizon);
                state
                    .tokens
                    .revoke_session(*session.as_uuid(), forget_after.as_unix_millis());
            }
            RevocationEvent::EpochBumped { user, epoch } => {
                state
                    .tokens
                    .bump_epoch(*user.as_uuid(), epoch.as_unix_millis());
                // Roles may have changed: cached cookie sessions of the user are re-read.
                state.cookies.retain(|_, cached| cached.user_id != *user);
            }
            RevocationEvent::JtiDenied { jti, expires_at } => {
                state.tokens.deny_jti(jti, expires_at.as_unix_millis());
            }
            // Not revocation state: the follower has the key ring reloaded instead.
            RevocationEvent::KeyWithdrawn { .. } => {}
        }
    }

    /// Records that the feed answered; `stamp` is the creation time of the newest event it
    /// delivered, if any, for the revocation-lag figure.
    pub fn heard(&self, newest_event: Option<Timestamp>) {
        self.last_heard_ms
            .store(self.elapsed_ms(), Ordering::Release);
        if let Some(stamp) = newest_event {
            let lag = Timestamp::now().since(stamp).as_millis();
            self.last_lag_ms
                .store(u64::try_from(lag).unwrap_or(0), Ordering::Relaxed);
        }
    }

    /// Forgets the feed, so the cache is not trusted until it is heard and reloaded.
    pub fn lost(&self) {
        self.last_heard_ms.store(0, Ordering::Release);
    }

    /// Whether the feed was heard within `max_staleness`.
    pub fn is_fresh(&self, max_staleness: Duration) -> bool {
        let last = self.last_heard_ms.load(Ordering::Acquire);
        let limit = i64::try_from(max_staleness.as_millis()).unwrap_or(i64::MAX);
        last > 0 && self.elapsed_ms().saturating_sub(last) <= limit
    }

    pub fn silence_ms(&self) -> u64 {
        let last = self.last_heard_ms.load(Ordering::Acquire);
        if last == 0 {
            return u64::MAX;
        }
        u64::try_from(self.elapsed_ms().saturating_sub(last)).unwrap_or(0)
    }

    pub fn last_lag_ms(&self) -> u64 {
        self.last_lag_ms.load(Ordering::Relaxed)
    }

    /// The cached verdict on a token whose signature and claims are valid: is its session
    /// revoked, was it issued before the user's epoch, or is its `jti` denylisted? Decided by
    /// [`RevocationState::check`], as resource servers decide it.
    pub fn check(&self, token: &TokenFacts<'_>) -> Option<Revoked> {
        self.read().tokens.check(token)
    }

    /// [`check`](Self::check) from the parts of a token: `issued_at` is its issuance to the
    /// millisecond (see [`issued_at`](crate::service::issued_at)).
    pub fn check_token(
        &self,
        user: UserId,
        session: SessionId,
        issued_at: Timestamp,
        jti: &str,
    ) -> Option<Revoked> {
        self.check(&TokenFacts {
            user: *user.as_uuid(),
            session: *session.as_uuid(),
            issued_at_ms: issued_at.as_unix_millis(),
            jti,
        })
    }

    /// What `read` makes of a cached cookie session that is still live at `now`, made under
    /// the lock: a clone would add to and take from the count of the roles every session
    /// with the same roles shares, one more word passed between cores on each request.
    pub fn with_cookie<R>(
        &self,
        hash: &SecretHash,
        now: Timestamp,
        read: impl FnOnce(&CachedSession) -> R,
    ) -> Option<R> {
        let state = self.read();
        let cached = state.cookies.get(hash)?;
        let live = cached.is_live(now)
            && !state.tokens.is_session_revoked(cached.id.as_uuid())
            && state
                .tokens
                .epoch(cached.user_id.as_uuid())
                .is_none_or(|epoch| epoch <= cached.loaded_at.as_unix_millis());
        live.then(|| read(cached))
    }

    /// Holds a session read from the store, unless a revocation of it was applied meanwhile
    /// or the cache is full. Its roles are shared with the sessions already held that grant
    /// the same set.
    pub fn insert_cookie(&self, hash: SecretHash, mut cached: CachedSession) {
        let mut state = self.write();
        if state.tokens.is_session_revoked(cached.id.as_uuid())
            || state.cookies.len() >= self.cookie_capacity
        {
            return;
        }
        match state.role_sets.get(&*cached.roles) {
            Some(shared) => cached.roles = Arc::clone(shared),
            None => {
                state.role_sets.insert(Arc::clone(&cached.roles));
            }
        }
        state.cookies.insert(hash, cached);
    }

    /// Moves a cached session's `last_seen_at` forward (the store learns it in batches).
    pub fn touch_cookie(&self, hash: &SecretHash, at: Timestamp) {
        if let Some(cached) = self.write().cookies.get_mut(hash) {
            cached.last_seen_at = cached.last_seen_at.max(at);
        }
    }

    /// Drops what can no longer change a verdict, so memory follows recent activity only.
    pub fn prune(&self, now: Timestamp) {
        let mut state = self.write();
        state.tokens.prune(now.as_unix_millis(), self.horizon);
        let State {
            cookies,
            tokens,
            role_sets,
        } = &mut *state;
        cookies.retain(|_, cached| {
            cached.is_live(now) && !tokens.is_session_revoked(cached.id.as_uuid())
        });
        // A set no cached session shares any more (the set itself holds one reference).
        role_sets.retain(|roles| Arc::strong_count(roles) > 1);
    }

    /// Entries held, by kind: revoked sessions, epochs, denied jtis, cookie sessions.
    pub fn sizes(&self) -> (usize, usize, usize, usize) {
        let state = self.read();
        let (sessions, epochs, denied) = state.tokens.sizes();
        (sessions, epochs, denied, state.cookies.len())
    }
}

/// Follows the feed for as long as it is polled (it never returns; the node's
/// [`Background`](crate::background::Background) runs it until shutdown): applies events to `cache` (a
/// `cached` node's state; `None` on `strict` and `none` nodes, which keep no revocation state
/// but must still hear of withdrawn signing keys), keeps freshness, and reloads the whole
/// state after the feed was lost (events may have been pruned).
///
/// `keys_changed` is notified for every [`RevocationEvent::KeyWithdrawn`], and `log_grew`
/// bumped whenever events arrive (for the streams of `GET /v1/revocations`). `keys_read_at` is
/// the feed's position noted before the node read its key ring, where the follower starts;
/// without it, and at every resynchronisation, `keys_changed` is notified too, since a
/// withdrawal may lie behind the follower's new cursor.
pub async fn follow(
    cache: Option<Arc<RevocationCache>>,
    feed: Arc<dyn RevocationFeed>,
    store: Arc<dyn Store>,
    retry: Duration,
    keys_changed: Arc<tokio::sync::Notify>,
    keys_read_at: Option<u64>,
    log_grew: tokio::sync::watch::Sender<()>,
) {
    let mut cursor: Option<u64> = None;
    let mut keys_read_at = keys_read_at;
    loop {
        let Some(position) = cursor else {
            // (Re)synchronise: note the position first, so nothing between the snapshot
            // and the first poll is missed (replaying an event is harmless).
            let (position, keys_current) = match keys_read_at.take() {
                Some(position) => (Ok(position), true),
                None => (feed.cursor().await, false),
            };
            match position {
                Ok(position) => {
                    let loaded = match &cache {
                        Some(cache) => cache.load(store.as_ref()).await,
                        None => Ok(()),
                    };
                    match loaded {
                        Ok(()) => {
                            cursor = Some(position);
                            if !keys_current {
                                keys_changed.notify_one();
                            }
                            if let Some(cache) = cache.as_ref().filter(|_| feed.trusted()) {
                                cache.heard(None);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "revocation cache could not load");
                            tokio::time::sleep(retry).await;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "revocation feed unavailable");
                    tokio::time::sleep(retry).await;
                }
            }
            continue;
        };
        match feed.next(position, retry).await {
            Ok(events) => {
                let newest = events.last().map(|(_, at, _)| *at);
                for (seq, _, event) in &events {
                    if matches!(event, RevocationEvent::KeyWithdrawn { .. }) {
                        keys_changed.notify_one();
                    }
                    if let Some(cache) = &cache {
                        cache.apply(event);
                    }
                    cursor = Some(*seq);
                }
                if !events.is_empty() {
                    log_grew.send_replace(());
                }
                if let Some(cache) = cache.as_ref().filter(|_| feed.trusted()) {
                    cache.heard(newest);
                }
            }
            Err(e) => {
                if let Some(cache) = &cache {
                    tracing::warn!(error = %e, "revocation feed lost; verifying against the store until it is back");
                    cache.lost();
                } else {
                    tracing::warn!(error = %e, "revocation feed lost; a withdrawn signing key is seen at the next key reload until it is back");
                }
                cursor = None;
                tokio::time::sleep(retry).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const HORIZON: Duration = Duration::from_secs(960);

    #[test]
    fn events_refuse_exactly_what_they_name() {
        let cache = RevocationCache::new(HORIZON, 10);
        let (user, other) = (UserId::new(), UserId::new());
        let (session, live) = (SessionId::new(), SessionId::new());
        let now = Timestamp::now();
        let just_before = Timestamp::from_unix_millis(now.as_unix_millis() - 1);
        assert_eq!(cache.check_token(user, session, now, "j1"), None);

        cache.apply(&RevocationEvent::SessionRevoked { session });
        assert_eq!(
            cache.check_token(user, session, now, "j1"),
            Some(Revoked::Session)
        );
        assert_eq!(cache.check_token(user, live, now, "j1"), None);

        cache.apply(&RevocationEvent::EpochBumped { user, epoch: now });
        assert_eq!(
            cache.check_token(user, live, just_before, "j1"),
            Some(Revoked::Epoch),
            "issued one millisecond before the epoch"
        );
        assert_eq!(
            cache.check_token(user, live, now, "j1"),
            None,
            "issued at the epoch lives"
        );
        assert_eq!(cache.check_token(other, live, just_before, "j1"), None);

        cache.apply(&RevocationEvent::JtiDenied {
            jti: "j2".into(),
            expires_at: now.saturating_add(Duration::from_secs(60)),
        });
        assert_eq!(
            cache.check_token(other, live, now, "j2"),
            Some(Revoked::Jti)
        );
    }

    #[test]
    fn prune_keeps_memory_to_what_can_still_matter() {
        let cache = RevocationCache::new(HORIZON, 10);
        let now = Timestamp::now();
        for i in 0..1_000 {
            cache.apply(&RevocationEvent::JtiDenied {
                jti: format!("expired-{i}"),
                expires_at: Timestamp::from_unix(now.as_unix() + 1),
            });
        }
        cache.apply(&RevocationEvent::JtiDenied {
            jti: "live".into(),
            expires_at: Timestamp::from_unix(now.as_unix() + 600),
        });
        cache.apply(&RevocationEvent::EpochBumped {
            user: UserId::new(),
            epoch: Timestamp::from_unix(now.as_unix() - 10_000),
        });
        assert_eq!(cache.sizes().2, 1_001);
        cache.prune(Timestamp::from_unix(now.as_unix() + 2));
        let (_, epochs, denied, _) = cache.sizes();
        assert_eq!(denied, 1, "expired jtis are gone, the live one stays");
        assert_eq!(epochs, 0, "epochs older than the horizon can kill no token");
        // Sessions revoked now are forgotten once no token of theirs can be alive.
        cache.apply(&RevocationEvent::SessionRevoked {
            session: SessionId::new(),
        });
        cache.prune(
            now.saturating_add(HORIZON)
                .saturating_add(Duration::from_secs(1)),
        );
        assert_eq!(cache.sizes().0, 0);
    }

    #[test]
    fn freshness_follows_the_feed() {
        let cache = RevocationCache::new(HORIZON, 10);
        assert!(!cache.is_fresh(Duration::from_secs(5)), "never heard");
        cache.heard(None);
        assert!(cache.is_fresh(Duration::from_secs(5)));
        cache.lost();
        assert!(!cache.is_fresh(Duration::from_secs(5)));
        cache.heard(None);
        std::thread::sleep(Duration::from_millis(30));
        assert!(
            !cache.is_fresh(Duration::from_millis(10)),
            "silent past the bound"
        );
    }

    fn cookie_session(user_id: UserId, now: Timestamp) -> (SecretHash, Session) {
        let hash = crate::secret::SessionSecret::generate().to_hash();
        let session = Session {
            id: SessionId::new(),
            user_id,
            secret_hash: Some(hash),
            via: crate::model::Via::Cookie,
            created_at: now,
            last_seen_at: now,
            idle_timeout: Duration::from_secs(3_600),
            expires_at: now.saturating_add(Duration::from_secs(3_600)),
            user_agent: Some("Firefox".into()),
            ip: Some("192.0.2.1".into()),
            revoked_at: None,
        };
        (hash, session)
    }

    #[test]
    fn a_full_cookie_cache_reads_the_store_instead_of_growing() {
        let cache = RevocationCache::new(HORIZON, 2);
        let now = Timestamp::now();
        let mut hashes = Vec::new();
        for _ in 0..3 {
            let (hash, session) = cookie_session(UserId::new(), now);
            cache.insert_cookie(hash, CachedSession::of(&session, &[], now));
            hashes.push(hash);
        }
        assert_eq!(cache.sizes().3, 2);
        assert!(cache
            .with_cookie(&hashes[0], now, CachedSession::clone)
            .is_some());
        assert!(cache
            .with_cookie(&hashes[2], now, CachedSession::clone)
            .is_none());
    }

    #[test]
    fn cached_cookie_sessions_share_their_roles_and_keep_no_device_details() {
        let cache = RevocationCache::new(HORIZON, 10);
        let now = Timestamp::now();
        let roles = vec!["reader".to_owned(), "writer".to_owned()];
        let (first, session) = cookie_session(UserId::new(), now);
        cache.insert_cookie(first, CachedSession::of(&session, &roles, now));
        let (second, other) = cookie_session(UserId::new(), now);
        cache.insert_cookie(second, CachedSession::of(&other, &roles, now));
        let (a, b) = (
            cache
                .with_cookie(&first, now, CachedSession::clone)
                .unwrap(),
            cache
                .with_cookie(&second, now, CachedSession::clone)
                .unwrap(),
        );
        assert!(Arc::ptr_eq(&a.roles, &b.roles), "one copy of the set");
        assert_eq!(&*a.roles, roles.as_slice());
        let rebuilt = a.session(first);
        assert_eq!(rebuilt.id, session.id);
        assert_eq!(rebuilt.idle_expires_at(), session.idle_expires_at());
        assert_eq!(rebuilt.user_agent, None);
        assert_eq!(rebuilt.ip, None);
    }

    #[test]
    fn a_revoked_cookie_session_is_refused_at_once_and_pruned_later() {
        let cache = RevocationCache::new(HORIZON, 10);
        let now = Timestamp::now();
        let (hash, session) = cookie_session(UserId::new(), now);
        cache.insert_cookie(hash, CachedSession::of(&session, &["admin".into()], now));
        cache.apply(&RevocationEvent::SessionRevoked {
            session: session.id,
        });
        assert!(
            cache
                .with_cookie(&hash, now, CachedSession::clone)
                .is_none(),
            "refused on the next request"
        );
        assert_eq!(cache.sizes().3, 1, "still held until the prune");
        cache.prune(now);
        assert_eq!(cache.sizes().3, 0);
        assert!(
            cache.read().role_sets.is_empty(),
            "the unshared set goes too"
        );
        cache.insert_cookie(hash, CachedSession::of(&session, &[], now));
        assert_eq!(cache.sizes().3, 0, "a revoked session is not cached again");
    }
}
