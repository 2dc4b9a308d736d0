//! `/oauth2/*` and `/.well-known/*`: the OAuth2-shaped API for first-party clients and the
//! metadata other services use to verify tokens offline.

use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use serde::Deserialize;
use tessera_core::model::AdminScope;
use tessera_core::secret::{DeviceCredential, Password, RefreshToken};
use tessera_core::service::TokenPair;
use utoipa::ToSchema;

use crate::auth::Device;
use crate::error::OAuthError;
use crate::ops::OAuthErrorBody;
use crate::AppState;

/// RFC 6749 §4.3.2 and §6 parameters; unknown ones are ignored as §3.2 requires.
#[derive(Deserialize, ToSchema)]
pub struct TokenRequest {
    /// `password` or `refresh_token`.
    #[schema(example = "password")]
    grant_type: Option<String>,
    /// The email, for `grant_type=password`.
    username: Option<String>,
    /// For `grant_type=password`.
    #[schema(format = Password)]
    password: Option<String>,
    /// For `grant_type=refresh_token`; the answer carries its replacement (rotation).
    refresh_token: Option<String>,
    /// For `grant_type=password`: the `device_token` an earlier password grant for this
    /// account answered with. Its holder keeps signing in while the account is locked by
    /// someone else's guessing (SPEC §2).
    #[schema(format = Password)]
    device_token: Option<String>,
}

/// `POST /oauth2/token`
#[utoipa::path(
    post,
    path = "/oauth2/token",
    tag = "tokens",
    request_body(content = TokenRequest, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "`{access_token, token_type: \"Bearer\", expires_in, refresh_token}`, and `device_token` for the password grant", body = Object),
        (status = 400, description = "`invalid_request`, `invalid_grant` or `unsupported_grant_type`", body = OAuthErrorBody),
        (status = 429, description = "`too_many_attempts`: past the guessing limits, with `Retry-After`", body = OAuthErrorBody),
        (status = 503, description = "`temporarily_unavailable`: too many sign-ins are being checked at once (password hashing at capacity), with `Retry-After`", body = OAuthErrorBody),
    )
)]
pub async fn token(
    State(state): State<AppState>,
    Device(mut device): Device,
    form: Result<Form<TokenRequest>, FormRejection>,
) -> Result<Response, OAuthError> {
    let Form(request) = form?;
    let pair = match request.grant_type.as_deref() {
        Some("password") => {
            let (Some(username), Some(password)) = (request.username, request.password) else {
                return Err(OAuthError::InvalidRequest(
                    "username and password are required".into(),
                ));
            };
            device.credential = request
                .device_token
                .filter(|t| !t.is_empty())
                .map(|t| DeviceCredential::from_presented(&t));
            let tessera = Arc::clone(&state.tessera);
            crate::to_completion(async move {
                tessera
                    .password_grant(&username, Password::new(password), device)
                    .await
            })
            .await?
        }
        Some("refresh_token") => {
            let Some(token) = request.refresh_token.filter(|t| !t.is_empty()) else {
                return Err(OAuthError::InvalidRequest(
                    "refresh_token is required".into(),
                ));
            };
            state
                .tessera
                .refresh(&RefreshToken::from_presented(&token))
                .await?
        }
        Some(_) => return Err(OAuthError::UnsupportedGrantType),
        None => return Err(OAuthError::InvalidRequest("grant_type is required".into())),
    };
    Ok(token_response(&pair))
}

/// No `scope` member: Tessera grants no scopes, and RFC 6749 §5.1 forbids echoing a requested
/// scope that was not granted.
fn token_response(pair: &TokenPair) -> Response {
    let mut body = serde_json::json!({
        "access_token": pair.access_token,
        "token_type": "Bearer",
        "expires_in": pair.expires_in,
        "refresh_token": pair.refresh_token.expose_secret(),
    });
    if let Some(device) = &pair.device_token {
        body["device_token"] = device.expose_secret().into();
    }
    let mut response = Json(body).into_response();
    // RFC 6749 §5.1
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
        .headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// RFC 7009 §2.1 parameters. `token_type_hint` is accepted and not needed: the token's shape
/// tells an access JWT from an opaque refresh token.
#[derive(Deserialize, ToSchema)]
pub struct TokenParam {
    /// An access token (JWT) or a refresh token. `token_type_hint` may be sent and is ignored.
    token: Option<String>,
}

/// `POST /oauth2/revoke`: 200 whatever the token was (RFC 7009 §2.2), so the answer reveals
/// nothing; only a request without `token` is an error.
#[utoipa::path(
    post,
    path = "/oauth2/revoke",
    tag = "tokens",
    request_body(content = TokenParam, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "revoked, or nothing to revoke (RFC 7009 §2.2); no body"),
        (status = 400, description = "`invalid_request`: no `token`", body = OAuthErrorBody),
    )
)]
pub async fn revoke(
    State(state): State<AppState>,
    form: Result<Form<TokenParam>, FormRejection>,
) -> Result<Response, OAuthError> {
    let Form(param) = form?;
    let token = param
        .token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| OAuthError::InvalidRequest("token is required".into()))?;
    if token.len() <= tessera_core::verify::MAX_TOKEN_BYTES {
        state.tessera.revoke_token(&token).await?;
    }
    Ok(axum::http::StatusCode::OK.into_response())
}

