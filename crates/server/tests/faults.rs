//! One transaction per operation, proven by breaking it: for every kind of state change the
//! API offers, a store that fails the commit — or, separately, a write half-way through —
//! makes the request answer 503 in the API's error shape, leaves no trace of the operation (no
//! state, no revocation-log entry, no webhook message), and the same request succeeds once
//! the store is healed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;

use reqwest::header::COOKIE;
use reqwest::Response;
use serde_json::{json, Value};
use support::instrumented::{InstrumentedStore, Writes};
use support::{start_instrumented, unique_email, Browser, TestServer, PASSWORD};
use tessera_core::model::{SessionId, Timestamp, UserId};

/// Every event is subscribed, so each operation that reports one writes an outbox row. The
/// endpoint refuses connections: messages stay waiting, and are counted.
///
/// Mail goes to a server nobody runs, like the webhooks: the sign-up's mail job stays queued (each
/// attempt fails and is retried), so the outbox count is stable between steps.
const SETTINGS: &str = "smtp_url = \"smtp://127.0.0.1:9?tls=none\"\n[[webhooks]]\nurl = \"http://127.0.0.1:9/hooks\"\nsecret = \"a long shared secret\"\nevents = [\"session.created\", \"session.revoked\", \"user.signed_out_everywhere\", \"refresh.reuse_detected\", \"user.roles_changed\"]\n";

/// How a fault is injected.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// The last step fails: every write was made, the commit is refused.
    Commit,
    /// The first revocation-log entry fails, after the change it reports was written.
    LogWrite,
    /// The first webhook message fails, after the change it reports was written.
    OutboxWrite,
    /// The first write of any kind fails.
    FirstWrite,
}

impl Fault {
    fn inject(self, store: &InstrumentedStore) {
        match self {
            Fault::Commit => store.fail_commit(),
            Fault::LogWrite => store.fail_write_of(Writes::Log, 1),
            Fault::OutboxWrite => store.fail_write_of(Writes::Outbox, 1),
            Fault::FirstWrite => store.fail_write(1),
        }
    }
}

/// What an operation leaves behind besides its own state: log entries and waiting messages.
#[derive(Debug, PartialEq, Eq)]
struct Trace {
    log: u64,
    outbox: usize,
}

async fn trace(server: &TestServer) -> Trace {
    Trace {
        log: server.store.latest_event().await.unwrap(),
        outbox: server
            .store
            .due_messages(Timestamp::from_unix(i64::MAX / 2), 100_000)
            .await
            .unwrap()
            .len(),
    }
}

/// 503 in the JSON shape of the API (`oauth`: RFC 6749's).
async fn assert_unavailable(res: Response, oauth: bool, what: &str) {
    assert_eq!(res.status(), 503, "{what}");
    let body: Value = res.json().await.unwrap();
    if oauth {
        assert_eq!(body["error"], "temporarily_unavailable", "{what}: {body}");
        assert!(body["error_description"].is_string(), "{what}: {body}");
    } else {
        assert_eq!(body["error"], "unavailable", "{what}: {body}");
        assert!(body["message"].is_string(), "{what}: {body}");
    }
}

/// What an operation writes besides its own state, and which error shape its route speaks.
#[derive(Debug, Clone, Copy)]
struct Reports {
    log: bool,
    outbox: bool,
    oauth: bool,
}

const API_CHANGE: Reports = Reports {
    log: false,
    outbox: false,
    oauth: false,
};
const API_SIGN_IN: Reports = Reports {
    log: false,
    outbox: true,
    oauth: false,
};
const API_REVOCATION: Reports = Reports {
    log: true,
    outbox: true,
    oauth: false,
};
const TOKEN_SIGN_IN: Reports = Reports {
    log: false,
    outbox: true,
    oauth: true,
};
const TOKEN_ROTATION: Reports = Reports {
    log: false,
    outbox: false,
    oauth: true,
};
const JTI_DENIAL: Reports = Reports {
    log: true,
    outbox: false,
    oauth: true,
};
const FAMILY_REVOCATION: Reports = Reports {
    log: true,
    outbox: true,
    oauth: true,
};

struct Node {
    server: TestServer,
    store: Arc<InstrumentedStore>,
    admin: String,
}

impl Node {
    async fn start() -> Self {
        let (server, store) = start_instrumented(SETTINGS).await;
        let (_, secret) = server
            .tessera
            .create_admin_key("faults", tessera_core::model::AdminScope::Admin)
            .await
            .unwrap();
        Self {
            server,
            store,
            admin: secret.expose_secret().to_owned(),
        }
    }

    /// Runs `request` under `fault`, expects a clean 503 and no trace, heals, runs it again
    /// and returns that answer. `reports` says whether the operation appends to the
    /// revocation log and queues a webhook message: a fault in a write it does not make
    /// cannot touch it, so it simply runs.
    async fn fails_cleanly<F, Fut>(
        &self,
        fault: Fault,
        reports: Reports,
        what: &str,
        request: F,
    ) -> Response
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = reqwest::Result<Response>>,
    {
        let applies = match fault {
            Fault::Commit | Fault::FirstWrite => true,
            Fault::LogWrite => reports.log,
            Fault::OutboxWrite => reports.outbox,
        };
        if !applies {
            return request().await.unwrap();
        }
        let before = trace(&self.server).await;
        fault.inject(&self.store);
        let res = request().await.unwrap();
        self.store.heal();
        assert_unavailable(res, reports.oauth, &format!("{what} under {fault:?}")).await;
        assert_eq!(
            trace(&self.server).await,
            before,
            "{what} under {fault:?} left a log entry or a message"
        );
        request().await.unwrap()
    }

