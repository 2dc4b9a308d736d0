//! The embedded durable store: one SQLite file in WAL mode.
//!
//! Durability: `synchronous = FULL` makes every commit fsync the WAL, so a write this store
//! acknowledged survives `kill -9` and power loss (SPEC §7), at the price of one fsync per
//! write.
//!
//! Concurrency: SQLite admits one writer at a time. Writes go through a pool of exactly one
//! connection, so writers in this process queue in the pool instead of failing with
//! `SQLITE_BUSY`; reads use a separate pool and, thanks to WAL, never wait for the writer and
//! only ever see committed data. Every write transaction ([`Store::begin`]) is a
//! `BEGIN IMMEDIATE` transaction on that connection, which takes the write lock up front: its
//! reads are then reads for update, and another process on the same file waits in
//! `busy_timeout` rather than deadlocking on a lock upgrade. Housekeeping writes (touching,
//! pruning, webhook delivery state) are single statements on the same connection.
//!
//! Revocation-log entries and webhook messages (SPEC §3) are inserted inside the transaction of
//! the change they report, so the change, its entry and its event commit or vanish together.
//! Because the write lock is held until commit, log positions become visible in the order they
//! were handed out: a reader following the log never skips one.

use std::path::Path;
use std::str::FromStr as _;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::Row as _;
use tessera_core::guessing::Tally;
use tessera_core::model::{
    AdminKey, AdminKeyId, AdminScope, Email, EmailToken, EmailTokenId, OutboxId, RefreshRecord,
    RevocationEvent, SealedKey, Session, SessionId, Timestamp, TokenPurpose, User, UserId, Via,
    WebhookEventId,
};
use tessera_core::rotation::PresentedToken;
use tessera_core::secret::SecretHash;
use tessera_core::store::{
    AdminKeyStore, DenylistStore, GuessingCounters, KeyStore, OutboxStore, RevocationLog,
    SessionStore, StoreTx, UserStore,
};
use tessera_core::webhooks::{EventType, OutboxMessage, QueuedMessage};
use tessera_core::{Store, StoreError};

/// How long a connection waits for another process's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Readers never block each other or the writer in WAL mode; a few cover a small node.
const READERS: u32 = 4;
/// Attempts at applying migrations: two processes migrating one fresh file at once make
/// the slower one fail once, after which it finds the schema in place.
const MIGRATION_ATTEMPTS: u32 = 3;
/// Attempts at opening the first connection: see [`connect`].
const CONNECT_ATTEMPTS: u32 = 5;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

const SESSION_COLUMNS: &str = "id, user_id, secret_hash, via, created_at, last_seen_at, \
     idle_timeout_ms, expires_at, user_agent, ip, revoked_at";

/// The SQL mirror of [`Session::is_live`] for a `sessions` row, with `now` bound to `?1`.
const SESSION_LIVE: &str = "revoked_at IS NULL \
     AND ?1 < MIN(last_seen_at + idle_timeout_ms, expires_at)";

/// A `sessions` row that ended strictly before `?1`: revoked, or expired (idle or absolute),
/// before it. The idle end is [`Session::idle_expires_at`], which already caps at `expires_at`.
const SESSION_ENDED_BEFORE: &str = "(revoked_at < ?1 \
     OR MIN(last_seen_at + idle_timeout_ms, expires_at) < ?1)";

const OUTBOX_COLUMNS: &str = "id, event_id, endpoint, event_type, body, attempts, \
     next_attempt_at, created_at, last_error";

/// A `webhook_outbox` row still waiting for delivery (the partial index's condition).
const OUTBOX_WAITING: &str = "delivered_at IS NULL AND given_up_at IS NULL";

/// A SQLite-backed [`Store`]; see the module documentation. Cloning shares the pools.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqliteStore {
    /// A transaction that holds the write lock from its first statement (see the module
    /// documentation). Dropping it without `commit` rolls it back.
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(unavailable)
    }

    /// Opens (creating it if missing) the database at `url_or_path` — `sqlite://PATH`,
    /// `sqlite:PATH` or a plain file path — and brings its schema up to date.
    ///
    /// Several stores, in one process or several, may open the same file at once.
    pub async fn open(url_or_path: &str) -> Result<Self, StoreError> {
        let options = connect_options(url_or_path)?;
        create_owner_only(options.get_filename()).map_err(|err| {
            StoreError::Unavailable(format!(
                "cannot open SQLite database `{url_or_path}`: {err}"
            ))
        })?;
        let writer = connect(url_or_path, &options, 1).await?;
        migrate(&writer).await?;
        let reader = connect(url_or_path, &options, READERS).await?;
        tracing::debug!(database = %url_or_path, "opened SQLite store");
        Ok(Self { writer, reader })
    }

    /// Waits for in-flight operations, then closes every connection (checkpointing the WAL).
    /// Dropping the store also closes it, without waiting.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}

/// Creates a missing database file readable by its owner alone: it holds password hashes,
/// sessions and sealed signing keys. SQLite gives the `-wal` and `-shm` files it creates
/// beside it the database file's mode, so they are owner-only too. An existing file keeps
/// the mode its administrator chose.
fn create_owner_only(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(err),
    }
}

