#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Webhooks end to end (SPEC §3): a real receiver on a loopback port checks every signature
//! itself, and the server's changes reach it through the outbox and the delivery worker —
//! retried with backoff, never again once acknowledged, and not lost across a restart.

mod support;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use hmac::{Hmac, Mac};
use reqwest::header::COOKIE;
use serde_json::{json, Value};
use sha2::Sha256;
use tessera_core::keys::MasterKey;
use tessera_core::model::Timestamp;
use tessera_server::webhooks;
use tokio::net::TcpListener;

const SECRET: &str = "whsec_receiver-test";
/// A fixed master key, so a restarted node reads the signing keys its predecessor sealed.
const KEY: &str = "c2l4dGVlbi1ieXRlcy1vZi1rZXl4c2l4dGVlbi1ieXQ";

/// One request the receiver saw.
#[derive(Debug, Clone)]
struct Hit {
    at: Instant,
    body: Value,
    /// The `Tessera-Signature` matched an HMAC the receiver computed itself.
    signed: bool,
}

struct ReceiverState {
    hits: Mutex<Vec<Hit>>,
    /// Requests answered 500 before the receiver starts accepting.
    failures: usize,
    /// While set, every request is answered 503 (the application is down for maintenance).
    refusing: AtomicBool,
    /// How long each answer takes, in milliseconds (a slow application).
    answer_after_ms: AtomicU64,
}

