//! The real `tessera` binary: administration commands, configuration errors, servers started
//! as real processes (on port 0, reporting the port they bound), several of them on one
//! SQLite file, administration of a running server, durability across `kill -9`, and what
//! reaches the logs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

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

    // NIST SP 800-63B §5.1.1.2, as at sign-up: the message names the rule.
    for (email, password, rule) in [
        ("c@example.com", "Password123", "common"),
        ("margaret@example.com", "margaret's secret garden", "email"),
    ] {
        let mut weak = tessera(dir.path());
        weak.args(["user", "add", email]);
        let output = run(weak, &format!("{password}\n"));
        assert!(!output.status.success(), "{password}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(stderr.contains(rule), "{password}: {stderr}");
    }
    let listing = stdout(&run(list_users(dir.path()), ""));
    assert!(
        !listing.contains("c@example.com") && !listing.contains("margaret@"),
        "{listing}"
    );
}

fn list_users(dir: &std::path::Path) -> std::process::Command {
    let mut list = tessera(dir);
    list.args(["user", "list"]);
    list
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

/// The command groups and commands named in a `--help` text's `Commands:` section.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| line.trim() != "Commands:")
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_command_has_help() {
    let dir = tempfile::tempdir().unwrap();
    // Walks the command tree as a user would: `--help` on the program, then on every command
    // it lists, and on every command those list.
    let mut seen = BTreeSet::new();
    let mut pending = vec![Vec::<String>::new()];
    while let Some(path) = pending.pop() {
        let mut command = tessera(dir.path());
        command.args(&path).arg("--help");
        let out = stdout(&run(command, ""));
        let usage = format!(
            "Usage: {}",
            ["tessera".to_owned()]
                .iter()
                .chain(&path)
                .cloned()
                .collect::<Vec<_>>()
                .join(" ")
        );
        assert!(out.contains(&usage), "{path:?}: {out}");
        for name in subcommands(&out) {
            let mut child = path.clone();
            child.push(name);
            pending.push(child);
        }
        if !path.is_empty() {
            seen.insert(path.join(" "));
        }
    }
    // The walk found every command (it cannot pass by finding none).
    let expected: BTreeSet<String> = [
        "serve",
        "user",
        "user add",
        "user list",
        "user set-roles",
        "user unlock",
        "user delete",
        "user recovery-link",
        "admin-key",
        "admin-key create",
        "admin-key revoke",
        "keys",
        "keys list",
        "keys rotate",
        "keys retire",
        "token",
        "token inspect",
        "bench",
        "completions",
        "man",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(seen, expected);
}

/// A `tessera serve` child process. Dropping it kills it with SIGKILL.

#[tokio::test]
async fn serve_on_port_0_reports_the_bound_port_and_names_it_in_the_default_issuer() {
    let dir = tempfile::tempdir().unwrap();
    // No `issuer`: the default derives from `listen`.
    let mut server = serve_with(dir.path(), "warn", &[]).await;
    let client = reqwest::Client::new();
    let metadata: Value = client
        .get(server.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The issuer and its endpoints name the port clients reach, not `:0`.
    assert_eq!(metadata["issuer"], server.base.as_str(), "{metadata}");
    assert_eq!(
        metadata["token_endpoint"],
        server.url("/oauth2/token").as_str()
    );
    server.kill();
    assert!(
        server
            .log()
            .contains("tokens will not verify after a restart"),
        "{}",
        server.log()
    );
}

#[tokio::test]
async fn acknowledged_sessions_and_refresh_tokens_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let mut server = serve(dir.path()).await;
    let email = "durable@example.com";
    sign_up(&client, &server, email).await;
    let browser = login(&client, &server, email).await;
    let (access, refresh_token) = grant(&client, &server, email).await;

    server.kill();
    let server = serve(dir.path()).await;

    let res = client
        .get(server.url("/v1/session"))
        .header("cookie", &browser.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "the cookie survived");
    assert_eq!(
        verify_bearer(&client, &server, &access).await,
        200,
        "the signing key survived"
    );
    assert_eq!(
        refresh(&client, &server, &refresh_token).await.status(),
        200,
        "the refresh token survived"
    );
}

#[tokio::test]
async fn token_inspect_decodes_and_verifies_locally() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path()).await;
    let client = reqwest::Client::new();
    let email = "inspect@example.com";
    sign_up(&client, &server, email).await;
    let (access, _) = grant(&client, &server, email).await;
    let mut inspect = tessera(dir.path());
    // The same configuration as the server's, so the same issuer.
    inspect.args(["token", "inspect", &access, "--issuer", ISSUER]);
    let report: Value = serde_json::from_str(&stdout(&run(inspect, ""))).unwrap();
    assert_eq!(report["valid"], true, "{report}");
    assert_eq!(report["header"]["typ"], "at+jwt");
    assert_eq!(report["claims"]["iss"], ISSUER);

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
    inspect.args(["token", "inspect", &tampered, "--issuer", ISSUER]);
    let report: Value = serde_json::from_str(&stdout(&run(inspect, ""))).unwrap();
    assert_eq!(report["valid"], false, "{report}");
    assert_eq!(report["error"], "token signature is invalid", "{report}");
}

