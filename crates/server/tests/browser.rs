//! The browser pages in a real headless Chromium: `tests/browser/pages.mjs` (Playwright,
//! driving Debian's `chromium`) against a real server, with an application origin beside it
//! for `return_to`. It checks what only a browser can: that its forms pass the origin checks
//! (Chromium's `Origin` under the pages' referrer policy), that the CSP `form-action` lets
//! the post-login redirect through, and which cookie flags the browser's jar actually keeps.
//!
//! Needs `node`, `chromium` (`CHROMIUM`, default `/usr/bin/chromium`) and
//! `npm ci --prefix tests/browser`; without them the test says so and passes, unless
//! `TESSERA_REQUIRE_SERVICES=1`, when it fails. `TESSERA_SCREENSHOTS=DIR` (relative to the
//! workspace root) writes phone and desktop screenshots of the pages there.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use axum::response::Html;
use axum::routing::get;
use support::start_knowing_base;

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// What is missing to run the browser test, if anything.
fn missing(chromium: &str, scripts: &std::path::Path) -> Option<String> {
    if !std::path::Path::new(chromium).exists() {
        return Some(format!(
            "no Chromium at {chromium} (apt-get install chromium)"
        ));
    }
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .map(|out| out.status.success());
    if node.map_or(true, |ok| !ok) {
        return Some("no node on PATH".to_owned());
    }
    if !scripts.join("node_modules/playwright-core").is_dir() {
        return Some(format!(
            "no {}/node_modules (npm ci --prefix tests/browser)",
            scripts.display()
        ));
    }
    None
}

/// An application on another origin, in `allowed_origins`: where `return_to` leads.
async fn application() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/landed",
        get(|| async {
            Html("<!doctype html><title>Application</title><h1>Application</h1><p>Signed in and sent back here.</p>")
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    origin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_work_in_headless_chromium() {
    let root = workspace_root();
    let scripts = root.join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    if let Some(missing) = missing(&chromium, &scripts) {
        tessera_store::testing::skip_or_fail("the headless Chromium test of the pages", &missing);
        return;
    }

    let app = application().await;
    // The production cookie settings: Chromium keeps `Secure` (and `__Host-`) cookies from
    // http://127.0.0.1, a potentially trustworthy origin, so the test needs no TLS and no
    // `cookie_secure = false`.
    let server = start_knowing_base(|base| format!("allowed_origins = \"{base}, {app}\"")).await;
    assert!(server.config.cookie_secure);

    let mut node = tokio::process::Command::new("node");
    node.current_dir(&scripts)
        .arg("pages.mjs")
        .arg(&server.base)
        .arg(&app)
        .env("CHROMIUM", &chromium)
        .env("COOKIE_NAME", &server.config.cookie_name)
        .env("COOKIE_SECURE", server.config.cookie_secure.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Ok(dir) = std::env::var("TESSERA_SCREENSHOTS") {
        node.env("SCREENSHOTS", root.join(dir));
    }
    let run = node.spawn().unwrap().wait_with_output();
    let output = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the browser script did not finish within 180 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}");
    assert!(
        output.status.success(),
        "the browser script failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    for step in [
        "signed up and in",
        "the session cookie __Host-tessera_session: HttpOnly, Secure=true",
        "sent back to return_to",
        "signed browser B out",
        "browser B is refused",
        "signed out everywhere",
    ] {
        assert!(stdout.contains(step), "missing step `{step}`:\n{stdout}");
    }
}
