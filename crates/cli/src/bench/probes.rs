//! Memory: each probe runs in a fresh child process of this binary (`tessera bench --probe
//! NAME`), so what one probe allocated cannot inflate the next one's resident set. The state
//! is seeded through the service's own operations, as a node would come to hold it.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_core::config::{Config, RevocationMode};
use tessera_core::keys::Algorithm;
use tessera_core::model::User;
use tessera_core::secret::Password;
use tessera_core::service::{DeviceInfo, Tessera};

use super::{stop, BenchResult, Nodes, Plan, Target};

const PASSWORD: &str = "violet anchors drift at noon";

/// Logins of the login probe, from this many tasks at once.
const LOGINS: usize = 50;
const LOGIN_TASKS: usize = 5;

/// Targets in MiB: what a small node is expected to stay under.
const LOGINS_TARGET_MIB: u64 = 40;
const STATE_TARGET_MIB: u64 = 64;

/// How long the state probe waits for an idle hashing thread to free its argon2 area
/// (the pool's idle release is 10 s).
const AREA_RELEASE_WAIT: Duration = Duration::from_secs(30);

/// The probes, in the order they run: name, what it holds, target.
const PROBES: [(&str, &str, u64); 3] = [
    (
        "logins",
        "after 50 logins from 5 tasks (sqlite)",
        LOGINS_TARGET_MIB,
    ),
    (
        "state-sqlite",
        "revocation state warm (sqlite)",
        STATE_TARGET_MIB,
    ),
    (
        "state-memory",
        "revocation state warm (memory store)",
        STATE_TARGET_MIB,
    ),
];

/// The line a probe ends with, which the parent reads.
const RSS_LINE: &str = "rss_kib ";

pub struct MemoryRow {
    name: &'static str,
    what: &'static str,
    target_mib: u64,
    rss_kib: Option<u64>,
    /// What the probe said about its seeding.
    notes: Vec<String>,
}

/// Runs every probe in a child process and collects its resident set.
pub async fn run_all(plan: &Plan, config_path: Option<&Path>) -> BenchResult<Vec<MemoryRow>> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let mut rows = Vec::new();
    for (name, what, target_mib) in PROBES {
        eprintln!("memory probe {name} …");
        let mut command = tokio::process::Command::new(&exe);
        if let Some(path) = config_path {
            command.arg("--config").arg(path);
        }
        command
            .args(["bench", "--probe", name, "--probe-count"])
            .arg(plan.state_count.to_string())
            .env("TESSERA_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit());
        let output = command
            .output()
            .await
            .map_err(|e| format!("cannot start the {name} probe: {e}"))?;
        if !output.status.success() {
            return Err(format!("the {name} probe failed ({})", output.status));
        }
        let text = String::from_utf8_lossy(&output.stdout);
        let rss_kib = text
            .lines()
            .find_map(|l| l.strip_prefix(RSS_LINE))
            .and_then(|n| n.trim().parse().ok());
        let notes = text
            .lines()
            .filter(|l| !l.starts_with(RSS_LINE))
            .map(str::to_owned)
            .collect();
        rows.push(MemoryRow {
            name,
            what,
            target_mib,
            rss_kib,
            notes,
        });
    }
    Ok(rows)
}

pub fn print(rows: &[MemoryRow], plan: &Plan) {
    println!(
        "\nmemory: resident set of a fresh process per probe ({} entries of each kind in the \
         state probes{})",
        plan.state_count,
        if plan.quick { ", --quick" } else { "" }
    );
    println!(
        "{:<13} {:<40} {:>8} {:>10} {:<6}",
        "probe", "holding", "rss_mib", "target_mib", "within"
    );
    for row in rows {
        let (rss, within) = match row.rss_kib {
            Some(kib) => (
                format!("{:.1}", mib(kib)),
                if kib < row.target_mib * 1024 {
                    "yes"
                } else {
                    "NO"
                },
            ),
            None => ("n/a".to_owned(), "n/a"),
        };
        println!(
            "{:<13} {:<40} {:>8} {:>10} {:<6}",
            row.name, row.what, rss, row.target_mib, within
        );
    }
    for row in rows {
        for note in &row.notes {
            println!("  {}: {note}", row.name);
        }
    }
}

