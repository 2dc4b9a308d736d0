//! A store wrapper for tests: it counts the calls that reach the store, to prove which paths
//! make a store round trip, and it fails chosen calls with [`StoreError::Unavailable`] — at
//! once, never by hanging — to prove what a node does in a real outage or a crash half-way
//! through an operation.
//!
//! Three kinds of switch, each in force until [`InstrumentedStore::heal`]:
//! - [`fail`](InstrumentedStore::fail) cuts whole groups of calls ([`Calls`]), in and out of
//!   transactions: what an outage of one part of a deployment would cut;
//! - [`fail_commit`](InstrumentedStore::fail_commit) makes every transaction's commit fail
//!   (the wrapped transaction is then dropped, so it rolls back): a crash or a lost connection
//!   at the last step;
//! - [`fail_write`](InstrumentedStore::fail_write) and
//!   [`fail_write_of`](InstrumentedStore::fail_write_of) make the n-th write of each
//!   transaction fail (of any kind, or of one [`Writes`] kind): a failure half-way through an
//!   operation, after some of its writes were made.
//!
//! A transaction whose call failed, injected or not, refuses to commit, as every backend does:
//! a half-done operation can only be rolled back.
//!
//! Calls to the revocation log and the webhook outbox pass uncounted, in and out of
//! transactions: the log is polled by the background feed and the outbox by the delivery
//! worker, each on its own clock rather than per request, so counting them would make "no
//! store call per request" unprovable. Beginning and committing a transaction count as one
//! write each, and every read for update and every other write in it counts too.
//!
//! The store traits are `#[async_trait]` traits; the methods are written in the form the macro
//! expands to (a boxed `Send` future whose lifetime `'async_trait` is outlived by `self` and
//! every borrowed argument) so that one small macro writes them all.
#![allow(dead_code)]

use std::future::Future;
use std::ops::BitOr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use tessera_core::guessing::Tally;
use tessera_core::model::{
    AdminKey, AdminKeyId, Email, EmailToken, EmailTokenId, OutboxId, RefreshRecord,
    RevocationEvent, SealedKey, Session, SessionId, Timestamp, User, UserId,
};
use tessera_core::rotation::PresentedToken;
use tessera_core::secret::SecretHash;
use tessera_core::store::{
    AdminKeyStore, DenylistStore, GuessingCounters, KeyStore, OutboxStore, RevocationLog,
    SessionStore, StoreTx, UserStore,
};
use tessera_core::webhooks::{OutboxMessage, QueuedMessage};
use tessera_core::{Store, StoreError};

/// Groups of store calls, by what an outage of one part of a deployment would cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Calls(u8);

impl Calls {
    pub const NONE: Self = Self(0);
    /// Every lookup: users, sessions, the denylist, keys, admin keys, the revocation snapshot
    /// a cache loads, and a transaction's reads for update.
    pub const READS: Self = Self(1);
    /// Every change: beginning and committing a transaction and every write in it but the two
    /// below, and the housekeeping writes (touches, purges, prunes).
    pub const WRITES: Self = Self(1 << 1);
    /// The revocation log: appending entries (in a transaction), reading and pruning them
    /// (what the store-backed revocation feed does).
    pub const LOG: Self = Self(1 << 2);
    /// The webhook outbox: queueing messages (in a transaction) and the delivery worker's
    /// calls.
    pub const OUTBOX: Self = Self(1 << 3);
    /// `ping`, the round trip behind `/readyz`.
    pub const PING: Self = Self(1 << 4);
    /// The whole store: the database is down.
    pub const ALL: Self = Self(0b1_1111);
    /// The calls [`InstrumentedStore::calls`] counts.
    const COUNTED: Self = Self(Self::READS.0 | Self::WRITES.0 | Self::PING.0);

    fn overlaps(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }
}

impl BitOr for Calls {
    type Output = Self;
    fn bitor(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// The writes of a transaction that [`InstrumentedStore::fail_write_of`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes {
    /// Every write: changes, log entries and outbox messages alike.
    Any,
    /// Changes to records: users, sessions, refresh tokens, the denylist, keys.
    Changes,
    /// [`StoreTx::append_revocation`].
    Log,
    /// [`StoreTx::enqueue`].
    Outbox,
}

impl Writes {
    const ALL: [Self; 4] = [Self::Any, Self::Changes, Self::Log, Self::Outbox];

