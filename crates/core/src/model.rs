//! The records Tessera keeps. Plain data: rules about them live in [`crate::service`] and the
//! store traits, so every backend stores the same thing.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::secret::SecretHash;

/// Milliseconds since the Unix epoch, UTC. Sessions expire, refresh grace windows close and
/// epochs move at this resolution, so a one-second timeout means one second and two changes
/// within one second stay ordered. JWT `iat`/`exp` are whole seconds (RFC 7519 §2):
/// [`as_unix`](Self::as_unix) and [`from_unix`](Self::from_unix) convert at that boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// Whole Unix seconds, as in a JWT claim.
    pub const fn from_unix(seconds: i64) -> Self {
        Self(seconds.saturating_mul(1000))
    }

    pub const fn from_unix_millis(millis: i64) -> Self {
        Self(millis)
    }

    /// Read on every request: whole seconds and the millisecond of the second, which avoids a
    /// 128-bit division of the nanosecond count.
    pub fn now() -> Self {
        let now = OffsetDateTime::now_utc();
        Self(
            now.unix_timestamp()
                .saturating_mul(1000)
                .saturating_add(i64::from(now.millisecond())),
        )
    }

    /// Whole Unix seconds, rounded down: the `iat`/`exp` form.
    pub const fn as_unix(self) -> i64 {
        self.0.div_euclid(1000)
    }

    pub const fn as_unix_millis(self) -> i64 {
        self.0
    }

    #[must_use]
    pub fn saturating_add(self, duration: Duration) -> Self {
        Self(self.0.saturating_add(duration_millis(duration)))
    }

    #[must_use]
    pub fn saturating_sub(self, duration: Duration) -> Self {
        Self(self.0.saturating_sub(duration_millis(duration)))
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Self) -> Duration {
        Duration::from_millis(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }

    /// RFC 3339 in UTC with milliseconds when there are any, the form every JSON timestamp of
    /// the API takes.
    pub fn to_rfc3339(self) -> String {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| self.0.to_string())
    }
}

/// Whole milliseconds of `duration`, saturating: durations come from configuration and are
/// far below `i64::MAX` milliseconds (292 million years).
pub fn duration_millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_rfc3339())
    }
}

