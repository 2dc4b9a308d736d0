//! Whether a genuine, unexpired access token was revoked since it was issued (SPEC §5).
//!
//! Three facts can kill a token before its `exp`: its session was revoked (sign-out, refresh
//! reuse), its user's epoch moved past its issuance (sign-out everywhere, password change,
//! role change), or its own `jti` was denylisted (RFC 7009). [`RevocationState`] holds the
//! recent ones and [`RevocationState::check`] decides; the Tessera server keeps its cached
//! revocation state in this very type, so a service following the revocation stream refuses
//! exactly what Tessera refuses.
//!
//! The state takes no lock of its own: the server keeps it beside its cookie sessions under
//! one lock, and `remote::Remote` under another.

use std::collections::HashMap;
use std::time::Duration;

use uuid::Uuid;

use crate::Claims;

/// Why a token was refused by [`RevocationState::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Revoked {
    /// Its session (refresh family) was revoked.
    Session,
    /// It was issued before its user's epoch (`tokens_valid_after`).
    Epoch,
    /// Its `jti` is denylisted.
    Jti,
}

impl Revoked {
    /// A short, stable `snake_case` code for metric labels and logs.
    pub const fn reason(self) -> &'static str {
        match self {
            Self::Session => "session_revoked",
            Self::Epoch => "epoch_passed",
            Self::Jti => "jti_denied",
        }
    }
}

/// What the revocation decision reads of a verified token, borrowed from its claims: nothing
/// is allocated per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenFacts<'a> {
    /// `sub`.
    pub user: Uuid,
    /// `sid`.
    pub session: Uuid,
    /// Issuance to the millisecond (see [`issued_at_millis`]).
    pub issued_at_ms: i64,
    pub jti: &'a str,
}

impl<'a> TokenFacts<'a> {
    /// The facts of a token whose signature and claims were verified; `None` when its `sub`
    /// or `sid` is not a UUID, which no Tessera token lacks (refuse such a token).
    pub fn from_claims(claims: &'a Claims) -> Option<Self> {
        Some(Self {
            user: Uuid::parse_str(&claims.sub).ok()?,
            session: Uuid::parse_str(&claims.sid).ok()?,
            issued_at_ms: issued_at_millis(claims),
            jti: &claims.jti,
        })
    }
}

/// When a token was issued, in Unix milliseconds.
///
/// `iat` has whole seconds (RFC 7519 §2), but an epoch bump and a token minted just after it
/// often fall in one second: Tessera's `jti` is a UUID v7, whose first 48 bits are the
/// issuance in milliseconds, so that is used when it agrees with `iat` to the second. A `jti`
/// that is not a v7 UUID, or disagrees, falls back to the start of `iat`'s second.
pub fn issued_at_millis(claims: &Claims) -> i64 {
    let second = claims.iat.saturating_mul(1000);
    Uuid::parse_str(&claims.jti)
        .ok()
        .filter(|id| id.get_version_num() == 7)
        .and_then(|id| id.get_timestamp())
        .map(|ts| {
            let (secs, nanos) = ts.to_unix();
            i64::try_from(secs)
                .unwrap_or(i64::MAX)
                .saturating_mul(1000)
                .saturating_add(i64::from(nanos / 1_000_000))
        })
        .filter(|precise| precise.div_euclid(1000) == claims.iat)
        .unwrap_or(second)
}

/// Recent revocations: exactly what can still change a verdict on a live token.
///
/// Every update is idempotent and keeps the later of two times, so replaying a stream or
/// merging a snapshot over events already applied changes nothing.
#[derive(Debug, Clone, Default)]
pub struct RevocationState {
    /// Revoked sessions and when they may be forgotten (no token of theirs alive after it).
    revoked_sessions: HashMap<Uuid, i64>,
    /// Users' epochs (`tokens_valid_after`, Unix milliseconds) bumped recently.
    epochs: HashMap<Uuid, i64>,
    /// Denylisted `jti`s and their `exp` (Unix milliseconds).
    denied: HashMap<String, i64>,
}

impl RevocationState {
    pub fn new() -> Self {
        Self::default()
    }

    /// The verdict on a token whose signature and claims are valid: its session first, then
    /// its user's epoch (a token issued at the epoch's very millisecond lives), then its `jti`.
    #[must_use]
    pub fn check(&self, token: &TokenFacts<'_>) -> Option<Revoked> {
        if self.revoked_sessions.contains_key(&token.session) {
            return Some(Revoked::Session);
        }
        if self
            .epochs
            .get(&token.user)
            .is_some_and(|epoch| token.issued_at_ms < *epoch)
        {
            return Some(Revoked::Epoch);
        }
        if self.denied.contains_key(token.jti) {
            return Some(Revoked::Jti);
        }
        None
    }

    /// Refuses every token of `session` until at least `forget_after_ms`, the time after
    /// which none of its tokens can be alive.
    pub fn revoke_session(&mut self, session: Uuid, forget_after_ms: i64) {
        let entry = self
            .revoked_sessions
            .entry(session)
            .or_insert(forget_after_ms);
        *entry = (*entry).max(forget_after_ms);
    }

    /// Moves `user`'s epoch to `epoch_ms` unless it is already later.
    pub fn bump_epoch(&mut self, user: Uuid, epoch_ms: i64) {
        let entry = self.epochs.entry(user).or_insert(epoch_ms);
        *entry = (*entry).max(epoch_ms);
    }