    fn code(self) -> u8 {
        match self {
            Self::Any => 0,
            Self::Changes => 1,
            Self::Log => 2,
            Self::Outbox => 3,
        }
    }

    fn from_code(code: u8) -> Self {
        Self::ALL
            .into_iter()
            .find(|kind| kind.code() == code)
            .unwrap_or(Self::Any)
    }

    /// Whether a write of kind `self` (never `Any`) is counted when failing `counted`.
    fn counts_for(self, counted: Self) -> bool {
        counted == Self::Any || counted == self
    }
}

/// The switches and counters, shared by the store and every transaction it began.
#[derive(Default)]
struct Switches {
    calls: AtomicU64,
    refused: AtomicU64,
    failing: AtomicU8,
    fail_commit: AtomicBool,
    /// The write of each transaction to fail, counted from 1; 0 for none.
    fail_write: AtomicU32,
    /// The [`Writes`] kind `fail_write` counts, as its code.
    fail_write_kind: AtomicU8,
    begun: AtomicU64,
    committed: AtomicU64,
    rolled_back: AtomicU64,
}

impl Switches {
    /// Counts a call of `group` and says whether the outage lets it through.
    fn enter(&self, group: Calls) -> Result<(), StoreError> {
        if group.overlaps(Calls::COUNTED) {
            self.calls.fetch_add(1, Ordering::SeqCst);
        }
        if group.overlaps(Calls(self.failing.load(Ordering::SeqCst))) {
            return Err(self.refuse(&format!("injected outage ({group:?})")));
        }
        Ok(())
    }

    fn refuse(&self, what: &str) -> StoreError {
        self.refused.fetch_add(1, Ordering::SeqCst);
        StoreError::Unavailable(what.to_owned())
    }
}

/// Wraps a store; counts its reads, writes and pings, and fails the calls a test chooses
/// until it heals them (see the module documentation).
pub struct InstrumentedStore {
    inner: Arc<dyn Store>,
    switches: Arc<Switches>,
}

impl InstrumentedStore {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            switches: Arc::default(),
        }
    }

    /// Counted calls so far (reads, writes and pings, failed or not).
    pub fn calls(&self) -> u64 {
        self.switches.calls.load(Ordering::SeqCst)
    }

    /// Calls refused by an injected failure so far, of any switch.
    pub fn refused(&self) -> u64 {
        self.switches.refused.load(Ordering::SeqCst)
    }

    /// Transactions begun so far (a refused `begin` is not one).
    pub fn transactions(&self) -> u64 {
        self.switches.begun.load(Ordering::SeqCst)
    }

    /// Transactions committed so far.
    pub fn commits(&self) -> u64 {
        self.switches.committed.load(Ordering::SeqCst)
    }

    /// Transactions that ended without committing so far: dropped, or refused at commit.
    pub fn rollbacks(&self) -> u64 {
        self.switches.rolled_back.load(Ordering::SeqCst)
    }

    /// From now on, every call in `calls` fails with `StoreError::Unavailable` (replacing
    /// what failed before), in transactions as outside them.
    pub fn fail(&self, calls: Calls) {
        self.switches.failing.store(calls.0, Ordering::SeqCst);
    }

    /// From now on, every transaction's commit fails with `StoreError::Unavailable`, and the
    /// transaction is rolled back: none of its writes is kept.
    pub fn fail_commit(&self) {
        self.switches.fail_commit.store(true, Ordering::SeqCst);
    }

    /// From now on, the `n`-th write of every transaction (counted from 1, of any kind) fails
    /// with `StoreError::Unavailable`; the writes before it were made, and the transaction
    /// then refuses to commit. `0` fails no write.
    pub fn fail_write(&self, n: u32) {
        self.fail_write_of(Writes::Any, n);
    }

    /// As [`fail_write`](Self::fail_write), counting only the writes of `kind`: e.g. the
    /// first revocation-log entry of each transaction, after the change it reports was made.
    pub fn fail_write_of(&self, kind: Writes, n: u32) {
        self.switches
            .fail_write_kind
            .store(kind.code(), Ordering::SeqCst);
        self.switches.fail_write.store(n, Ordering::SeqCst);
    }

    /// Ends every injected failure: every call reaches the wrapped store again.
    pub fn heal(&self) {
        self.fail(Calls::NONE);
        self.switches.fail_commit.store(false, Ordering::SeqCst);
        self.switches.fail_write.store(0, Ordering::SeqCst);
    }

    fn enter(&self, group: Calls) -> Result<(), StoreError> {
        self.switches.enter(group)
    }
}

