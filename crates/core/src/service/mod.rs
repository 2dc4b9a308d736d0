//! The authentication service: every rule of sign-up, sign-in, sessions, tokens and refresh
//! lives here, over an `Arc<dyn Store>`, so HTTP handlers and CLI commands stay thin.
//!
//! One file per seam: [`accounts`] (users, passwords, roles), [`sessions`] (cookie sign-in,
//! sign-out, devices), [`tokens`] (the password grant, refresh rotation, RFC 7009),
//! [`verification`] (cookies, bearer tokens, introspection), [`keys`] (signing and admin
//! keys) and [`housekeeping`] (what runs in the background). Every state change is one
//! [`Change`]: a store transaction that carries the change, its revocation-log entries and
//! its webhook messages, committed together; only then does the node apply the revocations to
//! its own cache and wake the others.

mod accounts;
pub(crate) mod guessing;
mod housekeeping;
mod keys;
mod mail;
mod sessions;
mod tokens;
mod verification;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zeroize::Zeroizing;

use crate::background::Background;
use crate::config::{Config, RevocationMode};
use crate::error::AuthError;
use crate::keys::MasterKey;
use crate::model::{RevocationEvent, Session, SessionId, Timestamp, User, UserId, Via};
use crate::password::PasswordHasher;
use crate::revocation::{RevocationCache, RevocationFeed, StoreFeed};
use crate::secret::{DeviceCredential, RefreshToken, SessionSecret};
use crate::store::GuessingCounters;
use crate::store::{Store, StoreTx};
use crate::webhooks::{OutboxMessage, RevokeReason, WebhookPlan};

pub use keys::KeyPolicy;
use keys::LiveKeys;
pub use tokens::issued_at;
pub use verification::{RefusalReason, Refused, TokenFault};

/// `last_seen_at` is written at most this often per session: fresh enough for a device list,
/// and it keeps verification from becoming a write per request. Short idle timeouts are
/// touched at half their length, so activity always keeps a session alive.
pub const TOUCH_INTERVAL: Duration = Duration::from_secs(60);

/// How often the store-backed feed looks for revocations made by other nodes: the revocation
/// lag between nodes, and the heartbeat by which freshness is judged.
const FEED_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Cookie sessions one node holds in memory at most (~0.5 KiB each); beyond it, lookups go
/// to the store, so memory stays bounded whatever the number of users.
const COOKIE_CACHE_CAPACITY: usize = 200_000;

/// What the caller's device told us: its user agent and address, recorded on a new session
/// for the device list, and its device credential, which the guessing limits honour.
#[derive(Debug, Clone, Default)]
pub struct DeviceInfo {
    pub user_agent: Option<String>,
    /// The client address: the socket peer, or what a trusted proxy reports.
    pub address: Option<std::net::IpAddr>,
    /// A device cookie or `device_token` the client sent, unchecked.
    pub credential: Option<crate::secret::DeviceCredential>,
}

/// Who is calling, proven by a live session (cookie) or a valid access token.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: UserId,
    pub session_id: SessionId,
    pub roles: Vec<String>,
    /// How *this request* authenticated, which decides whether CSRF applies.
    pub presented: Via,
    /// The session record when the check had it at hand; `None` when a bearer token was
    /// checked against the revocation cache alone (the hot path reads no record). Use
    /// [`Tessera::session_of`] to get it either way.
    pub session: Option<Session>,
}

/// A successful cookie login: the secret goes into `Set-Cookie` and nowhere else.
#[must_use = "the session secret must reach the client as a cookie"]
pub struct CookieLogin {
    pub user: User,
    pub session: Session,
    pub secret: SessionSecret,
    pub csrf_token: String,
    /// The device cookie's value: this browser's credential for this account.
    pub device: DeviceCredential,
}

/// A new cookie session for a user whose identity is already established: what
/// [`Tessera::start_cookie_session`] opens, and the session half of a [`CookieLogin`].
#[must_use = "the session secret must reach the client as a cookie"]
pub struct CookieSession {
    pub session: Session,
    pub secret: SessionSecret,
    pub csrf_token: String,
}

impl std::fmt::Debug for CookieSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieSession")
            .field("session", &self.session.id)
            .finish_non_exhaustive()
    }
}

/// An access token and the refresh token that continues its family.
#[must_use = "the new refresh token must reach the client"]
pub struct TokenPair {
    pub access_token: String,
    pub expires_in: u64,
    pub refresh_token: RefreshToken,
    pub session: Session,
    /// The password grant's `device_token`; `None` from a refresh.
    pub device_token: Option<DeviceCredential>,
}

