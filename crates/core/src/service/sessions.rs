//! Cookie sessions: sign-in, CSRF, sign-out, and the devices a user is signed in on.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::Mac as _;
use tracing::info;

use super::{CookieLogin, CookieSession, DeviceInfo, Principal, Tessera};
use crate::error::AuthError;
use crate::mac::{hmac_sha256, HmacSha256};
use crate::model::{Session, SessionId, Timestamp, User, UserId, Via};
use crate::secret::{Password, SecretHash, SessionSecret};
use crate::text::truncate;
use crate::webhooks::{self, RevokeReason};

impl Tessera {
    /// Signs in a browser. Always a new session id (fixation defence); a session cookie sent
    /// along is revoked, so a planted or stale cookie dies here. The old session's revocation
    /// and the new session commit together.
    pub async fn login(
        &self,
        email: &str,
        password: Password,
        device: DeviceInfo,
        previous: Option<&SessionSecret>,
    ) -> Result<CookieLogin, AuthError> {
        let (user, device_credential) = self.check_credentials(email, password, &device).await?;
        self.require_verified(&user)?;
        let CookieSession {
            session,
            secret,
            csrf_token,
        } = self.start_cookie_session(&user, device, previous).await?;
        Ok(CookieLogin {
            user,
            session,
            secret,
            csrf_token,
            device: device_credential,
        })
    }

    /// The second half of a sign-in, once the caller has proven who `user` is: a new cookie
    /// session, with a session cookie sent along revoked in the same transaction. Public for
    /// callers that establish identity another way than a password (and for `tessera bench`,
    /// which opens sessions by the hundred thousand, where argon2 would take hours).
    pub async fn start_cookie_session(
        &self,
        user: &User,
        device: DeviceInfo,
        previous: Option<&SessionSecret>,
    ) -> Result<CookieSession, AuthError> {
        let now = Timestamp::now();
        let previous = match previous {
            Some(previous) => {
                self.store
                    .find_live_session_by_hash(&previous.to_hash(), now)
                    .await?
            }
            None => None,
        };
        let secret = SessionSecret::generate();
        let session = self.new_session(user, Some(secret.to_hash()), device, now);
        let mut change = self.change(now).await?;
        if let Some(old) = previous {
            change
                .revoke_session(
                    old.id,
                    old.user_id,
                    &self.revocation_plan(RevokeReason::ReplacedByLogin),
                )
                .await?;
        }
        self.open_session(&mut change, &session).await?;
        self.commit(change).await?;
        info!(user = %user.id, session = %session.id, via = "cookie", "signed in");
        let csrf_token = self.csrf_token(session.id);
        Ok(CookieSession {
            session,
            secret,
            csrf_token,
        })
    }

    /// A new device session: a cookie session when `secret_hash` is given (idle and absolute
    /// timeouts from the config), else a refresh family, which has one absolute lifetime,
    /// `refresh_token_ttl`, that is also its idle bound.
    pub(super) fn new_session(
        &self,
        user: &User,
        secret_hash: Option<SecretHash>,
        device: DeviceInfo,
        now: Timestamp,
    ) -> Session {
        let (via, idle, lifetime) = match secret_hash {
            Some(_) => (
                Via::Cookie,
                self.config.session_idle_timeout,
                self.config.session_absolute_timeout,
            ),
            None => (
                Via::Token,
                self.config.refresh_token_ttl,
                self.config.refresh_token_ttl,
            ),
        };
        Session {
            id: SessionId::new(),
            user_id: user.id,
            secret_hash,
            via,
            created_at: now,
            last_seen_at: now,
            idle_timeout: idle,
            expires_at: now.saturating_add(lifetime),
            user_agent: device.user_agent.map(|ua| truncate(ua, 512)),
            ip: device.address.map(|a| a.to_string()),
            revoked_at: None,
        }
    }

    /// Records a new session and its `session.created` message in `change`.
    pub(super) async fn open_session(
        &self,
        change: &mut super::Change,
        session: &Session,
    ) -> Result<(), AuthError> {
        change.tx.insert_session(session).await?;
        change
            .enqueue(&webhooks::session_created(&self.config.webhooks, session))
            .await
    }

    /// The session-bound CSRF token: HMAC-SHA256 of the session id under a server secret, so
    /// it is useless for any other session and needs no storage.
    pub fn csrf_token(&self, session: SessionId) -> String {
        URL_SAFE_NO_PAD.encode(self.csrf_mac(session).finalize().into_bytes())
    }

