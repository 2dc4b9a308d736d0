//! Tessera's storage backends, one feature each, all implementing the traits of
//! [`tessera_core::store`] and all passing the one suite in [`conformance`]:
//!
//! - [`MemoryStore`] (`memory`): everything in process memory, for tests of applications and
//!   single-process demos; lost on exit.
//! - [`SqliteStore`] (`sqlite`): the embedded durable default, one file in WAL mode.
//! - [`PostgresStore`] (`postgres`): the shared system of record for several nodes, with
//!   `LISTEN/NOTIFY` on [`postgres::NOTIFY_CHANNEL`] to wake the revocation feed.
//!
//! A server picks one at start from the `database` setting with [`open`] and holds it as
//! `Arc<dyn Store>`, so nothing above this crate knows which backend it talks to.
//!
//! [`conformance`] and [`testing`] are test code shipped in the library, so that every
//! backend's and every crate's tests share them.

use std::sync::Arc;
use std::time::Duration;

use tessera_core::bell::PushFeed;
use tessera_core::revocation::{RevocationFeed, StoreFeed};
use tessera_core::{Store, StoreError};

#[cfg(any(feature = "postgres", feature = "redis"))]
pub mod bells;
pub mod conformance;
#[cfg(feature = "memory")]
pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "postgres")]
pub mod scratch;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod testing;

#[cfg(feature = "memory")]
pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
#[cfg(feature = "redis")]
pub use redis::RedisCounters;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

/// How long a node waits on a healthy push channel before it reads the log anyway: what a
/// lost `NOTIFY` or pub/sub message can cost at most.
pub const SAFETY_POLL: Duration = Duration::from_secs(1);
/// How often a node reads the log while its push channel is down, or when it has none.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// The revocation feed for a node on `store` (SPEC §5, §6): Redis pub/sub when `redis`
/// (URL, prefix) is set; PostgreSQL `LISTEN/NOTIFY` on a PostgreSQL `database`; otherwise the
/// store's log polled, which is in-process for the memory store and reaches every process
/// sharing a SQLite file. Push channels only wake the node, which reads the log either way.
///
/// Starts the push channel's driver in the background (it needs a Tokio runtime) and returns
/// at once; the feed is not trusted until the channel is up.
pub fn revocation_feed(
    store: Arc<dyn Store>,
    database: &str,
    redis: Option<(&str, &str)>,
    max_staleness: Duration,
) -> Result<Arc<dyn RevocationFeed>, StoreError> {
    #[cfg(any(feature = "postgres", feature = "redis"))]
    let heartbeat = tessera_core::bell::Heartbeat::for_staleness(max_staleness);
    #[cfg(not(any(feature = "postgres", feature = "redis")))]
    let _ = max_staleness;
    let bell = match redis {
        #[cfg(feature = "redis")]
        Some((url, prefix)) => bells::subscribe(url, prefix, heartbeat)?,
        #[cfg(not(feature = "redis"))]
        Some(_) => {
            return Err(StoreError::Unavailable(
                "`redis` needs tessera-store's `redis` feature, not enabled in this build"
                    .to_owned(),
            ))
        }
        #[cfg(feature = "postgres")]
        None if is_postgres(database) => bells::listen(database, heartbeat)?,
        None => {
            let _ = database;
            return Ok(Arc::new(StoreFeed::new(store, POLL_INTERVAL)));
        }
    };
    #[allow(unreachable_code)]
    Ok(Arc::new(PushFeed::new(
        store,
        bell,
        SAFETY_POLL,
        POLL_INTERVAL,
    )))
}

fn scheme(database: &str) -> String {
    database
        .trim()
        .split_once(':')
        .map_or("", |(scheme, _)| scheme)
        .to_ascii_lowercase()
}

/// Whether a `database` setting names PostgreSQL (`postgres://` or `postgresql://`).
#[cfg(feature = "postgres")]
pub fn is_postgres(database: &str) -> bool {
    matches!(scheme(database).as_str(), "postgres" | "postgresql")
}

/// The forms of the `database` setting this build understands, for error messages.
const ACCEPTED: &str = "`memory`, `sqlite://PATH`, `sqlite:PATH` or \
     `postgres://USER:PASSWORD@HOST:PORT/DATABASE` (also `postgresql://`)";

/// SPEC §2's default `database_pool_size`: PostgreSQL connections per node.
pub const DEFAULT_POOL_SIZE: u32 = 10;

/// Opens the store named by the `database` setting (SPEC §2) with the default pool size; see
/// [`open_with`].
pub async fn open(database: &str) -> Result<Arc<dyn Store>, StoreError> {
    open_with(database, DEFAULT_POOL_SIZE).await
}

