//! Verification of Tessera access tokens (RFC 9068 JWTs) in your own Rust services.
//!
//! A service that receives `Authorization: Bearer <token>` builds one [`Verifier`] from
//! Tessera's JWK set (`/.well-known/jwks.json`) and calls [`Verifier::verify`] per request: no
//! network round trip, no async runtime. The Tessera server uses the very same code, so there
//! is one token check in the whole system.
//!
//! ```
//! use tessera_verify::{Verifier, VerificationKey, VerifyError};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The JWK set as `GET /.well-known/jwks.json` serves it (one Ed25519 key here).
//! let jwks = serde_json::json!({ "keys": [{
//!     "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": "k1",
//!     "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
//! }]});
//! let verifier = Verifier::from_jwks(
//!     &serde_json::from_value(jwks)?,
//!     "https://auth.example.com", // Tessera's `issuer`
//!     "tessera",                  // and `audience`
//! )?;
//! assert_eq!(verifier.kids().collect::<Vec<_>>(), ["k1"]);
//! // Anything but a genuine, unexpired token of that issuer is refused.
//! assert_eq!(verifier.verify("not.a.token"), Err(VerifyError::Malformed));
//! # Ok(())
//! # }
//! ```
//!
//! A token that verifies offline is genuine and unexpired, not necessarily still wanted: the
//! [`revocation`] module holds the decision Tessera makes on a revoked session, a user's
//! epoch and a denylisted `jti`. With the `remote` feature, [`remote::Remote`] fetches and
//! caches the JWK set and follows Tessera's revocation stream (`GET /v1/revocations`) into
//! that state, so a revoked token is refused on its next request; with the `axum` feature,
//! [`axum::Authenticated`] and [`axum::RequireBearer`] put it in front of handlers. Without
//! features the crate needs neither an async runtime nor an HTTP client.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Header, Validation};
use serde::{Deserialize, Serialize};

#[cfg(feature = "axum")]
pub mod axum;
mod error;
mod key;
#[cfg(feature = "remote")]
pub mod remote;
pub mod revocation;
#[cfg(feature = "remote")]
mod sse;

pub use error::VerifyError;
pub use key::VerificationKey;

/// Tokens longer than this are refused before any base64 or JSON work, so an attacker cannot
/// make the hot path decode megabytes. Real Tessera tokens are well under 1 KiB.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The `typ` header of an access token (RFC 9068 §2.1).
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";

/// Clock skew tolerated on `exp` and `nbf`, so nodes whose clocks drift a little agree.
pub const LEEWAY_SECS: u64 = 30;

/// The signing algorithms Tessera issues tokens with (SPEC §2 `signing_alg`).
///
/// Deliberately narrower than `jsonwebtoken::Algorithm`: every algorithm accepted is one more
/// way a token might be forged, so only those Tessera can sign with exist here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Algorithm {
    /// Ed25519 (RFC 8037): the default; small keys and signatures, fast to verify.
    EdDSA,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, for consumers that know nothing newer.
    RS256,
    /// HMAC-SHA-256: a shared secret, never published; only for verifiers run by the issuer.
    HS256,
}

impl Algorithm {
    /// Every algorithm, in the order SPEC §2 lists them.
    pub const ALL: [Self; 4] = [Self::EdDSA, Self::ES256, Self::RS256, Self::HS256];

    /// The JOSE name (RFC 7518), as in the `alg` header and the `signing_alg` setting.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::EdDSA => "EdDSA",
            Self::ES256 => "ES256",
            Self::RS256 => "RS256",
            Self::HS256 => "HS256",
        }
    }

    pub const fn to_jsonwebtoken(self) -> jsonwebtoken::Algorithm {
        match self {
            Self::EdDSA => jsonwebtoken::Algorithm::EdDSA,
            Self::ES256 => jsonwebtoken::Algorithm::ES256,
            Self::RS256 => jsonwebtoken::Algorithm::RS256,
            Self::HS256 => jsonwebtoken::Algorithm::HS256,
        }
    }

    /// Position in [`Algorithm::ALL`], for per-algorithm tables.
    const fn index(self) -> usize {
        match self {
            Self::EdDSA => 0,
            Self::ES256 => 1,
            Self::RS256 => 2,
            Self::HS256 => 3,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of [`Algorithm::ALL`]; names are case-sensitive, as in JOSE.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown signing algorithm `{0}` (expected one of EdDSA, ES256, RS256, HS256)")]
pub struct UnknownAlgorithm(pub String);

impl FromStr for Algorithm {
    type Err = UnknownAlgorithm;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|alg| alg.as_str() == name)
            .ok_or_else(|| UnknownAlgorithm(name.to_owned()))
    }
}

