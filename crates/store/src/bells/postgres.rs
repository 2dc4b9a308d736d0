//! PostgreSQL `LISTEN/NOTIFY` as a bell: the feed without Redis.
//!
//! Every transaction that appends to the revocation log also runs `NOTIFY` on [`CHANNEL`]
//! (see [`PostgresStore`](crate::PostgresStore)), and PostgreSQL delivers a notification only
//! when its transaction commits, so a ring always follows a committed entry and nothing needs
//! publishing after the commit. The listener holds a connection of its own, outside the
//! store's pool; heartbeats go through another, so hearing one proves the listening
//! connection works.

use std::str::FromStr as _;

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tessera_core::bell::{Bell, Heartbeat};
use tessera_core::StoreError;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{drive, Channel, Heard, Publish};

/// The channel every node listens on, and the store notifies in each revoking transaction.
pub use crate::postgres::NOTIFY_CHANNEL as CHANNEL;

/// Starts listening with the server at `url` (the `database` setting). Returns at once: the
/// bell is down until the first `LISTEN` succeeds, and the driver retries until it does.
pub fn listen(url: &str, heartbeat: Heartbeat) -> Result<Arc<Bell>, StoreError> {
    let options = PgConnectOptions::from_str(url).map_err(|e| {
        StoreError::Unavailable(format!("cannot parse the PostgreSQL URL for LISTEN: {e}"))
    })?;
    let beats = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(heartbeat.timeout)
        .connect_lazy_with(options.clone());
    let channel = PgChannel {
        options,
        beats,
        timeout: heartbeat.timeout,
        listener: None,
    };
    Ok(drive(
        Bell::new("PostgreSQL LISTEN/NOTIFY"),
        channel,
        heartbeat,
        false,
    ))
}

struct PgChannel {
    options: PgConnectOptions,
    /// One connection for heartbeats, apart from the listener's.
    beats: PgPool,
    timeout: std::time::Duration,
    /// The task forwarding notifications, with the listener's own one-connection pool.
    listener: Option<(JoinHandle<()>, PgPool)>,
}

#[async_trait]
impl Channel for PgChannel {
    async fn open(&mut self) -> Result<mpsc::UnboundedReceiver<Heard>, String> {
        // A pool of its own, rebuilt at every opening: a connection found dead (or silent) is
        // never handed back to the listener.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(self.timeout)
            .connect_lazy_with(self.options.clone());
        let mut listener = PgListener::connect_with(&pool)
            .await
            .map_err(|e| e.to_string())?;
        listener.listen(CHANNEL).await.map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(Heard::Up);
        let task = tokio::spawn(forward(listener, tx));
        self.listener = Some((task, pool));
        Ok(rx)
    }

    fn publish(&self, payload: String) -> Publish {
        let beats = self.beats.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let notify = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(payload)
                .execute(&beats);
            match tokio::time::timeout(timeout, notify).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("NOTIFY timed out".to_owned()),
            }
        })
    }

    fn close(&mut self) {
        if let Some((task, pool)) = self.listener.take() {
            task.abort();
            // Closing waits for the listener's connection, which may hang: not here.
            drop(tokio::spawn(async move { pool.close().await }));
        }
    }
}

/// Forwards notifications until the connection is lost. `try_recv` answers `None` when the
/// connection dropped (notifications may have been missed); the driver then opens a new one
/// and the follower reads the log before trusting the feed again.
async fn forward(mut listener: PgListener, heard: mpsc::UnboundedSender<Heard>) {
    let end = loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                if heard
                    .send(Heard::Message(notification.payload().to_owned()))
                    .is_err()
                {
                    return;
                }
            }
            Ok(None) => break "the LISTEN connection dropped".to_owned(),
            Err(e) => break e.to_string(),
        }
    };
    let _ = heard.send(Heard::Down(end));
    // Dropping the sender closes the driver's receiver: it reopens the channel.
}
