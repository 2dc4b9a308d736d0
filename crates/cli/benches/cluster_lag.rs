//! The revocation lag between nodes, measured from outside (SPEC §6): three release
//! `tessera serve` processes on one fresh PostgreSQL database, with the `LISTEN/NOTIFY` feed
//! and then with Redis pub/sub. For each of 200 revocations (RFC 7009, of an access token, on
//! a node taking turns) it takes the time from the revoking response to the first 401 on each
//! other node, both polled at once, and prints p50, p99 and max.
//!
//! `cargo bench -p tessera --bench cluster_lag` (PostgreSQL and Redis from
//! `TESSERA_TEST_DATABASE_URL` / `TESSERA_TEST_REDIS_URL`, defaulting to the local ports).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::{grant, refresh, revoke, serve_with, sign_up, verify_bearer, Server, ISSUER};
use tessera_store::testing::{self, FreshDatabase};

const REVOCATIONS: usize = 200;

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; a filter argument is ignored.
    println!(
        "revocation lag over {REVOCATIONS} revocations, 3 nodes, {} cores",
        cores()
    );
    println!(
        "{:<28} {:>8} {:>8} {:>8} {:>8}",
        "feed", "samples", "p50", "p99", "max"
    );
    let redis = testing::redis_url();
    let prefix = format!("tessera-bench-{}:", std::process::id());
    for (feed, extra) in [
        ("PostgreSQL LISTEN/NOTIFY", vec![]),
        (
            "Redis pub/sub",
            vec!["--redis", redis.as_str(), "--redis-prefix", prefix.as_str()],
        ),
    ] {
        let Some(database) = FreshDatabase::for_test("cluster lag bench").await else {
            continue;
        };
        let mut lags = measure(&database, &extra).await;
        lags.sort();
        println!(
            "{feed:<28} {:>8} {:>8} {:>8} {:>8}",
            lags.len(),
            ms(percentile(&lags, 50)),
            ms(percentile(&lags, 99)),
            ms(*lags.last().unwrap()),
        );
    }
}

async fn measure(database: &FreshDatabase, extra: &[&str]) -> Vec<Duration> {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["--issuer", ISSUER, "--database", database.url()];
    args.extend_from_slice(extra);
    let (a, b, c) = tokio::join!(
        serve_with(dir.path(), "warn", &args),
        serve_with(dir.path(), "warn", &args),
        serve_with(dir.path(), "warn", &args),
    );
    let nodes = [a, b, c];
    let client = reqwest::Client::new();
    let email = "lag@example.com";
    sign_up(&client, &nodes[0], email).await;
    let (_, mut refresh_token) = grant(&client, &nodes[0], email).await;
    let mut lags = Vec::with_capacity(REVOCATIONS * 2);
    for i in 0..REVOCATIONS {
        // A fresh access token by rotation (no argon2 per sample), accepted everywhere.
        let res = refresh(&client, &nodes[0], &refresh_token).await;
        assert_eq!(res.status(), 200);
        let pair: serde_json::Value = res.json().await.unwrap();
        refresh_token = pair["refresh_token"].as_str().unwrap().to_owned();
        let access = pair["access_token"].as_str().unwrap().to_owned();
        for node in &nodes {
            while verify_bearer(&client, node, &access).await != 200 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let revoker = i % 3;
        revoke(&client, &nodes[revoker], &access).await;
        let revoked_at = Instant::now();
        let others: Vec<&Server> = (0..3)
            .filter(|n| *n != revoker)
            .map(|n| &nodes[n])
            .collect();
        let lag = tokio::join!(
            first_401(&client, others[0], &access, revoked_at),
            first_401(&client, others[1], &access, revoked_at),
        );
        lags.extend([lag.0, lag.1]);
    }
    lags
}

async fn first_401(
    client: &reqwest::Client,
    node: &Server,
    token: &str,
    since: Instant,
) -> Duration {
    loop {
        if verify_bearer(client, node, token).await == 401 {
            return since.elapsed();
        }
        assert!(since.elapsed() < Duration::from_secs(30), "never refused");
    }
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    let rank = (sorted.len() * p).div_ceil(100).max(1) - 1;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}
