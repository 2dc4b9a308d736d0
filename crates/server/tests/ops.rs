//! Operations endpoints (SPEC §3): readiness, Prometheus metrics and the OpenAPI document,
//! over real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{CACHE_CONTROL, CONTENT_TYPE};
use reqwest::{Method, Response};
use serde_json::Value;
use support::{start, start_sqlite, unique_email, TestServer, PASSWORD};
use tessera_server::AppState;

async fn get(server: &TestServer, path: &str) -> Response {
    server.client.get(server.url(path)).send().await.unwrap()
}

fn content_type(res: &Response) -> &str {
    res.headers()[CONTENT_TYPE].to_str().unwrap()
}

/// `/readyz` once the node is ready: the cached mode may need a moment to hear its feed.
async fn ready(server: &TestServer) -> Response {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let res = get(server, "/readyz").await;
        if res.status() == 200 || Instant::now() > deadline {
            return res;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn metrics(server: &TestServer) -> String {
    let res = server
        .client
        .get(format!("{}/metrics", server.metrics_base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        content_type(&res).starts_with("text/plain; version=0.0.4"),
        "{}",
        content_type(&res)
    );
    res.text().await.unwrap()
}

/// The value of the sample `series` (name and labels exactly as exposed), if it is exposed.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        Some(value.parse().unwrap())
    })
}

#[tokio::test]
async fn readyz_reports_the_store_and_revocation_state() {
    for (server, database) in [
        (start("").await, "memory"),
        (start_sqlite("").await, "SQLite"),
    ] {
        let res = ready(&server).await;
        assert_eq!(res.status(), 200);
        assert!(content_type(&res).starts_with("application/json"));
        assert_eq!(res.headers()[CACHE_CONTROL], "no-store");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["status"], "ready");
        assert_eq!(body["store"], "ok");
        let revocation = &body["revocation"];
        assert_eq!(
            revocation["mode"],
            server.tessera.config().revocation_mode.as_str()
        );
        assert_eq!(revocation["fresh"], true);
        assert!(revocation["feed_silence_ms"].is_u64(), "{body}");
        assert!(revocation["last_lag_ms"].is_u64(), "{body}");
        assert_eq!(body["database"], database);
        assert_eq!(revocation["feed"], "store log (polled)");
        assert_eq!(revocation["feed_connected"], true);
        assert_eq!(revocation["feed_reconnects"], 0);
        assert!(revocation["feed_resyncs"].as_u64().unwrap() >= 1, "{body}");
        assert_eq!(body.as_object().unwrap().len(), 4, "nothing else: {body}");
    }

    let server = start("revocation_mode = \"strict\"").await;
    let body: Value = ready(&server).await.json().await.unwrap();
    assert_eq!(body["revocation"]["mode"], "strict");
    assert_eq!(body["revocation"]["fresh"], true);
}

#[tokio::test]
async fn healthz_is_plain_json() {
    let server = start("").await;
    let res = get(&server, "/healthz").await;
    assert_eq!(res.status(), 200);
    assert!(content_type(&res).starts_with("application/json"));
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "ok");
}