impl std::fmt::Debug for CookieLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieLogin")
            .field("user", &self.user.id)
            .field("session", &self.session.id)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for TokenPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenPair")
            .field("expires_in", &self.expires_in)
            .field("session", &self.session.id)
            .finish_non_exhaustive()
    }
}

pub struct Tessera {
    store: Arc<dyn Store>,
    config: Arc<Config>,
    /// The key ring, shared with the task that rebuilds it when a key is withdrawn.
    keys: Arc<LiveKeys>,
    hasher: PasswordHasher,
    /// HMAC key binding CSRF tokens to session ids (SPEC §3).
    csrf_key: Zeroizing<[u8; 32]>,
    /// HMAC key deriving a refresh token's successor from the token itself, so a replay within
    /// the grace window can be answered with the same successor without storing it.
    refresh_key: Zeroizing<[u8; 32]>,
    /// HMAC key of device credentials (the guessing limits' device cookies).
    device_key: Zeroizing<[u8; 32]>,
    /// HMAC key deriving a mailed link's token from its id, so nothing stored holds it.
    mail_key: Zeroizing<[u8; 32]>,
    /// Where attempts are counted: Redis when configured, else the store.
    guessing: Option<Arc<dyn GuessingCounters>>,
    /// Unix milliseconds of the last reload caused by an unknown `kid`.
    last_on_demand_reload: std::sync::atomic::AtomicI64,
    counters: crate::metrics::Counters,
    cache: Arc<RevocationCache>,
    /// Access tokens verified recently (SPEC §2 `token_cache_size`).
    tokens: crate::token_cache::TokenCache,
    feed: Arc<dyn RevocationFeed>,
    /// Bumped whenever the revocation log grew (an entry committed here, or followed from
    /// another node), so `GET /v1/revocations` streams push it at once instead of polling.
    log_grew: tokio::sync::watch::Sender<()>,
    /// Cookie sessions whose `last_seen_at` moved in the cache and must reach the store.
    pending_touches: Arc<Mutex<HashMap<SessionId, Timestamp>>>,
    /// Starts and stops every background task of this node (`background.rs`).
    pub(crate) background: Background,
}

/// One state change in the making: the store transaction, and the revocations it carries, to
/// be applied to this node's cache once (and only if) it commits.
pub(crate) struct Change {
    tx: Box<dyn StoreTx>,
    /// The instant of the operation: every time it writes, and the stamp of its log entries.
    now: Timestamp,
    events: Vec<RevocationEvent>,
}

impl Change {
    /// Appends a revocation to the log, in this transaction.
    async fn revoke(&mut self, event: RevocationEvent) -> Result<(), AuthError> {
        self.tx.append_revocation(&event, self.now).await?;
        self.events.push(event);
        Ok(())
    }

    /// Queues webhook messages, in this transaction; nothing for an empty list.
    async fn enqueue(&mut self, messages: &[OutboxMessage]) -> Result<(), AuthError> {
        if !messages.is_empty() {
            self.tx.enqueue(messages).await?;
        }
        Ok(())
    }

    /// Revokes a session if it is not revoked yet, logging the revocation and queueing
    /// `plan`'s `session.revoked` messages; whether this call revoked it.
    async fn revoke_session(
        &mut self,
        session: SessionId,
        user: UserId,
        plan: &WebhookPlan,
    ) -> Result<bool, AuthError> {
        if !self.tx.revoke_session(session, self.now).await? {
            return Ok(false);
        }
        self.revoke(RevocationEvent::SessionRevoked { session })
            .await?;
        self.enqueue(&plan.messages(session, user, self.now))
            .await?;
        Ok(true)
    }

    /// Revokes every session of `user` but `keep`, as [`revoke_session`](Self::revoke_session)
    /// does one; the sessions revoked.
    async fn revoke_user_sessions(
        &mut self,
        user: UserId,
        keep: Option<SessionId>,
        plan: &WebhookPlan,
    ) -> Result<Vec<SessionId>, AuthError> {
        // The user's row first, as a role change takes it: every operation that changes a
        // user's sessions or epoch then locks in one order (user, sessions, log), and two of
        // them on one user wait for each other instead of deadlocking on a shared store.
        self.tx.user_for_update(user).await?;
        let revoked = self.tx.revoke_user_sessions(user, keep, self.now).await?;
        for session in &revoked {
            self.revoke(RevocationEvent::SessionRevoked { session: *session })
                .await?;
            self.enqueue(&plan.messages(*session, user, self.now))
                .await?;
        }
        Ok(revoked)
    }

