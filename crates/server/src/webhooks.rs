//! Webhook and mail delivery (SPEC §3): a worker that sends what the outbox holds.
//!
//! The store queues each message in the transaction of the change it reports; this worker
//! polls for due messages, claims each one (so several nodes on one database do not send it
//! at the same time), POSTs its body signed with the endpoint's secret, and records the
//! outcome: delivered on a 2xx, otherwise retried with exponential backoff until
//! [`MAX_ATTEMPTS`]. A message leaves the queue only once delivered or given up, so a crash
//! or restart at any point sends it again rather than losing it: delivery is at-least-once,
//! and receivers drop duplicates by the body's `id`.
//!
//! Secrets are looked up in the configuration by endpoint URL at each attempt, never stored
//! with the message. Neither secrets nor bodies are logged, and endpoints appear in logs by
//! origin only, since a URL's path may itself be a credential.
//!
//! Wiring: the server runs [`deliver`] as one of the node's background tasks. At shutdown
//! it finishes the pass in progress — every attempt it started completes and is recorded —
//! and starts no other; an attempt cut off at the shutdown bound leaves its message claimed
//! until the claim expires, then due again, so nothing is lost.

use std::sync::Arc;
use std::time::Duration;

use tessera_core::background::Stopping;
use tessera_core::model::Timestamp;
use tessera_core::service::Tessera;
use tessera_core::text::truncate;
use tessera_core::url::origin_of;
use tessera_core::webhooks::{signature_header, QueuedMessage, Webhook, SIGNATURE_HEADER};
use tessera_core::{AuthError, StoreError};

use crate::mail::Mailer;
use tokio::task::JoinSet;

/// How often the outbox is polled: the usual delay between a change and its first attempt.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// How long one attempt may take, connection included; a slower endpoint counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Attempts before a message is given up: with [`backoff`], about nine hours of retries.
pub const MAX_ATTEMPTS: u32 = 20;

/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3_600);

/// Messages claimed per poll and sent concurrently, so one slow endpoint delays the rest of
/// the queue by at most one timeout.
const BATCH: u32 = 32;

/// How long a claim hides a message from other workers. Longer than an attempt can take, so a
/// slow attempt is not duplicated; if the worker dies holding it, the message is sent again
/// once it expires.
const CLAIM: Duration = Duration::from_secs(60);

/// How long a message may wait for an endpoint this node does not know before it is given
/// up. Nodes sharing a database may briefly disagree on `[[webhooks]]` during a rolling
/// restart; a node that lacks the endpoint leaves the message to one that has it.
const UNKNOWN_ENDPOINT_GRACE: Duration = Duration::from_secs(600);

/// The longest `last_error` kept: enough to tell a timeout from a 500.
const MAX_ERROR_LEN: usize = 200;

/// The delivery worker: a pass over the due messages every [`POLL_INTERVAL`], until
/// shutdown is requested.
pub async fn deliver(tessera: Arc<Tessera>, mut stop: Stopping) {
    let worker = match Worker::new(tessera) {
        Ok(worker) => worker,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook HTTP client; webhooks will not be delivered");
            return;
        }
    };
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while stop.tick(&mut tick).await {
        // A full batch that was sent means a backlog: take the next one without waiting.
        loop {
            match worker.pass().await {
                Ok((due, sent)) if due >= BATCH as usize && sent > 0 && !stop.is_requested() => {}
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the webhook outbox");
                    break;
                }
            }
        }
    }
}

/// Sends due outbox messages; [`deliver`] runs one in a loop.
pub struct Worker {
    tessera: Arc<Tessera>,
    client: reqwest::Client,
    /// `None` without `smtp_url`: mail jobs are then given up, and the log says so.
    mailer: Option<Arc<Mailer>>,
}

