//! The one conformance suite: the semantics written in the doc comments of
//! [`tessera_core::store`], as executable cases every backend must pass.
//!
//! Each case is a plain `async fn` generic over the backend, using fresh random ids, emails
//! and kids, so all cases can run in parallel against one shared database. A backend's test
//! file only builds its store and invokes [`conformance_suite!`](crate::conformance_suite):
//!
//! ```
//! // tests/memory.rs (the test crate needs `tokio` with `macros` and `rt-multi-thread`)
//! # #[cfg(feature = "memory")] mod suite {
//! async fn memory_store() -> Option<tessera_store::MemoryStore> {
//!     Some(tessera_store::MemoryStore::new())
//! }
//! tessera_store::conformance_suite!(memory_store()); // every case
//! # }
//! # fn main() {}
//! ```
//!
//! The expression yields `Option<impl Fixture>`: `None` skips the case loudly (the builder
//! may print why, e.g. a service that is not reachable; see [`crate::testing`]), and a fixture
//! may carry a guard that must outlive the store, such as the temporary directory of a
//! database file: `(store, guard)`. The races (the `concurrent_*` cases) share the fixture
//! between tasks, so it must be `Send + Sync + 'static`.
//!
//! Cases fail with `assert!`: this module is test code shipped in the library so that every
//! backend's tests share it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use tessera_core::model::{
    AdminKey, AdminKeyId, Email, OutboxId, RefreshRecord, RevocationEvent, Rotation, SealedKey,
    Session, SessionId, Timestamp, User, UserId, Via,
};
use tessera_core::secret::{SecretHash, SessionSecret};
// For the races, whose store is a fixture's associated type: its supertraits' methods are
// only found with the traits in scope.
use tessera_core::store::{
    DenylistStore as _, OutboxStore as _, RefreshStore as _, SessionStore as _, UserStore as _,
};
use tessera_core::webhooks::{
    self, EventType, OutboxMessage, QueuedMessage, RevokeReason, Webhook, WebhookPlan,
    WebhookSecret,
};
use tessera_core::{Store, StoreError};

/// Something that holds a store for the duration of one case.
pub trait Fixture {
    type Store: Store + ?Sized;
    fn store(&self) -> &Self::Store;
}

impl<S: Store + ?Sized> Fixture for Arc<S> {
    type Store = S;
    fn store(&self) -> &S {
        self
    }
}

impl<S: Store + ?Sized> Fixture for Box<S> {
    type Store = S;
    fn store(&self) -> &S {
        self
    }
}

/// A store and a guard dropped after it (a temporary directory, a container handle …).
impl<S: Store, G> Fixture for (S, G) {
    type Store = S;
    fn store(&self) -> &S {
        &self.0
    }
}

#[cfg(feature = "memory")]
impl Fixture for crate::MemoryStore {
    type Store = Self;
    fn store(&self) -> &Self {
        self
    }
}

#[cfg(feature = "sqlite")]
impl Fixture for crate::SqliteStore {
    type Store = Self;
    fn store(&self) -> &Self {
        self
    }
}

/// Expands to one test per case. The first argument is an expression evaluating to a future
/// of `Option<F>` where `F:` [`Fixture`]; it is evaluated once per case, and `None` skips the
/// case through [`skip_or_fail`](crate::testing::skip_or_fail) (loud, and a failure under
/// `TESSERA_REQUIRE_SERVICES=1`).
///
/// Without a case list, every case of the suite is generated. A list picks cases: plain ones
/// run as `#[tokio::test]`, the races after `parallel:` on a multi-threaded runtime, with the
/// fixture shared by an `Arc` so that their calls really overlap. A unit test of this module
/// checks that the full list below names every `pub async fn` case of this file, so a case
/// cannot be written and never run.
#[macro_export]
macro_rules! conformance_suite {
    ($make_store:expr; parallel: $($case:ident),+ $(,)?) => { $(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $case() {
            let Some(fixture) = $make_store.await else {
                $crate::testing::skip_or_fail(
                    concat!("conformance case `", stringify!($case), "`"),
                    "its store builder returned no store",
                );
                return;
            };
            $crate::conformance::$case(::std::sync::Arc::new(fixture)).await;
        }
    )+ };
    ($make_store:expr; $($case:ident),+ $(,)?) => { $(
        #[tokio::test]
        async fn $case() {
            let Some(fixture) = $make_store.await else {
                $crate::testing::skip_or_fail(
                    concat!("conformance case `", stringify!($case), "`"),
                    "its store builder returned no store",
                );
                return;
            };
            $crate::conformance::$case($crate::conformance::Fixture::store(&fixture)).await;
        }
    )+ };
    ($make_store:expr $(,)?) => {
        $crate::conformance_suite!($make_store;
            user_round_trips_by_id_and_email,
            duplicate_email_conflicts,
            unknown_user_is_none,
            users_are_listed_in_creation_order,
            set_roles_replaces_roles,
            bump_epoch_never_lowers,
            session_round_trips_by_id_and_hash,
            duplicate_session_conflicts,
            token_sessions_need_no_secret_hash,
            session_of_unknown_user_is_refused,
            unknown_session_is_none,
            session_dies_when_idle,
            session_dies_at_absolute_expiry,
            revoked_session_is_not_found,
            touch_extends_idle_expiry,
            touch_never_moves_back,
            touch_does_not_revive_a_dead_session,
            revoke_session_is_idempotent,
            revoke_user_sessions_keeps_the_current_one,
            list_live_sessions_is_newest_first_and_only_live,
            refresh_insert_rules,
            rotation_spends_the_token_and_touches_the_session,
            replay_within_grace_is_replayed,
            replay_after_grace_revokes_the_family,
            replay_of_an_older_token_revokes_the_family,
            unknown_refresh_token_is_invalid,
            refresh_of_a_dead_session_is_invalid,
            revoke_family_of_the_current_token,
            revoke_family_of_a_spent_token,
            revoke_family_of_an_unknown_token_is_none,
            revoke_family_of_a_dead_session_keeps_it_as_it_is,
            revoked_sessions_since_filters_by_time,
            epochs_since_filters_by_time,
            purge_dead_sessions_keeps_live_ones,
            denied_jti_is_refused_until_it_expires,
            denying_a_jti_twice_keeps_the_later_expiry,
            prune_denylist_removes_only_expired_entries,
            signing_keys_are_listed_oldest_first,
            duplicate_kid_conflicts,
            retire_signing_key_once,
            delete_signing_key,
            admin_key_round_trips,
            revoked_admin_key_is_not_found,
            ping_answers,
            revocation_log_is_ordered_and_resumable,
            revocation_log_prunes_only_old_events,
            outbox_is_written_with_the_change,
            revocations_queue_a_message_per_revoked_session,
            refresh_reuse_and_family_revocation_queue_their_messages,
            due_messages_come_earliest_first_and_honour_the_limit,
            claimed_message_is_hidden_until_its_claim_expires,
            rescheduled_message_waits_until_its_next_attempt,
            finished_messages_are_never_due_again,
            prune_outbox_removes_only_long_finished_messages,
        );
        $crate::conformance_suite!($make_store; parallel:
            concurrent_rotations_rotate_once,
            concurrent_sign_ups_with_one_email_insert_one_user,
            concurrent_epoch_bumps_keep_the_latest,
            concurrent_revocations_of_a_session_revoke_it_once,
            concurrent_family_revocations_revoke_it_once,
            concurrent_denials_of_a_jti_keep_the_latest_expiry,
            concurrent_claims_of_a_message_claim_it_once,
        );
    };
}

// ---------------------------------------------------------------------------------------------
// Fixtures. Times are offsets from a fixed instant: every method takes `now`, so no case
// sleeps or depends on the clock.

const IDLE_SECS: i64 = 3_600;
const ABSOLUTE_SECS: i64 = 86_400;
const GRACE: Duration = Duration::from_secs(10);

/// `offset` seconds after a fixed instant that is not a whole second, so every time a case
/// stores must come back to the millisecond.
fn at(offset: i64) -> Timestamp {
    Timestamp::from_unix_millis((1_700_000_000 + offset) * 1000 + 123)
}

/// One millisecond earlier: the last instant before an edge.
fn just_before(t: Timestamp) -> Timestamp {
    Timestamp::from_unix_millis(t.as_unix_millis() - 1)
}

/// One millisecond later: the first instant past an edge.
fn just_after(t: Timestamp) -> Timestamp {
    Timestamp::from_unix_millis(t.as_unix_millis() + 1)
}

fn secs(n: i64) -> Duration {
    Duration::from_secs(u64::try_from(n).unwrap())
}

/// An era long before [`at`], reserved for the cases that delete by time
/// ([`purge_dead_sessions_keeps_live_ones`], [`prune_denylist_removes_only_expired_entries`]):
/// on a shared store their cut-off lies before every other case's records, so they neither
/// delete what a parallel case still needs nor count its rows. One case per table, at most.
fn past(offset: i64) -> Timestamp {
    Timestamp::from_unix_millis((1_000_000_000 + offset) * 1000 + 456)
}

fn fresh_jti() -> String {
    // A jti is any string the issuer chose (RFC 7519 §4.1.7): quotes and non-ASCII included.
    format!("jti-'\"é-{}", UserId::new())
}

fn fresh_hash() -> SecretHash {
    SessionSecret::generate().to_hash()
}

fn fresh_email() -> Email {
    Email::parse(&format!("user-{}@example.test", UserId::new())).unwrap()
}

