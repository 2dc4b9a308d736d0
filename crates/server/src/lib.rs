//! Tessera's HTTP API (SPEC §3): a thin axum layer over [`tessera_core::service::Tessera`].
//! Handlers parse, call the core and shape the answer; errors become HTTP only in
//! [`error`].

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, Method};
use axum::response::Response;
use axum::Router;
use futures_util::future::{BoxFuture, Either};
use tessera_core::config::Config;
use tessera_core::keys::KEY_RELOAD_INTERVAL;
use tessera_core::service::Tessera;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::{Service, ServiceBuilder};
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub mod admin;
pub mod api;
pub mod auth;
pub mod connections;
pub mod error;
pub mod extract;
pub mod mail;
pub mod oauth;
pub mod ops;
pub mod pages;
pub mod recovery;
pub mod revocations;
pub mod sign_in;
pub mod webhooks;

use error::ApiError;

/// SPEC §2: request bodies are capped at 64 KiB.
pub const BODY_LIMIT: usize = 64 * 1024;

/// What every handler shares, behind one `Arc`: axum clones the state for each extractor of
/// each request, and one reference count is cheaper than one per field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub tessera: Arc<Tessera>,
    /// `; Path=/; HttpOnly; SameSite=Lax[; Secure][; Domain=…]`, computed once.
    cookie_attributes: Arc<str>,
    /// Request metrics, pre-registered for every documented route.
    metrics: Arc<ops::HttpMetrics>,
    /// `GET /openapi.json`, rendered once: the document does not change while serving.
    openapi: Bytes,
    /// SPEC §2: `__Host-tessera_device`, or `tessera_device` without `cookie_secure`.
    device_cookie_name: Arc<str>,
    /// Where the sign-in page may send a browser (`return_to`), read once from the config.
    pub return_policy: pages::return_to::ReturnPolicy,
    /// Set when the node starts shutting down: ends the `GET /v1/revocations` streams, which
    /// would otherwise hold the connection drain until its bound.
    shutdown: Arc<watch::Sender<bool>>,
}

impl AppState {
    pub fn new(tessera: Arc<Tessera>) -> Self {
        let secure = if tessera.config().cookie_secure {
            "; Secure"
        } else {
            ""
        };
        // SPEC §2 `cookie_domain`: the applications on its subdomains receive the cookie (a
        // `__Secure-` one; `__Host-` forbids `Domain`). The device cookie stays host-only
        // (`__Host-`): only Tessera's own login reads it.
        let domain = tessera
            .config()
            .cookie_domain
            .as_deref()
            .map(|domain| format!("; Domain={domain}"))
            .unwrap_or_default();
        let cookie_attributes = format!("; Path=/; HttpOnly; SameSite=Lax{secure}{domain}").into();
        let device_cookie_name = if tessera.config().cookie_secure {
            "__Host-tessera_device"
        } else {
            "tessera_device"
        }
        .into();
        let document = openapi_document(tessera.config());
        Self(Arc::new(Shared {
            return_policy: pages::return_to::ReturnPolicy::from_config(tessera.config()),
            device_cookie_name,
            metrics: Arc::new(ops::HttpMetrics::for_document(&document)),
            openapi: ops::render_document(&document),
            tessera,
            cookie_attributes,
            shutdown: Arc::new(watch::Sender::new(false)),
        }))
    }

