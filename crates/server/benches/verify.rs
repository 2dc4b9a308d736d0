//! What one request's authentication costs, credential by credential: the numbers the
//! JWT-vs-session debate argues about (SPEC §6), measured on the service itself rather than
//! through HTTP, so the figures are the verification and not the socket.
//!
//! - `cookie_session/{store}`: a session cookie resolved to its principal (hash, store lookups).
//! - `access_token_verify/{alg}`: the offline signature and claims check a resource server does.
//! - `bearer_authenticate/EdDSA/{store}`: today's per-request bearer cost (signature, session
//!   liveness and the user's epoch, read from the store).
//! - `access_token_sign/{alg}`: minting one access token.
//! - `verify_route/{case}`: `GET /v1/verify` through the real router and its layers (no socket), as a proxy
//!   asks it: bearer, cookie, and cookie for an unsafe method (`X-Forwarded-Method: POST`)
//!   from an allowed `Origin`, the case that adds the origin check.
//!
//! Run with `cargo bench -p tessera-server --bench verify`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use criterion::{criterion_group, BenchmarkId, Criterion};
use tessera_core::config::ConfigLayer;
use tessera_core::keys::{Algorithm, MasterKey};
use tessera_core::secret::{Password, SessionSecret};
use tessera_core::service::{DeviceInfo, KeyPolicy, Tessera};
use tessera_core::verify::Claims;
use tokio::runtime::Runtime;
use tower::ServiceExt;

/// The served application, boxed so that the fixture can name its type.
type App = tower::util::BoxCloneSyncService<
    Request<Body>,
    axum::response::Response,
    std::convert::Infallible,
>;

const EMAIL: &str = "bench@example.com";
const PASSWORD: &str = "correct horse battery";

/// A started service with one signed-in user holding both kinds of credential.
struct Fixture {
    tessera: Tessera,
    cookie: SessionSecret,
    access_token: String,
    /// Keeps the SQLite file (or the PostgreSQL database) alive as long as the service uses it.
    _guard: Option<Box<dyn std::any::Any + Send + Sync>>,
}

struct Fixtures {
    rt: Runtime,
    /// Ed25519 services, one per store: `memory`, `sqlite`, and `postgres` when reachable.
    stores: Vec<(&'static str, Fixture)>,
    /// In-memory services, one per signing algorithm.
    algs: Vec<(Algorithm, Fixture)>,
    /// The whole router over another in-memory Ed25519 service, with its user's cookie
    /// header and bearer header.
    route: (App, String, String),
}

/// Built once (argon2 and RSA key generation are slow) and shared by every group.
static FIXTURES: OnceLock<Fixtures> = OnceLock::new();

fn fixtures() -> &'static Fixtures {
    FIXTURES.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let (stores, algs, route) = rt.block_on(async {
            let memory = fixture("memory".into(), None, Algorithm::EdDSA).await;
            let dir = tempfile::tempdir().unwrap();
            let database = format!("sqlite://{}", dir.path().join("b.db").display());
            let sqlite = fixture(database, Some(Box::new(dir)), Algorithm::EdDSA).await;
            let mut stores = vec![("memory", memory), ("sqlite", sqlite)];
            // PostgreSQL (TESSERA_TEST_DATABASE_URL, a fresh database) when it answers.
            if let Some(database) = tessera_store::testing::FreshDatabase::create().await {
                let url = database.url().to_owned();
                let postgres = fixture(url, Some(Box::new(database)), Algorithm::EdDSA).await;
                stores.push(("postgres", postgres));
            } else {
                eprintln!("PostgreSQL does not answer: no postgres rows");
            }
            let mut algs = Vec::new();
            for alg in Algorithm::ALL {
                algs.push((alg, fixture("memory".into(), None, alg).await));
            }
            let served = fixture("memory".into(), None, Algorithm::EdDSA).await;
            let cookie = format!(
                "{}={}",
                served.tessera.config().cookie_name,
                served.cookie.expose_secret()
            );
            let bearer = format!("Bearer {}", served.access_token);
            let state = tessera_server::AppState::new(Arc::new(served.tessera));
            let route = (App::new(tessera_server::app(state)), cookie, bearer);
            (stores, algs, route)
        });
        Fixtures {
            rt,
            stores,
            algs,
            route,
        }
    })
}

/// Starts a service as the integration tests do (config → store → `Tessera::start`), signs a
/// user up, then logs in once with a browser and once with the password grant.
async fn fixture(
    database: String,
    guard: Option<Box<dyn std::any::Any + Send + Sync>>,
    alg: Algorithm,
) -> Fixture {
    let text = format!(
        "database = \"{database}\"\nsigning_alg = \"{}\"\n",
        alg.as_str()
    );
    let config = ConfigLayer::from_toml(&text, Path::new("bench.toml"))
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
    tessera
        .sign_up(EMAIL, Password::new(PASSWORD.to_owned()), None)
        .await
        .unwrap();
    let login = tessera
        .login(
            EMAIL,
            Password::new(PASSWORD.to_owned()),
            DeviceInfo::default(),
            None,
        )
        .await
        .unwrap();
    let pair = tessera
        .password_grant(
            EMAIL,
            Password::new(PASSWORD.to_owned()),
            DeviceInfo::default(),
        )
        .await
        .unwrap();
    assert_eq!(tessera.key_ring().active().alg(), alg);
    Fixture {
        tessera,
        cookie: login.secret,
        access_token: pair.access_token,
        _guard: guard,
    }
}

