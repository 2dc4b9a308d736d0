//! One trait per storage concern. The revocation promise (SPEC §5, §7) is only as strong as
//! the weakest backend, so the semantics are written here and checked by the one conformance
//! suite in `tessera-store`, never left to one backend's quirks.
//!
//! Every method that takes `now` decides liveness with it rather than the backend's clock, so
//! all nodes and all backends agree on what "expired" means.
//!
//! **One transaction per operation.** Every change that matters to another node or to a
//! webhook receiver — a user, a session, a refresh rotation, a revocation, an epoch, a key — is
//! written through a [`StoreTx`] from [`Store::begin`], together with the revocation-log
//! entries and the webhook messages that report it, and [`StoreTx::commit`] makes all of it
//! visible at once; dropping the transaction without committing leaves no trace of any of it.
//! So a crash or an error between two steps can never leave a revocation stored but
//! unannounced, or announced but not stored. The rules (who may be revoked, what a refresh
//! does) live in the core: a transaction only reads for update and writes.
//!
//! The traits below the transaction read (the hot path reads outside any transaction) and do
//! housekeeping writes that report nothing: `last_seen_at`, pruning, webhook delivery state.
//! Each of those is atomic on its own. A task holding a transaction must not call them, nor
//! begin a second transaction: backends admit one writer at a time (SQLite's single write
//! connection, the memory store's writer lock), so it would wait for itself.

use async_trait::async_trait;

use crate::guessing::Tally;
use crate::model::{
    AdminKey, AdminKeyId, Email, EmailToken, EmailTokenId, OutboxId, RefreshRecord,
    RevocationEvent, SealedKey, Session, SessionId, Timestamp, User, UserId,
};
use crate::rotation::PresentedToken;
use crate::secret::SecretHash;
use crate::webhooks::{OutboxMessage, QueuedMessage};

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

/// One write transaction: everything an operation changes, with the revocation-log entries
/// and webhook messages that report it, committed together or not at all (see the module
/// documentation). Reads through it see the transaction's own writes and are made for update:
/// no other writer can change what was read before this transaction ends.
///
/// Dropping it without [`commit`](Self::commit) rolls everything back, also when a write
/// failed half-way: an error from any method leaves the transaction fit only for dropping.
#[async_trait]
pub trait StoreTx: Send {
    // ----- reads for update

    async fn user_for_update(&mut self, id: UserId) -> Result<Option<User>, StoreError>;
    /// The session whatever its state (live, expired or revoked); `None` only if unknown.
    async fn session_for_update(&mut self, id: SessionId) -> Result<Option<Session>, StoreError>;
    /// The refresh token whose hash is `presented`, as the rotation rule needs it, with its
    /// family's session when that is live at `now`; `None` for an unknown token.
    async fn refresh_token_for_update(
        &mut self,
        presented: &SecretHash,
        now: Timestamp,
    ) -> Result<Option<PresentedToken>, StoreError>;
    /// The session (refresh family) that the token whose hash is `presented` belongs to,
    /// whatever its state and whether the token is spent or current; `None` if unknown.
    async fn refresh_family_for_update(
        &mut self,
        presented: &SecretHash,
    ) -> Result<Option<Session>, StoreError>;
    /// Every signing key, retired or not, oldest first.
    async fn signing_keys_for_update(&mut self) -> Result<Vec<SealedKey>, StoreError>;

    // ----- users

    /// `Conflict("email")` if the normalised email is taken.
    async fn insert_user(&mut self, user: &User) -> Result<(), StoreError>;
    /// Replaces the roles; `false` if there is no such user.
    async fn set_roles(&mut self, id: UserId, roles: &[String]) -> Result<bool, StoreError>;
    /// Replaces the argon2id PHC string; `false` if there is no such user.
    async fn set_password_hash(
        &mut self,
        id: UserId,
        password_hash: &str,
    ) -> Result<bool, StoreError>;
    /// Moves `tokens_valid_after` to the later of `at` and one millisecond past its current
    /// value, and returns it; `None` if there is no such user. Epochs therefore strictly
    /// increase, also when two bumps of one user race on two nodes: each gets its own value,
    /// and a token minted between them is dead by the second.
    async fn bump_epoch(
        &mut self,
        id: UserId,
        at: Timestamp,
    ) -> Result<Option<Timestamp>, StoreError>;

    /// Records that the user's address was verified at `at`, unless it already was (the
    /// first proof stands); `false` if there is no such user.
    async fn set_email_verified(&mut self, id: UserId, at: Timestamp) -> Result<bool, StoreError>;

    // ----- mailed links (recovery, verification)

