//! `/v1/*`: sign-up, browser sessions and forward-auth verification.

use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use tessera_core::config::RevocationMode;
use tessera_core::model::{Session, SessionId, Timestamp, User, Via};
use tessera_core::secret::Password;
use tessera_core::service::{CookieLogin, Principal, RefusalReason, Refused};
use tessera_core::AuthError;
use utoipa::{IntoParams, ToSchema};

use crate::auth::{
    check_origin, proxied_method_is_unsafe, session_cookie, Authenticated, Credential, Device,
};
use crate::error::ApiError;
use crate::extract::{ApiJson, JsonOrForm};
use crate::ops::ApiErrorBody;
use crate::{sign_in, AppState};

#[derive(Deserialize, ToSchema)]
pub struct Credentials {
    #[schema(example = "ada@example.com")]
    email: String,
    /// 8 to 1024 characters.
    #[schema(format = Password)]
    password: String,
}

#[derive(Serialize)]
pub struct UserView<'a> {
    id: String,
    email: &'a str,
    roles: &'a [String],
    created_at: Timestamp,
}

impl<'a> UserView<'a> {
    pub fn of(user: &'a User) -> Self {
        Self {
            id: user.id.to_string(),
            email: user.email.as_str(),
            roles: &user.roles,
            created_at: user.created_at,
        }
    }
}

#[derive(Serialize)]
pub struct SessionView {
    id: String,
    created_at: Timestamp,
    last_seen_at: Timestamp,
    expires_at: Timestamp,
    idle_expires_at: Timestamp,
    via: Via,
}

impl SessionView {
    fn of(session: &Session) -> Self {
        Self {
            id: session.id.to_string(),
            created_at: session.created_at,
            last_seen_at: session.last_seen_at,
            expires_at: session.expires_at,
            idle_expires_at: session.idle_expires_at(),
            via: session.via,
        }
    }
}

/// `POST /v1/users`
#[utoipa::path(
    post,
    path = "/v1/users",
    tag = "users",
    request_body = Credentials,
    responses(
        (status = 201, description = "signed up: `{id, email, created_at}`", body = Object),
        (status = 400, description = "`weak_password`, `invalid_email` or `invalid_request`", body = ApiErrorBody),
        (status = 429, description = "`too_many_attempts`: past `signup_ip_max` sign-ups from this address in an hour, with `Retry-After`", body = ApiErrorBody),
        (status = 409, description = "`email_taken`", body = ApiErrorBody),
    )
)]
pub async fn sign_up(
    State(state): State<AppState>,
    Device(device): Device,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<Response, ApiError> {
    let user = state
        .tessera
        .sign_up(&body.email, Password::new(body.password), device.address)
        .await?;
    let view = serde_json::json!({
        "id": user.id.to_string(),
        "email": user.email.as_str(),
        "created_at": user.created_at,
    });
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// `POST /v1/login`. Login CSRF (a victim signed into the attacker's account) is refused by
/// checking `Origin`/`Referer`/`Sec-Fetch-Site`: a form post must prove it comes from an
/// allowed origin, and a cross-origin JSON post cannot be sent without a CORS preflight, which
/// Tessera never approves.
#[utoipa::path(
    post,
    path = "/v1/login",
    tag = "users",
    request_body(content(
        (Credentials = "application/json"),
        (Credentials = "application/x-www-form-urlencoded"),
    )),
    responses(
        (status = 200, description = "signed in: sets the session cookie; body `{user, session, csrf_token}`", body = Object),
        (status = 401, description = "`invalid_credentials`, alike for an unknown user and a wrong password", body = ApiErrorBody),
        (status = 429, description = "`too_many_attempts`: past the guessing limits, answered before any password check unless the client shows this account's device cookie; `Retry-After` says when to try again", body = ApiErrorBody),
        (status = 503, description = "`unavailable`: too many sign-ins are being checked at once (password hashing at capacity); `Retry-After` says when to try again", body = ApiErrorBody),
        (status = 403, description = "`origin_not_allowed` (login CSRF defence)", body = ApiErrorBody),
    )
)]
pub async fn login(
    State(state): State<AppState>,
    Device(device): Device,
    headers: HeaderMap,
    JsonOrForm(body): JsonOrForm<Credentials>,
) -> Result<Response, ApiError> {
    let config = state.tessera.config();
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    check_origin(&headers, &config.allowed_origins, is_form)?;
    let SignedIn { login, cookies } =
        sign_in(&state, device, &headers, body.email, body.password).await?;
    let body = serde_json::json!({
        "user": UserView::of(&login.user),
        "session": SessionView::of(&login.session),
        "csrf_token": login.csrf_token,
    });
    let mut response = Json(body).into_response();
    cookies.set_on(&mut response);
    no_store(&mut response);
    Ok(response)
}

