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
//! database file: `(store, guard)`. The races (the `concurrent_*` cases and the revocation-log
//! cases that need a second task) share the fixture between tasks, so it must be
//! `Send + Sync + 'static`.
//!
//! Every change goes through a transaction ([`Store::begin`], then
//! [`StoreTx::commit`]), as the core makes them; the refresh cases carry out the core's
//! rotation rule ([`rotation::decide`], unit-tested in the core) on what the backend reads for
//! update, so they check that a backend reads and writes what the rule needs.
//!
//! Cases fail with `assert!`: this module is test code shipped in the library so that every
//! backend's tests share it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tessera_core::guessing::{self, Admission, Limit};
use tessera_core::model::{
    AdminKey, AdminKeyId, AdminScope, Email, EmailToken, EmailTokenId, OutboxId, RefreshRecord,
    RevocationEvent, SealedKey, Session, SessionId, Timestamp, TokenPurpose, User, UserId, Via,
    WebhookEventId,
};
use tessera_core::rotation::{self, Decision, PresentedToken};
use tessera_core::secret::{SecretHash, SessionSecret};
// For the races, whose store is a fixture's associated type: its supertraits' methods are
// only found with the traits in scope.
use tessera_core::store::{
    DenylistStore as _, GuessingCounters, OutboxStore as _, RevocationLog as _, SessionStore as _,
    StoreTx, UserStore as _,
};
use tessera_core::webhooks::{EventType, OutboxMessage, QueuedMessage};
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

#[cfg(feature = "postgres")]
impl Fixture for crate::PostgresStore {
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
            set_password_hash_replaces_only_that_users_hash,
            bump_epoch_moves_past_the_current_epoch,
            delete_user_leaves_a_tombstone_and_the_outbox,
            session_round_trips_by_id_and_hash,
            duplicate_session_conflicts,
            token_sessions_need_no_secret_hash,
            session_of_unknown_user_is_refused,
            unknown_session_is_none,
            session_for_update_is_found_in_every_state,
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
            spending_needs_an_unspent_token_and_a_free_successor,
            rotation_spends_the_token_and_touches_the_session,
            replay_within_grace_is_replayed,
            replay_after_grace_revokes_the_family,
            replay_of_an_older_token_revokes_the_family,
            unknown_refresh_token_is_invalid,
            refresh_of_a_dead_session_is_invalid,
            family_of_the_current_token_is_found_and_revoked,
            family_of_a_spent_token_is_found_and_revoked,
            family_of_an_unknown_token_is_none,
            family_of_a_dead_session_is_found_as_it_is,
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
            admin_key_scope_round_trips,
            revoked_admin_key_is_not_found,
            ping_answers,
            revocation_log_is_ordered_and_resumable,
            revocation_entries_of_a_dropped_transaction_never_appear,
            revocation_log_prunes_only_old_events,
            outbox_messages_commit_with_their_change,
            revocations_and_their_messages_commit_together,
            refresh_reuse_and_its_messages_commit_together,
            due_messages_come_earliest_first_and_honour_the_limit,
            claimed_message_is_hidden_until_its_claim_expires,
            rescheduled_message_waits_until_its_next_attempt,
            finished_messages_are_never_due_again,
            prune_outbox_removes_only_long_finished_messages,
            a_transaction_reads_its_own_writes,
            a_dropped_transaction_leaves_nothing,
            a_transaction_is_invisible_until_it_commits,
            a_failed_write_rolls_back_the_whole_transaction,
            tallies_count_attempts_until_the_limit,
            a_tally_is_gone_once_it_expires,
            released_slots_and_cleared_tallies_are_forgotten,
            concurrent_attempts_on_one_tally_take_at_most_max_slots,
            prune_tallies_removes_only_expired_ones,
            email_verification_is_recorded_once,
            email_tokens_round_trip_and_a_newer_one_supersedes,
            an_email_token_id_is_stored_once,
            an_email_token_is_spent_once,
            prune_email_tokens_removes_only_expired_ones,
            mail_jobs_round_trip_through_the_outbox,
        );
        $crate::conformance_suite!($make_store; parallel:
            concurrent_rotations_rotate_once,
            concurrent_sign_ups_with_one_email_insert_one_user,
            concurrent_epoch_bumps_each_get_their_own_epoch,
            concurrent_revocations_of_a_session_revoke_it_once,
            concurrent_family_revocations_revoke_it_once,
            concurrent_denials_of_a_jti_keep_the_latest_expiry,
            concurrent_claims_of_a_message_claim_it_once,
            concurrent_appends_are_read_once_and_in_order,
            a_later_commit_with_a_lower_position_is_never_skipped,
        );
    };
}

/// The guessing-counter cases alone, for a backend that holds only the counters (Redis):
/// `$make_counters` evaluates to a future of `Option<C>` where `C:`
/// [`GuessingCounters`]. The full [`conformance_suite!`](crate::conformance_suite) runs the
/// same cases on every store.
#[macro_export]
macro_rules! guessing_suite {
    ($make_counters:expr $(,)?) => {
        $crate::guessing_suite!($make_counters;
            tallies_count_attempts_until_the_limit,
            a_tally_is_gone_once_it_expires,
            released_slots_and_cleared_tallies_are_forgotten,
            concurrent_attempts_on_one_tally_take_at_most_max_slots,
        );
    };
    ($make_counters:expr; $($case:ident),+ $(,)?) => { $(
        #[tokio::test]
        async fn $case() {
            let Some(counters) = $make_counters.await else {
                $crate::testing::skip_or_fail(
                    concat!("guessing case `", stringify!($case), "`"),
                    "its counters builder returned none",
                );
                return;
            };
            $crate::conformance::$case(&counters).await;
        }
    )+ };
}

