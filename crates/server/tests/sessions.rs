//! Sign-up, cookie sessions and CSRF, through the real router over real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_TYPE, COOKIE, SET_COOKIE};
use serde_json::{json, Value};
use support::{headers, start, start_sqlite, unique_email, Browser, TestServer, PASSWORD};

#[tokio::test]
async fn sign_up_returns_the_user_and_refuses_duplicates_and_bad_input() {
    let server = start("").await;
    let email = unique_email();
    let body = server
        .sign_up(&format!("  {}  ", email.to_uppercase()))
        .await;
    assert_eq!(body["email"], email, "email is trimmed and lower-cased");
    assert!(body["id"].as_str().is_some_and(|id| id.len() == 36));
    assert!(body["created_at"].as_str().is_some());

    let cases = [
        (
            json!({ "email": email, "password": PASSWORD }),
            409,
            "email_taken",
        ),
        (
            json!({ "email": unique_email(), "password": "short" }),
            400,
            "weak_password",
        ),
        (
            json!({ "email": "not-an-email", "password": PASSWORD }),
            400,
            "invalid_email",
        ),
        (
            json!({ "email": 42, "password": PASSWORD }),
            400,
            "invalid_request",
        ),
        (json!({ "email": unique_email() }), 400, "invalid_request"),
    ];
    for (request, status, code) in cases {
        let res = server
            .client
            .post(server.url("/v1/users"))
            .json(&request)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), status, "{request}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"], code, "{request}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
}