#[tokio::test]
async fn two_servers_on_one_database_refuse_what_the_other_revoked() {
    // One working directory: one database file, one master key file, one issuer.
    let dir = tempfile::tempdir().unwrap();
    let a = serve(dir.path()).await;
    let b = serve(dir.path()).await;
    let client = reqwest::Client::new();
    let email = "shared@example.com";
    sign_up(&client, &a, email).await;
    let (denied, _) = grant(&client, &a, email).await;
    let (family_access, family_refresh) = grant(&client, &a, email).await;
    let browser = login(&client, &b, email).await;
    // Each accepts what the other issued (and caches the cookie session it has seen).
    for server in [&a, &b] {
        for token in [&denied, &family_access] {
            assert_eq!(verify_bearer(&client, server, token).await, 200);
        }
        assert_eq!(verify_cookie(&client, server, &browser.cookie).await, 200);
    }

    // A revokes one access token (its jti) and one refresh family (with its access token).
    revoke(&client, &a, &denied).await;
    revoke(&client, &a, &family_refresh).await;
    assert_eq!(verify_bearer(&client, &a, &denied).await, 401);
    assert_eq!(verify_bearer(&client, &a, &family_access).await, 401);
    let within = Duration::from_secs(5);
    eventually("B, the access token A revoked", 401, within, || {
        verify_bearer(&client, &b, &denied)
    })
    .await;
    eventually("B, the family A revoked", 401, within, || {
        verify_bearer(&client, &b, &family_access)
    })
    .await;
    assert_eq!(
        refresh(&client, &b, &family_refresh).await.status(),
        400,
        "B refuses the revoked refresh token"
    );

    // B signs the browser out; A stops accepting its cookie.
    logout(&client, &b, &browser).await;
    assert_eq!(verify_cookie(&client, &b, &browser.cookie).await, 401);
    eventually("A, the cookie B signed out", 401, within, || {
        verify_cookie(&client, &a, &browser.cookie)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_starting_at_once_on_a_fresh_database_agree_on_one_signing_key() {
    let dir = tempfile::tempdir().unwrap();
    // Started together: each creates (or finds) the master key file and the first signing key.
    let (a, b, c) = tokio::join!(serve(dir.path()), serve(dir.path()), serve(dir.path()));
    let mut list = tessera(dir.path());
    list.args(["keys", "list"]);
    let listing = stdout(&run(list, ""));
    let active: Vec<&str> = listing.lines().filter(|l| l.ends_with("active")).collect();
    assert_eq!(active.len(), 1, "exactly one active key: {listing}");
    assert_eq!(listing.lines().count(), 1, "and no other key: {listing}");

    let client = reqwest::Client::new();
    let email = "three@example.com";
    sign_up(&client, &a, email).await;
    let servers = [&a, &b, &c];
    let mut tokens = Vec::new();
    for server in servers {
        tokens.push(grant(&client, server, email).await.0);
    }
    for server in servers {
        for token in &tokens {
            assert_eq!(
                verify_bearer(&client, server, token).await,
                200,
                "{} accepts every node's token",
                server.base
            );
        }
    }
}

#[tokio::test]
async fn keys_retire_withdraws_the_key_from_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path()).await;
    let client = reqwest::Client::new();
    let email = "keys@example.com";
    sign_up(&client, &server, email).await;
    let (old_token, _) = grant(&client, &server, email).await;
    let old_kids = published_kids(&client, &server).await;
    assert_eq!(old_kids.len(), 1);

    let mut rotate = tessera(dir.path());
    rotate.args(["keys", "rotate"]);
    let new_kid = stdout(&run(rotate, "")).trim().to_owned();
    assert_eq!(
        verify_bearer(&client, &server, &old_token).await,
        200,
        "a rotated-out key still verifies its tokens"
    );

    let mut retire = tessera(dir.path());
    retire.args(["keys", "retire", &old_kids[0]]);
    let output = run(retire, "");
    assert!(output.status.success(), "{output:?}");

    // The server knows the old kid, so only the withdrawal on the revocation log can make it
    // drop the key this soon (its periodic key reload is a minute away).
    eventually(
        "the withdrawn key's token",
        401,
        Duration::from_secs(5),
        || verify_bearer(&client, &server, &old_token),
    )
    .await;
    let kids = published_kids(&client, &server).await;
    assert_eq!(kids, [new_kid], "JWKS no longer lists the withdrawn key");
    let (new_token, _) = grant(&client, &server, email).await;
    assert_eq!(verify_bearer(&client, &server, &new_token).await, 200);

    // The active key cannot be withdrawn; an unknown kid is an error; both one line.
    for kid in [kids[0].as_str(), "no-such-kid"] {
        let mut retire = tessera(dir.path());
        retire.args(["keys", "retire", kid]);
        let output = run(retire, "");
        assert!(!output.status.success());
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(kid), "{stderr}");
    }
}

