//! Tokens: the password grant, refresh rotation (RFC 9700 §4.14.2), access tokens and their
//! revocation (RFC 7009).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::Mac as _;
use tracing::{info, warn};

use super::{key_error, DeviceInfo, Tessera, TokenPair};
use crate::error::AuthError;
use crate::mac::hmac_sha256;
use crate::model::{RefreshRecord, RevocationEvent, Session, Timestamp, User};
use crate::rotation::{self, Decision};
use crate::secret::{Password, RefreshToken};
use crate::verify::Claims;
use crate::webhooks::{RevokeReason, WebhookPlan};

impl Tessera {
    /// RFC 6749 §4.3 for first-party clients: a new device session whose refresh family lives
    /// at most `refresh_token_ttl`; the session, its first refresh token and its message
    /// commit together.
    pub async fn password_grant(
        &self,
        email: &str,
        password: Password,
        device: DeviceInfo,
    ) -> Result<TokenPair, AuthError> {
        let (user, device_token) = self.check_credentials(email, password, &device).await?;
        self.require_verified(&user)?;
        let now = Timestamp::now();
        let session = self.new_session(&user, None, device, now);
        let refresh_token = RefreshToken::generate();
        let mut change = self.change(now).await?;
        self.open_session(&mut change, &session).await?;
        change
            .tx
            .insert_refresh(&RefreshRecord {
                hash: refresh_token.to_hash(),
                session_id: session.id,
                issued_at: now,
                rotated_at: None,
            })
            .await?;
        self.commit(change).await?;
        info!(user = %user.id, session = %session.id, via = "token", "signed in");
        let (access_token, expires_in) = self.issue_access_token(&user, &session, now)?;
        Ok(TokenPair {
            access_token,
            expires_in,
            refresh_token,
            session,
            device_token: Some(device_token),
        })
    }

    /// RFC 6749 §6 with rotation (RFC 9700 §4.14.2): every use spends the token; the one just
    /// spent may be replayed within `refresh_grace` for the same successor; any other reuse
    /// revokes the family. The rule is [`rotation::decide`]; the store reads the token for
    /// update and writes the outcome in one transaction.
    pub async fn refresh(&self, presented: &RefreshToken) -> Result<TokenPair, AuthError> {
        let successor = self.successor_of(presented);
        let now = Timestamp::now();
        let presented_hash = presented.to_hash();
        let mut change = self.change(now).await?;
        let token = change
            .tx
            .refresh_token_for_update(&presented_hash, now)
            .await?;
        let session = match rotation::decide(token, now, self.config.refresh_grace) {
            Decision::Rotate(mut session) => {
                change
                    .tx
                    .spend_refresh(&presented_hash, &successor.to_hash(), now)
                    .await?;
                self.commit(change).await?;
                session.last_seen_at = session.last_seen_at.max(now);
                session
            }
            // Nothing changes: the transaction is dropped, which rolls back nothing.
            Decision::Replay(session) => session,
            Decision::Reuse(session) => {
                change
                    .revoke_session(
                        session.id,
                        session.user_id,
                        &WebhookPlan::reuse_detected(&self.config.webhooks),
                    )
                    .await?;
                self.commit(change).await?;
                crate::metrics::Counters::bump(&self.counters.reuse_detections);
                warn!(session = %session.id, "refresh token reuse detected; family revoked");
                return Err(AuthError::InvalidGrant);
            }
            Decision::Invalid => return Err(AuthError::InvalidGrant),
        };
        crate::metrics::Counters::bump(&self.counters.refreshes);
        let user = self
            .store
            .find_user(session.user_id)
            .await?
            .ok_or(AuthError::InvalidGrant)?;
        let (access_token, expires_in) = self.issue_access_token(&user, &session, now)?;
        Ok(TokenPair {
            access_token,
            expires_in,
            refresh_token: successor,
            session,
            device_token: None,
        })
    }