    async fn user_id(&self, email: &str) -> UserId {
        let email = tessera_core::model::Email::parse(email).unwrap();
        self.server
            .store
            .find_user_by_email(&email)
            .await
            .unwrap()
            .unwrap()
            .id
    }

    async fn live_sessions(&self, user: UserId) -> usize {
        self.server
            .store
            .list_live_sessions(user, Timestamp::now())
            .await
            .unwrap()
            .len()
    }

    async fn epoch(&self, user: UserId) -> Timestamp {
        self.server
            .store
            .find_user(user)
            .await
            .unwrap()
            .unwrap()
            .tokens_valid_after
    }

    fn post_json(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.server.client.post(self.server.url(path)).json(body)
    }
}

/// A cookie request with its CSRF token.
fn with_cookie(request: reqwest::RequestBuilder, browser: &Browser) -> reqwest::RequestBuilder {
    request
        .header(COOKIE, &browser.cookie)
        .header("x-csrf-token", &browser.csrf)
}

#[allow(clippy::too_many_lines)] // one walk through every kind of change, in order
async fn every_operation_is_all_or_nothing(fault: Fault) {
    let node = Node::start().await;
    let s = &node.server;

    // Sign-up: no user.
    let email = unique_email();
    let res = node
        .fails_cleanly(fault, API_CHANGE, "sign-up", || {
            node.post_json("/v1/users", &json!({"email": email, "password": PASSWORD}))
                .send()
        })
        .await;
    assert_eq!(res.status(), 201, "sign-up after healing");
    let user = node.user_id(&email).await;

    // Cookie login: no session.
    let res = node
        .fails_cleanly(fault, API_SIGN_IN, "login", || {
            node.post_json("/v1/login", &json!({"email": email, "password": PASSWORD}))
                .send()
        })
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(node.live_sessions(user).await, 1, "one login, one session");
    let browser = s.login(&email).await;

    // Password grant, with its first refresh token: no session.
    let grant = || {
        s.client
            .post(s.url("/oauth2/token"))
            .form(&[
                ("grant_type", "password"),
                ("username", email.as_str()),
                ("password", PASSWORD),
            ])
            .send()
    };
    let res = node
        .fails_cleanly(fault, TOKEN_SIGN_IN, "password grant", grant)
        .await;
    assert_eq!(res.status(), 200);
    let pair: Value = res.json().await.unwrap();
    assert_eq!(node.live_sessions(user).await, 3);

    // Refresh rotation: the presented token is not spent, so it rotates after healing.
    // (A rotation reports nothing: under a log or outbox fault it simply succeeds.)
    let refresh_token = pair["refresh_token"].as_str().unwrap().to_owned();
    if matches!(fault, Fault::Commit | Fault::FirstWrite) {
        let res = node
            .fails_cleanly(fault, TOKEN_ROTATION, "refresh", || async {
                Ok::<_, reqwest::Error>(s.refresh(&refresh_token).await)
            })
            .await;
        assert_eq!(
            res.status(),
            200,
            "the token was not spent by the failed rotation"
        );
    }

    // RFC 7009, an access token: its jti is not denied.
    let access = pair["access_token"].as_str().unwrap().to_owned();
    let revoke = |token: String| {
        s.client
            .post(s.url("/oauth2/revoke"))
            .form(&[("token", token)])
            .send()
    };
    let res = node
        .fails_cleanly(fault, JTI_DENIAL, "access token revocation", || {
            revoke(access.clone())
        })
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(s.verify_bearer(&access).await.status(), 401);

    // RFC 7009, a refresh token: the family lives until the retry.
    let second = s.password_grant(&email).await;
    let family_token = second["refresh_token"].as_str().unwrap().to_owned();
    let live = node.live_sessions(user).await;
    let res = node
        .fails_cleanly(fault, FAMILY_REVOCATION, "refresh token revocation", || {
            revoke(family_token.clone())
        })
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(node.live_sessions(user).await, live - 1);

    // Logout: the cookie still works until the retry.
    let res = node
        .fails_cleanly(fault, API_REVOCATION, "logout", || {
            with_cookie(s.client.post(s.url("/v1/logout")), &browser).send()
        })
        .await;
    assert_eq!(res.status(), 204);
    assert_eq!(s.verify_cookie(&browser.cookie).await.status(), 401);

    // Device sign-out, one and all others.
    let current = s.login(&email).await;
    let other = s.password_grant(&email).await;
    let other_session = s
        .tessera
        .verify_token(other["access_token"].as_str().unwrap())
        .await
        .unwrap()
        .sid;
    let res = node
        .fails_cleanly(fault, API_REVOCATION, "device sign-out", || {
            with_cookie(
                s.client
                    .delete(s.url(&format!("/v1/sessions/{other_session}"))),
                &current,
            )
            .send()
        })
        .await;
    assert_eq!(res.status(), 204);
    s.password_grant(&email).await;
    let live = node.live_sessions(user).await;
    let res = node
        .fails_cleanly(fault, API_REVOCATION, "sign-out of other devices", || {
            with_cookie(s.client.delete(s.url("/v1/sessions")), &current).send()
        })
        .await;
    assert_eq!(res.status(), 204);
    assert!(node.live_sessions(user).await < live);
    assert_eq!(
        node.live_sessions(user).await,
        1,
        "the current device stays"
    );

    // Administration: one session, a role change, every session of a user.
    let target = s.password_grant(&email).await;
    let target_session = SessionId::parse(
        &s.tessera
            .verify_token(target["access_token"].as_str().unwrap())
            .await
            .unwrap()
            .sid,
    )
    .unwrap();
    let res = node
        .fails_cleanly(fault, API_REVOCATION, "admin session revocation", || {
            s.client
                .delete(s.url(&format!("/v1/admin/sessions/{target_session}")))
                .bearer_auth(&node.admin)
                .send()
        })
        .await;
    assert_eq!(res.status(), 204);
    let epoch = node.epoch(user).await;
    let res = node
        .fails_cleanly(fault, API_REVOCATION, "role change", || {
            s.client
                .put(s.url(&format!("/v1/admin/users/{user}/roles")))
                .bearer_auth(&node.admin)
                .json(&json!({"roles": ["editor"]}))
                .send()
        })
        .await;
    assert_eq!(res.status(), 200);
    assert!(node.epoch(user).await > epoch, "the retry bumped the epoch");
    let epoch = node.epoch(user).await;
    assert!(node.live_sessions(user).await >= 1);
    let res = node
        .fails_cleanly(fault, API_REVOCATION, "admin sign-out everywhere", || {
            s.client
                .delete(s.url(&format!("/v1/admin/users/{user}/sessions")))
                .bearer_auth(&node.admin)
                .send()
        })
        .await;
    assert_eq!(res.status(), 204);
    assert_eq!(node.live_sessions(user).await, 0);
    assert!(node.epoch(user).await > epoch);

    // The user's own sign-out everywhere.
    let again = s.login(&email).await;
    let epoch = node.epoch(user).await;
    let res = node
        .fails_cleanly(fault, API_REVOCATION, "sign-out everywhere", || {
            with_cookie(s.client.post(s.url("/v1/logout?everywhere=true")), &again).send()
        })
        .await;
    assert_eq!(res.status(), 204);
    assert_eq!(node.live_sessions(user).await, 0);
    assert!(node.epoch(user).await > epoch);
}

