//! The guessing limits as an operator meets them, through the real binary: every failed login
//! in the log (account, client address, reason, never the password), and `tessera user unlock`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::json;
use support::*;

const WRONG: &str = "a-wrong-guess-7731";

async fn attempt(client: &reqwest::Client, server: &Server, email: &str, password: &str) -> u16 {
    client
        .post(server.url("/v1/login"))
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn every_failed_login_is_logged_with_account_address_and_reason_never_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--issuer", ISSUER, "--login-max-failures", "2"];
    let server = serve_with(dir.path(), "warn", &args).await;
    let client = reqwest::Client::new();
    let known = "logged@example.com";
    let id = sign_up(&client, &server, known).await;
    let unknown = "nobody-here@example.com";

    assert_eq!(attempt(&client, &server, known, WRONG).await, 401);
    assert_eq!(attempt(&client, &server, unknown, WRONG).await, 401);
    assert_eq!(attempt(&client, &server, known, WRONG).await, 401);
    assert_eq!(attempt(&client, &server, known, PASSWORD).await, 429);

    let log = server.log();
    let failures: Vec<&str> = log.lines().filter(|l| l.contains("login failed")).collect();
    assert_eq!(failures.len(), 4, "{log}");
    let with = |needles: &[&str]| {
        failures
            .iter()
            .filter(|line| needles.iter().all(|n| line.contains(n)))
            .count()
    };
    let user = format!("user={id}");
    assert_eq!(with(&[&user, "client=127.0.0.1", "wrong password"]), 2);
    assert_eq!(
        with(&["user=unknown", "client=127.0.0.1", "unknown account"]),
        1
    );
    assert_eq!(with(&[&user, "client=127.0.0.1", "too many attempts"]), 1);
    assert!(log.contains("account locked"), "{log}");
    // Neither the passwords nor the address typed for an unknown account.
    for secret in [WRONG, PASSWORD, unknown] {
        assert!(!log.contains(secret), "the log holds {secret}:\n{log}");
    }
}

#[tokio::test]
async fn user_unlock_clears_the_lock_for_every_node_on_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--issuer", ISSUER, "--login-max-failures", "2"];
    let server = serve_with(dir.path(), "warn", &args).await;
    let client = reqwest::Client::new();
    let email = "locked-out@example.com";
    let id = sign_up(&client, &server, email).await;
    for _ in 0..2 {
        assert_eq!(attempt(&client, &server, email, WRONG).await, 401);
    }
    assert_eq!(attempt(&client, &server, email, PASSWORD).await, 429);

    let mut unlock = tessera(dir.path());
    unlock.args(["user", "unlock", "Locked-Out@Example.com"]);
    assert_eq!(stdout(&run(unlock, "")).trim(), id);
    assert_eq!(attempt(&client, &server, email, PASSWORD).await, 200);

    let mut unknown = tessera(dir.path());
    unknown.args(["user", "unlock", "nobody@example.com"]);
    let output = run(unknown, "");
    assert!(!output.status.success());
    let error = String::from_utf8(output.stderr).unwrap();
    assert_eq!(error.trim().lines().count(), 1, "{error}");
    assert!(
        error.contains("no user with email nobody@example.com"),
        "{error}"
    );
}
