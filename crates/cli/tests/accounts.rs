//! `tessera user delete` as an operator meets it, through the real binary, beside a running
//! server on the same database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use support::*;

#[tokio::test]
async fn user_delete_signs_the_user_out_of_the_running_server_and_names_what_it_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_with(dir.path(), "warn", &["--issuer", ISSUER]).await;
    let client = reqwest::Client::new();
    let email = "leaving@example.com";
    let id = sign_up(&client, &server, email).await;
    let browser = login(&client, &server, email).await;
    let (access, refresh_token) = grant(&client, &server, email).await;
    assert_eq!(verify_bearer(&client, &server, &access).await, 200);
    assert_eq!(verify_cookie(&client, &server, &browser.cookie).await, 200);

    let mut delete = tessera(dir.path());
    delete.args(["user", "delete", "Leaving@Example.com"]);
    let out = stdout(&run(delete, ""));
    assert_eq!(out.lines().count(), 1, "{out}");
    assert_eq!(out.trim(), format!("deleted user {id} ({email})"));

    // The server hears of it through the revocation log.
    let within = Duration::from_secs(10);
    eventually("the deleted user's token", 401, within, || {
        verify_bearer(&client, &server, &access)
    })
    .await;
    eventually("the deleted user's cookie", 401, within, || {
        verify_cookie(&client, &server, &browser.cookie)
    })
    .await;
    assert_eq!(
        refresh(&client, &server, &refresh_token).await.status(),
        400
    );

    // Deleting again, or someone unknown, fails with one line and a non-zero exit.
    for who in [email, "nobody@example.com"] {
        let mut unknown = tessera(dir.path());
        unknown.args(["user", "delete", who]);
        let output = run(unknown, "");
        assert!(!output.status.success());
        let error = String::from_utf8(output.stderr).unwrap();
        assert_eq!(error.trim().lines().count(), 1, "{error}");
        assert!(
            error.contains(&format!("no user with email {who}")),
            "{error}"
        );
    }
}