/// Reads back what [`Serialize`] writes (RFC 3339, to the millisecond), and whole Unix seconds
/// as well.
impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 time or Unix seconds")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Timestamp, E> {
                Ok(Timestamp::from_unix(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Timestamp, E> {
                i64::try_from(v)
                    .map(Timestamp::from_unix)
                    .map_err(E::custom)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Timestamp, E> {
                OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
                    .map_err(E::custom)
                    .and_then(|t| {
                        i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
                            .map(Timestamp)
                            .map_err(E::custom)
                    })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

macro_rules! uuid_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// UUID v7: time-ordered, so new rows land at the end of B-tree indexes.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }

            /// Parses the string form; `None` for anything else, which callers treat as unknown.
            pub fn parse(text: &str) -> Option<Self> {
                Uuid::parse_str(text).ok().map(Self)
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(
    /// A user's stable identifier; the `sub` claim of their access tokens.
    UserId
);
uuid_id!(
    /// One signed-in device; the `sid` claim, and the refresh family's id.
    SessionId
);
uuid_id!(
    /// An admin API key's public handle (the key itself is only ever stored hashed).
    AdminKeyId
);
uuid_id!(
    /// One queued webhook delivery: one event for one endpoint (a row of the outbox).
    OutboxId
);
uuid_id!(
    /// A webhook event's `id`, the same in every endpoint's copy, so a receiver can drop the
    /// duplicates that at-least-once delivery allows.
    WebhookEventId
);

uuid_id!(
    /// One mailed link (recovery or verification). The token in the link is derived from it
    /// under a key of the master key, so the outbox holds this id and never the token.
    EmailTokenId
);

/// An email address in its canonical form (SPEC §1: trimmed, NFKC, lower-cased), so that
/// `Alice@Example.com ` and `alice@example.com` are one account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    /// The form accounts are known by (trimmed, NFKC, lower case), also for text that is not
    /// an address: the guessing limits count attempts on it whether or not it could exist.
    pub fn normalise(raw: &str) -> String {
        use unicode_normalization::UnicodeNormalization;
        raw.trim().nfkc().collect::<String>().to_lowercase()
    }

    /// Normalises and checks the shape: one `@`, a non-empty local part, a domain with a dot,
    /// no whitespace or control characters, at most 254 bytes (RFC 5321 §4.5.3.1.3). Anything
    /// stricter rejects real addresses; deliverability is the application's concern.
    pub fn parse(raw: &str) -> Option<Self> {
        let normalised = Self::normalise(raw);
        if normalised.is_empty() || normalised.len() > 254 {
            return None;
        }
        if normalised
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return None;
        }
        let (local, domain) = normalised.split_once('@')?;
        if local.is_empty() || local.len() > 64 || domain.contains('@') {
            return None;
        }
        let labels_ok = domain
            .split('.')
            .all(|label| !label.is_empty() && !label.starts_with('-') && !label.ends_with('-'));
        if !domain.contains('.') || !labels_ok {
            return None;
        }
        Some(Self(normalised))
    }

    /// For values read back from a store, which only ever holds normalised addresses.
    pub fn from_stored(stored: String) -> Self {
        Self(stored)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What comes before the `@`, in the same normalised form.
    pub fn local_part(&self) -> &str {
        self.0
            .split_once('@')
            .map_or(self.0.as_str(), |(local, _)| local)
    }
}

/// A role name as carried in the `roles` claim.
pub type Role = String;

/// `Debug` leaves out the password hash: an offline-crackable value has no place in logs.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub email: Email,
    /// argon2id PHC string; never leaves the core.
    pub password_hash: String,
    pub roles: Vec<Role>,
    pub created_at: Timestamp,
    /// The per-user epoch (SPEC §5): access tokens with `iat` before it are dead. Bumped by
    /// sign-out everywhere and by role changes.
    pub tokens_valid_after: Timestamp,
    /// When the user proved they read mail at `email` (SPEC §3 "Account lifecycle"); `None`
    /// until then.
    pub email_verified_at: Option<Timestamp>,
}

impl User {
    pub fn email_verified(&self) -> bool {
        self.email_verified_at.is_some()
    }
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("roles", &self.roles)
            .field("created_at", &self.created_at)
            .field("tokens_valid_after", &self.tokens_valid_after)
            .field("email_verified_at", &self.email_verified_at)
            .finish_non_exhaustive()
    }
}

/// How a device proves itself on each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// A browser holding the session cookie.
    Cookie,
    /// A client holding an access token and the refresh family of this session.
    Token,
}

impl Via {
    pub const fn as_str(self) -> &'static str {
        match self {
            Via::Cookie => "cookie",
            Via::Token => "token",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "cookie" => Some(Via::Cookie),
            "token" => Some(Via::Token),
            _ => None,
        }
    }
}

/// One signed-in device. For `Via::Token` sessions this record is also the refresh family:
/// revoking it kills every refresh token and, through `sid`, every access token of the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: SessionId,
    pub user_id: UserId,
    /// SHA-256 of the cookie secret; `None` for token sessions.
    pub secret_hash: Option<SecretHash>,
    pub via: Via,
    pub created_at: Timestamp,
    pub last_seen_at: Timestamp,
    /// Inactivity after which the session dies.
    pub idle_timeout: Duration,
    /// The absolute end, whatever the activity.
    pub expires_at: Timestamp,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    pub revoked_at: Option<Timestamp>,
}

impl Session {
    pub fn idle_expires_at(&self) -> Timestamp {
        self.last_seen_at
            .saturating_add(self.idle_timeout)
            .min(self.expires_at)
    }

    /// The one definition of "alive" that every backend's queries mirror.
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && now < self.idle_expires_at()
    }
}

/// One refresh token of a family, stored by hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshRecord {
    pub hash: SecretHash,
    pub session_id: SessionId,
    pub issued_at: Timestamp,
    /// Set when it was exchanged for its successor.
    pub rotated_at: Option<Timestamp>,
}

/// A signing key as stored: the private half sealed under the master key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedKey {
    pub kid: String,
    /// `EdDSA`, `ES256`, `RS256` or `HS256`.
    pub alg: String,
    /// Nonce followed by the AEAD ciphertext of the PKCS#8 (or raw HS256) key.
    pub sealed_private: Vec<u8>,
    /// The public JWK as JSON; `None` for HS256, whose key is never published.
    pub public_jwk: Option<String>,
    pub created_at: Timestamp,
    /// When it stopped signing; tokens it signed live until `retired_at + access_token_ttl`.
    pub retired_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminKey {
    pub id: AdminKeyId,
    pub name: String,
    pub hash: SecretHash,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
    pub scope: AdminScope,
}

