//! Prometheus metrics (SPEC §3): the request table filled by [`MetricsLayer`], the text
//! exposition of it and of the domain counters, and `GET /metrics`.
//!
//! Request metrics are a fixed table of atomics, one row per documented route (the OpenAPI
//! document is the list, so a new route is measured as soon as it is documented). The table
//! lives in [`AppState`], never in a static, so two servers in one process do not mix counts.
//! Recording a request is a hash lookup of the matched route template and a few relaxed
//! atomic adds: no lock and no allocation, since it sits on the hot path of `/v1/verify`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use tessera_core::metrics::{Counters, RevocationStatus};
use tessera_core::service::RefusalReason;
use tessera_core::store::PoolUse;
use tower::{Layer, Service};
use utoipa::openapi::path::PathItem;
use utoipa::openapi::OpenApi as OpenApiDocument;

use super::no_store;
use crate::AppState;

/// Prometheus text exposition format, version 0.0.4.
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
const BUCKETS: [(f64, &str); 16] = [
    (0.000_1, "0.0001"),
    (0.000_25, "0.00025"),
    (0.000_5, "0.0005"),
    (0.001, "0.001"),
    (0.002_5, "0.0025"),
    (0.005, "0.005"),
    (0.01, "0.01"),
    (0.025, "0.025"),
    (0.05, "0.05"),
    (0.1, "0.1"),
    (0.25, "0.25"),
    (0.5, "0.5"),
    (1.0, "1"),
    (2.5, "2.5"),
    (5.0, "5"),
    (10.0, "10"),
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
/// The `route` label of a matched route missing from the OpenAPI document. The router is built
/// from the document, so this stays at zero unless someone bypasses it; then it shows.
pub const UNDOCUMENTED: &str = "undocumented";

/// The route whose outcomes are counted by reason in `tessera_verify_total`.
const VERIFY_ROUTE: &str = "/v1/verify";

/// One `(route, method)` series: a histogram and counts by status.
struct Series {
    /// Per bucket, not cumulative: the renderer adds them up.
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
    statuses: [AtomicU64; STATUSES.len()],
}

impl Series {
    fn new() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
            statuses: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

struct RouteRow {
    route: Box<str>,
    /// Methods the document lists for this route: their series are exported from the start
    /// (at zero), so `rate()` works from the first scrape. Others appear once used.
    documented: [bool; METHODS.len()],
    series: [Series; METHODS.len()],
}

impl RouteRow {
    fn new(route: &str, documented: [bool; METHODS.len()]) -> Self {
        Self {
            route: route.into(),
            documented,
            series: std::array::from_fn(|_| Series::new()),
        }
    }
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

/// How `/v1/verify` answered, left in the response's extensions by the handler for the
/// metrics layer: `None` for a yes, else why not.
#[derive(Debug, Clone, Copy)]
pub struct VerifyReason(pub Option<RefusalReason>);

/// Request metrics for every documented route, filled by [`MetricsLayer`] and rendered by
/// `GET /metrics`.
pub struct HttpMetrics {
    /// Row 0 is [`UNMATCHED`], row 1 [`UNDOCUMENTED`], then one row per documented route.
    rows: Box<[RouteRow]>,
    index: HashMap<Box<str>, usize>,
    verify_row: Option<usize>,
    verify: [AtomicU64; VERIFY_OUTCOMES],
}

const UNMATCHED_ROW: usize = 0;
const UNDOCUMENTED_ROW: usize = 1;

impl HttpMetrics {
    /// Pre-registers a row for each path of the document (paths use axum's `{param}` syntax,
    /// which is also what [`MatchedPath`] reports).
    pub fn for_document(doc: &OpenApiDocument) -> Self {
        let mut rows = vec![
            RouteRow::new(UNMATCHED, [false; METHODS.len()]),
            RouteRow::new(UNDOCUMENTED, [false; METHODS.len()]),
        ];
        let mut index = HashMap::new();
        for (path, item) in &doc.paths.paths {
            index.insert(path.as_str().into(), rows.len());
            rows.push(RouteRow::new(path, documented_methods(item)));
        }
        let verify_row = index.get(VERIFY_ROUTE).copied();
        Self {
            rows: rows.into_boxed_slice(),
            index,
            verify_row,
            verify: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn row_of(&self, matched: Option<&MatchedPath>) -> usize {
        match matched {
            None => UNMATCHED_ROW,
            Some(path) => self
                .index
                .get(path.as_str())
                .copied()
                .unwrap_or(UNDOCUMENTED_ROW),
        }
    }

    fn record(
        &self,
        row: usize,
        method: usize,
        status: StatusCode,
        elapsed: Duration,
        verdict: Option<VerifyReason>,
    ) {
        let Some(series) = self.rows.get(row).and_then(|r| r.series.get(method)) else {
            return;
        };
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        if let Some(bucket) = BUCKET_NANOS
            .iter()
            .position(|&bound| nanos <= bound)
            .and_then(|i| series.buckets.get(i))
        {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        series.count.fetch_add(1, Ordering::Relaxed);
        series.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        if let Some(counter) = series.statuses.get(status_slot(status)) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        if Some(row) == self.verify_row && method == 0 {
            // The handler's verdict; without one (a rejection before it ran), the status.
            let refused = verdict.map_or_else(
                || match status.as_u16() {
                    200..=299 => None,
                    401 => Some(RefusalReason::Unauthenticated),
                    _ => Some(RefusalReason::Unavailable),
                },
                |VerifyReason(refused)| refused,
            );
            if let Some(counter) = self.verify.get(verify_slot(refused)) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The whole exposition: request metrics, then the domain counters and revocation state.
    pub fn render(
        &self,
        counters: &Counters,
        revocation: RevocationStatus,
        pool: Option<PoolUse>,
    ) -> String {
        let mut out = String::with_capacity(64 * 1024);
        // Writing to a `String` cannot fail; the `Result` only satisfies `fmt::Write`.
        let _ = self.write(&mut out, counters, revocation, pool);
        out
    }

    fn write(
        &self,
        out: &mut String,
        counters: &Counters,
        revocation: RevocationStatus,
        pool: Option<PoolUse>,
    ) -> std::fmt::Result {
        self.write_requests(out)?;
        self.write_latency(out)?;
        header(
            out,
            "tessera_verify_total",
            "counter",
            "Forward-auth answers of GET /v1/verify by outcome.",
        )?;
        for (slot, counter) in self.verify.iter().enumerate() {
            let outcome = verify_label(slot);
            let value = counter.load(Ordering::Relaxed);
            writeln!(out, "tessera_verify_total{{outcome=\"{outcome}\"}} {value}")?;
        }
        write_domain(out, counters, revocation)?;
        write_pool(out, pool)
    }

    fn write_requests(&self, out: &mut String) -> std::fmt::Result {
        header(
            out,
            "tessera_http_requests_total",
            "counter",
            "HTTP requests by route template, method and status.",
        )?;
        for row in &*self.rows {
            let route = LabelValue(&row.route);
            for (method, series) in METHODS.iter().zip(&row.series) {
                for (status, counter) in STATUSES.iter().zip(&series.statuses) {
                    let value = counter.load(Ordering::Relaxed);
                    if value > 0 {
                        writeln!(
                            out,
                            "tessera_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {value}"
                        )?;
                    }
                }
            }
        }
        Ok(())
    }

    fn write_latency(&self, out: &mut String) -> std::fmt::Result {
        header(
            out,
            "tessera_http_request_duration_seconds",
            "histogram",
            "HTTP request latency by route template and method, until the response head.",
        )?;
        for row in &*self.rows {
            let route = LabelValue(&row.route);
            for ((method, series), documented) in
                METHODS.iter().zip(&row.series).zip(row.documented)
            {
                if !documented && series.count.load(Ordering::Relaxed) == 0 {
                    continue;
                }
                let mut cumulative = 0;
                for ((_, le), bucket) in BUCKETS.iter().zip(&series.buckets) {
                    cumulative += bucket.load(Ordering::Relaxed);
                    writeln!(
                        out,
                        "tessera_http_request_duration_seconds_bucket{{route=\"{route}\",method=\"{method}\",le=\"{le}\"}} {cumulative}"
                    )?;
                }
                // Read after the buckets, so `+Inf` is never below the last bucket.
                let count = series.count.load(Ordering::Relaxed).max(cumulative);
                writeln!(
                    out,
                    "tessera_http_request_duration_seconds_bucket{{route=\"{route}\",method=\"{method}\",le=\"+Inf\"}} {count}"
                )?;
                #[allow(clippy::cast_precision_loss)] // seconds as a float is the format
                let sum = series.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
                writeln!(
                    out,
                    "tessera_http_request_duration_seconds_sum{{route=\"{route}\",method=\"{method}\"}} {sum}"
                )?;
                writeln!(
                    out,
                    "tessera_http_request_duration_seconds_count{{route=\"{route}\",method=\"{method}\"}} {count}"
                )?;
            }
        }
        Ok(())
    }
}

/// The counters only the domain sees, and the revocation state of this node.
fn write_domain(
    out: &mut String,
    counters: &Counters,
    revocation: RevocationStatus,
) -> std::fmt::Result {
    header(
        out,
        "tessera_logins_total",
        "counter",
        "Password logins (cookie and password grant) by result.",
    )?;
    let ok = Counters::get(&counters.logins_ok);
    let failed = Counters::get(&counters.logins_failed);
    writeln!(out, "tessera_logins_total{{result=\"ok\"}} {ok}")?;
    writeln!(out, "tessera_logins_total{{result=\"failed\"}} {failed}")?;

    header(
        out,
        "tessera_throttled_attempts_total",
        "counter",
        "Login, password-grant and sign-up attempts refused by the guessing limits (429).",
    )?;
    let throttled = Counters::get(&counters.throttled);
    writeln!(out, "tessera_throttled_attempts_total {throttled}")?;

    header(
        out,
        "tessera_refreshes_total",
        "counter",
        "Successful refresh token rotations.",
    )?;
    let refreshes = Counters::get(&counters.refreshes);
    writeln!(out, "tessera_refreshes_total {refreshes}")?;

    header(
        out,
        "tessera_refresh_reuse_detections_total",
        "counter",
        "Reuses of a rotated refresh token; each revoked its family.",
    )?;
    let reuse = Counters::get(&counters.reuse_detections);
    writeln!(out, "tessera_refresh_reuse_detections_total {reuse}")?;

    header(
        out,
        "tessera_revocation_lag_seconds",
        "gauge",
        "Delay between the last applied revocation event's creation and its application on this node.",
    )?;
    let lag = Millis(revocation.last_lag_ms);
    writeln!(out, "tessera_revocation_lag_seconds {lag}")?;

    header(
        out,
        "tessera_revocation_feed_silence_seconds",
        "gauge",
        "Time since the revocation feed was last heard (0 when no feed is used).",
    )?;
    let silence = Millis(revocation.feed_silence_ms);
    writeln!(out, "tessera_revocation_feed_silence_seconds {silence}")?;

    header(
        out,
        "tessera_revocation_fresh",
        "gauge",
        "1 when revocation checking can be trusted (always 1 outside cached mode).",
    )?;
    let mode = revocation.mode.as_str();
    let fresh = u8::from(revocation.fresh);
    writeln!(out, "tessera_revocation_fresh{{mode=\"{mode}\"}} {fresh}")?;

    let feed = LabelValue(revocation.feed.name);
    header(
        out,
        "tessera_revocation_feed_connected",
        "gauge",
        "1 when the feed's push channel is up and its heartbeat heard (always 1 for a polled log).",
    )?;
    let connected = u8::from(revocation.feed.connected);
    writeln!(
        out,
        "tessera_revocation_feed_connected{{feed=\"{feed}\"}} {connected}"
    )?;
    header(
        out,
        "tessera_revocation_feed_reconnects_total",
        "counter",
        "Times the feed's push channel was re-established after its first connection.",
    )?;
    let reconnects = revocation.feed.reconnects;
    writeln!(
        out,
        "tessera_revocation_feed_reconnects_total{{feed=\"{feed}\"}} {reconnects}"
    )?;
    header(
        out,
        "tessera_revocation_feed_resyncs_total",
        "counter",
        "Times this node (re)synchronised from the revocation log, the first time included.",
    )?;
    let resyncs = revocation.feed.resyncs;
    writeln!(
        out,
        "tessera_revocation_feed_resyncs_total{{feed=\"{feed}\"}} {resyncs}"
    )
}

/// The store's connection pool, when it has one (PostgreSQL).
fn write_pool(out: &mut String, pool: Option<PoolUse>) -> std::fmt::Result {
    let Some(pool) = pool else {
        return Ok(());
    };
    header(
        out,
        "tessera_store_pool_connections",
        "gauge",
        "Store connections open now, by state.",
    )?;
    let busy = pool.open.saturating_sub(pool.idle);
    writeln!(
        out,
        "tessera_store_pool_connections{{state=\"busy\"}} {busy}"
    )?;
    writeln!(
        out,
        "tessera_store_pool_connections{{state=\"idle\"}} {}",
        pool.idle
    )?;
    header(
        out,
        "tessera_store_pool_max_connections",
        "gauge",
        "The most connections the store's pool opens (database_pool_size).",
    )?;
    writeln!(out, "tessera_store_pool_max_connections {}", pool.max)
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) -> std::fmt::Result {
    writeln!(out, "# HELP {name} {help}")?;
    writeln!(out, "# TYPE {name} {kind}")
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

/// Milliseconds written as seconds, exactly (`1234` → `1.234`).
struct Millis(u64);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:03}", self.0 / 1000, self.0 % 1000)
    }
}

/// A label value escaped as the exposition format requires (`\`, `"` and newlines).
struct LabelValue<'a>(&'a str);

impl std::fmt::Display for LabelValue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Measures every request. Added with `Router::layer`, so it runs after routing (the matched
/// route template is known) and wraps the fallbacks too; outermost, so it sees the final
/// status, including a caught panic's 500.
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
        let row = self
            .metrics
            .row_of(request.extensions().get::<MatchedPath>());
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
        let result = ready!(Pin::new(&mut this.inner).poll(cx));
        if let Ok(response) = &result {
            this.metrics.record(
                this.row,
                this.method,
                response.status(),
                this.start.elapsed(),
                response.extensions().get::<VerifyReason>().copied(),
            );
        }
        Poll::Ready(result)
    }
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
        let verify = metrics.index["/v1/verify"];
        let ms = Duration::from_millis;
        metrics.record(verify, 0, StatusCode::OK, Duration::from_micros(50), None);
        metrics.record(verify, 0, StatusCode::UNAUTHORIZED, ms(3), None);
        metrics.record(verify, 0, StatusCode::SERVICE_UNAVAILABLE, ms(20_000), None);
        metrics.record(verify, 2, StatusCode::METHOD_NOT_ALLOWED, ms(1), None);
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
        // A reason left by the handler wins over the status.
        metrics.record(
            verify,
            0,
            StatusCode::UNAUTHORIZED,
            ms(1),
            Some(VerifyReason(Some(RefusalReason::JtiDenied))),
        );
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
        assert!(text.contains("tessera_revocation_feed_silence_seconds 7.250\n"));
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
        assert_eq!(LabelValue("a\"b\\c\nd").to_string(), "a\\\"b\\\\c\\nd");
    }
}
