#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `GET /v1/verify` for a request the proxy reports as unsafe (SPEC §3): a cookie request
//! from a foreign origin is cross-site request forgery aimed at the application behind the
//! proxy, and gets the `Origin` / `Sec-Fetch-Site` check of Tessera's own cookie routes.
//! Bearer requests and safe methods are unchanged.

mod support;

use reqwest::Response;
use support::{start, Browser, TestServer};

const ALLOWED: &str = "https://app.example.com";
const FOREIGN: &str = "https://evil.example";

async fn server() -> (TestServer, Browser) {
    let server = start(&format!("allowed_origins = \"{ALLOWED}\"\n")).await;
    let (_, browser) = server.browser().await;
    (server, browser)
}

async fn verify(server: &TestServer, credential: (&str, &str), extra: &[(&str, &str)]) -> Response {
    let mut request = server
        .client
        .get(server.url("/v1/verify"))
        .header(credential.0, credential.1);
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

fn cookie(browser: &Browser) -> (&'static str, &str) {
    ("cookie", browser.cookie.as_str())
}

async fn assert_refused(res: Response, case: &str) {
    assert_eq!(res.status(), 403, "{case}");
    assert!(res.headers().get("x-auth-user").is_none(), "{case}");
    assert_eq!(
        support::error_code(res).await,
        "origin_not_allowed",
        "{case}"
    );
}

#[tokio::test]
async fn a_cookie_request_for_an_unsafe_method_from_a_foreign_origin_is_refused() {
    let (server, browser) = server().await;
    for header in ["x-forwarded-method", "x-original-method"] {
        for method in ["POST", "PUT", "PATCH", "DELETE", "post"] {
            let res = verify(
                &server,
                cookie(&browser),
                &[(header, method), ("origin", FOREIGN)],
            )
            .await;
            assert_refused(res, &format!("{header}: {method}")).await;
        }
    }
    // A foreign `Referer` when the browser sent no `Origin`.
    let res = verify(
        &server,
        cookie(&browser),
        &[
            ("x-forwarded-method", "POST"),
            ("referer", "https://evil.example/page"),
        ],
    )
    .await;
    assert_refused(res, "foreign referer").await;
    // A safe method in one header does not hide an unsafe one in the other.
    let res = verify(
        &server,
        cookie(&browser),
        &[
            ("x-forwarded-method", "GET"),
            ("x-original-method", "POST"),
            ("origin", FOREIGN),
        ],
    )
    .await;
    assert_refused(res, "both headers").await;
}

#[tokio::test]
async fn sec_fetch_site_cross_site_is_refused_without_an_origin() {
    let (server, browser) = server().await;
    let res = verify(
        &server,
        cookie(&browser),
        &[
            ("x-forwarded-method", "POST"),
            ("sec-fetch-site", "cross-site"),
        ],
    )
    .await;
    assert_refused(res, "sec-fetch-site: cross-site").await;
}

#[tokio::test]
async fn an_allowed_or_same_origin_unsafe_cookie_request_passes() {
    let (server, browser) = server().await;
    let user = browser.body["user"]["id"].as_str().unwrap();
    for extra in [
        vec![("x-forwarded-method", "POST"), ("origin", ALLOWED)],
        vec![
            ("x-original-method", "DELETE"),
            ("origin", "HTTPS://App.Example.com"),
        ],
        vec![
            ("x-forwarded-method", "PUT"),
            ("sec-fetch-site", "same-origin"),
        ],
        vec![
            ("x-forwarded-method", "PATCH"),
            ("referer", "https://app.example.com/edit"),
        ],
        // A client that is not a browser sends neither header.
        vec![("x-forwarded-method", "POST")],
    ] {
        let res = verify(&server, cookie(&browser), &extra).await;
        assert_eq!(res.status(), 200, "{extra:?}");
        assert_eq!(res.headers()["x-auth-user"], user, "{extra:?}");
    }
}

#[tokio::test]
async fn safe_methods_and_bearer_requests_are_not_checked_for_their_origin() {
    let (server, browser) = server().await;
    for extra in [
        vec![("origin", FOREIGN)],
        vec![("x-forwarded-method", "GET"), ("origin", FOREIGN)],
        vec![
            ("x-original-method", "HEAD"),
            ("sec-fetch-site", "cross-site"),
        ],
    ] {
        let res = verify(&server, cookie(&browser), &extra).await;
        assert_eq!(res.status(), 200, "cookie {extra:?}");
    }

    let (_, pair) = server.user_with_tokens().await;
    let bearer = format!("Bearer {}", pair["access_token"].as_str().unwrap());
    for extra in [
        vec![("x-forwarded-method", "POST"), ("origin", FOREIGN)],
        vec![
            ("x-original-method", "DELETE"),
            ("sec-fetch-site", "cross-site"),
        ],
    ] {
        let res = verify(&server, ("authorization", &bearer), &extra).await;
        assert_eq!(res.status(), 200, "bearer {extra:?}");
        assert!(res.headers().get("x-auth-user").is_some());
    }
}

/// A 401 names the sign-in link (`X-Auth-Login`), with the original URL the proxy reported
/// percent-encoded as `return_to`; a 200 and a 403 carry no link.
#[tokio::test]
async fn a_refusal_names_the_sign_in_link_with_the_original_url() {
    let server = start(&format!(
        "allowed_origins = \"{ALLOWED}\"\npublic_url = \"https://id.example.com\"\n"
    ))
    .await;
    let login = |res: &Response| {
        res.headers()
            .get("x-auth-login")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let get = |extra: Vec<(&'static str, &'static str)>| {
        let mut request = server.client.get(server.url("/v1/verify"));
        for (name, value) in extra {
            request = request.header(name, value);
        }
        request.send()
    };
    for (extra, want) in [
        // nginx: the URL as the browser asked for it, `&` and all.
        (
            vec![("x-original-url", "https://app.example.com/a?x=1&y=2")],
            "https://id.example.com/ui/login?return_to=https%3A%2F%2Fapp.example.com%2Fa%3Fx%3D1%26y%3D2",
        ),
        // Caddy, Traefik: the forwarded parts.
        (
            vec![
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "app.example.com"),
                ("x-forwarded-uri", "/b?q=%26"),
            ],
            "https://id.example.com/ui/login?return_to=https%3A%2F%2Fapp.example.com%2Fb%3Fq%3D%2526",
        ),
        // Nothing sane reported: the page without a return_to.
        (
            vec![("x-original-url", "javascript:alert(1)")],
            "https://id.example.com/ui/login",
        ),
        (vec![], "https://id.example.com/ui/login"),
    ] {
        let res = get(extra.clone()).await.unwrap();
        assert_eq!(res.status(), 401, "{extra:?}");
        assert_eq!(login(&res).as_deref(), Some(want), "{extra:?}");
    }
    let res = get(vec![("cookie", "__Host-tessera_session=unknown")])
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(login(&res).is_some());

    let (_, browser) = server.browser().await;
    let res = verify(
        &server,
        cookie(&browser),
        &[("x-original-url", "https://app.example.com/")],
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(login(&res), None);
    let res = verify(
        &server,
        cookie(&browser),
        &[("x-original-method", "POST"), ("origin", FOREIGN)],
    )
    .await;
    assert_eq!(res.status(), 403);
    assert_eq!(login(&res), None);
}

/// `GET /v1/verify` is answered ahead of the router, `HEAD` through it: one handler, so one
/// answer either way; and a path or method beside it is still the router's.
#[tokio::test]
async fn get_ahead_of_the_router_and_head_through_it_answer_alike() {
    let (server, browser) = server().await;
    let identity = [
        "x-auth-user",
        "x-auth-session",
        "x-auth-roles",
        "cache-control",
    ];
    let refusal = ["www-authenticate", "x-auth-login"];
    let cookie_name = browser.cookie.split('=').next().unwrap();
    let unknown = format!("{cookie_name}=not-a-session");
    for (credential, status, names) in [
        (Some(cookie(&browser)), 200, &identity[..]),
        (Some(("cookie", unknown.as_str())), 401, &refusal[..]),
        (None, 401, &refusal[..]),
    ] {
        let [get, head] = [reqwest::Method::GET, reqwest::Method::HEAD].map(|method| {
            let mut request = server
                .client
                .request(method, server.url("/v1/verify"))
                .header("x-forwarded-uri", "/app/page");
            if let Some((name, value)) = credential {
                request = request.header(name, value);
            }
            request.send()
        });
        let (get, head) = (get.await.unwrap(), head.await.unwrap());
        let case = format!("{credential:?}");
        assert_eq!(get.status(), status, "{case}");
        assert_eq!(head.status(), status, "{case}");
        for name in names {
            let value = get.headers().get(*name);
            assert!(value.is_some(), "{case}: GET without {name}");
            assert_eq!(value, head.headers().get(*name), "{case}: {name}");
        }
    }
    for (method, path, status) in [
        (reqwest::Method::GET, "/v1/verify/", 404),
        (reqwest::Method::POST, "/v1/verify", 405),
    ] {
        let res = server.client.request(method, server.url(path)).send();
        assert_eq!(res.await.unwrap().status(), status, "{path}");
    }
}
