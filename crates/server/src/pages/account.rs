//! `/ui/signup`, `/ui/login`, `/ui/devices` and `/ui/logout` (SPEC §3 "Pages for browsers"):
//! the browser's way to an account and its sessions without JavaScript. Forms post back to
//! their own page; a success answers `303 See Other`, so reloading the next page re-sends
//! nothing.
//!
//! Sign-in is the JSON login's own function ([`crate::api::sign_in`]): the same guessing
//! limits, device cookie and fixation defence. A sign-up signs the browser in at once (as
//! Ory Kratos does with its `session` hook) and goes on to `return_to`.
//!
//! `return_to` ([`super::return_to`]) is checked before anything else is done: a value the
//! validator refuses answers 400 with a page saying why, and nobody is signed in or up.
//! Without one, a signed-in browser goes to its devices.

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;
use tessera_core::model::{Session, SessionId, Via};
use tessera_core::secret::Password;
use tessera_core::service::{DeviceInfo, Principal};
use tessera_core::AuthError;

use super::return_to::{Refusal, ReturnTo};
use super::{check_form_origin, failure, field, filled_field, page, page_posting_to};
use crate::api::{sign_in, SignedIn};
use crate::auth::{session_cookie, Device};
use crate::AppState;

#[derive(Deserialize, Default)]
pub struct ReturnQuery {
    return_to: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct CredentialFields {
    email: Option<String>,
    password: Option<String>,
    return_to: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct DeviceFields {
    csrf_token: Option<String>,
    /// The session to sign out, from the device list.
    session: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct LogoutFields {
    csrf_token: Option<String>,
    /// Any value but empty: every session of the account, not only this one.
    everywhere: Option<String>,
}

/// A `return_to` as asked: `Ok(None)` when none (or an empty one) was given.
fn asked_return(state: &AppState, raw: Option<&str>) -> Result<Option<ReturnTo>, Refusal> {
    match raw {
        None | Some("") => Ok(None),
        Some(raw) => state.return_policy.check(raw).map(Some),
    }
}

/// Where a browser goes once signed in, and the origin its sign-in form may lead to.
fn destination(state: &AppState, return_to: Option<&ReturnTo>) -> String {
    return_to.map_or_else(
        || state.return_policy.default_destination(),
        |to| to.as_str().to_owned(),
    )
}

fn destination_origin(state: &AppState, return_to: Option<&ReturnTo>) -> Option<String> {
    match return_to {
        Some(to) => Some(to.origin()),
        None => url::Url::parse(&state.return_policy.default_destination())
            .ok()
            .map(|url| url.origin().ascii_serialization()),
    }
}

/// `?return_to=…` to carry along to the other form, or nothing.
fn return_query(return_to: Option<&ReturnTo>) -> String {
    return_to
        .and_then(|to| serde_urlencoded::to_string([("return_to", to.as_str())]).ok())
        .map(|query| format!("?{query}"))
        .unwrap_or_default()
}

/// 400: the `return_to` was refused; nothing else was done.
fn refused_return(refusal: Refusal, form: &str) -> Response {
    page(
        StatusCode::BAD_REQUEST,
        "Address not allowed",
        &html! {
            p.error role="alert" { (refusal.message()) }
            p { "Check the link that brought you here. You can still "
                a href=(form) { "continue without it" } "." }
        },
    )
}

fn bad_form() -> Response {
    page(
        StatusCode::BAD_REQUEST,
        "Form not understood",
        &html! { p { "Please send the form from the page." } },
    )
}

/// `303 See Other` to `location`.
fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(location) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// What a form shows again after an error, and the errors beside their fields.
#[derive(Default)]
struct Filled<'a> {
    email: Option<&'a str>,
    email_error: Option<String>,
    password_error: Option<String>,
    notice: Option<&'a str>,
}

fn login_markup(return_to: Option<&ReturnTo>, filled: &Filled<'_>) -> Markup {
    html! {
        @if let Some(notice) = filled.notice { p.notice role="status" { (notice) } }
        form method="post" action="login" {
            @if let Some(to) = return_to { input type="hidden" name="return_to" value=(to.as_str()); }
            (filled_field("Email address", "email", "email", "username", filled.email, filled.email_error.as_deref()))
            (field("Password", "password", "password", "current-password", filled.password_error.as_deref()))
            button type="submit" { "Sign in" }
        }
        p.links {
            a href={ "signup" (return_query(return_to)) } { "Create an account" }
            a href="recovery" { "Forgot your password?" }
        }
    }
}

fn signup_markup(return_to: Option<&ReturnTo>, filled: &Filled<'_>) -> Markup {
    html! {
        form method="post" action="signup" {
            @if let Some(to) = return_to { input type="hidden" name="return_to" value=(to.as_str()); }
            (filled_field("Email address", "email", "email", "email", filled.email, filled.email_error.as_deref()))
            (field("Password", "password", "password", "new-password", filled.password_error.as_deref()))
            p.note { "At least 8 characters; not a common password." }
            button type="submit" { "Create my account" }
        }
        p.links {
            a href={ "login" (return_query(return_to)) } { "I have an account: sign in" }
        }
    }
}

/// The two forms that take an email address and a password: they share their query, their
/// preamble (origin, form, `return_to`) and what a successful sign-in does.
#[derive(Clone, Copy)]
enum CredentialForm {
    Login,
    Signup,
}

impl CredentialForm {
    /// The page's relative path, which is also where its form posts.
    fn path(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::Signup => "signup",
        }
    }

    fn answer(
        self,
        state: &AppState,
        status: StatusCode,
        return_to: Option<&ReturnTo>,
        filled: &Filled<'_>,
    ) -> Response {
        let (title, markup) = match self {
            Self::Login => ("Sign in", login_markup(return_to, filled)),
            Self::Signup => ("Create an account", signup_markup(return_to, filled)),
        };
        page_posting_to(
            status,
            title,
            &markup,
            destination_origin(state, return_to).as_deref(),
        )
    }

    /// `GET`: the empty form, or 400 for a `return_to` that is not allowed.
    fn blank(
        self,
        state: &AppState,
        query: Result<Query<ReturnQuery>, QueryRejection>,
    ) -> Response {
        let Ok(Query(query)) = query else {
            return bad_form();
        };
        match asked_return(state, query.return_to.as_deref()) {
            Ok(return_to) => self.answer(
                state,
                StatusCode::OK,
                return_to.as_ref(),
                &Filled::default(),
            ),
            Err(refusal) => refused_return(refusal, self.path()),
        }
    }

    /// `POST`: the origin, the form and its `return_to` checked before anything is done.
    #[allow(clippy::result_large_err)] // the refusal is the page itself
    fn posted(
        self,
        state: &AppState,
        headers: &HeaderMap,
        form: Result<Form<CredentialFields>, FormRejection>,
    ) -> Result<Posted, Response> {
        check_form_origin(state, headers)?;
        let Ok(Form(fields)) = form else {
            return Err(bad_form());
        };
        let return_to = asked_return(state, fields.return_to.as_deref())
            .map_err(|refusal| refused_return(refusal, self.path()))?;
        Ok(Posted {
            email: fields.email.unwrap_or_default(),
            password: fields.password.unwrap_or_default(),
            return_to,
        })
    }
}

/// A credential form that passed [`CredentialForm::posted`].
struct Posted {
    email: String,
    password: String,
    return_to: Option<ReturnTo>,
}

/// Signs the browser in and sends it on, or shows the sign-in form with the reason.
async fn sign_in_and_go(
    state: &AppState,
    device: DeviceInfo,
    headers: &HeaderMap,
    posted: Posted,
) -> Response {
    let Posted {
        email,
        password,
        return_to,
    } = posted;
    match sign_in(state, device, headers, email.clone(), password).await {
        Ok(SignedIn { cookies, .. }) => {
            let mut response = see_other(&destination(state, return_to.as_ref()));
            cookies.set_on(&mut response);
            response
        }
        Err(error) => login_refused(state, &error, return_to.as_ref(), &email),
    }
}

/// "14 minutes", "1 minute", "30 seconds": a guessing limit's wait, as people say it.
fn humane_wait(wait: std::time::Duration) -> String {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    match seconds {
        0..=1 => "1 second".to_owned(),
        2..=89 => format!("{seconds} seconds"),
        _ => {
            let minutes = seconds.div_ceil(60);
            format!("{minutes} minutes")
        }
    }
}

fn with_retry_after(mut response: Response, wait: std::time::Duration) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    response
}