/// The `/healthz` histogram after three requests: cumulative buckets ending in `+Inf` =
/// `_count`, a sum, and documented routes exported at zero before their first request.
fn assert_histogram(text: &str) {
    let healthz = r#"route="/healthz",method="GET""#;
    assert_eq!(
        sample(
            text,
            &format!("tessera_http_request_duration_seconds_bucket{{{healthz},le=\"+Inf\"}}")
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            text,
            &format!("tessera_http_request_duration_seconds_count{{{healthz}}}")
        ),
        Some(3.0)
    );
    assert!(
        sample(
            text,
            &format!("tessera_http_request_duration_seconds_sum{{{healthz}}}")
        )
        .unwrap()
            > 0.0
    );
    let buckets: Vec<f64> = text
        .lines()
        .filter(|l| {
            l.starts_with(&format!(
                "tessera_http_request_duration_seconds_bucket{{{healthz},"
            ))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(buckets.len() > 2);
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    // Documented routes are exported before their first request, so rate() works at once.
    assert_eq!(
        sample(
            text,
            r#"tessera_http_request_duration_seconds_count{route="/v1/admin/users/{id}/roles",method="PUT"}"#
        ),
        Some(0.0)
    );
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_never_by_raw_path() {
    let server = start("").await;
    for _ in 0..3 {
        assert_eq!(get(&server, "/healthz").await.status(), 200);
    }
    assert_eq!(get(&server, "/no/such/thing").await.status(), 404);
    let id = "0190f1a2-0000-7000-8000-00000000abcd";
    let res = server
        .client
        .delete(server.url(&format!("/v1/sessions/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = server
        .client
        .post(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);

    let text = metrics(&server).await;
    assert_eq!(
        sample(
            &text,
            r#"tessera_http_requests_total{route="/healthz",method="GET",status="200"}"#
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"tessera_http_requests_total{route="/healthz",method="POST",status="405"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"tessera_http_requests_total{route="/v1/sessions/{id}",method="DELETE",status="401"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"tessera_http_requests_total{route="unmatched",method="GET",status="404"}"#
        ),
        Some(1.0)
    );
    assert!(!text.contains(id), "a raw path leaked into a label");
    assert!(!text.contains("/no/such/thing"), "a raw path leaked");

    assert_histogram(&text);
    for family in [
        "# TYPE tessera_http_requests_total counter",
        "# TYPE tessera_http_request_duration_seconds histogram",
        "# TYPE tessera_verify_total counter",
        "# TYPE tessera_logins_total counter",
        "# TYPE tessera_refreshes_total counter",
        "# TYPE tessera_refresh_reuse_detections_total counter",
        "# TYPE tessera_revocation_lag_seconds gauge",
        "# TYPE tessera_revocation_feed_silence_seconds gauge",
        "# TYPE tessera_revocation_fresh gauge",
    ] {
        assert!(text.contains(family), "{family} missing");
    }
}

#[tokio::test]
async fn metrics_count_verify_outcomes_logins_refreshes_and_reuse() {
    let server = start_sqlite("").await;
    let email = unique_email();
    server.sign_up(&email).await;
    let browser = server.login(&email).await;
    let res = server
        .login_raw(&email, "wrong password!", reqwest::header::HeaderMap::new())
        .await;
    assert_eq!(res.status(), 401);

    assert_eq!(
        get(&server, "/v1/verify").await.status(),
        401,
        "no credential"
    );
    assert_eq!(server.verify_bearer("not.a.jwt").await.status(), 401);
    assert_eq!(server.verify_cookie(&browser.cookie).await.status(), 200);

    let pair = server.password_grant(&email).await;
    let first = pair["refresh_token"].as_str().unwrap();
    let res = server.refresh(first).await;
    assert_eq!(res.status(), 200);
    let second: Value = res.json().await.unwrap();
    let second = second["refresh_token"].as_str().unwrap();
    assert_eq!(server.refresh(second).await.status(), 200);
    // Two generations old: reuse, whatever the grace window.
    assert_eq!(server.refresh(first).await.status(), 400, "reuse");

    let text = metrics(&server).await;
    let expect = |series: &str, value: f64| {
        assert_eq!(sample(&text, series), Some(value), "{series}\n{text}");
    };
    expect(r#"tessera_verify_total{outcome="ok"}"#, 1.0);
    expect(r#"tessera_verify_total{outcome="missing_credential"}"#, 1.0);
    expect(r#"tessera_verify_total{outcome="malformed"}"#, 1.0);
    expect(r#"tessera_verify_total{outcome="unavailable"}"#, 0.0);
    // The cookie login and the password grant both check a password.
    expect(r#"tessera_logins_total{result="ok"}"#, 2.0);
    expect(r#"tessera_logins_total{result="failed"}"#, 1.0);
    expect("tessera_refreshes_total", 2.0);
    expect("tessera_refresh_reuse_detections_total", 1.0);
    expect(
        r#"tessera_http_requests_total{route="/v1/verify",method="GET",status="401"}"#,
        2.0,
    );
    expect(
        r#"tessera_http_requests_total{route="/v1/login",method="POST",status="401"}"#,
        1.0,
    );
    let fresh = text
        .lines()
        .find(|l| l.starts_with("tessera_revocation_fresh{"))
        .unwrap();
    assert!(fresh.contains("mode=\"cached\""), "{fresh}");
    assert!(sample(&text, "tessera_revocation_lag_seconds").is_some());
    assert!(sample(&text, "tessera_revocation_feed_silence_seconds").is_some());
    assert!(!text.contains(PASSWORD));
}

/// The paths the router itself holds. axum has no public route list, so this reads its `Debug`
/// output (`Node { paths: {RouteId(0): "/v1/users", ..} }`); the caller fails if nothing is
/// found, so a change of that format cannot make the check pass vacuously.
fn router_paths(router: &axum::Router) -> BTreeSet<String> {
    let debug = format!("{router:?}");
    // Only the main router: the fallback router holds axum's private catch-all paths.
    let main = debug.split("fallback_router").next().unwrap();
    main.split("RouteId(")
        .filter_map(|piece| {
            let (id, rest) = piece.split_once("): \"")?;
            id.chars().all(|c| c.is_ascii_digit()).then_some(())?;
            Some(rest.split_once('"')?.0.to_owned())
        })
        .collect()
}

/// A request path for a route template, with every `{param}` filled in.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                "0190f1a2-0000-7000-8000-00000000abcd"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

const PROBED: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

#[tokio::test]
async fn openapi_documents_exactly_the_routes_the_router_serves() {
    let server = start("").await;
    let res = get(&server, "/openapi.json").await;
    assert_eq!(res.status(), 200);
    assert_eq!(content_type(&res), "application/json");
    let doc: Value = res.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(doc["servers"][0]["url"], server.base);

    let mut documented: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let methods = item
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| PROBED.iter().any(|m| m.as_str().eq_ignore_ascii_case(k)))
            .map(|k| k.to_ascii_uppercase())
            .collect();
        documented.insert(path.clone(), methods);
    }
    for ops in ["/healthz", "/readyz", "/openapi.json"] {
        assert_eq!(
            documented.get(ops),
            Some(&BTreeSet::from(["GET".to_owned()])),
            "{ops}"
        );
    }
    assert!(
        !documented.contains_key("/metrics"),
        "/metrics is served on metrics_listen, not on the API's address"
    );

    // What the router serves: its own paths, and for each the methods that are not answered
    // by the 405 fallback.
    let router = tessera_server::router(AppState::new(Arc::clone(&server.tessera)));
    let paths = router_paths(&router);
    assert!(
        paths.len() >= 4,
        "could not read the router's paths from its Debug output (has axum changed it?): {paths:?}"
    );
    let mut answered: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in paths {
        let mut methods = BTreeSet::new();
        for method in PROBED {
            let res = server
                .client
                .request(method.clone(), server.url(&concrete(&path)))
                .send()
                .await
                .unwrap();
            if res.status() != 405 {
                methods.insert(method.as_str().to_owned());
            }
        }
        answered.insert(path, methods);
    }
    let pairs = |routes: &BTreeMap<String, BTreeSet<String>>| -> BTreeSet<String> {
        routes
            .iter()
            .flat_map(|(path, methods)| methods.iter().map(move |m| format!("{m} {path}")))
            .collect()
    };
    let (answered, documented) = (pairs(&answered), pairs(&documented));
    let undocumented: Vec<_> = answered.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&answered).collect();
    assert!(
        undocumented.is_empty(),
        "answered but missing from /openapi.json: {undocumented:?}; mount routes with `routes!` \
         in lib.rs, on handlers that carry #[utoipa::path]"
    );
    assert!(
        unserved.is_empty(),
        "documented but not answered: {unserved:?}"
    );
    assert!(answered.len() >= 20, "{answered:?}");

    // The metrics address holds `/metrics` and nothing else.
    let metrics_router = tessera_server::metrics_router(AppState::new(Arc::clone(&server.tessera)));
    assert_eq!(
        router_paths(&metrics_router),
        BTreeSet::from(["/metrics".to_owned()])
    );
    for method in PROBED {
        let res = server
            .client
            .request(method.clone(), format!("{}/metrics", server.metrics_base))
            .send()
            .await
            .unwrap();
        let expected = if method == Method::GET { 200 } else { 405 };
        assert_eq!(res.status(), expected, "{method} /metrics");
    }
}

#[tokio::test]
async fn metrics_are_served_on_the_metrics_address_only() {
    let server = start("").await;
    assert_eq!(get(&server, "/healthz").await.status(), 200);
    let res = get(&server, "/metrics").await;
    assert_eq!(res.status(), 404, "not on the API's address");
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"],
        "not_found",
        "in the API's error shape"
    );
    let text = metrics(&server).await;
    assert!(text.contains("# TYPE tessera_http_requests_total counter"));
    // The API's 404 for /metrics is counted as an unmatched request, like any unknown path.
    assert_eq!(
        sample(
            &text,
            r#"tessera_http_requests_total{route="unmatched",method="GET",status="404"}"#
        ),
        Some(1.0),
        "{text}"
    );
    for path in ["/healthz", "/openapi.json", "/v1/verify"] {
        let res = server
            .client
            .get(format!("{}{path}", server.metrics_base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "{path} is not on the metrics address");
    }
    assert_ne!(server.base, server.metrics_base);
}

#[tokio::test]
async fn openapi_describes_bodies_and_resolves_its_references() {
    let server = start("").await;
    let doc: Value = get(&server, "/openapi.json").await.json().await.unwrap();
    let body =
        |path: &str, method: &str| doc["paths"][path][method]["requestBody"]["content"].clone();
    assert!(
        body("/v1/users", "post")["application/json"]["schema"]["$ref"]
            .as_str()
            .unwrap()
            .ends_with("/Credentials")
    );
    let login = body("/v1/login", "post");
    assert!(login["application/json"].is_object());
    assert!(login["application/x-www-form-urlencoded"].is_object());
    assert!(body("/oauth2/token", "post")["application/x-www-form-urlencoded"].is_object());
    assert!(body("/v1/admin/users/{id}/roles", "put")["application/json"].is_object());
    let security_schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    assert_eq!(
        security_schemes["session_cookie"]["name"],
        server.tessera.config().cookie_name.as_str()
    );

    // Every `$ref` points at a schema that exists, and every security requirement at a scheme.
    let component_schemas = doc["components"]["schemas"].as_object().unwrap();
    let text = doc.to_string();
    for reference in text.split("\"$ref\":\"").skip(1) {
        let target = reference.split('"').next().unwrap();
        let name = target.strip_prefix("#/components/schemas/").unwrap();
        assert!(component_schemas.contains_key(name), "dangling {target}");
    }
    for item in doc["paths"].as_object().unwrap().values() {
        for operation in item.as_object().unwrap().values() {
            for requirement in operation["security"].as_array().into_iter().flatten() {
                for scheme in requirement.as_object().unwrap().keys() {
                    assert!(
                        security_schemes.contains_key(scheme),
                        "unknown scheme {scheme}"
                    );
                }
            }
            assert!(operation["responses"]
                .as_object()
                .is_some_and(|r| !r.is_empty()));
        }
    }
}
