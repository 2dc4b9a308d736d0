//! What every test crate of the workspace shares about external services: where to find them,
//! and how to skip when one is missing without the skip going unnoticed.
//!
//! A skipped test passes, so a skip must be loud: [`skip_or_fail`] writes `SKIPPED: …` to the
//! process's standard error directly. libtest captures what `println!` and `eprintln!` print
//! in a passing test and throws it away, but not a write to the stderr handle itself, so the
//! line reaches the terminal and the CI log. Under `TESSERA_REQUIRE_SERVICES=1` (CI) a skip is
//! a failure instead: a missing service must not turn a red suite green.
//!
//! PostgreSQL tests get a database of their own without an administrator in the loop:
//! [`FreshSchema`] (a schema in the test database, for the conformance suite's many cases) and
//! [`FreshDatabase`] (a whole database, for servers started as processes), each dropped with
//! its guard.
//!
//! Like [`conformance`](crate::conformance), this is test code shipped in the library so that
//! every crate's tests reach the same helpers.
#![allow(clippy::panic)]

use std::io::Write as _;

#[cfg(feature = "postgres")]
pub use self::postgres::{fresh_postgres_store, FreshDatabase, FreshSchema};
#[cfg(feature = "redis")]
pub use self::redis::{fresh_redis_counters, redis_answers, redis_keys};

/// Set to `1` to turn every skip into a failure (CI, where the services must be up).
pub const REQUIRE_SERVICES: &str = "TESSERA_REQUIRE_SERVICES";
/// The PostgreSQL database the PostgreSQL tests use; [`DEFAULT_DATABASE_URL`] when unset.
pub const DATABASE_URL: &str = "TESSERA_TEST_DATABASE_URL";
/// The Redis server the Redis tests use; [`DEFAULT_REDIS_URL`] when unset.
pub const REDIS_URL: &str = "TESSERA_TEST_REDIS_URL";

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// The PostgreSQL URL for tests: `TESSERA_TEST_DATABASE_URL`, else a local server's `test`
/// database.
pub fn database_url() -> String {
    service_url(std::env::var(DATABASE_URL).ok(), DEFAULT_DATABASE_URL)
}

/// The Redis URL for tests: `TESSERA_TEST_REDIS_URL`, else a local server.
pub fn redis_url() -> String {
    service_url(std::env::var(REDIS_URL).ok(), DEFAULT_REDIS_URL)
}

