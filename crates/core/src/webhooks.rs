//! Webhooks (SPEC §3): which events exist, where each goes, what a message looks like and how
//! it is signed. Delivery is the server's job; this module is what the service (which builds
//! the messages), the stores (which queue them in the same transaction as the change they
//! report) and the delivery worker agree on.
//!
//! A message carries ids, times and role names only, never a credential: a leaked outbox or
//! a compromised receiver learns nothing that signs anyone in.

use std::fmt;
use std::time::Duration;

use hmac::Mac as _;
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{json, Value};
use subtle::ConstantTimeEq as _;

use crate::mac::{hmac_sha256, HmacSha256};
use crate::model::{OutboxId, Session, SessionId, Timestamp, UserId, WebhookEventId};
use crate::url::redact_url;

/// The header carrying a message's signature: `t=<unix>,v1=<hex HMAC-SHA256 of "t.body">`.
pub const SIGNATURE_HEADER: &str = "Tessera-Signature";

/// The events a webhook can subscribe to (SPEC §3), named on the wire as in the `events` list
/// of a `[[webhooks]]` table and the `type` of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// A device signed in: a cookie login or a password grant created a session.
    SessionCreated,
    /// A session (a cookie, or a refresh family and its access tokens) was revoked; one
    /// message per session, with the reason.
    SessionRevoked,
    /// Every session of a user was revoked and their epoch bumped (the user's own sign-out
    /// everywhere, or an administrator's).
    UserSignedOutEverywhere,
    /// A spent refresh token was presented again and its family revoked as compromised
    /// (RFC 9700 §4.14.2).
    RefreshReuseDetected,
    /// An administrator replaced a user's roles.
    UserRolesChanged,
    /// Password guessing locked an account: its failures reached `login_max_failures`.
    UserLocked,
    /// Not a webhook event: a recovery mail waiting in the same outbox (see [`crate::mail`]).
    /// Nobody subscribes to it; it is sent to the address it names.
    RecoveryMail,
    /// Not a webhook event: a verification mail waiting in the outbox, as [`Self::RecoveryMail`].
    VerificationMail,
    /// A user's password was replaced (changed by the user, or reset by recovery); their
    /// other sessions were revoked with it.
    UserPasswordChanged,
    /// A user's account was deleted, by the user or an administrator.
    UserDeleted,
}

impl EventType {
    pub const ALL: [EventType; 8] = [
        Self::SessionCreated,
        Self::SessionRevoked,
        Self::UserSignedOutEverywhere,
        Self::RefreshReuseDetected,
        Self::UserRolesChanged,
        Self::UserLocked,
        Self::UserPasswordChanged,
        Self::UserDeleted,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::SessionCreated => "session.created",
            Self::SessionRevoked => "session.revoked",
            Self::UserSignedOutEverywhere => "user.signed_out_everywhere",
            Self::RefreshReuseDetected => "refresh.reuse_detected",
            Self::UserRolesChanged => "user.roles_changed",
            Self::UserLocked => "user.locked",
            Self::RecoveryMail => "mail.recovery",
            Self::VerificationMail => "mail.verification",
            Self::UserPasswordChanged => "user.password_changed",
            Self::UserDeleted => "user.deleted",
        }
    }

    /// An event a webhook may subscribe to, by its wire name; the mail kinds are not among
    /// them.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|event| event.as_str() == text)
    }

    /// Every kind of outbox row, the mail kinds included, by its stored name: for stores
    /// reading the outbox back.
    pub fn from_stored(text: &str) -> Option<Self> {
        Self::parse(text).or_else(|| Self::MAIL.into_iter().find(|kind| kind.as_str() == text))
    }

    /// The outbox rows that are mail, not webhook messages.
    pub const MAIL: [EventType; 2] = [Self::RecoveryMail, Self::VerificationMail];

    pub const fn is_mail(self) -> bool {
        matches!(self, Self::RecoveryMail | Self::VerificationMail)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The key an endpoint verifies signatures with. Whoever holds it can forge events, so it
/// prints as `[REDACTED]`, has no `Serialize`, and is reached only through `expose_secret()`.
#[derive(Clone)]
pub struct WebhookSecret(SecretString);

impl WebhookSecret {
    pub fn new(value: String) -> Self {
        Self(SecretString::from(value))
    }

    pub fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret([REDACTED])")
    }
}

