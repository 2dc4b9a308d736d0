//! Access tokens, refresh rotation, forward-auth and key publication, over real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;
use support::{start, start_sqlite, unique_email, PASSWORD};

fn decode_segment(token: &str, index: usize) -> Value {
    let segment = token.split('.').nth(index).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segment).unwrap()).unwrap()
}

#[tokio::test]
async fn password_grant_issues_an_rfc9068_access_token_and_a_refresh_token() {
    let server = start("").await;
    let email = unique_email();
    let user = server.sign_up(&email).await;
    let res = server
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
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let pair: Value = res.json().await.unwrap();
    assert_eq!(pair["token_type"], "Bearer");
    assert_eq!(pair["expires_in"], 900);
    assert_eq!(pair["refresh_token"].as_str().unwrap().len(), 43);
    let access = pair["access_token"].as_str().unwrap();
    let header = decode_segment(access, 0);
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "EdDSA");
    assert!(header["kid"].as_str().is_some());
    let claims = decode_segment(access, 1);
    assert_eq!(claims["iss"], server.base);
    assert_eq!(claims["aud"], "tessera");
    assert_eq!(claims["sub"], user["id"]);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );
    for claim in ["jti", "sid", "roles"] {
        assert!(!claims[claim].is_null(), "{claim}");
    }
}

#[tokio::test]
async fn verify_accepts_bearer_and_cookie_with_identity_headers() {
    let server = start("").await;
    let (email, browser) = server.browser().await;
    let pair = server.password_grant(&email).await;
    let access = pair["access_token"].as_str().unwrap();

    let res = server.verify_bearer(access).await;
    assert_eq!(res.status(), 200);
    let claims = decode_segment(access, 1);
    assert_eq!(
        res.headers()["x-auth-user"],
        claims["sub"].as_str().unwrap()
    );
    assert_eq!(
        res.headers()["x-auth-session"],
        claims["sid"].as_str().unwrap()
    );
    assert_eq!(res.headers()["x-auth-roles"], "");

    let res = server.verify_cookie(&browser.cookie).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["x-auth-user"],
        claims["sub"].as_str().unwrap()
    );
    assert_eq!(
        res.headers()["x-auth-session"],
        browser.body["session"]["id"].as_str().unwrap()
    );

    for res in [
        server
            .client
            .get(server.url("/v1/verify"))
            .send()
            .await
            .unwrap(),
        server.verify_bearer("not.a.token").await,
        server.verify_cookie("__Host-tessera_session=nope").await,
    ] {
        assert_eq!(res.status(), 401);
        assert_eq!(
            res.headers()["www-authenticate"],
            "Bearer error=\"invalid_token\""
        );
    }
}

#[tokio::test]
async fn refresh_rotates_every_use() {
    let server = start_sqlite("").await;
    let email = unique_email();
    server.sign_up(&email).await;
    let first = server.password_grant(&email).await;
    let r1 = first["refresh_token"].as_str().unwrap();
    let res = server.refresh(r1).await;
    assert_eq!(res.status(), 200);
    let second: Value = res.json().await.unwrap();
    let r2 = second["refresh_token"].as_str().unwrap();
    assert_ne!(r1, r2);
    let a2 = second["access_token"].as_str().unwrap();
    assert_eq!(
        decode_segment(a2, 1)["sid"],
        decode_segment(first["access_token"].as_str().unwrap(), 1)["sid"]
    );
    assert_eq!(server.verify_bearer(a2).await.status(), 200);
    let third: Value = server.refresh(r2).await.json().await.unwrap();
    assert_ne!(third["refresh_token"], second["refresh_token"]);
}

#[tokio::test]
async fn previous_token_within_grace_gets_the_same_successor() {
    let server = start_sqlite("").await;
    let email = unique_email();
    server.sign_up(&email).await;
    let first = server.password_grant(&email).await;
    let r1 = first["refresh_token"].as_str().unwrap();
    // Two tabs refresh with the same token at once.
    let (a, b) = tokio::join!(server.refresh(r1), server.refresh(r1));
    assert_eq!(a.status(), 200);
    assert_eq!(b.status(), 200);
    let a: Value = a.json().await.unwrap();
    let b: Value = b.json().await.unwrap();
    assert_eq!(
        a["refresh_token"], b["refresh_token"],
        "both tabs hold the same successor"
    );
    let successor = a["refresh_token"].as_str().unwrap();
    assert_eq!(
        server.refresh(successor).await.status(),
        200,
        "and it still works"
    );
}

#[tokio::test]
async fn reuse_revokes_the_family_and_its_access_tokens() {
    let server = start_sqlite("").await;
    let email = unique_email();
    server.sign_up(&email).await;
    let first = server.password_grant(&email).await;
    let r1 = first["refresh_token"].as_str().unwrap();
    let second: Value = server.refresh(r1).await.json().await.unwrap();
    let r2 = second["refresh_token"].as_str().unwrap();
    let third: Value = server.refresh(r2).await.json().await.unwrap();
    let r3 = third["refresh_token"].as_str().unwrap();
    let access = third["access_token"].as_str().unwrap();
    assert_eq!(server.verify_bearer(access).await.status(), 200);

    // r1 is two generations old: theft, whatever the grace window.
    let res = server.refresh(r1).await;
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant");
    assert!(body["error_description"].as_str().is_some());

    assert_eq!(
        server.refresh(r3).await.status(),
        400,
        "the live head of the family is dead too"
    );
    assert_eq!(
        server.verify_bearer(access).await.status(),
        401,
        "and the session's access tokens"
    );
}