/// A browser signed in: the login and the two cookies that carry it.
pub struct SignedIn {
    pub login: CookieLogin,
    pub cookies: SignInCookies,
}

/// The `Set-Cookie` values of a sign-in: the session cookie and the device cookie (SPEC §2).
#[must_use = "the session cookie must reach the browser"]
pub struct SignInCookies {
    session: HeaderValue,
    device: HeaderValue,
}

impl SignInCookies {
    pub fn set_on(self, response: &mut Response) {
        let headers = response.headers_mut();
        headers.append(header::SET_COOKIE, self.session);
        headers.append(header::SET_COOKIE, self.device);
    }
}

/// The one password sign-in of a browser, behind `POST /v1/login` and the sign-in page, so
/// both honour the device cookie, the guessing limits and the session fixation defence
/// alike: the device cookie in `device` exempts its holder from the account's lockout, a
/// session cookie sent along is revoked, and the check runs to its end even when the client
/// hangs up. The caller checks the request's origin first (login CSRF).
pub async fn sign_in(
    state: &AppState,
    device: tessera_core::service::DeviceInfo,
    headers: &HeaderMap,
    email: String,
    password: String,
) -> Result<SignedIn, AuthError> {
    let config = state.tessera.config();
    let previous = session_cookie(headers, &config.cookie_name);
    let tessera = Arc::clone(&state.tessera);
    let login = crate::to_completion(async move {
        tessera
            .login(&email, Password::new(password), device, previous.as_ref())
            .await
    })
    .await?;
    let cookies = SignInCookies {
        session: state.session_cookie(
            login.secret.expose_secret(),
            config.session_absolute_timeout.as_secs(),
        ),
        device: state.device_cookie(login.device.expose_secret()),
    };
    Ok(SignedIn { login, cookies })
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogoutQuery {
    /// Revoke every session of the user and bump the epoch, not only the current one.
    #[serde(default)]
    everywhere: bool,
}

/// `POST /v1/logout[?everywhere=true]`
#[utoipa::path(
    post,
    path = "/v1/logout",
    tag = "users",
    params(LogoutQuery),
    security(("bearer" = []), ("session_cookie" = [])),
    responses(
        (status = 204, description = "signed out; the cookie is cleared"),
        (status = 401, description = "`unauthenticated`", body = ApiErrorBody),
        (status = 403, description = "`csrf_token_invalid` or `origin_not_allowed`", body = ApiErrorBody),
    )
)]
pub async fn logout(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    query: Result<Query<LogoutQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if query.everywhere {
        state.tessera.logout_everywhere(principal.user_id).await?;
    } else {
        state.tessera.logout(&principal).await?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, state.session_cookie("", 0));
    Ok(response)
}

