//! Secrets as types: they print as `[REDACTED]`, cannot be serialised, and are reached only
//! through a greppable `expose_secret()`; what a store keeps is their SHA-256.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore as _;
use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest as _, Sha256};

/// SHA-256 of a high-entropy secret. 256 random bits need no salt or slow hash: a leaked
/// table of these yields no usable cookie or refresh token (SPEC §1).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SecretHash([u8; 32]);

impl SecretHash {
    pub fn of(secret: &[u8]) -> Self {
        Self(Sha256::digest(secret).into())
    }

    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A hash is not a secret, but a short prefix is enough to correlate in a debugger.
        write!(f, "SecretHash({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

/// 256 bits from the OS CSPRNG, base64url without padding (43 characters).
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

macro_rules! opaque_secret {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone)]
        pub struct $name(SecretString);

        impl $name {
            /// A fresh 256-bit random value.
            pub fn generate() -> Self {
                Self(SecretString::from(random_token()))
            }

            /// Wraps a value presented by a client.
            pub fn from_presented(value: &str) -> Self {
                Self(SecretString::from(value.to_owned()))
            }

            pub fn expose_secret(&self) -> &str {
                self.0.expose_secret()
            }

            /// What the store keeps and looks up by.
            pub fn to_hash(&self) -> SecretHash {
                SecretHash::of(self.expose_secret().as_bytes())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "([REDACTED])"))
            }
        }
    };
}

opaque_secret!(
    /// The value of the session cookie.
    SessionSecret
);
opaque_secret!(
    /// A refresh token; belongs to the family of one session.
    RefreshToken
);
opaque_secret!(
    /// An admin API key, shown once at creation.
    AdminSecret
);

opaque_secret!(
    /// A device credential (SPEC §2): the device cookie's value, or the password grant's
    /// `device_token`; see [`crate::guessing::Device`].
    DeviceCredential
);

impl DeviceCredential {
    pub(crate) fn from_sealed(value: String) -> Self {
        Self(SecretString::from(value))
    }
}

opaque_secret!(
    /// The token of a mailed link (recovery, verification): derived from the link's id under a
    /// key of the master key, so that nothing stored, not even the outbox, holds it.
    LinkToken
);

impl LinkToken {
    pub(crate) fn from_derived(value: String) -> Self {
        Self(SecretString::from(value))
    }
}

impl RefreshToken {
    /// Wraps a value derived by the core (the deterministic successor of a rotated token).
    pub(crate) fn from_derived(value: String) -> Self {
        Self(SecretString::from(value))
    }
}

/// A password as typed by the user. Never logged, never stored: only its argon2id hash is.
#[derive(Clone)]
pub struct Password(SecretString);

impl Password {
    pub fn new(value: String) -> Self {
        Self(SecretString::from(value))
    }

    pub fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }

    /// The Unicode NFKC form: what is hashed and checked, so that one password typed as
    /// composed or decomposed accents, or in full-width forms, is one password (NIST SP
    /// 800-63B §5.1.1.2).
    #[must_use]
    pub fn nfkc(&self) -> Password {
        use unicode_normalization::UnicodeNormalization as _;
        Self::new(self.expose_secret().nfkc().collect())
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password([REDACTED])")
    }
}
