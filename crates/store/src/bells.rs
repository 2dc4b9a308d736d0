//! The drivers of the push channels behind [`PushFeed`](tessera_core::bell::PushFeed):
//! PostgreSQL `LISTEN/NOTIFY` ([`listen`]) and Redis pub/sub ([`subscribe`]).
//!
//! Each driver owns its connection in one task, keeps the node's [`Bell`] up to date, and
//! proves the channel alive with a heartbeat: every [`Heartbeat::interval`] it publishes a
//! message naming itself and expects to hear it back within [`Heartbeat::timeout`]. A channel
//! that stops delivering without an error (a half-open TCP connection, a frozen proxy) is then
//! declared lost and rebuilt from scratch, which no client library does by itself.
//!
//! Messages are hints: `rev` means "look at the log", a heartbeat means only "alive". Neither
//! carries a revocation, so a forged or lost message can cost a read, never a verdict.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tessera_core::bell::{Bell, Heartbeat};
use tokio::sync::mpsc;

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;

#[cfg(feature = "postgres")]
pub use postgres::{listen, CHANNEL as POSTGRES_CHANNEL};
#[cfg(feature = "redis")]
pub use redis::subscribe;

/// The payload that rings other nodes' bells.
const RING: &str = "rev";
/// Heartbeats start with it, followed by the sending driver's random id.
const HEARTBEAT_PREFIX: &str = "hb:";
/// The longest pause between two attempts at reopening a channel.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// What a channel tells its driver.
#[derive(Debug)]
enum Heard {
    /// Subscribed (again): start a new generation.
    Up,
    /// A message's payload.
    Message(String),
    /// The connection dropped; the channel may come back on its own with [`Heard::Up`].
    Down(String),
}

/// One push channel as the driver sees it.
#[async_trait]
trait Channel: Send + 'static {
    /// Connects and subscribes. What the channel hears arrives on the receiver, starting with
    /// [`Heard::Up`] once the subscription is in place.
    async fn open(&mut self) -> Result<mpsc::UnboundedReceiver<Heard>, String>;
    /// Publishes `payload` to every subscriber, this node included. Runs as a task of its own
    /// and must time out by itself.
    fn publish(&self, payload: String) -> Publish;
    /// Drops the current connection, before the channel is opened anew.
    fn close(&mut self);
}

/// A publication in flight.
type Publish = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Starts driving `channel` for `bell`, in a task that ends (closing the connection) once
/// nothing else holds the bell. `announce`: this node's commits must be published (Redis);
/// PostgreSQL announces them itself, with a `NOTIFY` inside each transaction.
fn drive(
    bell: Arc<Bell>,
    channel: impl Channel,
    heartbeat: Heartbeat,
    announce: bool,
) -> Arc<Bell> {
    drop(tokio::spawn(run(
        Arc::clone(&bell),
        channel,
        heartbeat,
        announce,
    )));
    bell
}

