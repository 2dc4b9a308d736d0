//! A real server on a loopback port, over a real store, driven with real HTTP.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod instrumented;
pub mod smtp;

use std::sync::Arc;

use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, COOKIE, SET_COOKIE};
use reqwest::{Client, Response};
use serde_json::{json, Value};
use tessera_core::config::{Config, ConfigLayer};
use tessera_core::keys::MasterKey;
use tessera_core::revocation::RevocationFeed;
use tessera_core::service::{KeyPolicy, Tessera};
use tessera_core::Store;

use instrumented::InstrumentedStore;

pub struct TestServer {
    pub base: String,
    /// `http://` and the `metrics_listen` address, where `/metrics` is served.
    pub metrics_base: String,
    pub client: Client,
    pub tessera: Arc<Tessera>,
    /// The node's store, for tests that arrange or inspect records directly (the server
    /// itself reaches it only through `tessera`).
    pub store: Arc<dyn Store>,
    pub config: Config,
    dir: Option<tempfile::TempDir>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    /// `tessera_server::serve`, which returns once the node has shut down.
    served: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl TestServer {
    /// Shuts the node down as SIGTERM does (requests finished, background work stopped and
    /// flushed) and waits until it has; the store stays readable through `tessera`.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(served) = self.served.take() {
            tokio::time::timeout(std::time::Duration::from_secs(60), served)
                .await
                .expect("the node did not shut down within 60 s")
                .unwrap();
        }
    }
}

/// Starts a server on the in-memory store with `settings` (TOML) over the defaults.
pub async fn start(settings: &str) -> TestServer {
    start_on("memory", settings).await
}

/// Starts a server on a fresh SQLite file.
pub async fn start_sqlite(settings: &str) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("tessera.db").display());
    let mut server = start_on(&database, settings).await;
    server.dir = Some(dir);
    server
}

async fn start_on(database: &str, settings: &str) -> TestServer {
    start_node(database, settings, MasterKey::generate(), None).await
}

/// A node of a cluster: nodes on one database share `master`; `feed` replaces the default
/// store-backed revocation feed (e.g. with one a test can pause).
pub async fn start_node(
    database: &str,
    settings: &str,
    master: MasterKey,
    feed: Option<Arc<dyn RevocationFeed>>,
) -> TestServer {
    launch(
        database,
        |_| settings.to_owned(),
        master,
        feed,
        |store| store,
    )
    .await
}

/// Polls `check` until it holds, for at most 5 s (another node hears of a revocation within
/// its feed's lag; a mail arrives when the outbox worker gets to it).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// The master key the nodes of a test cluster share, so each accepts the others' cookies and
/// tokens.
pub const CLUSTER_KEY: &str = "c2l4dGVlbi1ieXRlcy1vZi1rZXl4c2l4dGVlbi1ieXQ";

