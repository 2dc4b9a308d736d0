//! How a request proves who it is. Taking an [`Authenticated`] is the proof of
//! authentication; for cookie callers on unsafe methods it has also checked `Origin` and the
//! CSRF token, so no handler can forget to.

use std::net::{IpAddr, SocketAddr};

use axum::body::{to_bytes, Body};
use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, Method};
use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::response::{IntoResponse as _, Response};
use futures_util::future::{BoxFuture, Either};
use ipnet::IpNet;
use tessera_core::secret::{DeviceCredential, SessionSecret};
use tessera_core::service::{DeviceInfo, Principal};
use tessera_core::AuthError;
use tower::{Layer, Service};

use crate::error::ApiError;
use crate::{AppState, BODY_LIMIT};

pub const CSRF_HEADER: &str = "x-csrf-token";

/// A credential as presented, before it is checked. Bearer wins when both are sent: an API
/// client that also carries a browser cookie means the token.
pub enum Credential<'a> {
    Bearer(&'a str),
    Cookie(SessionSecret),
}

impl<'a> Credential<'a> {
    pub fn from_headers(headers: &'a HeaderMap, cookie_name: &str) -> Option<Self> {
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let value = value.to_str().ok()?;
            let (scheme, token) = value.split_once(' ')?;
            return scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| Credential::Bearer(token.trim()));
        }
        session_cookie(headers, cookie_name).map(Credential::Cookie)
    }
}

/// The session cookie's value, if the request carries one.
pub fn session_cookie(headers: &HeaderMap, cookie_name: &str) -> Option<SessionSecret> {
    cookie(headers, cookie_name).map(SessionSecret::from_presented)
}

/// The value of the first non-empty cookie named `cookie_name`.
pub fn cookie<'h>(headers: &'h HeaderMap, cookie_name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == cookie_name)
        .map(|(_, value)| value.trim_matches('"'))
        .filter(|value| !value.is_empty())
}

/// Refuses a request whose `Origin` (or, failing that, `Referer`) names an origin outside
/// `allowed_origins`, and any request a browser marks `Sec-Fetch-Site: cross-site`.
/// `require` demands that one of the headers be present (HTML form posts always carry one).
/// Allocates nothing when `Origin` is sent: it runs on `/v1/verify`, the hot path.
pub fn check_origin(
    headers: &HeaderMap,
    allowed: &[String],
    require: bool,
) -> Result<(), AuthError> {
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|site| site.eq_ignore_ascii_case("cross-site"))
    {
        return Err(AuthError::OriginRejected);
    }
    // `allowed_origins` holds canonical origins (lower case, no trailing slash), so a
    // case-insensitive comparison is the comparison of canonical forms.
    let is_allowed = |origin: &str| {
        let origin = origin.trim_end_matches('/');
        allowed.iter().any(|a| a.eq_ignore_ascii_case(origin))
    };
    if let Some(origin) = headers.get(header::ORIGIN) {
        return match origin.to_str() {
            Ok(origin) if is_allowed(origin) => Ok(()),
            _ => Err(AuthError::OriginRejected),
        };
    }
    let referer = headers
        .get(header::REFERER)
        .and_then(|v| v.to_str().ok())
        .and_then(tessera_core::url::origin_of);
    match referer {
        Some(origin) if is_allowed(&origin) => Ok(()),
        Some(_) => Err(AuthError::OriginRejected),
        None if require => Err(AuthError::OriginRejected),
        None => Ok(()),
    }
}

/// Whether a forward-auth request is on behalf of an unsafe method, as the proxy reports it:
/// Traefik `forwardAuth` sends `X-Forwarded-Method`; nginx `auth_request` sends nothing unless
/// configured with `proxy_set_header X-Original-Method $request_method;`. Either header naming
/// a method other than GET, HEAD, OPTIONS or TRACE counts, as Tessera's own routes count
/// methods; both are read, so a proxy cannot hide an unsafe method behind a safe one.
pub fn proxied_method_is_unsafe(headers: &HeaderMap) -> bool {
    static X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
    static X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
    [&X_FORWARDED_METHOD, &X_ORIGINAL_METHOD]
        .into_iter()
        .filter_map(|name| headers.get(name))
        .any(|method| {
            let method = method.as_bytes().trim_ascii();
            !(method.eq_ignore_ascii_case(b"GET")
                || method.eq_ignore_ascii_case(b"HEAD")
                || method.eq_ignore_ascii_case(b"OPTIONS")
                || method.eq_ignore_ascii_case(b"TRACE"))
        })
}

/// The CSRF token found in a form body by [`form_csrf_token`], for the extractor to check.
#[derive(Clone)]
struct FormCsrfToken(String);

/// Lifts a `csrf_token` form field into the request's extensions, so the CSRF check can live
/// in the extractor (which only sees headers) and still accept plain HTML forms.
///
/// A hand-written service rather than `middleware::from_fn`, which boxes the inner service
/// and the future of every request: here every request that is not an unsafe form post (all
/// of `/v1/verify`) goes straight through, and only form posts pay for reading the body.
#[derive(Clone, Copy)]
pub struct FormCsrfLayer;

impl<S> Layer<S> for FormCsrfLayer {
    type Service = FormCsrf<S>;

    fn layer(&self, inner: S) -> FormCsrf<S> {
        FormCsrf { inner }
    }
}

#[derive(Clone)]
pub struct FormCsrf<S> {
    inner: S,
}

type Answer = Result<Response, Infallible>;

