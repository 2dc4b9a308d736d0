//! `tessera user recovery-link`: an operator's recovery link, for installations without mail,
//! through the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::json;
use support::*;

const NEW_PASSWORD: &str = "an operator-given passphrase";

#[tokio::test]
async fn an_operator_s_recovery_link_resets_the_password_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_with(dir.path(), "warn", &["--issuer", ISSUER]).await;
    let client = reqwest::Client::new();
    let email = "forgetful@example.com";
    sign_up(&client, &server, email).await;

    let mut command = tessera(dir.path());
    // Links point at `public_url`, read from the same configuration as `serve`'s.
    command.env("TESSERA_PUBLIC_URL", ISSUER);
    command.args(["user", "recovery-link", "Forgetful@Example.com"]);
    let link = stdout(&run(command, "")).trim().to_owned();
    let prefix = format!("{ISSUER}/ui/recovery?token=");
    assert!(link.starts_with(&prefix), "{link}");
    let token = &link[prefix.len()..];
    assert_eq!(token.len(), 43, "{link}");

    let complete = || {
        client
            .post(server.url("/v1/recovery/complete"))
            .json(&json!({ "token": token, "new_password": NEW_PASSWORD }))
            .send()
    };
    assert_eq!(complete().await.unwrap().status(), 204);
    assert_eq!(complete().await.unwrap().status(), 400);
    let login = client
        .post(server.url("/v1/login"))
        .json(&json!({ "email": email, "password": NEW_PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    // No mail is configured, and the log never holds the link.
    assert!(!server.log().contains(token));

    let mut unknown = tessera(dir.path());
    unknown.args(["user", "recovery-link", "nobody@example.com"]);
    let output = run(unknown, "");
    assert!(!output.status.success());
    let error = String::from_utf8(output.stderr).unwrap();
    assert_eq!(error.trim().lines().count(), 1, "{error}");
    assert!(
        error.contains("no user with email nobody@example.com"),
        "{error}"
    );
}
