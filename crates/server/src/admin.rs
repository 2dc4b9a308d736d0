//! `/v1/admin/*`: operations on any user, authorised by an API key with the `admin` scope,
//! created with `tessera admin-key create`. A user's access token is never an admin credential,
//! and neither is a resource server's `introspect` or `revocations` key.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use tessera_core::model::{AdminKey, AdminScope, SessionId, UserId};
use tessera_core::secret::AdminSecret;
use tessera_core::AuthError;
use utoipa::ToSchema;

use crate::api::{device_list, UserView};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath};
use crate::ops::ApiErrorBody;
use crate::AppState;

/// Proof that the caller holds a live API key with the `admin` scope.
pub struct Admin(pub AdminKey);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    #[tracing::instrument(level = "debug", skip_all)] // the key must never reach a span
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Ok(Self(scoped_key(parts, state, AdminScope::Admin).await?))
    }
}

/// The live API key of a request, if its scope covers `needed`: 401 without a valid key, 403
/// `insufficient_scope` for a valid key of another scope.
pub async fn scoped_key(
    parts: &Parts,
    state: &AppState,
    needed: AdminScope,
) -> Result<AdminKey, ApiError> {
    let secret = admin_secret(&parts.headers).ok_or(AuthError::Unauthenticated)?;
    Ok(state.tessera.authenticate_admin(&secret, needed).await?)
}

/// The bearer credential of a request, read as an admin key.
pub fn admin_secret(headers: &HeaderMap) -> Option<AdminSecret> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| AdminSecret::from_presented(key.trim()))
}

fn user_id(text: &str) -> Result<UserId, ApiError> {
    UserId::parse(text).ok_or(ApiError::NotFound)
}

/// `GET /v1/admin/users/{id}/sessions`
#[utoipa::path(
    get,
    path = "/v1/admin/users/{id}/sessions",
    tag = "admin",
    params(("id" = String, Path, description = "a user id")),
    security(("admin_key" = ["admin"])),
    responses(
        (status = 200, description = "the user's devices, as `GET /v1/sessions` lists them", body = Vec<Object>),
        (status = 401, description = "`unauthenticated`: no valid API key", body = ApiErrorBody),
        (status = 403, description = "`insufficient_scope`: the API key lacks the `admin` scope", body = ApiErrorBody),
        (status = 404, description = "`not_found`: no such user", body = ApiErrorBody),
    )
)]
pub async fn user_sessions(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let user = state.tessera.user(user_id(&id)?).await?;
    let sessions = state.tessera.sessions_of(user.id).await?;
    Ok(Json(device_list(&sessions, None)).into_response())
}

/// `DELETE /v1/admin/users/{id}/sessions`: force sign-out everywhere.
#[utoipa::path(
    delete,
    path = "/v1/admin/users/{id}/sessions",
    tag = "admin",
    params(("id" = String, Path, description = "a user id")),
    security(("admin_key" = ["admin"])),
    responses(
        (status = 204, description = "every session and refresh family revoked, epoch bumped"),
        (status = 401, description = "`unauthenticated`: no valid API key", body = ApiErrorBody),
        (status = 403, description = "`insufficient_scope`: the API key lacks the `admin` scope", body = ApiErrorBody),
        (status = 404, description = "`not_found`: no such user", body = ApiErrorBody),
    )
)]
pub async fn sign_out_user(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let user = state.tessera.user(user_id(&id)?).await?;
    state.tessera.logout_everywhere(user.id).await?;
    tracing::info!(admin = %admin.id, user = %user.id, "forced sign-out everywhere");
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/admin/users/{id}`: deletes a user as `DELETE /v1/users/me` does.
#[utoipa::path(
    delete,
    path = "/v1/admin/users/{id}",
    tag = "admin",
    params(("id" = String, Path, description = "a user id")),
    security(("admin_key" = ["admin"])),
    responses(
        (status = 204, description = "the user, their sessions, refresh families and guessing counters are deleted; their access tokens are refused until they expire"),
        (status = 401, description = "`unauthenticated`: no valid API key", body = ApiErrorBody),
        (status = 403, description = "`insufficient_scope`: the API key lacks the `admin` scope", body = ApiErrorBody),
        (status = 404, description = "`not_found`: no such user", body = ApiErrorBody),
    )
)]
pub async fn delete_user(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let id = user_id(&id)?;
    state.tessera.delete_user(id).await?;
    tracing::info!(admin = %admin.id, user = %id, "user deleted by an administrator");
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/admin/users/{id}/lockout`: clears the account's guessing tally, and so its
/// lock, on every node (the tally is shared).
#[utoipa::path(
    delete,
    path = "/v1/admin/users/{id}/lockout",
    tag = "admin",
    params(("id" = String, Path, description = "a user id")),
    security(("admin_key" = [])),
    responses(
        (status = 204, description = "the account's failed-login count and lock are cleared"),
        (status = 401, description = "`unauthenticated`: no valid admin API key", body = ApiErrorBody),
        (status = 404, description = "`not_found`: no such user", body = ApiErrorBody),
    )
)]
pub async fn unlock_user(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let id = user_id(&id)?;
    state.tessera.unlock(id).await?;
    tracing::info!(admin = %admin.id, user = %id, "account unlocked");
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/admin/sessions/{id}`
#[utoipa::path(
    delete,
    path = "/v1/admin/sessions/{id}",
    tag = "admin",
    params(("id" = String, Path, description = "a session id")),
    security(("admin_key" = ["admin"])),
    responses(
        (status = 204, description = "the session is revoked"),
        (status = 401, description = "`unauthenticated`: no valid API key", body = ApiErrorBody),
        (status = 403, description = "`insufficient_scope`: the API key lacks the `admin` scope", body = ApiErrorBody),
        (status = 404, description = "`not_found`", body = ApiErrorBody),
    )
)]
pub async fn revoke_session(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let id = SessionId::parse(&id).ok_or(ApiError::NotFound)?;
    state.tessera.revoke_session(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
pub struct Roles {
    /// At most 64, each at most 128 characters and without commas.
    #[schema(example = json!(["admin"]))]
    roles: Vec<String>,
}

/// `PUT /v1/admin/users/{id}/roles`: the user's access tokens stop working, their refresh
/// family does not, and the next refresh carries the new roles.
#[utoipa::path(
    put,
    path = "/v1/admin/users/{id}/roles",
    tag = "admin",
    params(("id" = String, Path, description = "a user id")),
    request_body = Roles,
    security(("admin_key" = ["admin"])),
    responses(
        (status = 200, description = "the user: `{id, email, roles, created_at}`", body = Object),
        (status = 400, description = "`invalid_request`: too many or malformed roles", body = ApiErrorBody),
        (status = 401, description = "`unauthenticated`: no valid API key", body = ApiErrorBody),
        (status = 403, description = "`insufficient_scope`: the API key lacks the `admin` scope", body = ApiErrorBody),
        (status = 404, description = "`not_found`: no such user", body = ApiErrorBody),
    )
)]
pub async fn set_roles(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Roles>,
) -> Result<Response, ApiError> {
    let user = state.tessera.set_roles(user_id(&id)?, body.roles).await?;
    tracing::info!(admin = %admin.id, user = %user.id, "roles changed");
    Ok(Json(UserView::of(&user)).into_response())
}
