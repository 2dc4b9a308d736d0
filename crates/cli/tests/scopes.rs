#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! API key scopes through the real binary (SPEC §4): `tessera admin-key create --scope …`
//! makes keys that a running server honours, each for its routes only.

mod support;

use serde_json::Value;
use support::{create_admin_key, grant, run, serve, sign_up, tessera, Server};

/// The statuses `key` gets from introspection, an admin route and the revocation stream.
async fn statuses(
    client: &reqwest::Client,
    server: &Server,
    key: &str,
    user: &str,
    token: &str,
) -> [u16; 3] {
    let introspect = client
        .post(server.url("/oauth2/introspect"))
        .bearer_auth(key)
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    let introspect_status = introspect.status().as_u16();
    if introspect_status == 200 {
        assert_eq!(introspect.json::<Value>().await.unwrap()["active"], true);
    }
    let admin = client
        .get(server.url(&format!("/v1/admin/users/{user}/sessions")))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    // Only the status line and headers: the stream itself never ends.
    let stream = client
        .get(server.url("/v1/revocations"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let stream_status = stream.status().as_u16();
    if stream_status == 200 {
        assert_eq!(stream.headers()["content-type"], "text/event-stream");
    }
    [introspect_status, admin, stream_status]
}

#[tokio::test]
async fn each_scope_opens_its_routes_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path()).await;
    let client = reqwest::Client::new();
    let email = "scopes@example.com";
    let user = sign_up(&client, &server, email).await;
    let (access, _) = grant(&client, &server, email).await;

    let (_, introspect) = create_admin_key(dir.path(), &["--scope", "introspect"]);
    let (_, revocations) = create_admin_key(dir.path(), &["--scope", "revocations"]);
    let (_, admin) = create_admin_key(dir.path(), &["--scope", "admin"]);
    let (_, default) = create_admin_key(dir.path(), &[]);

    assert_eq!(
        statuses(&client, &server, &introspect, &user, &access).await,
        [200, 403, 403],
        "introspect key"
    );
    assert_eq!(
        statuses(&client, &server, &revocations, &user, &access).await,
        [403, 403, 200],
        "revocations key"
    );
    assert_eq!(
        statuses(&client, &server, &admin, &user, &access).await,
        [200, 200, 200],
        "admin key"
    );
    assert_eq!(
        statuses(&client, &server, &default, &user, &access).await,
        [200, 200, 200],
        "a key created without --scope is an admin key"
    );
}

#[test]
fn admin_key_create_names_the_scope_and_prints_the_key_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut create = tessera(dir.path());
    create.args([
        "admin-key",
        "create",
        "--name",
        "gateway",
        "--scope",
        "revocations",
    ]);
    let output = run(create, "");
    assert!(output.status.success());
    let out = String::from_utf8(output.stdout).unwrap();
    assert_eq!(out.lines().count(), 1, "{out}");
    assert_eq!(out.trim().len(), 43);
    let err = String::from_utf8(output.stderr).unwrap();
    assert!(err.contains("scope revocations"), "{err}");
}

#[test]
fn a_bad_scope_is_one_clear_line_and_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let mut create = tessera(dir.path());
    create.args(["admin-key", "create", "--scope", "root"]);
    let output = run(create, "");
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "no key is printed");
    let err = String::from_utf8(output.stderr).unwrap();
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--scope"), "{err}");
    assert!(err.contains("root"), "{err}");
    assert!(
        err.contains("introspect"),
        "the line names the valid scopes: {err}"
    );
}
