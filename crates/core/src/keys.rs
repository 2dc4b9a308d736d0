//! Key material: the master key every node shares, the signing keys it seals, and the key ring
//! a node signs and verifies access tokens with (SPEC §1 "Signing keys", §4 `keys rotate`).
//!
//! Private keys exist in clear only in memory (zeroized on drop); the store holds them sealed
//! with XChaCha20-Poly1305 under a sub-key of the master key, so a leaked database yields no
//! usable signing key.

use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::path::Path;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use chacha20poly1305::aead::{Aead as _, Payload};
use chacha20poly1305::{KeyInit as _, XChaCha20Poly1305, XNonce};
use hmac::Mac as _;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, EllipticCurveKeyParameters,
    EllipticCurveKeyType, Jwk, JwkSet, KeyAlgorithm, OctetKeyPairParameters, OctetKeyPairType,
    PublicKeyUse, RSAKeyParameters, RSAKeyType,
};
use jsonwebtoken::{EncodingKey, Header};
use rand::rngs::OsRng;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use tessera_verify::{access_token_header, Claims, VerificationKey, Verifier, LEEWAY_SECS};
use zeroize::Zeroizing;

use crate::mac::hmac_sha256;
use crate::model::{SealedKey, Timestamp};

pub use tessera_verify::Algorithm;

/// `XChaCha20`'s 192-bit nonce: large enough to pick at random for every seal without a
/// counter shared between nodes.
const NONCE_LEN: usize = 24;

/// RFC 7518 §3.3 asks for at least 2048 bits; larger keys only slow every signature down.
const RSA_BITS: usize = 2048;

/// Sub-key purpose for sealing signing keys; see [`MasterKey::derive`].
const SEALING_PURPOSE: &str = "key-sealing";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The master key text or file is unusable; the message names the file when there is one.
    #[error("master key: {0}")]
    MasterKey(String),
    /// AEAD authentication failed: another master key sealed this record, or it was altered.
    #[error("cannot unseal a signing key: wrong master key or corrupt record")]
    Unseal,
    /// Generating, encoding or sealing key material failed.
    #[error("cannot generate or seal a signing key: {0}")]
    Generate(String),
    #[error("cannot sign a token: {0}")]
    Sign(String),
    #[error("unknown signing algorithm `{0}` (expected one of EdDSA, ES256, RS256, HS256)")]
    UnknownAlgorithm(String),
    /// Every stored key is retired; `tessera keys rotate` creates a new one.
    #[error("no active signing key")]
    NoActiveKey,
}

/// The one secret every node of a deployment shares (`TESSERA_MASTER_KEY` or the key file).
///
/// Never used directly as a key: [`MasterKey::derive`] turns it into one independent sub-key
/// per purpose, so the CSRF secret, say, reveals nothing about the key that seals signing keys.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl MasterKey {
    /// 256 bits from the OS CSPRNG.
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(key.as_mut_slice());
        Self(key)
    }

    /// Reads 32 bytes written as base64url (the key file's form, padded or not) or standard
    /// base64 (`openssl rand -base64 32`). Surrounding whitespace, such as the trailing newline
    /// of a file or an environment variable, is ignored.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        for engine in [&URL_SAFE_NO_PAD, &URL_SAFE, &STANDARD, &STANDARD_NO_PAD] {
            // Decoded into fixed buffers that are zeroized on drop, never into a growable Vec
            // that could leave copies behind; the slack lets a 33-byte key fail as too long
            // rather than as too large for the buffer.
            let mut decoded = Zeroizing::new([0u8; 48]);
            if let Ok(32) = engine.decode_slice(text, decoded.as_mut_slice()) {
                let mut key = Zeroizing::new([0u8; 32]);
                key.copy_from_slice(&decoded[..32]);
                return Ok(Self(key));
            }
        }
        // Never echo the text: it may be a real key with a typo.
        Err(KeyError::MasterKey(
            "expected 32 bytes written as base64url or base64".to_owned(),
        ))
    }

    /// Loads the key file, or creates it on first start with a fresh key (SPEC §2
    /// `master_key_file`), readable by the owner only.
    ///
    /// Creation uses `create_new`, so two nodes starting at once on a shared disk cannot
    /// overwrite each other's key: the loser reads the winner's file.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        match Self::load(path) {
            Err(LoadError::Missing) => {}
            other => return other.map_err(|err| err.into_key_error(path)),
        }
        // Written whole to a file of our own, then linked into place: the link fails if
        // another process got there first, so every process starting at once on a fresh
        // install ends with the one key that was published, and none ever reads a half-written
        // file.
        let key = Self::generate();
        let staging = path.with_extension(format!("key.{}.tmp", uuid::Uuid::now_v7().simple()));
        let written = create_owner_only(&staging).and_then(|mut file| {
            let text = Zeroizing::new(format!("{}\n", URL_SAFE_NO_PAD.encode(*key.0)));
            file.write_all(text.as_bytes())?;
            file.sync_all()
        });
        if let Err(err) = written {
            let _ = fs::remove_file(&staging);
            return Err(KeyError::MasterKey(format!(
                "cannot write `{}`: {err}",
                staging.display()
            )));
        }
        let published = fs::hard_link(&staging, path);
        let _ = fs::remove_file(&staging);
        match published {
            Ok(()) => {
                tracing::info!(path = %path.display(), "created a new master key file");
                Ok(key)
            }
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                Self::load(path).map_err(|err| err.into_key_error(path))
            }
            Err(err) => Err(KeyError::MasterKey(format!(
                "cannot create `{}`: {err}",
                path.display()
            ))),
        }
    }

    fn load(path: &Path) -> Result<Self, LoadError> {
        let text = match fs::read_to_string(path) {
            Ok(text) => Zeroizing::new(text),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Err(LoadError::Missing),
            Err(err) => return Err(LoadError::Io(err)),
        };
        warn_if_shared(path);
        Self::from_base64(&text).map_err(|_| LoadError::Invalid)
    }

    /// HMAC-SHA256(master, `"tessera/v1/" + purpose`): a sub-key for one purpose
    /// (`"csrf"`, `"refresh-successor"`, `"key-sealing"`…). The same master and purpose
    /// always give the same sub-key, on every node; different purposes give independent ones.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut mac = hmac_sha256(self.0.as_slice());
        mac.update(b"tessera/v1/");
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey([REDACTED])")
    }
}

