//! Background work and the state it keeps: `last_seen_at` write-back, pruning what can no
//! longer decide anything, and the webhook outbox the delivery worker drains.

use std::time::Duration;

use super::Tessera;
use crate::error::AuthError;
use crate::model::{OutboxId, Timestamp};
use crate::store::StoreError;
use crate::webhooks::QueuedMessage;

/// How long delivered (or abandoned) webhook messages stay in the outbox, for inspection,
/// before housekeeping deletes them.
const OUTBOX_RETENTION: Duration = Duration::from_secs(7 * 86_400);

impl Tessera {
    /// Deletes what can no longer decide anything: denylisted `jti`s past their `exp`, and
    /// sessions dead for longer than an access token lives (with their refresh tokens), so
    /// the store does not grow without bound.
    pub async fn housekeeping(&self) -> Result<(u64, u64), AuthError> {
        let now = Timestamp::now();
        let pruned = self.store.prune_denylist(now).await?;
        let horizon = now.saturating_sub(crate::keys::retired_key_lifetime(
            self.config.access_token_ttl,
        ));
        let purged = self.store.purge_dead_sessions(horizon).await?;
        // Events older than the horizon can change no verdict; a node cut off for longer
        // reloads its whole state when it reconnects.
        self.store.prune_events(horizon).await?;
        // Webhook messages leave the outbox only once delivered or given up; those are kept a
        // while for inspection.
        let retention = now.saturating_sub(OUTBOX_RETENTION);
        self.store.prune_outbox(retention).await?;
        // Guessing tallies past their expiry count nothing (Redis expires its own).
        self.guessing().prune_tallies(now).await?;
        // Mailed links past their expiry are refused whether stored or not.
        self.store.prune_email_tokens(now).await?;
        Ok((pruned, purged))
    }

    /// A round trip to the store, for readiness.
    pub async fn ping_store(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }

    // ----- the webhook outbox, for the delivery worker (see `OutboxStore`) -----------------

    /// Up to `limit` messages due at `now`, earliest first.
    pub async fn due_webhook_messages(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        self.store.due_messages(now, limit).await
    }

    /// Takes a due message for one attempt until `until`; `false` if another worker has it.
    pub async fn claim_webhook_message(
        &self,
        id: OutboxId,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool, StoreError> {
        self.store.claim_message(id, now, until).await
    }

    /// The endpoint acknowledged the message: it is never sent again.
    pub async fn webhook_delivered(&self, id: OutboxId, at: Timestamp) -> Result<bool, StoreError> {
        self.store.mark_delivered(id, at).await
    }

    /// An attempt failed: try again at `next_attempt_at`.
    pub async fn webhook_failed(
        &self,
        id: OutboxId,
        attempts: u32,
        next_attempt_at: Timestamp,
        error: &str,
    ) -> Result<bool, StoreError> {
        self.store
            .reschedule(id, attempts, next_attempt_at, error)
            .await
    }

    /// Stops retrying a message.
    pub async fn give_up_webhook(
        &self,
        id: OutboxId,
        at: Timestamp,
        error: &str,
    ) -> Result<bool, StoreError> {
        self.store.give_up(id, at, error).await
    }
}
