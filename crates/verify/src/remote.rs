//! A verifier that keeps itself current: Tessera's JWK set fetched and cached, and, when asked,
//! the revocation stream followed (feature `remote`).
//!
//! [`Remote::verify`] still checks every token offline, on the keys and revocations already
//! held; the network is only used in the background, and on an unknown `kid` (at most once per
//! [`RemoteBuilder::unknown_kid_refetch`]).

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use serde::Deserialize;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::revocation::{RevocationState, Revoked, TokenFacts};
use crate::sse::{Item, Parser};
use crate::{Claims, Verifier, VerifyError};

/// An API key, as `tessera admin-key create` prints it. Never printed back: its `Debug` is
/// redacted and it has no `Display`.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey([REDACTED])")
    }
}

/// What to do with a token while the revocation stream has been silent for longer than
/// [`RemoteBuilder::max_staleness`]: the revocations held may be missing some, so a plain
/// offline verdict could accept a revoked token. Neither choice accepts silently.
#[derive(Debug, Clone)]
pub enum StalePolicy {
    /// Refuse every token with [`Refusal::Unavailable`] (the axum integration answers 503)
    /// until the stream is back.
    Refuse,
    /// Ask Tessera's `/oauth2/introspect` about each token, with an API key holding the
    /// `introspect` scope; if that fails too, [`Refusal::Unavailable`].
    Introspect(ApiKey),
}

/// Why [`Remote::verify`] refused a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The token itself is bad: signature, format, claims, unknown key.
    #[error("{0}")]
    Invalid(VerifyError),
    /// The token was revoked.
    #[error("token was revoked ({})", .0.reason())]
    Revoked(Revoked),
    /// Introspection said the token is not active.
    #[error("token is not active")]
    Inactive,
    /// The revocation stream is stale and the policy refuses, or introspection failed: the
    /// token's fate cannot be known now (a 503, not a 401).
    #[error("revocation state is stale; cannot verify now")]
    Unavailable,
}

impl Refusal {
    /// Whether the refusal is about Tessera being unreachable rather than about the token.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable)
    }
}

/// Why [`RemoteBuilder::start`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("fetching the JWK set failed: {0}")]
    Jwks(String),
    #[error("invalid JWK set: {0}")]
    InvalidJwks(VerifyError),
}

/// Configures a [`Remote`]; see [`Remote::builder`].
#[derive(Debug, Clone)]
pub struct RemoteBuilder {
    base_url: String,
    issuer: Option<String>,
    audience: String,
    revocations: Option<ApiKey>,
    max_staleness: Duration,
    on_stale: StalePolicy,
    unknown_kid_refetch: Duration,
    horizon: Duration,
    client: Option<reqwest::Client>,
}

impl RemoteBuilder {
    /// The `iss` tokens must carry; default: the base URL.
    #[must_use]
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Follows `GET /v1/revocations` with `key`, an API key with the `revocations` scope
    /// (`tessera admin-key create --scope revocations`), so a revoked token is refused on its
    /// next request. Without it, tokens are only checked for signature and expiry.
    #[must_use]
    pub fn follow_revocations(mut self, key: ApiKey) -> Self {
        self.revocations = Some(key);
        self
    }

    /// How long the revocation stream may be silent before [`on_stale`](Self::on_stale)
    /// applies. Tessera sends a heartbeat every 5 s, so this should be well above that.
    /// Default: 15 s.
    #[must_use]
    pub fn max_staleness(mut self, bound: Duration) -> Self {
        self.max_staleness = bound;
        self
    }

    /// What to do past [`max_staleness`](Self::max_staleness). Default: [`StalePolicy::Refuse`].
    #[must_use]
    pub fn on_stale(mut self, policy: StalePolicy) -> Self {
        self.on_stale = policy;
        self
    }

    /// The least time between two JWK set fetches caused by a token naming an unknown `kid`:
    /// anyone can send such a token, so it must not turn into a request to Tessera each time.
    /// Default: 10 s.
    #[must_use]
    pub fn unknown_kid_refetch(mut self, interval: Duration) -> Self {
        self.unknown_kid_refetch = interval;
        self
    }

