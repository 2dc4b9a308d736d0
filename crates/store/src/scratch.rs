//! A PostgreSQL database made for one run and dropped after it: `tessera bench` measures a
//! PostgreSQL server without touching the data of any database already on it.

use std::str::FromStr as _;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::Connection as _;
use tessera_core::model::UserId;
use tessera_core::url::redact_url;
use tessera_core::StoreError;

/// An unreachable server is reported quickly rather than after the driver's long default.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `prefix` and 32 hex digits, created on the server of the URL it was made from. Nothing
/// drops it implicitly: [`remove`](Self::remove) must be awaited, and a run killed before it
/// leaves the database behind under a name that says where it came from.
#[derive(Debug)]
pub struct ScratchDatabase {
    name: String,
    url: String,
    server: PgConnectOptions,
}

impl ScratchDatabase {
    /// Creates `<prefix><random>` on the server `server_url` names (its own database is only
    /// connected to, never written).
    pub async fn create(server_url: &str, prefix: &str) -> Result<Self, StoreError> {
        let server = PgConnectOptions::from_str(server_url)
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", redact_url(server_url))))?;
        let name = format!("{prefix}{}", UserId::new().as_uuid().simple());
        let mut conn = connect(&server, server_url).await?;
        // CREATE DATABASE refuses to run in a transaction: `raw_sql` sends a simple query.
        sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot create database {name}: {e}")))?;
        let _ = conn.close().await;
        Ok(Self {
            url: crate::testing::postgres::with_database(server_url, &name),
            name,
            server,
        })
    }

    /// The database's URL: the server and credentials given, this database's name.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Drops the database, ending any session still connected to it (`WITH (FORCE)`).
    pub async fn remove(self) -> Result<(), StoreError> {
        let mut conn = connect(&self.server, &self.url).await?;
        sqlx::raw_sql(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        ))
        .execute(&mut conn)
        .await
        .map_err(|e| StoreError::Unavailable(format!("cannot drop database {}: {e}", self.name)))?;
        let _ = conn.close().await;
        Ok(())
    }
}

async fn connect(options: &PgConnectOptions, url: &str) -> Result<PgConnection, StoreError> {
    let unavailable =
        |why: String| StoreError::Unavailable(format!("PostgreSQL at {}: {why}", redact_url(url)));
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(options)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(unavailable(e.to_string())),
        Err(_) => Err(unavailable(format!(
            "no answer within {} s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}