/// The payload of a Tessera access token (SPEC §1). Nothing in it is secret: anyone holding
/// the token can read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The user id.
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    /// Unique per token, so one token can be revoked (RFC 7009) without its session.
    pub jti: String,
    /// The session (and refresh family) the token was issued to.
    pub sid: String,
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Not before (RFC 7519 §4.1.5). Tessera mints none, but honours it when present; it is
    /// kept so that a cached verification can check it again.
    #[serde(
        default,
        deserialize_with = "present_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub nbf: Option<i64>,
}

/// A claim that may be absent but, when present, is a number: `"nbf": null` is refused, as
/// jsonwebtoken's validation refuses it.
fn present_number<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<i64>, D::Error> {
    i64::deserialize(deserializer).map(Some)
}

/// Checks access tokens against a set of keys, for one issuer and one audience.
///
/// Cheap to clone and immutable once built, so a server keeps one behind an `Arc` and swaps
/// it whole when keys rotate.
#[derive(Clone)]
pub struct Verifier {
    keys: HashMap<String, VerificationKey>,
    /// The kid of each key under the exact header segment Tessera's tokens signed with it
    /// begin with: such a header's `typ`, `kid` and `alg` are known to pass, so the token needs
    /// no header parse at all ([`Verifier::verify_minted`]). A header written any other way
    /// takes the full path.
    minted_headers: HashMap<Box<str>, String>,
    issuer: String,
    audience: String,
    /// One prepared `Validation` per algorithm, indexed by [`Algorithm::index`], so that
    /// `verify` builds nothing per request.
    validations: [Validation; 4],
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier with no keys yet: it refuses every token until keys are added.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        let issuer = issuer.into();
        let audience = audience.into();
        let validations = Algorithm::ALL.map(|alg| validation(alg, &issuer, &audience));
        Self {
            keys: HashMap::new(),
            minted_headers: HashMap::new(),
            issuer,
            audience,
            validations,
        }
    }

    #[must_use]
    pub fn with_key(mut self, key: VerificationKey) -> Self {
        self.insert(key);
        self
    }

    /// Adds a key, replacing any earlier key with the same `kid`.
    pub fn insert(&mut self, key: VerificationKey) {
        self.minted_headers.retain(|_, kid| kid != key.kid());
        self.minted_headers
            .insert(key.minted_header().into(), key.kid().to_owned());
        self.keys.insert(key.kid().to_owned(), key);
    }

    /// A verifier for every usable key of a published JWK set.
    ///
    /// Keys of a type or algorithm Tessera never signs with (RSA-OAEP, P-384, `use: enc`…) and
    /// keys without a `kid` are skipped, since a shared JWK set may carry them; a malformed key,
    /// or two keys with one `kid`, is an error rather than a silently smaller key set.
    pub fn from_jwks(
        jwks: &JwkSet,
        issuer: impl Into<String>,
        audience: impl Into<String>,
    ) -> Result<Self, VerifyError> {
        let mut verifier = Self::new(issuer, audience);
        for jwk in &jwks.keys {
            let Some(kid) = jwk.common.key_id.as_deref() else {
                continue;
            };
            let Some(alg) = key::classify(jwk)? else {
                continue;
            };
            if verifier.keys.contains_key(kid) {
                return Err(VerifyError::InvalidKey(format!(
                    "JWK set has two keys with kid `{kid}`"
                )));
            }
            verifier.insert(VerificationKey::from_supported_jwk(jwk, alg)?);
        }
        Ok(verifier)
    }

    /// The `kid`s of the keys this verifier accepts, in no particular order.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Checks an access token and returns its claims.
    ///
    /// In order: size, header syntax, `typ` (RFC 9068 §4), `kid`, then the algorithm, which
    /// must be the one pinned to the key (never chosen by the token), then the signature,
    /// `exp` (with [`LEEWAY_SECS`]), `nbf` if present, `iss` and `aud`.
    pub fn verify(&self, token: &str) -> Result<Claims, VerifyError> {
        if let Some(key) = self.minted_key(token) {
            return self.verify_minted(key, token);
        }
        let key = self.checked_key(&parse_header(token)?)?;
        self.decode(key, token)
    }

    /// The full check of a token with `key`: jsonwebtoken's `decode` and validation.
    fn decode(&self, key: &VerificationKey, token: &str) -> Result<Claims, VerifyError> {
        let validation = &self.validations[key.alg().index()];
        jsonwebtoken::decode::<Claims>(token, key.decoding_key()?, validation)
            .map(|data| data.claims)
            .map_err(|err| VerifyError::from_decode(&err))
    }

    /// A token whose header is, byte for byte, the one `key` mints (see [`minted_key`]), so
    /// that the header needs no parse: the signature is checked with jsonwebtoken's
    /// `crypto::verify` and the claims are decoded once, where `decode` parses the header twice
    /// and the claims twice (together ~13 000 of the ~50 000 instructions a fresh token's
    /// request spends outside the signature check). The claim checks are those of the
    /// [`Validation`] the full path uses; `tests/refusals.rs` holds both paths to one answer.
    ///
    /// [`minted_key`]: Self::minted_key
    fn verify_minted(&self, key: &VerificationKey, token: &str) -> Result<Claims, VerifyError> {
        let from_decode = |err: jsonwebtoken::errors::Error| VerifyError::from_decode(&err);
        let (message, signature) = token.rsplit_once('.').ok_or(VerifyError::Malformed)?;
        // Three segments: the header (matched), the payload and the signature.
        let payload = match message.split_once('.') {
            Some((_, payload)) if !payload.contains('.') => payload,
            _ => return Err(VerifyError::Malformed),
        };
        let alg = key.alg().to_jsonwebtoken();
        let genuine =
            jsonwebtoken::crypto::verify(signature, message.as_bytes(), key.decoding_key()?, alg)
                .map_err(from_decode)?;
        if !genuine {
            return Err(VerifyError::InvalidSignature);
        }
        // Decoded as jsonwebtoken decodes it (base64url without padding, then JSON).
        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| VerifyError::Malformed)?;
        if json.trim_ascii_start().first() != Some(&b'{') {
            // Not an object: serde would read a JSON array as the claims in field order, which
            // jsonwebtoken's validation refuses; leave every such oddity to the full path.
            return self.decode(key, token);
        }
        let claims: Claims =
            serde_json::from_slice(&json).map_err(|err| from_decode(err.into()))?;
        self.check_claims(&claims)?;
        Ok(claims)
    }

    /// What jsonwebtoken's validation does with the settings of [`validation`], in its order:
    /// `exp` and `nbf` must be non-negative, then `exp` (with [`LEEWAY_SECS`]), `nbf`, `iss` and
    /// `aud`. The claims' types already demand `exp`, `iat`, `iss`, `aud` and `sub`.
    fn check_claims(&self, claims: &Claims) -> Result<(), VerifyError> {
        let exp = u64::try_from(claims.exp).map_err(|_| VerifyError::InvalidClaims)?;
        let nbf = claims
            .nbf
            .map(u64::try_from)
            .transpose()
            .map_err(|_| VerifyError::InvalidClaims)?;
        let now = jsonwebtoken::get_current_timestamp();
        if exp < now.saturating_sub(LEEWAY_SECS) {
            return Err(VerifyError::Expired);
        }
        if nbf.is_some_and(|nbf| nbf > now.saturating_add(LEEWAY_SECS)) {
            return Err(VerifyError::InvalidClaims);
        }
        if claims.iss != self.issuer {
            return Err(VerifyError::WrongIssuer);
        }
        if claims.aud != self.audience {
            return Err(VerifyError::WrongAudience);
        }
        Ok(())
    }

    /// The key whose own header `token` begins with, byte for byte, if any.
    fn minted_key(&self, token: &str) -> Option<&VerificationKey> {
        if token.len() > MAX_TOKEN_BYTES {
            return None;
        }
        let (header, _) = token.split_once('.')?;
        self.minted_headers
            .get(header)
            .and_then(|kid| self.keys.get(kid))
    }

    /// The key a parsed header names, once the header has passed every check of its own.
    fn checked_key(&self, header: &Header) -> Result<&VerificationKey, VerifyError> {
        // RFC 7515 §4.1.11: a header may demand extensions; we implement none, so must refuse.
        if header.crit.is_some() {
            return Err(VerifyError::Malformed);
        }
        if !header.typ.as_deref().is_some_and(is_access_token_type) {
            return Err(VerifyError::WrongType);
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.keys.get(kid))
            .ok_or(VerifyError::UnknownKey)?;
        if header.alg != key.alg().to_jsonwebtoken() {
            return Err(VerifyError::AlgorithmMismatch);
        }
        Ok(key)
    }
}

