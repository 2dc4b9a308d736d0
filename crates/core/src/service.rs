//! The authentication service: every rule of sign-up, sign-in, sessions, tokens and refresh
//! lives here, over an `Arc<dyn Store>`, so HTTP handlers and CLI commands stay thin.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::background::Background;
use crate::config::{Config, RevocationMode};
use crate::error::AuthError;
use crate::keys::{KeyError, KeyRing, MasterKey, SigningKey};
use crate::model::{
    AdminKey, AdminKeyId, Email, RefreshRecord, RevocationEvent, Rotation, Session, SessionId,
    Timestamp, User, UserId, Via,
};
use crate::password::{check_policy, PasswordHasher};
use crate::revocation::{CachedSession, RevocationCache, RevocationFeed, Revoked, StoreFeed};
use crate::secret::{AdminSecret, Password, RefreshToken, SecretHash, SessionSecret};
use crate::store::Store;
use crate::verify::{Claims, VerifyError};
use crate::webhooks::{self, RevokeReason, WebhookPlan};

type HmacSha256 = Hmac<Sha256>;

/// `last_seen_at` is written at most this often per session: fresh enough for a device list,
/// and it keeps verification from becoming a write per request. Short idle timeouts are
/// touched at half their length, so activity always keeps a session alive.
pub const TOUCH_INTERVAL: Duration = Duration::from_secs(60);

/// How often the store-backed feed looks for revocations made by other nodes: the revocation
/// lag between nodes, and the heartbeat by which freshness is judged.
const FEED_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// How long delivered (or abandoned) webhook messages stay in the outbox, for inspection,
/// before housekeeping deletes them.
const OUTBOX_RETENTION: Duration = Duration::from_secs(7 * 86_400);

/// Cookie sessions one node holds in memory at most (~0.5 KiB each); beyond it, lookups go
/// to the store, so memory stays bounded whatever the number of users.
const COOKIE_CACHE_CAPACITY: usize = 200_000;

/// An unknown `kid` reloads the key ring at most this often: anyone can send a token with a
/// made-up `kid`, and a reload decrypts every live key.
const ON_DEMAND_RELOAD_MILLIS: i64 = 5_000;

/// What a process may do to the signing keys when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPolicy {
    /// The server: creates the first key, and rotates when `signing_alg` names another
    /// algorithm than the active key's.
    Serve,
    /// Administration commands: create the first key on a fresh install, never rotate (a
    /// command run with another configuration must not churn production keys).
    Administer,
}

/// What the caller's device told us, recorded on the session for the device list.
#[derive(Debug, Clone, Default)]
pub struct DeviceInfo {
    pub user_agent: Option<String>,
    pub ip: Option<String>,
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

/// A refused credential: the error the caller gets, and the reason, a short code for metrics
/// and logs (`expired`, `session_revoked`, `jti_denied` …) that never reaches a response body.
#[derive(Debug)]
pub struct Refused {
    pub reason: &'static str,
    pub error: AuthError,
}

impl Refused {
    fn because(reason: &'static str) -> Self {
        Self {
            reason,
            error: AuthError::Unauthenticated,
        }
    }

    fn from_error(error: AuthError) -> Self {
        let reason = match error {
            AuthError::Store(_) => "unavailable",
            _ => "unauthenticated",
        };
        Self { reason, error }
    }
}

impl From<crate::StoreError> for Refused {
    fn from(e: crate::StoreError) -> Self {
        Self {
            reason: "unavailable",
            error: AuthError::Store(e),
        }
    }
}

/// A successful cookie login: the secret goes into `Set-Cookie` and nowhere else.
#[must_use = "the session secret must reach the client as a cookie"]
pub struct CookieLogin {
    pub user: User,
    pub session: Session,
    pub secret: SessionSecret,
    pub csrf_token: String,
}

/// An access token and the refresh token that continues its family.
#[must_use = "the new refresh token must reach the client"]
pub struct TokenPair {
    pub access_token: String,
    pub expires_in: u64,
    pub refresh_token: RefreshToken,
    pub session: Session,
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
    /// Unix milliseconds of the last reload caused by an unknown `kid`.
    last_on_demand_reload: std::sync::atomic::AtomicI64,
    counters: crate::metrics::Counters,
    cache: Arc<RevocationCache>,
    feed: Arc<dyn RevocationFeed>,
    /// Cookie sessions whose `last_seen_at` moved in the cache and must reach the store.
    pending_touches: Arc<Mutex<HashMap<SessionId, Timestamp>>>,
    /// Starts and stops every background task of this node (`background.rs`).
    pub(crate) background: Background,
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
        let hasher_threads = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        let hasher = tokio::task::spawn_blocking(move || PasswordHasher::new(hasher_threads))
            .await
            .map_err(|e| AuthError::Key(e.to_string()))??;
        let horizon = crate::keys::retired_key_lifetime(config.access_token_ttl);
        let cache = Arc::new(RevocationCache::new(horizon, COOKIE_CACHE_CAPACITY));
        let pending_touches = Arc::new(Mutex::new(HashMap::new()));
        // The log's position before the key ring is read: a withdrawal after it is the
        // follower's to see (unknown, the follower reloads the ring once it is listening).
        let keys_read_at = feed.cursor().await.ok();
        let ring = ensure_signing_key(store.as_ref(), &master, &config, policy).await?;
        let csrf_key = Zeroizing::new(master.derive("csrf"));
        let refresh_key = Zeroizing::new(master.derive("refresh-successor"));
        let keys = Arc::new(LiveKeys {
            ring: RwLock::new(Arc::new(ring)),
            master,
            store: Arc::clone(&store),
            config: Arc::clone(&config),
        });
        let retry = config.max_staleness.min(FEED_POLL_INTERVAL * 5);
        // Every mode follows the log, for withdrawn signing keys; only `cached` keeps (and
        // prunes) revocation state from it.
        let cached = config.revocation_mode == RevocationMode::Cached;
        let keys_changed = Arc::new(tokio::sync::Notify::new());
        let background = Background::new();
        let follower = crate::revocation::follow(
            cached.then(|| Arc::clone(&cache)),
            Arc::clone(&feed),
            Arc::clone(&store),
            retry,
            Arc::clone(&keys_changed),
            keys_read_at,
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
        let service = Self {
            csrf_key,
            refresh_key,
            keys,
            store,
            config,
            hasher,
            last_on_demand_reload: std::sync::atomic::AtomicI64::new(0),
            counters: crate::metrics::Counters::default(),
            cache,
            feed,
            pending_touches,
            background,
        };
        Ok(service)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
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
        }
    }