    fn successor_of(&self, token: &RefreshToken) -> RefreshToken {
        let mut mac = hmac_sha256(&*self.refresh_key);
        mac.update(token.expose_secret().as_bytes());
        RefreshToken::from_derived(URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    pub(super) fn issue_access_token(
        &self,
        user: &User,
        session: &Session,
        now: Timestamp,
    ) -> Result<(String, u64), AuthError> {
        // Never before the epoch: a token minted in the same millisecond as a role change, on
        // a node whose clock is a little behind, must count as issued after it.
        let issued = now.max(user.tokens_valid_after);
        let ttl = self.config.access_token_ttl;
        let claims = Claims {
            iss: self.config.issuer.clone(),
            sub: user.id.to_string(),
            aud: self.config.audience.clone(),
            exp: issued.saturating_add(ttl).as_unix(),
            iat: issued.as_unix(),
            jti: jti_at(issued),
            sid: session.id.to_string(),
            roles: user.roles.clone(),
            scope: None,
            nbf: None,
        };
        let token = self.key_ring().active().sign(&claims).map_err(key_error)?;
        Ok((token, ttl.as_secs()))
    }

    /// RFC 7009: an access token's `jti` joins the denylist until its `exp`; a refresh token
    /// kills its family (and with it the session's access tokens). Unknown, malformed or
    /// expired tokens are ignored, as §2.2 requires: the caller always hears "done".
    pub async fn revoke_token(&self, token: &str) -> Result<(), AuthError> {
        // A JWT has two dots; an opaque refresh token (base64url) has none, so the shape
        // decides and `token_type_hint` is not needed.
        if token.matches('.').count() == 2 {
            if let Ok(claims) = self.check_token(token).await {
                let now = Timestamp::now();
                // Already denied: nothing changes, so nothing is logged (a client replaying
                // its revocation cannot flood every node's feed).
                if self.store.is_jti_denied(&claims.jti, now).await? {
                    return Ok(());
                }
                let expires_at = Timestamp::from_unix(claims.exp);
                let mut change = self.change(now).await?;
                change.tx.deny_jti(&claims.jti, expires_at).await?;
                change
                    .revoke(RevocationEvent::JtiDenied {
                        jti: claims.jti.clone(),
                        expires_at,
                    })
                    .await?;
                self.commit(change).await?;
                // The denylist refuses it on every node; this node also forgets it, so a
                // revoked token holds no room in the cache.
                self.tokens.forget(token);
                info!(jti = %claims.jti, "access token revoked");
            }
            return Ok(());
        }
        // Any token of the family counts, spent or current, so a client revoking a stale
        // copy still signs the device out; an expired family is marked revoked too. It is
        // never reuse: revoking is not presenting the token for rotation.
        let refresh = RefreshToken::from_presented(token);
        let mut change = self.change(Timestamp::now()).await?;
        if let Some(family) = change
            .tx
            .refresh_family_for_update(&refresh.to_hash())
            .await?
        {
            let revoked = change
                .revoke_session(
                    family.id,
                    family.user_id,
                    &self.revocation_plan(RevokeReason::TokenRevoked),
                )
                .await?;
            self.commit(change).await?;
            if revoked {
                info!(session = %family.id, "refresh family revoked");
            }
        }
        Ok(())
    }
}

/// A `jti` that also records when the token was issued, to the millisecond: a UUID v7, whose
/// first 48 bits are Unix milliseconds (RFC 9562 §5.7). JWT `iat` has whole seconds only
/// (RFC 7519 §2), too coarse to tell a token minted just before an epoch bump from one minted
/// just after it; the signed `jti` carries the rest.
fn jti_at(issued: Timestamp) -> String {
    let millis = u64::try_from(issued.as_unix_millis()).unwrap_or(0);
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        millis / 1000,
        u32::try_from((millis % 1000) * 1_000_000).unwrap_or(0),
    );
    uuid::Uuid::new_v7(ts).to_string()
}

/// When a verified token was issued, to the millisecond: the time in its `jti` when that is a
/// UUID v7 within the second its `iat` names (every token Tessera mints), else the start of
/// that second. The epoch rule (SPEC §5) compares this with `tokens_valid_after`.
pub fn issued_at(claims: &Claims) -> Timestamp {
    Timestamp::from_unix_millis(tessera_verify::revocation::issued_at_millis(claims))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::model::{SessionId, UserId};

    fn later_by_a_millisecond(at: Timestamp) -> Timestamp {
        Timestamp::from_unix_millis(at.as_unix_millis() + 1)
    }

    fn claims(iat: i64, jti: String) -> Claims {
        Claims {
            iss: "https://issuer.test".into(),
            sub: UserId::new().to_string(),
            aud: "tessera".into(),
            exp: iat + 900,
            iat,
            jti,
            sid: SessionId::new().to_string(),
            roles: vec![],
            scope: None,
            nbf: None,
        }
    }

    #[test]
    fn a_minted_token_tells_its_issuance_to_the_millisecond() {
        let issued = Timestamp::from_unix_millis(1_700_000_000_987);
        let claims = claims(issued.as_unix(), jti_at(issued));
        assert_eq!(claims.iat, 1_700_000_000);
        assert_eq!(issued_at(&claims), issued);
        // Every jti is still unique.
        assert_ne!(jti_at(issued), jti_at(issued));
    }

    #[test]
    fn a_jti_that_is_not_a_matching_uuid_v7_falls_back_to_the_start_of_iat() {
        let second = Timestamp::from_unix(1_700_000_000);
        for jti in [
            "not-a-uuid".to_owned(),
            "6ba7b810-9dad-11d1-80b4-00c04fd430c8".to_owned(), // a v1 UUID
            // A v7 from another second must not move the issuance out of the `iat` second.
            jti_at(Timestamp::from_unix_millis(1_700_000_005_000)),
        ] {
            assert_eq!(
                issued_at(&claims(second.as_unix(), jti.clone())),
                second,
                "{jti}"
            );
        }
    }

    #[test]
    fn a_token_minted_in_the_millisecond_of_an_epoch_bump_is_older_than_the_epoch() {
        // An epoch is one millisecond past the revoking request (`Change::bump_epoch`).
        let now = Timestamp::from_unix_millis(1_700_000_000_500);
        let epoch = later_by_a_millisecond(now);
        let token = claims(now.as_unix(), jti_at(now));
        assert!(issued_at(&token) < epoch);
        // One issued at the epoch (never before it, see `issue_access_token`) is not.
        let after = claims(epoch.as_unix(), jti_at(epoch));
        assert!(issued_at(&after) >= epoch);
    }
}
