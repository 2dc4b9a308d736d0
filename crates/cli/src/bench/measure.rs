//! Timing checks through the service: the cost of one check and the throughput of every core,
//! the size of each credential on the wire, and the lag between a revocation and its first
//! refusal.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_core::config::RevocationMode;
use tessera_core::keys::Algorithm;
use tessera_core::model::User;
use tessera_core::secret::{Password, RefreshToken, SessionSecret};
use tessera_core::service::{DeviceInfo, Tessera};

use super::{stop, BenchResult, Nodes, Plan, Target, MODES};

/// The bench's user: two roles, as typical claims carry.
const EMAIL: &str = "bench@example.com";
const PASSWORD: &str = "violet anchors drift at noon";
const ROLES: [&str; 2] = ["reader", "writer"];

/// How long a revocation may take to be refused before the round counts as a failure.
const LAG_LIMIT: Duration = Duration::from_secs(10);

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// What one credential's check costs.
#[derive(Debug, Clone, Copy)]
pub struct Cost {
    pub median: Duration,
    pub p99: Duration,
    pub samples: usize,
    /// Checks per second with one task per core checking for the plan's window.
    pub throughput: f64,
}

#[derive(Debug, Clone)]
pub struct CostRow {
    pub store: String,
    /// `cookie` or `bearer`.
    pub credential: &'static str,
    /// `None` for a cookie, which is not signed.
    pub alg: Option<Algorithm>,
    pub mode: RevocationMode,
    pub cost: Cost,
}

impl CostRow {
    /// The row's name in the chart: what was checked, then where.
    pub fn label(&self) -> String {
        format!(
            "{} {} {} ({})",
            self.credential,
            self.alg.map_or("-", Algorithm::as_str),
            self.mode.as_str(),
            self.store
        )
    }
}

struct BytesRow {
    credential: &'static str,
    alg: Option<Algorithm>,
    /// The credential itself.
    value: usize,
    /// The whole header line an HTTP/1.1 request carries, `\r\n` included.
    header: usize,
}

struct LagRow {
    store: String,
    credential: &'static str,
    operation: &'static str,
    lags: Vec<Duration>,
}

#[derive(Default)]
pub struct Report {
    pub costs: Vec<CostRow>,
    bytes: Vec<BytesRow>,
    lags: Vec<LagRow>,
}

/// Every measurement on one store: cookie rows per mode, bearer rows per algorithm and mode,
/// then the revocation lag of each credential in `cached` mode (the default).
pub async fn target(
    nodes: &Nodes,
    target: &Target,
    plan: &Plan,
    report: &mut Report,
) -> BenchResult {
    let first = nodes
        .start(target, Algorithm::EdDSA, RevocationMode::Cached)
        .await?;
    let outcome = on_target(nodes, target, plan, report, &first).await;
    stop(&first).await;
    outcome
}

async fn on_target(
    nodes: &Nodes,
    target: &Target,
    plan: &Plan,
    report: &mut Report,
    first: &Arc<Tessera>,
) -> BenchResult {
    let failed = |what: &str, e: &dyn std::fmt::Display| format!("{}: {what}: {e}", target.label);
    let user = first
        .add_user(
            EMAIL,
            Password::new(PASSWORD.to_owned()),
            ROLES.map(str::to_owned).to_vec(),
        )
        .await
        .map_err(|e| failed("sign-up", &e))?;
    let mut refresh = first
        .password_grant(
            EMAIL,
            Password::new(PASSWORD.to_owned()),
            DeviceInfo::default(),
        )
        .await
        .map_err(|e| failed("password grant", &e))?
        .refresh_token;
    let cookie = Arc::new(
        first
            .start_cookie_session(&user, DeviceInfo::default(), None)
            .await
            .map_err(|e| failed("session", &e))?
            .secret,
    );
    let with_bytes = report.bytes.is_empty();
    if with_bytes {
        let header = format!(
            "Cookie: {}={}\r\n",
            first.config().cookie_name,
            cookie.expose_secret()
        );
        report.bytes.push(BytesRow {
            credential: "cookie",
            alg: None,
            value: cookie.expose_secret().len(),
            header: header.len(),
        });
    }
    cookie_rows(nodes, target, plan, report, &cookie).await?;
    bearer_rows(nodes, target, plan, report, &mut refresh, with_bytes).await?;
    let node = nodes
        .start(target, Algorithm::EdDSA, RevocationMode::Cached)
        .await?;
    let lags = lag_rows(&node, &user, &mut refresh, plan).await;
    stop(&node).await;
    let (cookie_lags, bearer_lags) = lags.map_err(|e| failed("revocation lag", &e))?;
    report.lags.push(LagRow {
        store: target.label.clone(),
        credential: "cookie",
        operation: "logout",
        lags: cookie_lags,
    });
    report.lags.push(LagRow {
        store: target.label.clone(),
        credential: "bearer",
        operation: "revoke_token",
        lags: bearer_lags,
    });
    Ok(())
}