/// `GET /v1/session`: who am I.
#[utoipa::path(
    get,
    path = "/v1/session",
    tag = "users",
    security(("bearer" = []), ("session_cookie" = [])),
    responses(
        (status = 200, description = "`{user:{id,email,email_verified,roles}, session:{id, created_at, expires_at, idle_expires_at, via}, csrf_token?}`", body = Object),
        (status = 401, description = "`unauthenticated`", body = ApiErrorBody),
    )
)]
pub async fn whoami(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
) -> Result<Response, ApiError> {
    let user = state
        .tessera
        .user(principal.user_id)
        .await
        .map_err(|e| match e {
            AuthError::NotFound => AuthError::Unauthenticated,
            other => other,
        })?;
    let session = match state.tessera.session_of(&principal).await {
        Ok(session) => serde_json::to_value(SessionView::of(&session)).unwrap_or_default(),
        // `none` trusts a valid token without asking whether its session lives (the documented
        // trade-off), so the record may be gone: answer with what the token itself says.
        Err(AuthError::Unauthenticated)
            if state.tessera.config().revocation_mode == RevocationMode::None =>
        {
            serde_json::json!({ "id": principal.session_id.to_string(), "via": principal.presented })
        }
        Err(e) => return Err(e.into()),
    };
    let mut body = serde_json::json!({
        "user": {
            "id": user.id.to_string(),
            "email": user.email.as_str(),
            "email_verified": user.email_verified(),
            "roles": principal.roles,
        },
        "session": session,
    });
    if principal.presented == Via::Cookie {
        body["csrf_token"] = state.tessera.csrf_token(principal.session_id).into();
    }
    let mut response = Json(body).into_response();
    no_store(&mut response);
    Ok(response)
}

/// `[{id, created_at, last_seen_at, expires_at, user_agent, ip, via, current}]`: one entry a
/// signed-in device.
pub fn device_list(sessions: &[Session], current: Option<SessionId>) -> serde_json::Value {
    sessions
        .iter()
        .map(|s| {
            serde_json::json!({
                "id": s.id.to_string(),
                "created_at": s.created_at,
                "last_seen_at": s.last_seen_at,
                "expires_at": s.expires_at,
                "idle_expires_at": s.idle_expires_at(),
                "user_agent": s.user_agent,
                "ip": s.ip,
                "via": s.via,
                "current": Some(s.id) == current,
            })
        })
        .collect()
}

/// `GET /v1/sessions`: the caller's devices.
#[utoipa::path(
    get,
    path = "/v1/sessions",
    tag = "users",
    security(("bearer" = []), ("session_cookie" = [])),
    responses(
        (status = 200, description = "`[{id, created_at, last_seen_at, expires_at, idle_expires_at, user_agent, ip, via, current}]`", body = Vec<Object>),
        (status = 401, description = "`unauthenticated`", body = ApiErrorBody),
    )
)]
pub async fn my_sessions(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
) -> Result<Response, ApiError> {
    let sessions = state.tessera.sessions_of(principal.user_id).await?;
    let mut response = Json(device_list(&sessions, Some(principal.session_id))).into_response();
    no_store(&mut response);
    Ok(response)
}

