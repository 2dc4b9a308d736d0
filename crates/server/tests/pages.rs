//! The browser pages (SPEC §3 "Pages for browsers") through the real router: sign-up, sign-in
//! with its login-CSRF and open-redirect defences and the guessing limits, the device list
//! and its sign-out buttons, and sign-out. Forms are posted as a browser posts them
//! (form-encoded, with `Origin`), cookies carried by hand.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::Response;
use serde_json::Value;
use support::{start, unique_email, TestServer, PASSWORD};

/// The origin a browser on the server's own pages sends.
fn origin(server: &TestServer) -> String {
    server.config.allowed_origins[0].clone()
}

/// `name=value` of every cookie the answer sets.
fn set_cookies(res: &Response) -> Vec<String> {
    res.headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
        .collect()
}

fn session_cookie_of(res: &Response) -> String {
    set_cookies(res)
        .into_iter()
        .find(|c| c.starts_with("__Host-tessera_session=") && c.len() > 30)
        .unwrap_or_else(|| panic!("no session cookie set: {:?}", res.headers()))
}

fn device_cookie_of(res: &Response) -> String {
    set_cookies(res)
        .into_iter()
        .find(|c| c.starts_with("__Host-tessera_device="))
        .unwrap_or_else(|| panic!("no device cookie set: {:?}", res.headers()))
}

fn location(res: &Response) -> String {
    res.headers()[LOCATION].to_str().unwrap().to_owned()
}

/// A form post as a browser sends it from the page: `Origin` of the server unless `origin`
/// says otherwise (`None`: no `Origin` at all).
async fn post_form(
    server: &TestServer,
    path: &str,
    fields: &[(&str, &str)],
    cookie: Option<&str>,
    origin: Option<&str>,
    user_agent: &str,
) -> Response {
    let mut request = server
        .client
        .post(server.url(path))
        .header("user-agent", user_agent)
        .form(fields);
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    if let Some(cookie) = cookie {
        request = request.header(COOKIE, cookie);
    }
    request.send().await.unwrap()
}

async fn get(server: &TestServer, path: &str, cookie: Option<&str>) -> Response {
    let mut request = server.client.get(server.url(path));
    if let Some(cookie) = cookie {
        request = request.header(COOKIE, cookie);
    }
    request.send().await.unwrap()
}

/// Signs in through the page from a browser named `user_agent`: the session cookie.
async fn page_login(server: &TestServer, email: &str, user_agent: &str) -> String {
    let res = post_form(
        server,
        "/ui/login",
        &[("email", email), ("password", PASSWORD)],
        None,
        Some(&origin(server)),
        user_agent,
    )
    .await;
    assert_eq!(res.status(), 303, "{}", res.text().await.unwrap());
    session_cookie_of(&res)
}

/// The CSRF token in a page's forms.
fn csrf_of(html: &str) -> String {
    let (_, rest) = html.split_once("name=\"csrf_token\" value=\"").unwrap();
    rest.split('"').next().unwrap().to_owned()
}