#[tokio::test]
async fn replay_after_the_grace_window_is_reuse() {
    let server = start_sqlite("refresh_grace = \"1s\"").await;
    let email = unique_email();
    server.sign_up(&email).await;
    let first = server.password_grant(&email).await;
    let r1 = first["refresh_token"].as_str().unwrap();
    let second: Value = server.refresh(r1).await.json().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(server.refresh(r1).await.status(), 400);
    assert_eq!(
        server
            .refresh(second["refresh_token"].as_str().unwrap())
            .await
            .status(),
        400
    );
}

#[tokio::test]
async fn token_endpoint_speaks_rfc6749_errors() {
    let server = start("").await;
    let email = unique_email();
    server.sign_up(&email).await;
    let post = |form: Vec<(&'static str, String)>| {
        server
            .client
            .post(server.url("/oauth2/token"))
            .form(&form)
            .send()
    };
    let cases = [
        (
            vec![("grant_type", "client_credentials".to_owned())],
            400,
            "unsupported_grant_type",
        ),
        (vec![("username", email.clone())], 400, "invalid_request"),
        (
            vec![
                ("grant_type", "password".to_owned()),
                ("username", email.clone()),
            ],
            400,
            "invalid_request",
        ),
        (
            vec![
                ("grant_type", "password".to_owned()),
                ("username", email.clone()),
                ("password", "wrong-password".to_owned()),
            ],
            400,
            "invalid_grant",
        ),
        (
            vec![
                ("grant_type", "password".to_owned()),
                ("username", unique_email()),
                ("password", PASSWORD.to_owned()),
            ],
            400,
            "invalid_grant",
        ),
        (
            vec![
                ("grant_type", "refresh_token".to_owned()),
                ("refresh_token", "garbage".to_owned()),
            ],
            400,
            "invalid_grant",
        ),
        (
            vec![("grant_type", "refresh_token".to_owned())],
            400,
            "invalid_request",
        ),
    ];
    for (form, status, code) in cases {
        let res = post(form.clone()).await.unwrap();
        assert_eq!(res.status(), status, "{form:?}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"], code, "{form:?}");
        assert!(body["error_description"].as_str().is_some());
        assert!(body.get("message").is_none(), "RFC 6749 shape, not ours");
    }
    let res = server
        .client
        .post(server.url("/oauth2/token"))
        .json(&serde_json::json!({ "grant_type": "password" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415);
    assert_eq!(support::error_code(res).await, "invalid_request");
}

#[tokio::test]
async fn jwks_publishes_public_parts_only_and_metadata_names_the_endpoints() {
    let server = start("").await;
    let res = server
        .client
        .get(server.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("max-age="));
    let jwks: Value = res.json().await.unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    for key in keys {
        for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
            assert!(key.get(private).is_none(), "{private} leaked in {key}");
        }
        assert_eq!(key["kty"], "OKP");
        assert!(key["kid"].as_str().is_some());
    }

    let meta: Value = server
        .client
        .get(server.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["issuer"], server.base);
    assert_eq!(
        meta["token_endpoint"],
        format!("{}/oauth2/token", server.base)
    );
    assert_eq!(
        meta["jwks_uri"],
        format!("{}/.well-known/jwks.json", server.base)
    );
}

#[tokio::test]
/// Rotation keeps the retired key verifying and published; that it is dropped once every token
/// it signed has expired is `keys::tests::keys_retired_longer_than_the_token_lifetime_are_dropped`.
async fn rotated_keys_keep_old_tokens_verifying_and_published() {
    let server = start_sqlite("").await;
    let email = unique_email();
    server.sign_up(&email).await;
    let before = server.password_grant(&email).await;
    let old_access = before["access_token"].as_str().unwrap();
    let old_kid = decode_segment(old_access, 0)["kid"].clone();

    let new_key = server.tessera.rotate_signing_key().await.unwrap();
    assert_ne!(old_kid, new_key.kid());

    assert_eq!(
        server.verify_bearer(old_access).await.status(),
        200,
        "old key still verifies"
    );
    let after = server.password_grant(&email).await;
    assert_eq!(
        decode_segment(after["access_token"].as_str().unwrap(), 0)["kid"],
        new_key.kid()
    );
    let jwks: Value = server
        .client
        .get(server.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids.len(), 2);
    assert!(kids.contains(&old_kid.as_str().unwrap()) && kids.contains(&new_key.kid()));
}

#[tokio::test]
async fn every_signing_algorithm_works_end_to_end() {
    for (alg, kty) in [
        ("ES256", Some("EC")),
        ("RS256", Some("RSA")),
        ("HS256", None),
    ] {
        let server = start(&format!("signing_alg = \"{alg}\"")).await;
        let email = unique_email();
        server.sign_up(&email).await;
        let pair = server.password_grant(&email).await;
        let access = pair["access_token"].as_str().unwrap();
        assert_eq!(decode_segment(access, 0)["alg"], alg);
        assert_eq!(server.verify_bearer(access).await.status(), 200, "{alg}");
        let jwks: Value = server
            .client
            .get(server.url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let keys = jwks["keys"].as_array().unwrap();
        match kty {
            Some(kty) => assert_eq!(keys[0]["kty"], kty),
            None => assert!(keys.is_empty(), "an HS256 secret is never published"),
        }
        for key in keys {
            for private in ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] {
                assert!(
                    key.get(private).is_none(),
                    "{alg}: {private} leaked in {key}"
                );
            }
        }
    }
}