/// One row per revocation mode for the session cookie.
async fn cookie_rows(
    nodes: &Nodes,
    target: &Target,
    plan: &Plan,
    report: &mut Report,
    cookie: &Arc<SessionSecret>,
) -> BenchResult {
    for mode in MODES {
        let node = nodes.start(target, Algorithm::EdDSA, mode).await?;
        let secret = Arc::clone(cookie);
        let checked = Arc::clone(&node);
        let cost = cost(plan, move || {
            let (node, secret) = (Arc::clone(&checked), Arc::clone(&secret));
            async move { node.check_cookie(&secret).await.is_ok() }
        })
        .await;
        stop(&node).await;
        report.costs.push(CostRow {
            store: target.label.clone(),
            credential: "cookie",
            alg: None,
            mode,
            cost: cost.map_err(|e| format!("{}: cookie: {e}", target.label))?,
        });
    }
    Ok(())
}

/// One row per algorithm and revocation mode for an access token, each token got by
/// refreshing `refresh` on the algorithm's first node; with `with_bytes`, each token's size.
async fn bearer_rows(
    nodes: &Nodes,
    target: &Target,
    plan: &Plan,
    report: &mut Report,
    refresh: &mut RefreshToken,
    with_bytes: bool,
) -> BenchResult {
    let failed = |what: &str, e: &dyn std::fmt::Display| format!("{}: {what}: {e}", target.label);
    for alg in Algorithm::ALL {
        let mut token: Option<Arc<str>> = None;
        for mode in MODES {
            let node = nodes.start_without_token_cache(target, alg, mode).await?;
            // The first node of an algorithm has just made its key: a refresh there gets an
            // access token it signs, which every later node of this algorithm verifies.
            let access = if let Some(token) = &token {
                Arc::clone(token)
            } else {
                let pair = node
                    .refresh(refresh)
                    .await
                    .map_err(|e| failed("refresh", &e))?;
                *refresh = pair.refresh_token;
                let access: Arc<str> = Arc::from(pair.access_token);
                token = Some(Arc::clone(&access));
                access
            };
            let checked = Arc::clone(&node);
            let cost = cost(plan, move || {
                let (node, token) = (Arc::clone(&checked), Arc::clone(&access));
                async move { node.check_bearer(&token).await.is_ok() }
            })
            .await;
            stop(&node).await;
            report.costs.push(CostRow {
                store: target.label.clone(),
                credential: "bearer",
                alg: Some(alg),
                mode,
                cost: cost.map_err(|e| failed(alg.as_str(), &e))?,
            });
        }
        if let (true, Some(token)) = (with_bytes, &token) {
            report.bytes.push(BytesRow {
                credential: "bearer",
                alg: Some(alg),
                value: token.len(),
                header: format!("Authorization: Bearer {token}\r\n").len(),
            });
        }
        if let (Algorithm::EdDSA, Some(token)) = (alg, token) {
            token_cache_rows(nodes, target, plan, report, &token).await?;
        }
    }
    Ok(())
}