    /// Constant-time check of a presented CSRF token.
    pub fn check_csrf(&self, session: SessionId, presented: &str) -> bool {
        let Ok(bytes) = URL_SAFE_NO_PAD.decode(presented.trim()) else {
            return false;
        };
        self.csrf_mac(session).verify_slice(&bytes).is_ok()
    }

    fn csrf_mac(&self, session: SessionId) -> HmacSha256 {
        let mut mac = hmac_sha256(&*self.csrf_key);
        mac.update(session.as_uuid().as_bytes());
        mac
    }

    // ----- sign-out ----------------------------------------------------------------------

    /// Revokes the caller's session (its cookie, or its refresh family and access tokens).
    pub async fn logout(&self, principal: &Principal) -> Result<(), AuthError> {
        let mut change = self.change(Timestamp::now()).await?;
        change
            .revoke_session(
                principal.session_id,
                principal.user_id,
                &self.revocation_plan(RevokeReason::SignedOut),
            )
            .await?;
        self.commit(change).await?;
        info!(user = %principal.user_id, session = %principal.session_id, "signed out");
        Ok(())
    }

    /// Revokes every session of the user and bumps the epoch so no access token outlives it:
    /// the sessions, the epoch, their log entries and their messages in one transaction.
    pub async fn logout_everywhere(&self, user: UserId) -> Result<u64, AuthError> {
        let now = Timestamp::now();
        let mut change = self.change(now).await?;
        let revoked = change
            .revoke_user_sessions(
                user,
                None,
                &self.revocation_plan(RevokeReason::SignedOutEverywhere),
            )
            .await?;
        if change.bump_epoch(user).await?.is_some() {
            change
                .enqueue(&webhooks::signed_out_everywhere(
                    &self.config.webhooks,
                    user,
                    revoked.len(),
                    now,
                ))
                .await?;
        }
        self.commit(change).await?;
        info!(user = %user, sessions = revoked.len(), "signed out everywhere");
        Ok(revoked.len() as u64)
    }

    // ----- devices -----------------------------------------------------------------------

    /// The caller's session record, from the principal or else the store.
    pub async fn session_of(&self, principal: &Principal) -> Result<Session, AuthError> {
        if let Some(session) = &principal.session {
            return Ok(session.clone());
        }
        self.store
            .find_live_session(principal.session_id, Timestamp::now())
            .await?
            .ok_or(AuthError::Unauthenticated)
    }

    pub async fn sessions_of(&self, user: UserId) -> Result<Vec<Session>, AuthError> {
        Ok(self
            .store
            .list_live_sessions(user, Timestamp::now())
            .await?)
    }

    /// Signs one of the user's devices out. `NotFound` alike for an unknown session, one that
    /// is no longer live, and someone else's, so the answer leaks nothing about other users'
    /// sessions.
    pub async fn revoke_own_session(
        &self,
        user: UserId,
        session: SessionId,
    ) -> Result<(), AuthError> {
        let now = Timestamp::now();
        let mut change = self.change(now).await?;
        match change.tx.session_for_update(session).await? {
            Some(found) if found.user_id == user && found.is_live(now) => {
                change
                    .revoke_session(
                        session,
                        user,
                        &self.revocation_plan(RevokeReason::SignedOutFromAnotherDevice),
                    )
                    .await?;
                self.commit(change).await?;
                info!(user = %user, session = %session, "device signed out");
                Ok(())
            }
            _ => Err(AuthError::NotFound),
        }
    }

    /// Signs out every device of the user but the caller's own.
    pub async fn revoke_other_sessions(&self, principal: &Principal) -> Result<u64, AuthError> {
        let mut change = self.change(Timestamp::now()).await?;
        let revoked = change
            .revoke_user_sessions(
                principal.user_id,
                Some(principal.session_id),
                &self.revocation_plan(RevokeReason::SignedOutFromAnotherDevice),
            )
            .await?;
        self.commit(change).await?;
        info!(user = %principal.user_id, sessions = revoked.len(), "other devices signed out");
        Ok(revoked.len() as u64)
    }

    /// Admin: revoke one session by id, whoever owns it; `NotFound` if it is not live.
    pub async fn revoke_session(&self, session: SessionId) -> Result<(), AuthError> {
        let now = Timestamp::now();
        let mut change = self.change(now).await?;
        let found = change
            .tx
            .session_for_update(session)
            .await?
            .filter(|s| s.is_live(now))
            .ok_or(AuthError::NotFound)?;
        change
            .revoke_session(
                session,
                found.user_id,
                &self.revocation_plan(RevokeReason::Administrator),
            )
            .await?;
        self.commit(change).await?;
        info!(session = %session, "session revoked by an administrator");
        Ok(())
    }
}