    /// Refuses the token `jti` until its `exp`, `expires_at_ms`.
    pub fn deny_jti(&mut self, jti: &str, expires_at_ms: i64) {
        match self.denied.get_mut(jti) {
            Some(entry) => *entry = (*entry).max(expires_at_ms),
            None => {
                self.denied.insert(jti.to_owned(), expires_at_ms);
            }
        }
    }

    /// Whether `session` was revoked (the server's cookie sessions ask this too).
    pub fn is_session_revoked(&self, session: &Uuid) -> bool {
        self.revoked_sessions.contains_key(session)
    }

    /// `user`'s epoch, if it was bumped recently.
    pub fn epoch(&self, user: &Uuid) -> Option<i64> {
        self.epochs.get(user).copied()
    }

    /// Drops what can no longer change a verdict at `now_ms`: sessions past their forget
    /// time, epochs older than `horizon` (the longest access-token lifetime: no token issued
    /// before them is still alive) and `jti`s past their `exp`.
    pub fn prune(&mut self, now_ms: i64, horizon: Duration) {
        let horizon_ms = i64::try_from(horizon.as_millis()).unwrap_or(i64::MAX);
        let horizon_start = now_ms.saturating_sub(horizon_ms);
        self.revoked_sessions
            .retain(|_, forget_after| now_ms < *forget_after);
        self.epochs.retain(|_, epoch| *epoch >= horizon_start);
        self.denied.retain(|_, exp| now_ms < *exp);
    }

    /// Entries held, by kind: revoked sessions, epochs, denied `jti`s.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (
            self.revoked_sessions.len(),
            self.epochs.len(),
            self.denied.len(),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn claims(jti: &str, iat: i64) -> Claims {
        Claims {
            iss: "https://auth.example".into(),
            sub: Uuid::now_v7().to_string(),
            aud: "tessera".into(),
            exp: iat + 900,
            iat,
            jti: jti.into(),
            sid: Uuid::now_v7().to_string(),
            roles: vec![],
            scope: None,
            nbf: None,
        }
    }

    #[test]
    fn each_kind_refuses_only_what_it_names() {
        let jti = Uuid::now_v7();
        let millis = i64::try_from(jti.get_timestamp().unwrap().to_unix().0).unwrap();
        let token = claims(&jti.to_string(), millis);
        let facts = TokenFacts::from_claims(&token).unwrap();
        let mut state = RevocationState::new();
        assert_eq!(state.check(&facts), None);

        state.deny_jti("another", i64::MAX);
        state.revoke_session(Uuid::now_v7(), i64::MAX);
        state.bump_epoch(Uuid::now_v7(), i64::MAX);
        assert_eq!(state.check(&facts), None, "other tokens, sessions, users");

        state.bump_epoch(facts.user, facts.issued_at_ms);
        assert_eq!(state.check(&facts), None, "issued at the epoch lives");
        state.bump_epoch(facts.user, facts.issued_at_ms + 1);
        assert_eq!(state.check(&facts), Some(Revoked::Epoch));

        let mut state = RevocationState::new();
        state.deny_jti(facts.jti, i64::MAX);
        assert_eq!(state.check(&facts), Some(Revoked::Jti));
        state.revoke_session(facts.session, i64::MAX);
        assert_eq!(state.check(&facts), Some(Revoked::Session));
    }

    #[test]
    fn issuance_is_read_to_the_millisecond_from_a_v7_jti_that_agrees_with_iat() {
        let jti = Uuid::now_v7();
        let (secs, nanos) = jti.get_timestamp().unwrap().to_unix();
        let secs = i64::try_from(secs).unwrap();
        let precise = secs * 1000 + i64::from(nanos / 1_000_000);
        assert_eq!(issued_at_millis(&claims(&jti.to_string(), secs)), precise);
        assert_eq!(
            issued_at_millis(&claims(&jti.to_string(), secs + 5)),
            (secs + 5) * 1000,
            "a jti that disagrees with iat is not believed"
        );
        assert_eq!(issued_at_millis(&claims("opaque", secs)), secs * 1000);
    }

    #[test]
    fn updates_keep_the_later_time_and_prune_forgets_what_cannot_matter() {
        let mut state = RevocationState::new();
        let (session, user) = (Uuid::now_v7(), Uuid::now_v7());
        state.revoke_session(session, 2_000);
        state.revoke_session(session, 1_000);
        state.bump_epoch(user, 5_000);
        state.bump_epoch(user, 4_000);
        assert_eq!(state.epoch(&user), Some(5_000));
        state.deny_jti("j", 3_000);
        state.deny_jti("j", 1_000);
        state.prune(1_500, Duration::from_secs(10));
        assert!(
            state.is_session_revoked(&session),
            "forget time kept the later"
        );
        assert_eq!(state.sizes(), (1, 1, 1));
        state.prune(3_000, Duration::from_secs(10));
        assert_eq!(state.sizes(), (0, 1, 0));
        state.prune(15_001, Duration::from_secs(10));
        assert_eq!(state.sizes(), (0, 0, 0));
    }

    #[test]
    fn ids_that_are_not_uuids_give_no_facts() {
        let mut token = claims("j", 1);
        token.sid = "not-a-uuid".into();
        assert!(TokenFacts::from_claims(&token).is_none());
    }
}
