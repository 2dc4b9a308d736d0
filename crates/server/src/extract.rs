//! Body extractors whose rejections are *our* errors: a malformed body is a 400 (413, 415) in
//! the API's JSON shape, never axum's plain-text default.

use axum::extract::{FromRequest, Request};
use axum::http::header;
use axum::{Form, Json};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let Json(value) = Json::<T>::from_request(req, state).await?;
        Ok(Self(value))
    }
}

/// JSON or an HTML form, as `POST /v1/login` accepts both (SPEC §3).
pub struct JsonOrForm<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonOrForm<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        if content_type.starts_with("application/x-www-form-urlencoded") {
            let Form(value) = Form::<T>::from_request(req, state).await?;
            Ok(Self(value))
        } else {
            let Json(value) = Json::<T>::from_request(req, state).await?;
            Ok(Self(value))
        }
    }
}

/// A path parameter; one that cannot be decoded (bad percent-encoding, invalid UTF-8) names
/// no resource, so it is a 404 in our shape rather than axum's plain-text 400.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> axum::extract::FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(_) => Err(ApiError::NotFound),
        }
    }
}
