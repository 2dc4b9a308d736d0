//! Server-rendered pages for browsers (SPEC §3 "Pages for browsers"): plain HTML forms that
//! work without JavaScript, posted form-encoded, with one shared layout so every page looks
//! alike. Templates are `maud` macros, checked at compile time, and escape every value they
//! interpolate.
//!
//! Every form post must carry an `Origin` (or `Referer`) in `allowed_origins`, and a
//! browser's `Sec-Fetch-Site: cross-site` is refused: that is the whole defence of the forms
//! used without a session (sign-up, sign-in — login CSRF —, the mailed links); the forms of a
//! signed-in browser (devices, sign-out) carry the session's CSRF token as well.
//!
//! Each answer forbids framing and caching. `Referrer-Policy: same-origin` keeps a page's URL
//! (which may hold a live link's token) from other sites, while still letting Chromium send
//! the page's `Origin` on its form posts: under `no-referrer` it sends `Origin: null`, which
//! the origin check must refuse.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

use crate::auth::check_origin;
use crate::AppState;

pub mod account;
pub mod links;
pub mod return_to;

pub use account::{
    __path_devices_form, __path_devices_page, __path_login_form, __path_login_page,
    __path_logout_form, __path_logout_page, __path_signup_form, __path_signup_page, devices_form,
    devices_page, login_form, login_page, logout_form, logout_page, signup_form, signup_page,
};
pub use links::{
    __path_recovery_form, __path_recovery_page, __path_verify_form, __path_verify_page,
    recovery_form, recovery_page, verify_form, verify_page,
};

/// Enough CSS to read well at phone width and on a desktop.
const STYLE: &str = "\
*{box-sizing:border-box}\
body{margin:0;font:16px/1.5 system-ui,-apple-system,'Segoe UI',sans-serif;color:#1b1b1f;background:#f4f4f6}\
main{max-width:26rem;margin:2rem auto;padding:1.5rem;background:#fff;border-radius:.5rem;box-shadow:0 1px 3px #0002}\
h1{font-size:1.4rem;margin:0 0 1rem}\
label{display:block;font-weight:600;margin:1rem 0 .25rem}\
input{width:100%;padding:.6rem;font:inherit;border:1px solid #888;border-radius:.35rem}\
input[aria-invalid=true]{border-color:#b00020}\
button{margin-top:1.25rem;width:100%;padding:.7rem;font:inherit;font-weight:600;color:#fff;background:#3451b2;border:0;border-radius:.35rem;cursor:pointer}\
.error{color:#b00020;margin:.25rem 0 0}\
.note{color:#555}\
.notice{background:#eef3ff;border-left:4px solid #3451b2;padding:.5rem .75rem}\
a{color:#3451b2}\
.links{margin-top:1.25rem;display:flex;flex-wrap:wrap;gap:.5rem 1.25rem}\
ul.devices{list-style:none;padding:0;margin:0}\
.device{border:1px solid #ccc;border-radius:.35rem;padding:.75rem;margin:.75rem 0;overflow-wrap:anywhere}\
.device.current{border-color:#3451b2;border-width:2px}\
.device p{margin:.2rem 0}\
.device form button{margin-top:.5rem}\
.badge{display:inline-block;font-size:.8rem;font-weight:600;color:#fff;background:#3451b2;border-radius:1rem;padding:0 .6rem;margin-left:.4rem}\
button.quiet{color:#b00020;background:#fff;border:1px solid #b00020}\
@media (max-width:30rem){main{margin:0;border-radius:0;box-shadow:none;min-height:100vh}}";

/// The shared layout: `title` in the tab and as the heading, `body` under it.
pub fn layout(title: &str, body: &Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="robots" content="noindex";
                title { (title) " · Tessera" }
                style { (maud::PreEscaped(STYLE)) }
            }
            body {
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A labelled input with its error, if any, beside it (and announced with it).
pub fn field(
    label: &str,
    name: &str,
    kind: &str,
    autocomplete: &str,
    error: Option<&str>,
) -> Markup {
    filled_field(label, name, kind, autocomplete, None, error)
}

/// A [`field`] showing `value` again (the address typed before an error; never a password).
pub fn filled_field(
    label: &str,
    name: &str,
    kind: &str,
    autocomplete: &str,
    value: Option<&str>,
    error: Option<&str>,
) -> Markup {
    let error_id = format!("{name}-error");
    html! {
        label for=(name) { (label) }
        input id=(name) name=(name) type=(kind) autocomplete=(autocomplete) required
            value=[value]
            aria-invalid=(if error.is_some() { "true" } else { "false" })
            aria-describedby=[error.map(|_| error_id.as_str())];
        @if let Some(error) = error {
            p.error id=(error_id) role="alert" { (error) }
        }
    }
}

/// A page answer with `status`, not cached, not framed, its URL kept from other sites; its
/// forms may post to this origin only.
pub fn page(status: StatusCode, title: &str, body: &Markup) -> Response {
    page_posting_to(status, title, body, None)
}

/// A [`page`] whose forms may also lead to `origin`: browsers apply `form-action` to the
/// redirect that answers a form's post too, so the sign-in page names the origin it will send
/// the browser on to. `origin` comes from the `return_to` validator (`scheme://host[:port]`).
pub fn page_posting_to(
    status: StatusCode,
    title: &str,
    body: &Markup,
    origin: Option<&str>,
) -> Response {
    let mut response = (status, Html(layout(title, body).into_string())).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    let form_action = match origin {
        Some(origin) => format!("'self' {origin}"),
        None => "'self'".to_owned(),
    };
    let policy = format!(
        "default-src 'none'; style-src 'unsafe-inline'; form-action {form_action}; frame-ancestors 'none'; base-uri 'none'"
    );
    if let Ok(policy) = HeaderValue::from_str(&policy) {
        headers.insert(header::CONTENT_SECURITY_POLICY, policy);
    }
    response
}

/// Refuses a cross-site form post (see the module documentation) with a page saying so. The
/// pages' own origin (`public_url`'s) is accepted whether or not `allowed_origins` lists it:
/// the pages are served there, so their forms are posted from there.
#[allow(clippy::result_large_err)] // the refusal is the page itself
pub fn check_form_origin(state: &AppState, headers: &HeaderMap) -> Result<(), Response> {
    let config = state.tessera.config();
    let accepted = match tessera_core::url::origin_of(&config.mail.public_url) {
        Some(own) if !config.allowed_origins.contains(&own) => {
            let mut accepted = config.allowed_origins.clone();
            accepted.push(own);
            std::borrow::Cow::Owned(accepted)
        }
        _ => std::borrow::Cow::Borrowed(config.allowed_origins.as_slice()),
    };
    check_origin(headers, &accepted, true).map_err(|_| {
        page(
            StatusCode::FORBIDDEN,
            "Request refused",
            &html! { p { "This form was sent from another site, so it was not accepted. Open this site's page again and send the form from there." } },
        )
    })
}

/// A page for an error no field explains (the store down, too many requests).
pub fn failure(error: &tessera_core::AuthError) -> Response {
    use tessera_core::AuthError;
    let (status, text) = match error {
        AuthError::TooManyAttempts { .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests from your network. Please try again later.",
        ),
        AuthError::Busy { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "The server is busy. Please try again in a moment.",
        ),
        _ => {
            tracing::error!(error = %error, "page request failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "Something went wrong on our side. Please try again.",
            )
        }
    };
    let mut response = page(status, "Please try again", &html! { p { (text) } });
    if let AuthError::TooManyAttempts { retry_after } | AuthError::Busy { retry_after } = error {
        let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    }
    response
}
