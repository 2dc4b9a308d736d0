//! Why a token was refused, in words a resource server can act on.

use jsonwebtoken::errors::ErrorKind;

/// Why a token was refused.
///
/// Every variant means "do not trust this token"; they are told apart only for metrics, logs
/// and the `tessera token inspect` command, never to give the bearer a hint (a resource server
/// answers all of them with the same 401).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// Longer than [`MAX_TOKEN_BYTES`](crate::MAX_TOKEN_BYTES); refused before any parsing.
    #[error("token is larger than 8 KiB")]
    TooLarge,
    /// Not three base64url segments of JSON, an unsupported or `none` algorithm, or a header
    /// that asks for extensions (`crit`) this verifier does not implement.
    #[error("token is malformed")]
    Malformed,
    /// The `typ` header is not `at+jwt` (RFC 9068 §4): an ID token or some other JWT signed by
    /// the same key must not pass for an access token.
    #[error("token is not an access token (typ must be at+jwt)")]
    WrongType,
    /// No `kid`, or a `kid` this verifier has no key for (rotated out, or never ours).
    #[error("token was signed by an unknown key")]
    UnknownKey,
    /// The header's `alg` differs from the algorithm pinned to the key.
    #[error("token algorithm does not match its key")]
    AlgorithmMismatch,
    #[error("token signature is invalid")]
    InvalidSignature,
    /// `exp` is in the past by more than [`LEEWAY_SECS`](crate::LEEWAY_SECS).
    #[error("token has expired")]
    Expired,
    #[error("token was issued by another issuer")]
    WrongIssuer,
    #[error("token is meant for another audience")]
    WrongAudience,
    /// A required claim is missing or has the wrong type, or `nbf` is in the future.
    #[error("token claims are invalid")]
    InvalidClaims,
    /// The verification key itself is unusable (bad JWK, wrong key type for its algorithm).
    #[error("invalid verification key: {0}")]
    InvalidKey(String),
}

impl VerifyError {
    /// A short, stable `snake_case` code for metric labels and structured logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::Malformed => "malformed",
            Self::WrongType => "wrong_type",
            Self::UnknownKey => "unknown_key",
            Self::AlgorithmMismatch => "algorithm_mismatch",
            Self::InvalidSignature => "invalid_signature",
            Self::Expired => "expired",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::InvalidClaims => "invalid_claims",
            Self::InvalidKey(_) => "invalid_key",
        }
    }

    /// Maps a failure of `jsonwebtoken::decode`, called only after the header has already been
    /// parsed, checked and matched to a key: a JSON error here can only come from the payload.
    pub(crate) fn from_decode(err: &jsonwebtoken::errors::Error) -> Self {
        match err.kind() {
            ErrorKind::InvalidSignature => Self::InvalidSignature,
            ErrorKind::ExpiredSignature => Self::Expired,
            ErrorKind::InvalidIssuer => Self::WrongIssuer,
            ErrorKind::InvalidAudience => Self::WrongAudience,
            ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => Self::AlgorithmMismatch,
            ErrorKind::MissingRequiredClaim(_)
            | ErrorKind::InvalidClaimFormat(_)
            | ErrorKind::InvalidSubject
            | ErrorKind::ImmatureSignature => Self::InvalidClaims,
            // Well-formed JSON of the wrong shape (a claim missing or mistyped) is a claims
            // problem; anything else is a broken token.
            ErrorKind::Json(json) if json.is_data() => Self::InvalidClaims,
            ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat
            | ErrorKind::UnsupportedAlgorithm
            | ErrorKind::Provider(_) => Self::InvalidKey(err.to_string()),
            _ => Self::Malformed,
        }
    }
}
