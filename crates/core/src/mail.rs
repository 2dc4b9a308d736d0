//! Mail (SPEC §3 "Account lifecycle"): recovery and verification links, queued in the
//! webhook outbox so that they are as durable as webhooks — queued in the transaction of the
//! request, retried with backoff, kept across restarts — and so that a slow mail server never
//! slows a request.
//!
//! A queued mail is a *job*, never the mail itself: it names the account and the link's id,
//! and the sender derives the link's token when it sends (see
//! [`Tessera::prepare_mail`](crate::service::Tessera::prepare_mail)). No live token is ever
//! stored, not even in the outbox.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::{EmailTokenId, OutboxId, Timestamp, TokenPurpose, UserId, WebhookEventId};
use crate::webhooks::{EventType, OutboxMessage};

/// The outbox's `endpoint` of every mail job: the delivery worker sends those as mail, the
/// rest as webhooks.
pub const MAIL_ENDPOINT: &str = "mail:";

/// How long a recovery link works (SPEC §3): long enough to reach a mailbox, short enough
/// that a forgotten mail is no standing way into the account.
pub const RECOVERY_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// How long a verification link works: a day, since proving an address grants nothing but
/// the proof, and sign-up mail is often read later.
pub const VERIFICATION_LIFETIME: Duration = Duration::from_secs(24 * 3_600);

/// The product named in mails.
pub const PRODUCT: &str = "Tessera";

/// What a queued mail job asks for. Recovery names the address as typed (normalised), not
/// the account: the request does the same work whether or not an account has it, and the
/// sender looks the account up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MailJob {
    Recovery { email: String, link: EmailTokenId },
    Verification { user: UserId, link: EmailTokenId },
}

impl MailJob {
    pub fn purpose(&self) -> TokenPurpose {
        match self {
            Self::Recovery { .. } => TokenPurpose::Recovery,
            Self::Verification { .. } => TokenPurpose::Verification,
        }
    }

    pub fn link(&self) -> EmailTokenId {
        match self {
            Self::Recovery { link, .. } | Self::Verification { link, .. } => *link,
        }
    }

    /// The job as an outbox row, due at `at`.
    pub fn message(&self, at: Timestamp) -> OutboxMessage {
        let event_type = match self {
            Self::Recovery { .. } => EventType::RecoveryMail,
            Self::Verification { .. } => EventType::VerificationMail,
        };
        OutboxMessage {
            id: OutboxId::new(),
            event_id: WebhookEventId::new(),
            endpoint: MAIL_ENDPOINT.to_owned(),
            event_type,
            body: serde_json::to_string(self).unwrap_or_default(),
            created_at: at,
        }
    }

    /// The job an outbox row holds; `None` for a webhook message or a body no version of
    /// this code wrote.
    pub fn of(message: &OutboxMessage) -> Option<Self> {
        if !message.event_type.is_mail() {
            return None;
        }
        serde_json::from_str(&message.body).ok()
    }
}

/// One mail, ready to send. Its bodies hold a live link, so `Debug` shows the subject only.
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

impl fmt::Debug for Mail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mail")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

/// "30 minutes", "24 hours": how long a link works, in words.
fn lifetime_words(lifetime: Duration) -> String {
    let minutes = lifetime.as_secs() / 60;
    if minutes % 60 == 0 && minutes >= 60 {
        let hours = minutes / 60;
        format!("{hours} hour{}", if hours == 1 { "" } else { "s" })
    } else {
        format!("{minutes} minute{}", if minutes == 1 { "" } else { "s" })
    }
}

/// The mail for `purpose` carrying `link`, valid for `lifetime`, as plain text and HTML.
pub fn compose(purpose: TokenPurpose, to: &str, link: &str, lifetime: Duration) -> Mail {
    let expiry = lifetime_words(lifetime);
    let (subject, intro, action, outro) = match purpose {
        TokenPurpose::Recovery => (
            format!("Reset your {PRODUCT} password"),
            format!(
                "Someone, hopefully you, asked to reset the password of your {PRODUCT} account."
            ),
            "Choose a new password",
            "If you did not ask for this, ignore this mail: your password stays as it is.",
        ),
        TokenPurpose::Verification => (
            format!("Confirm your email address for {PRODUCT}"),
            format!("Please confirm that this address belongs to your {PRODUCT} account."),
            "Confirm my address",
            "If you did not sign up, ignore this mail.",
        ),
    };
    let once = "The link works once";
    let text = format!(
        "{intro}\n\n{action}:\n{link}\n\n{once}, within {expiry}.\n{outro}\n\n-- {PRODUCT}\n"
    );
    let html = format!(
        "<!doctype html><html><body style=\"font-family:sans-serif;line-height:1.5\">\
         <p>{intro}</p>\
         <p><a href=\"{href}\">{action}</a></p>\
         <p>{once}, within {expiry}. If the button does not work, copy this address into your \
         browser:<br><code>{href}</code></p>\
         <p>{outro}</p><p>&mdash; {PRODUCT}</p></body></html>",
        intro = escape_html(&intro),
        href = escape_html(link),
        action = escape_html(action),
        outro = escape_html(outro),
    );
    Mail {
        to: to.to_owned(),
        subject,
        text,
        html,
    }
}

/// Escapes text for an HTML element or a double-quoted attribute.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn jobs_round_trip_through_an_outbox_row() {
        let job = MailJob::Recovery {
            email: "ada@example.com".to_owned(),
            link: EmailTokenId::new(),
        };
        let message = job.message(Timestamp::from_unix(5));
        assert_eq!(message.endpoint, MAIL_ENDPOINT);
        assert_eq!(message.event_type, EventType::RecoveryMail);
        assert_eq!(MailJob::of(&message), Some(job));
        let webhook = OutboxMessage {
            event_type: EventType::SessionCreated,
            ..message
        };
        assert_eq!(MailJob::of(&webhook), None);
    }

    #[test]
    fn mails_name_the_product_and_the_expiry_and_escape_the_link() {
        let mail = compose(
            TokenPurpose::Recovery,
            "ada@example.com",
            "https://id.example/ui/recovery?token=abc&x=\"<",
            RECOVERY_LIFETIME,
        );
        assert!(mail.subject.contains(PRODUCT));
        assert!(mail.text.contains("30 minutes") && mail.html.contains("30 minutes"));
        assert!(mail
            .text
            .contains("https://id.example/ui/recovery?token=abc&x=\"<"));
        assert!(mail.html.contains("token=abc&amp;x=&quot;&lt;"));
        assert!(!format!("{mail:?}").contains("token="));
        let mail = compose(
            TokenPurpose::Verification,
            "a@b.c",
            "l",
            VERIFICATION_LIFETIME,
        );
        assert!(mail.text.contains("24 hours"));
    }
}
