//! Inputs that must not panic, as property tests (proptest): the session cookie and the
//! `Authorization` header as parsed and as a real server answers them, and the bodies of
//! `POST /v1/login`, `POST /v1/users` and `POST /oauth2/token` sent over real HTTP to a real
//! node on the memory store. Arbitrary bytes under arbitrary content types get a 4xx; bodies of
//! the right shape with arbitrary values get no 5xx (a panic would be a 500: the router turns
//! panics into one). The sign-in page takes arbitrary `return_to` values and must never
//! redirect off the allowed origins; the pages' forms take arbitrary bodies. 256 generated
//! cases a property (128 for the two of the pages), 2 304 in all. The bodies that reach
//! argon2id (a login or a password grant with string fields, a sign-up that passes the
//! policy) take tens of milliseconds each; with one node on the memory store for the whole
//! file, it runs in about 15 s.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::OnceLock;

use proptest::prelude::*;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, COOKIE};
use serde_json::{json, Value};
use support::*;
use tessera_server::auth::{session_cookie, Credential};

const CASES: u32 = 256;
const ORIGIN: &str = "https://app.example";
/// A cookie value's characters (RFC 6265 §4.1.1 `cookie-octet`), at most 20 of them.
const COOKIE_OCTETS: &str = "[!#-+\\--:<-\\[\\]-~]{0,20}";

/// One runtime and one node for every case of this file: starting a node per case would cost
/// more than the cases.
fn node() -> &'static (tokio::runtime::Runtime, TestServer) {
    static NODE: OnceLock<(tokio::runtime::Runtime, TestServer)> = OnceLock::new();
    NODE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = runtime.block_on(start(&format!("allowed_origins = [\"{ORIGIN}\"]\n")));
        (runtime, server)
    })
}

/// Posts `body` to `path` with the given headers; returns the status and the body's `error`.
fn post(path: &str, headers: HeaderMap, body: Vec<u8>) -> (u16, Value) {
    let (runtime, server) = node();
    runtime.block_on(async {
        let res = server
            .client
            .post(server.url(path))
            .headers(headers)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let body = res.json::<Value>().await.unwrap_or(Value::Null);
        (status, body["error"].clone())
    })
}

fn get_session(headers: HeaderMap) -> (u16, Value) {
    let (runtime, server) = node();
    runtime.block_on(async {
        let res = server
            .client
            .get(server.url("/v1/session"))
            .headers(headers)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let body = res.json::<Value>().await.unwrap_or(Value::Null);
        (status, body["error"].clone())
    })
}

/// The content types a client might send, right, wrong, odd or missing.
fn content_type() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("application/json".to_owned())),
        Just(Some("application/json; charset=utf-8".to_owned())),
        Just(Some("application/x-www-form-urlencoded".to_owned())),
        Just(Some(
            "APPLICATION/X-WWW-FORM-URLENCODED; charset=latin1".to_owned()
        )),
        Just(Some("multipart/form-data; boundary=xyz".to_owned())),
        Just(Some("text/plain".to_owned())),
        Just(Some("application/jsonx".to_owned())),
        "[ -~]{0,60}".prop_map(Some),
    ]
}

/// Bytes as a fuzzer sends them, text, and text that looks like JSON or a form.
fn body_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..2048),
        any::<String>().prop_map(String::into_bytes),
        r#"\{("[a-z_]{0,10}":("\PC{0,20}"|-?[0-9]{1,30}|null|true|\[\]|\{\}),?){0,4}\}?"#
            .prop_map(String::into_bytes),
        "([a-z_%]{0,10}=[\\PC&&[^&]]{0,20}&?){0,4}".prop_map(String::into_bytes),
    ]
}

fn headers(content_type: Option<&str>, origin: bool) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(ct) = content_type {
        headers.insert(CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
    }
    if origin {
        headers.insert(
            HeaderName::from_static("origin"),
            HeaderValue::from_static(ORIGIN),
        );
    }
    headers
}

/// A JSON value of any shape, strings weighted, with the occasional long one.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        4 => any::<String>().prop_map(Value::from),
        2 => "[a-z0-9.+-]{1,12}@[a-z]{1,8}\\.(com|test)".prop_map(Value::from),
        1 => "\\PC{1020,1030}".prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<f64>().prop_map(|f| json!(f)),
        1 => any::<bool>().prop_map(Value::from),
        1 => Just(Value::Null),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
            proptest::collection::btree_map("\\PC{0,8}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn form_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z0-9.+-]{1,12}@[a-z]{1,8}\\.(com|test)",
        Just(PASSWORD.to_owned()),
    ]
}

