#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Tessera's access tokens verified by another JOSE implementation, `PyJWT`
//! (`interop/pyjwt_verify.py`), reading the live JWKS of a real `tessera serve`, for each
//! asymmetric `signing_alg`; and an HS256 key never published.
//!
//! Without python3 and `PyJWT` (with its crypto extra) the tests skip, or fail under
//! `TESSERA_REQUIRE_SERVICES=1`.

mod support;

use std::path::Path;
use std::process::Command;

use reqwest::Client;
use serde_json::Value;
use support::{grant, jwks, serve_with, sign_up, Server, ISSUER};

/// Whether `PyJWT` can run here; if not, says so (the test is then skipped).
fn pyjwt() -> bool {
    let found = Command::new("python3")
        .args(["-c", "import jwt, cryptography"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !found {
        tessera_store::testing::skip_or_fail(
            "the PyJWT interop test",
            "python3 with PyJWT[crypto] is not installed (pip install 'PyJWT[crypto]==2.10.1')",
        );
    }
    found
}

async fn server(dir: &Path, alg: &str) -> Server {
    serve_with(dir, "warn", &["--issuer", ISSUER, "--signing-alg", alg]).await
}

/// `PyJWT`'s verdict on `token`: the header and claims it decoded, or its error.
fn pyjwt_verify(server: &Server, alg: &str, audience: &str, token: &str) -> Result<Value, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../interop/pyjwt_verify.py");
    let out = Command::new("python3")
        .arg(script)
        .args(["--jwks-url", &server.url("/.well-known/jwks.json")])
        .args(["--issuer", ISSUER, "--audience", audience, "--alg", alg])
        .arg(token)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test]
async fn pyjwt_verifies_access_tokens_of_every_asymmetric_algorithm() {
    if !pyjwt() {
        return;
    }
    let client = Client::new();
    for (alg, kty) in [("EdDSA", "OKP"), ("ES256", "EC"), ("RS256", "RSA")] {
        let dir = tempfile::tempdir().unwrap();
        let server = server(dir.path(), alg).await;
        let email = format!("interop-{}@example.com", alg.to_ascii_lowercase());
        let user = sign_up(&client, &server, &email).await;
        let (token, _) = grant(&client, &server, &email).await;

        let jwks = jwks(&client, &server).await;
        assert!(
            jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .all(|k| k["kty"] == kty),
            "{alg}: {jwks}"
        );

        let verified = pyjwt_verify(&server, alg, "tessera", &token)
            .unwrap_or_else(|e| panic!("{alg}: PyJWT refused the token: {e}"));
        assert_eq!(verified["header"]["alg"], alg);
        assert_eq!(verified["header"]["typ"], "at+jwt");
        let claims = &verified["claims"];
        assert_eq!(claims["sub"], user.as_str(), "{alg}");
        assert_eq!(claims["iss"], ISSUER, "{alg}");
        assert_eq!(claims["aud"], "tessera", "{alg}");
        let (iat, exp) = (
            claims["iat"].as_i64().unwrap(),
            claims["exp"].as_i64().unwrap(),
        );
        assert_eq!(exp - iat, 15 * 60, "{alg}: the default access_token_ttl");

        // PyJWT checks what it is told to: another audience, or a changed payload, fails.
        let err = pyjwt_verify(&server, alg, "another-api", &token).unwrap_err();
        assert!(err.contains("InvalidAudienceError"), "{alg}: {err}");
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = tampered(&parts[1]);
        let err = pyjwt_verify(&server, alg, "tessera", &parts.join(".")).unwrap_err();
        assert!(
            err.contains("InvalidSignatureError") || err.contains("DecodeError"),
            "{alg}: {err}"
        );
    }
}

/// The payload segment with one character changed (still base64url).
fn tampered(segment: &str) -> String {
    let mut bytes = segment.as_bytes().to_vec();
    let middle = bytes.len() / 2;
    bytes[middle] = if bytes[middle] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

#[tokio::test]
async fn an_hs256_key_is_never_published() {
    if !pyjwt() {
        return;
    }
    let client = Client::new();
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path(), "HS256").await;
    let email = "interop-hs256@example.com";
    sign_up(&client, &server, email).await;
    let (token, _) = grant(&client, &server, email).await;

    let jwks = jwks(&client, &server).await;
    let keys = jwks["keys"].as_array().unwrap();
    assert!(
        keys.iter()
            .all(|k| k["kty"] != "oct" && k.get("k").is_none() && k["alg"] != "HS256"),
        "a shared secret in the JWKS: {jwks}"
    );
    // So a verifier that reads the JWKS finds no key for the token.
    let err = pyjwt_verify(&server, "HS256", "tessera", &token).unwrap_err();
    assert!(
        err.contains("PyJWKSetError") || err.contains("PyJWKClientError"),
        "{err}"
    );
}