    /// Stores a mailed link's token unless one with its id exists, and then marks every
    /// other unspent token of the same user and purpose spent at `token.created_at`: a newer
    /// link supersedes the older ones. Returns whether it was stored; `false` (changing
    /// nothing) when the id is taken, so a mail job retried after a failed send neither
    /// creates a second token nor revives one since used or superseded.
    async fn insert_email_token(&mut self, token: &EmailToken) -> Result<bool, StoreError>;
    /// The token whose hash is `hash`, spent or not; `None` if unknown.
    async fn email_token_for_update(
        &mut self,
        hash: &SecretHash,
    ) -> Result<Option<EmailToken>, StoreError>;
    /// The token with this id, spent or not; `None` if unknown.
    async fn email_token_by_id_for_update(
        &mut self,
        id: EmailTokenId,
    ) -> Result<Option<EmailToken>, StoreError>;
    /// Marks the token spent at `at` unless it already is; whether this call spent it.
    async fn spend_email_token(
        &mut self,
        id: EmailTokenId,
        at: Timestamp,
    ) -> Result<bool, StoreError>;
    /// Deletes the user with their sessions and refresh tokens, and keeps a tombstone: the
    /// id, its `tokens_valid_after` as it stands in this transaction, and `deleted_at = at`.
    /// The revocations of the deleted sessions go with their rows, so the tombstone is what
    /// keeps the user's unexpired access tokens refused by a node that warms its cache
    /// afterwards ([`UserStore::epochs_since`] lists it): bump the epoch first. Webhook
    /// messages and revocation-log entries are not the user's rows and stay. `false` (and
    /// nothing written) if there is no such user.
    async fn delete_user(&mut self, id: UserId, at: Timestamp) -> Result<bool, StoreError>;

    // ----- sessions and refresh families

    /// `Conflict("session")` if the id or the secret hash is taken.
    async fn insert_session(&mut self, session: &Session) -> Result<(), StoreError>;
    /// Marks the session revoked at `at` unless it already is, whatever its expiry; returns
    /// whether this call revoked it, so retries after a timeout are safe and report nothing
    /// twice. Whether a session may be revoked (live, owned by the caller) is the core's rule.
    async fn revoke_session(&mut self, id: SessionId, at: Timestamp) -> Result<bool, StoreError>;
    /// Revokes every unrevoked session of the user but `keep`; returns their ids, in no
    /// particular order, so each revocation can be logged and reported.
    async fn revoke_user_sessions(
        &mut self,
        user: UserId,
        keep: Option<SessionId>,
        at: Timestamp,
    ) -> Result<Vec<SessionId>, StoreError>;
    /// Stores the first token of a family (the session must exist); `Conflict("refresh")` if
    /// the hash is taken.
    async fn insert_refresh(&mut self, record: &RefreshRecord) -> Result<(), StoreError>;
    /// Carries out [`Decision::Rotate`](crate::rotation::Decision::Rotate): marks `presented`
    /// spent at `at` with `successor` as its successor, stores `successor` as the family's
    /// current token, and moves the session's `last_seen_at` forward to `at`.
    /// `Conflict("refresh")` if `successor` is taken.
    async fn spend_refresh(
        &mut self,
        presented: &SecretHash,
        successor: &SecretHash,
        at: Timestamp,
    ) -> Result<(), StoreError>;

    // ----- the access-token denylist

    /// Refuses the access token with this `jti` until `expires_at` (its `exp`). Denying a jti
    /// already denied keeps the later of the two expiries and is never an error, so retries
    /// and revocations racing on two nodes are safe.
    async fn deny_jti(&mut self, jti: &str, expires_at: Timestamp) -> Result<(), StoreError>;

    // ----- keys

    /// `Conflict("kid")` if the kid is taken.
    async fn insert_signing_key(&mut self, key: &SealedKey) -> Result<(), StoreError>;
    /// Marks an active key retired at `at`; `false` if unknown or already retired.
    async fn retire_signing_key(&mut self, kid: &str, at: Timestamp) -> Result<bool, StoreError>;
    /// Deletes a key outright (its tokens stop verifying); `false` if unknown.
    async fn delete_signing_key(&mut self, kid: &str) -> Result<bool, StoreError>;
    /// `Conflict("admin_key")` if the id or the hash is taken.
    async fn insert_admin_key(&mut self, key: &AdminKey) -> Result<(), StoreError>;
    /// `false` if unknown or already revoked.
    async fn revoke_admin_key(&mut self, id: AdminKeyId, at: Timestamp)
        -> Result<bool, StoreError>;

    // ----- what the change reports

    /// Appends an event stamped `at` to the revocation log; see [`RevocationLog`] for the
    /// contract. Returns its position, which is only final once committed.
    async fn append_revocation(
        &mut self,
        event: &RevocationEvent,
        at: Timestamp,
    ) -> Result<u64, StoreError>;
    /// Queues webhook messages for delivery (SPEC §3); `Conflict("outbox")` if an id is taken.
    async fn enqueue(&mut self, messages: &[OutboxMessage]) -> Result<(), StoreError>;

