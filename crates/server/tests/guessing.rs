#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The guessing limits over real HTTP (SPEC §2, §3, §7): the account, address and device
//! budgets, the device cookie and `device_token`, the client address behind trusted proxies,
//! the sign-up limit, the administrator's unlock and the `user.locked` message.

mod support;

use reqwest::header::{COOKIE, SET_COOKIE};
use reqwest::Response;
use serde_json::{json, Value};
use support::{error_code, start, unique_email, TestServer, PASSWORD};
use tessera_core::metrics::Counters;
use tessera_core::model::Timestamp;

const WRONG: &str = "not the password at all";

async fn login(server: &TestServer, email: &str, password: &str, cookie: Option<&str>) -> Response {
    login_from(server, email, password, cookie, None).await
}

async fn login_from(
    server: &TestServer,
    email: &str,
    password: &str,
    cookie: Option<&str>,
    forwarded_for: Option<&str>,
) -> Response {
    let mut request = server
        .client
        .post(server.url("/v1/login"))
        .json(&json!({ "email": email, "password": password }));
    if let Some(cookie) = cookie {
        request = request.header(COOKIE, cookie);
    }
    if let Some(chain) = forwarded_for {
        request = request.header("x-forwarded-for", chain);
    }
    request.send().await.unwrap()
}

/// `name=value` of the device cookie a login set.
fn device_cookie(res: &Response) -> String {
    let set = res
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|v| v.starts_with("tessera_device=") || v.starts_with("__Host-tessera_device="))
        .expect("a device cookie");
    set.split(';').next().unwrap().to_owned()
}

/// The 429 of SPEC §3: `too_many_attempts` with a `Retry-After` of at least a second.
async fn assert_throttled(res: Response) -> u64 {
    assert_eq!(res.status(), 429);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    assert_eq!(error_code(res).await, "too_many_attempts");
    retry
}

fn checked(server: &TestServer) -> (u64, u64) {
    let counters = server.tessera.counters();
    (
        Counters::get(&counters.logins_ok),
        Counters::get(&counters.logins_failed),
    )
}

#[tokio::test]
async fn past_the_account_limit_even_the_right_password_gets_429_before_any_check() {
    let server = start("login_max_failures = 3\nlogin_failure_window = \"10m\"").await;
    let email = unique_email();
    server.sign_up(&email).await;
    for _ in 0..3 {
        assert_eq!(login(&server, &email, WRONG, None).await.status(), 401);
    }
    let before = checked(&server);
    let retry = assert_throttled(login(&server, &email, PASSWORD, None).await).await;
    // The first lock lasts the rest of the window that the first failure began.
    assert!(retry > 590 && retry <= 600, "Retry-After {retry}");
    assert_throttled(login(&server, &email, WRONG, None).await).await;
    // Neither attempt reached the password check: no login counted either way.
    assert_eq!(checked(&server), before);
    assert_eq!(Counters::get(&server.tessera.counters().throttled), 2);
}

#[tokio::test]
async fn an_unknown_account_is_counted_and_refused_alike() {
    let server = start("login_max_failures = 2").await;
    let known = unique_email();
    server.sign_up(&known).await;
    let unknown = unique_email();
    for email in [&known, &unknown] {
        for _ in 0..2 {
            let res = login(&server, email, WRONG, None).await;
            assert_eq!(res.status(), 401);
            assert_eq!(error_code(res).await, "invalid_credentials");
        }
        assert_throttled(login(&server, email, WRONG, None).await).await;
    }
    // The email is normalised before counting: case and spaces do not buy attempts.
    let shouted = format!("  {}  ", known.to_uppercase());
    assert_throttled(login(&server, &shouted, PASSWORD, None).await).await;
}

#[tokio::test]
async fn a_known_device_keeps_signing_in_while_the_account_is_locked_for_everyone_else() {
    let server = start("login_max_failures = 3\ndevice_max_failures = 2").await;
    let email = unique_email();
    server.sign_up(&email).await;
    let first = login(&server, &email, PASSWORD, None).await;
    assert_eq!(first.status(), 200);
    let set: Vec<&str> = first
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    let device_attributes = set.iter().find(|v| v.contains("tessera_device=")).unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=31536000"] {
        assert!(device_attributes.contains(attribute), "{device_attributes}");
    }
    let device = device_cookie(&first);

    // Someone else guesses until the account is locked.
    for _ in 0..3 {
        assert_eq!(login(&server, &email, WRONG, None).await.status(), 401);
    }
    assert_throttled(login(&server, &email, PASSWORD, None).await).await;
    // The user's own browser still signs in, again and again.
    for _ in 0..2 {
        let res = login(&server, &email, PASSWORD, Some(&device)).await;
        assert_eq!(res.status(), 200);
    }

    // The device has a budget of its own: two failures, then it is refused too.
    for _ in 0..2 {
        assert_eq!(
            login(&server, &email, WRONG, Some(&device)).await.status(),
            401
        );
    }
    assert_throttled(login(&server, &email, PASSWORD, Some(&device)).await).await;

    // A forged or altered cookie is no device credential.
    let forged = format!("{device}x");
    assert_throttled(login(&server, &email, PASSWORD, Some(&forged)).await).await;
}