fn connect_options(url_or_path: &str) -> Result<SqliteConnectOptions, StoreError> {
    let options = if url_or_path.starts_with("sqlite:") {
        let rest = url_or_path
            .trim_start_matches("sqlite://")
            .trim_start_matches("sqlite:");
        let in_memory = rest.starts_with(":memory:") || rest.contains("mode=memory");
        if rest.is_empty() || in_memory {
            return Err(StoreError::Unavailable(format!(
                "`{url_or_path}` names no database file; use `sqlite://PATH`, or `memory` for \
                 the in-memory store"
            )));
        }
        SqliteConnectOptions::from_str(url_or_path).map_err(|err| open_failed(url_or_path, &err))?
    } else {
        SqliteConnectOptions::new().filename(Path::new(url_or_path))
    };
    Ok(options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(BUSY_TIMEOUT))
}

/// A pool of up to `max` connections, its first one opened. Two processes creating one fresh
/// file at once race to switch it to WAL, and SQLite answers the loser `SQLITE_BUSY` at once,
/// without waiting in `busy_timeout`; the loser retries, and then finds the file in WAL mode.
async fn connect(
    database: &str,
    options: &SqliteConnectOptions,
    max: u32,
) -> Result<SqlitePool, StoreError> {
    let mut attempt = 1;
    loop {
        match SqlitePoolOptions::new()
            .max_connections(max)
            .connect_with(options.clone())
            .await
        {
            Ok(pool) => return Ok(pool),
            Err(err) if attempt < CONNECT_ATTEMPTS && is_busy(&err) => {
                tracing::debug!(attempt, error = %err, "SQLite file busy while opening; retrying");
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                attempt += 1;
            }
            Err(err) => return Err(open_failed(database, &err)),
        }
    }
}

/// `SQLITE_BUSY` or `SQLITE_LOCKED`, extended codes included.
fn is_busy(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(sqlx::error::DatabaseError::code)
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| matches!(code & 0xff, 5 | 6))
}

fn open_failed(database: &str, err: &sqlx::Error) -> StoreError {
    StoreError::Unavailable(format!("cannot open SQLite database `{database}`: {err}"))
}

async fn migrate(writer: &SqlitePool) -> Result<(), StoreError> {
    let mut attempt = 1;
    loop {
        match MIGRATOR.run(writer).await {
            Ok(()) => return Ok(()),
            Err(err) if attempt < MIGRATION_ATTEMPTS => {
                // Expected when another process migrates the same fresh file at this moment.
                tracing::debug!(attempt, error = %err, "SQLite migration failed; retrying");
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                attempt += 1;
            }
            Err(err) => {
                return Err(StoreError::Unavailable(format!(
                    "cannot migrate SQLite schema: {err}"
                )))
            }
        }
    }
}

#[allow(clippy::needless_pass_by_value)] // shaped for `map_err(unavailable)`
fn unavailable(err: sqlx::Error) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

/// Maps an insert's error: a uniqueness rule to [`StoreError::Conflict`] named by `conflict`
/// (given the constraint text SQLite reports, e.g. `users.email`), anything else to
/// [`StoreError::Unavailable`].
fn insert_failed(err: sqlx::Error, conflict: impl Fn(&str) -> &'static str) -> StoreError {
    match err.as_database_error() {
        Some(db) if db.is_unique_violation() => StoreError::Conflict(conflict(db.message())),
        Some(db) if db.is_foreign_key_violation() => {
            StoreError::Unavailable(format!("refers to a missing record: {}", db.message()))
        }
        _ => unavailable(err),
    }
}

fn corrupt(what: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {err}"))
}

fn get<'r, T>(row: &'r SqliteRow, column: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    row.try_get(column).map_err(|err| corrupt(column, err))
}

fn timestamp(row: &SqliteRow, column: &str) -> Result<Timestamp, StoreError> {
    get::<i64>(row, column).map(Timestamp::from_unix_millis)
}

fn optional_timestamp(row: &SqliteRow, column: &str) -> Result<Option<Timestamp>, StoreError> {
    Ok(get::<Option<i64>>(row, column)?.map(Timestamp::from_unix_millis))
}

fn hash(row: &SqliteRow, column: &str) -> Result<SecretHash, StoreError> {
    let bytes: Vec<u8> = get(row, column)?;
    SecretHash::from_slice(&bytes).ok_or_else(|| corrupt(column, "not 32 bytes"))
}

fn optional_hash(row: &SqliteRow, column: &str) -> Result<Option<SecretHash>, StoreError> {
    get::<Option<Vec<u8>>>(row, column)?
        .map(|bytes| SecretHash::from_slice(&bytes).ok_or_else(|| corrupt(column, "not 32 bytes")))
        .transpose()
}

fn id<T>(row: &SqliteRow, column: &str, parse: fn(&str) -> Option<T>) -> Result<T, StoreError> {
    let text: String = get(row, column)?;
    parse(&text).ok_or_else(|| corrupt(column, format!("not a UUID: {text:?}")))
}