    /// Makes every write of this transaction durable and visible at once; on error, none is.
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

#[async_trait]
pub trait UserStore: Send + Sync + 'static {
    async fn find_user(&self, id: UserId) -> Result<Option<User>, StoreError>;
    async fn find_user_by_email(&self, email: &Email) -> Result<Option<User>, StoreError>;
    /// Ordered by creation.
    async fn list_users(&self) -> Result<Vec<User>, StoreError>;
    /// Every user whose `tokens_valid_after` is at or after `since` (inclusive), with that
    /// epoch, in no particular order: for warming a revocation cache (SPEC §5). Only epochs
    /// within the last access-token lifetime can still kill a token, so callers pass
    /// `now - access_token_ttl`. A new user starts at epoch 0 (the Unix epoch), so only users
    /// whose epoch was bumped (sign-out everywhere, role change) are listed. Deleted users
    /// are listed too, with their last epoch, for as long as their tombstone is kept (see
    /// [`StoreTx::delete_user`]).
    async fn epochs_since(&self, since: Timestamp) -> Result<Vec<(UserId, Timestamp)>, StoreError>;
    /// Housekeeping: deletes every mailed link's token that expired strictly before `before`,
    /// spent or not, and returns how many. An expired token is refused whether or not it is
    /// still stored, so pruning changes no answer.
    async fn prune_email_tokens(&self, before: Timestamp) -> Result<u64, StoreError>;
    /// The mailed link's token whose hash is `hash`, spent or not; `None` if unknown. A read
    /// outside any transaction, for the pages a link opens: looking at a link takes no lock.
    async fn find_email_token(&self, hash: &SecretHash) -> Result<Option<EmailToken>, StoreError>;
}

#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
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
    /// Housekeeping: moves `last_seen_at` forward to `at` (never back), extending the idle
    /// expiry of a live session; a session already dead (idle, expired or revoked) is never
    /// revived.
    async fn touch_session(&self, id: SessionId, at: Timestamp) -> Result<(), StoreError>;
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
    /// Housekeeping: deletes every session that ended strictly before `before` — revoked
    /// before it, or expired (idle or absolute) before it — together with its refresh tokens,
    /// so the tables do not grow forever; returns how many sessions were deleted. A session
    /// ending exactly at `before` is kept.
    ///
    /// Pass `now - access_token_ttl` or earlier, never a time after `now`: a session revoked
    /// within the last access-token lifetime must stay visible to
    /// [`revoked_sessions_since`](Self::revoked_sessions_since) while its access tokens live.
    /// Purging changes no verdict on a credential: a dead session already answers as an
    /// unknown one does. Tombstones of users deleted strictly before `before` go too (they
    /// are not counted): their last access tokens have expired by then.
    async fn purge_dead_sessions(&self, before: Timestamp) -> Result<u64, StoreError>;
}

/// The access-token `jti` denylist (SPEC §5): how a single access token is revoked before its
/// `exp` (RFC 7009 for an access token), written with [`StoreTx::deny_jti`]. An entry only
/// matters until the token would have expired anyway, so each carries that expiry and
/// [`prune_denylist`](Self::prune_denylist) keeps the list as small as the set of tokens alive
/// at once.
#[async_trait]
pub trait DenylistStore: Send + Sync + 'static {
    /// Whether `jti` is denied at `now`: true only while `now < expires_at`, so an entry stops
    /// mattering at the instant its token stops verifying, pruned or not.
    async fn is_jti_denied(&self, jti: &str, now: Timestamp) -> Result<bool, StoreError>;
    /// Every entry still in force at `now` (`now < expires_at`), with its expiry, in no
    /// particular order: for warming an in-process cache.
    async fn denied_jtis(&self, now: Timestamp) -> Result<Vec<(String, Timestamp)>, StoreError>;
    /// Housekeeping: deletes every entry no longer in force at `now` (`expires_at <= now`)
    /// and returns how many. Entries still in force are never touched.
    async fn prune_denylist(&self, now: Timestamp) -> Result<u64, StoreError>;
}

#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// Every key, retired or not, oldest first.
    async fn signing_keys(&self) -> Result<Vec<SealedKey>, StoreError>;
}

#[async_trait]
pub trait AdminKeyStore: Send + Sync + 'static {
    /// `None` for unknown or revoked keys.
    async fn find_live_admin_key(&self, hash: &SecretHash) -> Result<Option<AdminKey>, StoreError>;
}