    /// How long a revoked session is remembered: at least the longest access-token lifetime
    /// Tessera issues (`access_token_ttl`), after which no token of it can be alive. Also the
    /// age past which an epoch bump is forgotten. Default: 24 h.
    #[must_use]
    pub fn revocation_horizon(mut self, horizon: Duration) -> Self {
        self.horizon = horizon;
        self
    }

    /// The HTTP client to use (proxies, TLS roots); default: a plain `reqwest` client.
    #[must_use]
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Fetches the JWK set (failing if it cannot: a verifier with no keys would refuse
    /// everything), then starts the background tasks on the current tokio runtime. They stop
    /// when the [`Remote`] is dropped.
    pub async fn start(self) -> Result<Remote, StartError> {
        let base_url = self.base_url.trim_end_matches('/').to_owned();
        let issuer = self.issuer.clone().unwrap_or_else(|| base_url.clone());
        let client = self.client.clone().unwrap_or_default();
        let inner = Arc::new(Inner {
            jwks_url: format!("{base_url}/.well-known/jwks.json"),
            revocations_url: format!("{base_url}/v1/revocations"),
            introspect_url: format!("{base_url}/oauth2/introspect"),
            issuer,
            audience: self.audience,
            client,
            verifier: RwLock::new(Arc::new(Verifier::new("", ""))),
            origin: Instant::now(),
            last_kid_refetch_ms: AtomicI64::new(i64::MIN / 2),
            unknown_kid_refetch: self.unknown_kid_refetch,
            keys_changed: Notify::new(),
            withdrawn: RwLock::new(HashSet::new()),
            follows: self.revocations.is_some(),
            revocations: RwLock::new(RevocationState::new()),
            last_heard_ms: AtomicI64::new(0),
            caught_up: AtomicBool::new(false),
            max_staleness: self.max_staleness,
            on_stale: self.on_stale,
            horizon: self.horizon,
        });
        let max_age = inner.fetch_jwks().await?;
        let mut tasks =
            vec![tokio::spawn(refresh_jwks(Arc::clone(&inner), max_age)).abort_handle()];
        if let Some(key) = self.revocations {
            tasks.push(tokio::spawn(follow(Arc::clone(&inner), key)).abort_handle());
        }
        let remote = Remote { inner, tasks };
        // Give the stream a moment to deliver its backlog, so the first requests are not
        // refused as stale; a Tessera that is down only delays the start by this much.
        let started = Instant::now();
        while remote.inner.follows
            && !remote.is_fresh()
            && started.elapsed() < Duration::from_secs(5)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(remote)
    }
}

/// Verifies Tessera access tokens offline, on a JWK set and revocation state it keeps current
/// in the background.
///
/// Build one per process with [`Remote::builder`], share it (`Arc`), and call
/// [`verify`](Self::verify) per request.
///
/// ```no_run
/// use std::time::Duration;
/// use tessera_verify::remote::{ApiKey, Refusal, Remote, StalePolicy};
///
/// # async fn run(token: &str) -> Result<(), Box<dyn std::error::Error>> {
/// let remote = Remote::builder("https://auth.example.com", "tessera")
///     .follow_revocations(ApiKey::new(std::env::var("TESSERA_REVOCATIONS_KEY")?))
///     .max_staleness(Duration::from_secs(15))
///     .on_stale(StalePolicy::Refuse)
///     .start()
///     .await?;
/// match remote.verify(token).await {
///     Ok(claims) => println!("user {}", claims.sub),
///     Err(Refusal::Unavailable) => println!("503: revocations cannot be checked now"),
///     Err(refused) => println!("401: {refused}"),
/// }
/// # Ok(())
/// # }
/// ```
pub struct Remote {
    inner: Arc<Inner>,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("jwks_url", &self.inner.jwks_url)
            .field("follows_revocations", &self.inner.follows)
            .finish_non_exhaustive()
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

struct Inner {
    jwks_url: String,
    revocations_url: String,
    introspect_url: String,
    issuer: String,
    audience: String,
    client: reqwest::Client,
    verifier: RwLock<Arc<Verifier>>,
    origin: Instant,
    last_kid_refetch_ms: AtomicI64,
    unknown_kid_refetch: Duration,
    /// Wakes the JWK set refresher: a key was withdrawn.
    keys_changed: Notify,
    /// Keys withdrawn on the stream: never trusted again, even from a JWK set fetched before
    /// Tessera itself dropped them (a withdrawal is final).
    withdrawn: RwLock<HashSet<String>>,
    follows: bool,
    revocations: RwLock<RevocationState>,
    /// Milliseconds after `origin` when the stream was last heard (0: never).
    last_heard_ms: AtomicI64,
    /// The stream has delivered its backlog at least once.
    caught_up: AtomicBool,
    max_staleness: Duration,
    on_stale: StalePolicy,
    horizon: Duration,
}

impl Remote {
    /// A verifier for the Tessera at `base_url` (its `issuer`, e.g. `https://auth.example.com`),
    /// for tokens meant for `audience` (Tessera's `audience` setting).
    pub fn builder(base_url: impl Into<String>, audience: impl Into<String>) -> RemoteBuilder {
        RemoteBuilder {
            base_url: base_url.into(),
            issuer: None,
            audience: audience.into(),
            revocations: None,
            max_staleness: Duration::from_secs(15),
            on_stale: StalePolicy::Refuse,
            unknown_kid_refetch: Duration::from_secs(10),
            horizon: Duration::from_secs(24 * 3600),
            client: None,
        }
    }