/// `GET /ui/login[?return_to=]`
#[utoipa::path(
    get,
    path = "/ui/login",
    tag = "pages",
    params(("return_to" = Option<String>, Query, description = "where to go once signed in: a path on this server, a URL on `public_url`'s origin or one in `allowed_origins`, or an https URL under `cookie_domain`")),
    responses(
        (status = 200, description = "HTML: the sign-in form", content_type = "text/html"),
        (status = 400, description = "HTML: `return_to` is not allowed (open-redirect defence)", content_type = "text/html"),
    )
)]
pub async fn login_page(
    State(state): State<AppState>,
    query: Result<Query<ReturnQuery>, QueryRejection>,
) -> Response {
    CredentialForm::Login.blank(&state, query)
}

/// `POST /ui/login`: `email`, `password`, `return_to`.
#[utoipa::path(
    post,
    path = "/ui/login",
    tag = "pages",
    request_body(content_type = "application/x-www-form-urlencoded", description = "`email`, `password`, optional `return_to`"),
    responses(
        (status = 303, description = "signed in: session and device cookies set, sent on to `return_to` or the device list"),
        (status = 400, description = "HTML: `return_to` is not allowed, or the form is malformed", content_type = "text/html"),
        (status = 401, description = "HTML: wrong email or password, said beside the password", content_type = "text/html"),
        (status = 403, description = "HTML: posted from a foreign origin (login CSRF), or the address is not verified yet", content_type = "text/html"),
        (status = 429, description = "HTML: past the guessing limits; the page says how long to wait, `Retry-After` too", content_type = "text/html"),
        (status = 503, description = "HTML: too many sign-ins being checked at once, with `Retry-After`", content_type = "text/html"),
    )
)]
pub async fn login_form(
    State(state): State<AppState>,
    Device(device): Device,
    headers: HeaderMap,
    form: Result<Form<CredentialFields>, FormRejection>,
) -> Response {
    match CredentialForm::Login.posted(&state, &headers, form) {
        Ok(posted) => sign_in_and_go(&state, device, &headers, posted).await,
        Err(refused) => refused,
    }
}

