#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The push channels behind the revocation feed, against real servers: Redis pub/sub and
//! PostgreSQL `LISTEN/NOTIFY` ring across connections, are found dead when the server goes
//! away or silent when the network does, and come back by themselves; and the feed built on
//! them vouches for freshness only while its channel is healthy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_core::bell::{Bell, Heartbeat, PushFeed};
use tessera_core::model::{RevocationEvent, SessionId, Timestamp};
use tessera_core::revocation::RevocationFeed;
use tessera_core::Store;
use tessera_store::bells;
use tessera_store::testing::{
    self, redis_answers, redis_keys, skip_or_fail, FreshDatabase, RedisServer, TcpProxy,
};
use tessera_store::MemoryStore;

const BEAT: Heartbeat = Heartbeat {
    interval: Duration::from_millis(100),
    timeout: Duration::from_millis(400),
};

/// Polls `check` for up to `limit`; how long it took, or a failure naming `what`.
async fn within(limit: Duration, what: &str, check: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within {limit:?}: {what}");
}

async fn healthy(bell: &Bell) -> u64 {
    within(Duration::from_secs(10), "the bell connects", || {
        bell.health().is_some()
    })
    .await;
    bell.health().unwrap()
}

/// Consumes a ring left over from connecting.
async fn drain(bell: &Bell) {
    while bell.wait_for_ring(Duration::from_millis(50)).await {}
}

fn prefix() -> String {
    format!("tessera-test-{}:", SessionId::new())
}

