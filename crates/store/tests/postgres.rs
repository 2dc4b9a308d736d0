#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The conformance suite against PostgreSQL (one fresh schema per case), plus what only a
//! shared server shows: data survives reopening, nodes starting at once on a fresh database
//! all migrate it, several stores share one database, the pool size holds, a decision about
//! rows that do not exist yet is still made once, a lock-order cycle through the log's lock
//! ends in an error rather than a hang, and `NOTIFY` wakes listeners exactly for committed log
//! entries.
//!
//! Every test skips loudly when PostgreSQL is not reachable ([`skip_or_fail`]), and fails
//! instead under `TESSERA_REQUIRE_SERVICES=1`.

use std::time::Duration;

use sqlx::postgres::PgListener;
use tessera_core::model::{
    Email, RefreshRecord, RevocationEvent, SealedKey, Session, SessionId, Timestamp, User, UserId,
    Via,
};
use tessera_core::rotation::{self, Decision};
use tessera_core::secret::{SecretHash, SessionSecret};
use tessera_core::store::{KeyStore as _, RevocationLog as _, SessionStore as _, UserStore as _};
use tessera_core::{Store, StoreError};
use tessera_store::postgres::{PoolStats, NOTIFY_CHANNEL};
use tessera_store::testing::{database_url, skip_or_fail, FreshDatabase, FreshSchema};
use tessera_store::PostgresStore;

tessera_store::conformance_suite!(tessera_store::testing::fresh_postgres_store());

/// A fresh schema, or `None` after skipping `what` (or failing it, when services are required).
async fn schema_for(what: &str) -> Option<FreshSchema> {
    let schema = FreshSchema::create().await;
    if schema.is_none() {
        skip_or_fail(what, &unreachable());
    }
    schema
}

/// A fresh database, or `None` after skipping `what`.
async fn database_for(what: &str) -> Option<FreshDatabase> {
    let database = FreshDatabase::create().await;
    if database.is_none() {
        skip_or_fail(what, &unreachable());
    }
    database
}

fn unreachable() -> String {
    format!(
        "PostgreSQL at {} is not reachable",
        tessera_core::url::redact_url(&database_url())
    )
}