async fn session_id(server: &TestServer, cookie: &str) -> String {
    let me: Value = server
        .session_with_cookie(cookie)
        .await
        .json()
        .await
        .unwrap();
    me["session"]["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn sign_up_page_signs_the_browser_up_and_in_and_shows_errors_beside_their_field() {
    let server = start("").await;
    let page = get(&server, "/ui/signup?return_to=/ui/devices", None).await;
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["referrer-policy"], "same-origin");
    assert_eq!(page.headers()["cache-control"], "no-store");
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(
        html.contains("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"),
        "{html}"
    );
    for tied in [
        "<label for=\"email\">",
        "id=\"email\"",
        "<label for=\"password\">",
        "id=\"password\"",
    ] {
        assert!(html.contains(tied), "{tied} in {html}");
    }
    assert!(html.contains("name=\"return_to\" value=\"http"), "{html}");

    let email = unique_email();
    let me = origin(&server);
    // A weak password, beside the password field, the address kept.
    let weak = post_form(
        &server,
        "/ui/signup",
        &[("email", &email), ("password", "short")],
        None,
        Some(&me),
        "test",
    )
    .await;
    assert_eq!(weak.status(), 400);
    let html = weak.text().await.unwrap();
    assert!(
        html.contains("aria-describedby=\"password-error\""),
        "{html}"
    );
    assert!(html.contains("id=\"password-error\""), "{html}");
    assert!(!html.contains("aria-describedby=\"email-error\""), "{html}");
    assert!(html.contains(&format!("value=\"{email}\"")), "{html}");
    // A bad address, beside the address.
    let bad = post_form(
        &server,
        "/ui/signup",
        &[("email", "not an address"), ("password", PASSWORD)],
        None,
        Some(&me),
        "test",
    )
    .await;
    assert_eq!(bad.status(), 400);
    assert!(bad
        .text()
        .await
        .unwrap()
        .contains("aria-describedby=\"email-error\""));

    // Signed up and in at once, sent on to return_to.
    let done = post_form(
        &server,
        "/ui/signup",
        &[
            ("email", &email),
            ("password", PASSWORD),
            ("return_to", "/ui/devices"),
        ],
        None,
        Some(&me),
        "test",
    )
    .await;
    assert_eq!(done.status(), 303);
    assert_eq!(location(&done), format!("{me}/ui/devices"));
    let cookie = session_cookie_of(&done);
    device_cookie_of(&done);
    let devices = get(&server, "/ui/devices", Some(&cookie)).await;
    assert_eq!(devices.status(), 200);
    assert!(devices.text().await.unwrap().contains(&email));

    // The same address again: taken, said beside the address.
    let taken = post_form(
        &server,
        "/ui/signup",
        &[("email", &email), ("password", PASSWORD)],
        None,
        Some(&me),
        "test",
    )
    .await;
    assert_eq!(taken.status(), 409);
    assert!(taken.text().await.unwrap().contains("id=\"email-error\""));
}

#[tokio::test]
async fn sign_in_page_signs_in_and_refuses_cross_origin_posts() {
    let server = start("").await;
    let email = unique_email();
    server.sign_up(&email).await;
    let page = get(&server, "/ui/login", None).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("<label for=\"email\">") && html.contains("<label for=\"password\">"));
    assert!(html.contains("action=\"login\""), "{html}");

    let fields = [("email", email.as_str()), ("password", PASSWORD)];
    // Login CSRF: no origin at all, a foreign one, the `null` origin, a cross-site fetch.
    for origin in [None, Some("https://evil.example"), Some("null")] {
        let res = post_form(&server, "/ui/login", &fields, None, origin, "test").await;
        assert_eq!(res.status(), 403, "{origin:?}");
        assert!(res.headers().get(SET_COOKIE).is_none(), "{origin:?}");
        assert!(res.text().await.unwrap().contains("another site"));
    }
    let cross_site = server
        .client
        .post(server.url("/ui/login"))
        .header("origin", origin(&server))
        .header("sec-fetch-site", "cross-site")
        .form(&fields)
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), 403);
    // A `Referer` of this site stands in for `Origin`.
    let referred = server
        .client
        .post(server.url("/ui/login"))
        .header("referer", format!("{}/ui/login", origin(&server)))
        .form(&fields)
        .send()
        .await
        .unwrap();
    assert_eq!(referred.status(), 303);

    // From the page: signed in, to the device list by default.
    let res = post_form(
        &server,
        "/ui/login",
        &fields,
        None,
        Some(&origin(&server)),
        "test",
    )
    .await;
    assert_eq!(res.status(), 303);
    assert_eq!(location(&res), format!("{}/ui/devices", origin(&server)));
    let cookie = session_cookie_of(&res);
    assert_eq!(server.session_with_cookie(&cookie).await.status(), 200);

    // A wrong password: 401, said beside the password, the address kept, nothing set.
    let wrong = post_form(
        &server,
        "/ui/login",
        &[("email", &email), ("password", "not the password")],
        None,
        Some(&origin(&server)),
        "test",
    )
    .await;
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get(SET_COOKIE).is_none());
    let html = wrong.text().await.unwrap();
    assert!(
        html.contains("aria-describedby=\"password-error\""),
        "{html}"
    );
    assert!(html.contains("Wrong email address or password"), "{html}");
    assert!(html.contains(&format!("value=\"{email}\"")), "{html}");
}

/// The page shows the wait the guessing limits impose, and honours the device cookie as the
/// JSON login does: the account's known browser still gets in.
#[tokio::test]
async fn forms_posted_from_public_url_are_accepted_when_it_is_another_origin() {
    // The pages served at a `public_url` apart from the issuer (an auth subdomain behind a
    // proxy) are posted from that origin, though `allowed_origins` (by default the issuer's)
    // does not list it.
    let server = start("public_url = \"https://id.example.org\"").await;
    let email = unique_email();
    server.sign_up(&email).await;
    let fields = [("email", email.as_str()), ("password", PASSWORD)];
    let own = Some("https://id.example.org");
    let res = post_form(&server, "/ui/login", &fields, None, own, "test").await;
    assert_ne!(res.status(), 403);
    session_cookie_of(&res);
    let foreign = Some("https://evil.example");
    let res = post_form(&server, "/ui/login", &fields, None, foreign, "test").await;
    assert_eq!(res.status(), 403);
}

