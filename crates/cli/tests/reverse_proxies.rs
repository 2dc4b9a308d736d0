#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The reverse-proxy examples (`examples/nginx`, `examples/caddy`) as they are shipped, run
//! by real nginx and Caddy in front of a real `tessera serve` and an application that echoes
//! the headers it got: who gets through, with which identity headers, who is sent to sign in,
//! and that a revocation holds on the very next request.
//!
//! A missing nginx or Caddy skips its test, or fails it under `TESSERA_REQUIRE_SERVICES=1`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{redirect, Client, StatusCode, Url};
use serde_json::{json, Value};
use support::{create_admin_key, grant, login, logout, serve_with, sign_up, Server, ISSUER};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Where the sign-in pages are served; the links of a 401 start with it.
const PUBLIC_URL: &str = "https://auth.example.test";

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// The program, from `PATH` or the system directories Debian installs nginx into (outside a
/// normal user's `PATH`); `None`, having said why, when the test is to be skipped.
fn program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        tessera_store::testing::skip_or_fail(
            &format!("the {name} example"),
            &format!("`{name}` is not installed"),
        );
    }
    found
}

/// A port free a moment ago (nginx and Caddy cannot be told to pick one and say which).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The application behind the proxy: answers every request with its method, target and
/// headers as JSON (`headers` a list of `[name, value]`, so repeated headers show), and
/// counts the requests that reached it.
struct Upstream {
    url: String,
    hits: Arc<AtomicUsize>,
}

impl Upstream {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(echo(stream, Arc::clone(&counter)));
            }
        });
        Self { url, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn echo(stream: TcpStream, hits: Arc<AtomicUsize>) {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await.unwrap();
    let mut parts = line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap().to_owned(),
        parts.next().unwrap().to_owned(),
    );
    let mut headers = Vec::new();
    let mut length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).await.unwrap();
        let Some((name, value)) = line.trim_end().split_once(':') else {
            break;
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_owned());
        if name == "content-length" {
            length = value.parse().unwrap();
        }
        headers.push(json!([name, value]));
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.unwrap();
    hits.fetch_add(1, Ordering::SeqCst);
    let answer = json!({ "method": method, "target": target, "headers": headers }).to_string();
    let mut stream = reader.into_inner();
    stream
        .write_all(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{answer}",
                answer.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let _ = stream.shutdown().await;
}

/// The values the application got for `name`.
fn received<'a>(echoed: &'a Value, name: &str) -> Vec<&'a str> {
    echoed["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|pair| pair[0] == name)
        .map(|pair| pair[1].as_str().unwrap())
        .collect()
}

/// A proxy process of the test's own, killed when dropped.
struct Proxy {
    child: Child,
    origin: String,
    log: PathBuf,
    port: u16,
    /// Over TLS: the file of the CA that signed the proxy's certificate (it may appear only
    /// once the proxy runs).
    ca: Option<PathBuf>,
}

/// The hosts the TLS tests reach the proxy by, under `cookie_domain`.
const DOMAIN: &str = "example.com";
const HOSTS: [&str; 3] = ["auth.example.com", "app.example.com", "admin.example.com"];

impl Proxy {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A client of this proxy: over TLS one that resolves [`HOSTS`] to it, trusts its CA
    /// and keeps cookies as a browser does.
    fn client(&self) -> Option<Client> {
        let builder = Client::builder().redirect(redirect::Policy::none());
        let Some(ca) = &self.ca else {
            return Some(builder.build().unwrap());
        };
        let pem = std::fs::read(ca).ok()?;
        let mut builder = builder
            .cookie_store(true)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
        for host in HOSTS {
            builder = builder.resolve(host, ([127, 0, 0, 1], self.port).into());
        }
        Some(builder.build().unwrap())
    }