/// The header of an access token signed with key `kid` (RFC 9068 §2.1): `typ: at+jwt`, the
/// key's algorithm and its `kid`. The signer and [`Verifier`] both take it from here, so the
/// verifier can recognise the exact bytes of the tokens its issuer mints.
pub fn access_token_header(kid: &str, alg: Algorithm) -> Header {
    let mut header = Header::new(alg.to_jsonwebtoken());
    header.typ = Some(ACCESS_TOKEN_TYPE.to_owned());
    header.kid = Some(kid.to_owned());
    header
}

/// A header as jsonwebtoken writes it into a token: base64url, unpadded, of its JSON.
fn encoded_header(header: &Header) -> Box<str> {
    // Serialising a header of strings and an enum cannot fail; an empty segment would only
    // never match a token.
    let json = serde_json::to_vec(header).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json).into_boxed_str()
}

/// Decodes a token's header and payload *without verifying anything* but their syntax, for
/// `tessera token inspect` and debugging. Never base a decision on the result.
pub fn inspect(token: &str) -> Result<(Header, serde_json::Value), VerifyError> {
    parse_header(token)?;
    let data = jsonwebtoken::dangerous::insecure_decode::<serde_json::Value>(token)
        .map_err(|_| VerifyError::Malformed)?;
    Ok((data.header, data.claims))
}