#[tokio::test]
async fn sign_in_page_shows_the_lockout_wait_and_lets_a_known_device_in() {
    let server = start("login_max_failures = 2\nlogin_failure_window = \"15m\"").await;
    let email = unique_email();
    server.sign_up(&email).await;
    let me = origin(&server);
    // This browser signs in once and keeps its device cookie.
    let first = post_form(
        &server,
        "/ui/login",
        &[("email", &email), ("password", PASSWORD)],
        None,
        Some(&me),
        "known",
    )
    .await;
    assert_eq!(first.status(), 303);
    let device = device_cookie_of(&first);

    // Someone else guesses until the account is locked.
    for _ in 0..2 {
        let res = post_form(
            &server,
            "/ui/login",
            &[("email", &email), ("password", "a wrong guess")],
            None,
            Some(&me),
            "guesser",
        )
        .await;
        assert_eq!(res.status(), 401);
    }
    let locked = post_form(
        &server,
        "/ui/login",
        &[("email", &email), ("password", PASSWORD)],
        None,
        Some(&me),
        "guesser",
    )
    .await;
    assert_eq!(locked.status(), 429);
    let retry_after: u64 = locked.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=900).contains(&retry_after), "{retry_after}");
    assert!(locked.headers().get(SET_COOKIE).is_none());
    let html = locked.text().await.unwrap();
    assert!(html.contains("aria-describedby=\"email-error\""), "{html}");
    assert!(
        html.contains("Try again in 15 minutes") || html.contains("Try again in 14 minutes"),
        "{html}"
    );

    // The known browser, with its device cookie, is not locked out.
    let known = post_form(
        &server,
        "/ui/login",
        &[("email", &email), ("password", PASSWORD)],
        Some(&device),
        Some(&me),
        "known",
    )
    .await;
    assert_eq!(known.status(), 303);
    session_cookie_of(&known);
}

#[tokio::test]
async fn return_to_is_followed_only_to_allowed_places() {
    let server = start("allowed_origins = \"http://127.0.0.1, https://app.example.org\"").await;
    let me = server.base.clone();
    let email = unique_email();
    server.sign_up(&email).await;

    // An allowed origin: the page's form may lead there, and sign-in goes there.
    let page = get(
        &server,
        "/ui/login?return_to=https%3A%2F%2Fapp.example.org%2Fafter%3Fx%3D1",
        None,
    )
    .await;
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("form-action 'self' https://app.example.org;"),
        "{csp}"
    );
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("name=\"return_to\" value=\"https://app.example.org/after?x=1\""));
    // This server's own pages are allowed: allowed_origins here does not name its port, but
    // public_url is always allowed.
    let somewhere = format!("{me}/somewhere");
    for (return_to, expected) in [
        (
            "https://app.example.org/after?x=1",
            "https://app.example.org/after?x=1".to_owned(),
        ),
        ("/ui/devices", format!("{me}/ui/devices")),
        (somewhere.as_str(), somewhere.clone()),
    ] {
        let res = post_form(
            &server,
            "/ui/login",
            &[
                ("email", &email),
                ("password", PASSWORD),
                ("return_to", return_to),
            ],
            None,
            Some("https://app.example.org"),
            "test",
        )
        .await;
        assert_eq!(res.status(), 303, "{return_to}");
        assert_eq!(location(&res), expected);
    }

    // Open-redirect attempts: refused on the page and on the post, and nobody is signed in.
    for evil in [
        "https://evil.com",
        "https://app.example.org.evil.com/",
        "//evil.com",
        "https:evil.com",
        "https://app.example.org@evil.com",
        "/\\evil.com",
        "/%2F%2Fevil.com",
        "javascript:alert(1)",
        "https://sub.app.example.org/",
    ] {
        let query = serde_urlencoded::to_string([("return_to", evil)]).unwrap();
        let page = get(&server, &format!("/ui/login?{query}"), None).await;
        assert_eq!(page.status(), 400, "{evil}");
        let html = page.text().await.unwrap();
        assert!(
            html.contains("will not be sent there") || html.contains("backslashes"),
            "{evil}: {html}"
        );
        assert!(
            !html.contains("name=\"password\""),
            "{evil}: no sign-in form"
        );
        let res = post_form(
            &server,
            "/ui/login",
            &[
                ("email", &email),
                ("password", PASSWORD),
                ("return_to", evil),
            ],
            None,
            Some(&origin(&server)),
            "test",
        )
        .await;
        assert_eq!(res.status(), 400, "{evil}");
        assert!(res.headers().get(LOCATION).is_none(), "{evil}");
        assert!(res.headers().get(SET_COOKIE).is_none(), "{evil}");
        let signup = get(&server, &format!("/ui/signup?{query}"), None).await;
        assert_eq!(signup.status(), 400, "{evil}");
    }
}