/// The sign-in form again, with what went wrong beside the field it concerns.
fn login_refused(
    state: &AppState,
    error: &AuthError,
    return_to: Option<&ReturnTo>,
    email: &str,
) -> Response {
    let filled = |email_error: Option<String>, password_error: Option<String>| Filled {
        email: Some(email),
        email_error,
        password_error,
        notice: None,
    };
    match error {
        AuthError::InvalidCredentials => CredentialForm::Login.answer(
            state,
            StatusCode::UNAUTHORIZED,
            return_to,
            &filled(
                None,
                Some("Wrong email address or password.".to_owned()),
            ),
        ),
        AuthError::TooManyAttempts { retry_after } => with_retry_after(
            CredentialForm::Login.answer(
                state,
                StatusCode::TOO_MANY_REQUESTS,
                return_to,
                &filled(
                    Some(format!(
                        "Too many failed sign-ins for this account or from your network. Try again in {}, or from a browser you have signed in with before.",
                        humane_wait(*retry_after)
                    )),
                    None,
                ),
            ),
            *retry_after,
        ),
        AuthError::EmailNotVerified => CredentialForm::Login.answer(
            state,
            StatusCode::FORBIDDEN,
            return_to,
            &filled(
                Some("Confirm this address first: follow the link in the mail we sent.".to_owned()),
                None,
            ),
        ),
        other => failure(other),
    }
}

/// `GET /ui/signup[?return_to=]`
#[utoipa::path(
    get,
    path = "/ui/signup",
    tag = "pages",
    params(("return_to" = Option<String>, Query, description = "where to go once signed up and in; checked as on `/ui/login`")),
    responses(
        (status = 200, description = "HTML: the sign-up form", content_type = "text/html"),
        (status = 400, description = "HTML: `return_to` is not allowed", content_type = "text/html"),
    )
)]
pub async fn signup_page(
    State(state): State<AppState>,
    query: Result<Query<ReturnQuery>, QueryRejection>,
) -> Response {
    CredentialForm::Signup.blank(&state, query)
}

