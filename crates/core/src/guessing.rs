//! Online guessing limits (SPEC §2, §7; OWASP ASVS V2.2.1): how many password attempts an
//! account, a client address and a known device get, and the device credential that keeps a
//! user's own browser signing in while someone else guesses at their account.
//!
//! **Attempts are counted before the password is checked.** Each attempt takes a slot in its
//! [`Tally`] atomically, in the shared store, before any argon2 work; a success gives the slot
//! back. So no number of concurrent attempts, on any number of nodes, gets more than the limit
//! of wrong passwords checked: the slots run out first. Counting failures only after the
//! check, as Keycloak does, lets a burst of parallel guesses all pass the "still under the
//! limit?" test before any of them is recorded.
//!
//! **The lock.** Once a tally holds `max` failures, attempts are refused until the window that
//! began with its first failure ends, and then for a lock that starts at 1/16 of the window
//! and doubles with each further failure, capped at the window; a tally forgets everything a
//! window after its last attempt. The rules are the pure functions [`admit`] and [`release`];
//! a backend only reads a tally for update and writes back what they return.

use std::net::IpAddr;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::Mac as _;
use sha2::{Digest as _, Sha256};

use crate::mac::hmac_sha256;
use crate::model::{Timestamp, UserId};

/// How many attempts one subject gets per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Failures after which attempts are refused.
    pub max: u32,
    pub window: Duration,
}

/// One subject's attempts: what a backend stores under the subject's key until `expires_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Attempts counted in this window: failures, and attempts still being checked.
    pub count: u32,
    /// The end of the window that began with the first counted attempt.
    pub window_ends: Timestamp,
    /// The latest counted attempt.
    pub last: Timestamp,
    /// When the tally may be forgotten; a backend treats a tally at or past it as absent.
    pub expires_at: Timestamp,
}

/// The answer to an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The attempt holds a slot; `count` is the tally with it. When the attempt fails and
    /// `count == max`, this failure is the one that locks the subject.
    Admitted { count: u32 },
    /// Refused without checking anything; the lock lasts `retry_after` more.
    Refused { retry_after: Duration },
}

impl Tally {
    /// Until when attempts are refused, if they are.
    pub fn locked_until(&self, limit: Limit) -> Option<Timestamp> {
        if self.count < limit.max {
            return None;
        }
        let doublings = (self.count - limit.max).min(16);
        let lock = (limit.window / 16)
            .saturating_mul(1 << doublings)
            .min(limit.window);
        Some(if doublings == 0 {
            // The first lock: the rest of the window (at least the first step).
            self.window_ends.max(self.last.saturating_add(lock))
        } else {
            self.last.saturating_add(lock)
        })
    }

    fn with_expiry(mut self, limit: Limit) -> Self {
        // A locked tally is kept a window past its lock, so that failures after the lock keep
        // counting up and the next lock is longer.
        self.expires_at = match self.locked_until(limit) {
            Some(until) => until.saturating_add(limit.window),
            None => self.window_ends,
        };
        self
    }
}

/// Takes a slot for an attempt at `now`, or refuses it. Returns the answer and the tally to
/// store (unchanged when refused).
pub fn admit(current: Option<Tally>, now: Timestamp, limit: Limit) -> (Admission, Tally) {
    let tally = match current {
        Some(tally) if tally.expires_at > now => tally,
        _ => Tally {
            count: 0,
            window_ends: now.saturating_add(limit.window),
            last: now,
            expires_at: now,
        },
    };
    if let Some(until) = tally.locked_until(limit) {
        if now < until {
            let retry_after = until.since(now);
            return (Admission::Refused { retry_after }, tally);
        }
    }
    let tally = Tally {
        count: tally.count.saturating_add(1),
        last: now,
        ..tally
    }
    .with_expiry(limit);
    (Admission::Admitted { count: tally.count }, tally)
}

/// Gives back the slot of an attempt that succeeded: it was not a failure. `None` when
/// nothing is left to store.
pub fn release(current: Option<Tally>, now: Timestamp, limit: Limit) -> Option<Tally> {
    let tally = current.filter(|t| t.expires_at > now)?;
    let count = tally.count.saturating_sub(1);
    (count > 0).then(|| Tally { count, ..tally }.with_expiry(limit))
}

