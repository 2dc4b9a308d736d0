//! The password policy (NIST SP 800-63B §5.1.1.2) and Unicode NFKC normalisation, over real
//! HTTP: what sign-up refuses and why, and that one password typed in two Unicode forms signs
//! in either way, including for hashes made before passwords were normalised.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use support::*;
use tessera_core::model::{Email, Timestamp, User, UserId};
use tessera_core::AuthError;

/// "Crème brûlée, s'il vous plaît" with precomposed letters (NFC, and NFKC)...
const COMPOSED: &str = "Cr\u{e8}me br\u{fb}l\u{e9}e, s'il vous pla\u{ee}t";
/// ...and with each accent a combining mark after its letter (NFD), as some keyboards and
/// operating systems send it.
const DECOMPOSED: &str = "Cre\u{300}me bru\u{302}le\u{301}e, s'il vous plai\u{302}t";

async fn sign_up_with(server: &TestServer, email: &str, password: &str) -> reqwest::Response {
    server
        .client
        .post(server.url("/v1/users"))
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .unwrap()
}

async fn login_status(server: &TestServer, email: &str, password: &str) -> u16 {
    server
        .login_raw(email, password, HeaderMap::new())
        .await
        .status()
        .as_u16()
}

async fn grant_status(server: &TestServer, email: &str, password: &str) -> u16 {
    server
        .client
        .post(server.url("/oauth2/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", email),
            ("password", password),
        ])
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn sign_up_refuses_weak_passwords_and_names_the_rule() {
    let server = start("").await;
    let email = unique_email();
    let local = email.split('@').next().unwrap().to_owned();
    let cases = [
        ("short".to_owned(), "8 to 1024"),
        // Full-width letters are "password" once in NFKC: the check sees what is hashed.
        (
            "\u{ff30}\u{ff41}\u{ff53}\u{ff53}\u{ff57}\u{ff4f}\u{ff52}\u{ff44}".to_owned(),
            "common",
        ),
        ("ILoveYou1".to_owned(), "common"),
        ("qwertyuiop".to_owned(), "common"),
        (format!("{} rules!", local.to_uppercase()), "email"),
    ];
    for (password, rule) in cases {
        let res = sign_up_with(&server, &email, &password).await;
        assert_eq!(res.status(), 400, "{password}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"], "weak_password", "{password}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(rule), "{password}: {message}");
    }
    // None of them created the account: a good password still can.
    let res = sign_up_with(&server, &email, PASSWORD).await;
    assert_eq!(res.status(), 201);
    // A local part of three characters is not looked for (too likely by chance).
    let res = sign_up_with(&server, "ada@example.com", "adamant zebra crossing").await;
    assert_eq!(res.status(), 201);
}

#[tokio::test]
async fn a_password_signed_up_in_nfc_signs_in_in_nfd_and_the_reverse() {
    let server = start("").await;
    assert_ne!(COMPOSED, DECOMPOSED);
    for (signed_up, other) in [(COMPOSED, DECOMPOSED), (DECOMPOSED, COMPOSED)] {
        let email = unique_email();
        assert_eq!(sign_up_with(&server, &email, signed_up).await.status(), 201);
        for typed in [signed_up, other] {
            assert_eq!(login_status(&server, &email, typed).await, 200);
            assert_eq!(grant_status(&server, &email, typed).await, 200);
        }
        assert_eq!(
            login_status(&server, &email, "Creme brulee, s'il vous plait").await,
            401
        );
    }
}

/// An argon2id hash of the bytes as typed, as hashes were made before normalisation.
fn hash_as_typed(password: &str) -> String {
    let params = Params::new(19_456, 2, 1, None).unwrap();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(
            password.as_bytes(),
            &SaltString::from_b64("bGVnYWN5IHNhbHQgMTIz").unwrap(),
        )
        .unwrap()
        .to_string()
}

fn verifies(password: &str, phc: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), &PasswordHash::new(phc).unwrap())
        .is_ok()
}

async fn stored_hash(server: &TestServer, id: UserId) -> String {
    server
        .store
        .find_user(id)
        .await
        .unwrap()
        .unwrap()
        .password_hash
}

async fn legacy_user(server: &TestServer, password: &str) -> User {
    let now = Timestamp::now();
    let user = User {
        id: UserId::new(),
        email: Email::parse(&unique_email()).unwrap(),
        password_hash: hash_as_typed(password),
        roles: Vec::new(),
        created_at: now,
        tokens_valid_after: Timestamp::from_unix(0),
        email_verified_at: None,
    };
    let mut tx = server.store.begin().await.unwrap();
    tx.insert_user(&user).await.unwrap();
    tx.commit().await.unwrap();
    user
}

