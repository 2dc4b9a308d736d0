//! Verification: who a cookie or a bearer token belongs to, and whether it was revoked, in
//! the revocation mode in force (SPEC §5); introspection (RFC 7662).

use std::sync::Arc;

use arc_swap::Guard;

use super::{issued_at, Principal, Tessera};
use crate::config::RevocationMode;
use crate::error::AuthError;
use crate::model::{Session, SessionId, Timestamp, UserId, Via};
use crate::revocation::{CachedSession, Revoked};
use crate::secret::SessionSecret;
use crate::verify::revocation::TokenFacts;
use crate::verify::{Claims, VerifyError};

/// An unknown `kid` reloads the key ring at most this often: anyone can send a token with a
/// made-up `kid`, and a reload decrypts every live key.
const ON_DEMAND_RELOAD_MILLIS: i64 = 5_000;

/// Why a credential was refused: for metrics and logs only, never a response body (every
/// refusal answers the same 401, or 503 when the store could not be asked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// No cookie and no bearer token at all.
    MissingCredential,
    /// The token itself failed: its signature, format or claims ([`VerifyError`]), or its
    /// `sub` or `sid` is not an id of ours.
    Token(TokenFault),
    /// The cookie's session, or the token's, is unknown, expired or revoked (read from the
    /// store).
    SessionNotLive,
    /// The token's session was revoked (known from the revocation cache).
    SessionRevoked,
    /// The token was issued before the user's epoch (sign-out everywhere, role change).
    EpochPassed,
    /// The token's `jti` is denylisted (RFC 7009).
    JtiDenied,
    /// A cookie request the proxy reports as unsafe (POST, PUT, PATCH, DELETE) came from an
    /// origin outside `allowed_origins`: cross-site request forgery through the proxy.
    OriginNotAllowed,
    /// The store could not be asked: no yes without it (SPEC §7).
    Unavailable,
    /// Any other failure to authenticate.
    Unauthenticated,
}

/// The kinds of [`VerifyError`], without their payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenFault {
    TooLarge,
    Malformed,
    WrongType,
    UnknownKey,
    AlgorithmMismatch,
    InvalidSignature,
    Expired,
    WrongIssuer,
    WrongAudience,
    InvalidClaims,
    InvalidKey,
}

impl From<&VerifyError> for TokenFault {
    fn from(error: &VerifyError) -> Self {
        match error {
            VerifyError::TooLarge => Self::TooLarge,
            VerifyError::Malformed => Self::Malformed,
            VerifyError::WrongType => Self::WrongType,
            VerifyError::UnknownKey => Self::UnknownKey,
            VerifyError::AlgorithmMismatch => Self::AlgorithmMismatch,
            VerifyError::InvalidSignature => Self::InvalidSignature,
            VerifyError::Expired => Self::Expired,
            VerifyError::WrongIssuer => Self::WrongIssuer,
            VerifyError::WrongAudience => Self::WrongAudience,
            VerifyError::InvalidClaims => Self::InvalidClaims,
            VerifyError::InvalidKey(_) => Self::InvalidKey,
        }
    }
}

impl RefusalReason {
    /// Every reason, so a metrics layer can register a bounded label set up front.
    pub const ALL: [RefusalReason; 19] = [
        Self::MissingCredential,
        Self::Token(TokenFault::TooLarge),
        Self::Token(TokenFault::Malformed),
        Self::Token(TokenFault::WrongType),
        Self::Token(TokenFault::UnknownKey),
        Self::Token(TokenFault::AlgorithmMismatch),
        Self::Token(TokenFault::InvalidSignature),
        Self::Token(TokenFault::Expired),
        Self::Token(TokenFault::WrongIssuer),
        Self::Token(TokenFault::WrongAudience),
        Self::Token(TokenFault::InvalidClaims),
        Self::Token(TokenFault::InvalidKey),
        Self::SessionNotLive,
        Self::SessionRevoked,
        Self::EpochPassed,
        Self::JtiDenied,
        Self::OriginNotAllowed,
        Self::Unavailable,
        Self::Unauthenticated,
    ];

