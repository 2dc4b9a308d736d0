//! `GET /v1/revocations`: the revocation log as Server-Sent Events, for resource servers that
//! verify access tokens offline and must still refuse a revoked one at once (SPEC §3). The
//! caller holds an API key with the `revocations` scope, so a resource server needs no key
//! that could change anything.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use tessera_core::model::{AdminScope, RevocationEvent, Timestamp};
use tessera_core::service::Tessera;
use tokio::sync::watch;

use crate::admin::scoped_key;
use crate::error::ApiError;
use crate::ops::ApiErrorBody;
use crate::AppState;

/// How often an open stream looks for new log entries when nothing told it to: a revocation
/// committed on this node, or followed from another, wakes the stream at once (see
/// [`Tessera::log_grew`]); the poll only bounds the wait should a wake-up be missed.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// The comment sent once the backlog has been delivered (beyond SPEC §3, which streams
/// comments as heartbeats only): a subscriber that starts from the beginning knows from it
/// that its state is complete and may start answering.
const CAUGHT_UP: &str = "caught-up";
/// Log entries read per store round trip while catching up.
const BATCH: u32 = 500;
/// The heartbeat comment sent while nothing happens, so proxies keep the connection and the
/// subscriber can tell a quiet log from a dead connection.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// Proof that the caller holds a live API key with the `revocations` scope.
pub struct Subscriber;

impl FromRequestParts<AppState> for Subscriber {
    type Rejection = ApiError;

    #[tracing::instrument(level = "debug", skip_all)] // the key must never reach a span
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        scoped_key(parts, state, AdminScope::Revocations).await?;
        Ok(Self)
    }
}

/// `GET /v1/revocations`
#[utoipa::path(
    get,
    path = "/v1/revocations",
    tag = "verify",
    params(
        ("after" = Option<u64>, Query, description = "resume after this event id (default: from the oldest entry kept)"),
        ("Last-Event-ID" = Option<u64>, Header, description = "as `after`, sent by an `EventSource` reconnecting; `after` wins"),
    ),
    security(("admin_key" = ["revocations"])),
    responses(
        (status = 200, content_type = "text/event-stream", description = "Server-Sent Events, oldest first, then live: \
            `id` is the log position, `event` the kind (`session_revoked`, `epoch_bumped`, `jti_denied`, `key_withdrawn`), \
            `data` the JSON entry with its `at` time. A `: caught-up` comment once the backlog has been sent, and a \
            `: heartbeat` comment every 5 s while the log is quiet. \
            Entries older than the longest access-token lifetime are pruned, so a subscriber away for longer must \
            refetch its state rather than resume", body = String),
        (status = 400, description = "`invalid_request`: `after` or `Last-Event-ID` is not a non-negative integer", body = ApiErrorBody),
        (status = 401, description = "`unauthenticated`: no valid API key", body = ApiErrorBody),
        (status = 403, description = "`insufficient_scope`: the API key lacks the `revocations` scope", body = ApiErrorBody),
    )
)]
pub async fn revocations(
    State(state): State<AppState>,
    _subscriber: Subscriber,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let after = resume_position(&uri, &headers)?;
    let stream = events(
        Arc::clone(&state.tessera),
        after,
        state.shutdown.subscribe(),
    );
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat"))
        .into_response();
    // Proxies such as nginx buffer responses by default, which would hold events back.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// Where to start: `?after=N`, else `Last-Event-ID`, else the beginning of the log.
fn resume_position(uri: &Uri, headers: &HeaderMap) -> Result<u64, ApiError> {
    let from_query = uri.query().and_then(|query| {
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(name, _)| *name == "after")
            .map(|(_, value)| value)
    });
    let from_header = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("?"));
    match from_query.or(from_header) {
        None => Ok(0),
        Some(text) => text.trim().parse().map_err(|_| {
            ApiError::BadRequest("`after` / `Last-Event-ID` must be a non-negative integer".into())
        }),
    }
}

struct Follower {
    tessera: Arc<Tessera>,
    cursor: u64,
    pending: VecDeque<(u64, Timestamp, RevocationEvent)>,
    shutdown: watch::Receiver<bool>,
    log_grew: watch::Receiver<()>,
    caught_up: bool,
}

/// The log from `after` on, then live, until the server shuts down or the store fails (the
/// subscriber then reconnects with its `Last-Event-ID`, losing nothing).
fn events(
    tessera: Arc<Tessera>,
    after: u64,
    shutdown: watch::Receiver<bool>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let log_grew = tessera.log_grew();
    let follower = Follower {
        tessera,
        cursor: after,
        pending: VecDeque::new(),
        shutdown,
        log_grew,
        caught_up: false,
    };
    stream::unfold(follower, |mut follower| async move {
        loop {
            if let Some((position, at, event)) = follower.pending.pop_front() {
                follower.cursor = position;
                return Some((Ok(to_sse(position, at, &event)), follower));
            }
            if *follower.shutdown.borrow() {
                return None;
            }
            // Seen before reading, so that growth during the read wakes the wait below.
            follower.log_grew.borrow_and_update();
            match follower
                .tessera
                .revocations_after(follower.cursor, BATCH)
                .await
            {
                Ok(events) if events.is_empty() => {
                    if !follower.caught_up {
                        follower.caught_up = true;
                        return Some((Ok(Event::default().comment(CAUGHT_UP)), follower));
                    }
                    tokio::select! {
                        // Ends the stream at shutdown (or with the server state), so draining
                        // the connections does not wait on subscribers that never hang up.
                        _ = follower.shutdown.changed() => return None,
                        _ = follower.log_grew.changed() => {}
                        () = tokio::time::sleep(POLL_INTERVAL) => {}
                    }
                }
                Ok(events) => follower.pending.extend(events),
                Err(e) => {
                    tracing::warn!(error = %e, "revocation stream ended: the log cannot be read");
                    return None;
                }
            }
        }
    })
}

fn to_sse(position: u64, at: Timestamp, event: &RevocationEvent) -> Event {
    let kind = match event {
        RevocationEvent::SessionRevoked { .. } => "session_revoked",
        RevocationEvent::EpochBumped { .. } => "epoch_bumped",
        RevocationEvent::JtiDenied { .. } => "jti_denied",
        RevocationEvent::KeyWithdrawn { .. } => "key_withdrawn",
    };
    let mut data = serde_json::to_value(event).unwrap_or_default();
    if let Some(object) = data.as_object_mut() {
        object.insert("at".to_owned(), serde_json::json!(at));
    }
    Event::default()
        .id(position.to_string())
        .event(kind)
        .data(data.to_string())
}
