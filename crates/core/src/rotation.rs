//! The refresh-rotation rule (RFC 9700 §4.14.2) as one pure function, so every backend applies
//! the same decision and only reads the family and writes the outcome.

use std::time::Duration;

use crate::model::{Session, Timestamp};

/// A presented refresh token as its backend found it, read for update (inside the write
/// transaction that will carry out the decision).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentedToken {
    /// Its family's session, when that session is live at `now`; `None` when it has expired
    /// (idle or absolute) or was revoked.
    pub live_session: Option<Session>,
    /// When it was exchanged for its successor; `None` for the family's current token.
    pub rotated_at: Option<Timestamp>,
    /// Whether its successor is itself still unspent: only then is a replay the second tab of
    /// one device rather than a stolen copy presented after the real client moved on.
    pub successor_unspent: bool,
}

/// What presenting the token does.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "the decision must be carried out in the same transaction it was read in"]
pub enum Decision {
    /// The current token of a live family: spend it, store its successor and touch the session.
    Rotate(Session),
    /// The token just spent, presented again within `grace` while its successor is unspent
    /// (two tabs refreshing at once): hand out the same successor, change nothing.
    Replay(Session),
    /// Any other spent token: the family is compromised and is revoked.
    Reuse(Session),
    /// An unknown token, or one whose family has ended: nothing to do.
    Invalid,
}

/// Decides what presenting a refresh token does at `now`. A replay exactly `grace` after the
/// rotation is still within the window; a millisecond later it is reuse. A zero `grace` turns
/// the window off (SPEC §2): every replay is reuse, even within the same millisecond.
pub fn decide(token: Option<PresentedToken>, now: Timestamp, grace: Duration) -> Decision {
    let Some(token) = token else {
        return Decision::Invalid;
    };
    let Some(session) = token.live_session else {
        return Decision::Invalid;
    };
    match token.rotated_at {
        None => Decision::Rotate(session),
        Some(rotated_at)
            if !grace.is_zero() && now.since(rotated_at) <= grace && token.successor_unspent =>
        {
            Decision::Replay(session)
        }
        Some(_) => Decision::Reuse(session),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::model::{SessionId, UserId, Via};

    const GRACE: Duration = Duration::from_secs(10);

    fn at(millis: i64) -> Timestamp {
        Timestamp::from_unix_millis(1_700_000_000_000 + millis)
    }

    fn session() -> Session {
        Session {
            id: SessionId::new(),
            user_id: UserId::new(),
            secret_hash: None,
            via: Via::Token,
            created_at: at(0),
            last_seen_at: at(0),
            idle_timeout: Duration::from_secs(86_400),
            expires_at: at(86_400_000),
            user_agent: None,
            ip: None,
            revoked_at: None,
        }
    }

    fn token(rotated_at: Option<Timestamp>, successor_unspent: bool) -> PresentedToken {
        PresentedToken {
            live_session: Some(session()),
            rotated_at,
            successor_unspent,
        }
    }

    #[test]
    fn an_unknown_token_is_invalid() {
        assert_eq!(decide(None, at(0), GRACE), Decision::Invalid);
    }

    #[test]
    fn a_token_of_an_ended_family_is_invalid_whatever_its_state() {
        for (rotated_at, unspent) in [(None, false), (Some(at(0)), true), (Some(at(0)), false)] {
            let ended = PresentedToken {
                live_session: None,
                ..token(rotated_at, unspent)
            };
            assert_eq!(decide(Some(ended), at(1), GRACE), Decision::Invalid);
        }
    }

    #[test]
    fn the_current_token_rotates() {
        let fresh = token(None, false);
        let session = fresh.live_session.clone().unwrap();
        assert_eq!(decide(Some(fresh), at(5), GRACE), Decision::Rotate(session));
    }

    #[test]
    fn a_replay_up_to_and_including_the_grace_window_is_a_replay() {
        for now in [at(1_000), at(1_001), at(6_000), at(11_000)] {
            let spent = token(Some(at(1_000)), true);
            let session = spent.live_session.clone().unwrap();
            assert_eq!(
                decide(Some(spent), now, GRACE),
                Decision::Replay(session),
                "{now:?}"
            );
        }
    }

    #[test]
    fn a_replay_one_millisecond_past_the_grace_window_is_reuse() {
        let spent = token(Some(at(1_000)), true);
        let session = spent.live_session.clone().unwrap();
        assert_eq!(
            decide(Some(spent), at(11_001), GRACE),
            Decision::Reuse(session)
        );
    }

    #[test]
    fn a_replay_after_the_successor_was_spent_is_reuse_even_within_grace() {
        let spent = token(Some(at(1_000)), false);
        let session = spent.live_session.clone().unwrap();
        assert_eq!(
            decide(Some(spent), at(1_001), GRACE),
            Decision::Reuse(session)
        );
    }

    #[test]
    fn with_the_grace_window_off_every_replay_is_reuse() {
        let spent = token(Some(at(1_000)), true);
        for now in [at(1_000), at(1_001)] {
            assert!(matches!(
                decide(Some(spent.clone()), now, Duration::ZERO),
                Decision::Reuse(_)
            ));
        }
    }

    #[test]
    fn a_clock_behind_the_rotation_counts_as_within_grace() {
        // Another node's clock a little behind the one that rotated: `since` saturates at zero.
        let spent = token(Some(at(5_000)), true);
        assert!(matches!(
            decide(Some(spent), at(4_000), GRACE),
            Decision::Replay(_)
        ));
    }
}