/// The checks every token, verified or merely inspected, goes through first.
fn parse_header(token: &str) -> Result<Header, VerifyError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(VerifyError::TooLarge);
    }
    // `alg: none` and unknown algorithms fail here: jsonwebtoken's header type cannot hold them.
    jsonwebtoken::decode_header(token).map_err(|_| VerifyError::Malformed)
}

/// RFC 9068 §4: `typ` is `at+jwt`, or the full media type `application/at+jwt`; media types
/// are case-insensitive (RFC 2045 §5.1).
fn is_access_token_type(typ: &str) -> bool {
    let subtype = match typ.get(..12) {
        Some(prefix) if prefix.eq_ignore_ascii_case("application/") => typ.get(12..),
        _ => Some(typ),
    };
    subtype.is_some_and(|subtype| subtype.eq_ignore_ascii_case(ACCESS_TOKEN_TYPE))
}

fn validation(alg: Algorithm, issuer: &str, audience: &str) -> Validation {
    let mut validation = Validation::new(alg.to_jsonwebtoken());
    validation.leeway = LEEWAY_SECS;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.validate_aud = true;
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    validation
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn tokens_signed_with_the_minted_header_skip_the_header_parse() {
        let secret = [7u8; 32];
        let verifier = Verifier::new("https://issuer.test", "tessera")
            .with_key(VerificationKey::hmac("k1", &secret));
        let now = i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap();
        let claims = Claims {
            iss: "https://issuer.test".into(),
            sub: "u".into(),
            aud: "tessera".into(),
            exp: now + 60,
            iat: now,
            jti: "j".into(),
            sid: "s".into(),
            roles: vec![],
            scope: None,
            nbf: None,
        };
        let key = jsonwebtoken::EncodingKey::from_secret(&secret);
        let ours = access_token_header("k1", Algorithm::HS256);
        let token = jsonwebtoken::encode(&ours, &claims, &key).unwrap();
        assert_eq!(
            verifier.minted_key(&token).map(VerificationKey::kid),
            Some("k1")
        );
        assert_eq!(verifier.verify(&token), Ok(claims.clone()));

        // The same header fields with a content type added: verified, by the full path.
        let mut other = ours;
        other.cty = Some("JWT".into());
        let token = jsonwebtoken::encode(&other, &claims, &key).unwrap();
        assert!(verifier.minted_key(&token).is_none());
        assert_eq!(verifier.verify(&token), Ok(claims));
    }
}
