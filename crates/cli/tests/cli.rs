//! The real `tessera` binary: administration commands, configuration errors, and durability
//! across `kill -9`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const PASSWORD: &str = "correct horse battery";

fn tessera(dir: &Path) -> Command {
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

fn run(mut command: Command, stdin: &str) -> Output {
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

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn user_add_reads_the_password_from_stdin_and_prints_the_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut add = tessera(dir.path());
    add.args(["user", "add", "Admin@Example.com", "--roles", "admin,ops"]);
    let id = stdout(&run(add, &format!("{PASSWORD}\n")));
    assert_eq!(id.trim().len(), 36, "{id}");
    assert_eq!(id.lines().count(), 1);

    let mut list = tessera(dir.path());
    list.args(["user", "list"]);
    let listing = stdout(&run(list, ""));
    assert!(
        listing.contains(id.trim())
            && listing.contains("admin@example.com")
            && listing.contains("admin,ops"),
        "{listing}"
    );

    let mut weak = tessera(dir.path());
    weak.args(["user", "add", "b@example.com"]);
    let output = run(weak, "short\n");
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("8 to 1024"), "{stderr}");
}

#[test]
fn master_key_file_is_created_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut list = tessera(dir.path());
    list.args(["keys", "list"]);
    let keys = stdout(&run(list, ""));
    assert!(keys.contains("EdDSA") && keys.contains("active"), "{keys}");
    let meta = std::fs::metadata(dir.path().join("tessera.key")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
    let db = std::fs::read(dir.path().join("tessera.db")).unwrap();
    let key_text = std::fs::read_to_string(dir.path().join("tessera.key")).unwrap();
    assert!(!db
        .windows(key_text.trim().len())
        .any(|w| w == key_text.trim().as_bytes()));
}

#[test]
fn administration_commands_never_rotate_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut list = tessera(dir.path());
    list.args(["keys", "list"]);
    let before = stdout(&run(list, ""));
    // Run with another signing_alg, as an admin might from a folder without the config file.
    let mut list = tessera(dir.path());
    list.env("TESSERA_SIGNING_ALG", "ES256")
        .args(["user", "list"]);
    stdout(&run(list, ""));
    let mut list = tessera(dir.path());
    list.args(["keys", "list"]);
    assert_eq!(stdout(&run(list, "")), before);
}

#[test]
fn admin_key_create_prints_the_key_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut create = tessera(dir.path());
    create.args(["admin-key", "create", "--name", "ops"]);
    let out = stdout(&run(create, ""));
    assert_eq!(out.lines().count(), 1);
    assert_eq!(out.trim().len(), 43);
}

#[test]
fn keys_rotate_then_list_shows_the_retired_key_still_published() {
    let dir = tempfile::tempdir().unwrap();
    let mut rotate = tessera(dir.path());
    rotate.args(["keys", "rotate"]);
    let kid = stdout(&run(rotate, ""));
    let mut list = tessera(dir.path());
    list.args(["keys", "list"]);
    let listing = stdout(&run(list, ""));
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 2, "{listing}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(kid.trim()) && l.ends_with("active")),
        "{listing}"
    );
    assert!(
        lines.iter().any(|l| l.contains("retired, published until")),
        "{listing}"
    );
}

#[test]
fn config_errors_are_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tessera.toml"), "listn = \"127.0.0.1:1\"\n").unwrap();
    let mut bad = tessera(dir.path());
    bad.args(["keys", "list"]);
    let output = run(bad, "");
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.trim(), "error: unknown key `listn` in tessera.toml");

    let mut bad = tessera(dir.path());
    bad.args(["--config", "missing.toml", "keys", "list"]);
    assert!(!run(bad, "").status.success());

    std::fs::remove_file(dir.path().join("tessera.toml")).unwrap();
    let mut bad = tessera(dir.path());
    bad.env("TESSERA_ACCESS_TOKEN_TTL", "forever")
        .args(["keys", "list"]);
    let output = run(bad, "");
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("access_token_ttl") && stderr.contains("TESSERA_ACCESS_TOKEN_TTL"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1);
}

#[test]
fn every_command_has_help() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["user", "add", "--help"],
        vec!["admin-key", "create", "--help"],
        vec!["keys", "rotate", "--help"],
        vec!["token", "inspect", "--help"],
    ] {
        let mut command = tessera(dir.path());
        command.args(&args);
        let out = stdout(&run(command, ""));
        assert!(out.contains("Usage"), "{args:?}: {out}");
    }
}

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn serve(dir: &Path, port: u16) -> Server {
    let mut command = tessera(dir);
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = command.spawn().unwrap();
    let server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(res) = client.get(format!("{}/healthz", server.base)).send().await {
            if res.status() == 200 {
                return server;
            }
        }
        assert!(Instant::now() < deadline, "server did not become healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn acknowledged_sessions_and_refresh_tokens_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let client = reqwest::Client::new();
    let server = serve(dir.path(), port).await;
    let email = "durable@example.com";
    let res = client
        .post(format!("{}/v1/users", server.base))
        .json(&serde_json::json!({ "email": email, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let res = client
        .post(format!("{}/v1/login", server.base))
        .json(&serde_json::json!({ "email": email, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let cookie = res.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let pair: Value = client
        .post(format!("{}/oauth2/token", server.base))
        .form(&[
            ("grant_type", "password"),
            ("username", email),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let refresh = pair["refresh_token"].as_str().unwrap().to_owned();
    let access = pair["access_token"].as_str().unwrap().to_owned();

    drop(server); // Child::kill sends SIGKILL: no shutdown hooks, no flush.
    let server = serve(dir.path(), port).await;

    let res = client
        .get(format!("{}/v1/session", server.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "the cookie survived");
    let res = client
        .get(format!("{}/v1/verify", server.base))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "the signing key survived");
    let res = client
        .post(format!("{}/oauth2/token", server.base))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "the refresh token survived");
}

#[tokio::test]
async fn token_inspect_decodes_and_verifies_locally() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = serve(dir.path(), port).await;
    let client = reqwest::Client::new();
    let email = "inspect@example.com";
    client
        .post(format!("{}/v1/users", server.base))
        .json(&serde_json::json!({ "email": email, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    let pair: Value = client
        .post(format!("{}/oauth2/token", server.base))
        .form(&[
            ("grant_type", "password"),
            ("username", email),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = pair["access_token"].as_str().unwrap();
    let mut inspect = tessera(dir.path());
    let listen = format!("127.0.0.1:{port}"); // same configuration, so the same issuer
    inspect.args(["token", "inspect", access, "--listen", &listen]);
    let report: Value = serde_json::from_str(&stdout(&run(inspect, ""))).unwrap();
    assert_eq!(report["valid"], true, "{report}");
    assert_eq!(report["header"]["typ"], "at+jwt");
    assert_eq!(report["claims"]["iss"], server.base);

    // Flip one character in the middle of the signature: valid base64url, wrong signature.
    let signature_start = access.rfind('.').unwrap() + 1;
    let middle = signature_start + (access.len() - signature_start) / 2;
    let flipped = if &access[middle..=middle] == "A" {
        "B"
    } else {
        "A"
    };
    let tampered = format!("{}{flipped}{}", &access[..middle], &access[middle + 1..]);
    let mut inspect = tessera(dir.path());
    inspect.args(["token", "inspect", &tampered, "--listen", &listen]);
    let report: Value = serde_json::from_str(&stdout(&run(inspect, ""))).unwrap();
    assert_eq!(report["valid"], false, "{report}");
    assert_eq!(report["error"], "token signature is invalid", "{report}");
}
