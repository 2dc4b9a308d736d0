//! What every test crate of the workspace shares about external services: where to find them,
//! and how to skip when one is missing without the skip going unnoticed.
//!
//! A skipped test passes, so a skip must be loud: [`skip_or_fail`] writes `SKIPPED: …` to the
//! process's standard error directly. libtest captures what `println!` and `eprintln!` print
//! in a passing test and throws it away, but not a write to the stderr handle itself, so the
//! line reaches the terminal and the CI log. Under `TESSERA_REQUIRE_SERVICES=1` (CI) a skip is
//! a failure instead: a missing service must not turn a red suite green.
//!
//! Like [`conformance`](crate::conformance), this is test code shipped in the library so that
//! every crate's tests reach the same helpers.
#![allow(clippy::panic)]

use std::io::Write as _;

/// Set to `1` to turn every skip into a failure (CI, where the services must be up).
pub const REQUIRE_SERVICES: &str = "TESSERA_REQUIRE_SERVICES";
/// The PostgreSQL database the PostgreSQL tests use; [`DEFAULT_DATABASE_URL`] when unset.
pub const DATABASE_URL: &str = "TESSERA_TEST_DATABASE_URL";
/// The Redis server the Redis tests use; [`DEFAULT_REDIS_URL`] when unset.
pub const REDIS_URL: &str = "TESSERA_TEST_REDIS_URL";

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// The PostgreSQL URL for tests: `TESSERA_TEST_DATABASE_URL`, else a local server's `test`
/// database.
pub fn database_url() -> String {
    service_url(std::env::var(DATABASE_URL).ok(), DEFAULT_DATABASE_URL)
}

/// The Redis URL for tests: `TESSERA_TEST_REDIS_URL`, else a local server.
pub fn redis_url() -> String {
    service_url(std::env::var(REDIS_URL).ok(), DEFAULT_REDIS_URL)
}

/// An empty variable counts as unset, as a CI matrix that leaves a value blank means.
fn service_url(set: Option<String>, default: &str) -> String {
    set.filter(|url| !url.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// Whether `TESSERA_REQUIRE_SERVICES=1` is set in this process.
pub fn services_required() -> bool {
    std::env::var(REQUIRE_SERVICES).as_deref() == Ok("1")
}

/// What a skip of `what` because of `why` comes to: `Ok` with the line to print, or, when
/// services are `required`, `Err` with the failure message.
pub fn skip_verdict(what: &str, why: &str, required: bool) -> Result<String, String> {
    if required {
        Err(format!(
            "{what} cannot run: {why} ({REQUIRE_SERVICES}=1 makes a skip a failure)"
        ))
    } else {
        Ok(format!(
            "SKIPPED: {what}: {why} (set {REQUIRE_SERVICES}=1 to fail instead)\n"
        ))
    }
}

/// Skips `what` loudly, or fails it under `TESSERA_REQUIRE_SERVICES=1`. The caller returns
/// right after (the test then passes, having said why on standard error).
///
/// # Panics
///
/// When `TESSERA_REQUIRE_SERVICES=1`: a test that cannot run must fail.
pub fn skip_or_fail(what: &str, why: &str) {
    match skip_verdict(what, why, services_required()) {
        Ok(line) => {
            // Not `eprintln!`: libtest would capture it and drop it with the passing test.
            let mut stderr = std::io::stderr().lock();
            let _ = stderr.write_all(line.as_bytes());
            let _ = stderr.flush();
        }
        Err(failure) => panic!("{failure}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn a_skip_says_what_and_why_and_how_to_make_it_fail() {
        let line = skip_verdict("postgres suite", "connection refused", false).unwrap();
        assert_eq!(
            line,
            "SKIPPED: postgres suite: connection refused \
             (set TESSERA_REQUIRE_SERVICES=1 to fail instead)\n"
        );
    }

    #[test]
    fn a_required_service_turns_the_skip_into_a_failure() {
        let failure = skip_verdict("postgres suite", "connection refused", true).unwrap_err();
        assert!(failure.contains("postgres suite"), "{failure}");
        assert!(failure.contains("connection refused"), "{failure}");
        assert!(failure.contains("TESSERA_REQUIRE_SERVICES=1"), "{failure}");
    }

    #[test]
    fn service_urls_default_when_unset_or_blank() {
        assert_eq!(
            service_url(None, DEFAULT_DATABASE_URL),
            "postgres://postgres@127.0.0.1:5432/test"
        );
        assert_eq!(
            service_url(Some("  ".to_owned()), DEFAULT_REDIS_URL),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            service_url(Some("redis://cache:6380".to_owned()), DEFAULT_REDIS_URL),
            "redis://cache:6380"
        );
    }
}