fn user_from_row(row: &SqliteRow) -> Result<User, StoreError> {
    let roles: String = get(row, "roles")?;
    Ok(User {
        id: id(row, "id", UserId::parse)?,
        email: Email::from_stored(get(row, "email")?),
        password_hash: get(row, "password_hash")?,
        roles: serde_json::from_str(&roles).map_err(|err| corrupt("roles", err))?,
        created_at: timestamp(row, "created_at")?,
        tokens_valid_after: timestamp(row, "tokens_valid_after")?,
        email_verified_at: optional_timestamp(row, "email_verified_at")?,
    })
}

const EMAIL_TOKEN_COLUMNS: &str = "id, user_id, purpose, hash, created_at, expires_at, spent_at";

fn email_token_from_row(row: &SqliteRow) -> Result<EmailToken, StoreError> {
    let purpose: String = get(row, "purpose")?;
    Ok(EmailToken {
        id: id(row, "id", EmailTokenId::parse)?,
        user_id: id(row, "user_id", UserId::parse)?,
        purpose: TokenPurpose::parse(&purpose)
            .ok_or_else(|| corrupt("purpose", format!("{purpose:?}")))?,
        hash: hash(row, "hash")?,
        created_at: timestamp(row, "created_at")?,
        expires_at: timestamp(row, "expires_at")?,
        spent_at: optional_timestamp(row, "spent_at")?,
    })
}

