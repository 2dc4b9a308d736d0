//! axum integration (feature `axum`): an extractor and a tower layer over a [`Remote`].
//!
//! A handler that takes [`Authenticated`] cannot run for a request without a valid bearer
//! token; [`RequireBearer`] guards a whole router (and hands the claims on, so an extractor
//! behind it does not verify twice). Refusals answer 401 with `WWW-Authenticate: Bearer`
//! (RFC 6750 §3), or 503 when the revocation state is stale and the policy refuses.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use ::axum::extract::{FromRef, FromRequestParts};
use ::axum::http::request::Parts;
use ::axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use ::axum::response::{IntoResponse, Response};
use ::axum::Json;

use crate::remote::{Refusal, Remote};
use crate::Claims;

/// The verified claims of the request's bearer token.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Claims);

/// Why a request was refused: a response in Tessera's error shape.
#[derive(Debug, Clone)]
pub struct Rejection(Option<Refusal>);

impl Rejection {
    /// The refusal, or `None` when the request carried no bearer token.
    pub fn refusal(&self) -> Option<&Refusal> {
        self.0.as_ref()
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let (status, code, message, challenge) = match &self.0 {
            Some(Refusal::Unavailable) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "token revocations cannot be checked right now",
                None,
            ),
            None => (
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "a bearer token is required",
                Some("Bearer"),
            ),
            Some(_) => (
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "the access token is invalid, expired or revoked",
                Some("Bearer error=\"invalid_token\""),
            ),
        };
        let body = serde_json::json!({ "error": code, "message": message });
        let mut response = (status, Json(body)).into_response();
        if let Some(challenge) = challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

/// `Authorization: Bearer <token>` (RFC 6750 §2.1; the scheme is case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

async fn authenticate(remote: &Remote, headers: &HeaderMap) -> Result<Authenticated, Rejection> {
    let token = bearer(headers).ok_or(Rejection(None))?;
    remote
        .verify(token)
        .await
        .map(Authenticated)
        .map_err(|refusal| Rejection(Some(refusal)))
}

impl<S> FromRequestParts<S> for Authenticated
where
    Arc<Remote>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Rejection;

    #[tracing::instrument(level = "debug", skip_all)] // the token must never reach a span
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Rejection> {
        if let Some(done) = parts.extensions.get::<Authenticated>() {
            return Ok(done.clone());
        }
        let remote = Arc::<Remote>::from_ref(state);
        authenticate(&remote, &parts.headers).await
    }
}

/// A tower layer refusing every request without a valid bearer token, and putting
/// [`Authenticated`] in the request's extensions for those it lets through.
#[derive(Debug, Clone)]
pub struct RequireBearer {
    remote: Arc<Remote>,
}

impl RequireBearer {
    pub fn new(remote: Arc<Remote>) -> Self {
        Self { remote }
    }
}

impl<S> tower_layer::Layer<S> for RequireBearer {
    type Service = RequireBearerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireBearerService {
            inner,
            remote: Arc::clone(&self.remote),
        }
    }
}

/// The service [`RequireBearer`] wraps around an inner one.
#[derive(Debug, Clone)]
pub struct RequireBearerService<S> {
    inner: S,
    remote: Arc<Remote>,
}

impl<S, B> tower_service::Service<Request<B>> for RequireBearerService<S>
where
    S: tower_service::Service<Request<B>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // The clone is the one polled ready; take it and leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let remote = Arc::clone(&self.remote);
        Box::pin(async move {
            match authenticate(&remote, request.headers()).await {
                Ok(authenticated) => {
                    request.extensions_mut().insert(authenticated);
                    inner.call(request).await
                }
                Err(rejection) => Ok(rejection.into_response()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn only_a_bearer_authorization_carries_a_token() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&headers), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  abc"),
        );
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&headers), None);
    }

    #[test]
    fn unavailable_is_a_503_and_refusals_are_401_with_a_challenge() {
        let response = Rejection(Some(Refusal::Unavailable)).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let response = Rejection(Some(Refusal::Inactive)).into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            "Bearer error=\"invalid_token\""
        );
        let response = Rejection(None).into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
}