impl Worker {
    pub fn new(tessera: Arc<Tessera>) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            // A redirect is not an acknowledgement: the endpoint's URL is the one configured.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("Tessera-Webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let mailer = match Mailer::from_config(&tessera.config().mail) {
            Ok(None) => {
                tracing::info!(
                    "no mail is configured (smtp_url): recovery and verification links are not mailed"
                );
                None
            }
            Ok(mailer) => mailer.map(Arc::new),
            Err(e) => {
                tracing::error!(error = %e, "cannot use smtp_url; no mail will be sent");
                None
            }
        };
        Ok(Self {
            tessera,
            client,
            mailer,
        })
    }

    /// One pass: every message due now (up to a batch) gets one attempt, concurrently; returns
    /// how many were sent (whatever the answer). Waits for all of them, so passes never
    /// overlap.
    pub async fn deliver_due(&self) -> Result<usize, StoreError> {
        Ok(self.pass().await?.1)
    }

    /// [`deliver_due`](Self::deliver_due), also returning how many messages were due.
    async fn pass(&self) -> Result<(usize, usize), StoreError> {
        let due = self
            .tessera
            .due_webhook_messages(Timestamp::now(), BATCH)
            .await?;
        let taken = due.len();
        let mut attempts = JoinSet::new();
        for queued in due {
            let (tessera, client) = (Arc::clone(&self.tessera), self.client.clone());
            if queued.message.event_type.is_mail() {
                let mailer = self.mailer.clone();
                attempts.spawn(async move { send_mail(&tessera, mailer.as_deref(), queued).await });
            } else {
                attempts.spawn(async move { attempt(&tessera, &client, queued).await });
            }
        }
        let mut attempted = 0;
        while let Some(outcome) = attempts.join_next().await {
            match outcome {
                Ok(Ok(true)) => attempted += 1,
                Ok(Ok(false)) => {}
                // The claim expires and another attempt follows: nothing is lost.
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot record a webhook attempt"),
                Err(e) => tracing::error!(error = %e, "webhook attempt task failed"),
            }
        }
        Ok((taken, attempted))
    }
}

/// Claims `queued`, sends it and records the outcome; `false` if another worker had it or it
/// was not sent.
async fn attempt(
    tessera: &Tessera,
    client: &reqwest::Client,
    queued: QueuedMessage,
) -> Result<bool, StoreError> {
    let message = &queued.message;
    let endpoint = origin_of(&message.endpoint).unwrap_or_default();
    let now = Timestamp::now();
    let Some(webhook) = tessera
        .config()
        .webhooks
        .iter()
        .find(|w| w.url == message.endpoint)
    else {
        let waited = now.since(message.created_at);
        if waited < UNKNOWN_ENDPOINT_GRACE {
            // Another node may know it; look again after a claim's length.
            if tessera
                .claim_webhook_message(message.id, now, now.saturating_add(CLAIM))
                .await?
            {
                tracing::debug!(message = %message.id, %endpoint,
                    "webhook endpoint not configured on this node; message left for another");
            }
            return Ok(false);
        }
        if tessera
            .give_up_webhook(message.id, now, "endpoint no longer configured")
            .await?
        {
            tracing::warn!(message = %message.id, event = %message.event_type, %endpoint,
                "webhook endpoint no longer configured; message given up");
        }
        return Ok(false);
    };
    if !tessera
        .claim_webhook_message(message.id, now, now.saturating_add(CLAIM))
        .await?
    {
        return Ok(false);
    }
    let outcome = post(client, webhook, &message.body).await;
    let at = Timestamp::now();
    match outcome {
        Ok(()) => {
            tessera.webhook_delivered(message.id, at).await?;
            tracing::debug!(message = %message.id, event = %message.event_type, %endpoint, "webhook delivered");
        }
        Err(error) => {
            let attempts = queued.attempts.saturating_add(1);
            if attempts >= MAX_ATTEMPTS {
                tessera.give_up_webhook(message.id, at, &error).await?;
                tracing::warn!(message = %message.id, event = %message.event_type, %endpoint,
                    attempts, %error, "webhook given up");
            } else {
                let next = retry_at(attempts);
                tessera
                    .webhook_failed(message.id, attempts, next, &error)
                    .await?;
                tracing::info!(message = %message.id, event = %message.event_type, %endpoint,
                    attempts, %error, retry_at = %next.to_rfc3339(), "webhook attempt failed");
            }
        }
    }
    Ok(true)
}