    /// Waits until the proxy answers (any status), failing with its log if it exits.
    async fn ready(mut self) -> Self {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(client) = self.client() {
                if client.get(self.url("/")).send().await.is_ok() {
                    return self;
                }
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the proxy exited ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the proxy did not answer: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// SIGTERM first: nginx's master then stops its workers, which a SIGKILL would leave
/// running (and listening) without it. SIGKILL only if it has not exited within 5 s.
impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx with `examples/nginx/tessera.conf.template` filled as envsubst would, in a main
/// configuration that keeps everything (pid, logs, temporary files) in `dir`.
fn nginx(nginx: &Path, dir: &Path, port: u16, tessera: &str, app: &str, tls: bool) -> Proxy {
    let template = std::fs::read_to_string(examples().join("nginx/tessera.conf.template")).unwrap();
    let listen = if tls {
        format!("127.0.0.1:{port} ssl")
    } else {
        format!("127.0.0.1:{port}")
    };
    let site = template
        .replace("${LISTEN}", &listen)
        .replace("${TESSERA_URL}", tessera)
        .replace("${APP_URL}", app);
    assert!(!site.contains("${"), "an unfilled variable: {site}");
    std::fs::write(dir.join("tessera.conf"), site).unwrap();
    // As root, workers would otherwise run as `nobody`, who cannot write into `dir`.
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0");
    let d = dir.display();
    let main = format!(
        "{user}worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx.log info;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         {certificate}include {d}/tessera.conf;\n}}\n",
        user = if is_root { "user root;\n" } else { "" },
        certificate = if tls {
            format!("ssl_certificate {d}/leaf.pem;\n  ssl_certificate_key {d}/leaf.key;\n  ")
        } else {
            String::new()
        },
    );
    let ca = tls.then(|| certificates(dir));
    std::fs::write(dir.join("nginx.conf"), main).unwrap();
    let log = dir.join("nginx.log");
    let child = Command::new(nginx)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-e")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("nginx.stderr")).unwrap())
        .spawn()
        .unwrap();
    Proxy {
        child,
        origin: origin(tls, port),
        log,
        port,
        ca,
    }
}

/// The proxy's origin: over TLS the application's host.
fn origin(tls: bool, port: u16) -> String {
    if tls {
        format!("https://app.{DOMAIN}:{port}")
    } else {
        format!("http://127.0.0.1:{port}")
    }
}

/// A CA and a certificate it signed for `*.example.com`, made with the openssl program into
/// `dir` (`leaf.pem`, `leaf.key`); returns the CA's file.
fn certificates(dir: &Path) -> PathBuf {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509", "-days", "2", "-subj", "/CN=Tessera test CA"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.pem"],
            &["-addext", "basicConstraints=critical,CA:TRUE"],
            &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ]
        .concat(),
    );
    openssl(
        &[
            &[
                "req",
                "-subj",
                "/CN=*.example.com",
                "-keyout",
                "leaf.key",
                "-out",
                "leaf.csr",
            ][..],
            &ec,
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:*.example.com,DNS:example.com\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-days",
        "2",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-extfile",
        "leaf.ext",
        "-out",
        "leaf.pem",
    ]);
    dir.join("ca.pem")
}