    /// Moves the user's epoch past now (and past its current value), logging it; the new
    /// epoch, or `None` for an unknown user.
    async fn bump_epoch(&mut self, user: UserId) -> Result<Option<Timestamp>, AuthError> {
        let at = Timestamp::from_unix_millis(self.now.as_unix_millis().saturating_add(1));
        let Some(epoch) = self.tx.bump_epoch(user, at).await? else {
            return Ok(None);
        };
        self.revoke(RevocationEvent::EpochBumped { user, epoch })
            .await?;
        Ok(Some(epoch))
    }
}

impl Tessera {
    /// Loads the signing keys, generating the first one (or a new one when `signing_alg`
    /// changed) so a fresh install signs with the configured algorithm from its first request.
    pub async fn start(
        config: Arc<Config>,
        store: Arc<dyn Store>,
        master: MasterKey,
        policy: KeyPolicy,
    ) -> Result<Self, AuthError> {
        let feed = Arc::new(StoreFeed::new(Arc::clone(&store), FEED_POLL_INTERVAL));
        Self::start_with_feed(config, store, master, policy, feed).await
    }

    /// As [`start`](Self::start), with the revocation feed chosen by the caller.
    pub async fn start_with_feed(
        config: Arc<Config>,
        store: Arc<dyn Store>,
        master: MasterKey,
        policy: KeyPolicy,
        feed: Arc<dyn RevocationFeed>,
    ) -> Result<Self, AuthError> {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        let hasher_threads = crate::password::pool_size(cores);
        let hasher = tokio::task::spawn_blocking(move || PasswordHasher::new(hasher_threads))
            .await
            .map_err(|e| AuthError::Key(e.to_string()))??;
        let horizon = crate::keys::retired_key_lifetime(config.access_token_ttl);
        let cache = Arc::new(RevocationCache::new(horizon, COOKIE_CACHE_CAPACITY));
        let pending_touches = Arc::new(Mutex::new(HashMap::new()));
        // The log's position before the key ring is read: a withdrawal after it is the
        // follower's to see (unknown, the follower reloads the ring once it is listening).
        let keys_read_at = feed.cursor().await.ok();
        let csrf_key = Zeroizing::new(master.derive("csrf"));
        let refresh_key = Zeroizing::new(master.derive("refresh-successor"));
        let device_key = Zeroizing::new(master.derive("device"));
        let mail_key = Zeroizing::new(master.derive("mail-link"));
        let keys = Arc::new(
            LiveKeys::start(Arc::clone(&store), master, Arc::clone(&config), policy).await?,
        );
        let retry = config.max_staleness.min(FEED_POLL_INTERVAL * 5);
        // Every mode follows the log, for withdrawn signing keys; only `cached` keeps (and
        // prunes) revocation state from it.
        let cached = config.revocation_mode == RevocationMode::Cached;
        let keys_changed = Arc::new(tokio::sync::Notify::new());
        let background = Background::new();
        let log_grew = tokio::sync::watch::Sender::new(());
        let follower = crate::revocation::follow(
            cached.then(|| Arc::clone(&cache)),
            Arc::clone(&feed),
            Arc::clone(&store),
            retry,
            Arc::clone(&keys_changed),
            keys_read_at,
            log_grew.clone(),
        );
        background.spawn("revocation feed", |stop| {
            crate::background::until_stopped(follower, stop)
        });
        let reloading = Arc::clone(&keys);
        let reload = move || {
            let keys = Arc::clone(&reloading);
            async move { keys.reload().await }
        };
        background.spawn("key ring rebuild", |stop| {
            crate::background::rebuild_keys_when_changed(reload, keys_changed, retry, stop)
        });
        if cached {
            let (store, pending, cache) = (
                Arc::clone(&store),
                Arc::clone(&pending_touches),
                Arc::clone(&cache),
            );
            background.spawn("last-seen flusher", |stop| {
                crate::background::flush_touches(store, pending, cache, stop)
            });
        }
        let tokens = crate::token_cache::TokenCache::new(config.token_cache);
        let service = Self {
            csrf_key,
            refresh_key,
            device_key,
            mail_key,
            guessing: None,
            keys,
            store,
            config,
            hasher,
            last_on_demand_reload: std::sync::atomic::AtomicI64::new(0),
            counters: crate::metrics::Counters::default(),
            tokens,
            cache,
            feed,
            log_grew,
            pending_touches,
            background,
        };
        Ok(service)
    }

    /// Counts guessing attempts in `counters` (Redis) instead of the store, falling back to
    /// the store while they cannot answer (see [`guessing::Fallback`]).
    #[must_use]
    pub fn with_guessing_counters(mut self, counters: Arc<dyn GuessingCounters>) -> Self {
        self.guessing = Some(Arc::new(guessing::Fallback::new(
            counters,
            Arc::clone(&self.store),
        )));
        self
    }