/// Constant time, like every comparison of secrets.
impl PartialEq for WebhookSecret {
    fn eq(&self, other: &Self) -> bool {
        bool::from(
            self.expose_secret()
                .as_bytes()
                .ct_eq(other.expose_secret().as_bytes()),
        )
    }
}

impl Eq for WebhookSecret {}

/// One `[[webhooks]]` table: where events go, which ones, and the key that signs them.
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    /// An http(s) URL; also the endpoint's name in the outbox, by which the delivery worker
    /// finds the secret (so a secret can be rotated with a restart, queued messages included).
    pub url: String,
    pub secret: WebhookSecret,
    /// At least one; no duplicates.
    pub events: Vec<EventType>,
}

impl Webhook {
    pub fn subscribes(&self, event: EventType) -> bool {
        self.events.contains(&event)
    }
}

/// The URL (its user-info password redacted) and the events: never the secret.
impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &redact_url(&self.url))
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

/// Why a session was revoked: `data.reason` of a `session.revoked` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeReason {
    /// The user signed out of this device.
    SignedOut,
    /// The user signed out everywhere, or an administrator forced it.
    SignedOutEverywhere,
    /// The user signed this device out from another one (the device list).
    SignedOutFromAnotherDevice,
    /// An administrator revoked this session.
    Administrator,
    /// The browser signed in again; its previous session dies (fixation defence).
    ReplacedByLogin,
    /// The client revoked its refresh token (RFC 7009).
    TokenRevoked,
    /// A spent refresh token of the family was presented again (RFC 9700 §4.14.2).
    RefreshReuseDetected,
    /// The user's password was replaced; every session but the one that changed it dies.
    PasswordChanged,
    /// The user's account was deleted.
    UserDeleted,
}

impl RevokeReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::SignedOut => "signed_out",
            Self::SignedOutEverywhere => "signed_out_everywhere",
            Self::SignedOutFromAnotherDevice => "signed_out_from_another_device",
            Self::Administrator => "administrator",
            Self::ReplacedByLogin => "replaced_by_login",
            Self::TokenRevoked => "token_revoked",
            Self::RefreshReuseDetected => "refresh_reuse_detected",
            Self::PasswordChanged => "password_changed",
            Self::UserDeleted => "user_deleted",
        }
    }
}

/// One event for one endpoint, as the store queues it: the `body` is the exact JSON sent as
/// the request body, `{id, type, created_at, data}`, identical in every endpoint's copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    pub id: OutboxId,
    pub event_id: WebhookEventId,
    /// The endpoint's URL, as configured.
    pub endpoint: String,
    pub event_type: EventType,
    pub body: String,
    /// When the change happened; the first attempt is due then.
    pub created_at: Timestamp,
}

/// A message waiting in the outbox, with its delivery state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    pub message: OutboxMessage,
    /// Failed attempts so far.
    pub attempts: u32,
    pub next_attempt_at: Timestamp,
    /// Why the last attempt failed (short, never the body).
    pub last_error: Option<String>,
}

/// The JSON of a message: `{id, type, created_at, data}`.
fn event_body(id: WebhookEventId, event: EventType, at: Timestamp, data: &Value) -> String {
    json!({
        "id": id,
        "type": event.as_str(),
        "created_at": at.to_rfc3339(),
        "data": data,
    })
    .to_string()
}

/// One event, one message per endpoint; nothing (not even the JSON) when no endpoint is
/// given, so an installation without webhooks pays nothing.
fn fan_out<'a>(
    endpoints: impl IntoIterator<Item = &'a str>,
    event: EventType,
    at: Timestamp,
    data: &Value,
) -> Vec<OutboxMessage> {
    let mut endpoints = endpoints.into_iter().peekable();
    if endpoints.peek().is_none() {
        return Vec::new();
    }
    let event_id = WebhookEventId::new();
    let body = event_body(event_id, event, at, data);
    endpoints
        .map(|endpoint| OutboxMessage {
            id: OutboxId::new(),
            event_id,
            endpoint: endpoint.to_owned(),
            event_type: event,
            body: body.clone(),
            created_at: at,
        })
        .collect()
}