    /// A short, stable `snake_case` label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::MissingCredential => "missing_credential",
            Self::Token(fault) => match fault {
                TokenFault::TooLarge => "too_large",
                TokenFault::Malformed => "malformed",
                TokenFault::WrongType => "wrong_type",
                TokenFault::UnknownKey => "unknown_key",
                TokenFault::AlgorithmMismatch => "algorithm_mismatch",
                TokenFault::InvalidSignature => "invalid_signature",
                TokenFault::Expired => "expired",
                TokenFault::WrongIssuer => "wrong_issuer",
                TokenFault::WrongAudience => "wrong_audience",
                TokenFault::InvalidClaims => "invalid_claims",
                TokenFault::InvalidKey => "invalid_key",
            },
            Self::SessionNotLive => "session_not_live",
            Self::SessionRevoked => "session_revoked",
            Self::EpochPassed => "epoch_passed",
            Self::JtiDenied => "jti_denied",
            Self::OriginNotAllowed => "origin_not_allowed",
            Self::Unavailable => "unavailable",
            Self::Unauthenticated => "unauthenticated",
        }
    }
}

/// A refused credential: the error the caller gets, and why.
#[derive(Debug)]
pub struct Refused {
    pub reason: RefusalReason,
    pub error: AuthError,
}

impl Refused {
    pub fn because(reason: RefusalReason) -> Self {
        Self {
            reason,
            error: AuthError::Unauthenticated,
        }
    }

    fn from_error(error: AuthError) -> Self {
        let reason = match error {
            AuthError::Store(_) => RefusalReason::Unavailable,
            _ => RefusalReason::Unauthenticated,
        };
        Self { reason, error }
    }
}

impl From<crate::StoreError> for Refused {
    fn from(e: crate::StoreError) -> Self {
        Self {
            reason: RefusalReason::Unavailable,
            error: AuthError::Store(e),
        }
    }
}

impl Tessera {
    /// In `cached` mode a session seen before is answered from memory (no store call) and its
    /// `last_seen_at` reaches the store in batches; `none` and `strict` read the store, since a
    /// cookie carries no signature to check offline.
    pub async fn authenticate_cookie(
        &self,
        secret: &SessionSecret,
    ) -> Result<Principal, AuthError> {
        self.check_cookie(secret)
            .await
            .map_err(|refused| refused.error)
    }

    /// As [`authenticate_cookie`](Self::authenticate_cookie), saying why a cookie was refused.
    pub async fn check_cookie(&self, secret: &SessionSecret) -> Result<Principal, Refused> {
        let now = Timestamp::now();
        let hash = secret.to_hash();
        let cached_mode = self.effective_mode() == RevocationMode::Cached;
        if cached_mode {
            let principal = self.cache.with_cookie(&hash, now, |cached| Principal {
                user_id: cached.user_id,
                session_id: cached.id,
                roles: cached.roles.to_vec(),
                presented: Via::Cookie,
                session: Some(cached.session(hash)),
            });
            if let Some(principal) = principal {
                if let Some(session) = principal.session.as_ref().filter(|s| touch_due(s, now)) {
                    self.cache.touch_cookie(&hash, now);
                    if let Ok(mut pending) = self.pending_touches.lock() {
                        pending.insert(session.id, now);
                    }
                }
                return Ok(principal);
            }
        }
        let session = self
            .store
            .find_live_session_by_hash(&hash, now)
            .await?
            .ok_or(Refused::because(RefusalReason::SessionNotLive))?;
        let user = self
            .store
            .find_user(session.user_id)
            .await?
            .ok_or(Refused::because(RefusalReason::SessionNotLive))?;
        let session = self
            .touch(session, now)
            .await
            .map_err(Refused::from_error)?;
        if cached_mode {
            self.cache
                .insert_cookie(hash, CachedSession::of(&session, &user.roles, now));
        }
        Ok(Principal {
            user_id: user.id,
            session_id: session.id,
            roles: user.roles,
            presented: Via::Cookie,
            session: Some(session),
        })
    }

