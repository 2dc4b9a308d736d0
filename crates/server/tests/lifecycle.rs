//! Account lifecycle (SPEC §3): a password change ends every other session at once, on every
//! node, and keeps the caller's; a deleted account's cookies and tokens are refused everywhere,
//! also by a node that starts afterwards and warms its cache from the store.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use reqwest::header::COOKIE;
use reqwest::Response;
use serde_json::{json, Value};
use support::{error_code, eventually, start, unique_email, Browser, TestServer, PASSWORD};
use tessera_core::model::{AdminScope, Timestamp};

const NEW_PASSWORD: &str = "a brand new passphrase";

/// Webhooks nobody answers (the messages stay queued, where the tests read them); it goes
/// last in the settings, after every top-level key.
const HOOKS: &str = "[[webhooks]]\nurl = \"http://127.0.0.1:9/hooks\"\nsecret = \"a long shared secret\"\nevents = [\"session.created\", \"session.revoked\", \"user.password_changed\", \"user.deleted\"]\n";

/// A node on `database` with the cluster's issuer and master key, its feed fresh.
async fn node(database: &str, settings: &str) -> TestServer {
    support::cluster_node(database, settings).await
}

fn sqlite_database() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("cluster.db").display());
    (dir, database)
}

async fn change_with_cookie(
    server: &TestServer,
    browser: &Browser,
    current: &str,
    new: &str,
) -> Response {
    server
        .client
        .post(server.url("/v1/password"))
        .header(COOKIE, &browser.cookie)
        .header("x-csrf-token", &browser.csrf)
        .json(&json!({ "current_password": current, "new_password": new }))
        .send()
        .await
        .unwrap()
}

async fn change_with_bearer(
    server: &TestServer,
    token: &str,
    current: &str,
    new: &str,
) -> Response {
    server
        .client
        .post(server.url("/v1/password"))
        .bearer_auth(token)
        .json(&json!({ "current_password": current, "new_password": new }))
        .send()
        .await
        .unwrap()
}

async fn delete_with_cookie(server: &TestServer, browser: &Browser, password: &str) -> Response {
    server
        .client
        .delete(server.url("/v1/users/me"))
        .header(COOKIE, &browser.cookie)
        .header("x-csrf-token", &browser.csrf)
        .json(&json!({ "password": password }))
        .send()
        .await
        .unwrap()
}

async fn session_with_bearer(server: &TestServer, token: &str) -> u16 {
    server
        .client
        .get(server.url("/v1/session"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn str_of<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key].as_str().unwrap()
}

/// The bodies of the queued webhook messages of `event` about `user`.
async fn queued(server: &TestServer, event: &str, user: &str) -> Vec<Value> {
    let mut bodies = server
        .store
        .due_messages(Timestamp::from_unix(i64::MAX / 2), 100_000)
        .await
        .unwrap()
        .into_iter()
        .map(|q| serde_json::from_str::<Value>(&q.message.body).unwrap())
        .filter(|body| body["type"] == event && body["data"]["user_id"] == user)
        .collect::<Vec<_>>();
    // Failed deliveries are rescheduled, which reorders what is due: compare by id.
    bodies.sort_by(|x, y| x["id"].as_str().cmp(&y["id"].as_str()));
    bodies
}

async fn assert_too_many(res: Response) {
    assert_eq!(res.status(), 429);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1, "Retry-After {retry}");
    assert_eq!(error_code(res).await, "too_many_attempts");
}

// ---------------------------------------------------------------------------------------------
// Password change

