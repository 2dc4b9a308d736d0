//! Users: sign-up and the administrators' user commands, password checks, roles.

use tracing::{info, warn};

use super::{DeviceInfo, Principal, Tessera};
use crate::error::AuthError;
use crate::guessing::Subject;
use crate::model::{Email, SessionId, Timestamp, User, UserId};
use crate::password::{self, check_policy, Verification};
use crate::secret::Password;
use crate::webhooks::{self, RevokeReason};

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
        self.create_user(email, password, Vec::new(), true).await
    }

    /// An operator's user (`tessera user add`): no verification mail is queued; the operator
    /// vouches for the address or sends a link later.
    pub async fn add_user(
        &self,
        email: &str,
        password: Password,
        roles: Vec<String>,
    ) -> Result<User, AuthError> {
        self.create_user(email, password, roles, false).await
    }

    /// Creates a user from a password, checked against the policy and hashed here.
    async fn create_user(
        &self,
        email: &str,
        password: Password,
        roles: Vec<String>,
        mail_verification: bool,
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
        self.insert_new_user(email, password_hash, roles, mail_verification)
            .await
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
        self.insert_new_user(email, password_hash.to_owned(), roles, false)
            .await
    }

    /// With `mail_verification`, the verification mail's job is queued in the same
    /// transaction, so a user never exists without it.
    async fn insert_new_user(
        &self,
        email: Email,
        password_hash: String,
        roles: Vec<String>,
        mail_verification: bool,
    ) -> Result<User, AuthError> {
        let now = Timestamp::now();
        let user = User {
            id: UserId::new(),
            email,
            password_hash,
            roles,
            created_at: now,
            tokens_valid_after: Timestamp::from_unix(0),
            email_verified_at: None,
        };
        let mut change = self.change(now).await?;
        match change.tx.insert_user(&user).await {
            Ok(()) => {}
            Err(crate::StoreError::Conflict(_)) => return Err(AuthError::EmailTaken),
            Err(e) => return Err(e.into()),
        }
        if mail_verification {
            let job = crate::mail::MailJob::Verification {
                user: user.id,
                link: crate::model::EmailTokenId::new(),
            };
            change.enqueue(&[job.message(now)]).await?;
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

    /// `POST /v1/password`: the caller proves the current password (under the guessing
    /// limits, see [`confirm_password`](Self::confirm_password)), then gets the new one as
    /// [`replace_password`](Self::replace_password) gives it, keeping the caller's session.
    /// The new password's policy is checked first, so a refused one costs no guessing slot.
    pub async fn change_password(
        &self,
        principal: &Principal,
        current_password: Password,
        new_password: Password,
        device: &DeviceInfo,
    ) -> Result<(), AuthError> {
        let user = self.signed_in_user(principal).await?;
        check_policy(&new_password, &user.email)?;
        self.confirm_password(&user, current_password, device)
            .await?;
        self.replace_password(user.id, new_password, Some(principal.session_id))
            .await
    }

    /// The caller's account; a principal whose user is gone is no longer signed in.
    async fn signed_in_user(&self, principal: &Principal) -> Result<User, AuthError> {
        self.store
            .find_user(principal.user_id)
            .await?
            .ok_or(AuthError::Unauthenticated)
    }

    /// Gives `user` a new password, the one step a password change and a recovery share: the
    /// password policy (`WeakPassword`), then in one transaction the new hash, every session
    /// of the user but `keep` revoked with its refresh family (logged and reported as
    /// `session.revoked`), the access-token epoch bumped so that no access token issued
    /// before works on any node, and `user.password_changed` queued. `keep: None` revokes
    /// every session (a recovery: whoever knew the old password is out). The kept session's
    /// cookie goes on working, as does its refresh family; its access tokens die by the epoch
    /// and the next refresh replaces them. `NotFound` for an unknown user.
    pub async fn replace_password(
        &self,
        user: UserId,
        new_password: Password,
        keep: Option<SessionId>,
    ) -> Result<(), AuthError> {
        let found = self
            .store
            .find_user(user)
            .await?
            .ok_or(AuthError::NotFound)?;
        check_policy(&new_password, &found.email)?;
        // Hashed before the transaction begins, as at sign-up: the store admits one writer at
        // a time, and argon2 takes tens of milliseconds.
        let password_hash = self.hasher.hash(new_password).await?;
        let now = Timestamp::now();
        let mut change = self.change(now).await?;
        let revoked = change
            .revoke_user_sessions(
                user,
                keep,
                &self.revocation_plan(RevokeReason::PasswordChanged),
            )
            .await?;
        if !change.tx.set_password_hash(user, &password_hash).await? {
            return Err(AuthError::NotFound);
        }
        change.bump_epoch(user).await?.ok_or(AuthError::NotFound)?;
        change
            .enqueue(&webhooks::password_changed(
                &self.config.webhooks,
                user,
                revoked.len(),
                now,
            ))
            .await?;
        self.commit(change).await?;
        info!(user = %user, sessions = revoked.len(), "password replaced");
        Ok(())
    }

    /// `DELETE /v1/users/me`: the caller proves the password (under the guessing limits, as
    /// a login), then the account goes as [`delete_user`](Self::delete_user) deletes it.
    pub async fn delete_own_account(
        &self,
        principal: &Principal,
        password: Password,
        device: &DeviceInfo,
    ) -> Result<(), AuthError> {
        let user = self.signed_in_user(principal).await?;
        self.confirm_password(&user, password, device).await?;
        self.delete_user(user.id).await
    }

    /// Deletes a user (their own request, an administrator's, `tessera user delete`). In one
    /// transaction: every session revoked and logged (so caches drop the cookies and refuse
    /// the access tokens at once), the epoch bumped and logged, the user deleted with their
    /// sessions and refresh families while a tombstone keeps that epoch (so a node that warms
    /// its cache later still refuses the access tokens until they expire), and `user.deleted`
    /// queued. The account's guessing tally is cleared after the commit. `NotFound` for an
    /// unknown user.
    pub async fn delete_user(&self, id: UserId) -> Result<(), AuthError> {
        let now = Timestamp::now();
        let mut change = self.change(now).await?;
        let user = change
            .tx
            .user_for_update(id)
            .await?
            .ok_or(AuthError::NotFound)?;
        let revoked = change
            .revoke_user_sessions(id, None, &self.revocation_plan(RevokeReason::UserDeleted))
            .await?;
        change.bump_epoch(id).await?.ok_or(AuthError::NotFound)?;
        if !change.tx.delete_user(id, now).await? {
            return Err(AuthError::NotFound);
        }
        change
            .enqueue(&webhooks::user_deleted(
                &self.config.webhooks,
                id,
                revoked.len(),
                now,
            ))
            .await?;
        self.commit(change).await?;
        info!(user = %id, sessions = revoked.len(), "user deleted");
        // Counters are not in the transaction (they may live in Redis): a tally left behind
        // expires with its window, and only ever slows sign-ins to a new account of the
        // same address.
        if let Err(e) = self
            .guessing()
            .clear_tally(&Subject::Account(user.email.as_str()).key())
            .await
        {
            warn!(user = %id, error = %e, "could not clear the deleted account's guessing tally");
        }
        Ok(())
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
