//! One trait per storage concern. The revocation promise (SPEC §5, §7) is only as strong as
//! the weakest backend, so the semantics are written here and checked by the one conformance
//! suite in `tessera-store`, never left to one backend's quirks.
//!
//! Every method that takes `now` decides liveness with it rather than the backend's clock, so
//! all nodes and all backends agree on what "expired" means.
//!
//! Methods whose change an event reports (SPEC §3 webhooks) take the messages to queue —
//! `outbox: &[OutboxMessage]` when the core knows them in advance, a [`WebhookPlan`] when
//! only the backend knows which sessions the change revoked — and write them in the same
//! transaction as the change: a change that is not stored queues nothing, and a stored change
//! never loses its event, whatever crashes in between. An empty outbox or
//! [`WebhookPlan::none`] writes nothing.

use std::time::Duration;

use async_trait::async_trait;

use crate::model::{
    AdminKey, AdminKeyId, Email, OutboxId, RefreshRecord, RevocationEvent, Rotation, SealedKey,
    Session, SessionId, Timestamp, User, UserId,
};
use crate::secret::SecretHash;
use crate::webhooks::{OutboxMessage, QueuedMessage, WebhookPlan};

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
    /// Replaces the roles; `false` if there is no such user. `outbox` is queued only when the
    /// roles actually change (a user who already has exactly these roles queues nothing).
    async fn set_roles(
        &self,
        id: UserId,
        roles: &[String],
        outbox: &[OutboxMessage],
    ) -> Result<bool, StoreError>;
    /// Raises `tokens_valid_after` to `at` (never lowers it); `false` if there is no such user.
    /// `outbox` is queued whenever the user exists.
    async fn bump_epoch(
        &self,
        id: UserId,
        at: Timestamp,
        outbox: &[OutboxMessage],
    ) -> Result<bool, StoreError>;
    /// Every user whose `tokens_valid_after` is at or after `since` (inclusive), with that
    /// epoch, in no particular order: for warming a revocation cache (SPEC §5). Only epochs
    /// within the last access-token lifetime can still kill a token, so callers pass
    /// `now - access_token_ttl`. A new user starts at epoch 0 (the Unix epoch), so only users
    /// whose epoch was bumped (sign-out everywhere, role change) are listed.
    async fn epochs_since(&self, since: Timestamp) -> Result<Vec<(UserId, Timestamp)>, StoreError>;
}

#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// `Conflict("session")` if the id or the secret hash is taken, and then nothing of
    /// `outbox` is queued either.
    async fn insert_session(
        &self,
        session: &Session,
        outbox: &[OutboxMessage],
    ) -> Result<(), StoreError>;
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
    /// so retries after a timeout are safe. `plan`'s messages are queued for the session only
    /// when it was revoked by this call.
    async fn revoke_session(
        &self,
        id: SessionId,
        at: Timestamp,
        plan: &WebhookPlan,
    ) -> Result<bool, StoreError>;
    /// Revokes every unrevoked session of the user but `keep`; returns their ids (in no
    /// particular order), so each revocation can be announced to other nodes' caches, and
    /// queues `plan`'s messages for each of them.
    async fn revoke_user_sessions(
        &self,
        user: UserId,
        keep: Option<SessionId>,
        at: Timestamp,
        plan: &WebhookPlan,
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
    /// - otherwise → revoke the session at `now` → [`Rotation::ReuseDetected`], queueing
    ///   `on_reuse`'s messages for the session (the only outcome that queues anything).
    async fn rotate_refresh(
        &self,
        presented: &SecretHash,
        successor: &SecretHash,
        now: Timestamp,
        grace: Duration,
        on_reuse: &WebhookPlan,
    ) -> Result<Rotation, StoreError>;
    /// RFC 7009 revocation of a refresh token: revokes the whole family (the session) of the
    /// token whose hash is `presented`, at `at`. Any token of the family counts, spent
    /// (rotated) or current, so a client revoking a stale copy still signs the device out.
    ///
    /// Returns the family's session id whenever the token is known — also when its session
    /// was already revoked (its `revoked_at` is kept, not moved) or has expired (it is then
    /// marked revoked at `at`) — and `None` for an unknown token, which RFC 7009 §2.2 answers
    /// like any other. Idempotent, so retries are safe. It never reports reuse: revoking is
    /// not presenting the token for rotation. `plan`'s messages are queued only when this call
    /// revoked the session (not when it was revoked already).
    async fn revoke_family_of(
        &self,
        presented: &SecretHash,
        at: Timestamp,
        plan: &WebhookPlan,
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

/// The webhook outbox (SPEC §3): messages queued by the mutating methods above, in the same
/// transaction as their change, waiting for delivery. Delivery is at-least-once: a message
/// leaves the queue only when it is delivered or given up, so a crash or restart at any point
/// sends it again rather than losing it.
///
/// Every node may run a delivery worker on one shared store;
/// [`claim_message`](Self::claim_message) keeps two of them from sending one message at once.
#[async_trait]
pub trait OutboxStore: Send + Sync + 'static {
    /// Up to `limit` messages due at `now` — neither delivered nor given up, and
    /// `next_attempt_at <= now` — earliest `next_attempt_at` first, ties in queueing order.
    /// Reads only: a worker then claims each message before sending it.
    async fn due_messages(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<QueuedMessage>, StoreError>;
    /// Takes a due message for one delivery attempt: if it is still due at `now`, moves its
    /// `next_attempt_at` to `until` and returns `true`; `false` if another worker claimed it
    /// first, or it is finished or unknown. A worker that dies holding the claim leaves the
    /// message due again at `until`, so nothing is lost; pick `until` beyond the attempt's
    /// timeout, or a slow attempt may be duplicated by another worker.
    async fn claim_message(
        &self,
        id: OutboxId,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool, StoreError>;
    /// The endpoint acknowledged the message: it is never due again. `false` if it was unknown
    /// or already finished (delivered or given up).
    async fn mark_delivered(&self, id: OutboxId, at: Timestamp) -> Result<bool, StoreError>;
    /// An attempt failed: records `attempts` (failed attempts so far) and `error` (short; never
    /// the body), and hides the message until `next_attempt_at`. `false`, changing nothing, if
    /// it was unknown or already finished.
    async fn reschedule(
        &self,
        id: OutboxId,
        attempts: u32,
        next_attempt_at: Timestamp,
        error: &str,
    ) -> Result<bool, StoreError>;
    /// Stops retrying at `at` with `error`: the message is never due again. `false` if it was
    /// unknown or already finished.
    async fn give_up(&self, id: OutboxId, at: Timestamp, error: &str) -> Result<bool, StoreError>;
    /// Deletes every message finished (delivered or given up) strictly before `before`, and
    /// returns how many; messages still waiting are never touched.
    async fn prune_outbox(&self, before: Timestamp) -> Result<u64, StoreError>;
}

/// Everything a Tessera node needs from its durable store, as one object the server can hold
/// as `Arc<dyn Store>` chosen from the `database` setting at start.
#[async_trait]
pub trait Store:
    UserStore
    + SessionStore
    + RefreshStore
    + DenylistStore
    + RevocationLog
    + OutboxStore
    + KeyStore
    + AdminKeyStore
{
    /// A cheap round trip, for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;
}