/// `POST /ui/signup`: `email`, `password`, `return_to`. The new account is signed in at once.
#[utoipa::path(
    post,
    path = "/ui/signup",
    tag = "pages",
    request_body(content_type = "application/x-www-form-urlencoded", description = "`email`, `password`, optional `return_to`"),
    responses(
        (status = 303, description = "signed up and in: cookies set, sent on to `return_to` or the device list (or, when `require_verified_email`, to the sign-in page, which says to confirm the address)"),
        (status = 400, description = "HTML: an invalid address or weak password beside its field; a `return_to` not allowed", content_type = "text/html"),
        (status = 403, description = "HTML: posted from a foreign origin", content_type = "text/html"),
        (status = 409, description = "HTML: the address has an account, said beside it", content_type = "text/html"),
        (status = 429, description = "HTML: past `signup_ip_max`, with `Retry-After`", content_type = "text/html"),
    )
)]
pub async fn signup_form(
    State(state): State<AppState>,
    Device(device): Device,
    headers: HeaderMap,
    form: Result<Form<CredentialFields>, FormRejection>,
) -> Response {
    let posted = match CredentialForm::Signup.posted(&state, &headers, form) {
        Ok(posted) => posted,
        Err(refused) => return refused,
    };
    let signed_up = state
        .tessera
        .sign_up(
            &posted.email,
            Password::new(posted.password.clone()),
            device.address,
        )
        .await;
    let refused = |status, email_error: Option<String>, password_error: Option<String>| {
        CredentialForm::Signup.answer(
            &state,
            status,
            posted.return_to.as_ref(),
            &Filled {
                email: Some(&posted.email),
                email_error,
                password_error,
                notice: None,
            },
        )
    };
    match signed_up {
        Ok(_) => {}
        Err(AuthError::InvalidEmail) => {
            return refused(
                StatusCode::BAD_REQUEST,
                Some("Enter an email address such as ada@example.com.".to_owned()),
                None,
            )
        }
        Err(AuthError::EmailTaken) => {
            return refused(
                StatusCode::CONFLICT,
                Some("This address already has an account: sign in instead.".to_owned()),
                None,
            )
        }
        Err(AuthError::WeakPassword(weakness)) => {
            return refused(StatusCode::BAD_REQUEST, None, Some(weakness.to_string()))
        }
        Err(e) => return failure(&e),
    }
    // Signed up but perhaps not let in (`require_verified_email`, a guessing limit): then the
    // sign-in page, which says why, with the address filled in.
    sign_in_and_go(&state, device, &headers, posted).await
}

/// The signed-in browser, by its session cookie; `Ok(None)` when it has none that is live.
#[allow(clippy::result_large_err)] // the refusal is the page itself
async fn visitor(state: &AppState, headers: &HeaderMap) -> Result<Option<Principal>, Response> {
    let Some(secret) = session_cookie(headers, &state.tessera.config().cookie_name) else {
        return Ok(None);
    };
    match state.tessera.authenticate_cookie(&secret).await {
        Ok(principal) => Ok(Some(principal)),
        Err(AuthError::Unauthenticated) => Ok(None),
        Err(e) => Err(failure(&e)),
    }
}

/// A signed-in browser's form post: its origin and the session's CSRF token are checked.
#[allow(clippy::result_large_err)] // the refusal is the page itself
fn check_session_form(
    state: &AppState,
    principal: &Principal,
    headers: &HeaderMap,
    token: Option<&str>,
) -> Result<(), Response> {
    check_form_origin(state, headers)?;
    match token {
        Some(token) if state.tessera.check_csrf(principal.session_id, token) => Ok(()),
        _ => Err(page(
            StatusCode::FORBIDDEN,
            "Request refused",
            &html! {
                p { "This form has expired or was not sent from this site's page, so nothing was done." }
                p { a href="devices" { "Open your devices again" } }
            },
        )),
    }
}

/// Not signed in: to the sign-in page, which comes back to the devices by default. Relative,
/// so it holds when a proxy serves the pages under a path of `public_url`.
fn to_sign_in() -> Response {
    see_other("login")
}

/// "Firefox on Linux"-like enough: the user agent as sent, or a placeholder.
fn device_name(session: &Session) -> &str {
    match session.user_agent.as_deref() {
        Some(agent) if !agent.trim().is_empty() => agent,
        _ => match session.via {
            Via::Cookie => "Unknown browser",
            Via::Token => "Unknown app",
        },
    }
}

/// A timestamp as people read it: `2026-12-03 01:15 UTC`.
fn when(at: tessera_core::model::Timestamp) -> String {
    let text = at.to_rfc3339();
    match (text.get(..10), text.get(11..16)) {
        (Some(day), Some(time)) => format!("{day} {time} UTC"),
        _ => text,
    }
}