fn subscribers(webhooks: &[Webhook], event: EventType) -> impl Iterator<Item = &str> {
    webhooks
        .iter()
        .filter(move |webhook| webhook.subscribes(event))
        .map(|webhook| webhook.url.as_str())
}

/// `event` for every endpoint of `webhooks` subscribed to it, with `data` as the message's
/// `data`; empty when none is.
pub fn messages(
    webhooks: &[Webhook],
    event: EventType,
    at: Timestamp,
    data: &Value,
) -> Vec<OutboxMessage> {
    fan_out(subscribers(webhooks, event), event, at, data)
}

/// `session.created` for a new session: `{user_id, session_id, via}`.
pub fn session_created(webhooks: &[Webhook], session: &Session) -> Vec<OutboxMessage> {
    messages(
        webhooks,
        EventType::SessionCreated,
        session.created_at,
        &json!({
            "user_id": session.user_id,
            "session_id": session.id,
            "via": session.via.as_str(),
        }),
    )
}

/// `user.roles_changed`: `{user_id, roles}` (the new roles).
pub fn roles_changed(
    webhooks: &[Webhook],
    user: UserId,
    roles: &[String],
    at: Timestamp,
) -> Vec<OutboxMessage> {
    messages(
        webhooks,
        EventType::UserRolesChanged,
        at,
        &json!({ "user_id": user, "roles": roles }),
    )
}

/// `user.locked`: `{user_id, failures, locked_until}`, when guessing locks an account.
pub fn user_locked(
    webhooks: &[Webhook],
    user: UserId,
    failures: u32,
    locked_until: Timestamp,
    at: Timestamp,
) -> Vec<OutboxMessage> {
    messages(
        webhooks,
        EventType::UserLocked,
        at,
        &json!({ "user_id": user, "failures": failures, "locked_until": locked_until }),
    )
}

/// `user.signed_out_everywhere`: `{user_id, sessions_revoked}`.
pub fn signed_out_everywhere(
    webhooks: &[Webhook],
    user: UserId,
    sessions_revoked: usize,
    at: Timestamp,
) -> Vec<OutboxMessage> {
    messages(
        webhooks,
        EventType::UserSignedOutEverywhere,
        at,
        &json!({ "user_id": user, "sessions_revoked": sessions_revoked }),
    )
}

/// `user.password_changed`: `{user_id, sessions_revoked}` (the sessions that died with the
/// old password).
pub fn password_changed(
    webhooks: &[Webhook],
    user: UserId,
    sessions_revoked: usize,
    at: Timestamp,
) -> Vec<OutboxMessage> {
    messages(
        webhooks,
        EventType::UserPasswordChanged,
        at,
        &json!({ "user_id": user, "sessions_revoked": sessions_revoked }),
    )
}

/// `user.deleted`: `{user_id, sessions_revoked}`. No email: a receiver keyed its own records
/// by the id, and a deleted person's address should not travel further.
pub fn user_deleted(
    webhooks: &[Webhook],
    user: UserId,
    sessions_revoked: usize,
    at: Timestamp,
) -> Vec<OutboxMessage> {
    messages(
        webhooks,
        EventType::UserDeleted,
        at,
        &json!({ "user_id": user, "sessions_revoked": sessions_revoked }),
    )
}

/// The messages a revocation queues for each session it actually revokes. Only the store knows
/// which sessions those are (a session may have died meanwhile, or belong to someone the
/// caller did not name), so the core hands it this plan and the store calls
/// [`messages`](Self::messages) inside the transaction that revokes, once per session.
///
/// Holds endpoint URLs only, never a secret. [`WebhookPlan::none`] (no endpoint subscribed)
/// yields nothing, so the store writes nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookPlan {
    /// Each event to send per revoked session, with its subscribed endpoints (never empty).
    events: Vec<(EventType, Vec<String>)>,
    reason: Option<RevokeReason>,
}

impl WebhookPlan {
    /// Nothing to queue.
    pub fn none() -> Self {
        Self::default()
    }