fn session_from_row(row: &SqliteRow) -> Result<Session, StoreError> {
    let via: String = get(row, "via")?;
    Ok(Session {
        id: id(row, "id", SessionId::parse)?,
        user_id: id(row, "user_id", UserId::parse)?,
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

fn signing_key_from_row(row: &SqliteRow) -> Result<SealedKey, StoreError> {
    Ok(SealedKey {
        kid: get(row, "kid")?,
        alg: get(row, "alg")?,
        sealed_private: get(row, "sealed_private")?,
        public_jwk: get(row, "public_jwk")?,
        created_at: timestamp(row, "created_at")?,
        retired_at: optional_timestamp(row, "retired_at")?,
    })
}

fn admin_key_from_row(row: &SqliteRow) -> Result<AdminKey, StoreError> {
    Ok(AdminKey {
        id: id(row, "id", AdminKeyId::parse)?,
        name: get(row, "name")?,
        hash: hash(row, "hash")?,
        created_at: timestamp(row, "created_at")?,
        revoked_at: optional_timestamp(row, "revoked_at")?,
        scope: scope(row)?,
    })
}

fn scope(row: &SqliteRow) -> Result<AdminScope, StoreError> {
    let text: String = get(row, "scope")?;
    AdminScope::parse(&text).ok_or_else(|| corrupt("scope", format!("{text:?}")))
}

fn queued_from_row(row: &SqliteRow) -> Result<QueuedMessage, StoreError> {
    let event_type: String = get(row, "event_type")?;
    let attempts: i64 = get(row, "attempts")?;
    Ok(QueuedMessage {
        message: OutboxMessage {
            id: id(row, "id", OutboxId::parse)?,
            event_id: id(row, "event_id", WebhookEventId::parse)?,
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

/// Queues `messages` on `conn`, which is inside the transaction of the change they report.
async fn enqueue(
    conn: &mut SqliteConnection,
    messages: impl IntoIterator<Item = OutboxMessage>,
) -> Result<(), StoreError> {
    for message in messages {
        sqlx::query(
            "INSERT INTO webhook_outbox \
             (id, event_id, endpoint, event_type, body, next_attempt_at, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
        )
        .bind(message.id.to_string())
        .bind(message.event_id.to_string())
        .bind(&message.endpoint)
        .bind(message.event_type.as_str())
        .bind(&message.body)
        .bind(message.created_at.as_unix_millis())
        .execute(&mut *conn)
        .await
        .map_err(|err| insert_failed(err, |_| "outbox"))?;
    }
    Ok(())
}

fn roles_json(roles: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(roles).map_err(|err| StoreError::Unavailable(err.to_string()))
}

/// A write transaction (see [`Store::begin`]): a `BEGIN IMMEDIATE` transaction on the one
/// writer connection, so it holds SQLite's write lock, in this process and against every other
/// process on the file, from its first statement to its end. Dropping it rolls back.
struct SqliteTx {
    tx: sqlx::Transaction<'static, sqlx::Sqlite>,
    /// Set by the first statement that fails. SQLite itself would go on and commit the writes
    /// made before it, but a transaction is all or nothing, so [`StoreTx::commit`] then refuses
    /// and rolls back instead.
    failed: bool,
}

/// Runs `$body`, an async block over `$conn` (the transaction's connection), and marks the
/// transaction failed if it returns an error.
macro_rules! tracked {
    ($self:ident, |$conn:ident| $body:block) => {{
        let $conn: &mut SqliteConnection = &mut *$self.tx;
        let result: Result<_, StoreError> = async move { $body }.await;
        if result.is_err() {
            $self.failed = true;
        }
        result
    }};
}

#[async_trait]
impl StoreTx for SqliteTx {
    async fn user_for_update(&mut self, id: UserId) -> Result<Option<User>, StoreError> {
        tracked!(self, |conn| {
            sqlx::query("SELECT * FROM users WHERE id = ?1")
                .bind(id.to_string())
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
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1"
            ))
            .bind(id.to_string())
            .fetch_optional(conn)
            .await
            .map_err(unavailable)?
            .as_ref()
            .map(session_from_row)
            .transpose()
        })
    }

    async fn refresh_token_for_update(
        &mut self,
        presented: &SecretHash,
        now: Timestamp,
    ) -> Result<Option<PresentedToken>, StoreError> {
        tracked!(self, |conn| {
            let Some(token) = sqlx::query(
                "SELECT r.session_id, r.rotated_at, n.rotated_at AS next_rotated_at, \
                 n.hash IS NOT NULL AS has_next \
                 FROM refresh_tokens r LEFT JOIN refresh_tokens n ON n.hash = r.successor \
                 WHERE r.hash = ?1",
            )
            .bind(presented.as_bytes().as_slice())
            .fetch_optional(&mut *conn)
            .await
            .map_err(unavailable)?
            else {
                return Ok(None);
            };
            let session_id = id(&token, "session_id", SessionId::parse)?;
            let live_session = sqlx::query(&format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?2 AND {SESSION_LIVE}"
            ))
            .bind(now.as_unix_millis())
            .bind(session_id.to_string())
            .fetch_optional(&mut *conn)
            .await
            .map_err(unavailable)?
            .as_ref()
            .map(session_from_row)
            .transpose()?;
            Ok(Some(PresentedToken {
                live_session,
                rotated_at: optional_timestamp(&token, "rotated_at")?,
                successor_unspent: get::<bool>(&token, "has_next")?
                    && optional_timestamp(&token, "next_rotated_at")?.is_none(),
            }))
        })
    }

    async fn refresh_family_for_update(
        &mut self,
        presented: &SecretHash,
    ) -> Result<Option<Session>, StoreError> {
        tracked!(self, |conn| {
            sqlx::query(&format!(
                "SELECT {SESSION_COLUMNS} FROM sessions \
                 WHERE id = (SELECT session_id FROM refresh_tokens WHERE hash = ?1)"
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
            sqlx::query("SELECT * FROM signing_keys ORDER BY created_at, rowid")
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
            sqlx::query(
                "INSERT INTO users \
                 (id, email, password_hash, roles, created_at, tokens_valid_after, \
                  email_verified_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .bind(user.id.to_string())
            .bind(user.email.as_str())
            .bind(&user.password_hash)
            .bind(roles_json(&user.roles)?)
            .bind(user.created_at.as_unix_millis())
            .bind(user.tokens_valid_after.as_unix_millis())
            .bind(user.email_verified_at.map(Timestamp::as_unix_millis))
            .execute(conn)
            .await
            .map_err(|err| {
                insert_failed(err, |constraint| {
                    if constraint.contains("users.email") {
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
            // SQLite counts every row the WHERE matched, changed or not: `true` means "exists".
            let done = sqlx::query("UPDATE users SET roles = ?1 WHERE id = ?2")
                .bind(roles_json(roles)?)
                .bind(id.to_string())
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
            let done = sqlx::query("UPDATE users SET password_hash = ?1 WHERE id = ?2")
                .bind(password_hash)
                .bind(id.to_string())
                .execute(conn)
                .await
                .map_err(unavailable)?;
            Ok(done.rows_affected() > 0)
        })
    }

    async fn set_email_verified(&mut self, id: UserId, at: Timestamp) -> Result<bool, StoreError> {
        tracked!(self, |conn| {
            let done = sqlx::query(
                "UPDATE users SET email_verified_at = COALESCE(email_verified_at, ?1) \
                 WHERE id = ?2",
            )
            .bind(at.as_unix_millis())
            .bind(id.to_string())
            .execute(conn)
            .await
            .map_err(unavailable)?;
            Ok(done.rows_affected() > 0)
        })
    }

    async fn insert_email_token(&mut self, token: &EmailToken) -> Result<bool, StoreError> {
        tracked!(self, |conn| {
            let exists: Option<i64> =
                sqlx::query_scalar("SELECT 1 FROM email_tokens WHERE id = ?1")
                    .bind(token.id.to_string())
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(unavailable)?;
            if exists.is_some() {
                return Ok(false);
            }
            sqlx::query(
                "UPDATE email_tokens SET spent_at = ?1 \
                 WHERE user_id = ?2 AND purpose = ?3 AND spent_at IS NULL",
            )
            .bind(token.created_at.as_unix_millis())
            .bind(token.user_id.to_string())
            .bind(token.purpose.as_str())
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
            sqlx::query(&format!(
                "INSERT INTO email_tokens ({EMAIL_TOKEN_COLUMNS}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
            ))
            .bind(token.id.to_string())
            .bind(token.user_id.to_string())
            .bind(token.purpose.as_str())
            .bind(token.hash.as_bytes().as_slice())
            .bind(token.created_at.as_unix_millis())
            .bind(token.expires_at.as_unix_millis())
            .bind(token.spent_at.map(Timestamp::as_unix_millis))
            .execute(&mut *conn)
            .await
            .map_err(|err| {
                insert_failed(err, |constraint| {
                    if constraint.contains("email_tokens.hash") {
                        "email_token"
                    } else {
                        "user"
                    }
                })
            })?;
            Ok(true)
        })
    }

    async fn delete_user(&mut self, id: UserId, at: Timestamp) -> Result<bool, StoreError> {
        tracked!(self, |conn| {
            let user = id.to_string();
            let kept = sqlx::query(
                "INSERT INTO deleted_users (id, tokens_valid_after, deleted_at) \
                 SELECT id, tokens_valid_after, ?2 FROM users WHERE id = ?1 \
                 ON CONFLICT (id) DO UPDATE SET \
                 tokens_valid_after = excluded.tokens_valid_after, deleted_at = excluded.deleted_at",
            )
            .bind(&user)
            .bind(at.as_unix_millis())
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
            if kept.rows_affected() == 0 {
                return Ok(false);
            }
            // By name, as `purge_dead_sessions` does: not dependent on `PRAGMA foreign_keys`.
            sqlx::query(
                "DELETE FROM refresh_tokens WHERE session_id IN \
                 (SELECT id FROM sessions WHERE user_id = ?1)",
            )
            .bind(&user)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
            sqlx::query("DELETE FROM sessions WHERE user_id = ?1")
                .bind(&user)
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?;
            sqlx::query("DELETE FROM email_tokens WHERE user_id = ?1")
                .bind(&user)
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?;
            sqlx::query("DELETE FROM users WHERE id = ?1")
                .bind(&user)
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
                "SELECT {EMAIL_TOKEN_COLUMNS} FROM email_tokens WHERE hash = ?1"
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
                "SELECT {EMAIL_TOKEN_COLUMNS} FROM email_tokens WHERE id = ?1"
            ))
            .bind(id.to_string())
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
                "UPDATE email_tokens SET spent_at = ?1 WHERE id = ?2 AND spent_at IS NULL",
            )
            .bind(at.as_unix_millis())
            .bind(id.to_string())
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
            // One statement reads and moves the epoch, so the value returned is the one stored.
            let epoch: Option<i64> = sqlx::query_scalar(
                "UPDATE users SET tokens_valid_after = MAX(tokens_valid_after + 1, ?1) \
                 WHERE id = ?2 RETURNING tokens_valid_after",
            )
            .bind(at.as_unix_millis())
            .bind(id.to_string())
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
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
            ))
            .bind(session.id.to_string())
            .bind(session.user_id.to_string())
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
            let done = sqlx::query(
                "UPDATE sessions SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL",
            )
            .bind(at.as_unix_millis())
            .bind(id.to_string())
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
                "UPDATE sessions SET revoked_at = ?1 \
                 WHERE user_id = ?2 AND revoked_at IS NULL AND (?3 IS NULL OR id <> ?3) \
                 RETURNING id",
            )
            .bind(at.as_unix_millis())
            .bind(user.to_string())
            .bind(keep.map(|id| id.to_string()))
            .fetch_all(conn)
            .await
            .map_err(unavailable)?
            .iter()
            .map(|row| id(row, "id", SessionId::parse))
            .collect()
        })
    }

    async fn insert_refresh(&mut self, record: &RefreshRecord) -> Result<(), StoreError> {
        tracked!(self, |conn| {
            sqlx::query(
                "INSERT INTO refresh_tokens (hash, session_id, issued_at, rotated_at) \
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .bind(record.hash.as_bytes().as_slice())
            .bind(record.session_id.to_string())
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
            let Some(session) = sqlx::query_scalar::<_, String>(
                "UPDATE refresh_tokens SET rotated_at = ?1, successor = ?2 \
                 WHERE hash = ?3 AND rotated_at IS NULL RETURNING session_id",
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
                "INSERT INTO refresh_tokens (hash, session_id, issued_at) VALUES (?1, ?2, ?3)",
            )
            .bind(successor.as_bytes().as_slice())
            .bind(&session)
            .bind(at.as_unix_millis())
            .execute(&mut *conn)
            .await
            .map_err(|err| insert_failed(err, |_| "refresh"))?;
            sqlx::query("UPDATE sessions SET last_seen_at = MAX(last_seen_at, ?1) WHERE id = ?2")
                .bind(at.as_unix_millis())
                .bind(&session)
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?;
            Ok(())
        })
    }

    async fn deny_jti(&mut self, jti: &str, expires_at: Timestamp) -> Result<(), StoreError> {
        tracked!(self, |conn| {
            sqlx::query(
                "INSERT INTO denied_jtis (jti, expires_at) VALUES (?1, ?2) \
                 ON CONFLICT (jti) DO UPDATE SET expires_at = MAX(expires_at, excluded.expires_at)",
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
            sqlx::query(
                "INSERT INTO signing_keys \
                 (kid, alg, sealed_private, public_jwk, created_at, retired_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
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
                "UPDATE signing_keys SET retired_at = ?1 WHERE kid = ?2 AND retired_at IS NULL",
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
            let done = sqlx::query("DELETE FROM signing_keys WHERE kid = ?1")
                .bind(kid)
                .execute(conn)
                .await
                .map_err(unavailable)?;
            Ok(done.rows_affected() > 0)
        })
    }

    async fn insert_admin_key(&mut self, key: &AdminKey) -> Result<(), StoreError> {
        tracked!(self, |conn| {
            sqlx::query(
                "INSERT INTO admin_keys (id, name, hash, created_at, revoked_at, scope) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .bind(key.id.to_string())
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
                "UPDATE admin_keys SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL",
            )
            .bind(at.as_unix_millis())
            .bind(id.to_string())
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
        tracked!(self, |conn| {
            let text =
                serde_json::to_string(event).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            // The writer lock is held until commit, so positions become visible in order.
            let seq: i64 = sqlx::query_scalar(
                "INSERT INTO revocation_events (at, event) VALUES (?1, ?2) RETURNING seq",
            )
            .bind(at.as_unix_millis())
            .bind(text)
            .fetch_one(conn)
            .await
            .map_err(unavailable)?;
            u64::try_from(seq).map_err(|_| StoreError::Corrupt(format!("event seq {seq}")))
        })
    }

    async fn enqueue(&mut self, messages: &[OutboxMessage]) -> Result<(), StoreError> {
        tracked!(self, |conn| {
            enqueue(conn, messages.iter().cloned()).await
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
impl UserStore for SqliteStore {
    async fn find_user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        sqlx::query("SELECT * FROM users WHERE id = ?1")
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(unavailable)?
            .as_ref()
            .map(user_from_row)
            .transpose()
    }

    async fn find_user_by_email(&self, email: &Email) -> Result<Option<User>, StoreError> {
        sqlx::query("SELECT * FROM users WHERE email = ?1")
            .bind(email.as_str())
            .fetch_optional(&self.reader)
            .await
            .map_err(unavailable)?
            .as_ref()
            .map(user_from_row)
            .transpose()
    }

    async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        sqlx::query("SELECT * FROM users ORDER BY created_at, rowid")
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?
            .iter()
            .map(user_from_row)
            .collect()
    }

    async fn epochs_since(&self, since: Timestamp) -> Result<Vec<(UserId, Timestamp)>, StoreError> {
        sqlx::query(
            "SELECT id, tokens_valid_after FROM users WHERE tokens_valid_after >= ?1 \
             UNION ALL \
             SELECT id, tokens_valid_after FROM deleted_users WHERE tokens_valid_after >= ?1",
        )
        .bind(since.as_unix_millis())
        .fetch_all(&self.reader)
        .await
        .map_err(unavailable)?
        .iter()
        .map(|row| {
            Ok((
                id(row, "id", UserId::parse)?,
                timestamp(row, "tokens_valid_after")?,
            ))
        })
        .collect()
    }

    async fn find_email_token(&self, hash: &SecretHash) -> Result<Option<EmailToken>, StoreError> {
        sqlx::query(&format!(
            "SELECT {EMAIL_TOKEN_COLUMNS} FROM email_tokens WHERE hash = ?1"
        ))
        .bind(hash.as_bytes().as_slice())
        .fetch_optional(&self.reader)
        .await
        .map_err(unavailable)?
        .as_ref()
        .map(email_token_from_row)
        .transpose()
    }

    async fn prune_email_tokens(&self, before: Timestamp) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM email_tokens WHERE expires_at < ?1")
            .bind(before.as_unix_millis())
            .execute(&self.writer)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn find_live_session(
        &self,
        id: SessionId,
        now: Timestamp,
    ) -> Result<Option<Session>, StoreError> {
        sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?2 AND {SESSION_LIVE}"
        ))
        .bind(now.as_unix_millis())
        .bind(id.to_string())
        .fetch_optional(&self.reader)
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
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE secret_hash = ?2 AND {SESSION_LIVE}"
        ))
        .bind(now.as_unix_millis())
        .bind(hash.as_bytes().as_slice())
        .fetch_optional(&self.reader)
        .await
        .map_err(unavailable)?
        .as_ref()
        .map(session_from_row)
        .transpose()
    }

    async fn touch_session(&self, id: SessionId, at: Timestamp) -> Result<(), StoreError> {
        // Only a live session is extended: touching must never revive an expired one.
        sqlx::query(&format!(
            "UPDATE sessions SET last_seen_at = ?1 \
             WHERE id = ?2 AND last_seen_at < ?1 AND {SESSION_LIVE}"
        ))
        .bind(at.as_unix_millis())
        .bind(id.to_string())
        .execute(&self.writer)
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
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = ?2 AND {SESSION_LIVE} \
             ORDER BY created_at DESC, rowid DESC"
        ))
        .bind(now.as_unix_millis())
        .bind(user.to_string())
        .fetch_all(&self.reader)
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
        // `revoked_at >= ?1` implies `revoked_at IS NOT NULL`: the partial index serves it.
        sqlx::query("SELECT id, user_id, revoked_at FROM sessions WHERE revoked_at >= ?1")
            .bind(since.as_unix_millis())
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?
            .iter()
            .map(|row| {
                Ok((
                    id(row, "id", SessionId::parse)?,
                    id(row, "user_id", UserId::parse)?,
                    timestamp(row, "revoked_at")?,
                ))
            })
            .collect()
    }

    async fn purge_dead_sessions(&self, before: Timestamp) -> Result<u64, StoreError> {
        // The foreign key would cascade to the refresh tokens, but deleting them by name in
        // the same transaction does not make the promise depend on `PRAGMA foreign_keys`.
        let mut tx = self.write_tx().await?;
        sqlx::query(&format!(
            "DELETE FROM refresh_tokens WHERE session_id IN \
             (SELECT id FROM sessions WHERE {SESSION_ENDED_BEFORE})"
        ))
        .bind(before.as_unix_millis())
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        // `rows_affected` counts the sessions only: SQLite leaves cascaded rows out of it.
        let done = sqlx::query(&format!(
            "DELETE FROM sessions WHERE {SESSION_ENDED_BEFORE}"
        ))
        .bind(before.as_unix_millis())
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        sqlx::query("DELETE FROM deleted_users WHERE deleted_at < ?1")
            .bind(before.as_unix_millis())
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl DenylistStore for SqliteStore {
    async fn is_jti_denied(&self, jti: &str, now: Timestamp) -> Result<bool, StoreError> {
        let denied: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM denied_jtis WHERE jti = ?1 AND ?2 < expires_at")
                .bind(jti)
                .bind(now.as_unix_millis())
                .fetch_optional(&self.reader)
                .await
                .map_err(unavailable)?;
        Ok(denied.is_some())
    }

    async fn denied_jtis(&self, now: Timestamp) -> Result<Vec<(String, Timestamp)>, StoreError> {
        sqlx::query("SELECT jti, expires_at FROM denied_jtis WHERE ?1 < expires_at")
            .bind(now.as_unix_millis())
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?
            .iter()
            .map(|row| Ok((get(row, "jti")?, timestamp(row, "expires_at")?)))
            .collect()
    }

    async fn prune_denylist(&self, now: Timestamp) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM denied_jtis WHERE expires_at <= ?1")
            .bind(now.as_unix_millis())
            .execute(&self.writer)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl RevocationLog for SqliteStore {
    async fn events_after(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, Timestamp, RevocationEvent)>, StoreError> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        sqlx::query(
            "SELECT seq, at, event FROM revocation_events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(unavailable)?
        .iter()
        .map(|row| {
            let seq: i64 = get(row, "seq")?;
            let text: String = get(row, "event")?;
            let event = serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt(format!("revocation event {seq}: {e}")))?;
            let seq =
                u64::try_from(seq).map_err(|_| StoreError::Corrupt(format!("event seq {seq}")))?;
            Ok((seq, timestamp(row, "at")?, event))
        })
        .collect()
    }

    async fn latest_event(&self) -> Result<u64, StoreError> {
        let seq: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM revocation_events")
            .fetch_one(&self.reader)
            .await
            .map_err(unavailable)?;
        Ok(seq.and_then(|s| u64::try_from(s).ok()).unwrap_or(0))
    }

    async fn prune_events(&self, before: Timestamp) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM revocation_events WHERE at < ?1")
            .bind(before.as_unix_millis())
            .execute(&self.writer)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl OutboxStore for SqliteStore {
    async fn due_messages(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        // A reader: an idle outbox costs a worker's poll no write lock.
        sqlx::query(&format!(
            "SELECT {OUTBOX_COLUMNS} FROM webhook_outbox \
             WHERE {OUTBOX_WAITING} AND next_attempt_at <= ?1 \
             ORDER BY next_attempt_at, rowid LIMIT ?2"
        ))
        .bind(now.as_unix_millis())
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
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
        // One statement: the check and the claim cannot interleave with another worker's.
        let done = sqlx::query(&format!(
            "UPDATE webhook_outbox SET next_attempt_at = ?3 \
             WHERE id = ?1 AND {OUTBOX_WAITING} AND next_attempt_at <= ?2"
        ))
        .bind(id.to_string())
        .bind(now.as_unix_millis())
        .bind(until.as_unix_millis())
        .execute(&self.writer)
        .await
        .map_err(unavailable)?;
        Ok(done.rows_affected() > 0)
    }

    async fn mark_delivered(&self, id: OutboxId, at: Timestamp) -> Result<bool, StoreError> {
        let done = sqlx::query(&format!(
            "UPDATE webhook_outbox SET delivered_at = ?2 WHERE id = ?1 AND {OUTBOX_WAITING}"
        ))
        .bind(id.to_string())
        .bind(at.as_unix_millis())
        .execute(&self.writer)
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
            "UPDATE webhook_outbox SET attempts = ?2, next_attempt_at = ?3, last_error = ?4 \
             WHERE id = ?1 AND {OUTBOX_WAITING}"
        ))
        .bind(id.to_string())
        .bind(i64::from(attempts))
        .bind(next_attempt_at.as_unix_millis())
        .bind(error)
        .execute(&self.writer)
        .await
        .map_err(unavailable)?;
        Ok(done.rows_affected() > 0)
    }

    async fn give_up(&self, id: OutboxId, at: Timestamp, error: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(&format!(
            "UPDATE webhook_outbox SET given_up_at = ?2, last_error = ?3 \
             WHERE id = ?1 AND {OUTBOX_WAITING}"
        ))
        .bind(id.to_string())
        .bind(at.as_unix_millis())
        .bind(error)
        .execute(&self.writer)
        .await
        .map_err(unavailable)?;
        Ok(done.rows_affected() > 0)
    }

    async fn prune_outbox(&self, before: Timestamp) -> Result<u64, StoreError> {
        let done =
            sqlx::query("DELETE FROM webhook_outbox WHERE delivered_at < ?1 OR given_up_at < ?1")
                .bind(before.as_unix_millis())
                .execute(&self.writer)
                .await
                .map_err(unavailable)?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn signing_keys(&self) -> Result<Vec<SealedKey>, StoreError> {
        sqlx::query("SELECT * FROM signing_keys ORDER BY created_at, rowid")
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?
            .iter()
            .map(signing_key_from_row)
            .collect()
    }
}

#[async_trait]
impl AdminKeyStore for SqliteStore {
    async fn find_live_admin_key(&self, hash: &SecretHash) -> Result<Option<AdminKey>, StoreError> {
        sqlx::query("SELECT * FROM admin_keys WHERE hash = ?1 AND revoked_at IS NULL")
            .bind(hash.as_bytes().as_slice())
            .fetch_optional(&self.reader)
            .await
            .map_err(unavailable)?
            .as_ref()
            .map(admin_key_from_row)
            .transpose()
    }
}

fn tally_of(row: &SqliteRow) -> Result<Tally, StoreError> {
    let millis = |column: &str| -> Result<i64, StoreError> {
        row.try_get(column)
            .map_err(|e| corrupt("guessing tally", e))
    };
    Ok(Tally {
        count: u32::try_from(millis("count")?).map_err(|e| corrupt("guessing tally", e))?,
        window_ends: Timestamp::from_unix_millis(millis("window_ends")?),
        last: Timestamp::from_unix_millis(millis("last_at")?),
        expires_at: Timestamp::from_unix_millis(millis("expires_at")?),
    })
}

#[async_trait]
impl GuessingCounters for SqliteStore {
    async fn update_tally(
        &self,
        key: &str,
        now: Timestamp,
        change: &(dyn Fn(Option<Tally>) -> Option<Tally> + Send + Sync),
    ) -> Result<Option<Tally>, StoreError> {
        // `BEGIN IMMEDIATE` on the one write connection: no other writer, in this process or
        // another on the same file, runs between the read and the write.
        let mut tx = self.write_tx().await?;
        let before = sqlx::query(
            "SELECT count, window_ends, last_at, expires_at FROM guessing_tallies \
             WHERE key = ?1 AND expires_at > ?2",
        )
        .bind(key)
        .bind(now.as_unix_millis())
        .fetch_optional(&mut *tx)
        .await
        .map_err(unavailable)?
        .map(|row| tally_of(&row))
        .transpose()?;
        match change(before) {
            Some(after) => sqlx::query(
                "INSERT INTO guessing_tallies (key, count, window_ends, last_at, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (key) DO UPDATE SET \
                 count = excluded.count, window_ends = excluded.window_ends, \
                 last_at = excluded.last_at, expires_at = excluded.expires_at",
            )
            .bind(key)
            .bind(i64::from(after.count))
            .bind(after.window_ends.as_unix_millis())
            .bind(after.last.as_unix_millis())
            .bind(after.expires_at.as_unix_millis()),
            None => sqlx::query("DELETE FROM guessing_tallies WHERE key = ?1").bind(key),
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
             WHERE key = ?1 AND expires_at > ?2",
        )
        .bind(key)
        .bind(now.as_unix_millis())
        .fetch_optional(&self.reader)
        .await
        .map_err(unavailable)?
        .map(|row| tally_of(&row))
        .transpose()
    }

    async fn clear_tally(&self, key: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM guessing_tallies WHERE key = ?1")
            .bind(key)
            .execute(&self.writer)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn prune_tallies(&self, now: Timestamp) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM guessing_tallies WHERE expires_at <= ?1")
            .bind(now.as_unix_millis())
            .execute(&self.writer)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn guessing(&self) -> &dyn GuessingCounters {
        self
    }

    async fn begin(&self) -> Result<Box<dyn StoreTx>, StoreError> {
        Ok(Box::new(SqliteTx {
            tx: self.write_tx().await?,
            failed: false,
        }))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "SQLite"
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    /// The durability and concurrency promises of the module documentation hold on every
    /// connection of both pools, not just the first.
    #[tokio::test]
    async fn every_connection_is_durable_and_patient() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("t.db").to_str().unwrap())
            .await
            .unwrap();
        for pool in [&store.writer, &store.reader] {
            let mut conn = pool.acquire().await.unwrap();
            let pragma = |name: &'static str| format!("PRAGMA {name}");
            let mode: String = sqlx::query_scalar(&pragma("journal_mode"))
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            assert_eq!(mode, "wal");
            for (name, expected) in [
                ("synchronous", 2),
                ("foreign_keys", 1),
                ("busy_timeout", 5_000),
            ] {
                let value: i64 = sqlx::query_scalar(&pragma(name))
                    .fetch_one(&mut *conn)
                    .await
                    .unwrap();
                assert_eq!(value, expected, "PRAGMA {name}");
            }
        }
        store.close().await;
    }
}
