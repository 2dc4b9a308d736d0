//! Liveness and readiness probes (SPEC §3): `GET /healthz` and `GET /readyz`.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use tessera_core::metrics::RevocationStatus;
use utoipa::ToSchema;

use super::no_store;
use crate::AppState;

/// `GET /healthz`: the process is up and serving. Says nothing about the store, so an
/// orchestrator does not restart a node for a database outage it cannot fix.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "`{\"status\":\"ok\"}`", body = Object))
)]
pub async fn healthz() -> Response {
    Json(serde_json::json!({ "status": "ok" })).into_response()
}

/// How long `/readyz` waits for the store: a load balancer's probe must get an answer even when
/// the database hangs rather than refuses.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize, ToSchema, PartialEq, Eq)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    status: &'static str,
    /// `ok` or `unreachable`; never the cause.
    store: &'static str,
    /// The store's backend: `memory`, `SQLite` or `PostgreSQL`.
    database: &'static str,
    revocation: RevocationView,
}

#[derive(Debug, Serialize, ToSchema, PartialEq, Eq)]
pub struct RevocationView {
    /// `none`, `cached` or `strict` (SPEC §5).
    mode: &'static str,
    /// `false` when the cached mode has not heard the revocation feed within `max_staleness`.
    fresh: bool,
    feed_silence_ms: u64,
    last_lag_ms: u64,
    /// What carries the feed: `store log (polled)`, `PostgreSQL LISTEN/NOTIFY` or
    /// `Redis pub/sub`.
    feed: &'static str,
    /// The push channel is up and its heartbeat heard (always `true` for a polled log).
    feed_connected: bool,
    feed_reconnects: u64,
    /// Times this node (re)synchronised from the revocation log, the first time included.
    feed_resyncs: u64,
}

/// The verdict of `/readyz`: ready only when the store answers and revocation is trustworthy,
/// since a node that cannot see revocations must not be sent traffic (SPEC §7, fail closed).
fn readiness(
    store_ok: bool,
    database: &'static str,
    revocation: RevocationStatus,
) -> (StatusCode, Readiness) {
    let ready = store_ok && revocation.fresh;
    let body = Readiness {
        status: if ready { "ready" } else { "unavailable" },
        store: if store_ok { "ok" } else { "unreachable" },
        database,
        revocation: RevocationView {
            mode: revocation.mode.as_str(),
            fresh: revocation.fresh,
            feed_silence_ms: revocation.feed_silence_ms,
            last_lag_ms: revocation.last_lag_ms,
            feed: revocation.feed.name,
            feed_connected: revocation.feed.connected,
            feed_reconnects: revocation.feed.reconnects,
            feed_resyncs: revocation.feed.resyncs,
        },
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}

/// `GET /readyz`: 200 when the store is reachable and the revocation feed is fresh, else 503
/// with the same shape, so an operator sees which half failed.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "ready for traffic", body = Readiness),
        (status = 503, description = "store unreachable or revocation feed stale", body = Readiness),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let store_ok = match tokio::time::timeout(PING_TIMEOUT, state.tessera.ping_store()).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: store unreachable");
            false
        }
        Err(_) => {
            tracing::warn!(timeout = ?PING_TIMEOUT, "readiness: store did not answer in time");
            false
        }
    };
    let (database, _) = state.tessera.store_backend();
    let (status, body) = readiness(store_ok, database, state.tessera.revocation_status());
    let mut response = (status, Json(body)).into_response();
    no_store(&mut response);
    response
}
