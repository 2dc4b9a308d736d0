//! One trait per storage concern. The revocation promise (SPEC §5, §7) is only as strong as
//! the weakest backend, so the semantics are written here and checked by the one conformance
//! suite in `tessera-store`, never left to one backend's quirks.
//!
//! Every method that takes `now` decides liveness with it rather than the backend's clock, so
//! all nodes and all backends agree on what "expired" means.

use std::time::Duration;

use async_trait::async_trait;

use crate::model::{
    AdminKey, AdminKeyId, Email, RefreshRecord, RevocationEvent, Rotation, SealedKey, Session,
    SessionId, Timestamp, User, UserId,
};
use crate::secret::SecretHash;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule was hit; the payload names it (`email`, `kid`, …).
    #[error("{0} already exists")]
    Conflict(&'static str),
    /// The backend could not be reached or failed; the text is for logs only, never responses.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored value could not be read back (bad UUID, bad hash length …).
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
}

#[async_trait]
pub trait UserStore: Send + Sync + 'static {
    /// `Conflict("email")` if the normalised email is taken.
    async fn insert_user(&self, user: &User) -> Result<(), StoreError>;
    async fn find_user(&self, id: UserId) -> Result<Option<User>, StoreError>;
    async fn find_user_by_email(&self, email: &Email) -> Result<Option<User>, StoreError>;
    /// Ordered by creation.
    async fn list_users(&self) -> Result<Vec<User>, StoreError>;
    /// Replaces the roles; `false` if there is no such user.
    async fn set_roles(&self, id: UserId, roles: &[String]) -> Result<bool, StoreError>;
    /// Raises `tokens_valid_after` to `at` (never lowers it); `false` if there is no such user.
    async fn bump_epoch(&self, id: UserId, at: Timestamp) -> Result<bool, StoreError>;
    /// Every user whose `tokens_valid_after` is at or after `since` (inclusive), with that
    /// epoch, in no particular order: for warming a revocation cache (SPEC §5). Only epochs
    /// within the last access-token lifetime can still kill a token, so callers pass
    /// `now - access_token_ttl`. A new user's epoch is its `created_at`, so recent sign-ups
    /// are listed too; that is harmless, as no token of theirs predates it.
    async fn epochs_since(&self, since: Timestamp) -> Result<Vec<(UserId, Timestamp)>, StoreError>;
}

#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// `Conflict("session")` if the id or the secret hash is taken.
    async fn insert_session(&self, session: &Session) -> Result<(), StoreError>;
    /// `None` for unknown, expired (idle or absolute) or revoked: callers must not re-check.
    async fn find_live_session(
        &self,
        id: SessionId,
        now: Timestamp,
    ) -> Result<Option<Session>, StoreError>;
    /// As [`find_live_session`](Self::find_live_session), by the cookie secret's hash.
    async fn find_live_session_by_hash(
        &self,
        hash: &SecretHash,
        now: Timestamp,
    ) -> Result<Option<Session>, StoreError>;
    /// Moves `last_seen_at` forward to `at` (never back), extending the idle expiry of a live
    /// session; a session already dead (idle, expired or revoked) is never revived.
    async fn touch_session(&self, id: SessionId, at: Timestamp) -> Result<(), StoreError>;
    /// Returns whether a live session was revoked (an expired one is left as it is); idempotent
    /// so retries after a timeout are safe.
    async fn revoke_session(&self, id: SessionId, at: Timestamp) -> Result<bool, StoreError>;
    /// Revokes every unrevoked session of the user but `keep`; returns their ids (in no
    /// particular order), so each revocation can be announced to other nodes' caches.
    async fn revoke_user_sessions(
        &self,
        user: UserId,
        keep: Option<SessionId>,
        at: Timestamp,
    ) -> Result<Vec<SessionId>, StoreError>;
    /// The user's live sessions, newest first: their devices.
    async fn list_live_sessions(
        &self,
        user: UserId,
        now: Timestamp,
    ) -> Result<Vec<Session>, StoreError>;
    /// Every session whose `revoked_at` is at or after `since` (inclusive), with its user and
    /// `revoked_at`, in no particular order: for warming a revocation cache (SPEC §5). Only
    /// revocations within the last access-token lifetime matter (older sessions' access tokens
    /// have expired), so callers pass `now - access_token_ttl`.
    async fn revoked_sessions_since(
        &self,
        since: Timestamp,
    ) -> Result<Vec<(SessionId, UserId, Timestamp)>, StoreError>;
    /// Deletes every session that ended strictly before `before` — revoked before it, or
    /// expired (idle or absolute) before it — together with its refresh tokens, so the tables
    /// do not grow forever; returns how many sessions were deleted. A session ending exactly
    /// at `before` is kept.
    ///
    /// Pass `now - access_token_ttl` or earlier, never a time after `now`: a session revoked
    /// within the last access-token lifetime must stay visible to
    /// [`revoked_sessions_since`](Self::revoked_sessions_since) while its access tokens live.
    /// Purging changes no verdict on a credential: a dead session already answers as an
    /// unknown one does (`None`, [`Rotation::Invalid`]).
    async fn purge_dead_sessions(&self, before: Timestamp) -> Result<u64, StoreError>;
}