fn form(fields: &[(&str, &Option<String>)]) -> Vec<u8> {
    let present: Vec<(&str, &str)> = fields
        .iter()
        .filter_map(|(name, value)| value.as_deref().map(|v| (*name, v)))
        .collect();
    serde_urlencoded::to_string(present).unwrap().into_bytes()
}

fn assert_client_error(status: u16, error: &Value, what: &str) -> Result<(), TestCaseError> {
    prop_assert!((400..500).contains(&status), "{what}: {status} {error}");
    prop_assert!(error.is_string(), "{what}: {status} without an error code");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn login_answers_arbitrary_bodies_with_a_4xx(
        ct in content_type(), origin in any::<bool>(), body in body_bytes(),
    ) {
        let (status, error) = post("/v1/login", headers(ct.as_deref(), origin), body);
        assert_client_error(status, &error, "login")?;
    }

    #[test]
    fn sign_up_answers_arbitrary_bodies_with_a_4xx(ct in content_type(), body in body_bytes()) {
        let (status, error) = post("/v1/users", headers(ct.as_deref(), false), body);
        assert_client_error(status, &error, "sign-up")?;
    }

    #[test]
    fn the_token_endpoint_answers_arbitrary_bodies_with_a_4xx(
        ct in content_type(), body in body_bytes(),
    ) {
        let (status, error) = post("/oauth2/token", headers(ct.as_deref(), false), body);
        assert_client_error(status, &error, "token")?;
    }

    /// Cookies and `Authorization` values of every shape, as the parsers see them: no
    /// panic, and a session cookie among arbitrary other pairs is the one found.
    #[test]
    fn cookie_and_authorization_parsing_never_panic(
        cookie in proptest::collection::vec(any::<u8>(), 0..300),
        authorization in proptest::collection::vec(any::<u8>(), 0..300),
        others in proptest::collection::vec(("[A-Za-z0-9_.-]{1,12}", COOKIE_OCTETS), 0..4),
        value in "[A-Za-z0-9_-]{1,64}",
    ) {
        let name = "tessera_session";
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_bytes(&cookie) {
            headers.append(COOKIE, v);
        }
        let _ = session_cookie(&headers, name);
        if let Ok(v) = HeaderValue::from_bytes(&authorization) {
            headers.insert(AUTHORIZATION, v);
        }
        let _ = Credential::from_headers(&headers, name);

        let mut pairs: Vec<String> = others
            .iter()
            .filter(|(other, _)| other != name)
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        pairs.insert(pairs.len() / 2, format!("{name}={value}"));
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, HeaderValue::from_str(&pairs.join("; ")).unwrap());
        let found = session_cookie(&headers, name).map(|s| s.expose_secret().to_owned());
        prop_assert_eq!(found.as_deref(), Some(value.as_str()));
    }

    /// The same headers sent to a real node: whatever they hold, the answer is 401.
    #[test]
    fn arbitrary_credentials_are_refused_with_a_401(
        cookie in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300),
            "__Host-tessera_session=[ -~]{0,80}".prop_map(String::into_bytes),
        ],
        authorization in prop_oneof![
            Just(None),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Some),
            "(Bearer|bearer|BEARER|Basic|Token) {0,3}[ -~]{0,400}"
                .prop_map(|s| Some(s.into_bytes())),
        ],
    ) {
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_bytes(&cookie) {
            headers.insert(COOKIE, v);
        }
        if let Some(Ok(v)) = authorization.map(|a| HeaderValue::from_bytes(&a)) {
            headers.insert(AUTHORIZATION, v);
        }
        let (status, error) = get_session(headers);
        prop_assert_eq!(status, 401, "{}", error);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn login_bodies_of_the_right_shape_never_get_a_5xx(
        email in json_value(), password in json_value(), extra in json_value(),
        as_form in any::<bool>(), form_email in form_value(), form_password in form_value(),
    ) {
        let (status, error) = if as_form {
            let body = form(&[("email", &Some(form_email)), ("password", &Some(form_password))]);
            post(
                "/v1/login",
                headers(Some("application/x-www-form-urlencoded"), true),
                body,
            )
        } else {
            let body = json!({ "email": email, "password": password, "extra": extra });
            post(
                "/v1/login",
                headers(Some("application/json"), false),
                body.to_string().into_bytes(),
            )
        };
        prop_assert!(status < 500, "{} {}", status, error);
        prop_assert!(status == 200 || error.is_string(), "{} {}", status, error);
    }

    #[test]
    fn sign_up_bodies_of_the_right_shape_never_get_a_5xx(
        email in json_value(), password in json_value(),
    ) {
        let body = json!({ "email": email, "password": password });
        let (status, error) = post(
            "/v1/users",
            headers(Some("application/json"), false),
            body.to_string().into_bytes(),
        );
        prop_assert!(status < 500, "{} {}", status, error);
        prop_assert!(status == 201 || error.is_string(), "{} {}", status, error);
    }

    #[test]
    fn token_requests_of_the_right_shape_never_get_a_5xx(
        grant_type in prop_oneof![
            Just(Some("password".to_owned())),
            Just(Some("refresh_token".to_owned())),
            Just(None),
            any::<String>().prop_map(Some),
        ],
        username in proptest::option::of(form_value()),
        password in proptest::option::of(form_value()),
        refresh_token in proptest::option::of(any::<String>()),
    ) {
        let body = form(&[
            ("grant_type", &grant_type),
            ("username", &username),
            ("password", &password),
            ("refresh_token", &refresh_token),
        ]);
        let (status, error) = post(
            "/oauth2/token",
            headers(Some("application/x-www-form-urlencoded"), false),
            body,
        );
        prop_assert!(status < 500, "{} {}", status, error);
        prop_assert!(status == 200 || error.is_string(), "{} {}", status, error);
    }
}