#[tokio::test]
async fn malformed_oversized_and_wrongly_typed_bodies_get_4xx_in_our_shape() {
    let server = start("").await;
    let send = |body: Vec<u8>, content_type: &'static str| {
        server
            .client
            .post(server.url("/v1/users"))
            .header(CONTENT_TYPE, content_type)
            .body(body)
            .send()
    };
    let res = send(b"{\"email\": ".to_vec(), "application/json")
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(support::error_code(res).await, "invalid_request");

    let res = send(b"email=a@b.c".to_vec(), "text/plain").await.unwrap();
    assert_eq!(res.status(), 415);
    assert_eq!(support::error_code(res).await, "unsupported_media_type");

    let huge = format!(
        "{{\"email\":\"{}\",\"password\":\"x\"}}",
        "a".repeat(70 * 1024)
    );
    let res = send(huge.into_bytes(), "application/json").await.unwrap();
    assert_eq!(res.status(), 413);
    assert_eq!(support::error_code(res).await, "payload_too_large");

    let res = send(vec![0xff, 0xfe, 0x00], "application/json")
        .await
        .unwrap();
    assert_eq!(res.status(), 400);

    let res = server
        .client
        .get(server.url("/v1/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(support::error_code(res).await, "not_found");
    let res = server
        .client
        .delete(server.url("/v1/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(support::error_code(res).await, "method_not_allowed");
}

#[tokio::test]
async fn login_sets_the_spec_cookie_and_returns_user_session_and_csrf() {
    let server = start("").await;
    let email = unique_email();
    server.sign_up(&email).await;
    let res = server.login_raw(&email, PASSWORD, headers(&[])).await;
    assert_eq!(res.status(), 200);
    let set_cookie = res
        .headers()
        .get(SET_COOKIE)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let (pair, attributes) = set_cookie.split_once(';').unwrap();
    let (name, value) = pair.split_once('=').unwrap();
    assert_eq!(name, "__Host-tessera_session");
    assert_eq!(value.len(), 43, "256 bits in base64url");
    for attribute in [
        "Path=/",
        "HttpOnly",
        "SameSite=Lax",
        "Secure",
        "Max-Age=604800",
    ] {
        assert!(
            attributes.split(';').any(|a| a.trim() == attribute),
            "{attribute} in {set_cookie}"
        );
    }
    assert!(
        !attributes.contains("Domain"),
        "__Host- cookies carry no Domain"
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["user"]["email"], email);
    assert_eq!(body["session"]["via"], "cookie");
    assert!(body["csrf_token"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(body["session"]["expires_at"].as_str().is_some());
    assert!(body["session"]["idle_expires_at"].as_str().is_some());

    let res = server.session_with_cookie(pair).await;
    assert_eq!(res.status(), 200);
    let me: Value = res.json().await.unwrap();
    assert_eq!(me["user"]["email"], email);
    assert_eq!(me["session"]["id"], body["session"]["id"]);
    assert_eq!(me["csrf_token"], body["csrf_token"]);
}

#[tokio::test]
async fn insecure_cookie_setting_drops_prefix_and_secure_flag() {
    let server = start("cookie_secure = false").await;
    let email = unique_email();
    server.sign_up(&email).await;
    let res = server.login_raw(&email, PASSWORD, headers(&[])).await;
    let set_cookie = res.headers().get(SET_COOKIE).unwrap().to_str().unwrap();
    assert!(set_cookie.starts_with("tessera_session="), "{set_cookie}");
    assert!(!set_cookie.contains("Secure"), "{set_cookie}");
}

/// SPEC §2 `cookie_domain`: the session cookie goes to every subdomain, under the
/// `__Secure-` prefix (`__Host-` forbids `Domain`); the device cookie, read by Tessera alone,
/// stays host-only; signing out clears the same cookie (same name, same Domain).
#[tokio::test]
async fn a_cookie_domain_shares_the_session_cookie_with_subdomains() {
    let server = start("cookie_domain = \"example.com\"").await;
    let email = unique_email();
    server.sign_up(&email).await;
    let res = server.login_raw(&email, PASSWORD, headers(&[])).await;
    assert_eq!(res.status(), 200);
    let set_cookies: Vec<String> = res
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let session = set_cookies
        .iter()
        .find(|c| c.starts_with("__Secure-tessera_session="))
        .unwrap_or_else(|| panic!("no __Secure- session cookie in {set_cookies:?}"));
    let attributes: Vec<&str> = session.split(';').map(str::trim).collect();
    for attribute in [
        "Domain=example.com",
        "Secure",
        "HttpOnly",
        "SameSite=Lax",
        "Path=/",
    ] {
        assert!(attributes.contains(&attribute), "{attribute} in {session}");
    }
    let device = set_cookies
        .iter()
        .find(|c| c.starts_with("__Host-tessera_device="))
        .unwrap_or_else(|| panic!("no device cookie in {set_cookies:?}"));
    assert!(!device.contains("Domain"), "{device}");

    let pair = session.split(';').next().unwrap();
    assert_eq!(server.verify_cookie(pair).await.status(), 200);
    let csrf: Value = res.json().await.unwrap();
    let out = server
        .logout(&Browser {
            cookie: pair.to_owned(),
            csrf: csrf["csrf_token"].as_str().unwrap().to_owned(),
            body: Value::Null,
        })
        .await;
    assert_eq!(out.status(), 204);
    let cleared = out.headers()[SET_COOKIE].to_str().unwrap();
    assert!(
        cleared.starts_with("__Secure-tessera_session=;")
            && cleared.contains("Max-Age=0")
            && cleared.contains("Domain=example.com"),
        "{cleared}"
    );

    // Plain-HTTP development: no prefix and no Secure, still shared.
    let server = start("cookie_domain = \"example.com\"\ncookie_secure = false").await;
    server.sign_up(&email).await;
    let res = server.login_raw(&email, PASSWORD, headers(&[])).await;
    let set_cookie = res.headers()[SET_COOKIE].to_str().unwrap();
    assert!(set_cookie.starts_with("tessera_session="), "{set_cookie}");
    assert!(set_cookie.contains("Domain=example.com"), "{set_cookie}");
    assert!(!set_cookie.contains("Secure"), "{set_cookie}");
}

#[tokio::test]
async fn unknown_user_and_wrong_password_answer_alike() {
    let server = start("").await;
    let email = unique_email();
    server.sign_up(&email).await;
    let wrong = server
        .login_raw(&email, "wrong password!", headers(&[]))
        .await;
    let unknown = server
        .login_raw(&unique_email(), PASSWORD, headers(&[]))
        .await;
    assert_eq!(wrong.status(), 401);
    assert_eq!(unknown.status(), 401);
    assert!(wrong.headers().get(SET_COOKIE).is_none());
    let wrong: Value = wrong.json().await.unwrap();
    let unknown: Value = unknown.json().await.unwrap();
    assert_eq!(wrong, unknown);
    assert_eq!(wrong["error"], "invalid_credentials");
}

/// SPEC §3: an unknown email answers in the same time as a wrong password, or its timing
/// would tell which addresses have accounts. Both run one argon2id verification; without the
/// dummy hash an unknown email would answer in about a millisecond against tens for a wrong
/// password. The two kinds are interleaved, so load on the machine slows both alike, and the
/// medians must agree within a factor of two either way.
#[tokio::test]
async fn an_unknown_email_takes_as_long_as_a_wrong_password() {
    // Limits out of the way: this measures the password check, which a 429 would skip.
    let server = start("login_max_failures = 1000\nlogin_ip_max_failures = 1000").await;
    let email = unique_email();
    server.sign_up(&email).await;
    let timed = |email: String, password: &'static str| {
        let server = &server;
        async move {
            let started = Instant::now();
            let res = server.login_raw(&email, password, headers(&[])).await;
            let took = started.elapsed();
            assert_eq!(res.status(), 401);
            took
        }
    };
    let (mut wrong, mut unknown) = (Vec::new(), Vec::new());
    for _ in 0..15 {
        wrong.push(timed(email.clone(), "wrong password!").await);
        unknown.push(timed(unique_email(), PASSWORD).await);
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (wrong, unknown) = (median(wrong), median(unknown));
    assert!(
        unknown * 2 >= wrong && wrong * 2 >= unknown,
        "median unknown email {unknown:?}, wrong password {wrong:?}"
    );
}

#[tokio::test]
async fn every_login_makes_a_new_session_and_revokes_the_cookie_it_was_sent() {
    let server = start("").await;
    let (email, first) = server.browser().await;
    let res = server
        .login_raw(&email, PASSWORD, headers(&[("cookie", &first.cookie)]))
        .await;
    assert_eq!(res.status(), 200);
    let second_cookie = support::cookie_pair(&res);
    let second: Value = res.json().await.unwrap();
    assert_ne!(second["session"]["id"], first.body["session"]["id"]);
    assert_ne!(second_cookie, first.cookie);
    assert_eq!(
        server.session_with_cookie(&first.cookie).await.status(),
        401,
        "old cookie revoked"
    );
    assert_eq!(
        server.session_with_cookie(&second_cookie).await.status(),
        200
    );
}

#[tokio::test]
async fn logout_requires_csrf_for_cookie_callers_and_clears_the_cookie() {
    let server = start("").await;
    let (_, browser) = server.browser().await;
    let logout = || {
        server
            .client
            .post(server.url("/v1/logout"))
            .header(COOKIE, &browser.cookie)
    };

    let res = logout().send().await.unwrap();
    assert_eq!(res.status(), 403, "no CSRF token");
    assert_eq!(support::error_code(res).await, "csrf_token_invalid");

    let res = logout()
        .header("x-csrf-token", "bm90LXRoZS10b2tlbg")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403, "wrong CSRF token");

    let (_, other) = server.browser().await;
    let res = logout()
        .header("x-csrf-token", &other.csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403, "another session's CSRF token");

    let res = logout()
        .header("x-csrf-token", &browser.csrf)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403, "foreign Origin");
    assert_eq!(support::error_code(res).await, "origin_not_allowed");

    assert_eq!(
        server.session_with_cookie(&browser.cookie).await.status(),
        200,
        "refusals changed nothing"
    );

    let res = logout()
        .header("x-csrf-token", &browser.csrf)
        .header("origin", &server.base)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let cleared = res.headers().get(SET_COOKIE).unwrap().to_str().unwrap();
    assert!(
        cleared.starts_with("__Host-tessera_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    assert_eq!(
        server.session_with_cookie(&browser.cookie).await.status(),
        401,
        "deleted server-side"
    );
}

#[tokio::test]
async fn csrf_token_is_accepted_as_a_form_field() {
    let server = start("").await;
    let (_, browser) = server.browser().await;
    let res = server
        .client
        .post(server.url("/v1/logout"))
        .header(COOKIE, &browser.cookie)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("csrf_token={}", browser.csrf))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
}

#[tokio::test]
async fn login_csrf_is_refused() {
    let server = start("").await;
    let email = unique_email();
    server.sign_up(&email).await;
    let form = |extra: &[(&'static str, &str)]| {
        server
            .client
            .post(server.url("/v1/login"))
            .headers(headers(extra))
            .form(&[("email", email.as_str()), ("password", PASSWORD)])
            .send()
    };
    assert_eq!(
        form(&[]).await.unwrap().status(),
        403,
        "form login without Origin or Referer"
    );
    assert_eq!(
        form(&[("origin", "https://evil.example")])
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        form(&[("referer", "https://evil.example/login")])
            .await
            .unwrap()
            .status(),
        403
    );
    let res = form(&[("origin", &server.base)]).await.unwrap();
    assert_eq!(res.status(), 200, "same-origin form login");
    assert!(res.headers().get(SET_COOKIE).is_some());
    let referer = format!("{}/login", server.base);
    assert_eq!(form(&[("referer", &referer)]).await.unwrap().status(), 200);

    let res = server
        .login_raw(
            &email,
            PASSWORD,
            headers(&[("origin", "https://evil.example")]),
        )
        .await;
    assert_eq!(res.status(), 403, "JSON login from a foreign origin");
    let res = server
        .login_raw(
            &email,
            PASSWORD,
            headers(&[("sec-fetch-site", "cross-site")]),
        )
        .await;
    assert_eq!(res.status(), 403, "browser says cross-site");
}

#[tokio::test]
async fn bearer_requests_need_no_csrf_token() {
    let server = start("").await;
    let (_, pair) = server.user_with_tokens().await;
    let access = pair["access_token"].as_str().unwrap();
    let res = server
        .client
        .get(server.url("/v1/session"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let me: Value = res.json().await.unwrap();
    assert_eq!(me["session"]["via"], "token");
    assert!(me.get("csrf_token").is_none());
    let res = server
        .client
        .post(server.url("/v1/logout"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(
        server.verify_bearer(access).await.status(),
        401,
        "logout revoked the session"
    );
    let res = server
        .refresh(pair["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(res.status(), 400, "and its refresh family");
}

#[tokio::test]
async fn session_without_credentials_is_401() {
    let server = start("").await;
    let res = server
        .client
        .get(server.url("/v1/session"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(support::error_code(res).await, "unauthenticated");
    let res = server
        .session_with_cookie("__Host-tessera_session=forged")
        .await;
    assert_eq!(res.status(), 401);
}

/// Signs in a fresh user and returns the browser with the instant the login answered: every
/// deadline below is counted from it, with a margin of a second or more either way, so a slow
/// request on a loaded machine cannot flip the outcome.
async fn signed_in(server: &TestServer) -> (Browser, Instant) {
    let (_, browser) = server.browser().await;
    (browser, Instant::now())
}

#[tokio::test]
async fn an_idle_session_dies_after_its_idle_timeout() {
    let server = start_sqlite("session_idle_timeout = \"3s\"").await;
    let (browser, at) = signed_in(&server).await;
    assert_eq!(
        server.session_with_cookie(&browser.cookie).await.status(),
        200
    );
    tokio::time::sleep_until((at + Duration::from_secs(4)).into()).await;
    assert_eq!(
        server.session_with_cookie(&browser.cookie).await.status(),
        401,
        "idle for a second longer than the idle timeout"
    );
}

#[tokio::test]
async fn activity_keeps_a_short_idle_timeout_alive() {
    // Strict: every request reads the store; the cached write-back has its own test. The idle
    // timeout is 4 s, so last_seen_at is written every 2 s of activity; requests every half
    // second for 6 s outlive the first idle deadline by 2 s.
    let server = start_sqlite("revocation_mode = \"strict\"\nsession_idle_timeout = \"4s\"").await;
    let (browser, at) = signed_in(&server).await;
    let mut tick = tokio::time::interval_at(
        (at + Duration::from_millis(500)).into(),
        Duration::from_millis(500),
    );
    while at.elapsed() < Duration::from_secs(6) {
        tick.tick().await;
        assert_eq!(
            server.verify_cookie(&browser.cookie).await.status(),
            200,
            "activity extends idle expiry ({:?} after sign-in)",
            at.elapsed()
        );
    }
}

#[tokio::test]
async fn a_session_dies_at_its_absolute_timeout_whatever_the_activity() {
    let server = start_sqlite("session_absolute_timeout = \"3s\"").await;
    let (browser, at) = signed_in(&server).await;
    assert_eq!(server.verify_cookie(&browser.cookie).await.status(), 200);
    tokio::time::sleep_until((at + Duration::from_millis(1500)).into()).await;
    assert_eq!(
        server.verify_cookie(&browser.cookie).await.status(),
        200,
        "still inside the absolute timeout"
    );
    tokio::time::sleep_until((at + Duration::from_secs(4)).into()).await;
    assert_eq!(
        server.verify_cookie(&browser.cookie).await.status(),
        401,
        "a second past the absolute timeout"
    );
}

#[tokio::test]
async fn logout_everywhere_signs_out_every_device_and_bumps_the_epoch() {
    use tessera_core::model::{SessionId, UserId};
    use tessera_core::revocation::Revoked;

    let server = start_sqlite("").await;
    let (email, browser) = server.browser().await;
    let pair = server.password_grant(&email).await;
    let access = pair["access_token"].as_str().unwrap();
    assert_eq!(server.verify_bearer(access).await.status(), 200);
    let user = UserId::parse(browser.body["user"]["id"].as_str().unwrap()).unwrap();
    let epoch_before = server.tessera.user(user).await.unwrap().tokens_valid_after;
    let claims = server.tessera.verify_token(access).await.unwrap();
    let issued = tessera_core::service::issued_at(&claims);
    let res = server
        .client
        .post(server.url("/v1/logout?everywhere=true"))
        .header(COOKIE, &browser.cookie)
        .header("x-csrf-token", &browser.csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(server.verify_bearer(access).await.status(), 401);
    assert_eq!(server.verify_cookie(&browser.cookie).await.status(), 401);
    assert_eq!(
        server
            .refresh(pair["refresh_token"].as_str().unwrap())
            .await
            .status(),
        400
    );
    // The sessions' revocation alone refuses the token above (through its `sid`); the epoch
    // is what refuses every older token of the user whatever its session, on every node.
    let epoch = server.tessera.user(user).await.unwrap().tokens_valid_after;
    assert!(
        epoch > epoch_before && epoch > issued,
        "epoch moved past the token: {epoch:?}"
    );
    assert_eq!(
        server
            .tessera
            .revocation_cache()
            .check_token(user, SessionId::new(), issued, &claims.jti),
        Some(Revoked::Epoch),
        "any session's token issued before the sign-out is dead by the epoch alone"
    );
    // A new sign-in after it works.
    let again = server.password_grant(&email).await;
    assert_eq!(
        server
            .verify_bearer(again["access_token"].as_str().unwrap())
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn healthz_answers() {
    let server = start("").await;
    let res = server
        .client
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn last_seen_is_written_at_most_once_a_minute() {
    use tessera_core::model::{Session, SessionId, Timestamp, Via};
    use tessera_core::secret::SessionSecret;

    let server = start_sqlite("").await;
    let store = &server.store;

    // A fresh session: requests within the minute leave the stored last_seen_at alone.
    let (_, browser) = server.browser().await;
    let id = SessionId::parse(browser.body["session"]["id"].as_str().unwrap()).unwrap();
    let created = store
        .find_live_session(id, Timestamp::now())
        .await
        .unwrap()
        .unwrap()
        .last_seen_at;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..3 {
        assert_eq!(
            server.session_with_cookie(&browser.cookie).await.status(),
            200
        );
    }
    let stored = store
        .find_live_session(id, Timestamp::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.last_seen_at, created, "no write per request");

    // A session last seen two minutes ago: the next request moves it forward.
    let user = store
        .find_live_session(id, Timestamp::now())
        .await
        .unwrap()
        .unwrap()
        .user_id;
    let secret = SessionSecret::generate();
    let now = Timestamp::now();
    let stale = Session {
        id: SessionId::new(),
        user_id: user,
        secret_hash: Some(secret.to_hash()),
        via: Via::Cookie,
        created_at: now.saturating_sub(Duration::from_secs(120)),
        last_seen_at: now.saturating_sub(Duration::from_secs(120)),
        idle_timeout: Duration::from_secs(86_400),
        expires_at: now.saturating_add(Duration::from_secs(3600)),
        user_agent: None,
        ip: None,
        revoked_at: None,
    };
    let mut tx = store.begin().await.unwrap();
    tx.insert_session(&stale).await.unwrap();
    tx.commit().await.unwrap();
    let cookie = format!("__Host-tessera_session={}", secret.expose_secret());
    assert_eq!(server.session_with_cookie(&cookie).await.status(), 200);
    let touched = store
        .find_live_session(stale.id, Timestamp::now())
        .await
        .unwrap()
        .unwrap();
    assert!(
        touched.last_seen_at >= now,
        "stale last_seen_at written back"
    );
}

#[tokio::test]
async fn cached_sessions_write_last_seen_back_in_batches() {
    use tessera_core::model::{SessionId, Timestamp};

    // Idle timeout 4 s: last_seen_at is due every 2 s; the cache answers, the store learns later.
    let server = start_sqlite("revocation_mode = \"cached\"\nsession_idle_timeout = \"4s\"").await;
    let (_, browser) = server.browser().await;
    let signed_in = Instant::now();
    let id = SessionId::parse(browser.body["session"]["id"].as_str().unwrap()).unwrap();
    let store = &server.store;
    let created = store
        .find_live_session(id, Timestamp::now())
        .await
        .unwrap()
        .unwrap()
        .last_seen_at;
    // Wait for the feed, so the cookie is served from the cache.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.tessera.revocation_status().fresh {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.verify_cookie(&browser.cookie).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(
        server.verify_cookie(&browser.cookie).await.status(),
        200,
        "seen again: due a write"
    );
    // The batch reaches the store within a flush interval.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stored = store.find_live_session(id, Timestamp::now()).await.unwrap();
        if stored.is_some_and(|s| s.last_seen_at > created) {
            break;
        }
        assert!(Instant::now() < deadline, "last_seen_at never written back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And the session is still alive past its first idle deadline (sign-in + 4 s), thanks to
    // the activity at sign-in + 2 s.
    tokio::time::sleep_until((signed_in + Duration::from_millis(4_600)).into()).await;
    assert_eq!(server.verify_cookie(&browser.cookie).await.status(), 200);
}

/// The session half of a login, for callers that established identity another way: the
/// cookie it returns works over HTTP like a login's, and a cookie handed in as the previous
/// one dies in the same operation (fixation defence, as at login).
#[tokio::test]
async fn a_session_opened_without_a_password_works_and_replaces_the_previous_one() {
    let server = start("").await;
    let (email, browser) = server.browser().await;
    let user = server.tessera.user_by_email(&email).await.unwrap();
    let name = &server.config.cookie_name;
    let old_secret = tessera_core::secret::SessionSecret::from_presented(
        browser.cookie.split_once('=').unwrap().1,
    );
    let opened = server
        .tessera
        .start_cookie_session(
            &user,
            tessera_core::service::DeviceInfo::default(),
            Some(&old_secret),
        )
        .await
        .unwrap();
    let cookie = format!("{name}={}", opened.secret.expose_secret());
    assert_eq!(server.verify_cookie(&cookie).await.status(), 200);
    assert_eq!(server.verify_cookie(&browser.cookie).await.status(), 401);
    assert!(server
        .tessera
        .check_csrf(opened.session.id, &opened.csrf_token));
}