/// A node of a test cluster on `database`: issuer and allowed origin `http://tessera.test`, the
/// cluster's master key, `settings` over that, returned once its revocation feed is fresh.
pub async fn cluster_node(database: &str, settings: &str) -> TestServer {
    let settings = format!(
        "issuer = \"http://tessera.test\"\nallowed_origins = \"http://tessera.test\"\n{settings}"
    );
    let master = MasterKey::from_base64(CLUSTER_KEY).unwrap();
    let server = start_node(database, &settings, master, None).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !server.tessera.revocation_status().fresh {
        assert!(
            std::time::Instant::now() < deadline,
            "feed never became fresh"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    server
}

/// A node on a fresh SQLite file whose store a test can cut (and whose calls it can count):
/// see [`InstrumentedStore`]. Its revocation feed, in `cached` mode, reads the log through
/// the same wrapper, so cutting [`instrumented::Calls::LOG`] makes the feed fail.
pub async fn start_instrumented(settings: &str) -> (TestServer, Arc<InstrumentedStore>) {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("tessera.db").display());
    let (mut server, store) =
        start_instrumented_node(&database, settings, MasterKey::generate()).await;
    server.dir = Some(dir);
    (server, store)
}

/// As [`start_node`] with the default feed, over an [`InstrumentedStore`].
pub async fn start_instrumented_node(
    database: &str,
    settings: &str,
    master: MasterKey,
) -> (TestServer, Arc<InstrumentedStore>) {
    let mut wrapped = None;
    let server = launch(
        database,
        |_| settings.to_owned(),
        master,
        None,
        |store| {
            let store = Arc::new(InstrumentedStore::new(store));
            wrapped = Some(Arc::clone(&store));
            store
        },
    )
    .await;
    (server, wrapped.unwrap())
}

/// Starts a server on the in-memory store with the settings `settings` makes of the server's
/// own base URL (`http://127.0.0.1:PORT`), for settings that must name it (`allowed_origins`
/// beside another origin).
pub async fn start_knowing_base(settings: impl FnOnce(&str) -> String) -> TestServer {
    launch("memory", settings, MasterKey::generate(), None, |store| {
        store
    })
    .await
}

/// Opens `database`, hands the store to `wrap`, and serves a node over what it returns;
/// `settings` gets the node's base URL.
async fn launch(
    database: &str,
    settings: impl FnOnce(&str) -> String,
    master: MasterKey,
    feed: Option<Arc<dyn RevocationFeed>>,
    wrap: impl FnOnce(Arc<dyn Store>) -> Arc<dyn Store>,
) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = metrics_listener.local_addr().unwrap();
    let settings = settings(&format!("http://{addr}"));
    let text = format!(
        "listen = \"{addr}\"\nmetrics_listen = \"{metrics_addr}\"\ndatabase = \"{database}\"\n{settings}"
    );
    let config = ConfigLayer::from_toml(&text, std::path::Path::new("test.toml"))
        .unwrap()
        .resolve()
        .unwrap();
    let store = wrap(tessera_store::open(&config.database).await.unwrap());
    let config = Arc::new(config);
    let raw = Arc::clone(&store);
    let tessera = Arc::new(match feed {
        Some(feed) => {
            Tessera::start_with_feed(Arc::clone(&config), store, master, KeyPolicy::Serve, feed)
                .await
                .unwrap()
        }
        None => Tessera::start(Arc::clone(&config), store, master, KeyPolicy::Serve)
            .await
            .unwrap(),
    });
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let served = Arc::clone(&tessera);
    let served = tokio::spawn(async move {
        tessera_server::serve(listener, metrics_listener, served, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    TestServer {
        base: format!("http://{addr}"),
        metrics_base: format!("http://{metrics_addr}"),
        client: Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        tessera,
        store: raw,
        config: (*config).clone(),
        dir: None,
        shutdown: Some(tx),
        served: Some(served),
    }
}

/// What a browser keeps after logging in.
pub struct Browser {
    pub cookie: String,
    pub csrf: String,
    pub body: Value,
}

pub const PASSWORD: &str = "correct horse battery";

pub fn unique_email() -> String {
    format!("user-{}@example.com", uuid_like())
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{nanos:x}{n}")
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn sign_up(&self, email: &str) -> Value {
        let res = self
            .client
            .post(self.url("/v1/users"))
            .json(&json!({ "email": email, "password": PASSWORD }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        res.json().await.unwrap()
    }

    pub async fn login_raw(&self, email: &str, password: &str, extra: HeaderMap) -> Response {
        self.client
            .post(self.url("/v1/login"))
            .headers(extra)
            .json(&json!({ "email": email, "password": password }))
            .send()
            .await
            .unwrap()
    }

    /// Signs up a fresh user and logs in with a browser.
    pub async fn browser(&self) -> (String, Browser) {
        let email = unique_email();
        self.sign_up(&email).await;
        let browser = self.login(&email).await;
        (email, browser)
    }

    pub async fn login(&self, email: &str) -> Browser {
        let res = self.login_raw(email, PASSWORD, HeaderMap::new()).await;
        assert_eq!(res.status(), 200);
        let cookie = cookie_pair(&res);
        let body: Value = res.json().await.unwrap();
        Browser {
            cookie,
            csrf: body["csrf_token"].as_str().unwrap().to_owned(),
            body,
        }
    }

    /// Signs up a fresh user and signs in with the password grant: `(email, token pair)`.
    pub async fn user_with_tokens(&self) -> (String, Value) {
        let email = unique_email();
        self.sign_up(&email).await;
        let pair = self.password_grant(&email).await;
        (email, pair)
    }

    pub async fn password_grant(&self, email: &str) -> Value {
        let res = self
            .client
            .post(self.url("/oauth2/token"))
            .form(&[
                ("grant_type", "password"),
                ("username", email),
                ("password", PASSWORD),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res.json().await.unwrap()
    }

    pub async fn refresh(&self, refresh_token: &str) -> Response {
        self.client
            .post(self.url("/oauth2/token"))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ])
            .send()
            .await
            .unwrap()
    }

    /// `POST /v1/logout` with the browser's cookie and CSRF token.
    pub async fn logout(&self, browser: &Browser) -> Response {
        self.client
            .post(self.url("/v1/logout"))
            .header(COOKIE, &browser.cookie)
            .header("x-csrf-token", &browser.csrf)
            .send()
            .await
            .unwrap()
    }

    /// RFC 7009 revocation of either kind of token; expects the 200 it always answers.
    pub async fn revoke_token(&self, token: &str) {
        let res = self
            .client
            .post(self.url("/oauth2/revoke"))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }

    pub async fn verify_bearer(&self, token: &str) -> Response {
        self.client
            .get(self.url("/v1/verify"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    pub async fn verify_cookie(&self, cookie: &str) -> Response {
        self.client
            .get(self.url("/v1/verify"))
            .header(COOKIE, cookie)
            .send()
            .await
            .unwrap()
    }

    pub async fn session_with_cookie(&self, cookie: &str) -> Response {
        self.client
            .get(self.url("/v1/session"))
            .header(COOKIE, cookie)
            .send()
            .await
            .unwrap()
    }
}

/// `name=value` of the response's `Set-Cookie`, as a browser would send it back.
pub fn cookie_pair(res: &Response) -> String {
    let set_cookie = res.headers().get(SET_COOKIE).unwrap().to_str().unwrap();
    set_cookie.split(';').next().unwrap().to_owned()
}

pub fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.insert(*name, HeaderValue::from_str(value).unwrap());
    }
    map
}

pub fn form_content_type() -> (reqwest::header::HeaderName, &'static str) {
    (CONTENT_TYPE, "application/x-www-form-urlencoded")
}

/// The `error` code of a JSON error response.
pub async fn error_code(res: Response) -> Value {
    res.json::<Value>().await.unwrap()["error"].clone()
}