/// A transaction of an [`InstrumentedStore`]: counts and fails its calls by the store's
/// switches, and counts how it ended.
struct InstrumentedTx {
    /// `None` once committed (or refused at commit): the wrapped transaction is gone.
    inner: Option<Box<dyn StoreTx>>,
    switches: Arc<Switches>,
    /// Writes made so far, by [`Writes`] kind (indexed by code; `Any` counts all).
    writes: [u32; 4],
    /// Set by the first call that failed: commit then refuses.
    failed: bool,
}

impl InstrumentedTx {
    /// Counts a call of `group` (and, for a write, of `write`), applies the switches, and
    /// returns the wrapped transaction if the call may go through.
    fn enter(
        &mut self,
        group: Calls,
        write: Option<Writes>,
    ) -> Result<&mut Box<dyn StoreTx>, StoreError> {
        let result = self.admit(group, write);
        if result.is_err() {
            self.failed = true;
        }
        result?;
        self.inner
            .as_mut()
            .ok_or_else(|| StoreError::Unavailable("transaction already ended".to_owned()))
    }

    fn admit(&mut self, group: Calls, write: Option<Writes>) -> Result<(), StoreError> {
        self.switches.enter(group)?;
        let Some(kind) = write else {
            return Ok(());
        };
        for counted in Writes::ALL {
            if kind.counts_for(counted) {
                self.writes[usize::from(counted.code())] += 1;
            }
        }
        let n = self.switches.fail_write.load(Ordering::SeqCst);
        let counted = Writes::from_code(self.switches.fail_write_kind.load(Ordering::SeqCst));
        if n > 0 && kind.counts_for(counted) && self.writes[usize::from(counted.code())] == n {
            return Err(self
                .switches
                .refuse(&format!("injected failure of write {n} ({counted:?})")));
        }
        Ok(())
    }

    /// Records the outcome of a wrapped call: an error leaves the transaction fit only for
    /// dropping.
    fn track<T>(&mut self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if result.is_err() {
            self.failed = true;
        }
        result
    }
}

impl Drop for InstrumentedTx {
    fn drop(&mut self) {
        if self.inner.is_some() {
            self.switches.rolled_back.fetch_add(1, Ordering::SeqCst);
        }
    }
}