/// `POST /oauth2/introspect` (RFC 7662) for resource servers holding an API key with the
/// `introspect` scope (an `admin` key has it too).
#[utoipa::path(
    post,
    path = "/oauth2/introspect",
    tag = "tokens",
    request_body(content = TokenParam, content_type = "application/x-www-form-urlencoded"),
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "`{active: false}`, or `{active: true, sub, exp, iat, jti, sid, aud, iss, scope, roles, token_type, email_verified}`", body = Object),
        (status = 400, description = "`invalid_request`: no `token`", body = OAuthErrorBody),
        (status = 401, description = "`invalid_client`: no valid API key", body = OAuthErrorBody),
        (status = 403, description = "`insufficient_scope`: the API key lacks the `introspect` scope (RFC 6750 §3.1; the `WWW-Authenticate` challenge names it)", body = OAuthErrorBody),
    )
)]
pub async fn introspect(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    form: Result<Form<TokenParam>, FormRejection>,
) -> Result<Response, OAuthError> {
    let secret = crate::admin::admin_secret(&headers).ok_or(OAuthError::InvalidClient)?;
    state
        .tessera
        .authenticate_admin(&secret, AdminScope::Introspect)
        .await
        .map_err(|e| match e {
            tessera_core::AuthError::Store(e) => {
                OAuthError::Unavailable(tessera_core::AuthError::Store(e))
            }
            tessera_core::AuthError::InsufficientScope(scope) => {
                OAuthError::InsufficientScope(scope)
            }
            _ => OAuthError::InvalidClient,
        })?;
    let Form(param) = form?;
    let token = param
        .token
        .ok_or_else(|| OAuthError::InvalidRequest("token is required".into()))?;
    let claims = state.tessera.introspect(&token).await?;
    // The account's state as it is now, not as the token was minted.
    let email_verified = match claims
        .as_ref()
        .and_then(|c| tessera_core::model::UserId::parse(&c.sub))
    {
        Some(user) => match state.tessera.user(user).await {
            Ok(user) => user.email_verified(),
            Err(tessera_core::AuthError::NotFound) => false,
            Err(e) => return Err(e.into()),
        },
        None => false,
    };
    let body = match claims {
        Some(claims) => serde_json::json!({
            "active": true,
            "sub": claims.sub,
            "exp": claims.exp,
            "iat": claims.iat,
            "jti": claims.jti,
            "sid": claims.sid,
            "aud": claims.aud,
            "iss": claims.iss,
            "scope": claims.scope.unwrap_or_default(),
            "roles": claims.roles,
            "token_type": "Bearer",
            "email_verified": email_verified,
        }),
        None => serde_json::json!({ "active": false }),
    };
    let mut response = Json(body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `GET /.well-known/jwks.json`: every public key whose tokens may still be alive. Cached for
/// one minute; a new key signs as soon as it is made, so verifiers should also refetch the set
/// when they meet an unknown `kid` (as `tessera-verify` users and common JOSE libraries do).
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    tag = "tokens",
    responses((status = 200, description = "RFC 7517 JWK set of the public keys whose tokens may still be alive", body = Object))
)]
pub async fn jwks(State(state): State<AppState>) -> Response {
    let ring = state.tessera.key_ring();
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        ring.jwks_json().to_owned(),
    )
        .into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

/// `GET /.well-known/oauth-authorization-server` (RFC 8414).
#[utoipa::path(
    get,
    path = "/.well-known/oauth-authorization-server",
    tag = "tokens",
    responses((status = 200, description = "RFC 8414 authorization server metadata", body = Object))
)]
pub async fn metadata(State(state): State<AppState>) -> Response {
    let issuer = &state.tessera.config().issuer;
    let body = serde_json::json!({
        "issuer": issuer,
        "token_endpoint": format!("{issuer}/oauth2/token"),
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "revocation_endpoint": format!("{issuer}/oauth2/revoke"),
        "introspection_endpoint": format!("{issuer}/oauth2/introspect"),
        "grant_types_supported": ["password", "refresh_token"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "introspection_endpoint_auth_methods_supported": ["bearer"],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": ["none"],
    });
    let mut response = Json(body).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}
