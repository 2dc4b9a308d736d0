//! The example resource server (`examples/resource-server`, on `tessera-verify`) against a
//! real `tessera serve`: revocations made on Tessera reach it within a second, a key rotation
//! needs no restart, and Tessera going down leaves valid tokens verifying until the staleness
//! bound, then 503.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;
use tessera_verify::remote::{ApiKey, Refusal, Remote};

/// The loose bound the acceptance asks for; the stream pushes within milliseconds.
const REVOCATION_BOUND: Duration = Duration::from_secs(1);

/// A TCP relay standing for Tessera's stable address: a restarted `tessera serve` gets a new
/// port, and the relay is pointed at it, as a load balancer would be.
struct Relay {
    base: String,
    upstream: Arc<std::sync::Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(server: &Server) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let upstream = Arc::new(std::sync::Mutex::new(String::new()));
        let target = Arc::clone(&upstream);
        let task = tokio::spawn(async move {
            loop {
                let (mut inbound, _) = listener.accept().await.unwrap();
                let address = target.lock().unwrap().clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(address).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        let relay = Self {
            base,
            upstream,
            task,
        };
        relay.point_at(server);
        relay
    }

    fn point_at(&self, server: &Server) {
        server
            .base
            .trim_start_matches("http://")
            .clone_into(&mut self.upstream.lock().unwrap());
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Service {
    base: String,
    remote: Arc<Remote>,
    relay: Relay,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Service {
    async fn start(server: &Server, dir: &std::path::Path, max_staleness: Duration) -> Self {
        let (_, key) = create_admin_key(dir, &["--scope", "revocations"]);
        let relay = Relay::start(server).await;
        let remote = resource_server::remote(resource_server::Settings {
            tessera_url: relay.base.clone(),
            issuer: Some(ISSUER.to_owned()),
            audience: "tessera".to_owned(),
            revocations_key: ApiKey::new(key),
            max_staleness,
            introspect_key: None,
        })
        .await
        .unwrap();
        assert!(
            remote.is_fresh(),
            "caught up with the revocation stream at start"
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = resource_server::app(Arc::clone(&remote));
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            base,
            remote,
            relay,
            task,
        }
    }

    async fn status(&self, client: &reqwest::Client, path: &str, token: &str) -> u16 {
        client
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

/// How long after `acknowledged` the service first refuses `token` on `/me`; fails past the
/// bound.
async fn refused_within(
    client: &reqwest::Client,
    service: &Service,
    token: &str,
    acknowledged: Instant,
    what: &str,
) -> Duration {
    loop {
        let status = service.status(client, "/me", token).await;
        if status == 401 {
            let lag = acknowledged.elapsed();
            assert!(lag < REVOCATION_BOUND, "{what}: refused only after {lag:?}");
            eprintln!("{what}: refused {lag:?} after Tessera answered");
            return lag;
        }
        assert_eq!(status, 200, "{what}");
        assert!(
            acknowledged.elapsed() < REVOCATION_BOUND,
            "{what}: still accepted after {REVOCATION_BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn logout_admin_revoke_and_password_change_are_refused_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path()).await;
    let service = Service::start(&server, dir.path(), Duration::from_secs(15)).await;
    let client = reqwest::Client::new();
    let (_, admin) = create_admin_key(dir.path(), &[]);

    // Sign-out of the device: the session is revoked.
    let email = "logout@example.com";
    sign_up(&client, &server, email).await;
    let (token, _) = grant(&client, &server, email).await;
    assert_eq!(service.status(&client, "/me", &token).await, 200);
    assert_eq!(service.status(&client, "/notes", &token).await, 200);
    let res = client
        .post(server.url("/v1/logout"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    refused_within(&client, &service, &token, Instant::now(), "logout").await;
    assert_eq!(
        service.status(&client, "/notes", &token).await,
        401,
        "the layer too"
    );

    // An administrator revokes one session.
    let email = "admin-revoke@example.com";
    sign_up(&client, &server, email).await;
    let (token, _) = grant(&client, &server, email).await;
    let (_, claims) = tessera_verify::inspect(&token).unwrap();
    let sid = claims["sid"].as_str().unwrap();
    assert_eq!(service.status(&client, "/me", &token).await, 200);
    let res = client
        .delete(server.url(&format!("/v1/admin/sessions/{sid}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    refused_within(&client, &service, &token, Instant::now(), "admin revoke").await;

    // A password change bumps the user's epoch: the token of the very session that changed
    // it (which stays signed in) is refused by the epoch alone.
    let email = "password@example.com";
    sign_up(&client, &server, email).await;
    let (token, _) = grant(&client, &server, email).await;
    assert_eq!(service.status(&client, "/me", &token).await, 200);
    let res = client
        .post(server.url("/v1/password"))
        .bearer_auth(&token)
        .json(&json!({ "current_password": PASSWORD, "new_password": "a whole new passphrase" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    refused_within(&client, &service, &token, Instant::now(), "password change").await;

    // Bad input is a 401 in our shape, never a 500.
    for bad in ["", "garbage", "a.b.c"] {
        assert_eq!(service.status(&client, "/me", bad).await, 401, "{bad:?}");
    }
    let res = client
        .get(format!("{}/me", service.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "unauthenticated");
}

#[tokio::test]
async fn a_key_rotation_needs_no_restart_and_a_withdrawn_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path()).await;
    let service = Service::start(&server, dir.path(), Duration::from_secs(15)).await;
    let client = reqwest::Client::new();
    let email = "rotation@example.com";
    sign_up(&client, &server, email).await;
    let (old_token, _) = grant(&client, &server, email).await;
    let old_kid = published_kids(&client, &server).await.remove(0);
    assert_eq!(service.remote.kids(), std::slice::from_ref(&old_kid));
    assert_eq!(service.status(&client, "/me", &old_token).await, 200);

    let mut rotate = tessera(dir.path());
    rotate.args(["keys", "rotate"]);
    let new_kid = stdout(&run(rotate, "")).trim().to_owned();
    let mut retire = tessera(dir.path());
    retire.args(["keys", "retire", &old_kid]);
    let output = run(retire, "");
    assert!(output.status.success(), "{output:?}");

    // The withdrawal travels on the revocation stream and makes the service refetch the JWK
    // set: the old key's token stops verifying.
    eventually(
        "the withdrawn key's token",
        401,
        Duration::from_secs(5),
        || service.status(&client, "/me", &old_token),
    )
    .await;
    assert!(!service.remote.kids().contains(&old_kid));

    // A token of the new key verifies, without restarting the service.
    let (client, server, service, new_kid) = (&client, &server, &service, new_kid.as_str());
    // (Tessera signs with the new key once it has reloaded its key ring; the service fetches
    // the JWK set again on the first token naming it, then at most every 10 s.)
    eventually(
        "a token of the new key",
        200,
        Duration::from_secs(15),
        move || async move {
            let (token, _) = grant(client, server, email).await;
            let (header, _) = tessera_verify::inspect(&token).unwrap();
            if header.kid.as_deref() != Some(new_kid) {
                return 0;
            }
            service.status(client, "/me", &token).await
        },
    )
    .await;
}

#[tokio::test]
async fn tessera_down_keeps_valid_tokens_until_the_staleness_bound_then_503() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(dir.path()).await;
    // Above the stream's 5 s heartbeat, as any bound must be.
    let bound = Duration::from_secs(8);
    let service = Service::start(&server, dir.path(), bound).await;
    let client = reqwest::Client::new();
    let email = "down@example.com";
    sign_up(&client, &server, email).await;
    let (token, _) = grant(&client, &server, email).await;
    let (revoked, _) = grant(&client, &server, email).await;
    revoke(&client, &server, &revoked).await;
    eventually("the revoked token", 401, REVOCATION_BOUND, || {
        service.status(&client, "/me", &revoked)
    })
    .await;

    server.kill();
    let killed = Instant::now();
    // Within the bound: the keys and revocations held still decide.
    assert_eq!(service.status(&client, "/me", &token).await, 200);
    assert_eq!(service.status(&client, "/me", &revoked).await, 401);
    // The last heartbeat came at most 5 s before the kill: fresh for 3 s more at least.
    while killed.elapsed() < Duration::from_millis(2_500) {
        assert_eq!(service.status(&client, "/me", &token).await, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Past it (nothing can have been heard after the kill): refused, as 503.
    tokio::time::sleep((bound + Duration::from_millis(500)).saturating_sub(killed.elapsed())).await;
    let res = client
        .get(format!("{}/me", service.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "unavailable");
    assert!(!service.remote.is_fresh());

    // Tessera back (on another port, behind the same address): the service reconnects,
    // follows the stream again and accepts the token, still refusing the revoked one.
    let server = serve(dir.path()).await;
    service.relay.point_at(&server);
    eventually(
        "after Tessera is back",
        200,
        Duration::from_secs(15),
        || service.status(&client, "/me", &token),
    )
    .await;
    assert_eq!(service.status(&client, "/me", &revoked).await, 401);
}

#[tokio::test]
async fn without_the_stream_the_introspect_policy_asks_tessera_and_refuse_answers_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path()).await;
    let client = reqwest::Client::new();
    // A key without the `revocations` scope: the stream answers 403, so the service never
    // has a fresh revocation state and its stale policy decides every token.
    let (_, introspect_only) = create_admin_key(dir.path(), &["--scope", "introspect"]);
    let settings = resource_server::Settings {
        tessera_url: server.base.clone(),
        issuer: Some(ISSUER.to_owned()),
        audience: "tessera".to_owned(),
        revocations_key: ApiKey::new(introspect_only.clone()),
        max_staleness: Duration::from_secs(8),
        introspect_key: Some(ApiKey::new(introspect_only)),
    };
    let introspecting = resource_server::remote(settings.clone()).await.unwrap();
    assert!(!introspecting.is_fresh());
    let email = "introspect@example.com";
    sign_up(&client, &server, email).await;
    let (token, _) = grant(&client, &server, email).await;
    let (revoked, _) = grant(&client, &server, email).await;
    revoke(&client, &server, &revoked).await;
    assert!(introspecting.verify(&token).await.is_ok());
    assert_eq!(
        introspecting.verify(&revoked).await.unwrap_err(),
        Refusal::Inactive,
        "introspection knows of the revocation the service could not hear"
    );

    let refusing = resource_server::remote(resource_server::Settings {
        introspect_key: None,
        ..settings
    })
    .await
    .unwrap();
    assert_eq!(
        refusing.verify(&token).await.unwrap_err(),
        Refusal::Unavailable,
        "never a silent yes"
    );
}