/// Runs `$call`, an expression over the transaction `$tx`, in a transaction of its own and
/// commits it, as the core does for a one-step operation. The call's error is returned, and
/// then the transaction is dropped (rolled back) instead of committed.
macro_rules! committed {
    ($store:expr, |$tx:ident| $call:expr) => {
        async {
            let mut $tx = $store.begin().await?;
            let value = $call.await?;
            $tx.commit().await?;
            Ok::<_, StoreError>(value)
        }
        .await
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

/// `millis` milliseconds after `t`.
fn plus_millis(t: Timestamp, millis: i64) -> Timestamp {
    Timestamp::from_unix_millis(t.as_unix_millis() + millis)
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

/// The beginning of time: "everything stored", for the reads that filter by a time.
fn forever_ago() -> Timestamp {
    Timestamp::from_unix(i64::MIN)
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

/// A log entry no other case appends.
fn fresh_event() -> RevocationEvent {
    RevocationEvent::JtiDenied {
        jti: fresh_jti(),
        expires_at: at(900),
    }
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
        email_verified_at: None,
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

fn first_token(session: &Session) -> RefreshRecord {
    RefreshRecord {
        hash: fresh_hash(),
        session_id: session.id,
        issued_at: session.created_at,
        rotated_at: None,
    }
}

async fn insert_user<S: Store + ?Sized>(store: &S, user: &User) {
    committed!(store, |tx| tx.insert_user(user)).unwrap();
}

async fn insert_session<S: Store + ?Sized>(store: &S, session: &Session) {
    committed!(store, |tx| tx.insert_session(session)).unwrap();
}

async fn revoke_session<S: Store + ?Sized>(store: &S, id: SessionId, at: Timestamp) -> bool {
    committed!(store, |tx| tx.revoke_session(id, at)).unwrap()
}

async fn seeded_user<S: Store + ?Sized>(store: &S) -> User {
    let user = new_user(at(0));
    insert_user(store, &user).await;
    user
}

async fn seeded_session<S: Store + ?Sized>(store: &S, via: Via) -> Session {
    let user = seeded_user(store).await;
    let session = new_session(&user, via, at(0));
    insert_session(store, &session).await;
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
    let record = first_token(session);
    committed!(store, |tx| tx.insert_refresh(&record)).unwrap();
    record.hash
}

fn touched(session: &Session, last_seen_at: Timestamp) -> Session {
    Session {
        last_seen_at,
        ..session.clone()
    }
}

fn revoked(session: &Session, revoked_at: Timestamp) -> Session {
    Session {
        revoked_at: Some(revoked_at),
        ..session.clone()
    }
}

fn assert_conflict<T: std::fmt::Debug>(result: Result<T, StoreError>, rule: &str) {
    match result {
        Err(StoreError::Conflict(name)) => assert_eq!(name, rule),
        other => panic!("expected Conflict({rule:?}), got {other:?}"),
    }
}

/// What the core does with a presented refresh token (RFC 9700 §4.14.2), in one transaction:
/// reads it for update, decides with [`rotation::decide`], and carries the decision out —
/// spends the token for `successor`, or revokes the family as stolen — then commits. Returns
/// the decision.
async fn present<S: Store + ?Sized>(
    store: &S,
    presented: &SecretHash,
    successor: &SecretHash,
    now: Timestamp,
) -> Decision {
    let mut tx = store.begin().await.unwrap();
    let token = tx.refresh_token_for_update(presented, now).await.unwrap();
    let decision = rotation::decide(token, now, GRACE);
    match &decision {
        Decision::Rotate(_) => tx.spend_refresh(presented, successor, now).await.unwrap(),
        Decision::Reuse(session) => assert!(tx.revoke_session(session.id, now).await.unwrap()),
        Decision::Replay(_) | Decision::Invalid => {}
    }
    tx.commit().await.unwrap();
    decision
}

/// [`present`] for a token the case expects to rotate: setting up a family's history.
async fn rotate<S: Store + ?Sized>(
    store: &S,
    presented: &SecretHash,
    successor: &SecretHash,
    now: Timestamp,
) {
    let decision = present(store, presented, successor, now).await;
    assert!(matches!(decision, Decision::Rotate(_)), "{decision:?}");
}

/// The presented token as the backend reads it for update, in a transaction then dropped.
async fn read_token<S: Store + ?Sized>(
    store: &S,
    presented: &SecretHash,
    now: Timestamp,
) -> Option<PresentedToken> {
    let mut tx = store.begin().await.unwrap();
    tx.refresh_token_for_update(presented, now).await.unwrap()
}

/// The family of a presented token as the backend reads it for update (transaction dropped).
async fn read_family<S: Store + ?Sized>(store: &S, presented: &SecretHash) -> Option<Session> {
    let mut tx = store.begin().await.unwrap();
    tx.refresh_family_for_update(presented).await.unwrap()
}

/// The `revoked_at` the store reports for `session`, if any, via `revoked_sessions_since`.
async fn revoked_at_of<S: Store + ?Sized>(store: &S, session: &Session) -> Option<Timestamp> {
    let revoked = store.revoked_sessions_since(forever_ago()).await.unwrap();
    let mut ours = revoked.into_iter().filter(|(id, _, _)| *id == session.id);
    let (_, user, revoked_at) = ours.next()?;
    assert_eq!(user, session.user_id);
    assert!(ours.next().is_none(), "session listed twice");
    Some(revoked_at)
}

/// Every log entry after `cursor`, read to the end in pages as a feed would.
async fn log_after<S: Store + ?Sized>(
    store: &S,
    mut cursor: u64,
) -> Vec<(u64, Timestamp, RevocationEvent)> {
    let mut read = Vec::new();
    loop {
        let page = store.events_after(cursor, 500).await.unwrap();
        let Some(last) = page.last() else {
            return read;
        };
        cursor = last.0;
        read.extend(page);
    }
}

/// How many times `event` is in `log`.
fn occurrences(log: &[(u64, Timestamp, RevocationEvent)], event: &RevocationEvent) -> usize {
    log.iter().filter(|(_, _, e)| e == event).count()
}

// ---------------------------------------------------------------------------------------------
// Users

pub async fn user_round_trips_by_id_and_email<S: Store + ?Sized>(store: &S) {
    let mut user = new_user(at(0));
    user.roles = vec!["admin".to_owned(), "a,b \"quoted\"".to_owned()];
    insert_user(store, &user).await;
    assert_eq!(store.find_user(user.id).await.unwrap(), Some(user.clone()));
    assert_eq!(
        store.find_user_by_email(&user.email).await.unwrap(),
        Some(user.clone())
    );
    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.user_for_update(user.id).await.unwrap(), Some(user));
}

pub async fn duplicate_email_conflicts<S: Store + ?Sized>(store: &S) {
    let first = seeded_user(store).await;
    let second = User {
        email: first.email.clone(),
        ..new_user(at(5))
    };
    assert_conflict(committed!(store, |tx| tx.insert_user(&second)), "email");
    assert_eq!(store.find_user(second.id).await.unwrap(), None);
    assert_eq!(
        store.find_user_by_email(&first.email).await.unwrap(),
        Some(first)
    );
}

pub async fn unknown_user_is_none<S: Store + ?Sized>(store: &S) {
    let id = UserId::new();
    assert_eq!(store.find_user(id).await.unwrap(), None);
    assert_eq!(
        store.find_user_by_email(&fresh_email()).await.unwrap(),
        None
    );
    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.user_for_update(id).await.unwrap(), None);
    assert!(!tx.set_roles(id, &["admin".to_owned()]).await.unwrap());
    assert!(!tx.set_password_hash(id, "$argon2id$x").await.unwrap());
    assert_eq!(tx.bump_epoch(id, at(1)).await.unwrap(), None);
    tx.commit().await.unwrap();
    assert_eq!(store.find_user(id).await.unwrap(), None);
}

pub async fn users_are_listed_in_creation_order<S: Store + ?Sized>(store: &S) {
    // Inserted out of order: the order is `created_at`, not insertion.
    let middle = new_user(at(20));
    let first = new_user(at(10));
    let last = new_user(at(30));
    for user in [&middle, &first, &last] {
        insert_user(store, user).await;
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
    assert!(committed!(store, |tx| tx.set_roles(user.id, &roles)).unwrap());
    assert_eq!(
        store.find_user(user.id).await.unwrap().unwrap().roles,
        roles
    );
    // The same roles again: the user exists, so `true`.
    assert!(committed!(store, |tx| tx.set_roles(user.id, &roles)).unwrap());
    assert!(committed!(store, |tx| tx.set_roles(user.id, &[])).unwrap());
    assert!(store
        .find_user(user.id)
        .await
        .unwrap()
        .unwrap()
        .roles
        .is_empty());
    assert!(!committed!(store, |tx| tx.set_roles(UserId::new(), &roles)).unwrap());
}

/// A sign-in with a hash made before passwords were normalised stores the NFKC form's hash.
pub async fn set_password_hash_replaces_only_that_users_hash<S: Store + ?Sized>(store: &S) {
    let user = seeded_user(store).await;
    let other = seeded_user(store).await;
    let rehashed =
        "$argon2id$v=19$m=19456,t=2,p=1$bmV3c2FsdG5ld3NhbHQ$bmV3aGFzaG5ld2hhc2huZXdoYXNo";
    assert!(committed!(store, |tx| tx.set_password_hash(user.id, rehashed)).unwrap());
    let stored = store.find_user(user.id).await.unwrap().unwrap();
    assert_eq!(stored.password_hash, rehashed);
    assert_eq!(
        User {
            password_hash: user.password_hash.clone(),
            ..stored
        },
        user,
        "nothing else of the user changes"
    );
    assert_eq!(
        store
            .find_user_by_email(&user.email)
            .await
            .unwrap()
            .unwrap()
            .password_hash,
        rehashed
    );
    assert_eq!(store.find_user(other.id).await.unwrap().unwrap(), other);
    // Dropped uncommitted: the hash stays.
    let mut tx = store.begin().await.unwrap();
    assert!(tx
        .set_password_hash(user.id, "$argon2id$dropped")
        .await
        .unwrap());
    drop(tx);
    assert_eq!(
        store
            .find_user(user.id)
            .await
            .unwrap()
            .unwrap()
            .password_hash,
        rehashed
    );
    assert!(!committed!(store, |tx| tx.set_password_hash(UserId::new(), rehashed)).unwrap());
}

pub async fn bump_epoch_moves_past_the_current_epoch<S: Store + ?Sized>(store: &S) {
    let user = seeded_user(store).await;
    let epoch = |user: Option<User>| user.unwrap().tokens_valid_after;
    let bump = |at: Timestamp| async move {
        committed!(store, |tx| tx.bump_epoch(user.id, at))
            .unwrap()
            .unwrap()
    };
    // Later than the current epoch: exactly `at`, to the millisecond.
    assert_eq!(bump(at(100)).await, at(100));
    assert_eq!(epoch(store.find_user(user.id).await.unwrap()), at(100));
    // An older bump (a slow node, a retry) never lowers it, and still moves it on: a token
    // minted at the previous epoch is dead by this one.
    assert_eq!(bump(at(50)).await, just_after(at(100)));
    // So does a second bump within the same millisecond.
    assert_eq!(bump(just_after(at(100))).await, plus_millis(at(100), 2));
    assert_eq!(
        epoch(store.find_user(user.id).await.unwrap()),
        plus_millis(at(100), 2)
    );

    // Within one transaction, each bump sees the one before it.
    let mut tx = store.begin().await.unwrap();
    let first = tx.bump_epoch(user.id, at(200)).await.unwrap();
    let second = tx.bump_epoch(user.id, at(200)).await.unwrap();
    assert_eq!((first, second), (Some(at(200)), Some(just_after(at(200)))));
    assert_eq!(
        tx.user_for_update(user.id)
            .await
            .unwrap()
            .unwrap()
            .tokens_valid_after,
        just_after(at(200))
    );
    tx.commit().await.unwrap();
    assert_eq!(
        epoch(store.find_user(user.id).await.unwrap()),
        just_after(at(200))
    );
}

// ---------------------------------------------------------------------------------------------
// Sessions

pub async fn delete_user_leaves_a_tombstone_and_the_outbox<S: Store + ?Sized>(store: &S) {
    let user = seeded_user(store).await;
    let cookie = new_session(&user, Via::Cookie, at(0));
    insert_session(store, &cookie).await;
    let token = new_session(&user, Via::Token, at(0));
    insert_session(store, &token).await;
    let refresh = family_of(store, &token).await;
    let (theirs, their_refresh) = seeded_family(store).await;
    let endpoint = fresh_endpoint();
    let queued = message(
        &endpoint,
        EventType::SessionCreated,
        at(0),
        &json!({"user_id": user.id, "session_id": cookie.id, "via": "cookie"}),
    );
    committed!(store, |tx| tx.enqueue(std::slice::from_ref(&queued))).unwrap();

    let mut tx = store.begin().await.unwrap();
    assert_eq!(
        tx.bump_epoch(user.id, at(100)).await.unwrap(),
        Some(at(100))
    );
    assert!(tx.delete_user(user.id, at(100)).await.unwrap());
    assert_eq!(tx.user_for_update(user.id).await.unwrap(), None);
    assert_eq!(tx.session_for_update(token.id).await.unwrap(), None);
    tx.commit().await.unwrap();

    // The user, their sessions and their refresh family are gone.
    assert_eq!(store.find_user(user.id).await.unwrap(), None);
    assert_eq!(store.find_user_by_email(&user.email).await.unwrap(), None);
    assert_eq!(
        store.find_live_session(cookie.id, at(1)).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .find_live_session_by_hash(&cookie.secret_hash.unwrap(), at(1))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.find_live_session(token.id, at(1)).await.unwrap(),
        None
    );
    assert!(store
        .list_live_sessions(user.id, at(1))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(read_family(store, &refresh).await, None);
    assert_eq!(read_token(store, &refresh, at(1)).await, None);
    // Someone else's are untouched.
    assert_eq!(
        store.find_live_session(theirs.id, at(1)).await.unwrap(),
        Some(theirs.clone())
    );
    assert_eq!(read_family(store, &their_refresh).await, Some(theirs));

    // The tombstone keeps the last epoch for the cache warm-up.
    let listed = |since: Timestamp| async move {
        store
            .epochs_since(since)
            .await
            .unwrap()
            .into_iter()
            .filter(|(id, _)| *id == user.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(listed(at(100)).await, vec![(user.id, at(100))]);
    assert_eq!(listed(just_after(at(100))).await, vec![]);

    // Messages already queued about the user are still delivered.
    let due = due_for(store, &endpoint, at(10)).await;
    assert_eq!(
        due.iter().map(|q| &q.message).collect::<Vec<_>>(),
        vec![&queued]
    );

    // Deleting again, or deleting no one, changes nothing.
    assert!(!committed!(store, |tx| tx.delete_user(user.id, at(200))).unwrap());
    assert!(!committed!(store, |tx| tx.delete_user(UserId::new(), at(200))).unwrap());
    assert_eq!(listed(at(100)).await, vec![(user.id, at(100))]);

    // The address may sign up again, as a new user.
    let again = User {
        email: user.email.clone(),
        ..new_user(at(300))
    };
    insert_user(store, &again).await;
    assert_eq!(
        store.find_user_by_email(&user.email).await.unwrap(),
        Some(again)
    );
}

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
    assert_conflict(
        committed!(store, |tx| tx.insert_session(&same_id)),
        "session",
    );
    let same_hash = Session {
        id: SessionId::new(),
        ..session.clone()
    };
    assert_conflict(
        committed!(store, |tx| tx.insert_session(&same_hash)),
        "session",
    );
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
    insert_session(store, &first).await;
    insert_session(store, &second).await;
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
    assert!(committed!(store, |tx| tx.insert_session(&session)).is_err());
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
    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.session_for_update(id).await.unwrap(), None);
    assert!(!tx.revoke_session(id, at(0)).await.unwrap());
    tx.commit().await.unwrap();
}

/// A session read for update comes back whatever its state — live, idle, past its end or
/// revoked — because the core decides what each state means.
pub async fn session_for_update_is_found_in_every_state<S: Store + ?Sized>(store: &S) {
    let user = seeded_user(store).await;
    let live = new_session(&user, Via::Cookie, at(0));
    let idle = Session {
        idle_timeout: secs(1),
        ..new_session(&user, Via::Cookie, at(0))
    };
    let ended = Session {
        expires_at: at(1),
        ..new_session(&user, Via::Token, at(0))
    };
    let gone = new_session(&user, Via::Token, at(0));
    for session in [&live, &idle, &ended, &gone] {
        insert_session(store, session).await;
    }
    assert!(revoke_session(store, gone.id, at(5)).await);
    let mut tx = store.begin().await.unwrap();
    for session in [live, idle, ended] {
        assert_eq!(
            tx.session_for_update(session.id).await.unwrap(),
            Some(session)
        );
    }
    assert_eq!(
        tx.session_for_update(gone.id).await.unwrap(),
        Some(revoked(&gone, at(5)))
    );
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
    insert_session(store, &session).await;
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
    assert!(revoke_session(store, session.id, at(10)).await);
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
    assert!(revoke_session(store, revoked.id, at(10)).await);
    store.touch_session(revoked.id, at(20)).await.unwrap();
    assert_eq!(
        store.find_live_session(revoked.id, at(21)).await.unwrap(),
        None
    );
}

pub async fn revoke_session_is_idempotent<S: Store + ?Sized>(store: &S) {
    let session = seeded_session(store, Via::Cookie).await;
    assert!(revoke_session(store, session.id, at(10)).await);
    // The retry after a timeout: nothing left to revoke, no error, the first time kept.
    assert!(!revoke_session(store, session.id, at(11)).await);
    assert_eq!(revoked_at_of(store, &session).await, Some(at(10)));
    assert!(!revoke_session(store, SessionId::new(), at(11)).await);
    // A session that already died of inactivity is still marked revoked, once: whether it may
    // be revoked is the core's rule, and a revoked mark is what every reader trusts.
    let expired = seeded_session(store, Via::Cookie).await;
    assert!(revoke_session(store, expired.id, at(IDLE_SECS)).await);
    assert!(!revoke_session(store, expired.id, at(IDLE_SECS + 1)).await);
    assert_eq!(revoked_at_of(store, &expired).await, Some(at(IDLE_SECS)));
}

pub async fn revoke_user_sessions_keeps_the_current_one<S: Store + ?Sized>(store: &S) {
    let user = seeded_user(store).await;
    let current = new_session(&user, Via::Cookie, at(0));
    let other = new_session(&user, Via::Token, at(1));
    let already = new_session(&user, Via::Cookie, at(2));
    let stranger = seeded_session(store, Via::Cookie).await;
    for session in [&current, &other, &already] {
        insert_session(store, session).await;
    }
    assert!(revoke_session(store, already.id, at(5)).await);

    // Only `other`: `already` was revoked before and `current` is kept.
    let revoked = committed!(store, |tx| tx.revoke_user_sessions(
        user.id,
        Some(current.id),
        at(10)
    ))
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
    assert_eq!(revoked_at_of(store, &already).await, Some(at(5)));
    assert!(store
        .find_live_session(stranger.id, at(11))
        .await
        .unwrap()
        .is_some());

    assert_eq!(
        committed!(store, |tx| tx.revoke_user_sessions(user.id, None, at(20))).unwrap(),
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
    assert!(
        committed!(store, |tx| tx.revoke_user_sessions(user.id, None, at(30)))
            .unwrap()
            .is_empty()
    );
    assert!(committed!(store, |tx| tx.revoke_user_sessions(
        UserId::new(),
        None,
        at(30)
    ))
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
        insert_session(store, session).await;
    }
    let stranger = seeded_session(store, Via::Cookie).await;
    assert!(revoke_session(store, revoked.id, at(160)).await);

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
// Refresh families (RFC 9700 §4.14.2). The rule is the core's (`rotation::decide`); these
// cases check that a backend reads for update what the rule needs and writes what it decides.

pub async fn refresh_insert_rules<S: Store + ?Sized>(store: &S) {
    let (session, first) = seeded_family(store).await;
    let again = RefreshRecord {
        hash: first,
        session_id: session.id,
        issued_at: at(1),
        rotated_at: None,
    };
    assert_conflict(committed!(store, |tx| tx.insert_refresh(&again)), "refresh");
    let orphan = RefreshRecord {
        hash: fresh_hash(),
        session_id: SessionId::new(),
        issued_at: at(1),
        rotated_at: None,
    };
    assert!(committed!(store, |tx| tx.insert_refresh(&orphan)).is_err());
    assert_eq!(read_token(store, &orphan.hash, at(2)).await, None);
    assert_eq!(read_family(store, &orphan.hash).await, None);
    // The first token as stored: current (never rotated), of a live family.
    assert_eq!(
        read_token(store, &first, at(2)).await,
        Some(PresentedToken {
            live_session: Some(session.clone()),
            rotated_at: None,
            successor_unspent: false,
        })
    );
    assert_eq!(read_family(store, &first).await, Some(session));
}

/// `spend_refresh` carries out a rotation decided in the same transaction, so it refuses what
/// no decision could have allowed, and a refusal leaves the family as it was.
pub async fn spending_needs_an_unspent_token_and_a_free_successor<S: Store + ?Sized>(store: &S) {
    let (session, first) = seeded_family(store).await;
    let (_, other_family) = seeded_family(store).await;
    // A successor that is already some token's hash: a conflict, nothing spent.
    assert_conflict(
        committed!(store, |tx| tx.spend_refresh(&first, &other_family, at(5))),
        "refresh",
    );
    assert_eq!(
        read_token(store, &first, at(6)).await.unwrap().rotated_at,
        None
    );
    let second = fresh_hash();
    committed!(store, |tx| tx.spend_refresh(&first, &second, at(10))).unwrap();
    // Spent already, or unknown: an error, and nothing changes.
    assert!(committed!(store, |tx| tx.spend_refresh(&first, &fresh_hash(), at(11))).is_err());
    assert!(committed!(store, |tx| tx.spend_refresh(
        &fresh_hash(),
        &fresh_hash(),
        at(11)
    ))
    .is_err());
    assert_eq!(
        read_token(store, &first, at(12)).await,
        Some(PresentedToken {
            live_session: Some(touched(&session, at(10))),
            rotated_at: Some(at(10)),
            successor_unspent: true,
        })
    );
}

pub async fn rotation_spends_the_token_and_touches_the_session<S: Store + ?Sized>(store: &S) {
    let (session, first) = seeded_family(store).await;
    let (second, third) = (fresh_hash(), fresh_hash());

    assert_eq!(
        present(store, &first, &second, at(100)).await,
        Decision::Rotate(session.clone())
    );
    assert_eq!(
        store.find_live_session(session.id, at(100)).await.unwrap(),
        Some(touched(&session, at(100)))
    );
    // The spent token names its rotation and an unspent successor; the successor is current.
    assert_eq!(
        read_token(store, &first, at(101)).await,
        Some(PresentedToken {
            live_session: Some(touched(&session, at(100))),
            rotated_at: Some(at(100)),
            successor_unspent: true,
        })
    );
    assert_eq!(
        read_token(store, &second, at(101)).await,
        Some(PresentedToken {
            live_session: Some(touched(&session, at(100))),
            rotated_at: None,
            successor_unspent: false,
        })
    );

    // The successor is a full member of the family.
    assert_eq!(
        read_family(store, &second).await,
        Some(touched(&session, at(100)))
    );
    assert_eq!(
        present(store, &second, &third, at(200)).await,
        Decision::Rotate(touched(&session, at(100)))
    );
    assert_eq!(
        store.find_live_session(session.id, at(200)).await.unwrap(),
        Some(touched(&session, at(200)))
    );
    // Its parent's successor is spent now.
    assert!(
        !read_token(store, &first, at(201))
            .await
            .unwrap()
            .successor_unspent
    );
}

pub async fn replay_within_grace_is_replayed<S: Store + ?Sized>(store: &S) {
    let (session, first) = seeded_family(store).await;
    let second = fresh_hash();
    let after_rotation = touched(&session, at(100));
    assert!(matches!(
        present(store, &first, &second, at(100)).await,
        Decision::Rotate(_)
    ));

    // Two tabs refreshing at once; up to and including `grace` later, to the millisecond.
    for now in [at(100), at(105), at(110)] {
        assert_eq!(
            present(store, &first, &second, now).await,
            Decision::Replay(after_rotation.clone())
        );
    }
    // Nothing changed: the session was not touched, the successor is still unused.
    assert_eq!(
        store.find_live_session(session.id, at(110)).await.unwrap(),
        Some(after_rotation.clone())
    );
    assert_eq!(
        present(store, &second, &fresh_hash(), at(111)).await,
        Decision::Rotate(after_rotation)
    );
}

pub async fn replay_after_grace_revokes_the_family<S: Store + ?Sized>(store: &S) {
    let (session, first) = seeded_family(store).await;
    let second = fresh_hash();
    rotate(store, &first, &second, at(100)).await;

    // One millisecond past the grace window is reuse.
    let thief = just_after(at(110));
    assert_eq!(
        present(store, &first, &second, thief).await,
        Decision::Reuse(touched(&session, at(100)))
    );
    assert_eq!(
        store.find_live_session(session.id, at(111)).await.unwrap(),
        None
    );
    assert_eq!(revoked_at_of(store, &session).await, Some(thief));
    // The thief's and the victim's tokens are both dead now.
    assert_eq!(
        present(store, &second, &fresh_hash(), at(112)).await,
        Decision::Invalid
    );
    assert_eq!(
        present(store, &first, &second, at(113)).await,
        Decision::Invalid
    );
}

pub async fn replay_of_an_older_token_revokes_the_family<S: Store + ?Sized>(store: &S) {
    let (session, first) = seeded_family(store).await;
    let (second, third) = (fresh_hash(), fresh_hash());
    rotate(store, &first, &second, at(100)).await;
    rotate(store, &second, &third, at(101)).await;

    // The parent of the current token is still within grace …
    assert_eq!(
        present(store, &second, &third, at(102)).await,
        Decision::Replay(touched(&session, at(101)))
    );
    // … but the grand-parent's successor was already used: theft, even within grace.
    assert_eq!(
        present(store, &first, &second, at(103)).await,
        Decision::Reuse(touched(&session, at(101)))
    );
    assert_eq!(
        store.find_live_session(session.id, at(103)).await.unwrap(),
        None
    );
    assert_eq!(
        present(store, &third, &fresh_hash(), at(104)).await,
        Decision::Invalid
    );
}

pub async fn unknown_refresh_token_is_invalid<S: Store + ?Sized>(store: &S) {
    let unknown = fresh_hash();
    assert_eq!(read_token(store, &unknown, at(0)).await, None);
    assert_eq!(
        present(store, &unknown, &fresh_hash(), at(0)).await,
        Decision::Invalid
    );
}

pub async fn refresh_of_a_dead_session_is_invalid<S: Store + ?Sized>(store: &S) {
    // Revoked: neither a fresh token nor a replayed one does anything, not even a reuse alarm.
    let (revoked_family, first) = seeded_family(store).await;
    let second = fresh_hash();
    rotate(store, &first, &second, at(100)).await;
    assert!(revoke_session(store, revoked_family.id, at(101)).await);
    for presented in [&second, &first] {
        assert_eq!(
            present(store, presented, &fresh_hash(), at(102)).await,
            Decision::Invalid
        );
    }
    // The token is still known as it was; only its family is gone.
    assert_eq!(
        read_token(store, &first, at(102)).await,
        Some(PresentedToken {
            live_session: None,
            rotated_at: Some(at(100)),
            successor_unspent: true,
        })
    );

    // Idle-expired, to the millisecond.
    let (idle, first) = seeded_family(store).await;
    assert_eq!(
        read_token(store, &first, just_before(at(IDLE_SECS)))
            .await
            .unwrap()
            .live_session,
        Some(idle.clone())
    );
    assert_eq!(
        present(store, &first, &fresh_hash(), at(IDLE_SECS)).await,
        Decision::Invalid
    );
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
    insert_session(store, &ended).await;
    let first = family_of(store, &ended).await;
    let second = fresh_hash();
    assert_eq!(
        present(store, &first, &second, at(499)).await,
        Decision::Rotate(ended)
    );
    assert_eq!(
        present(store, &second, &fresh_hash(), at(500)).await,
        Decision::Invalid
    );
}

// ---------------------------------------------------------------------------------------------
// Revoking a refresh family (RFC 7009): the core reads the family of the presented token for
// update and revokes its session.

/// What the core does for RFC 7009: revokes the family of `presented` at `at` if it is known;
/// returns the family as read and whether this call revoked it.
async fn revoke_family_of<S: Store + ?Sized>(
    store: &S,
    presented: &SecretHash,
    at: Timestamp,
) -> Option<(Session, bool)> {
    let mut tx = store.begin().await.unwrap();
    let family = tx.refresh_family_for_update(presented).await.unwrap()?;
    let revoked = tx.revoke_session(family.id, at).await.unwrap();
    tx.commit().await.unwrap();
    Some((family, revoked))
}

pub async fn family_of_the_current_token_is_found_and_revoked<S: Store + ?Sized>(store: &S) {
    let (session, first) = seeded_family(store).await;
    // Another device of the same user is not part of the family.
    let user = store.find_user(session.user_id).await.unwrap().unwrap();
    let sibling = new_session(&user, Via::Token, at(0));
    insert_session(store, &sibling).await;
    let sibling_token = family_of(store, &sibling).await;

    assert_eq!(
        revoke_family_of(store, &first, at(50)).await,
        Some((session.clone(), true))
    );
    assert_eq!(
        store.find_live_session(session.id, at(50)).await.unwrap(),
        None
    );
    assert_eq!(revoked_at_of(store, &session).await, Some(at(50)));
    assert_eq!(
        present(store, &first, &fresh_hash(), at(51)).await,
        Decision::Invalid
    );

    // Idempotent: a retry finds the family, revoked, and keeps the first revocation's time.
    assert_eq!(
        revoke_family_of(store, &first, at(60)).await,
        Some((revoked(&session, at(50)), false))
    );
    assert_eq!(revoked_at_of(store, &session).await, Some(at(50)));

    assert_eq!(revoked_at_of(store, &sibling).await, None);
    assert_eq!(
        present(store, &sibling_token, &fresh_hash(), at(70)).await,
        Decision::Rotate(sibling)
    );
}

pub async fn family_of_a_spent_token_is_found_and_revoked<S: Store + ?Sized>(store: &S) {
    let (session, first) = seeded_family(store).await;
    let (second, third) = (fresh_hash(), fresh_hash());
    rotate(store, &first, &second, at(100)).await;
    rotate(store, &second, &third, at(200)).await;

    // A stale copy of the family still names the device, so revoking it signs the device out.
    assert_eq!(
        revoke_family_of(store, &first, at(300)).await,
        Some((touched(&session, at(200)), true))
    );
    assert_eq!(revoked_at_of(store, &session).await, Some(at(300)));
    assert_eq!(
        store.find_live_session(session.id, at(300)).await.unwrap(),
        None
    );
    // The family's head is dead too.
    assert_eq!(
        present(store, &third, &fresh_hash(), at(301)).await,
        Decision::Invalid
    );
    // So is the replay the grace window would otherwise have allowed.
    assert_eq!(
        present(store, &second, &third, at(205)).await,
        Decision::Invalid
    );
}

pub async fn family_of_an_unknown_token_is_none<S: Store + ?Sized>(store: &S) {
    let (session, first) = seeded_family(store).await;
    assert_eq!(revoke_family_of(store, &fresh_hash(), at(10)).await, None);
    // Nothing else was touched.
    assert_eq!(revoked_at_of(store, &session).await, None);
    assert_eq!(
        present(store, &first, &fresh_hash(), at(11)).await,
        Decision::Rotate(session)
    );
}

pub async fn family_of_a_dead_session_is_found_as_it_is<S: Store + ?Sized>(store: &S) {
    // Already revoked: the token is still known, and the first revocation's time stays.
    let (gone, first) = seeded_family(store).await;
    assert!(revoke_session(store, gone.id, at(10)).await);
    assert_eq!(
        read_family(store, &first).await,
        Some(revoked(&gone, at(10)))
    );
    assert_eq!(
        revoke_family_of(store, &first, at(20)).await,
        Some((revoked(&gone, at(10)), false))
    );
    assert_eq!(revoked_at_of(store, &gone).await, Some(at(10)));

    // Revoked as stolen: the same.
    let (stolen, first) = seeded_family(store).await;
    let second = fresh_hash();
    rotate(store, &first, &second, at(100)).await;
    assert!(matches!(
        present(store, &first, &second, at(200)).await,
        Decision::Reuse(_)
    ));
    assert_eq!(
        revoke_family_of(store, &second, at(300)).await,
        Some((revoked(&touched(&stolen, at(100)), at(200)), false))
    );
    assert_eq!(revoked_at_of(store, &stolen).await, Some(at(200)));

    // Idle-expired but never revoked: known, and now marked revoked; still not live.
    let (idle, first) = seeded_family(store).await;
    assert_eq!(
        revoke_family_of(store, &first, at(IDLE_SECS + 10)).await,
        Some((idle.clone(), true))
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
        insert_session(store, session).await;
    }
    let other = seeded_session(store, Via::Token).await;
    assert!(revoke_session(store, early.id, at(100)).await);
    assert!(revoke_session(store, late.id, at(200)).await);
    assert!(revoke_session(store, other.id, at(300)).await);

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
    let bump = |id: UserId, at: Timestamp| async move {
        committed!(store, |tx| tx.bump_epoch(id, at)).unwrap()
    };
    assert_eq!(bump(bumped.id, at(500)).await, Some(at(500)));
    assert_eq!(bump(later.id, at(900)).await, Some(at(900)));
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
    // This user's epoch was set to its creation.
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
    insert_user(store, &user).await;
    let session = |via| new_session(&user, via, past(0));
    let live = session(Via::Token);
    let gone = session(Via::Token);
    let gone_later = session(Via::Token);
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
    let all = [&live, &gone, &gone_later, &ended, &idle, &boundary];
    let mut tokens = Vec::new();
    for s in all {
        insert_session(store, s).await;
        tokens.push(family_of(store, s).await);
    }
    assert!(revoke_session(store, gone.id, past(100)).await);
    assert!(revoke_session(store, gone_later.id, past(1_000)).await);

    // Tombstones: one of a user deleted before the cut-off, one deleted exactly at it.
    let deleted_early = new_user(past(0));
    let deleted_at_cut_off = new_user(past(0));
    for (deleted, when) in [
        (&deleted_early, past(100)),
        (&deleted_at_cut_off, past(500)),
    ] {
        insert_user(store, deleted).await;
        assert!(committed!(store, |tx| tx.delete_user(deleted.id, when)).unwrap());
    }

    let before = past(500);
    assert_eq!(store.purge_dead_sessions(before).await.unwrap(), 3);
    let tombstones: Vec<UserId> = store
        .epochs_since(forever_ago())
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .filter(|id| [deleted_early.id, deleted_at_cut_off.id].contains(id))
        .collect();
    assert_eq!(tombstones, vec![deleted_at_cut_off.id]);
    // Nothing else ended before the cut-off: a second run deletes nothing.
    assert_eq!(store.purge_dead_sessions(before).await.unwrap(), 0);

    // The survivors are untouched: listed, found, and the live family still rotates.
    assert_eq!(
        store.list_live_sessions(user.id, past(400)).await.unwrap(),
        vec![boundary.clone(), live.clone()]
    );
    assert_eq!(
        present(store, &tokens[0], &fresh_hash(), past(600)).await,
        Decision::Rotate(live.clone())
    );
    assert_eq!(revoked_at_of(store, &gone_later).await, Some(past(1_000)));

    // The dead are gone, refresh tokens included: their tokens are unknown now.
    assert_eq!(revoked_at_of(store, &gone).await, None);
    for (s, token) in all.iter().zip(&tokens) {
        let kept = [live.id, gone_later.id, boundary.id].contains(&s.id);
        let family = read_family(store, token).await.map(|f| f.id);
        assert_eq!(family, kept.then_some(s.id), "session {:?}", s.id);
        assert_eq!(
            read_token(store, token, past(2_000)).await.is_some(),
            kept,
            "session {:?}",
            s.id
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The access-token denylist (SPEC §5)

async fn deny<S: Store + ?Sized>(store: &S, jti: &str, expires_at: Timestamp) {
    committed!(store, |tx| tx.deny_jti(jti, expires_at)).unwrap();
}

pub async fn denied_jti_is_refused_until_it_expires<S: Store + ?Sized>(store: &S) {
    let (jti, other) = (fresh_jti(), fresh_jti());
    deny(store, &jti, at(100)).await;
    assert!(store.is_jti_denied(&jti, at(0)).await.unwrap());
    assert!(store.is_jti_denied(&jti, at(99)).await.unwrap());
    assert!(store
        .is_jti_denied(&jti, just_before(at(100)))
        .await
        .unwrap());
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
    deny(store, &jti, at(100)).await;
    deny(store, &jti, at(200)).await;
    assert!(store.is_jti_denied(&jti, at(150)).await.unwrap());
    // An earlier expiry arriving late (a retry, another node) does not shorten the denial,
    // also when both land in one transaction.
    deny(store, &jti, at(150)).await;
    let mut tx = store.begin().await.unwrap();
    tx.deny_jti(&jti, at(120)).await.unwrap();
    tx.deny_jti(&jti, at(130)).await.unwrap();
    tx.commit().await.unwrap();
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
        deny(store, jti, *expires_at).await;
    }
    let now = past(20);
    // The entries expiring at `past(10)` and exactly at `now`.
    assert_eq!(store.prune_denylist(now).await.unwrap(), 2);
    assert_eq!(store.prune_denylist(now).await.unwrap(), 0);

    // Everything still stored, not only what is in force: from the beginning of time.
    let stored = store.denied_jtis(forever_ago()).await.unwrap();
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

fn ours_only(keys: Vec<SealedKey>, kids: &[&str]) -> Vec<SealedKey> {
    keys.into_iter()
        .filter(|k| kids.contains(&k.kid.as_str()))
        .collect()
}

async fn our_keys<S: Store + ?Sized>(store: &S, kids: &[&str]) -> Vec<SealedKey> {
    ours_only(store.signing_keys().await.unwrap(), kids)
}

async fn insert_key<S: Store + ?Sized>(store: &S, key: &SealedKey) {
    committed!(store, |tx| tx.insert_signing_key(key)).unwrap();
}

pub async fn signing_keys_are_listed_oldest_first<S: Store + ?Sized>(store: &S) {
    let newer = new_signing_key(at(200));
    let older = SealedKey {
        alg: "HS256".to_owned(),
        public_jwk: None,
        retired_at: Some(at(300)),
        ..new_signing_key(at(100))
    };
    insert_key(store, &newer).await;
    insert_key(store, &older).await;
    let kids = [newer.kid.as_str(), older.kid.as_str()];
    assert_eq!(
        our_keys(store, &kids).await,
        vec![older.clone(), newer.clone()]
    );
    let mut tx = store.begin().await.unwrap();
    let for_update = tx.signing_keys_for_update().await.unwrap();
    assert_eq!(ours_only(for_update, &kids), vec![older, newer]);
}

pub async fn duplicate_kid_conflicts<S: Store + ?Sized>(store: &S) {
    let key = new_signing_key(at(0));
    insert_key(store, &key).await;
    let same_kid = SealedKey {
        alg: "ES256".to_owned(),
        kid: key.kid.clone(),
        ..new_signing_key(at(1))
    };
    assert_conflict(
        committed!(store, |tx| tx.insert_signing_key(&same_kid)),
        "kid",
    );
    assert_eq!(our_keys(store, &[&key.kid]).await, vec![key]);
}

pub async fn retire_signing_key_once<S: Store + ?Sized>(store: &S) {
    let key = new_signing_key(at(0));
    insert_key(store, &key).await;
    assert!(committed!(store, |tx| tx.retire_signing_key(&key.kid, at(300))).unwrap());
    assert!(!committed!(store, |tx| tx.retire_signing_key(&key.kid, at(400))).unwrap());
    let retired = SealedKey {
        retired_at: Some(at(300)),
        ..key.clone()
    };
    assert_eq!(our_keys(store, &[&key.kid]).await, vec![retired]);
    let unknown = format!("kid-{}", UserId::new());
    assert!(!committed!(store, |tx| tx.retire_signing_key(&unknown, at(300))).unwrap());
}

pub async fn delete_signing_key<S: Store + ?Sized>(store: &S) {
    let key = new_signing_key(at(0));
    let kept = new_signing_key(at(1));
    insert_key(store, &key).await;
    insert_key(store, &kept).await;
    assert!(committed!(store, |tx| tx.delete_signing_key(&key.kid)).unwrap());
    assert_eq!(our_keys(store, &[&key.kid, &kept.kid]).await, vec![kept]);
    assert!(!committed!(store, |tx| tx.delete_signing_key(&key.kid)).unwrap());
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
        scope: AdminScope::Admin,
    }
}

async fn insert_admin_key<S: Store + ?Sized>(store: &S, key: &AdminKey) {
    committed!(store, |tx| tx.insert_admin_key(key)).unwrap();
}

pub async fn admin_key_round_trips<S: Store + ?Sized>(store: &S) {
    let key = new_admin_key();
    insert_admin_key(store, &key).await;
    assert_eq!(
        store.find_live_admin_key(&key.hash).await.unwrap(),
        Some(key.clone())
    );
    assert_eq!(
        store.find_live_admin_key(&fresh_hash()).await.unwrap(),
        None
    );
    let same_hash = AdminKey {
        id: AdminKeyId::new(),
        ..key.clone()
    };
    assert_conflict(
        committed!(store, |tx| tx.insert_admin_key(&same_hash)),
        "admin_key",
    );
    let same_id = AdminKey {
        hash: fresh_hash(),
        ..key
    };
    assert_conflict(
        committed!(store, |tx| tx.insert_admin_key(&same_id)),
        "admin_key",
    );
    assert_eq!(
        store.find_live_admin_key(&same_id.hash).await.unwrap(),
        None
    );
}

/// A key reads back with the scope it was made with: a store that lost it would turn a
/// resource server's narrow key into an admin key, or lock it out.
pub async fn admin_key_scope_round_trips<S: Store + ?Sized>(store: &S) {
    for scope in AdminScope::ALL {
        let key = AdminKey {
            scope,
            ..new_admin_key()
        };
        insert_admin_key(store, &key).await;
        let found = store.find_live_admin_key(&key.hash).await.unwrap().unwrap();
        assert_eq!(found.scope, scope);
        assert_eq!(found, key);
    }
}

pub async fn revoked_admin_key_is_not_found<S: Store + ?Sized>(store: &S) {
    let key = new_admin_key();
    let other = new_admin_key();
    insert_admin_key(store, &key).await;
    insert_admin_key(store, &other).await;
    assert!(committed!(store, |tx| tx.revoke_admin_key(key.id, at(10))).unwrap());
    assert_eq!(store.find_live_admin_key(&key.hash).await.unwrap(), None);
    assert!(!committed!(store, |tx| tx.revoke_admin_key(key.id, at(11))).unwrap());
    assert!(!committed!(store, |tx| tx.revoke_admin_key(AdminKeyId::new(), at(11))).unwrap());
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
// Revocation log (see the contract on `RevocationLog`). Other cases may append concurrently on
// a shared store, so these look for their own entries rather than counting.

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
        RevocationEvent::KeyWithdrawn {
            kid: format!("kid-{}", UserId::new()),
        },
    ];
    // Three in one transaction, one in the next.
    let mut seqs = Vec::new();
    let mut tx = store.begin().await.unwrap();
    for event in &events[..3] {
        seqs.push(tx.append_revocation(event, at(1)).await.unwrap());
    }
    tx.commit().await.unwrap();
    seqs.push(committed!(store, |tx| tx.append_revocation(&events[3], at(2))).unwrap());
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing: {seqs:?}"
    );
    assert!(seqs[0] > cursor);
    assert!(store.latest_event().await.unwrap() >= seqs[3]);

    let read = log_after(store, cursor).await;
    let mine: Vec<(u64, &RevocationEvent)> = read
        .iter()
        .filter(|(seq, _, _)| seqs.contains(seq))
        .map(|(seq, _, event)| (*seq, event))
        .collect();
    let expected: Vec<(u64, &RevocationEvent)> = seqs.iter().copied().zip(&events).collect();
    assert_eq!(
        mine, expected,
        "in order, intact, at the positions returned"
    );
    assert!(read.windows(2).all(|w| w[0].0 < w[1].0));
    assert!(read.iter().all(|(seq, _, _)| *seq > cursor));

    // Resuming from the middle yields what follows, and `limit` is honoured.
    let rest = store.events_after(seqs[0], 10_000).await.unwrap();
    assert!(rest.iter().all(|(seq, _, _)| *seq > seqs[0]));
    assert!(rest.iter().any(|(seq, _, _)| *seq == seqs[1]));
    assert_eq!(store.events_after(cursor, 1).await.unwrap().len(), 1);
    let stamped = read.iter().find(|(seq, _, _)| *seq == seqs[1]).unwrap();
    assert_eq!(stamped.1, at(1));
    let stamped = read.iter().find(|(seq, _, _)| *seq == seqs[3]).unwrap();
    assert_eq!(stamped.1, at(2));
}

/// An entry exists exactly when the transaction that appended it committed: not while it is
/// open, never when it is dropped.
pub async fn revocation_entries_of_a_dropped_transaction_never_appear<S: Store + ?Sized>(
    store: &S,
) {
    let cursor = store.latest_event().await.unwrap();
    let (dropped, kept) = (fresh_event(), fresh_event());

    let mut tx = store.begin().await.unwrap();
    tx.append_revocation(&dropped, at(1)).await.unwrap();
    assert_eq!(occurrences(&log_after(store, cursor).await, &dropped), 0);
    drop(tx);
    assert_eq!(occurrences(&log_after(store, cursor).await, &dropped), 0);

    let mut tx = store.begin().await.unwrap();
    let position = tx.append_revocation(&kept, at(2)).await.unwrap();
    assert_eq!(occurrences(&log_after(store, cursor).await, &kept), 0);
    tx.commit().await.unwrap();

    let log = log_after(store, cursor).await;
    assert_eq!(occurrences(&log, &dropped), 0);
    assert_eq!(occurrences(&log, &kept), 1);
    assert!(log.contains(&(position, at(2), kept)), "at its position");
    assert!(store.latest_event().await.unwrap() >= position);
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
    let old_seq = committed!(store, |tx| tx.append_revocation(&old, past(10))).unwrap();
    let young_seq = committed!(store, |tx| tx.append_revocation(&young, past(100))).unwrap();
    assert!(store.prune_events(past(50)).await.unwrap() >= 1);
    let left: Vec<u64> = log_after(store, cursor)
        .await
        .into_iter()
        .map(|(seq, _, _)| seq)
        .collect();
    assert!(!left.contains(&old_seq));
    assert!(left.contains(&young_seq));
    // Positions are never reused after pruning.
    let next = committed!(store, |tx| tx.append_revocation(&old, past(101))).unwrap();
    assert!(next > young_seq);
}

// ---------------------------------------------------------------------------------------------
// Webhook outbox. Each case sends to an endpoint of its own and looks only at that endpoint's
// messages, so cases sharing one outbox do not see each other's. Messages are built here, as
// plain records: which events a change reports is the core's business, not the store's.

/// An endpoint no other case uses.
fn fresh_endpoint() -> String {
    format!("https://hooks.example.test/{}", UserId::new())
}

/// One message of `event_type` for `endpoint`, with `data` as its body's `data`.
fn message(
    endpoint: &str,
    event_type: EventType,
    created_at: Timestamp,
    data: &serde_json::Value,
) -> OutboxMessage {
    let event_id = WebhookEventId::new();
    let body = json!({
        "id": event_id,
        "type": event_type.as_str(),
        "created_at": created_at.to_rfc3339(),
        "data": data,
    });
    OutboxMessage {
        id: OutboxId::new(),
        event_id,
        endpoint: endpoint.to_owned(),
        event_type,
        body: body.to_string(),
        created_at,
    }
}

/// A `session.revoked` message for `session`.
fn session_revoked(
    endpoint: &str,
    session: SessionId,
    user: UserId,
    at: Timestamp,
) -> OutboxMessage {
    message(
        endpoint,
        EventType::SessionRevoked,
        at,
        &json!({"session_id": session, "user_id": user, "reason": "administrator"}),
    )
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
    let queued = message(
        endpoint,
        EventType::UserSignedOutEverywhere,
        created_at,
        &json!({"user_id": user.id, "sessions_revoked": 0}),
    );
    let mut tx = store.begin().await.unwrap();
    assert!(tx.bump_epoch(user.id, created_at).await.unwrap().is_some());
    tx.enqueue(std::slice::from_ref(&queued)).await.unwrap();
    tx.commit().await.unwrap();
    queued.id
}

/// Messages are queued in the transaction of the change they report: visible when it commits,
/// gone with it when it does not; and they come back intact, earliest first.
pub async fn outbox_messages_commit_with_their_change<S: Store + ?Sized>(store: &S) {
    let endpoint = fresh_endpoint();
    let user = seeded_user(store).await;
    let session = new_session(&user, Via::Cookie, at(0));
    let created = message(
        &endpoint,
        EventType::SessionCreated,
        at(0),
        &json!({"user_id": user.id, "session_id": session.id, "via": "cookie"}),
    );
    let mut tx = store.begin().await.unwrap();
    tx.insert_session(&session).await.unwrap();
    tx.enqueue(std::slice::from_ref(&created)).await.unwrap();
    assert!(
        due_for(store, &endpoint, at(10)).await.is_empty(),
        "not before commit"
    );
    tx.commit().await.unwrap();

    // A change refused is an event never queued, whatever was queued before the refusal.
    let again = message(&endpoint, EventType::SessionCreated, at(1), &json!({}));
    let mut tx = store.begin().await.unwrap();
    tx.enqueue(std::slice::from_ref(&again)).await.unwrap();
    assert_conflict(tx.insert_session(&session).await, "session");
    drop(tx);
    let orphan = new_session(&new_user(at(0)), Via::Token, at(0));
    let orphaned = message(&endpoint, EventType::SessionCreated, at(1), &json!({}));
    let mut tx = store.begin().await.unwrap();
    tx.enqueue(std::slice::from_ref(&orphaned)).await.unwrap();
    assert!(tx.insert_session(&orphan).await.is_err());
    drop(tx);

    let roles = vec!["admin".to_owned()];
    let changed = message(
        &endpoint,
        EventType::UserRolesChanged,
        at(5),
        &json!({"user_id": user.id, "roles": roles}),
    );
    let mut tx = store.begin().await.unwrap();
    assert!(tx.set_roles(user.id, &roles).await.unwrap());
    tx.enqueue(std::slice::from_ref(&changed)).await.unwrap();
    tx.commit().await.unwrap();

    // Nothing to report (an unknown user), so the core drops the transaction.
    let nobody = message(
        &endpoint,
        EventType::UserSignedOutEverywhere,
        at(6),
        &json!({}),
    );
    let mut tx = store.begin().await.unwrap();
    tx.enqueue(std::slice::from_ref(&nobody)).await.unwrap();
    assert_eq!(tx.bump_epoch(UserId::new(), at(6)).await.unwrap(), None);
    drop(tx);

    // Two messages of one event (one per endpoint) in one call, with their change.
    let other = fresh_endpoint();
    let everywhere = message(
        &endpoint,
        EventType::UserSignedOutEverywhere,
        at(7),
        &json!({"user_id": user.id, "sessions_revoked": 1}),
    );
    let copy = OutboxMessage {
        id: OutboxId::new(),
        endpoint: other.clone(),
        ..everywhere.clone()
    };
    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.bump_epoch(user.id, at(7)).await.unwrap(), Some(at(7)));
    tx.enqueue(&[everywhere.clone(), copy.clone()])
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let due = due_for(store, &endpoint, at(10)).await;
    let expected = vec![created, changed, everywhere];
    let stored: Vec<OutboxMessage> = due.iter().map(|q| q.message.clone()).collect();
    assert_eq!(stored, expected, "intact, earliest first, and nothing else");
    for queued in &due {
        assert_eq!(queued.attempts, 0);
        assert_eq!(queued.last_error, None);
        assert_eq!(queued.next_attempt_at, queued.message.created_at);
    }
    assert_eq!(data(&due[0])["session_id"], session.id.to_string());
    assert_eq!(data(&due[1])["roles"], json!(["admin"]));
    let copies = due_for(store, &other, at(10)).await;
    assert_eq!(ids(&copies), [copy.id]);
    assert_eq!(
        copies[0].message.body, due[2].message.body,
        "one body per event"
    );
    // Due from the time of their change, not before.
    assert_eq!(ids(&due_for(store, &endpoint, at(6)).await), ids(&due[..2]));

    // An id taken, by a queued message or earlier in the same call: the whole call is refused.
    let fresh = message(&endpoint, EventType::SessionCreated, at(8), &json!({}));
    for batch in [
        vec![fresh.clone(), expected[0].clone()],
        vec![fresh.clone(), fresh.clone()],
    ] {
        assert_conflict(committed!(store, |tx| tx.enqueue(&batch)), "outbox");
    }
    assert_eq!(due_for(store, &endpoint, at(10)).await.len(), 3);
}

/// Revocations and the messages that report them commit together: one message per session the
/// transaction revoked, none for a session revoked already.
pub async fn revocations_and_their_messages_commit_together<S: Store + ?Sized>(store: &S) {
    let endpoint = fresh_endpoint();
    let user = seeded_user(store).await;
    let sessions: Vec<Session> = (0..4)
        .map(|_| new_session(&user, Via::Cookie, at(0)))
        .collect();
    for session in &sessions {
        insert_session(store, session).await;
    }
    let (first, keep) = (&sessions[0], &sessions[3]);
    let idle = new_session(&user, Via::Token, at(0));
    insert_session(store, &idle).await;

    let revoke_one = |id: SessionId, at: Timestamp| {
        let endpoint = endpoint.clone();
        async move {
            let mut tx = store.begin().await.unwrap();
            let revoked = tx.revoke_session(id, at).await.unwrap();
            if revoked {
                tx.enqueue(&[session_revoked(&endpoint, id, user.id, at)])
                    .await
                    .unwrap();
            }
            tx.commit().await.unwrap();
            revoked
        }
    };
    assert!(revoke_one(first.id, at(10)).await);
    assert!(!revoke_one(first.id, at(11)).await);
    assert!(!revoke_one(SessionId::new(), at(11)).await);
    assert_eq!(due_for(store, &endpoint, at(100)).await.len(), 1);

    let mut tx = store.begin().await.unwrap();
    let mut revoked = tx
        .revoke_user_sessions(user.id, Some(keep.id), at(20))
        .await
        .unwrap();
    let messages: Vec<OutboxMessage> = revoked
        .iter()
        .map(|id| session_revoked(&endpoint, *id, user.id, at(20)))
        .collect();
    tx.enqueue(&messages).await.unwrap();
    assert_eq!(due_for(store, &endpoint, at(100)).await.len(), 1, "not yet");
    tx.commit().await.unwrap();
    assert_eq!(revoked.len(), 3, "the two others and the token session");
    assert!(committed!(store, |tx| tx.revoke_user_sessions(
        user.id,
        Some(keep.id),
        at(21)
    ))
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

/// Refresh reuse revokes the family and queues its alarms in one transaction.
pub async fn refresh_reuse_and_its_messages_commit_together<S: Store + ?Sized>(store: &S) {
    let endpoint = fresh_endpoint();
    let (session, first) = seeded_family(store).await;
    let second = fresh_hash();
    rotate(store, &first, &second, at(100)).await;

    let reuse = |now: Timestamp, commit: bool| {
        let endpoint = endpoint.clone();
        async move {
            let mut tx = store.begin().await.unwrap();
            let token = tx.refresh_token_for_update(&first, now).await.unwrap();
            let Decision::Reuse(family) = rotation::decide(token, now, GRACE) else {
                return false;
            };
            assert!(tx.revoke_session(family.id, now).await.unwrap());
            let data = json!({"session_id": family.id, "user_id": family.user_id});
            let alarms = [
                message(&endpoint, EventType::RefreshReuseDetected, now, &data),
                session_revoked(&endpoint, family.id, family.user_id, now),
            ];
            tx.enqueue(&alarms).await.unwrap();
            if commit {
                tx.commit().await.unwrap();
            }
            true
        }
    };
    // A crash between the revocation and its alarms is a transaction never committed:
    // neither happened.
    assert!(reuse(at(200), false).await);
    assert!(due_for(store, &endpoint, at(1_000)).await.is_empty());
    assert!(store
        .find_live_session(session.id, at(200))
        .await
        .unwrap()
        .is_some());

    assert!(reuse(at(201), true).await);
    // The family is dead now: presenting it again is no new event.
    assert!(!reuse(at(202), true).await);
    let due = due_for(store, &endpoint, at(1_000)).await;
    let types: Vec<EventType> = due.iter().map(|q| q.message.event_type).collect();
    assert_eq!(
        types,
        [EventType::RefreshReuseDetected, EventType::SessionRevoked]
    );
    for queued in &due {
        assert_eq!(data(queued)["session_id"], session.id.to_string());
        assert_eq!(data(queued)["user_id"], session.user_id.to_string());
        assert_eq!(queued.message.created_at, at(201));
    }
    assert_eq!(revoked_at_of(store, &session).await, Some(at(201)));
}

pub async fn due_messages_come_earliest_first_and_honour_the_limit<S: Store + ?Sized>(store: &S) {
    let endpoint = fresh_endpoint();
    // Queued out of time order: due order is by time, then by queueing order.
    let late = message(&endpoint, EventType::UserRolesChanged, at(30), &json!({}));
    let early = message(&endpoint, EventType::SessionCreated, at(10), &json!({}));
    let tie = message(&endpoint, EventType::SessionRevoked, at(10), &json!({}));
    for queued in [&late, &early, &tie] {
        committed!(store, |tx| tx.enqueue(std::slice::from_ref(queued))).unwrap();
    }

    let order = vec![early.id, tie.id, late.id];
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
    assert!(due_for(store, &endpoint, just_before(at(61)))
        .await
        .is_empty());
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
    let delivered = queued_one(store, &one, at(0)).await;
    let abandoned = queued_one(store, &two, at(0)).await;

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
// Transactions: all or nothing, and nothing before commit. One scene writes one of every kind
// of change, so each case below sees every kind.

/// Records committed before a transaction, and what one transaction adds and changes.
struct Scene {
    /// Committed: gets new roles and a bumped epoch.
    user: User,
    /// Committed: a device of `user` that gets revoked.
    victim: Session,
    /// Committed: a signing key that gets retired, and one that gets deleted.
    old_key: SealedKey,
    doomed_key: SealedKey,
    /// Committed: an admin key that gets revoked.
    old_admin: AdminKey,
    /// New: a user with a cookie session and a token session with its first refresh token.
    new_user: User,
    cookie: Session,
    device: Session,
    refresh: RefreshRecord,
    jti: String,
    key: SealedKey,
    admin: AdminKey,
    roles: Vec<String>,
    epoch: Timestamp,
    event: RevocationEvent,
    endpoint: String,
    message: OutboxMessage,
    /// The log's position before the transaction.
    cursor: u64,
}

async fn scene<S: Store + ?Sized>(store: &S) -> Scene {
    let user = seeded_user(store).await;
    let victim = new_session(&user, Via::Cookie, at(0));
    insert_session(store, &victim).await;
    let (old_key, doomed_key) = (new_signing_key(at(0)), new_signing_key(at(1)));
    insert_key(store, &old_key).await;
    insert_key(store, &doomed_key).await;
    let old_admin = new_admin_key();
    insert_admin_key(store, &old_admin).await;
    let new_user = new_user(at(1));
    let cookie = new_session(&new_user, Via::Cookie, at(1));
    let device = new_session(&new_user, Via::Token, at(2));
    let endpoint = fresh_endpoint();
    Scene {
        refresh: first_token(&device),
        message: message(&endpoint, EventType::SessionCreated, at(2), &json!({})),
        user,
        victim,
        old_key,
        doomed_key,
        old_admin,
        new_user,
        cookie,
        device,
        jti: fresh_jti(),
        key: new_signing_key(at(2)),
        admin: new_admin_key(),
        roles: vec!["changed".to_owned()],
        epoch: at(50),
        event: fresh_event(),
        endpoint,
        cursor: store.latest_event().await.unwrap(),
    }
}

/// Makes every change of the scene in `tx`, checking on the way that the transaction's reads
/// see its own writes.
async fn write_scene(tx: &mut dyn StoreTx, scene: &Scene) {
    tx.insert_user(&scene.new_user).await.unwrap();
    tx.insert_session(&scene.cookie).await.unwrap();
    tx.insert_session(&scene.device).await.unwrap();
    tx.insert_refresh(&scene.refresh).await.unwrap();
    assert!(tx.revoke_session(scene.victim.id, at(40)).await.unwrap());
    assert!(tx.set_roles(scene.user.id, &scene.roles).await.unwrap());
    assert_eq!(
        tx.bump_epoch(scene.user.id, scene.epoch).await.unwrap(),
        Some(scene.epoch)
    );
    tx.deny_jti(&scene.jti, at(900)).await.unwrap();
    tx.insert_signing_key(&scene.key).await.unwrap();
    assert!(tx
        .retire_signing_key(&scene.old_key.kid, at(40))
        .await
        .unwrap());
    assert!(tx.delete_signing_key(&scene.doomed_key.kid).await.unwrap());
    tx.insert_admin_key(&scene.admin).await.unwrap();
    assert!(tx
        .revoke_admin_key(scene.old_admin.id, at(40))
        .await
        .unwrap());
    let position = tx.append_revocation(&scene.event, at(40)).await.unwrap();
    assert!(position > scene.cursor);
    tx.enqueue(std::slice::from_ref(&scene.message))
        .await
        .unwrap();

    // Its own writes, read back through it.
    assert_eq!(
        tx.user_for_update(scene.new_user.id).await.unwrap(),
        Some(scene.new_user.clone())
    );
    let user = tx.user_for_update(scene.user.id).await.unwrap().unwrap();
    assert_eq!(
        (user.roles, user.tokens_valid_after),
        (scene.roles.clone(), scene.epoch)
    );
    assert_eq!(
        tx.session_for_update(scene.cookie.id).await.unwrap(),
        Some(scene.cookie.clone())
    );
    assert_eq!(
        tx.session_for_update(scene.victim.id).await.unwrap(),
        Some(revoked(&scene.victim, at(40)))
    );
    assert_eq!(
        tx.refresh_token_for_update(&scene.refresh.hash, at(3))
            .await
            .unwrap(),
        Some(PresentedToken {
            live_session: Some(scene.device.clone()),
            rotated_at: None,
            successor_unspent: false,
        })
    );
    assert_eq!(
        tx.refresh_family_for_update(&scene.refresh.hash)
            .await
            .unwrap(),
        Some(scene.device.clone())
    );
    let kids = [
        scene.old_key.kid.as_str(),
        scene.doomed_key.kid.as_str(),
        scene.key.kid.as_str(),
    ];
    let retired = SealedKey {
        retired_at: Some(at(40)),
        ..scene.old_key.clone()
    };
    assert_eq!(
        ours_only(tx.signing_keys_for_update().await.unwrap(), &kids),
        vec![retired, scene.key.clone()]
    );
}

/// Checks, through every read method, that none of the scene's changes is visible.
/// `through_a_transaction` also reads for update, which needs the writer: only when no
/// transaction is open.
async fn assert_scene_not_written<S: Store + ?Sized>(
    store: &S,
    scene: &Scene,
    through_a_transaction: bool,
) {
    // Users.
    assert_eq!(store.find_user(scene.new_user.id).await.unwrap(), None);
    assert_eq!(
        store
            .find_user_by_email(&scene.new_user.email)
            .await
            .unwrap(),
        None
    );
    let users = store.list_users().await.unwrap();
    assert!(!users.iter().any(|u| u.id == scene.new_user.id));
    assert!(users.contains(&scene.user), "roles and epoch unchanged");
    assert_eq!(
        store.find_user(scene.user.id).await.unwrap(),
        Some(scene.user.clone())
    );
    assert!(!store
        .epochs_since(scene.epoch)
        .await
        .unwrap()
        .iter()
        .any(|(id, _)| *id == scene.user.id));
    // Sessions.
    for session in [&scene.cookie, &scene.device] {
        assert_eq!(
            store.find_live_session(session.id, at(3)).await.unwrap(),
            None
        );
    }
    assert_eq!(
        store
            .find_live_session_by_hash(&scene.cookie.secret_hash.unwrap(), at(3))
            .await
            .unwrap(),
        None
    );
    assert!(store
        .list_live_sessions(scene.new_user.id, at(3))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .list_live_sessions(scene.user.id, at(41))
            .await
            .unwrap(),
        vec![scene.victim.clone()]
    );
    assert_eq!(revoked_at_of(store, &scene.victim).await, None);
    // The denylist.
    assert!(!store.is_jti_denied(&scene.jti, at(3)).await.unwrap());
    assert!(!store
        .denied_jtis(at(3))
        .await
        .unwrap()
        .iter()
        .any(|(jti, _)| *jti == scene.jti));
    // Keys.
    let kids = [
        scene.old_key.kid.as_str(),
        scene.doomed_key.kid.as_str(),
        scene.key.kid.as_str(),
    ];
    assert_eq!(
        our_keys(store, &kids).await,
        vec![scene.old_key.clone(), scene.doomed_key.clone()]
    );
    assert_eq!(
        store.find_live_admin_key(&scene.admin.hash).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .find_live_admin_key(&scene.old_admin.hash)
            .await
            .unwrap(),
        Some(scene.old_admin.clone())
    );
    // What reports the change.
    assert_eq!(
        occurrences(&log_after(store, scene.cursor).await, &scene.event),
        0
    );
    assert!(due_for(store, &scene.endpoint, at(1_000)).await.is_empty());

    if through_a_transaction {
        assert_scene_not_written_for_update(store, scene).await;
    }
}

/// The reads for update of [`assert_scene_not_written`], in a transaction then dropped.
async fn assert_scene_not_written_for_update<S: Store + ?Sized>(store: &S, scene: &Scene) {
    let kids = [
        scene.old_key.kid.as_str(),
        scene.doomed_key.kid.as_str(),
        scene.key.kid.as_str(),
    ];
    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.user_for_update(scene.new_user.id).await.unwrap(), None);
    assert_eq!(tx.session_for_update(scene.cookie.id).await.unwrap(), None);
    assert_eq!(
        tx.session_for_update(scene.victim.id).await.unwrap(),
        Some(scene.victim.clone())
    );
    assert_eq!(
        tx.refresh_token_for_update(&scene.refresh.hash, at(3))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        tx.refresh_family_for_update(&scene.refresh.hash)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        ours_only(tx.signing_keys_for_update().await.unwrap(), &kids),
        vec![scene.old_key.clone(), scene.doomed_key.clone()]
    );
}

/// Checks, through every read method, that all of the scene's changes are visible.
async fn assert_scene_written<S: Store + ?Sized>(store: &S, scene: &Scene) {
    assert_eq!(
        store.find_user(scene.new_user.id).await.unwrap(),
        Some(scene.new_user.clone())
    );
    assert_eq!(
        store
            .find_user_by_email(&scene.new_user.email)
            .await
            .unwrap(),
        Some(scene.new_user.clone())
    );
    let changed = User {
        roles: scene.roles.clone(),
        tokens_valid_after: scene.epoch,
        email_verified_at: None,
        ..scene.user.clone()
    };
    let users = store.list_users().await.unwrap();
    assert!(users.contains(&scene.new_user) && users.contains(&changed));
    assert!(store
        .epochs_since(scene.epoch)
        .await
        .unwrap()
        .contains(&(scene.user.id, scene.epoch)));
    assert_eq!(
        store
            .find_live_session_by_hash(&scene.cookie.secret_hash.unwrap(), at(3))
            .await
            .unwrap(),
        Some(scene.cookie.clone())
    );
    assert_eq!(
        store
            .list_live_sessions(scene.new_user.id, at(3))
            .await
            .unwrap(),
        vec![scene.device.clone(), scene.cookie.clone()]
    );
    assert_eq!(
        store
            .find_live_session(scene.victim.id, at(41))
            .await
            .unwrap(),
        None
    );
    assert_eq!(revoked_at_of(store, &scene.victim).await, Some(at(40)));
    assert!(store.is_jti_denied(&scene.jti, at(3)).await.unwrap());
    let kids = [
        scene.old_key.kid.as_str(),
        scene.doomed_key.kid.as_str(),
        scene.key.kid.as_str(),
    ];
    let retired = SealedKey {
        retired_at: Some(at(40)),
        ..scene.old_key.clone()
    };
    assert_eq!(
        our_keys(store, &kids).await,
        vec![retired, scene.key.clone()]
    );
    assert_eq!(
        store.find_live_admin_key(&scene.admin.hash).await.unwrap(),
        Some(scene.admin.clone())
    );
    assert_eq!(
        store
            .find_live_admin_key(&scene.old_admin.hash)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        occurrences(&log_after(store, scene.cursor).await, &scene.event),
        1
    );
    let due = due_for(store, &scene.endpoint, at(1_000)).await;
    assert_eq!(ids(&due), [scene.message.id]);
    assert_eq!(
        read_token(store, &scene.refresh.hash, at(3)).await,
        Some(PresentedToken {
            live_session: Some(scene.device.clone()),
            rotated_at: None,
            successor_unspent: false,
        })
    );
}

/// Reads through a transaction see its own writes, of every kind (checked by `write_scene`).
pub async fn a_transaction_reads_its_own_writes<S: Store + ?Sized>(store: &S) {
    let scene = scene(store).await;
    let mut tx = store.begin().await.unwrap();
    write_scene(&mut *tx, &scene).await;
}

/// A transaction dropped without commit (an error, a panic, a cancelled request) leaves no
/// trace of any of its writes, and frees the writer for the next one.
pub async fn a_dropped_transaction_leaves_nothing<S: Store + ?Sized>(store: &S) {
    let scene = scene(store).await;
    let mut tx = store.begin().await.unwrap();
    write_scene(&mut *tx, &scene).await;
    drop(tx);
    assert_scene_not_written(store, &scene, true).await;
    // A dropped transaction's writes are not waiting somewhere either: the same writes in a
    // new transaction meet no conflict, and commit.
    let mut tx = store.begin().await.unwrap();
    write_scene(&mut *tx, &scene).await;
    tx.commit().await.unwrap();
    assert_scene_written(store, &scene).await;
}

/// Readers see nothing of an open transaction, however long it stays open, and all of it once
/// it commits.
pub async fn a_transaction_is_invisible_until_it_commits<S: Store + ?Sized>(store: &S) {
    let scene = scene(store).await;
    let mut tx = store.begin().await.unwrap();
    write_scene(&mut *tx, &scene).await;
    assert_scene_not_written(store, &scene, false).await;
    store.ping().await.unwrap();
    tx.commit().await.unwrap();
    assert_scene_written(store, &scene).await;
}

/// A write that fails half-way (here a conflict) leaves none of the transaction's earlier
/// writes, whether the transaction is then dropped or, wrongly, committed: committing it
/// fails, rather than keeping half an operation.
pub async fn a_failed_write_rolls_back_the_whole_transaction<S: Store + ?Sized>(store: &S) {
    let scene = scene(store).await;
    let mut tx = store.begin().await.unwrap();
    write_scene(&mut *tx, &scene).await;
    let taken = User {
        email: scene.user.email.clone(),
        ..new_user(at(3))
    };
    assert_conflict(tx.insert_user(&taken).await, "email");
    drop(tx);
    assert_scene_not_written(store, &scene, true).await;

    // The same, failing on a conflict with the transaction's own write, then committed.
    let mut tx = store.begin().await.unwrap();
    write_scene(&mut *tx, &scene).await;
    assert_conflict(
        tx.enqueue(std::slice::from_ref(&scene.message)).await,
        "outbox",
    );
    assert!(
        tx.commit().await.is_err(),
        "a failed transaction must not commit"
    );
    assert_scene_not_written(store, &scene, true).await;
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
/// two tabs): the read for update serialises them, so exactly one rotates it, every other call
/// reads the rotation and is a replay within the grace period (never mistaken for theft), and
/// the successor is stored once.
pub async fn concurrent_rotations_rotate_once<F>(fixture: Arc<F>)
where
    F: Fixture + Send + Sync + 'static,
{
    let store = fixture.store();
    let (session, first) = seeded_family(store).await;
    let second = fresh_hash();
    let outcomes = race(&fixture, |fixture, _| async move {
        present(fixture.store(), &first, &second, at(100)).await
    })
    .await;
    let rotated = outcomes
        .iter()
        .filter(|d| **d == Decision::Rotate(session.clone()))
        .count();
    let replayed = outcomes
        .iter()
        .filter(|d| **d == Decision::Replay(touched(&session, at(100))))
        .count();
    assert_eq!(
        (rotated, replayed),
        (1, RACERS - 1),
        "one rotation, the rest replays: {outcomes:?}"
    );
    assert_eq!(revoked_at_of(store, &session).await, None, "no reuse");
    assert_eq!(
        present(store, &second, &fresh_hash(), at(101)).await,
        Decision::Rotate(touched(&session, at(100))),
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
        async move { committed!(fixture.store(), |tx| tx.insert_user(&users[i])) }
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

/// Concurrent epoch bumps of one user (sign-out everywhere on two devices, a role change
/// meanwhile), each logging its epoch and queueing its message in its transaction: every call
/// gets its own epoch, never below its own time, the epochs strictly increase in the order
/// their transactions committed (the log's order), and the user ends at the largest — a token
/// minted between two bumps is dead by the second.
pub async fn concurrent_epoch_bumps_each_get_their_own_epoch<F>(fixture: Arc<F>)
where
    F: Fixture + Send + Sync + 'static,
{
    let store = fixture.store();
    let user = seeded_user(store).await;
    let endpoint: Arc<str> = fresh_endpoint().into();
    let cursor = store.latest_event().await.unwrap();
    // Many racers share a millisecond, so most bumps must move one past the epoch before.
    let time = |i: usize| plus_millis(at(1), i64::try_from(i % 4).unwrap());
    let epochs = race(&fixture, |fixture, i| {
        let endpoint = Arc::clone(&endpoint);
        async move {
            let mut tx = fixture.store().begin().await.unwrap();
            let epoch = tx.bump_epoch(user.id, time(i)).await.unwrap().unwrap();
            let bumped = RevocationEvent::EpochBumped {
                user: user.id,
                epoch,
            };
            tx.append_revocation(&bumped, time(i)).await.unwrap();
            let data = json!({"user_id": user.id});
            tx.enqueue(&[message(
                &endpoint,
                EventType::UserSignedOutEverywhere,
                time(i),
                &data,
            )])
            .await
            .unwrap();
            tx.commit().await.unwrap();
            epoch
        }
    })
    .await;
    for (i, epoch) in epochs.iter().enumerate() {
        assert!(*epoch >= time(i), "bump {i} got {epoch:?}, before its time");
    }
    let distinct: BTreeSet<Timestamp> = epochs.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        RACERS,
        "each bump its own epoch: {epochs:?}"
    );
    let largest = *distinct.last().unwrap();
    assert!(largest >= plus_millis(at(1), i64::try_from(RACERS).unwrap() - 1));
    assert_eq!(
        store
            .find_user(user.id)
            .await
            .unwrap()
            .unwrap()
            .tokens_valid_after,
        largest
    );
    assert!(store
        .epochs_since(largest)
        .await
        .unwrap()
        .contains(&(user.id, largest)));
    let logged: Vec<Timestamp> = log_after(store, cursor)
        .await
        .into_iter()
        .filter_map(|(_, _, event)| match event {
            RevocationEvent::EpochBumped { user: u, epoch } if u == user.id => Some(epoch),
            _ => None,
        })
        .collect();
    assert!(
        logged.windows(2).all(|w| w[0] < w[1]),
        "in commit order, epochs strictly increase: {logged:?}"
    );
    assert_eq!(
        logged.iter().copied().collect::<BTreeSet<_>>(),
        distinct,
        "each epoch logged once, as returned"
    );
    assert_eq!(
        due_for(store, &endpoint, at(2)).await.len(),
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
    let endpoint: Arc<str> = fresh_endpoint().into();
    let outcomes = race(&fixture, |fixture, i| {
        let endpoint = Arc::clone(&endpoint);
        async move {
            let at = racer_time(10, i);
            let mut tx = fixture.store().begin().await.unwrap();
            let revoked = tx.revoke_session(session.id, at).await.unwrap();
            if revoked {
                let queued = session_revoked(&endpoint, session.id, session.user_id, at);
                tx.enqueue(&[queued]).await.unwrap();
            }
            tx.commit().await.unwrap();
            revoked
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
/// every call finds the family's session, exactly one revokes it, at its own time, and
/// exactly one `session.revoked` message is queued.
pub async fn concurrent_family_revocations_revoke_it_once<F>(fixture: Arc<F>)
where
    F: Fixture + Send + Sync + 'static,
{
    let store = fixture.store();
    let (session, first) = seeded_family(store).await;
    let endpoint: Arc<str> = fresh_endpoint().into();
    let outcomes = race(&fixture, |fixture, i| {
        let endpoint = Arc::clone(&endpoint);
        async move {
            let at = racer_time(10, i);
            let mut tx = fixture.store().begin().await.unwrap();
            let family = tx.refresh_family_for_update(&first).await.unwrap().unwrap();
            let revoked = tx.revoke_session(family.id, at).await.unwrap();
            if revoked {
                let queued = session_revoked(&endpoint, family.id, family.user_id, at);
                tx.enqueue(&[queued]).await.unwrap();
            }
            tx.commit().await.unwrap();
            (family.id, revoked)
        }
    })
    .await;
    assert!(
        outcomes.iter().all(|(named, _)| *named == session.id),
        "{outcomes:?}"
    );
    let revoked: Vec<bool> = outcomes.iter().map(|(_, revoked)| *revoked).collect();
    let winner = single_winner(&revoked, "family revocation");
    assert_eq!(
        revoked_at_of(store, &session).await,
        Some(racer_time(10, winner))
    );
    assert_eq!(due_for(store, &endpoint, at(100)).await.len(), 1);
    assert_eq!(
        present(store, &first, &fresh_hash(), at(50)).await,
        Decision::Invalid
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
        async move { committed!(fixture.store(), |tx| tx.deny_jti(&jti, racer_time(100, i))) }
    })
    .await;
    for outcome in outcomes {
        outcome.unwrap();
    }
    let latest = racer_time(100, RACERS - 1);
    assert!(store
        .is_jti_denied(&jti, just_before(latest))
        .await
        .unwrap());
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
    assert!(due_for(store, &endpoint, just_before(until))
        .await
        .is_empty());
    assert_eq!(ids(&due_for(store, &endpoint, until).await), [id]);
}

/// Transactions per racer in [`concurrent_appends_are_read_once_and_in_order`]; every third
/// is dropped instead of committed.
const APPENDS: usize = 6;

/// A reader following the log with a cursor while many transactions append and commit (and
/// some are dropped) sees every committed entry exactly once, in position order, each racer's
/// entries in the order it committed them, and no entry of a dropped transaction.
pub async fn concurrent_appends_are_read_once_and_in_order<F>(fixture: Arc<F>)
where
    F: Fixture + Send + Sync + 'static,
{
    let run = UserId::new();
    let entry = move |racer: usize, n: usize, k: usize| RevocationEvent::JtiDenied {
        jti: format!("{run}/{racer}/{n}/{k}"),
        expires_at: at(900),
    };
    let done = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn({
        let (fixture, done) = (Arc::clone(&fixture), Arc::clone(&done));
        let mut cursor = fixture.store().latest_event().await.unwrap();
        async move {
            let mut read = Vec::new();
            loop {
                // Whether every writer had finished before this read: then an empty page is
                // the end of the log.
                let finished = done.load(Ordering::SeqCst);
                let page = fixture.store().events_after(cursor, 7).await.unwrap();
                let Some(last) = page.last() else {
                    if finished {
                        return read;
                    }
                    tokio::task::yield_now().await;
                    continue;
                };
                cursor = last.0;
                read.extend(page);
            }
        }
    });
    let committed = race(&fixture, |fixture, racer| async move {
        let mut mine = Vec::new();
        for n in 0..APPENDS {
            let mut tx = fixture.store().begin().await.unwrap();
            let pair = [entry(racer, n, 0), entry(racer, n, 1)];
            for event in &pair {
                tx.append_revocation(event, at(1)).await.unwrap();
            }
            if n % 3 == 2 {
                drop(tx);
            } else {
                tx.commit().await.unwrap();
                mine.extend(pair);
            }
        }
        mine
    })
    .await;
    done.store(true, Ordering::SeqCst);
    let read = reader.await.unwrap();

    assert!(
        read.windows(2).all(|w| w[0].0 < w[1].0),
        "positions strictly increase as read"
    );
    let prefix = format!("{run}/");
    let ours: Vec<&RevocationEvent> = read
        .iter()
        .map(|(_, _, event)| event)
        .filter(|event| matches!(event, RevocationEvent::JtiDenied { jti, .. } if jti.starts_with(&prefix)))
        .collect();
    let expected: usize = committed.iter().map(Vec::len).sum();
    assert_eq!(
        ours.len(),
        expected,
        "every committed entry, once, and nothing else"
    );
    for (racer, mine) in committed.iter().enumerate() {
        for event in mine {
            let times = ours.iter().filter(|read| **read == event).count();
            assert_eq!(times, 1, "racer {racer}: {event:?}");
        }
        let in_read_order: Vec<&RevocationEvent> = ours
            .iter()
            .copied()
            .filter(|event| mine.contains(event))
            .collect();
        assert_eq!(
            in_read_order,
            mine.iter().collect::<Vec<_>>(),
            "racer {racer}"
        );
    }
}

/// The log's hardest promise: an entry that commits *after* a reader has read past a higher
/// position is still read. Transaction A appends first and stays open; B appends and commits
/// meanwhile; a reader polls; then A commits. A backend that hands out positions before commit
/// (A gets 7, B gets 8, B commits first, the reader moves its cursor to 8, then A's 7 appears
/// behind it) fails here. SQLite and the memory store pass by making B wait for A's writer
/// lock; other backends must serialise appenders or hold readers back (see `RevocationLog`).
pub async fn a_later_commit_with_a_lower_position_is_never_skipped<F>(fixture: Arc<F>)
where
    F: Fixture + Send + Sync + 'static,
{
    let store = fixture.store();
    let (first, second) = (fresh_event(), fresh_event());
    let mut cursor = store.latest_event().await.unwrap();
    let mut read = Vec::new();

    let mut a = store.begin().await.unwrap();
    a.append_revocation(&first, at(1)).await.unwrap();
    let b = tokio::spawn({
        let (fixture, second) = (Arc::clone(&fixture), second.clone());
        async move {
            let mut b = fixture.store().begin().await.unwrap();
            b.append_revocation(&second, at(2)).await.unwrap();
            b.commit().await.unwrap();
        }
    });
    // A feed polling while A is open: whatever it reads moves its cursor on.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let page = log_after(store, cursor).await;
        if let Some(last) = page.last() {
            cursor = last.0;
        }
        read.extend(page);
    }
    assert_eq!(occurrences(&read, &first), 0, "A is not committed yet");
    a.commit().await.unwrap();
    b.await.unwrap();
    read.extend(log_after(store, cursor).await);

    assert_eq!(occurrences(&read, &first), 1, "A's entry was skipped");
    assert_eq!(occurrences(&read, &second), 1);
    assert!(read.windows(2).all(|w| w[0].0 < w[1].0));
}

// ---------------------------------------------------------------------------------------------
// Guessing counters (SPEC §2, §7): the core's rules run on what the backend reads, and the
// backend makes the read-modify-write atomic and forgets a tally at its expiry.

const GUESSES: Limit = Limit {
    max: 3,
    window: Duration::from_secs(60),
};

/// A key no other case uses.
fn fresh_tally_key() -> String {
    format!("account:{}", UserId::new())
}

/// One attempt, as the core makes it: take a slot with `admit`, and the answer it gave.
async fn guess<C: GuessingCounters + ?Sized>(counters: &C, key: &str, now: Timestamp) -> Admission {
    let before = counters
        .update_tally(key, now, &|tally| {
            Some(guessing::admit(tally, now, GUESSES).1)
        })
        .await
        .unwrap();
    guessing::admit(before, now, GUESSES).0
}

async fn give_back<C: GuessingCounters + ?Sized>(counters: &C, key: &str, now: Timestamp) {
    counters
        .update_tally(key, now, &|tally| guessing::release(tally, now, GUESSES))
        .await
        .unwrap();
}

pub async fn tallies_count_attempts_until_the_limit<C: GuessingCounters + ?Sized>(counters: &C) {
    let key = fresh_tally_key();
    assert_eq!(counters.tally(&key, at(0)).await.unwrap(), None);
    for count in 1..=3 {
        assert_eq!(
            guess(counters, &key, at(0)).await,
            Admission::Admitted { count }
        );
    }
    assert_eq!(
        guess(counters, &key, at(1)).await,
        Admission::Refused {
            retry_after: secs(59)
        }
    );
    let stored = counters.tally(&key, at(1)).await.unwrap().unwrap();
    assert_eq!(stored.count, 3, "a refused attempt takes no slot");
    assert_eq!(stored.window_ends, at(60));
    assert_eq!(stored.last, at(0));
    assert_eq!(stored.expires_at, at(120));
    assert_eq!(
        counters.tally(&fresh_tally_key(), at(1)).await.unwrap(),
        None
    );
}

pub async fn a_tally_is_gone_once_it_expires<C: GuessingCounters + ?Sized>(counters: &C) {
    let key = fresh_tally_key();
    assert_eq!(
        guess(counters, &key, at(0)).await,
        Admission::Admitted { count: 1 }
    );
    let stored = counters.tally(&key, just_before(at(60))).await.unwrap();
    assert_eq!(stored.map(|t| t.count), Some(1));
    assert_eq!(counters.tally(&key, at(60)).await.unwrap(), None);
    // A new window begins.
    assert_eq!(
        guess(counters, &key, at(60)).await,
        Admission::Admitted { count: 1 }
    );
    let stored = counters.tally(&key, at(60)).await.unwrap().unwrap();
    assert_eq!(stored.window_ends, at(120));
}

pub async fn released_slots_and_cleared_tallies_are_forgotten<C: GuessingCounters + ?Sized>(
    counters: &C,
) {
    let key = fresh_tally_key();
    guess(counters, &key, at(0)).await;
    guess(counters, &key, at(0)).await;
    give_back(counters, &key, at(0)).await;
    let stored = counters.tally(&key, at(0)).await.unwrap().unwrap();
    assert_eq!(stored.count, 1);
    give_back(counters, &key, at(0)).await;
    assert_eq!(counters.tally(&key, at(0)).await.unwrap(), None);

    for _ in 0..3 {
        guess(counters, &key, at(1)).await;
    }
    assert!(matches!(
        guess(counters, &key, at(2)).await,
        Admission::Refused { .. }
    ));
    counters.clear_tally(&key).await.unwrap();
    assert_eq!(counters.tally(&key, at(2)).await.unwrap(), None);
    assert_eq!(
        guess(counters, &key, at(2)).await,
        Admission::Admitted { count: 1 }
    );
}

/// Many attempts at once on one key, all in flight together: the backend's read-modify-write
/// is atomic, so exactly `max` take a slot, each seeing its own count.
pub async fn concurrent_attempts_on_one_tally_take_at_most_max_slots<C>(counters: &C)
where
    C: GuessingCounters + ?Sized,
{
    let key = fresh_tally_key();
    let attempts: Vec<_> = (0..RACERS).map(|_| guess(counters, &key, at(0))).collect();
    let answers = all_at_once(attempts).await;
    let mut admitted: Vec<u32> = answers
        .iter()
        .filter_map(|a| match a {
            Admission::Admitted { count } => Some(*count),
            Admission::Refused { .. } => None,
        })
        .collect();
    admitted.sort_unstable();
    assert_eq!(admitted, [1, 2, 3], "answers: {answers:?}");
    let stored = counters.tally(&key, at(0)).await.unwrap().unwrap();
    assert_eq!(stored.count, 3);
}

/// Polls every future until all are done, so their awaits interleave on one task: the
/// counters are borrowed, and a backend's round trips then overlap as spawned tasks' would.
async fn all_at_once<T, F: std::future::Future<Output = T>>(futures: Vec<F>) -> Vec<T> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut results: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, result) in futures.iter_mut().zip(results.iter_mut()) {
            if result.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *result = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    results.into_iter().map(Option::unwrap).collect()
}

pub async fn prune_tallies_removes_only_expired_ones<S: Store + ?Sized>(store: &S) {
    // Far from the other cases' times, so pruning here cannot take their tallies.
    let base = -10_000_000;
    let old = fresh_tally_key();
    let live = fresh_tally_key();
    guess(store, &old, at(base)).await;
    guess(store, &live, at(base + 30)).await;
    let pruned = store.prune_tallies(at(base + 60)).await.unwrap();
    assert!(pruned >= 1, "pruned {pruned}");
    // Deleted, not merely expired: asked as of a time it was alive, it is gone.
    assert_eq!(store.tally(&old, at(base + 1)).await.unwrap(), None);
    let kept = store.tally(&live, at(base + 60)).await.unwrap();
    assert_eq!(kept.map(|t| t.count), Some(1));
}

// ----- mailed links (recovery, verification)

fn email_token(user: &User, purpose: TokenPurpose, created_at: Timestamp) -> EmailToken {
    EmailToken {
        id: EmailTokenId::new(),
        user_id: user.id,
        purpose,
        hash: fresh_hash(),
        created_at,
        expires_at: created_at.saturating_add(secs(1_800)),
        spent_at: None,
    }
}

async fn insert_email_token<S: Store + ?Sized>(store: &S, token: &EmailToken) -> bool {
    committed!(store, |tx| tx.insert_email_token(token)).unwrap()
}

async fn email_token_by_hash<S: Store + ?Sized>(
    store: &S,
    hash: &SecretHash,
) -> Option<EmailToken> {
    let mut tx = store.begin().await.unwrap();
    let found = tx.email_token_for_update(hash).await.unwrap();
    drop(tx);
    // The plain read outside a transaction agrees with the read for update.
    assert_eq!(store.find_email_token(hash).await.unwrap(), found);
    found
}

pub async fn email_verification_is_recorded_once<S: Store + ?Sized>(store: &S) {
    let user = seeded_user(store).await;
    assert_eq!(
        store
            .find_user(user.id)
            .await
            .unwrap()
            .unwrap()
            .email_verified_at,
        None
    );
    assert!(committed!(store, |tx| tx.set_email_verified(user.id, at(10))).unwrap());
    // The first proof stands.
    assert!(committed!(store, |tx| tx.set_email_verified(user.id, at(20))).unwrap());
    let stored = store.find_user(user.id).await.unwrap().unwrap();
    assert_eq!(stored.email_verified_at, Some(at(10)));
    assert!(stored.email_verified());
    let by_email = store
        .find_user_by_email(&user.email)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_email.email_verified_at, Some(at(10)));
    assert!(!committed!(store, |tx| tx.set_email_verified(UserId::new(), at(10))).unwrap());
    // A user inserted verified reads back verified.
    let mut verified = new_user(at(0));
    verified.email_verified_at = Some(at(3));
    insert_user(store, &verified).await;
    let stored = store.find_user(verified.id).await.unwrap().unwrap();
    assert_eq!(stored.email_verified_at, Some(at(3)));
}

pub async fn email_tokens_round_trip_and_a_newer_one_supersedes<S: Store + ?Sized>(store: &S) {
    let user = seeded_user(store).await;
    let other = seeded_user(store).await;
    let first = email_token(&user, TokenPurpose::Recovery, at(0));
    assert!(insert_email_token(store, &first).await);
    assert_eq!(
        email_token_by_hash(store, &first.hash).await,
        Some(first.clone())
    );
    let mut tx = store.begin().await.unwrap();
    assert_eq!(
        tx.email_token_by_id_for_update(first.id).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(
        tx.email_token_by_id_for_update(EmailTokenId::new())
            .await
            .unwrap(),
        None
    );
    drop(tx);
    assert_eq!(email_token_by_hash(store, &fresh_hash()).await, None);

    // Another purpose and another user are left alone.
    let verification = email_token(&user, TokenPurpose::Verification, at(5));
    assert!(insert_email_token(store, &verification).await);
    let others = email_token(&other, TokenPurpose::Recovery, at(5));
    assert!(insert_email_token(store, &others).await);
    assert!(email_token_by_hash(store, &first.hash)
        .await
        .unwrap()
        .is_live(at(6)));

    let second = email_token(&user, TokenPurpose::Recovery, at(10));
    assert!(insert_email_token(store, &second).await);
    let superseded = email_token_by_hash(store, &first.hash).await.unwrap();
    assert_eq!(superseded.spent_at, Some(at(10)));
    assert!(!superseded.is_live(at(11)));
    assert!(email_token_by_hash(store, &second.hash)
        .await
        .unwrap()
        .is_live(at(11)));
    assert!(email_token_by_hash(store, &verification.hash)
        .await
        .unwrap()
        .spent_at
        .is_none());
    assert!(email_token_by_hash(store, &others.hash)
        .await
        .unwrap()
        .spent_at
        .is_none());

    // A token whose hash is taken is refused.
    let mut clash = email_token(&other, TokenPurpose::Verification, at(12));
    clash.hash = second.hash;
    let mut tx = store.begin().await.unwrap();
    assert_conflict(
        tx.insert_email_token(&clash).await.map(|_| ()),
        "email_token",
    );
}

pub async fn an_email_token_id_is_stored_once<S: Store + ?Sized>(store: &S) {
    let user = seeded_user(store).await;
    let first = email_token(&user, TokenPurpose::Recovery, at(0));
    assert!(insert_email_token(store, &first).await);
    let second = email_token(&user, TokenPurpose::Recovery, at(10));
    assert!(insert_email_token(store, &second).await);
    // A retried mail job presents the first id again: nothing changes, and above all the
    // newer token is not superseded by the older one coming back.
    let mut retried = first.clone();
    retried.created_at = at(20);
    assert!(!insert_email_token(store, &retried).await);
    assert_eq!(
        email_token_by_hash(store, &first.hash)
            .await
            .unwrap()
            .spent_at,
        Some(at(10))
    );
    assert!(email_token_by_hash(store, &second.hash)
        .await
        .unwrap()
        .is_live(at(21)));
}

pub async fn an_email_token_is_spent_once<S: Store + ?Sized>(store: &S) {
    let user = seeded_user(store).await;
    let token = email_token(&user, TokenPurpose::Verification, at(0));
    assert!(insert_email_token(store, &token).await);
    assert!(committed!(store, |tx| tx.spend_email_token(token.id, at(3))).unwrap());
    assert!(!committed!(store, |tx| tx.spend_email_token(token.id, at(4))).unwrap());
    assert!(!committed!(store, |tx| tx.spend_email_token(EmailTokenId::new(), at(4))).unwrap());
    let stored = email_token_by_hash(store, &token.hash).await.unwrap();
    assert_eq!(stored.spent_at, Some(at(3)));
    // A dropped transaction spends nothing.
    let other = email_token(&user, TokenPurpose::Recovery, at(0));
    assert!(insert_email_token(store, &other).await);
    let mut tx = store.begin().await.unwrap();
    assert!(tx.spend_email_token(other.id, at(5)).await.unwrap());
    drop(tx);
    assert!(email_token_by_hash(store, &other.hash)
        .await
        .unwrap()
        .is_live(at(5)));
}

pub async fn prune_email_tokens_removes_only_expired_ones<S: Store + ?Sized>(store: &S) {
    let user = seeded_user(store).await;
    // Far in the past, so that other cases' tokens (around `at(0)`) are never pruned here.
    let old = email_token(&user, TokenPurpose::Recovery, at(-1_000_000));
    assert!(insert_email_token(store, &old).await);
    let kept = email_token(&user, TokenPurpose::Verification, at(-1_000_000));
    let kept = EmailToken {
        expires_at: at(-500_000),
        ..kept
    };
    assert!(insert_email_token(store, &kept).await);
    store.prune_email_tokens(at(-500_000)).await.unwrap();
    assert_eq!(email_token_by_hash(store, &old.hash).await, None);
    assert!(email_token_by_hash(store, &kept.hash).await.is_some());
}

pub async fn mail_jobs_round_trip_through_the_outbox<S: Store + ?Sized>(store: &S) {
    let endpoint = format!("mail:{}", UserId::new());
    let recovery = message(
        &endpoint,
        EventType::RecoveryMail,
        at(0),
        &json!({"email": "a@b.c"}),
    );
    let verification = message(&endpoint, EventType::VerificationMail, at(1), &json!({}));
    committed!(store, |tx| tx
        .enqueue(&[recovery.clone(), verification.clone()]))
    .unwrap();
    let due = due_for(store, &endpoint, at(2)).await;
    let kinds: Vec<EventType> = due.iter().map(|q| q.message.event_type).collect();
    assert_eq!(
        kinds,
        [EventType::RecoveryMail, EventType::VerificationMail]
    );
    assert_eq!(due[0].message, recovery);
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
