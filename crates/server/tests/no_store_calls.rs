//! SPEC §5: in `cached` mode a verification makes no store round trip. Proven by counting:
//! the service runs over an [`InstrumentedStore`], and 100 bearer plus 100 cookie verifications
//! must leave the counter where it was, while the same calls in `strict` mode move it (so the
//! test can fail), and a revocation made through the service is honoured by the very next
//! verification, still without a store call.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::instrumented::InstrumentedStore;
use support::PASSWORD;
use tessera_core::config::ConfigLayer;
use tessera_core::keys::MasterKey;
use tessera_core::secret::{Password, SessionSecret};
use tessera_core::service::{DeviceInfo, KeyPolicy, Tessera};
use tessera_core::AuthError;

const ROUNDS: u64 = 100;

/// A service over a counted store, with one user signed in both ways.
struct SignedIn {
    tessera: Tessera,
    store: Arc<InstrumentedStore>,
    cookie: SessionSecret,
    access_token: String,
    email: String,
}

impl SignedIn {
    /// Starts a service in `mode` over `database`, waits for its revocation state (cached
    /// mode), signs a user up and logs in with a cookie and with the password grant.
    async fn start(database: &str, mode: &str) -> Self {
        let text = format!("database = \"{database}\"\nrevocation_mode = \"{mode}\"\n");
        let config = ConfigLayer::from_toml(&text, Path::new("test.toml"))
            .unwrap()
            .resolve()
            .unwrap();
        let store = Arc::new(InstrumentedStore::new(
            tessera_store::open(&config.database).await.unwrap(),
        ));
        let tessera = Tessera::start(
            Arc::new(config),
            Arc::clone(&store) as Arc<dyn tessera_core::Store>,
            MasterKey::generate(),
            KeyPolicy::Serve,
        )
        .await
        .unwrap();
        wait_fresh(&tessera).await;
        let email = format!("counted-{mode}@example.com");
        tessera.sign_up(&email, password(), None).await.unwrap();
        let login = tessera
            .login(&email, password(), DeviceInfo::default(), None)
            .await
            .unwrap();
        let pair = tessera
            .password_grant(&email, password(), DeviceInfo::default())
            .await
            .unwrap();
        // The first sight of a cookie reads the store (and, in cached mode, remembers it).
        tessera.authenticate_cookie(&login.secret).await.unwrap();
        Self {
            tessera,
            store,
            cookie: login.secret,
            access_token: pair.access_token,
            email,
        }
    }

    /// Counted store calls made by `ROUNDS` bearer and `ROUNDS` cookie verifications.
    async fn calls_for_hot_path(&self) -> u64 {
        let before = self.store.calls();
        for _ in 0..ROUNDS {
            self.tessera
                .authenticate_bearer(&self.access_token)
                .await
                .unwrap();
        }
        for _ in 0..ROUNDS {
            self.tessera
                .authenticate_cookie(&self.cookie)
                .await
                .unwrap();
        }
        self.store.calls() - before
    }

    /// Asserts that `token` is refused and that refusing it made no counted store call.
    async fn assert_refused_from_memory(&self, token: &str, what: &str) {
        let before = self.store.calls();
        let outcome = self.tessera.authenticate_bearer(token).await;
        assert!(
            matches!(outcome, Err(AuthError::Unauthenticated)),
            "{what}: the next verification must be refused, got {outcome:?}"
        );
        assert_eq!(
            self.store.calls(),
            before,
            "{what}: the refusal must come from the revocation cache, not the store"
        );
    }
}

fn password() -> Password {
    Password::new(PASSWORD.to_owned())
}

async fn wait_fresh(tessera: &Tessera) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !tessera.revocation_status().fresh {
        assert!(
            Instant::now() < deadline,
            "revocation state not fresh after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The three checks over one backend; `database` is called once per service.
async fn verification_reaches_the_store_only_in_strict_mode(database: impl Fn(&str) -> String) {
    let cached = SignedIn::start(&database("cached"), "cached").await;
    let calls = cached.calls_for_hot_path().await;
    assert_eq!(
        calls, 0,
        "cached mode: {ROUNDS} bearer and {ROUNDS} cookie verifications made {calls} store calls"
    );

    let strict = SignedIn::start(&database("strict"), "strict").await;
    let calls = strict.calls_for_hot_path().await;
    assert!(
        calls >= 2 * ROUNDS,
        "strict mode must consult the store on every verification, made only {calls} calls"
    );

    // A revocation through the service is refused by the very next verification, from
    // memory: one access token by its jti (RFC 7009), then the token session by sign-out.
    let second = cached
        .tessera
        .password_grant(&cached.email, password(), DeviceInfo::default())
        .await
        .unwrap();
    cached
        .tessera
        .authenticate_bearer(&second.access_token)
        .await
        .unwrap();
    cached
        .tessera
        .revoke_token(&second.access_token)
        .await
        .unwrap();
    cached
        .assert_refused_from_memory(&second.access_token, "revoked access token")
        .await;

    let principal = cached
        .tessera
        .authenticate_bearer(&cached.access_token)
        .await
        .unwrap();
    cached.tessera.logout(&principal).await.unwrap();
    cached
        .assert_refused_from_memory(&cached.access_token, "signed-out token session")
        .await;

    // Neither revocation fell back to strict: the feed stayed fresh throughout.
    assert!(cached.tessera.revocation_status().fresh);
}

#[tokio::test]
async fn memory_store_is_not_called_per_verification_in_cached_mode() {
    verification_reaches_the_store_only_in_strict_mode(|_| "memory".to_owned()).await;
}

#[tokio::test]
async fn sqlite_store_is_not_called_per_verification_in_cached_mode() {
    let dir = tempfile::tempdir().unwrap();
    verification_reaches_the_store_only_in_strict_mode(|mode| {
        format!(
            "sqlite://{}",
            dir.path().join(format!("{mode}.db")).display()
        )
    })
    .await;
}
