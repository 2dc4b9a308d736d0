//! What the revocation modes of SPEC §5 cost per verification once the revocation state is
//! large: 100 000 denylisted `jti`s and 100 000 users whose epochs were bumped recently (all
//! of it inside the horizon, so a `cached` node holds every entry).
//!
//! - `bearer/{mode}`: an access token verified in `none`, `cached` or `strict` mode.
//! - `cookie/{mode}`: a session cookie resolved in each mode (`none` reads the store too: a
//!   cookie carries no signature to check offline).
//! - `{bearer,cookie}/strict_sqlite`: `strict` against a smaller SQLite store, for the cost
//!   of a real store round trip; `strict_postgres` the same against PostgreSQL (a fresh
//!   database on `TESSERA_TEST_DATABASE_URL`, when it answers): a network round trip.
//!
//! The large state lives in the `memory` store, not SQLite: SQLite's `synchronous = FULL`
//! makes each write an fsync, and filling 100 000 jtis plus 100 000 users (an insert and an
//! epoch bump each, 300 000 commits) measured 0.5 to 1.8 ms per commit on a 2-core machine,
//! three to nine minutes in all. So one memory store is filled and the three services run over that
//! same store (sharing its signing key), and `strict` is also measured against a SQLite
//! store holding `SQLITE_ENTRIES` of each kind (B-tree lookups barely notice the size).
//!
//! Printed once, outside the measurement: the median cached/none (and strict/none) cost
//! from a quick manual loop, the cache's sizes, how long one prune of the cache takes, and
//! the resident set size before filling, after filling and after the `cached` service loaded
//! its state.
//!
//! Run with `cargo bench -p tessera-server --bench revocation`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use tempfile::TempDir;
use tessera_core::config::ConfigLayer;
use tessera_core::keys::MasterKey;
use tessera_core::model::{Email, Timestamp, User, UserId};
use tessera_core::secret::{Password, SessionSecret};
use tessera_core::service::{DeviceInfo, KeyPolicy, Tessera};
use tessera_core::Store;
use tokio::runtime::Runtime;

const EMAIL: &str = "bench@example.com";
const PASSWORD: &str = "correct horse battery";
/// Denylisted `jti`s and users with recent epochs in the large (memory) store.
const ENTRIES: usize = 100_000;
/// The same, in the SQLite store that `strict_sqlite` runs against.
const SQLITE_ENTRIES: usize = 5_000;
/// Writers filling a store at once.
const FILL_TASKS: usize = 16;
/// The manual loop whose medians give the printed ratios: each target is timed in
/// `RATIO_BLOCKS` turns of `RATIO_BLOCK` calls (20 000 in all), after `BLOCK_WARM_UP` calls
/// that are not kept.
const RATIO_BLOCKS: usize = 20;
const RATIO_BLOCK: usize = 1_000;
const BLOCK_WARM_UP: usize = 50;
/// Stands in for the password hash of the filler users: nobody logs in as them, so hashing
/// 100 000 passwords would only slow the setup down.
const DUMMY_PHC: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GDPPc";

/// One service under test with a signed-in user's two credentials.
struct Target {
    name: &'static str,
    tessera: Tessera,
    cookie: SessionSecret,
    access_token: String,
}

struct Fixture {
    rt: Runtime,
    /// `none`, `cached`, `strict` over the memory store, then `strict_sqlite`.
    targets: Vec<Target>,
    /// Keeps the SQLite file (and the PostgreSQL database) alive while their services use it.
    _guards: (TempDir, Option<tessera_store::testing::FreshDatabase>),
}

/// Built once (the fill takes seconds) and shared by both groups.
static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let (targets, guards) = rt.block_on(build());
        Fixture {
            rt,
            targets,
            _guards: guards,
        }
    })
}