async fn run(bell: Arc<Bell>, mut channel: impl Channel, heartbeat: Heartbeat, announce: bool) {
    let me = format!("{HEARTBEAT_PREFIX}{}", uuid_like());
    let mut backoff = heartbeat.interval.min(MAX_BACKOFF);
    let mut failures = 0u32;
    loop {
        let mut heard = match tokio::time::timeout(heartbeat.timeout, channel.open()).await {
            Ok(Ok(heard)) => heard,
            failed => {
                let error = match failed {
                    Ok(Err(error)) => error,
                    _ => "timed out".to_owned(),
                };
                // Once per outage at `warn`; the retries after it only at `debug`.
                if failures == 0 {
                    tracing::warn!(feed = bell.name(), %error, "revocation feed cannot connect; retrying");
                } else {
                    tracing::debug!(feed = bell.name(), %error, "revocation feed still cannot connect");
                }
                failures += 1;
                bell.lost();
                channel.close();
                if Arc::strong_count(&bell) == 1 {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = heartbeat.interval.min(MAX_BACKOFF);
        let mut last_own = tokio::time::Instant::now();
        let mut ticker = tokio::time::interval(heartbeat.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let why = loop {
            tokio::select! {
                _ = ticker.tick() => {
                    if Arc::strong_count(&bell) == 1 {
                        channel.close();
                        return;
                    }
                    if last_own.elapsed() > heartbeat.timeout {
                        break format!("own heartbeat not heard for {:?}", last_own.elapsed());
                    }
                    drop(tokio::spawn(channel.publish(me.clone())));
                }
                () = bell.to_announce(), if announce => {
                    drop(tokio::spawn(channel.publish(RING.to_owned())));
                }
                message = heard.recv() => match message {
                    Some(Heard::Up) => {
                        if failures > 0 {
                            tracing::info!(feed = bell.name(), "revocation feed connected again");
                        }
                        failures = 0;
                        last_own = tokio::time::Instant::now();
                        bell.connected();
                    }
                    Some(Heard::Message(payload)) => {
                        if payload == me {
                            last_own = tokio::time::Instant::now();
                        } else if !payload.starts_with(HEARTBEAT_PREFIX) {
                            bell.rang();
                        }
                    }
                    Some(Heard::Down(error)) => {
                        if failures == 0 {
                            tracing::warn!(feed = bell.name(), %error, "revocation feed disconnected");
                        }
                        failures += 1;
                        bell.lost();
                    }
                    None => break "the connection closed".to_owned(),
                },
            }
        };
        if failures == 0 {
            tracing::warn!(feed = bell.name(), reason = %why, "revocation feed lost; reconnecting");
        }
        failures += 1;
        bell.lost();
        channel.close();
    }
}

/// A random id for this driver's heartbeats.
fn uuid_like() -> String {
    tessera_core::model::SessionId::new().to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    use super::*;

    /// A channel in process memory that can be cut, silenced and restored.
    struct Loopback {
        state: Arc<LoopState>,
    }

    #[derive(Default)]
    struct LoopState {
        subscriber: std::sync::Mutex<Option<mpsc::UnboundedSender<Heard>>>,
        silent: AtomicBool,
        refuse: AtomicBool,
        opens: AtomicU32,
    }

    #[async_trait]
    impl Channel for Loopback {
        async fn open(&mut self) -> Result<mpsc::UnboundedReceiver<Heard>, String> {
            if self.state.refuse.load(Ordering::SeqCst) {
                return Err("refused".to_owned());
            }
            self.state.opens.fetch_add(1, Ordering::SeqCst);
            let (tx, rx) = mpsc::unbounded_channel();
            tx.send(Heard::Up).unwrap();
            *self.state.subscriber.lock().unwrap() = Some(tx);
            Ok(rx)
        }

        fn publish(&self, payload: String) -> Publish {
            let state = Arc::clone(&self.state);
            Box::pin(async move {
                if !state.silent.load(Ordering::SeqCst) {
                    if let Some(tx) = &*state.subscriber.lock().unwrap() {
                        let _ = tx.send(Heard::Message(payload));
                    }
                }
                Ok(())
            })
        }

        fn close(&mut self) {
            self.state.subscriber.lock().unwrap().take();
        }
    }

    const BEAT: Heartbeat = Heartbeat {
        interval: Duration::from_millis(20),
        timeout: Duration::from_millis(60),
    };

    async fn until(what: &str, check: impl Fn() -> bool) {
        for _ in 0..200 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("never: {what}");
    }

    #[tokio::test]
    async fn a_silent_channel_is_declared_lost_and_rebuilt() {
        let state = Arc::new(LoopState::default());
        let bell = Bell::new("loopback");
        drive(
            Arc::clone(&bell),
            Loopback {
                state: Arc::clone(&state),
            },
            BEAT,
            true,
        );
        until("connected", || bell.health() == Some(1)).await;
        // Heartbeats keep it healthy well past the timeout.
        tokio::time::sleep(BEAT.timeout * 3).await;
        assert_eq!(bell.health(), Some(1));

        // Silent: messages stop without any error.
        state.silent.store(true, Ordering::SeqCst);
        // Lost, then at once reopened (in a new generation) and lost again, while it stays
        // silent.
        until("lost", || bell.health() != Some(1)).await;
        state.silent.store(false, Ordering::SeqCst);
        until("rebuilt in a new generation", || {
            bell.health().is_some_and(|g| g > 1)
        })
        .await;
        assert!(
            state.opens.load(Ordering::SeqCst) >= 2,
            "the channel was reopened"
        );
        assert!(bell.reconnects() >= 1);

        // The driver stops, closing its channel, once nothing else holds the bell.
        drop(bell);
        until("closed", || state.subscriber.lock().unwrap().is_none()).await;
    }

    #[tokio::test]
    async fn a_refused_channel_is_retried_until_it_answers() {
        let state = Arc::new(LoopState::default());
        state.refuse.store(true, Ordering::SeqCst);
        let bell = Bell::new("loopback");
        drive(
            Arc::clone(&bell),
            Loopback {
                state: Arc::clone(&state),
            },
            BEAT,
            true,
        );
        tokio::time::sleep(BEAT.timeout * 2).await;
        assert_eq!(bell.health(), None);
        state.refuse.store(false, Ordering::SeqCst);
        until("connected", || bell.health().is_some()).await;
    }

    #[tokio::test]
    async fn commits_are_announced_and_rings_reach_the_bell() {
        let state = Arc::new(LoopState::default());
        let bell = Bell::new("loopback");
        drive(
            Arc::clone(&bell),
            Loopback {
                state: Arc::clone(&state),
            },
            BEAT,
            true,
        );
        until("connected", || bell.health().is_some()).await;
        // The follower's side: a ring from this node's own announcement comes back.
        let feed_wakes = tokio::time::timeout(Duration::from_secs(2), async {
            // Drain the permit left by `connected`.
            bell.wait_for_ring(Duration::from_millis(1)).await;
            bell.announce();
            bell.wait_for_ring(Duration::from_secs(2)).await
        })
        .await
        .unwrap();
        assert!(feed_wakes, "the announcement rang the bell");
    }
}