#[tokio::test]
async fn admin_key_revoke_stops_the_key_on_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path()).await;
    let client = reqwest::Client::new();
    let email = "admin-key@example.com";
    let user = sign_up(&client, &server, email).await;
    let (access, _) = grant(&client, &server, email).await;
    let (id, secret) = create_admin_key(dir.path(), &[]);

    let introspect = || {
        client
            .post(server.url("/oauth2/introspect"))
            .bearer_auth(&secret)
            .form(&[("token", access.as_str())])
            .send()
    };
    let sessions = || {
        client
            .get(server.url(&format!("/v1/admin/users/{user}/sessions")))
            .bearer_auth(&secret)
            .send()
    };
    let res = introspect().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["active"], true);
    assert_eq!(sessions().await.unwrap().status(), 200);

    let mut revoke = tessera(dir.path());
    revoke.args(["admin-key", "revoke", &id]);
    stdout(&run(revoke, ""));

    // Admin keys are read from the store on every request: refused at once.
    assert_eq!(introspect().await.unwrap().status(), 401);
    assert_eq!(sessions().await.unwrap().status(), 401);

    let mut again = tessera(dir.path());
    again.args(["admin-key", "revoke", &id]);
    let output = run(again, "");
    assert!(!output.status.success(), "a revoked key is not live");
}

#[tokio::test]
async fn user_set_roles_reaches_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path()).await;
    let client = reqwest::Client::new();
    let email = "roles@example.com";
    let user = sign_up(&client, &server, email).await;
    let (old_access, refresh_token) = grant(&client, &server, email).await;
    assert_eq!(verify_bearer(&client, &server, &old_access).await, 200);

    let mut set_roles = tessera(dir.path());
    set_roles.args(["user", "set-roles", &user, "ops,editor"]);
    assert_eq!(
        stdout(&run(set_roles, "")).trim(),
        format!("{user}\teditor,ops")
    );

    eventually(
        "the access token minted before the change",
        401,
        Duration::from_secs(5),
        || verify_bearer(&client, &server, &old_access),
    )
    .await;
    // The refresh family stays valid and the next refresh carries the new roles.
    let res = refresh(&client, &server, &refresh_token).await;
    assert_eq!(res.status(), 200);
    let pair: Value = res.json().await.unwrap();
    let res = client
        .get(server.url("/v1/verify"))
        .bearer_auth(pair["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-auth-roles"], "editor,ops");
}

/// Everything the burst in `kill_9_under_load_loses_no_acknowledged_effect` was told with a
/// 2xx, and so must hold after the restart.
#[derive(Default)]
struct Acknowledged {
    /// Emails whose sign-up answered 201.
    users: Vec<String>,
    /// Session cookies whose logout answered 204.
    logged_out: Vec<String>,
    /// Access tokens whose RFC 7009 revocation answered 200.
    revoked_access: Vec<String>,
    /// `(refresh token, an access token of its family)` whose refresh token was revoked.
    revoked_families: Vec<(String, String)>,
    /// `(spent, successor)` of refreshes that answered 200.
    rotations: Vec<(String, String)>,
    /// Answers a live server should never give (checked after the burst).
    surprises: Vec<String>,
    /// Requests sent on a connection the server had accepted that got no complete answer
    /// (reset or cut off); a connection refused at connect time is not one.
    incomplete: Vec<String>,
    /// Answers carrying `Connection: close`: given while the server was shutting down.
    closing_answers: usize,
}

