//! Password hashing: argon2id with the OWASP parameters (m = 19 456 KiB, t = 2, p = 1), run
//! off the async executor on a bounded pool so a burst of logins cannot stall verification.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use zeroize::Zeroizing;

use crate::common_passwords;
use crate::error::AuthError;
use crate::model::Email;
use crate::secret::Password;

/// NIST SP 800-63B §5.1.1.2: at least 8 characters, allow at least 64 (we allow 1024, enough
/// for passphrases, short enough that hashing cost stays bounded), no composition rules.
pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_CHARS: usize = 1024;

/// A local part this short (`ada@…`) is too likely to occur by chance in a good password.
const MIN_LOCAL_PART_CHARS: usize = 4;

/// The rule a refused password breaks; its text is the message the user reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Weakness {
    #[error("password must be 8 to 1024 characters (counted after Unicode NFKC normalisation)")]
    Length,
    #[error(
        "password is among the 100 000 most common or breached passwords (letter case aside); \
         choose another"
    )]
    Common,
    #[error("password must not contain the part of the email address before the @")]
    ContainsEmail,
}

/// NIST SP 800-63B §5.1.1.2 for a password about to be set for `email`: the length rule, the
/// list of common and breached passwords, and the account's own name; checked on the NFKC
/// form that is hashed, case-insensitively.
pub fn check_policy(password: &Password, email: &Email) -> Result<(), AuthError> {
    let normalised = password.nfkc();
    let chars = normalised.expose_secret().chars().count();
    if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&chars) {
        return Err(AuthError::WeakPassword(Weakness::Length));
    }
    let folded = Zeroizing::new(normalised.expose_secret().to_lowercase());
    let list = common_passwords::list().map_err(|e| AuthError::Key(e.to_owned()))?;
    if list.contains(&folded) {
        return Err(AuthError::WeakPassword(Weakness::Common));
    }
    let local = email.local_part();
    if local.chars().count() >= MIN_LOCAL_PART_CHARS && folded.contains(local) {
        return Err(AuthError::WeakPassword(Weakness::ContainsEmail));
    }
    Ok(())
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

    /// Hashes the NFKC form, the one every later check compares first.
    pub async fn hash(&self, password: Password) -> Result<String, AuthError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| AuthError::Key("hasher closed".into()))?;
        tokio::task::spawn_blocking(move || hash_blocking(&password.nfkc()))
            .await
            .map_err(|e| AuthError::Key(format!("hashing task failed: {e}")))?
    }

    /// Whether `password` matches; see [`check`](Self::check).
    pub async fn verify(
        &self,
        password: Password,
        stored: Option<String>,
    ) -> Result<bool, AuthError> {
        Ok(self.check(password, stored).await?.matched())
    }

    /// Checks `password` against `stored`, which is `None` for an unknown user: the dummy hash
    /// is checked instead and the answer is always a mismatch.
    pub async fn check(
        &self,
        password: Password,
        stored: Option<String>,
    ) -> Result<Verification, AuthError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| AuthError::Key("hasher closed".into()))?;
        let known = stored.is_some();
        let phc = stored.unwrap_or_else(|| self.dummy_hash.to_string());
        let outcome = tokio::task::spawn_blocking(move || check_blocking(&password, &phc))
            .await
            .map_err(|e| AuthError::Key(format!("hashing task failed: {e}")))??;
        Ok(if known {
            outcome
        } else {
            Verification::Mismatch
        })
    }
}

/// What checking a password against a stored hash found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verification {
    Mismatch,
    Match,
    /// Only the password as typed matched: the hash was made before passwords were put in
    /// NFKC form. `rehashed` is the hash of the NFKC form, to store in its place so that every
    /// form of the password matches from now on.
    MatchedAsTyped {
        rehashed: String,
    },
}

impl Verification {
    pub fn matched(&self) -> bool {
        !matches!(self, Self::Mismatch)
    }
}