/// Opens the store named by the `database` setting (SPEC §2): `memory` for the in-memory
/// store, `sqlite://PATH` or `sqlite:PATH` for a SQLite file (created if missing, schema
/// migrated), `postgres://…` or `postgresql://…` for a PostgreSQL database (schema migrated)
/// with a pool of `pool_size` connections (`database_pool_size`; ignored by the others).
///
/// Anything else is [`StoreError::Unavailable`] with a message naming the accepted forms.
/// No message quotes the whole value, which may carry a password: an unknown form is named by
/// its scheme, and PostgreSQL's errors show the URL with its password hidden.
pub async fn open_with(database: &str, pool_size: u32) -> Result<Arc<dyn Store>, StoreError> {
    let database = database.trim();
    if database == "memory" {
        return open_memory();
    }
    let scheme = scheme(database);
    match scheme.as_str() {
        "sqlite" => open_sqlite(database).await,
        "postgres" | "postgresql" => open_postgres(database, pool_size).await,
        "" => Err(StoreError::Unavailable(format!(
            "database setting has no scheme; use {ACCEPTED}"
        ))),
        other => Err(StoreError::Unavailable(format!(
            "database scheme `{other}` is not supported; use {ACCEPTED}"
        ))),
    }
}

#[cfg(feature = "memory")]
#[allow(clippy::unnecessary_wraps)] // the signature is shared with the feature-less variant
fn open_memory() -> Result<Arc<dyn Store>, StoreError> {
    Ok(Arc::new(MemoryStore::new()))
}

#[cfg(not(feature = "memory"))]
fn open_memory() -> Result<Arc<dyn Store>, StoreError> {
    Err(StoreError::Unavailable(
        "database `memory` needs tessera-store's `memory` feature, not enabled in this build"
            .to_owned(),
    ))
}

#[cfg(feature = "sqlite")]
async fn open_sqlite(database: &str) -> Result<Arc<dyn Store>, StoreError> {
    Ok(Arc::new(SqliteStore::open(database).await?))
}

#[cfg(not(feature = "sqlite"))]
#[allow(clippy::unused_async)] // the signature is shared with the feature-enabled variant
async fn open_sqlite(_database: &str) -> Result<Arc<dyn Store>, StoreError> {
    Err(StoreError::Unavailable(
        "database `sqlite:` needs tessera-store's `sqlite` feature, not enabled in this build"
            .to_owned(),
    ))
}

#[cfg(feature = "postgres")]
async fn open_postgres(database: &str, pool_size: u32) -> Result<Arc<dyn Store>, StoreError> {
    Ok(Arc::new(PostgresStore::open(database, pool_size).await?))
}

#[cfg(not(feature = "postgres"))]
#[allow(clippy::unused_async)] // the signature is shared with the feature-enabled variant
async fn open_postgres(_database: &str, _pool_size: u32) -> Result<Arc<dyn Store>, StoreError> {
    Err(StoreError::Unavailable(
        "database `postgres:` needs tessera-store's `postgres` feature, not enabled in this build"
            .to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn message(result: Result<Arc<dyn Store>, StoreError>) -> String {
        match result {
            Ok(_) => panic!("expected an error"),
            Err(StoreError::Unavailable(text)) => text,
            Err(other) => panic!("expected Unavailable, got {other:?}"),
        }
    }

    #[cfg(feature = "memory")]
    #[tokio::test]
    async fn memory_opens() {
        let store = open(" memory ").await.unwrap();
        store.ping().await.unwrap();
    }

    /// Nothing listens on port 1: the connection is refused at once, and the error says so
    /// and where, without the password. URLs sqlx cannot read are refused without it too.
    #[tokio::test]
    async fn a_failing_postgres_connection_is_clear_and_does_not_echo_the_password() {
        for database in [
            "postgres://tessera:hunter2@127.0.0.1:1/x",
            "postgresql://tessera:hunter2@127.0.0.1:1/x",
            "postgres://tessera:hunter2@127.0.0.1:notaport/x",
            "postgres:tessera:hunter2@127.0.0.1/x",
        ] {
            let started = std::time::Instant::now();
            let text = message(open(database).await);
            assert!(!text.contains("hunter2"), "{database}: {text}");
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "{database}: took {:?}",
                started.elapsed()
            );
            if cfg!(feature = "postgres") {
                assert!(text.contains("PostgreSQL"), "{database}: {text}");
            } else {
                assert!(text.contains("`postgres` feature"), "{database}: {text}");
            }
        }
        if cfg!(feature = "postgres") {
            let text = message(open("postgres://tessera:hunter2@127.0.0.1:1/x").await);
            assert!(
                text.contains("cannot connect to PostgreSQL at postgres://tessera@127.0.0.1:1/x"),
                "{text}"
            );
            assert!(text.to_ascii_lowercase().contains("refused"), "{text}");
        }
    }

    #[tokio::test]
    async fn unknown_forms_name_the_accepted_ones() {
        for database in ["mysql://db/x", "tessera.db", ""] {
            let text = message(open(database).await);
            assert!(text.contains("sqlite://PATH"), "{database}: {text}");
            assert!(text.contains("`memory`"), "{database}: {text}");
            assert!(text.contains("postgres://"), "{database}: {text}");
        }
    }
}