    /// Checks a token: signature and claims on the cached keys (refetching them once on an
    /// unknown `kid`, rate-limited), then, when following revocations, the revocation state —
    /// or the [`StalePolicy`] if the stream has been silent past the bound.
    pub async fn verify(&self, token: &str) -> Result<Claims, Refusal> {
        let inner = &self.inner;
        let claims = match inner.current().verify(token) {
            Err(VerifyError::UnknownKey) if inner.may_refetch_for_unknown_kid() => {
                if let Err(e) = inner.fetch_jwks().await {
                    tracing::warn!(error = %e, "JWK set refetch for an unknown kid failed");
                }
                inner.current().verify(token)
            }
            outcome => outcome,
        }
        .map_err(Refusal::Invalid)?;
        if !inner.follows {
            return Ok(claims);
        }
        let Some(facts) = TokenFacts::from_claims(&claims) else {
            return Err(Refusal::Invalid(VerifyError::InvalidClaims));
        };
        if self.is_fresh() {
            let verdict = inner
                .revocations
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .check(&facts);
            return match verdict {
                Some(revoked) => Err(Refusal::Revoked(revoked)),
                None => Ok(claims),
            };
        }
        match &inner.on_stale {
            StalePolicy::Refuse => Err(Refusal::Unavailable),
            StalePolicy::Introspect(key) => match inner.introspect(token, key).await {
                Ok(true) => Ok(claims),
                Ok(false) => Err(Refusal::Inactive),
                Err(e) => {
                    tracing::warn!(error = %e, "introspection failed while the revocation stream is stale");
                    Err(Refusal::Unavailable)
                }
            },
        }
    }

    /// Whether the revocation stream has delivered its backlog and been heard within the
    /// staleness bound (always `false` when not following it).
    pub fn is_fresh(&self) -> bool {
        let inner = &self.inner;
        let last = inner.last_heard_ms.load(Ordering::Acquire);
        let bound = i64::try_from(inner.max_staleness.as_millis()).unwrap_or(i64::MAX);
        inner.follows
            && inner.caught_up.load(Ordering::Acquire)
            && last > 0
            && inner.elapsed_ms().saturating_sub(last) <= bound
    }

