#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! API key scopes over real HTTP (SPEC §3, §4): an `introspect` key introspects and nothing
//! else, a `revocations` key opens the revocation stream and nothing else, an `admin` key does
//! everything. A live key without the scope gets 403 `insufficient_scope` (RFC 6750 §3.1); no
//! valid key at all stays 401 with a challenge.

mod support;

use std::time::Duration;

use reqwest::Response;
use serde_json::Value;
use support::{start_sqlite, TestServer};
use tessera_core::model::AdminScope;

async fn key(server: &TestServer, scope: AdminScope) -> String {
    let (key, secret) = server
        .tessera
        .create_admin_key("resource server", scope)
        .await
        .unwrap();
    assert_eq!(key.scope, scope);
    secret.expose_secret().to_owned()
}

async fn introspect(server: &TestServer, key: &str, token: &str) -> Response {
    server
        .client
        .post(server.url("/oauth2/introspect"))
        .bearer_auth(key)
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
}

async fn admin_sessions(server: &TestServer, key: &str, user: &str) -> Response {
    server
        .client
        .get(server.url(&format!("/v1/admin/users/{user}/sessions")))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

async fn set_roles(server: &TestServer, key: &str, user: &str) -> Response {
    server
        .client
        .put(server.url(&format!("/v1/admin/users/{user}/roles")))
        .bearer_auth(key)
        .json(&serde_json::json!({ "roles": ["editor"] }))
        .send()
        .await
        .unwrap()
}

async fn open_stream(server: &TestServer, key: &str) -> Response {
    server
        .client
        .get(server.url("/v1/revocations"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

/// 403 `insufficient_scope` naming `scope`, in the API's shape or RFC 6749's.
async fn assert_insufficient(res: Response, scope: &str) {
    assert_eq!(res.status(), 403);
    let challenge = res.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        challenge,
        format!("Bearer error=\"insufficient_scope\", scope=\"{scope}\"")
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "insufficient_scope");
}

/// Reads the stream until a whole event of `kind` has arrived: its `id` and its `data` as JSON.
async fn next_event(res: &mut Response, kind: &str) -> (String, Value) {
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let chunk = res.chunk().await.unwrap().expect("the stream ended");
            text.push_str(std::str::from_utf8(&chunk).unwrap());
            // Only blocks ended by a blank line are complete.
            let complete = text.rsplit_once("\n\n").map_or("", |(done, _)| done);
            let event = complete
                .split("\n\n")
                .find(|block| block.lines().any(|l| l == format!("event: {kind}")));
            if let Some(block) = event {
                let field = |name: &str| {
                    block
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .unwrap()
                        .to_owned()
                };
                return (
                    field("id: "),
                    serde_json::from_str(&field("data: ")).unwrap(),
                );
            }
        }
    })
    .await
    .expect("no event within 10 s")
}

#[tokio::test]
async fn an_introspect_key_introspects_and_nothing_else() {
    let server = start_sqlite("").await;
    let key = key(&server, AdminScope::Introspect).await;
    let (_, pair) = server.user_with_tokens().await;
    let access = pair["access_token"].as_str().unwrap();
    let user = server
        .tessera
        .introspect(access)
        .await
        .unwrap()
        .unwrap()
        .sub;

    let res = introspect(&server, &key, access).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["active"], true);

    assert_insufficient(admin_sessions(&server, &key, &user).await, "admin").await;
    assert_insufficient(set_roles(&server, &key, &user).await, "admin").await;
    assert_insufficient(open_stream(&server, &key).await, "revocations").await;
    // The refused role change changed nothing.
    let user_id = tessera_core::model::UserId::parse(&user).unwrap();
    assert!(server.tessera.user(user_id).await.unwrap().roles.is_empty());
}

#[tokio::test]
async fn a_revocations_key_follows_the_stream_and_cannot_introspect() {
    let server = start_sqlite("").await;
    let key = key(&server, AdminScope::Revocations).await;
    let (_, pair) = server.user_with_tokens().await;
    let access = pair["access_token"].as_str().unwrap();
    let claims = server.tessera.introspect(access).await.unwrap().unwrap();

    let res = introspect(&server, &key, access).await;
    assert_insufficient(res, "introspect").await;
    let res = admin_sessions(&server, &key, &claims.sub).await;
    assert_insufficient(res, "admin").await;

    let mut stream = open_stream(&server, &key).await;
    assert_eq!(stream.status(), 200);
    assert_eq!(
        stream.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    // Revoked after the stream opened: it arrives live.
    server.revoke_token(access).await;
    let (_, event) = next_event(&mut stream, "jti_denied").await;
    assert_eq!(event["jti"], claims.jti.as_str());
}

#[tokio::test]
async fn an_admin_key_has_every_scope() {
    let server = start_sqlite("").await;
    let key = key(&server, AdminScope::Admin).await;
    let (_, pair) = server.user_with_tokens().await;
    let access = pair["access_token"].as_str().unwrap();
    let claims = server.tessera.introspect(access).await.unwrap().unwrap();

    let res = introspect(&server, &key, access).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["active"], true);
    let res = admin_sessions(&server, &key, &claims.sub).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap().as_array().unwrap().len(),
        1
    );
    assert_eq!(set_roles(&server, &key, &claims.sub).await.status(), 200);

    // The role change above bumped the user's epoch before the stream opened: a stream
    // starting from the beginning replays it.
    let mut stream = open_stream(&server, &key).await;
    assert_eq!(stream.status(), 200);
    let (_, event) = next_event(&mut stream, "epoch_bumped").await;
    assert_eq!(event["user"], claims.sub.as_str());
}