/// One row per revocation mode for a token the node has verified before and holds in its
/// verified-token cache (`token_cache_size`): no signature check, revocation still checked.
async fn token_cache_rows(
    nodes: &Nodes,
    target: &Target,
    plan: &Plan,
    report: &mut Report,
    token: &Arc<str>,
) -> BenchResult {
    for mode in MODES {
        let node = nodes.start(target, Algorithm::EdDSA, mode).await?;
        let checked = Arc::clone(&node);
        let presented = Arc::clone(token);
        let cost = cost(plan, move || {
            let (node, token) = (Arc::clone(&checked), Arc::clone(&presented));
            async move { node.check_bearer(&token).await.is_ok() }
        })
        .await;
        stop(&node).await;
        report.costs.push(CostRow {
            store: target.label.clone(),
            credential: "bearer-tc",
            alg: Some(Algorithm::EdDSA),
            mode,
            cost: cost.map_err(|e| format!("{}: bearer-tc: {e}", target.label))?,
        });
    }
    Ok(())
}

/// Times `check` one call after another for the median and p99, then runs it from one task
/// per core for the plan's window for the throughput. Every check must succeed: a refused
/// credential would time a refusal, not a verification.
async fn cost<F, Fut>(plan: &Plan, check: F) -> BenchResult<Cost>
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    // Warms the caches a real node has warm (the session read once, the key ring loaded).
    if !check().await {
        return Err("the credential was refused".to_owned());
    }
    let mut times = Vec::with_capacity(plan.samples);
    for _ in 0..plan.samples {
        let started = Instant::now();
        let accepted = check().await;
        times.push(started.elapsed());
        if !accepted {
            return Err("the credential was refused during the run".to_owned());
        }
    }
    times.sort_unstable();
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + plan.window;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..cores() {
        let check = check.clone();
        tasks.spawn(async move {
            let mut done = 0u64;
            while tokio::time::Instant::now() < deadline {
                if !check().await {
                    return Err(());
                }
                done += 1;
            }
            Ok(done)
        });
    }
    let mut total = 0u64;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(done)) => total += done,
            _ => return Err("a check failed while measuring throughput".to_owned()),
        }
    }
    Ok(Cost {
        median: percentile(&times, 50),
        p99: percentile(&times, 99),
        samples: times.len(),
        throughput: count_f64(total) / started.elapsed().as_secs_f64(),
    })
}

/// The `pct`th percentile of sorted `times` (nearest rank).
pub fn percentile(times: &[Duration], pct: usize) -> Duration {
    if times.is_empty() {
        return Duration::ZERO;
    }
    let rank = (times.len() * pct).div_ceil(100).clamp(1, times.len());
    times.get(rank - 1).copied().unwrap_or_default()
}

#[allow(clippy::cast_precision_loss)] // counts far below 2^52
fn count_f64(n: u64) -> f64 {
    n as f64
}

/// Revocation lag of a cookie (`logout`) and of an access token (`revoke_token`), each over
/// the plan's rounds.
async fn lag_rows(
    node: &Arc<Tessera>,
    user: &User,
    refresh: &mut RefreshToken,
    plan: &Plan,
) -> BenchResult<(Vec<Duration>, Vec<Duration>)> {
    let mut cookies = Vec::with_capacity(plan.lag_rounds);
    for _ in 0..plan.lag_rounds {
        let opened = node
            .start_cookie_session(user, DeviceInfo::default(), None)
            .await
            .map_err(|e| e.to_string())?;
        let secret: Arc<SessionSecret> = Arc::new(opened.secret);
        let principal = node
            .check_cookie(&secret)
            .await
            .map_err(|r| r.error.to_string())?;
        let (checked, presented) = (Arc::clone(node), Arc::clone(&secret));
        let revoking = Arc::clone(node);
        cookies.push(
            lag(
                move || {
                    let (node, secret) = (Arc::clone(&checked), Arc::clone(&presented));
                    async move { node.check_cookie(&secret).await.is_ok() }
                },
                async move { revoking.logout(&principal).await.map_err(|e| e.to_string()) },
            )
            .await?,
        );
    }
    let mut tokens = Vec::with_capacity(plan.lag_rounds);
    for _ in 0..plan.lag_rounds {
        let pair = node.refresh(refresh).await.map_err(|e| e.to_string())?;
        *refresh = pair.refresh_token;
        let token: Arc<str> = Arc::from(pair.access_token);
        let (checked, presented) = (Arc::clone(node), Arc::clone(&token));
        let revoking = Arc::clone(node);
        tokens.push(
            lag(
                move || {
                    let (node, token) = (Arc::clone(&checked), Arc::clone(&presented));
                    async move { node.check_bearer(&token).await.is_ok() }
                },
                async move {
                    revoking
                        .revoke_token(&token)
                        .await
                        .map_err(|e| e.to_string())
                },
            )
            .await?,
        );
    }
    Ok((cookies, tokens))
}