    fn guessing(&self) -> &dyn GuessingCounters {
        match &self.guessing {
            Some(counters) => counters.as_ref(),
            None => self.store.guessing(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn counters(&self) -> &crate::metrics::Counters {
        &self.counters
    }

    /// How this node checks revocation right now (SPEC §5).
    pub fn revocation_status(&self) -> crate::metrics::RevocationStatus {
        let cached = self.config.revocation_mode == RevocationMode::Cached;
        crate::metrics::RevocationStatus {
            mode: self.config.revocation_mode,
            fresh: !cached || self.cache.is_fresh(self.config.max_staleness),
            feed_silence_ms: if cached { self.cache.silence_ms() } else { 0 },
            last_lag_ms: if cached { self.cache.last_lag_ms() } else { 0 },
            feed: self.feed.status(),
        }
    }

    /// Which store this node uses, and how busy its pool is (for `/readyz` and `/metrics`).
    pub fn store_backend(&self) -> (&'static str, Option<crate::store::PoolUse>) {
        (self.store.backend(), self.store.pool_use())
    }

    /// Hashing threads holding an argon2 memory area (~19 MiB each) now: each gives it back
    /// after a few idle seconds (for diagnostics and benchmarks).
    pub fn password_memory_areas(&self) -> usize {
        self.hasher.memory_areas()
    }

    /// The in-process revocation state (for diagnostics and benchmarks).
    pub fn revocation_cache(&self) -> &RevocationCache {
        &self.cache
    }

    /// Up to `limit` entries of the revocation log after position `after`, oldest first: what
    /// `GET /v1/revocations` streams to resource servers that verify tokens offline. Read from
    /// the log itself rather than this node's cache, so a stream resumed on another node from
    /// the same position misses nothing.
    /// Changes whenever the revocation log may have grown: committed on this node, or heard
    /// from the feed. A [`revocations_after`](Self::revocations_after) reader waits on it
    /// (after marking it seen, then reading) instead of polling.
    pub fn log_grew(&self) -> tokio::sync::watch::Receiver<()> {
        self.log_grew.subscribe()
    }

    pub async fn revocations_after(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, Timestamp, RevocationEvent)>, AuthError> {
        Ok(self.store.events_after(after, limit).await?)
    }

    /// `session.revoked` messages with `reason` for the configured webhooks; nothing to queue
    /// when none subscribes.
    fn revocation_plan(&self, reason: RevokeReason) -> WebhookPlan {
        WebhookPlan::session_revoked(&self.config.webhooks, reason)
    }

    /// The mode this request is checked in: `cached` falls back to `strict` while the feed is
    /// stale (SPEC §5), so a silent feed never stretches the revocation bound.
    fn effective_mode(&self) -> RevocationMode {
        match self.config.revocation_mode {
            RevocationMode::Cached if !self.cache.is_fresh(self.config.max_staleness) => {
                RevocationMode::Strict
            }
            mode => mode,
        }
    }

    /// Begins a state change at `now` (see [`Change`]).
    async fn change(&self, now: Timestamp) -> Result<Change, AuthError> {
        Ok(Change {
            tx: self.store.begin().await?,
            now,
            events: Vec::new(),
        })
    }

    /// Commits a change, then makes its revocations take effect on this node before the
    /// caller hears back, and wakes the other nodes, which read them from the log. If the
    /// commit fails nothing happened, and nothing is applied.
    async fn commit(&self, change: Change) -> Result<(), AuthError> {
        let Change { tx, events, .. } = change;
        tx.commit().await?;
        if events.is_empty() {
            return Ok(());
        }
        // Only `cached` nodes keep (and prune) the state; others would only accumulate it.
        if self.config.revocation_mode == RevocationMode::Cached {
            for event in &events {
                self.cache.apply(event);
            }
        }
        self.log_grew.send_replace(());
        self.feed.wake();
        Ok(())
    }

    /// The key ring in force; cheap (an `Arc` clone) so the verify path can call it per request.
    pub fn key_ring(&self) -> Arc<crate::keys::KeyRing> {
        self.keys.current()
    }

    /// Rebuilds the key ring from the store: picks up keys rotated by the CLI or another node
    /// and drops retired keys whose tokens have all expired.
    pub async fn reload_keys(&self) -> Result<(), AuthError> {
        self.keys.reload().await
    }
}

#[allow(clippy::needless_pass_by_value)] // used as `map_err(key_error)`
fn key_error(e: crate::keys::KeyError) -> AuthError {
    AuthError::Key(e.to_string())
}