#[tokio::test]
async fn without_a_valid_key_every_scoped_route_is_401() {
    let server = start_sqlite("").await;
    let revoked = key(&server, AdminScope::Admin).await;
    let id = server
        .tessera
        .authenticate_admin(
            &tessera_core::secret::AdminSecret::from_presented(&revoked),
            AdminScope::Admin,
        )
        .await
        .unwrap()
        .id;
    server.tessera.revoke_admin_key(id).await.unwrap();
    let (_, pair) = server.user_with_tokens().await;
    let access = pair["access_token"].as_str().unwrap().to_owned();
    let user = server
        .tessera
        .introspect(&access)
        .await
        .unwrap()
        .unwrap()
        .sub;

    // No key, a revoked key, and a user's access token.
    for credential in ["", revoked.as_str(), access.as_str()] {
        for res in [
            introspect(&server, credential, &access).await,
            admin_sessions(&server, credential, &user).await,
            open_stream(&server, credential).await,
        ] {
            assert_eq!(res.status(), 401, "{}", res.url());
            assert!(res.headers().get("www-authenticate").is_some());
        }
    }
}

/// A stream resumes after the last event it saw (`Last-Event-ID`, or `?after=`), and a
/// position that is not a number is a 400, not a stream from the start.
#[tokio::test]
async fn the_stream_resumes_after_the_last_event_id() {
    let server = start_sqlite("").await;
    let key = key(&server, AdminScope::Revocations).await;
    let (_, first) = server.user_with_tokens().await;
    let (_, second) = server.user_with_tokens().await;
    let first = first["access_token"].as_str().unwrap();
    let second = second["access_token"].as_str().unwrap();
    let first_jti = server.tessera.introspect(first).await.unwrap().unwrap().jti;
    let second_jti = server
        .tessera
        .introspect(second)
        .await
        .unwrap()
        .unwrap()
        .jti;
    server.revoke_token(first).await;
    server.revoke_token(second).await;

    let mut stream = open_stream(&server, &key).await;
    let (first_id, event) = next_event(&mut stream, "jti_denied").await;
    assert_eq!(event["jti"], first_jti.as_str());
    drop(stream);

    let mut resumed = server
        .client
        .get(server.url("/v1/revocations"))
        .bearer_auth(&key)
        .header("last-event-id", &first_id)
        .send()
        .await
        .unwrap();
    let (second_id, event) = next_event(&mut resumed, "jti_denied").await;
    assert_eq!(event["jti"], second_jti.as_str());
    assert!(second_id.parse::<u64>().unwrap() > first_id.parse::<u64>().unwrap());

    let res = server
        .client
        .get(server.url("/v1/revocations?after=soon"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(support::error_code(res).await, "invalid_request");
}

/// Shutdown ends open streams rather than waiting out the drain bound on subscribers that
/// never hang up.
#[tokio::test]
async fn an_open_stream_does_not_hold_up_shutdown() {
    let mut server = start_sqlite("").await;
    let key = key(&server, AdminScope::Revocations).await;
    let mut stream = open_stream(&server, &key).await;
    assert_eq!(stream.status(), 200);

    let started = std::time::Instant::now();
    server.stop().await;
    assert!(
        started.elapsed() < tessera_server::DRAIN_BOUND / 2,
        "shutdown took {:?}",
        started.elapsed()
    );
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream is still open after shutdown");
}

/// The backlog, then one `: caught-up` comment (an addition to SPEC §3, so a subscriber knows
/// its state is complete), then live entries, pushed as they commit rather than at the next
/// 200 ms poll.
#[tokio::test]
async fn the_stream_marks_the_end_of_its_backlog_and_pushes_new_entries() {
    let server = start_sqlite("").await;
    let key = key(&server, AdminScope::Revocations).await;
    let (_, old) = server.user_with_tokens().await;
    server
        .revoke_token(old["access_token"].as_str().unwrap())
        .await;
    let mut stream = open_stream(&server, &key).await;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !text.contains(": caught-up\n\n") {
            let chunk = stream.chunk().await.unwrap().expect("the stream ended");
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    })
    .await
    .expect("no caught-up comment within 10 s");
    let (backlog, _) = text.split_once(": caught-up").unwrap();
    assert!(
        backlog.contains("event: jti_denied"),
        "the backlog first: {text}"
    );

    let mut lags = Vec::new();
    for _ in 0..9 {
        let (_, pair) = server.user_with_tokens().await;
        let started = std::time::Instant::now();
        server
            .revoke_token(pair["access_token"].as_str().unwrap())
            .await;
        next_event(&mut stream, "jti_denied").await;
        lags.push(started.elapsed());
    }
    lags.sort();
    // Polling every 200 ms would put the median near 100 ms.
    assert!(
        lags[4] < Duration::from_millis(50),
        "pushed, not polled: {lags:?}"
    );
}
