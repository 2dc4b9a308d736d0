//! `tessera bench --quick` run as the real binary: the rows it promises in every table, the
//! SVG chart it writes, and that it leaves the configured database alone. No timing is
//! asserted: the figures depend on the machine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;

use support::*;

const ALGS: [&str; 4] = ["EdDSA", "ES256", "RS256", "HS256"];
const MODES: [&str; 3] = ["none", "cached", "strict"];

/// Runs `tessera bench --quick` in `dir` with `args`; its stdout.
fn bench(dir: &Path, args: &[&str]) -> String {
    let mut command = tessera(dir);
    command
        .args(["bench", "--quick", "--out", "out"])
        .args(args);
    stdout(&run(command, ""))
}

/// Whether a line of `output` begins with these whitespace-separated cells.
fn has_row(output: &str, cells: &[&str]) -> bool {
    output.lines().any(|line| {
        let found: Vec<&str> = line.split_whitespace().collect();
        found.len() > cells.len() && found.iter().zip(cells).all(|(a, b)| a == b)
    })
}

fn assert_rows(output: &str, store: &str) {
    for mode in MODES {
        assert!(
            has_row(output, &[store, "cookie", "-", mode]),
            "{store} cookie {mode}:\n{output}"
        );
        for alg in ALGS {
            assert!(
                has_row(output, &[store, "bearer", alg, mode]),
                "{store} bearer {alg} {mode}:\n{output}"
            );
        }
    }
    for mode in MODES {
        assert!(
            has_row(output, &[store, "bearer-tc", "EdDSA", mode]),
            "{store} bearer-tc {mode}:\n{output}"
        );
    }
    assert!(
        has_row(output, &[store, "cookie", "logout"]),
        "{store} cookie lag:\n{output}"
    );
    assert!(
        has_row(output, &[store, "bearer", "revoke_token"]),
        "{store} bearer lag:\n{output}"
    );
}

fn assert_chart(dir: &Path, labels: &[&str]) {
    let svg = std::fs::read_to_string(dir.join("out/verification.svg")).unwrap();
    let head = svg.trim_start();
    assert!(
        head.starts_with("<svg") || head.starts_with("<?xml"),
        "{head:.80}"
    );
    assert!(svg.trim_end().ends_with("</svg>"));
    for label in labels {
        assert!(svg.contains(label), "the chart lacks {label}");
    }
}

#[test]
fn bench_quick_prints_every_table_and_draws_the_chart_without_touching_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let output = bench(dir.path(), &[]);
    for store in ["memory", "sqlite"] {
        assert_rows(&output, store);
    }
    assert!(
        has_row(&output, &["cookie", "-"]),
        "bytes of the cookie:\n{output}"
    );
    for alg in ALGS {
        assert!(
            has_row(&output, &["bearer", alg]),
            "bytes of {alg}:\n{output}"
        );
    }
    for probe in ["logins", "state-sqlite", "state-memory"] {
        let line = output
            .lines()
            .find(|l| l.split_whitespace().next() == Some(probe))
            .unwrap_or_else(|| panic!("no {probe} row:\n{output}"));
        let rss: f64 = line
            .split_whitespace()
            .find_map(|cell| cell.parse().ok())
            .unwrap_or_else(|| panic!("no resident set in {line}"));
        assert!(rss > 0.0, "{line}");
    }
    assert!(
        output.contains("cache holds: 1000 cookie sessions, 1000 jtis, 1000 epochs"),
        "{output}"
    );
    assert!(
        output.contains("import_user") && output.contains("start_cookie_session"),
        "{output}"
    );
    assert!(output.contains("out/verification.svg"), "{output}");
    assert_chart(
        dir.path(),
        &[
            "cookie - cached (memory)",
            "cookie - strict (sqlite)",
            "bearer EdDSA none (memory)",
            "bearer RS256 strict (sqlite)",
        ],
    );
    // The configured store (a SQLite file in `dir`) and its master key were never opened.
    assert!(!dir.path().join("tessera.db").exists());
    assert!(!dir.path().join("tessera.key").exists());
}

#[tokio::test]
async fn bench_measures_postgres_and_redis_when_given() {
    let Some(reachable) =
        tessera_store::testing::FreshDatabase::for_test("bench on PostgreSQL").await
    else {
        return;
    };
    drop(reachable);
    let redis = tessera_store::testing::redis_url();
    if !tessera_store::testing::redis_answers(&redis).await {
        tessera_store::testing::skip_or_fail("bench with Redis", "Redis does not answer");
        return;
    }
    let database = tessera_store::testing::database_url();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let output = tokio::task::spawn_blocking(move || {
        bench(&path, &["--database-url", &database, "--redis", &redis])
    })
    .await
    .unwrap();
    for store in ["memory", "sqlite", "postgres", "postgres+redis"] {
        assert_rows(&output, store);
    }
    assert_chart(
        dir.path(),
        &[
            "cookie - strict (postgres)",
            "bearer HS256 cached (postgres+redis)",
        ],
    );
}

#[test]
fn bench_refuses_a_database_url_that_is_not_postgres_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = tessera(dir.path());
    command.args([
        "bench",
        "--quick",
        "--database-url",
        "mysql://u:secret@db/x",
    ]);
    let output = run(command, "");
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--database-url"), "{stderr}");
    assert!(!stderr.contains("secret"), "{stderr}");
    assert!(!dir.path().join("out").exists() && !dir.path().join("tessera-bench").exists());
}
