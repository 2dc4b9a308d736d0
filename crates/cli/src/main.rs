//! `tessera`: the server and the commands that administer it. Every command reads the same
//! configuration as `serve` (file < environment < flags), so it finds the same database and
//! master key.

use std::io::{IsTerminal as _, Read as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tessera_core::config::{Config, ConfigLayer};
use tessera_core::error::AuthError;
use tessera_core::keys::MasterKey;
use tessera_core::model::{AdminScope, Timestamp, UserId};
use tessera_core::secret::Password;
use tessera_core::service::{KeyPolicy, Tessera};
use tessera_core::url::redact_url;

mod bench;
mod flags;

/// See the workspace manifest: the verify path allocates little, but glibc's allocator makes
/// even that a visible share of a request.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Failures end the command with one line on stderr and a non-zero exit code.
type CliResult<T = ()> = Result<T, String>;

#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "Sessions, JWTs and rotating refresh tokens with instant revocation"
)]
struct Cli {
    /// TOML configuration file [default: tessera.toml in the working directory, if present]
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: flags::ConfigFlags,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server
    Serve,
    /// Manage users
    #[command(subcommand)]
    User(UserCommand),
    /// Manage admin API keys
    #[command(subcommand, name = "admin-key")]
    AdminKey(AdminKeyCommand),
    /// Manage token signing keys
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Work with tokens
    #[command(subcommand)]
    Token(TokenCommand),
    /// Measure sessions against JWTs on this machine: tables and an SVG chart
    ///
    /// Per store (memory and a temporary SQLite file; PostgreSQL with --database-url or a
    /// PostgreSQL `database`; the same behind Redis when `redis` is set): the cost and
    /// throughput of a cookie check and of a bearer check per algorithm and revocation mode,
    /// credential sizes, revocation lag, and the memory of 50 logins and of a warm revocation
    /// cache. Every store is made for the run and removed after it: the configured database
    /// and master key are never opened.
    Bench(bench::BenchArgs),
    /// Print the completion script for a shell
    ///
    /// bash: `tessera completions bash > /etc/bash_completion.d/tessera`; zsh: into a
    /// directory of `$fpath` as `_tessera`; fish: `~/.config/fish/completions/tessera.fish`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages: tessera(1) and one per subcommand (tessera-serve(1), …)
    Man {
        /// Directory to write the pages into [default: print tessera(1) to stdout]
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user and print its id. The password is read from stdin when stdin is not a
    /// terminal (or with --password-stdin), otherwise prompted for.
    Add {
        email: String,
        /// Comma-separated roles
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// Read the password from stdin (one line; a trailing newline is dropped)
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users
    List,
    /// Replace a user's roles (their access tokens stop working; refresh carries the new roles)
    SetRoles {
        id: String,
        /// Comma-separated roles; empty for none
        #[arg(value_delimiter = ',', num_args = 0..)]
        roles: Vec<String>,
    },
    /// Clear an account's failed-login count and lock (on every node sharing the store)
    Unlock { email: String },
    /// Delete a user: their sessions and refresh families go with them, and their access
    /// tokens are refused on every node until they expire
    Delete { email: String },
    /// Print a single-use recovery link for the account (valid 30 minutes, superseding its
    /// earlier ones), for installations without mail: hand it to the user yourself
    RecoveryLink { email: String },
}

#[derive(Subcommand)]
enum AdminKeyCommand {
    /// Create an API key and print it alone on one line (it is shown once, stored hashed)
    Create {
        #[arg(long, default_value = "admin")]
        name: String,
        /// What the key may do: `admin` (every admin route and every other scope),
        /// `introspect` (POST /oauth2/introspect only) or `revocations` (GET /v1/revocations
        /// only). Give a resource server the narrowest key it needs.
        #[arg(long, default_value = "admin", value_parser = parse_scope)]
        scope: AdminScope,
    },
    /// Revoke an admin API key by id
    Revoke { id: String },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// List signing keys and whether they sign, are still published, or have expired
    List,
    /// Make a new signing key; the old one stays published until its tokens have expired
    Rotate,
    /// Withdraw a retired key at once (for a compromised key): its tokens stop verifying
    Retire {
        /// A kid is base64url, so it may begin with `-`: taken as the kid, never as a flag.
        #[arg(allow_hyphen_values = true)]
        kid: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Decode an access token and verify it against this installation's keys
    Inspect { token: String },
}

/// How long the runtime waits, after `serve` returned, for blocking work still running.
const SHUTDOWN_LEFTOVERS: std::time::Duration = std::time::Duration::from_secs(2);

fn parse_scope(text: &str) -> Result<AdminScope, String> {
    AdminScope::parse(text).ok_or_else(|| "expected admin, introspect or revocations".to_owned())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            e.exit()
        }
        Err(e) => {
            // One line, as every other error (SPEC §4); `--help` has the rest.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("{first} (see --help)");
            return ExitCode::from(2);
        }
    };
    // The bench's nodes would log every sign-in they make, and each switch of algorithm
    // rotates a key; its output is the tables.
    init_logging(if matches!(cli.command, Command::Bench(_)) {
        "warn,tessera_core::service::keys=error"
    } else {
        "info"
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let outcome = runtime.block_on(run(cli));
    // Everything that must reach the store has by now (`serve` flushed before returning);
    // blocking work of a request dropped at the shutdown bound is not waited for long.
    runtime.shutdown_timeout(SHUTDOWN_LEFTOVERS);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(&message),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TESSERA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only for a terminal: a log file or journal gets plain lines.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// The configuration layers, merged but not yet resolved to their defaults.
fn load_layers(cli: &Cli) -> CliResult<ConfigLayer> {
    let file = match &cli.config {
        Some(path) => ConfigLayer::from_toml_file(path, true),
        None => ConfigLayer::from_toml_file(std::path::Path::new("tessera.toml"), false),
    }
    .map_err(|e| e.to_string())?;
    warn_unknown_env();
    let env = ConfigLayer::from_env(|name| std::env::var(name).ok());
    let flags = ConfigLayer::from_flags(cli.settings.pairs()).map_err(|e| e.to_string())?;
    Ok(flags.over(env.over(file)))
}

async fn open(config: Config, policy: KeyPolicy) -> CliResult<Arc<Tessera>> {
    let store = tessera_store::open_with(&config.database, config.database_pool_size)
        .await
        .map_err(|e| format!("cannot open database {}: {e}", redact_url(&config.database)))?;
    let master = master_key(&config)?;
    let redis = config
        .redis
        .as_deref()
        .map(|url| (url, config.redis_prefix.as_str()));
    let feed = tessera_store::revocation_feed(
        Arc::clone(&store),
        &config.database,
        redis,
        config.max_staleness,
    )
    .map_err(|e| e.to_string())?;
    let counters = match &config.redis {
        Some(url) => Some(
            tessera_store::RedisCounters::new(url, &config.redis_prefix)
                .map_err(|e| e.to_string())?,
        ),
        None => None,
    };
    let mut tessera = Tessera::start_with_feed(Arc::new(config), store, master, policy, feed)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(counters) = counters {
        tessera = tessera.with_guessing_counters(Arc::new(counters));
    }
    Ok(Arc::new(tessera))
}

/// `TESSERA_*` variables that are not settings but are read elsewhere.
const OTHER_ENV: &[&str] = &[
    "TESSERA_MASTER_KEY",
    "TESSERA_LOG",
    "TESSERA_REQUIRE_SERVICES",
];

/// A misspelt `TESSERA_LISTN` is worth a warning naming it, but not a refusal to start
/// (SPEC §2): orchestrators inject variables of their own into the environment of a service
/// named `tessera` (Kubernetes: `TESSERA_PORT`, `TESSERA_SERVICE_HOST`, …). Only the name
/// is logged; the value may be a secret.
fn warn_unknown_env() {
    let known: Vec<String> = tessera_core::config::SETTINGS
        .iter()
        .map(|s| tessera_core::config::env_name(s.key))
        .collect();
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("TESSERA_")
            && !name.starts_with("TESSERA_TEST_")
            && !OTHER_ENV.contains(&name)
            && !known.iter().any(|k| k == name)
        {
            tracing::warn!(
                variable = name,
                "ignoring {name}: not a setting (a misspelt one leaves its default in force)"
            );
        }
    }
}

/// `TESSERA_MASTER_KEY` overrides the key file (SPEC §2). The in-memory store keeps nothing
/// across restarts, so it gets a fresh key and writes no file.
fn master_key(config: &Config) -> CliResult<MasterKey> {
    if let Ok(text) = std::env::var("TESSERA_MASTER_KEY") {
        return MasterKey::from_base64(&text).map_err(|e| format!("TESSERA_MASTER_KEY: {e}"));
    }
    if config.database == "memory" {
        return Ok(MasterKey::generate());
    }
    MasterKey::load_or_create(&config.master_key_file).map_err(|e| e.to_string())
}

async fn run(cli: Cli) -> CliResult {
    // These describe the command line itself: no configuration is read.
    match &cli.command {
        Command::Completions { shell } => return completions(*shell),
        Command::Man { out_dir } => return man(out_dir.as_deref()),
        _ => {}
    }
    let layers = load_layers(&cli)?;
    let config = layers.resolve().map_err(|e| e.to_string())?;
    match cli.command {
        Command::Serve => serve(config, layers).await,
        Command::Bench(args) => bench::run(config, args, cli.config).await,
        Command::User(command) => user(open(config, KeyPolicy::Administer).await?, command).await,
        Command::AdminKey(command) => {
            admin_key(open(config, KeyPolicy::Administer).await?, command).await
        }
        Command::Keys(command) => keys(open(config, KeyPolicy::Administer).await?, command).await,
        Command::Token(TokenCommand::Inspect { token }) => {
            inspect(open(config, KeyPolicy::Administer).await?, &token).await
        }
        Command::Completions { .. } | Command::Man { .. } => Ok(()),
    }
}

/// Generated into memory first: the generator panics on a failed write (a closed pipe), and
/// a failure here should be one line, as every other.
fn completions(shell: clap_complete::Shell) -> CliResult {
    use clap::CommandFactory as _;
    use std::io::Write as _;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "tessera", &mut script);
    let written = std::io::stdout().lock().write_all(&script);
    reader_may_stop(written).map_err(|e| format!("cannot write the completion script: {e}"))
}

/// A reader that stops early (`tessera man | head`) closes the pipe: that is the reader's
/// choice, not a failure, as for any Unix filter.
fn reader_may_stop(written: std::io::Result<()>) -> std::io::Result<()> {
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Without a directory, the root page on stdout (`tessera man | man -l -`); with one, a page
/// per command, named as `man` looks them up (`tessera-admin-key-create.1`).
fn man(out_dir: Option<&std::path::Path>) -> CliResult {
    use clap::CommandFactory as _;
    let command = Cli::command();
    match out_dir {
        None => {
            let written = clap_mangen::Man::new(command).render(&mut std::io::stdout().lock());
            reader_may_stop(written).map_err(|e| format!("cannot write the man page: {e}"))
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            clap_mangen::generate_to(command, dir)
                .map_err(|e| format!("cannot write the man pages into {}: {e}", dir.display()))
        }
    }
}

async fn serve(config: Config, layers: ConfigLayer) -> CliResult {
    if !config.cookie_secure {
        tracing::warn!("cookie_secure = false: session cookies lack Secure and the __Host- prefix; use only for plain-HTTP development");
    }
    if let Some(domain) = &config.cookie_domain {
        let public = &config.mail.public_url;
        match tessera_core::url::host_of(public) {
            Some(host) if tessera_core::url::domain_covers(domain, &host) => {}
            _ => tracing::warn!(
                cookie_domain = %domain,
                public_url = %public,
                "cookie_domain {domain} does not cover the host of public_url {public}: browsers will not store the session cookie Tessera sets there"
            ),
        }
    }
    let listen = config.listen;
    let database = redact_url(&config.database);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let metrics_listen = config.metrics_listen;
    let metrics_listener = tokio::net::TcpListener::bind(metrics_listen)
        .await
        .map_err(|e| format!("cannot listen on {metrics_listen} (metrics_listen): {e}"))?;
    let metrics = metrics_listener.local_addr().map_err(|e| e.to_string())?;
    let config = with_bound_port(config, layers, local)?;
    let redis = config.redis.as_deref().map(redact_url);
    let tessera = open(config, KeyPolicy::Serve).await?;
    let (store, _) = tessera.store_backend();
    let feed = tessera.revocation_status().feed.name;
    tracing::info!(store, %database, redis = redis.as_deref().unwrap_or("unset"), feed, "stores and revocation feed");
    tracing::info!(%metrics, "serving /metrics");
    println!(
        "tessera listening on http://{local} (database {database}, {store}; revocation feed: {feed})"
    );
    println!("tessera metrics on http://{metrics}/metrics");
    println!("  create the first user:  tessera user add you@example.com");
    println!("  create an admin key:    tessera admin-key create --name ops");
    tessera_server::serve(listener, metrics_listener, tessera, shutdown_signal())
        .await
        .map_err(|e| format!("server error: {e}"))
}

/// `listen` on port 0 lets the system pick a free port, printed once bound. The defaults that
/// derive from `listen` — the issuer, and the allowed origins after it — then name the port
/// actually bound, the one clients reach, rather than `:0`. An explicitly set issuer is kept;
/// without one, tokens name a port that the next start will not get, so they stop verifying
/// after a restart, which is worth a warning.
fn with_bound_port(config: Config, layers: ConfigLayer, local: SocketAddr) -> CliResult<Config> {
    if config.listen.port() != 0 {
        return Ok(config);
    }
    let bound = ConfigLayer::from_flags([("listen", local.to_string())])
        .map_err(|e| e.to_string())?
        .over(layers)
        .resolve()
        .map_err(|e| e.to_string())?;
    if bound.issuer != config.issuer {
        tracing::warn!(issuer = %bound.issuer, "listening on a port picked at start: the default issuer names it, so tokens will not verify after a restart on another port; set `issuer` to keep them");
    }
    Ok(bound)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = ctrl_c.await;
            return;
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

async fn user(tessera: Arc<Tessera>, command: UserCommand) -> CliResult {
    match command {
        UserCommand::Add {
            email,
            roles,
            password_stdin,
        } => {
            let password = read_password(password_stdin)?;
            let user = tessera
                .add_user(&email, password, roles)
                .await
                .map_err(|e| e.to_string())?;
            println!("{}", user.id);
        }
        UserCommand::List => {
            for user in tessera.users().await.map_err(|e| e.to_string())? {
                println!(
                    "{}\t{}\t{}\t{}",
                    user.id,
                    user.email.as_str(),
                    user.roles.join(","),
                    user.created_at.to_rfc3339()
                );
            }
        }
        UserCommand::SetRoles { id, roles } => {
            let id = UserId::parse(&id).ok_or_else(|| format!("not a user id: {id}"))?;
            let user = tessera
                .set_roles(id, roles)
                .await
                .map_err(|e| e.to_string())?;
            println!("{}\t{}", user.id, user.roles.join(","));
        }
        UserCommand::Unlock { email } => {
            let user = tessera.user_by_email(&email).await.map_err(|e| match e {
                AuthError::NotFound => format!("no user with email {email}"),
                e => e.to_string(),
            })?;
            tessera.unlock(user.id).await.map_err(|e| e.to_string())?;
            println!("{}", user.id);
        }
        UserCommand::Delete { email } => {
            let user = tessera.user_by_email(&email).await.map_err(|e| match e {
                AuthError::NotFound => format!("no user with email {email}"),
                e => e.to_string(),
            })?;
            tessera.delete_user(user.id).await.map_err(|e| match e {
                AuthError::NotFound => format!("no user with email {email}"),
                e => e.to_string(),
            })?;
            println!("deleted user {} ({})", user.id, user.email.as_str());
        }
        UserCommand::RecoveryLink { email } => {
            let link = tessera.recovery_link(&email).await.map_err(|e| match e {
                AuthError::NotFound => format!("no user with email {email}"),
                e => e.to_string(),
            })?;
            println!("{link}");
        }
    }
    Ok(())
}

fn read_password(from_stdin: bool) -> CliResult<Password> {
    let stdin = std::io::stdin();
    let text = if from_stdin || !stdin.is_terminal() {
        let mut text = String::new();
        stdin
            .lock()
            .take(4 * 1024)
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
        let line = text.lines().next().unwrap_or_default().to_owned();
        line
    } else {
        rpassword::prompt_password("password: ")
            .map_err(|e| format!("cannot read the password: {e}"))?
    };
    Ok(Password::new(text))
}

async fn admin_key(tessera: Arc<Tessera>, command: AdminKeyCommand) -> CliResult {
    match command {
        AdminKeyCommand::Create { name, scope } => {
            let (key, secret) = tessera
                .create_admin_key(&name, scope)
                .await
                .map_err(|e| e.to_string())?;
            eprintln!(
                "admin key {} ({}, scope {}) created; it is shown once:",
                key.id, key.name, key.scope
            );
            println!("{}", secret.expose_secret());
        }
        AdminKeyCommand::Revoke { id } => {
            let id = tessera_core::model::AdminKeyId::parse(&id)
                .ok_or_else(|| format!("not an admin key id: {id}"))?;
            tessera.revoke_admin_key(id).await.map_err(|e| match e {
                AuthError::NotFound => format!("no live admin key {id}"),
                e => e.to_string(),
            })?;
            eprintln!("admin key {id} revoked");
        }
    }
    Ok(())
}

async fn keys(tessera: Arc<Tessera>, command: KeysCommand) -> CliResult {
    match command {
        KeysCommand::List => {
            let lifetime =
                tessera_core::keys::retired_key_lifetime(tessera.config().access_token_ttl);
            let now = Timestamp::now();
            for key in tessera.signing_keys().await.map_err(|e| e.to_string())? {
                let state = match key.retired_at {
                    None => "active".to_owned(),
                    Some(at) if at.saturating_add(lifetime) > now => {
                        format!(
                            "retired, published until {}",
                            at.saturating_add(lifetime).to_rfc3339()
                        )
                    }
                    Some(_) => "expired".to_owned(),
                };
                println!(
                    "{}\t{}\t{}\t{}",
                    key.kid,
                    key.alg,
                    key.created_at.to_rfc3339(),
                    state
                );
            }
        }
        KeysCommand::Rotate => {
            let key = tessera
                .rotate_signing_key()
                .await
                .map_err(|e| e.to_string())?;
            println!("{}", key.kid());
        }
        KeysCommand::Retire { kid } => {
            tessera
                .withdraw_signing_key(&kid)
                .await
                .map_err(|e| match e {
                    AuthError::NotFound => format!("no signing key {kid}"),
                    AuthError::ActiveKey => {
                        format!("{kid} is the active key; run `tessera keys rotate` first")
                    }
                    e => e.to_string(),
                })?;
            eprintln!("signing key {kid} withdrawn; tokens it signed no longer verify");
        }
    }
    Ok(())
}

async fn inspect(tessera: Arc<Tessera>, token: &str) -> CliResult {
    let (header, payload) =
        tessera_core::verify::inspect(token).map_err(|e| format!("not a JWT: {e}"))?;
    let verdict = tessera.check_token(token).await;
    let output = serde_json::json!({
        "header": header,
        "claims": payload,
        "valid": verdict.is_ok(),
        "error": verdict.err().map(|e| e.to_string()),
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&output).map_err(|e| e.to_string())?
    );
    Ok(())
}
