//! A store that counts the calls made to it, to prove which paths reach the store.
//!
//! Every method delegates to the wrapped store and bumps one counter, except those of
//! [`RevocationLog`] and [`OutboxStore`]: the revocation log is polled by the background feed
//! and the webhook outbox by the delivery worker, each on its own clock rather than per
//! request, so counting them would make "no store call per request" unprovable. (Messages
//! are *queued* by the counted mutating methods, in the same call as their change.)
//!
//! The store traits are `#[async_trait]` traits and this test crate does not depend on
//! `async-trait`, so the methods are written in the form the macro expands to: a boxed
//! `Send` future whose lifetime `'async_trait` is outlived by `self` and every borrowed
//! argument.
#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// Wraps a store and counts every call but the revocation log's and the outbox's.
pub struct CountingStore {
    inner: Arc<dyn Store>,
    calls: AtomicU64,
}

impl CountingStore {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            calls: AtomicU64::new(0),
        }
    }

    /// Counted calls so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn bump(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }
}

type Boxed<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Writes delegating methods in `async_trait`'s expanded form. `count` methods bump the
/// counter, `pass` methods do not; the lifetimes listed after the name are those of the
/// borrowed arguments.
macro_rules! delegate {
    (@bump count $store:ident) => {
        $store.bump();
    };
    (@bump pass $store:ident) => {};
    ($(
        $kind:ident fn $name:ident[$($lt:lifetime),*]($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty;
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
                delegate!(@bump $kind self);
                self.inner.$name($($arg),*).await
            })
        }
    )*};
}

impl UserStore for CountingStore {
    delegate! {
        count fn insert_user['life1](user: &'life1 User) -> ();
        count fn find_user[](id: UserId) -> Option<User>;
        count fn find_user_by_email['life1](email: &'life1 Email) -> Option<User>;
        count fn list_users[]() -> Vec<User>;
        count fn set_roles['life1, 'life2](
            id: UserId,
            roles: &'life1 [String],
            outbox: &'life2 [OutboxMessage],
        ) -> bool;
        count fn bump_epoch['life1](
            id: UserId,
            at: Timestamp,
            outbox: &'life1 [OutboxMessage],
        ) -> bool;
        count fn epochs_since[](since: Timestamp) -> Vec<(UserId, Timestamp)>;
    }
}

impl SessionStore for CountingStore {
    delegate! {
        count fn insert_session['life1, 'life2](
            session: &'life1 Session,
            outbox: &'life2 [OutboxMessage],
        ) -> ();
        count fn find_live_session[](id: SessionId, now: Timestamp) -> Option<Session>;
        count fn find_live_session_by_hash['life1](
            hash: &'life1 SecretHash,
            now: Timestamp
        ) -> Option<Session>;
        count fn touch_session[](id: SessionId, at: Timestamp) -> ();
        count fn revoke_session['life1](
            id: SessionId,
            at: Timestamp,
            plan: &'life1 WebhookPlan,
        ) -> bool;
        count fn revoke_user_sessions['life1](
            user: UserId,
            keep: Option<SessionId>,
            at: Timestamp,
            plan: &'life1 WebhookPlan,
        ) -> Vec<SessionId>;
        count fn list_live_sessions[](user: UserId, now: Timestamp) -> Vec<Session>;
        count fn revoked_sessions_since[](
            since: Timestamp
        ) -> Vec<(SessionId, UserId, Timestamp)>;
        count fn purge_dead_sessions[](before: Timestamp) -> u64;
    }
}

impl RefreshStore for CountingStore {
    delegate! {
        count fn insert_refresh['life1](record: &'life1 RefreshRecord) -> ();
        count fn rotate_refresh['life1, 'life2, 'life3](
            presented: &'life1 SecretHash,
            successor: &'life2 SecretHash,
            now: Timestamp,
            grace: Duration,
            on_reuse: &'life3 WebhookPlan,
        ) -> Rotation;
        count fn revoke_family_of['life1, 'life2](
            presented: &'life1 SecretHash,
            at: Timestamp,
            plan: &'life2 WebhookPlan,
        ) -> Option<SessionId>;
    }
}

impl DenylistStore for CountingStore {
    delegate! {
        count fn deny_jti['life1](jti: &'life1 str, expires_at: Timestamp) -> ();
        count fn is_jti_denied['life1](jti: &'life1 str, now: Timestamp) -> bool;
        count fn denied_jtis[](now: Timestamp) -> Vec<(String, Timestamp)>;
        count fn prune_denylist[](now: Timestamp) -> u64;
    }
}

impl RevocationLog for CountingStore {
    delegate! {
        pass fn append_event['life1](event: &'life1 RevocationEvent, at: Timestamp) -> u64;
        pass fn events_after[](
            after: u64,
            limit: u32
        ) -> Vec<(u64, Timestamp, RevocationEvent)>;
        pass fn latest_event[]() -> u64;
        pass fn prune_events[](before: Timestamp) -> u64;
    }
}

impl OutboxStore for CountingStore {
    delegate! {
        pass fn due_messages[](now: Timestamp, limit: u32) -> Vec<QueuedMessage>;
        pass fn claim_message[](id: OutboxId, now: Timestamp, until: Timestamp) -> bool;
        pass fn mark_delivered[](id: OutboxId, at: Timestamp) -> bool;
        pass fn reschedule['life1](
            id: OutboxId,
            attempts: u32,
            next_attempt_at: Timestamp,
            error: &'life1 str,
        ) -> bool;
        pass fn give_up['life1](id: OutboxId, at: Timestamp, error: &'life1 str) -> bool;
        pass fn prune_outbox[](before: Timestamp) -> u64;
    }
}

impl KeyStore for CountingStore {
    delegate! {
        count fn insert_signing_key['life1](key: &'life1 SealedKey) -> ();
        count fn signing_keys[]() -> Vec<SealedKey>;
        count fn retire_signing_key['life1](kid: &'life1 str, at: Timestamp) -> bool;
        count fn delete_signing_key['life1](kid: &'life1 str) -> bool;
    }
}

impl AdminKeyStore for CountingStore {
    delegate! {
        count fn insert_admin_key['life1](key: &'life1 AdminKey) -> ();
        count fn find_live_admin_key['life1](hash: &'life1 SecretHash) -> Option<AdminKey>;
        count fn revoke_admin_key[](id: AdminKeyId, at: Timestamp) -> bool;
    }
}

impl Store for CountingStore {
    delegate! {
        count fn ping[]() -> ();
    }
}
