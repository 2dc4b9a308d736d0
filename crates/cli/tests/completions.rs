#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `tessera completions SHELL` and `tessera man`: what they write is read by the programs it
//! is for. bash and groff/man are checked when installed (they are on Debian); zsh and fish
//! only where they are installed, saying so otherwise.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::{run, stdout, tessera};

fn tessera_out(dir: &Path, args: &[&str]) -> Output {
    let mut command = tessera(dir);
    command.args(args);
    run(command, "")
}

/// Runs `program args…` if it is installed; `None` (having said so) if not.
fn check_with(program: &str, args: &[&str], file: &Path) -> Option<Output> {
    match Command::new(program).args(args).arg(file).output() {
        Ok(out) => Some(out),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("not checked with {program}: not installed");
            None
        }
        Err(e) => panic!("{program}: {e}"),
    }
}

#[test]
fn completion_scripts_parse_in_their_shells() {
    let dir = tempfile::tempdir().unwrap();
    for (shell, checker, args, marker) in [
        ("bash", "bash", &["-n"][..], "complete -F"),
        ("zsh", "zsh", &["-n"][..], "#compdef tessera"),
        ("fish", "fish", &["--no-execute"][..], "complete -c tessera"),
    ] {
        let script = stdout(&tessera_out(dir.path(), &["completions", shell]));
        assert!(script.contains(marker), "{shell}: {script}");
        // Every subcommand is completed, down to the nested ones.
        for word in [
            "serve",
            "admin-key",
            "user",
            "keys",
            "completions",
            "man",
            "revoke",
        ] {
            assert!(script.contains(word), "{shell} completes no `{word}`");
        }
        let file = dir.path().join(format!("tessera.{shell}"));
        std::fs::write(&file, &script).unwrap();
        if let Some(out) = check_with(checker, args, &file) {
            assert!(
                out.status.success(),
                "{checker} refuses the script: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // The bash script, sourced, registers the completion for `tessera`.
    let bash = dir.path().join("tessera.bash");
    if let Ok(out) = Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p tessera", bash.display()))
        .output()
    {
        let registered = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && registered.contains("tessera"),
            "{registered}"
        );
    }
    // A shell it does not know: one line and the usage error code.
    let out = tessera_out(dir.path(), &["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
}

#[test]
fn man_pages_are_written_for_every_command_and_render() {
    let dir = tempfile::tempdir().unwrap();
    // No directory: the root page on stdout.
    let page = stdout(&tessera_out(dir.path(), &["man"]));
    assert!(
        page.starts_with(".ie") || page.contains(".TH tessera 1"),
        "{page}"
    );

    let out_dir = dir.path().join("man1");
    stdout(&tessera_out(
        dir.path(),
        &["man", "--out-dir", out_dir.to_str().unwrap()],
    ));
    for name in [
        "tessera",
        "tessera-serve",
        "tessera-user",
        "tessera-admin-key",
        "tessera-admin-key-create",
        "tessera-keys",
        "tessera-completions",
        "tessera-man",
    ] {
        let file = out_dir.join(format!("{name}.1"));
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(text.contains(&format!(".TH {name} 1")), "{name}: {text}");
        // groff (UTF-8 input through preconv, as man runs it) parses it without a warning.
        if let Some(out) = check_with("groff", &["-k", "-man", "-Tutf8", "-ww", "-z"], &file) {
            assert!(out.status.success(), "{name}: groff failed");
            assert!(
                out.stderr.is_empty(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // man renders the root page with its sections and the subcommands' names.
    let root = out_dir.join("tessera.1");
    if let Some(out) = check_with("man", &["-P", "cat", "-l"], &root) {
        let rendered = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for heading in ["NAME", "SYNOPSIS", "SUBCOMMANDS", "tessera-serve(1)"] {
            assert!(rendered.contains(heading), "no {heading}: {rendered}");
        }
    }
}

#[test]
fn a_reader_that_stops_early_is_not_an_error() {
    // `tessera man | head`: the reader is gone before the page is written.
    let dir = tempfile::tempdir().unwrap();
    for args in [&["man"][..], &["completions", "bash"][..]] {
        let mut command = tessera(dir.path());
        command
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = command.spawn().unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
