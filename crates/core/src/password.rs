//! Password hashing: argon2id with the OWASP parameters (m = 19 456 KiB, t = 2, p = 1), run
//! off the async executor on a bounded pool so a burst of logins cannot stall verification.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use crate::error::AuthError;
use crate::secret::Password;

/// NIST SP 800-63B §5.1.1.2: at least 8 characters, allow at least 64 (we allow 1024, enough
/// for passphrases, short enough that hashing cost stays bounded), no composition rules.
pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_CHARS: usize = 1024;

pub fn check_policy(password: &Password) -> Result<(), AuthError> {
    let chars = password.expose_secret().chars().count();
    if (MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&chars) {
        Ok(())
    } else {
        Err(AuthError::WeakPassword)
    }
}

fn argon2() -> Result<Argon2<'static>, AuthError> {
    let params = Params::new(19_456, 2, 1, None).map_err(|e| AuthError::Key(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes and verifies on blocking threads, at most `permits` at a time: each hash holds
/// ~19 MiB and a core for tens of milliseconds, so an unbounded burst would exhaust both.
#[derive(Clone)]
pub struct PasswordHasher {
    permits: Arc<Semaphore>,
    /// A real hash of a random password: unknown emails are verified against it so that they
    /// take as long as a wrong password (no account enumeration by timing).
    dummy_hash: Arc<str>,
}

impl PasswordHasher {
    pub fn new(concurrency: usize) -> Result<Self, AuthError> {
        let dummy = crate::secret::SessionSecret::generate();
        let dummy_hash = hash_blocking(&Password::new(dummy.expose_secret().to_owned()))?;
        Ok(Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            dummy_hash: dummy_hash.into(),
        })
    }

    pub async fn hash(&self, password: Password) -> Result<String, AuthError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| AuthError::Key("hasher closed".into()))?;
        tokio::task::spawn_blocking(move || hash_blocking(&password))
            .await
            .map_err(|e| AuthError::Key(format!("hashing task failed: {e}")))?
    }

    /// `stored` is `None` for an unknown user: the dummy hash is checked instead and the
    /// answer is always `false`.
    pub async fn verify(
        &self,
        password: Password,
        stored: Option<String>,
    ) -> Result<bool, AuthError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| AuthError::Key("hasher closed".into()))?;
        let known = stored.is_some();
        let phc = stored.unwrap_or_else(|| self.dummy_hash.to_string());
        let matched = tokio::task::spawn_blocking(move || verify_blocking(&password, &phc))
            .await
            .map_err(|e| AuthError::Key(format!("hashing task failed: {e}")))?;
        Ok(known && matched)
    }
}

fn hash_blocking(password: &Password) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    argon2()?
        .hash_password(password.expose_secret().as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| AuthError::Key(e.to_string()))
}

fn verify_blocking(password: &Password, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    // Parameters come from the PHC string, so hashes made under older settings still verify.
    Argon2::default()
        .verify_password(password.expose_secret().as_bytes(), &parsed)
        .is_ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[tokio::test]
    async fn hash_is_argon2id_with_owasp_parameters_and_verifies() {
        let hasher = PasswordHasher::new(2).unwrap();
        let hash = hasher
            .hash(Password::new("correct horse".into()))
            .await
            .unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(hasher
            .verify(Password::new("correct horse".into()), Some(hash.clone()))
            .await
            .unwrap());
        assert!(!hasher
            .verify(Password::new("wrong horse".into()), Some(hash))
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn the_dummy_hash_costs_what_a_real_one_does() {
        let hasher = PasswordHasher::new(1).unwrap();
        let real = hasher
            .hash(Password::new("correct horse".into()))
            .await
            .unwrap();
        let params = |phc: &str| phc.rsplitn(3, '$').nth(2).unwrap().to_owned();
        assert_eq!(params(&hasher.dummy_hash), params(&real));
        assert_eq!(params(&real), "$argon2id$v=19$m=19456,t=2,p=1");
    }

    #[tokio::test]
    async fn unknown_user_never_verifies() {
        let hasher = PasswordHasher::new(1).unwrap();
        assert!(!hasher
            .verify(Password::new("anything".into()), None)
            .await
            .unwrap());
    }

    #[test]
    fn policy_counts_characters_not_bytes() {
        assert!(check_policy(&Password::new("1234567".into())).is_err());
        assert!(check_policy(&Password::new("ééééééé".into())).is_err()); // 7 chars, 14 bytes
        assert!(check_policy(&Password::new("12345678".into())).is_ok());
        assert!(check_policy(&Password::new("x".repeat(1024))).is_ok());
        assert!(check_policy(&Password::new("x".repeat(1025))).is_err());
    }
}