#[tokio::test]
async fn redis_bells_ring_each_other_under_one_prefix_only() {
    let url = testing::redis_url();
    if !redis_answers(&url).await {
        skip_or_fail(
            "Redis pub/sub bells",
            &format!("Redis at {url} does not answer"),
        );
        return;
    }
    let (ours, other) = (prefix(), prefix());
    let a = bells::subscribe(&url, &ours, BEAT).unwrap();
    let b = bells::subscribe(&url, &ours, BEAT).unwrap();
    let c = bells::subscribe(&url, &other, BEAT).unwrap();
    for bell in [&a, &b, &c] {
        healthy(bell).await;
        drain(bell).await;
    }
    a.announce();
    assert!(
        b.wait_for_ring(Duration::from_secs(2)).await,
        "a commit announced on A rings B"
    );
    assert!(
        !c.wait_for_ring(Duration::from_millis(300)).await,
        "another prefix hears nothing"
    );
    // Heartbeats are not rings: a quiet second passes without one.
    drain(&b).await;
    assert!(!b.wait_for_ring(Duration::from_millis(500)).await);
    // Nothing is stored in Redis: a flush or a restart without persistence loses nothing,
    // and no key can pile up.
    assert_eq!(
        redis_keys(&url, &format!("{ours}*")).await,
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn a_restarted_redis_is_resubscribed_in_a_new_generation() {
    let Some(mut server) = RedisServer::start("Redis restart") else {
        return;
    };
    let prefix = prefix();
    let bell = bells::subscribe(&server.url(), &prefix, BEAT).unwrap();
    let first = healthy(&bell).await;

    server.stop();
    within(Duration::from_secs(3), "the bell is lost", || {
        bell.health().is_none()
    })
    .await;
    server.start_again().unwrap();
    within(Duration::from_secs(10), "the bell is back", || {
        bell.health().is_some_and(|g| g > first)
    })
    .await;
    assert!(bell.reconnects() >= 1);

    // And rings again after the restart.
    let other = bells::subscribe(&server.url(), &prefix, BEAT).unwrap();
    healthy(&other).await;
    drain(&bell).await;
    other.announce();
    assert!(bell.wait_for_ring(Duration::from_secs(2)).await);
}

#[tokio::test]
async fn a_silent_redis_connection_is_found_by_the_heartbeat() {
    let Some(server) = RedisServer::start("silent Redis connection") else {
        return;
    };
    let proxy = TcpProxy::start(&format!("127.0.0.1:{}", server.port()))
        .await
        .unwrap();
    let url = format!("redis://127.0.0.1:{}", proxy.port());
    let bell = bells::subscribe(&url, &prefix(), BEAT).unwrap();
    let first = healthy(&bell).await;

    // No error ever reaches the client: only the missing heartbeat tells.
    proxy.freeze();
    let found = within(Duration::from_secs(3), "the silence is found", || {
        bell.health().is_none()
    })
    .await;
    assert!(found < Duration::from_secs(2), "found after {found:?}");
    proxy.restore();
    within(Duration::from_secs(10), "a new connection is heard", || {
        bell.health().is_some_and(|g| g > first)
    })
    .await;
}

async fn postgres_answers() -> Option<sqlx::PgPool> {
    let url = testing::database_url();
    let connect = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&url);
    if let Ok(Ok(pool)) = tokio::time::timeout(Duration::from_secs(5), connect).await {
        return Some(pool);
    }
    skip_or_fail(
        "PostgreSQL LISTEN bells",
        &format!("PostgreSQL at {url} does not answer"),
    );
    None
}

#[tokio::test]
async fn postgres_notify_rings_on_commit_only() {
    // A database of its own: NOTIFY reaches every listener of a database, and other tests'
    // stores notify on the same channel.
    let Some(database) = FreshDatabase::for_test("PostgreSQL NOTIFY on commit").await else {
        return;
    };
    let pool = sqlx::PgPool::connect(database.url()).await.unwrap();
    let bell = bells::listen(database.url(), BEAT).unwrap();
    healthy(&bell).await;
    drain(&bell).await;

    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_notify($1, 'rev')")
        .bind(bells::POSTGRES_CHANNEL)
        .execute(&mut *tx)
        .await
        .unwrap();
    assert!(
        !bell.wait_for_ring(Duration::from_millis(300)).await,
        "not before the commit"
    );
    tx.commit().await.unwrap();
    assert!(bell.wait_for_ring(Duration::from_secs(2)).await);

    drain(&bell).await;
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_notify($1, 'rev')")
        .bind(bells::POSTGRES_CHANNEL)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert!(
        !bell.wait_for_ring(Duration::from_millis(500)).await,
        "never for a rolled-back transaction"
    );
    pool.close().await;
}

/// The PostgreSQL URL of the test server, reached through `proxy`.
fn through(proxy: &TcpProxy) -> String {
    let url = testing::database_url();
    let (scheme, rest) = url.split_once("://").unwrap();
    let (auth, rest) = rest.rsplit_once('@').map_or(("", rest), |(a, r)| (a, r));
    let path = rest.split_once('/').map_or("", |(_, p)| p);
    let auth = if auth.is_empty() {
        String::new()
    } else {
        format!("{auth}@")
    };
    format!("{scheme}://{auth}127.0.0.1:{}/{path}", proxy.port())
}

fn upstream() -> String {
    let url = testing::database_url();
    let rest = url.split_once("://").unwrap().1;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split_once('/').map_or(rest, |(h, _)| h).to_owned()
}

#[tokio::test]
async fn a_lost_or_silent_listen_connection_is_found_and_reopened() {
    if postgres_answers().await.is_none() {
        return;
    }
    let proxy = TcpProxy::start(&upstream()).await.unwrap();
    let bell = bells::listen(&through(&proxy), BEAT).unwrap();
    let first = healthy(&bell).await;

    // A LISTEN connection whose network goes silent reports no error: the heartbeat finds it.
    proxy.freeze();
    let found = within(Duration::from_secs(3), "the silence is found", || {
        bell.health().is_none()
    })
    .await;
    assert!(found < Duration::from_secs(2), "found after {found:?}");
    proxy.restore();
    within(Duration::from_secs(10), "listening again", || {
        bell.health().is_some_and(|g| g > first)
    })
    .await;
    let second = bell.health().unwrap();

    // A server that goes away: the connection drops, and the bell waits until it is back.
    proxy.cut();
    within(Duration::from_secs(3), "the cut is found", || {
        bell.health().is_none()
    })
    .await;
    tokio::time::sleep(BEAT.timeout).await;
    assert_eq!(bell.health(), None, "down while the server is unreachable");
    proxy.restore();
    within(Duration::from_secs(10), "listening after the cut", || {
        bell.health().is_some_and(|g| g > second)
    })
    .await;
    assert!(bell.reconnects() >= 2);
}

/// The feed's trust follows its bell: events are applied either way, but freshness is vouched
/// for only by a read made within one healthy generation.
#[tokio::test]
async fn the_push_feed_vouches_only_while_its_bell_is_healthy() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let bell = Bell::new("manual");
    let feed = PushFeed::new(
        Arc::clone(&store),
        Arc::clone(&bell),
        Duration::from_millis(200),
        Duration::from_millis(20),
    );
    let cursor = feed.cursor().await.unwrap();
    assert!(
        !feed.trusted(),
        "a bell that never connected vouches for nothing"
    );

    let revoke = |session| async move {
        let mut tx = store.begin().await.unwrap();
        tx.append_revocation(
            &RevocationEvent::SessionRevoked { session },
            Timestamp::now(),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    };
    let first = SessionId::new();
    revoke(first).await;
    let events = feed.next(cursor, Duration::from_secs(1)).await.unwrap();
    assert_eq!(events.len(), 1, "the log is read while the bell is down");
    assert!(!feed.trusted());

    bell.connected();
    let cursor = events[0].0;
    let events = feed.next(cursor, Duration::from_millis(100)).await.unwrap();
    assert!(events.is_empty());
    assert!(feed.trusted(), "a full read within one healthy generation");

    // A reconnection during a read: that read does not vouch; the next one does.
    let waiting = feed.next(cursor, Duration::from_millis(300));
    let reconnect = async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        bell.lost();
        bell.connected();
    };
    let (events, ()) = tokio::join!(waiting, reconnect);
    assert!(events.unwrap().is_empty());
    assert!(!feed.trusted(), "the generation changed during the read");
    feed.next(cursor, Duration::from_millis(50)).await.unwrap();
    assert!(feed.trusted(), "resynchronised from the log");
    assert_eq!(feed.status().reconnects, 1);
}