    async fn touch(&self, mut session: Session, now: Timestamp) -> Result<Session, AuthError> {
        if touch_due(&session, now) {
            self.store.touch_session(session.id, now).await?;
            session.last_seen_at = now;
        }
        Ok(session)
    }

    /// Verifies an access token, then asks whether it was revoked, as the mode says:
    /// `none` — never (revocation by expiry alone); `cached` — the in-process revocation
    /// state, no store call; `strict` (and `cached` while its feed is stale) — the store:
    /// live session, epoch, denylist.
    pub async fn authenticate_bearer(&self, token: &str) -> Result<Principal, AuthError> {
        self.check_bearer(token)
            .await
            .map_err(|refused| refused.error)
    }

    /// As [`authenticate_bearer`](Self::authenticate_bearer), saying why a token was refused.
    pub async fn check_bearer(&self, token: &str) -> Result<Principal, Refused> {
        let claims = self
            .verified_claims(token)
            .await
            .map_err(|e| Refused::because(RefusalReason::Token(TokenFault::from(&e))))?;
        let Some(facts) = TokenFacts::from_claims(&claims) else {
            return Err(Refused::because(RefusalReason::Token(
                TokenFault::InvalidClaims,
            )));
        };
        let (user_id, session_id) = (
            UserId::from_uuid(facts.user),
            SessionId::from_uuid(facts.session),
        );
        let session = match self.effective_mode() {
            RevocationMode::None => None,
            RevocationMode::Cached => {
                if let Some(revoked) = self.cache.check(&facts) {
                    return Err(Refused::because(match revoked {
                        Revoked::Session => RefusalReason::SessionRevoked,
                        Revoked::Epoch => RefusalReason::EpochPassed,
                        Revoked::Jti => RefusalReason::JtiDenied,
                    }));
                }
                None
            }
            RevocationMode::Strict => Some(
                self.check_token_in_store(&claims, user_id, session_id)
                    .await?,
            ),
        };
        Ok(Principal {
            user_id,
            session_id,
            roles: claims.roles.clone(),
            presented: Via::Token,
            session,
        })
    }

    async fn check_token_in_store(
        &self,
        claims: &Claims,
        user_id: UserId,
        session_id: SessionId,
    ) -> Result<Session, Refused> {
        let now = Timestamp::now();
        let session = self
            .store
            .find_live_session(session_id, now)
            .await?
            .filter(|s| s.user_id == user_id)
            .ok_or(Refused::because(RefusalReason::SessionNotLive))?;
        let user = self
            .store
            .find_user(user_id)
            .await?
            .ok_or(Refused::because(RefusalReason::SessionNotLive))?;
        if issued_at(claims) < user.tokens_valid_after {
            return Err(Refused::because(RefusalReason::EpochPassed));
        }
        if self.store.is_jti_denied(&claims.jti, now).await? {
            return Err(Refused::because(RefusalReason::JtiDenied));
        }
        Ok(session)
    }

    /// Signature and claims only, as [`check_token`](Self::check_token), with every failure
    /// reported as `Unauthenticated`.
    pub async fn verify_token(&self, token: &str) -> Result<Claims, AuthError> {
        self.check_token(token)
            .await
            .map_err(|_| AuthError::Unauthenticated)
    }

    /// Signature and claims only, with the precise reason for a refusal (for `token inspect`
    /// and logs). An unknown `kid` triggers one key-ring reload, so a key rotated by the CLI
    /// or another node is honoured without a restart.
    pub async fn check_token(&self, token: &str) -> Result<Claims, VerifyError> {
        self.verified_claims(token).await.map(Arc::unwrap_or_clone)
    }