/// A `return_to` as an attacker might write one: arbitrary text, or URL-ish pieces around
/// the allowed origin and another host.
fn return_to_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "(https?:|HTTPS:|javascript:|//|/|\\\\|/\\\\|/%2[fF]|%2[fF])?(/{0,3})(app\\.example|evil\\.test|127\\.0\\.0\\.1)?([@:.\\\\/%a-z0-9]{0,16})",
        "[@:.\\\\/%a-z0-9]{0,12}".prop_map(|tail| format!("{ORIGIN}{tail}")),
    ]
}

/// One account for the sign-in pages' cases, signed up once.
fn page_user() -> &'static str {
    static EMAIL: OnceLock<String> = OnceLock::new();
    EMAIL.get_or_init(|| {
        let (runtime, server) = node();
        let email = unique_email();
        runtime.block_on(server.sign_up(&email));
        email
    })
}

/// Posts a form to a page as a browser on `ORIGIN` would: the status and `Location`.
fn post_page(path: &str, body: Vec<u8>, content_type: Option<&str>) -> (u16, Option<String>) {
    let (runtime, server) = node();
    runtime.block_on(async {
        let mut request = server
            .client
            .post(server.url(path))
            .header("origin", ORIGIN)
            .body(body);
        if let Some(content_type) = content_type {
            request = request.header(CONTENT_TYPE, content_type);
        }
        let res = request.send().await.unwrap();
        let location = res
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_owned());
        (res.status().as_u16(), location)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES / 2))]

    /// Whatever `return_to` says, the pages answer without a 5xx, and a sign-in redirects only
    /// to this server or to the allowed origin: never an open redirect.
    #[test]
    fn sign_in_redirects_only_to_allowed_origins_whatever_return_to_says(return_to in return_to_value()) {
        let (_, server) = node();
        let query = serde_urlencoded::to_string([("return_to", &return_to)]).unwrap();
        let (runtime, _) = node();
        let page = runtime.block_on(async {
            server.client.get(server.url(&format!("/ui/login?{query}"))).send().await.unwrap().status().as_u16()
        });
        prop_assert!(page == 200 || page == 400, "GET {return_to:?}: {page}");
        let email = page_user().to_owned();
        let body = form(&[("email", &Some(email)), ("password", &Some(PASSWORD.to_owned())), ("return_to", &Some(return_to.clone()))]);
        let (status, location) = post_page("/ui/login", body, Some("application/x-www-form-urlencoded"));
        prop_assert!(status == 303 || status == 400, "POST {return_to:?}: {status}");
        prop_assert_eq!(status == 303, page == 200, "GET and POST judge {:?} alike", return_to);
        if let Some(location) = location {
            let origin = tessera_core::url::origin_of(&location);
            prop_assert!(
                origin.as_deref() == Some(ORIGIN) || origin.as_deref() == Some(server.base.as_str()),
                "{return_to:?} led to {location}"
            );
        }
    }

    #[test]
    fn page_forms_answer_arbitrary_bodies_without_a_5xx(
        path in prop_oneof![Just("/ui/login"), Just("/ui/signup"), Just("/ui/devices"), Just("/ui/logout")],
        ct in content_type(), body in body_bytes(),
    ) {
        let (status, _) = post_page(path, body, ct.as_deref());
        prop_assert!(status < 500, "{path}: {status}");
    }
}
