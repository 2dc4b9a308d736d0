//! `tessera bench` (SPEC §6): the numbers the sessions-versus-JWT debate argues about,
//! measured on the user's own machine through the service itself — what one check of a
//! cookie or of an access token costs on each store, algorithm and revocation mode, how many
//! bytes each credential adds to a request, how long a revocation takes to bite, and the
//! memory a node needs for its revocation state.
//!
//! It never writes to the configured database: every store it measures is made for the run
//! (an in-memory store, a SQLite file in a temporary directory, a fresh PostgreSQL database
//! dropped afterwards, keys under a random Redis prefix) and keyed by a fresh master key.

mod chart;
mod measure;
mod probes;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tessera_core::config::{Config, RevocationMode};
use tessera_core::keys::{Algorithm, MasterKey};
use tessera_core::secret::SessionSecret;
use tessera_core::service::{KeyPolicy, Tessera};
use tessera_core::url::redact_url;
use tessera_core::Store;

/// Failures end the command with one line, as every command's do.
pub type BenchResult<T = ()> = Result<T, String>;

/// The revocation modes of SPEC §5, in the order the table lists them.
const MODES: [RevocationMode; 3] = [
    RevocationMode::None,
    RevocationMode::Cached,
    RevocationMode::Strict,
];

/// How long a node gets to stop its background work between measurements.
const STOP_BOUND: Duration = Duration::from_secs(2);

/// The bench's own options; the configuration flags of `serve` apply too.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// A short run (fewer samples, a 1 000-entry memory probe): a smoke test, not a figure
    /// to quote
    #[arg(long)]
    pub quick: bool,
    /// Directory the SVG chart is written to
    #[arg(long, value_name = "DIR", default_value = "tessera-bench")]
    pub out: PathBuf,
    /// Measure this PostgreSQL server too (also when the configured `database` is PostgreSQL):
    /// a fresh database `tessera_bench_<random>` is created on it and dropped afterwards
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// One memory probe, run in this process; the bench starts one child per probe
    #[arg(long, hide = true, value_name = "NAME")]
    pub probe: Option<String>,
    /// Entries of each kind the state probe seeds
    #[arg(long, hide = true, value_name = "N")]
    pub probe_count: Option<usize>,
}

/// How much each measurement takes: `--quick` finishes in seconds, the full run gives
/// figures stable enough to compare.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub quick: bool,
    /// Timed checks per row, one after the other, for the median and p99.
    pub samples: usize,
    /// How long every core checks as fast as it can, for the throughput.
    pub window: Duration,
    /// Revocations timed per lag row.
    pub lag_rounds: usize,
    /// Cookie sessions, denylisted `jti`s and user epochs each that the state probe holds.
    pub state_count: usize,
}

impl Plan {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                samples: 100,
                window: Duration::from_millis(50),
                lag_rounds: 10,
                state_count: 1_000,
            }
        } else {
            Self {
                quick,
                samples: 5_000,
                window: Duration::from_secs(1),
                lag_rounds: 200,
                state_count: 100_000,
            }
        }
    }
}

/// One store the bench measures, open for the whole run and shared by every node started on
/// it (so an in-memory store is one store, not one per node).
pub struct Target {
    pub label: String,
    pub database: String,
    pub store: Arc<dyn Store>,
    /// Redis URL and the run's own key prefix.
    pub redis: Option<(String, String)>,
}

/// What must outlive a run's stores and be cleaned up after it.
enum Scratch {
    Dir(tempfile::TempDir),
    Postgres(Box<tessera_store::scratch::ScratchDatabase>),
}

/// Starts nodes on the run's stores: the user's configuration with the store, algorithm and
/// mode under test, no webhooks (messages nobody reads would only grow the store), and the
/// run's own master key.
pub struct Nodes {
    base: Config,
    master: SessionSecret,
}

impl Nodes {
    pub fn new(mut base: Config) -> Self {
        base.webhooks.clear();
        Self {
            base,
            master: SessionSecret::generate(),
        }
    }

    /// A node with the configured verified-token cache.
    pub async fn start(
        &self,
        target: &Target,
        alg: Algorithm,
        mode: RevocationMode,
    ) -> BenchResult<Arc<Tessera>> {
        self.start_with(target, alg, mode, true).await
    }

    /// A node that checks every access token's signature on every request: what a token
    /// costs the first time a node sees it, and what the JWT debate is about.
    pub async fn start_without_token_cache(
        &self,
        target: &Target,
        alg: Algorithm,
        mode: RevocationMode,
    ) -> BenchResult<Arc<Tessera>> {
        self.start_with(target, alg, mode, false).await
    }

    async fn start_with(
        &self,
        target: &Target,
        alg: Algorithm,
        mode: RevocationMode,
        token_cache: bool,
    ) -> BenchResult<Arc<Tessera>> {
        let mut config = self.base.clone();
        if !token_cache {
            config.token_cache.size = 0;
        }
        config.database.clone_from(&target.database);
        config.signing_alg = alg;
        config.revocation_mode = mode;
        config.redis = target.redis.as_ref().map(|(url, _)| url.clone());
        if let Some((_, prefix)) = &target.redis {
            config.redis_prefix.clone_from(prefix);
        }
        let master =
            MasterKey::from_base64(self.master.expose_secret()).map_err(|e| e.to_string())?;
        let redis = target
            .redis
            .as_ref()
            .map(|(url, prefix)| (url.as_str(), prefix.as_str()));
        let feed = tessera_store::revocation_feed(
            Arc::clone(&target.store),
            &target.database,
            redis,
            config.max_staleness,
        )
        .map_err(|e| format!("{}: {e}", target.label))?;
        let counters = match &target.redis {
            Some((url, prefix)) => Some(
                tessera_store::RedisCounters::new(url, prefix)
                    .map_err(|e| format!("{}: {e}", target.label))?,
            ),
            None => None,
        };
        let mut tessera = Tessera::start_with_feed(
            Arc::new(config),
            Arc::clone(&target.store),
            master,
            KeyPolicy::Serve,
            feed,
        )
        .await
        .map_err(|e| format!("{}: cannot start a node: {e}", target.label))?;
        if let Some(counters) = counters {
            tessera = tessera.with_guessing_counters(Arc::new(counters));
        }
        Ok(Arc::new(tessera))
    }
}

