#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! A skipped test passes, so a skip must be seen: `skip_or_fail` writes past libtest's output
//! capture, and `TESSERA_REQUIRE_SERVICES=1` makes it a failure. Checked from outside, as CI
//! sees it: this binary runs its own `probe` test in a child process and reads what the
//! child's harness printed and how it exited.

use std::process::{Command, Output};

use tessera_store::testing::{skip_or_fail, REQUIRE_SERVICES};

/// Set only in the child process, so that `probe` skips there and nowhere else.
const PROBE: &str = "TESSERA_SKIP_PROBE";

#[test]
#[ignore = "run in a child process by the tests below"]
fn probe() {
    if std::env::var_os(PROBE).is_some() {
        // The kind of line libtest swallows in a passing test: it must not hide the skip.
        eprintln!("captured by the harness");
        skip_or_fail("probe", "its service is never reachable");
    }
}

/// A conformance case whose store builder finds no store in the child process (and the memory
/// store elsewhere, so that run normally it is just the case).
mod suite_without_store {
    #[allow(clippy::unused_async)] // the suite awaits its store builder
    async fn no_store_in_the_child() -> Option<tessera_store::MemoryStore> {
        std::env::var_os(super::PROBE)
            .is_none()
            .then(tessera_store::MemoryStore::new)
    }

    tessera_store::conformance_suite!(no_store_in_the_child(); ping_answers);
}

/// Runs the test `name` in a child process the way `cargo test` runs tests (output captured),
/// with `TESSERA_REQUIRE_SERVICES` set to `require` or unset.
fn run_probe(require: Option<&str>) -> (Output, String, String) {
    run_child("probe", require)
}

fn run_child(name: &str, require: Option<&str>) -> (Output, String, String) {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([name, "--exact", "--include-ignored", "--test-threads=1"])
        .env(PROBE, "1")
        .env_remove(REQUIRE_SERVICES)
        // An inherited `--nocapture` would show everything and prove nothing.
        .env_remove("RUST_TEST_NOCAPTURE");
    if let Some(value) = require {
        command.env(REQUIRE_SERVICES, value);
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stdout, stderr)
}

#[test]
fn a_skip_passes_and_says_so_past_the_output_capture() {
    for require in [None, Some("0"), Some("")] {
        let (output, stdout, stderr) = run_probe(require);
        assert!(output.status.success(), "{require:?}: {stdout}\n{stderr}");
        assert!(stdout.contains("test probe ... ok"), "{stdout}");
        assert!(
            stderr.contains(
                "SKIPPED: probe: its service is never reachable \
                 (set TESSERA_REQUIRE_SERVICES=1 to fail instead)"
            ),
            "{require:?}: the skip must reach the terminal: {stderr}"
        );
        // The control: what `eprintln!` printed was captured and dropped with the passing test.
        assert!(!stderr.contains("captured by the harness"), "{stderr}");
        assert!(!stdout.contains("captured by the harness"), "{stdout}");
    }
}

#[test]
fn requiring_services_turns_a_skip_into_a_failure() {
    let (output, stdout, stderr) = run_probe(Some("1"));
    assert!(!output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("test probe ... FAILED"), "{stdout}");
    assert!(
        stdout.contains("probe cannot run: its service is never reachable"),
        "the failure says why: {stdout}"
    );
    assert!(!stderr.contains("SKIPPED"), "{stderr}");
}

#[test]
fn a_conformance_case_without_a_store_is_a_loud_skip_or_a_failure() {
    let case = "suite_without_store::ping_answers";
    let (output, stdout, stderr) = run_child(case, None);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains(&format!("test {case} ... ok")), "{stdout}");
    assert!(
        stderr.contains(
            "SKIPPED: conformance case `ping_answers`: its store builder returned no store"
        ),
        "{stderr}"
    );

    let (output, stdout, stderr) = run_child(case, Some("1"));
    assert!(!output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("test {case} ... FAILED")),
        "{stdout}"
    );
}
