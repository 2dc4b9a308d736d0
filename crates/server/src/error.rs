//! The only place where errors become HTTP: `ApiError` for `/v1/*` (`{error, message}`) and
//! `OAuthError` for `/oauth2/*` (RFC 6749 §5.2 `{error, error_description}`). Internal causes
//! never reach a body; 5xx causes are logged here.

use axum::extract::rejection::{FormRejection, JsonRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use tessera_core::model::AdminScope;
use tessera_core::AuthError;

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

#[derive(Debug)]
pub enum ApiError {
    Auth(AuthError),
    /// Malformed input: the message says what was wrong with it.
    BadRequest(String),
    PayloadTooLarge,
    UnsupportedMediaType,
    NotFound,
    MethodNotAllowed,
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        Self::Auth(e)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::UnsupportedMediaType,
            _ => Self::BadRequest(rejection.body_text()),
        }
    }
}

impl From<FormRejection> for ApiError {
    fn from(rejection: FormRejection) -> Self {
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::UnsupportedMediaType,
            _ => Self::BadRequest(rejection.body_text()),
        }
    }
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            Self::BadRequest(message) => {
                (StatusCode::BAD_REQUEST, "invalid_request", message.clone())
            }
            Self::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "request body is larger than 64 KiB".into(),
            ),
            Self::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send application/json (or a form where the endpoint accepts one)".into(),
            ),
            Self::NotFound => (
                StatusCode::NOT_FOUND,
                "not_found",
                "no such resource".into(),
            ),
            Self::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this path".into(),
            ),
            Self::Auth(e) => {
                let (status, code) = match e {
                    AuthError::InvalidCredentials => {
                        (StatusCode::UNAUTHORIZED, "invalid_credentials")
                    }
                    AuthError::EmailTaken => (StatusCode::CONFLICT, "email_taken"),
                    AuthError::WeakPassword(_) => (StatusCode::BAD_REQUEST, "weak_password"),
                    AuthError::InvalidEmail => (StatusCode::BAD_REQUEST, "invalid_email"),
                    AuthError::InvalidRoles => (StatusCode::BAD_REQUEST, "invalid_roles"),
                    AuthError::InvalidPasswordHash => {
                        (StatusCode::BAD_REQUEST, "invalid_password_hash")
                    }
                    AuthError::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
                    AuthError::CsrfRejected => (StatusCode::FORBIDDEN, "csrf_token_invalid"),
                    AuthError::OriginRejected => (StatusCode::FORBIDDEN, "origin_not_allowed"),
                    AuthError::InsufficientScope(_) => {
                        (StatusCode::FORBIDDEN, "insufficient_scope")
                    }
                    AuthError::InvalidGrant => (StatusCode::BAD_REQUEST, "invalid_grant"),
                    AuthError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
                    AuthError::InvalidToken => (StatusCode::BAD_REQUEST, "invalid_token"),
                    AuthError::EmailNotVerified => (StatusCode::FORBIDDEN, "email_not_verified"),
                    AuthError::TooManyAttempts { .. } => {
                        (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts")
                    }
                    AuthError::ActiveKey => (StatusCode::CONFLICT, "active_key"),
                    AuthError::Key(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
                    // Fail closed (SPEC §7): an unreachable store is never a yes.
                    AuthError::Store(_) | AuthError::Busy { .. } => {
                        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
                    }
                };
                // Load shedding is no fault: its message, which says when to retry, is kept.
                let message = if status.is_server_error() && !matches!(e, AuthError::Busy { .. }) {
                    "the server could not complete the request; try again".to_owned()
                } else {
                    e.to_string()
                };
                (status, code, message)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = self.parts();
        if let Self::Auth(cause) = &self {
            if matches!(cause, AuthError::Busy { .. }) {
                tracing::warn!("password hashing at capacity; login refused with 503");
            } else if status.is_server_error() {
                tracing::error!(error = %cause, "request failed");
            }
        }
        let mut response = (
            status,
            Json(ErrorBody {
                error: code,
                message: &message,
            }),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Self::Auth(
            AuthError::TooManyAttempts { retry_after } | AuthError::Busy { retry_after },
        ) = &self
        {
            insert_retry_after(&mut response, *retry_after);
        }
        if let Self::Auth(AuthError::InsufficientScope(scope)) = &self {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                insufficient_scope_challenge(*scope),
            );
        }
        response
    }
}

/// RFC 9110 §10.2.3, in whole seconds rounded up: a client that waits that long is admitted.
fn insert_retry_after(response: &mut Response, retry_after: std::time::Duration) {
    let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
}

/// RFC 6750 §3.1: a valid key that lacks the scope is told which scope the resource needs, so
/// an operator knows what kind of key to make.
fn insufficient_scope_challenge(scope: AdminScope) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "Bearer error=\"insufficient_scope\", scope=\"{scope}\""
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("Bearer error=\"insufficient_scope\""))
}

