//! Tessera's HTTP API (SPEC §3): a thin axum layer over [`tessera_core::service::Tessera`].
//! Handlers parse, call the core and shape the answer; errors become HTTP only in
//! [`error`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{middleware, Json, Router};
use tessera_core::config::Config;
use tessera_core::keys::KEY_RELOAD_INTERVAL;
use tessera_core::service::Tessera;
use tokio::net::TcpListener;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub mod admin;
pub mod api;
pub mod auth;
pub mod error;
pub mod extract;
pub mod oauth;
pub mod ops;
pub mod webhooks;

use error::ApiError;

/// How often expired denylist entries and long-dead sessions are deleted.
const HOUSEKEEPING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(600);

/// SPEC §2: request bodies are capped at 64 KiB.
pub const BODY_LIMIT: usize = 64 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub tessera: Arc<Tessera>,
    /// `; Path=/; HttpOnly; SameSite=Lax[; Secure]`, computed once.
    cookie_attributes: Arc<str>,
    /// Request metrics, pre-registered for every documented route.
    metrics: Arc<ops::HttpMetrics>,
    /// `GET /openapi.json`, rendered once: the document does not change while serving.
    openapi: Bytes,
}

impl AppState {
    pub fn new(tessera: Arc<Tessera>) -> Self {
        let secure = if tessera.config().cookie_secure {
            "; Secure"
        } else {
            ""
        };
        let cookie_attributes = format!("; Path=/; HttpOnly; SameSite=Lax{secure}").into();
        let document = openapi_document(tessera.config());
        Self {
            metrics: Arc::new(ops::HttpMetrics::for_document(&document)),
            openapi: ops::render_document(&document),
            tessera,
            cookie_attributes,
        }
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
        .routes(routes!(admin::user_sessions, admin::sign_out_user))
        .routes(routes!(admin::revoke_session))
        .routes(routes!(admin::set_roles))
        .routes(routes!(api::verify))
        .routes(routes!(oauth::token))
        .routes(routes!(oauth::revoke))
        .routes(routes!(oauth::introspect))
        .routes(routes!(oauth::jwks))
        .routes(routes!(oauth::metadata))
        .routes(routes!(ops::health::healthz))
        .routes(routes!(ops::health::readyz))
        .routes(routes!(ops::metrics::metrics))
        .routes(routes!(ops::openapi::openapi_json))
}

/// The OpenAPI 3 document of the whole API, as `GET /openapi.json` serves it under `config`.
pub fn openapi_document(config: &Config) -> utoipa::openapi::OpenApi {
    ops::finish_document(api().into_openapi(), config)
}

/// The whole API. Everything a request can hit is mounted by `api()`, so the OpenAPI document
/// and the tests are checked against one list.
pub fn router(state: AppState) -> Router {
    let (routes, _) = api().split_for_parts();
    let metrics = ops::MetricsLayer::new(Arc::clone(&state.metrics));
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(auth::form_csrf_token))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        // Outermost, so the recorded status is the one the client gets.
        .layer(metrics)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// A panic is a bug, but it must still answer in our shape and never leak its message.
fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("handler panicked");
    let mut response = (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(serde_json::json!({ "error": "internal", "message": "the server could not complete the request" })),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Serves until `shutdown` resolves. Background work (key reloads) stops with it.
pub async fn serve(
    listener: TcpListener,
    tessera: Arc<Tessera>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let reloader = {
        let tessera = Arc::clone(&tessera);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(KEY_RELOAD_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = tessera.reload_keys().await {
                    tracing::warn!(error = %e, "could not reload signing keys");
                }
            }
        })
    };
    // At-least-once webhook delivery from the outbox (SPEC §3).
    let deliverer = webhooks::spawn(Arc::clone(&tessera));
    let housekeeper = {
        let tessera = Arc::clone(&tessera);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HOUSEKEEPING_INTERVAL);
            loop {
                tick.tick().await;
                match tessera.housekeeping().await {
                    Ok((pruned, purged)) if pruned + purged > 0 => {
                        tracing::info!(pruned, purged, "expired revocation state removed");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "housekeeping failed"),
                }
            }
        })
    };
    let app = router(AppState::new(tessera)).into_make_service_with_connect_info::<SocketAddr>();
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    reloader.abort();
    housekeeper.abort();
    deliverer.abort();
    result
}