fn cookie_session(c: &mut Criterion) {
    let f = fixtures();
    let mut group = c.benchmark_group("cookie_session");
    for (store, fixture) in &f.stores {
        let (tessera, cookie) = (&fixture.tessera, &fixture.cookie);
        group.bench_function(*store, |b| {
            b.to_async(&f.rt)
                .iter(|| async move { tessera.authenticate_cookie(cookie).await.unwrap() });
        });
    }
    group.finish();
}

/// The timing side of "unknown email and wrong password answer alike": both run one argon2id
/// verification (the unknown email against a dummy hash), so their medians should match.
fn failed_login(c: &mut Criterion) {
    let f = fixtures();
    let tessera = &f.stores[0].1.tessera;
    let mut group = c.benchmark_group("failed_login");
    group.sample_size(10);
    for (case, email) in [
        ("wrong_password", EMAIL),
        ("unknown_email", "nobody@example.com"),
    ] {
        group.bench_function(case, |b| {
            b.to_async(&f.rt).iter(|| async move {
                let outcome = tessera
                    .login(
                        email,
                        Password::new("wrong password".to_owned()),
                        DeviceInfo::default(),
                        None,
                    )
                    .await;
                assert!(outcome.is_err());
            });
        });
    }
    group.finish();
}

fn access_token_verify(c: &mut Criterion) {
    let f = fixtures();
    let mut group = c.benchmark_group("access_token_verify");
    for (alg, fixture) in &f.algs {
        let ring = fixture.tessera.key_ring();
        let verifier = ring.verifier();
        let token = fixture.access_token.as_str();
        group.bench_function(alg.as_str(), |b| {
            b.iter(|| verifier.verify(token).unwrap());
        });
    }
    group.finish();
}

fn bearer_authenticate(c: &mut Criterion) {
    let f = fixtures();
    let mut group = c.benchmark_group("bearer_authenticate");
    for (store, fixture) in &f.stores {
        let (tessera, token) = (&fixture.tessera, fixture.access_token.as_str());
        group.bench_function(BenchmarkId::new(Algorithm::EdDSA.as_str(), store), |b| {
            b.to_async(&f.rt)
                .iter(|| async move { tessera.authenticate_bearer(token).await.unwrap() });
        });
    }
    group.finish();
}

fn access_token_sign(c: &mut Criterion) {
    let f = fixtures();
    let mut group = c.benchmark_group("access_token_sign");
    for (alg, fixture) in &f.algs {
        let ring = fixture.tessera.key_ring();
        let key = ring.active();
        // Exactly what the service signs for this user: real ids, issuer and audience.
        let claims: Claims = ring.verifier().verify(&fixture.access_token).unwrap();
        group.bench_function(alg.as_str(), |b| {
            b.iter(|| key.sign(&claims).unwrap());
        });
    }
    group.finish();
}

fn verify_route(c: &mut Criterion) {
    let f = fixtures();
    let (router, cookie, bearer) = &f.route;
    let origin = "http://127.0.0.1:8080";
    let cases: [(&str, &[(header::HeaderName, &str)]); 3] = [
        ("bearer", &[(header::AUTHORIZATION, bearer.as_str())]),
        ("cookie", &[(header::COOKIE, cookie.as_str())]),
        (
            "cookie_unsafe_allowed_origin",
            &[
                (header::COOKIE, cookie.as_str()),
                (
                    header::HeaderName::from_static("x-forwarded-method"),
                    "POST",
                ),
                (header::ORIGIN, origin),
            ],
        ),
    ];
    let mut group = c.benchmark_group("verify_route");
    for (case, headers) in cases {
        group.bench_function(case, |b| {
            b.to_async(&f.rt).iter(|| async move {
                let mut request = Request::get("/v1/verify");
                for (name, value) in headers {
                    request = request.header(name, *value);
                }
                let response = router
                    .clone()
                    .oneshot(request.body(Body::empty()).unwrap())
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::OK);
            });
        });
    }
    group.finish();
}

/// Bytes each credential adds to every request, printed before anything is measured.
fn print_wire_sizes() {
    let f = fixtures();
    for (alg, fixture) in &f.algs {
        println!(
            "wire size: access token {:<5} {:>4} bytes",
            alg.as_str(),
            fixture.access_token.len()
        );
    }
    if let Some((_, fixture)) = f.stores.first() {
        let value = fixture.cookie.expose_secret().len();
        let name = &fixture.tessera.config().cookie_name;
        println!(
            "wire size: session cookie value {value:>4} bytes ({} with `{name}=`)",
            name.len() + 1 + value
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    targets = verify_route, cookie_session, access_token_verify, bearer_authenticate, access_token_sign, failed_login
}

fn main() {
    print_wire_sizes();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