/// One request of the burst: `Some((session cookie pair, body))` when the whole answer
/// arrived with status `want`; `None` when the connection was refused (the server stopped
/// listening), when it failed after the server had accepted it (recorded as incomplete), or
/// when the answer had another status (recorded as a surprise).
async fn expect(
    request: reqwest::RequestBuilder,
    want: u16,
    what: &str,
    acked: &Mutex<Acknowledged>,
) -> Option<(Option<String>, Value)> {
    let incomplete = |e: &reqwest::Error| {
        // The whole chain: the top error says only "error sending request".
        let mut text = format!("{what}: {e}");
        let mut cause = std::error::Error::source(e);
        while let Some(next) = cause {
            let _ = write!(text, ": {next}");
            cause = next.source();
        }
        acked.lock().unwrap().incomplete.push(text);
    };
    let res = match request.send().await {
        Ok(res) => res,
        Err(e) if e.is_connect() => return None,
        Err(e) => {
            incomplete(&e);
            return None;
        }
    };
    if res
        .headers()
        .get("connection")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"))
    {
        acked.lock().unwrap().closing_answers += 1;
    }
    let status = res.status().as_u16();
    let cookie = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .find(|pair| pair.starts_with("__Host-tessera_session="))
        .map(str::to_owned);
    let bytes = match res.bytes().await {
        Ok(bytes) => bytes,
        Err(e) => {
            incomplete(&e);
            return None;
        }
    };
    if status != want {
        let body = String::from_utf8_lossy(&bytes);
        acked
            .lock()
            .unwrap()
            .surprises
            .push(format!("{what} answered {status}: {body}"));
        return None;
    }
    Some((
        cookie,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// One round of the burst for a fresh user: sign-up, cookie login, password grant, refresh
/// rotation, access-token revocation, a second grant whose refresh family is revoked, and
/// logout, recording each acknowledged effect. `None` once the server stops answering.
async fn round(
    client: &reqwest::Client,
    base: &str,
    email: &str,
    acked: &Mutex<Acknowledged>,
) -> Option<()> {
    let url = |path: &str| format!("{base}{path}");
    let credentials = json!({ "email": email, "password": PASSWORD });
    let grant = || {
        client.post(url("/oauth2/token")).form(&[
            ("grant_type", "password"),
            ("username", email),
            ("password", PASSWORD),
        ])
    };
    let refresh = |token: &str| {
        client
            .post(url("/oauth2/token"))
            .form(&[("grant_type", "refresh_token"), ("refresh_token", token)])
    };
    let revoke = |token: &str| client.post(url("/oauth2/revoke")).form(&[("token", token)]);
    let token = |body: &Value, name: &str| body[name].as_str().unwrap().to_owned();

    expect(
        client.post(url("/v1/users")).json(&credentials),
        201,
        "sign-up",
        acked,
    )
    .await?;
    acked.lock().unwrap().users.push(email.to_owned());

    let (cookie, login) = expect(
        client.post(url("/v1/login")).json(&credentials),
        200,
        "login",
        acked,
    )
    .await?;
    let cookie = cookie.unwrap();
    let csrf = token(&login, "csrf_token");

    let (_, pair) = expect(grant(), 200, "password grant", acked).await?;
    let spent = token(&pair, "refresh_token");
    let (_, rotated) = expect(refresh(&spent), 200, "refresh", acked).await?;
    let access = token(&rotated, "access_token");
    let successor = token(&rotated, "refresh_token");
    acked.lock().unwrap().rotations.push((spent, successor));

    expect(revoke(&access), 200, "access token revocation", acked).await?;
    acked.lock().unwrap().revoked_access.push(access);

    let (_, family) = expect(grant(), 200, "second password grant", acked).await?;
    let family_refresh = token(&family, "refresh_token");
    expect(
        revoke(&family_refresh),
        200,
        "refresh token revocation",
        acked,
    )
    .await?;
    acked
        .lock()
        .unwrap()
        .revoked_families
        .push((family_refresh, token(&family, "access_token")));

    let logout = client
        .post(url("/v1/logout"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf);
    expect(logout, 204, "logout", acked).await?;
    acked.lock().unwrap().logged_out.push(cookie);
    Some(())
}

/// Rounds for fresh users until `rounds` are done or the server stops answering.
async fn burst(base: String, task: usize, rounds: usize, acked: Arc<Mutex<Acknowledged>>) {
    let client = reqwest::Client::new();
    for n in 0..rounds {
        let email = format!("load-{task}-{n}@example.com");
        if round(&client, &base, &email, &acked).await.is_none() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_effect() {
    const TASKS: usize = 4;
    const ROUNDS: usize = 12;
    /// Logouts acknowledged before the kill: well inside the burst of TASKS * ROUNDS.
    const KILL_AFTER: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    // The shortest grace window the configuration takes: a spent refresh token replayed
    // after it is reuse.
    let grace = Duration::from_secs(1);
    // Every burst task signs up from one address: lift the sign-up limit.
    let args = [
        "--issuer",
        ISSUER,
        "--refresh-grace",
        "1s",
        "--signup-ip-max",
        "100000",
    ];
    let mut server = serve_with(dir.path(), "warn", &args).await;
    let acked = Arc::new(Mutex::new(Acknowledged::default()));
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| tokio::spawn(burst(server.base.clone(), task, ROUNDS, Arc::clone(&acked))))
        .collect();

    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.lock().unwrap().logged_out.len() < KILL_AFTER {
        assert!(
            Instant::now() < deadline,
            "the burst stalled: {:?}",
            acked.lock().unwrap().surprises
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.kill(); // mid-burst: requests are in flight
    let killed = Instant::now();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("a burst task did not stop after the kill")
            .unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(acked.surprises.is_empty(), "{:?}", acked.surprises);
    assert!(
        acked.logged_out.len() < TASKS * ROUNDS,
        "the kill came after the burst"
    );
    eprintln!(
        "acknowledged before the kill: {} sign-ups, {} rotations, {} access revocations, \
         {} family revocations, {} logouts",
        acked.users.len(),
        acked.rotations.len(),
        acked.revoked_access.len(),
        acked.revoked_families.len(),
        acked.logged_out.len()
    );

    let server = serve_with(dir.path(), "warn", &args).await;
    assert_effects_kept(&server, &acked, killed, grace).await;
}

/// After a restart: every effect in `acked` holds on `server`. `stopped` is when the previous
/// server stopped, which every acknowledged rotation preceded.
async fn assert_effects_kept(
    server: &Server,
    acked: &Acknowledged,
    stopped: Instant,
    grace: Duration,
) {
    let client = reqwest::Client::new();
    for email in &acked.users {
        let res = client
            .post(server.url("/v1/login"))
            .json(&json!({ "email": email, "password": PASSWORD }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{email} can log in");
    }
    for access in &acked.revoked_access {
        assert_eq!(verify_bearer(&client, server, access).await, 401);
    }
    for (refresh_token, access) in &acked.revoked_families {
        assert_eq!(refresh(&client, server, refresh_token).await.status(), 400);
        assert_eq!(verify_bearer(&client, server, access).await, 401);
    }
    for cookie in &acked.logged_out {
        assert_eq!(verify_cookie(&client, server, cookie).await, 401);
    }
    // Every rotation was acknowledged before the stop; past the grace window (with a margin
    // for a coarse clock), replaying its spent token is reuse, not a concurrent refresh.
    let past_grace = stopped + grace * 2;
    if let Some(wait) = past_grace.checked_duration_since(Instant::now()) {
        tokio::time::sleep(wait).await;
    }
    // The successor first: presenting the spent token is reuse, which revokes the family.
    for (spent, successor) in &acked.rotations {
        assert_eq!(
            refresh(&client, server, successor).await.status(),
            200,
            "the successor works"
        );
        assert_eq!(
            refresh(&client, server, spent).await.status(),
            400,
            "the spent token is refused"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_answers_every_accepted_request_exits_0_and_keeps_every_effect() {
    const TASKS: usize = 4;
    const ROUNDS: usize = 12;
    /// Logouts acknowledged before the signal: well inside the burst of TASKS * ROUNDS.
    const SIGNAL_AFTER: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let grace = Duration::from_secs(1);
    // Every burst task signs up from one address: lift the sign-up limit.
    let args = [
        "--issuer",
        ISSUER,
        "--refresh-grace",
        "1s",
        "--signup-ip-max",
        "100000",
    ];
    let mut server = serve_with(dir.path(), "warn", &args).await;
    let acked = Arc::new(Mutex::new(Acknowledged::default()));
    // Each task has its own client, so its own keep-alive connection.
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| tokio::spawn(burst(server.base.clone(), task, ROUNDS, Arc::clone(&acked))))
        .collect();

    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.lock().unwrap().logged_out.len() < SIGNAL_AFTER {
        assert!(
            Instant::now() < deadline,
            "the burst stalled: {:?}",
            acked.lock().unwrap().surprises
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.terminate(); // mid-burst: requests are in flight
    let signalled = Instant::now();
    let status = server.exit_status(Duration::from_secs(60)).await;
    let took = signalled.elapsed();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}: {}",
        server.log()
    );
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("a burst task did not stop after the server exited")
            .unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(acked.surprises.is_empty(), "{:?}", acked.surprises);
    assert!(
        acked.incomplete.is_empty(),
        "accepted requests without a complete answer: {:?}",
        acked.incomplete
    );
    assert!(
        acked.logged_out.len() < TASKS * ROUNDS,
        "the signal came after the burst"
    );
    let log = server.log();
    assert!(
        !log.contains("dropped") && !log.contains("aborted"),
        "nothing was cut off at a bound: {log}"
    );
    eprintln!(
        "exited 0 {took:?} after SIGTERM; {} answers given while shutting down; acknowledged: \
         {} sign-ups, {} rotations, {} access revocations, {} family revocations, {} logouts",
        acked.closing_answers,
        acked.users.len(),
        acked.rotations.len(),
        acked.revoked_access.len(),
        acked.revoked_families.len(),
        acked.logged_out.len()
    );

    let server = serve_with(dir.path(), "warn", &args).await;
    assert_effects_kept(&server, &acked, signalled, grace).await;
}

/// `last_seen_at` of the caller's session, as `GET /v1/session` shows it.
async fn last_seen(client: &reqwest::Client, server: &Server, cookie: &str) -> String {
    let res = client
        .get(server.url("/v1/session"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    body["session"]["last_seen_at"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn sigterm_writes_a_pending_last_seen_at_to_the_store() {
    // `cached` mode (the default) batches cookie touches; with a 12 s idle timeout a
    // session's `last_seen_at` is due a write 6 s after the last one.
    const IDLE: &str = "12s";
    const TOUCH_DUE: Duration = Duration::from_millis(6_500);
    let dir = tempfile::tempdir().unwrap();
    let (_, admin_key) = create_admin_key(dir.path(), &[]);
    let args = ["--issuer", ISSUER, "--session-idle-timeout", IDLE];
    let mut server = serve_with(dir.path(), "warn", &args).await;
    // No idle keep-alive connection to linger over at shutdown.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let email = "last-seen@example.com";
    let user = sign_up(&client, &server, email).await;
    let browser = login(&client, &server, email).await;
    let at_login = last_seen(&client, &server, &browser.cookie).await; // now held in memory

    tokio::time::sleep(TOUCH_DUE).await;
    last_seen(&client, &server, &browser.cookie).await; // due: moved in memory, pending
    let touched = last_seen(&client, &server, &browser.cookie).await;
    assert_ne!(touched, at_login, "the request moved last_seen_at");
    // At once: the batch is written every 2 s, and shutdown must write what it holds.
    server.terminate();
    let status = server.exit_status(Duration::from_secs(60)).await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}: {}",
        server.log()
    );

    // The store's value, read with an admin key so no cookie request touches it again.
    let server = serve_with(dir.path(), "warn", &args).await;
    let res = client
        .get(server.url(&format!("/v1/admin/users/{user}/sessions")))
        .bearer_auth(&admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let sessions: Value = res.json().await.unwrap();
    assert_eq!(sessions.as_array().unwrap().len(), 1, "{sessions}");
    assert_eq!(
        sessions[0]["last_seen_at"].as_str().unwrap(),
        touched,
        "the pending last_seen_at reached the store at shutdown (login: {at_login})"
    );
}

#[tokio::test]
async fn secrets_never_reach_the_logs_at_info_or_trace() {
    for level in ["info", "trace"] {
        let dir = tempfile::tempdir().unwrap();
        let (_, admin_key) = create_admin_key(dir.path(), &[]);
        let mut server = serve_with(dir.path(), level, &["--issuer", ISSUER]).await;
        let client = reqwest::Client::new();
        let email = "secretive@example.com";
        sign_up(&client, &server, email).await;

        let browser = login(&client, &server, email).await;
        assert_eq!(verify_cookie(&client, &server, &browser.cookie).await, 200);
        let res = client
            .get(server.url("/v1/session"))
            .header("cookie", &browser.cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);

        let (access, first_refresh) = grant(&client, &server, email).await;
        assert_eq!(verify_bearer(&client, &server, &access).await, 200);
        let res = refresh(&client, &server, &first_refresh).await;
        assert_eq!(res.status(), 200);
        let pair: Value = res.json().await.unwrap();
        let second_access = pair["access_token"].as_str().unwrap().to_owned();
        let second_refresh = pair["refresh_token"].as_str().unwrap().to_owned();

        let res = client
            .post(server.url("/oauth2/introspect"))
            .bearer_auth(&admin_key)
            .form(&[("token", second_access.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(res.json::<Value>().await.unwrap()["active"], true);
        revoke(&client, &server, &access).await;
        revoke(&client, &server, &second_refresh).await;
        logout(&client, &server, &browser).await;
        let res = client
            .post(server.url("/v1/login"))
            .json(&json!({ "email": email, "password": "wrong horse battery" }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);

        server.kill();
        let log = server.log();
        // Not vacuous: the log holds what happened.
        for line in [
            "user created",
            "signed in",
            "access token revoked",
            "refresh family revoked",
            "signed out",
        ] {
            assert!(
                log.contains(line),
                "{level}: no {line:?} in the log:\n{log}"
            );
        }
        if level == "trace" {
            assert!(
                log.contains("sqlx::query"),
                "trace shows dependencies too:\n{log}"
            );
        }
        let signature = |token: &str| token.rsplit('.').next().unwrap().to_owned();
        let cookie_value = browser.cookie.split_once('=').unwrap().1.to_owned();
        for (what, secret) in [
            ("password", PASSWORD.to_owned()),
            ("wrong password", "wrong horse battery".to_owned()),
            ("cookie", cookie_value),
            ("CSRF token", browser.csrf.clone()),
            ("first refresh token", first_refresh.clone()),
            ("second refresh token", second_refresh.clone()),
            ("access token", access.clone()),
            ("access token signature", signature(&access)),
            ("second access token", second_access.clone()),
            ("second access token signature", signature(&second_access)),
            ("admin key", admin_key.clone()),
        ] {
            assert!(
                !log.contains(&secret),
                "{level}: the {what} reached the log"
            );
        }
        eprintln!("{level}: {} log lines checked", log.lines().count());
    }
}

/// An operation only the CLI offers, failing in the store: it exits non-zero with one line,
/// leaves no trace, and works once the store does. The failure is real: another writer holds
/// the SQLite write lock (as a long transaction on another node would), so the command's own
/// transaction cannot begin within the busy timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // every command only the CLI offers, failed then retried
async fn cli_changes_fail_cleanly_while_the_store_cannot_write_and_work_after() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    // A first user and the first signing key, before the lock.
    let mut add = tessera(&path);
    add.args(["user", "add", "first@example.com"]);
    let user = stdout(&run(add, &format!("{PASSWORD}\n")))
        .trim()
        .to_owned();
    let listing = |what: &[&str]| {
        let mut list = tessera(&path);
        list.args(what);
        stdout(&run(list, ""))
    };
    // An admin key to revoke, and a retired signing key to withdraw.
    let (admin_key, _) = create_admin_key(&path, &[]);
    let retired = listing(&["keys", "list"])
        .split('\t')
        .next()
        .unwrap()
        .to_owned();
    listing(&["keys", "rotate"]);
    let users_before = listing(&["user", "list"]);
    let keys_before = listing(&["keys", "list"]);

    let database = format!("sqlite://{}", path.join("tessera.db").display());
    let store = tessera_store::open(&database).await.unwrap();
    let lock = store.begin().await.unwrap();
    let commands: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["user".into(), "add".into(), "second@example.com".into()],
            "correct horse battery\n",
        ),
        (
            vec![
                "user".into(),
                "set-roles".into(),
                user.clone(),
                "ops".into(),
            ],
            "",
        ),
        (vec!["keys".into(), "rotate".into()], ""),
        (
            vec![
                "admin-key".into(),
                "create".into(),
                "--name".into(),
                "x".into(),
            ],
            "",
        ),
        (
            vec!["admin-key".into(), "revoke".into(), admin_key.clone()],
            "",
        ),
        (vec!["keys".into(), "retire".into(), retired.clone()], ""),
    ];
    let failed: Vec<Output> = std::thread::scope(|scope| {
        let running: Vec<_> = commands
            .iter()
            .map(|(args, stdin)| {
                let path = &path;
                scope.spawn(move || {
                    let mut command = tessera(path);
                    command.args(args);
                    run(command, stdin)
                })
            })
            .collect();
        running.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for ((args, _), output) in commands.iter().zip(&failed) {
        assert!(
            !output.status.success(),
            "{args:?} succeeded under the lock"
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?} printed a result");
    }
    drop(lock);

    assert_eq!(
        listing(&["user", "list"]),
        users_before,
        "no user, no role change"
    );
    assert_eq!(
        listing(&["keys", "list"]),
        keys_before,
        "no key made, none withdrawn"
    );
    // The admin key is still live and the retired key still there: revoking and withdrawing
    // them now succeeds (each refuses an unknown or already revoked target).
    for (args, stdin) in &commands {
        let mut command = tessera(&path);
        command.args(args);
        stdout(&run(command, stdin));
    }
    let users = listing(&["user", "list"]);
    assert!(users.contains("second@example.com"), "{users}");
    assert!(
        users
            .lines()
            .any(|l| l.starts_with(&user) && l.contains("\tops\t")),
        "{users}"
    );
    let keys = listing(&["keys", "list"]);
    assert_eq!(
        keys.lines().count(),
        2,
        "one rotated in, one withdrawn: {keys}"
    );
    assert!(!keys.contains(&retired), "{keys}");
}

#[tokio::test]
async fn metrics_are_served_on_metrics_listen_only_at_the_address_printed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    // `serve_with` gives `--metrics-listen 127.0.0.1:0` and reads the address the start
    // printed (it checks that the port is not 0 and not the API's).
    let server = serve_with(dir.path(), "info", &["--issuer", ISSUER]).await;
    let client = reqwest::Client::new();
    let res = client
        .get(format!("{}/metrics", server.metrics))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    assert!(
        text.contains(
            "tessera_http_requests_total{route=\"/healthz\",method=\"GET\",status=\"200\"}"
        ),
        "{text}"
    );
    let res = client.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 404, "never on `listen`");
    let metrics_address = server.metrics.trim_start_matches("http://");
    assert!(
        server
            .log()
            .lines()
            .any(|l| l.contains("serving /metrics") && l.contains(metrics_address)),
        "the picked address is logged: {}",
        server.log()
    );
}

#[tokio::test]
async fn the_database_its_wal_and_shm_and_the_master_key_are_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let mode = |name: &str| {
        std::fs::metadata(dir.path().join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    // The files would be shared if the server left their modes to the umask.
    std::fs::write(dir.path().join("probe"), "").unwrap();
    assert_ne!(
        mode("probe") & 0o077,
        0,
        "run under a umask that lets group or others read new files (022, say)"
    );

    let mut server = serve(dir.path()).await;
    let client = reqwest::Client::new();
    sign_up(&client, &server, "owner-only@example.com").await;
    for name in [
        "tessera.db",
        "tessera.db-wal",
        "tessera.db-shm",
        "tessera.key",
    ] {
        assert_eq!(mode(name), 0o600, "{name} is {:o}", mode(name));
    }
    server.kill();
}

#[tokio::test]
async fn an_unknown_tessera_variable_is_a_warning_naming_it_not_a_refusal() {
    let dir = tempfile::tempdir().unwrap();
    // What Kubernetes injects for a service named `tessera`.
    let server = serve_with_env(
        dir.path(),
        "warn",
        &["--issuer", ISSUER],
        &[
            ("TESSERA_PORT", "tcp://10.96.0.7:8080"),
            ("TESSERA_SERVICE_HOST", "10.96.0.7"),
        ],
    )
    .await;
    let log = server.log();
    for name in ["TESSERA_PORT", "TESSERA_SERVICE_HOST"] {
        assert!(
            log.lines().any(|l| l.contains("WARN") && l.contains(name)),
            "{name} not named in a warning: {log}"
        );
    }
    assert!(!log.contains("10.96.0.7"), "values are not logged: {log}");

    // Unknown keys in flags still stop the start, in one line.
    let mut bad = tessera(dir.path());
    bad.args(["serve", "--listn", "127.0.0.1:0"]);
    let output = run(bad, "");
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--listn"), "{stderr}");
}

/// SPEC §2 `cookie_domain`: a `__Host-` cookie name cannot carry a `Domain`, so the two
/// together stop the start in one line; a domain that does not cover `public_url`'s host
/// (where the cookie is set) is worth a warning, not a refusal.
#[tokio::test]
async fn cookie_domain_refuses_a_host_prefixed_name_and_warns_when_it_misses_public_url() {
    let dir = tempfile::tempdir().unwrap();
    let mut bad = tessera(dir.path());
    bad.args([
        "serve",
        "--cookie-domain",
        "example.com",
        "--cookie-name",
        "__Host-sso",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let output = run(bad, "");
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("`cookie_name`")
            && stderr.contains("--cookie-name")
            && stderr.contains("cookie_domain")
            && stderr.contains("__Secure-"),
        "{stderr}"
    );

    // The issuer (and so public_url) is http://tessera.test, not under example.com.
    let server = serve_with_env(
        dir.path(),
        "warn",
        &["--issuer", ISSUER],
        &[("TESSERA_COOKIE_DOMAIN", "example.com")],
    )
    .await;
    let log = server.log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("cookie_domain example.com does not cover")),
        "{log}"
    );
}

#[test]
fn a_wildcard_listen_address_without_an_issuer_stops_the_start_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    for listen in ["0.0.0.0:0", "[::]:0"] {
        let mut serve = tessera(dir.path());
        serve.args([
            "serve",
            "--listen",
            listen,
            "--metrics-listen",
            "127.0.0.1:0",
        ]);
        let output = run(serve, "");
        assert!(!output.status.success(), "{listen}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("error: `issuer` must be set when `listen` is a wildcard address")
                && stderr.contains("Origin"),
            "{stderr}"
        );
        assert!(output.stdout.is_empty(), "nothing was served");
    }
}

#[tokio::test]
async fn refresh_grace_0_turns_the_grace_window_off() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let mut replayed = Vec::new();
    for grace in ["10s", "0"] {
        let server = serve_with(
            dir.path(),
            "warn",
            &["--issuer", ISSUER, "--refresh-grace", grace],
        )
        .await;
        let email = format!("grace-{}@example.com", replayed.len());
        sign_up(&client, &server, &email).await;
        let (_, first) = grant(&client, &server, &email).await;
        assert_eq!(refresh(&client, &server, &first).await.status(), 200);
        // At once, as a second tab of the same device would.
        replayed.push(refresh(&client, &server, &first).await.status().as_u16());
    }
    assert_eq!(
        replayed,
        [200, 400],
        "a replay within the default window is a concurrent refresh; with 0, reuse"
    );
}

#[tokio::test]
async fn under_a_low_open_files_limit_connections_wait_instead_of_failing_accept() {
    const LIMIT: u64 = 256;
    const CLIENTS: usize = 400;
    let dir = tempfile::tempdir().unwrap();
    let server = serve_with_open_files_limit(
        dir.path(),
        "warn",
        &["--issuer", ISSUER, "--http-header-timeout", "2s"],
        LIMIT,
    )
    .await;
    assert!(
        server
            .log()
            .contains("the open-files limit is too low for max_connections"),
        "the lowered bound is logged: {}",
        server.log()
    );
    // More silent clients than the process has descriptors: past the bound they wait in
    // the backlog; the header timeout closes the accepted ones, making room for the rest.
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut silent = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        silent.push(tokio::net::TcpStream::connect(&address).await.unwrap());
    }
    let client = reqwest::Client::new();
    let res = tokio::time::timeout(
        Duration::from_secs(30),
        client.get(server.url("/healthz")).send(),
    )
    .await
    .expect("a request waiting behind the bound is served once connections close")
    .unwrap();
    assert_eq!(res.status(), 200);
    drop(silent);
    let log = server.log();
    assert!(
        !log.contains("cannot accept connections"),
        "accept never ran out of descriptors: {log}"
    );
}

#[tokio::test]
async fn sigterm_closes_a_scraper_s_keep_alive_connection_without_dropping_anything() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve_with(dir.path(), "info", &["--issuer", ISSUER]).await;
    // A scraper keeps its connection to the metrics address open between scrapes.
    let scraper = reqwest::Client::new();
    let res = scraper
        .get(format!("{}/metrics", server.metrics))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.text().await.unwrap();
    let signalled = Instant::now();
    server.terminate();
    let status = server.exit_status(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}: {}", server.log());
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        signalled.elapsed()
    );
    let log = server.log();
    assert!(log.contains("shut down"), "{log}");
    assert!(
        !log.contains("dropped"),
        "an idle scraper's connection is closed, not dropped: {log}"
    );
}