/// RFC 6749 §5.2 errors for the token endpoint family.
#[derive(Debug)]
pub enum OAuthError {
    InvalidRequest(String),
    InvalidGrant(&'static str),
    UnsupportedGrantType,
    /// Client authentication failed or was missing (RFC 6749 §5.2): 401 with a challenge.
    InvalidClient,
    /// The client authenticated with a live API key whose scope does not cover this endpoint
    /// (RFC 6750 §3.1): 403, and the challenge names the scope needed.
    InsufficientScope(AdminScope),
    UnsupportedMediaType,
    PayloadTooLarge,
    /// Past the guessing limits (SPEC §3): 429 in the RFC 6749 shape, with `Retry-After`.
    TooManyAttempts(std::time::Duration),
    /// Password hashing at capacity: 503 `temporarily_unavailable` with `Retry-After`.
    Busy(std::time::Duration),
    /// `require_verified_email` and the right password of an unverified account: 403.
    EmailNotVerified,
    Unavailable(AuthError),
}

#[derive(Serialize)]
struct OAuthBody<'a> {
    error: &'a str,
    error_description: &'a str,
}

impl From<AuthError> for OAuthError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::InvalidCredentials => Self::InvalidGrant("invalid username or password"),
            AuthError::InvalidGrant | AuthError::Unauthenticated | AuthError::NotFound => {
                Self::InvalidGrant("refresh token is invalid, expired or revoked")
            }
            AuthError::TooManyAttempts { retry_after } => Self::TooManyAttempts(retry_after),
            AuthError::Busy { retry_after } => Self::Busy(retry_after),
            AuthError::EmailNotVerified => Self::EmailNotVerified,
            other => Self::Unavailable(other),
        }
    }
}

impl From<FormRejection> for OAuthError {
    fn from(rejection: FormRejection) -> Self {
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::UnsupportedMediaType,
            _ => Self::InvalidRequest(rejection.body_text()),
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let (status, code, description): (StatusCode, &str, String) = match &self {
            Self::InvalidRequest(text) => {
                (StatusCode::BAD_REQUEST, "invalid_request", text.clone())
            }
            Self::InvalidGrant(text) => {
                (StatusCode::BAD_REQUEST, "invalid_grant", (*text).to_owned())
            }
            Self::UnsupportedGrantType => (
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "grant_type must be password or refresh_token".to_owned(),
            ),
            Self::InvalidClient => (
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "an admin API key is required as Authorization: Bearer".to_owned(),
            ),
            Self::InsufficientScope(scope) => (
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                format!("this API key lacks the `{scope}` scope; create one with `tessera admin-key create --scope {scope}`"),
            ),
            Self::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request",
                "send application/x-www-form-urlencoded (RFC 6749 §3.2)".to_owned(),
            ),
            Self::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                "request body is larger than 64 KiB".to_owned(),
            ),
            Self::TooManyAttempts(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_attempts",
                "too many failed sign-ins; try again after Retry-After seconds".to_owned(),
            ),
            Self::EmailNotVerified => (
                StatusCode::FORBIDDEN,
                "email_not_verified",
                AuthError::EmailNotVerified.to_string(),
            ),
            Self::Busy(_) => {
                tracing::warn!("password hashing at capacity; token request refused with 503");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "too many sign-ins are being checked at once; try again after Retry-After seconds"
                        .to_owned(),
                )
            }
            Self::Unavailable(cause) => {
                tracing::error!(error = %cause, "token request failed");
                let status = if matches!(cause, AuthError::Store(_)) {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                };
                let code = if status == StatusCode::SERVICE_UNAVAILABLE {
                    "temporarily_unavailable"
                } else {
                    "server_error"
                };
                (
                    status,
                    code,
                    "the server could not complete the request; try again".to_owned(),
                )
            }
        };
        let mut response = (
            status,
            Json(OAuthBody {
                error: code,
                error_description: &description,
            }),
        )
            .into_response();
        // RFC 6749 §5.1: token responses and their errors must not be cached.
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Self::TooManyAttempts(retry_after) | Self::Busy(retry_after) = &self {
            insert_retry_after(&mut response, *retry_after);
        }
        // RFC 6749 §5.2: a failed client authentication answers 401 with a challenge.
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Self::InsufficientScope(scope) = &self {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                insufficient_scope_challenge(*scope),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::time::Duration;

    use super::*;

    async fn body(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn busy() -> AuthError {
        AuthError::Busy {
            retry_after: Duration::from_millis(1_500),
        }
    }

    #[tokio::test]
    async fn hashing_at_capacity_is_a_503_with_retry_after_in_the_api_shape() {
        let response = ApiError::from(busy()).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        let body = body(response).await;
        assert_eq!(body["error"], "unavailable");
        assert!(
            body["message"].as_str().unwrap().contains("try again in"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn hashing_at_capacity_is_a_503_with_retry_after_in_the_oauth_shape() {
        let response = OAuthError::from(busy()).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
        let body = body(response).await;
        assert_eq!(body["error"], "temporarily_unavailable");
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains("Retry-After"),
            "{body}"
        );
    }
}