#[tokio::test]
async fn a_password_change_keeps_the_current_cookie_and_ends_every_other_session_on_every_node() {
    let (_dir, database) = sqlite_database();
    let a = node(&database, HOOKS).await;
    let b = node(&database, HOOKS).await;
    let email = unique_email();
    let user = a.sign_up(&email).await;
    let user = str_of(&user, "id");
    let current = a.login(&email).await;
    let other = b.login(&email).await;
    let pair = a.password_grant(&email).await;
    let (access, refresh) = (
        str_of(&pair, "access_token"),
        str_of(&pair, "refresh_token"),
    );
    for server in [&a, &b] {
        assert_eq!(server.verify_cookie(&current.cookie).await.status(), 200);
        assert_eq!(server.verify_cookie(&other.cookie).await.status(), 200);
        assert_eq!(server.verify_bearer(access).await.status(), 200);
    }

    let res = change_with_cookie(&a, &current, PASSWORD, NEW_PASSWORD).await;
    assert_eq!(res.status(), 204);

    // On the node that changed it, at once.
    assert_eq!(a.session_with_cookie(&current.cookie).await.status(), 200);
    assert_eq!(a.verify_cookie(&other.cookie).await.status(), 401);
    assert_eq!(a.verify_bearer(access).await.status(), 401);
    let res = a.refresh(refresh).await;
    assert_eq!(res.status(), 400, "the other refresh family is revoked");
    assert_eq!(res.json::<Value>().await.unwrap()["error"], "invalid_grant");
    // On the second node, within the feed's lag.
    eventually(
        "node B still accepts the other cookie or the old access token",
        || async {
            b.verify_cookie(&other.cookie).await.status() == 401
                && b.verify_bearer(access).await.status() == 401
        },
    )
    .await;
    assert_eq!(b.verify_cookie(&current.cookie).await.status(), 200);
    assert_eq!(b.session_with_cookie(&current.cookie).await.status(), 200);

    // The old password is gone, the new one signs in.
    let res = b
        .login_raw(&email, PASSWORD, reqwest::header::HeaderMap::new())
        .await;
    assert_eq!(res.status(), 401);
    let res = b
        .login_raw(&email, NEW_PASSWORD, reqwest::header::HeaderMap::new())
        .await;
    assert_eq!(res.status(), 200);

    // One `user.password_changed`, and a `session.revoked` per session it ended.
    let changed = queued(&a, "user.password_changed", user).await;
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(changed[0]["data"]["sessions_revoked"], 2);
    let revoked: Vec<Value> = queued(&a, "session.revoked", user)
        .await
        .into_iter()
        .filter(|m| m["data"]["reason"] == "password_changed")
        .collect();
    assert_eq!(revoked.len(), 2, "{revoked:?}");
}

#[tokio::test]
async fn a_password_change_by_bearer_kills_its_access_token_but_not_its_refresh_family() {
    let (_dir, database) = sqlite_database();
    let server = node(&database, "").await;
    let (email, pair) = server.user_with_tokens().await;
    let other = server.password_grant(&email).await;
    let browser = server.login(&email).await;
    let access = str_of(&pair, "access_token");

    let res = change_with_bearer(&server, access, PASSWORD, NEW_PASSWORD).await;
    assert_eq!(res.status(), 204);

    assert_eq!(
        server.verify_bearer(access).await.status(),
        401,
        "dead by the epoch"
    );
    let res = server.refresh(str_of(&pair, "refresh_token")).await;
    assert_eq!(res.status(), 200, "the caller's family survives");
    let renewed: Value = res.json().await.unwrap();
    let renewed = str_of(&renewed, "access_token");
    assert_eq!(server.verify_bearer(renewed).await.status(), 200);
    assert_eq!(session_with_bearer(&server, renewed).await, 200);

    let res = server.refresh(str_of(&other, "refresh_token")).await;
    assert_eq!(res.status(), 400, "another family is revoked");
    assert_eq!(
        server
            .verify_bearer(str_of(&other, "access_token"))
            .await
            .status(),
        401
    );
    assert_eq!(server.verify_cookie(&browser.cookie).await.status(), 401);

    // A strict node on the same store agrees.
    let strict = node(&database, "revocation_mode = \"strict\"").await;
    assert_eq!(strict.verify_bearer(access).await.status(), 401);
    assert_eq!(strict.verify_bearer(renewed).await.status(), 200);
    assert_eq!(strict.verify_cookie(&browser.cookie).await.status(), 401);
}

