//! Prometheus metrics (SPEC §3): the request metrics filled by [`MetricsLayer`], the exposition
//! of them and of the domain counters, and `GET /metrics`.
//!
//! The metric types, the registry and the text exposition are `prometheus-client`'s. Request
//! metrics are kept in families with one series per `(route, method)` (latency) and per
//! `(route, method, status)` (counts), the routes being those of the OpenAPI document (so a new
//! route is measured as soon as it is documented). They live in [`AppState`], never in a static,
//! so two servers in one process do not mix counts.
//!
//! Recording a request sits on the hot path of `/v1/verify`, so it never goes through a
//! family: a family lookup takes its lock and clones the labels. Each series' handle is looked
//! up once, at start-up for documented methods or on its first request otherwise, and cached in
//! a fixed table indexed by route, method and status; after that a request costs one lookup of
//! its path in a radix tree of the documented route templates (`matchit`, the router axum
//! itself uses) and a few relaxed atomic adds, with no lock and no allocation.
//! For the same reason the latency histogram is a table of atomics encoded through the crate's
//! histogram encoder, since the crate's own `Histogram` takes a mutex per observation.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::{
    prometheus_text, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use tessera_core::metrics::{Counters, RevocationStatus};
use tessera_core::service::RefusalReason;
use tessera_core::store::PoolUse;
use tower::{Layer, Service};
use utoipa::openapi::path::PathItem;
use utoipa::openapi::OpenApi as OpenApiDocument;

use super::no_store;
use crate::AppState;

