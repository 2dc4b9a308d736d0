//! Recovery by email and email verification (SPEC §3 "Account lifecycle"): the requests
//! that queue mail jobs, the sender's side that turns a job into a mail, and the completion
//! of the mailed links.
//!
//! A link's token is `HMAC-SHA256(mail key, link id)`, the mail key derived from the master
//! key: the outbox holds the id, the store the token's SHA-256, and only the mail (and the
//! operator's `tessera user recovery-link`) ever holds the token itself.

use std::net::IpAddr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::Mac as _;
use tracing::{debug, info};

use super::{Principal, Tessera};
use crate::error::AuthError;
use crate::mac::hmac_sha256;
use crate::mail::{self, Mail, MailJob, RECOVERY_LIFETIME, VERIFICATION_LIFETIME};
use crate::model::{Email, EmailToken, EmailTokenId, Timestamp, TokenPurpose, User};
use crate::secret::{LinkToken, Password};
use crate::webhooks::OutboxMessage;

impl Tessera {
    /// `POST /v1/recovery`: counts the request against the client address's limit, then
    /// queues a recovery job for `email` whether or not an account has it, so the answer and
    /// its timing say nothing about the address. The sender looks the account up.
    pub async fn request_recovery(
        &self,
        email: &str,
        address: Option<IpAddr>,
    ) -> Result<(), AuthError> {
        let email = Email::parse(email).ok_or(AuthError::InvalidEmail)?;
        self.admit_recovery_request(address).await?;
        let job = MailJob::Recovery {
            email: email.as_str().to_owned(),
            link: EmailTokenId::new(),
        };
        self.queue_mail(&job).await
    }

    /// `POST /v1/verification`: mails the caller's verification link again (a new link,
    /// superseding the older ones). Counted against the account's `recovery_max`; past it,
    /// nothing is queued and the answer is the same.
    pub async fn resend_verification(&self, principal: &Principal) -> Result<(), AuthError> {
        let user = self
            .store
            .find_user(principal.user_id)
            .await?
            .ok_or(AuthError::Unauthenticated)?;
        if user.email_verified() {
            return Ok(());
        }
        if !self.admit_mail_to(user.email.as_str()).await? {
            info!(user = %user.id, "verification mail not sent: too many this hour");
            return Ok(());
        }
        let job = MailJob::Verification {
            user: user.id,
            link: EmailTokenId::new(),
        };
        self.queue_mail(&job).await
    }

    async fn queue_mail(&self, job: &MailJob) -> Result<(), AuthError> {
        let now = Timestamp::now();
        let mut change = self.change(now).await?;
        change.enqueue(&[job.message(now)]).await?;
        self.commit(change).await
    }

    /// The sender's side of a mail job: the mail to send now, or `None` when there is
    /// nothing to send (no such account, the address already verified, past the account's
    /// `recovery_max`, the link since used or superseded). On the first attempt the link's
    /// token is stored, superseding older ones; a retry finds it and sends the same link, so
    /// a mail server that fails for a while loses nothing and mints nothing twice.
    pub async fn prepare_mail(&self, message: &OutboxMessage) -> Result<Option<Mail>, AuthError> {
        let Some(job) = MailJob::of(message) else {
            return Ok(None);
        };
        let user = match &job {
            MailJob::Recovery { email, .. } => match Email::parse(email) {
                Some(email) => self.store.find_user_by_email(&email).await?,
                None => None,
            },
            MailJob::Verification { user, .. } => self.store.find_user(*user).await?,
        };
        let Some(user) = user else {
            debug!(message = %message.id, "mail job for no account; nothing sent");
            return Ok(None);
        };
        let purpose = job.purpose();
        if purpose == TokenPurpose::Verification && user.email_verified() {
            return Ok(None);
        }
        let link = job.link();
        let now = Timestamp::now();
        // A first attempt counts against the account's limit; a retry of a job already
        // admitted does not.
        let stored = {
            let mut tx = self.store.begin().await?;
            tx.email_token_by_id_for_update(link).await?
        };
        let lifetime = match purpose {
            TokenPurpose::Recovery => RECOVERY_LIFETIME,
            TokenPurpose::Verification => VERIFICATION_LIFETIME,
        };
        match stored {
            Some(token) if token.user_id == user.id && token.is_live(now) => {}
            Some(_) => return Ok(None),
            None => {
                if purpose == TokenPurpose::Recovery
                    && !self.admit_mail_to(user.email.as_str()).await?
                {
                    info!(user = %user.id, "recovery mail not sent: too many this hour");
                    return Ok(None);
                }
                if !self.store_link(&user, link, purpose, now, lifetime).await? {
                    return Ok(None);
                }
            }
        }
        let url = self.link_url(purpose, &self.link_token(link));
        Ok(Some(mail::compose(
            purpose,
            user.email.as_str(),
            &url,
            lifetime,
        )))
    }