enum LoadError {
    Missing,
    Io(io::Error),
    Invalid,
}

impl LoadError {
    fn into_key_error(self, path: &Path) -> KeyError {
        KeyError::MasterKey(match self {
            Self::Missing => format!("`{}` does not exist", path.display()),
            Self::Io(err) => format!("cannot read `{}`: {err}", path.display()),
            Self::Invalid => format!(
                "`{}` does not hold 32 bytes written as base64url or base64",
                path.display()
            ),
        })
    }
}

#[cfg(unix)]
fn create_owner_only(path: &Path) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn create_owner_only(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

/// A key file others can read is a leaked key waiting to happen; say so, but still start:
/// refusing would take a running deployment down over a `chmod`.
#[cfg(unix)]
fn warn_if_shared(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{mode:o}"),
                "master key file is readable by other users; chmod 600 it"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_shared(_path: &Path) {}

/// A private key that signs access tokens, with everything derived from it computed once.
pub struct SigningKey {
    kid: String,
    alg: Algorithm,
    /// PKCS#8 DER (or the raw HS256 secret): the form [`SigningKey::seal`] encrypts.
    private: Zeroizing<Vec<u8>>,
    /// jsonwebtoken's own copy, zeroized on drop by that crate.
    encoding: EncodingKey,
    /// Prepared once, since every token of this key carries the same header.
    header: Header,
    verification: VerificationKey,
    public_jwk: Option<Jwk>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("private", &"[REDACTED]")
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh key: Ed25519, P-256, RSA-2048, or 32 random bytes for HS256.
    pub fn generate(alg: Algorithm) -> Result<Self, KeyError> {
        let private = match alg {
            Algorithm::EdDSA => {
                use ed25519_dalek::pkcs8::EncodePrivateKey as _;
                let key = ed25519_dalek::SigningKey::generate(&mut OsRng);
                pkcs8_bytes(key.to_pkcs8_der())?
            }
            Algorithm::ES256 => {
                use p256::pkcs8::EncodePrivateKey as _;
                let key = p256::ecdsa::SigningKey::random(&mut OsRng);
                pkcs8_bytes(key.to_pkcs8_der())?
            }
            Algorithm::RS256 => {
                use rsa::pkcs8::EncodePrivateKey as _;
                let key = rsa::RsaPrivateKey::new(&mut OsRng, RSA_BITS)
                    .map_err(|err| KeyError::Generate(format!("RSA: {err}")))?;
                pkcs8_bytes(key.to_pkcs8_der())?
            }
            Algorithm::HS256 => {
                let mut secret = Zeroizing::new(vec![0u8; 32]);
                OsRng.fill_bytes(secret.as_mut_slice());
                secret
            }
        };
        Self::from_private(alg, private, None)
    }

    /// Rebuilds a key from its private bytes. `kid` is `None` for a new key, which then gets
    /// its RFC 7638 thumbprint (asymmetric) or a random id (HS256); an unsealed key keeps the
    /// `kid` it was sealed with, since tokens in flight name it.
    fn from_private(
        alg: Algorithm,
        private: Zeroizing<Vec<u8>>,
        kid: Option<String>,
    ) -> Result<Self, KeyError> {
        let (encoding, public) = match alg {
            Algorithm::EdDSA => {
                use ed25519_dalek::pkcs8::DecodePrivateKey as _;
                let key = ed25519_dalek::SigningKey::from_pkcs8_der(&private)
                    .map_err(|err| KeyError::Generate(format!("Ed25519 PKCS#8: {err}")))?;
                let x = URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes());
                (
                    EncodingKey::from_ed_der(&private),
                    Some(PublicParts::Ed25519 { x }),
                )
            }
            Algorithm::ES256 => {
                use p256::pkcs8::DecodePrivateKey as _;
                let key = p256::ecdsa::SigningKey::from_pkcs8_der(&private)
                    .map_err(|err| KeyError::Generate(format!("P-256 PKCS#8: {err}")))?;
                let point = key.verifying_key().to_encoded_point(false);
                let (Some(x), Some(y)) = (point.x(), point.y()) else {
                    return Err(KeyError::Generate("P-256 point is not affine".to_owned()));
                };
                (
                    EncodingKey::from_ec_der(&private),
                    Some(PublicParts::P256 {
                        x: URL_SAFE_NO_PAD.encode(x),
                        y: URL_SAFE_NO_PAD.encode(y),
                    }),
                )
            }
            Algorithm::RS256 => {
                use rsa::pkcs1::EncodeRsaPrivateKey as _;
                use rsa::pkcs8::DecodePrivateKey as _;
                use rsa::traits::PublicKeyParts as _;
                let key = rsa::RsaPrivateKey::from_pkcs8_der(&private)
                    .map_err(|err| KeyError::Generate(format!("RSA PKCS#8: {err}")))?;
                // jsonwebtoken signs with PKCS#1; the document zeroizes itself on drop.
                let pkcs1 = key
                    .to_pkcs1_der()
                    .map_err(|err| KeyError::Generate(format!("RSA PKCS#1: {err}")))?;
                (
                    EncodingKey::from_rsa_der(pkcs1.as_bytes()),
                    Some(PublicParts::Rsa {
                        n: URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
                        e: URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
                    }),
                )
            }
            Algorithm::HS256 => {
                if private.len() < 32 {
                    return Err(KeyError::Generate(
                        "HS256 secret shorter than 256 bits".to_owned(),
                    ));
                }
                (EncodingKey::from_secret(&private), None)
            }
        };

        let kid = match (kid, &public) {
            (Some(kid), _) => kid,
            (None, Some(public)) => public.thumbprint(),
            (None, None) => {
                let mut id = [0u8; 16];
                OsRng.fill_bytes(&mut id);
                URL_SAFE_NO_PAD.encode(id)
            }
        };
        let public_jwk = public.map(|public| public.into_jwk(&kid, alg));
        let verification = match &public_jwk {
            Some(jwk) => {
                VerificationKey::from_jwk(jwk).map_err(|err| KeyError::Generate(err.to_string()))?
            }
            None => VerificationKey::hmac(kid.as_str(), &private),
        };
        let header = access_token_header(&kid, alg);

        Ok(Self {
            kid,
            alg,
            private,
            encoding,
            header,
            verification,
            public_jwk,
        })
    }

    /// RFC 7638 thumbprint (SHA-256, base64url) for asymmetric keys, so a `kid` names exactly
    /// one public key; 128 random bits for HS256, whose thumbprint would be a hash of the
    /// secret itself.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// An access token (JWS compact) with header `typ: at+jwt` (RFC 9068) and this key's `kid`.
    pub fn sign(&self, claims: &Claims) -> Result<String, KeyError> {
        jsonwebtoken::encode(&self.header, claims, &self.encoding)
            .map_err(|err| KeyError::Sign(err.to_string()))
    }

    /// The key that checks this key's tokens, algorithm pinned.
    pub fn verification_key(&self) -> VerificationKey {
        self.verification.clone()
    }

    /// The public JWK with `kid`, `alg` and `use: sig`, as published in the JWK set; `None`
    /// for HS256, whose key is a shared secret.
    pub fn public_jwk(&self) -> Option<Jwk> {
        self.public_jwk.clone()
    }

    /// Encrypts the private key for the store: XChaCha20-Poly1305 under the master key's
    /// `key-sealing` sub-key, with a random nonce stored in front of the ciphertext. `kid` and
    /// `alg` are authenticated as associated data, so a record cannot be relabelled.
    pub fn seal(&self, master: &MasterKey, created_at: Timestamp) -> Result<SealedKey, KeyError> {
        let cipher = sealing_cipher(master);
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let aad = associated_data(&self.kid, self.alg.as_str());
        let ciphertext = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &self.private,
                    aad: &aad,
                },
            )
            .map_err(|_| KeyError::Generate("encryption failed".to_owned()))?;
        let mut sealed_private = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        sealed_private.extend_from_slice(&nonce);
        sealed_private.extend_from_slice(&ciphertext);
        let public_jwk = self
            .public_jwk
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|err| KeyError::Generate(format!("public JWK: {err}")))?;
        Ok(SealedKey {
            kid: self.kid.clone(),
            alg: self.alg.as_str().to_owned(),
            sealed_private,
            public_jwk,
            created_at,
            retired_at: None,
        })
    }

    /// Decrypts a stored key. Fails with [`KeyError::Unseal`] under another master key or if
    /// any byte of the record (including its `kid` or `alg`) was changed.
    pub fn unseal(sealed: &SealedKey, master: &MasterKey) -> Result<Self, KeyError> {
        let alg: Algorithm = sealed
            .alg
            .parse()
            .map_err(|_| KeyError::UnknownAlgorithm(sealed.alg.clone()))?;
        let (nonce, ciphertext) = sealed
            .sealed_private
            .split_at_checked(NONCE_LEN)
            .ok_or(KeyError::Unseal)?;
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| KeyError::Unseal)?;
        let cipher = sealing_cipher(master);
        let aad = associated_data(&sealed.kid, &sealed.alg);
        let private = cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| KeyError::Unseal)?;
        // Authenticated bytes that do not parse mean a bug or a forged master key: either
        // way the record is unusable, and the error must not echo key material.
        Self::from_private(alg, private, Some(sealed.kid.clone())).map_err(|_| KeyError::Unseal)
    }
}