/// Who an attempt is counted against. Its [`key`](Self::key) is what a backend stores the
/// tally under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject<'a> {
    /// The account a login names, by its normalised email, whether or not it exists.
    Account(&'a str),
    /// A client address: IPv4 as is, IPv6 by its /64, which one client usually holds whole.
    Address(IpAddr),
    /// A known device, by the id inside its device credential.
    Device(&'a [u8; 16]),
    /// Sign-ups from a client address.
    SignUp(IpAddr),
    /// Recovery requests from a client address.
    Recovery(IpAddr),
    /// Mail sent to an account (recovery links, verification resends), by its normalised
    /// email.
    Mailed(&'a str),
}

impl Subject<'_> {
    /// The storage key: a fixed prefix per kind, and the email only as a hash, so that the
    /// counters (which may sit in Redis) hold no address book.
    pub fn key(&self) -> String {
        match self {
            Self::Account(email) => {
                let digest = Sha256::digest(email.as_bytes());
                format!("account:{}", hex(&digest[..16]))
            }
            Self::Address(address) => format!("address:{}", network(*address)),
            Self::Device(id) => format!("device:{}", hex(&id[..])),
            Self::SignUp(address) => format!("signup:{}", network(*address)),
            Self::Recovery(address) => format!("recovery:{}", network(*address)),
            Self::Mailed(email) => {
                let digest = Sha256::digest(email.as_bytes());
                format!("mailed:{}", hex(&digest[..16]))
            }
        }
    }
}

fn network(address: IpAddr) -> String {
    match address {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4.to_string();
            }
            let mut segments = v6.segments();
            segments[4..].fill(0);
            format!("{}/64", std::net::Ipv6Addr::from(segments))
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// How long a device credential stays valid (SPEC §2: one year).
pub const DEVICE_LIFETIME: Duration = Duration::from_secs(365 * 86_400);

const DEVICE_PAYLOAD: usize = 16 + 16 + 8;

/// A device credential (OWASP "device cookies"): a browser's or an API client's proof that it
/// signed in to one account before. Signed with a key derived from the master key, so it needs
/// no storage and every node checks it alike; bound to the account, so it is useless for any
/// other; it carries its own id, so its holder has a failure budget of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Device {
    pub user: UserId,
    pub id: [u8; 16],
    pub issued_at: Timestamp,
}

impl Device {
    pub fn new(user: UserId, now: Timestamp) -> Self {
        Self {
            user,
            id: rand::random(),
            // Whole seconds, as sealed.
            issued_at: Timestamp::from_unix(now.as_unix()),
        }
    }

    /// `base64url(user ‖ id ‖ issued_at) . base64url(HMAC-SHA256)`.
    pub fn seal(&self, key: &[u8; 32]) -> String {
        let payload = self.payload();
        let mut mac = hmac_sha256(key);
        mac.update(&payload);
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    /// The device a credential names, if it is genuine and not older than
    /// [`DEVICE_LIFETIME`] at `now`.
    pub fn open(credential: &str, key: &[u8; 32], now: Timestamp) -> Option<Self> {
        let (payload, tag) = credential.trim().split_once('.')?;
        if payload.len() > 64 || tag.len() > 64 {
            return None;
        }
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        let mut mac = hmac_sha256(key);
        mac.update(&payload);
        mac.verify_slice(&tag).ok()?;
        let payload: [u8; DEVICE_PAYLOAD] = payload.try_into().ok()?;
        let mut user = [0u8; 16];
        let mut id = [0u8; 16];
        let mut issued = [0u8; 8];
        user.copy_from_slice(&payload[..16]);
        id.copy_from_slice(&payload[16..32]);
        issued.copy_from_slice(&payload[32..]);
        let issued_at = Timestamp::from_unix(i64::from_be_bytes(issued));
        if issued_at.saturating_add(DEVICE_LIFETIME) <= now {
            return None;
        }
        Some(Self {
            user: UserId::from_uuid(uuid::Uuid::from_bytes(user)),
            id,
            issued_at,
        })
    }

    fn payload(&self) -> [u8; DEVICE_PAYLOAD] {
        let mut payload = [0u8; DEVICE_PAYLOAD];
        payload[..16].copy_from_slice(self.user.as_uuid().as_bytes());
        payload[16..32].copy_from_slice(&self.id);
        payload[32..].copy_from_slice(&self.issued_at.as_unix().to_be_bytes());
        payload
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const LIMIT: Limit = Limit {
        max: 3,
        window: Duration::from_secs(160),
    };

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_unix(1_000_000 + seconds)
    }

    /// Admits at each time and fails; returns the admissions.
    fn fail_at(tally: &mut Option<Tally>, times: &[i64]) -> Vec<Admission> {
        times
            .iter()
            .map(|&t| {
                let (admission, next) = admit(*tally, at(t), LIMIT);
                *tally = Some(next);
                admission
            })
            .collect()
    }

    #[test]
    fn max_failures_are_admitted_then_refused_until_the_window_ends() {
        let mut tally = None;
        let answers = fail_at(&mut tally, &[0, 1, 2, 3, 159]);
        assert_eq!(
            answers[..3],
            [1, 2, 3].map(|count| Admission::Admitted { count })
        );
        assert_eq!(
            answers[3],
            Admission::Refused {
                retry_after: Duration::from_secs(157)
            }
        );
        assert_eq!(
            answers[4],
            Admission::Refused {
                retry_after: Duration::from_secs(1)
            }
        );
        // The window is over: one more attempt, which locks for 2/16 of the window.
        assert_eq!(
            fail_at(&mut tally, &[160]),
            [Admission::Admitted { count: 4 }]
        );
        assert_eq!(
            fail_at(&mut tally, &[170]),
            [Admission::Refused {
                retry_after: Duration::from_secs(10)
            }]
        );
    }

    #[test]
    fn the_lock_doubles_with_each_further_failure_up_to_the_window() {
        let mut tally = None;
        fail_at(&mut tally, &[0, 0, 0]);
        let mut now = 160;
        let mut locks = Vec::new();
        for _ in 0..6 {
            assert!(matches!(
                fail_at(&mut tally, &[now])[0],
                Admission::Admitted { .. }
            ));
            let until = tally.unwrap().locked_until(LIMIT).unwrap();
            let lock = until.as_unix() - at(now).as_unix();
            locks.push(lock);
            now += lock;
        }
        assert_eq!(locks, [20, 40, 80, 160, 160, 160]);
    }

    #[test]
    fn a_success_gives_its_slot_back() {
        let mut tally = None;
        fail_at(&mut tally, &[0, 1]);
        let (admission, held) = admit(tally, at(2), LIMIT);
        assert_eq!(admission, Admission::Admitted { count: 3 });
        // While the third attempt is being checked, the subject is full: a concurrent
        // attempt is refused rather than checked.
        assert!(matches!(
            admit(Some(held), at(2), LIMIT).0,
            Admission::Refused { .. }
        ));
        let released = release(Some(held), at(2), LIMIT).unwrap();
        assert_eq!(released.count, 2);
        assert!(released.locked_until(LIMIT).is_none());
        assert!(matches!(
            admit(Some(released), at(3), LIMIT).0,
            Admission::Admitted { count: 3 }
        ));
        // The last slot given back leaves nothing to store.
        let one = admit(None, at(0), LIMIT).1;
        assert_eq!(release(Some(one), at(0), LIMIT), None);
    }

    #[test]
    fn a_tally_is_forgotten_when_it_expires() {
        let mut tally = None;
        fail_at(&mut tally, &[0, 1]);
        let tally = tally.unwrap();
        assert_eq!(tally.expires_at, at(160));
        assert_eq!(
            admit(Some(tally), at(160), LIMIT).0,
            Admission::Admitted { count: 1 }
        );
        assert_eq!(release(Some(tally), at(160), LIMIT), None);
        // A locked tally is kept a window past its lock.
        let mut locked = None;
        fail_at(&mut locked, &[0, 0, 0]);
        assert_eq!(locked.unwrap().expires_at, at(320));
    }

    #[test]
    fn keys_hash_emails_and_group_ipv6_by_prefix() {
        let key = Subject::Account("alice@example.com").key();
        assert!(key.starts_with("account:") && !key.contains("alice"));
        assert_eq!(key.len(), "account:".len() + 32);
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        assert_eq!(Subject::Address(a).key(), Subject::Address(b).key());
        assert_eq!(Subject::Address(a).key(), "address:2001:db8:1:2::/64");
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(Subject::Address(mapped).key(), "address:192.0.2.7");
        assert_ne!(Subject::SignUp(a).key(), Subject::Address(a).key());
    }

    #[test]
    fn device_credentials_are_bound_to_their_key_and_expire() {
        let key = [7u8; 32];
        let now = Timestamp::now();
        let device = Device::new(UserId::new(), now);
        let sealed = device.seal(&key);
        assert_eq!(Device::open(&sealed, &key, now), Some(device));
        assert_eq!(Device::open(&sealed, &[8u8; 32], now), None);
        let later = now.saturating_add(DEVICE_LIFETIME);
        assert_eq!(Device::open(&sealed, &key, later), None);
        // A changed payload fails the MAC.
        let mut forged = sealed.clone().into_bytes();
        forged[3] = if forged[3] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            Device::open(&String::from_utf8(forged).unwrap(), &key, now),
            None
        );
        for garbage in ["", ".", "a.b", "not a credential", &"x".repeat(200)] {
            assert_eq!(Device::open(garbage, &key, now), None);
        }
    }
}
