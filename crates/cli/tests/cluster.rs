//! Three `tessera serve` processes sharing PostgreSQL and one master key — with the
//! `LISTEN/NOTIFY` feed, and with Redis pub/sub — behave as one (SPEC §6): what one issues,
//! all accept; one refresh token raced through all three rotates once; what one revokes, all
//! refuse within the revocation lag. And the outages: Redis going away degrades to strict
//! checks against PostgreSQL and comes back by itself; PostgreSQL going away fails closed and
//! comes back without a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;
use tessera_store::testing::{self, FreshDatabase, RedisServer, TcpProxy};

/// The loose bound of the acceptance test: every revocation is refused on every other node
/// within it, on two busy cores. The bench measures the real lag.
const LAG_BOUND: Duration = Duration::from_secs(1);

struct Cluster {
    nodes: Vec<Server>,
    admin_key: String,
    /// The flags every node was started with, to start one again.
    args: Vec<String>,
    // Dropped after the servers.
    _database: FreshDatabase,
    dir: tempfile::TempDir,
}

/// Three nodes on a fresh database, started at once, each ready (`/readyz` 200: store
/// reachable and feed trusted) before the test begins; `extra` are further flags for all.
async fn cluster(database: FreshDatabase, url: &str, extra: &[&str]) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec![
        "--issuer",
        ISSUER,
        "--database",
        url,
        "--login-max-failures",
        "4",
    ];
    args.extend_from_slice(extra);
    let path = dir.path();
    let (a, b, c) = tokio::join!(
        serve_with(path, "warn", &args),
        serve_with(path, "warn", &args),
        serve_with(path, "warn", &args),
    );
    let nodes = vec![a, b, c];
    for node in &nodes {
        ready(node, 200, Duration::from_secs(20)).await;
    }
    let (_, admin_key) = create_admin_key(path, &["--database", url]);
    Cluster {
        nodes,
        admin_key,
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        _database: database,
        dir,
    }
}