/// Prometheus text exposition format, version 0.0.4 (what `prometheus_text::encode` writes).
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics`, on `metrics_listen` only (`crate::metrics_router`): it is not part of the
/// API on `listen`, so the OpenAPI document leaves it out.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let text = state.metrics.render(
        state.tessera.counters(),
        state.tessera.revocation_status(),
        state.tessera.store_backend().1,
    );
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(METRICS_CONTENT_TYPE),
        )],
        text,
    )
        .into_response();
    no_store(&mut response);
    response
}

/// Upper bounds of the latency buckets, in seconds. Fine at the low end: a cached-mode
/// `/v1/verify` answers in tens of microseconds, while a login runs argon2 for tens of ms.
const BUCKETS: [f64; 16] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The same bounds in nanoseconds, for an integer comparison on the hot path.
const BUCKET_NANOS: [u64; 16] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Method labels; anything else (`PROPFIND`, say) counts as `other`, keeping the label set
/// bounded whatever clients send.
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other",
];

fn method_slot(method: &Method) -> usize {
    match method.as_str() {
        "GET" => 0,
        "HEAD" => 1,
        "POST" => 2,
        "PUT" => 3,
        "PATCH" => 4,
        "DELETE" => 5,
        "OPTIONS" => 6,
        _ => 7,
    }
}

/// The statuses this API answers with get their own label; any other code is counted under its
/// class (`2xx` ... `5xx`), so the label set stays bounded.
const STATUSES: [&str; 19] = [
    "200", "201", "204", "400", "401", "403", "404", "405", "409", "413", "415", "429", "500",
    "503", "1xx", "2xx", "3xx", "4xx", "5xx",
];

fn status_slot(status: StatusCode) -> usize {
    match status.as_u16() {
        200 => 0,
        201 => 1,
        204 => 2,
        400 => 3,
        401 => 4,
        403 => 5,
        404 => 6,
        405 => 7,
        409 => 8,
        413 => 9,
        415 => 10,
        429 => 11,
        500 => 12,
        503 => 13,
        code => 14 + usize::from((code / 100).clamp(1, 5) - 1),
    }
}

/// The `route` label of requests no route matched (the 404 fallback).
pub const UNMATCHED: &str = "unmatched";

/// Labels of a latency series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: Arc<str>,
    method: &'static str,
}

/// Labels of a request count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    route: Arc<str>,
    method: &'static str,
    status: &'static str,
}

/// One label whose values are all known at compile time.
type OneLabel = [(&'static str, &'static str); 1];

/// A latency histogram over [`BUCKETS`] that records with relaxed atomic adds (the crate's
/// `Histogram` locks a mutex per observation); the crate encodes it like its own.
#[derive(Clone, Debug, Default)]
struct Latency(Arc<LatencyCells>);

#[derive(Debug, Default)]
struct LatencyCells {
    /// Per bucket, not cumulative: the encoder adds them up.
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Latency {
    fn observe(&self, elapsed: Duration) {
        let cells = &*self.0;
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        if let Some(bucket) = BUCKET_NANOS
            .iter()
            .position(|&bound| nanos <= bound)
            .and_then(|i| cells.buckets.get(i))
        {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        cells.count.fetch_add(1, Ordering::Relaxed);
        cells.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

impl TypedMetric for Latency {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Latency {
    fn encode(&self, mut encoder: MetricEncoder) -> std::fmt::Result {
        let cells = &*self.0;
        let mut buckets = [(0.0, 0); BUCKETS.len()];
        let mut observed = 0;
        for ((slot, bound), cell) in buckets.iter_mut().zip(BUCKETS).zip(&cells.buckets) {
            let count = cell.load(Ordering::Relaxed);
            observed += count;
            *slot = (bound, count);
        }
        // Read after the buckets, so `+Inf` is never below the last bucket.
        let count = cells.count.load(Ordering::Relaxed).max(observed);
        #[allow(clippy::cast_precision_loss)] // seconds as a float is the format
        let sum = cells.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram(
            sum,
            count,
            &buckets,
            None::<&HashMap<usize, Exemplar<NoLabelSet, f64>>>,
        )
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// One `(route, method)`: its latency series and its count per status, each a handle into a
/// family, taken from the family on first use and kept here so later requests skip its lock.
struct Series {
    latency: OnceLock<Latency>,
    statuses: [OnceLock<Counter>; STATUSES.len()],
}

impl Series {
    fn new() -> Self {
        Self {
            latency: OnceLock::new(),
            statuses: std::array::from_fn(|_| OnceLock::new()),
        }
    }
}

struct RouteRow {
    route: Arc<str>,
    series: [Series; METHODS.len()],
}

/// Outcome slots of `tessera_verify_total`: `ok` (slot 0), then each [`RefusalReason`] in the
/// order of [`RefusalReason::ALL`]. A fixed set, so the label set is bounded and counting
/// needs no allocation.
const VERIFY_OUTCOMES: usize = RefusalReason::ALL.len() + 1;

fn verify_slot(refused: Option<RefusalReason>) -> usize {
    match refused {
        None => 0,
        Some(reason) => RefusalReason::ALL
            .iter()
            .position(|known| *known == reason)
            .map_or(0, |i| i + 1),
    }
}

fn verify_label(slot: usize) -> &'static str {
    match slot.checked_sub(1) {
        None => "ok",
        Some(i) => RefusalReason::ALL.get(i).map_or("ok", |r| r.as_str()),
    }
}

/// Request metrics for every documented route, filled by [`MetricsLayer`] and rendered by
/// `GET /metrics`.
pub struct HttpMetrics {
    /// Row 0 is [`UNMATCHED`], then one row per documented route (the router mounts exactly
    /// those: `tests/ops.rs` checks it).
    rows: Box<[RouteRow]>,
    /// Request paths to rows, by the documented templates (`/v1/sessions/{id}`).
    index: matchit::Router<usize>,
    requests: Family<StatusLabels, Counter>,
    latency: Family<RouteLabels, Latency>,
    verify_family: Family<OneLabel, Counter>,
    /// The handles of `verify_family`, by outcome slot.
    verify: [Counter; VERIFY_OUTCOMES],
}

const UNMATCHED_ROW: usize = 0;

impl HttpMetrics {
    /// Pre-registers a row for each path of the document (paths use axum's `{param}` syntax,
    /// which is also `matchit`'s). The latency series of the methods the
    /// document lists are created now, at zero, so `rate()` works from the first scrape;
    /// others appear once used.
    pub fn for_document(doc: &OpenApiDocument) -> Self {
        let new_row = |route: &str| RouteRow {
            route: route.into(),
            series: std::array::from_fn(|_| Series::new()),
        };
        let mut rows = vec![new_row(UNMATCHED)];
        let mut index = matchit::Router::new();
        let mut documented = Vec::new();
        for (path, item) in &doc.paths.paths {
            // The router mounted these very paths, so none conflicts; one that did would be
            // counted as unmatched rather than stop the server.
            if index.insert(path.as_str(), rows.len()).is_err() {
                continue;
            }
            documented.push((rows.len(), documented_methods(item)));
            rows.push(new_row(path));
        }
        let verify_family = Family::<OneLabel, Counter>::default();
        let verify = std::array::from_fn(|slot| {
            verify_family.get_or_create_owned(&[("outcome", verify_label(slot))])
        });
        let metrics = Self {
            rows: rows.into_boxed_slice(),
            index,
            requests: Family::default(),
            latency: Family::default(),
            verify_family,
            verify,
        };
        for (row, methods) in documented {
            for (method, listed) in methods.into_iter().enumerate() {
                if listed {
                    metrics.latency_of(row, method);
                }
            }
        }
        metrics
    }

    /// The row of the documented route that `path` matches, as the router matches it.
    fn row_of(&self, path: &str) -> usize {
        self.index
            .at(path)
            .map_or(UNMATCHED_ROW, |found| *found.value)
    }

    /// The cached latency handle of `(row, method)`, taken from the family the first time.
    fn latency_of(&self, row: usize, method: usize) -> Option<&Latency> {
        let route = self.rows.get(row)?;
        let series = route.series.get(method)?;
        let method = *METHODS.get(method)?;
        Some(series.latency.get_or_init(|| {
            self.latency.get_or_create_owned(&RouteLabels {
                route: Arc::clone(&route.route),
                method,
            })
        }))
    }

    /// The cached request counter of `(row, method, status)`, taken from the family the first
    /// time: counts by status are exported once non-zero, as before any request they say
    /// nothing.
    fn requests_of(&self, row: usize, method: usize, status: usize) -> Option<&Counter> {
        let route = self.rows.get(row)?;
        let cell = route.series.get(method)?.statuses.get(status)?;
        let method = *METHODS.get(method)?;
        let status = *STATUSES.get(status)?;
        Some(cell.get_or_init(|| {
            self.requests.get_or_create_owned(&StatusLabels {
                route: Arc::clone(&route.route),
                method,
                status,
            })
        }))
    }

    fn record(&self, row: usize, method: usize, status: StatusCode, elapsed: Duration) {
        if let Some(latency) = self.latency_of(row, method) {
            latency.observe(elapsed);
        }
        if let Some(counter) = self.requests_of(row, method, status_slot(status)) {
            counter.inc();
        }
    }

    /// Counts one answer of `/v1/verify` in `tessera_verify_total`: `None` for a yes, else
    /// why not. The handler calls it directly (it cannot be refused before it runs), which
    /// spares the hot path a response extension.
    pub fn count_verify(&self, refused: Option<RefusalReason>) {
        if let Some(counter) = self.verify.get(verify_slot(refused)) {
            counter.inc();
        }
    }

    /// The whole exposition: request metrics, then the domain counters and revocation state.
    ///
    /// The domain's values are read now into a registry made for this scrape (families are
    /// shared handles, so registering the request metrics in it copies no series).
    pub fn render(
        &self,
        counters: &Counters,
        revocation: RevocationStatus,
        pool: Option<PoolUse>,
    ) -> String {
        // HELP texts are written without their full stop: the registry adds it.
        let mut registry = Registry::default();
        registry.register(
            "tessera_http_requests",
            "HTTP requests by route template, method and status",
            self.requests.clone(),
        );
        registry.register(
            "tessera_http_request_duration_seconds",
            "HTTP request latency by route template and method, until the response head",
            self.latency.clone(),
        );
        registry.register(
            "tessera_verify",
            "Forward-auth answers of GET /v1/verify by outcome",
            self.verify_family.clone(),
        );
        register_domain(&mut registry, counters, revocation);
        register_pool(&mut registry, pool);
        let mut out = String::with_capacity(64 * 1024);
        // Writing to a `String` cannot fail; the `Result` only satisfies `fmt::Write`.
        let _ = prometheus_text::encode(&mut out, &registry);
        out
    }
}

/// A family of counters with one label, set to the given values.
fn counters_by(label: &'static str, values: &[(&'static str, u64)]) -> Family<OneLabel, Counter> {
    let family = Family::<OneLabel, Counter>::default();
    for &(value, count) in values {
        family.get_or_create(&[(label, value)]).inc_by(count);
    }
    family
}

/// A family of gauges with one label, set to the given values.
fn gauges_by(label: &'static str, values: &[(&'static str, i64)]) -> Family<OneLabel, Gauge> {
    let family = Family::<OneLabel, Gauge>::default();
    for &(value, level) in values {
        family.get_or_create(&[(label, value)]).set(level);
    }
    family
}

/// Milliseconds as seconds.
fn seconds(ms: u64) -> ConstGauge<f64> {
    #[allow(clippy::cast_precision_loss)] // exact below 2^53 ms, some 285,000 years
    ConstGauge::new(ms as f64 / 1000.0)
}

/// The counters only the domain sees, and the revocation state of this node.
fn register_domain(registry: &mut Registry, counters: &Counters, revocation: RevocationStatus) {
    registry.register(
        "tessera_logins",
        "Password logins (cookie and password grant) by result",
        counters_by(
            "result",
            &[
                ("ok", Counters::get(&counters.logins_ok)),
                ("failed", Counters::get(&counters.logins_failed)),
            ],
        ),
    );
    registry.register(
        "tessera_throttled_attempts",
        "Login, password-grant and sign-up attempts refused by the guessing limits (429)",
        ConstCounter::new(Counters::get(&counters.throttled)),
    );
    registry.register(
        "tessera_refreshes",
        "Successful refresh token rotations",
        ConstCounter::new(Counters::get(&counters.refreshes)),
    );
    registry.register(
        "tessera_refresh_reuse_detections",
        "Reuses of a rotated refresh token; each revoked its family",
        ConstCounter::new(Counters::get(&counters.reuse_detections)),
    );
    registry.register(
        "tessera_revocation_lag_seconds",
        "Delay between the last applied revocation event's creation and its application on this node",
        seconds(revocation.last_lag_ms),
    );
    registry.register(
        "tessera_revocation_feed_silence_seconds",
        "Time since the revocation feed was last heard (0 when no feed is used)",
        seconds(revocation.feed_silence_ms),
    );
    registry.register(
        "tessera_revocation_fresh",
        "1 when revocation checking can be trusted (always 1 outside cached mode)",
        gauges_by(
            "mode",
            &[(revocation.mode.as_str(), i64::from(revocation.fresh))],
        ),
    );
    let feed = revocation.feed;
    registry.register(
        "tessera_revocation_feed_connected",
        "1 when the feed's push channel is up and its heartbeat heard (always 1 for a polled log)",
        gauges_by("feed", &[(feed.name, i64::from(feed.connected))]),
    );
    registry.register(
        "tessera_revocation_feed_reconnects",
        "Times the feed's push channel was re-established after its first connection",
        counters_by("feed", &[(feed.name, feed.reconnects)]),
    );
    registry.register(
        "tessera_revocation_feed_resyncs",
        "Times this node (re)synchronised from the revocation log, the first time included",
        counters_by("feed", &[(feed.name, feed.resyncs)]),
    );
}

/// The store's connection pool, when it has one (PostgreSQL).
fn register_pool(registry: &mut Registry, pool: Option<PoolUse>) {
    let Some(pool) = pool else {
        return;
    };
    let level = |n: u32| i64::from(n);
    registry.register(
        "tessera_store_pool_connections",
        "Store connections open now, by state",
        gauges_by(
            "state",
            &[
                ("busy", level(pool.open.saturating_sub(pool.idle))),
                ("idle", level(pool.idle)),
            ],
        ),
    );
    registry.register(
        "tessera_store_pool_max_connections",
        "The most connections the store's pool opens (database_pool_size)",
        ConstGauge::new(level(pool.max)),
    );
}

/// The methods a document path lists, as [`METHODS`] slots.
fn documented_methods(item: &PathItem) -> [bool; METHODS.len()] {
    [
        item.get.is_some(),
        item.head.is_some(),
        item.post.is_some(),
        item.put.is_some(),
        item.patch.is_some(),
        item.delete.is_some(),
        item.options.is_some(),
        false,
    ]
}

/// Measures every request, and answers a handler's panic with [`panic_response`]. It wraps the
/// whole router once (see [`crate::app`]), outermost, so it sees the final status; it finds
/// the route template itself, since a layer inside the router would be cloned and boxed once
/// per route per request.
#[derive(Clone)]
pub struct MetricsLayer {
    metrics: Arc<HttpMetrics>,
}

impl MetricsLayer {
    pub fn new(metrics: Arc<HttpMetrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Metered<S> {
        Metered {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

#[derive(Clone)]
pub struct Metered<S> {
    inner: S,
    metrics: Arc<HttpMetrics>,
}

impl<S> Service<Request> for Metered<S>
where
    S: Service<Request, Response = Response>,
    // axum's route futures are `Unpin` (they box the handler), which spares us a boxed or
    // pin-projected wrapper per request.
    S::Future: Unpin,
{
    type Response = Response;
    type Error = S::Error;
    type Future = MeteredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let row = self.metrics.row_of(request.uri().path());
        let method = method_slot(request.method());
        MeteredFuture {
            inner: self.inner.call(request),
            metrics: Arc::clone(&self.metrics),
            row,
            method,
            start: Instant::now(),
        }
    }
}

pub struct MeteredFuture<F> {
    inner: F,
    metrics: Arc<HttpMetrics>,
    row: usize,
    method: usize,
    start: Instant,
}

impl<F, E> Future for MeteredFuture<F>
where
    F: Future<Output = Result<Response, E>> + Unpin,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        // A panic is a bug, but it must still answer in our shape, never leak its message,
        // and be counted as the 500 it is.
        let polled =
            std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(&mut this.inner).poll(cx)))
                .unwrap_or_else(|_| Poll::Ready(Ok(panic_response())));
        let result = ready!(polled);
        if let Ok(response) = &result {
            this.metrics.record(
                this.row,
                this.method,
                response.status(),
                this.start.elapsed(),
            );
        }
        Poll::Ready(result)
    }
}

/// The answer to a handler that panicked.
pub fn panic_response() -> Response {
    tracing::error!("handler panicked");
    let mut response = (
        StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(serde_json::json!({ "error": "internal", "message": "the server could not complete the request" })),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use tessera_core::config::RevocationMode;
    use tessera_core::revocation::FeedStatus;
    use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem, PathsBuilder};
    use utoipa::openapi::OpenApiBuilder;

    use super::*;

    fn status(fresh: bool) -> RevocationStatus {
        RevocationStatus {
            mode: RevocationMode::Cached,
            fresh,
            feed_silence_ms: 7_250,
            last_lag_ms: 12,
            feed: FeedStatus {
                name: "Redis pub/sub",
                connected: true,
                reconnects: 2,
                resyncs: 3,
            },
        }
    }

    fn metrics() -> HttpMetrics {
        let get = || PathItem::new(HttpMethod::Get, OperationBuilder::new().build());
        let doc = OpenApiBuilder::new()
            .paths(
                PathsBuilder::new()
                    .path("/v1/verify", get())
                    .path("/v1/sessions/{id}", get()),
            )
            .build();
        HttpMetrics::for_document(&doc)
    }

    #[test]
    fn buckets_are_cumulative_and_verify_outcomes_follow_the_status() {
        let metrics = metrics();
        let verify = metrics.row_of("/v1/verify");
        let ms = Duration::from_millis;
        metrics.record(verify, 0, StatusCode::OK, Duration::from_micros(50));
        metrics.count_verify(None);
        metrics.record(verify, 0, StatusCode::UNAUTHORIZED, ms(3));
        metrics.count_verify(Some(RefusalReason::Unauthenticated));
        metrics.record(verify, 0, StatusCode::SERVICE_UNAVAILABLE, ms(20_000));
        metrics.count_verify(Some(RefusalReason::Unavailable));
        metrics.record(verify, 2, StatusCode::METHOD_NOT_ALLOWED, ms(1));
        let text = metrics.render(&Counters::default(), status(true), None);
        let bucket = |le: &str| {
            format!("tessera_http_request_duration_seconds_bucket{{route=\"/v1/verify\",method=\"GET\",le=\"{le}\"}} ")
        };
        assert!(text.contains(&format!("{}1\n", bucket("0.0001"))), "{text}");
        assert!(text.contains(&format!("{}1\n", bucket("0.0025"))));
        assert!(text.contains(&format!("{}2\n", bucket("0.005"))));
        assert!(text.contains(&format!("{}2\n", bucket("10"))));
        assert!(text.contains(&format!("{}3\n", bucket("+Inf"))));
        assert!(text.contains(
            "tessera_http_request_duration_seconds_count{route=\"/v1/verify\",method=\"GET\"} 3\n"
        ));
        assert!(text.contains("tessera_verify_total{outcome=\"ok\"} 1\n"));
        assert!(text.contains("tessera_verify_total{outcome=\"unauthenticated\"} 1\n"));
        assert!(text.contains("tessera_verify_total{outcome=\"unavailable\"} 1\n"));
        // The handler's reason, whatever the status.
        metrics.record(verify, 0, StatusCode::UNAUTHORIZED, ms(1));
        metrics.count_verify(Some(RefusalReason::JtiDenied));
        let text = metrics.render(&Counters::default(), status(true), None);
        assert!(text.contains("tessera_verify_total{outcome=\"jti_denied\"} 1\n"));
        assert!(text.contains("tessera_verify_total{outcome=\"unauthenticated\"} 1\n"));
        assert!(text.contains(
            "tessera_http_requests_total{route=\"/v1/verify\",method=\"POST\",status=\"405\"} 1\n"
        ));
        // A documented series is exported at zero before its first request.
        assert!(text.contains(
            "tessera_http_request_duration_seconds_count{route=\"/v1/sessions/{id}\",method=\"GET\"} 0\n"
        ));
        assert!(!text.contains("route=\"unmatched\""));
        assert!(text.contains("tessera_revocation_feed_silence_seconds 7.25\n"));
        assert!(text.contains("tessera_revocation_lag_seconds 0.012\n"));
        assert!(text.contains("tessera_revocation_fresh{mode=\"cached\"} 1\n"));
        assert!(
            text.contains("tessera_revocation_feed_reconnects_total{feed=\"Redis pub/sub\"} 2\n")
        );
        assert!(text.contains("tessera_revocation_feed_resyncs_total{feed=\"Redis pub/sub\"} 3\n"));
        assert!(!text.contains("tessera_store_pool"), "no pool, no series");
        let pool = PoolUse {
            open: 7,
            idle: 3,
            max: 10,
        };
        let text = metrics.render(&Counters::default(), status(true), Some(pool));
        assert!(text.contains("tessera_store_pool_connections{state=\"busy\"} 4\n"));
        assert!(text.contains("tessera_store_pool_connections{state=\"idle\"} 3\n"));
        assert!(text.contains("tessera_store_pool_max_connections 10\n"));
        // Names and HELP texts as they were before the registry wrote them.
        assert!(text.contains(
            "# HELP tessera_refreshes_total Successful refresh token rotations.\n# TYPE tessera_refreshes_total counter\n"
        ));
        assert!(!text.contains(".."), "{text}");
        assert!(
            !text.contains("# EOF"),
            "the 0.0.4 text format has no end marker"
        );
    }

    #[test]
    fn unknown_statuses_and_methods_fall_into_bounded_labels() {
        assert_eq!(STATUSES[status_slot(StatusCode::IM_A_TEAPOT)], "4xx");
        assert_eq!(STATUSES[status_slot(StatusCode::PERMANENT_REDIRECT)], "3xx");
        assert_eq!(STATUSES[status_slot(StatusCode::CREATED)], "201");
        assert_eq!(
            METHODS[method_slot(&Method::from_bytes(b"PROPFIND").unwrap())],
            "other"
        );
        assert_eq!(METHODS[method_slot(&Method::DELETE)], "DELETE");
    }

    #[test]
    fn route_labels_are_escaped() {
        let get = PathItem::new(HttpMethod::Get, OperationBuilder::new().build());
        let doc = OpenApiBuilder::new()
            .paths(PathsBuilder::new().path("/a\"b\\c\nd", get))
            .build();
        let text = HttpMetrics::for_document(&doc).render(&Counters::default(), status(true), None);
        assert!(
            text.contains(
                "tessera_http_request_duration_seconds_count{route=\"/a\\\"b\\\\c\\nd\",method=\"GET\"} 0\n"
            ),
            "{text}"
        );
    }
}