/// The durable log behind the revocation feed: every node appends what it revoked, inside the
/// transaction of the revocation itself ([`StoreTx::append_revocation`]), and reads what the
/// others did, so a node that was cut off catches up from its cursor instead of silently
/// missing a revocation. Push channels (PostgreSQL `NOTIFY`, Redis pub/sub) only wake readers
/// sooner and carry nothing the log does not hold; this log is the truth.
///
/// The contract a reader relies on:
/// - an entry exists exactly when the transaction that appended it committed;
/// - positions strictly increase in the order entries become visible, so a reader following a
///   cursor with [`events_after`](Self::events_after) sees every committed entry exactly once,
///   in order;
/// - in particular a reader never skips an entry that commits *later* than one it has read
///   but holds a *lower* position. A backend whose positions are handed out before commit (a
///   PostgreSQL sequence, where two transactions can take 7 and 8 and commit 8 first) must
///   prevent exactly this: either serialise appenders until commit (a transaction-level
///   advisory lock taken before the append, so positions commit in order), or make readers
///   stop short of the oldest position still in flight. SQLite and the memory store admit one
///   writer at a time, so their positions commit in order by construction.
#[async_trait]
pub trait RevocationLog: Send + Sync + 'static {
    /// Up to `limit` events with a position above `after`, in order, with their stamps.
    async fn events_after(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, Timestamp, RevocationEvent)>, StoreError>;
    /// The highest position so far (0 for an empty log).
    async fn latest_event(&self) -> Result<u64, StoreError>;
    /// Housekeeping: deletes events stamped before `before`; returns how many. Positions are
    /// never reused after pruning.
    async fn prune_events(&self, before: Timestamp) -> Result<u64, StoreError>;
}

/// The webhook outbox (SPEC §3): messages queued by [`StoreTx::enqueue`], in the transaction
/// of the change they report, waiting for delivery. Delivery is at-least-once: a message
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
    /// Housekeeping: deletes every message finished (delivered or given up) strictly before
    /// `before`, and returns how many; messages still waiting are never touched.
    async fn prune_outbox(&self, before: Timestamp) -> Result<u64, StoreError>;
}

/// The guessing counters (SPEC §2, §7): one [`Tally`] per key, shared by every node so that
/// one limit holds across all of them. The rules are [`crate::guessing::admit`] and
/// [`crate::guessing::release`]; a backend only makes their read-modify-write atomic and
/// forgets a tally at its `expires_at`, so the number of keys stays bounded by the attempts
/// of one window however many addresses an attacker rotates through. The durable stores keep
/// them, and Redis when it is configured (native TTLs); they are not a system of record:
/// losing them only forgives recent failures.
#[async_trait]
pub trait GuessingCounters: Send + Sync + 'static {
    /// Atomically reads the tally under `key` (`None` when absent or expired at `now`) and
    /// replaces it with `change(tally)` until that tally's `expires_at`, or deletes it when
    /// `change` returns `None`. Returns the tally read. No other update of `key`, on any node,
    /// runs between the read and the write; `change` may run more than once.
    async fn update_tally(
        &self,
        key: &str,
        now: Timestamp,
        change: &(dyn Fn(Option<Tally>) -> Option<Tally> + Send + Sync),
    ) -> Result<Option<Tally>, StoreError>;
    /// The tally under `key`, `None` when absent or expired at `now`.
    async fn tally(&self, key: &str, now: Timestamp) -> Result<Option<Tally>, StoreError>;
    /// Forgets the tally under `key` (an administrator's unlock).
    async fn clear_tally(&self, key: &str) -> Result<(), StoreError>;
    /// Housekeeping: deletes every tally expired at `now`; returns how many. A backend whose
    /// keys expire by themselves returns 0.
    async fn prune_tallies(&self, now: Timestamp) -> Result<u64, StoreError>;
}

/// Everything a Tessera node needs from its durable store, as one object the server can hold
/// as `Arc<dyn Store>` chosen from the `database` setting at start.
#[async_trait]
pub trait Store:
    UserStore
    + SessionStore
    + DenylistStore
    + RevocationLog
    + OutboxStore
    + KeyStore
    + AdminKeyStore
    + GuessingCounters
{
    /// This store as the guessing counters, for a node without Redis.
    fn guessing(&self) -> &dyn GuessingCounters;
    /// Opens a write transaction (see the module documentation). Waits while another writer
    /// holds one.
    async fn begin(&self) -> Result<Box<dyn StoreTx>, StoreError>;
    /// A cheap round trip, for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Which backend this is (`memory`, `SQLite`, `PostgreSQL`), for logs and `/readyz`.
    fn backend(&self) -> &'static str;
    /// The connection pool's use, for `/metrics`; `None` for a backend without a shared pool.
    fn pool_use(&self) -> Option<PoolUse> {
        None
    }
}

/// How busy a store's connection pool is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolUse {
    /// Connections open now, busy or idle.
    pub open: u32,
    /// Of those, connections waiting for work.
    pub idle: u32,
    /// The most the pool opens (`database_pool_size`).
    pub max: u32,
}
