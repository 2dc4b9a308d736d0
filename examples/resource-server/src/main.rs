//! `resource-server`: the example service, configured from the environment:
//!
//! - `TESSERA_URL` (required): where Tessera is reached.
//! - `TESSERA_ISSUER`: Tessera's `issuer`, when it differs from `TESSERA_URL`.
//! - `TESSERA_AUDIENCE`: default `tessera`.
//! - `TESSERA_REVOCATIONS_KEY` (required): an API key with the `revocations` scope.
//! - `TESSERA_INTROSPECT_KEY`: an API key with the `introspect` scope, to introspect while
//!   the revocation stream is stale instead of answering 503.
//! - `MAX_STALENESS_SECS`: default 15.
//! - `LISTEN`: default `127.0.0.1:3000`.

use std::process::ExitCode;
use std::time::Duration;

use resource_server::Settings;
use tessera_verify::remote::ApiKey;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt::init();
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let (Some(tessera_url), Some(revocations_key)) =
        (var("TESSERA_URL"), var("TESSERA_REVOCATIONS_KEY"))
    else {
        eprintln!("TESSERA_URL and TESSERA_REVOCATIONS_KEY must be set");
        return ExitCode::FAILURE;
    };
    let max_staleness = match var("MAX_STALENESS_SECS").map(|v| v.parse::<u64>()) {
        None => Duration::from_secs(15),
        Some(Ok(secs)) => Duration::from_secs(secs),
        Some(Err(e)) => {
            eprintln!("MAX_STALENESS_SECS: {e}");
            return ExitCode::FAILURE;
        }
    };
    let settings = Settings {
        tessera_url,
        issuer: var("TESSERA_ISSUER"),
        audience: var("TESSERA_AUDIENCE").unwrap_or_else(|| "tessera".to_owned()),
        revocations_key: ApiKey::new(revocations_key),
        max_staleness,
        introspect_key: var("TESSERA_INTROSPECT_KEY").map(ApiKey::new),
    };
    let listen = var("LISTEN").unwrap_or_else(|| "127.0.0.1:3000".to_owned());
    let remote = match resource_server::remote(settings).await {
        Ok(remote) => remote,
        Err(e) => {
            eprintln!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("listening on http://{listen}");
    match axum::serve(listener, resource_server::app(remote)).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