/// Copies an encoded private key out of its self-zeroizing document into our own zeroizing
/// buffer (all three key crates share the `pkcs8` crate, hence one type).
fn pkcs8_bytes(
    document: p256::pkcs8::Result<p256::pkcs8::SecretDocument>,
) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    document
        .map(|doc| Zeroizing::new(doc.as_bytes().to_vec()))
        .map_err(|err| KeyError::Generate(format!("PKCS#8 encoding: {err}")))
}

fn sealing_cipher(master: &MasterKey) -> XChaCha20Poly1305 {
    let key = Zeroizing::new(master.derive(SEALING_PURPOSE));
    XChaCha20Poly1305::new((&*key).into())
}

/// `kid || 0x00 || alg`: the separator keeps the pair unambiguous whatever a `kid` contains.
fn associated_data(kid: &str, alg: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(kid.len() + 1 + alg.len());
    aad.extend_from_slice(kid.as_bytes());
    aad.push(0);
    aad.extend_from_slice(alg.as_bytes());
    aad
}

/// The public half of an asymmetric key, as base64url JWK members.
enum PublicParts {
    Ed25519 { x: String },
    P256 { x: String, y: String },
    Rsa { n: String, e: String },
}

impl PublicParts {
    /// RFC 7638 §3: SHA-256 of the required members, in lexicographic order, no whitespace.
    fn thumbprint(&self) -> String {
        let canonical = match self {
            Self::Ed25519 { x } => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#),
            Self::P256 { x, y } => {
                format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#)
            }
            Self::Rsa { n, e } => format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#),
        };
        URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
    }