/// An HTTP endpoint on 127.0.0.1 standing in for the application that subscribed.
struct Receiver {
    state: Arc<ReceiverState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    fn start(listener: TcpListener, failures: usize) -> Self {
        let state = Arc::new(ReceiverState {
            hits: Mutex::new(Vec::new()),
            failures,
            refusing: AtomicBool::new(false),
            answer_after_ms: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { state, task }
    }

    /// Answers every request 503 from now on (`true`), or stops doing so (`false`).
    fn refuse(&self, refusing: bool) {
        self.state.refusing.store(refusing, Ordering::SeqCst);
    }

    /// Takes `delay` over every answer from now on.
    fn answer_after(&self, delay: Duration) {
        let millis = u64::try_from(delay.as_millis()).unwrap();
        self.state.answer_after_ms.store(millis, Ordering::SeqCst);
    }

    fn hits(&self) -> Vec<Hit> {
        self.state.hits.lock().unwrap().clone()
    }

    /// Waits until `count` requests have arrived.
    async fn wait_for(&self, count: usize, within: Duration) -> Vec<Hit> {
        let deadline = Instant::now() + within;
        loop {
            let hits = self.hits();
            if hits.len() >= count {
                return hits;
            }
            assert!(
                Instant::now() < deadline,
                "expected {count} deliveries within {within:?}, got {}: {hits:#?}",
                hits.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let json_type = headers
        .get("content-type")
        .is_some_and(|v| v == "application/json");
    let signature = headers
        .get("tessera-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let hit = Hit {
        at: Instant::now(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        signed: json_type && signature_matches(signature, &body),
    };
    let status = {
        let mut hits = state.hits.lock().unwrap();
        hits.push(hit);
        if state.refusing.load(Ordering::SeqCst) {
            StatusCode::SERVICE_UNAVAILABLE
        } else if hits.len() <= state.failures {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::NO_CONTENT
        }
    };
    let delay = state.answer_after_ms.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(delay)).await;
    status
}

/// Recomputes `HMAC-SHA256(secret, "t.body")` as a receiver written from the spec would, and
/// checks the timestamp is current.
fn signature_matches(header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = Some(value.to_owned()),
            Some(("v1", value)) => v1 = Some(value.to_owned()),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let fresh = t
        .parse::<i64>()
        .is_ok_and(|t| (Timestamp::now().as_unix() - t).abs() <= 5);
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected = mac
        .finalize()
        .into_bytes()
        .iter()
        .fold(String::new(), |mut hex, b| {
            write!(hex, "{b:02x}").unwrap();
            hex
        });
    fresh && expected == v1
}

async fn loopback() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    (listener, url)
}

/// A `[[webhooks]]` table; it goes last in the settings, after every top-level key.
fn webhook_settings(url: &str, events: &[&str]) -> String {
    format!(
        "[[webhooks]]\nurl = \"{url}\"\nsecret = \"{SECRET}\"\nevents = {}\n",
        json!(events)
    )
}

/// The outbox messages for `url` that are still waiting, whenever due.
async fn waiting_for(server: &support::TestServer, url: &str) -> Vec<(u32, Option<String>)> {
    server
        .store
        .due_messages(Timestamp::from_unix(i64::MAX / 2), 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|q| q.message.endpoint == url)
        .map(|q| (q.attempts, q.last_error))
        .collect()
}

#[tokio::test]
async fn failed_deliveries_are_retried_with_backoff_then_never_again() {
    let (listener, url) = loopback().await;
    let receiver = Receiver::start(listener, 2);
    let server = support::start(&webhook_settings(&url, &["session.created"])).await;

    let (_, browser) = server.browser().await;
    let hits = receiver.wait_for(3, Duration::from_secs(10)).await;

    let id = hits[0].body["id"].as_str().unwrap();
    for hit in &hits {
        assert!(hit.signed, "signature checked by the receiver: {hit:?}");
        assert_eq!(hit.body["id"], id, "the same event each time");
        assert_eq!(hit.body["type"], "session.created");
        assert_eq!(
            hit.body["data"]["session_id"],
            browser.body["session"]["id"]
        );
        assert_eq!(hit.body["data"]["user_id"], browser.body["user"]["id"]);
    }
    // Each retry waits at least its backoff (1 s, then 2 s), never much longer.
    let first_wait = hits[1].at - hits[0].at;
    let second_wait = hits[2].at - hits[1].at;
    eprintln!("waits between attempts: {first_wait:?}, {second_wait:?}");
    assert!(
        first_wait >= Duration::from_millis(950) && first_wait < Duration::from_secs(4),
        "{first_wait:?}"
    );
    assert!(
        second_wait >= Duration::from_millis(1_950) && second_wait < Duration::from_secs(6),
        "{second_wait:?}"
    );

    // Acknowledged: the message left the queue, and nothing more arrives.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(receiver.hits().len(), 3);
    assert!(waiting_for(&server, &url).await.is_empty());
}

#[tokio::test]
async fn a_delivery_in_progress_at_shutdown_completes_and_is_recorded() {
    let (listener, url) = loopback().await;
    let receiver = Receiver::start(listener, 0);
    // Slower than the connections take to drain (an idle keep-alive connection lingers), so
    // the attempt is still in progress when background work is told to stop.
    let answer_after = tessera_server::connections::IDLE_LINGER + Duration::from_secs(2);
    receiver.answer_after(answer_after);
    let mut server = support::start(&webhook_settings(&url, &["session.created"])).await;

    server.browser().await;
    // The receiver has the request and holds its answer: the attempt is in progress.
    let hit = receiver.wait_for(1, Duration::from_secs(10)).await[0].at;
    assert_eq!(
        waiting_for(&server, &url).await.len(),
        1,
        "claimed, not yet recorded"
    );
    server.stop().await;
    assert!(
        hit.elapsed() >= answer_after,
        "shutdown waited for the answer"
    );
    assert!(
        waiting_for(&server, &url).await.is_empty(),
        "the attempt finished before shutdown did, and its success was recorded"
    );
    assert_eq!(receiver.hits().len(), 1);
}

#[tokio::test]
async fn an_undelivered_event_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("tessera.db").display());
    // One receiver for the whole test, refusing deliveries until the first node is gone: its
    // port is never released, so nothing else can take it in between.
    let (listener, url) = loopback().await;
    let receiver = Receiver::start(listener, 0);
    receiver.refuse(true);
    let settings = webhook_settings(&url, &["session.created"]);

    let first = support::start_node(
        &database,
        &settings,
        MasterKey::from_base64(KEY).unwrap(),
        None,
    )
    .await;
    let (_, browser) = first.browser().await;
    // The worker tried and failed: the event waits in the database with its attempt recorded.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let waiting = waiting_for(&first, &url).await;
        if waiting.first().is_some_and(|(attempts, _)| *attempts >= 1) {
            let (_, error) = &waiting[0];
            assert_eq!(error.as_deref(), Some("HTTP 503"));
            break;
        }
        assert!(Instant::now() < deadline, "no failed attempt recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Stop the first node and wait until nothing of it is left (its server, its delivery
    // worker and any attempt in flight all hold the service), so only the restarted node
    // can deliver from here on.
    let gone = Arc::downgrade(&first.tessera);
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    while gone.strong_count() > 0 {
        assert!(Instant::now() < deadline, "the first node did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = receiver.hits();
    assert!(!refused.is_empty());
    receiver.refuse(false);

    let second = support::start_node(
        &database,
        &settings,
        MasterKey::from_base64(KEY).unwrap(),
        None,
    )
    .await;
    let hits = receiver
        .wait_for(refused.len() + 1, Duration::from_secs(10))
        .await;
    let delivered = &hits[refused.len()];
    assert!(delivered.signed);
    assert_eq!(delivered.body["type"], "session.created");
    assert_eq!(
        delivered.body["data"]["session_id"],
        browser.body["session"]["id"]
    );
    assert_eq!(
        delivered.body["id"], refused[0].body["id"],
        "the same event"
    );
    // Delivered: the queue is empty (the next poll finds nothing to send).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !waiting_for(&second, &url).await.is_empty() {
        assert!(Instant::now() < deadline, "delivery not recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(receiver.hits().len(), refused.len() + 1);
}

#[tokio::test]
async fn a_refused_connection_is_recorded_without_the_url() {
    // Nothing can listen on port 0, so this connection is refused without any port being
    // reserved for the test.
    let url = "http://127.0.0.1:0/hook";
    let server = support::start(&webhook_settings(url, &["session.created"])).await;
    server.browser().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let waiting = waiting_for(&server, url).await;
        if let Some((attempts, error)) = waiting.first() {
            if *attempts >= 1 {
                let error = error.as_deref().unwrap();
                assert!(error.starts_with("connection failed"), "{error}");
                assert!(!error.contains("127.0.0.1"), "no URL in errors: {error}");
                break;
            }
        }
        assert!(Instant::now() < deadline, "no failed attempt recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Rotates the pair's refresh token twice, then presents the first one again: theft, so the
/// family is revoked. Returns the family's session id.
async fn reuse_refresh_token(server: &support::TestServer, pair: &Value) -> String {
    let first = pair["refresh_token"].as_str().unwrap();
    let second: Value = server.refresh(first).await.json().await.unwrap();
    let second = second["refresh_token"].as_str().unwrap();
    assert_eq!(server.refresh(second).await.status(), 200);
    assert_eq!(server.refresh(first).await.status(), 400);
    let claims = server
        .tessera
        .verify_token(pair["access_token"].as_str().unwrap())
        .await
        .unwrap();
    claims.sid
}

#[tokio::test]
async fn every_event_type_reaches_its_subscriber() {
    let (listener, url) = loopback().await;
    let receiver = Receiver::start(listener, 0);
    let events = [
        "session.created",
        "session.revoked",
        "user.signed_out_everywhere",
        "refresh.reuse_detected",
        "user.roles_changed",
    ];
    let server = support::start(&webhook_settings(&url, &events)).await;

    let (email, browser) = server.browser().await;
    let user_id = browser.body["user"]["id"].as_str().unwrap().to_owned();
    let pair = server.password_grant(&email).await;
    let token_session = reuse_refresh_token(&server, &pair).await;
    let (_, admin) = server
        .tessera
        .create_admin_key("ops", tessera_core::model::AdminScope::Admin)
        .await
        .unwrap();
    let res = server
        .client
        .put(server.url(&format!("/v1/admin/users/{user_id}/roles")))
        .bearer_auth(admin.expose_secret())
        .json(&json!({ "roles": ["editor"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = server
        .client
        .post(server.url("/v1/logout?everywhere=true"))
        .header(COOKIE, &browser.cookie)
        .header("x-csrf-token", &browser.csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);

    // Two sign-ins; reuse (with its revocation); roles; sign-out everywhere (with the one
    // session still alive).
    let hits = receiver.wait_for(7, Duration::from_secs(10)).await;
    let of_type = |kind: &str| -> Vec<Value> {
        hits.iter()
            .filter(|h| h.body["type"] == kind)
            .map(|h| h.body["data"].clone())
            .collect()
    };
    assert!(hits.iter().all(|h| h.signed));
    assert!(hits
        .iter()
        .all(|h| h.body["data"]["user_id"] == user_id.as_str()));
    let created = of_type("session.created");
    let vias: Vec<&str> = created.iter().map(|d| d["via"].as_str().unwrap()).collect();
    assert_eq!(vias.len(), 2);
    assert!(
        vias.contains(&"cookie") && vias.contains(&"token"),
        "{vias:?}"
    );
    assert_eq!(
        of_type("refresh.reuse_detected"),
        [json!({ "user_id": user_id, "session_id": token_session })]
    );
    let mut revoked: Vec<(String, String)> = of_type("session.revoked")
        .iter()
        .map(|d| {
            (
                d["session_id"].as_str().unwrap().to_owned(),
                d["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    revoked.sort();
    let mut expected = vec![
        (token_session.clone(), "refresh_reuse_detected".to_owned()),
        (
            browser.body["session"]["id"].as_str().unwrap().to_owned(),
            "signed_out_everywhere".to_owned(),
        ),
    ];
    expected.sort();
    assert_eq!(revoked, expected);
    assert_eq!(
        of_type("user.roles_changed"),
        [json!({ "user_id": user_id, "roles": ["editor"] })]
    );
    assert_eq!(
        of_type("user.signed_out_everywhere"),
        [json!({ "user_id": user_id, "sessions_revoked": 1 })]
    );
    // Nothing secret travels: no cookie, token or password in any body.
    let bodies = serde_json::to_string(&hits.iter().map(|h| &h.body).collect::<Vec<_>>()).unwrap();
    let cookie_value = browser.cookie.split_once('=').unwrap().1;
    for secret in [
        cookie_value,
        pair["refresh_token"].as_str().unwrap(),
        pair["access_token"].as_str().unwrap(),
        support::PASSWORD,
    ] {
        assert!(!bodies.contains(secret));
    }
}

#[tokio::test]
async fn a_message_for_an_endpoint_no_longer_configured_is_given_up() {
    use tessera_core::webhooks::{EventType, Webhook, WebhookSecret};

    let server = support::start("").await;
    let (_, browser) = server.browser().await;
    let user =
        tessera_core::model::UserId::parse(browser.body["user"]["id"].as_str().unwrap()).unwrap();
    let gone = Webhook {
        url: "http://127.0.0.1:9/removed".to_owned(),
        secret: WebhookSecret::new("old".to_owned()),
        events: EventType::ALL.to_vec(),
    };
    // One message queued an hour ago (before the endpoint was removed), one just now (perhaps
    // by a node that still has it: left for that node for a while).
    let long_ago = Timestamp::from_unix(Timestamp::now().as_unix() - 3_600);
    let old = tessera_core::webhooks::signed_out_everywhere(
        std::slice::from_ref(&gone),
        user,
        0,
        long_ago,
    );
    let new = tessera_core::webhooks::signed_out_everywhere(&[gone], user, 0, Timestamp::now());
    let store = &server.store;
    let mut tx = store.begin().await.unwrap();
    tx.enqueue(&old).await.unwrap();
    tx.enqueue(&new).await.unwrap();
    tx.commit().await.unwrap();

    let worker = webhooks::Worker::new(Arc::clone(&server.tessera)).unwrap();
    assert_eq!(worker.deliver_due().await.unwrap(), 0, "nothing sent");
    let waiting = store
        .due_messages(Timestamp::from_unix(i64::MAX / 2), 10_000)
        .await
        .unwrap();
    let ids: Vec<_> = waiting.iter().map(|q| q.message.id).collect();
    assert!(!ids.contains(&old[0].id), "given up");
    assert!(ids.contains(&new[0].id), "still waiting");
    assert!(
        store
            .due_messages(Timestamp::now(), 10_000)
            .await
            .unwrap()
            .is_empty(),
        "and not due again at once"
    );
    assert!(!store
        .mark_delivered(old[0].id, Timestamp::now())
        .await
        .unwrap());
}
