//! The shared system of record: PostgreSQL, for several nodes on one database.
//!
//! **Connections.** One pool of `database_pool_size` connections serves reads, housekeeping
//! and transactions alike; a call waits at most [`ACQUIRE_TIMEOUT`] for a free connection and
//! then fails as unavailable, so a saturated pool answers 503 instead of queueing without end.
//! sqlx checks a pooled connection (one round trip) before handing it out, so connections the
//! server dropped meanwhile (a restart, a failover) are replaced instead of failing requests.
//! [`PostgresStore::open`] makes its first connection itself, within [`CONNECT_TIMEOUT`], so
//! an unreachable server or a refused login is reported as such at start ("connection
//! refused", "password authentication failed"), never as a bare pool timeout. Errors name
//! the server as `postgres://USER@HOST:PORT/DATABASE`, never with the URL's password.
//!
//! **Transactions.** Every write transaction ([`Store::begin`]) is a `READ COMMITTED`
//! transaction on a connection of its own, said explicitly so that a server-wide
//! `default_transaction_isolation` cannot change the locking below. Unlike SQLite, `begin`
//! never waits for other writers: writers only wait for one another on the rows they share.
//! Its reads for update lock what they return:
//!
//! - users and sessions with `FOR NO KEY UPDATE`, the lock an `UPDATE` of them takes. It
//!   excludes every other reader for update and writer of the row, but not the `FOR KEY SHARE`
//!   check PostgreSQL makes when a row referring to it is inserted, so signing in (a new
//!   session of the user, a new refresh token of the session) is never held up by, nor
//!   deadlocks with, a transaction deciding about the user or the session;
//! - a presented refresh token with `FOR UPDATE`, in a statement of its own; its successor and
//!   its session are read by later statements (the implementation of
//!   [`StoreTx::refresh_token_for_update`] says why);
//! - the signing keys with a table lock, because the decision they serve ("is there an active
//!   key?") is about rows that may not exist yet, and a row lock cannot lock a row that is not
//!   there: two nodes starting on a fresh database would both see no key and both install one.
//!
//! A statement that fails aborts a PostgreSQL transaction, and `COMMIT` of an aborted
//! transaction answers `ROLLBACK` without an error, so the transaction remembers the failure and
//! its `commit` refuses, as SQLite's does.
//!
//! **The revocation log** (see [`RevocationLog`] for the contract). Positions come from an
//! identity sequence, handed out when a row is inserted, not when it commits: alone, it lets
//! two transactions take 7 and 8 and commit 8 first, and a reader that has read 8 would never
//! read 7. So [`StoreTx::append_revocation`] first takes the transaction-level advisory lock
//! [`REVOCATION_LOG_LOCK`], held until the transaction ends: appenders queue on it, each takes
//! its position only after the previous appender committed or rolled back, and positions
//! become visible in order. PostgreSQL makes a committed transaction visible before it
//! releases its locks, so the next appender's position is always above every position a
//! reader can see. The other remedy the contract names, readers stopping short of the oldest
//! position still in flight, needs every row to carry its transaction id and every read to
//! compare it with the oldest transaction still running, in the whole database: one slow
//! unrelated transaction would hold up every node's feed, and the rule would be subtle to get
//! right. The lock costs only appenders, and only while a revocation commits — rare next to
//! reads, and short. It also makes the log's order the commit order, which the epochs rely on
//! (bumps of one user appear in the log in increasing order).
//!
//! The lock is held from the transaction's first append to its end, so a transaction that
//! takes row locks *after* appending can deadlock with one that takes the same rows before
//! appending (sign-out everywhere revokes and logs, then bumps the epoch; a role change locks
//! the user, then logs). PostgreSQL detects the cycle within `deadlock_timeout` (1 s by
//! default) and aborts one of the two, which fails as unavailable and can be retried; append
//! after the writes an entry reports and there is no cycle.
//!
//! In the same transaction, the first append also queues `pg_notify(`[`NOTIFY_CHANNEL`]`, '')`.
//! PostgreSQL delivers a notification only when its transaction commits, once per
//! transaction, so a node listening on the channel is woken exactly when there are new
//! committed entries, and reads them from its cursor: the notification carries nothing the log
//! does not hold.
//!
//! Advisory lock keys are one namespace per database, shared by every schema in it: two
//! installations in two schemas of one database serialise their appends against each other,
//! which costs them only waiting.
//!
//! **Migrations.** `sqlx::migrate!` embeds `migrations/postgres`. sqlx's PostgreSQL migrator
//! (sqlx-core 0.8.6 `Migrator::run_direct`, sqlx-postgres 0.8.6 `Migrate::lock` in
//! `migrate.rs`) takes the session-level `pg_advisory_lock` on a key derived from the database
//! name before it reads `_sqlx_migrations`, and releases it after the last migration, so nodes
//! starting at once on a fresh database queue there: the first applies the schema, the others
//! then find it applied. On an error the migrator returns without unlocking, and a session
//! lock lives as long as its connection, so the migration runs on a connection of its own that
//! is closed right after, never one that goes back to the pool still holding the lock.
//!
//! **Times** are BIGINT milliseconds, compared in SQL exactly as [`Session::is_live`] compares
//! them. `last_seen_at + idle_timeout_ms` overflows only for an idle timeout of some 290
//! million years; PostgreSQL would then refuse the statement (an error), never give a wrong
//! verdict.

use std::str::FromStr as _;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::types::Uuid;
use sqlx::{Connection as _, Row as _};
use tessera_core::guessing::Tally;
use tessera_core::model::{
    AdminKey, AdminKeyId, AdminScope, Email, EmailToken, EmailTokenId, OutboxId, RefreshRecord,
    RevocationEvent, SealedKey, Session, SessionId, Timestamp, TokenPurpose, User, UserId, Via,
    WebhookEventId,
};
use tessera_core::rotation::PresentedToken;
use tessera_core::secret::SecretHash;
use tessera_core::store::{
    AdminKeyStore, DenylistStore, GuessingCounters, KeyStore, OutboxStore, PoolUse, RevocationLog,
    SessionStore, StoreTx, UserStore,
};
use tessera_core::webhooks::{EventType, OutboxMessage, QueuedMessage};
use tessera_core::{Store, StoreError};

/// The channel a committed append notifies (empty payload), for the feed that `LISTEN`s.
pub const NOTIFY_CHANNEL: &str = "tessera_revocations";

/// The transaction-level advisory lock every append to the revocation log takes first and
/// holds until commit (see the module documentation). `tesseraL` in ASCII, so that it is
/// recognisable in `pg_locks` (as `classid` 0x74657373, `objid` 0x6572614c).
pub const REVOCATION_LOG_LOCK: i64 = 0x7465_7373_6572_614c;

/// How long opening waits for the first connection: long enough for a distant server, short
/// enough that a wrong host fails a start at once rather than after the kernel's TCP timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a call waits for a pooled connection (opening one included) before it fails.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