/// Stops a node's background work, so the next measurement has the cores to itself.
pub async fn stop(node: &Tessera) {
    node.background().shutdown(STOP_BOUND).await;
}

/// `tessera bench`: measures, prints the tables, writes the chart; or, with `--probe`, one
/// memory probe (the child side).
pub async fn run(config: Config, args: BenchArgs, config_path: Option<PathBuf>) -> BenchResult {
    let plan = Plan::new(args.quick);
    if let Some(probe) = &args.probe {
        let count = args.probe_count.unwrap_or(plan.state_count);
        return probes::probe(probe, count, config).await;
    }
    let postgres = args
        .database_url
        .clone()
        .or_else(|| tessera_store::is_postgres(&config.database).then(|| config.database.clone()));
    if let Some(url) = &postgres {
        if !tessera_store::is_postgres(url) {
            return Err(format!(
                "--database-url: expected postgres://… or postgresql://…, got {}",
                redact_url(url)
            ));
        }
    }
    println!(
        "tessera bench{}: {} cores; every store below is made for this run and removed after it",
        if plan.quick { " --quick" } else { "" },
        measure::cores()
    );
    let mut scratch = Vec::new();
    let outcome = measure_all(
        &config,
        &plan,
        postgres.as_deref(),
        &mut scratch,
        &args,
        config_path.as_deref(),
    )
    .await;
    for leftover in scratch {
        match leftover {
            Scratch::Postgres(db) => {
                let name = db.name().to_owned();
                if let Err(e) = db.remove().await {
                    eprintln!("warning: could not drop database {name}: {e}");
                }
            }
            Scratch::Dir(dir) => {
                let path = dir.path().display().to_string();
                if let Err(e) = dir.close() {
                    eprintln!("warning: could not remove {path}: {e}");
                }
            }
        }
    }
    outcome
}

async fn measure_all(
    config: &Config,
    plan: &Plan,
    postgres: Option<&str>,
    scratch: &mut Vec<Scratch>,
    args: &BenchArgs,
    config_path: Option<&Path>,
) -> BenchResult {
    let targets = targets(config, postgres, scratch).await?;
    let nodes = Nodes::new(config.clone());
    let mut report = measure::Report::default();
    for target in &targets {
        eprintln!("measuring {} …", target.label);
        measure::target(&nodes, target, plan, &mut report).await?;
    }
    report.print_costs();
    report.print_bytes();
    report.print_lags(plan);
    let memory = probes::run_all(plan, config_path).await?;
    probes::print(&memory, plan);
    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    let path = args.out.join("verification.svg");
    chart::draw(&report.costs, &path)?;
    println!("\nchart: {}", path.display());
    Ok(())
}

/// The stores of this run: memory and a SQLite file always; PostgreSQL on a fresh database
/// when asked; and the same again behind the Redis feed and counters when `redis` is set.
async fn targets(
    config: &Config,
    postgres: Option<&str>,
    scratch: &mut Vec<Scratch>,
) -> BenchResult<Vec<Target>> {
    let mut targets = vec![open_target("memory", "memory".to_owned(), None).await?];
    let dir = tempfile::Builder::new()
        .prefix("tessera-bench")
        .tempdir()
        .map_err(|e| format!("cannot make a temporary directory: {e}"))?;
    let sqlite = |name: &str| format!("sqlite://{}", dir.path().join(name).display());
    targets.push(open_target("sqlite", sqlite("bench.db"), None).await?);
    if let Some(url) = postgres {
        let database = scratch_database(url, scratch).await?;
        targets.push(open_target("postgres", database, None).await?);
    }
    // Behind Redis, the durable store is a fresh one of its own: the same user and keys are
    // set up again from nothing.
    if let Some(redis) = &config.redis {
        let prefix = format!(
            "tessera_bench_{}:",
            tessera_core::model::UserId::new().as_uuid().simple()
        );
        let (label, database) = match postgres {
            Some(url) => ("postgres+redis", scratch_database(url, scratch).await?),
            None => ("sqlite+redis", sqlite("bench-redis.db")),
        };
        targets.push(open_target(label, database, Some((redis.clone(), prefix))).await?);
    }
    scratch.push(Scratch::Dir(dir));
    Ok(targets)
}

/// A fresh database on the server of `url`, noted in `scratch` to be dropped after the run;
/// its URL.
async fn scratch_database(url: &str, scratch: &mut Vec<Scratch>) -> BenchResult<String> {
    let db = tessera_store::scratch::ScratchDatabase::create(url, "tessera_bench_")
        .await
        .map_err(|e| e.to_string())?;
    let database = db.url().to_owned();
    scratch.push(Scratch::Postgres(Box::new(db)));
    Ok(database)
}

async fn open_target(
    label: &str,
    database: String,
    redis: Option<(String, String)>,
) -> BenchResult<Target> {
    let store = tessera_store::open(&database)
        .await
        .map_err(|e| format!("cannot open {label} store {}: {e}", redact_url(&database)))?;
    Ok(Target {
        label: label.to_owned(),
        database,
        store,
        redis,
    })
}