    /// As [`check_token`](Self::check_token), answered from the token cache when this exact
    /// token was verified recently under the key ring still in force (see
    /// [`crate::token_cache`]): the hot path of a client that sends one token many times.
    async fn verified_claims(&self, token: &str) -> Result<Arc<Claims>, VerifyError> {
        let now = Timestamp::now();
        let ring = self.keys.lend();
        let key = self.tokens.key(token);
        if let Some(claims) = key
            .as_ref()
            .and_then(|key| self.tokens.get(key, &ring, now))
        {
            return Ok(claims);
        }
        let verified = ring.verifier().verify(token);
        let (claims, ring) = match verified {
            Err(VerifyError::UnknownKey) => {
                drop(ring);
                if !self.may_reload_on_demand() || self.reload_keys().await.is_err() {
                    return Err(VerifyError::UnknownKey);
                }
                let ring = self.key_ring();
                (ring.verifier().verify(token)?, Guard::from_inner(ring))
            }
            outcome => (outcome?, ring),
        };
        let claims = Arc::new(claims);
        if let Some(key) = key {
            self.tokens
                .insert(key, Arc::clone(&claims), Guard::into_inner(ring), now);
        }
        Ok(claims)
    }

    /// Verified access tokens this node holds in its token cache.
    pub fn cached_tokens(&self) -> usize {
        self.tokens.len()
    }

    /// Claims the on-demand reload slot if the last one is old enough; one caller wins.
    fn may_reload_on_demand(&self) -> bool {
        use std::sync::atomic::Ordering;
        let now = Timestamp::now().as_unix_millis();
        let last = self.last_on_demand_reload.load(Ordering::Relaxed);
        now.saturating_sub(last) >= ON_DEMAND_RELOAD_MILLIS
            && self
                .last_on_demand_reload
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// An access token that is valid *now*: signature, claims, live session, epoch and
    /// denylist, checked against the store whatever the mode (introspection is the
    /// authoritative answer). `None` for anything else (RFC 7662 `active: false`).
    pub async fn introspect(&self, token: &str) -> Result<Option<Claims>, AuthError> {
        let Ok(claims) = self.check_token(token).await else {
            return Ok(None);
        };
        let (Some(user_id), Some(session_id)) =
            (UserId::parse(&claims.sub), SessionId::parse(&claims.sid))
        else {
            return Ok(None);
        };
        match self
            .check_token_in_store(&claims, user_id, session_id)
            .await
        {
            Ok(_) => Ok(Some(claims)),
            Err(Refused {
                error: AuthError::Store(e),
                ..
            }) => Err(AuthError::Store(e)),
            Err(_) => Ok(None),
        }
    }
}

/// Whether a session's `last_seen_at` is due a write at `now`: every minute, or at half a
/// short idle timeout, so activity always keeps a session alive. In whole milliseconds: this
/// runs on every cookie request, and integer arithmetic is the cheapest form of it.
fn touch_due(session: &Session, now: Timestamp) -> bool {
    let interval = crate::model::duration_millis(super::TOUCH_INTERVAL)
        .min(crate::model::duration_millis(session.idle_timeout) / 2);
    now.as_unix_millis()
        .saturating_sub(session.last_seen_at.as_unix_millis())
        >= interval
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn every_reason_has_its_own_label_and_token_faults_keep_the_verifier_s_names() {
        let labels: std::collections::HashSet<&str> =
            RefusalReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), RefusalReason::ALL.len());
        for error in [
            VerifyError::TooLarge,
            VerifyError::Malformed,
            VerifyError::WrongType,
            VerifyError::UnknownKey,
            VerifyError::AlgorithmMismatch,
            VerifyError::InvalidSignature,
            VerifyError::Expired,
            VerifyError::WrongIssuer,
            VerifyError::WrongAudience,
            VerifyError::InvalidClaims,
            VerifyError::InvalidKey("bad".into()),
        ] {
            let reason = RefusalReason::Token(TokenFault::from(&error));
            assert_eq!(reason.as_str(), error.reason());
            assert!(RefusalReason::ALL.contains(&reason), "{reason:?}");
        }
    }
}