impl AdminKey {
    /// Whether this key may be used for what `needed` guards.
    pub fn allows(&self, needed: AdminScope) -> bool {
        self.scope == AdminScope::Admin || self.scope == needed
    }
}

/// What an API key may be used for (SPEC §3, §4). A resource server gets a key that can only
/// introspect tokens or only follow the revocation stream, so a leaked key of its cannot sign
/// users out or change roles. `Admin` has every scope: keys created before scopes existed
/// were all-powerful, and stay so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdminScope {
    /// Every `/v1/admin/*` route, and every other scope.
    Admin,
    /// `POST /oauth2/introspect` (RFC 7662).
    Introspect,
    /// `GET /v1/revocations`, the revocation stream.
    Revocations,
}

impl AdminScope {
    pub const ALL: [AdminScope; 3] = [Self::Admin, Self::Introspect, Self::Revocations];

    /// The name used on the command line, in the store and in `insufficient_scope` answers.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Introspect => "introspect",
            Self::Revocations => "revocations",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|scope| scope.as_str() == text)
    }
}

impl fmt::Display for AdminScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change to revocation state, announced to every node's cache (SPEC §5). Carries only ids
/// and times: nothing secret travels on the feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RevocationEvent {
    /// A session (cookie) or refresh family (token) was revoked; its access tokens die too.
    SessionRevoked { session: SessionId },
    /// The user's `tokens_valid_after` moved to `epoch`: older access tokens are dead, and
    /// cached sessions of the user must be re-read (their roles may have changed).
    EpochBumped { user: UserId, epoch: Timestamp },
    /// One access token's `jti` is refused until `expires_at`.
    JtiDenied { jti: String, expires_at: Timestamp },
    /// A signing key was withdrawn (`tessera keys retire`): every node rebuilds its key ring
    /// from the store, so the key's tokens stop verifying everywhere within the feed's lag
    /// rather than at the next periodic reload.
    KeyWithdrawn { kid: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(scope: AdminScope) -> AdminKey {
        AdminKey {
            id: AdminKeyId::new(),
            name: "k".to_owned(),
            hash: crate::secret::SessionSecret::generate().to_hash(),
            created_at: Timestamp::from_unix(0),
            revoked_at: None,
            scope,
        }
    }

    #[test]
    fn an_admin_key_has_every_scope_and_the_others_only_their_own() {
        for needed in AdminScope::ALL {
            assert!(key(AdminScope::Admin).allows(needed));
        }
        assert!(key(AdminScope::Introspect).allows(AdminScope::Introspect));
        assert!(!key(AdminScope::Introspect).allows(AdminScope::Admin));
        assert!(!key(AdminScope::Introspect).allows(AdminScope::Revocations));
        assert!(key(AdminScope::Revocations).allows(AdminScope::Revocations));
        assert!(!key(AdminScope::Revocations).allows(AdminScope::Admin));
        assert!(!key(AdminScope::Revocations).allows(AdminScope::Introspect));
    }

    #[test]
    fn scope_names_round_trip_and_nothing_else_parses() {
        for scope in AdminScope::ALL {
            assert_eq!(AdminScope::parse(scope.as_str()), Some(scope));
        }
        for bad in ["", "Admin", "root", "introspect ", "revocation"] {
            assert_eq!(AdminScope::parse(bad), None, "{bad:?}");
        }
    }
}

/// What a mailed link lets its holder do. A token of one purpose is never accepted for the
/// other, and a newer token supersedes only the older ones of its own purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenPurpose {
    /// Set a new password without the old one (`/v1/recovery/complete`).
    Recovery,
    /// Prove the account's address receives mail (`/v1/verification/complete`).
    Verification,
}

impl TokenPurpose {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Recovery => "recovery",
            Self::Verification => "verification",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "recovery" => Some(Self::Recovery),
            "verification" => Some(Self::Verification),
            _ => None,
        }
    }
}

/// A mailed link's token as the store keeps it: only its SHA-256, so a leaked table yields no
/// usable link. Single use: `spent_at` is set when it is used or superseded by a newer token of
/// the same purpose, and either way it is refused from then on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailToken {
    pub id: EmailTokenId,
    pub user_id: UserId,
    pub purpose: TokenPurpose,
    pub hash: SecretHash,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub spent_at: Option<Timestamp>,
}

impl EmailToken {
    /// Usable at `now`: neither spent nor expired.
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.spent_at.is_none() && now < self.expires_at
    }
}