    fn into_jwk(self, kid: &str, alg: Algorithm) -> Jwk {
        let algorithm = match self {
            Self::Ed25519 { x } => AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                key_type: OctetKeyPairType::OctetKeyPair,
                curve: EllipticCurve::Ed25519,
                x,
            }),
            Self::P256 { x, y } => AlgorithmParameters::EllipticCurve(EllipticCurveKeyParameters {
                key_type: EllipticCurveKeyType::EC,
                curve: EllipticCurve::P256,
                x,
                y,
            }),
            Self::Rsa { n, e } => AlgorithmParameters::RSA(RSAKeyParameters {
                key_type: RSAKeyType::RSA,
                n,
                e,
            }),
        };
        Jwk {
            common: CommonParameters {
                public_key_use: Some(PublicKeyUse::Signature),
                key_algorithm: Some(KeyAlgorithm::from(alg.to_jsonwebtoken())),
                key_id: Some(kid.to_owned()),
                ..CommonParameters::default()
            },
            algorithm,
        }
    }
}

/// The keys a node signs and verifies with, rebuilt from the store.
///
/// Immutable: after a rotation the node builds a new ring and swaps it in whole, so a request
/// never sees a half-rotated set of keys.
pub struct KeyRing {
    active: SigningKey,
    verifier: Verifier,
    jwks: JwkSet,
    jwks_json: String,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("active", &self.active)
            .field("verifier", &self.verifier)
            .finish_non_exhaustive()
    }
}

/// How often a node re-reads the signing keys, so a rotation made by the CLI or another node
/// is picked up. Until then the node may keep signing with the key just retired.
pub const KEY_RELOAD_INTERVAL: Duration = Duration::from_secs(60);

/// How long after its retirement a key must still verify: a token it signed may have been
/// minted up to one reload interval after `retired_at` (by a node that had not yet reloaded)
/// and lives `access_token_ttl`, plus the verifier's clock leeway.
pub fn retired_key_lifetime(access_token_ttl: Duration) -> Duration {
    access_token_ttl
        .saturating_add(KEY_RELOAD_INTERVAL)
        .saturating_add(Duration::from_secs(LEEWAY_SECS))
}

