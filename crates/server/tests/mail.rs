//! Recovery by email and email verification (SPEC §3 "Account lifecycle"), end to end: real
//! mail over SMTP to a server inside the test, its link followed through the pages and the
//! JSON routes of the real router.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use reqwest::header::COOKIE;
use serde_json::{json, Value};
use support::smtp::{free_port, plain_url, SmtpSink};
use support::{error_code, eventually, start_sqlite, unique_email, TestServer, PASSWORD};
use tessera_core::model::{AdminScope, EmailToken, EmailTokenId, Timestamp, TokenPurpose};
use tessera_core::secret::SecretHash;

const NEW_PASSWORD: &str = "a brand new passphrase";
const RECOVERY: &str = "Reset your";
const VERIFICATION: &str = "Confirm your email";

/// One node with mail to `smtp_url` and `settings`; links point at the node itself.
async fn mailing_node(smtp_url: &str, settings: &str) -> TestServer {
    start_sqlite(&format!("smtp_url = \"{smtp_url}\"\n{settings}")).await
}

/// A node of a two-node cluster on `database`, issuer `http://tessera.test`.
async fn cluster_node(database: &str, smtp_url: &str) -> TestServer {
    let settings = format!("smtp_url = \"{smtp_url}\"\nsignup_ip_max = 1000\n");
    support::cluster_node(database, &settings).await
}

fn origin(server: &TestServer) -> String {
    server.config.allowed_origins[0].clone()
}

/// The `token` of a mailed link.
fn token_of(link: &str) -> String {
    link.split_once("token=").unwrap().1.to_owned()
}

async fn request_recovery(server: &TestServer, email: &str) -> reqwest::Response {
    server
        .client
        .post(server.url("/v1/recovery"))
        .json(&json!({ "email": email }))
        .send()
        .await
        .unwrap()
}

async fn complete_recovery(server: &TestServer, token: &str, password: &str) -> reqwest::Response {
    server
        .client
        .post(server.url("/v1/recovery/complete"))
        .json(&json!({ "token": token, "new_password": password }))
        .send()
        .await
        .unwrap()
}

async fn login_status(server: &TestServer, email: &str, password: &str) -> u16 {
    server
        .login_raw(email, password, reqwest::header::HeaderMap::new())
        .await
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mailed_recovery_link_sets_the_password_and_signs_out_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("cluster.db").display());
    recovery_signs_out_every_node(&database).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mailed_recovery_link_sets_the_password_and_signs_out_every_node_on_postgres() {
    let Some(fresh) = tessera_store::testing::FreshDatabase::for_test(
        "a_mailed_recovery_link_sets_the_password_and_signs_out_every_node_on_postgres",
    )
    .await
    else {
        return;
    };
    recovery_signs_out_every_node(fresh.url()).await;
}