    /// The `Set-Cookie` value for the session cookie; an empty value with `max_age` 0 clears it.
    fn session_cookie(&self, value: &str, max_age: u64) -> HeaderValue {
        let name = &self.tessera.config().cookie_name;
        let cookie = format!(
            "{name}={value}; Max-Age={max_age}{}",
            self.cookie_attributes
        );
        HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The `Set-Cookie` value for the device cookie (SPEC §2): long-lived and `SameSite=Strict`,
    /// as only Tessera's own login reads it; never sent with a cross-site request.
    fn device_cookie(&self, value: &str) -> HeaderValue {
        let secure = if self.tessera.config().cookie_secure {
            "; Secure"
        } else {
            ""
        };
        let lifetime = tessera_core::guessing::DEVICE_LIFETIME.as_secs();
        let cookie = format!(
            "{}={value}; Max-Age={lifetime}; Path=/; HttpOnly; SameSite=Strict{secure}",
            self.device_cookie_name
        );
        HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// Every route of the API, from the handlers' `#[utoipa::path]` attributes: `routes!` mounts
/// each handler on the path and methods its attribute documents, so the router and the OpenAPI
/// document are built from one definition and cannot drift. Add routes here, never with
/// `Router::route` (`tests/ops.rs` walks the router and fails on an undocumented route).
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ops::ApiDoc::openapi())
        .routes(routes!(api::sign_up))
        .routes(routes!(api::login))
        .routes(routes!(api::logout))
        .routes(routes!(api::whoami))
        .routes(routes!(api::my_sessions, api::revoke_my_other_sessions))
        .routes(routes!(api::revoke_my_session))
        .routes(routes!(recovery::request_recovery))
        .routes(routes!(recovery::complete_recovery))
        .routes(routes!(recovery::resend_verification))
        .routes(routes!(recovery::complete_verification))
        .routes(routes!(pages::signup_page, pages::signup_form))
        .routes(routes!(pages::login_page, pages::login_form))
        .routes(routes!(pages::devices_page, pages::devices_form))
        .routes(routes!(pages::logout_page, pages::logout_form))
        .routes(routes!(pages::recovery_page, pages::recovery_form))
        .routes(routes!(pages::verify_page, pages::verify_form))
        .routes(routes!(api::change_password))
        .routes(routes!(api::delete_me))
        .routes(routes!(admin::user_sessions, admin::sign_out_user))
        .routes(routes!(admin::revoke_session))
        .routes(routes!(admin::unlock_user))
        .routes(routes!(admin::delete_user))
        .routes(routes!(admin::set_roles))
        .routes(routes!(api::verify))
        .routes(routes!(revocations::revocations))
        .routes(routes!(oauth::token))
        .routes(routes!(oauth::revoke))
        .routes(routes!(oauth::introspect))
        .routes(routes!(oauth::jwks))
        .routes(routes!(oauth::metadata))
        .routes(routes!(ops::health::healthz))
        .routes(routes!(ops::health::readyz))
        .routes(routes!(ops::openapi::openapi_json))
}

/// The OpenAPI 3 document of the whole API, as `GET /openapi.json` serves it under `config`.
pub fn openapi_document(config: &Config) -> utoipa::openapi::OpenApi {
    ops::finish_document(api().into_openapi(), config)
}

/// Every route of the API and its fallbacks, without the layers [`app`] puts around them.
/// Everything a request can hit is mounted by `api()`, so the OpenAPI document and the tests
/// are checked against one list.
pub fn router(state: AppState) -> Router {
    let (routes, _) = api().split_for_parts();
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// The whole API as served: [`router`] inside its layers, outermost first — the request
/// metrics (which also answer a panic, so the recorded status is the one the client gets),
/// `GET /v1/verify` (see [`VerifyFirst`]), the 64 KiB body limit, and the form-field CSRF
/// token. The layers wrap the router once: `Router::layer` would wrap every route, and each
/// such layer is cloned and boxed per request, which on `/v1/verify` costs more than the
/// check itself.
pub fn app(
    state: AppState,
) -> impl Service<Request, Response = Response, Error = Infallible, Future: Send + 'static>
       + Clone
       + Send
       + Sync
       + 'static {
    let metrics = ops::MetricsLayer::new(Arc::clone(&state.metrics));
    let rest = ServiceBuilder::new()
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(auth::FormCsrfLayer)
        .service(router(state.clone()));
    ServiceBuilder::new()
        .layer(metrics)
        .service(VerifyFirst { state, rest })
}

/// `GET /v1/verify` goes straight to its handler; every other request to the router.
///
/// A reverse proxy asks it before every request it forwards, so it is the route a node
/// answers most, and its check (a cookie looked up in memory, or a cached token) costs less
/// than the router's dispatch: cloning the boxed route, the body-limit and path-parameter
/// extensions, the handler's extractors. The handler is the same one the router mounts (which
/// still answers `HEAD` and documents the route), so both ways answer alike. The body limit
/// and the form CSRF check have nothing to do for it: it reads no body.
#[derive(Clone)]
struct VerifyFirst<S> {
    state: AppState,
    rest: S,
}

impl<S> Service<Request> for VerifyFirst<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<BoxFuture<'static, Result<Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.rest.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if request.method() == Method::GET && request.uri().path() == api::VERIFY_PATH {
            let state = self.state.clone();
            Either::Left(Box::pin(async move {
                Ok(api::verify(State(state), request).await)
            }))
        } else {
            Either::Right(self.rest.call(request))
        }
    }
}