#[allow(clippy::cast_precision_loss)] // a resident set is far below 2^52 KiB
fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The resident set of this process in KiB (`VmRSS`), where the system reports it.
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The access-token lifetime of a probe's node: longer than its seeding takes.
const STATE_TOKEN_LIFETIME: Duration = Duration::from_secs(4 * 60 * 60);

/// The child side: runs probe `name`, prints what it seeded and, last, its resident set.
pub async fn probe(name: &str, count: usize, mut config: Config) -> BenchResult {
    // A node forgets an epoch once every token issued before it has expired. Seeding 100 000
    // of each kind takes longer than the default 15-minute access-token lifetime in an
    // unoptimised build, so the first epochs would be gone before the figure is read: the
    // probe's tokens live long enough for it to hold all it seeded.
    config.access_token_ttl = config.access_token_ttl.max(STATE_TOKEN_LIFETIME);
    let nodes = Nodes::new(config);
    match name {
        "logins" => {
            let (target, _dir) = sqlite_target().await?;
            logins(&nodes, &target).await?;
        }
        "state-sqlite" => {
            let (target, _dir) = sqlite_target().await?;
            state(&nodes, &target, count).await?;
        }
        "state-memory" => {
            let target = super::open_target("memory", "memory".to_owned(), None).await?;
            state(&nodes, &target, count).await?;
        }
        other => return Err(format!("no probe {other}")),
    }
    Ok(())
}

/// The resident set now, while the node that holds the state is running: read after it
/// stopped, the figure would be what the allocator kept of memory already freed.
fn report_rss() {
    match rss_kib() {
        Some(kib) => println!("{RSS_LINE}{kib}"),
        None => println!("resident set unknown: no /proc/self/status on this system"),
    }
}

/// A note of the resident set part way through seeding, so the report shows what each kind
/// of state costs.
fn note_rss(after: &str) {
    if let Some(kib) = rss_kib() {
        println!("resident set after {after}: {:.1} MiB", mib(kib));
    }
}

/// The default embedded store, in `/dev/shm` where there is one: seeding commits hundreds of
/// thousands of times, and on a disk each commit waits for the device.
async fn sqlite_target() -> BenchResult<(Target, tempfile::TempDir)> {
    let shm = Path::new("/dev/shm");
    let builder = {
        let mut b = tempfile::Builder::new();
        b.prefix("tessera-bench");
        b
    };
    let dir = if shm.is_dir() {
        builder.tempdir_in(shm)
    } else {
        builder.tempdir()
    }
    .map_err(|e| format!("cannot make a temporary directory: {e}"))?;
    let database = format!("sqlite://{}", dir.path().join("probe.db").display());
    let target = super::open_target("sqlite", database, None).await?;
    Ok((target, dir))
}

