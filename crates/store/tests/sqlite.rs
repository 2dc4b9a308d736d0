#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The conformance suite against SQLite (one fresh database file per case), plus what only a
//! durable file can show: data survives reopening, and several stores share one file.

use std::time::Duration;

use tempfile::TempDir;
use tessera_core::model::{RefreshRecord, Session, SessionId, Timestamp, User, UserId, Via};
use tessera_core::rotation::{self, Decision};
use tessera_core::secret::{SecretHash, SessionSecret};
use tessera_core::store::{SessionStore as _, UserStore as _};
use tessera_core::{Store, StoreError};
use tessera_store::SqliteStore;

/// The store first, so it is dropped before its directory.
async fn sqlite_store() -> Option<(SqliteStore, TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("tessera.db").display());
    Some((SqliteStore::open(&url).await.unwrap(), dir))
}

tessera_store::conformance_suite!(sqlite_store());

fn user(now: Timestamp) -> User {
    User {
        id: UserId::new(),
        email: tessera_core::model::Email::parse(&format!("u{}@example.test", UserId::new()))
            .unwrap(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_owned(),
        roles: vec![],
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

#[tokio::test]
async fn data_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tessera.db");
    let now = Timestamp::now();
    let user = user(now);
    let session = session(&user, Via::Cookie, now);

    let store = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
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

    // Both URL forms name the same file; migrations are not applied twice.
    let store = SqliteStore::open(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
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
    let store = tessera_store::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    assert_eq!(
        store.find_live_session(session.id, now).await.unwrap(),
        None
    );
    assert_eq!(store.list_users().await.unwrap(), vec![user]);
}

#[tokio::test]
async fn missing_parent_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("tessera.db");
    let err = SqliteStore::open(path.to_str().unwrap()).await.unwrap_err();
    assert!(
        err.to_string().contains("cannot open SQLite database"),
        "{err}"
    );
}

#[tokio::test]
async fn in_memory_sqlite_is_refused() {
    for url in [
        "sqlite::memory:",
        "sqlite://:memory:",
        "sqlite://?mode=memory",
        "sqlite://",
    ] {
        let err = SqliteStore::open(url).await.unwrap_err();
        assert!(err.to_string().contains("`memory`"), "{url}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_share_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("tessera.db").display());
    // Opened at the same time: both create, both migrate.
    let (a, b) = tokio::join!(SqliteStore::open(&url), SqliteStore::open(&url));
    let (a, b) = (a.unwrap(), b.unwrap());

    // Writes from both at once must neither fail with SQLITE_BUSY nor be lost.
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

    // One refresh token rotated through both stores at once: the read for update holds the
    // file's write lock, so exactly one rotation wins and the other sees it (a replay).
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
}

/// The core's refresh rotation (RFC 9700 §4.14.2) in one transaction of `store`.
async fn present(
    store: SqliteStore,
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

/// A database written when timestamps were whole seconds reads back, after the migration to
/// milliseconds, as the same instants and the same idle timeout.
#[tokio::test]
async fn second_resolution_databases_migrate_to_milliseconds() {
    use sqlx::sqlite::SqliteConnectOptions;
    use tessera_core::store::DenylistStore as _;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tessera.db");
    let pool = sqlx::SqlitePool::connect_with(
        SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true),
    )
    .await
    .unwrap();
    let mut before = sqlx::migrate!("./migrations/sqlite");
    let kept: Vec<_> = before
        .migrations
        .iter()
        .filter(|m| m.version < 5)
        .cloned()
        .collect();
    before.migrations = kept.into();
    before.run(&pool).await.unwrap();

    let (user, session) = (UserId::new(), SessionId::new());
    sqlx::query(
        "INSERT INTO users (id, email, password_hash, roles, created_at, tokens_valid_after) \
         VALUES (?1, 'old@example.test', 'x', '[]', 1700000000, 1700000100)",
    )
    .bind(user.to_string())
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO sessions (id, user_id, secret_hash, via, created_at, last_seen_at, \
         idle_timeout_secs, expires_at, user_agent, ip, revoked_at) \
         VALUES (?1, ?2, NULL, 'token', 1700000000, 1700000050, 3600, 1700086400, NULL, NULL, NULL)",
    )
    .bind(session.to_string())
    .bind(user.to_string())
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO denied_jtis (jti, expires_at) VALUES ('old-jti', 1700000900)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let store = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
    let found = store.find_user(user).await.unwrap().unwrap();
    assert_eq!(found.created_at, Timestamp::from_unix(1_700_000_000));
    assert_eq!(
        found.tokens_valid_after,
        Timestamp::from_unix(1_700_000_100)
    );
    let live = store
        .find_live_session(session, Timestamp::from_unix(1_700_000_060))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(live.last_seen_at, Timestamp::from_unix(1_700_000_050));
    assert_eq!(live.idle_timeout, Duration::from_secs(3_600));
    assert_eq!(live.expires_at, Timestamp::from_unix(1_700_086_400));
    // The idle end is last seen + one hour, to the millisecond.
    let idle_end = Timestamp::from_unix(1_700_003_650);
    let last_live = Timestamp::from_unix_millis(idle_end.as_unix_millis() - 1);
    assert!(store
        .find_live_session(session, last_live)
        .await
        .unwrap()
        .is_some());
    assert!(store
        .find_live_session(session, idle_end)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .is_jti_denied("old-jti", Timestamp::from_unix(1_700_000_899))
        .await
        .unwrap());
    assert!(!store
        .is_jti_denied("old-jti", Timestamp::from_unix(1_700_000_900))
        .await
        .unwrap());
}

/// An admin key made before keys had scopes could do everything; after the migration it is an
/// `admin` key, so upgrading locks no operator out and widens no key.
#[tokio::test]
async fn keys_made_before_scopes_become_admin_keys() {
    use sqlx::sqlite::SqliteConnectOptions;
    use tessera_core::model::{AdminKeyId, AdminScope};
    use tessera_core::store::AdminKeyStore as _;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tessera.db");
    let pool = sqlx::SqlitePool::connect_with(
        SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true),
    )
    .await
    .unwrap();
    let mut before = sqlx::migrate!("./migrations/sqlite");
    let kept: Vec<_> = before
        .migrations
        .iter()
        .filter(|m| m.version < 6)
        .cloned()
        .collect();
    before.migrations = kept.into();
    before.run(&pool).await.unwrap();

    let (id, hash) = (AdminKeyId::new(), SessionSecret::generate().to_hash());
    sqlx::query(
        "INSERT INTO admin_keys (id, name, hash, created_at, revoked_at) \
         VALUES (?1, 'old', ?2, 1700000000000, NULL)",
    )
    .bind(id.to_string())
    .bind(hash.as_bytes().as_slice())
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    let store = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
    let key = store.find_live_admin_key(&hash).await.unwrap().unwrap();
    assert_eq!(key.id, id);
    assert_eq!(key.scope, AdminScope::Admin);
}