    /// The in-process revocation state (for diagnostics and benchmarks).
    pub fn revocation_cache(&self) -> &RevocationCache {
        &self.cache
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

    /// Makes a revocation take effect: on this node at once (before the caller hears back),
    /// and on every other node through the feed.
    async fn announce(&self, event: RevocationEvent) -> Result<(), AuthError> {
        self.announce_all(vec![event]).await
    }

    /// Applies every event locally first (nothing fallible in between), then publishes them.
    /// If publishing fails, this node stops trusting its cache (it verifies against the store
    /// until the feed reloads it) and the caller hears an error, so a retry re-announces.
    async fn announce_all(&self, events: Vec<RevocationEvent>) -> Result<(), AuthError> {
        // Only `cached` nodes keep (and prune) the state; others would only accumulate it.
        if self.config.revocation_mode == RevocationMode::Cached {
            for event in &events {
                self.cache.apply(event);
            }
        }
        for event in &events {
            if let Err(e) = self.feed.publish(event).await {
                self.cache.lost();
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// The next epoch for a user: one millisecond past now, so every token issued up to and
    /// including this millisecond is dead, and always past the current epoch, so two changes
    /// within one millisecond still kill the tokens minted between them.
    async fn next_epoch_of(&self, user: UserId) -> Result<Timestamp, AuthError> {
        let current = self
            .store
            .find_user(user)
            .await?
            .map_or(Timestamp::from_unix(0), |u| u.tokens_valid_after);
        Ok(later_by_a_millisecond(Timestamp::now()).max(later_by_a_millisecond(current)))
    }

    /// The key ring in force; cheap (an `Arc` clone) so the verify path can call it per request.
    pub fn key_ring(&self) -> Arc<KeyRing> {
        self.keys.current()
    }

    /// Rebuilds the key ring from the store: picks up keys rotated by the CLI or another node
    /// and drops retired keys whose tokens have all expired.
    pub async fn reload_keys(&self) -> Result<(), AuthError> {
        self.keys.reload().await
    }

    // ----- users -------------------------------------------------------------------------

    pub async fn sign_up(&self, email: &str, password: Password) -> Result<User, AuthError> {
        self.add_user(email, password, Vec::new()).await
    }

    pub async fn add_user(
        &self,
        email: &str,
        password: Password,
        roles: Vec<String>,
    ) -> Result<User, AuthError> {
        let email = Email::parse(email).ok_or(AuthError::InvalidEmail)?;
        check_policy(&password)?;
        if self.store.find_user_by_email(&email).await?.is_some() {
            return Err(AuthError::EmailTaken);
        }
        let now = Timestamp::now();
        let user = User {
            id: UserId::new(),
            email,
            password_hash: self.hasher.hash(password).await?,
            roles: normalise_roles(roles)?,
            created_at: now,
            tokens_valid_after: Timestamp::from_unix(0),
        };
        match self.store.insert_user(&user).await {
            Ok(()) => {
                info!(user = %user.id, "user created");
                Ok(user)
            }
            Err(crate::StoreError::Conflict(_)) => Err(AuthError::EmailTaken),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn user(&self, id: UserId) -> Result<User, AuthError> {
        self.store.find_user(id).await?.ok_or(AuthError::NotFound)
    }

    /// Replaces a user's roles and bumps their access-token epoch: access tokens carrying the
    /// old roles stop verifying, while the refresh family stays valid so the next refresh
    /// carries the new roles and the user stays signed in (SPEC §3).
    pub async fn set_roles(&self, id: UserId, roles: Vec<String>) -> Result<User, AuthError> {
        let roles = normalise_roles(roles)?;
        let outbox = webhooks::roles_changed(&self.config.webhooks, id, &roles, Timestamp::now());
        if !self.store.set_roles(id, &roles, &outbox).await? {
            return Err(AuthError::NotFound);
        }
        let epoch = self.next_epoch_of(id).await?;
        self.store.bump_epoch(id, epoch, &[]).await?;
        self.announce(RevocationEvent::EpochBumped { user: id, epoch })
            .await?;
        self.user(id).await
    }

    /// Checks a password; unknown email and wrong password fail alike and take the same time.
    async fn check_credentials(&self, email: &str, password: Password) -> Result<User, AuthError> {
        let outcome = self.check_password(email, password).await;
        match &outcome {
            Ok(_) => crate::metrics::Counters::bump(&self.counters.logins_ok),
            Err(AuthError::InvalidCredentials) => {
                crate::metrics::Counters::bump(&self.counters.logins_failed);
            }
            Err(_) => {}
        }
        outcome
    }

    async fn check_password(&self, email: &str, password: Password) -> Result<User, AuthError> {
        let user = match Email::parse(email) {
            Some(email) => self.store.find_user_by_email(&email).await?,
            None => None,
        };
        let stored = user.as_ref().map(|u| u.password_hash.clone());
        if self.hasher.verify(password, stored).await? {
            user.ok_or(AuthError::InvalidCredentials)
        } else {
            Err(AuthError::InvalidCredentials)
        }
    }

    // ----- cookie sessions ---------------------------------------------------------------

    /// Signs in a browser. Always a new session id (fixation defence); a session cookie sent
    /// along is revoked, so a planted or stale cookie dies here.
    pub async fn login(
        &self,
        email: &str,
        password: Password,
        device: DeviceInfo,
        previous: Option<&SessionSecret>,
    ) -> Result<CookieLogin, AuthError> {
        let user = self.check_credentials(email, password).await?;
        let now = Timestamp::now();
        if let Some(previous) = previous {
            if let Some(old) = self
                .store
                .find_live_session_by_hash(&previous.to_hash(), now)
                .await?
            {
                self.store
                    .revoke_session(
                        old.id,
                        now,
                        &self.revocation_plan(RevokeReason::ReplacedByLogin),
                    )
                    .await?;
                self.announce(RevocationEvent::SessionRevoked { session: old.id })
                    .await?;
            }
        }
        let secret = SessionSecret::generate();
        let session = self
            .open_session(&user, Some(secret.to_hash()), device, now)
            .await?;
        info!(user = %user.id, session = %session.id, via = "cookie", "signed in");
        let csrf_token = self.csrf_token(session.id);
        Ok(CookieLogin {
            user,
            session,
            secret,
            csrf_token,
        })
    }

    /// Resolves a session cookie to its principal; `Unauthenticated` for anything not live.
    /// In `cached` mode a session seen before is answered from memory (no store call) and its
    /// `last_seen_at` reaches the store in batches; `none` and `strict` read the store, since a
    /// cookie carries no signature to check offline.
    pub async fn authenticate_cookie(
        &self,
        secret: &SessionSecret,
    ) -> Result<Principal, AuthError> {
        self.check_cookie(secret)
            .await
            .map_err(|refused| refused.error)
    }

    /// As [`authenticate_cookie`](Self::authenticate_cookie), saying why a cookie was refused.
    pub async fn check_cookie(&self, secret: &SessionSecret) -> Result<Principal, Refused> {
        let now = Timestamp::now();
        let hash = secret.to_hash();
        let cached_mode = self.effective_mode() == RevocationMode::Cached;
        if cached_mode {
            if let Some(cached) = self.cache.cookie(&hash, now) {
                if now.since(cached.session.last_seen_at) >= touch_interval(&cached.session) {
                    self.cache.touch_cookie(&hash, now);
                    if let Ok(mut pending) = self.pending_touches.lock() {
                        pending.insert(cached.session.id, now);
                    }
                }
                return Ok(Principal {
                    user_id: cached.session.user_id,
                    session_id: cached.session.id,
                    roles: cached.roles,
                    presented: Via::Cookie,
                    session: Some(cached.session),
                });
            }
        }
        let session = self
            .store
            .find_live_session_by_hash(&hash, now)
            .await?
            .ok_or(Refused::because("session_not_live"))?;
        let user = self
            .store
            .find_user(session.user_id)
            .await?
            .ok_or(Refused::because("session_not_live"))?;
        let session = self
            .touch(session, now)
            .await
            .map_err(Refused::from_error)?;
        if cached_mode {
            self.cache.insert_cookie(
                hash,
                CachedSession {
                    session: session.clone(),
                    roles: user.roles.clone(),
                    loaded_at: now,
                },
            );
        }
        Ok(Principal {
            user_id: user.id,
            session_id: session.id,
            roles: user.roles,
            presented: Via::Cookie,
            session: Some(session),
        })
    }

    async fn touch(&self, mut session: Session, now: Timestamp) -> Result<Session, AuthError> {
        if now.since(session.last_seen_at) >= touch_interval(&session) {
            self.store.touch_session(session.id, now).await?;
            session.last_seen_at = now;
        }
        Ok(session)
    }

    /// Records a new device session: a cookie session when `secret_hash` is given (idle and
    /// absolute timeouts from the config), else a refresh family, which has one absolute
    /// lifetime, `refresh_token_ttl`, that is also its idle bound.
    async fn open_session(
        &self,
        user: &User,
        secret_hash: Option<SecretHash>,
        device: DeviceInfo,
        now: Timestamp,
    ) -> Result<Session, AuthError> {
        let (via, idle, lifetime) = match secret_hash {
            Some(_) => (
                Via::Cookie,
                self.config.session_idle_timeout,
                self.config.session_absolute_timeout,
            ),
            None => (
                Via::Token,
                self.config.refresh_token_ttl,
                self.config.refresh_token_ttl,
            ),
        };
        let session = Session {
            id: SessionId::new(),
            user_id: user.id,
            secret_hash,
            via,
            created_at: now,
            last_seen_at: now,
            idle_timeout: idle,
            expires_at: now.saturating_add(lifetime),
            user_agent: device.user_agent.map(|ua| truncate(ua, 512)),
            ip: device.ip,
            revoked_at: None,
        };
        let outbox = webhooks::session_created(&self.config.webhooks, &session);
        self.store.insert_session(&session, &outbox).await?;
        Ok(session)
    }

    /// The session-bound CSRF token: HMAC-SHA256 of the session id under a server secret, so
    /// it is useless for any other session and needs no storage.
    pub fn csrf_token(&self, session: SessionId) -> String {
        URL_SAFE_NO_PAD.encode(self.csrf_mac(session).finalize().into_bytes())
    }

    /// Constant-time check of a presented CSRF token.
    pub fn check_csrf(&self, session: SessionId, presented: &str) -> bool {
        let Ok(bytes) = URL_SAFE_NO_PAD.decode(presented.trim()) else {
            return false;
        };
        self.csrf_mac(session).verify_slice(&bytes).is_ok()
    }

    fn csrf_mac(&self, session: SessionId) -> HmacSha256 {
        let mut mac = hmac_with(&self.csrf_key);
        mac.update(session.as_uuid().as_bytes());
        mac
    }

    // ----- sign-out ----------------------------------------------------------------------

    /// Revokes the caller's session (its cookie, or its refresh family and access tokens).
    pub async fn logout(&self, principal: &Principal) -> Result<(), AuthError> {
        self.store
            .revoke_session(
                principal.session_id,
                Timestamp::now(),
                &self.revocation_plan(RevokeReason::SignedOut),
            )
            .await?;
        self.announce(RevocationEvent::SessionRevoked {
            session: principal.session_id,
        })
        .await?;
        info!(user = %principal.user_id, session = %principal.session_id, "signed out");
        Ok(())
    }

    /// Revokes every session of the user and bumps the epoch so no access token outlives it.
    pub async fn logout_everywhere(&self, user: UserId) -> Result<u64, AuthError> {
        let now = Timestamp::now();
        let plan = self.revocation_plan(RevokeReason::SignedOutEverywhere);
        let revoked = self
            .store
            .revoke_user_sessions(user, None, now, &plan)
            .await?;
        self.announce_all(
            revoked
                .iter()
                .map(|session| RevocationEvent::SessionRevoked { session: *session })
                .collect(),
        )
        .await?;
        let epoch = self.next_epoch_of(user).await?;
        let outbox =
            webhooks::signed_out_everywhere(&self.config.webhooks, user, revoked.len(), now);
        self.store.bump_epoch(user, epoch, &outbox).await?;
        self.announce(RevocationEvent::EpochBumped { user, epoch })
            .await?;
        info!(user = %user, sessions = revoked.len(), "signed out everywhere");
        Ok(revoked.len() as u64)
    }

    // ----- tokens ------------------------------------------------------------------------

    /// RFC 6749 §4.3 for first-party clients: a new device session whose refresh family lives
    /// at most `refresh_token_ttl`.
    pub async fn password_grant(
        &self,
        email: &str,
        password: Password,
        device: DeviceInfo,
    ) -> Result<TokenPair, AuthError> {
        let user = self.check_credentials(email, password).await?;
        let now = Timestamp::now();
        let session = self.open_session(&user, None, device, now).await?;
        let refresh_token = RefreshToken::generate();
        self.store
            .insert_refresh(&RefreshRecord {
                hash: refresh_token.to_hash(),
                session_id: session.id,
                issued_at: now,
                rotated_at: None,
            })
            .await?;
        info!(user = %user.id, session = %session.id, via = "token", "signed in");
        let (access_token, expires_in) = self.issue_access_token(&user, &session, now)?;
        Ok(TokenPair {
            access_token,
            expires_in,
            refresh_token,
            session,
        })
    }

    /// RFC 6749 §6 with rotation (RFC 9700 §4.14.2): every use spends the token; the one just
    /// spent may be replayed within `refresh_grace` for the same successor; any other reuse
    /// revokes the family.
    pub async fn refresh(&self, presented: &RefreshToken) -> Result<TokenPair, AuthError> {
        let successor = self.successor_of(presented);
        let now = Timestamp::now();
        let outcome = self
            .store
            .rotate_refresh(
                &presented.to_hash(),
                &successor.to_hash(),
                now,
                self.config.refresh_grace,
                &WebhookPlan::reuse_detected(&self.config.webhooks),
            )
            .await?;
        let session = match outcome {
            Rotation::Rotated(session) | Rotation::Replayed(session) => {
                crate::metrics::Counters::bump(&self.counters.refreshes);
                session
            }
            Rotation::ReuseDetected(session) => {
                self.announce(RevocationEvent::SessionRevoked { session })
                    .await?;
                crate::metrics::Counters::bump(&self.counters.reuse_detections);
                warn!(session = %session, "refresh token reuse detected; family revoked");
                return Err(AuthError::InvalidGrant);
            }
            Rotation::Invalid => return Err(AuthError::InvalidGrant),
        };
        let user = self
            .store
            .find_user(session.user_id)
            .await?
            .ok_or(AuthError::InvalidGrant)?;
        let (access_token, expires_in) = self.issue_access_token(&user, &session, now)?;
        Ok(TokenPair {
            access_token,
            expires_in,
            refresh_token: successor,
            session,
        })
    }

    fn successor_of(&self, token: &RefreshToken) -> RefreshToken {
        let mut mac = hmac_with(&self.refresh_key);
        mac.update(token.expose_secret().as_bytes());
        RefreshToken::from_derived(URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    fn issue_access_token(
        &self,
        user: &User,
        session: &Session,
        now: Timestamp,
    ) -> Result<(String, u64), AuthError> {
        // Never before the epoch: a token minted in the same millisecond as a role change, on
        // a node whose clock is a little behind, must count as issued after it.
        let issued = now.max(user.tokens_valid_after);
        let ttl = self.config.access_token_ttl;
        let claims = Claims {
            iss: self.config.issuer.clone(),
            sub: user.id.to_string(),
            aud: self.config.audience.clone(),
            exp: issued.saturating_add(ttl).as_unix(),
            iat: issued.as_unix(),
            jti: jti_at(issued),
            sid: session.id.to_string(),
            roles: user.roles.clone(),
            scope: None,
        };
        let token = self.key_ring().active().sign(&claims).map_err(key_error)?;
        Ok((token, ttl.as_secs()))
    }

    /// Verifies an access token, then asks whether it was revoked, as the mode says:
    /// `none` — never (revocation by expiry alone); `cached` — the in-process revocation
    /// state, no store call; `strict` (and `cached` while its feed is stale) — the store:
    /// live session, epoch, denylist.
    pub async fn authenticate_bearer(&self, token: &str) -> Result<Principal, AuthError> {
        self.check_bearer(token)
            .await
            .map_err(|refused| refused.error)
    }

    /// As [`authenticate_bearer`](Self::authenticate_bearer), saying why a token was refused.
    pub async fn check_bearer(&self, token: &str) -> Result<Principal, Refused> {
        let claims = self
            .check_token(token)
            .await
            .map_err(|e| Refused::because(e.reason()))?;
        let (Some(user_id), Some(session_id)) =
            (UserId::parse(&claims.sub), SessionId::parse(&claims.sid))
        else {
            return Err(Refused::because("invalid_claims"));
        };
        let session = match self.effective_mode() {
            RevocationMode::None => None,
            RevocationMode::Cached => {
                if let Some(revoked) =
                    self.cache
                        .check_token(user_id, session_id, issued_at(&claims), &claims.jti)
                {
                    return Err(Refused::because(match revoked {
                        Revoked::Session => "session_revoked",
                        Revoked::Epoch => "epoch_passed",
                        Revoked::Jti => "jti_denied",
                    }));
                }
                None
            }
            RevocationMode::Strict => Some(
                self.check_token_in_store(&claims, user_id, session_id)
                    .await?,
            ),
        };
        Ok(Principal {
            user_id,
            session_id,
            roles: claims.roles,
            presented: Via::Token,
            session,
        })
    }

    async fn check_token_in_store(
        &self,
        claims: &Claims,
        user_id: UserId,
        session_id: SessionId,
    ) -> Result<Session, Refused> {
        let now = Timestamp::now();
        let session = self
            .store
            .find_live_session(session_id, now)
            .await?
            .filter(|s| s.user_id == user_id)
            .ok_or(Refused::because("session_not_live"))?;
        let user = self
            .store
            .find_user(user_id)
            .await?
            .ok_or(Refused::because("session_not_live"))?;
        if issued_at(claims) < user.tokens_valid_after {
            return Err(Refused::because("epoch_passed"));
        }
        if self.store.is_jti_denied(&claims.jti, now).await? {
            return Err(Refused::because("jti_denied"));
        }
        Ok(session)
    }

    /// Signature and claims only, as [`check_token`](Self::check_token), with every failure
    /// reported as `Unauthenticated`.
    pub async fn verify_token(&self, token: &str) -> Result<Claims, AuthError> {
        self.check_token(token)
            .await
            .map_err(|_| AuthError::Unauthenticated)
    }

    /// Signature and claims only, with the precise reason for a refusal (for `token inspect`
    /// and logs). An unknown `kid` triggers one key-ring reload, so a key rotated by the CLI
    /// or another node is honoured without a restart.
    pub async fn check_token(&self, token: &str) -> Result<Claims, VerifyError> {
        match self.key_ring().verifier().verify(token) {
            Err(VerifyError::UnknownKey) => {
                if !self.may_reload_on_demand() || self.reload_keys().await.is_err() {
                    return Err(VerifyError::UnknownKey);
                }
                self.key_ring().verifier().verify(token)
            }
            outcome => outcome,
        }
    }

    /// Claims the on-demand reload slot if the last one is old enough; one caller wins.
    fn may_reload_on_demand(&self) -> bool {
        use std::sync::atomic::Ordering;
        let now = Timestamp::now().as_unix_millis();
        let last = self.last_on_demand_reload.load(Ordering::Relaxed);
        now.saturating_sub(last) >= ON_DEMAND_RELOAD_MILLIS
            && self
                .last_on_demand_reload
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// An access token that is valid *now*: signature, claims, live session, epoch and
    /// denylist, checked against the store whatever the mode (introspection is the
    /// authoritative answer). `None` for anything else (RFC 7662 `active: false`).
    pub async fn introspect(&self, token: &str) -> Result<Option<Claims>, AuthError> {
        let Ok(claims) = self.check_token(token).await else {
            return Ok(None);
        };
        let (Some(user_id), Some(session_id)) =
            (UserId::parse(&claims.sub), SessionId::parse(&claims.sid))
        else {
            return Ok(None);
        };
        match self
            .check_token_in_store(&claims, user_id, session_id)
            .await
        {
            Ok(_) => Ok(Some(claims)),
            Err(Refused {
                error: AuthError::Store(e),
                ..
            }) => Err(AuthError::Store(e)),
            Err(_) => Ok(None),
        }
    }

    /// RFC 7009: an access token's `jti` joins the denylist until its `exp`; a refresh token
    /// kills its family (and with it the session's access tokens). Unknown, malformed or
    /// expired tokens are ignored, as §2.2 requires: the caller always hears "done".
    pub async fn revoke_token(&self, token: &str) -> Result<(), AuthError> {
        // A JWT has two dots; an opaque refresh token (base64url) has none, so the shape
        // decides and `token_type_hint` is not needed.
        if token.matches('.').count() == 2 {
            if let Ok(claims) = self.check_token(token).await {
                // Already denied: nothing changes, so nothing is announced (a client replaying
                // its revocation cannot flood every node's feed).
                if self
                    .store
                    .is_jti_denied(&claims.jti, Timestamp::now())
                    .await?
                {
                    return Ok(());
                }
                self.store
                    .deny_jti(&claims.jti, Timestamp::from_unix(claims.exp))
                    .await?;
                self.announce(RevocationEvent::JtiDenied {
                    jti: claims.jti.clone(),
                    expires_at: Timestamp::from_unix(claims.exp),
                })
                .await?;
                info!(jti = %claims.jti, "access token revoked");
            }
            return Ok(());
        }
        let refresh = RefreshToken::from_presented(token);
        if let Some(session) = self
            .store
            .revoke_family_of(
                &refresh.to_hash(),
                Timestamp::now(),
                &self.revocation_plan(RevokeReason::TokenRevoked),
            )
            .await?
        {
            self.announce(RevocationEvent::SessionRevoked { session })
                .await?;
            info!(session = %session, "refresh family revoked");
        }
        Ok(())
    }

    /// Deletes what can no longer decide anything: denylisted `jti`s past their `exp`, and
    /// sessions dead for longer than an access token lives (with their refresh tokens), so
    /// the store does not grow without bound.
    pub async fn housekeeping(&self) -> Result<(u64, u64), AuthError> {
        let now = Timestamp::now();
        let pruned = self.store.prune_denylist(now).await?;
        let horizon = now.saturating_sub(crate::keys::retired_key_lifetime(
            self.config.access_token_ttl,
        ));
        let purged = self.store.purge_dead_sessions(horizon).await?;
        // Events older than the horizon can change no verdict; a node cut off for longer
        // reloads its whole state when it reconnects.
        self.store.prune_events(horizon).await?;
        // Webhook messages leave the outbox only once delivered or given up; those are kept a
        // while for inspection.
        let retention = now.saturating_sub(OUTBOX_RETENTION);
        self.store.prune_outbox(retention).await?;
        Ok((pruned, purged))
    }

    // ----- devices -----------------------------------------------------------------------

    /// The caller's session record, from the principal or else the store.
    pub async fn session_of(&self, principal: &Principal) -> Result<Session, AuthError> {
        if let Some(session) = &principal.session {
            return Ok(session.clone());
        }
        self.store
            .find_live_session(principal.session_id, Timestamp::now())
            .await?
            .ok_or(AuthError::Unauthenticated)
    }

    pub async fn sessions_of(&self, user: UserId) -> Result<Vec<Session>, AuthError> {
        Ok(self
            .store
            .list_live_sessions(user, Timestamp::now())
            .await?)
    }

    /// Signs one of the user's devices out. `NotFound` alike for an unknown session and for
    /// someone else's, so the answer leaks nothing about other users' sessions.
    pub async fn revoke_own_session(
        &self,
        user: UserId,
        session: SessionId,
    ) -> Result<(), AuthError> {
        let now = Timestamp::now();
        match self.store.find_live_session(session, now).await? {
            Some(found) if found.user_id == user => {
                let plan = self.revocation_plan(RevokeReason::SignedOutFromAnotherDevice);
                self.store.revoke_session(session, now, &plan).await?;
                self.announce(RevocationEvent::SessionRevoked { session })
                    .await?;
                info!(user = %user, session = %session, "device signed out");
                Ok(())
            }
            _ => Err(AuthError::NotFound),
        }
    }

    /// Signs out every device of the user but the caller's own.
    pub async fn revoke_other_sessions(&self, principal: &Principal) -> Result<u64, AuthError> {
        let revoked = self
            .store
            .revoke_user_sessions(
                principal.user_id,
                Some(principal.session_id),
                Timestamp::now(),
                &self.revocation_plan(RevokeReason::SignedOutFromAnotherDevice),
            )
            .await?;
        self.announce_all(
            revoked
                .iter()
                .map(|session| RevocationEvent::SessionRevoked { session: *session })
                .collect(),
        )
        .await?;
        info!(user = %principal.user_id, sessions = revoked.len(), "other devices signed out");
        Ok(revoked.len() as u64)
    }

    /// Admin: revoke one session by id, whoever owns it; `NotFound` if it is not live.
    pub async fn revoke_session(&self, session: SessionId) -> Result<(), AuthError> {
        let plan = self.revocation_plan(RevokeReason::Administrator);
        if self
            .store
            .revoke_session(session, Timestamp::now(), &plan)
            .await?
        {
            self.announce(RevocationEvent::SessionRevoked { session })
                .await?;
            info!(session = %session, "session revoked by an administrator");
            Ok(())
        } else {
            Err(AuthError::NotFound)
        }
    }

    // ----- keys and admin keys -----------------------------------------------------------

    /// Makes a new signing key in the configured algorithm and retires the active one, whose
    /// public key stays published until every token it signed has expired.
    pub async fn rotate_signing_key(&self) -> Result<SigningKey, AuthError> {
        let key = rotate(self.store.as_ref(), &self.keys.master, &self.config).await?;
        self.reload_keys().await?;
        Ok(key)
    }

    /// Withdraws a retired signing key at once (for a compromised key): its tokens stop
    /// verifying on every node within the revocation feed's lag, in every revocation mode,
    /// rather than at each node's next periodic key reload. The key is deleted first, then
    /// the withdrawal is appended to the revocation log, on which every node rebuilds its key
    /// ring. The active key cannot be withdrawn (nothing could sign; rotate first); an unknown
    /// `kid` is `NotFound`. If the log cannot be written after the deletion, the caller hears
    /// the store error, and other nodes still drop the key at their next periodic reload.
    pub async fn withdraw_signing_key(&self, kid: &str) -> Result<(), AuthError> {
        let sealed = self.store.signing_keys().await?;
        let key = sealed
            .iter()
            .find(|k| k.kid == kid)
            .ok_or(AuthError::NotFound)?;
        if key.retired_at.is_none() {
            return Err(AuthError::ActiveKey);
        }
        if !self.store.delete_signing_key(kid).await? {
            return Err(AuthError::NotFound);
        }
        self.announce(RevocationEvent::KeyWithdrawn {
            kid: kid.to_owned(),
        })
        .await?;
        self.reload_keys().await?;
        warn!(
            kid,
            "signing key withdrawn; tokens it signed no longer verify"
        );
        Ok(())
    }

    /// Creates an admin API key; the secret is returned once and only its hash is kept.
    pub async fn create_admin_key(&self, name: &str) -> Result<(AdminKey, AdminSecret), AuthError> {
        let secret = AdminSecret::generate();
        let key = AdminKey {
            id: AdminKeyId::new(),
            name: name.to_owned(),
            hash: secret.to_hash(),
            created_at: Timestamp::now(),
            revoked_at: None,
        };
        self.store.insert_admin_key(&key).await?;
        Ok((key, secret))
    }

    /// Revokes an admin API key: it stops authenticating at once on every node, which read
    /// admin keys from the store on each request. `NotFound` if no live key has this id.
    pub async fn revoke_admin_key(&self, id: AdminKeyId) -> Result<(), AuthError> {
        if !self.store.revoke_admin_key(id, Timestamp::now()).await? {
            return Err(AuthError::NotFound);
        }
        info!(admin_key = %id, "admin key revoked");
        Ok(())
    }

    pub async fn authenticate_admin(&self, secret: &AdminSecret) -> Result<AdminKey, AuthError> {
        self.store
            .find_live_admin_key(&secret.to_hash())
            .await?
            .ok_or(AuthError::Unauthenticated)
    }
}

/// The key ring a node signs and verifies with, and what it takes to rebuild it from the
/// store; shared between the service and the task that rebuilds it on a withdrawn key.
struct LiveKeys {
    ring: RwLock<Arc<KeyRing>>,
    master: MasterKey,
    store: Arc<dyn Store>,
    config: Arc<Config>,
}

impl LiveKeys {
    fn current(&self) -> Arc<KeyRing> {
        match self.ring.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    async fn reload(&self) -> Result<(), AuthError> {
        let sealed = self.store.signing_keys().await?;
        let ring = KeyRing::from_sealed(
            &sealed,
            &self.master,
            Timestamp::now(),
            self.config.access_token_ttl,
            &self.config.issuer,
            &self.config.audience,
        )
        .map_err(key_error)?;
        match self.ring.write() {
            Ok(mut guard) => *guard = Arc::new(ring),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(ring),
        }
        Ok(())
    }
}

/// How often a cached session's `last_seen_at` is due a write: every minute, or at half a
/// short idle timeout, so activity always keeps a session alive.
fn touch_interval(session: &Session) -> Duration {
    TOUCH_INTERVAL.min(session.idle_timeout / 2)
}

/// Loads the key ring, creating the first key, or rotating when `signing_alg` changed.
async fn ensure_signing_key(
    store: &dyn Store,
    master: &MasterKey,
    config: &Config,
    policy: KeyPolicy,
) -> Result<KeyRing, AuthError> {
    let sealed = store.signing_keys().await?;
    let active = sealed
        .iter()
        .filter(|k| k.retired_at.is_none())
        .max_by_key(|k| k.created_at);
    match active {
        None => {
            rotate(store, master, config).await?;
        }
        Some(key) if key.alg != config.signing_alg.as_str() && policy == KeyPolicy::Serve => {
            warn!(from = %key.alg, to = %config.signing_alg, "signing_alg changed: rotating to a new signing key");
            rotate(store, master, config).await?;
        }
        Some(_) => {}
    }
    let sealed = store.signing_keys().await?;
    KeyRing::from_sealed(
        &sealed,
        master,
        Timestamp::now(),
        config.access_token_ttl,
        &config.issuer,
        &config.audience,
    )
    .map_err(key_error)
}

async fn rotate(
    store: &dyn Store,
    master: &MasterKey,
    config: &Config,
) -> Result<SigningKey, AuthError> {
    let alg = config.signing_alg;
    let key = tokio::task::spawn_blocking(move || SigningKey::generate(alg))
        .await
        .map_err(|e| AuthError::Key(e.to_string()))?
        .map_err(key_error)?;
    let now = Timestamp::now();
    let sealed = key.seal(master, now).map_err(key_error)?;
    let previous: Vec<String> = store
        .signing_keys()
        .await?
        .into_iter()
        .filter(|k| k.retired_at.is_none())
        .map(|k| k.kid)
        .collect();
    store.insert_signing_key(&sealed).await?;
    for kid in previous {
        store.retire_signing_key(&kid, now).await?;
    }
    info!(kid = key.kid(), alg = %alg, "signing key created");
    Ok(key)
}

#[allow(clippy::needless_pass_by_value)] // used as `map_err(key_error)`
fn key_error(e: KeyError) -> AuthError {
    AuthError::Key(e.to_string())
}

fn hmac_with(key: &[u8; 32]) -> HmacSha256 {
    // HMAC zero-pads a short key to the 64-byte block (RFC 2104 §2), so this is the same MAC
    // as `new_from_slice(key)` without its impossible error.
    let mut block = Zeroizing::new([0u8; 64]);
    block[..32].copy_from_slice(key);
    <HmacSha256 as hmac::digest::KeyInit>::new(&(*block).into())
}

fn later_by_a_millisecond(at: Timestamp) -> Timestamp {
    Timestamp::from_unix_millis(at.as_unix_millis().saturating_add(1))
}

/// A `jti` that also records when the token was issued, to the millisecond: a UUID v7, whose
/// first 48 bits are Unix milliseconds (RFC 9562 §5.7). JWT `iat` has whole seconds only
/// (RFC 7519 §2), too coarse to tell a token minted just before an epoch bump from one minted
/// just after it; the signed `jti` carries the rest.
fn jti_at(issued: Timestamp) -> String {
    let millis = u64::try_from(issued.as_unix_millis()).unwrap_or(0);
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        millis / 1000,
        u32::try_from((millis % 1000) * 1_000_000).unwrap_or(0),
    );
    uuid::Uuid::new_v7(ts).to_string()
}

/// When a verified token was issued, to the millisecond: the time in its `jti` when that is a
/// UUID v7 within the second its `iat` names (every token Tessera mints), else the start of
/// that second. The epoch rule (SPEC §5) compares this with `tokens_valid_after`.
pub fn issued_at(claims: &Claims) -> Timestamp {
    let second = Timestamp::from_unix(claims.iat);
    uuid::Uuid::parse_str(&claims.jti)
        .ok()
        .filter(|id| id.get_version_num() == 7)
        .and_then(|id| id.get_timestamp())
        .map(|ts| {
            let (secs, nanos) = ts.to_unix();
            let millis = i64::try_from(secs)
                .unwrap_or(i64::MAX)
                .saturating_mul(1000)
                .saturating_add(i64::from(nanos / 1_000_000));
            Timestamp::from_unix_millis(millis)
        })
        .filter(|precise| precise.as_unix() == claims.iat)
        .unwrap_or(second)
}

/// Trims, sorts and de-duplicates roles, and refuses names that could not travel as a
/// comma-separated `X-Auth-Roles` header value: 1 to 128 of `A-Z a-z 0-9 . _ : -`, at most 64.
fn normalise_roles(roles: Vec<String>) -> Result<Vec<String>, AuthError> {
    let mut roles: Vec<String> = roles
        .into_iter()
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
        .collect();
    let valid = |r: &String| {
        r.len() <= 128
            && r.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
    };
    if roles.len() > 64 || !roles.iter().all(valid) {
        return Err(AuthError::InvalidRoles);
    }
    roles.sort();
    roles.dedup();
    Ok(roles)
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn claims(iat: i64, jti: String) -> Claims {
        Claims {
            iss: "https://issuer.test".into(),
            sub: UserId::new().to_string(),
            aud: "tessera".into(),
            exp: iat + 900,
            iat,
            jti,
            sid: SessionId::new().to_string(),
            roles: vec![],
            scope: None,
        }
    }

    #[test]
    fn a_minted_token_tells_its_issuance_to_the_millisecond() {
        let issued = Timestamp::from_unix_millis(1_700_000_000_987);
        let claims = claims(issued.as_unix(), jti_at(issued));
        assert_eq!(claims.iat, 1_700_000_000);
        assert_eq!(issued_at(&claims), issued);
        // Every jti is still unique.
        assert_ne!(jti_at(issued), jti_at(issued));
    }

    #[test]
    fn a_jti_that_is_not_a_matching_uuid_v7_falls_back_to_the_start_of_iat() {
        let second = Timestamp::from_unix(1_700_000_000);
        for jti in [
            "not-a-uuid".to_owned(),
            "6ba7b810-9dad-11d1-80b4-00c04fd430c8".to_owned(), // a v1 UUID
            // A v7 from another second must not move the issuance out of the `iat` second.
            jti_at(Timestamp::from_unix_millis(1_700_000_005_000)),
        ] {
            assert_eq!(
                issued_at(&claims(second.as_unix(), jti.clone())),
                second,
                "{jti}"
            );
        }
    }

    #[test]
    fn epochs_move_past_now_and_past_the_previous_epoch() {
        let now = Timestamp::from_unix_millis(1_700_000_000_500);
        assert_eq!(
            later_by_a_millisecond(now),
            Timestamp::from_unix_millis(1_700_000_000_501)
        );
        // A token issued in the millisecond of the bump is older than the new epoch.
        let epoch = later_by_a_millisecond(now);
        let token = claims(now.as_unix(), jti_at(now));
        assert!(issued_at(&token) < epoch);
        // One issued after it (never before the epoch, see `issue_access_token`) is not.
        let after = claims(epoch.as_unix(), jti_at(epoch));
        assert!(issued_at(&after) >= epoch);
    }
}