#[async_trait]
pub trait RefreshStore: Send + Sync + 'static {
    /// Stores the first token of a family (the session must exist).
    async fn insert_refresh(&self, record: &RefreshRecord) -> Result<(), StoreError>;
    /// Atomically applies RFC 9700 §4.14.2 rotation to the token whose hash is `presented`;
    /// `successor` is the hash of the token that replaces it (derived deterministically by the
    /// core, so a replay within `grace` can be answered with the same successor).
    ///
    /// - unknown token, or its session not live → [`Rotation::Invalid`];
    /// - never rotated → mark it rotated at `now`, store `successor` in the same family, touch
    ///   the session → [`Rotation::Rotated`];
    /// - rotated no more than `grace` ago and its successor not yet rotated itself →
    ///   [`Rotation::Replayed`] (nothing changes);
    /// - otherwise → revoke the session at `now` → [`Rotation::ReuseDetected`].
    async fn rotate_refresh(
        &self,
        presented: &SecretHash,
        successor: &SecretHash,
        now: Timestamp,
        grace: Duration,
    ) -> Result<Rotation, StoreError>;
    /// RFC 7009 revocation of a refresh token: revokes the whole family (the session) of the
    /// token whose hash is `presented`, at `at`. Any token of the family counts, spent
    /// (rotated) or current, so a client revoking a stale copy still signs the device out.
    ///
    /// Returns the family's session id whenever the token is known — also when its session
    /// was already revoked (its `revoked_at` is kept, not moved) or has expired (it is then
    /// marked revoked at `at`) — and `None` for an unknown token, which RFC 7009 §2.2 answers
    /// like any other. Idempotent, so retries are safe. It never reports reuse: revoking is
    /// not presenting the token for rotation.
    async fn revoke_family_of(
        &self,
        presented: &SecretHash,
        at: Timestamp,
    ) -> Result<Option<SessionId>, StoreError>;
}

/// The access-token `jti` denylist (SPEC §5): how a single access token is revoked before its
/// `exp` (RFC 7009 for an access token). An entry only matters until the token would have
/// expired anyway, so each carries that expiry and [`prune_denylist`](Self::prune_denylist)
/// keeps the list as small as the set of tokens alive at once.
#[async_trait]
pub trait DenylistStore: Send + Sync + 'static {
    /// Refuses the access token with this `jti` until `expires_at` (its `exp`). Denying a jti
    /// already denied keeps the later of the two expiries and is never an error, so retries
    /// and revocations racing on two nodes are safe.
    async fn deny_jti(&self, jti: &str, expires_at: Timestamp) -> Result<(), StoreError>;
    /// Whether `jti` is denied at `now`: true only while `now < expires_at`, so an entry stops
    /// mattering at the instant its token stops verifying, pruned or not.
    async fn is_jti_denied(&self, jti: &str, now: Timestamp) -> Result<bool, StoreError>;
    /// Every entry still in force at `now` (`now < expires_at`), with its expiry, in no
    /// particular order: for warming an in-process cache.
    async fn denied_jtis(&self, now: Timestamp) -> Result<Vec<(String, Timestamp)>, StoreError>;
    /// Deletes every entry no longer in force at `now` (`expires_at <= now`) and returns how
    /// many; run periodically so the denylist does not grow without bound. Entries still in
    /// force are never touched.
    async fn prune_denylist(&self, now: Timestamp) -> Result<u64, StoreError>;
}

#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// `Conflict("kid")` if the kid is taken.
    async fn insert_signing_key(&self, key: &SealedKey) -> Result<(), StoreError>;
    /// Every key, retired or not, oldest first.
    async fn signing_keys(&self) -> Result<Vec<SealedKey>, StoreError>;
    /// Marks an active key retired at `at`; `false` if unknown or already retired.
    async fn retire_signing_key(&self, kid: &str, at: Timestamp) -> Result<bool, StoreError>;
    /// Deletes a key outright (its tokens stop verifying); `false` if unknown.
    async fn delete_signing_key(&self, kid: &str) -> Result<bool, StoreError>;
}

#[async_trait]
pub trait AdminKeyStore: Send + Sync + 'static {
    async fn insert_admin_key(&self, key: &AdminKey) -> Result<(), StoreError>;
    /// `None` for unknown or revoked keys.
    async fn find_live_admin_key(&self, hash: &SecretHash) -> Result<Option<AdminKey>, StoreError>;
    async fn revoke_admin_key(&self, id: AdminKeyId, at: Timestamp) -> Result<bool, StoreError>;
}

/// Everything a Tessera node needs from its durable store, as one object the server can hold
/// as `Arc<dyn Store>` chosen from the `database` setting at start.
/// The durable log behind the revocation feed: every node appends what it revoked and reads
/// what the others did, so a node that was cut off catches up from its cursor instead of
/// silently missing a revocation. Push channels (PostgreSQL `NOTIFY`, Redis pub/sub) only
/// shorten the wait; this log is the truth.
#[async_trait]
pub trait RevocationLog: Send + Sync + 'static {
    /// Appends an event stamped `at`; returns its sequence number (strictly increasing).
    async fn append_event(&self, event: &RevocationEvent, at: Timestamp)
        -> Result<u64, StoreError>;
    /// Up to `limit` events with a sequence number above `after`, in order, with their stamps.
    async fn events_after(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, Timestamp, RevocationEvent)>, StoreError>;
    /// The highest sequence number so far (0 for an empty log).
    async fn latest_event(&self) -> Result<u64, StoreError>;
    /// Deletes events stamped before `before`; returns how many.
    async fn prune_events(&self, before: Timestamp) -> Result<u64, StoreError>;
}

#[async_trait]
pub trait Store:
    UserStore + SessionStore + RefreshStore + DenylistStore + RevocationLog + KeyStore + AdminKeyStore
{
    /// A cheap round trip, for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;
}