type Boxed<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Writes delegating methods in `async_trait`'s expanded form, each first entering its group
/// of [`Calls`] (named before `fn`); the lifetimes listed after the name are those of the
/// borrowed arguments.
macro_rules! delegate {
    ($(
        $group:ident fn $name:ident[$($lt:lifetime),*]($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty;
    )*) => {$(
        fn $name<'life0, $($lt,)* 'async_trait>(
            &'life0 self,
            $($arg: $ty),*
        ) -> Boxed<'async_trait, $ret>
        where
            'life0: 'async_trait,
            $($lt: 'async_trait,)*
            Self: 'async_trait,
        {
            Box::pin(async move {
                self.enter(Calls::$group)?;
                self.inner.$name($($arg),*).await
            })
        }
    )*};
}

/// As [`delegate!`] for a transaction's methods (`&mut self`). A read names its group; a
/// write names its group and its [`Writes`] kind (`WRITES(Changes) fn …`).
macro_rules! delegate_tx {
    (@call $self:ident, $group:ident, $write:expr, $name:ident($($arg:ident),*)) => {
        Box::pin(async move {
            let inner = $self.enter(Calls::$group, $write)?;
            let result = inner.$name($($arg),*).await;
            $self.track(result)
        })
    };
    ($(
        $group:ident $(($kind:ident))? fn $name:ident[$($lt:lifetime),*](
            $($arg:ident: $ty:ty),* $(,)?
        ) -> $ret:ty;
    )*) => {$(
        fn $name<'life0, $($lt,)* 'async_trait>(
            &'life0 mut self,
            $($arg: $ty),*
        ) -> Boxed<'async_trait, $ret>
        where
            'life0: 'async_trait,
            $($lt: 'async_trait,)*
            Self: 'async_trait,
        {
            delegate_tx!(
                @call self, $group, None $(.or(Some(Writes::$kind)))?, $name($($arg),*)
            )
        }
    )*};
}

impl StoreTx for InstrumentedTx {
    delegate_tx! {
        READS fn user_for_update[](id: UserId) -> Option<User>;
        READS fn session_for_update[](id: SessionId) -> Option<Session>;
        READS fn refresh_token_for_update['life1](
            presented: &'life1 SecretHash,
            now: Timestamp,
        ) -> Option<PresentedToken>;
        READS fn refresh_family_for_update['life1](
            presented: &'life1 SecretHash
        ) -> Option<Session>;
        READS fn signing_keys_for_update[]() -> Vec<SealedKey>;
        READS fn email_token_for_update['life1](hash: &'life1 SecretHash) -> Option<EmailToken>;
        READS fn email_token_by_id_for_update[](id: EmailTokenId) -> Option<EmailToken>;

        WRITES(Changes) fn insert_user['life1](user: &'life1 User) -> ();
        WRITES(Changes) fn set_roles['life1](id: UserId, roles: &'life1 [String]) -> bool;
        WRITES(Changes) fn set_password_hash['life1](
            id: UserId,
            password_hash: &'life1 str,
        ) -> bool;
        WRITES(Changes) fn bump_epoch[](id: UserId, at: Timestamp) -> Option<Timestamp>;
        WRITES(Changes) fn delete_user[](id: UserId, at: Timestamp) -> bool;
        WRITES(Changes) fn set_email_verified[](id: UserId, at: Timestamp) -> bool;
        WRITES(Changes) fn insert_email_token['life1](token: &'life1 EmailToken) -> bool;
        WRITES(Changes) fn spend_email_token[](id: EmailTokenId, at: Timestamp) -> bool;
        WRITES(Changes) fn insert_session['life1](session: &'life1 Session) -> ();
        WRITES(Changes) fn revoke_session[](id: SessionId, at: Timestamp) -> bool;
        WRITES(Changes) fn revoke_user_sessions[](
            user: UserId,
            keep: Option<SessionId>,
            at: Timestamp,
        ) -> Vec<SessionId>;
        WRITES(Changes) fn insert_refresh['life1](record: &'life1 RefreshRecord) -> ();
        WRITES(Changes) fn spend_refresh['life1, 'life2](
            presented: &'life1 SecretHash,
            successor: &'life2 SecretHash,
            at: Timestamp,
        ) -> ();
        WRITES(Changes) fn deny_jti['life1](jti: &'life1 str, expires_at: Timestamp) -> ();
        WRITES(Changes) fn insert_signing_key['life1](key: &'life1 SealedKey) -> ();
        WRITES(Changes) fn retire_signing_key['life1](kid: &'life1 str, at: Timestamp) -> bool;
        WRITES(Changes) fn delete_signing_key['life1](kid: &'life1 str) -> bool;
        WRITES(Changes) fn insert_admin_key['life1](key: &'life1 AdminKey) -> ();
        WRITES(Changes) fn revoke_admin_key[](id: AdminKeyId, at: Timestamp) -> bool;

        LOG(Log) fn append_revocation['life1](
            event: &'life1 RevocationEvent,
            at: Timestamp,
        ) -> u64;
        OUTBOX(Outbox) fn enqueue['life1](messages: &'life1 [OutboxMessage]) -> ();
    }

    fn commit<'async_trait>(self: Box<Self>) -> Boxed<'async_trait, ()>
    where
        Self: 'async_trait,
    {
        Box::pin(async move {
            let mut tx = self;
            tx.switches.enter(Calls::WRITES)?;
            // Taken out whatever happens next, so `Drop` counts a rollback only when the
            // wrapped transaction is dropped uncommitted.
            let Some(inner) = tx.inner.take() else {
                return Err(StoreError::Unavailable(
                    "transaction already ended".to_owned(),
                ));
            };
            let refusal = if tx.failed {
                Some(StoreError::Unavailable(
                    "transaction rolled back instead of committed: a call in it had failed"
                        .to_owned(),
                ))
            } else if tx.switches.fail_commit.load(Ordering::SeqCst) {
                Some(tx.switches.refuse("injected failure of commit"))
            } else {
                None
            };
            if let Some(err) = refusal {
                drop(inner);
                tx.switches.rolled_back.fetch_add(1, Ordering::SeqCst);
                return Err(err);
            }
            match inner.commit().await {
                Ok(()) => {
                    tx.switches.committed.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
                Err(err) => {
                    tx.switches.rolled_back.fetch_add(1, Ordering::SeqCst);
                    Err(err)
                }
            }
        })
    }
}

impl UserStore for InstrumentedStore {
    delegate! {
        READS fn find_user[](id: UserId) -> Option<User>;
        READS fn find_user_by_email['life1](email: &'life1 Email) -> Option<User>;
        READS fn list_users[]() -> Vec<User>;
        READS fn epochs_since[](since: Timestamp) -> Vec<(UserId, Timestamp)>;
        WRITES fn prune_email_tokens[](before: Timestamp) -> u64;
        READS fn find_email_token['life1](hash: &'life1 SecretHash) -> Option<EmailToken>;
    }
}

impl SessionStore for InstrumentedStore {
    delegate! {
        READS fn find_live_session[](id: SessionId, now: Timestamp) -> Option<Session>;
        READS fn find_live_session_by_hash['life1](
            hash: &'life1 SecretHash,
            now: Timestamp
        ) -> Option<Session>;
        WRITES fn touch_session[](id: SessionId, at: Timestamp) -> ();
        READS fn list_live_sessions[](user: UserId, now: Timestamp) -> Vec<Session>;
        READS fn revoked_sessions_since[](
            since: Timestamp
        ) -> Vec<(SessionId, UserId, Timestamp)>;
        WRITES fn purge_dead_sessions[](before: Timestamp) -> u64;
    }
}

impl DenylistStore for InstrumentedStore {
    delegate! {
        READS fn is_jti_denied['life1](jti: &'life1 str, now: Timestamp) -> bool;
        READS fn denied_jtis[](now: Timestamp) -> Vec<(String, Timestamp)>;
        WRITES fn prune_denylist[](now: Timestamp) -> u64;
    }
}

impl RevocationLog for InstrumentedStore {
    delegate! {
        LOG fn events_after[](
            after: u64,
            limit: u32
        ) -> Vec<(u64, Timestamp, RevocationEvent)>;
        LOG fn latest_event[]() -> u64;
        LOG fn prune_events[](before: Timestamp) -> u64;
    }
}

impl OutboxStore for InstrumentedStore {
    delegate! {
        OUTBOX fn due_messages[](now: Timestamp, limit: u32) -> Vec<QueuedMessage>;
        OUTBOX fn claim_message[](id: OutboxId, now: Timestamp, until: Timestamp) -> bool;
        OUTBOX fn mark_delivered[](id: OutboxId, at: Timestamp) -> bool;
        OUTBOX fn reschedule['life1](
            id: OutboxId,
            attempts: u32,
            next_attempt_at: Timestamp,
            error: &'life1 str,
        ) -> bool;
        OUTBOX fn give_up['life1](id: OutboxId, at: Timestamp, error: &'life1 str) -> bool;
        OUTBOX fn prune_outbox[](before: Timestamp) -> u64;
    }
}

impl KeyStore for InstrumentedStore {
    delegate! {
        READS fn signing_keys[]() -> Vec<SealedKey>;
    }
}

impl AdminKeyStore for InstrumentedStore {
    delegate! {
        READS fn find_live_admin_key['life1](hash: &'life1 SecretHash) -> Option<AdminKey>;
    }
}

impl GuessingCounters for InstrumentedStore {
    delegate! {
        WRITES fn update_tally['life1, 'life2](
            key: &'life1 str,
            now: Timestamp,
            change: &'life2 (dyn Fn(Option<Tally>) -> Option<Tally> + Send + Sync)
        ) -> Option<Tally>;
        READS fn tally['life1](key: &'life1 str, now: Timestamp) -> Option<Tally>;
        WRITES fn clear_tally['life1](key: &'life1 str) -> ();
        WRITES fn prune_tallies[](now: Timestamp) -> u64;
    }
}

impl Store for InstrumentedStore {
    fn guessing(&self) -> &dyn GuessingCounters {
        self
    }

    fn begin<'life0, 'async_trait>(&'life0 self) -> Boxed<'async_trait, Box<dyn StoreTx>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            self.enter(Calls::WRITES)?;
            let inner = self.inner.begin().await?;
            self.switches.begun.fetch_add(1, Ordering::SeqCst);
            let tx: Box<dyn StoreTx> = Box::new(InstrumentedTx {
                inner: Some(inner),
                switches: Arc::clone(&self.switches),
                writes: [0; 4],
                failed: false,
            });
            Ok(tx)
        })
    }

    delegate! {
        PING fn ping[]() -> ();
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}