/// Two nodes on `database`: a link mailed by one, followed on it, signs the user out of the
/// other; the JSON route does the same with a second link.
async fn recovery_signs_out_every_node(database: &str) {
    let sink = SmtpSink::start().await;
    let a = cluster_node(database, &sink.url()).await;
    let b = cluster_node(database, &sink.url()).await;
    let email = unique_email();
    a.sign_up(&email).await;
    let browser = b.login(&email).await;
    let pair = b.password_grant(&email).await;
    let access = pair["access_token"].as_str().unwrap().to_owned();
    let refresh = pair["refresh_token"].as_str().unwrap().to_owned();

    let res = request_recovery(&a, &email).await;
    assert_eq!(res.status(), 202);
    let mail = sink.wait_for(&email, RECOVERY, 0).await;
    let text = mail.decoded();
    assert!(
        text.contains("Tessera") && text.contains("30 minutes"),
        "{text}"
    );
    assert!(mail.raw.contains("text/html") && mail.raw.contains("text/plain"));
    let link = mail.link("http://tessera.test/ui/recovery?token=");
    let token = token_of(&link);
    assert_eq!(token.len(), 43, "256 bits in base64url: {link}");

    // The page the link opens, then its form: a weak password is refused beside its field
    // and leaves the link usable.
    let page = a
        .client
        .get(a.url(&format!("/ui/recovery?token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["cache-control"], "no-store");
    assert_eq!(page.headers()["referrer-policy"], "same-origin");
    let html = page.text().await.unwrap();
    assert!(html.contains("name=\"viewport\""), "{html}");
    assert!(html.contains("<label for=\"new_password\">"), "{html}");
    assert!(html.contains(&format!("value=\"{token}\"")), "{html}");
    let weak = a
        .client
        .post(a.url("/ui/recovery"))
        .header("origin", origin(&a))
        .form(&[("token", token.as_str()), ("new_password", "short")])
        .send()
        .await
        .unwrap();
    assert_eq!(weak.status(), 400);
    let html = weak.text().await.unwrap();
    assert!(
        html.contains("id=\"new_password-error\"") && html.contains("aria-invalid=\"true\""),
        "{html}"
    );
    // Without an Origin from the allowed list the form is refused.
    let foreign = a
        .client
        .post(a.url("/ui/recovery"))
        .header("origin", "https://evil.example")
        .form(&[("token", token.as_str()), ("new_password", NEW_PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);
    let done = a
        .client
        .post(a.url("/ui/recovery"))
        .header("origin", origin(&a))
        .form(&[("token", token.as_str()), ("new_password", NEW_PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);

    // Single use.
    let replay = complete_recovery(&a, &token, "yet another passphrase").await;
    assert_eq!(replay.status(), 400);
    assert_eq!(error_code(replay).await, "invalid_token");

    // Every session and family is gone, on the other node too.
    eventually("the cookie still works on the second node", || async {
        b.session_with_cookie(&browser.cookie).await.status() == 401
    })
    .await;
    eventually(
        "the access token still works on the second node",
        || async { b.verify_bearer(&access).await.status() == 401 },
    )
    .await;
    let refreshed = b.refresh(&refresh).await;
    assert_eq!(refreshed.status(), 400);
    assert_eq!(login_status(&b, &email, PASSWORD).await, 401);
    assert_eq!(login_status(&b, &email, NEW_PASSWORD).await, 200);

    // The JSON route, with a second link.
    assert_eq!(request_recovery(&b, &email).await.status(), 202);
    let second = sink.wait_for(&email, RECOVERY, 1).await;
    let token = token_of(&second.link("http://tessera.test/ui/recovery?token="));
    let weak = complete_recovery(&a, &token, "short").await;
    assert_eq!(error_code(weak).await, "weak_password");
    let res = complete_recovery(&a, &token, PASSWORD).await;
    assert_eq!(res.status(), 204);
    assert_eq!(login_status(&a, &email, PASSWORD).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn superseded_and_expired_links_are_refused() {
    let sink = SmtpSink::start().await;
    let server = mailing_node(&sink.url(), "").await;
    let email = unique_email();
    server.sign_up(&email).await;
    assert_eq!(request_recovery(&server, &email).await.status(), 202);
    let first = sink.wait_for(&email, RECOVERY, 0).await;
    assert_eq!(request_recovery(&server, &email).await.status(), 202);
    let second = sink.wait_for(&email, RECOVERY, 1).await;
    let prefix = format!("{}/ui/recovery?token=", server.base);
    let (first, second) = (
        token_of(&first.link(&prefix)),
        token_of(&second.link(&prefix)),
    );
    assert_ne!(first, second);
    let res = complete_recovery(&server, &first, NEW_PASSWORD).await;
    assert_eq!(error_code(res).await, "invalid_token");
    let page = server
        .client
        .get(server.url(&format!("/ui/recovery?token={first}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 400);

    // An expired link, stored as the sender stores one.
    let user = server.tessera.user_by_email(&email).await.unwrap();
    let expired = "an-expired-link-token-of-forty-three-chars";
    let mut tx = server.store.begin().await.unwrap();
    let now = Timestamp::now();
    tx.insert_email_token(&EmailToken {
        id: EmailTokenId::new(),
        user_id: user.id,
        purpose: TokenPurpose::Verification,
        hash: SecretHash::of(expired.as_bytes()),
        created_at: Timestamp::from_unix(now.as_unix() - 7200),
        expires_at: Timestamp::from_unix(now.as_unix() - 1),
        spent_at: None,
    })
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let res = server
        .client
        .post(server.url("/v1/verification/complete"))
        .json(&json!({ "token": expired }))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(res).await, "invalid_token");
    // A recovery token is no verification token, nor the reverse.
    let res = server
        .client
        .post(server.url("/v1/verification/complete"))
        .json(&json!({ "token": second }))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(res).await, "invalid_token");
    assert_eq!(
        complete_recovery(&server, &second, NEW_PASSWORD)
            .await
            .status(),
        204
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recovery_is_limited_per_address_with_429_and_per_account_silently() {
    let sink = SmtpSink::start().await;
    let server = mailing_node(&sink.url(), "signup_ip_max = 4\nrecovery_max = 2\n").await;
    let email = unique_email();
    server.sign_up(&email).await;
    sink.wait_for(&email, VERIFICATION, 0).await;
    // Per account: three requests answer alike, two mails go out.
    for _ in 0..3 {
        assert_eq!(request_recovery(&server, &email).await.status(), 202);
    }
    sink.wait_for(&email, RECOVERY, 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        sink.count_to(&email),
        3,
        "one verification and two recovery mails"
    );
    // Per address (the sign-up counted on its own limit): the fifth request is refused.
    assert_eq!(
        request_recovery(&server, &unique_email()).await.status(),
        202
    );
    let res = request_recovery(&server, &unique_email()).await;
    assert_eq!(res.status(), 429);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0 && retry <= 3600, "{retry}");
    assert_eq!(error_code(res).await, "too_many_attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unverified_address_is_refused_sign_in_until_its_link_is_followed() {
    let sink = SmtpSink::start().await;
    let server = mailing_node(&sink.url(), "require_verified_email = true\n").await;
    let email = unique_email();
    server.sign_up(&email).await;
    let mail = sink.wait_for(&email, VERIFICATION, 0).await;
    assert!(mail.decoded().contains("24 hours"));

    // The right password of an unverified account: 403; a wrong one stays a 401.
    let res = server
        .login_raw(&email, PASSWORD, reqwest::header::HeaderMap::new())
        .await;
    assert_eq!(res.status(), 403);
    assert_eq!(error_code(res).await, "email_not_verified");
    assert_eq!(login_status(&server, &email, "not the password").await, 401);
    let grant = server
        .client
        .post(server.url("/oauth2/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", email.as_str()),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(grant.status(), 403);
    let body: Value = grant.json().await.unwrap();
    assert_eq!(body["error"], "email_not_verified");

    // The link's page changes nothing on GET; its form verifies.
    let link = mail.link(&format!("{}/ui/verify?token=", server.base));
    let page = server.client.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("Confirm my address"));
    assert_eq!(login_status(&server, &email, PASSWORD).await, 403);
    let token = token_of(&link);
    let no_origin = server
        .client
        .post(server.url("/ui/verify"))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(no_origin.status(), 403);
    let done = server
        .client
        .post(server.url("/ui/verify"))
        .header("origin", origin(&server))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);

    let browser = server.login(&email).await;
    let session: Value = server
        .session_with_cookie(&browser.cookie)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(session["user"]["email_verified"], true);
    server.password_grant(&email).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resent_verification_link_supersedes_the_first_and_introspection_reports_it() {
    let sink = SmtpSink::start().await;
    let server = mailing_node(&sink.url(), "").await;
    let email = unique_email();
    server.sign_up(&email).await;
    let first = sink.wait_for(&email, VERIFICATION, 0).await;
    let browser = server.login(&email).await;
    let session: Value = server
        .session_with_cookie(&browser.cookie)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(session["user"]["email_verified"], false);

    // A cookie resend needs the CSRF token.
    let res = server
        .client
        .post(server.url("/v1/verification"))
        .header(COOKIE, &browser.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let res = server
        .client
        .post(server.url("/v1/verification"))
        .header(COOKIE, &browser.cookie)
        .header("x-csrf-token", &browser.csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let second = sink.wait_for(&email, VERIFICATION, 1).await;
    let prefix = format!("{}/ui/verify?token=", server.base);
    let complete = |token: String| {
        let server = &server;
        async move {
            server
                .client
                .post(server.url("/v1/verification/complete"))
                .json(&json!({ "token": token }))
                .send()
                .await
                .unwrap()
        }
    };
    let res = complete(token_of(&first.link(&prefix))).await;
    assert_eq!(error_code(res).await, "invalid_token");
    let token = token_of(&second.link(&prefix));
    assert_eq!(complete(token.clone()).await.status(), 204);
    assert_eq!(error_code(complete(token).await).await, "invalid_token");

    let pair = server.password_grant(&email).await;
    let (_, key) = server
        .tessera
        .create_admin_key("introspect", AdminScope::Introspect)
        .await
        .unwrap();
    let body: Value = server
        .client
        .post(server.url("/oauth2/introspect"))
        .bearer_auth(key.expose_secret())
        .form(&[("token", pair["access_token"].as_str().unwrap())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["active"], true);
    assert_eq!(body["email_verified"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mail_is_retried_until_the_server_answers_and_the_outbox_holds_no_token() {
    let port = free_port();
    let server = mailing_node(&plain_url(port), "").await;
    let email = unique_email();
    server.sign_up(&email).await;
    assert_eq!(request_recovery(&server, &email).await.status(), 202);
    // The server is down: attempts fail and the jobs stay queued.
    let mut queued = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while queued.len() < 2
        || queued
            .iter()
            .any(|q: &tessera_core::webhooks::QueuedMessage| q.attempts == 0)
    {
        assert!(
            Instant::now() < deadline,
            "no failed attempt recorded: {queued:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let far = Timestamp::from_unix(Timestamp::now().as_unix() + 86_400);
        queued = server
            .store
            .due_messages(far, 1000)
            .await
            .unwrap()
            .into_iter()
            .filter(|q| q.message.event_type.is_mail())
            .collect();
    }
    let sink = SmtpSink::start_on(port).await;
    let recovery = sink.wait_for(&email, RECOVERY, 0).await;
    sink.wait_for(&email, VERIFICATION, 0).await;
    let token = token_of(&recovery.link(&format!("{}/ui/recovery?token=", server.base)));
    for job in &queued {
        assert!(!job.message.body.contains(&token), "{}", job.message.body);
    }
    // Sent once each: the retries minted no second link.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sink.count_to(&email), 2);
    assert_eq!(
        complete_recovery(&server, &token, NEW_PASSWORD)
            .await
            .status(),
        204
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recovery_takes_alike_for_known_and_unknown_addresses() {
    let sink = SmtpSink::start().await;
    let server = mailing_node(&sink.url(), "signup_ip_max = 1000\nrecovery_max = 1000\n").await;
    let known = unique_email();
    server.sign_up(&known).await;
    let mut timings = [Vec::new(), Vec::new()];
    for round in 0..30 {
        for (i, email) in [known.clone(), format!("nobody-{round}-{known}")]
            .iter()
            .enumerate()
        {
            let started = Instant::now();
            assert_eq!(request_recovery(&server, email).await.status(), 202);
            timings[i].push(started.elapsed());
        }
    }
    let median = |times: &mut Vec<Duration>| {
        times.sort();
        times[times.len() / 2]
    };
    let (known_median, unknown_median) = (median(&mut timings[0]), median(&mut timings[1]));
    println!("recovery medians: known {known_median:?}, unknown {unknown_median:?}");
    let (low, high) = if known_median < unknown_median {
        (known_median, unknown_median)
    } else {
        (unknown_median, known_median)
    };
    assert!(
        high <= low + low / 2 || high.saturating_sub(low) <= Duration::from_millis(10),
        "known {known_median:?} vs unknown {unknown_median:?}"
    );
}