impl KeyRing {
    /// Unseals the keys that matter at `now`.
    ///
    /// The active key is the newest one not retired. Tokens are verified with every key not
    /// retired (a concurrent rotation on another node may have left two) and with every key
    /// retired less than [`retired_key_lifetime`] ago, since tokens it signed may
    /// still be alive (SPEC §4). Keys retired before that are left out entirely: their tokens
    /// have all expired, and their private halves need not be decrypted.
    pub fn from_sealed(
        keys: &[SealedKey],
        master: &MasterKey,
        now: Timestamp,
        access_token_ttl: Duration,
        issuer: &str,
        audience: &str,
    ) -> Result<Self, KeyError> {
        let token_lifetime = retired_key_lifetime(access_token_ttl);
        let active_record = keys
            .iter()
            .filter(|key| key.retired_at.is_none())
            .max_by(|a, b| (a.created_at, &a.kid).cmp(&(b.created_at, &b.kid)))
            .ok_or(KeyError::NoActiveKey)?;
        let mut others: Vec<&SealedKey> = keys
            .iter()
            .filter(|key| key.kid != active_record.kid)
            .filter(|key| {
                key.retired_at
                    .is_none_or(|retired| retired.saturating_add(token_lifetime) > now)
            })
            .collect();
        // Newest first, so the JWK set lists keys in the order clients most likely need them.
        others.sort_by(|a, b| (b.created_at, &b.kid).cmp(&(a.created_at, &a.kid)));

        let active = SigningKey::unseal(active_record, master)?;
        let mut verifier = Verifier::new(issuer, audience).with_key(active.verification_key());
        let mut jwks = JwkSet {
            keys: active.public_jwk().into_iter().collect(),
        };
        for record in others {
            if verifier.kids().any(|kid| kid == record.kid) {
                continue;
            }
            let key = SigningKey::unseal(record, master)?;
            verifier.insert(key.verification_key());
            jwks.keys.extend(key.public_jwk());
        }
        let jwks_json = serde_json::to_string(&jwks)
            .map_err(|err| KeyError::Generate(format!("JWK set: {err}")))?;
        Ok(Self {
            active,
            verifier,
            jwks,
            jwks_json,
        })
    }

    /// Whether `other` signs with the same key and verifies with the same set: a kid names
    /// one key for good, so equal kids mean equal keys. A reload that finds nothing changed
    /// keeps the ring in force, and with it what the token cache verified under it.
    pub fn same_keys(&self, other: &KeyRing) -> bool {
        let mut mine: Vec<&str> = self.verifier.kids().collect();
        let mut theirs: Vec<&str> = other.verifier.kids().collect();
        mine.sort_unstable();
        theirs.sort_unstable();
        self.active.kid() == other.active.kid() && mine == theirs
    }

    /// The key new tokens are signed with.
    pub fn active(&self) -> &SigningKey {
        &self.active
    }

    /// Accepts tokens from every key whose tokens may still be alive.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// Public JWKs of exactly the verification keys; HS256 keys never appear.
    pub fn jwks(&self) -> &JwkSet {
        &self.jwks
    }

