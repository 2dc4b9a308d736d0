//! One public (or, for HS256, shared) key and the algorithm it is pinned to.

use aws_lc_rs::signature::{self, VerificationAlgorithm};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{AlgorithmFamily, DecodingKey, DecodingKeyKind};

use crate::{Algorithm, VerifyError};

/// RFC 7518 §3.3: RSA keys below 2048 bits MUST NOT be used.
const MIN_RSA_MODULUS_BYTES: usize = 256;

/// A key a [`Verifier`](crate::Verifier) checks signatures with.
///
/// The algorithm belongs to the key, not to the token: whatever `alg` a token claims, it is
/// verified with this algorithm or refused, which is what defeats algorithm-confusion attacks
/// (an HS256 token "signed" with a published RSA or Ed25519 key).
#[derive(Debug, Clone)]
pub struct VerificationKey {
    kid: String,
    alg: Algorithm,
    key: DecodingKey,
    /// Set by [`VerificationKey::new`] when the key cannot serve `alg`, so that `verify` fails
    /// closed with a clear error instead of reaching the crypto backend with a bad key.
    defect: Option<&'static str>,
    /// The header segment of the tokens Tessera signs with this key, byte for byte (see
    /// [`crate::access_token_header`]): a token that begins with it needs no header parse.
    minted_header: Box<str>,
}

impl VerificationKey {
    /// Wraps a key the caller already trusts, such as the public half of its own signing key.
    ///
    /// A key that cannot serve `alg` (another key family, a truncated Ed25519 or P-256 point)
    /// is accepted here but refuses every token with [`VerifyError::InvalidKey`].
    pub fn new(kid: impl Into<String>, alg: Algorithm, key: DecodingKey) -> Self {
        let kid = kid.into();
        let defect = shape_defect(alg, &key);
        let minted_header = crate::encoded_header(&crate::access_token_header(&kid, alg));
        Self {
            kid,
            alg,
            key,
            defect,
            minted_header,
        }
    }

    /// An HS256 shared secret. Such a key is never published in a JWK set: anyone holding it
    /// can mint tokens, so it only suits services run by the issuer itself.
    pub fn hmac(kid: impl Into<String>, secret: &[u8]) -> Self {
        Self::new(kid, Algorithm::HS256, DecodingKey::from_secret(secret))
    }

    /// Reads a JWK (RFC 7517) as published at `/.well-known/jwks.json`.
    ///
    /// The key needs a `kid`, since tokens name their key by it. The algorithm is the JWK's
    /// `alg` when present, else the one Tessera uses for the key type (OKP Ed25519 → `EdDSA`,
    /// EC P-256 → `ES256`, RSA → `RS256`, oct → `HS256`); a key whose type contradicts its
    /// `alg`, an encryption key (`use: enc`) and malformed key material are all refused.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, VerifyError> {
        match classify(jwk)? {
            Some(alg) => Self::from_supported_jwk(jwk, alg),
            None => Err(VerifyError::InvalidKey(
                "unsupported key type, curve, algorithm or use".to_owned(),
            )),
        }
    }

    /// Builds the key once [`classify`] has accepted `jwk` for `alg`.
    pub(crate) fn from_supported_jwk(jwk: &Jwk, alg: Algorithm) -> Result<Self, VerifyError> {
        let Some(kid) = jwk.common.key_id.as_deref() else {
            return Err(VerifyError::InvalidKey("JWK has no kid".to_owned()));
        };
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|err| VerifyError::InvalidKey(format!("JWK `{kid}`: {err}")))?;
        if let DecodingKeyKind::RsaModulusExponent { n, .. } = key.kind() {
            let significant = n.iter().skip_while(|byte| **byte == 0).count();
            if significant < MIN_RSA_MODULUS_BYTES {
                return Err(VerifyError::InvalidKey(format!(
                    "JWK `{kid}`: RSA keys must be at least 2048 bits"
                )));
            }
        }
        let key = Self::new(kid, alg, key);
        if let Some(defect) = key.defect {
            return Err(VerifyError::InvalidKey(format!("JWK `{kid}`: {defect}")));
        }
        // Parsing the key as the crypto backend will validates what a length check cannot
        // (that an EC point lies on the curve, that Ed25519 bytes decode), so a bad JWK fails
        // here, at load time, rather than on every request.
        let parser: Option<&'static dyn VerificationAlgorithm> = match alg {
            Algorithm::EdDSA => Some(&signature::ED25519),
            Algorithm::ES256 => Some(&signature::ECDSA_P256_SHA256_FIXED),
            Algorithm::RS256 | Algorithm::HS256 => None,
        };
        if let (Some(parser), DecodingKeyKind::SecretOrDer(bytes)) = (parser, key.key.kind()) {
            signature::ParsedPublicKey::new(parser, bytes)
                .map_err(|err| VerifyError::InvalidKey(format!("JWK `{kid}`: {err}")))?;
        }
        Ok(key)
    }

    /// The key id tokens name in their `kid` header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The only algorithm this key verifies.
    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// The header segment (base64url of the header's JSON) of the tokens minted with this key.
    pub(crate) fn minted_header(&self) -> &str {
        &self.minted_header
    }

    pub(crate) fn decoding_key(&self) -> Result<&DecodingKey, VerifyError> {
        match self.defect {
            None => Ok(&self.key),
            Some(defect) => Err(VerifyError::InvalidKey(defect.to_owned())),
        }
    }
}