/// The state checks between the steps above see the state *after* the retry; that the failed
/// attempt itself left nothing is checked by [`Node::fails_cleanly`] (log and outbox) and by
/// these probes of the state each operation would have changed.
#[tokio::test]
async fn a_failed_commit_leaves_no_state_behind() {
    let node = Node::start().await;
    let s = &node.server;
    let email = unique_email();
    s.sign_up(&email).await;
    let user = node.user_id(&email).await;
    let browser = s.login(&email).await;
    let epoch = node.epoch(user).await;
    let sessions = node.live_sessions(user).await;

    node.store.fail_commit();
    let res = node.post_json(
        "/v1/users",
        &json!({"email": unique_email(), "password": PASSWORD}),
    );
    assert_eq!(res.send().await.unwrap().status(), 503);
    let res = node.post_json("/v1/login", &json!({"email": email, "password": PASSWORD}));
    assert_eq!(res.send().await.unwrap().status(), 503);
    let everywhere = with_cookie(s.client.post(s.url("/v1/logout?everywhere=true")), &browser)
        .send()
        .await
        .unwrap();
    assert_eq!(everywhere.status(), 503);
    node.store.heal();

    assert_eq!(
        s.store.list_users().await.unwrap().len(),
        1,
        "no second user"
    );
    assert_eq!(
        node.live_sessions(user).await,
        sessions,
        "no session added or revoked"
    );
    assert_eq!(node.epoch(user).await, epoch, "no epoch bump");
    assert_eq!(s.verify_cookie(&browser.cookie).await.status(), 200);
    assert!(node.store.rollbacks() >= 3);
}

#[tokio::test]
async fn every_operation_is_all_or_nothing_when_the_commit_fails() {
    every_operation_is_all_or_nothing(Fault::Commit).await;
}

#[tokio::test]
async fn every_operation_is_all_or_nothing_when_its_first_write_fails() {
    every_operation_is_all_or_nothing(Fault::FirstWrite).await;
}

#[tokio::test]
async fn every_revocation_is_all_or_nothing_when_its_log_entry_fails() {
    every_operation_is_all_or_nothing(Fault::LogWrite).await;
}

#[tokio::test]
async fn every_reported_change_is_all_or_nothing_when_its_webhook_message_fails() {
    every_operation_is_all_or_nothing(Fault::OutboxWrite).await;
}
