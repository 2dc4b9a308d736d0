//! The domain's one error enum: what went wrong, in the words of authentication. The server
//! maps it to statuses and codes in exactly one place.

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Unknown email and wrong password are deliberately the same error (no account probing).
    #[error("invalid email or password")]
    InvalidCredentials,
    #[error("email already registered")]
    EmailTaken,
    /// The message names the rule the password breaks, so the user knows what to change.
    #[error("{0}")]
    WeakPassword(crate::password::Weakness),
    #[error("not a valid email address")]
    InvalidEmail,
    #[error("not an argon2id PHC string within the accepted parameters")]
    InvalidPasswordHash,
    #[error("roles: at most 64, each 1 to 128 of A-Z a-z 0-9 . _ : -")]
    InvalidRoles,
    /// Missing, malformed, expired or revoked credential on a request.
    #[error("not signed in")]
    Unauthenticated,
    /// An unsafe cookie-authenticated request without a valid CSRF token.
    #[error("missing or invalid CSRF token")]
    CsrfRejected,
    /// A cross-origin request from an origin not in `allowed_origins`.
    #[error("cross-origin request refused")]
    OriginRejected,
    /// A live API key used for something its scope does not cover (RFC 6750 §3.1
    /// `insufficient_scope`); the payload is the scope the request needed.
    #[error("this API key lacks the `{0}` scope")]
    InsufficientScope(crate::model::AdminScope),
    /// Unknown, spent, expired or revoked refresh token.
    #[error("refresh token is invalid, expired or revoked")]
    InvalidGrant,
    #[error("not found")]
    NotFound,
    /// A mailed link's token that is unknown, used, expired or superseded by a newer one.
    #[error("this link is invalid, used, expired or replaced by a newer one; ask for a new one")]
    InvalidToken,
    /// `require_verified_email` and the account's address is not verified yet; only said to
    /// someone who gave the right password.
    #[error("verify your email address first: follow the link in the mail we sent")]
    EmailNotVerified,
    /// Past a guessing limit (SPEC §2): refused before any password work.
    #[error("too many attempts; try again in {} s", retry_after.as_secs().max(1))]
    TooManyAttempts { retry_after: std::time::Duration },
    /// Every password-hashing thread is taken and the queue is full, or a login waited in it
    /// too long: refused with a hint to retry, so a login burst gets quick answers and the
    /// server keeps a core for everything else.
    #[error("too many sign-ins are being checked at once; try again in {} s", retry_after.as_secs().max(1))]
    Busy { retry_after: std::time::Duration },
    /// The active signing key cannot be withdrawn: nothing could sign (rotate first).
    #[error("the active signing key cannot be withdrawn; rotate first")]
    ActiveKey,
    /// Signing or key material failure (master key mismatch, unsealable key).
    #[error("key error: {0}")]
    Key(String),
    #[error("store unavailable")]
    Store(#[from] StoreError),
}
