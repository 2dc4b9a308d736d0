//! The guessing counters in Redis (SPEC §6): with `redis` configured, every node counts
//! attempts there, under `{prefix}guess:{key}`, each key with a native TTL at its tally's
//! expiry, so Redis holds only the tallies of about one window and forgets the rest by
//! itself. Losing them (a flush, a restart without persistence) forgives recent failures and
//! loses no acknowledged write: PostgreSQL stays the system of record.
//!
//! The read-modify-write is a compare-and-set: read the value, apply the core's rule, and
//! write it with a small script that succeeds only if the value is still the one read,
//! retrying otherwise. The rule stays in the core, in one place for every backend; Redis only
//! makes the write conditional.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands as _, Client, Script};
use tessera_core::guessing::Tally;
use tessera_core::model::Timestamp;
use tessera_core::store::GuessingCounters;
use tessera_core::url::redact_url;
use tessera_core::StoreError;
use tokio::sync::OnceCell;

/// How long one Redis operation may take before the attempt fails (closed: a login then
/// answers 503, never an unlimited guess).
const TIMEOUT: Duration = Duration::from_secs(2);

/// Compare-and-set races lost in a row before giving up: only a key under a flood of
/// concurrent attempts loses that often, and then failing the attempt is right.
const MAX_RACES: usize = 64;

/// `SET` (or `DEL` for an empty value) only if the key still holds `ARGV[1]` (empty: absent).
const COMPARE_AND_SET: &str = r"
local current = redis.call('GET', KEYS[1])
if current == false then current = '' end
if current ~= ARGV[1] then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
";

pub struct RedisCounters {
    client: Client,
    prefix: String,
    /// Connected on first use, so a node starts while Redis is down; it reconnects itself.
    connection: OnceCell<ConnectionManager>,
    script: Script,
}

impl RedisCounters {
    /// Counters on the server at `url` (the `redis` setting), under `prefix`.
    pub fn new(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let client = Client::open(url).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot use the Redis URL `{}`: {e}",
                redact_url(url)
            ))
        })?;
        Ok(Self {
            client,
            prefix: format!("{prefix}guess:"),
            connection: OnceCell::new(),
            script: Script::new(COMPARE_AND_SET),
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        self.connection
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(TIMEOUT))
                    .set_response_timeout(Some(TIMEOUT));
                ConnectionManager::new_with_config(self.client.clone(), config).await
            })
            .await
            .cloned()
            .map_err(unavailable)
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

#[allow(clippy::needless_pass_by_value)] // used as `map_err(unavailable)`
fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(format!("Redis: {e}"))
}

/// `count:window_ends:last:expires_at`, in Unix milliseconds.
fn encode(tally: &Tally) -> String {
    format!(
        "{}:{}:{}:{}",
        tally.count,
        tally.window_ends.as_unix_millis(),
        tally.last.as_unix_millis(),
        tally.expires_at.as_unix_millis()
    )
}

/// `None` for anything that is not a tally (treated as absent, and overwritten).
fn decode(text: &str) -> Option<Tally> {
    let mut parts = text.split(':');
    let count = parts.next()?.parse().ok()?;
    let mut millis = || {
        parts
            .next()?
            .parse::<i64>()
            .ok()
            .map(Timestamp::from_unix_millis)
    };
    let tally = Tally {
        count,
        window_ends: millis()?,
        last: millis()?,
        expires_at: millis()?,
    };
    Some(tally)
}

#[async_trait]
impl GuessingCounters for RedisCounters {
    async fn update_tally(
        &self,
        key: &str,
        now: Timestamp,
        change: &(dyn Fn(Option<Tally>) -> Option<Tally> + Send + Sync),
    ) -> Result<Option<Tally>, StoreError> {
        let mut connection = self.connection().await?;
        let key = self.key(key);
        for _ in 0..MAX_RACES {
            let raw: Option<String> = connection.get(&key).await.map_err(unavailable)?;
            let raw = raw.unwrap_or_default();
            let before = decode(&raw).filter(|t| t.expires_at > now);
            let (value, ttl) = match change(before) {
                Some(after) if after.expires_at > now => {
                    let ttl = after.expires_at.since(now).as_millis().max(1);
                    (encode(&after), ttl.to_string())
                }
                _ => (String::new(), String::new()),
            };
            let set: i32 = self
                .script
                .key(&key)
                .arg(&raw)
                .arg(&value)
                .arg(&ttl)
                .invoke_async(&mut connection)
                .await
                .map_err(unavailable)?;
            if set == 1 {
                return Ok(before);
            }
        }
        Err(StoreError::Unavailable(format!(
            "Redis: lost {MAX_RACES} races in a row on one guessing tally"
        )))
    }

    async fn tally(&self, key: &str, now: Timestamp) -> Result<Option<Tally>, StoreError> {
        let mut connection = self.connection().await?;
        let raw: Option<String> = connection.get(self.key(key)).await.map_err(unavailable)?;
        Ok(raw
            .as_deref()
            .and_then(decode)
            .filter(|t| t.expires_at > now))
    }

    async fn clear_tally(&self, key: &str) -> Result<(), StoreError> {
        let mut connection = self.connection().await?;
        let _: () = connection.del(self.key(key)).await.map_err(unavailable)?;
        Ok(())
    }

    async fn prune_tallies(&self, _now: Timestamp) -> Result<u64, StoreError> {
        // Every key carries its TTL: Redis forgets expired tallies by itself.
        Ok(0)
    }
}