const USER_COLUMNS: &str =
    "id, email, password_hash, roles, created_at, tokens_valid_after, email_verified_at";

const EMAIL_TOKEN_COLUMNS: &str = "id, user_id, purpose, hash, created_at, expires_at, spent_at";

const SESSION_COLUMNS: &str = "id, user_id, secret_hash, via, created_at, last_seen_at, \
     idle_timeout_ms, expires_at, user_agent, ip, revoked_at";

/// The SQL mirror of [`Session::is_live`] for a `sessions` row, with `now` bound to `$1`.
const SESSION_LIVE: &str = "revoked_at IS NULL \
     AND $1 < LEAST(last_seen_at + idle_timeout_ms, expires_at)";

/// A `sessions` row that ended strictly before `$1`: revoked, or expired (idle or absolute),
/// before it. The idle end is [`Session::idle_expires_at`], which already caps at `expires_at`.
const SESSION_ENDED_BEFORE: &str = "(revoked_at < $1 \
     OR LEAST(last_seen_at + idle_timeout_ms, expires_at) < $1)";

const SIGNING_KEY_COLUMNS: &str = "kid, alg, sealed_private, public_jwk, created_at, retired_at";

const ADMIN_KEY_COLUMNS: &str = "id, name, hash, created_at, revoked_at, scope";

const OUTBOX_COLUMNS: &str = "id, event_id, endpoint, event_type, body, attempts, \
     next_attempt_at, created_at, last_error";

/// A `webhook_outbox` row still waiting for delivery (the partial index's condition).
const OUTBOX_WAITING: &str = "delivered_at IS NULL AND given_up_at IS NULL";

/// A PostgreSQL-backed [`Store`]; see the module documentation. Cloning shares the pool.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

/// How the pool is used right now, for a metric: `size` connections are open, `idle` of them
/// wait for work, and there are never more than `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub size: u32,
    pub idle: usize,
    pub max: u32,
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://` or `postgresql://`, with any of
    /// libpq's URL parameters that sqlx reads), brings its schema up to date, and keeps a pool
    /// of up to `pool_size` connections (SPEC `database_pool_size`; at least 1).
    ///
    /// Several nodes may open one database at once, a fresh one included (see the module
    /// documentation on migrations).
    pub async fn open(url: &str, pool_size: u32) -> Result<Self, StoreError> {
        // sqlx also reads `postgres:user:secret@host/x`, as a database named
        // `user:secret@host/x` on the local socket, which a message would then quote: only
        // the form with an authority is accepted. No message quotes the URL itself, not even
        // redacted: one that does not parse may not split where the password would be hidden.
        let scheme = url
            .split_once("://")
            .map(|(scheme, _)| scheme.to_ascii_lowercase());
        if !matches!(scheme.as_deref(), Some("postgres" | "postgresql")) {
            return Err(StoreError::Unavailable(
                "a PostgreSQL URL starts with `postgres://` or `postgresql://`".to_owned(),
            ));
        }
        let options = PgConnectOptions::from_str(url).map_err(|err| {
            StoreError::Unavailable(format!(
                "cannot read the PostgreSQL URL (expected \
                 postgres://USER:PASSWORD@HOST:PORT/DATABASE): {err}"
            ))
        })?;
        Self::open_with_options(options, pool_size).await
    }

    /// [`open`](Self::open) with options already built: the tests' stores set a schema of
    /// their own this way.
    pub(crate) async fn open_with_options(
        options: PgConnectOptions,
        pool_size: u32,
    ) -> Result<Self, StoreError> {
        if pool_size == 0 {
            return Err(StoreError::Unavailable(
                "a PostgreSQL pool needs at least one connection (database_pool_size = 0)"
                    .to_owned(),
            ));
        }
        let target = describe(&options);
        migrate(&options, &target).await?;
        let pool = PgPoolOptions::new()
            .max_connections(pool_size)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|err| connect_failed(&target, &err))?;
        tracing::debug!(database = %target, pool_size, "opened PostgreSQL store");
        Ok(Self { pool })
    }

    /// Waits for in-flight operations to return their connections, then closes every one.
    /// Dropping the store also closes them, without waiting.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The pool's use right now, for the server's metrics.
    pub fn pool_stats(&self) -> PoolStats {
        PoolStats {
            size: self.pool.size(),
            idle: self.pool.num_idle(),
            max: self.pool.options().get_max_connections(),
        }
    }
}

/// `postgres://USER@HOST:PORT/DATABASE` for messages, in libpq's URL form with `?host=` for a
/// Unix socket: what was reached, never the password.
fn describe(options: &PgConnectOptions) -> String {
    let user = options.get_username();
    let database = options.get_database().unwrap_or(user);
    let (host, port) = (options.get_host(), options.get_port());
    match options.get_socket() {
        Some(socket) => format!(
            "postgres://{user}@/{database}?host={}&port={port}",
            socket.display()
        ),
        None if host.starts_with('/') => {
            format!("postgres://{user}@/{database}?host={host}&port={port}")
        }
        None => format!("postgres://{user}@{host}:{port}/{database}"),
    }
}

fn connect_failed(target: &str, err: &sqlx::Error) -> StoreError {
    StoreError::Unavailable(format!("cannot connect to PostgreSQL at {target}: {err}"))
}

/// Applies the migrations on a connection of its own, closed afterwards whatever happened, so
/// that the migrator's session lock can never outlive the run (see the module documentation).
async fn migrate(options: &PgConnectOptions, target: &str) -> Result<(), StoreError> {
    let mut conn =
        match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(options)).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(err)) => return Err(connect_failed(target, &err)),
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "cannot connect to PostgreSQL at {target}: no answer within {} s",
                    CONNECT_TIMEOUT.as_secs()
                )))
            }
        };
    // `run_direct` rather than `run`: `run` goes through `Acquire`, whose impl for
    // `&mut PgConnection` makes the future of `open` not `Send` for every lifetime, so a server
    // could not open its store in a spawned task (sqlx keeps `run_direct` public for this).
    let applied = MIGRATOR.run_direct(&mut conn).await;
    if let Err(err) = conn.close().await {
        tracing::debug!(error = %err, "closing the migration connection failed");
    }
    applied.map_err(|err| {
        StoreError::Unavailable(format!(
            "cannot migrate the PostgreSQL schema at {target}: {err}"
        ))
    })
}

#[allow(clippy::needless_pass_by_value)] // shaped for `map_err(unavailable)`
fn unavailable(err: sqlx::Error) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

/// Maps an insert's error: a uniqueness rule (SQLSTATE 23505) to [`StoreError::Conflict`]
/// named by `conflict` (given the constraint PostgreSQL reports, e.g. `users_by_email`), a
/// missing referenced row (23503) and anything else to [`StoreError::Unavailable`].
fn insert_failed(err: sqlx::Error, conflict: impl Fn(&str) -> &'static str) -> StoreError {
    match err.as_database_error() {
        Some(db) if db.is_unique_violation() => {
            StoreError::Conflict(conflict(db.constraint().unwrap_or_default()))
        }
        Some(db) if db.is_foreign_key_violation() => {
            StoreError::Unavailable(format!("refers to a missing record: {}", db.message()))
        }
        _ => unavailable(err),
    }
}

