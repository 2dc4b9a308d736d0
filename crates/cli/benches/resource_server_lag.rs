//! The revocation lag of a resource server on `tessera-verify` (the example service's
//! verifier, following `GET /v1/revocations`) behind one `tessera serve` on SQLite: for each
//! of 300 revocations (RFC 7009, of an access token) it takes the time from the revoking
//! response to the first refusal by the verifier, polled every millisecond, and prints p50,
//! p99 and max.
//!
//! `cargo bench -p tessera --bench resource_server_lag`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::{create_admin_key, grant, refresh, revoke, serve, sign_up, ISSUER};
use tessera_verify::remote::{ApiKey, Refusal};

const REVOCATIONS: usize = 300;

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; a filter argument is ignored.
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path()).await;
    let (_, key) = create_admin_key(dir.path(), &["--scope", "revocations"]);
    let remote = resource_server::remote(resource_server::Settings {
        tessera_url: server.base.clone(),
        issuer: Some(ISSUER.to_owned()),
        audience: "tessera".to_owned(),
        revocations_key: ApiKey::new(key),
        max_staleness: Duration::from_secs(15),
        introspect_key: None,
    })
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let email = "lag@example.com";
    sign_up(&client, &server, email).await;
    let (_, mut refresh_token) = grant(&client, &server, email).await;
    let mut lags = Vec::with_capacity(REVOCATIONS);
    for _ in 0..REVOCATIONS {
        // A fresh access token by rotation (no argon2 per sample).
        let res = refresh(&client, &server, &refresh_token).await;
        assert_eq!(res.status(), 200);
        let pair: serde_json::Value = res.json().await.unwrap();
        refresh_token = pair["refresh_token"].as_str().unwrap().to_owned();
        let access = pair["access_token"].as_str().unwrap().to_owned();
        remote.verify(&access).await.unwrap();
        revoke(&client, &server, &access).await;
        let revoked_at = Instant::now();
        loop {
            match remote.verify(&access).await {
                Err(Refusal::Revoked(_)) => break,
                Ok(_) => {}
                Err(other) => panic!("refused for another reason: {other}"),
            }
            assert!(
                revoked_at.elapsed() < Duration::from_secs(30),
                "never refused"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        lags.push(revoked_at.elapsed());
    }
    lags.sort();
    println!(
        "resource server revocation lag over {REVOCATIONS} revocations, {} cores",
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
    );
    println!("{:>8} {:>8} {:>8}", "p50", "p99", "max");
    println!(
        "{:>8} {:>8} {:>8}",
        ms(percentile(&lags, 50)),
        ms(percentile(&lags, 99)),
        ms(*lags.last().unwrap())
    );
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    let rank = (sorted.len() * p).div_ceil(100).max(1) - 1;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
