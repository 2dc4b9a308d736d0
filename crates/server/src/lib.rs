//! Tessera's HTTP API (SPEC §3): a thin axum layer over [`tessera_core::service::Tessera`].
//! Handlers parse, call the core and shape the answer; errors become HTTP only in
//! [`error`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{middleware, Json, Router};
use tessera_core::keys::KEY_RELOAD_INTERVAL;
use tessera_core::service::Tessera;
use tokio::net::TcpListener;

pub mod admin;
pub mod api;
pub mod auth;
pub mod error;
pub mod extract;
pub mod oauth;

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
}

impl AppState {
    pub fn new(tessera: Arc<Tessera>) -> Self {
        let secure = if tessera.config().cookie_secure {
            "; Secure"
        } else {
            ""
        };
        let cookie_attributes = format!("; Path=/; HttpOnly; SameSite=Lax{secure}").into();
        Self {
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

/// The whole API. Everything a request can hit is here, so the OpenAPI document and the
/// tests can be checked against one list.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/users", post(api::sign_up))
        .route("/v1/login", post(api::login))
        .route("/v1/logout", post(api::logout))
        .route("/v1/session", get(api::whoami))
        .route(
            "/v1/sessions",
            get(api::my_sessions).delete(api::revoke_my_other_sessions),
        )
        .route("/v1/sessions/{id}", delete(api::revoke_my_session))
        .route(
            "/v1/admin/users/{id}/sessions",
            get(admin::user_sessions).delete(admin::sign_out_user),
        )
        .route("/v1/admin/sessions/{id}", delete(admin::revoke_session))
        .route("/v1/admin/users/{id}/roles", put(admin::set_roles))
        .route("/v1/verify", get(api::verify))
        .route("/oauth2/token", post(oauth::token))
        .route("/oauth2/revoke", post(oauth::revoke))
        .route("/oauth2/introspect", post(oauth::introspect))
        .route("/.well-known/jwks.json", get(oauth::jwks))
        .route(
            "/.well-known/oauth-authorization-server",
            get(oauth::metadata),
        )
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(auth::form_csrf_token))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .with_state(state)
}

async fn healthz() -> Response {
    Json(serde_json::json!({ "status": "ok" })).into_response()
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
    result
}