    /// The `kid`s of the keys currently trusted.
    pub fn kids(&self) -> Vec<String> {
        self.inner.current().kids().map(str::to_owned).collect()
    }
}

#[derive(Deserialize)]
struct Introspection {
    active: bool,
}

/// The parts of a revocation-stream entry this crate reads (SPEC §3 `GET /v1/revocations`).
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum StreamEvent {
    SessionRevoked { session: Uuid },
    EpochBumped { user: Uuid, epoch: String },
    JtiDenied { jti: String, expires_at: String },
    KeyWithdrawn { kid: String },
}

impl Inner {
    fn current(&self) -> Arc<Verifier> {
        Arc::clone(
            &self
                .verifier
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Monotonic milliseconds since start, never 0.
    fn elapsed_ms(&self) -> i64 {
        i64::try_from(self.origin.elapsed().as_millis())
            .unwrap_or(i64::MAX)
            .saturating_add(1)
    }

    fn may_refetch_for_unknown_kid(&self) -> bool {
        let now = self.elapsed_ms();
        let last = self.last_kid_refetch_ms.load(Ordering::Relaxed);
        let interval = i64::try_from(self.unknown_kid_refetch.as_millis()).unwrap_or(i64::MAX);
        now.saturating_sub(last) >= interval
            && self
                .last_kid_refetch_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// Fetches the JWK set and swaps the verifier; returns the response's `max-age`.
    async fn fetch_jwks(&self) -> Result<Option<Duration>, StartError> {
        let response = self
            .client
            .get(&self.jwks_url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| StartError::Jwks(e.to_string()))?;
        let max_age = response
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|value| value.to_str().ok())
            .and_then(max_age);
        let mut jwks: JwkSet = response
            .json()
            .await
            .map_err(|e| StartError::Jwks(e.to_string()))?;
        {
            let withdrawn = self
                .withdrawn
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            jwks.keys.retain(|key| {
                key.common
                    .key_id
                    .as_ref()
                    .is_none_or(|kid| !withdrawn.contains(kid))
            });
        }
        let verifier = Verifier::from_jwks(&jwks, self.issuer.clone(), self.audience.clone())
            .map_err(StartError::InvalidJwks)?;
        *self
            .verifier
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(verifier);
        Ok(max_age)
    }

    async fn introspect(&self, token: &str, key: &ApiKey) -> Result<bool, reqwest::Error> {
        let answer: Introspection = self
            .client
            .post(&self.introspect_url)
            .header(reqwest::header::AUTHORIZATION, key.bearer())
            .form(&[("token", token)])
            .timeout(Duration::from_secs(5))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(answer.active)
    }

    fn heard(&self) {
        self.last_heard_ms
            .store(self.elapsed_ms(), Ordering::Release);
    }

    fn apply(&self, data: &str) {
        let event: StreamEvent = match serde_json::from_str(data) {
            Ok(event) => event,
            Err(e) => {
                // A kind added by a newer Tessera: not revocation state this version knows.
                tracing::debug!(error = %e, "revocation stream entry skipped");
                return;
            }
        };
        let now = unix_millis_now();
        let mut state = self
            .revocations
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match event {
            StreamEvent::SessionRevoked { session } => {
                let horizon = i64::try_from(self.horizon.as_millis()).unwrap_or(i64::MAX);
                state.revoke_session(session, now.saturating_add(horizon));
            }
            StreamEvent::EpochBumped { user, epoch } => match rfc3339_millis(&epoch) {
                Some(epoch) => state.bump_epoch(user, epoch),
                // Fail closed: every token of the user issued until now is refused.
                None => state.bump_epoch(user, now),
            },
            StreamEvent::JtiDenied { jti, expires_at } => {
                let until = rfc3339_millis(&expires_at).unwrap_or(i64::MAX);
                state.deny_jti(&jti, until);
            }
            StreamEvent::KeyWithdrawn { kid } => {
                drop(state);
                self.withdrawn
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(kid);
                // Refetched (and filtered) at once, so the key's tokens stop verifying now.
                self.keys_changed.notify_one();
            }
        }
    }
}

fn unix_millis_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn rfc3339_millis(text: &str) -> Option<i64> {
    let parsed =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(parsed.unix_timestamp_nanos() / 1_000_000).ok()
}

/// The `max-age` directive of a `Cache-Control` value (RFC 9111 §5.2.2.1).
fn max_age(cache_control: &str) -> Option<Duration> {
    cache_control.split(',').find_map(|directive| {
        let (name, value) = directive.trim().split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("max-age")
            .then(|| value.trim().trim_matches('"').parse().ok())
            .flatten()
            .map(Duration::from_secs)
    })
}

/// JWK set refreshes: after `max-age` (bounded to between 10 s and an hour; 5 min when the
/// response names none), sooner when a key is withdrawn, with a backoff while Tessera is
/// unreachable (the keys held keep verifying meanwhile).
async fn refresh_jwks(inner: Arc<Inner>, mut max_age: Option<Duration>) {
    const FLOOR: Duration = Duration::from_secs(10);
    const CEILING: Duration = Duration::from_secs(3600);
    const DEFAULT: Duration = Duration::from_secs(300);
    loop {
        let wait = max_age.unwrap_or(DEFAULT).clamp(FLOOR, CEILING);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = inner.keys_changed.notified() => {}
        }
        let mut backoff = Duration::from_millis(500);
        loop {
            match inner.fetch_jwks().await {
                Ok(age) => {
                    max_age = age;
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "JWK set refresh failed; verifying on the keys held");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}

const FIRST_RETRY: Duration = Duration::from_millis(250);
const LAST_RETRY: Duration = Duration::from_secs(10);

/// Follows `GET /v1/revocations` for as long as the [`Remote`] lives: reconnects with
/// `Last-Event-ID` and an exponential backoff (250 ms to 10 s, reset once connected).
async fn follow(inner: Arc<Inner>, key: ApiKey) {
    let mut last_id: Option<String> = None;
    let mut backoff = FIRST_RETRY;
    loop {
        match stream_once(&inner, &key, &mut last_id, &mut backoff).await {
            Ok(()) => tracing::info!("revocation stream ended; reconnecting"),
            Err(e) => tracing::warn!(error = %e, "revocation stream broken; reconnecting"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(LAST_RETRY);
    }
}

async fn stream_once(
    inner: &Inner,
    key: &ApiKey,
    last_id: &mut Option<String>,
    backoff: &mut Duration,
) -> Result<(), String> {
    let mut request = inner
        .client
        .get(&inner.revocations_url)
        .header(reqwest::header::AUTHORIZATION, key.bearer())
        .header(reqwest::header::ACCEPT, "text/event-stream");
    if let Some(id) = last_id.as_deref() {
        request = request.header("last-event-id", id);
    }
    let mut response = tokio::time::timeout(Duration::from_secs(10), request.send())
        .await
        .map_err(|_| "connection timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!(
            "GET /v1/revocations answered {} (does the API key have the `revocations` scope?)",
            response.status()
        ));
    }
    // Connected: the next failure starts the backoff over.
    *backoff = FIRST_RETRY;
    let mut parser = Parser::new();
    let mut items = Vec::new();
    let mut last_prune = Instant::now();
    // The server's heartbeat comes every 5 s; a connection silent for the staleness bound is
    // dead even if TCP has not noticed.
    let read_timeout = inner.max_staleness.max(Duration::from_secs(6));
    // What this connection says vouches for freshness only once it has delivered the entries
    // missed while it was down: until then the state may lack some.
    let mut caught_up = false;
    loop {
        let chunk = tokio::time::timeout(read_timeout, response.chunk())
            .await
            .map_err(|_| "silent past the staleness bound".to_owned())?
            .map_err(|e| e.to_string())?;
        let Some(chunk) = chunk else {
            return Ok(());
        };
        parser
            .feed(&chunk, &mut items)
            .map_err(|_| "an SSE line over 64 KiB".to_owned())?;
        for item in items.drain(..) {
            match item {
                Item::Event { id, data, .. } => {
                    inner.apply(&data);
                    if !id.is_empty() {
                        *last_id = Some(id);
                    }
                }
                Item::Comment(text) if text == "caught-up" => {
                    caught_up = true;
                    inner.caught_up.store(true, Ordering::Release);
                }
                Item::Comment(_) => {}
            }
        }
        if caught_up {
            inner.heard();
        }
        if last_prune.elapsed() > Duration::from_secs(60) {
            last_prune = Instant::now();
            inner
                .revocations
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .prune(unix_millis_now(), inner.horizon);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn max_age_is_read_among_other_directives() {
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            max_age("Max-Age=\"60\", must-revalidate"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(max_age("no-store"), None);
        assert_eq!(max_age("max-age=soon"), None);
    }

    #[test]
    fn api_keys_do_not_print() {
        let key = ApiKey::new("tsk_secret");
        assert!(!format!("{key:?}").contains("tsk_secret"));
    }

    #[test]
    fn stream_entries_are_read_as_tessera_writes_them() {
        let event: StreamEvent = serde_json::from_str(
            r#"{"kind":"epoch_bumped","user":"0192d1a4-6d2e-7c3a-9a61-4f3c2b1a0e99","epoch":"2026-01-02T03:04:05.678Z","at":"2026-01-02T03:04:05.679Z"}"#,
        )
        .unwrap();
        let StreamEvent::EpochBumped { epoch, .. } = event else {
            panic!("wrong kind");
        };
        assert_eq!(rfc3339_millis(&epoch), Some(1_767_323_045_678));
    }
}
