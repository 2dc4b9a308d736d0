//! Operations (SPEC §3), one module each: [`health`] (liveness and readiness), [`metrics`]
//! (Prometheus) and [`openapi`] (the OpenAPI document).
//!
//! Handlers are mounted by their full path (`routes!(ops::health::healthz)`), since `routes!`
//! also needs the `__path_*` item `#[utoipa::path]` writes beside each handler. The types the
//! rest of the server builds its state and router from are re-exported here.

use axum::http::{header, HeaderValue};
use axum::response::Response;

pub mod health;
pub mod metrics;
pub mod openapi;

pub use metrics::{HttpMetrics, MetricsLayer};
pub use openapi::{finish_document, render_document, ApiDoc, ApiErrorBody, OAuthErrorBody};

/// Probes and scrapes must see the state of now, never a cached copy.
fn no_store(response: &mut Response) {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}