    /// `session.revoked` with `reason`.
    pub fn session_revoked(webhooks: &[Webhook], reason: RevokeReason) -> Self {
        Self::of(webhooks, &[EventType::SessionRevoked], reason)
    }

    /// For a refresh rotation: on reuse, `refresh.reuse_detected` and then `session.revoked`
    /// (reason `refresh_reuse_detected`).
    pub fn reuse_detected(webhooks: &[Webhook]) -> Self {
        Self::of(
            webhooks,
            &[EventType::RefreshReuseDetected, EventType::SessionRevoked],
            RevokeReason::RefreshReuseDetected,
        )
    }

    fn of(webhooks: &[Webhook], events: &[EventType], reason: RevokeReason) -> Self {
        let events: Vec<(EventType, Vec<String>)> = events
            .iter()
            .map(|event| {
                let urls = subscribers(webhooks, *event).map(str::to_owned).collect();
                (*event, urls)
            })
            .filter(|(_, urls): &(EventType, Vec<String>)| !urls.is_empty())
            .collect();
        Self {
            reason: (!events.is_empty()).then_some(reason),
            events,
        }
    }

    /// True when no endpoint listens: a store may skip the work of building messages.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The messages for `session` of `user`, revoked at `at`.
    pub fn messages(&self, session: SessionId, user: UserId, at: Timestamp) -> Vec<OutboxMessage> {
        let mut out = Vec::new();
        for (event, endpoints) in &self.events {
            let data = match (event, self.reason) {
                (EventType::SessionRevoked, Some(reason)) => json!({
                    "user_id": user,
                    "session_id": session,
                    "reason": reason.as_str(),
                }),
                _ => json!({ "user_id": user, "session_id": session }),
            };
            out.extend(fan_out(
                endpoints.iter().map(String::as_str),
                *event,
                at,
                &data,
            ));
        }
        out
    }
}