fn check_blocking(password: &Password, phc: &str) -> Result<Verification, AuthError> {
    let normalised = password.nfkc();
    if verify_blocking(&normalised, phc) {
        return Ok(Verification::Match);
    }
    // The form as typed is tried whenever it differs, for known and unknown users alike, so
    // the second verification's cost says nothing about whether the account exists.
    if normalised.expose_secret() != password.expose_secret() && verify_blocking(password, phc) {
        return Ok(Verification::MatchedAsTyped {
            rehashed: hash_blocking(&normalised)?,
        });
    }
    Ok(Verification::Mismatch)
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

    fn email(address: &str) -> Email {
        Email::parse(address).unwrap()
    }

    fn weakness(password: &str, address: &str) -> Option<Weakness> {
        match check_policy(&Password::new(password.into()), &email(address)) {
            Ok(()) => None,
            Err(AuthError::WeakPassword(weakness)) => Some(weakness),
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn policy_counts_characters_after_nfkc_not_bytes() {
        let at = "someone@example.com";
        assert_eq!(weakness("1234567", at), Some(Weakness::Length));
        assert_eq!(weakness("ééééééé", at), Some(Weakness::Length)); // 7 chars, 14 bytes
                                                                     // Eight characters as typed, seven once the decomposed accent is composed.
        assert_eq!(weakness("zq8vwxk\u{e9}", at), None);
        assert_eq!(weakness("zq8vwxke\u{301}", at), None);
        assert_eq!(weakness("zq8vwxe\u{301}", at), Some(Weakness::Length));
        assert_eq!(weakness("zq8vwx7k", at), None);
        assert_eq!(weakness(&"x".repeat(1024), at), None);
        assert_eq!(weakness(&"x".repeat(1025), at), Some(Weakness::Length));
        // U+FB03 (the "ffi" ligature) is three characters in NFKC.
        assert_eq!(
            weakness(&"\u{fb03}".repeat(342), at),
            Some(Weakness::Length)
        );
    }

    #[test]
    fn policy_refuses_common_passwords_whatever_their_case_or_width() {
        let at = "someone@example.com";
        for common in [
            "password",
            "PassWord",
            "iloveyou1",
            "QWERTYUIOP",
            "ｐａｓｓｗｏｒｄ",
        ] {
            assert_eq!(weakness(common, at), Some(Weakness::Common), "{common}");
        }
        assert_eq!(weakness("correct horse battery", at), None);
    }

    #[test]
    fn policy_refuses_the_local_part_of_four_characters_or_more() {
        assert_eq!(
            weakness("my name is Margaret!", "margaret@example.com"),
            Some(Weakness::ContainsEmail)
        );
        assert_eq!(
            weakness("xx-JOHN-xx-1999", "John@example.com"),
            Some(Weakness::ContainsEmail)
        );
        // Three characters could occur in a good password by chance.
        assert_eq!(weakness("adamant zebra 77", "ada@example.com"), None);
        assert_eq!(weakness("correct horse battery", "john@example.com"), None);
        // The domain is not the local part.
        assert_eq!(weakness("example.com rocks", "john@example.com"), None);
    }

    #[test]
    fn the_readme_examples_pass_the_policy() {
        let readme = include_str!("../../../README.md");
        for (address, password) in [
            ("ada@example.com", "correct horse battery"),
            ("ops@example.com", "a long passphrase"),
        ] {
            assert!(
                readme.contains(password),
                "{password} is no longer in the README"
            );
            assert_eq!(weakness(password, address), None, "{password}");
        }
    }

    #[test]
    fn each_rule_has_its_own_message() {
        let messages = [Weakness::Length, Weakness::Common, Weakness::ContainsEmail]
            .map(|w| AuthError::WeakPassword(w).to_string());
        assert!(messages[0].contains("8 to 1024"), "{}", messages[0]);
        assert!(messages[1].contains("common"), "{}", messages[1]);
        assert!(messages[2].contains("email"), "{}", messages[2]);
    }

    #[tokio::test]
    async fn composed_and_decomposed_forms_are_one_password() {
        let hasher = PasswordHasher::new(2).unwrap();
        let composed = Password::new("cr\u{e8}me br\u{fb}l\u{e9}e".into());
        let decomposed = Password::new("cre\u{300}me bru\u{302}le\u{301}e".into());
        assert_ne!(composed.expose_secret(), decomposed.expose_secret());
        let hash = hasher.hash(decomposed.clone()).await.unwrap();
        assert_eq!(
            hasher
                .check(composed.clone(), Some(hash.clone()))
                .await
                .unwrap(),
            Verification::Match
        );
        assert_eq!(
            hasher.check(decomposed, Some(hash)).await.unwrap(),
            Verification::Match
        );
        let hash = hasher.hash(composed.clone()).await.unwrap();
        assert_eq!(
            hasher.check(composed, Some(hash)).await.unwrap(),
            Verification::Match
        );
    }

    #[tokio::test]
    async fn a_hash_of_the_form_as_typed_matches_and_is_rehashed_in_nfkc() {
        let hasher = PasswordHasher::new(2).unwrap();
        let typed = Password::new("cre\u{300}me bru\u{302}le\u{301}e".into());
        let composed = Password::new("cr\u{e8}me br\u{fb}l\u{e9}e".into());
        // As hashes were made before normalisation: from the bytes typed.
        let legacy = hash_blocking(&typed).unwrap();
        assert!(!verify_blocking(&composed, &legacy));
        let Verification::MatchedAsTyped { rehashed } = hasher
            .check(typed.clone(), Some(legacy.clone()))
            .await
            .unwrap()
        else {
            panic!("the form as typed should match");
        };
        assert!(verify_blocking(&composed, &rehashed));
        assert!(rehashed.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        // A wrong password, or an unknown user, never matches in either form.
        let wrong = Password::new("cre\u{300}me bru\u{302}le\u{301}e!".into());
        assert_eq!(
            hasher.check(wrong, Some(legacy)).await.unwrap(),
            Verification::Mismatch
        );
        assert_eq!(
            hasher.check(typed, None).await.unwrap(),
            Verification::Mismatch
        );
    }
}