#[tokio::test]
async fn a_wrong_current_password_is_a_failed_login_of_the_account() {
    let server = start("login_max_failures = 3").await;
    let (email, browser) = server.browser().await;
    for _ in 0..3 {
        let res = change_with_cookie(&server, &browser, "not my password", NEW_PASSWORD).await;
        assert_eq!(res.status(), 401);
        assert_eq!(error_code(res).await, "invalid_credentials");
    }
    // Past the limit even the right password is refused, before any hashing, and the login
    // shares the tally.
    assert_too_many(change_with_cookie(&server, &browser, PASSWORD, NEW_PASSWORD).await).await;
    assert_too_many(
        server
            .login_raw(&email, PASSWORD, reqwest::header::HeaderMap::new())
            .await,
    )
    .await;
    // Nothing changed: the session lives and the password is the old one.
    assert_eq!(server.verify_cookie(&browser.cookie).await.status(), 200);
    server
        .tessera
        .unlock(server.tessera.user_by_email(&email).await.unwrap().id)
        .await
        .unwrap();
    let res = server
        .login_raw(&email, PASSWORD, reqwest::header::HeaderMap::new())
        .await;
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn a_password_change_needs_a_strong_password_csrf_and_a_credential() {
    let server = start("").await;
    let (email, browser) = server.browser().await;

    let res = change_with_cookie(&server, &browser, PASSWORD, "password").await;
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "weak_password");
    assert!(body["message"].is_string(), "{body}");
    let local = email.split('@').next().unwrap();
    let res = change_with_cookie(
        &server,
        &browser,
        PASSWORD,
        &format!("{local} is my password"),
    )
    .await;
    assert_eq!(error_code(res).await, "weak_password");

    let res = server
        .client
        .post(server.url("/v1/password"))
        .header(COOKIE, &browser.cookie)
        .json(&json!({ "current_password": PASSWORD, "new_password": NEW_PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403, "a cookie request without the CSRF token");
    assert_eq!(error_code(res).await, "csrf_token_invalid");

    let res = server
        .client
        .post(server.url("/v1/password"))
        .json(&json!({ "current_password": PASSWORD, "new_password": NEW_PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    let res = server
        .client
        .post(server.url("/v1/password"))
        .header(COOKIE, &browser.cookie)
        .header("x-csrf-token", &browser.csrf)
        .json(&json!({ "current_password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400, "a missing field");
    assert!(error_code(res).await.is_string());

    // None of it changed the password.
    let res = server
        .login_raw(&email, PASSWORD, reqwest::header::HeaderMap::new())
        .await;
    assert_eq!(res.status(), 200);
}

// ---------------------------------------------------------------------------------------------
// Deleting an account

/// A user signed in by cookie on node A and by token on node B deletes the account: both are
/// refused on both nodes, by a node started afterwards on the same store, and in strict mode.
async fn a_deleted_account_is_refused_everywhere(database: &str) {
    let a = node(database, HOOKS).await;
    let b = node(database, HOOKS).await;
    let email = unique_email();
    let user = a.sign_up(&email).await;
    let user = str_of(&user, "id").to_owned();
    let browser = a.login(&email).await;
    let pair = b.password_grant(&email).await;
    let (access, refresh) = (
        str_of(&pair, "access_token"),
        str_of(&pair, "refresh_token"),
    );
    assert_eq!(a.verify_bearer(access).await.status(), 200);
    assert_eq!(b.verify_cookie(&browser.cookie).await.status(), 200);
    let created = queued(&a, "session.created", &user).await;
    assert_eq!(created.len(), 2, "{created:?}");

    // A wrong password deletes nothing.
    let res = delete_with_cookie(&a, &browser, "not my password").await;
    assert_eq!(res.status(), 401);
    assert_eq!(error_code(res).await, "invalid_credentials");
    assert_eq!(a.verify_cookie(&browser.cookie).await.status(), 200);

    let res = delete_with_cookie(&a, &browser, PASSWORD).await;
    assert_eq!(res.status(), 204);

    assert_eq!(a.verify_cookie(&browser.cookie).await.status(), 401);
    assert_eq!(a.session_with_cookie(&browser.cookie).await.status(), 401);
    assert_eq!(a.verify_bearer(access).await.status(), 401);
    assert_eq!(a.refresh(refresh).await.status(), 400);
    let res = a
        .login_raw(&email, PASSWORD, reqwest::header::HeaderMap::new())
        .await;
    assert_eq!(res.status(), 401);
    eventually(
        "node B still accepts the deleted user's credentials",
        || async {
            b.verify_bearer(access).await.status() == 401
                && b.verify_cookie(&browser.cookie).await.status() == 401
        },
    )
    .await;
    assert_eq!(session_with_bearer(&b, access).await, 401);

    // A node that starts now knows only what the store tells it.
    let c = node(database, "").await;
    assert_eq!(c.verify_bearer(access).await.status(), 401);
    assert_eq!(c.verify_cookie(&browser.cookie).await.status(), 401);
    let strict = node(database, "revocation_mode = \"strict\"").await;
    assert_eq!(strict.verify_bearer(access).await.status(), 401);

    // Messages queued before are still there; the deletion queued its own.
    assert_eq!(queued(&a, "session.created", &user).await, created);
    let deleted = queued(&a, "user.deleted", &user).await;
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert_eq!(deleted[0]["data"]["sessions_revoked"], 2);
    assert!(deleted[0]["data"].get("email").is_none());
    let revoked = queued(&a, "session.revoked", &user).await;
    assert_eq!(revoked.len(), 2, "{revoked:?}");
    assert!(revoked
        .iter()
        .all(|m| m["data"]["reason"] == "user_deleted"));

    // The address is free again: a new account, which the old credentials do not open.
    let again = a.sign_up(&email).await;
    assert_ne!(str_of(&again, "id"), user);
    assert_eq!(c.verify_bearer(access).await.status(), 401);
}

#[tokio::test]
async fn a_deleted_account_is_refused_everywhere_on_sqlite() {
    let (_dir, database) = sqlite_database();
    a_deleted_account_is_refused_everywhere(&database).await;
}

#[tokio::test]
async fn a_deleted_account_is_refused_everywhere_on_postgres() {
    let Some(fresh) = tessera_store::testing::FreshDatabase::for_test(
        "a_deleted_account_is_refused_everywhere_on_postgres",
    )
    .await
    else {
        return;
    };
    a_deleted_account_is_refused_everywhere(fresh.url()).await;
}

#[tokio::test]
async fn a_bearer_client_deletes_its_account_and_its_guessing_tally_goes_with_it() {
    let server = start("login_max_failures = 3").await;
    let (email, pair) = server.user_with_tokens().await;
    let access = str_of(&pair, "access_token");
    for _ in 0..2 {
        let res = server
            .login_raw(&email, "not my password", reqwest::header::HeaderMap::new())
            .await;
        assert_eq!(res.status(), 401);
    }
    let res = server
        .client
        .delete(server.url("/v1/users/me"))
        .bearer_auth(access)
        .json(&json!({ "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(server.verify_bearer(access).await.status(), 401);
    assert_eq!(
        server
            .refresh(str_of(&pair, "refresh_token"))
            .await
            .status(),
        400
    );

    // A new account at the address starts with a clean tally: two failures do not lock it.
    server.sign_up(&email).await;
    for _ in 0..2 {
        let res = server
            .login_raw(&email, "not my password", reqwest::header::HeaderMap::new())
            .await;
        assert_eq!(res.status(), 401);
    }
    let res = server
        .login_raw(&email, PASSWORD, reqwest::header::HeaderMap::new())
        .await;
    assert_eq!(res.status(), 200);

    // Without CSRF, a cookie cannot delete; with an unknown token nothing is deleted.
    let browser = server.login(&email).await;
    let res = server
        .client
        .delete(server.url("/v1/users/me"))
        .header(COOKIE, &browser.cookie)
        .json(&json!({ "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(server.verify_cookie(&browser.cookie).await.status(), 200);
}

#[tokio::test]
async fn an_administrator_deletes_a_user_by_id() {
    let server = start(HOOKS).await;
    let (_, key) = server
        .tessera
        .create_admin_key("test", AdminScope::Admin)
        .await
        .unwrap();
    let key = key.expose_secret().to_owned();
    let (email, pair) = server.user_with_tokens().await;
    let user = server
        .tessera
        .user_by_email(&email)
        .await
        .unwrap()
        .id
        .to_string();
    let access = str_of(&pair, "access_token");
    let delete = |id: String, key: Option<String>| {
        let mut request = server
            .client
            .delete(server.url(&format!("/v1/admin/users/{id}")));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        async move { request.send().await.unwrap() }
    };

    assert_eq!(delete(user.clone(), None).await.status(), 401);
    let res = delete(user.clone(), Some(access.to_owned())).await;
    assert_eq!(res.status(), 401, "a user's token is not an admin key");
    assert_eq!(server.verify_bearer(access).await.status(), 200);

    assert_eq!(delete(user.clone(), Some(key.clone())).await.status(), 204);
    assert_eq!(server.verify_bearer(access).await.status(), 401);
    assert_eq!(
        server
            .refresh(str_of(&pair, "refresh_token"))
            .await
            .status(),
        400
    );
    assert_eq!(queued(&server, "user.deleted", &user).await.len(), 1);

    let res = delete(user.clone(), Some(key.clone())).await;
    assert_eq!(res.status(), 404);
    assert_eq!(error_code(res).await, "not_found");
    assert_eq!(delete("nonsense".to_owned(), Some(key)).await.status(), 404);
}