/// With `cookie_domain`, an https host under it is allowed; plain http and other hosts not.
#[tokio::test]
async fn return_to_may_name_an_https_host_under_the_cookie_domain() {
    let shared = start("cookie_domain = \"example.org\"").await;
    let email = unique_email();
    shared.sign_up(&email).await;
    let under = [
        ("https://deep.sub.example.org/x", 303),
        ("http://app.example.org/", 400),
        ("https://example.org.evil.com/", 400),
    ];
    for (return_to, status) in under {
        let res = post_form(
            &shared,
            "/ui/login",
            &[
                ("email", &email),
                ("password", PASSWORD),
                ("return_to", return_to),
            ],
            None,
            Some(&origin(&shared)),
            "test",
        )
        .await;
        assert_eq!(res.status(), status, "{return_to}");
        if status == 303 {
            assert_eq!(location(&res), return_to);
            let set = res.headers()[SET_COOKIE].to_str().unwrap();
            assert!(
                set.starts_with("__Secure-tessera_session=") && set.contains("Domain=example.org"),
                "{set}"
            );
        }
    }
}

#[tokio::test]
async fn devices_page_lists_the_sessions_and_signs_one_out() {
    let server = start("").await;
    let email = unique_email();
    server.sign_up(&email).await;
    let laptop = page_login(&server, &email, "Laptop Browser/1.0").await;
    let phone = page_login(&server, &email, "Phone Browser/2.0").await;
    let phone_id = session_id(&server, &phone).await;
    let laptop_id = session_id(&server, &laptop).await;

    let page = get(&server, "/ui/devices", Some(&laptop)).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    for shown in [
        "Laptop Browser/1.0",
        "Phone Browser/2.0",
        "IP address: 127.0.0.1",
        "Last seen: ",
        &email,
        &format!("data-session=\"{phone_id}\""),
        &format!("data-session=\"{laptop_id}\""),
    ] {
        assert!(html.contains(shown), "{shown} in {html}");
    }
    // This device is marked, once, and listed first.
    assert_eq!(html.matches("This device").count(), 1, "{html}");
    assert!(html.find(&laptop_id).unwrap() < html.find(&phone_id).unwrap());
    assert!(html.contains("Sign out everywhere"));
    let csrf = csrf_of(&html);
    let me = origin(&server);

    // Without the CSRF token, or from another site: refused, nothing done.
    let no_token = post_form(
        &server,
        "/ui/devices",
        &[("session", &phone_id)],
        Some(&laptop),
        Some(&me),
        "t",
    )
    .await;
    assert_eq!(no_token.status(), 403);
    let foreign = post_form(
        &server,
        "/ui/devices",
        &[("session", &phone_id), ("csrf_token", &csrf)],
        Some(&laptop),
        Some("https://evil.example"),
        "t",
    )
    .await;
    assert_eq!(foreign.status(), 403);
    assert_eq!(server.session_with_cookie(&phone).await.status(), 200);

    // Someone else's session, or none: 404 on the list.
    let unknown = post_form(
        &server,
        "/ui/devices",
        &[
            ("session", "0190b4c4-8c2e-7000-8000-000000000000"),
            ("csrf_token", &csrf),
        ],
        Some(&laptop),
        Some(&me),
        "t",
    )
    .await;
    assert_eq!(unknown.status(), 404);

    // The phone signed out from the laptop.
    let out = post_form(
        &server,
        "/ui/devices",
        &[("session", &phone_id), ("csrf_token", &csrf)],
        Some(&laptop),
        Some(&me),
        "t",
    )
    .await;
    assert_eq!(out.status(), 303);
    assert_eq!(location(&out), "devices");
    assert_eq!(server.session_with_cookie(&phone).await.status(), 401);
    let refused = get(&server, "/ui/devices", Some(&phone)).await;
    assert_eq!(refused.status(), 303);
    assert_eq!(location(&refused), "login");
    let html = get(&server, "/ui/devices", Some(&laptop))
        .await
        .text()
        .await
        .unwrap();
    assert!(!html.contains(&phone_id), "{html}");
    assert_eq!(server.session_with_cookie(&laptop).await.status(), 200);

    // Not signed in at all: to the sign-in page.
    let anonymous = get(&server, "/ui/devices", None).await;
    assert_eq!(anonymous.status(), 303);
    assert_eq!(location(&anonymous), "login");
}

