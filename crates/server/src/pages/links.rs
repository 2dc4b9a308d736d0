//! `/ui/recovery` and `/ui/verify`: the pages the mailed links open. A GET never changes
//! anything (mail scanners fetch links); the forms post back to the same page.

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;
use tessera_core::model::TokenPurpose;
use tessera_core::secret::Password;
use tessera_core::AuthError;

use super::{check_form_origin, failure, field, page};
use crate::auth::Device;
use crate::AppState;

#[derive(Deserialize, Default)]
pub struct LinkQuery {
    token: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct RecoveryFields {
    token: Option<String>,
    new_password: Option<String>,
    email: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct VerifyFields {
    token: Option<String>,
}

const INVALID_LINK: &str =
    "This link is invalid, was already used, has expired or was replaced by a newer one.";

/// The form asking for a recovery link, with `error` beside the address.
fn request_form(error: Option<&str>) -> Markup {
    html! {
        p { "Enter the address of your account and we will mail you a link to choose a new password." }
        form method="post" action="recovery" {
            (field("Email address", "email", "email", "email", error))
            button type="submit" { "Mail me a link" }
        }
    }
}

/// The form choosing a new password for a live link, with `error` beside the password.
fn password_form(token: &str, error: Option<&str>) -> Markup {
    html! {
        form method="post" action="recovery" {
            input type="hidden" name="token" value=(token);
            (field("New password", "new_password", "password", "new-password", error))
            p.note { "At least 8 characters. Every device signed in to your account will be signed out." }
            button type="submit" { "Set my new password" }
        }
    }
}

fn invalid_recovery_link() -> Response {
    page(
        StatusCode::BAD_REQUEST,
        "Link not valid",
        &html! { p { (INVALID_LINK) } (request_form(None)) },
    )
}

fn bad_form(text: &str) -> Response {
    page(
        StatusCode::BAD_REQUEST,
        "Form not understood",
        &html! { p { (text) } },
    )
}

/// What a link's page was opened with.
enum Presented {
    Token(String),
    /// No token, or an empty one.
    Nothing,
    /// A query that cannot be read.
    Malformed,
}

fn presented_token(query: Result<Query<LinkQuery>, QueryRejection>) -> Presented {
    match query {
        Ok(Query(LinkQuery { token: Some(token) })) if !token.is_empty() => Presented::Token(token),
        Ok(_) => Presented::Nothing,
        Err(_) => Presented::Malformed,
    }
}

fn malformed_link() -> Response {
    bad_form("The link's address is malformed.")
}

/// `GET /ui/recovery[?token=]`
#[utoipa::path(
    get,
    path = "/ui/recovery",
    tag = "pages",
    params(("token" = Option<String>, Query, description = "the token of a mailed recovery link")),
    responses(
        (status = 200, description = "HTML: with a live token, the form to choose a new password; without one, the form to ask for a link", content_type = "text/html"),
        (status = 400, description = "HTML: the link is invalid, used, expired or superseded", content_type = "text/html"),
    )
)]
pub async fn recovery_page(
    State(state): State<AppState>,
    query: Result<Query<LinkQuery>, QueryRejection>,
) -> Response {
    let token = match presented_token(query) {
        Presented::Token(token) => token,
        Presented::Nothing => {
            return page(StatusCode::OK, "Forgot your password?", &request_form(None))
        }
        Presented::Malformed => return malformed_link(),
    };
    match state
        .tessera
        .check_link(&token, TokenPurpose::Recovery)
        .await
    {
        Ok(()) => page(
            StatusCode::OK,
            "Choose a new password",
            &password_form(&token, None),
        ),
        Err(AuthError::InvalidToken) => invalid_recovery_link(),
        Err(e) => failure(&e),
    }
}