/// From the revoking call's return to the first refusal seen by a verifier polling all the
/// while on another task; zero when the refusal came before the call returned (this node
/// applies its own revocations before answering).
async fn lag<F, Fut, R>(check: F, revoke: R) -> BenchResult<Duration>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = bool> + Send,
    R: Future<Output = BenchResult>,
{
    if !check().await {
        return Err("the credential was refused before its revocation".to_owned());
    }
    let poller = tokio::spawn(async move {
        loop {
            if !check().await {
                return Instant::now();
            }
            tokio::task::yield_now().await;
        }
    });
    // Lets the poller reach its loop before the revocation starts.
    tokio::time::sleep(Duration::from_millis(1)).await;
    revoke.await?;
    let returned = Instant::now();
    match tokio::time::timeout(LAG_LIMIT, poller).await {
        Ok(Ok(refused)) => Ok(refused.saturating_duration_since(returned)),
        Ok(Err(e)) => Err(format!("the polling verifier failed: {e}")),
        Err(_) => Err(format!(
            "still accepted {} s after its revocation",
            LAG_LIMIT.as_secs()
        )),
    }
}

/// A duration in microseconds, to one decimal.
pub fn micros(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

impl Report {
    pub fn print_costs(&self) {
        println!(
            "\nverification cost per check (median and p99 in µs; throughput over {} cores)",
            cores()
        );
        println!(
            "bearer: the token's signature checked on every request (token_cache_size = 0); \
             bearer-tc: a token held in the verified-token cache, as the configuration sets it"
        );
        println!(
            "{:<16} {:<10} {:<6} {:<7} {:>10} {:>10} {:>8} {:>12}",
            "store", "credential", "alg", "mode", "median_us", "p99_us", "samples", "checks/s"
        );
        for row in &self.costs {
            println!(
                "{:<16} {:<10} {:<6} {:<7} {:>10} {:>10} {:>8} {:>12.0}",
                row.store,
                row.credential,
                row.alg.map_or("-", Algorithm::as_str),
                row.mode.as_str(),
                micros(row.cost.median),
                micros(row.cost.p99),
                row.cost.samples,
                row.cost.throughput
            );
        }
    }

    pub fn print_bytes(&self) {
        println!("\nbytes on the wire (a user with two roles; header line with its CRLF)");
        println!(
            "{:<10} {:<6} {:>6} {:>7}",
            "credential", "alg", "value", "header"
        );
        for row in &self.bytes {
            println!(
                "{:<10} {:<6} {:>6} {:>7}",
                row.credential,
                row.alg.map_or("-", Algorithm::as_str),
                row.value,
                row.header
            );
        }
    }

    pub fn print_lags(&self, plan: &Plan) {
        println!(
            "\nrevocation lag on one node (cached mode): from the revoking call's return to the \
             first refusal by a verifier polling on another task, {} revocations each",
            plan.lag_rounds
        );
        println!(
            "{:<16} {:<10} {:<13} {:>10} {:>10} {:>7}",
            "store", "credential", "operation", "median_us", "p99_us", "rounds"
        );
        for row in &self.lags {
            let mut lags = row.lags.clone();
            lags.sort_unstable();
            println!(
                "{:<16} {:<10} {:<13} {:>10} {:>10} {:>7}",
                row.store,
                row.credential,
                row.operation,
                micros(percentile(&lags, 50)),
                micros(percentile(&lags, 99)),
                lags.len()
            );
        }
    }
}