/// `DELETE /v1/sessions/{id}`: sign one of my devices out; 404 if it is not mine.
#[utoipa::path(
    delete,
    path = "/v1/sessions/{id}",
    tag = "users",
    params(("id" = String, Path, description = "a session id from `GET /v1/sessions`")),
    security(("bearer" = []), ("session_cookie" = [])),
    responses(
        (status = 204, description = "the device is signed out"),
        (status = 401, description = "`unauthenticated`", body = ApiErrorBody),
        (status = 403, description = "`csrf_token_invalid` or `origin_not_allowed`", body = ApiErrorBody),
        (status = 404, description = "`not_found`: no such session of the caller", body = ApiErrorBody),
    )
)]
pub async fn revoke_my_session(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    crate::extract::ApiPath(id): crate::extract::ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let id = SessionId::parse(&id).ok_or(ApiError::NotFound)?;
    state
        .tessera
        .revoke_own_session(principal.user_id, id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/sessions`: sign out all my other devices.
#[utoipa::path(
    delete,
    path = "/v1/sessions",
    tag = "users",
    security(("bearer" = []), ("session_cookie" = [])),
    responses(
        (status = 204, description = "every other device is signed out; the current one stays"),
        (status = 401, description = "`unauthenticated`", body = ApiErrorBody),
        (status = 403, description = "`csrf_token_invalid` or `origin_not_allowed`", body = ApiErrorBody),
    )
)]
pub async fn revoke_my_other_sessions(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
) -> Result<StatusCode, ApiError> {
    state.tessera.revoke_other_sessions(&principal).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
pub struct PasswordChange {
    #[schema(format = Password)]
    current_password: String,
    /// 8 to 1024 characters, not a common password, not containing the email's local part.
    #[schema(format = Password)]
    new_password: String,
}

/// `POST /v1/password`: a new password for the caller. The caller's session stays (a bearer
/// client refreshes to get an access token past the bumped epoch); every other one dies.
#[utoipa::path(
    post,
    path = "/v1/password",
    tag = "users",
    request_body = PasswordChange,
    security(("bearer" = []), ("session_cookie" = [])),
    responses(
        (status = 204, description = "the password is changed: every other session and refresh family is revoked and the access-token epoch bumped; the current session stays"),
        (status = 400, description = "`weak_password` (the message names the rule) or `invalid_request`", body = ApiErrorBody),
        (status = 401, description = "`invalid_credentials`: the current password is wrong (counted as a failed login); or `unauthenticated`", body = ApiErrorBody),
        (status = 403, description = "`csrf_token_invalid` or `origin_not_allowed`", body = ApiErrorBody),
        (status = 429, description = "`too_many_attempts`: past the guessing limits of the account, with `Retry-After`", body = ApiErrorBody),
    )
)]
pub async fn change_password(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Device(device): Device,
    ApiJson(body): ApiJson<PasswordChange>,
) -> Result<StatusCode, ApiError> {
    let tessera = Arc::clone(&state.tessera);
    crate::to_completion(async move {
        tessera
            .change_password(
                &principal,
                Password::new(body.current_password),
                Password::new(body.new_password),
                &device,
            )
            .await
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
pub struct PasswordConfirmation {
    #[schema(format = Password)]
    password: String,
}

/// `DELETE /v1/users/me`: the caller deletes their own account.
#[utoipa::path(
    delete,
    path = "/v1/users/me",
    tag = "users",
    request_body = PasswordConfirmation,
    security(("bearer" = []), ("session_cookie" = [])),
    responses(
        (status = 204, description = "the user, their sessions, refresh families and guessing counters are deleted; their access tokens are refused until they expire; the cookie is cleared"),
        (status = 400, description = "`invalid_request`", body = ApiErrorBody),
        (status = 401, description = "`invalid_credentials`: the password is wrong (counted as a failed login); or `unauthenticated`", body = ApiErrorBody),
        (status = 403, description = "`csrf_token_invalid` or `origin_not_allowed`", body = ApiErrorBody),
        (status = 429, description = "`too_many_attempts`: past the guessing limits of the account, with `Retry-After`", body = ApiErrorBody),
    )
)]
pub async fn delete_me(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
    Device(device): Device,
    ApiJson(body): ApiJson<PasswordConfirmation>,
) -> Result<Response, ApiError> {
    let tessera = Arc::clone(&state.tessera);
    crate::to_completion(async move {
        tessera
            .delete_own_account(&principal, Password::new(body.password), &device)
            .await
    })
    .await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, state.session_cookie("", 0));
    Ok(response)
}

static X_AUTH_USER: HeaderName = HeaderName::from_static("x-auth-user");
static X_AUTH_SESSION: HeaderName = HeaderName::from_static("x-auth-session");
static X_AUTH_ROLES: HeaderName = HeaderName::from_static("x-auth-roles");

/// The path of [`verify`], which the server answers ahead of its router (see `app`).
pub const VERIFY_PATH: &str = "/v1/verify";

/// `GET /v1/verify`: forward-auth for reverse proxies. 200 with identity headers or 401 with
/// `WWW-Authenticate: Bearer error="invalid_token"` (RFC 6750 §3.1). No CSRF token check: the
/// proxy cannot know the application's tokens. But a cookie request the proxy reports as
/// unsafe gets the `Origin` / `Sec-Fetch-Site` check of Tessera's own routes, so a foreign
/// site cannot make a signed-in browser POST to an application behind the proxy.
#[utoipa::path(
    get,
    path = "/v1/verify",
    tag = "verify",
    security(("bearer" = []), ("session_cookie" = [])),
    responses(
        (status = 200, description = "authenticated; no body", headers(
            ("X-Auth-User" = String, description = "the user id"),
            ("X-Auth-Session" = String, description = "the session id"),
            ("X-Auth-Roles" = String, description = "the user's roles, comma-separated"),
        )),
        (status = 401, description = "no valid credential; no body", headers(
            ("WWW-Authenticate" = String, description = "`Bearer error=\"invalid_token\"`"),
            ("X-Auth-Login" = String, description = "where a proxy redirects a browser: \
                `{public_url}/ui/login?return_to=` and the original URL percent-encoded, taken from \
                `X-Original-URL` or `X-Forwarded-Proto`, `X-Forwarded-Host`, `X-Forwarded-Uri` \
                (without `return_to` when those are missing or not a plain http(s) URL)"),
        )),
        (status = 403, description = "`origin_not_allowed`: a cookie request that the proxy reports as unsafe \
            (`X-Forwarded-Method` or `X-Original-Method` other than GET, HEAD, OPTIONS, TRACE) came from an \
            `Origin` (or `Referer`) outside `allowed_origins`, or with `Sec-Fetch-Site: cross-site`; \
            bearer requests are never refused for their origin", body = ApiErrorBody),
        (status = 503, description = "`unavailable`: revocation cannot be checked, so no yes (fail closed)", body = ApiErrorBody),
    )
)]
pub async fn verify(State(state): State<AppState>, request: Request) -> Response {
    // The request itself, not a `HeaderMap` extractor, which would clone every header.
    let headers = request.headers();
    let config = state.tessera.config();
    let outcome = match Credential::from_headers(headers, &config.cookie_name) {
        Some(Credential::Bearer(token)) => state.tessera.check_bearer(token).await,
        Some(Credential::Cookie(_))
            if proxied_method_is_unsafe(headers)
                && check_origin(headers, &config.allowed_origins, false).is_err() =>
        {
            // Refused before the cookie is looked up: whether it is valid changes nothing.
            state
                .metrics
                .count_verify(Some(RefusalReason::OriginNotAllowed));
            return ApiError::Auth(AuthError::OriginRejected).into_response();
        }
        Some(Credential::Cookie(secret)) => state.tessera.check_cookie(&secret).await,
        None => Err(Refused::because(RefusalReason::MissingCredential)),
    };
    let (response, reason) = match outcome {
        Ok(principal) => (identity_response(&principal), None),
        Err(Refused {
            reason,
            error: AuthError::Store(e),
        }) => (
            ApiError::Auth(AuthError::Store(e)).into_response(),
            Some(reason),
        ),
        Err(Refused { reason, .. }) => {
            let mut response = StatusCode::UNAUTHORIZED.into_response();
            let answer = response.headers_mut();
            answer.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
            answer.insert(
                sign_in::X_AUTH_LOGIN.clone(),
                sign_in::login_link(headers, &config.mail.public_url),
            );
            (response, Some(reason))
        }
    };
    state.metrics.count_verify(reason);
    response
}

fn identity_response(principal: &Principal) -> Response {
    let mut response = StatusCode::OK.into_response();
    let headers = response.headers_mut();
    headers.reserve(4);
    headers.insert(X_AUTH_USER.clone(), id_value(principal.user_id.as_uuid()));
    headers.insert(
        X_AUTH_SESSION.clone(),
        id_value(principal.session_id.as_uuid()),
    );
    let roles = match principal.roles.as_slice() {
        [] => Ok(HeaderValue::from_static("")),
        [role] => HeaderValue::from_str(role),
        roles => HeaderValue::from_str(&roles.join(",")),
    };
    if let Ok(roles) = roles {
        headers.insert(X_AUTH_ROLES.clone(), roles);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// An id as a header value, written without the formatting machinery (this runs on every
/// `/v1/verify` answer).
fn id_value(id: &uuid::Uuid) -> HeaderValue {
    let mut buffer = uuid::Uuid::encode_buffer();
    let text = id.hyphenated().encode_lower(&mut buffer);
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn no_store(response: &mut Response) {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}