fn corrupt(what: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {err}"))
}

fn get<'r, T>(row: &'r PgRow, column: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(column).map_err(|err| corrupt(column, err))
}

fn timestamp(row: &PgRow, column: &str) -> Result<Timestamp, StoreError> {
    get::<i64>(row, column).map(Timestamp::from_unix_millis)
}

fn optional_timestamp(row: &PgRow, column: &str) -> Result<Option<Timestamp>, StoreError> {
    Ok(get::<Option<i64>>(row, column)?.map(Timestamp::from_unix_millis))
}

fn hash(row: &PgRow, column: &str) -> Result<SecretHash, StoreError> {
    let bytes: Vec<u8> = get(row, column)?;
    SecretHash::from_slice(&bytes).ok_or_else(|| corrupt(column, "not 32 bytes"))
}

fn optional_hash(row: &PgRow, column: &str) -> Result<Option<SecretHash>, StoreError> {
    get::<Option<Vec<u8>>>(row, column)?
        .map(|bytes| SecretHash::from_slice(&bytes).ok_or_else(|| corrupt(column, "not 32 bytes")))
        .transpose()
}

fn id<T>(row: &PgRow, column: &str, from: fn(Uuid) -> T) -> Result<T, StoreError> {
    get::<Uuid>(row, column).map(from)
}

fn position(seq: i64) -> Result<u64, StoreError> {
    u64::try_from(seq).map_err(|_| StoreError::Corrupt(format!("event seq {seq}")))
}

fn user_from_row(row: &PgRow) -> Result<User, StoreError> {
    Ok(User {
        id: id(row, "id", UserId::from_uuid)?,
        email: Email::from_stored(get(row, "email")?),
        password_hash: get(row, "password_hash")?,
        roles: get(row, "roles")?,
        created_at: timestamp(row, "created_at")?,
        tokens_valid_after: timestamp(row, "tokens_valid_after")?,
        email_verified_at: optional_timestamp(row, "email_verified_at")?,
    })
}

fn email_token_from_row(row: &PgRow) -> Result<EmailToken, StoreError> {
    let purpose: String = get(row, "purpose")?;
    Ok(EmailToken {
        id: id(row, "id", EmailTokenId::from_uuid)?,
        user_id: id(row, "user_id", UserId::from_uuid)?,
        purpose: TokenPurpose::parse(&purpose)
            .ok_or_else(|| corrupt("purpose", format!("{purpose:?}")))?,
        hash: hash(row, "hash")?,
        created_at: timestamp(row, "created_at")?,
        expires_at: timestamp(row, "expires_at")?,
        spent_at: optional_timestamp(row, "spent_at")?,
    })
}

fn session_from_row(row: &PgRow) -> Result<Session, StoreError> {
    let via: String = get(row, "via")?;
    Ok(Session {
        id: id(row, "id", SessionId::from_uuid)?,
        user_id: id(row, "user_id", UserId::from_uuid)?,
        secret_hash: optional_hash(row, "secret_hash")?,
        via: Via::parse(&via).ok_or_else(|| corrupt("via", format!("{via:?}")))?,
        created_at: timestamp(row, "created_at")?,
        last_seen_at: timestamp(row, "last_seen_at")?,
        idle_timeout: Duration::from_millis(
            u64::try_from(get::<i64>(row, "idle_timeout_ms")?)
                .map_err(|_| corrupt("idle_timeout_ms", "negative"))?,
        ),
        expires_at: timestamp(row, "expires_at")?,
        user_agent: get(row, "user_agent")?,
        ip: get(row, "ip")?,
        revoked_at: optional_timestamp(row, "revoked_at")?,
    })
}

fn signing_key_from_row(row: &PgRow) -> Result<SealedKey, StoreError> {
    Ok(SealedKey {
        kid: get(row, "kid")?,
        alg: get(row, "alg")?,
        sealed_private: get(row, "sealed_private")?,
        public_jwk: get(row, "public_jwk")?,
        created_at: timestamp(row, "created_at")?,
        retired_at: optional_timestamp(row, "retired_at")?,
    })
}

fn admin_key_from_row(row: &PgRow) -> Result<AdminKey, StoreError> {
    Ok(AdminKey {
        id: id(row, "id", AdminKeyId::from_uuid)?,
        name: get(row, "name")?,
        hash: hash(row, "hash")?,
        created_at: timestamp(row, "created_at")?,
        revoked_at: optional_timestamp(row, "revoked_at")?,
        scope: scope(row)?,
    })
}

fn scope(row: &PgRow) -> Result<AdminScope, StoreError> {
    let text: String = get(row, "scope")?;
    AdminScope::parse(&text).ok_or_else(|| corrupt("scope", format!("{text:?}")))
}

fn queued_from_row(row: &PgRow) -> Result<QueuedMessage, StoreError> {
    let event_type: String = get(row, "event_type")?;
    let attempts: i64 = get(row, "attempts")?;
    Ok(QueuedMessage {
        message: OutboxMessage {
            id: id(row, "id", OutboxId::from_uuid)?,
            event_id: id(row, "event_id", WebhookEventId::from_uuid)?,
            endpoint: get(row, "endpoint")?,
            event_type: EventType::from_stored(&event_type)
                .ok_or_else(|| corrupt("event_type", format!("{event_type:?}")))?,
            body: get(row, "body")?,
            created_at: timestamp(row, "created_at")?,
        },
        attempts: u32::try_from(attempts).map_err(|err| corrupt("attempts", err))?,
        next_attempt_at: timestamp(row, "next_attempt_at")?,
        last_error: get(row, "last_error")?,
    })
}

/// A write transaction (see [`Store::begin`]): a `READ COMMITTED` transaction on one pooled
/// connection, whose reads for update lock what they read until it ends. Dropping it rolls
/// back.
struct PostgresTx {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    /// Set by the first statement that fails. PostgreSQL has then aborted the transaction,
    /// and would answer `COMMIT` with a silent `ROLLBACK`, so [`StoreTx::commit`] refuses
    /// with an error instead of reporting a commit that did not happen.
    failed: bool,
    /// Whether this transaction holds [`REVOCATION_LOG_LOCK`] and has queued its
    /// notification: both are needed once, however many entries it appends.
    appending: bool,
}

/// Runs `$body`, an async block over `$conn` (the transaction's connection), and marks the
/// transaction failed if it returns an error.
macro_rules! tracked {
    ($self:ident, |$conn:ident| $body:block) => {{
        let $conn: &mut PgConnection = &mut *$self.tx;
        let result: Result<_, StoreError> = async move { $body }.await;
        if result.is_err() {
            $self.failed = true;
        }
        result
    }};
}

