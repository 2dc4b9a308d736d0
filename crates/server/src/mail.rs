//! Sending mail over SMTP (SPEC §2 `smtp_url`), for the jobs the delivery worker takes from
//! the outbox: `smtps://` is TLS from the first byte, `smtp://` requires STARTTLS, and only
//! `smtp://…?tls=none` (a local test server) sends in the clear.

use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor};
use tessera_core::config::{MailSettings, SmtpSecurity, SmtpUrl};
use tessera_core::mail::Mail;

/// How long one message may take, connection and TLS included; a slower server counts as
/// failed and the message is retried later.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// An SMTP client for the configured server and sender.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    /// `Ok(None)` when no `smtp_url` is configured; `Err` says briefly why the configured
    /// one cannot be used (never with its password).
    pub fn from_config(settings: &MailSettings) -> Result<Option<Self>, String> {
        let Some(url) = settings.smtp_url.as_deref() else {
            return Ok(None);
        };
        let url = SmtpUrl::parse(url).ok_or("smtp_url is not a valid SMTP URL")?;
        let from: Mailbox = settings
            .mail_from
            .parse()
            .map_err(|e| format!("mail_from: {e}"))?;
        let builder = match url.security {
            SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&url.host),
            SmtpSecurity::StartTls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&url.host)
            }
            SmtpSecurity::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
                &url.host,
            )),
        }
        .map_err(|e| format!("smtp_url: {e}"))?;
        let mut builder = builder.port(url.port).timeout(Some(SEND_TIMEOUT));
        if let Some(user) = url.user {
            builder = builder.credentials(Credentials::new(user, url.password.unwrap_or_default()));
        }
        Ok(Some(Self {
            transport: builder.build(),
            from,
        }))
    }

    /// Sends `mail` as plain text with an HTML alternative; `Err` says briefly why the server
    /// did not take it (never the body, which holds a live link).
    pub async fn send(&self, mail: &Mail) -> Result<(), String> {
        let to: Mailbox = mail.to.parse().map_err(|e| format!("recipient: {e}"))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject.clone())
            .multipart(MultiPart::alternative_plain_html(
                mail.text.clone(),
                mail.html.clone(),
            ))
            .map_err(|e| format!("cannot build the message: {e}"))?;
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| format!("SMTP: {e}"))
    }
}
