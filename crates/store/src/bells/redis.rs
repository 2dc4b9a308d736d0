//! Redis pub/sub as a bell: the low-latency feed beside PostgreSQL (SPEC §6).
//!
//! One [`ConnectionManager`] per node, speaking RESP3 so that pub/sub messages arrive as
//! push frames on the same multiplexed connection that publishes. The manager reconnects by
//! itself and, with automatic resubscription, subscribes again; the `subscribe` push that
//! confirms it starts a new generation of the bell, so the follower reads the log before it
//! trusts the feed again. A connection that goes silent without an error is caught by the
//! heartbeat and the manager rebuilt.
//!
//! Redis holds no state of Tessera's: only the channel `{redis_prefix}revocations`, and no
//! key. A flush or a restart without persistence loses nothing, and nothing can grow.

use std::time::Duration;

use std::sync::Arc;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands as _, Client, IntoConnectionInfo as _, ProtocolVersion, PushKind};
use tessera_core::bell::{Bell, Heartbeat};
use tessera_core::url::redact_url;
use tessera_core::StoreError;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{drive, Channel, Heard, Publish};

/// Starts subscribing with the server at `url` (the `redis` setting), on the channel
/// `{prefix}revocations`. Returns at once: the bell is down until the first subscription is
/// confirmed, and the driver retries until it is.
pub fn subscribe(url: &str, prefix: &str, heartbeat: Heartbeat) -> Result<Arc<Bell>, StoreError> {
    let info = url.into_connection_info().map_err(|e| {
        StoreError::Unavailable(format!(
            "cannot parse the Redis URL `{}`: {e}",
            redact_url(url)
        ))
    })?;
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let client = Client::open(info.set_redis_settings(settings))
        .map_err(|e| StoreError::Unavailable(format!("cannot use Redis: {e}")))?;
    let channel = RedisChannel {
        client,
        name: format!("{prefix}revocations"),
        timeout: heartbeat.timeout,
        manager: None,
        translator: None,
    };
    Ok(drive(Bell::new("Redis pub/sub"), channel, heartbeat, true))
}

struct RedisChannel {
    client: Client,
    name: String,
    timeout: Duration,
    manager: Option<ConnectionManager>,
    translator: Option<JoinHandle<()>>,
}

#[async_trait]
impl Channel for RedisChannel {
    async fn open(&mut self) -> Result<mpsc::UnboundedReceiver<Heard>, String> {
        let (pushes, mut received) = mpsc::unbounded_channel();
        let config = ConnectionManagerConfig::new()
            .set_push_sender(pushes)
            .set_automatic_resubscription()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_max_delay(Duration::from_secs(1));
        let mut manager = ConnectionManager::new_with_config(self.client.clone(), config)
            .await
            .map_err(|e| e.to_string())?;
        manager
            .subscribe(&self.name)
            .await
            .map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::unbounded_channel();
        let channel = self.name.clone();
        // Push frames in, what the driver needs out.
        let translator = tokio::spawn(async move {
            while let Some(push) = received.recv().await {
                let heard = match push.kind {
                    PushKind::Subscribe if names(&push.data, &channel) => Heard::Up,
                    PushKind::Message if names(&push.data, &channel) => {
                        match push.data.last().map(redis::from_redis_value_ref::<String>) {
                            Some(Ok(payload)) => Heard::Message(payload),
                            _ => continue,
                        }
                    }
                    PushKind::Disconnection => Heard::Down("disconnected from Redis".to_owned()),
                    _ => continue,
                };
                if tx.send(heard).is_err() {
                    return;
                }
            }
        });
        self.manager = Some(manager);
        self.translator = Some(translator);
        Ok(rx)
    }

    fn publish(&self, payload: String) -> Publish {
        let manager = self.manager.clone();
        let name = self.name.clone();
        Box::pin(async move {
            let Some(mut manager) = manager else {
                return Err("not connected".to_owned());
            };
            manager
                .publish::<_, _, ()>(&name, payload)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn close(&mut self) {
        self.manager = None;
        if let Some(task) = self.translator.take() {
            task.abort();
        }
    }
}

/// Whether a push frame's first element is our channel's name.
fn names(data: &[redis::Value], channel: &str) -> bool {
    data.first()
        .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
        .is_some_and(|name| name == channel)
}