    /// Stores the token of link `id` for `user` (the user's row first, as every change of a
    /// user's state takes it, so two links for one user supersede in order); whether it was
    /// stored now.
    async fn store_link(
        &self,
        user: &User,
        id: EmailTokenId,
        purpose: TokenPurpose,
        now: Timestamp,
        lifetime: std::time::Duration,
    ) -> Result<bool, AuthError> {
        let mut tx = self.store.begin().await?;
        if tx.user_for_update(user.id).await?.is_none() {
            return Ok(false);
        }
        let stored = tx
            .insert_email_token(&EmailToken {
                id,
                user_id: user.id,
                purpose,
                hash: self.link_token(id).to_hash(),
                created_at: now,
                expires_at: now.saturating_add(lifetime),
                spent_at: None,
            })
            .await?;
        tx.commit().await?;
        Ok(stored)
    }

    /// `tessera user recovery-link EMAIL`: a recovery link for an operator to hand over, for
    /// installations without mail. It supersedes the account's earlier recovery links.
    pub async fn recovery_link(&self, email: &str) -> Result<String, AuthError> {
        let user = self.user_by_email(email).await?;
        let id = EmailTokenId::new();
        let now = Timestamp::now();
        if !self
            .store_link(&user, id, TokenPurpose::Recovery, now, RECOVERY_LIFETIME)
            .await?
        {
            return Err(AuthError::NotFound);
        }
        info!(user = %user.id, "recovery link made by an operator");
        Ok(self.link_url(TokenPurpose::Recovery, &self.link_token(id)))
    }

    /// `POST /v1/recovery/complete`: sets a new password with a recovery link's token. A weak
    /// password is refused before the token is spent; then the token is spent (single use,
    /// also against a racing second use) and the password replaced as a change of password
    /// does it, with every session and refresh family revoked and the epoch bumped.
    pub async fn complete_recovery(
        &self,
        token: &str,
        new_password: Password,
    ) -> Result<(), AuthError> {
        let token = LinkToken::from_presented(token);
        let now = Timestamp::now();
        let link = self.live_link(&token, TokenPurpose::Recovery, now).await?;
        let user = self
            .store
            .find_user(link.user_id)
            .await?
            .ok_or(AuthError::InvalidToken)?;
        crate::password::check_policy(&new_password, &user.email)?;
        let mut tx = self.store.begin().await?;
        if !tx.spend_email_token(link.id, now).await? {
            return Err(AuthError::InvalidToken);
        }
        // Following the link proves the address too.
        tx.set_email_verified(user.id, now).await?;
        tx.commit().await?;
        self.replace_password(user.id, new_password, None).await?;
        info!(user = %user.id, "password reset by a recovery link");
        Ok(())
    }

    /// `POST /v1/verification/complete`: marks the address verified with a verification
    /// link's token, spending it.
    pub async fn complete_verification(&self, token: &str) -> Result<(), AuthError> {
        let token = LinkToken::from_presented(token);
        let now = Timestamp::now();
        let link = self
            .live_link(&token, TokenPurpose::Verification, now)
            .await?;
        let mut tx = self.store.begin().await?;
        if !tx.spend_email_token(link.id, now).await?
            || !tx.set_email_verified(link.user_id, now).await?
        {
            return Err(AuthError::InvalidToken);
        }
        tx.commit().await?;
        info!(user = %link.user_id, "email address verified");
        Ok(())
    }

    /// Whether a link's token is live for `purpose` at `now`, without spending it.
    pub async fn check_link(&self, token: &str, purpose: TokenPurpose) -> Result<(), AuthError> {
        let token = LinkToken::from_presented(token);
        self.live_link(&token, purpose, Timestamp::now())
            .await
            .map(|_| ())
    }

    /// The link if it is live for `purpose` at `now`. A plain read: the completions spend it
    /// in a transaction, and only one of two racing spends succeeds.
    async fn live_link(
        &self,
        token: &LinkToken,
        purpose: TokenPurpose,
        now: Timestamp,
    ) -> Result<EmailToken, AuthError> {
        self.store
            .find_email_token(&token.to_hash())
            .await?
            .filter(|link| link.purpose == purpose && link.is_live(now))
            .ok_or(AuthError::InvalidToken)
    }

    /// `HMAC-SHA256(mail key, purpose-free link id)`, 256 bits as base64url.
    fn link_token(&self, id: EmailTokenId) -> LinkToken {
        let mut mac = hmac_sha256(&*self.mail_key);
        mac.update(id.as_uuid().as_bytes());
        LinkToken::from_derived(URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    fn link_url(&self, purpose: TokenPurpose, token: &LinkToken) -> String {
        let page = match purpose {
            TokenPurpose::Recovery => "recovery",
            TokenPurpose::Verification => "verify",
        };
        format!(
            "{}/ui/{page}?token={}",
            self.config.mail.public_url,
            token.expose_secret()
        )
    }

    /// SPEC §2 `require_verified_email`: refuses a sign-in of an unverified account, after
    /// its password was checked, so the refusal tells nothing to someone without it.
    pub(super) fn require_verified(&self, user: &User) -> Result<(), AuthError> {
        if self.config.mail.require_verified_email && !user.email_verified() {
            info!(user = %user.id, "sign-in refused: email not verified");
            return Err(AuthError::EmailNotVerified);
        }
        Ok(())
    }
}