fn signed_mac(secret: &WebhookSecret, t: i64, body: &[u8]) -> HmacSha256 {
    let mut mac = hmac_sha256(secret.expose_secret().as_bytes());
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `Tessera-Signature` value for `body` sent at `t`: `t=<unix>,v1=<hex HMAC-SHA256 of
/// "t.body">`. Signing the time lets a receiver refuse a replay of an old message.
pub fn signature_header(secret: &WebhookSecret, t: Timestamp, body: &[u8]) -> String {
    let digest = signed_mac(secret, t.as_unix(), body)
        .finalize()
        .into_bytes();
    let mut hex = String::with_capacity(digest.len() * 2);
    for byte in digest {
        hex.push(char::from(HEX[usize::from(byte >> 4)]));
        hex.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    format!("t={},v1={hex}", t.as_unix())
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// For receivers written in Rust: whether `header` signs `body` under `secret` (any `v1`
/// entry, so a receiver can accept two secrets during a rotation) and its `t` lies within
/// `tolerance` of `now`. Compares in constant time.
pub fn verify_signature(
    secret: &WebhookSecret,
    header: &str,
    body: &[u8],
    now: Timestamp,
    tolerance: Duration,
) -> bool {
    let mut t = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            Some(("v1", value)) => candidates.push(value),
            _ => {}
        }
    }
    let Some(t) = t else {
        return false;
    };
    let stamped = Timestamp::from_unix(t);
    let skew = now.since(stamped).max(stamped.since(now));
    if skew > tolerance {
        return false;
    }
    let expected = signed_mac(secret, t, body);
    candidates.into_iter().any(|candidate| {
        decode_hex(candidate).is_some_and(|bytes| expected.clone().verify_slice(&bytes).is_ok())
    })
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| HEX.iter().position(|h| *h == c.to_ascii_lowercase());
    let bytes = text.as_bytes();
    if bytes.len() % 2 != 0 {
        return None;
    }
    bytes
        .chunks(2)
        .map(|pair| {
            let high = u8::try_from(digit(*pair.first()?)?).ok()?;
            let low = u8::try_from(digit(*pair.get(1)?)?).ok()?;
            Some(high << 4 | low)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn hook(url: &str, events: &[EventType]) -> Webhook {
        Webhook {
            url: url.to_owned(),
            secret: WebhookSecret::new("whsec_test".to_owned()),
            events: events.to_vec(),
        }
    }

    #[test]
    fn event_names_round_trip() {
        for event in EventType::ALL {
            assert_eq!(EventType::parse(event.as_str()), Some(event));
        }
        assert_eq!(EventType::parse("session.expired"), None);
    }

    #[test]
    fn signatures_verify_and_refuse_tampering() {
        let secret = WebhookSecret::new("whsec_test".to_owned());
        let t = Timestamp::from_unix(1_700_000_000);
        let header = signature_header(&secret, t, b"{\"a\":1}");
        assert!(header.starts_with("t=1700000000,v1="), "{header}");
        assert_eq!(header.len(), "t=1700000000,v1=".len() + 64);
        let minute = Duration::from_secs(60);
        assert!(verify_signature(&secret, &header, b"{\"a\":1}", t, minute));
        assert!(!verify_signature(&secret, &header, b"{\"a\":2}", t, minute));
        let other = WebhookSecret::new("whsec_other".to_owned());
        assert!(!verify_signature(&other, &header, b"{\"a\":1}", t, minute));
        let late = Timestamp::from_unix(t.as_unix() + 61);
        assert!(!verify_signature(
            &secret,
            &header,
            b"{\"a\":1}",
            late,
            minute
        ));
        assert!(!verify_signature(&secret, "v1=00", b"{\"a\":1}", t, minute));
    }

    #[test]
    fn secrets_never_print() {
        let webhook = hook(
            "https://user:pw@hooks.example/x",
            &[EventType::SessionCreated],
        );
        let text = format!("{webhook:?} {:?}", webhook.secret);
        assert!(
            !text.contains("whsec_test") && !text.contains(":pw@"),
            "{text}"
        );
        assert!(text.contains("hooks.example") && text.contains("SessionCreated"));
    }

    #[test]
    fn one_event_is_one_body_for_every_subscribed_endpoint() {
        let webhooks = [
            hook("https://a.example/hook", &[EventType::SessionRevoked]),
            hook("https://b.example/hook", &EventType::ALL),
            hook("https://c.example/hook", &[EventType::SessionCreated]),
        ];
        let (session, user, at) = (SessionId::new(), UserId::new(), Timestamp::from_unix(5));
        let plan = WebhookPlan::session_revoked(&webhooks, RevokeReason::Administrator);
        let queued = plan.messages(session, user, at);
        let endpoints: Vec<&str> = queued.iter().map(|m| m.endpoint.as_str()).collect();
        assert_eq!(
            endpoints,
            ["https://a.example/hook", "https://b.example/hook"]
        );
        assert_eq!(queued[0].body, queued[1].body);
        assert_eq!(queued[0].event_id, queued[1].event_id);
        assert_ne!(queued[0].id, queued[1].id);
        let body: Value = serde_json::from_str(&queued[0].body).unwrap();
        assert_eq!(body["id"], queued[0].event_id.to_string());
        assert_eq!(body["type"], "session.revoked");
        assert_eq!(body["created_at"], "1970-01-01T00:00:05Z");
        assert_eq!(body["data"]["session_id"], session.to_string());
        assert_eq!(body["data"]["user_id"], user.to_string());
        assert_eq!(body["data"]["reason"], "administrator");

        let reuse = WebhookPlan::reuse_detected(&webhooks).messages(session, user, at);
        let types: Vec<&str> = reuse.iter().map(|m| m.event_type.as_str()).collect();
        assert_eq!(
            types,
            [
                "refresh.reuse_detected",
                "session.revoked",
                "session.revoked"
            ]
        );

        assert!(WebhookPlan::session_revoked(&[], RevokeReason::SignedOut).is_empty());
        assert!(WebhookPlan::none().messages(session, user, at).is_empty());
        let quiet = [hook("https://d.example/", &[EventType::UserRolesChanged])];
        assert!(WebhookPlan::reuse_detected(&quiet).is_empty());
        assert!(roles_changed(&quiet, user, &["admin".to_owned()], at).len() == 1);
        assert!(signed_out_everywhere(&quiet, user, 2, at).is_empty());
    }
}