/// `GET /metrics` alone, for `metrics_listen` (SPEC §2, §3): what the node counts — routes,
/// logins, revocation lag — is for its operators, so it is served on an address of its own
/// (loopback by default) and never on `listen`. Scrapes are not counted in the request
/// metrics, which describe the API.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", axum::routing::get(ops::metrics::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Runs a password check to its end even when the client hangs up (login, the password
/// grant, a password change and an account deletion all check one). The check takes a slot of
/// the guessing limits before hashing and gives it back after a success; a request dropped
/// halfway (a closed tab, a client's timeout) would otherwise count a right password as a
/// failure, and a few of them lock the account's owner out. Spawned, the check finishes, its
/// slot is settled and its session committed, whether or not anyone reads the answer.
pub(crate) async fn to_completion<T, F>(check: F) -> Result<T, tessera_core::AuthError>
where
    F: std::future::Future<Output = Result<T, tessera_core::AuthError>> + Send + 'static,
    T: Send + 'static,
{
    tokio::spawn(check).await.unwrap_or_else(|_| {
        tracing::error!("a password check stopped before its end");
        Err(tessera_core::StoreError::Unavailable("the password check stopped".into()).into())
    })
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// How long requests in flight at shutdown may still run; later, they are dropped (and
/// the log says so).
pub const DRAIN_BOUND: Duration = Duration::from_secs(10);

/// Connections `metrics_listen` accepts at once: a few scrapers, never a crowd.
pub const METRICS_CONNECTIONS: usize = 16;

/// How long the metrics address drains at shutdown: a scrape is quick, but a scraper's idle
/// keep-alive connection gets [`connections::IDLE_LINGER`] like any other.
pub const METRICS_DRAIN_BOUND: Duration = Duration::from_secs(3);

/// How long background work gets to finish its step and flush once the requests are done:
/// longer than a webhook attempt may take, so one in progress completes and is recorded.
pub const BACKGROUND_BOUND: Duration = Duration::from_secs(15);

/// Serves the API on `listener` and `/metrics` on `metrics_listener` until `shutdown`
/// resolves, then shuts down in order (SPEC §3 "Operations"): stops accepting connections,
/// finishes the requests in flight within [`DRAIN_BOUND`] (scrapes within
/// [`METRICS_DRAIN_BOUND`]), then stops every background task of the node — the core's and the server's — letting each
/// flush (pending `last_seen_at` updates, the webhook attempts in progress) within
/// [`BACKGROUND_BOUND`].
pub async fn serve(
    listener: TcpListener,
    metrics_listener: TcpListener,
    tessera: Arc<Tessera>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let background = tessera.background();
    let reloaded = Arc::clone(&tessera);
    background.spawn("key reload", |stop| {
        tessera_core::background::reload_keys_periodically(reloaded, KEY_RELOAD_INTERVAL, stop)
    });
    let kept = Arc::clone(&tessera);
    background.spawn("housekeeping", |stop| {
        tessera_core::background::housekeeping(kept, stop)
    });
    // At-least-once webhook delivery from the outbox (SPEC §3).
    let delivering = Arc::clone(&tessera);
    background.spawn("webhook delivery", |stop| {
        webhooks::deliver(delivering, stop)
    });
    let state = AppState::new(Arc::clone(&tessera));
    let streams = Arc::clone(&state.shutdown);
    let app = app(state.clone());
    let scrapes = metrics_router(state);
    let (api_limits, metrics_limits) = connection_limits(tessera.config());
    // Both addresses stop accepting at once and drain side by side; the revocation streams
    // end then too, or they would hold the drain until its bound.
    let (stopping, mut stopped) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        streams.send_replace(true);
        stopping.send_replace(true);
    };
    let metrics_shutdown = async move {
        let _ = stopped.wait_for(|stopped| *stopped).await;
    };
    tokio::join!(
        connections::serve(listener, app, shutdown, DRAIN_BOUND, api_limits),
        connections::serve(
            metrics_listener,
            scrapes,
            metrics_shutdown,
            METRICS_DRAIN_BOUND,
            metrics_limits,
        ),
    );
    tessera.background().shutdown(BACKGROUND_BOUND).await;
    tracing::info!("shut down");
    Ok(())
}

/// SPEC §2's timeouts for both addresses; the API's connection bound kept below the
/// open-files limit, beside what the metrics address and the stores may hold open.
fn connection_limits(config: &Config) -> (connections::Limits, connections::Limits) {
    let http = config.http;
    let reserved = connections::RESERVED_DESCRIPTORS
        + METRICS_CONNECTIONS
        + usize::try_from(config.database_pool_size).unwrap_or(usize::MAX);
    let wanted = usize::try_from(http.max_connections).unwrap_or(usize::MAX);
    let api = connections::Limits {
        header_timeout: http.header_timeout,
        idle_timeout: http.idle_timeout,
        max_connections: connections::descriptor_bound(wanted, reserved),
    };
    let metrics = connections::Limits {
        max_connections: METRICS_CONNECTIONS,
        ..api
    };
    (api, metrics)
}
