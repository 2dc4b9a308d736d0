//! A resource server: the service of yours that Tessera signs users in for. It verifies each
//! request's access token offline with `tessera-verify`, follows Tessera's revocation stream
//! so a signed-out user is refused on the next request, and answers 503 while it cannot know
//! about revocations.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{json, Value};
use tessera_verify::axum::{Authenticated, RequireBearer};
use tessera_verify::remote::{ApiKey, Remote, StalePolicy, StartError};

/// What the service needs to know about its Tessera.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where Tessera is reached, e.g. `https://auth.example.com`.
    pub tessera_url: String,
    /// Tessera's `issuer`; default: `tessera_url`.
    pub issuer: Option<String>,
    /// Tessera's `audience` setting.
    pub audience: String,
    /// An API key with the `revocations` scope.
    pub revocations_key: ApiKey,
    /// How long the revocation stream may be silent before the policy applies.
    pub max_staleness: Duration,
    /// An API key with the `introspect` scope: when set, tokens are introspected while the
    /// stream is stale; otherwise they are refused with 503.
    pub introspect_key: Option<ApiKey>,
}

/// Starts the verifier: fetches the JWK set and begins following revocations.
pub async fn remote(settings: Settings) -> Result<Arc<Remote>, StartError> {
    let mut builder = Remote::builder(settings.tessera_url.clone(), settings.audience)
        .follow_revocations(settings.revocations_key)
        .max_staleness(settings.max_staleness)
        .on_stale(match settings.introspect_key {
            Some(key) => StalePolicy::Introspect(key),
            None => StalePolicy::Refuse,
        });
    if let Some(issuer) = settings.issuer {
        builder = builder.issuer(issuer);
    }
    Ok(Arc::new(builder.start().await?))
}

/// The service's routes: `/me` authenticates with the extractor, everything under `/notes`
/// with the layer; `/healthz` needs nothing.
pub fn app(remote: Arc<Remote>) -> Router {
    let notes = Router::new()
        .route("/notes", get(notes))
        .layer(RequireBearer::new(Arc::clone(&remote)));
    Router::new()
        .route("/me", get(me))
        .route("/healthz", get(|| async { "ok" }))
        .merge(notes)
        .with_state(remote)
}

/// Taking `Authenticated` is the proof: this handler never runs without a valid token.
async fn me(State(_): State<Arc<Remote>>, Authenticated(claims): Authenticated) -> Json<Value> {
    Json(json!({ "user": claims.sub, "session": claims.sid, "roles": claims.roles }))
}

/// Behind `RequireBearer`, which put the claims in the request's extensions.
async fn notes(Extension(Authenticated(claims)): Extension<Authenticated>) -> Json<Value> {
    Json(json!({ "owner": claims.sub, "notes": [] }))
}
