//! Users: sign-up and the administrators' user commands, password checks, roles.

use tracing::{info, warn};

use super::Tessera;
use crate::error::AuthError;
use crate::model::{Email, Timestamp, User, UserId};
use crate::password::{self, check_policy, Verification};
use crate::secret::Password;
use crate::webhooks;

impl Tessera {
    /// Signs up a user from `address`, counted against SPEC §2's `signup_ip_max` once the
    /// request is well-formed (the CLI's `add_user` is not limited).
    pub async fn sign_up(
        &self,
        email: &str,
        password: Password,
        address: Option<std::net::IpAddr>,
    ) -> Result<User, AuthError> {
        let parsed = Email::parse(email).ok_or(AuthError::InvalidEmail)?;
        check_policy(&password, &parsed)?;
        self.admit_sign_up(address).await?;
        self.add_user(email, password, Vec::new()).await
    }

    pub async fn add_user(
        &self,
        email: &str,
        password: Password,
        roles: Vec<String>,
    ) -> Result<User, AuthError> {
        let email = Email::parse(email).ok_or(AuthError::InvalidEmail)?;
        check_policy(&password, &email)?;
        let roles = normalise_roles(roles)?;
        if self.store.find_user_by_email(&email).await?.is_some() {
            return Err(AuthError::EmailTaken);
        }
        // Hashed before the transaction begins: argon2 takes tens of milliseconds, and the
        // store admits one writer at a time.
        let password_hash = self.hasher.hash(password).await?;
        self.insert_new_user(email, password_hash, roles).await
    }

    /// Creates a user whose password hash was made elsewhere: accounts moved from another
    /// system keep their passwords, as Kratos and Keycloak allow on import. The hash must be
    /// an argon2id PHC string within [`password::check_imported_hash`]'s bounds; the password
    /// itself is unknown here, so the strength policy cannot apply.
    pub async fn import_user(
        &self,
        email: &str,
        password_hash: &str,
        roles: Vec<String>,
    ) -> Result<User, AuthError> {
        let email = Email::parse(email).ok_or(AuthError::InvalidEmail)?;
        password::check_imported_hash(password_hash)?;
        let roles = normalise_roles(roles)?;
        if self.store.find_user_by_email(&email).await?.is_some() {
            return Err(AuthError::EmailTaken);
        }
        self.insert_new_user(email, password_hash.to_owned(), roles)
            .await
    }

    async fn insert_new_user(
        &self,
        email: Email,
        password_hash: String,
        roles: Vec<String>,
    ) -> Result<User, AuthError> {
        let now = Timestamp::now();
        let user = User {
            id: UserId::new(),
            email,
            password_hash,
            roles,
            created_at: now,
            tokens_valid_after: Timestamp::from_unix(0),
        };
        let mut change = self.change(now).await?;
        match change.tx.insert_user(&user).await {
            Ok(()) => {}
            Err(crate::StoreError::Conflict(_)) => return Err(AuthError::EmailTaken),
            Err(e) => return Err(e.into()),
        }
        self.commit(change).await?;
        info!(user = %user.id, "user created");
        Ok(user)
    }

    pub async fn user(&self, id: UserId) -> Result<User, AuthError> {
        self.store.find_user(id).await?.ok_or(AuthError::NotFound)
    }

    pub async fn user_by_email(&self, email: &str) -> Result<User, AuthError> {
        let email = Email::parse(email).ok_or(AuthError::NotFound)?;
        self.store
            .find_user_by_email(&email)
            .await?
            .ok_or(AuthError::NotFound)
    }

    /// Every user, oldest first.
    pub async fn users(&self) -> Result<Vec<User>, AuthError> {
        Ok(self.store.list_users().await?)
    }

    /// Replaces a user's roles and bumps their access-token epoch: access tokens carrying the
    /// old roles stop verifying, while the refresh family stays valid so the next refresh
    /// carries the new roles and the user stays signed in (SPEC §3). One transaction: the
    /// roles, the epoch, its log entry and the `user.roles_changed` message.
    pub async fn set_roles(&self, id: UserId, roles: Vec<String>) -> Result<User, AuthError> {
        let roles = normalise_roles(roles)?;
        let now = Timestamp::now();
        let mut change = self.change(now).await?;
        let mut user = change
            .tx
            .user_for_update(id)
            .await?
            .ok_or(AuthError::NotFound)?;
        if user.roles != roles {
            change.tx.set_roles(id, &roles).await?;
            change
                .enqueue(&webhooks::roles_changed(
                    &self.config.webhooks,
                    id,
                    &roles,
                    now,
                ))
                .await?;
        }
        let epoch = change.bump_epoch(id).await?.ok_or(AuthError::NotFound)?;
        self.commit(change).await?;
        user.roles = roles;
        user.tokens_valid_after = epoch;
        Ok(user)
    }

    /// Checks a password against `user`, the account the login named (`None` when there is
    /// none); an unknown account and a wrong password fail alike and take the same time.
    pub(super) async fn check_password(
        &self,
        user: Option<User>,
        password: Password,
    ) -> Result<User, AuthError> {
        let stored = user.as_ref().map(|u| u.password_hash.clone());
        match self.hasher.check(password, stored).await? {
            Verification::Mismatch => Err(AuthError::InvalidCredentials),
            Verification::Match => user.ok_or(AuthError::InvalidCredentials),
            Verification::MatchedAsTyped { rehashed } => {
                let mut user = user.ok_or(AuthError::InvalidCredentials)?;
                if self.store_rehashed(&user, &rehashed).await {
                    user.password_hash = rehashed;
                }
                Ok(user)
            }
        }
    }

    /// Replaces a hash made from the password as typed (before passwords were normalised)
    /// with the hash of its NFKC form, unless the password changed since it was read. The
    /// sign-in it comes from succeeds either way: a failure here is logged, and the next
    /// sign-in tries again.
    async fn store_rehashed(&self, user: &User, rehashed: &str) -> bool {
        let stored = async {
            let mut tx = self.store.begin().await?;
            let current = tx.user_for_update(user.id).await?;
            if current.is_none_or(|u| u.password_hash != user.password_hash) {
                return Ok(false);
            }
            let set = tx.set_password_hash(user.id, rehashed).await?;
            tx.commit().await?;
            Ok::<_, crate::StoreError>(set)
        }
        .await;
        match stored {
            Ok(set) => set,
            Err(e) => {
                warn!(user = %user.id, error = %e, "could not store the normalised password hash");
                false
            }
        }
    }
}

/// Trims, sorts and de-duplicates roles, and refuses names that could not travel as a
/// comma-separated `X-Auth-Roles` header value: 1 to 128 of `A-Z a-z 0-9 . _ : -`, at most 64.
fn normalise_roles(roles: Vec<String>) -> Result<Vec<String>, AuthError> {
    let mut roles: Vec<String> = roles
        .into_iter()
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
        .collect();
    let valid = |r: &String| {
        r.len() <= 128
            && r.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
    };
    if roles.len() > 64 || !roles.iter().all(valid) {
        return Err(AuthError::InvalidRoles);
    }
    roles.sort();
    roles.dedup();
    Ok(roles)
}