/// Claims a mail job, turns it into a mail (the core looks the account up and derives the
/// link) and sends it, recording the outcome as for a webhook: retried with [`backoff`] until
/// [`MAX_ATTEMPTS`]. The mail's link is never logged.
async fn send_mail(
    tessera: &Tessera,
    mailer: Option<&Mailer>,
    queued: QueuedMessage,
) -> Result<bool, StoreError> {
    let message = &queued.message;
    let now = Timestamp::now();
    if !tessera
        .claim_webhook_message(message.id, now, now.saturating_add(CLAIM))
        .await?
    {
        return Ok(false);
    }
    let Some(mailer) = mailer else {
        // Nothing is prepared either: a link minted here would supersede one an operator
        // made with `tessera user recovery-link`.
        tessera
            .give_up_webhook(message.id, now, "no smtp_url configured")
            .await?;
        tracing::warn!(message = %message.id, kind = %message.event_type,
            "no mail is configured (smtp_url); mail not sent");
        return Ok(false);
    };
    let outcome = match tessera.prepare_mail(message).await {
        Ok(Some(mail)) => mailer.send(&mail).await,
        Ok(None) => {
            tessera
                .webhook_delivered(message.id, Timestamp::now())
                .await?;
            return Ok(true);
        }
        Err(AuthError::Store(e)) => return Err(e),
        Err(e) => Err(e.to_string()),
    };
    let at = Timestamp::now();
    match outcome {
        Ok(()) => {
            tessera.webhook_delivered(message.id, at).await?;
            tracing::info!(message = %message.id, kind = %message.event_type, "mail sent");
        }
        Err(error) => {
            let error = truncate(error, MAX_ERROR_LEN);
            let attempts = queued.attempts.saturating_add(1);
            if attempts >= MAX_ATTEMPTS {
                tessera.give_up_webhook(message.id, at, &error).await?;
                tracing::warn!(message = %message.id, kind = %message.event_type,
                    attempts, %error, "mail given up");
            } else {
                let next = retry_at(attempts);
                tessera
                    .webhook_failed(message.id, attempts, next, &error)
                    .await?;
                tracing::info!(message = %message.id, kind = %message.event_type,
                    attempts, %error, retry_at = %next.to_rfc3339(), "mail attempt failed");
            }
        }
    }
    Ok(true)
}

/// POSTs `body` to the endpoint, signed now; `Err` says briefly why it was not acknowledged.
async fn post(client: &reqwest::Client, webhook: &Webhook, body: &str) -> Result<(), String> {
    let signature = signature_header(&webhook.secret, Timestamp::now(), body.as_bytes());
    let response = client
        .post(&webhook.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature)
        .body(body.to_owned())
        .send()
        .await
        .map_err(|e| describe(&e))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {}", status.as_u16()))
    }
}

/// A failed request in a few words. `reqwest`'s own message names the URL, which may carry a
/// credential, so the innermost cause (refused, DNS, TLS …) is used instead.
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut cause = std::error::Error::source(error);
    let mut root = None;
    while let Some(next) = cause {
        root = Some(next);
        cause = next.source();
    }
    let text = match root {
        Some(root) => format!("{kind}: {root}"),
        None => kind.to_owned(),
    };
    truncate(text, MAX_ERROR_LEN)
}

/// The wait before attempt `attempts + 1`, after `attempts` failures: 1 s, 2 s, 4 s … doubling
/// up to [`MAX_BACKOFF`].
pub fn backoff(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(63);
    Duration::from_secs(1u64 << doublings).min(MAX_BACKOFF)
}

/// When the next attempt is due: [`backoff`] from now.
fn retry_at(attempts: u32) -> Timestamp {
    Timestamp::now().saturating_add(backoff(attempts))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_up_to_an_hour() {
        let waits: Vec<u64> = (1..=14).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(
            waits,
            [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 3600, 3600]
        );
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
        let total: u64 = (1..MAX_ATTEMPTS).map(|n| backoff(n).as_secs()).sum();
        assert!((8 * 3_600..12 * 3_600).contains(&total), "{total}");
    }

    #[test]
    fn retries_are_never_early() {
        let before = Timestamp::now();
        let at = retry_at(1);
        let after = Timestamp::now();
        assert!(at >= before.saturating_add(backoff(1)));
        assert!(at <= after.saturating_add(backoff(1)));
    }
}
