//! `/v1/recovery*` and `/v1/verification*` (SPEC §3 "Account lifecycle"): the JSON side of
//! the mailed links. The pages for browsers are in [`crate::pages`].

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use tessera_core::secret::Password;
use utoipa::ToSchema;

use crate::auth::{Authenticated, Device};
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::ops::ApiErrorBody;
use crate::AppState;

#[derive(Deserialize, ToSchema)]
pub struct RecoveryRequest {
    #[schema(example = "ada@example.com")]
    email: String,
}

#[derive(Deserialize, ToSchema)]
pub struct RecoveryCompletion {
    /// The `token` of the mailed link.
    token: String,
    /// 8 to 1024 characters.
    #[schema(format = Password)]
    new_password: String,
}

#[derive(Deserialize, ToSchema)]
pub struct VerificationCompletion {
    /// The `token` of the mailed link.
    token: String,
}

/// `POST /v1/recovery`: 202 whether or not an account has the address, after the same work.
#[utoipa::path(
    post,
    path = "/v1/recovery",
    tag = "users",
    request_body = RecoveryRequest,
    responses(
        (status = 202, description = "accepted: if an account has this address, a single-use link `{public_url}/ui/recovery?token=…` valid 30 minutes is mailed (at most `recovery_max` per account per hour; past it nothing is sent and the answer is the same)"),
        (status = 400, description = "`invalid_email` or `invalid_request`", body = ApiErrorBody),
        (status = 429, description = "`too_many_attempts`: past `signup_ip_max` requests from this address in an hour, with `Retry-After`", body = ApiErrorBody),
    )
)]
pub async fn request_recovery(
    State(state): State<AppState>,
    Device(device): Device,
    ApiJson(body): ApiJson<RecoveryRequest>,
) -> Result<StatusCode, ApiError> {
    state
        .tessera
        .request_recovery(&body.email, device.address)
        .await?;
    Ok(StatusCode::ACCEPTED)
}

/// `POST /v1/recovery/complete`
#[utoipa::path(
    post,
    path = "/v1/recovery/complete",
    tag = "users",
    request_body = RecoveryCompletion,
    responses(
        (status = 204, description = "the password is set; every session and refresh family is revoked and the access epoch bumped"),
        (status = 400, description = "`invalid_token` (unknown, used, expired or superseded link), `weak_password` (the link stays usable) or `invalid_request`", body = ApiErrorBody),
    )
)]
pub async fn complete_recovery(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RecoveryCompletion>,
) -> Result<StatusCode, ApiError> {
    state
        .tessera
        .complete_recovery(&body.token, Password::new(body.new_password))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/verification`: mail the verification link again.
#[utoipa::path(
    post,
    path = "/v1/verification",
    tag = "users",
    security(("bearer" = []), ("session_cookie" = [])),
    responses(
        (status = 202, description = "accepted: unless the address is verified already or `recovery_max` mails went to it this hour, a new link `{public_url}/ui/verify?token=…` valid 24 hours is mailed, superseding older ones"),
        (status = 401, description = "`unauthenticated`", body = ApiErrorBody),
        (status = 403, description = "`csrf_token_invalid` or `origin_not_allowed`", body = ApiErrorBody),
    )
)]
pub async fn resend_verification(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
) -> Result<StatusCode, ApiError> {
    state.tessera.resend_verification(&principal).await?;
    Ok(StatusCode::ACCEPTED)
}

/// `POST /v1/verification/complete`
#[utoipa::path(
    post,
    path = "/v1/verification/complete",
    tag = "users",
    request_body = VerificationCompletion,
    responses(
        (status = 204, description = "the address is verified"),
        (status = 400, description = "`invalid_token` (unknown, used, expired or superseded link) or `invalid_request`", body = ApiErrorBody),
    )
)]
pub async fn complete_verification(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<VerificationCompletion>,
) -> Result<StatusCode, ApiError> {
    state.tessera.complete_verification(&body.token).await?;
    Ok(StatusCode::NO_CONTENT)
}
