//! The OpenAPI document (SPEC §3): its fixed parts, what only the configuration adds, the
//! shared error shapes, and `GET /openapi.json`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use tessera_core::config::Config;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::server::Server;
use utoipa::openapi::OpenApi as OpenApiDocument;
use utoipa::{OpenApi, ToSchema};

use crate::AppState;

/// The document's fixed parts; the paths are added by the router (`routes!` in `lib.rs`) from
/// each handler's `#[utoipa::path]`, so what is served and what is documented are one list.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tessera",
        description = "Sign-up, browser sessions, OAuth2-shaped tokens, forward-auth \
                       verification and administration. Errors are `{error, message}` \
                       except on `/oauth2/*`, which answer RFC 6749 §5.2 \
                       `{error, error_description}`."
    ),
    components(schemas(ApiErrorBody, OAuthErrorBody)),
    tags(
        (name = "users", description = "Sign-up and browser sessions (cookie)"),
        (name = "tokens", description = "OAuth2-shaped token endpoints and key publication"),
        (name = "verify", description = "Forward-auth for reverse proxies"),
        (name = "admin", description = "Administration with an API key of the `admin` scope"),
        (name = "pages", description = "HTML pages for browsers: the targets of mailed links"),
        (name = "operations", description = "Health, readiness and this document (metrics are served on `metrics_listen`)"),
    )
)]
pub struct ApiDoc;

/// Security scheme names used by the handlers' `security(...)` attributes.
pub const BEARER: &str = "bearer";
pub const SESSION_COOKIE: &str = "session_cookie";
pub const ADMIN_KEY: &str = "admin_key";

/// Completes the document with what only the configuration knows: the public URL and the
/// session cookie's name.
pub fn finish_document(mut doc: OpenApiDocument, config: &Config) -> OpenApiDocument {
    doc.servers = Some(vec![Server::new(config.issuer.clone())]);
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some(
                    "An access token from `POST /oauth2/token` (RFC 9068 JWT). Needs no CSRF \
                     token.",
                ))
                .build(),
        ),
    );
    components.add_security_scheme(
        SESSION_COOKIE,
        SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
            config.cookie_name.clone(),
            "The session cookie set by `POST /v1/login`. Unsafe methods also need the CSRF \
             token in `X-CSRF-Token` (or form field `csrf_token`)."
                .to_owned(),
        ))),
    );
    components.add_security_scheme(
        ADMIN_KEY,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "An API key created with `tessera admin-key create --scope SCOPE`. Each \
                     operation names the scope it needs: `admin` (every `/v1/admin/*` route; an \
                     admin key has every scope), `introspect` (`POST /oauth2/introspect`) or \
                     `revocations` (`GET /v1/revocations`). A valid key without that scope gets \
                     403 `insufficient_scope` (RFC 6750 §3.1). A user's access token is never \
                     an API key.",
                ))
                .build(),
        ),
    );
    doc
}

/// The error shape of `/v1/*` (SPEC §3). Described here for the document only; the server
/// writes it in `error.rs`.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only
pub struct ApiErrorBody {
    /// A stable code such as `invalid_credentials` or `unavailable`.
    error: String,
    /// Human text; never an internal detail.
    message: String,
}

/// RFC 6749 §5.2, the error shape of `/oauth2/*`.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only
pub struct OAuthErrorBody {
    /// `invalid_request`, `invalid_grant`, `unsupported_grant_type`, `invalid_client`, ...
    error: String,
    error_description: Option<String>,
}

/// `GET /openapi.json`: this API as OpenAPI 3, rendered once at start.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "this document", body = Object))
)]
pub async fn openapi_json(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        state.openapi.clone(),
    )
        .into_response()
}

/// The document as bytes, ready to serve; an (unexpected) serialisation failure serves an
/// empty object rather than stopping the start.
pub fn render_document(doc: &OpenApiDocument) -> Bytes {
    match serde_json::to_vec(doc) {
        Ok(json) => Bytes::from(json),
        Err(e) => {
            tracing::error!(error = %e, "could not render the OpenAPI document");
            Bytes::from_static(b"{}")
        }
    }
}