/// An empty variable counts as unset, as a CI matrix that leaves a value blank means.
fn service_url(set: Option<String>, default: &str) -> String {
    set.filter(|url| !url.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// Whether `TESSERA_REQUIRE_SERVICES=1` is set in this process.
pub fn services_required() -> bool {
    std::env::var(REQUIRE_SERVICES).as_deref() == Ok("1")
}

/// What a skip of `what` because of `why` comes to: `Ok` with the line to print, or, when
/// services are `required`, `Err` with the failure message.
pub fn skip_verdict(what: &str, why: &str, required: bool) -> Result<String, String> {
    if required {
        Err(format!(
            "{what} cannot run: {why} ({REQUIRE_SERVICES}=1 makes a skip a failure)"
        ))
    } else {
        Ok(format!(
            "SKIPPED: {what}: {why} (set {REQUIRE_SERVICES}=1 to fail instead)\n"
        ))
    }
}

/// Skips `what` loudly, or fails it under `TESSERA_REQUIRE_SERVICES=1`. The caller returns
/// right after (the test then passes, having said why on standard error).
///
/// # Panics
///
/// When `TESSERA_REQUIRE_SERVICES=1`: a test that cannot run must fail.
pub fn skip_or_fail(what: &str, why: &str) {
    match skip_verdict(what, why, services_required()) {
        Ok(line) => {
            // Not `eprintln!`: libtest would capture it and drop it with the passing test.
            let mut stderr = std::io::stderr().lock();
            let _ = stderr.write_all(line.as_bytes());
            let _ = stderr.flush();
        }
        Err(failure) => panic!("{failure}"),
    }
}

/// A TCP proxy a test puts between nodes and a shared service, to cause the outages the test
/// needs without touching the service: [`cut`](Self::cut) drops every connection and refuses
/// new ones, as a dead server would; [`freeze`](Self::freeze) keeps connections open but
/// forwards nothing, as a half-open connection or a partition does, where no error ever comes.
pub struct TcpProxy {
    port: u16,
    state: std::sync::Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct ProxyState {
    /// 0 = forwarding, 1 = frozen, 2 = cut.
    mode: std::sync::atomic::AtomicU8,
    /// Bumped at each cut: connections from before it end.
    epoch: std::sync::atomic::AtomicU64,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let state = std::sync::Arc::new(ProxyState::default());
        let upstream = upstream.to_owned();
        let shared = std::sync::Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if shared.mode.load(std::sync::atomic::Ordering::SeqCst) == 2 {
                    drop(client);
                    continue;
                }
                tokio::spawn(forward(
                    client,
                    upstream.clone(),
                    std::sync::Arc::clone(&shared),
                ));
            }
        });
        Ok(Self { port, state, task })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Drops every connection and refuses new ones until [`restore`](Self::restore).
    pub fn cut(&self) {
        self.state
            .mode
            .store(2, std::sync::atomic::Ordering::SeqCst);
        self.state
            .epoch
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stops forwarding in both directions, keeping every connection open.
    pub fn freeze(&self) {
        self.state
            .mode
            .store(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Forwards again. Connections cut stay gone; frozen ones resume, but whatever was sent
    /// while frozen was dropped, so they are unusable and their owners must notice.
    pub fn restore(&self) {
        self.state
            .mode
            .store(0, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

async fn forward(
    client: tokio::net::TcpStream,
    upstream: String,
    state: std::sync::Arc<ProxyState>,
) {
    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
        return;
    };
    let epoch = state.epoch.load(std::sync::atomic::Ordering::SeqCst);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = tokio::spawn(pump(
        client_read,
        server_write,
        std::sync::Arc::clone(&state),
        epoch,
    ));
    pump(server_read, client_write, state, epoch).await;
    up.abort();
}

/// Copies one direction until either side closes or the proxy is cut; swallows what arrives
/// while frozen, as a black hole would.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: std::sync::Arc<ProxyState>,
    epoch: u64,
) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            () = tokio::time::sleep(std::time::Duration::from_millis(50)) => {
                if state.epoch.load(Ordering::SeqCst) != epoch {
                    return;
                }
                continue;
            }
        };
        let Ok(n) = read else { return };
        if n == 0 || state.epoch.load(Ordering::SeqCst) != epoch {
            return;
        }
        if state.mode.load(Ordering::SeqCst) == 1 {
            continue;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// A `redis-server` of a test's own, on a free loopback port, for outages the shared server
/// must never see: [`stop`](Self::stop) kills it, [`start_again`](Self::start_again) brings
/// it back on the same port, empty (no persistence), as a restart without persistence would.
pub struct RedisServer {
    port: u16,
    child: Option<std::process::Child>,
}

impl RedisServer {
    /// `None` (having said why through [`skip_or_fail`]) when `redis-server` cannot be run.
    pub fn start(what: &str) -> Option<Self> {
        let port = match std::net::TcpListener::bind("127.0.0.1:0") {
            Ok(listener) => listener.local_addr().map_or(0, |a| a.port()),
            Err(e) => {
                skip_or_fail(what, &format!("no free port: {e}"));
                return None;
            }
        };
        let mut server = Self { port, child: None };
        if let Err(e) = server.start_again() {
            skip_or_fail(what, &format!("cannot run redis-server: {e}"));
            return None;
        }
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL): connections drop at once.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server on its port and waits until it accepts connections.
    pub fn start_again(&mut self) -> std::io::Result<()> {
        self.stop();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Err(std::io::Error::other(
            "redis-server did not start listening",
        ))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(feature = "postgres")]
pub(crate) mod postgres {
    use std::io::Write as _;
    use std::str::FromStr as _;
    use std::time::Duration;

    use sqlx::postgres::{PgConnectOptions, PgConnection};
    use sqlx::Connection as _;
    use tessera_core::model::UserId;
    use tessera_core::url::redact_url;
    use tessera_core::StoreError;

    use super::database_url;
    use crate::PostgresStore;

    /// Connections per store of the conformance suite: enough for its races (16 callers) to
    /// overlap for real, few enough that two cases at once stay far below the server's
    /// `max_connections`.
    const SUITE_POOL_SIZE: u32 = 8;
    /// An unreachable server is a skip, found out quickly.
    const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

    /// A store in a schema of its own, for one conformance case; `None` when PostgreSQL is
    /// not reachable (the suite then skips loudly, or fails under
    /// `TESSERA_REQUIRE_SERVICES=1`). The store comes first in the tuple, so it is dropped
    /// before the schema.
    pub async fn fresh_postgres_store() -> Option<(PostgresStore, FreshSchema)> {
        let schema = FreshSchema::create().await?;
        let store = schema
            .open(SUITE_POOL_SIZE)
            .await
            .unwrap_or_else(|err| panic!("cannot open a store in {}: {err}", schema.name()));
        Some((store, schema))
    }

    /// A schema `tessera_t_<random>` in the test database ([`database_url`]), dropped with
    /// everything in it when this guard is dropped. Its connections find their tables through
    /// `search_path`, so a store in it sees nothing of any other test's, while all of them
    /// share one database, one server and one test run.
    pub struct FreshSchema {
        name: String,
        server: PgConnectOptions,
    }

    impl FreshSchema {
        /// Creates the schema; `None` when PostgreSQL is not reachable.
        ///
        /// # Panics
        ///
        /// When the server answers but refuses to create the schema: that is a broken test
        /// setup, not a missing service.
        pub async fn create() -> Option<Self> {
            let server = server_options();
            let mut conn = connect(&server).await.ok()?;
            let name = fresh_name();
            sqlx::raw_sql(&format!("CREATE SCHEMA \"{name}\""))
                .execute(&mut conn)
                .await
                .unwrap_or_else(|err| panic!("cannot create schema {name}: {err}"));
            let _ = conn.close().await;
            Some(Self { name, server })
        }

        pub fn name(&self) -> &str {
            &self.name
        }

        /// Options for connections that work in this schema. They also carry its name as
        /// `application_name`, by which the guard finds, and ends, every session still open
        /// in it when it is dropped.
        pub fn connect_options(&self) -> PgConnectOptions {
            self.server
                .clone()
                .options([("search_path", self.name.as_str())])
                .application_name(&self.name)
        }

        /// A store in this schema, migrated, with a pool of `pool_size`. Several may be opened
        /// on one schema, at once or one after the other.
        pub async fn open(&self, pool_size: u32) -> Result<PostgresStore, StoreError> {
            PostgresStore::open_with_options(self.connect_options(), pool_size).await
        }
    }

    impl Drop for FreshSchema {
        /// Ends the sessions still open in the schema first: a store dropped without `close`
        /// may leave a connection whose transaction is only rolled back by a task of the
        /// test's runtime, which cannot run while this drop blocks it, and `DROP SCHEMA` would
        /// wait for that transaction's locks forever.
        fn drop(&mut self) {
            let name = self.name.clone();
            run_detached(
                &format!("schema {name}"),
                self.server.clone(),
                vec![
                    format!(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE application_name = '{name}' AND pid <> pg_backend_pid()"
                    ),
                    format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"),
                ],
            );
        }
    }

    /// A database `tessera_t_<random>` of its own on the server of [`database_url`], dropped
    /// (`WITH (FORCE)`, which ends its sessions first) when this guard is dropped: for tests
    /// that start servers as processes and hand them [`url`](Self::url).
    pub struct FreshDatabase {
        name: String,
        url: String,
        server: PgConnectOptions,
    }

    impl FreshDatabase {
        /// Creates the database; `None` when PostgreSQL is not reachable.
        ///
        /// # Panics
        ///
        /// When the server answers but refuses to create the database (the test role needs
        /// `CREATEDB`).
        pub async fn create() -> Option<Self> {
            let base = database_url();
            let server = server_options();
            let mut conn = connect(&server).await.ok()?;
            let name = fresh_name();
            // Not in a transaction (CREATE DATABASE refuses to run in one): `raw_sql` sends it
            // as a simple query.
            sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
                .execute(&mut conn)
                .await
                .unwrap_or_else(|err| panic!("cannot create database {name}: {err}"));
            let _ = conn.close().await;
            Some(Self {
                url: with_database(&base, &name),
                name,
                server,
            })
        }

        /// The database's URL: the test URL's server and credentials, this database's name.
        pub fn url(&self) -> &str {
            &self.url
        }

        pub fn name(&self) -> &str {
            &self.name
        }

        /// [`create`](Self::create) for the test `what`, which is skipped (or failed, under
        /// `TESSERA_REQUIRE_SERVICES=1`) when PostgreSQL does not answer.
        pub async fn for_test(what: &str) -> Option<Self> {
            let fresh = Self::create().await;
            if fresh.is_none() {
                super::skip_or_fail(
                    what,
                    &format!(
                        "PostgreSQL at {} does not answer",
                        redact_url(&database_url())
                    ),
                );
            }
            fresh
        }

        /// The server's `host:port`, for a proxy of the test's own in front of it.
        pub fn address(&self) -> String {
            format!("{}:{}", self.server.get_host(), self.server.get_port())
        }

        /// The database's URL through a proxy on the loopback `port`.
        pub fn url_via(&self, port: u16) -> String {
            let (scheme, rest) = self
                .url
                .split_once("://")
                .unwrap_or(("postgres", &self.url));
            let (credentials, location) = match rest.rsplit_once('@') {
                Some((credentials, location)) => (format!("{credentials}@"), location),
                None => (String::new(), rest),
            };
            let path = location.find('/').map_or("", |at| &location[at..]);
            format!("{scheme}://{credentials}127.0.0.1:{port}{path}")
        }
    }

    impl Drop for FreshDatabase {
        fn drop(&mut self) {
            run_detached(
                &format!("database {}", self.name),
                self.server.clone(),
                vec![format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    self.name
                )],
            );
        }
    }

    /// The test database's options; a URL sqlx cannot read is a broken setup, not a skip.
    fn server_options() -> PgConnectOptions {
        let url = database_url();
        PgConnectOptions::from_str(&url)
            .unwrap_or_else(|err| panic!("cannot read {}: {err}", redact_url(&url)))
    }

    async fn connect(options: &PgConnectOptions) -> Result<PgConnection, String> {
        match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(options)).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())),
        }
    }

    /// `tessera_t_` and 32 hex digits: unique across parallel tests and test processes, a
    /// valid identifier (so it is quoted only for form's sake), and recognisable as litter
    /// should a test process be killed before its guards run.
    fn fresh_name() -> String {
        format!("tessera_t_{}", UserId::new().as_uuid().simple())
    }

    /// `url` with its database (the path) replaced by `database`; query parameters kept.
    pub(crate) fn with_database(url: &str, database: &str) -> String {
        let Some((scheme, rest)) = url.split_once("://") else {
            return url.to_owned();
        };
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let query = tail.find(['?', '#']).map_or("", |at| &tail[at..]);
        format!("{scheme}://{authority}/{database}{query}")
    }

    /// Runs `statements` on a new connection to `server` from a thread of its own with a
    /// runtime of its own, and waits for it: `Drop` cannot await, and the test's runtime may
    /// have a single thread, the one this drop blocks. A failure is reported on standard error
    /// and leaves the schema or database behind (named `tessera_t_…`); a drop never panics.
    fn run_detached(what: &str, server: PgConnectOptions, statements: Vec<String>) {
        let outcome = std::thread::spawn(move || -> Result<(), String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|err| err.to_string())?;
            runtime.block_on(async move {
                let mut conn = connect(&server).await?;
                for statement in &statements {
                    sqlx::raw_sql(statement)
                        .execute(&mut conn)
                        .await
                        .map_err(|err| err.to_string())?;
                }
                conn.close().await.map_err(|err| err.to_string())
            })
        })
        .join();
        let failure = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(err)) => err,
            Err(_) => "the dropping thread panicked".to_owned(),
        };
        let mut stderr = std::io::stderr().lock();
        let _ = writeln!(stderr, "WARNING: could not drop test {what}: {failure}");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[cfg(feature = "postgres")]
    #[test]
    fn a_fresh_database_url_keeps_the_server_and_the_parameters() {
        use super::postgres::with_database;
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/test", "tessera_t_1"),
            "postgres://postgres@127.0.0.1:5432/tessera_t_1"
        );
        assert_eq!(
            with_database("postgresql://u:p@db/x?sslmode=disable", "t"),
            "postgresql://u:p@db/t?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://db:5433", "t"),
            "postgres://db:5433/t"
        );
    }

    #[test]
    fn a_skip_says_what_and_why_and_how_to_make_it_fail() {
        let line = skip_verdict("postgres suite", "connection refused", false).unwrap();
        assert_eq!(
            line,
            "SKIPPED: postgres suite: connection refused \
             (set TESSERA_REQUIRE_SERVICES=1 to fail instead)\n"
        );
    }

    #[test]
    fn a_required_service_turns_the_skip_into_a_failure() {
        let failure = skip_verdict("postgres suite", "connection refused", true).unwrap_err();
        assert!(failure.contains("postgres suite"), "{failure}");
        assert!(failure.contains("connection refused"), "{failure}");
        assert!(failure.contains("TESSERA_REQUIRE_SERVICES=1"), "{failure}");
    }

    #[test]
    fn service_urls_default_when_unset_or_blank() {
        assert_eq!(
            service_url(None, DEFAULT_DATABASE_URL),
            "postgres://postgres@127.0.0.1:5432/test"
        );
        assert_eq!(
            service_url(Some("  ".to_owned()), DEFAULT_REDIS_URL),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            service_url(Some("redis://cache:6380".to_owned()), DEFAULT_REDIS_URL),
            "redis://cache:6380"
        );
    }
}