async fn build() -> (
    Vec<Target>,
    (TempDir, Option<tessera_store::testing::FreshDatabase>),
) {
    // One master key for every service over the shared store, so each can unseal the
    // signing key the first one created (`MasterKey` is not `Clone`).
    let master = SessionSecret::generate().expose_secret().to_owned();
    let store = tessera_store::open("memory").await.unwrap();
    let none = start(&store, "none", &master).await;
    let strict = start(&store, "strict", &master).await;
    let (cookie, access_token) = sign_in(&none).await;

    let before_fill = rss_kib();
    let started = Instant::now();
    fill(&store, ENTRIES).await;
    println!(
        "filled the memory store with {ENTRIES} denied jtis and {ENTRIES} user epochs in {:.1?}",
        started.elapsed()
    );
    let after_fill = rss_kib();

    // Started after the fill, so its revocation state comes from the snapshot it loads.
    let cached = start(&store, "cached", &master).await;
    wait_fresh(&cached).await;
    let after_load = rss_kib();
    let (revoked, epochs, denied, cookies) = cached.revocation_cache().sizes();
    println!(
        "cached revocation state: {revoked} revoked sessions, {epochs} epochs, \
         {denied} denied jtis, {cookies} cookie sessions"
    );
    // The flush task prunes the whole state every few seconds under the write lock, which
    // stalls every verification on the node meanwhile: how long, at this size?
    let started = Instant::now();
    cached.revocation_cache().prune(Timestamp::now());
    println!(
        "one prune of that state (nothing to drop) held the write lock for {:.2?}",
        started.elapsed()
    );
    println!(
        "resident set: {} before filling, {} after filling, {} after the cached service \
         loaded its state",
        mib(before_fill),
        mib(after_fill),
        mib(after_load)
    );

    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("revocation.db").display());
    let sqlite_store = tessera_store::open(&database).await.unwrap();
    let started = Instant::now();
    fill(&sqlite_store, SQLITE_ENTRIES).await;
    println!(
        "filled the SQLite store with {SQLITE_ENTRIES} denied jtis and {SQLITE_ENTRIES} user \
         epochs in {:.1?}",
        started.elapsed()
    );
    let strict_sqlite = start(&sqlite_store, "strict", &master).await;
    let (sqlite_cookie, sqlite_token) = sign_in(&strict_sqlite).await;

    let mut targets = Vec::new();
    for (name, tessera) in [("none", none), ("cached", cached), ("strict", strict)] {
        // The first sight of a cookie reads the store; in cached mode it is then held.
        tessera.authenticate_cookie(&cookie).await.unwrap();
        targets.push(Target {
            name,
            tessera,
            cookie: SessionSecret::from_presented(cookie.expose_secret()),
            access_token: access_token.clone(),
        });
    }
    targets.push(Target {
        name: "strict_sqlite",
        tessera: strict_sqlite,
        cookie: sqlite_cookie,
        access_token: sqlite_token,
    });

    let postgres = tessera_store::testing::FreshDatabase::create().await;
    match &postgres {
        Some(database) => {
            let store = tessera_store::open(database.url()).await.unwrap();
            fill(&store, SQLITE_ENTRIES).await;
            let strict_postgres = start(&store, "strict", &master).await;
            let (cookie, access_token) = sign_in(&strict_postgres).await;
            targets.push(Target {
                name: "strict_postgres",
                tessera: strict_postgres,
                cookie,
                access_token,
            });
        }
        None => println!("PostgreSQL does not answer: no strict_postgres rows"),
    }
    (targets, (dir, postgres))
}

/// Starts a service in `mode` over `store` (the `database` setting is never opened: the
/// store is handed over directly).
async fn start(store: &Arc<dyn Store>, mode: &str, master: &str) -> Tessera {
    let text = format!("database = \"memory\"\nrevocation_mode = \"{mode}\"\n");
    let config = ConfigLayer::from_toml(&text, Path::new("bench.toml"))
        .unwrap()
        .resolve()
        .unwrap();
    Tessera::start(
        Arc::new(config),
        Arc::clone(store),
        MasterKey::from_base64(master).unwrap(),
        KeyPolicy::Serve,
    )
    .await
    .unwrap()
}

/// Signs the bench user up and returns a session cookie and an access token.
async fn sign_in(tessera: &Tessera) -> (SessionSecret, String) {
    let password = || Password::new(PASSWORD.to_owned());
    tessera.sign_up(EMAIL, password(), None).await.unwrap();
    let login = tessera
        .login(EMAIL, password(), DeviceInfo::default(), None)
        .await
        .unwrap();
    let pair = tessera
        .password_grant(EMAIL, password(), DeviceInfo::default())
        .await
        .unwrap();
    (login.secret, pair.access_token)
}