#[async_trait]
impl StoreTx for PostgresTx {
    async fn user_for_update(&mut self, id: UserId) -> Result<Option<User>, StoreError> {
        tracked!(self, |conn| {
            sqlx::query(&format!(
                "SELECT {USER_COLUMNS} FROM users WHERE id = $1 FOR NO KEY UPDATE"
            ))
            .bind(id.as_uuid())
            .fetch_optional(conn)
            .await
            .map_err(unavailable)?
            .as_ref()
            .map(user_from_row)
            .transpose()
        })
    }

    async fn session_for_update(&mut self, id: SessionId) -> Result<Option<Session>, StoreError> {
        tracked!(self, |conn| {
            sqlx::query(&format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1 FOR NO KEY UPDATE"
            ))
            .bind(id.as_uuid())
            .fetch_optional(conn)
            .await
            .map_err(unavailable)?
            .as_ref()
            .map(session_from_row)
            .transpose()
        })
    }

    /// Three statements, in this order, because of how `READ COMMITTED` waits for a lock.
    /// When a concurrent rotation holds the token, the locking statement waits for it to
    /// commit and then re-reads the token row alone, in its new version (spent, with a
    /// successor); a join in that statement would still show the rest from the statement's
    /// old snapshot, where the successor does not exist yet, and the replay of a token just
    /// rotated would be taken for theft. The successor and the session are read by later
    /// statements, which see everything committed before them. The session is locked too
    /// (when live), so that no revocation can slip between this decision and its commit.
    async fn refresh_token_for_update(
        &mut self,
        presented: &SecretHash,
        now: Timestamp,
    ) -> Result<Option<PresentedToken>, StoreError> {
        tracked!(self, |conn| {
            let Some(token) = sqlx::query(
                "SELECT session_id, rotated_at, successor FROM refresh_tokens \
                 WHERE hash = $1 FOR UPDATE",
            )
            .bind(presented.as_bytes().as_slice())
            .fetch_optional(&mut *conn)
            .await
            .map_err(unavailable)?
            else {
                return Ok(None);
            };
            let successor_unspent = match optional_hash(&token, "successor")? {
                None => false,
                Some(successor) => {
                    let rotated_at: Option<Option<i64>> =
                        sqlx::query_scalar("SELECT rotated_at FROM refresh_tokens WHERE hash = $1")
                            .bind(successor.as_bytes().as_slice())
                            .fetch_optional(&mut *conn)
                            .await
                            .map_err(unavailable)?;
                    matches!(rotated_at, Some(None))
                }
            };
            let session_id = id(&token, "session_id", SessionId::from_uuid)?;
            let live_session = sqlx::query(&format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $2 AND {SESSION_LIVE} \
                 FOR NO KEY UPDATE"
            ))
            .bind(now.as_unix_millis())
            .bind(session_id.as_uuid())
            .fetch_optional(&mut *conn)
            .await
            .map_err(unavailable)?
            .as_ref()
            .map(session_from_row)
            .transpose()?;
            Ok(Some(PresentedToken {
                live_session,
                rotated_at: optional_timestamp(&token, "rotated_at")?,
                successor_unspent,
            }))
        })
    }

    async fn refresh_family_for_update(
        &mut self,
        presented: &SecretHash,
    ) -> Result<Option<Session>, StoreError> {
        tracked!(self, |conn| {
            // A token never moves to another family, so the subquery's snapshot is enough; the
            // lock is on the session, which is what a revocation changes.
            sqlx::query(&format!(
                "SELECT {SESSION_COLUMNS} FROM sessions \
                 WHERE id = (SELECT session_id FROM refresh_tokens WHERE hash = $1) \
                 FOR NO KEY UPDATE"
            ))
            .bind(presented.as_bytes().as_slice())
            .fetch_optional(conn)
            .await
            .map_err(unavailable)?
            .as_ref()
            .map(session_from_row)
            .transpose()
        })
    }

    async fn signing_keys_for_update(&mut self) -> Result<Vec<SealedKey>, StoreError> {
        tracked!(self, |conn| {
            // Conflicts with itself and with every insert, update and delete of the table, not
            // with plain reads: key changes queue here, and a key inserted by another node
            // cannot appear between this read and this transaction's commit.
            sqlx::query("LOCK TABLE signing_keys IN SHARE ROW EXCLUSIVE MODE")
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?;
            sqlx::query(&format!(
                "SELECT {SIGNING_KEY_COLUMNS} FROM signing_keys ORDER BY created_at, row_seq"
            ))
            .fetch_all(conn)
            .await
            .map_err(unavailable)?
            .iter()
            .map(signing_key_from_row)
            .collect()
        })
    }

    async fn insert_user(&mut self, user: &User) -> Result<(), StoreError> {
        tracked!(self, |conn| {
            sqlx::query(&format!(
                "INSERT INTO users ({USER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
            ))
            .bind(user.id.as_uuid())
            .bind(user.email.as_str())
            .bind(&user.password_hash)
            .bind(&user.roles)
            .bind(user.created_at.as_unix_millis())
            .bind(user.tokens_valid_after.as_unix_millis())
            .bind(user.email_verified_at.map(Timestamp::as_unix_millis))
            .execute(conn)
            .await
            .map_err(|err| {
                insert_failed(err, |constraint| {
                    if constraint == "users_by_email" {
                        "email"
                    } else {
                        "user"
                    }
                })
            })?;
            Ok(())
        })
    }

    async fn set_roles(&mut self, id: UserId, roles: &[String]) -> Result<bool, StoreError> {
        tracked!(self, |conn| {
            // PostgreSQL counts every row the WHERE matched, changed or not: `true` means
            // "exists".
            let done = sqlx::query("UPDATE users SET roles = $1 WHERE id = $2")
                .bind(roles)
                .bind(id.as_uuid())
                .execute(conn)
                .await
                .map_err(unavailable)?;
            Ok(done.rows_affected() > 0)
        })
    }

    async fn set_password_hash(
        &mut self,
        id: UserId,
        password_hash: &str,
    ) -> Result<bool, StoreError> {
        tracked!(self, |conn| {
            let done = sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
                .bind(password_hash)
                .bind(id.as_uuid())
                .execute(conn)
                .await
                .map_err(unavailable)?;
            Ok(done.rows_affected() > 0)
        })
    }

    async fn set_email_verified(&mut self, id: UserId, at: Timestamp) -> Result<bool, StoreError> {
        tracked!(self, |conn| {
            let done = sqlx::query(
                "UPDATE users SET email_verified_at = COALESCE(email_verified_at, $1) \
                 WHERE id = $2",
            )
            .bind(at.as_unix_millis())
            .bind(id.as_uuid())
            .execute(conn)
            .await
            .map_err(unavailable)?;
            Ok(done.rows_affected() > 0)
        })
    }

    async fn insert_email_token(&mut self, token: &EmailToken) -> Result<bool, StoreError> {
        tracked!(self, |conn| {
            // Inserted first, so a retry racing on another node stores it once; the older
            // tokens are superseded only by the call that stored it.
            let inserted: Option<Uuid> = sqlx::query_scalar(&format!(
                "INSERT INTO email_tokens ({EMAIL_TOKEN_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (id) DO NOTHING RETURNING id"
            ))
            .bind(token.id.as_uuid())
            .bind(token.user_id.as_uuid())
            .bind(token.purpose.as_str())
            .bind(token.hash.as_bytes().as_slice())
            .bind(token.created_at.as_unix_millis())
            .bind(token.expires_at.as_unix_millis())
            .bind(token.spent_at.map(Timestamp::as_unix_millis))
            .fetch_optional(&mut *conn)
            .await
            .map_err(|err| {
                insert_failed(err, |constraint| {
                    if constraint == "email_tokens_by_hash" {
                        "email_token"
                    } else {
                        "user"
                    }
                })
            })?;
            if inserted.is_none() {
                return Ok(false);
            }
            sqlx::query(
                "UPDATE email_tokens SET spent_at = $1 \
                 WHERE user_id = $2 AND purpose = $3 AND spent_at IS NULL AND id <> $4",
            )
            .bind(token.created_at.as_unix_millis())
            .bind(token.user_id.as_uuid())
            .bind(token.purpose.as_str())
            .bind(token.id.as_uuid())
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
            Ok(true)
        })
    }

    async fn email_token_for_update(
        &mut self,
        hash: &SecretHash,
    ) -> Result<Option<EmailToken>, StoreError> {
        tracked!(self, |conn| {
            sqlx::query(&format!(
                "SELECT {EMAIL_TOKEN_COLUMNS} FROM email_tokens WHERE hash = $1 FOR UPDATE"
            ))
            .bind(hash.as_bytes().as_slice())
            .fetch_optional(conn)
            .await
            .map_err(unavailable)?
            .as_ref()
            .map(email_token_from_row)
            .transpose()
        })
    }

    async fn email_token_by_id_for_update(
        &mut self,
        id: EmailTokenId,
    ) -> Result<Option<EmailToken>, StoreError> {
        tracked!(self, |conn| {
            sqlx::query(&format!(
                "SELECT {EMAIL_TOKEN_COLUMNS} FROM email_tokens WHERE id = $1 FOR UPDATE"
            ))
            .bind(id.as_uuid())
            .fetch_optional(conn)
            .await
            .map_err(unavailable)?
            .as_ref()
            .map(email_token_from_row)
            .transpose()
        })
    }

    async fn spend_email_token(
        &mut self,
        id: EmailTokenId,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        tracked!(self, |conn| {
            let done = sqlx::query(
                "UPDATE email_tokens SET spent_at = $1 WHERE id = $2 AND spent_at IS NULL",
            )
            .bind(at.as_unix_millis())
            .bind(id.as_uuid())
            .execute(conn)
            .await
            .map_err(unavailable)?;
            Ok(done.rows_affected() > 0)
        })
    }

    async fn delete_user(&mut self, id: UserId, at: Timestamp) -> Result<bool, StoreError> {
        tracked!(self, |conn| {
            // One statement: the cascade takes the sessions and their refresh tokens with the
            // user, and the deleted row's epoch goes into the tombstone.
            let done = sqlx::query(
                "WITH gone AS (DELETE FROM users WHERE id = $1 RETURNING id, tokens_valid_after) \
                 INSERT INTO deleted_users (id, tokens_valid_after, deleted_at) \
                 SELECT id, tokens_valid_after, $2 FROM gone \
                 ON CONFLICT (id) DO UPDATE SET \
                 tokens_valid_after = EXCLUDED.tokens_valid_after, deleted_at = EXCLUDED.deleted_at",
            )
            .bind(id.as_uuid())
            .bind(at.as_unix_millis())
            .execute(conn)
            .await
            .map_err(unavailable)?;
            Ok(done.rows_affected() > 0)
        })
    }

    async fn bump_epoch(
        &mut self,
        id: UserId,
        at: Timestamp,
    ) -> Result<Option<Timestamp>, StoreError> {
        tracked!(self, |conn| {
            // One statement reads and moves the epoch, so the value returned is the one stored;
            // a racing bump waits for this one's commit and then moves past its value.
            let epoch: Option<i64> = sqlx::query_scalar(
                "UPDATE users SET tokens_valid_after = GREATEST(tokens_valid_after + 1, $1) \
                 WHERE id = $2 RETURNING tokens_valid_after",
            )
            .bind(at.as_unix_millis())
            .bind(id.as_uuid())
            .fetch_optional(conn)
            .await
            .map_err(unavailable)?;
            Ok(epoch.map(Timestamp::from_unix_millis))
        })
    }

    async fn insert_session(&mut self, session: &Session) -> Result<(), StoreError> {
        tracked!(self, |conn| {
            sqlx::query(&format!(
                "INSERT INTO sessions ({SESSION_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            ))
            .bind(session.id.as_uuid())
            .bind(session.user_id.as_uuid())
            .bind(session.secret_hash.map(|h| h.as_bytes().to_vec()))
            .bind(session.via.as_str())
            .bind(session.created_at.as_unix_millis())
            .bind(session.last_seen_at.as_unix_millis())
            .bind(tessera_core::model::duration_millis(session.idle_timeout))
            .bind(session.expires_at.as_unix_millis())
            .bind(session.user_agent.as_deref())
            .bind(session.ip.as_deref())
            .bind(session.revoked_at.map(Timestamp::as_unix_millis))
            .execute(conn)
            .await
            .map_err(|err| insert_failed(err, |_| "session"))?;
            Ok(())
        })
    }

    async fn revoke_session(&mut self, id: SessionId, at: Timestamp) -> Result<bool, StoreError> {
        tracked!(self, |conn| {
            // A racing revocation waits for this one, then finds `revoked_at` set: one winner.
            let done = sqlx::query(
                "UPDATE sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
            )
            .bind(at.as_unix_millis())
            .bind(id.as_uuid())
            .execute(conn)
            .await
            .map_err(unavailable)?;
            Ok(done.rows_affected() > 0)
        })
    }

    async fn revoke_user_sessions(
        &mut self,
        user: UserId,
        keep: Option<SessionId>,
        at: Timestamp,
    ) -> Result<Vec<SessionId>, StoreError> {
        tracked!(self, |conn| {
            sqlx::query(
                "UPDATE sessions SET revoked_at = $1 \
                 WHERE user_id = $2 AND revoked_at IS NULL AND ($3::uuid IS NULL OR id <> $3) \
                 RETURNING id",
            )
            .bind(at.as_unix_millis())
            .bind(user.as_uuid())
            .bind(keep.map(|id| *id.as_uuid()))
            .fetch_all(conn)
            .await
            .map_err(unavailable)?
            .iter()
            .map(|row| id(row, "id", SessionId::from_uuid))
            .collect()
        })
    }

    async fn insert_refresh(&mut self, record: &RefreshRecord) -> Result<(), StoreError> {
        tracked!(self, |conn| {
            sqlx::query(
                "INSERT INTO refresh_tokens (hash, session_id, issued_at, rotated_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(record.hash.as_bytes().as_slice())
            .bind(record.session_id.as_uuid())
            .bind(record.issued_at.as_unix_millis())
            .bind(record.rotated_at.map(Timestamp::as_unix_millis))
            .execute(conn)
            .await
            .map_err(|err| insert_failed(err, |_| "refresh"))?;
            Ok(())
        })
    }

    async fn spend_refresh(
        &mut self,
        presented: &SecretHash,
        successor: &SecretHash,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        tracked!(self, |conn| {
            let Some(session) = sqlx::query_scalar::<_, Uuid>(
                "UPDATE refresh_tokens SET rotated_at = $1, successor = $2 \
                 WHERE hash = $3 AND rotated_at IS NULL RETURNING session_id",
            )
            .bind(at.as_unix_millis())
            .bind(successor.as_bytes().as_slice())
            .bind(presented.as_bytes().as_slice())
            .fetch_optional(&mut *conn)
            .await
            .map_err(unavailable)?
            else {
                return Err(not_spendable());
            };
            sqlx::query(
                "INSERT INTO refresh_tokens (hash, session_id, issued_at) VALUES ($1, $2, $3)",
            )
            .bind(successor.as_bytes().as_slice())
            .bind(session)
            .bind(at.as_unix_millis())
            .execute(&mut *conn)
            .await
            .map_err(|err| insert_failed(err, |_| "refresh"))?;
            sqlx::query(
                "UPDATE sessions SET last_seen_at = GREATEST(last_seen_at, $1) WHERE id = $2",
            )
            .bind(at.as_unix_millis())
            .bind(session)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
            Ok(())
        })
    }

    async fn deny_jti(&mut self, jti: &str, expires_at: Timestamp) -> Result<(), StoreError> {
        tracked!(self, |conn| {
            // An upsert never fails on a racing insert of the same jti: it waits for it and
            // then updates, keeping the later expiry.
            sqlx::query(
                "INSERT INTO denied_jtis (jti, expires_at) VALUES ($1, $2) \
                 ON CONFLICT (jti) DO UPDATE \
                 SET expires_at = GREATEST(denied_jtis.expires_at, EXCLUDED.expires_at)",
            )
            .bind(jti)
            .bind(expires_at.as_unix_millis())
            .execute(conn)
            .await
            .map_err(unavailable)?;
            Ok(())
        })
    }

    async fn insert_signing_key(&mut self, key: &SealedKey) -> Result<(), StoreError> {
        tracked!(self, |conn| {
            sqlx::query(&format!(
                "INSERT INTO signing_keys ({SIGNING_KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"
            ))
            .bind(&key.kid)
            .bind(&key.alg)
            .bind(key.sealed_private.as_slice())
            .bind(key.public_jwk.as_deref())
            .bind(key.created_at.as_unix_millis())
            .bind(key.retired_at.map(Timestamp::as_unix_millis))
            .execute(conn)
            .await
            .map_err(|err| insert_failed(err, |_| "kid"))?;
            Ok(())
        })
    }

    async fn retire_signing_key(&mut self, kid: &str, at: Timestamp) -> Result<bool, StoreError> {
        tracked!(self, |conn| {
            let done = sqlx::query(
                "UPDATE signing_keys SET retired_at = $1 WHERE kid = $2 AND retired_at IS NULL",
            )
            .bind(at.as_unix_millis())
            .bind(kid)
            .execute(conn)
            .await
            .map_err(unavailable)?;
            Ok(done.rows_affected() > 0)
        })
    }

    async fn delete_signing_key(&mut self, kid: &str) -> Result<bool, StoreError> {
        tracked!(self, |conn| {
            let done = sqlx::query("DELETE FROM signing_keys WHERE kid = $1")
                .bind(kid)
                .execute(conn)
                .await
                .map_err(unavailable)?;
            Ok(done.rows_affected() > 0)
        })
    }

    async fn insert_admin_key(&mut self, key: &AdminKey) -> Result<(), StoreError> {
        tracked!(self, |conn| {
            sqlx::query(&format!(
                "INSERT INTO admin_keys ({ADMIN_KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"
            ))
            .bind(key.id.as_uuid())
            .bind(&key.name)
            .bind(key.hash.as_bytes().as_slice())
            .bind(key.created_at.as_unix_millis())
            .bind(key.revoked_at.map(Timestamp::as_unix_millis))
            .bind(key.scope.as_str())
            .execute(conn)
            .await
            .map_err(|err| insert_failed(err, |_| "admin_key"))?;
            Ok(())
        })
    }

    async fn revoke_admin_key(
        &mut self,
        id: AdminKeyId,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        tracked!(self, |conn| {
            let done = sqlx::query(
                "UPDATE admin_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
            )
            .bind(at.as_unix_millis())
            .bind(id.as_uuid())
            .execute(conn)
            .await
            .map_err(unavailable)?;
            Ok(done.rows_affected() > 0)
        })
    }

    async fn append_revocation(
        &mut self,
        event: &RevocationEvent,
        at: Timestamp,
    ) -> Result<u64, StoreError> {
        if !self.appending {
            tracked!(self, |conn| {
                // The lock before the position (see the module documentation); the
                // notification is delivered, once, only if this transaction commits.
                sqlx::query("SELECT pg_advisory_xact_lock($1), pg_notify($2, '')")
                    .bind(REVOCATION_LOG_LOCK)
                    .bind(NOTIFY_CHANNEL)
                    .execute(conn)
                    .await
                    .map_err(unavailable)?;
                Ok(())
            })?;
            self.appending = true;
        }
        tracked!(self, |conn| {
            let text =
                serde_json::to_string(event).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let seq: i64 = sqlx::query_scalar(
                "INSERT INTO revocation_events (at, event) VALUES ($1, $2::jsonb) RETURNING seq",
            )
            .bind(at.as_unix_millis())
            .bind(text)
            .fetch_one(conn)
            .await
            .map_err(unavailable)?;
            position(seq)
        })
    }

    async fn enqueue(&mut self, messages: &[OutboxMessage]) -> Result<(), StoreError> {
        tracked!(self, |conn| {
            for message in messages {
                sqlx::query(
                    "INSERT INTO webhook_outbox \
                     (id, event_id, endpoint, event_type, body, next_attempt_at, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $6)",
                )
                .bind(message.id.as_uuid())
                .bind(message.event_id.as_uuid())
                .bind(&message.endpoint)
                .bind(message.event_type.as_str())
                .bind(&message.body)
                .bind(message.created_at.as_unix_millis())
                .execute(&mut *conn)
                .await
                .map_err(|err| insert_failed(err, |_| "outbox"))?;
            }
            Ok(())
        })
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        if self.failed {
            // Dropping `self.tx` rolls it back.
            return Err(rolled_back());
        }
        self.tx.commit().await.map_err(unavailable)
    }
}

/// [`StoreTx::spend_refresh`] of a token that is unknown or already spent: the caller did not
/// read it for update in this transaction, or ignored what it read.
fn not_spendable() -> StoreError {
    StoreError::Unavailable("refresh token to spend is unknown or already spent".to_owned())
}

/// [`StoreTx::commit`] after one of the transaction's calls failed.
fn rolled_back() -> StoreError {
    StoreError::Unavailable(
        "transaction rolled back instead of committed: a call in it had failed".to_owned(),
    )
}

#[async_trait]
impl UserStore for PostgresStore {
    async fn find_user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?
            .as_ref()
            .map(user_from_row)
            .transpose()
    }

    async fn find_user_by_email(&self, email: &Email) -> Result<Option<User>, StoreError> {
        sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE email = $1"
        ))
        .bind(email.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?
        .as_ref()
        .map(user_from_row)
        .transpose()
    }

    async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users ORDER BY created_at, row_seq"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?
        .iter()
        .map(user_from_row)
        .collect()
    }

    async fn epochs_since(&self, since: Timestamp) -> Result<Vec<(UserId, Timestamp)>, StoreError> {
        sqlx::query(
            "SELECT id, tokens_valid_after FROM users WHERE tokens_valid_after >= $1 \
             UNION ALL \
             SELECT id, tokens_valid_after FROM deleted_users WHERE tokens_valid_after >= $1",
        )
        .bind(since.as_unix_millis())
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?
        .iter()
        .map(|row| {
            Ok((
                id(row, "id", UserId::from_uuid)?,
                timestamp(row, "tokens_valid_after")?,
            ))
        })
        .collect()
    }

    async fn find_email_token(&self, hash: &SecretHash) -> Result<Option<EmailToken>, StoreError> {
        sqlx::query(&format!(
            "SELECT {EMAIL_TOKEN_COLUMNS} FROM email_tokens WHERE hash = $1"
        ))
        .bind(hash.as_bytes().as_slice())
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?
        .as_ref()
        .map(email_token_from_row)
        .transpose()
    }

    async fn prune_email_tokens(&self, before: Timestamp) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM email_tokens WHERE expires_at < $1")
            .bind(before.as_unix_millis())
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl SessionStore for PostgresStore {
    async fn find_live_session(
        &self,
        id: SessionId,
        now: Timestamp,
    ) -> Result<Option<Session>, StoreError> {
        sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $2 AND {SESSION_LIVE}"
        ))
        .bind(now.as_unix_millis())
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?
        .as_ref()
        .map(session_from_row)
        .transpose()
    }

    async fn find_live_session_by_hash(
        &self,
        hash: &SecretHash,
        now: Timestamp,
    ) -> Result<Option<Session>, StoreError> {
        sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE secret_hash = $2 AND {SESSION_LIVE}"
        ))
        .bind(now.as_unix_millis())
        .bind(hash.as_bytes().as_slice())
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?
        .as_ref()
        .map(session_from_row)
        .transpose()
    }

    async fn touch_session(&self, id: SessionId, at: Timestamp) -> Result<(), StoreError> {
        // Only a live session is extended: touching must never revive an expired one. A
        // racing revocation or touch makes this statement wait, then re-check its WHERE on
        // the row as committed.
        sqlx::query(&format!(
            "UPDATE sessions SET last_seen_at = GREATEST(last_seen_at, $1) \
             WHERE id = $2 AND last_seen_at < $1 AND {SESSION_LIVE}"
        ))
        .bind(at.as_unix_millis())
        .bind(id.as_uuid())
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn list_live_sessions(
        &self,
        user: UserId,
        now: Timestamp,
    ) -> Result<Vec<Session>, StoreError> {
        sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = $2 AND {SESSION_LIVE} \
             ORDER BY created_at DESC, row_seq DESC"
        ))
        .bind(now.as_unix_millis())
        .bind(user.as_uuid())
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?
        .iter()
        .map(session_from_row)
        .collect()
    }

    async fn revoked_sessions_since(
        &self,
        since: Timestamp,
    ) -> Result<Vec<(SessionId, UserId, Timestamp)>, StoreError> {
        // `revoked_at >= $1` implies `revoked_at IS NOT NULL`: the partial index serves it.
        sqlx::query("SELECT id, user_id, revoked_at FROM sessions WHERE revoked_at >= $1")
            .bind(since.as_unix_millis())
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?
            .iter()
            .map(|row| {
                Ok((
                    id(row, "id", SessionId::from_uuid)?,
                    id(row, "user_id", UserId::from_uuid)?,
                    timestamp(row, "revoked_at")?,
                ))
            })
            .collect()
    }

    async fn purge_dead_sessions(&self, before: Timestamp) -> Result<u64, StoreError> {
        // One statement: PostgreSQL always enforces the foreign key, so its cascade deletes
        // the refresh tokens with their session, atomically, and `rows_affected` counts the
        // sessions only.
        let done = sqlx::query(&format!(
            "DELETE FROM sessions WHERE {SESSION_ENDED_BEFORE}"
        ))
        .bind(before.as_unix_millis())
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        sqlx::query("DELETE FROM deleted_users WHERE deleted_at < $1")
            .bind(before.as_unix_millis())
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl DenylistStore for PostgresStore {
    async fn is_jti_denied(&self, jti: &str, now: Timestamp) -> Result<bool, StoreError> {
        let denied: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM denied_jtis WHERE jti = $1 AND $2 < expires_at")
                .bind(jti)
                .bind(now.as_unix_millis())
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
        Ok(denied.is_some())
    }

    async fn denied_jtis(&self, now: Timestamp) -> Result<Vec<(String, Timestamp)>, StoreError> {
        sqlx::query("SELECT jti, expires_at FROM denied_jtis WHERE $1 < expires_at")
            .bind(now.as_unix_millis())
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?
            .iter()
            .map(|row| Ok((get(row, "jti")?, timestamp(row, "expires_at")?)))
            .collect()
    }

    async fn prune_denylist(&self, now: Timestamp) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM denied_jtis WHERE expires_at <= $1")
            .bind(now.as_unix_millis())
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl RevocationLog for PostgresStore {
    async fn events_after(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, Timestamp, RevocationEvent)>, StoreError> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        sqlx::query(
            "SELECT seq, at, event::text AS event FROM revocation_events \
             WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?
        .iter()
        .map(|row| {
            let seq: i64 = get(row, "seq")?;
            let text: String = get(row, "event")?;
            let event = serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt(format!("revocation event {seq}: {e}")))?;
            Ok((position(seq)?, timestamp(row, "at")?, event))
        })
        .collect()
    }

    async fn latest_event(&self) -> Result<u64, StoreError> {
        let seq: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM revocation_events")
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(seq.and_then(|s| u64::try_from(s).ok()).unwrap_or(0))
    }

    async fn prune_events(&self, before: Timestamp) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM revocation_events WHERE at < $1")
            .bind(before.as_unix_millis())
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl OutboxStore for PostgresStore {
    async fn due_messages(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        sqlx::query(&format!(
            "SELECT {OUTBOX_COLUMNS} FROM webhook_outbox \
             WHERE {OUTBOX_WAITING} AND next_attempt_at <= $1 \
             ORDER BY next_attempt_at, row_seq LIMIT $2"
        ))
        .bind(now.as_unix_millis())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?
        .iter()
        .map(queued_from_row)
        .collect()
    }

    async fn claim_message(
        &self,
        id: OutboxId,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool, StoreError> {
        // One statement: a racing claim waits for this one's commit, then re-checks the
        // WHERE on the claimed row and finds it no longer due.
        let done = sqlx::query(&format!(
            "UPDATE webhook_outbox SET next_attempt_at = $3 \
             WHERE id = $1 AND {OUTBOX_WAITING} AND next_attempt_at <= $2"
        ))
        .bind(id.as_uuid())
        .bind(now.as_unix_millis())
        .bind(until.as_unix_millis())
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(done.rows_affected() > 0)
    }

    async fn mark_delivered(&self, id: OutboxId, at: Timestamp) -> Result<bool, StoreError> {
        let done = sqlx::query(&format!(
            "UPDATE webhook_outbox SET delivered_at = $2 WHERE id = $1 AND {OUTBOX_WAITING}"
        ))
        .bind(id.as_uuid())
        .bind(at.as_unix_millis())
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(done.rows_affected() > 0)
    }

    async fn reschedule(
        &self,
        id: OutboxId,
        attempts: u32,
        next_attempt_at: Timestamp,
        error: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(&format!(
            "UPDATE webhook_outbox SET attempts = $2, next_attempt_at = $3, last_error = $4 \
             WHERE id = $1 AND {OUTBOX_WAITING}"
        ))
        .bind(id.as_uuid())
        .bind(i64::from(attempts))
        .bind(next_attempt_at.as_unix_millis())
        .bind(error)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(done.rows_affected() > 0)
    }

    async fn give_up(&self, id: OutboxId, at: Timestamp, error: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(&format!(
            "UPDATE webhook_outbox SET given_up_at = $2, last_error = $3 \
             WHERE id = $1 AND {OUTBOX_WAITING}"
        ))
        .bind(id.as_uuid())
        .bind(at.as_unix_millis())
        .bind(error)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(done.rows_affected() > 0)
    }

    async fn prune_outbox(&self, before: Timestamp) -> Result<u64, StoreError> {
        let done =
            sqlx::query("DELETE FROM webhook_outbox WHERE delivered_at < $1 OR given_up_at < $1")
                .bind(before.as_unix_millis())
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl KeyStore for PostgresStore {
    async fn signing_keys(&self) -> Result<Vec<SealedKey>, StoreError> {
        sqlx::query(&format!(
            "SELECT {SIGNING_KEY_COLUMNS} FROM signing_keys ORDER BY created_at, row_seq"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?
        .iter()
        .map(signing_key_from_row)
        .collect()
    }
}

#[async_trait]
impl AdminKeyStore for PostgresStore {
    async fn find_live_admin_key(&self, hash: &SecretHash) -> Result<Option<AdminKey>, StoreError> {
        sqlx::query(&format!(
            "SELECT {ADMIN_KEY_COLUMNS} FROM admin_keys WHERE hash = $1 AND revoked_at IS NULL"
        ))
        .bind(hash.as_bytes().as_slice())
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?
        .as_ref()
        .map(admin_key_from_row)
        .transpose()
    }
}

fn tally_from_row(row: &PgRow) -> Result<Tally, StoreError> {
    Ok(Tally {
        count: u32::try_from(get::<i64>(row, "count")?).map_err(|e| corrupt("count", e))?,
        window_ends: timestamp(row, "window_ends")?,
        last: timestamp(row, "last_at")?,
        expires_at: timestamp(row, "expires_at")?,
    })
}

#[async_trait]
impl GuessingCounters for PostgresStore {
    async fn update_tally(
        &self,
        key: &str,
        now: Timestamp,
        change: &(dyn Fn(Option<Tally>) -> Option<Tally> + Send + Sync),
    ) -> Result<Option<Tally>, StoreError> {
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
            .await
            .map_err(unavailable)?;
        // `FOR UPDATE` locks only a row that exists: an expired placeholder is inserted
        // first, so two nodes' first attempts on one key queue on its row instead of both
        // reading nothing and the second overwriting the first.
        sqlx::query(
            "INSERT INTO guessing_tallies (key, count, window_ends, last_at, expires_at) \
             VALUES ($1, 0, 0, 0, 0) ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        let row = sqlx::query(
            "SELECT count, window_ends, last_at, expires_at FROM guessing_tallies \
             WHERE key = $1 FOR UPDATE",
        )
        .bind(key)
        .fetch_one(&mut *tx)
        .await
        .map_err(unavailable)?;
        let before = Some(tally_from_row(&row)?).filter(|t| t.expires_at > now);
        match change(before) {
            Some(after) => sqlx::query(
                "UPDATE guessing_tallies SET count = $2, window_ends = $3, last_at = $4, \
                 expires_at = $5 WHERE key = $1",
            )
            .bind(key)
            .bind(i64::from(after.count))
            .bind(after.window_ends.as_unix_millis())
            .bind(after.last.as_unix_millis())
            .bind(after.expires_at.as_unix_millis()),
            None => sqlx::query("DELETE FROM guessing_tallies WHERE key = $1").bind(key),
        }
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(before)
    }

    async fn tally(&self, key: &str, now: Timestamp) -> Result<Option<Tally>, StoreError> {
        sqlx::query(
            "SELECT count, window_ends, last_at, expires_at FROM guessing_tallies \
             WHERE key = $1 AND expires_at > $2",
        )
        .bind(key)
        .bind(now.as_unix_millis())
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?
        .map(|row| tally_from_row(&row))
        .transpose()
    }

    async fn clear_tally(&self, key: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM guessing_tallies WHERE key = $1")
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn prune_tallies(&self, now: Timestamp) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM guessing_tallies WHERE expires_at <= $1")
            .bind(now.as_unix_millis())
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn guessing(&self) -> &dyn GuessingCounters {
        self
    }

    async fn begin(&self) -> Result<Box<dyn StoreTx>, StoreError> {
        let tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
            .await
            .map_err(unavailable)?;
        Ok(Box::new(PostgresTx {
            tx,
            failed: false,
            appending: false,
        }))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "PostgreSQL"
    }

    fn pool_use(&self) -> Option<PoolUse> {
        let stats = self.pool_stats();
        Some(PoolUse {
            open: stats.size,
            idle: u32::try_from(stats.idle).unwrap_or(u32::MAX),
            max: stats.max,
        })
    }
}
