//! One trait per storage concern. The revocation promise (SPEC §5, §7) is only as strong as
//! the weakest backend, so the semantics are written here and checked by the one conformance
//! suite in `tessera-store`, never left to one backend's quirks.
//!
//! Every method that takes `now` decides liveness with it rather than the backend's clock, so
//! all nodes and all backends agree on what "expired" means.

use std::time::Duration;

use async_trait::async_trait;

use crate::model::{
    AdminKey, AdminKeyId, Email, RefreshRecord, Rotation, SealedKey, Session, SessionId, Timestamp,
    User, UserId,
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
    /// Revokes every unrevoked session of the user but `keep`; returns how many.
    async fn revoke_user_sessions(
        &self,
        user: UserId,
        keep: Option<SessionId>,
        at: Timestamp,
    ) -> Result<u64, StoreError>;
    /// The user's live sessions, newest first: their devices.
    async fn list_live_sessions(
        &self,
        user: UserId,
        now: Timestamp,
    ) -> Result<Vec<Session>, StoreError>;
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
#[async_trait]
pub trait Store: UserStore + SessionStore + RefreshStore + KeyStore + AdminKeyStore {
    /// A cheap round trip, for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;
}