    /// [`KeyRing::jwks`] serialised once, for `/.well-known/jwks.json`, which is fetched often.
    pub fn jwks_json(&self) -> &str {
        &self.jwks_json
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use tessera_verify::VerifyError;

    const ISSUER: &str = "https://auth.example.test";
    const AUDIENCE: &str = "tessera";
    const TTL: Duration = Duration::from_secs(15 * 60);

    fn claims(now: Timestamp) -> Claims {
        Claims {
            iss: ISSUER.to_owned(),
            sub: "user-1".to_owned(),
            aud: AUDIENCE.to_owned(),
            exp: now.as_unix() + 900,
            iat: now.as_unix(),
            jti: "jti-1".to_owned(),
            sid: "session-1".to_owned(),
            roles: vec!["member".to_owned()],
            scope: None,
            nbf: None,
        }
    }

    fn verifier_of(key: &SigningKey) -> Verifier {
        Verifier::new(ISSUER, AUDIENCE).with_key(key.verification_key())
    }

    #[test]
    fn generated_keys_sign_tokens_that_verify() {
        let now = Timestamp::now();
        for alg in Algorithm::ALL {
            let key = SigningKey::generate(alg).unwrap();
            assert_eq!(key.alg(), alg);
            let token = key.sign(&claims(now)).unwrap();
            assert_eq!(verifier_of(&key).verify(&token), Ok(claims(now)), "{alg}");

            let (header, _) = tessera_verify::inspect(&token).unwrap();
            assert_eq!(header.typ.as_deref(), Some("at+jwt"));
            assert_eq!(header.kid.as_deref(), Some(key.kid()));
            assert_eq!(header.alg, alg.to_jsonwebtoken());
        }
    }

    #[test]
    fn kid_is_the_rfc7638_thumbprint_or_random_for_hmac() {
        for alg in [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256] {
            let key = SigningKey::generate(alg).unwrap();
            let jwk = key.public_jwk().unwrap();
            let expected = jwk
                .thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
                .unwrap();
            assert_eq!(key.kid(), expected, "{alg}");
            assert_eq!(key.kid().len(), 43);
        }
        let a = SigningKey::generate(Algorithm::HS256).unwrap();
        let b = SigningKey::generate(Algorithm::HS256).unwrap();
        assert_eq!(a.kid().len(), 22);
        assert_ne!(a.kid(), b.kid());
    }

    #[test]
    fn public_jwk_is_published_form_and_verifies() {
        let now = Timestamp::now();
        for alg in [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256] {
            let key = SigningKey::generate(alg).unwrap();
            let jwk = key.public_jwk().unwrap();
            assert_eq!(jwk.common.key_id.as_deref(), Some(key.kid()));
            assert_eq!(
                jwk.common.key_algorithm,
                Some(KeyAlgorithm::from(alg.to_jsonwebtoken()))
            );
            assert_eq!(jwk.common.public_key_use, Some(PublicKeyUse::Signature));
            let jwks = JwkSet { keys: vec![jwk] };
            let verifier = Verifier::from_jwks(&jwks, ISSUER, AUDIENCE).unwrap();
            let token = key.sign(&claims(now)).unwrap();
            assert_eq!(verifier.verify(&token), Ok(claims(now)), "{alg}");
        }
        assert!(SigningKey::generate(Algorithm::HS256)
            .unwrap()
            .public_jwk()
            .is_none());
    }

    #[test]
    fn sealed_keys_unseal_to_the_same_key() {
        let master = MasterKey::generate();
        let now = Timestamp::now();
        for alg in Algorithm::ALL {
            let key = SigningKey::generate(alg).unwrap();
            let sealed = key.seal(&master, now).unwrap();
            assert_eq!(sealed.kid, key.kid());
            assert_eq!(sealed.alg, alg.as_str());
            assert_eq!(sealed.created_at, now);
            assert_eq!(sealed.retired_at, None);
            assert_eq!(sealed.public_jwk.is_some(), alg != Algorithm::HS256);
            assert!(!sealed
                .sealed_private
                .windows(key.private.len())
                .any(|w| w == key.private.as_slice()));

            let unsealed = SigningKey::unseal(&sealed, &master).unwrap();
            assert_eq!(unsealed.kid(), key.kid());
            assert_eq!(unsealed.alg(), alg);
            assert_eq!(unsealed.public_jwk(), key.public_jwk());
            // Each verifies the other's tokens: it is the same key pair.
            let token = unsealed.sign(&claims(now)).unwrap();
            assert_eq!(verifier_of(&key).verify(&token), Ok(claims(now)), "{alg}");
            let token = key.sign(&claims(now)).unwrap();
            assert_eq!(
                verifier_of(&unsealed).verify(&token),
                Ok(claims(now)),
                "{alg}"
            );
        }
    }

    #[test]
    fn unseal_with_the_wrong_master_key_fails() {
        let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
        let sealed = key.seal(&MasterKey::generate(), Timestamp::now()).unwrap();
        assert!(matches!(
            SigningKey::unseal(&sealed, &MasterKey::generate()),
            Err(KeyError::Unseal)
        ));
    }

    #[test]
    fn altered_records_do_not_unseal() {
        let master = MasterKey::generate();
        let key = SigningKey::generate(Algorithm::ES256).unwrap();
        let sealed = key.seal(&master, Timestamp::now()).unwrap();

        let mut relabelled = sealed.clone();
        relabelled.kid = "another-kid".to_owned();
        let mut realg = sealed.clone();
        realg.alg = "EdDSA".to_owned();
        let mut flipped = sealed.clone();
        if let Some(byte) = flipped.sealed_private.last_mut() {
            *byte ^= 1;
        }
        let mut truncated = sealed.clone();
        truncated.sealed_private.truncate(10);
        for record in [relabelled, realg, flipped, truncated] {
            assert!(matches!(
                SigningKey::unseal(&record, &master),
                Err(KeyError::Unseal)
            ));
        }
        let mut unknown = sealed;
        unknown.alg = "PS256".to_owned();
        assert!(matches!(
            SigningKey::unseal(&unknown, &master),
            Err(KeyError::UnknownAlgorithm(alg)) if alg == "PS256"
        ));
    }

    #[test]
    fn every_seal_uses_a_fresh_nonce() {
        let master = MasterKey::generate();
        let key = SigningKey::generate(Algorithm::HS256).unwrap();
        let a = key.seal(&master, Timestamp::now()).unwrap();
        let b = key.seal(&master, Timestamp::now()).unwrap();
        assert_ne!(a.sealed_private, b.sealed_private);
    }

    #[test]
    fn master_key_reads_base64url_and_base64() {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        let reference = MasterKey::from_base64(&URL_SAFE_NO_PAD.encode(bytes)).unwrap();
        for text in [
            URL_SAFE_NO_PAD.encode(bytes),
            URL_SAFE.encode(bytes),
            STANDARD.encode(bytes),
            format!("  {}\n", STANDARD.encode(bytes)),
        ] {
            let key = MasterKey::from_base64(&text).unwrap();
            assert_eq!(key.derive("x"), reference.derive("x"), "{text}");
        }
        let short = URL_SAFE_NO_PAD.encode([1u8; 31]);
        let long = URL_SAFE_NO_PAD.encode([1u8; 33]);
        for bad in [short.as_str(), long.as_str(), "", "not base64 at all!"] {
            let err = MasterKey::from_base64(bad).unwrap_err().to_string();
            assert!(bad.is_empty() || !err.contains(bad), "{err}");
        }
    }

    #[test]
    fn derive_is_hmac_sha256_with_independent_purposes() {
        let master = MasterKey::generate();
        let mut mac =
            <crate::mac::HmacSha256 as hmac::Mac>::new_from_slice(master.0.as_slice()).unwrap();
        mac.update(b"tessera/v1/csrf");
        let expected: [u8; 32] = mac.finalize().into_bytes().into();
        assert_eq!(master.derive("csrf"), expected);
        assert_eq!(master.derive("csrf"), master.derive("csrf"));
        assert_ne!(master.derive("csrf"), master.derive("key-sealing"));
        assert_ne!(master.derive("csrf"), MasterKey::generate().derive("csrf"));
    }

    #[test]
    fn secrets_do_not_leak_through_debug() {
        let master = MasterKey::generate();
        let text = format!("{master:?}");
        assert_eq!(text, "MasterKey([REDACTED])");
        assert!(!text.contains(&URL_SAFE_NO_PAD.encode(*master.0)));

        let key = SigningKey::generate(Algorithm::HS256).unwrap();
        let text = format!("{key:?}");
        assert!(text.contains(key.kid()));
        assert!(!text.contains(&URL_SAFE_NO_PAD.encode(key.private.as_slice())));
        assert!(!text.contains(&format!("{:?}", key.private.as_slice())));
    }

    #[test]
    fn load_or_create_creates_an_owner_only_file_and_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tessera.key");
        let created = MasterKey::load_or_create(&path).unwrap();
        assert!(path.exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(text.trim()).unwrap().len(), 32);

        let loaded = MasterKey::load_or_create(&path).unwrap();
        assert_eq!(loaded.derive("key-sealing"), created.derive("key-sealing"));
        // A key sealed before the restart unseals after it.
        let key = SigningKey::generate(Algorithm::EdDSA).unwrap();
        let sealed = key.seal(&created, Timestamp::now()).unwrap();
        assert_eq!(
            SigningKey::unseal(&sealed, &loaded).unwrap().kid(),
            key.kid()
        );
    }

