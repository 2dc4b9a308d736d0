//! A store wrapper for tests: it counts the calls that reach the store, to prove which paths
//! make a store round trip, and it fails chosen groups of calls with
//! [`StoreError::Unavailable`] — at once, never by hanging — to prove what a node does in a
//! real outage.
//!
//! Every call to the revocation log and the webhook outbox passes uncounted: the log is
//! polled by the background feed and the outbox by the delivery worker, each on its own clock
//! rather than per request, so counting them would make "no store call per request"
//! unprovable. (Messages are *queued* by the counted mutating methods, in the same call as
//! their change.)
//!
//! The store traits are `#[async_trait]` traits; the methods are written in the form the macro
//! expands to (a boxed `Send` future whose lifetime `'async_trait` is outlived by `self` and
//! every borrowed argument) so that one small macro writes them all.
#![allow(dead_code)]

use std::future::Future;
use std::ops::BitOr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tessera_core::model::{
    AdminKey, AdminKeyId, Email, OutboxId, RefreshRecord, RevocationEvent, Rotation, SealedKey,
    Session, SessionId, Timestamp, User, UserId,
};
use tessera_core::secret::SecretHash;
use tessera_core::store::{
    AdminKeyStore, DenylistStore, KeyStore, OutboxStore, RefreshStore, RevocationLog, SessionStore,
    UserStore,
};
use tessera_core::webhooks::{OutboxMessage, QueuedMessage, WebhookPlan};
use tessera_core::{Store, StoreError};

/// Groups of store calls, by what an outage of one part of a deployment would cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Calls(u8);

impl Calls {
    pub const NONE: Self = Self(0);
    /// Every lookup: users, sessions, the denylist, keys, admin keys, and the revocation
    /// snapshot a cache loads.
    pub const READS: Self = Self(1);
    /// Every change: inserts, revocations, rotations, touches, denials, purges.
    pub const WRITES: Self = Self(1 << 1);
    /// The revocation log: appending events, and reading them (what the store-backed
    /// revocation feed does).
    pub const LOG: Self = Self(1 << 2);
    /// The webhook outbox.
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

/// Wraps a store; counts its reads, writes and pings, and fails the groups of calls a test
/// chooses until it heals them.
pub struct InstrumentedStore {
    inner: Arc<dyn Store>,
    calls: AtomicU64,
    failing: AtomicU8,
    refused: AtomicU64,
}

impl InstrumentedStore {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            calls: AtomicU64::new(0),
            failing: AtomicU8::new(Calls::NONE.0),
            refused: AtomicU64::new(0),
        }
    }

    /// Counted calls so far (reads, writes and pings, failed or not).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Calls refused by an injected outage so far, of any group.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    /// From now on, every call in `calls` fails with `StoreError::Unavailable` (replacing
    /// what failed before).
    pub fn fail(&self, calls: Calls) {
        self.failing.store(calls.0, Ordering::SeqCst);
    }

    /// Ends the outage: every call reaches the wrapped store again.
    pub fn heal(&self) {
        self.fail(Calls::NONE);
    }

    /// Counts a call of `group` and says whether the outage lets it through.
    fn enter(&self, group: Calls) -> Result<(), StoreError> {
        if group.overlaps(Calls::COUNTED) {
            self.calls.fetch_add(1, Ordering::SeqCst);
        }
        if group.overlaps(Calls(self.failing.load(Ordering::SeqCst))) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Unavailable(format!(
                "injected outage ({group:?})"
            )));
        }
        Ok(())
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

impl UserStore for InstrumentedStore {
    delegate! {
        WRITES fn insert_user['life1](user: &'life1 User) -> ();
        READS fn find_user[](id: UserId) -> Option<User>;
        READS fn find_user_by_email['life1](email: &'life1 Email) -> Option<User>;
        READS fn list_users[]() -> Vec<User>;
        WRITES fn set_roles['life1, 'life2](
            id: UserId,
            roles: &'life1 [String],
            outbox: &'life2 [OutboxMessage],
        ) -> bool;
        WRITES fn bump_epoch['life1](
            id: UserId,
            at: Timestamp,
            outbox: &'life1 [OutboxMessage],
        ) -> bool;
        READS fn epochs_since[](since: Timestamp) -> Vec<(UserId, Timestamp)>;
    }
}

impl SessionStore for InstrumentedStore {
    delegate! {
        WRITES fn insert_session['life1, 'life2](
            session: &'life1 Session,
            outbox: &'life2 [OutboxMessage],
        ) -> ();
        READS fn find_live_session[](id: SessionId, now: Timestamp) -> Option<Session>;
        READS fn find_live_session_by_hash['life1](
            hash: &'life1 SecretHash,
            now: Timestamp
        ) -> Option<Session>;
        WRITES fn touch_session[](id: SessionId, at: Timestamp) -> ();
        WRITES fn revoke_session['life1](
            id: SessionId,
            at: Timestamp,
            plan: &'life1 WebhookPlan,
        ) -> bool;
        WRITES fn revoke_user_sessions['life1](
            user: UserId,
            keep: Option<SessionId>,
            at: Timestamp,
            plan: &'life1 WebhookPlan,
        ) -> Vec<SessionId>;
        READS fn list_live_sessions[](user: UserId, now: Timestamp) -> Vec<Session>;
        READS fn revoked_sessions_since[](
            since: Timestamp
        ) -> Vec<(SessionId, UserId, Timestamp)>;
        WRITES fn purge_dead_sessions[](before: Timestamp) -> u64;
    }
}

impl RefreshStore for InstrumentedStore {
    delegate! {
        WRITES fn insert_refresh['life1](record: &'life1 RefreshRecord) -> ();
        WRITES fn rotate_refresh['life1, 'life2, 'life3](
            presented: &'life1 SecretHash,
            successor: &'life2 SecretHash,
            now: Timestamp,
            grace: Duration,
            on_reuse: &'life3 WebhookPlan,
        ) -> Rotation;
        WRITES fn revoke_family_of['life1, 'life2](
            presented: &'life1 SecretHash,
            at: Timestamp,
            plan: &'life2 WebhookPlan,
        ) -> Option<SessionId>;
    }
}

impl DenylistStore for InstrumentedStore {
    delegate! {
        WRITES fn deny_jti['life1](jti: &'life1 str, expires_at: Timestamp) -> ();
        READS fn is_jti_denied['life1](jti: &'life1 str, now: Timestamp) -> bool;
        READS fn denied_jtis[](now: Timestamp) -> Vec<(String, Timestamp)>;
        WRITES fn prune_denylist[](now: Timestamp) -> u64;
    }
}

impl RevocationLog for InstrumentedStore {
    delegate! {
        LOG fn append_event['life1](event: &'life1 RevocationEvent, at: Timestamp) -> u64;
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
        WRITES fn insert_signing_key['life1](key: &'life1 SealedKey) -> ();
        READS fn signing_keys[]() -> Vec<SealedKey>;
        WRITES fn retire_signing_key['life1](kid: &'life1 str, at: Timestamp) -> bool;
        WRITES fn delete_signing_key['life1](kid: &'life1 str) -> bool;
    }
}

impl AdminKeyStore for InstrumentedStore {
    delegate! {
        WRITES fn insert_admin_key['life1](key: &'life1 AdminKey) -> ();
        READS fn find_live_admin_key['life1](hash: &'life1 SecretHash) -> Option<AdminKey>;
        WRITES fn revoke_admin_key[](id: AdminKeyId, at: Timestamp) -> bool;
    }
}

impl Store for InstrumentedStore {
    delegate! {
        PING fn ping[]() -> ();
    }
}
