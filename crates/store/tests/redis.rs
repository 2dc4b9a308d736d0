#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The guessing counters in Redis: the counters' cases of the conformance suite, and what only
//! Redis shows — every key sits under the prefix with a native TTL, and an outage fails an
//! attempt (closed) instead of letting it through uncounted.

use std::time::{Duration, Instant};

use tessera_core::guessing::{self, Limit};
use tessera_core::model::{Timestamp, UserId};
use tessera_core::store::GuessingCounters;
use tessera_store::testing::{fresh_redis_counters, redis_keys, redis_url, RedisServer};
use tessera_store::RedisCounters;

async fn counters() -> Option<RedisCounters> {
    fresh_redis_counters().await.map(|(counters, _)| counters)
}

tessera_store::guessing_suite!(counters());

const LIMIT: Limit = Limit {
    max: 5,
    window: Duration::from_secs(60),
};

async fn fail_once(counters: &RedisCounters, key: &str, now: Timestamp) {
    counters
        .update_tally(key, now, &|t| Some(guessing::admit(t, now, LIMIT).1))
        .await
        .unwrap();
}

#[tokio::test]
async fn every_tally_sits_under_the_prefix_with_a_ttl_at_its_expiry() {
    let Some((counters, prefix)) = fresh_redis_counters().await else {
        return;
    };
    let now = Timestamp::now();
    let keys: Vec<String> = (0..20)
        .map(|_| format!("address:{}", UserId::new()))
        .collect();
    for key in &keys {
        fail_once(&counters, key, now).await;
    }
    let stored = redis_keys(&redis_url(), &format!("{prefix}*")).await;
    assert_eq!(stored.len(), keys.len());
    assert!(stored
        .iter()
        .all(|k| k.starts_with(&format!("{prefix}guess:"))));

    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for key in &stored {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        // One failure: the tally lives until its window ends.
        assert!(ttl > 50_000 && ttl <= 60_000, "PTTL {key} = {ttl}");
    }
    for key in &keys {
        counters.clear_tally(key).await.unwrap();
    }
    assert!(redis_keys(&redis_url(), &format!("{prefix}*"))
        .await
        .is_empty());
}

#[tokio::test]
async fn an_outage_fails_the_attempt_and_a_restart_forgives_only_the_counts() {
    let Some(mut server) = RedisServer::start("Redis outage of the guessing counters") else {
        return;
    };
    let counters = RedisCounters::new(&server.url(), "tessera:").unwrap();
    let key = "account:outage";
    for _ in 0..LIMIT.max {
        fail_once(&counters, key, Timestamp::now()).await;
    }
    let locked = counters
        .tally(key, Timestamp::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(locked.count, LIMIT.max);

    server.stop();
    let started = Instant::now();
    let now = Timestamp::now();
    let attempt = counters
        .update_tally(key, now, &|t| Some(guessing::admit(t, now, LIMIT).1))
        .await;
    assert!(attempt.is_err(), "an attempt must not pass uncounted");
    assert!(started.elapsed() < Duration::from_secs(10));

    // A restart without persistence loses the tallies: the only cost is forgiven failures.
    server.start_again().unwrap();
    let mut back = None;
    for _ in 0..50 {
        match counters.tally(key, Timestamp::now()).await {
            Ok(tally) => {
                back = Some(tally);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(back, Some(None), "reconnected to an empty server");
}
