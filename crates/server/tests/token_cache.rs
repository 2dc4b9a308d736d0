//! SPEC §2 `token_cache_size` / `token_cache_ttl`: a node remembers the access tokens it has
//! verified, keyed by the token's hash, yet a hit never stands for more than a fresh
//! verification would: it is refused once revoked, once past `exp`, and once its signing key
//! is withdrawn, on the very next request.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::PASSWORD;
use tessera_core::config::ConfigLayer;
use tessera_core::keys::MasterKey;
use tessera_core::secret::Password;
use tessera_core::service::{DeviceInfo, KeyPolicy, Tessera, TokenPair};
use tessera_core::AuthError;

async fn start(settings: &str) -> Tessera {
    let text = format!("database = \"memory\"\n{settings}");
    let config = ConfigLayer::from_toml(&text, Path::new("test.toml"))
        .unwrap()
        .resolve()
        .unwrap();
    let store = tessera_store::open(&config.database).await.unwrap();
    let tessera = Tessera::start(
        Arc::new(config),
        store,
        MasterKey::generate(),
        KeyPolicy::Serve,
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !tessera.revocation_status().fresh {
        assert!(Instant::now() < deadline, "revocation state not fresh");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tessera
}

async fn signed_in(tessera: &Tessera) -> (String, TokenPair) {
    let email = support::unique_email();
    let password = || Password::new(PASSWORD.to_owned());
    tessera.sign_up(&email, password(), None).await.unwrap();
    let pair = tessera
        .password_grant(&email, password(), DeviceInfo::default())
        .await
        .unwrap();
    (email, pair)
}

/// A node with `settings`, and a token it has verified once and so holds in its cache.
async fn with_one_cached_token(settings: &str) -> (Tessera, TokenPair) {
    let tessera = start(settings).await;
    let (_, pair) = signed_in(&tessera).await;
    tessera
        .authenticate_bearer(&pair.access_token)
        .await
        .unwrap();
    assert_eq!(tessera.cached_tokens(), 1);
    (tessera, pair)
}

fn assert_refused(outcome: &Result<tessera_core::service::Principal, AuthError>, what: &str) {
    assert!(
        matches!(outcome, Err(AuthError::Unauthenticated)),
        "{what}: the next verification must be refused, got {outcome:?}"
    );
}

#[tokio::test]
async fn a_repeated_token_is_remembered_once_and_a_cache_of_zero_remembers_nothing() {
    let tessera = start("").await;
    let (_, pair) = signed_in(&tessera).await;
    assert_eq!(tessera.cached_tokens(), 0);
    for _ in 0..3 {
        let principal = tessera
            .authenticate_bearer(&pair.access_token)
            .await
            .unwrap();
        assert_eq!(principal.session_id, pair.session.id);
    }
    assert_eq!(tessera.cached_tokens(), 1);
    // A token differing in one byte is not the same key, and fails its own verification.
    let mut forged = pair.access_token.clone().into_bytes();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    assert_refused(
        &tessera.authenticate_bearer(&forged).await,
        "a token one byte off a cached one",
    );
    assert_eq!(tessera.cached_tokens(), 1);

    let off = start("token_cache_size = 0").await;
    let (_, pair) = signed_in(&off).await;
    off.authenticate_bearer(&pair.access_token).await.unwrap();
    off.authenticate_bearer(&pair.access_token).await.unwrap();
    assert_eq!(off.cached_tokens(), 0);
}

#[tokio::test]
async fn a_cached_token_is_refused_on_the_next_request_after_each_kind_of_revocation() {
    for mode in ["cached", "strict"] {
        let tessera = start(&format!("revocation_mode = \"{mode}\"\n")).await;

        // The jti denylist (RFC 7009 on the access token itself).
        let (_, pair) = signed_in(&tessera).await;
        tessera
            .authenticate_bearer(&pair.access_token)
            .await
            .unwrap();
        tessera.revoke_token(&pair.access_token).await.unwrap();
        assert_refused(
            &tessera.authenticate_bearer(&pair.access_token).await,
            &format!("{mode}: denylisted jti"),
        );

        // The session (refresh family) the token belongs to.
        let (_, pair) = signed_in(&tessera).await;
        tessera
            .authenticate_bearer(&pair.access_token)
            .await
            .unwrap();
        tessera.revoke_session(pair.session.id).await.unwrap();
        assert_refused(
            &tessera.authenticate_bearer(&pair.access_token).await,
            &format!("{mode}: revoked session"),
        );

        // The user's epoch (sign-out everywhere).
        let (_, pair) = signed_in(&tessera).await;
        let principal = tessera
            .authenticate_bearer(&pair.access_token)
            .await
            .unwrap();
        tessera.logout_everywhere(principal.user_id).await.unwrap();
        assert_refused(
            &tessera.authenticate_bearer(&pair.access_token).await,
            &format!("{mode}: epoch bumped"),
        );
        assert!(
            tessera.cached_tokens() >= 3,
            "the tokens were cached before"
        );
    }
}

#[tokio::test]
async fn a_token_past_its_exp_is_never_served_from_the_cache() {
    // One-second tokens: past `exp` the verifier's 30 s clock leeway still accepts the token,
    // but only by checking it afresh; the cache neither serves nor keeps it.
    let (tessera, pair) = with_one_cached_token("access_token_ttl = \"1s\"\n").await;
    let exp_passed = Instant::now() + Duration::from_millis(2_100);
    tokio::time::sleep_until(exp_passed.into()).await;
    tessera
        .authenticate_bearer(&pair.access_token)
        .await
        .unwrap();
    assert_eq!(
        tessera.cached_tokens(),
        0,
        "a token past exp must be dropped from the cache, not served or kept"
    );
}

#[tokio::test]
async fn a_cached_token_dies_with_its_withdrawn_signing_key() {
    let (tessera, pair) = with_one_cached_token("").await;
    let old_kid = tessera.key_ring().active().kid().to_owned();
    tessera.rotate_signing_key().await.unwrap();
    // A rotation keeps the old key verifying: the cached token still works.
    tessera
        .authenticate_bearer(&pair.access_token)
        .await
        .unwrap();
    tessera.withdraw_signing_key(&old_kid).await.unwrap();
    assert_refused(
        &tessera.authenticate_bearer(&pair.access_token).await,
        "a token signed by a withdrawn key",
    );
}

#[tokio::test]
async fn a_revoked_token_leaves_the_cache() {
    let (tessera, pair) = with_one_cached_token("").await;
    tessera.revoke_token(&pair.access_token).await.unwrap();
    assert_eq!(
        tessera.cached_tokens(),
        0,
        "a revoked token holds no room in the cache"
    );
    assert_refused(
        &tessera.authenticate_bearer(&pair.access_token).await,
        "a revoked token",
    );
}
