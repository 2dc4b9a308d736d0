//! The three verification modes (SPEC §5) on `/v1/verify` and `/v1/session`, a feed that
//! falls silent and one that fails, and revocation across two nodes sharing one database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::Value;
use support::instrumented::{Calls, InstrumentedStore};
use support::{start, start_instrumented_node, start_node, start_sqlite, TestServer};
use tessera_core::keys::MasterKey;
use tessera_core::model::{RevocationEvent, Timestamp};
use tessera_core::revocation::{FeedStatus, RevocationFeed, StoreFeed};
use tessera_core::StoreError;

async fn wait_fresh(server: &TestServer) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.tessera.revocation_status().fresh {
        assert!(Instant::now() < deadline, "feed never became fresh");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn session_with_bearer(server: &TestServer, token: &str) -> u16 {
    server
        .client
        .get(server.url("/v1/session"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Revokes an access token, its session, and a cookie session from another device, and
/// reports what the next requests see.
async fn revoked_credentials_after_revocation(server: &TestServer) -> [u16; 6] {
    let (email, browser) = server.browser().await;
    let denied = server.password_grant(&email).await;
    let denied = denied["access_token"].as_str().unwrap().to_owned();
    let family = server.password_grant(&email).await;
    let family_access = family["access_token"].as_str().unwrap().to_owned();
    for token in [&denied, &family_access] {
        assert_eq!(server.verify_bearer(token).await.status(), 200);
    }
    assert_eq!(server.verify_cookie(&browser.cookie).await.status(), 200);

    server.revoke_token(&denied).await; // jti denylisted
    server
        .revoke_token(family["refresh_token"].as_str().unwrap())
        .await; // family revoked
                // Another device signs the browser out.
    let other = server.password_grant(&email).await;
    let list: Value = server
        .client
        .get(server.url("/v1/sessions"))
        .bearer_auth(other["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cookie_sid = browser.body["session"]["id"].as_str().unwrap();
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["id"] == cookie_sid));
    let res = server
        .client
        .delete(server.url(&format!("/v1/sessions/{cookie_sid}")))
        .bearer_auth(other["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);

    // The very next requests.
    [
        server.verify_bearer(&denied).await.status().as_u16(),
        session_with_bearer(server, &denied).await,
        server.verify_bearer(&family_access).await.status().as_u16(),
        session_with_bearer(server, &family_access).await,
        server
            .verify_cookie(&browser.cookie)
            .await
            .status()
            .as_u16(),
        server
            .session_with_cookie(&browser.cookie)
            .await
            .status()
            .as_u16(),
    ]
}

#[tokio::test]
async fn cached_mode_refuses_revoked_credentials_on_the_very_next_request() {
    for server in [
        start("revocation_mode = \"cached\"").await,
        start_sqlite("revocation_mode = \"cached\"").await,
    ] {
        wait_fresh(&server).await;
        assert_eq!(
            revoked_credentials_after_revocation(&server).await,
            [401; 6]
        );
        // Refused by the cache itself: the feed stayed fresh, so no request fell back to the
        // store.
        assert!(server.tessera.revocation_status().fresh);
    }
}

#[tokio::test]
async fn strict_mode_refuses_revoked_credentials_on_the_very_next_request() {
    let server = start_sqlite("revocation_mode = \"strict\"").await;
    assert_eq!(
        revoked_credentials_after_revocation(&server).await,
        [401; 6]
    );
}

#[tokio::test]
async fn none_mode_keeps_accepting_revoked_but_unexpired_access_tokens() {
    let server = start_sqlite("revocation_mode = \"none\"").await;
    let [denied_verify, denied_session, family_verify, family_session, cookie_verify, cookie_session] =
        revoked_credentials_after_revocation(&server).await;
    // The documented trade-off: signature and claims only, revocation by expiry alone.
    assert_eq!(
        [denied_verify, denied_session, family_verify, family_session],
        [200; 4]
    );
    // Cookies have no signature to check offline: they are always looked up.
    assert_eq!([cookie_verify, cookie_session], [401; 2]);
}

/// A feed a test can silence, as a network partition would.
struct PausableFeed {
    inner: StoreFeed,
    paused: AtomicBool,
}

#[async_trait]
impl RevocationFeed for PausableFeed {
    async fn cursor(&self) -> Result<u64, StoreError> {
        self.inner.cursor().await
    }

    async fn next(
        &self,
        cursor: u64,
        wait: Duration,
    ) -> Result<Vec<(u64, Timestamp, RevocationEvent)>, StoreError> {
        while self.paused.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.inner.next(cursor, wait).await
    }

    fn status(&self) -> FeedStatus {
        self.inner.status()
    }
}

const KEY: &str = "c2l4dGVlbi1ieXRlcy1vZi1rZXl4c2l4dGVlbi1ieXQ";

/// Two nodes on one SQLite file, one issuer; node A's feed can be paused.
async fn cluster(settings: &str) -> (TestServer, TestServer, Arc<PausableFeed>, tempfile::TempDir) {
    let settings = &format!(
        "issuer = \"http://tessera.test\"\nallowed_origins = \"http://tessera.test\"\n{settings}"
    );
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("cluster.db").display());
    let b = start_node(
        &database,
        settings,
        MasterKey::from_base64(KEY).unwrap(),
        None,
    )
    .await;
    let store = tessera_store::open(&database).await.unwrap();
    let feed = Arc::new(PausableFeed {
        inner: StoreFeed::new(store, Duration::from_millis(50)),
        paused: AtomicBool::new(false),
    });
    let a = start_node(
        &database,
        settings,
        MasterKey::from_base64(KEY).unwrap(),
        Some(feed.clone() as Arc<dyn RevocationFeed>),
    )
    .await;
    wait_fresh(&a).await;
    wait_fresh(&b).await;
    (a, b, feed, dir)
}

#[tokio::test]
async fn a_revocation_on_one_node_reaches_the_other_through_the_feed() {
    let (a, b, _feed, _dir) = cluster("revocation_mode = \"cached\"").await;
    let (email, pair) = b.user_with_tokens().await; // issued by B
    let access = pair["access_token"].as_str().unwrap();
    assert_eq!(
        a.verify_bearer(access).await.status(),
        200,
        "accepted by A (shared keys)"
    );
    let browser = a.login(&email).await; // cookie issued by A
    assert_eq!(
        b.verify_cookie(&browser.cookie).await.status(),
        200,
        "accepted by B"
    );

    b.revoke_token(access).await;
    let res = b.logout(&browser).await;
    assert_eq!(res.status(), 204, "B signs out A's cookie session");

    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let token = a.verify_bearer(access).await.status();
        let cookie = a.verify_cookie(&browser.cookie).await.status();
        if token == 401 && cookie == 401 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A still accepts: token {token}, cookie {cookie}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(a.tessera.revocation_status().last_lag_ms < 3_000);
}

#[tokio::test]
async fn a_stale_feed_falls_back_to_strict_until_it_is_heard_again() {
    let (a, b, feed, _dir) = cluster("revocation_mode = \"cached\"\nmax_staleness = \"1s\"").await;
    let (_, pair) = b.user_with_tokens().await;
    let access = pair["access_token"].as_str().unwrap();
    assert_eq!(a.verify_bearer(access).await.status(), 200);

    feed.paused.store(true, Ordering::SeqCst);
    b.revoke_token(access).await;
    // Within max_staleness A may not know yet; past it, A no longer trusts its cache.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert!(!a.tessera.revocation_status().fresh);
    let readyz = a.client.get(a.url("/readyz")).send().await.unwrap();
    assert_eq!(readyz.status(), 503, "a stale feed is reported");
    assert_eq!(
        a.verify_bearer(access).await.status(),
        401,
        "strict fallback consults the store"
    );
    assert_eq!(session_with_bearer(&a, access).await, 401);

    feed.paused.store(false, Ordering::SeqCst);
    wait_fresh(&a).await;
    assert_eq!(
        a.verify_bearer(access).await.status(),
        401,
        "resynchronised cache knows it too"
    );
    let readyz = a.client.get(a.url("/readyz")).send().await.unwrap();
    assert_eq!(readyz.status(), 200);
}

/// The `kid`s a node publishes in its JWKS.
async fn published_kids(server: &TestServer) -> Vec<String> {
    let jwks: Value = server
        .client
        .get(server.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_withdrawn_signing_key_stops_verifying_on_running_nodes_in_every_mode() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("keys.db").display());
    let shared = "issuer = \"http://tessera.test\"\nallowed_origins = \"http://tessera.test\"\n";
    let mut nodes = Vec::new();
    for mode in ["none", "cached", "strict"] {
        let settings = format!("{shared}revocation_mode = \"{mode}\"\n");
        let node = start_node(
            &database,
            &settings,
            MasterKey::from_base64(KEY).unwrap(),
            None,
        )
        .await;
        nodes.push((mode, node));
    }
    let (_, pair) = nodes[0].1.user_with_tokens().await;
    let old_token = pair["access_token"].as_str().unwrap().to_owned();
    for (mode, node) in &nodes {
        assert_eq!(node.verify_bearer(&old_token).await.status(), 200, "{mode}");
    }

    // An administering process on the same database, as `tessera keys rotate` and
    // `tessera keys retire` are.
    let config = tessera_core::config::ConfigLayer::from_toml(
        &format!("database = \"{database}\"\n{shared}"),
        std::path::Path::new("admin.toml"),
    )
    .unwrap()
    .resolve()
    .unwrap();
    let admin = tessera_core::service::Tessera::start(
        Arc::new(config),
        tessera_store::open(&database).await.unwrap(),
        MasterKey::from_base64(KEY).unwrap(),
        tessera_core::service::KeyPolicy::Administer,
    )
    .await
    .unwrap();
    let old_kid = admin.key_ring().active().kid().to_owned();
    let new_kid = admin.rotate_signing_key().await.unwrap().kid().to_owned();
    assert!(matches!(
        admin.withdraw_signing_key(&new_kid).await,
        Err(tessera_core::AuthError::ActiveKey)
    ));
    assert!(matches!(
        admin.withdraw_signing_key("no-such-kid").await,
        Err(tessera_core::AuthError::NotFound)
    ));
    admin.withdraw_signing_key(&old_kid).await.unwrap();

    // Every node knows the old kid, so no unknown-kid reload helps, and the periodic reload
    // is a minute away: only the withdrawal on the revocation log can refuse the token this
    // soon (the log is polled every 200 ms; the deadline allows for a loaded machine).
    let deadline = Instant::now() + Duration::from_secs(5);
    for (mode, node) in &nodes {
        loop {
            let status = node.verify_bearer(&old_token).await.status();
            if status == 401 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{mode} node still accepts the withdrawn key's token: {status}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let kids = published_kids(node).await;
        assert!(!kids.contains(&old_kid), "{mode}: {kids:?}");
        assert!(kids.contains(&new_kid), "{mode}: {kids:?}");
        // The rebuilt ring signs with the new key, and its tokens verify.
        let (_, fresh) = node.user_with_tokens().await;
        let fresh = fresh["access_token"].as_str().unwrap();
        assert_eq!(node.verify_bearer(fresh).await.status(), 200, "{mode}");
    }
}

/// Two nodes on one SQLite file, one issuer; node A's store is instrumented, and its feed
/// (the default one, reading the revocation log) reads through it, so a test can make the
/// feed fail with errors rather than fall silent.
async fn cluster_with_a_breakable_feed(
    settings: &str,
) -> (
    TestServer,
    TestServer,
    Arc<InstrumentedStore>,
    tempfile::TempDir,
) {
    let settings = &format!(
        "issuer = \"http://tessera.test\"\nallowed_origins = \"http://tessera.test\"\n{settings}"
    );
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("cluster.db").display());
    let b = start_node(
        &database,
        settings,
        MasterKey::from_base64(KEY).unwrap(),
        None,
    )
    .await;
    let (a, store) =
        start_instrumented_node(&database, settings, MasterKey::from_base64(KEY).unwrap()).await;
    wait_fresh(&a).await;
    wait_fresh(&b).await;
    (a, b, store, dir)
}

async fn readyz(server: &TestServer) -> (u16, Value) {
    let res = server
        .client
        .get(server.url("/readyz"))
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

#[tokio::test]
async fn a_failing_feed_falls_back_to_strict_and_resyncs_when_it_returns() {
    let (a, b, store, _dir) = cluster_with_a_breakable_feed("revocation_mode = \"cached\"").await;
    let (email, pair) = b.user_with_tokens().await;
    let access = pair["access_token"].as_str().unwrap();
    assert_eq!(a.verify_bearer(access).await.status(), 200);
    let browser = a.login(&email).await;
    // A now holds the cookie session in its cache: trusting the cache would keep saying yes.
    assert_eq!(a.verify_cookie(&browser.cookie).await.status(), 200);

    // The revocation log stops answering A: its feed gets errors, not silence.
    store.fail(Calls::LOG);
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.tessera.revocation_status().fresh {
        assert!(
            Instant::now() < deadline,
            "A never noticed its feed failing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = readyz(&a).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unavailable", "{body}");
    assert_eq!(body["store"], "ok", "only the feed failed: {body}");
    let revocation = &body["revocation"];
    assert_eq!(revocation["mode"], "cached", "{body}");
    assert_eq!(revocation["fresh"], false, "{body}");
    assert!(revocation["feed_silence_ms"].is_u64(), "{body}");
    assert!(revocation["last_lag_ms"].is_u64(), "{body}");

    // B revokes both credentials during the outage; A cannot hear of it through its feed.
    b.revoke_token(access).await;
    let res = b.logout(&browser).await;
    assert_eq!(res.status(), 204);

    // A checks against the store (strict), which knows: refused at once. The store reads
    // counted prove where the answers came from.
    let before = store.calls();
    assert_eq!(a.verify_bearer(access).await.status(), 401);
    assert_eq!(session_with_bearer(&a, access).await, 401);
    assert_eq!(a.verify_cookie(&browser.cookie).await.status(), 401);
    assert_eq!(a.session_with_cookie(&browser.cookie).await.status(), 401);
    assert!(
        store.calls() >= before + 4,
        "strict fallback reads the store: {} calls for 4 checks",
        store.calls() - before
    );

    // The log answers again: A resynchronises and is ready.
    store.heal();
    wait_fresh(&a).await;
    let (status, body) = readyz(&a).await;
    assert_eq!(status, 200, "{body}");

    // The revocation made during the outage is now in A's cache, although the feed never
    // delivered it (A resumed after it): with every lookup and change failing, the token is
    // still refused with a 401, which only the cache can give; asking the store would be 503.
    store.fail(Calls::READS | Calls::WRITES);
    assert!(a.tessera.revocation_status().fresh);
    assert_eq!(a.verify_bearer(access).await.status(), 401);
    assert_eq!(session_with_bearer(&a, access).await, 401);
    store.heal();
}