#[tokio::test]
async fn a_device_cookie_is_useless_for_any_other_account() {
    let server = start("login_max_failures = 2").await;
    let (mine, victim) = (unique_email(), unique_email());
    server.sign_up(&mine).await;
    server.sign_up(&victim).await;
    let device = device_cookie(&login(&server, &mine, PASSWORD, None).await);
    for _ in 0..2 {
        login(&server, &victim, WRONG, None).await;
    }
    assert_throttled(login(&server, &victim, PASSWORD, Some(&device)).await).await;
}

#[tokio::test]
async fn an_address_past_its_limit_is_refused_for_every_account_but_known_devices() {
    let server = start("login_max_failures = 100\nlogin_ip_max_failures = 4").await;
    let regular = unique_email();
    server.sign_up(&regular).await;
    let device = device_cookie(&login(&server, &regular, PASSWORD, None).await);
    // Four failures spread over four accounts, none of them near its own limit.
    for _ in 0..4 {
        assert_eq!(
            login(&server, &unique_email(), WRONG, None).await.status(),
            401
        );
    }
    let other = unique_email();
    server.sign_up(&other).await;
    assert_throttled(login(&server, &other, PASSWORD, None).await).await;
    // A user behind the same address (a NAT) with a device cookie is not locked out.
    assert_eq!(
        login(&server, &regular, PASSWORD, Some(&device))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn forwarded_for_counts_only_behind_a_trusted_proxy_and_only_from_the_right() {
    let behind = start("login_ip_max_failures = 2\ntrusted_proxies = \"127.0.0.1/32\"").await;
    let account = || unique_email();
    for _ in 0..2 {
        let res = login_from(&behind, &account(), WRONG, None, Some("198.51.100.1")).await;
        assert_eq!(res.status(), 401);
    }
    assert_throttled(login_from(&behind, &account(), WRONG, None, Some("198.51.100.1")).await)
        .await;
    // Another client behind the same proxy has its own budget.
    let res = login_from(&behind, &account(), WRONG, None, Some("198.51.100.2")).await;
    assert_eq!(res.status(), 401);
    // Prepending an address chooses nothing: the proxy's rightmost entry is the client.
    let spoofed = "203.0.113.77, 198.51.100.1";
    assert_throttled(login_from(&behind, &account(), WRONG, None, Some(spoofed)).await).await;

    // Without trusted proxies the header is ignored: every attempt counts for the peer.
    let direct = start("login_ip_max_failures = 2").await;
    for chain in ["198.51.100.1", "198.51.100.2"] {
        let res = login_from(&direct, &account(), WRONG, None, Some(chain)).await;
        assert_eq!(res.status(), 401);
    }
    assert_throttled(login_from(&direct, &account(), WRONG, None, Some("198.51.100.3")).await)
        .await;
}

async fn grant(server: &TestServer, email: &str, password: &str, device: Option<&str>) -> Response {
    let mut form = vec![
        ("grant_type", "password"),
        ("username", email),
        ("password", password),
    ];
    if let Some(device) = device {
        form.push(("device_token", device));
    }
    server
        .client
        .post(server.url("/oauth2/token"))
        .form(&form)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_password_grant_shares_the_budget_answers_in_rfc_6749_shape_and_honours_device_tokens()
{
    let server = start("login_max_failures = 3").await;
    let email = unique_email();
    server.sign_up(&email).await;
    let first = grant(&server, &email, PASSWORD, None).await;
    assert_eq!(first.status(), 200);
    let pair: Value = first.json().await.unwrap();
    let device = pair["device_token"].as_str().unwrap().to_owned();

    // Failures at the login and at the token endpoint share one budget.
    assert_eq!(login(&server, &email, WRONG, None).await.status(), 401);
    for _ in 0..2 {
        let res = grant(&server, &email, WRONG, None).await;
        assert_eq!(res.status(), 400);
        assert_eq!(res.json::<Value>().await.unwrap()["error"], "invalid_grant");
    }
    let refused = grant(&server, &email, PASSWORD, None).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(refused.headers()["cache-control"], "no-store");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "too_many_attempts");
    assert!(body["error_description"].is_string());
    assert_eq!(
        body.as_object().unwrap().len(),
        2,
        "RFC 6749 §5.2 shape: {body}"
    );
    assert_throttled(login(&server, &email, PASSWORD, None).await).await;

    // The API client that signed in before sends its device token back and is let in.
    let res = grant(&server, &email, PASSWORD, Some(&device)).await;
    assert_eq!(res.status(), 200);
    // A refresh does not hand out a device token.
    let refresh = pair["refresh_token"].as_str().unwrap();
    let rotated: Value = server.refresh(refresh).await.json().await.unwrap();
    assert!(rotated.get("device_token").is_none());
}

#[tokio::test]
async fn sign_ups_are_limited_per_address() {
    let server = start("signup_ip_max = 2").await;
    for _ in 0..2 {
        server.sign_up(&unique_email()).await;
    }
    let res = server
        .client
        .post(server.url("/v1/users"))
        .json(&json!({ "email": unique_email(), "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    let retry = assert_throttled(res).await;
    assert!(retry > 3500 && retry <= 3600, "Retry-After {retry}");
}

#[tokio::test]
async fn an_administrator_unlocks_an_account_and_its_lock_was_reported() {
    let hook = "[[webhooks]]\nurl = \"http://127.0.0.1:9/hook\"\nsecret = \"s\"\nevents = [\"user.locked\"]\n";
    let server = start(&format!("login_max_failures = 2\n{hook}")).await;
    let email = unique_email();
    let user = server.sign_up(&email).await;
    let id = user["id"].as_str().unwrap();
    for _ in 0..2 {
        login(&server, &email, WRONG, None).await;
    }
    assert_throttled(login(&server, &email, PASSWORD, None).await).await;

    // One `user.locked`, queued when the lock started.
    let queued = server
        .store
        .due_messages(Timestamp::from_unix(i64::MAX / 2), 10_000)
        .await
        .unwrap();
    let locked: Vec<_> = queued
        .iter()
        .filter(|m| m.message.event_type.as_str() == "user.locked")
        .collect();
    assert_eq!(locked.len(), 1);
    let body: Value = serde_json::from_str(&locked[0].message.body).unwrap();
    let data = &body["data"];
    assert_eq!(data["user_id"], id);
    assert_eq!(data["failures"], 2);

    let (_, key) = server
        .tessera
        .create_admin_key("test", tessera_core::model::AdminScope::Admin)
        .await
        .unwrap();
    let unlock = |bearer: Option<String>| {
        let mut request = server
            .client
            .delete(server.url(&format!("/v1/admin/users/{id}/lockout")));
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        request.send()
    };
    assert_eq!(unlock(None).await.unwrap().status(), 401);
    let res = unlock(Some(key.expose_secret().to_owned())).await.unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(login(&server, &email, PASSWORD, None).await.status(), 200);
    let unknown = server
        .client
        .delete(server.url(&format!("/v1/admin/users/{}/lockout", uuid_of_nobody())))
        .bearer_auth(key.expose_secret())
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
}

fn uuid_of_nobody() -> String {
    tessera_core::model::UserId::new().to_string()
}

#[tokio::test]
async fn a_login_whose_client_hangs_up_still_gives_its_slot_back() {
    // Each login takes a slot before hashing and gives it back on success. Clients that stop
    // waiting (a closed tab, a timeout) must not leave their right passwords counted as
    // failures: three abandoned logins against a limit of two would lock the owner out.
    let server = start("login_max_failures = 2\nlogin_failure_window = \"10m\"").await;
    let email = unique_email();
    server.sign_up(&email).await;
    let address = server.base.trim_start_matches("http://").to_owned();
    let body = json!({ "email": email, "password": PASSWORD }).to_string();
    let request = format!(
        "POST /v1/login HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        address,
        body.len()
    );
    let ok = || Counters::get(&server.tessera.counters().logins_ok);
    for abandoned in 1..=3 {
        // The whole request, then the connection closed before the answer.
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        drop(stream);
        // The abandoned check finishes on its own (one at a time: parallel attempts share
        // the budget, which is another test's subject).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while ok() < abandoned {
            assert!(
                std::time::Instant::now() < deadline,
                "abandoned login {abandoned} never finished: {} ok, {} throttled",
                ok(),
                Counters::get(&server.tessera.counters().throttled)
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    assert_eq!(login(&server, &email, PASSWORD, None).await.status(), 200);
    assert_eq!(login(&server, &email, WRONG, None).await.status(), 401);
    assert_eq!(login(&server, &email, WRONG, None).await.status(), 401);
    assert_throttled(login(&server, &email, PASSWORD, None).await).await;
}