fn user(now: Timestamp) -> User {
    User {
        id: UserId::new(),
        email: Email::parse(&format!("u{}@example.test", UserId::new())).unwrap(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_owned(),
        roles: vec!["a,b".to_owned(), "\"quoted\" {braced}".to_owned()],
        created_at: now,
        tokens_valid_after: now,
        email_verified_at: None,
    }
}

fn session(user: &User, via: Via, now: Timestamp) -> Session {
    Session {
        id: SessionId::new(),
        user_id: user.id,
        secret_hash: (via == Via::Cookie).then(|| SessionSecret::generate().to_hash()),
        via,
        created_at: now,
        last_seen_at: now,
        idle_timeout: Duration::from_secs(3_600),
        expires_at: now.saturating_add(Duration::from_secs(86_400)),
        user_agent: None,
        ip: None,
        revoked_at: None,
    }
}

fn signing_key(now: Timestamp) -> SealedKey {
    SealedKey {
        kid: format!("kid-{}", UserId::new()),
        alg: "EdDSA".to_owned(),
        sealed_private: vec![7; 48],
        public_jwk: Some("{}".to_owned()),
        created_at: now,
        retired_at: None,
    }
}

#[tokio::test]
async fn data_survives_reopening() {
    let Some(database) = database_for("data_survives_reopening").await else {
        return;
    };
    let now = Timestamp::now();
    let user = user(now);
    let session = session(&user, Via::Cookie, now);

    let store = PostgresStore::open(database.url(), 2).await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.insert_user(&user).await.unwrap();
    tx.insert_session(&session).await.unwrap();
    tx.commit().await.unwrap();
    // A transaction never committed leaves nothing behind, also across a reopening.
    let lost = self::user(now);
    let mut tx = store.begin().await.unwrap();
    tx.insert_user(&lost).await.unwrap();
    drop(tx);
    store.close().await;
    drop(store);

    // The `postgresql://` form names the same database; migrations are not applied twice.
    let url = database.url().replacen("postgres://", "postgresql://", 1);
    let store = PostgresStore::open(&url, 2).await.unwrap();
    assert_eq!(store.find_user(user.id).await.unwrap(), Some(user.clone()));
    assert_eq!(
        store.find_live_session(session.id, now).await.unwrap(),
        Some(session.clone())
    );
    assert_eq!(store.find_user(lost.id).await.unwrap(), None);
    // Dropped without `close`, as a crashing process would leave it.
    let mut tx = store.begin().await.unwrap();
    assert!(tx.revoke_session(session.id, now).await.unwrap());
    tx.commit().await.unwrap();
    drop(store);
    let store = tessera_store::open(database.url()).await.unwrap();
    assert_eq!(
        store.find_live_session(session.id, now).await.unwrap(),
        None
    );
    assert_eq!(store.list_users().await.unwrap(), vec![user]);
}

/// Nodes starting at once on a fresh database: every one migrates, or waits on sqlx's
/// migration lock and then finds the schema in place, and none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_opening_one_fresh_database_at_once_all_succeed() {
    const NODES: usize = 8;
    let Some(database) = database_for("stores_opening_one_fresh_database_at_once").await else {
        return;
    };
    let url = database.url().to_owned();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(NODES));
    let opening: Vec<_> = (0..NODES)
        .map(|_| {
            let (url, barrier) = (url.clone(), std::sync::Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                PostgresStore::open(&url, 2).await
            })
        })
        .collect();
    let mut stores = Vec::new();
    for node in opening {
        stores.push(node.await.unwrap().unwrap());
    }
    // Each works, and sees what another wrote: one schema, applied once.
    let user = user(Timestamp::now());
    let mut tx = stores[0].begin().await.unwrap();
    tx.insert_user(&user).await.unwrap();
    tx.commit().await.unwrap();
    for store in &stores {
        store.ping().await.unwrap();
        assert_eq!(
            store.find_user(user.id).await.unwrap().as_ref(),
            Some(&user)
        );
    }
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    // Each migration applied once, none twice.
    let embedded = sqlx::migrate!("./migrations/postgres").migrations.len();
    assert_eq!(applied, i64::try_from(embedded).unwrap());
    for store in &stores {
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_share_one_database() {
    let Some(schema) = schema_for("two_stores_share_one_database").await else {
        return;
    };
    let (a, b) = tokio::join!(schema.open(4), schema.open(4));
    let (a, b) = (a.unwrap(), b.unwrap());

    // Writes from both at once are neither refused nor lost.
    let now = Timestamp::now();
    let users: Vec<User> = (0..20).map(|_| user(now)).collect();
    let writes = users.iter().enumerate().map(|(i, user)| {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let user = user.clone();
        tokio::spawn(async move {
            let mut tx = store.begin().await?;
            tx.insert_user(&user).await?;
            tx.commit().await
        })
    });
    for write in writes.collect::<Vec<_>>() {
        write.await.unwrap().unwrap();
    }
    for user in &users {
        assert_eq!(a.find_user(user.id).await.unwrap().as_ref(), Some(user));
        assert_eq!(b.find_user(user.id).await.unwrap().as_ref(), Some(user));
    }

    // One refresh token rotated through both stores at once: the read for update locks the
    // token row, so exactly one rotation wins and the other reads it (a replay, not theft).
    let owner = &users[0];
    let device = session(owner, Via::Token, now);
    let first = SessionSecret::generate().to_hash();
    let mut tx = a.begin().await.unwrap();
    tx.insert_session(&device).await.unwrap();
    tx.insert_refresh(&RefreshRecord {
        hash: first,
        session_id: device.id,
        issued_at: now,
        rotated_at: None,
    })
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let second = SessionSecret::generate().to_hash();
    let (x, y) = tokio::join!(
        tokio::spawn(present(a.clone(), first, second, now)),
        tokio::spawn(present(b.clone(), first, second, now)),
    );
    let outcomes = [x.unwrap().unwrap(), y.unwrap().unwrap()];
    let rotated = outcomes
        .iter()
        .filter(|d| matches!(d, Decision::Rotate(_)))
        .count();
    let replayed = outcomes
        .iter()
        .filter(|d| matches!(d, Decision::Replay(_)))
        .count();
    assert_eq!((rotated, replayed), (1, 1), "{outcomes:?}");

    // What one store's transaction writes, the other sees only once it commits.
    let late = user(now);
    let mut tx = a.begin().await.unwrap();
    tx.insert_user(&late).await.unwrap();
    assert_eq!(b.find_user(late.id).await.unwrap(), None);
    tx.commit().await.unwrap();
    assert_eq!(b.find_user(late.id).await.unwrap(), Some(late));
    a.close().await;
    b.close().await;
}

/// The core's refresh rotation (RFC 9700 §4.14.2) in one transaction of `store`.
async fn present(
    store: PostgresStore,
    presented: SecretHash,
    successor: SecretHash,
    now: Timestamp,
) -> Result<Decision, StoreError> {
    let mut tx = store.begin().await?;
    let token = tx.refresh_token_for_update(&presented, now).await?;
    let decision = rotation::decide(token, now, Duration::from_secs(10));
    if let Decision::Rotate(_) = decision {
        tx.spend_refresh(&presented, &successor, now).await?;
    }
    tx.commit().await?;
    Ok(decision)
}

/// A rotation decides on a live session, so the session stays as read until the rotation
/// commits: a revocation racing it waits, and then revokes the session, successor and all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_waits_for_a_rotation_that_read_the_session() {
    let Some(schema) = schema_for("a_revocation_waits_for_a_rotation_that_read_the_session").await
    else {
        return;
    };
    let store = schema.open(4).await.unwrap();
    let now = Timestamp::now();
    let owner = user(now);
    let device = session(&owner, Via::Token, now);
    let first = SessionSecret::generate().to_hash();
    let mut tx = store.begin().await.unwrap();
    tx.insert_user(&owner).await.unwrap();
    tx.insert_session(&device).await.unwrap();
    tx.insert_refresh(&RefreshRecord {
        hash: first,
        session_id: device.id,
        issued_at: now,
        rotated_at: None,
    })
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let mut rotation = store.begin().await.unwrap();
    let token = rotation
        .refresh_token_for_update(&first, now)
        .await
        .unwrap();
    let decision = rotation::decide(token, now, Duration::from_secs(10));
    assert!(matches!(decision, Decision::Rotate(_)), "{decision:?}");
    let revocation = tokio::spawn({
        let store = store.clone();
        async move {
            let mut tx = store.begin().await.unwrap();
            let revoked = tx.revoke_session(device.id, now).await.unwrap();
            tx.commit().await.unwrap();
            revoked
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !revocation.is_finished(),
        "the session changed under a rotation that had read it"
    );
    let second = SessionSecret::generate().to_hash();
    rotation.spend_refresh(&first, &second, now).await.unwrap();
    rotation.commit().await.unwrap();
    assert!(
        revocation.await.unwrap(),
        "then the revocation goes through"
    );
    assert_eq!(
        present(
            store.clone(),
            second,
            SessionSecret::generate().to_hash(),
            now
        )
        .await
        .unwrap(),
        Decision::Invalid
    );
    store.close().await;
}

/// The revocation-log lock is held from a transaction's first append to its end, so two
/// transactions taking it and a row lock in opposite orders (sign-out everywhere logs, then
/// bumps the epoch; a role change locks the user, then logs) wait for each other. PostgreSQL
/// breaks the cycle: one fails as unavailable, the other commits, and nothing hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_order_cycle_with_the_log_ends_in_an_error_not_a_hang() {
    let Some(schema) = schema_for("a_lock_order_cycle_with_the_log_ends_in_an_error").await else {
        return;
    };
    let store = schema.open(4).await.unwrap();
    let now = Timestamp::now();
    let owner = user(now);
    let device = session(&owner, Via::Cookie, now);
    let mut tx = store.begin().await.unwrap();
    tx.insert_user(&owner).await.unwrap();
    tx.insert_session(&device).await.unwrap();
    tx.commit().await.unwrap();
    let logged = |session| RevocationEvent::SessionRevoked { session };

    let mut role_change = store.begin().await.unwrap();
    role_change.user_for_update(owner.id).await.unwrap();
    let mut sign_out = store.begin().await.unwrap();
    let revoked = sign_out
        .revoke_user_sessions(owner.id, None, now)
        .await
        .unwrap();
    sign_out
        .append_revocation(&logged(revoked[0]), now)
        .await
        .unwrap();
    let role_change = tokio::spawn(async move {
        role_change.set_roles(owner.id, &[]).await?;
        let epoch = role_change.bump_epoch(owner.id, now).await?.unwrap();
        let bumped = RevocationEvent::EpochBumped {
            user: owner.id,
            epoch,
        };
        role_change.append_revocation(&bumped, now).await?;
        role_change.commit().await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sign_out = tokio::spawn(async move {
        sign_out.bump_epoch(owner.id, now).await?;
        sign_out.commit().await
    });
    let outcomes = tokio::time::timeout(Duration::from_secs(20), async {
        (role_change.await.unwrap(), sign_out.await.unwrap())
    })
    .await
    .expect("the two transactions hang");
    match outcomes {
        (Ok(()), Err(StoreError::Unavailable(text)))
        | (Err(StoreError::Unavailable(text)), Ok(())) => {
            assert!(text.contains("deadlock"), "{text}");
        }
        other => panic!("one must fail as unavailable and the other commit: {other:?}"),
    }
    store.close().await;
}

/// Nodes starting on a fresh database each check for an active signing key and install one if
/// there is none (the core's `ensure_signing_key`). Row locks cannot lock a row that does not
/// exist, so without the table lock every node would see none and install its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_about_missing_keys_is_made_once() {
    const NODES: usize = 6;
    let Some(schema) = schema_for("a_decision_about_missing_keys_is_made_once").await else {
        return;
    };
    let store = schema.open(u32::try_from(NODES).unwrap()).await.unwrap();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(NODES));
    let nodes: Vec<_> = (0..NODES)
        .map(|_| {
            let (store, barrier) = (store.clone(), std::sync::Arc::clone(&barrier));
            tokio::spawn(async move {
                let mut tx = store.begin().await.unwrap();
                barrier.wait().await;
                let keys = tx.signing_keys_for_update().await.unwrap();
                let installs = keys.iter().all(|k| k.retired_at.is_some());
                if installs {
                    // Time for the others to read, were they not held back.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    tx.insert_signing_key(&signing_key(Timestamp::now()))
                        .await
                        .unwrap();
                }
                tx.commit().await.unwrap();
                installs
            })
        })
        .collect();
    let mut installed = 0;
    for node in nodes {
        installed += usize::from(node.await.unwrap());
    }
    assert_eq!(installed, 1, "exactly one node installs the first key");
    assert_eq!(store.signing_keys().await.unwrap().len(), 1);
    // Plain reads never wait for the lock.
    let mut tx = store.begin().await.unwrap();
    tx.signing_keys_for_update().await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), store.signing_keys())
        .await
        .expect("a read waited for the key lock")
        .unwrap();
    drop(tx);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_size_is_honoured() {
    let Some(schema) = schema_for("pool_size_is_honoured").await else {
        return;
    };
    match schema.open(0).await {
        Err(StoreError::Unavailable(text)) => assert!(text.contains("at least one"), "{text}"),
        other => panic!("a pool of 0 must be refused, got {other:?}"),
    }
    let store = schema.open(3).await.unwrap();
    assert_eq!(store.pool_stats().max, 3);
    let held = [
        store.begin().await.unwrap(),
        store.begin().await.unwrap(),
        store.begin().await.unwrap(),
    ];
    assert_eq!(
        store.pool_stats(),
        PoolStats {
            size: 3,
            idle: 0,
            max: 3
        }
    );
    // A fourth caller waits for a connection rather than opening one …
    let waiting = tokio::spawn({
        let store = store.clone();
        async move { store.ping().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "a fourth connection was opened");
    assert_eq!(store.pool_stats().size, 3);
    // … and gets one as soon as a transaction ends.
    let [first, second, third] = held;
    drop(first);
    tokio::time::timeout(Duration::from_secs(3), waiting)
        .await
        .expect("the waiting call never got the freed connection")
        .unwrap()
        .unwrap();
    drop((second, third));
    assert!(store.pool_stats().size <= 3);
    store.close().await;
}

/// `NOTIFY` on [`NOTIFY_CHANNEL`] is delivered when a transaction that appended commits, once
/// per transaction, and never for one dropped or refused. A database of its own: notifications
/// are per database, and other tests append meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_listeners_for_committed_entries_only() {
    const QUIET: Duration = Duration::from_millis(300);
    let Some(database) = database_for("notify_wakes_listeners_for_committed_entries_only").await
    else {
        return;
    };
    let store = PostgresStore::open(database.url(), 2).await.unwrap();
    let mut listener = PgListener::connect(database.url()).await.unwrap();
    listener.listen(NOTIFY_CHANNEL).await.unwrap();
    // Notifications forwarded to a channel, whose `recv` can be timed out safely.
    let (sender, mut notified) = tokio::sync::mpsc::unbounded_channel();
    let forwarder = tokio::spawn(async move {
        while let Ok(notification) = listener.recv().await {
            let sent = (
                notification.channel().to_owned(),
                notification.payload().to_owned(),
            );
            if sender.send(sent).is_err() {
                return;
            }
        }
    });
    let event = || RevocationEvent::SessionRevoked {
        session: SessionId::new(),
    };
    let now = Timestamp::now();

    // Open: nothing yet. Dropped: nothing ever.
    let mut tx = store.begin().await.unwrap();
    tx.append_revocation(&event(), now).await.unwrap();
    assert!(tokio::time::timeout(QUIET, notified.recv()).await.is_err());
    drop(tx);
    assert!(tokio::time::timeout(QUIET, notified.recv()).await.is_err());

    // Refused at commit after a failed call: nothing either.
    let existing = user(now);
    let mut tx = store.begin().await.unwrap();
    tx.insert_user(&existing).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.append_revocation(&event(), now).await.unwrap();
    assert!(matches!(
        tx.insert_user(&existing).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(tx.commit().await.is_err());
    assert!(tokio::time::timeout(QUIET, notified.recv()).await.is_err());

    // Committed, with two entries: one notification, empty, on the channel.
    let cursor = store.latest_event().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.append_revocation(&event(), now).await.unwrap();
    tx.append_revocation(&event(), now).await.unwrap();
    tx.commit().await.unwrap();
    let (channel, payload) = tokio::time::timeout(Duration::from_secs(5), notified.recv())
        .await
        .expect("no notification after the commit")
        .unwrap();
    assert_eq!((channel.as_str(), payload.as_str()), (NOTIFY_CHANNEL, ""));
    assert!(tokio::time::timeout(QUIET, notified.recv()).await.is_err());
    // What woke the listener is in the log.
    assert_eq!(store.events_after(cursor, 10).await.unwrap().len(), 2);

    // A transaction that appends nothing notifies nothing.
    let mut tx = store.begin().await.unwrap();
    tx.deny_jti("jti-without-log", now).await.unwrap();
    tx.commit().await.unwrap();
    assert!(tokio::time::timeout(QUIET, notified.recv()).await.is_err());

    forwarder.abort();
    store.close().await;
}

/// A scratch database is a database of its own on the server (a store opens and migrates it)
/// and is gone once removed, so a run leaves the server as it found it.
#[tokio::test]
async fn a_scratch_database_is_usable_and_gone_after_removal() {
    let Some(reachable) = database_for("scratch database").await else {
        return;
    };
    drop(reachable);
    let scratch = tessera_store::scratch::ScratchDatabase::create(&database_url(), "tessera_t_")
        .await
        .unwrap();
    let name = scratch.name().to_owned();
    assert!(scratch.url().contains(&name));
    let store = tessera_store::open(scratch.url()).await.unwrap();
    store.ping().await.unwrap();
    drop(store);
    scratch.remove().await.unwrap();
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&database_url())
        .await
        .unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 0, "{name} is still on the server");
}