#[cfg(feature = "redis")]
mod redis {
    use std::time::Duration;

    use super::{redis_url, skip_or_fail};
    use crate::RedisCounters;

    /// Whether the Redis server at `url` accepts a connection within two seconds.
    pub async fn redis_answers(url: &str) -> bool {
        let Ok(client) = ::redis::Client::open(url) else {
            return false;
        };
        tokio::time::timeout(
            Duration::from_secs(2),
            client.get_multiplexed_async_connection(),
        )
        .await
        .is_ok_and(|c| c.is_ok())
    }

    /// The keys matching `pattern` (`KEYS`: for tests, on a prefix of their own).
    pub async fn redis_keys(url: &str, pattern: &str) -> Vec<String> {
        let Ok(client) = ::redis::Client::open(url) else {
            panic!("bad Redis URL {url}");
        };
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
            panic!("Redis at {url} does not answer");
        };
        ::redis::cmd("KEYS")
            .arg(pattern)
            .query_async(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("KEYS {pattern}: {e}"))
    }

    /// Guessing counters on the shared Redis under a prefix of their own (their keys expire
    /// by themselves), with the prefix; `None` (having said why) when Redis does not answer.
    pub async fn fresh_redis_counters() -> Option<(RedisCounters, String)> {
        let url = redis_url();
        if !redis_answers(&url).await {
            skip_or_fail(
                "Redis guessing counters",
                &format!("Redis at {url} does not answer"),
            );
            return None;
        }
        let prefix = format!("tessera-test-{}:", tessera_core::model::SessionId::new());
        match RedisCounters::new(&url, &prefix) {
            Ok(counters) => Some((counters, prefix)),
            Err(e) => {
                skip_or_fail("Redis guessing counters", &e.to_string());
                None
            }
        }
    }
}
