//! Devices, administration, and RFC 7009 / RFC 7662, through the real router over real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use reqwest::header::COOKIE;
use serde_json::Value;
use support::{cookie_pair, headers, start_sqlite, unique_email, TestServer, PASSWORD};
use tessera_core::model::Timestamp;

/// The decoded payload of a JWT (the signature is the server's business here).
fn payload_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

async fn admin_key(server: &TestServer) -> String {
    let (_, secret) = server
        .tessera
        .create_admin_key("test", tessera_core::model::AdminScope::Admin)
        .await
        .unwrap();
    secret.expose_secret().to_owned()
}

#[tokio::test]
async fn devices_are_listed_alike_for_cookie_and_token_sign_ins() {
    let server = start_sqlite("").await;
    let email = unique_email();
    server.sign_up(&email).await;
    let res = server
        .login_raw(
            &email,
            PASSWORD,
            headers(&[("user-agent", "Browser/1.0 (devices test)")]),
        )
        .await;
    assert_eq!(res.status(), 200);
    let cookie = cookie_pair(&res);
    let login: Value = res.json().await.unwrap();
    let res = server
        .client
        .post(server.url("/oauth2/token"))
        .header("user-agent", "Client/2.0 (devices test)")
        .form(&[
            ("grant_type", "password"),
            ("username", email.as_str()),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let pair: Value = res.json().await.unwrap();
    let access = pair["access_token"].as_str().unwrap();

    let list: Value = server
        .client
        .get(server.url("/v1/sessions"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    let current: Vec<&Value> = list.iter().filter(|d| d["current"] == true).collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0]["id"], login["session"]["id"]);
    assert_eq!(current[0]["via"], "cookie");
    assert_eq!(current[0]["user_agent"], "Browser/1.0 (devices test)");
    let other = list.iter().find(|d| d["current"] == false).unwrap();
    assert_eq!(other["via"], "token");
    assert_eq!(other["user_agent"], "Client/2.0 (devices test)");
    for device in list {
        assert_eq!(device["ip"], "127.0.0.1", "{device}");
        let time = |field: &str| -> Timestamp {
            serde_json::from_value(device[field].clone())
                .unwrap_or_else(|e| panic!("{field} of {device}: {e}"))
        };
        let (created, seen, expires) =
            (time("created_at"), time("last_seen_at"), time("expires_at"));
        assert!(created <= seen, "{device}");
        let now = Timestamp::now();
        assert!(
            created <= now && now.since(created) < Duration::from_secs(60),
            "created just now: {device}"
        );
        assert!(expires > seen, "{device}");
    }
    // Cookie sessions end at the absolute timeout (7 days), token sessions with their refresh
    // family (30 days).
    let lifetime = |device: &Value| {
        let at = |field: &str| serde_json::from_value::<Timestamp>(device[field].clone()).unwrap();
        at("expires_at").since(at("created_at"))
    };
    assert_eq!(lifetime(current[0]), Duration::from_secs(7 * 86_400));
    assert_eq!(lifetime(other), Duration::from_secs(30 * 86_400));

    let list: Value = server
        .client
        .get(server.url("/v1/sessions"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token_device = list
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["current"] == true)
        .unwrap()
        .clone();
    assert_eq!(token_device["via"], "token");
}

#[tokio::test]
async fn signing_out_one_device_and_all_others() {
    let server = start_sqlite("").await;
    let (email, browser) = server.browser().await;
    let pair = server.password_grant(&email).await;
    let access = pair["access_token"].as_str().unwrap();
    let token_sid = {
        let list: Value = server
            .client
            .get(server.url("/v1/sessions"))
            .bearer_auth(access)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .find(|d| d["current"] == true)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    // Someone else's session and an unknown one answer alike: 404.
    let (_, stranger) = server.browser().await;
    for id in [
        stranger.body["session"]["id"].as_str().unwrap(),
        "01a212d9-0000-7000-8000-000000000000",
        "nonsense",
    ] {
        let res = server
            .client
            .delete(server.url(&format!("/v1/sessions/{id}")))
            .header(COOKIE, &browser.cookie)
            .header("x-csrf-token", &browser.csrf)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "{id}");
    }
    assert_eq!(
        server.session_with_cookie(&stranger.cookie).await.status(),
        200
    );

    // The cookie device signs the token device out: its access token and refresh family die.
    let res = server
        .client
        .delete(server.url(&format!("/v1/sessions/{token_sid}")))
        .header(COOKIE, &browser.cookie)
        .header("x-csrf-token", &browser.csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(server.verify_bearer(access).await.status(), 401);
    assert_eq!(
        server
            .refresh(pair["refresh_token"].as_str().unwrap())
            .await
            .status(),
        400
    );

    // Sign out all others, from a token device this time: the cookie dies, the caller lives.
    let pair = server.password_grant(&email).await;
    let access = pair["access_token"].as_str().unwrap();
    let res = server
        .client
        .delete(server.url("/v1/sessions"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(
        server.session_with_cookie(&browser.cookie).await.status(),
        401
    );
    assert_eq!(server.verify_bearer(access).await.status(), 200);
}

#[tokio::test]
async fn rfc7009_revocation_of_access_and_refresh_tokens() {
    let server = start_sqlite("").await;
    let (_, pair) = server.user_with_tokens().await;
    let access = pair["access_token"].as_str().unwrap();
    let revoke = |token: String| {
        server
            .client
            .post(server.url("/oauth2/revoke"))
            .form(&[("token", token)])
            .send()
    };

    // Access token: its jti is denylisted; the refresh family lives on.
    assert_eq!(revoke(access.to_owned()).await.unwrap().status(), 200);
    assert_eq!(server.verify_bearer(access).await.status(), 401);
    let res = server
        .refresh(pair["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(res.status(), 200);
    let next: Value = res.json().await.unwrap();
    assert_eq!(
        server
            .verify_bearer(next["access_token"].as_str().unwrap())
            .await
            .status(),
        200
    );

    // Refresh token: the family and the session's access tokens die.
    assert_eq!(
        revoke(next["refresh_token"].as_str().unwrap().to_owned())
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        server
            .verify_bearer(next["access_token"].as_str().unwrap())
            .await
            .status(),
        401
    );
    assert_eq!(
        server
            .refresh(next["refresh_token"].as_str().unwrap())
            .await
            .status(),
        400
    );

    // Unknown and garbage tokens: 200 all the same.
    for garbage in ["nope", "a.b.c", "x".repeat(10_000).as_str()] {
        assert_eq!(revoke(garbage.to_owned()).await.unwrap().status(), 200);
    }
    let res = server
        .client
        .post(server.url("/oauth2/revoke"))
        .form(&[("token_type_hint", "refresh_token")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(support::error_code(res).await, "invalid_request");
}

#[tokio::test]
async fn rfc7662_introspection_needs_an_admin_key() {
    let server = start_sqlite("").await;
    let (_, pair) = server.user_with_tokens().await;
    let access = pair["access_token"].as_str().unwrap();
    let introspect = |credential: Option<String>, token: &str| {
        let mut request = server
            .client
            .post(server.url("/oauth2/introspect"))
            .form(&[("token", token)]);
        if let Some(credential) = credential {
            request = request.bearer_auth(credential);
        }
        request.send()
    };

    let res = introspect(None, access).await.unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.headers().get("www-authenticate").is_some());
    let res = introspect(Some(access.to_owned()), access).await.unwrap();
    assert_eq!(
        res.status(),
        401,
        "a user's access token is not a credential here"
    );

    let key = admin_key(&server).await;
    let body: Value = introspect(Some(key.clone()), access)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Every claim is the token's own, and the token's session and user are the ones signed in.
    let claims = payload_of(access);
    let sessions: Value = server
        .client
        .get(server.url("/v1/session"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["active"], true);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["sub"], sessions["user"]["id"]);
    assert_eq!(body["sid"], sessions["session"]["id"]);
    assert_eq!(body["iss"], server.base.as_str());
    assert_eq!(body["aud"], "tessera");
    assert_eq!(body["scope"], "");
    assert_eq!(body["roles"], serde_json::json!([]));
    for claim in ["sub", "exp", "iat", "jti", "sid", "aud", "iss", "roles"] {
        assert_eq!(body[claim], claims[claim], "{claim} in {body}");
    }
    assert_eq!(
        body["exp"].as_i64().unwrap() - body["iat"].as_i64().unwrap(),
        900,
        "access_token_ttl"
    );
    for inactive in ["garbage", pair["refresh_token"].as_str().unwrap()] {
        let body: Value = introspect(Some(key.clone()), inactive)
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body, serde_json::json!({ "active": false }));
    }
    server
        .client
        .post(server.url("/oauth2/revoke"))
        .form(&[("token", access)])
        .send()
        .await
        .unwrap();
    let body: Value = introspect(Some(key), access)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body, serde_json::json!({ "active": false }), "revoked");
}

#[tokio::test]
async fn admin_api_lists_and_signs_out_users_and_sessions() {
    let server = start_sqlite("").await;
    let (email, browser) = server.browser().await;
    let pair = server.password_grant(&email).await;
    let user_id = browser.body["user"]["id"].as_str().unwrap().to_owned();
    let key = admin_key(&server).await;

    let res = server
        .client
        .get(server.url(&format!("/v1/admin/users/{user_id}/sessions")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "no admin key");
    let res = server
        .client
        .get(server.url(&format!("/v1/admin/users/{user_id}/sessions")))
        .bearer_auth(pair["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "a user's token is not an admin key");

    let list: Value = server
        .client
        .get(server.url(&format!("/v1/admin/users/{user_id}/sessions")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);

    let res = server
        .client
        .delete(server.url(&format!(
            "/v1/admin/sessions/{}",
            browser.body["session"]["id"].as_str().unwrap()
        )))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(
        server.session_with_cookie(&browser.cookie).await.status(),
        401
    );
    assert_eq!(
        server
            .verify_bearer(pair["access_token"].as_str().unwrap())
            .await
            .status(),
        200,
        "other device untouched"
    );

    let res = server
        .client
        .delete(server.url(&format!("/v1/admin/users/{user_id}/sessions")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(
        server
            .verify_bearer(pair["access_token"].as_str().unwrap())
            .await
            .status(),
        401
    );
    assert_eq!(
        server
            .refresh(pair["refresh_token"].as_str().unwrap())
            .await
            .status(),
        400
    );

    let res = server
        .client
        .delete(server.url("/v1/admin/users/nonsense/sessions"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn role_change_kills_access_tokens_but_not_the_refresh_family() {
    let server = start_sqlite("").await;
    let email = unique_email();
    let user = server.sign_up(&email).await;
    let pair = server.password_grant(&email).await;
    let access = pair["access_token"].as_str().unwrap();
    let key = admin_key(&server).await;

    let res = server
        .client
        .put(server.url(&format!(
            "/v1/admin/users/{}/roles",
            user["id"].as_str().unwrap()
        )))
        .bearer_auth(&key)
        .json(&serde_json::json!({ "roles": ["editor", "admin"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap()["roles"],
        serde_json::json!(["admin", "editor"])
    );

    assert_eq!(
        server.verify_bearer(access).await.status(),
        401,
        "old access token carries old roles"
    );
    let res = server
        .refresh(pair["refresh_token"].as_str().unwrap())
        .await;
    assert_eq!(res.status(), 200, "the user is not signed out");
    let next: Value = res.json().await.unwrap();
    let res = server
        .verify_bearer(next["access_token"].as_str().unwrap())
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-auth-roles"], "admin,editor");

    let res = server
        .client
        .put(server.url(&format!(
            "/v1/admin/users/{}/roles",
            user["id"].as_str().unwrap()
        )))
        .bearer_auth(&key)
        .json(&serde_json::json!({ "roles": "admin" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    for bad in [
        serde_json::json!(["a,b"]),
        serde_json::json!(["x y"]),
        serde_json::json!(["é"]),
    ] {
        let res = server
            .client
            .put(server.url(&format!(
                "/v1/admin/users/{}/roles",
                user["id"].as_str().unwrap()
            )))
            .bearer_auth(&key)
            .json(&serde_json::json!({ "roles": bad }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{bad}");
        assert_eq!(support::error_code(res).await, "invalid_roles");
    }
}

#[tokio::test]
async fn malformed_path_ids_get_our_error_shape() {
    let server = start_sqlite("").await;
    let (_, pair) = server.user_with_tokens().await;
    let access = pair["access_token"].as_str().unwrap();
    let key = admin_key(&server).await;
    for (path, credential) in [
        ("/v1/sessions/%FF", access.to_owned()),
        ("/v1/admin/sessions/%FF%FE", key.clone()),
        ("/v1/admin/users/%C0/sessions", key.clone()),
    ] {
        let res = server
            .client
            .delete(server.url(path))
            .bearer_auth(credential)
            .send()
            .await
            .unwrap();
        assert!(res.status().is_client_error(), "{path}: {}", res.status());
        let body: Value = res.json().await.unwrap();
        assert!(
            body["error"].as_str().is_some() && body["message"].as_str().is_some(),
            "{path}: {body}"
        );
    }
}