/// What stops `key` from serving `alg`, checked without touching the crypto backend (whose
/// Ed25519 verifier would otherwise index past the end of a short key).
fn shape_defect(alg: Algorithm, key: &DecodingKey) -> Option<&'static str> {
    let family = alg.to_jsonwebtoken().family();
    if key.family() != family {
        return Some("key type does not match its algorithm");
    }
    let expected_len = match family {
        AlgorithmFamily::Ed => 32,
        // SEC1 uncompressed point: 0x04 || x || y.
        AlgorithmFamily::Ec => 65,
        AlgorithmFamily::Hmac => {
            return match key.try_get_as_bytes() {
                Ok([]) => Some("empty HMAC secret"),
                _ => None,
            }
        }
        AlgorithmFamily::Rsa => return None,
    };
    match key.try_get_as_bytes() {
        Ok(bytes) if bytes.len() == expected_len => None,
        _ => Some("key has the wrong length for its algorithm"),
    }
}

/// Which of our algorithms `jwk` is for: `Ok(None)` when it is a kind of key this verifier
/// does not use (so a shared JWK set may carry it), an error when it contradicts itself.
pub(crate) fn classify(jwk: &Jwk) -> Result<Option<Algorithm>, VerifyError> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Ok(None);
    }
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => Algorithm::EdDSA,
            _ => return Ok(None),
        },
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            _ => return Ok(None),
        },
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::OctetKey(_) => Algorithm::HS256,
        _ => return Ok(None),
    };
    let Some(stated) = jwk.common.key_algorithm else {
        return Ok(Some(by_type));
    };
    let Some(stated) = from_key_algorithm(stated) else {
        // RS384, PS256, RSA-OAEP…: a real key, just not one Tessera signs with.
        return Ok(None);
    };
    if stated == by_type {
        Ok(Some(stated))
    } else {
        Err(VerifyError::InvalidKey(format!(
            "JWK `{}`: alg {stated} does not fit its key type",
            jwk.common.key_id.as_deref().unwrap_or("(no kid)")
        )))
    }
}

fn from_key_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    match alg {
        KeyAlgorithm::EdDSA => Some(Algorithm::EdDSA),
        KeyAlgorithm::ES256 => Some(Algorithm::ES256),
        KeyAlgorithm::RS256 => Some(Algorithm::RS256),
        KeyAlgorithm::HS256 => Some(Algorithm::HS256),
        _ => None,
    }
}