#[tokio::test]
async fn logout_needs_the_csrf_token_clears_the_cookie_and_can_sign_out_everywhere() {
    let server = start("").await;
    let email = unique_email();
    server.sign_up(&email).await;
    let me = origin(&server);
    let a = page_login(&server, &email, "A").await;
    let b = page_login(&server, &email, "B").await;

    // The GET page is a button, and changes nothing.
    let page = get(&server, "/ui/logout", Some(&a)).await;
    assert_eq!(page.status(), 200);
    let csrf = csrf_of(&page.text().await.unwrap());
    assert_eq!(server.session_with_cookie(&a).await.status(), 200);

    let forged = post_form(
        &server,
        "/ui/logout",
        &[("csrf_token", "forged")],
        Some(&a),
        Some(&me),
        "A",
    )
    .await;
    assert_eq!(forged.status(), 403);
    assert_eq!(server.session_with_cookie(&a).await.status(), 200);

    let out = post_form(
        &server,
        "/ui/logout",
        &[("csrf_token", &csrf)],
        Some(&a),
        Some(&me),
        "A",
    )
    .await;
    assert_eq!(out.status(), 303);
    assert_eq!(location(&out), "login");
    let cleared = out.headers()[SET_COOKIE].to_str().unwrap();
    assert!(
        cleared.starts_with("__Host-tessera_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    assert_eq!(server.session_with_cookie(&a).await.status(), 401);
    assert_eq!(server.session_with_cookie(&b).await.status(), 200);

    // Everywhere: every session of the account.
    let c = page_login(&server, &email, "C").await;
    let html = get(&server, "/ui/devices", Some(&c))
        .await
        .text()
        .await
        .unwrap();
    let csrf = csrf_of(&html);
    let all = post_form(
        &server,
        "/ui/logout",
        &[("csrf_token", &csrf), ("everywhere", "true")],
        Some(&c),
        Some(&me),
        "C",
    )
    .await;
    assert_eq!(all.status(), 303);
    assert_eq!(server.session_with_cookie(&b).await.status(), 401);
    assert_eq!(server.session_with_cookie(&c).await.status(), 401);

    // Signed out already: the page sends the browser to sign in.
    let gone = get(&server, "/ui/logout", Some(&c)).await;
    assert_eq!(gone.status(), 303);
}

/// With `require_verified_email`, a sign-up is not signed in: the sign-in page says to
/// confirm the address first, beside it, and no session cookie is set.
#[tokio::test]
async fn sign_up_with_required_verification_asks_to_confirm_the_address_first() {
    let server = start("require_verified_email = true").await;
    let email = unique_email();
    let res = post_form(
        &server,
        "/ui/signup",
        &[
            ("email", &email),
            ("password", PASSWORD),
            ("return_to", "/ui/devices"),
        ],
        None,
        Some(&origin(&server)),
        "test",
    )
    .await;
    assert_eq!(res.status(), 403);
    assert!(
        !set_cookies(&res)
            .iter()
            .any(|c| c.starts_with("__Host-tessera_session=")),
        "{:?}",
        res.headers()
    );
    let html = res.text().await.unwrap();
    assert!(html.contains("aria-describedby=\"email-error\""), "{html}");
    assert!(html.contains("Confirm this address first"), "{html}");
    assert!(html.contains("action=\"login\""), "{html}");
    assert!(
        html.contains("name=\"return_to\""),
        "return_to is kept: {html}"
    );
    // The account exists: signing up again says so.
    let again = post_form(
        &server,
        "/ui/signup",
        &[("email", &email), ("password", PASSWORD)],
        None,
        Some(&origin(&server)),
        "test",
    )
    .await;
    assert_eq!(again.status(), 409);
}