async fn a_hash_of_the_form_as_typed_is_replaced_by_the_nfkc_one(server: TestServer) {
    let user = legacy_user(&server, DECOMPOSED).await;
    let email = user.email.as_str();
    assert!(!verifies(COMPOSED, &user.password_hash));
    // Before: the NFKC form is not what was hashed, so only the form as typed matches.
    assert_eq!(login_status(&server, email, COMPOSED).await, 401);
    assert_eq!(stored_hash(&server, user.id).await, user.password_hash);

    assert_eq!(login_status(&server, email, DECOMPOSED).await, 200);
    let rehashed = stored_hash(&server, user.id).await;
    assert_ne!(rehashed, user.password_hash);
    assert!(
        verifies(COMPOSED, &rehashed),
        "the stored hash is of the NFKC form"
    );
    assert!(!verifies(DECOMPOSED, &rehashed));
    assert!(rehashed.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));

    // After: every form signs in, by cookie and by the password grant.
    for typed in [COMPOSED, DECOMPOSED] {
        assert_eq!(login_status(&server, email, typed).await, 200);
        assert_eq!(grant_status(&server, email, typed).await, 200);
    }
    assert_eq!(
        stored_hash(&server, user.id).await,
        rehashed,
        "rehashed once"
    );
}

#[tokio::test]
async fn a_hash_of_the_form_as_typed_is_replaced_on_the_memory_store() {
    a_hash_of_the_form_as_typed_is_replaced_by_the_nfkc_one(start("").await).await;
}

#[tokio::test]
async fn a_hash_of_the_form_as_typed_is_replaced_on_sqlite() {
    a_hash_of_the_form_as_typed_is_replaced_by_the_nfkc_one(start_sqlite("").await).await;
}

#[tokio::test]
async fn the_password_grant_also_replaces_a_hash_of_the_form_as_typed() {
    let server = start("").await;
    let user = legacy_user(&server, DECOMPOSED).await;
    assert_eq!(
        grant_status(&server, user.email.as_str(), DECOMPOSED).await,
        200
    );
    assert!(verifies(COMPOSED, &stored_hash(&server, user.id).await));
    assert_eq!(
        login_status(&server, user.email.as_str(), COMPOSED).await,
        200
    );
}

#[tokio::test]
async fn a_wrong_password_leaves_a_hash_of_the_form_as_typed_alone() {
    let server = start("").await;
    let user = legacy_user(&server, DECOMPOSED).await;
    let wrong = "Cre\u{300}me bru\u{302}le\u{301}e, s'il vous plai\u{302}t!";
    assert_eq!(login_status(&server, user.email.as_str(), wrong).await, 401);
    assert_eq!(stored_hash(&server, user.id).await, user.password_hash);
}

/// Accounts moved from another system keep their argon2id hashes: the imported user signs in
/// with the password they had there, and a hash Tessera could not (or should not) check is
/// refused with a clear error rather than stored.
#[tokio::test]
async fn imported_accounts_sign_in_with_their_original_password() {
    let server = start("").await;
    let email = unique_email();
    let password = "an imported passphrase";
    let user = server
        .tessera
        .import_user(
            &email,
            &hash_as_typed(password),
            vec!["editor".into(), "admin".into()],
        )
        .await
        .unwrap();
    assert_eq!(user.roles, ["admin", "editor"]);
    assert_eq!(login_status(&server, &email, password).await, 200);
    assert_eq!(grant_status(&server, &email, password).await, 200);
    assert_eq!(
        login_status(&server, &email, "another passphrase").await,
        401
    );

    let again = server
        .tessera
        .import_user(&email, &hash_as_typed(password), Vec::new())
        .await;
    assert!(matches!(again, Err(AuthError::EmailTaken)), "{again:?}");

    let salt = SaltString::from_b64("bGVnYWN5IHNhbHQgMTIz").unwrap();
    let with = |alg, params| {
        Argon2::new(alg, Version::V0x13, params)
            .hash_password(password.as_bytes(), &salt)
            .unwrap()
            .to_string()
    };
    let refused = [
        ("argon2i", with(Algorithm::Argon2i, Params::default())),
        (
            "a gigabyte per check",
            with(
                Algorithm::Argon2id,
                Params::new(1_048_576, 1, 1, None).unwrap(),
            ),
        ),
        (
            "bcrypt",
            "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW".to_owned(),
        ),
        (
            "no output",
            "$argon2id$v=19$m=19456,t=2,p=1$bGVnYWN5IHNhbHQgMTIz".to_owned(),
        ),
        ("empty", String::new()),
    ];
    for (case, hash) in refused {
        let outcome = server
            .tessera
            .import_user(&unique_email(), &hash, Vec::new())
            .await;
        assert!(
            matches!(outcome, Err(AuthError::InvalidPasswordHash)),
            "{case}: {outcome:?}"
        );
    }
    let outcome = server
        .tessera
        .import_user("not an address", &hash_as_typed(password), Vec::new())
        .await;
    assert!(
        matches!(outcome, Err(AuthError::InvalidEmail)),
        "{outcome:?}"
    );
}
