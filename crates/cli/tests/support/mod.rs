//! What the tests of the `tessera` binary share: the binary itself run in a directory of its
//! own, servers started as real processes, and the HTTP calls a client makes.
#![allow(dead_code)] // each test crate uses its own part

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const PASSWORD: &str = "correct horse battery";

/// Every server of a test names this issuer, so its tokens stay valid when it restarts on
/// another port, and are accepted by every server on the same installation.
pub const ISSUER: &str = "http://tessera.test";

pub fn tessera(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tessera"));
    command
        .current_dir(dir)
        .env_remove("TESSERA_MASTER_KEY")
        .env(
            "TESSERA_DATABASE",
            format!("sqlite://{}", dir.join("tessera.db").display()),
        )
        .env("TESSERA_LOG", "warn");
    command
}

pub fn run(mut command: Command, stdin: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

pub fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

pub struct Server {
    pub child: Child,
    pub base: String,
    /// `http://` and the address `metrics_listen` bound, where `/metrics` is served.
    pub metrics: String,
    /// Where the child's stderr (its log) goes.
    pub log: PathBuf,
}

impl Server {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    /// `kill -9`: no shutdown hooks, no flush.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGTERM, as an orchestrator stops a service.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Waits up to `within` for the process to exit on its own, and returns its status.
    pub async fn exit_status(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "tessera serve still running {within:?} after SIGTERM: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `tessera serve` in `dir` on port 0, for the API and for metrics (the system picks
/// free ports, so no port is ever reserved and released) and learns the addresses from the
/// lines it prints once bound. Its log, at `log_level`, goes to a file of its own in `dir`;
/// `args` are further flags.
pub async fn serve_with(dir: &Path, log_level: &str, args: &[&str]) -> Server {
    serve_with_env(dir, log_level, args, &[]).await
}

/// As [`serve_with`], with further environment variables.
pub async fn serve_with_env(
    dir: &Path,
    log_level: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Server {
    serve_under(dir, log_level, args, env, None).await
}

/// As [`serve_with`], in a process that may open at most `open_files` files (soft and hard
/// limit, as `ulimit -n` sets them).
pub async fn serve_with_open_files_limit(
    dir: &Path,
    log_level: &str,
    args: &[&str],
    open_files: u64,
) -> Server {
    serve_under(dir, log_level, args, &[], Some(open_files)).await
}

/// `command` run by `sh` after `ulimit -n limit`, with its program, arguments, directory
/// and environment.
fn with_open_files_limit(command: &Command, limit: u64) -> Command {
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
        .arg(command.get_program())
        .args(command.get_args());
    if let Some(dir) = command.get_current_dir() {
        sh.current_dir(dir);
    }
    for (name, value) in command.get_envs() {
        match value {
            Some(value) => sh.env(name, value),
            None => sh.env_remove(name),
        };
    }
    sh
}

async fn serve_under(
    dir: &Path,
    log_level: &str,
    args: &[&str],
    env: &[(&str, &str)],
    open_files: Option<u64>,
) -> Server {
    static STARTS: AtomicUsize = AtomicUsize::new(0);
    let log = dir.join(format!(
        "serve-{}.log",
        STARTS.fetch_add(1, Ordering::Relaxed)
    ));
    let mut command = tessera(dir);
    command
        .env("TESSERA_LOG", log_level)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .args(args)
        .envs(env.iter().copied());
    if let Some(limit) = open_files {
        command = with_open_files_limit(&command, limit);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut child = command.spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads stdout to its end, so the child never writes into a closed pipe.
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        let mut base = None;
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let first_word = |rest: &str| {
                rest.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            };
            if let Some(rest) = line.strip_prefix("tessera listening on ") {
                base = Some(first_word(rest));
            }
            if let Some(rest) = line.strip_prefix("tessera metrics on ") {
                let metrics = first_word(rest);
                let metrics = metrics.trim_end_matches("/metrics").to_owned();
                if let (Some(tx), Some(base)) = (tx.take(), base.take()) {
                    let _ = tx.send((base, metrics));
                }
            }
        }
    });
    let bound = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
        .await
        .unwrap();
    let Ok((base, metrics)) = bound else {
        panic!(
            "tessera serve reported no address: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    };
    assert!(
        base.starts_with("http://127.0.0.1:") && !base.ends_with(":0"),
        "{base}"
    );
    assert!(
        metrics.starts_with("http://127.0.0.1:") && !metrics.ends_with(":0") && metrics != base,
        "{metrics}"
    );
    let server = Server {
        child,
        base,
        metrics,
        log,
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(res) = client.get(server.url("/healthz")).send().await {
            if res.status() == 200 {
                return server;
            }
        }
        assert!(
            Instant::now() < deadline,
            "server did not become healthy: {}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A server of the installation in `dir`, under the shared [`ISSUER`].
pub async fn serve(dir: &Path) -> Server {
    serve_with(dir, "warn", &["--issuer", ISSUER]).await
}

/// `name=value` of the session cookie a login answer sets.
pub fn session_cookie(res: &reqwest::Response) -> String {
    res.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
        .find(|pair| pair.starts_with("__Host-tessera_session="))
        .unwrap()
}

/// What a browser keeps after logging in.
pub struct Browser {
    pub cookie: String,
    pub csrf: String,
}

pub async fn sign_up(client: &reqwest::Client, server: &Server, email: &str) -> String {
    let res = client
        .post(server.url("/v1/users"))
        .json(&json!({ "email": email, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    body["id"].as_str().unwrap().to_owned()
}

pub async fn login(client: &reqwest::Client, server: &Server, email: &str) -> Browser {
    let res = client
        .post(server.url("/v1/login"))
        .json(&json!({ "email": email, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let cookie = session_cookie(&res);
    let body: Value = res.json().await.unwrap();
    Browser {
        cookie,
        csrf: body["csrf_token"].as_str().unwrap().to_owned(),
    }
}

/// The password grant: `(access_token, refresh_token)`.
pub async fn grant(client: &reqwest::Client, server: &Server, email: &str) -> (String, String) {
    let res = client
        .post(server.url("/oauth2/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", email),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let pair: Value = res.json().await.unwrap();
    (
        pair["access_token"].as_str().unwrap().to_owned(),
        pair["refresh_token"].as_str().unwrap().to_owned(),
    )
}

pub async fn refresh(client: &reqwest::Client, server: &Server, token: &str) -> reqwest::Response {
    client
        .post(server.url("/oauth2/token"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", token)])
        .send()
        .await
        .unwrap()
}

/// RFC 7009; 200 whatever the token.
pub async fn revoke(client: &reqwest::Client, server: &Server, token: &str) {
    let res = client
        .post(server.url("/oauth2/revoke"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

pub async fn logout(client: &reqwest::Client, server: &Server, browser: &Browser) {
    let res = client
        .post(server.url("/v1/logout"))
        .header("cookie", &browser.cookie)
        .header("x-csrf-token", &browser.csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
}

pub async fn verify_bearer(client: &reqwest::Client, server: &Server, token: &str) -> u16 {
    client
        .get(server.url("/v1/verify"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

pub async fn verify_cookie(client: &reqwest::Client, server: &Server, cookie: &str) -> u16 {
    client
        .get(server.url("/v1/verify"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The server's JWKS, as any client reads it.
pub async fn jwks(client: &reqwest::Client, server: &Server) -> Value {
    let res = client
        .get(server.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// The `kid`s a running server publishes.
pub async fn published_kids(client: &reqwest::Client, server: &Server) -> Vec<String> {
    jwks(client, server).await["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

/// Polls `probe` until it answers `want`, for up to `within` (generous: the revocation log is
/// polled every 200 ms, and the machine may be loaded).
pub async fn eventually<F, Fut>(what: &str, want: u16, within: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u16>,
{
    let deadline = Instant::now() + within;
    loop {
        let got = probe().await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {got} after {within:?}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `tessera admin-key create`: `(id, secret)`; the id is on stderr, the secret alone on stdout.
/// `args` are further flags (another database, say).
pub fn create_admin_key(dir: &Path, args: &[&str]) -> (String, String) {
    let mut create = tessera(dir);
    create
        .args(["admin-key", "create", "--name", "ops"])
        .args(args);
    let output = run(create, "");
    let secret = stdout(&output).trim().to_owned();
    let stderr = String::from_utf8(output.stderr).unwrap();
    let id = stderr
        .lines()
        .find_map(|line| line.strip_prefix("admin key "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no id in {stderr:?}"))
        .to_owned();
    (id, secret)
}