fn devices_markup(
    email: &str,
    sessions: &[Session],
    current: SessionId,
    csrf: &str,
    notice: Option<&str>,
) -> Markup {
    html! {
        @if let Some(notice) = notice { p.notice role="status" { (notice) } }
        p { "Signed in as " strong { (email) } ". These are the devices signed in to your account; sign out any you do not recognise." }
        ul.devices {
            @for session in sessions {
                @let is_current = session.id == current;
                li.device.current[is_current] data-session=(session.id.to_string()) {
                    p {
                        strong { (device_name(session)) }
                        @if is_current { span.badge { "This device" } }
                    }
                    p.note { "IP address: " (session.ip.as_deref().unwrap_or("unknown")) }
                    p.note { "Last seen: " (when(session.last_seen_at)) " · Signed in: " (when(session.created_at)) }
                    @if session.via == Via::Token { p.note { "Signed in through an app" } }
                    @if is_current {
                        form method="post" action="logout" {
                            input type="hidden" name="csrf_token" value=(csrf);
                            button.quiet type="submit" { "Sign out" }
                        }
                    } @else {
                        form method="post" action="devices" {
                            input type="hidden" name="csrf_token" value=(csrf);
                            input type="hidden" name="session" value=(session.id.to_string());
                            button.quiet type="submit" { "Sign this device out" }
                        }
                    }
                }
            }
        }
        form method="post" action="logout" {
            input type="hidden" name="csrf_token" value=(csrf);
            input type="hidden" name="everywhere" value="true";
            button type="submit" { "Sign out everywhere" }
        }
    }
}

/// `GET /ui/devices`
#[utoipa::path(
    get,
    path = "/ui/devices",
    tag = "pages",
    security(("session_cookie" = [])),
    responses(
        (status = 200, description = "HTML: the caller's sessions (user agent, IP, last seen; this one marked), each with a sign-out button, and sign out everywhere", content_type = "text/html"),
        (status = 303, description = "not signed in: to `/ui/login`"),
    )
)]
pub async fn devices_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let principal = match visitor(&state, &headers).await {
        Ok(Some(principal)) => principal,
        Ok(None) => return to_sign_in(),
        Err(refused) => return refused,
    };
    devices_answer(&state, &principal, StatusCode::OK, None).await
}

async fn devices_answer(
    state: &AppState,
    principal: &Principal,
    status: StatusCode,
    notice: Option<&str>,
) -> Response {
    let user = match state.tessera.user(principal.user_id).await {
        Ok(user) => user,
        Err(AuthError::NotFound) => return to_sign_in(),
        Err(e) => return failure(&e),
    };
    let mut sessions = match state.tessera.sessions_of(principal.user_id).await {
        Ok(sessions) => sessions,
        Err(e) => return failure(&e),
    };
    // This device first, then the most recently seen.
    sessions.sort_by_key(|s| {
        (
            s.id != principal.session_id,
            std::cmp::Reverse(s.last_seen_at),
        )
    });
    let csrf = state.tessera.csrf_token(principal.session_id);
    page(
        status,
        "Your devices",
        &devices_markup(
            user.email.as_str(),
            &sessions,
            principal.session_id,
            &csrf,
            notice,
        ),
    )
}

/// `POST /ui/devices`: `csrf_token` and `session`, the device to sign out.
#[utoipa::path(
    post,
    path = "/ui/devices",
    tag = "pages",
    security(("session_cookie" = [])),
    request_body(content_type = "application/x-www-form-urlencoded", description = "`csrf_token` and `session` (an id from the list)"),
    responses(
        (status = 303, description = "the device is signed out: back to the list (to the sign-in page when it was this one, or when not signed in)"),
        (status = 403, description = "HTML: a missing or wrong CSRF token, or a foreign origin", content_type = "text/html"),
        (status = 404, description = "HTML: no such session of the caller", content_type = "text/html"),
    )
)]
pub async fn devices_form(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<DeviceFields>, FormRejection>,
) -> Response {
    let Ok(Form(fields)) = form else {
        return bad_form();
    };
    let principal = match visitor(&state, &headers).await {
        Ok(Some(principal)) => principal,
        Ok(None) => return to_sign_in(),
        Err(refused) => return refused,
    };
    if let Err(refused) =
        check_session_form(&state, &principal, &headers, fields.csrf_token.as_deref())
    {
        return refused;
    }
    let target = fields.session.as_deref().and_then(SessionId::parse);
    let Some(target) = target else {
        return devices_answer(
            &state,
            &principal,
            StatusCode::NOT_FOUND,
            Some("That device is not signed in to your account."),
        )
        .await;
    };
    if target == principal.session_id {
        return signed_out(&state, state.tessera.logout(&principal).await);
    }
    match state
        .tessera
        .revoke_own_session(principal.user_id, target)
        .await
    {
        Ok(()) => see_other("devices"),
        Err(AuthError::NotFound) => {
            devices_answer(
                &state,
                &principal,
                StatusCode::NOT_FOUND,
                Some("That device is not signed in to your account (any more)."),
            )
            .await
        }
        Err(e) => failure(&e),
    }
}