    #[test]
    fn processes_creating_the_key_at_once_all_end_with_the_same_one() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("tessera.key");
            let barrier = std::sync::Barrier::new(8);
            let keys: Vec<[u8; 32]> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..8)
                    .map(|_| {
                        scope.spawn(|| {
                            barrier.wait();
                            MasterKey::load_or_create(&path)
                                .unwrap()
                                .derive("key-sealing")
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert!(keys.windows(2).all(|w| w[0] == w[1]), "one key for all");
            let files: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
            assert_eq!(files.len(), 1, "no staging file left behind");
        }
    }

    #[test]
    fn load_or_create_names_the_file_it_cannot_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.key");
        fs::write(&path, "definitely not a key").unwrap();
        let err = MasterKey::load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("broken.key"), "{err}");
        assert!(!err.contains("definitely"), "{err}");

        let missing_dir = dir.path().join("no-such-dir").join("tessera.key");
        let err = MasterKey::load_or_create(&missing_dir)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no-such-dir"), "{err}");
    }

    fn sealed(
        alg: Algorithm,
        master: &MasterKey,
        created_at: Timestamp,
        retired_at: Option<Timestamp>,
    ) -> (SigningKey, SealedKey) {
        let key = SigningKey::generate(alg).unwrap();
        let mut record = key.seal(master, created_at).unwrap();
        record.retired_at = retired_at;
        (key, record)
    }

    fn ring(keys: &[SealedKey], master: &MasterKey, now: Timestamp) -> KeyRing {
        KeyRing::from_sealed(keys, master, now, TTL, ISSUER, AUDIENCE).unwrap()
    }

    fn jwks_kids(ring: &KeyRing) -> Vec<&str> {
        ring.jwks()
            .keys
            .iter()
            .filter_map(|jwk| jwk.common.key_id.as_deref())
            .collect()
    }

    #[test]
    fn rotation_keeps_the_old_key_verifying_and_published() {
        let master = MasterKey::generate();
        let now = Timestamp::now();
        let day_ago = Timestamp::from_unix(now.as_unix() - 86_400);
        let (old, old_record) = sealed(Algorithm::EdDSA, &master, day_ago, Some(now));
        let (new, new_record) = sealed(Algorithm::EdDSA, &master, now, None);
        let ring = ring(&[old_record, new_record], &master, now);

        assert_eq!(ring.active().kid(), new.kid());
        let old_token = old.sign(&claims(now)).unwrap();
        assert_eq!(ring.verifier().verify(&old_token), Ok(claims(now)));
        let new_token = ring.active().sign(&claims(now)).unwrap();
        assert_eq!(ring.verifier().verify(&new_token), Ok(claims(now)));
        assert_eq!(jwks_kids(&ring), [new.kid(), old.kid()]);
        let served: JwkSet = serde_json::from_str(ring.jwks_json()).unwrap();
        assert_eq!(&served, ring.jwks());
    }

    #[test]
    fn keys_retired_longer_than_the_token_lifetime_are_dropped() {
        let master = MasterKey::generate();
        let now = Timestamp::now();
        let lifetime = i64::try_from(retired_key_lifetime(TTL).as_secs()).unwrap();
        let long_ago = Timestamp::from_unix(now.as_unix() - lifetime - 1);
        let just_in = Timestamp::from_unix(now.as_unix() - lifetime + 5);
        let week_ago = Timestamp::from_unix(now.as_unix() - 7 * 86_400);
        let (dead, dead_record) = sealed(Algorithm::EdDSA, &master, week_ago, Some(long_ago));
        let (alive, alive_record) = sealed(Algorithm::ES256, &master, week_ago, Some(just_in));
        let (active, active_record) = sealed(Algorithm::EdDSA, &master, now, None);
        let ring = ring(&[dead_record, alive_record, active_record], &master, now);

        assert_eq!(ring.active().kid(), active.kid());
        let kids = jwks_kids(&ring);
        assert!(!kids.contains(&dead.kid()));
        assert!(kids.contains(&alive.kid()));
        assert!(!ring.verifier().kids().any(|kid| kid == dead.kid()));
        // Even a token that has not expired yet dies with its key.
        let token = dead.sign(&claims(now)).unwrap();
        assert_eq!(ring.verifier().verify(&token), Err(VerifyError::UnknownKey));
        let token = alive.sign(&claims(now)).unwrap();
        assert_eq!(ring.verifier().verify(&token), Ok(claims(now)));
    }

    #[test]
    fn the_newest_unretired_key_is_active_and_others_still_verify() {
        let master = MasterKey::generate();
        let now = Timestamp::now();
        let earlier = Timestamp::from_unix(now.as_unix() - 60);
        let (older, older_record) = sealed(Algorithm::EdDSA, &master, earlier, None);
        let (newer, newer_record) = sealed(Algorithm::EdDSA, &master, now, None);
        let ring = ring(&[newer_record, older_record], &master, now);
        assert_eq!(ring.active().kid(), newer.kid());
        let token = older.sign(&claims(now)).unwrap();
        assert_eq!(ring.verifier().verify(&token), Ok(claims(now)));
    }

    #[test]
    fn a_ring_needs_an_active_key() {
        let master = MasterKey::generate();
        let now = Timestamp::now();
        let (_, retired) = sealed(Algorithm::EdDSA, &master, now, Some(now));
        for keys in [vec![], vec![retired]] {
            assert!(matches!(
                KeyRing::from_sealed(&keys, &master, now, TTL, ISSUER, AUDIENCE),
                Err(KeyError::NoActiveKey)
            ));
        }
    }

    #[test]
    fn a_ring_under_the_wrong_master_key_fails() {
        let now = Timestamp::now();
        let (_, record) = sealed(Algorithm::EdDSA, &MasterKey::generate(), now, None);
        assert!(matches!(
            KeyRing::from_sealed(
                &[record],
                &MasterKey::generate(),
                now,
                TTL,
                ISSUER,
                AUDIENCE
            ),
            Err(KeyError::Unseal)
        ));
    }

    #[test]
    fn jwks_json_never_carries_private_or_symmetric_material() {
        let master = MasterKey::generate();
        let now = Timestamp::now();
        let earlier = |secs: i64| Timestamp::from_unix(now.as_unix() - secs);
        let (_, ed) = sealed(Algorithm::EdDSA, &master, now, None);
        let (_, ec) = sealed(Algorithm::ES256, &master, earlier(300), Some(earlier(10)));
        let (_, rs) = sealed(Algorithm::RS256, &master, earlier(200), Some(earlier(20)));
        let (hs_key, hs) = sealed(Algorithm::HS256, &master, earlier(100), Some(earlier(30)));
        let ring = ring(&[ed, ec, rs, hs], &master, now);
        assert_eq!(ring.verifier().kids().count(), 4);

        let served: serde_json::Value = serde_json::from_str(ring.jwks_json()).unwrap();
        let keys = served["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 3);
        let mut types: Vec<&str> = keys.iter().map(|k| k["kty"].as_str().unwrap()).collect();
        types.sort_unstable();
        assert_eq!(types, ["EC", "OKP", "RSA"]);
        for key in keys {
            for member in ["d", "p", "q", "dp", "dq", "qi", "k", "oth"] {
                assert!(key.get(member).is_none(), "{member} in {key}");
            }
            assert_eq!(key["use"], "sig");
            assert_ne!(key["kid"], hs_key.kid());
        }
        // The HS256 key still verifies its tokens on this node.
        let token = hs_key.sign(&claims(now)).unwrap();
        assert_eq!(ring.verifier().verify(&token), Ok(claims(now)));
    }
}
