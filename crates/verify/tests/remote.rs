//! `Remote`'s JWK set cache against a minimal HTTP server of the test's own, which counts
//! the fetches: an unknown `kid` refetches at most once per interval, a key published later
//! is picked up, and the keys held keep verifying once the server is gone.
#![cfg(feature = "remote")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};
use tessera_verify::remote::{Refusal, Remote};
use tessera_verify::VerifyError;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

struct JwksServer {
    base: String,
    jwks: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(jwks: Value) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let jwks = Arc::new(Mutex::new(jwks));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (Arc::clone(&jwks), Arc::clone(&fetches));
        let task = tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut request = Vec::new();
                let mut buf = [0_u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = socket.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    request.extend_from_slice(&buf[..n]);
                }
                assert!(request.starts_with(b"GET /.well-known/jwks.json "));
                counted.fetch_add(1, Ordering::SeqCst);
                let body = served.lock().unwrap().to_string();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                     cache-control: public, max-age=300\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{body}",
                    body.len()
                );
                socket.write_all(response.as_bytes()).await.unwrap();
            }
        });
        Self {
            base,
            jwks,
            fetches,
            task,
        }
    }
}

fn jwk(kid: &str, secret: &[u8]) -> Value {
    json!({ "kty": "oct", "kid": kid, "alg": "HS256", "k": URL_SAFE_NO_PAD.encode(secret) })
}

fn token(issuer: &str, kid: &str, secret: &[u8]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
    header.typ = Some("at+jwt".into());
    header.kid = Some(kid.into());
    let claims = json!({
        "iss": issuer, "aud": "tessera", "sub": uuid::Uuid::now_v7().to_string(),
        "sid": uuid::Uuid::now_v7().to_string(), "jti": uuid::Uuid::now_v7().to_string(),
        "iat": now, "exp": now + 600, "roles": [],
    });
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret)).unwrap()
}

#[tokio::test]
async fn an_unknown_kid_refetches_at_most_once_per_interval_and_held_keys_outlive_the_server() {
    let (first, second) = (
        b"first secret of 32 bytes or more!".as_slice(),
        b"second secret, also long enough!!".as_slice(),
    );
    let server = JwksServer::start(json!({ "keys": [jwk("k1", first)] })).await;
    let remote = Remote::builder(server.base.clone(), "tessera")
        .unknown_kid_refetch(Duration::from_millis(400))
        .start()
        .await
        .unwrap();
    assert_eq!(server.fetches.load(Ordering::SeqCst), 1);
    let old = token(&server.base, "k1", first);
    assert!(remote.verify(&old).await.is_ok());

    let new = token(&server.base, "k2", second);
    for _ in 0..5 {
        assert_eq!(
            remote.verify(&new).await.unwrap_err(),
            Refusal::Invalid(VerifyError::UnknownKey)
        );
    }
    assert_eq!(
        server.fetches.load(Ordering::SeqCst),
        2,
        "five tokens with an unknown kid, one refetch"
    );

    // Published now, but the interval has not passed: still refused, nothing fetched.
    *server.jwks.lock().unwrap() = json!({ "keys": [jwk("k1", first), jwk("k2", second)] });
    assert!(remote.verify(&new).await.is_err());
    assert_eq!(server.fetches.load(Ordering::SeqCst), 2);
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(
        remote.verify(&new).await.is_ok(),
        "picked up after the interval"
    );
    assert_eq!(server.fetches.load(Ordering::SeqCst), 3);

    // Tessera gone: the keys held keep verifying.
    server.task.abort();
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(remote.verify(&old).await.is_ok());
    assert!(remote.verify(&new).await.is_ok());
    assert_eq!(
        remote
            .verify(&token(&server.base, "k3", first))
            .await
            .unwrap_err(),
        Refusal::Invalid(VerifyError::UnknownKey),
        "a refetch that fails refuses the unknown kid"
    );
}