/// Waits until `/readyz` answers `want`.
async fn ready(node: &Server, want: u16, within: Duration) -> Value {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + within;
    loop {
        let res = client.get(node.url("/readyz")).send().await.unwrap();
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap();
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {status} after {within:?}, expected {want}: {body}\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How long until every node of `others` refuses what `probe` checks (401), polled.
async fn refused_on<'a, F, Fut>(others: impl IntoIterator<Item = &'a Server>, probe: F) -> Duration
where
    F: Fn(&'a Server) -> Fut,
    Fut: std::future::Future<Output = u16>,
{
    let start = Instant::now();
    for node in others {
        loop {
            let status = probe(node).await;
            if status == 401 {
                break;
            }
            assert_eq!(status, 200, "only 200 or 401 while the services are up");
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{} still accepts a revoked credential after 10 s",
                node.base
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    start.elapsed()
}

async fn sessions_of(
    client: &reqwest::Client,
    cluster: &Cluster,
    node: usize,
    user: &str,
) -> usize {
    let res = client
        .get(cluster.nodes[node].url(&format!("/v1/admin/users/{user}/sessions")))
        .bearer_auth(&cluster.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    body["sessions"]
        .as_array()
        .or_else(|| body.as_array())
        .unwrap_or_else(|| panic!("no session list in {body}"))
        .len()
}

/// The acceptance list of "three real nodes", on whatever feed the cluster runs.
async fn three_nodes_behave_as_one(cluster: &Cluster) {
    let client = reqwest::Client::new();
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let email = "cluster@example.com";
    let user = sign_up(&client, a, email).await;

    // A login on A gives a cookie and tokens that work on B and C.
    let browser = login(&client, a, email).await;
    let (access, refresh_token) = grant(&client, a, email).await;
    for node in [b, c] {
        assert_eq!(verify_cookie(&client, node, &browser.cookie).await, 200);
        assert_eq!(verify_bearer(&client, node, &access).await, 200);
    }

    // One refresh token sent to A, B and C at once: one successor, no forked family.
    let raced = tokio::join!(
        refresh(&client, a, &refresh_token),
        refresh(&client, b, &refresh_token),
        refresh(&client, c, &refresh_token),
    );
    let mut successors = Vec::new();
    for res in [raced.0, raced.1, raced.2] {
        assert_eq!(
            res.status(),
            200,
            "within the grace window every node answers"
        );
        let body: Value = res.json().await.unwrap();
        successors.push(body["refresh_token"].as_str().unwrap().to_owned());
    }
    successors.dedup();
    assert_eq!(successors.len(), 1, "one successor: {successors:?}");
    assert_eq!(
        sessions_of(&client, cluster, 1, &user).await,
        2,
        "the cookie session and one token family, not a fork"
    );
    let rotated = refresh(&client, c, &successors[0]).await;
    assert_eq!(rotated.status(), 200, "the family lives on");
    let rotated: Value = rotated.json().await.unwrap();
    let live_access = rotated["access_token"].as_str().unwrap().to_owned();

    // A revocation on C is refused on every other node within the bound.
    revoke(&client, c, &access).await;
    let lag = refused_on([a, b], |node| verify_bearer(&client, node, &access)).await;
    assert!(
        lag < LAG_BOUND,
        "token revoked on C refused everywhere after {lag:?}"
    );

    // A sign-out everywhere through the admin API on A.
    let res = client
        .delete(a.url(&format!("/v1/admin/users/{user}/sessions")))
        .bearer_auth(&cluster.admin_key)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let lag = refused_on([b, c], |node| verify_cookie(&client, node, &browser.cookie)).await;
    assert!(
        lag < LAG_BOUND,
        "signed-out cookie refused everywhere after {lag:?}"
    );
    let lag = refused_on([b, c], |node| verify_bearer(&client, node, &live_access)).await;
    assert!(
        lag < LAG_BOUND,
        "signed-out token refused everywhere after {lag:?}"
    );

    // A role change on B: tokens carrying the old roles die everywhere.
    let (old_roles, _) = grant(&client, a, email).await;
    assert_eq!(verify_bearer(&client, c, &old_roles).await, 200);
    let res = client
        .put(b.url(&format!("/v1/admin/users/{user}/roles")))
        .bearer_auth(&cluster.admin_key)
        .json(&json!({ "roles": ["ops"] }))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let lag = refused_on([a, c], |node| verify_bearer(&client, node, &old_roles)).await;
    assert!(
        lag < LAG_BOUND,
        "old-role token refused everywhere after {lag:?}"
    );
    let (new_roles, _) = grant(&client, c, email).await;
    for node in [a, b] {
        assert_eq!(verify_bearer(&client, node, &new_roles).await, 200);
    }

    // A sign-out everywhere and a role change of one user at once, on two nodes: both take
    // the user's row first, so they wait for each other rather than deadlock.
    for _ in 0..5 {
        let both = tokio::join!(
            client
                .delete(a.url(&format!("/v1/admin/users/{user}/sessions")))
                .bearer_auth(&cluster.admin_key)
                .send(),
            client
                .put(b.url(&format!("/v1/admin/users/{user}/roles")))
                .bearer_auth(&cluster.admin_key)
                .json(&json!({ "roles": ["ops", "audit"] }))
                .send(),
        );
        assert!(both.0.unwrap().status().is_success());
        assert!(both.1.unwrap().status().is_success());
    }

    one_guessing_limit_holds_across_the_nodes(&client, cluster).await;
}

/// SPEC §7: no client gets more than `login_max_failures` (4 here) attempts at an account on
/// any number of nodes — failures spread over the nodes count against one budget, the lock
/// holds on all of them, and attempts racing on all three at once get no more between them.
async fn one_guessing_limit_holds_across_the_nodes(client: &reqwest::Client, cluster: &Cluster) {
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let attempt = |node: &Server, email: &str, password: &str| {
        client
            .post(node.url("/v1/login"))
            .json(&json!({ "email": email, "password": password }))
            .send()
    };
    let spread = "spread@example.com";
    sign_up(client, b, spread).await;
    for node in [a, b, c, a] {
        assert_eq!(
            attempt(node, spread, "not the password")
                .await
                .unwrap()
                .status(),
            401
        );
    }
    for node in [a, b, c] {
        let res = attempt(node, spread, PASSWORD).await.unwrap();
        assert_eq!(res.status(), 429, "{} let a fifth attempt in", node.base);
    }

    let raced = "raced@example.com";
    sign_up(client, c, raced).await;
    let racing: Vec<_> = (0..12)
        .map(|i| {
            let request = client
                .post(cluster.nodes[i % 3].url("/v1/login"))
                .json(&json!({ "email": raced, "password": "not the password" }));
            tokio::spawn(async move { request.send().await.unwrap().status().as_u16() })
        })
        .collect();
    let mut statuses = Vec::new();
    for racer in racing {
        statuses.push(racer.await.unwrap());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [[401; 4].as_slice(), &[429; 8]].concat());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_postgres_with_listen_notify_behave_as_one() {
    let Some(database) =
        FreshDatabase::for_test("three_nodes_on_postgres_with_listen_notify_behave_as_one").await
    else {
        return;
    };
    let url = database.url().to_owned();
    let cluster = cluster(database, &url, &[]).await;
    let body = ready(&cluster.nodes[0], 200, Duration::from_secs(1)).await;
    assert_eq!(body["database"], "PostgreSQL");
    assert_eq!(body["revocation"]["feed"], "PostgreSQL LISTEN/NOTIFY");
    three_nodes_behave_as_one(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_postgres_with_redis_behave_as_one() {
    let Some(database) =
        FreshDatabase::for_test("three_nodes_on_postgres_with_redis_behave_as_one").await
    else {
        return;
    };
    let redis = testing::redis_url();
    if std::net::TcpStream::connect(redis.trim_start_matches("redis://")).is_err() {
        testing::skip_or_fail(
            "three nodes with Redis",
            &format!("Redis at {redis} does not answer"),
        );
        return;
    }
    let prefix = format!("tessera-test-{}:", uuid_like());
    let url = database.url().to_owned();
    let cluster = cluster(
        database,
        &url,
        &["--redis", &redis, "--redis-prefix", &prefix],
    )
    .await;
    let body = ready(&cluster.nodes[0], 200, Duration::from_secs(1)).await;
    assert_eq!(body["revocation"]["feed"], "Redis pub/sub");
    three_nodes_behave_as_one(&cluster).await;
}

fn uuid_like() -> String {
    format!(
        "{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// Redis goes away: cached checks go on until `max_staleness`, then whatever cannot be proven
/// is checked against PostgreSQL; a credential revoked during the outage is never accepted;
/// when Redis is back the nodes resynchronise and are ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_redis_degrades_to_strict_and_recovers_by_itself() {
    let Some(database) =
        FreshDatabase::for_test("losing_redis_degrades_to_strict_and_recovers_by_itself").await
    else {
        return;
    };
    let Some(mut redis) = RedisServer::start("Redis outage") else {
        return;
    };
    let url = database.url().to_owned();
    let redis_url = redis.url();
    let cluster = cluster(
        database,
        &url,
        &["--redis", &redis_url, "--max-staleness", "1s"],
    )
    .await;
    let client = reqwest::Client::new();
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    let email = "outage@example.com";
    sign_up(&client, a, email).await;
    let (kept, _) = grant(&client, a, email).await;
    let (doomed, _) = grant(&client, a, email).await;

    redis.stop();
    // Not ready once the feed is stale, on every node.
    for node in &cluster.nodes {
        let body = ready(node, 503, Duration::from_secs(5)).await;
        assert_eq!(body["store"], "ok", "{body}");
        assert_eq!(body["revocation"]["fresh"], false, "{body}");
    }
    // Verification goes on, strictly against PostgreSQL.
    assert_eq!(verify_bearer(&client, b, &kept).await, 200);
    // A revocation during the outage is refused everywhere, Redis or not.
    revoke(&client, a, &doomed).await;
    let lag = refused_on([b, &cluster.nodes[2]], |node| {
        verify_bearer(&client, node, &doomed)
    })
    .await;
    assert!(
        lag < LAG_BOUND,
        "revoked during the outage, accepted for {lag:?}"
    );
    // Logins go on too: PostgreSQL is the system of record.
    grant(&client, b, email).await;

    redis.start_again().unwrap();
    for node in &cluster.nodes {
        let body = ready(node, 200, Duration::from_secs(15)).await;
        assert!(
            body["revocation"]["feed_reconnects"].as_u64().unwrap() >= 1,
            "{body}"
        );
    }
    assert_eq!(verify_bearer(&client, b, &doomed).await, 401);
    assert_eq!(verify_bearer(&client, b, &kept).await, 200);
}

/// PostgreSQL goes away (a TCP proxy of the test's own is cut): logins and refreshes answer
/// 503 with a clear error and write nothing, `/readyz` answers 503, no revoked credential is
/// accepted, and once PostgreSQL is back everything recovers without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_postgres_fails_closed_and_recovers_without_a_restart() {
    let Some(database) =
        FreshDatabase::for_test("losing_postgres_fails_closed_and_recovers_without_a_restart")
            .await
    else {
        return;
    };
    let proxy = TcpProxy::start(&database.address()).await.unwrap();
    let url = database.url_via(proxy.port());
    let cluster = cluster(database, &url, &["--max-staleness", "1s"]).await;
    let client = reqwest::Client::new();
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    let email = "pg-outage@example.com";
    let user = sign_up(&client, a, email).await;
    let (access, refresh_token) = grant(&client, a, email).await;
    let (revoked, _) = grant(&client, a, email).await;
    revoke(&client, a, &revoked).await;
    refused_on([b], |node| verify_bearer(&client, node, &revoked)).await;
    let sessions_before = sessions_of(&client, &cluster, 0, &user).await;

    proxy.cut();
    for node in &cluster.nodes {
        let body = ready(node, 503, Duration::from_secs(10)).await;
        assert_eq!(body["store"], "unreachable", "{body}");
    }
    let res = client
        .post(b.url("/oauth2/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", email),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    assert_eq!(refresh(&client, b, &refresh_token).await.status(), 503);
    let res = client
        .post(a.url("/v1/login"))
        .json(&json!({ "email": email, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    // Fail closed: never 200 for a revoked token; a valid one is 200 or 503, never 401.
    for node in &cluster.nodes {
        assert_ne!(verify_bearer(&client, node, &revoked).await, 200);
        assert_ne!(verify_bearer(&client, node, &access).await, 401);
    }

    proxy.restore();
    for node in &cluster.nodes {
        ready(node, 200, Duration::from_secs(20)).await;
    }
    assert_eq!(
        sessions_of(&client, &cluster, 1, &user).await,
        sessions_before,
        "the refused logins wrote nothing"
    );
    for node in &cluster.nodes {
        assert_eq!(verify_bearer(&client, node, &revoked).await, 401);
    }
    assert_eq!(refresh(&client, b, &refresh_token).await.status(), 200);
    grant(&client, a, email).await;
}

/// A node killed with `kill -9` and started again catches up: a revocation made while it was
/// down is refused there as soon as it is ready, and the feed reaches it again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_and_restarted_catches_up_with_what_it_missed() {
    let Some(database) =
        FreshDatabase::for_test("a_node_killed_and_restarted_catches_up_with_what_it_missed").await
    else {
        return;
    };
    let url = database.url().to_owned();
    let mut cluster = cluster(database, &url, &[]).await;
    let client = reqwest::Client::new();
    let email = "restarted@example.com";
    sign_up(&client, &cluster.nodes[0], email).await;
    let (missed, _) = grant(&client, &cluster.nodes[0], email).await;
    let (later, _) = grant(&client, &cluster.nodes[0], email).await;
    assert_eq!(
        verify_bearer(&client, &cluster.nodes[2], &missed).await,
        200
    );

    cluster.nodes[2].kill();
    revoke(&client, &cluster.nodes[0], &missed).await;
    let args: Vec<&str> = cluster.args.iter().map(String::as_str).collect();
    let restarted = serve_with(cluster.dir.path(), "warn", &args).await;
    ready(&restarted, 200, Duration::from_secs(20)).await;
    assert_eq!(verify_bearer(&client, &restarted, &missed).await, 401);
    assert_eq!(verify_bearer(&client, &restarted, &later).await, 200);

    revoke(&client, &cluster.nodes[1], &later).await;
    let lag = refused_on([&restarted], |node| verify_bearer(&client, node, &later)).await;
    assert!(
        lag < LAG_BOUND,
        "refused on the restarted node after {lag:?}"
    );
}