/// Denies `count` random jtis (live for another hour) and adds `count` users whose epoch
/// is now, through the store traits, `FILL_TASKS` writers at a time.
async fn fill(store: &Arc<dyn Store>, count: usize) {
    let now = Timestamp::now();
    let exp = now.saturating_add(Duration::from_secs(3600));
    let mut writers = tokio::task::JoinSet::new();
    for task in 0..FILL_TASKS {
        let store = Arc::clone(store);
        writers.spawn(async move {
            // Written in batches, one transaction each: one commit (and fsync) per batch.
            let mine: Vec<usize> = (task..count).step_by(FILL_TASKS).collect();
            for batch in mine.chunks(500) {
                let mut tx = store.begin().await.unwrap();
                for i in batch {
                    // A UUID, as the service's own jtis are.
                    tx.deny_jti(&UserId::new().to_string(), exp).await.unwrap();
                    let user = User {
                        id: UserId::new(),
                        email: Email::parse(&format!("filler-{i}@example.com")).unwrap(),
                        password_hash: DUMMY_PHC.to_owned(),
                        roles: Vec::new(),
                        created_at: now,
                        tokens_valid_after: Timestamp::from_unix(0),
                        email_verified_at: None,
                    };
                    tx.insert_user(&user).await.unwrap();
                    assert!(tx.bump_epoch(user.id, now).await.unwrap().is_some());
                }
                tx.commit().await.unwrap();
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
}

async fn wait_fresh(tessera: &Tessera) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !tessera.revocation_status().fresh {
        assert!(
            Instant::now() < deadline,
            "revocation state not fresh after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `VmRSS` of this process, in KiB.
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(
        || "unknown".to_owned(),
        |kib| format!("{}.{} MiB", kib / 1024, kib % 1024 * 10 / 1024),
    )
}

/// The median of `RATIO_BLOCKS * RATIO_BLOCK` individually timed verifications per target.
/// The targets take turns by blocks, so load from elsewhere on the machine (other builds,
/// frequency changes) falls on all of them alike instead of skewing the ratio; the first
/// calls of each block, run cold after another target's turn, are not kept.
fn medians(f: &Fixture, bearer: bool) -> Vec<Duration> {
    f.rt.block_on(async {
        let mut samples = vec![Vec::with_capacity(RATIO_BLOCKS * RATIO_BLOCK); f.targets.len()];
        for _ in 0..RATIO_BLOCKS {
            for (target, samples) in f.targets.iter().zip(&mut samples) {
                for i in 0..BLOCK_WARM_UP + RATIO_BLOCK {
                    let started = Instant::now();
                    if bearer {
                        target
                            .tessera
                            .authenticate_bearer(&target.access_token)
                            .await
                            .unwrap();
                    } else {
                        target
                            .tessera
                            .authenticate_cookie(&target.cookie)
                            .await
                            .unwrap();
                    }
                    if i >= BLOCK_WARM_UP {
                        samples.push(started.elapsed());
                    }
                }
            }
        }
        samples
            .into_iter()
            .map(|mut samples| {
                samples.sort_unstable();
                samples[samples.len() / 2]
            })
            .collect()
    })
}

fn print_ratios() {
    let f = fixture();
    for (kind, bearer) in [("bearer", true), ("cookie", false)] {
        let medians = medians(f, bearer);
        let none = medians[0].as_secs_f64();
        for (target, median) in f.targets.iter().zip(&medians) {
            println!(
                "{kind:<6} {:<13} median {median:>10.2?}  {:>6.2}x none",
                target.name,
                median.as_secs_f64() / none
            );
        }
        if bearer {
            // The goal: `cached` within 15 % of `none` for bearer tokens.
            let cached = f.targets.iter().position(|t| t.name == "cached");
            if let Some(ratio) = cached
                .and_then(|i| medians.get(i))
                .map(|m| m.as_secs_f64() / none)
            {
                let verdict = if ratio <= 1.15 { "within" } else { "OUTSIDE" };
                println!("bearer cached/none = {ratio:.3}: {verdict} the 15 % goal");
            }
        }
    }
}

fn bearer(c: &mut Criterion) {
    let f = fixture();
    let mut group = c.benchmark_group("bearer");
    for target in &f.targets {
        let (tessera, token) = (&target.tessera, target.access_token.as_str());
        group.bench_function(target.name, |b| {
            b.to_async(&f.rt)
                .iter(|| async move { tessera.authenticate_bearer(token).await.unwrap() });
        });
    }
    group.finish();
}

fn cookie(c: &mut Criterion) {
    let f = fixture();
    let mut group = c.benchmark_group("cookie");
    for target in &f.targets {
        let (tessera, cookie) = (&target.tessera, &target.cookie);
        group.bench_function(target.name, |b| {
            b.to_async(&f.rt)
                .iter(|| async move { tessera.authenticate_cookie(cookie).await.unwrap() });
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    targets = bearer, cookie
}

fn main() {
    print_ratios();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