/// Five accounts sharing one hash, signed in ten times each by five tasks at once with the
/// production argon2 parameters.
async fn logins(nodes: &Nodes, target: &Target) -> BenchResult {
    let node = nodes
        .start(target, Algorithm::EdDSA, RevocationMode::Cached)
        .await?;
    let outcome = async {
        let emails = seed_accounts(&node, LOGIN_TASKS).await?;
        let mut tasks = tokio::task::JoinSet::new();
        for (email, _) in emails {
            let node = Arc::clone(&node);
            tasks.spawn(async move {
                for _ in 0..LOGINS / LOGIN_TASKS {
                    let _signed_in = node.login(&email, Password::new(PASSWORD.to_owned()), DeviceInfo::default(), None)
                        .await
                        .map_err(|e| format!("login: {e}"))?;
                }
                Ok::<_, String>(())
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.map_err(|e| e.to_string())??;
        }
        println!(
            "{LOGINS} logins (Tessera::login, production argon2id parameters) from {LOGIN_TASKS} tasks"
        );
        report_rss();
        Ok(())
    }
    .await;
    stop(&node).await;
    outcome
}

/// `count` accounts: the first signed up (its password hashed once), the rest imported with
/// that hash (`Tessera::import_user`); their emails and users.
async fn seed_accounts(node: &Tessera, count: usize) -> BenchResult<Vec<(String, User)>> {
    let first = node
        .add_user(
            "user0@example.com",
            Password::new(PASSWORD.to_owned()),
            vec!["reader".into(), "writer".into()],
        )
        .await
        .map_err(|e| format!("add_user: {e}"))?;
    let hash = first.password_hash.clone();
    let mut users = vec![("user0@example.com".to_owned(), first)];
    for i in 1..count {
        let email = format!("user{i}@example.com");
        let user = node
            .import_user(&email, &hash, vec!["reader".into(), "writer".into()])
            .await
            .map_err(|e| format!("import_user: {e}"))?;
        users.push((email, user));
    }
    Ok(users)
}

/// `count` live cookie sessions held in the cache, `count` denylisted `jti`s and `count`
/// user epochs, all through the service's operations on a `cached` node.
async fn state(nodes: &Nodes, target: &Target, count: usize) -> BenchResult {
    let node = nodes
        .start(target, Algorithm::EdDSA, RevocationMode::Cached)
        .await?;
    let outcome = seed_state(&node, count).await;
    report_rss();
    stop(&node).await;
    outcome
}

async fn seed_state(node: &Arc<Tessera>, count: usize) -> BenchResult {
    let started = Instant::now();
    // One account signed up (one argon2id hash); the others imported with its hash and
    // dropped once seeded, so what the probe reads is the node's memory, not its own list.
    let first = seed_accounts(node, 1)
        .await?
        .pop()
        .map(|(_, user)| user)
        .ok_or("no user to take the hash from")?;
    let hash = first.password_hash.clone();
    for i in 0..count {
        let user = if i == 0 {
            first.clone()
        } else {
            node.import_user(
                &format!("user{i}@example.com"),
                &hash,
                vec!["reader".into(), "writer".into()],
            )
            .await
            .map_err(|e| format!("import_user: {e}"))?
        };
        let opened = node
            .start_cookie_session(&user, DeviceInfo::default(), None)
            .await
            .map_err(|e| format!("start_cookie_session: {e}"))?;
        node.check_cookie(&opened.secret)
            .await
            .map_err(|r| format!("check_cookie: {}", r.error))?;
    }
    println!(
        "{count} cookie sessions: one user signed up, {} imported with its hash (import_user), \
         start_cookie_session for each, each session checked once (check_cookie) to be cached",
        count - 1
    );
    note_rss("the cookie sessions");
    // Epochs on a second set of users: a node that hears a user's epoch bump drops that
    // user's cached cookie sessions (roles may have changed), and the feed replays this
    // node's own bumps a moment later, so sessions of the same users would not stay cached.
    for i in 0..count {
        let user = node
            .import_user(&format!("former{i}@example.com"), &hash, Vec::new())
            .await
            .map_err(|e| format!("import_user: {e}"))?;
        node.logout_everywhere(user.id)
            .await
            .map_err(|e| format!("logout_everywhere: {e}"))?;
    }
    println!("{count} user epochs: logout_everywhere on each of {count} more imported users");
    note_rss("the epochs");
    let email = "user0@example.com";
    let mut refresh = node
        .password_grant(
            email,
            Password::new(PASSWORD.to_owned()),
            DeviceInfo::default(),
        )
        .await
        .map_err(|e| format!("password_grant: {e}"))?
        .refresh_token;
    for _ in 0..count {
        let pair = node
            .refresh(&refresh)
            .await
            .map_err(|e| format!("refresh: {e}"))?;
        refresh = pair.refresh_token;
        node.revoke_token(&pair.access_token)
            .await
            .map_err(|e| format!("revoke_token: {e}"))?;
    }
    println!("{count} denylisted jtis: one password_grant, {count} refresh rotations, revoke_token on each access token");
    let (revoked, epochs, denied, cookies) = node.revocation_cache().sizes();
    println!(
        "cache holds: {cookies} cookie sessions, {denied} jtis, {epochs} epochs, {revoked} revoked sessions (seeded in {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    if cookies < count || denied < count || epochs < count {
        println!("WARNING: the cache holds fewer entries than were seeded");
    }
    // A node holding this state between logins: the hashing thread gives its argon2 area
    // back after a few idle seconds. Wait for that, so the figure is the state's, and say so.
    let idle_since = Instant::now();
    while node.password_memory_areas() > 0 && idle_since.elapsed() < AREA_RELEASE_WAIT {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match node.password_memory_areas() {
        0 => println!(
            "read after the hashing thread gave its argon2 area (19 MiB) back, {:.1} s after the last hash",
            idle_since.elapsed().as_secs_f64()
        ),
        held => println!("read while {held} hashing thread(s) still held an argon2 area (19 MiB each)"),
    }
    Ok(())
}