/// Caddy with `examples/caddy/Caddyfile` imported as it is, its values from the environment,
/// under global options that keep it off the admin port and its state in `dir`.
///
/// Over TLS, Caddy's own CA issues the certificates of [`HOSTS`] (`local_certs`), and stays
/// out of the system's trust store (`skip_install_trust`); the test trusts its root file.
fn caddy(caddy: &Path, dir: &Path, port: u16, tessera: &str, app: &str, tls: bool) -> Proxy {
    let (options, site) = if tls {
        let sites: Vec<String> = HOSTS
            .iter()
            .map(|h| format!("https://{h}:{port}"))
            .collect();
        (
            format!(
                "\tlocal_certs\n\tskip_install_trust\n\thttp_port {}\n\thttps_port {port}\n",
                free_port()
            ),
            sites.join(", "),
        )
    } else {
        (
            "\tauto_https off\n".to_owned(),
            format!("http://127.0.0.1:{port}"),
        )
    };
    let main = format!(
        "{{\n\tadmin off\n{options}}}\n\nimport {}\n",
        examples().join("caddy/Caddyfile").display()
    );
    std::fs::write(dir.join("Caddyfile"), main).unwrap();
    let log = dir.join("caddy.log");
    let child = Command::new(caddy)
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(dir.join("Caddyfile"))
        .env("SITE_ADDRESS", site)
        .env("TESSERA_URL", tessera)
        .env("APP_URL", app)
        .env("HOME", dir)
        .env("XDG_DATA_HOME", dir)
        .env("XDG_CONFIG_HOME", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Proxy {
        child,
        origin: origin(tls, port),
        log,
        port,
        ca: tls.then(|| dir.join("caddy/pki/authorities/local/root.crt")),
    }
}

type Start = fn(&Path, &Path, u16, &str, &str, bool) -> Proxy;

#[tokio::test]
async fn nginx_example_guards_an_application() {
    if let Some(program) = program("nginx") {
        guards_an_application(&program, nginx).await;
    }
}

#[tokio::test]
async fn caddy_example_guards_an_application() {
    if let Some(program) = program("caddy") {
        guards_an_application(&program, caddy).await;
    }
}

/// A 200 the application answered: what it echoed.
async fn passed(res: reqwest::Response, case: &str) -> Value {
    assert_eq!(res.status(), StatusCode::OK, "{case}");
    res.json().await.unwrap()
}

async fn guards_an_application(program: &Path, start: Start) {
    let dir = tempfile::tempdir().unwrap();
    let app = Upstream::start().await;
    let port = free_port();
    let origin = format!("http://127.0.0.1:{port}");
    let tessera: Server = serve_with(
        dir.path(),
        "warn",
        &[
            "--issuer",
            ISSUER,
            "--allowed-origins",
            &origin,
            "--public-url",
            PUBLIC_URL,
        ],
    )
    .await;
    let proxy = start(program, dir.path(), port, &tessera.base, &app.url, false)
        .ready()
        .await;
    let client = proxy.client().unwrap();

    // A user with roles, signed in in a browser (cookie) and by an API client (token).
    let email = "proxied@example.com";
    let user = sign_up(&client, &tessera, email).await;
    let (_, admin) = create_admin_key(dir.path(), &[]);
    let res = client
        .put(tessera.url(&format!("/v1/admin/users/{user}/roles")))
        .bearer_auth(&admin)
        .json(&json!({ "roles": ["editor", "viewer"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let browser = login(&client, &tessera, email).await;
    let (token, _) = grant(&client, &tessera, email).await;
    let forged = [
        ("x-auth-user", "00000000-0000-0000-0000-000000000000"),
        ("x-auth-session", "forged"),
        ("x-auth-roles", "admin"),
    ];

    // Through with the cookie and with the token: Tessera's identity reaches the
    // application, the client's forged identity headers do not.
    let mut sessions = Vec::new();
    for (case, credential) in [
        ("cookie", ("cookie", browser.cookie.clone())),
        ("bearer", ("authorization", format!("Bearer {token}"))),
    ] {
        let mut request = client
            .get(proxy.url("/app/page?x=1"))
            .header(credential.0, &credential.1);
        for (name, value) in forged {
            request = request.header(name, value);
        }
        let echoed = passed(request.send().await.unwrap(), case).await;
        assert_eq!(echoed["target"], "/app/page?x=1", "{case}");
        assert_eq!(received(&echoed, "x-auth-user"), [user.as_str()], "{case}");
        assert_eq!(
            received(&echoed, "x-auth-roles"),
            ["editor,viewer"],
            "{case}"
        );
        let session = received(&echoed, "x-auth-session");
        assert_eq!(session.len(), 1, "{case}: {session:?}");
        assert_ne!(session[0], "forged", "{case}");
        sessions.push(session[0].to_owned());
    }
    assert_ne!(sessions[0], sessions[1], "two sign-ins, two sessions");

    // Without a credential: an API client keeps the 401, a browser goes to sign in, with the
    // URL it asked for whole in `return_to` (its `&` encoded, not cutting the query).
    let hits = app.hits();
    let res = client
        .get(proxy.url("/app/page?x=1&y=2"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let challenge = res.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("invalid_token"), "{challenge}");
    let res = client
        .get(proxy.url("/app/page?x=1&y=a%26b&z=%C3%A9"))
        .header(
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FOUND, "{}", proxy.log());
    let location = res.headers()["location"].to_str().unwrap();
    assert!(
        location.starts_with(&format!("{PUBLIC_URL}/ui/login?return_to=")),
        "{location}"
    );
    assert!(!location.contains('&'), "one query parameter: {location}");
    let location = Url::parse(location).unwrap();
    let return_to: Vec<_> = location.query_pairs().collect();
    assert_eq!(return_to.len(), 1, "{location}");
    assert_eq!(return_to[0].0, "return_to");
    assert_eq!(
        return_to[0].1,
        format!("{origin}/app/page?x=1&y=a%26b&z=%C3%A9")
    );
    // A forged or expired cookie is no credential either.
    let res = client
        .get(proxy.url("/app/"))
        .header("accept", "text/html")
        .header("cookie", "__Host-tessera_session=forged")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FOUND);
    assert_eq!(
        app.hits(),
        hits,
        "nothing unauthenticated reached the application"
    );

    // Unsafe methods with the cookie: refused from another site, let through from the
    // application's own origin.
    for (case, header) in [
        ("foreign origin", ("origin", "https://evil.example")),
        ("cross-site fetch", ("sec-fetch-site", "cross-site")),
    ] {
        let res = client
            .post(proxy.url("/app/transfer"))
            .header("cookie", &browser.cookie)
            .header(header.0, header.1)
            .form(&[("amount", "100")])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{case}");
    }
    assert_eq!(
        app.hits(),
        hits,
        "no cross-site request reached the application"
    );
    let res = client
        .post(proxy.url("/app/transfer"))
        .header("cookie", &browser.cookie)
        .header("origin", &origin)
        .header("sec-fetch-site", "same-origin")
        .form(&[("amount", "100")])
        .send()
        .await
        .unwrap();
    let echoed = passed(res, "same-origin post").await;
    assert_eq!(echoed["method"], "POST");
    assert_eq!(received(&echoed, "x-auth-user"), [user.as_str()]);

    // Revoked: the cookie by signing out, the token by an administrator; each refused on
    // the very next request.
    logout(&client, &tessera, &browser).await;
    let res = client
        .get(proxy.url("/app/page"))
        .header("cookie", &browser.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "after sign-out");
    let res = client
        .delete(tessera.url(&format!("/v1/admin/sessions/{}", sessions[1])))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = client
        .get(proxy.url("/app/page"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "after admin revoke");
    assert_eq!(
        app.hits(),
        hits + 1,
        "only the same-origin post got through"
    );
}

#[tokio::test]
async fn nginx_example_shares_one_sign_in_across_subdomains() {
    if let Some(program) = program("nginx").filter(|_| program("openssl").is_some()) {
        shares_one_sign_in_across_subdomains(&program, nginx).await;
    }
}

#[tokio::test]
async fn caddy_example_shares_one_sign_in_across_subdomains() {
    if let Some(program) = program("caddy") {
        shares_one_sign_in_across_subdomains(&program, caddy).await;
    }
}

/// SPEC §2 `cookie_domain`: Tessera on `auth.example.com`, applications on
/// `app.example.com` and `admin.example.com`, all behind one proxy over TLS. A browser (a
/// cookie jar) signs in once and is let through on both applications as the same session;
/// one not signed in is sent to sign in with a `return_to` the sign-in page accepts; a
/// sign-out holds on both.
async fn shares_one_sign_in_across_subdomains(program: &Path, start: Start) {
    let dir = tempfile::tempdir().unwrap();
    let app = Upstream::start().await;
    let port = free_port();
    let at = |host: &str, path: &str| format!("https://{host}:{port}{path}");
    let public_url = at("auth.example.com", "");
    // The sign-in page's own origin too: its form posts are checked against the list.
    let origins = format!(
        "{public_url},{},{}",
        at("app.example.com", ""),
        at("admin.example.com", "")
    );
    let tessera = serve_with(
        dir.path(),
        "warn",
        &[
            "--issuer",
            ISSUER,
            "--cookie-domain",
            DOMAIN,
            "--public-url",
            &public_url,
            "--allowed-origins",
            &origins,
        ],
    )
    .await;
    let proxy = start(program, dir.path(), port, &tessera.base, &app.url, true)
        .ready()
        .await;
    let email = "everywhere@example.com";
    let user = sign_up(&Client::new(), &tessera, email).await;

    // Signed in once, on the auth host: a `__Secure-` cookie for the whole domain.
    let browser = proxy.client().unwrap();
    let (cookie, csrf) = sign_in(&browser, &at("auth.example.com", "/v1/login"), email).await;

    // Through on both applications, as the same session.
    let mut sessions = Vec::new();
    for host in ["app.example.com", "admin.example.com"] {
        let res = browser
            .get(at(host, "/home"))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap();
        let echoed = passed(res, host).await;
        assert_eq!(received(&echoed, "x-auth-user"), [user.as_str()], "{host}");
        sessions.push(received(&echoed, "x-auth-session").concat());
    }
    assert_eq!(sessions[0], sessions[1], "one sign-in, one session");

    // A browser not signed in is sent to the auth host, the subdomain's URL whole in
    // `return_to`; the sign-in page's own check accepts it, and refuses another domain.
    let stranger = proxy.client().unwrap();
    let wanted = at("admin.example.com", "/panel?tab=users&page=2");
    let res = stranger
        .get(&wanted)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FOUND, "{}", proxy.log());
    let location = Url::parse(res.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(
        location.as_str().split('?').next(),
        Some(format!("{public_url}/ui/login").as_str())
    );
    let return_to: Vec<_> = location.query_pairs().collect();
    assert_eq!(return_to.len(), 1, "{location}");
    assert_eq!(
        (return_to[0].0.as_ref(), return_to[0].1.as_ref()),
        ("return_to", wanted.as_str())
    );
    signs_in_through_the_page(&stranger, &location, &wanted, email, &user).await;

    // Signed out on the auth host: refused on both applications at once.
    let res = browser
        .post(at("auth.example.com", "/v1/logout"))
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    for host in ["app.example.com", "admin.example.com"] {
        let res = browser
            .get(at(host, "/home"))
            .header("accept", "application/json")
            .header("cookie", cookie.split(';').next().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{host}");
    }
}

/// The way a browser sent to sign in goes: it opens the sign-in page at `location` (on the
/// auth host, through the proxy), posts the form from there, and is sent on to `wanted` on
/// another subdomain, where it is let through. The page refuses a `return_to` on another
/// domain, or on plain http, before anyone is signed in.
async fn signs_in_through_the_page(
    browser: &Client,
    location: &Url,
    wanted: &str,
    email: &str,
    user: &str,
) {
    let res = browser.get(location.as_str()).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{location}");
    let page = res.text().await.unwrap();
    assert!(page.contains("name=\"return_to\""), "{page}");
    let auth = location.origin().ascii_serialization();
    let form = |return_to: &str| {
        browser
            .post(format!("{auth}/ui/login"))
            .header("origin", &auth)
            .form(&[
                ("email", email),
                ("password", support::PASSWORD),
                ("return_to", return_to),
            ])
            .send()
    };
    let port = location.port().unwrap();
    for refused in [
        "https://evil.example.net/".to_owned(),
        format!("http://admin.example.com:{port}/"),
    ] {
        let res = browser
            .get(format!("{auth}/ui/login"))
            .query(&[("return_to", &refused)])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{refused}");
        let res = form(&refused).await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{refused}");
        assert!(res.headers().get("set-cookie").is_none(), "{refused}");
    }
    let res = form(wanted).await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()["location"], wanted);
    let res = browser
        .get(wanted)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    let echoed = passed(res, "after signing in").await;
    assert_eq!(received(&echoed, "x-auth-user"), [user]);
    assert_eq!(echoed["target"], "/panel?tab=users&page=2");
}

/// Signs in at `login` with the cookie jar of `browser`: the session cookie as set (with its
/// attributes), checked to be a `__Secure-` cookie for the whole domain, and the CSRF token.
async fn sign_in(browser: &Client, login: &str, email: &str) -> (String, String) {
    let res = browser
        .post(login)
        .json(&json!({ "email": email, "password": support::PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let cookie = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("__Secure-tessera_session="))
        .unwrap_or_else(|| panic!("no domain cookie: {:?}", res.headers()));
    let attributes = cookie.to_ascii_lowercase();
    assert!(
        attributes.contains("; domain=example.com") && attributes.contains("; secure"),
        "{cookie}"
    );
    let csrf = res.json::<Value>().await.unwrap()["csrf_token"]
        .as_str()
        .unwrap()
        .to_owned();

    (cookie, csrf)
}