/// After a sign-out: the cookie cleared and the sign-in page.
fn signed_out<T>(state: &AppState, outcome: Result<T, AuthError>) -> Response {
    match outcome {
        Ok(_) => {
            let mut response = see_other("login");
            response
                .headers_mut()
                .insert(header::SET_COOKIE, state.session_cookie("", 0));
            response
        }
        Err(e) => failure(&e),
    }
}

/// `GET /ui/logout`: a button, since a link that signs out could be followed by any page.
#[utoipa::path(
    get,
    path = "/ui/logout",
    tag = "pages",
    security(("session_cookie" = [])),
    responses(
        (status = 200, description = "HTML: a button to sign out (a GET changes nothing)", content_type = "text/html"),
        (status = 303, description = "not signed in: to the sign-in page"),
    )
)]
pub async fn logout_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let principal = match visitor(&state, &headers).await {
        Ok(Some(principal)) => principal,
        Ok(None) => return to_sign_in(),
        Err(refused) => return refused,
    };
    let csrf = state.tessera.csrf_token(principal.session_id);
    page(
        StatusCode::OK,
        "Sign out",
        &html! {
            form method="post" action="logout" {
                input type="hidden" name="csrf_token" value=(csrf);
                button type="submit" { "Sign out of this device" }
            }
            form method="post" action="logout" {
                input type="hidden" name="csrf_token" value=(csrf);
                input type="hidden" name="everywhere" value="true";
                button.quiet type="submit" { "Sign out everywhere" }
            }
            p.links { a href="devices" { "Back to your devices" } }
        },
    )
}

/// `POST /ui/logout`: `csrf_token`, and `everywhere` to sign out every session.
#[utoipa::path(
    post,
    path = "/ui/logout",
    tag = "pages",
    security(("session_cookie" = [])),
    request_body(content_type = "application/x-www-form-urlencoded", description = "`csrf_token`, optional `everywhere=true`"),
    responses(
        (status = 303, description = "signed out (this session, or with `everywhere` every session and the access-token epoch bumped); the cookie is cleared; to the sign-in page"),
        (status = 403, description = "HTML: a missing or wrong CSRF token, or a foreign origin", content_type = "text/html"),
    )
)]
pub async fn logout_form(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<LogoutFields>, FormRejection>,
) -> Response {
    let Ok(Form(fields)) = form else {
        return bad_form();
    };
    let principal = match visitor(&state, &headers).await {
        Ok(Some(principal)) => principal,
        // Nothing to sign out: clear whatever cookie is left.
        Ok(None) => return signed_out(&state, Ok(())),
        Err(refused) => return refused,
    };
    if let Err(refused) =
        check_session_form(&state, &principal, &headers, fields.csrf_token.as_deref())
    {
        return refused;
    }
    if fields.everywhere.is_some_and(|v| !v.is_empty()) {
        signed_out(
            &state,
            state.tessera.logout_everywhere(principal.user_id).await,
        )
    } else {
        signed_out(&state, state.tessera.logout(&principal).await)
    }
}

#[cfg(test)]
mod tests {
    use super::humane_wait;
    use std::time::Duration;

    #[test]
    fn waits_read_as_people_say_them() {
        assert_eq!(humane_wait(Duration::from_millis(300)), "1 second");
        assert_eq!(humane_wait(Duration::from_secs(30)), "30 seconds");
        assert_eq!(humane_wait(Duration::from_secs(89)), "89 seconds");
        assert_eq!(humane_wait(Duration::from_secs(90)), "2 minutes");
        assert_eq!(humane_wait(Duration::from_secs(14 * 60 + 1)), "15 minutes");
    }
}