fn new_user(created_at: Timestamp) -> User {
    User {
        id: UserId::new(),
        email: fresh_email(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
            .to_owned(),
        roles: vec!["reader".to_owned()],
        created_at,
        tokens_valid_after: created_at,
    }
}

fn new_session(user: &User, via: Via, created_at: Timestamp) -> Session {
    Session {
        id: SessionId::new(),
        user_id: user.id,
        secret_hash: (via == Via::Cookie).then(fresh_hash),
        via,
        created_at,
        last_seen_at: created_at,
        idle_timeout: secs(IDLE_SECS),
        expires_at: created_at.saturating_add(secs(ABSOLUTE_SECS)),
        user_agent: Some("Mozilla/5.0 (conformance)".to_owned()),
        ip: Some("192.0.2.7".to_owned()),
        revoked_at: None,
    }
}

async fn seeded_user<S: Store + ?Sized>(store: &S) -> User {
    let user = new_user(at(0));
    store.insert_user(&user).await.unwrap();
    user
}

async fn seeded_session<S: Store + ?Sized>(store: &S, via: Via) -> Session {
    let user = seeded_user(store).await;
    let session = new_session(&user, via, at(0));
    store.insert_session(&session, &[]).await.unwrap();
    session
}

/// A token session with its first refresh token, issued at `at(0)`.
async fn seeded_family<S: Store + ?Sized>(store: &S) -> (Session, SecretHash) {
    let session = seeded_session(store, Via::Token).await;
    let first = family_of(store, &session).await;
    (session, first)
}

/// Stores the first refresh token of `session`'s family.
async fn family_of<S: Store + ?Sized>(store: &S, session: &Session) -> SecretHash {
    let first = fresh_hash();
    let record = RefreshRecord {
        hash: first,
        session_id: session.id,
        issued_at: session.created_at,
        rotated_at: None,
    };
    store.insert_refresh(&record).await.unwrap();
    first
}

fn touched(session: &Session, last_seen_at: Timestamp) -> Session {
    Session {
        last_seen_at,
        ..session.clone()
    }
}

fn assert_conflict<T: std::fmt::Debug>(result: Result<T, StoreError>, rule: &str) {
    match result {
        Err(StoreError::Conflict(name)) => assert_eq!(name, rule),
        other => panic!("expected Conflict({rule:?}), got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Users

pub async fn user_round_trips_by_id_and_email<S: Store + ?Sized>(store: &S) {
    let mut user = new_user(at(0));
    user.roles = vec!["admin".to_owned(), "a,b \"quoted\"".to_owned()];
    store.insert_user(&user).await.unwrap();
    assert_eq!(store.find_user(user.id).await.unwrap(), Some(user.clone()));
    assert_eq!(
        store.find_user_by_email(&user.email).await.unwrap(),
        Some(user)
    );
}

pub async fn duplicate_email_conflicts<S: Store + ?Sized>(store: &S) {
    let first = seeded_user(store).await;
    let second = User {
        email: first.email.clone(),
        ..new_user(at(5))
    };
    assert_conflict(store.insert_user(&second).await, "email");
    assert_eq!(store.find_user(second.id).await.unwrap(), None);
    assert_eq!(
        store.find_user_by_email(&first.email).await.unwrap(),
        Some(first)
    );
}

pub async fn unknown_user_is_none<S: Store + ?Sized>(store: &S) {
    assert_eq!(store.find_user(UserId::new()).await.unwrap(), None);
    assert_eq!(
        store.find_user_by_email(&fresh_email()).await.unwrap(),
        None
    );
}

pub async fn users_are_listed_in_creation_order<S: Store + ?Sized>(store: &S) {
    // Inserted out of order: the order is `created_at`, not insertion.
    let middle = new_user(at(20));
    let first = new_user(at(10));
    let last = new_user(at(30));
    for user in [&middle, &first, &last] {
        store.insert_user(user).await.unwrap();
    }
    let ours: Vec<UserId> = store
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.id)
        .filter(|id| [first.id, middle.id, last.id].contains(id))
        .collect();
    assert_eq!(ours, vec![first.id, middle.id, last.id]);
}

pub async fn set_roles_replaces_roles<S: Store + ?Sized>(store: &S) {
    let user = seeded_user(store).await;
    let roles = vec!["admin".to_owned(), "ops".to_owned()];
    assert!(store.set_roles(user.id, &roles, &[]).await.unwrap());
    assert_eq!(
        store.find_user(user.id).await.unwrap().unwrap().roles,
        roles
    );
    assert!(store.set_roles(user.id, &[], &[]).await.unwrap());
    assert!(store
        .find_user(user.id)
        .await
        .unwrap()
        .unwrap()
        .roles
        .is_empty());
    assert!(!store.set_roles(UserId::new(), &roles, &[]).await.unwrap());
}

pub async fn bump_epoch_never_lowers<S: Store + ?Sized>(store: &S) {
    let user = seeded_user(store).await;
    let epoch = |user: Option<User>| user.unwrap().tokens_valid_after;
    assert!(store.bump_epoch(user.id, at(100), &[]).await.unwrap());
    assert_eq!(epoch(store.find_user(user.id).await.unwrap()), at(100));
    // An older bump (a slow node, a retry) must not resurrect tokens.
    assert!(store.bump_epoch(user.id, at(50), &[]).await.unwrap());
    assert_eq!(epoch(store.find_user(user.id).await.unwrap()), at(100));
    assert!(!store.bump_epoch(UserId::new(), at(100), &[]).await.unwrap());
}

// ---------------------------------------------------------------------------------------------
// Sessions

pub async fn session_round_trips_by_id_and_hash<S: Store + ?Sized>(store: &S) {
    let session = seeded_session(store, Via::Cookie).await;
    let hash = session.secret_hash.unwrap();
    assert_eq!(
        store.find_live_session(session.id, at(1)).await.unwrap(),
        Some(session.clone())
    );
    assert_eq!(
        store.find_live_session_by_hash(&hash, at(1)).await.unwrap(),
        Some(session)
    );
}

pub async fn duplicate_session_conflicts<S: Store + ?Sized>(store: &S) {
    let session = seeded_session(store, Via::Cookie).await;
    let same_id = Session {
        secret_hash: Some(fresh_hash()),
        ..session.clone()
    };
    assert_conflict(store.insert_session(&same_id, &[]).await, "session");
    let same_hash = Session {
        id: SessionId::new(),
        ..session.clone()
    };
    assert_conflict(store.insert_session(&same_hash, &[]).await, "session");
    assert_eq!(
        store.find_live_session(same_hash.id, at(1)).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .find_live_session_by_hash(&session.secret_hash.unwrap(), at(1))
            .await
            .unwrap(),
        Some(session)
    );
}

pub async fn token_sessions_need_no_secret_hash<S: Store + ?Sized>(store: &S) {
    let user = seeded_user(store).await;
    let mut first = new_session(&user, Via::Token, at(0));
    first.user_agent = None;
    first.ip = None;
    let second = new_session(&user, Via::Token, at(1));
    assert_eq!(first.secret_hash, None);
    store.insert_session(&first, &[]).await.unwrap();
    store.insert_session(&second, &[]).await.unwrap();
    assert_eq!(
        store.find_live_session(first.id, at(2)).await.unwrap(),
        Some(first)
    );
    assert_eq!(
        store.find_live_session(second.id, at(2)).await.unwrap(),
        Some(second)
    );
}

pub async fn session_of_unknown_user_is_refused<S: Store + ?Sized>(store: &S) {
    let session = new_session(&new_user(at(0)), Via::Cookie, at(0));
    assert!(store.insert_session(&session, &[]).await.is_err());
    assert_eq!(
        store.find_live_session(session.id, at(1)).await.unwrap(),
        None
    );
}

pub async fn unknown_session_is_none<S: Store + ?Sized>(store: &S) {
    let id = SessionId::new();
    assert_eq!(store.find_live_session(id, at(0)).await.unwrap(), None);
    assert_eq!(
        store
            .find_live_session_by_hash(&fresh_hash(), at(0))
            .await
            .unwrap(),
        None
    );
    store.touch_session(id, at(0)).await.unwrap();
    assert!(!store
        .revoke_session(id, at(0), &WebhookPlan::none())
        .await
        .unwrap());
}

pub async fn session_dies_when_idle<S: Store + ?Sized>(store: &S) {
    let session = seeded_session(store, Via::Cookie).await;
    let hash = session.secret_hash.unwrap();
    let last_live = just_before(at(IDLE_SECS));
    assert!(store
        .find_live_session(session.id, last_live)
        .await
        .unwrap()
        .is_some());
    assert!(store
        .find_live_session_by_hash(&hash, last_live)
        .await
        .unwrap()
        .is_some());
    // Dead at exactly last_seen_at + idle_timeout, to the millisecond.
    let idle_end = at(IDLE_SECS);
    assert_eq!(
        store.find_live_session(session.id, idle_end).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .find_live_session_by_hash(&hash, idle_end)
            .await
            .unwrap(),
        None
    );
    assert!(store
        .list_live_sessions(session.user_id, idle_end)
        .await
        .unwrap()
        .is_empty());
}

pub async fn session_dies_at_absolute_expiry<S: Store + ?Sized>(store: &S) {
    let user = seeded_user(store).await;
    let session = Session {
        expires_at: at(5_000),
        ..new_session(&user, Via::Cookie, at(0))
    };
    store.insert_session(&session, &[]).await.unwrap();
    // Activity keeps the idle expiry ahead, but not past the absolute end.
    store.touch_session(session.id, at(3_000)).await.unwrap();
    store.touch_session(session.id, at(4_900)).await.unwrap();
    assert!(store
        .find_live_session(session.id, just_before(at(5_000)))
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        store
            .find_live_session(session.id, at(5_000))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .find_live_session_by_hash(&session.secret_hash.unwrap(), at(5_000))
            .await
            .unwrap(),
        None
    );
}

pub async fn revoked_session_is_not_found<S: Store + ?Sized>(store: &S) {
    let session = seeded_session(store, Via::Cookie).await;
    assert!(store
        .revoke_session(session.id, at(10), &WebhookPlan::none())
        .await
        .unwrap());
    assert_eq!(
        store.find_live_session(session.id, at(11)).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .find_live_session_by_hash(&session.secret_hash.unwrap(), at(11))
            .await
            .unwrap(),
        None
    );
    assert!(store
        .list_live_sessions(session.user_id, at(11))
        .await
        .unwrap()
        .is_empty());
}

pub async fn touch_extends_idle_expiry<S: Store + ?Sized>(store: &S) {
    let session = seeded_session(store, Via::Cookie).await;
    store.touch_session(session.id, at(3_000)).await.unwrap();
    let found = store
        .find_live_session(session.id, at(IDLE_SECS + 10))
        .await
        .unwrap();
    assert_eq!(found, Some(touched(&session, at(3_000))));
    assert!(store
        .find_live_session(session.id, just_before(at(3_000 + IDLE_SECS)))
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        store
            .find_live_session(session.id, at(3_000 + IDLE_SECS))
            .await
            .unwrap(),
        None
    );
}

pub async fn touch_never_moves_back<S: Store + ?Sized>(store: &S) {
    let session = seeded_session(store, Via::Cookie).await;
    store.touch_session(session.id, at(3_000)).await.unwrap();
    // A late, out-of-order touch from a slow request.
    store.touch_session(session.id, at(1_000)).await.unwrap();
    let found = store
        .find_live_session(session.id, at(3_001))
        .await
        .unwrap();
    assert_eq!(found.unwrap().last_seen_at, at(3_000));
}

pub async fn touch_does_not_revive_a_dead_session<S: Store + ?Sized>(store: &S) {
    let idle = seeded_session(store, Via::Cookie).await;
    store
        .touch_session(idle.id, at(IDLE_SECS + 1))
        .await
        .unwrap();
    assert_eq!(
        store
            .find_live_session(idle.id, at(IDLE_SECS + 2))
            .await
            .unwrap(),
        None
    );

    let revoked = seeded_session(store, Via::Cookie).await;
    assert!(store
        .revoke_session(revoked.id, at(10), &WebhookPlan::none())
        .await
        .unwrap());
    store.touch_session(revoked.id, at(20)).await.unwrap();
    assert_eq!(
        store.find_live_session(revoked.id, at(21)).await.unwrap(),
        None
    );
}

pub async fn revoke_session_is_idempotent<S: Store + ?Sized>(store: &S) {
    let session = seeded_session(store, Via::Cookie).await;
    assert!(store
        .revoke_session(session.id, at(10), &WebhookPlan::none())
        .await
        .unwrap());
    // The retry after a timeout: nothing left to revoke, no error.
    assert!(!store
        .revoke_session(session.id, at(11), &WebhookPlan::none())
        .await
        .unwrap());
    assert!(!store
        .revoke_session(SessionId::new(), at(11), &WebhookPlan::none())
        .await
        .unwrap());
    // A session that already died of inactivity was not live: nothing was revoked.
    let expired = seeded_session(store, Via::Cookie).await;
    assert!(!store
        .revoke_session(expired.id, at(IDLE_SECS), &WebhookPlan::none())
        .await
        .unwrap());
}

pub async fn revoke_user_sessions_keeps_the_current_one<S: Store + ?Sized>(store: &S) {
    let user = seeded_user(store).await;
    let current = new_session(&user, Via::Cookie, at(0));
    let other = new_session(&user, Via::Token, at(1));
    let already = new_session(&user, Via::Cookie, at(2));
    let stranger = seeded_session(store, Via::Cookie).await;
    for session in [&current, &other, &already] {
        store.insert_session(session, &[]).await.unwrap();
    }
    assert!(store
        .revoke_session(already.id, at(5), &WebhookPlan::none())
        .await
        .unwrap());

    // Only `other`: `already` was revoked before and `current` is kept.
    let revoked = store
        .revoke_user_sessions(user.id, Some(current.id), at(10), &WebhookPlan::none())
        .await
        .unwrap();
    assert_eq!(revoked, vec![other.id]);
    assert!(store
        .find_live_session(current.id, at(11))
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        store.find_live_session(other.id, at(11)).await.unwrap(),
        None
    );
    assert!(store
        .find_live_session(stranger.id, at(11))
        .await
        .unwrap()
        .is_some());

    assert_eq!(
        store
            .revoke_user_sessions(user.id, None, at(20), &WebhookPlan::none())
            .await
            .unwrap(),
        vec![current.id]
    );
    assert_eq!(
        store.find_live_session(current.id, at(21)).await.unwrap(),
        None
    );
    assert!(store
        .list_live_sessions(user.id, at(21))
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .revoke_user_sessions(user.id, None, at(30), &WebhookPlan::none())
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .revoke_user_sessions(UserId::new(), None, at(30), &WebhookPlan::none())
        .await
        .unwrap()
        .is_empty());
}

pub async fn list_live_sessions_is_newest_first_and_only_live<S: Store + ?Sized>(store: &S) {
    let user = seeded_user(store).await;
    let old = new_session(&user, Via::Cookie, at(0));
    let middle = new_session(&user, Via::Token, at(100));
    let new = new_session(&user, Via::Cookie, at(200));
    let revoked = new_session(&user, Via::Cookie, at(150));
    let idle = Session {
        idle_timeout: secs(60),
        ..new_session(&user, Via::Cookie, at(50))
    };
    let ended = Session {
        expires_at: at(250),
        ..new_session(&user, Via::Token, at(180))
    };
    // Inserted out of order: the order is `created_at`, not insertion.
    for session in [&middle, &revoked, &old, &idle, &new, &ended] {
        store.insert_session(session, &[]).await.unwrap();
    }
    let stranger = seeded_session(store, Via::Cookie).await;
    assert!(store
        .revoke_session(revoked.id, at(160), &WebhookPlan::none())
        .await
        .unwrap());

    let listed = store.list_live_sessions(user.id, at(300)).await.unwrap();
    assert_eq!(listed, vec![new, middle, old]);
    assert_eq!(
        store
            .list_live_sessions(stranger.user_id, at(300))
            .await
            .unwrap(),
        vec![stranger]
    );
    assert!(store
        .list_live_sessions(UserId::new(), at(300))
        .await
        .unwrap()
        .is_empty());
}

// ---------------------------------------------------------------------------------------------
// Refresh families (RFC 9700 §4.14.2)

pub async fn refresh_insert_rules<S: Store + ?Sized>(store: &S) {
    let (session, first) = seeded_family(store).await;
    let again = RefreshRecord {
        hash: first,
        session_id: session.id,
        issued_at: at(1),
        rotated_at: None,
    };
    assert_conflict(store.insert_refresh(&again).await, "refresh");
    let orphan = RefreshRecord {
        hash: fresh_hash(),
        session_id: SessionId::new(),
        issued_at: at(1),
        rotated_at: None,
    };
    assert!(store.insert_refresh(&orphan).await.is_err());
    let rotation = store
        .rotate_refresh(
            &orphan.hash,
            &fresh_hash(),
            at(2),
            GRACE,
            &WebhookPlan::none(),
        )
        .await;
    assert_eq!(rotation.unwrap(), Rotation::Invalid);
}

pub async fn rotation_spends_the_token_and_touches_the_session<S: Store + ?Sized>(store: &S) {
    let (session, first) = seeded_family(store).await;
    let (second, third) = (fresh_hash(), fresh_hash());

    let rotation = store
        .rotate_refresh(&first, &second, at(100), GRACE, &WebhookPlan::none())
        .await
        .unwrap();
    assert_eq!(rotation, Rotation::Rotated(touched(&session, at(100))));
    assert_eq!(
        store.find_live_session(session.id, at(100)).await.unwrap(),
        Some(touched(&session, at(100)))
    );

    // The successor is a full member of the family.
    let rotation = store
        .rotate_refresh(&second, &third, at(200), GRACE, &WebhookPlan::none())
        .await
        .unwrap();
    assert_eq!(rotation, Rotation::Rotated(touched(&session, at(200))));
    assert_eq!(
        store.find_live_session(session.id, at(200)).await.unwrap(),
        Some(touched(&session, at(200)))
    );
}

pub async fn replay_within_grace_is_replayed<S: Store + ?Sized>(store: &S) {
    let (session, first) = seeded_family(store).await;
    let second = fresh_hash();
    let after_rotation = touched(&session, at(100));
    store
        .rotate_refresh(&first, &second, at(100), GRACE, &WebhookPlan::none())
        .await
        .unwrap();

    // Two tabs refreshing at once; up to and including `grace` later, to the millisecond.
    for now in [at(100), at(105), at(110)] {
        let rotation = store
            .rotate_refresh(&first, &second, now, GRACE, &WebhookPlan::none())
            .await
            .unwrap();
        assert_eq!(rotation, Rotation::Replayed(after_rotation.clone()));
    }
    // Nothing changed: the session was not touched, the successor is still unused.
    assert_eq!(
        store.find_live_session(session.id, at(110)).await.unwrap(),
        Some(after_rotation)
    );
    let rotation = store
        .rotate_refresh(&second, &fresh_hash(), at(111), GRACE, &WebhookPlan::none())
        .await
        .unwrap();
    assert_eq!(rotation, Rotation::Rotated(touched(&session, at(111))));
}

pub async fn replay_after_grace_revokes_the_family<S: Store + ?Sized>(store: &S) {
    let (session, first) = seeded_family(store).await;
    let second = fresh_hash();
    store
        .rotate_refresh(&first, &second, at(100), GRACE, &WebhookPlan::none())
        .await
        .unwrap();

    // One millisecond past the grace window is reuse.
    let rotation = store
        .rotate_refresh(
            &first,
            &second,
            just_after(at(110)),
            GRACE,
            &WebhookPlan::none(),
        )
        .await
        .unwrap();
    assert_eq!(rotation, Rotation::ReuseDetected(session.id));
    assert_eq!(
        store.find_live_session(session.id, at(111)).await.unwrap(),
        None
    );
    // The thief's and the victim's tokens are both dead now.
    let rotation = store
        .rotate_refresh(&second, &fresh_hash(), at(112), GRACE, &WebhookPlan::none())
        .await
        .unwrap();
    assert_eq!(rotation, Rotation::Invalid);
    let rotation = store
        .rotate_refresh(&first, &second, at(113), GRACE, &WebhookPlan::none())
        .await
        .unwrap();
    assert_eq!(rotation, Rotation::Invalid);
}

pub async fn replay_of_an_older_token_revokes_the_family<S: Store + ?Sized>(store: &S) {
    let (session, first) = seeded_family(store).await;
    let (second, third) = (fresh_hash(), fresh_hash());
    store
        .rotate_refresh(&first, &second, at(100), GRACE, &WebhookPlan::none())
        .await
        .unwrap();
    store
        .rotate_refresh(&second, &third, at(101), GRACE, &WebhookPlan::none())
        .await
        .unwrap();

    // The parent of the current token is still within grace …
    let rotation = store
        .rotate_refresh(&second, &third, at(102), GRACE, &WebhookPlan::none())
        .await
        .unwrap();
    assert_eq!(rotation, Rotation::Replayed(touched(&session, at(101))));
    // … but the grand-parent's successor was already used: theft, even within grace.
    let rotation = store
        .rotate_refresh(&first, &second, at(103), GRACE, &WebhookPlan::none())
        .await
        .unwrap();
    assert_eq!(rotation, Rotation::ReuseDetected(session.id));
    assert_eq!(
        store.find_live_session(session.id, at(103)).await.unwrap(),
        None
    );
    let rotation = store
        .rotate_refresh(&third, &fresh_hash(), at(104), GRACE, &WebhookPlan::none())
        .await
        .unwrap();
    assert_eq!(rotation, Rotation::Invalid);
}

pub async fn unknown_refresh_token_is_invalid<S: Store + ?Sized>(store: &S) {
    let rotation = store
        .rotate_refresh(
            &fresh_hash(),
            &fresh_hash(),
            at(0),
            GRACE,
            &WebhookPlan::none(),
        )
        .await;
    assert_eq!(rotation.unwrap(), Rotation::Invalid);
}

pub async fn refresh_of_a_dead_session_is_invalid<S: Store + ?Sized>(store: &S) {
    // Revoked: neither a fresh token nor a replayed one does anything, not even a reuse alarm.
    let (revoked, first) = seeded_family(store).await;
    let second = fresh_hash();
    store
        .rotate_refresh(&first, &second, at(100), GRACE, &WebhookPlan::none())
        .await
        .unwrap();
    assert!(store
        .revoke_session(revoked.id, at(101), &WebhookPlan::none())
        .await
        .unwrap());
    for presented in [&second, &first] {
        let rotation = store
            .rotate_refresh(
                presented,
                &fresh_hash(),
                at(102),
                GRACE,
                &WebhookPlan::none(),
            )
            .await;
        assert_eq!(rotation.unwrap(), Rotation::Invalid);
    }

    // Idle-expired.
    let (idle, first) = seeded_family(store).await;
    let rotation = store
        .rotate_refresh(
            &first,
            &fresh_hash(),
            at(IDLE_SECS),
            GRACE,
            &WebhookPlan::none(),
        )
        .await;
    assert_eq!(rotation.unwrap(), Rotation::Invalid);
    assert_eq!(
        store
            .find_live_session(idle.id, at(IDLE_SECS - 1))
            .await
            .unwrap(),
        Some(idle)
    );

    // Past the absolute end, however recently it was used.
    let user = seeded_user(store).await;
    let ended = Session {
        expires_at: at(500),
        ..new_session(&user, Via::Token, at(0))
    };
    store.insert_session(&ended, &[]).await.unwrap();
    let first = family_of(store, &ended).await;
    let second = fresh_hash();
    let rotation = store
        .rotate_refresh(&first, &second, at(499), GRACE, &WebhookPlan::none())
        .await
        .unwrap();
    assert_eq!(rotation, Rotation::Rotated(touched(&ended, at(499))));
    let rotation = store
        .rotate_refresh(&second, &fresh_hash(), at(500), GRACE, &WebhookPlan::none())
        .await;
    assert_eq!(rotation.unwrap(), Rotation::Invalid);
}

// ---------------------------------------------------------------------------------------------
// Revoking a refresh family (RFC 7009)

/// The `revoked_at` the store reports for `session`, if any, via `revoked_sessions_since`.
async fn revoked_at_of<S: Store + ?Sized>(store: &S, session: &Session) -> Option<Timestamp> {
    let revoked = store
        .revoked_sessions_since(Timestamp::from_unix(i64::MIN))
        .await
        .unwrap();
    let mut ours = revoked.into_iter().filter(|(id, _, _)| *id == session.id);
    let (_, user, revoked_at) = ours.next()?;
    assert_eq!(user, session.user_id);
    assert!(ours.next().is_none(), "session listed twice");
    Some(revoked_at)
}

pub async fn revoke_family_of_the_current_token<S: Store + ?Sized>(store: &S) {
    let (session, first) = seeded_family(store).await;
    // Another device of the same user is not part of the family.
    let sibling = new_session(
        &store.find_user(session.user_id).await.unwrap().unwrap(),
        Via::Token,
        at(0),
    );
    store.insert_session(&sibling, &[]).await.unwrap();
    let sibling_token = family_of(store, &sibling).await;

    assert_eq!(
        store
            .revoke_family_of(&first, at(50), &WebhookPlan::none())
            .await
            .unwrap(),
        Some(session.id)
    );
    assert_eq!(
        store.find_live_session(session.id, at(50)).await.unwrap(),
        None
    );
    assert_eq!(revoked_at_of(store, &session).await, Some(at(50)));
    let rotation = store
        .rotate_refresh(&first, &fresh_hash(), at(51), GRACE, &WebhookPlan::none())
        .await
        .unwrap();
    assert_eq!(rotation, Rotation::Invalid);

    // Idempotent: a retry answers alike and keeps the first revocation's time.
    assert_eq!(
        store
            .revoke_family_of(&first, at(60), &WebhookPlan::none())
            .await
            .unwrap(),
        Some(session.id)
    );
    assert_eq!(revoked_at_of(store, &session).await, Some(at(50)));

    assert_eq!(revoked_at_of(store, &sibling).await, None);
    let rotation = store
        .rotate_refresh(
            &sibling_token,
            &fresh_hash(),
            at(70),
            GRACE,
            &WebhookPlan::none(),
        )
        .await
        .unwrap();
    assert_eq!(rotation, Rotation::Rotated(touched(&sibling, at(70))));
}

pub async fn revoke_family_of_a_spent_token<S: Store + ?Sized>(store: &S) {
    let (session, first) = seeded_family(store).await;
    let (second, third) = (fresh_hash(), fresh_hash());
    store
        .rotate_refresh(&first, &second, at(100), GRACE, &WebhookPlan::none())
        .await
        .unwrap();
    store
        .rotate_refresh(&second, &third, at(200), GRACE, &WebhookPlan::none())
        .await
        .unwrap();

    // A stale copy of the family still signs the device out, and is not taken for theft.
    assert_eq!(
        store
            .revoke_family_of(&first, at(300), &WebhookPlan::none())
            .await
            .unwrap(),
        Some(session.id)
    );
    assert_eq!(revoked_at_of(store, &session).await, Some(at(300)));
    assert_eq!(
        store.find_live_session(session.id, at(300)).await.unwrap(),
        None
    );
    // The family's head is dead too.
    let rotation = store
        .rotate_refresh(&third, &fresh_hash(), at(301), GRACE, &WebhookPlan::none())
        .await
        .unwrap();
    assert_eq!(rotation, Rotation::Invalid);
    // So is the replay the grace window would otherwise have allowed.
    let rotation = store
        .rotate_refresh(&second, &third, at(205), GRACE, &WebhookPlan::none())
        .await
        .unwrap();
    assert_eq!(rotation, Rotation::Invalid);
}

pub async fn revoke_family_of_an_unknown_token_is_none<S: Store + ?Sized>(store: &S) {
    let (session, first) = seeded_family(store).await;
    assert_eq!(
        store
            .revoke_family_of(&fresh_hash(), at(10), &WebhookPlan::none())
            .await
            .unwrap(),
        None
    );
    // Nothing else was touched.
    assert_eq!(revoked_at_of(store, &session).await, None);
    let rotation = store
        .rotate_refresh(&first, &fresh_hash(), at(11), GRACE, &WebhookPlan::none())
        .await
        .unwrap();
    assert_eq!(rotation, Rotation::Rotated(touched(&session, at(11))));
}

pub async fn revoke_family_of_a_dead_session_keeps_it_as_it_is<S: Store + ?Sized>(store: &S) {
    // Already revoked: the token is still known, and the first revocation's time stays.
    let (revoked, first) = seeded_family(store).await;
    assert!(store
        .revoke_session(revoked.id, at(10), &WebhookPlan::none())
        .await
        .unwrap());
    assert_eq!(
        store
            .revoke_family_of(&first, at(20), &WebhookPlan::none())
            .await
            .unwrap(),
        Some(revoked.id)
    );
    assert_eq!(revoked_at_of(store, &revoked).await, Some(at(10)));

    // Revoked as stolen: the same.
    let (stolen, first) = seeded_family(store).await;
    let second = fresh_hash();
    store
        .rotate_refresh(&first, &second, at(100), GRACE, &WebhookPlan::none())
        .await
        .unwrap();
    let rotation = store
        .rotate_refresh(&first, &second, at(200), GRACE, &WebhookPlan::none())
        .await
        .unwrap();
    assert_eq!(rotation, Rotation::ReuseDetected(stolen.id));
    assert_eq!(
        store
            .revoke_family_of(&second, at(300), &WebhookPlan::none())
            .await
            .unwrap(),
        Some(stolen.id)
    );
    assert_eq!(revoked_at_of(store, &stolen).await, Some(at(200)));

    // Idle-expired but never revoked: known, and now marked revoked; still not live.
    let (idle, first) = seeded_family(store).await;
    assert_eq!(
        store
            .revoke_family_of(&first, at(IDLE_SECS + 10), &WebhookPlan::none())
            .await
            .unwrap(),
        Some(idle.id)
    );
    assert_eq!(revoked_at_of(store, &idle).await, Some(at(IDLE_SECS + 10)));
    assert_eq!(
        store
            .find_live_session(idle.id, at(IDLE_SECS - 1))
            .await
            .unwrap(),
        None
    );
}

// ---------------------------------------------------------------------------------------------
// Warming a revocation cache (SPEC §5)

pub async fn revoked_sessions_since_filters_by_time<S: Store + ?Sized>(store: &S) {
    let user = seeded_user(store).await;
    let early = new_session(&user, Via::Cookie, at(0));
    let late = new_session(&user, Via::Token, at(0));
    let never = new_session(&user, Via::Cookie, at(0));
    for session in [&early, &late, &never] {
        store.insert_session(session, &[]).await.unwrap();
    }
    let other = seeded_session(store, Via::Token).await;
    assert!(store
        .revoke_session(early.id, at(100), &WebhookPlan::none())
        .await
        .unwrap());
    assert!(store
        .revoke_session(late.id, at(200), &WebhookPlan::none())
        .await
        .unwrap());
    assert!(store
        .revoke_session(other.id, at(300), &WebhookPlan::none())
        .await
        .unwrap());

    let ours = |since: Timestamp| async move {
        let ids = [early.id, late.id, never.id, other.id];
        let mut listed: Vec<(SessionId, UserId, Timestamp)> = store
            .revoked_sessions_since(since)
            .await
            .unwrap()
            .into_iter()
            .filter(|(id, _, _)| ids.contains(id))
            .collect();
        listed.sort_by_key(|(_, _, revoked_at)| *revoked_at);
        listed
    };
    let all = vec![
        (early.id, user.id, at(100)),
        (late.id, user.id, at(200)),
        (other.id, other.user_id, at(300)),
    ];
    assert_eq!(ours(at(0)).await, all);
    // Inclusive: a revocation at exactly `since` is listed.
    assert_eq!(ours(at(100)).await, all);
    assert_eq!(ours(at(101)).await, all[1..].to_vec());
    assert_eq!(ours(at(200)).await, all[1..].to_vec());
    assert_eq!(ours(at(300)).await, all[2..].to_vec());
    assert_eq!(ours(at(301)).await, vec![]);
}

pub async fn epochs_since_filters_by_time<S: Store + ?Sized>(store: &S) {
    let quiet = seeded_user(store).await;
    let bumped = seeded_user(store).await;
    let later = seeded_user(store).await;
    assert!(store.bump_epoch(bumped.id, at(500), &[]).await.unwrap());
    assert!(store.bump_epoch(later.id, at(900), &[]).await.unwrap());
    let ours = |since: Timestamp| async move {
        let ids = [quiet.id, bumped.id, later.id];
        let mut listed: Vec<(UserId, Timestamp)> = store
            .epochs_since(since)
            .await
            .unwrap()
            .into_iter()
            .filter(|(id, _)| ids.contains(id))
            .collect();
        listed.sort_by_key(|(_, epoch)| *epoch);
        listed
    };
    // A new user's epoch is its creation.
    assert_eq!(
        ours(at(0)).await,
        vec![(quiet.id, at(0)), (bumped.id, at(500)), (later.id, at(900))]
    );
    assert_eq!(
        ours(at(1)).await,
        vec![(bumped.id, at(500)), (later.id, at(900))]
    );
    assert_eq!(
        ours(at(500)).await,
        vec![(bumped.id, at(500)), (later.id, at(900))]
    );
    assert_eq!(ours(at(501)).await, vec![(later.id, at(900))]);
    assert_eq!(ours(at(901)).await, vec![]);
}

pub async fn purge_dead_sessions_keeps_live_ones<S: Store + ?Sized>(store: &S) {
    let user = new_user(past(0));
    store.insert_user(&user).await.unwrap();
    let session = |via| new_session(&user, via, past(0));
    let live = session(Via::Token);
    let revoked = session(Via::Token);
    let revoked_later = session(Via::Token);
    let ended = Session {
        expires_at: past(200),
        ..session(Via::Token)
    };
    let idle = Session {
        idle_timeout: secs(60),
        ..session(Via::Cookie)
    };
    // Its idle end is exactly the cut-off: it did not end *before* it.
    let boundary = Session {
        idle_timeout: secs(500),
        ..session(Via::Token)
    };
    let all = [&live, &revoked, &revoked_later, &ended, &idle, &boundary];
    let mut tokens = Vec::new();
    for s in all {
        store.insert_session(s, &[]).await.unwrap();
        tokens.push(family_of(store, s).await);
    }
    assert!(store
        .revoke_session(revoked.id, past(100), &WebhookPlan::none())
        .await
        .unwrap());
    assert!(store
        .revoke_session(revoked_later.id, past(1_000), &WebhookPlan::none())
        .await
        .unwrap());

    let before = past(500);
    assert_eq!(store.purge_dead_sessions(before).await.unwrap(), 3);
    // Nothing else ended before the cut-off: a second run deletes nothing.
    assert_eq!(store.purge_dead_sessions(before).await.unwrap(), 0);

    // The survivors are untouched: listed, found, and the live family still rotates.
    assert_eq!(
        store.list_live_sessions(user.id, past(400)).await.unwrap(),
        vec![boundary.clone(), live.clone()]
    );
    let rotation = store
        .rotate_refresh(
            &tokens[0],
            &fresh_hash(),
            past(600),
            GRACE,
            &WebhookPlan::none(),
        )
        .await
        .unwrap();
    assert_eq!(rotation, Rotation::Rotated(touched(&live, past(600))));
    assert_eq!(
        revoked_at_of(store, &revoked_later).await,
        Some(past(1_000))
    );

    // The dead are gone, refresh tokens included: their tokens are unknown now.
    assert_eq!(revoked_at_of(store, &revoked).await, None);
    for (s, token) in all.iter().zip(&tokens) {
        let kept = [live.id, revoked_later.id, boundary.id].contains(&s.id);
        let family = store
            .revoke_family_of(token, past(2_000), &WebhookPlan::none())
            .await
            .unwrap();
        assert_eq!(family, kept.then_some(s.id), "session {:?}", s.id);
    }
}

// ---------------------------------------------------------------------------------------------
// The access-token denylist (SPEC §5)

pub async fn denied_jti_is_refused_until_it_expires<S: Store + ?Sized>(store: &S) {
    let (jti, other) = (fresh_jti(), fresh_jti());
    store.deny_jti(&jti, at(100)).await.unwrap();
    assert!(store.is_jti_denied(&jti, at(0)).await.unwrap());
    assert!(store.is_jti_denied(&jti, at(99)).await.unwrap());
    // Refused while `now < exp`, which is when the token itself stops verifying.
    assert!(!store.is_jti_denied(&jti, at(100)).await.unwrap());
    assert!(!store.is_jti_denied(&jti, at(101)).await.unwrap());
    assert!(!store.is_jti_denied(&other, at(0)).await.unwrap());

    let listed = |now: Timestamp| {
        let ours = [jti.clone(), other.clone()];
        async move {
            store
                .denied_jtis(now)
                .await
                .unwrap()
                .into_iter()
                .filter(|(j, _)| ours.contains(j))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(listed(at(99)).await, vec![(jti.clone(), at(100))]);
    assert_eq!(listed(at(100)).await, vec![]);
}

pub async fn denying_a_jti_twice_keeps_the_later_expiry<S: Store + ?Sized>(store: &S) {
    let jti = fresh_jti();
    store.deny_jti(&jti, at(100)).await.unwrap();
    store.deny_jti(&jti, at(200)).await.unwrap();
    assert!(store.is_jti_denied(&jti, at(150)).await.unwrap());
    // An earlier expiry arriving late (a retry, another node) does not shorten the denial.
    store.deny_jti(&jti, at(150)).await.unwrap();
    assert!(store.is_jti_denied(&jti, at(199)).await.unwrap());
    assert!(!store.is_jti_denied(&jti, at(200)).await.unwrap());
    let ours: Vec<(String, Timestamp)> = store
        .denied_jtis(at(0))
        .await
        .unwrap()
        .into_iter()
        .filter(|(j, _)| *j == jti)
        .collect();
    assert_eq!(ours, vec![(jti, at(200))]);
}

pub async fn prune_denylist_removes_only_expired_entries<S: Store + ?Sized>(store: &S) {
    let jtis: Vec<(String, Timestamp)> = [10, 20, 30, 40]
        .into_iter()
        .map(|offset| (fresh_jti(), past(offset)))
        .collect();
    for (jti, expires_at) in &jtis {
        store.deny_jti(jti, *expires_at).await.unwrap();
    }
    let now = past(20);
    // The entries expiring at `past(10)` and exactly at `now`.
    assert_eq!(store.prune_denylist(now).await.unwrap(), 2);
    assert_eq!(store.prune_denylist(now).await.unwrap(), 0);

    // Everything still stored, not only what is in force: from the beginning of time.
    let stored = store
        .denied_jtis(Timestamp::from_unix(i64::MIN))
        .await
        .unwrap();
    let mut ours: Vec<(String, Timestamp)> = stored
        .iter()
        .filter(|entry| jtis.contains(entry))
        .cloned()
        .collect();
    ours.sort_by_key(|(_, expires_at)| *expires_at);
    assert_eq!(ours, jtis[2..].to_vec());
    // Does not grow without bound: after a prune, every stored entry is one still in force
    // (parallel cases only add entries in force long after `now`).
    assert!(
        stored.iter().all(|(_, expires_at)| now < *expires_at),
        "expired entries survived the prune"
    );
    for (jti, _) in &jtis[2..] {
        assert!(store.is_jti_denied(jti, now).await.unwrap());
    }
    for (jti, _) in &jtis[..2] {
        assert!(!store.is_jti_denied(jti, past(0)).await.unwrap());
    }
}

// ---------------------------------------------------------------------------------------------
// Signing keys

fn new_signing_key(created_at: Timestamp) -> SealedKey {
    SealedKey {
        kid: format!("kid-{}", UserId::new()),
        alg: "EdDSA".to_owned(),
        sealed_private: vec![0, 1, 2, 254, 255],
        public_jwk: Some(r#"{"kty":"OKP","crv":"Ed25519","x":"conformance"}"#.to_owned()),
        created_at,
        retired_at: None,
    }
}

async fn our_keys<S: Store + ?Sized>(store: &S, kids: &[&str]) -> Vec<SealedKey> {
    let keys = store.signing_keys().await.unwrap();
    keys.into_iter()
        .filter(|k| kids.contains(&k.kid.as_str()))
        .collect()
}

pub async fn signing_keys_are_listed_oldest_first<S: Store + ?Sized>(store: &S) {
    let newer = new_signing_key(at(200));
    let older = SealedKey {
        alg: "HS256".to_owned(),
        public_jwk: None,
        retired_at: Some(at(300)),
        ..new_signing_key(at(100))
    };
    store.insert_signing_key(&newer).await.unwrap();
    store.insert_signing_key(&older).await.unwrap();
    let keys = our_keys(store, &[&newer.kid, &older.kid]).await;
    assert_eq!(keys, vec![older, newer]);
}

pub async fn duplicate_kid_conflicts<S: Store + ?Sized>(store: &S) {
    let key = new_signing_key(at(0));
    store.insert_signing_key(&key).await.unwrap();
    let same_kid = SealedKey {
        alg: "ES256".to_owned(),
        ..new_signing_key(at(1))
    };
    let same_kid = SealedKey {
        kid: key.kid.clone(),
        ..same_kid
    };
    assert_conflict(store.insert_signing_key(&same_kid).await, "kid");
    assert_eq!(our_keys(store, &[&key.kid]).await, vec![key]);
}

pub async fn retire_signing_key_once<S: Store + ?Sized>(store: &S) {
    let key = new_signing_key(at(0));
    store.insert_signing_key(&key).await.unwrap();
    assert!(store.retire_signing_key(&key.kid, at(300)).await.unwrap());
    assert!(!store.retire_signing_key(&key.kid, at(400)).await.unwrap());
    let retired = SealedKey {
        retired_at: Some(at(300)),
        ..key.clone()
    };
    assert_eq!(our_keys(store, &[&key.kid]).await, vec![retired]);
    let unknown = format!("kid-{}", UserId::new());
    assert!(!store.retire_signing_key(&unknown, at(300)).await.unwrap());
}

pub async fn delete_signing_key<S: Store + ?Sized>(store: &S) {
    let key = new_signing_key(at(0));
    let kept = new_signing_key(at(1));
    store.insert_signing_key(&key).await.unwrap();
    store.insert_signing_key(&kept).await.unwrap();
    assert!(store.delete_signing_key(&key.kid).await.unwrap());
    assert_eq!(our_keys(store, &[&key.kid, &kept.kid]).await, vec![kept]);
    assert!(!store.delete_signing_key(&key.kid).await.unwrap());
}

// ---------------------------------------------------------------------------------------------
// Admin keys

fn new_admin_key() -> AdminKey {
    AdminKey {
        id: AdminKeyId::new(),
        name: "ci deploy".to_owned(),
        hash: fresh_hash(),
        created_at: at(0),
        revoked_at: None,
    }
}

pub async fn admin_key_round_trips<S: Store + ?Sized>(store: &S) {
    let key = new_admin_key();
    store.insert_admin_key(&key).await.unwrap();
    assert_eq!(
        store.find_live_admin_key(&key.hash).await.unwrap(),
        Some(key)
    );
    assert_eq!(
        store.find_live_admin_key(&fresh_hash()).await.unwrap(),
        None
    );
}

pub async fn revoked_admin_key_is_not_found<S: Store + ?Sized>(store: &S) {
    let key = new_admin_key();
    let other = new_admin_key();
    store.insert_admin_key(&key).await.unwrap();
    store.insert_admin_key(&other).await.unwrap();
    assert!(store.revoke_admin_key(key.id, at(10)).await.unwrap());
    assert_eq!(store.find_live_admin_key(&key.hash).await.unwrap(), None);
    assert!(!store.revoke_admin_key(key.id, at(11)).await.unwrap());
    assert!(!store
        .revoke_admin_key(AdminKeyId::new(), at(11))
        .await
        .unwrap());
    assert_eq!(
        store.find_live_admin_key(&other.hash).await.unwrap(),
        Some(other)
    );
}

// ---------------------------------------------------------------------------------------------
// Health

pub async fn ping_answers<S: Store + ?Sized>(store: &S) {
    store.ping().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Revocation log. Other cases may append concurrently on a shared store, so these look for
// their own events rather than counting.

pub async fn revocation_log_is_ordered_and_resumable<S: Store + ?Sized>(store: &S) {
    let user = UserId::new();
    let cursor = store.latest_event().await.unwrap();
    let events = [
        RevocationEvent::SessionRevoked {
            session: SessionId::new(),
        },
        RevocationEvent::EpochBumped { user, epoch: at(5) },
        RevocationEvent::JtiDenied {
            jti: fresh_jti(),
            expires_at: at(900),
        },
    ];
    let mut seqs = Vec::new();
    for event in &events {
        seqs.push(store.append_event(event, at(1)).await.unwrap());
    }
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing: {seqs:?}"
    );
    assert!(seqs[0] > cursor);
    assert!(store.latest_event().await.unwrap() >= seqs[2]);

    let read = store.events_after(cursor, 10_000).await.unwrap();
    let mine: Vec<&RevocationEvent> = read
        .iter()
        .filter(|(seq, _, _)| seqs.contains(seq))
        .map(|(_, _, event)| event)
        .collect();
    assert_eq!(mine, events.iter().collect::<Vec<_>>(), "in order, intact");
    assert!(read.windows(2).all(|w| w[0].0 < w[1].0));
    assert!(read.iter().all(|(seq, _, _)| *seq > cursor));

    // Resuming from the middle yields what follows, and `limit` is honoured.
    let rest = store.events_after(seqs[0], 10_000).await.unwrap();
    assert!(rest.iter().all(|(seq, _, _)| *seq > seqs[0]));
    assert!(rest.iter().any(|(seq, _, _)| *seq == seqs[1]));
    assert_eq!(store.events_after(cursor, 1).await.unwrap().len(), 1);
    let stamped = read.iter().find(|(seq, _, _)| *seq == seqs[1]).unwrap();
    assert_eq!(stamped.1, at(1));
}

/// The one case that deletes log entries by time: its era is [`past`].
pub async fn revocation_log_prunes_only_old_events<S: Store + ?Sized>(store: &S) {
    let old = RevocationEvent::JtiDenied {
        jti: fresh_jti(),
        expires_at: past(20),
    };
    let young = RevocationEvent::JtiDenied {
        jti: fresh_jti(),
        expires_at: past(200),
    };
    let cursor = store.latest_event().await.unwrap();
    let old_seq = store.append_event(&old, past(10)).await.unwrap();
    let young_seq = store.append_event(&young, past(100)).await.unwrap();
    assert!(store.prune_events(past(50)).await.unwrap() >= 1);
    let left: Vec<u64> = store
        .events_after(cursor, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|(seq, _, _)| seq)
        .collect();
    assert!(!left.contains(&old_seq));
    assert!(left.contains(&young_seq));
    // Sequence numbers are never reused after pruning.
    let next = store.append_event(&old, past(101)).await.unwrap();
    assert!(next > young_seq);
}

// ---------------------------------------------------------------------------------------------
// Webhook outbox. Each case sends to an endpoint of its own and looks only at that endpoint's
// messages, so cases sharing one outbox do not see each other's.

/// An endpoint no other case uses.
fn fresh_endpoint() -> String {
    format!("https://hooks.example.test/{}", UserId::new())
}

/// An endpoint subscribed to every event.
fn hook(endpoint: &str) -> Webhook {
    Webhook {
        url: endpoint.to_owned(),
        secret: WebhookSecret::new("conformance".to_owned()),
        events: EventType::ALL.to_vec(),
    }
}

/// The messages for `endpoint` due at `now`, in the store's order.
async fn due_for<S: Store + ?Sized>(
    store: &S,
    endpoint: &str,
    now: Timestamp,
) -> Vec<QueuedMessage> {
    store
        .due_messages(now, 100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|queued| queued.message.endpoint == endpoint)
        .collect()
}

fn ids(queued: &[QueuedMessage]) -> Vec<OutboxId> {
    queued.iter().map(|q| q.message.id).collect()
}

fn data(queued: &QueuedMessage) -> serde_json::Value {
    let body: serde_json::Value = serde_json::from_str(&queued.message.body).unwrap();
    assert_eq!(body["type"], queued.message.event_type.as_str());
    assert_eq!(body["id"], queued.message.event_id.to_string());
    body["data"].clone()
}

/// One message for `endpoint`, queued at `created_at` with a user's epoch bump.
async fn queued_one<S: Store + ?Sized>(
    store: &S,
    endpoint: &str,
    created_at: Timestamp,
) -> OutboxId {
    let user = seeded_user(store).await;
    let outbox = webhooks::signed_out_everywhere(&[hook(endpoint)], user.id, 0, created_at);
    assert!(store
        .bump_epoch(user.id, created_at, &outbox)
        .await
        .unwrap());
    outbox[0].id
}

pub async fn outbox_is_written_with_the_change<S: Store + ?Sized>(store: &S) {
    let endpoint = fresh_endpoint();
    let hooks = [hook(&endpoint)];
    let user = seeded_user(store).await;
    let session = new_session(&user, Via::Cookie, at(0));
    let created = webhooks::session_created(&hooks, &session);
    assert_eq!(created.len(), 1);
    store.insert_session(&session, &created).await.unwrap();

    // A change refused is an event never queued.
    let again = webhooks::session_created(&hooks, &session);
    assert_conflict(store.insert_session(&session, &again).await, "session");
    let orphan = new_session(&new_user(at(0)), Via::Token, at(0));
    let orphaned = webhooks::session_created(&hooks, &orphan);
    assert!(store.insert_session(&orphan, &orphaned).await.is_err());

    let roles = vec!["admin".to_owned()];
    let changed = webhooks::roles_changed(&hooks, user.id, &roles, at(5));
    assert!(store.set_roles(user.id, &roles, &changed).await.unwrap());
    // The same roles again change nothing, so nothing is announced.
    let unchanged = webhooks::roles_changed(&hooks, user.id, &roles, at(6));
    assert!(store.set_roles(user.id, &roles, &unchanged).await.unwrap());
    let stranger = UserId::new();
    let nobody = webhooks::roles_changed(&hooks, stranger, &roles, at(6));
    assert!(!store.set_roles(stranger, &roles, &nobody).await.unwrap());

    let everywhere = webhooks::signed_out_everywhere(&hooks, user.id, 1, at(7));
    assert!(store.bump_epoch(user.id, at(7), &everywhere).await.unwrap());
    let nobody = webhooks::signed_out_everywhere(&hooks, stranger, 0, at(7));
    assert!(!store.bump_epoch(stranger, at(7), &nobody).await.unwrap());

    let due = due_for(store, &endpoint, at(10)).await;
    let expected: Vec<OutboxMessage> = [created, changed, everywhere].concat();
    let stored: Vec<OutboxMessage> = due.iter().map(|q| q.message.clone()).collect();
    assert_eq!(stored, expected, "intact, earliest first, and nothing else");
    for queued in &due {
        assert_eq!(queued.attempts, 0);
        assert_eq!(queued.last_error, None);
        assert_eq!(queued.next_attempt_at, queued.message.created_at);
    }
    assert_eq!(data(&due[0])["session_id"], session.id.to_string());
    assert_eq!(data(&due[1])["roles"], serde_json::json!(["admin"]));
    // Due from the time of their change, not before.
    assert_eq!(ids(&due_for(store, &endpoint, at(6)).await), ids(&due[..2]));
}

pub async fn revocations_queue_a_message_per_revoked_session<S: Store + ?Sized>(store: &S) {
    let endpoint = fresh_endpoint();
    let plan = WebhookPlan::session_revoked(&[hook(&endpoint)], RevokeReason::Administrator);
    let user = seeded_user(store).await;
    let sessions: Vec<Session> = (0..4)
        .map(|_| new_session(&user, Via::Cookie, at(0)))
        .collect();
    for session in &sessions {
        store.insert_session(session, &[]).await.unwrap();
    }
    let (first, keep) = (&sessions[0], &sessions[3]);

    assert!(store.revoke_session(first.id, at(10), &plan).await.unwrap());
    // Revoking nothing queues nothing: already revoked, unknown, or dead of inactivity.
    assert!(!store.revoke_session(first.id, at(11), &plan).await.unwrap());
    assert!(!store
        .revoke_session(SessionId::new(), at(11), &plan)
        .await
        .unwrap());
    let idle = new_session(&user, Via::Token, at(0));
    store.insert_session(&idle, &[]).await.unwrap();
    assert!(!store
        .revoke_session(idle.id, at(IDLE_SECS), &plan)
        .await
        .unwrap());
    assert_eq!(due_for(store, &endpoint, at(100)).await.len(), 1);

    let mut revoked = store
        .revoke_user_sessions(user.id, Some(keep.id), at(20), &plan)
        .await
        .unwrap();
    assert_eq!(revoked.len(), 3, "the two others and the idle one");
    assert!(store
        .revoke_user_sessions(user.id, Some(keep.id), at(21), &plan)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .revoke_user_sessions(UserId::new(), None, at(21), &plan)
        .await
        .unwrap()
        .is_empty());

    let due = due_for(store, &endpoint, at(100)).await;
    revoked.insert(0, first.id);
    let mut announced: Vec<String> = Vec::new();
    for queued in &due {
        assert_eq!(queued.message.event_type, EventType::SessionRevoked);
        let data = data(queued);
        assert_eq!(data["user_id"], user.id.to_string());
        assert_eq!(data["reason"], "administrator");
        announced.push(data["session_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(announced[0], first.id.to_string(), "earliest first");
    let mut expected: Vec<String> = revoked.iter().map(ToString::to_string).collect();
    expected.sort();
    announced.sort();
    assert_eq!(announced, expected, "one message per revoked session");
    assert_eq!(due[0].message.created_at, at(10));
    assert!(due[1..].iter().all(|q| q.message.created_at == at(20)));
}

pub async fn refresh_reuse_and_family_revocation_queue_their_messages<S: Store + ?Sized>(
    store: &S,
) {
    let endpoint = fresh_endpoint();
    let plan = WebhookPlan::reuse_detected(&[hook(&endpoint)]);
    let (session, first) = seeded_family(store).await;
    let second = fresh_hash();
    // Rotation and a replay within grace are no events.
    assert!(matches!(
        store
            .rotate_refresh(&first, &second, at(100), GRACE, &plan)
            .await
            .unwrap(),
        Rotation::Rotated(_)
    ));
    assert!(matches!(
        store
            .rotate_refresh(&first, &second, at(101), GRACE, &plan)
            .await
            .unwrap(),
        Rotation::Replayed(_)
    ));
    assert!(due_for(store, &endpoint, at(1_000)).await.is_empty());

    assert_eq!(
        store
            .rotate_refresh(&first, &fresh_hash(), at(200), GRACE, &plan)
            .await
            .unwrap(),
        Rotation::ReuseDetected(session.id)
    );
    // The family is dead now: presenting it again is no new event.
    assert_eq!(
        store
            .rotate_refresh(&first, &fresh_hash(), at(201), GRACE, &plan)
            .await
            .unwrap(),
        Rotation::Invalid
    );
    let due = due_for(store, &endpoint, at(1_000)).await;
    let types: Vec<EventType> = due.iter().map(|q| q.message.event_type).collect();
    assert_eq!(
        types,
        [EventType::RefreshReuseDetected, EventType::SessionRevoked]
    );
    for queued in &due {
        assert_eq!(data(queued)["session_id"], session.id.to_string());
        assert_eq!(data(queued)["user_id"], session.user_id.to_string());
        assert_eq!(queued.message.created_at, at(200));
    }
    assert_eq!(data(&due[1])["reason"], "refresh_reuse_detected");

    // RFC 7009: one message when the family is revoked, none when it already was.
    let endpoint = fresh_endpoint();
    let plan = WebhookPlan::session_revoked(&[hook(&endpoint)], RevokeReason::TokenRevoked);
    let (family, token) = seeded_family(store).await;
    for revoked_at in [at(50), at(60)] {
        assert_eq!(
            store
                .revoke_family_of(&token, revoked_at, &plan)
                .await
                .unwrap(),
            Some(family.id)
        );
    }
    assert_eq!(
        store
            .revoke_family_of(&fresh_hash(), at(60), &plan)
            .await
            .unwrap(),
        None
    );
    let due = due_for(store, &endpoint, at(1_000)).await;
    assert_eq!(due.len(), 1);
    assert_eq!(data(&due[0])["session_id"], family.id.to_string());
    assert_eq!(data(&due[0])["reason"], "token_revoked");
    assert_eq!(due[0].message.created_at, at(50));
}

pub async fn due_messages_come_earliest_first_and_honour_the_limit<S: Store + ?Sized>(store: &S) {
    let endpoint = fresh_endpoint();
    let hooks = [hook(&endpoint)];
    let user = seeded_user(store).await;
    // Queued out of time order: due order is by time, then by queueing order.
    let roles = vec!["writer".to_owned()];
    let late = webhooks::roles_changed(&hooks, user.id, &roles, at(30));
    let early = webhooks::signed_out_everywhere(&hooks, user.id, 0, at(10));
    let tie = webhooks::signed_out_everywhere(&hooks, user.id, 1, at(10));
    assert!(store.set_roles(user.id, &roles, &late).await.unwrap());
    assert!(store.bump_epoch(user.id, at(10), &early).await.unwrap());
    assert!(store.bump_epoch(user.id, at(10), &tie).await.unwrap());

    let order = vec![early[0].id, tie[0].id, late[0].id];
    assert_eq!(ids(&due_for(store, &endpoint, at(40)).await), order);
    assert_eq!(ids(&due_for(store, &endpoint, at(29)).await), order[..2]);
    assert!(due_for(store, &endpoint, at(9)).await.is_empty());

    let all = store.due_messages(at(40), 100_000).await.unwrap();
    assert!(all
        .windows(2)
        .all(|w| w[0].next_attempt_at <= w[1].next_attempt_at));
    assert!(all.iter().all(|q| q.next_attempt_at <= at(40)));
    assert_eq!(store.due_messages(at(40), 1).await.unwrap().len(), 1);
    assert_eq!(store.due_messages(at(40), 3).await.unwrap().len(), 3);
}

pub async fn claimed_message_is_hidden_until_its_claim_expires<S: Store + ?Sized>(store: &S) {
    let endpoint = fresh_endpoint();
    let id = queued_one(store, &endpoint, at(0)).await;
    // Not yet due: nothing to claim.
    assert!(!store.claim_message(id, at(-1), at(59)).await.unwrap());
    assert!(store.claim_message(id, at(1), at(61)).await.unwrap());
    // A second worker loses the race.
    assert!(!store.claim_message(id, at(2), at(62)).await.unwrap());
    assert!(due_for(store, &endpoint, at(60)).await.is_empty());
    // The claimant never reported back (it died): the message is due again, attempts unchanged.
    let due = due_for(store, &endpoint, at(61)).await;
    assert_eq!(ids(&due), [id]);
    assert_eq!(due[0].attempts, 0);
    assert!(store.claim_message(id, at(61), at(121)).await.unwrap());
    assert!(!store
        .claim_message(OutboxId::new(), at(61), at(121))
        .await
        .unwrap());
}

pub async fn rescheduled_message_waits_until_its_next_attempt<S: Store + ?Sized>(store: &S) {
    let endpoint = fresh_endpoint();
    let id = queued_one(store, &endpoint, at(0)).await;
    assert!(store.claim_message(id, at(0), at(60)).await.unwrap());
    // The attempt's outcome replaces the claim.
    assert!(store.reschedule(id, 1, at(5), "HTTP 500").await.unwrap());
    assert!(due_for(store, &endpoint, at(4)).await.is_empty());
    let due = due_for(store, &endpoint, at(5)).await;
    assert_eq!(ids(&due), [id]);
    assert_eq!((due[0].attempts, due[0].next_attempt_at), (1, at(5)));
    assert_eq!(due[0].last_error.as_deref(), Some("HTTP 500"));
    assert!(store.reschedule(id, 2, at(20), "timed out").await.unwrap());
    assert!(due_for(store, &endpoint, at(19)).await.is_empty());
    let due = due_for(store, &endpoint, at(20)).await;
    assert_eq!(
        (due[0].attempts, due[0].last_error.as_deref()),
        (2, Some("timed out"))
    );
    assert!(!store
        .reschedule(OutboxId::new(), 1, at(5), "HTTP 500")
        .await
        .unwrap());
}

pub async fn finished_messages_are_never_due_again<S: Store + ?Sized>(store: &S) {
    let (one, two) = (fresh_endpoint(), fresh_endpoint());
    let user = seeded_user(store).await;
    // One event for two endpoints: two messages, one body.
    let outbox = webhooks::signed_out_everywhere(&[hook(&one), hook(&two)], user.id, 0, at(0));
    assert_eq!(outbox.len(), 2);
    assert_eq!(outbox[0].body, outbox[1].body);
    assert!(store.bump_epoch(user.id, at(0), &outbox).await.unwrap());
    let (delivered, abandoned) = (outbox[0].id, outbox[1].id);

    assert!(store.mark_delivered(delivered, at(1)).await.unwrap());
    assert!(store
        .give_up(abandoned, at(2), "endpoint no longer configured")
        .await
        .unwrap());
    for id in [delivered, abandoned] {
        assert!(!store.mark_delivered(id, at(3)).await.unwrap());
        assert!(!store.give_up(id, at(3), "again").await.unwrap());
        assert!(!store.reschedule(id, 1, at(3), "HTTP 500").await.unwrap());
        assert!(!store.claim_message(id, at(3), at(60)).await.unwrap());
    }
    assert!(!store.mark_delivered(OutboxId::new(), at(3)).await.unwrap());
    assert!(!store.give_up(OutboxId::new(), at(3), "x").await.unwrap());
    let forever = at(1_000_000_000);
    assert!(due_for(store, &one, forever).await.is_empty());
    assert!(due_for(store, &two, forever).await.is_empty());
}

/// The one case that deletes outbox rows by time: its era is [`past`].
pub async fn prune_outbox_removes_only_long_finished_messages<S: Store + ?Sized>(store: &S) {
    let endpoint = fresh_endpoint();
    let delivered = queued_one(store, &endpoint, past(0)).await;
    let abandoned = queued_one(store, &endpoint, past(0)).await;
    let waiting = queued_one(store, &endpoint, past(0)).await;
    assert!(store.mark_delivered(delivered, past(10)).await.unwrap());
    assert!(store
        .give_up(abandoned, past(20), "HTTP 410")
        .await
        .unwrap());

    assert_eq!(
        store.prune_outbox(past(10)).await.unwrap(),
        0,
        "strictly before"
    );
    assert_eq!(store.prune_outbox(past(15)).await.unwrap(), 1);
    assert_eq!(store.prune_outbox(past(15)).await.unwrap(), 0);
    assert_eq!(store.prune_outbox(past(25)).await.unwrap(), 1);
    // A waiting message is never pruned, however old.
    assert_eq!(ids(&due_for(store, &endpoint, past(30)).await), [waiting]);
    assert!(!store.mark_delivered(delivered, past(30)).await.unwrap());
}

// ---------------------------------------------------------------------------------------------
// Races. Two nodes (or two requests on one node) may make the same change at the same
// instant; each rule below must hold however the calls interleave. These cases run on a
// multi-threaded runtime and share the fixture through an `Arc`, so their calls really run in
// parallel rather than one after the other on one thread.

/// How many calls each race makes at once: more than the worker threads, so some calls also
/// interleave on one thread at their await points.
const RACERS: usize = 16;

/// Runs `RACERS` calls of `call` at once, each on its own task, all released together by one
/// barrier so they overlap, and returns their results in the order the calls were made (the
/// call's index is its second argument).
async fn race<F, T, Fut>(fixture: &Arc<F>, call: impl Fn(Arc<F>, usize) -> Fut) -> Vec<T>
where
    F: Fixture + Send + Sync + 'static,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
    let tasks: Vec<_> = (0..RACERS)
        .map(|i| {
            let barrier = Arc::clone(&barrier);
            let work = call(Arc::clone(fixture), i);
            tokio::spawn(async move {
                barrier.wait().await;
                work.await
            })
        })
        .collect();
    let mut results = Vec::with_capacity(RACERS);
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

/// The `at` of call `i` when each racer brings its own time: `base + i`.
fn racer_time(base: i64, i: usize) -> Timestamp {
    at(base + i64::try_from(i).unwrap())
}

/// The index of the one call that returned `true`, failing unless exactly one did.
fn single_winner(outcomes: &[bool], what: &str) -> usize {
    let winners: Vec<usize> = (0..outcomes.len()).filter(|&i| outcomes[i]).collect();
    assert_eq!(winners.len(), 1, "{what}: winners {winners:?} of {RACERS}");
    winners[0]
}

/// RFC 9700 §4.14.2 under a burst of concurrent refreshes of one token (a client retrying, or
/// two tabs): exactly one rotates it, every other call is answered as a replay within the
/// grace period with the same successor, none of them mistakes the burst for theft, and the
/// successor is stored once.
pub async fn concurrent_rotations_rotate_once<F>(fixture: Arc<F>)
where
    F: Fixture + Send + Sync + 'static,
{
    let store = fixture.store();
    let (session, first) = seeded_family(store).await;
    let second = fresh_hash();
    let endpoint = fresh_endpoint();
    let on_reuse = Arc::new(WebhookPlan::reuse_detected(&[hook(&endpoint)]));
    let outcomes = race(&fixture, |fixture, _| {
        let on_reuse = Arc::clone(&on_reuse);
        async move {
            fixture
                .store()
                .rotate_refresh(&first, &second, at(100), GRACE, &on_reuse)
                .await
                .unwrap()
        }
    })
    .await;
    let expected = touched(&session, at(100));
    let rotated = outcomes
        .iter()
        .filter(|r| **r == Rotation::Rotated(expected.clone()))
        .count();
    let replayed = outcomes
        .iter()
        .filter(|r| **r == Rotation::Replayed(expected.clone()))
        .count();
    assert_eq!(
        (rotated, replayed),
        (1, RACERS - 1),
        "one rotation, the rest replays: {outcomes:?}"
    );
    assert!(
        due_for(store, &endpoint, at(200)).await.is_empty(),
        "no reuse was reported"
    );
    assert_eq!(
        store
            .rotate_refresh(&second, &fresh_hash(), at(101), GRACE, &on_reuse)
            .await
            .unwrap(),
        Rotation::Rotated(touched(&session, at(101))),
        "the successor was stored, once, and rotates in turn"
    );
}

/// Two sign-ups with one address at the same instant: exactly one user is stored, every other
/// insert is `Conflict("email")` (never a second account, never another error).
pub async fn concurrent_sign_ups_with_one_email_insert_one_user<F>(fixture: Arc<F>)
where
    F: Fixture + Send + Sync + 'static,
{
    let store = fixture.store();
    let email = fresh_email();
    let users: Arc<Vec<User>> = Arc::new(
        (0..RACERS)
            .map(|_| User {
                email: email.clone(),
                ..new_user(at(0))
            })
            .collect(),
    );
    let outcomes = race(&fixture, |fixture, i| {
        let users = Arc::clone(&users);
        async move { fixture.store().insert_user(&users[i]).await }
    })
    .await;
    let mut inserted = Vec::new();
    for (i, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Ok(()) => inserted.push(i),
            conflict => assert_conflict(conflict, "email"),
        }
    }
    assert_eq!(inserted.len(), 1, "exactly one sign-up wins: {inserted:?}");
    let winner = &users[inserted[0]];
    assert_eq!(
        store.find_user_by_email(&email).await.unwrap().as_ref(),
        Some(winner)
    );
    for (i, loser) in users.iter().enumerate() {
        if i != inserted[0] {
            assert_eq!(store.find_user(loser.id).await.unwrap(), None);
        }
    }
}

/// Concurrent epoch bumps (sign-out everywhere on two devices, a role change meanwhile): every
/// call finds the user, each queues its message, and the epoch ends at the latest of them —
/// a bump that loses the race never lowers it.
pub async fn concurrent_epoch_bumps_keep_the_latest<F>(fixture: Arc<F>)
where
    F: Fixture + Send + Sync + 'static,
{
    let store = fixture.store();
    let user = seeded_user(store).await;
    let endpoint = fresh_endpoint();
    let outboxes: Arc<Vec<Vec<OutboxMessage>>> = Arc::new(
        (0..RACERS)
            .map(|i| {
                webhooks::signed_out_everywhere(&[hook(&endpoint)], user.id, 0, racer_time(1, i))
            })
            .collect(),
    );
    let outcomes = race(&fixture, |fixture, i| {
        let outboxes = Arc::clone(&outboxes);
        async move {
            fixture
                .store()
                .bump_epoch(user.id, racer_time(1, i), &outboxes[i])
                .await
                .unwrap()
        }
    })
    .await;
    assert!(outcomes.iter().all(|found| *found), "{outcomes:?}");
    let latest = racer_time(1, RACERS - 1);
    assert_eq!(
        store
            .find_user(user.id)
            .await
            .unwrap()
            .unwrap()
            .tokens_valid_after,
        latest
    );
    assert_eq!(
        store
            .epochs_since(latest)
            .await
            .unwrap()
            .into_iter()
            .find(|(id, _)| *id == user.id),
        Some((user.id, latest))
    );
    assert_eq!(
        due_for(store, &endpoint, latest).await.len(),
        RACERS,
        "every bump queued its message"
    );
}

/// Concurrent revocations of one session (a user signing a device out while an administrator
/// does): exactly one call reports the revocation, its time is the one kept, and exactly one
/// `session.revoked` message is queued.
pub async fn concurrent_revocations_of_a_session_revoke_it_once<F>(fixture: Arc<F>)
where
    F: Fixture + Send + Sync + 'static,
{
    let store = fixture.store();
    let session = seeded_session(store, Via::Cookie).await;
    let endpoint = fresh_endpoint();
    let plan = Arc::new(WebhookPlan::session_revoked(
        &[hook(&endpoint)],
        RevokeReason::Administrator,
    ));
    let outcomes = race(&fixture, |fixture, i| {
        let plan = Arc::clone(&plan);
        async move {
            fixture
                .store()
                .revoke_session(session.id, racer_time(10, i), &plan)
                .await
                .unwrap()
        }
    })
    .await;
    let winner = single_winner(&outcomes, "revoke_session");
    assert_eq!(
        revoked_at_of(store, &session).await,
        Some(racer_time(10, winner)),
        "the winner's revocation is the one stored"
    );
    assert_eq!(
        store.find_live_session(session.id, at(5)).await.unwrap(),
        None
    );
    assert_eq!(due_for(store, &endpoint, at(100)).await.len(), 1);
}

/// Concurrent RFC 7009 revocations of one refresh family (a client revoking from two places):
/// every call names the family's session, the session is revoked once, at one of the callers'
/// times, and exactly one `session.revoked` message is queued.
pub async fn concurrent_family_revocations_revoke_it_once<F>(fixture: Arc<F>)
where
    F: Fixture + Send + Sync + 'static,
{
    let store = fixture.store();
    let (session, first) = seeded_family(store).await;
    let endpoint = fresh_endpoint();
    let plan = Arc::new(WebhookPlan::session_revoked(
        &[hook(&endpoint)],
        RevokeReason::TokenRevoked,
    ));
    let outcomes = race(&fixture, |fixture, i| {
        let plan = Arc::clone(&plan);
        async move {
            fixture
                .store()
                .revoke_family_of(&first, racer_time(10, i), &plan)
                .await
                .unwrap()
        }
    })
    .await;
    assert!(
        outcomes.iter().all(|named| *named == Some(session.id)),
        "{outcomes:?}"
    );
    let revoked_at = revoked_at_of(store, &session).await.unwrap();
    assert!(
        (0..RACERS).any(|i| racer_time(10, i) == revoked_at),
        "revoked at {revoked_at:?}, a time no caller gave"
    );
    assert_eq!(due_for(store, &endpoint, at(100)).await.len(), 1);
    assert_eq!(
        store
            .rotate_refresh(&first, &fresh_hash(), at(50), GRACE, &WebhookPlan::none())
            .await
            .unwrap(),
        Rotation::Invalid
    );
}

/// Concurrent denials of one `jti` (revocation retried, or raced on two nodes) are never an
/// error and keep the latest expiry, once.
pub async fn concurrent_denials_of_a_jti_keep_the_latest_expiry<F>(fixture: Arc<F>)
where
    F: Fixture + Send + Sync + 'static,
{
    let store = fixture.store();
    let jti: Arc<str> = fresh_jti().into();
    let outcomes = race(&fixture, |fixture, i| {
        let jti = Arc::clone(&jti);
        async move { fixture.store().deny_jti(&jti, racer_time(100, i)).await }
    })
    .await;
    for outcome in outcomes {
        outcome.unwrap();
    }
    let latest = racer_time(100, RACERS - 1);
    let just_before = Timestamp::from_unix(latest.as_unix() - 1);
    assert!(store.is_jti_denied(&jti, just_before).await.unwrap());
    assert!(!store.is_jti_denied(&jti, latest).await.unwrap());
    let entries: Vec<_> = store
        .denied_jtis(at(0))
        .await
        .unwrap()
        .into_iter()
        .filter(|(denied, _)| **denied == *jti)
        .collect();
    assert_eq!(entries, [(jti.to_string(), latest)]);
}

/// Delivery workers on several nodes racing for one due message: exactly one claims it, and
/// the message stays hidden until that winner's claim runs out.
pub async fn concurrent_claims_of_a_message_claim_it_once<F>(fixture: Arc<F>)
where
    F: Fixture + Send + Sync + 'static,
{
    let store = fixture.store();
    let endpoint = fresh_endpoint();
    let id = queued_one(store, &endpoint, at(0)).await;
    let outcomes = race(&fixture, |fixture, i| async move {
        fixture
            .store()
            .claim_message(id, at(1), racer_time(61, i))
            .await
            .unwrap()
    })
    .await;
    let winner = single_winner(&outcomes, "claim_message");
    let until = racer_time(61, winner);
    assert!(due_for(store, &endpoint, at(60)).await.is_empty());
    assert!(
        due_for(store, &endpoint, Timestamp::from_unix(until.as_unix() - 1))
            .await
            .is_empty()
    );
    assert_eq!(ids(&due_for(store, &endpoint, until).await), [id]);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// Every `pub async fn` of this file is a case, and the full list in
    /// [`conformance_suite!`](crate::conformance_suite) is kept by hand: a case left off it
    /// would never run on any backend. This reads the file and compares the two.
    #[test]
    fn the_suite_lists_every_case_exactly_once() {
        let source = include_str!("conformance.rs");
        let defined: BTreeSet<&str> = source
            .lines()
            .filter_map(|line| line.strip_prefix("pub async fn "))
            .map(|rest| rest.split(['<', '(']).next().unwrap_or(rest))
            .collect();
        let (listed, duplicates) = listed_cases(source);
        assert!(duplicates.is_empty(), "listed twice: {duplicates:?}");
        let unlisted: Vec<&&str> = defined.difference(&listed).collect();
        let undefined: Vec<&&str> = listed.difference(&defined).collect();
        assert!(
            unlisted.is_empty() && undefined.is_empty(),
            "cases never run (missing from conformance_suite!'s list): {unlisted:?}; \
             listed but not defined: {undefined:?}"
        );
        assert!(defined.len() > 50, "only {} cases found", defined.len());
    }

    /// The names in the macro's arm that generates every case, one per line ending in `,`.
    fn listed_cases(source: &str) -> (BTreeSet<&str>, Vec<&str>) {
        let start = source
            .find("($make_store:expr $(,)?) => {")
            .expect("the macro's full-suite arm");
        let arm = &source[start..];
        let arm = &arm[..arm.find("\n    };").expect("the end of the arm")];
        let mut listed = BTreeSet::new();
        let mut duplicates = Vec::new();
        let is_case = |name: &str| {
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        for name in arm.lines().filter_map(|line| line.trim().strip_suffix(',')) {
            if is_case(name) && !listed.insert(name) {
                duplicates.push(name);
            }
        }
        (listed, duplicates)
    }
}