impl<S> Service<Request> for FormCsrf<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<S::Future, BoxFuture<'static, Answer>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if !carries_form_csrf_token(&request) {
            return Either::Left(self.inner.call(request));
        }
        // The ready service takes this call once the body is read; its clone waits for the
        // next request (tower's advice for services called from a future).
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        Either::Right(Box::pin(async move {
            match lift_form_csrf_token(request).await {
                Ok(request) => inner.call(request).await,
                Err(error) => Ok(error.into_response()),
            }
        }))
    }
}

/// An unsafe form post outside `/oauth2/*`, which takes no cookie and so no CSRF token (its
/// bodies are its own to reject, in its own RFC 6749 error shape).
fn carries_form_csrf_token(request: &Request) -> bool {
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    is_form && !request.method().is_safe() && !request.uri().path().starts_with("/oauth2/")
}

async fn lift_form_csrf_token(request: Request) -> Result<Request, ApiError> {
    let (mut parts, body) = request.into_parts();
    let bytes = to_bytes(body, BODY_LIMIT)
        .await
        .map_err(|_| ApiError::PayloadTooLarge)?;
    if let Some((_, token)) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&bytes)
        .unwrap_or_default()
        .into_iter()
        .find(|(k, _)| k == "csrf_token")
    {
        parts.extensions.insert(FormCsrfToken(token));
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// The authenticated caller. Extracting it runs the whole check.
pub struct Authenticated(pub Principal);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    #[tracing::instrument(level = "debug", skip_all)] // the credential must never reach a span
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let config = state.tessera.config();
        let credential = Credential::from_headers(&parts.headers, &config.cookie_name)
            .ok_or(AuthError::Unauthenticated)?;
        let principal = match credential {
            Credential::Bearer(token) => state.tessera.authenticate_bearer(token).await?,
            Credential::Cookie(secret) => {
                let principal = state.tessera.authenticate_cookie(&secret).await?;
                if !is_safe(&parts.method) {
                    check_origin(&parts.headers, &config.allowed_origins, false)?;
                    let presented = parts
                        .headers
                        .get(CSRF_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                        .or_else(|| parts.extensions.get::<FormCsrfToken>().map(|t| t.0.clone()))
                        .ok_or(AuthError::CsrfRejected)?;
                    if !state.tessera.check_csrf(principal.session_id, &presented) {
                        return Err(AuthError::CsrfRejected.into());
                    }
                }
                principal
            }
        };
        Ok(Self(principal))
    }
}

fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// What the caller's device tells: user agent, client address (recorded on new sessions for
/// the device list, and counted by the guessing limits) and its device cookie, if any.
pub struct Device(pub DeviceInfo);

impl FromRequestParts<AppState> for Device {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let address = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| {
                client_address(
                    peer.ip(),
                    &parts.headers,
                    &state.tessera.config().trusted_proxies,
                )
            });
        let credential =
            cookie(&parts.headers, &state.device_cookie_name).map(DeviceCredential::from_presented);
        Ok(Self(DeviceInfo {
            user_agent,
            address,
            credential,
        }))
    }
}

/// The client's address (SPEC §2 `trusted_proxies`): the socket peer, unless the peer is a
/// trusted proxy; then `X-Forwarded-For` is read from the right, each entry having been added
/// by the hop to its right, and the first entry that is not itself a trusted proxy is the
/// client. Entries to its left were written by the client and are never believed, so
/// prepending addresses chooses nothing. An unreadable entry stops the walk at the last hop
/// known.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut client = peer.to_canonical();
    if !is_trusted(&client) {
        return client;
    }
    let entries = headers
        .get_all("x-forwarded-for")
        .iter()
        .rev()
        .flat_map(|value| value.to_str().unwrap_or("").rsplit(','));
    for entry in entries {
        let Some(ip) = parse_forwarded(entry.trim()) else {
            break;
        };
        client = ip.to_canonical();
        if !is_trusted(&client) {
            break;
        }
    }
    client
}

/// An `X-Forwarded-For` entry: an address, or one with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use axum::http::HeaderValue;

    use super::*;

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies_and_from_the_right() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        // An untrusted peer's header is ignored.
        let spoofed = forwarded(&["1.1.1.1"]);
        assert_eq!(
            client_address(ip("203.0.113.9"), &spoofed, &trusted),
            ip("203.0.113.9")
        );
        // A trusted proxy's: the rightmost entry that is not a trusted proxy.
        let chain = forwarded(&["6.6.6.6, 198.51.100.7, 10.1.1.1"]);
        assert_eq!(
            client_address(ip("10.0.0.2"), &chain, &trusted),
            ip("198.51.100.7")
        );
        // Split over several header lines, read as one list.
        let lines = forwarded(&["6.6.6.6", "198.51.100.7", "10.1.1.1"]);
        assert_eq!(
            client_address(ip("10.0.0.2"), &lines, &trusted),
            ip("198.51.100.7")
        );
        // Ports and brackets are accepted; garbage stops at the last hop known.
        let ported = forwarded(&["[2001:db8::1]:443"]);
        assert_eq!(
            client_address(ip("10.0.0.2"), &ported, &trusted),
            ip("2001:db8::1")
        );
        let garbage = forwarded(&["198.51.100.7, not-an-ip"]);
        assert_eq!(
            client_address(ip("10.0.0.2"), &garbage, &trusted),
            ip("10.0.0.2")
        );
        // Nothing forwarded: the proxy itself.
        assert_eq!(
            client_address(ip("10.0.0.2"), &HeaderMap::new(), &trusted),
            ip("10.0.0.2")
        );
        // No trusted proxies: always the peer; IPv4-mapped peers are plain IPv4.
        assert_eq!(
            client_address(ip("::ffff:192.0.2.1"), &chain, &[]),
            ip("192.0.2.1")
        );
    }
}