/// `POST /ui/recovery`: `token` and `new_password` set the password; `email` alone asks for
/// a link.
#[utoipa::path(
    post,
    path = "/ui/recovery",
    tag = "pages",
    request_body(content_type = "application/x-www-form-urlencoded", description = "`token` and `new_password`, or `email`"),
    responses(
        (status = 200, description = "HTML: the password is set (every session revoked), or the link was asked for", content_type = "text/html"),
        (status = 400, description = "HTML: an invalid link, a weak password or an address that is none, said beside its field", content_type = "text/html"),
        (status = 403, description = "HTML: the form was posted from a foreign origin", content_type = "text/html"),
        (status = 429, description = "HTML: too many requests from this address, with `Retry-After`", content_type = "text/html"),
    )
)]
pub async fn recovery_form(
    State(state): State<AppState>,
    Device(device): Device,
    headers: HeaderMap,
    form: Result<Form<RecoveryFields>, FormRejection>,
) -> Response {
    if let Err(refused) = check_form_origin(&state, &headers) {
        return refused;
    }
    let Ok(Form(fields)) = form else {
        return bad_form("Please send the form from the page.");
    };
    if let Some(token) = fields.token.filter(|t| !t.is_empty()) {
        let password = fields.new_password.unwrap_or_default();
        return match state
            .tessera
            .complete_recovery(&token, Password::new(password))
            .await
        {
            Ok(()) => page(
                StatusCode::OK,
                "Your password is set",
                &html! { p { "You can now sign in with your new password. Every device that was signed in has been signed out." } },
            ),
            Err(AuthError::WeakPassword(weakness)) => page(
                StatusCode::BAD_REQUEST,
                "Choose a new password",
                &password_form(&token, Some(&weakness.to_string())),
            ),
            Err(AuthError::InvalidToken) => invalid_recovery_link(),
            Err(e) => failure(&e),
        };
    }
    let email = fields.email.unwrap_or_default();
    match state.tessera.request_recovery(&email, device.address).await {
        Ok(()) => page(
            StatusCode::OK,
            "Check your mail",
            &html! { p { "If an account has this address, a link to choose a new password is on its way. It works once, within 30 minutes." } },
        ),
        Err(AuthError::InvalidEmail) => page(
            StatusCode::BAD_REQUEST,
            "Forgot your password?",
            &request_form(Some("Enter an email address such as ada@example.com.")),
        ),
        Err(e) => failure(&e),
    }
}

fn invalid_verify_link() -> Response {
    page(
        StatusCode::BAD_REQUEST,
        "Link not valid",
        &html! {
            p { (INVALID_LINK) }
            p { "Signed in, you can ask for a new link from your account." }
        },
    )
}

/// `GET /ui/verify?token=`
#[utoipa::path(
    get,
    path = "/ui/verify",
    tag = "pages",
    params(("token" = Option<String>, Query, description = "the token of a mailed verification link")),
    responses(
        (status = 200, description = "HTML: a button confirming the address (a GET changes nothing)", content_type = "text/html"),
        (status = 400, description = "HTML: the link is invalid, used, expired or superseded", content_type = "text/html"),
    )
)]
pub async fn verify_page(
    State(state): State<AppState>,
    query: Result<Query<LinkQuery>, QueryRejection>,
) -> Response {
    let token = match presented_token(query) {
        Presented::Token(token) => token,
        Presented::Nothing => return invalid_verify_link(),
        Presented::Malformed => return malformed_link(),
    };
    match state
        .tessera
        .check_link(&token, TokenPurpose::Verification)
        .await
    {
        Ok(()) => page(
            StatusCode::OK,
            "Confirm your email address",
            &html! {
                form method="post" action="verify" {
                    input type="hidden" name="token" value=(token);
                    p { "Confirm that this address belongs to your account." }
                    button type="submit" { "Confirm my address" }
                }
            },
        ),
        Err(AuthError::InvalidToken) => invalid_verify_link(),
        Err(e) => failure(&e),
    }
}

/// `POST /ui/verify`
#[utoipa::path(
    post,
    path = "/ui/verify",
    tag = "pages",
    request_body(content_type = "application/x-www-form-urlencoded", description = "`token`"),
    responses(
        (status = 200, description = "HTML: the address is verified", content_type = "text/html"),
        (status = 400, description = "HTML: the link is invalid, used, expired or superseded", content_type = "text/html"),
        (status = 403, description = "HTML: the form was posted from a foreign origin", content_type = "text/html"),
    )
)]
pub async fn verify_form(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<VerifyFields>, FormRejection>,
) -> Response {
    if let Err(refused) = check_form_origin(&state, &headers) {
        return refused;
    }
    let Ok(Form(fields)) = form else {
        return bad_form("Please send the form from the page.");
    };
    let token = fields.token.unwrap_or_default();
    match state.tessera.complete_verification(&token).await {
        Ok(()) => page(
            StatusCode::OK,
            "Address confirmed",
            &html! { p { "Thank you: your email address is verified." } },
        ),
        Err(AuthError::InvalidToken) => invalid_verify_link(),
        Err(e) => failure(&e),
    }
}
