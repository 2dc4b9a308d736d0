#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Real tokens, signed with real keys generated here, and every way one must be refused.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{DecodingKey, EncodingKey, Header};
use rand::rngs::OsRng;
use rand::RngCore as _;
use rsa::pkcs1::{EncodeRsaPrivateKey as _, EncodeRsaPublicKey as _};
use rsa::traits::PublicKeyParts as _;
use serde_json::json;
use tessera_verify::{
    access_token_header, inspect, Algorithm, Claims, VerificationKey, Verifier, VerifyError,
    LEEWAY_SECS, MAX_TOKEN_BYTES,
};

const ISSUER: &str = "https://auth.example.test";
const AUDIENCE: &str = "tessera";

/// A private key for signing test tokens, and what a verifier knows of it.
struct TestKey {
    alg: Algorithm,
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// What a careless verifier would feed to HMAC: the public key as published.
    public_bytes: Vec<u8>,
}

impl TestKey {
    fn verification_key(&self) -> VerificationKey {
        VerificationKey::new(self.kid.clone(), self.alg, self.decoding.clone())
    }

    fn public_jwk(&self) -> Jwk {
        let mut jwk = Jwk::from_decoding_key(&self.decoding, Some(self.alg.to_jsonwebtoken()))
            .expect("public JWK");
        jwk.common.key_id = Some(self.kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        jwk
    }
}

fn ed25519(kid: &str) -> TestKey {
    let key = ed25519_dalek::SigningKey::generate(&mut OsRng);
    let public = key.verifying_key().to_bytes();
    TestKey {
        alg: Algorithm::EdDSA,
        kid: kid.to_owned(),
        encoding: EncodingKey::from_ed_der(key.to_pkcs8_der().unwrap().as_bytes()),
        decoding: DecodingKey::from_ed_components(&URL_SAFE_NO_PAD.encode(public)).unwrap(),
        public_bytes: public.to_vec(),
    }
}

fn p256(kid: &str) -> TestKey {
    let key = p256::ecdsa::SigningKey::random(&mut OsRng);
    let point = key.verifying_key().to_encoded_point(false);
    TestKey {
        alg: Algorithm::ES256,
        kid: kid.to_owned(),
        encoding: EncodingKey::from_ec_der(
            p256::pkcs8::EncodePrivateKey::to_pkcs8_der(&key)
                .unwrap()
                .as_bytes(),
        ),
        decoding: DecodingKey::from_ec_der(point.as_bytes()),
        public_bytes: point.as_bytes().to_vec(),
    }
}

fn rsa(kid: &str) -> TestKey {
    let key = rsa::RsaPrivateKey::new(&mut OsRng, 2048).unwrap();
    let public = key.to_public_key();
    TestKey {
        alg: Algorithm::RS256,
        kid: kid.to_owned(),
        encoding: EncodingKey::from_rsa_der(key.to_pkcs1_der().unwrap().as_bytes()),
        decoding: DecodingKey::from_rsa_raw_components(
            &public.n().to_bytes_be(),
            &public.e().to_bytes_be(),
        ),
        // The PEM text, as served by many JWKS-less setups: the classic confusion secret.
        public_bytes: public
            .to_pkcs1_pem(rsa::pkcs1::LineEnding::LF)
            .unwrap()
            .into_bytes(),
    }
}

fn hmac(kid: &str) -> TestKey {
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    TestKey {
        alg: Algorithm::HS256,
        kid: kid.to_owned(),
        encoding: EncodingKey::from_secret(&secret),
        decoding: DecodingKey::from_secret(&secret),
        public_bytes: Vec::new(),
    }
}

/// RSA-2048 generation is the slow part of this suite: one key serves every test.
fn shared_rsa() -> &'static TestKey {
    static KEY: OnceLock<TestKey> = OnceLock::new();
    KEY.get_or_init(|| rsa("rsa-1"))
}

fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

fn claims() -> Claims {
    let now = now();
    Claims {
        iss: ISSUER.to_owned(),
        sub: "0190f5d2-7c1e-7a3b-9d4e-1f2a3b4c5d6e".to_owned(),
        aud: AUDIENCE.to_owned(),
        exp: now + 900,
        iat: now,
        jti: "jti-1".to_owned(),
        sid: "0190f5d2-7c1e-7a3b-9d4e-aaaaaaaaaaaa".to_owned(),
        roles: vec!["member".to_owned()],
        scope: None,
        nbf: None,
    }
}

fn access_header(key: &TestKey) -> Header {
    access_token_header(&key.kid, key.alg)
}

fn sign(key: &TestKey, claims: &Claims) -> String {
    jsonwebtoken::encode(&access_header(key), claims, &key.encoding).unwrap()
}

fn verifier_for(key: &TestKey) -> Verifier {
    Verifier::new(ISSUER, AUDIENCE).with_key(key.verification_key())
}

fn b64(json: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(json).unwrap())
}

/// A token from raw segments, correctly signed by `key`: only what is under test is wrong.
fn signed_raw(key: &TestKey, header: &str, payload: &str) -> String {
    let message = format!("{header}.{payload}");
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key.encoding, key.alg.to_jsonwebtoken())
            .unwrap();
    format!("{message}.{signature}")
}

fn assert_valid(key: &TestKey) {
    let claims = claims();
    let token = sign(key, &claims);
    assert_eq!(verifier_for(key).verify(&token), Ok(claims));
}

#[test]
fn eddsa_token_verifies() {
    assert_valid(&ed25519("ed-1"));
}

#[test]
fn es256_token_verifies() {
    assert_valid(&p256("ec-1"));
}

#[test]
fn rs256_token_verifies() {
    assert_valid(shared_rsa());
}

#[test]
fn hs256_token_verifies() {
    assert_valid(&hmac("hs-1"));
}

#[test]
fn scope_round_trips_and_is_optional() {
    let key = ed25519("ed-1");
    let mut claims = claims();
    claims.scope = Some("openid profile".to_owned());
    let token = sign(&key, &claims);
    assert_eq!(verifier_for(&key).verify(&token), Ok(claims));
}

#[test]
fn full_media_type_is_accepted_case_insensitively() {
    let key = ed25519("ed-1");
    let claims = claims();
    for typ in ["application/at+jwt", "AT+JWT", "Application/At+Jwt"] {
        let mut header = access_header(&key);
        header.typ = Some(typ.to_owned());
        let token = jsonwebtoken::encode(&header, &claims, &key.encoding).unwrap();
        assert_eq!(
            verifier_for(&key).verify(&token),
            Ok(claims.clone()),
            "{typ}"
        );
    }
}

#[test]
fn a_header_written_otherwise_than_ours_gets_the_full_checks() {
    // The same fields in another order, and with a field we never write: a verifier meets
    // tokens from any JOSE library, not only ours.
    let key = ed25519("ed-order");
    let claims = claims();
    let payload = b64(&serde_json::to_value(&claims).unwrap());
    for header in [
        json!({"kid": key.kid, "alg": "EdDSA", "typ": "at+jwt"}),
        json!({"typ": "at+jwt", "alg": "EdDSA", "kid": key.kid, "cty": "JWT"}),
    ] {
        let token = signed_raw(&key, &b64(&header), &payload);
        assert_eq!(
            verifier_for(&key).verify(&token),
            Ok(claims.clone()),
            "{header}"
        );
    }
    let wrong_type = json!({"kid": key.kid, "alg": "EdDSA", "typ": "JWT"});
    let token = signed_raw(&key, &b64(&wrong_type), &payload);
    assert_eq!(
        verifier_for(&key).verify(&token),
        Err(VerifyError::WrongType)
    );
}

#[test]
fn tokens_with_our_header_and_with_another_get_the_same_answer() {
    // Our own header skips the header parse and checks the claims itself; the same claims
    // under a header written otherwise go through jsonwebtoken's `decode` and validation.
    let key = ed25519("ed-same");
    let verifier = verifier_for(&key);
    let other_header = b64(&json!({"kid": key.kid, "alg": "EdDSA", "typ": "at+jwt"}));
    let ours = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&access_header(&key)).unwrap());
    let now = now();
    let valid = serde_json::to_value(claims()).unwrap();
    let with = |field: &str, value: serde_json::Value| {
        let mut payload = valid.clone();
        payload[field] = value;
        payload
    };
    let without = |field: &str| {
        let mut payload = valid.clone();
        payload.as_object_mut().unwrap().remove(field);
        payload
    };
    let leeway = i64::try_from(LEEWAY_SECS).unwrap();
    let payloads = [
        valid.clone(),
        with("exp", json!(now - leeway - 5)),
        with("exp", json!(now - leeway + 5)),
        with("exp", json!(-5)),
        with("exp", json!(1.5e9)),
        with("exp", json!("soon")),
        with("nbf", json!(now + leeway + 60)),
        with("nbf", json!(now + leeway - 5)),
        with("nbf", json!(-1)),
        with("iss", json!("https://elsewhere.example")),
        with("iss", json!([ISSUER])),
        with("aud", json!("someone-else")),
        with("aud", json!([AUDIENCE])),
        with("extra", json!({"nested": true})),
        without("sub"),
        without("iat"),
        without("exp"),
        with("nbf", serde_json::Value::Null),
        with("scope", serde_json::Value::Null),
        json!([1, 2, 3]),
        // The claims in their struct's field order: serde alone would take it.
        json!([
            ISSUER,
            valid["sub"],
            AUDIENCE,
            valid["exp"],
            valid["iat"],
            "j",
            valid["sid"],
            []
        ]),
    ];
    for payload in payloads {
        let body = b64(&payload);
        let fast = verifier.verify(&signed_raw(&key, &ours, &body));
        let full = verifier.verify(&signed_raw(&key, &other_header, &body));
        assert_eq!(fast, full, "{payload}");
    }
    // Broken payload encodings, and a token of four segments.
    for body in ["%%%", "", "e30"] {
        let fast = verifier.verify(&signed_raw(&key, &ours, body));
        let full = verifier.verify(&signed_raw(&key, &other_header, body));
        assert_eq!(fast, full, "{body}");
    }
    let token = sign(&key, &claims());
    let (message, signature) = token.rsplit_once('.').unwrap();
    let four = format!("{message}.e30.{signature}");
    assert_eq!(verifier.verify(&four), Err(VerifyError::Malformed));
    // A signature over our header by a key the verifier does not hold.
    let stranger = ed25519("ed-same");
    let forged = signed_raw(&stranger, &ours, &b64(&valid));
    assert_eq!(verifier.verify(&forged), Err(VerifyError::InvalidSignature));
}

#[test]
fn a_key_replaced_under_its_kid_no_longer_accepts_its_header() {
    // The header an EdDSA key's tokens begin with must not outlive the key: once an ES256 key
    // takes its kid, those bytes name a kid whose algorithm is now ES256.
    let old = ed25519("shared-kid");
    let new = p256("shared-kid");
    let mut verifier = verifier_for(&old);
    let claims = claims();
    assert_eq!(verifier.verify(&sign(&old, &claims)), Ok(claims.clone()));
    verifier.insert(new.verification_key());
    assert_eq!(
        verifier.verify(&sign(&old, &claims)),
        Err(VerifyError::AlgorithmMismatch)
    );
    assert_eq!(verifier.verify(&sign(&new, &claims)), Ok(claims));
}

#[test]
fn alg_none_is_refused() {
    let key = ed25519("ed-1");
    let header = b64(&json!({"alg": "none", "typ": "at+jwt", "kid": key.kid}));
    let payload = b64(&serde_json::to_value(claims()).unwrap());
    for token in [
        format!("{header}.{payload}."),
        format!("{header}.{payload}"),
    ] {
        assert_eq!(
            verifier_for(&key).verify(&token),
            Err(VerifyError::Malformed)
        );
    }
}

/// The key-confusion attack: an attacker takes the *public* key, uses it as an HMAC secret
/// and labels the token HS256. A verifier that trusts the header's `alg` would check the
/// HMAC with the very bytes the attacker used.
fn assert_confusion_refused(key: &TestKey) {
    let mut header = access_header(key);
    header.alg = jsonwebtoken::Algorithm::HS256;
    let forged = jsonwebtoken::encode(
        &header,
        &claims(),
        &EncodingKey::from_secret(&key.public_bytes),
    )
    .unwrap();
    assert_eq!(
        verifier_for(key).verify(&forged),
        Err(VerifyError::AlgorithmMismatch)
    );
}

#[test]
fn hs256_signed_with_eddsa_public_key_is_refused() {
    assert_confusion_refused(&ed25519("ed-1"));
}

#[test]
fn hs256_signed_with_rsa_public_key_is_refused() {
    assert_confusion_refused(shared_rsa());
}

#[test]
fn hs256_signed_with_es256_public_key_is_refused() {
    assert_confusion_refused(&p256("ec-1"));
}

#[test]
fn unknown_kid_is_refused() {
    let known = ed25519("ed-1");
    let stranger = ed25519("ed-2");
    let token = sign(&stranger, &claims());
    assert_eq!(
        verifier_for(&known).verify(&token),
        Err(VerifyError::UnknownKey)
    );
}

#[test]
fn missing_kid_is_refused() {
    let key = ed25519("ed-1");
    let mut header = access_header(&key);
    header.kid = None;
    let token = jsonwebtoken::encode(&header, &claims(), &key.encoding).unwrap();
    assert_eq!(
        verifier_for(&key).verify(&token),
        Err(VerifyError::UnknownKey)
    );
}

#[test]
fn tampered_payload_is_refused() {
    let key = ed25519("ed-1");
    let genuine = sign(&key, &claims());
    let mut escalated = claims();
    escalated.roles = vec!["admin".to_owned()];
    let other = sign(&key, &escalated);
    let parts: Vec<&str> = genuine.split('.').collect();
    let forged_payload = other.split('.').nth(1).unwrap();
    let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    assert_eq!(
        verifier_for(&key).verify(&forged),
        Err(VerifyError::InvalidSignature)
    );
}

#[test]
fn signature_by_another_key_with_the_same_kid_is_refused() {
    for (trusted, impostor) in [
        (ed25519("k"), ed25519("k")),
        (p256("k"), p256("k")),
        (hmac("k"), hmac("k")),
    ] {
        let token = sign(&impostor, &claims());
        assert_eq!(
            verifier_for(&trusted).verify(&token),
            Err(VerifyError::InvalidSignature),
            "{}",
            trusted.alg
        );
    }
}

#[test]
fn rsa_signature_by_another_key_with_the_same_kid_is_refused() {
    let impostor = rsa(&shared_rsa().kid);
    let token = sign(&impostor, &claims());
    assert_eq!(
        verifier_for(shared_rsa()).verify(&token),
        Err(VerifyError::InvalidSignature)
    );
}

#[test]
fn malformed_base64_is_refused() {
    let key = ed25519("ed-1");
    let token = sign(&key, &claims());
    let parts: Vec<&str> = token.split('.').collect();
    let verifier = verifier_for(&key);
    // In the header, in a (correctly signed) payload, and in the signature.
    let bad_header = format!("{}!.{}.{}", parts[0], parts[1], parts[2]);
    let bad_payload = signed_raw(&key, parts[0], "e30=*");
    let bad_signature = format!("{}.{}.{}*", parts[0], parts[1], parts[2]);
    for token in [bad_header, bad_payload, bad_signature] {
        assert_eq!(
            verifier.verify(&token),
            Err(VerifyError::Malformed),
            "{token}"
        );
    }
}

#[test]
fn malformed_json_is_refused() {
    let key = ed25519("ed-1");
    let good_header = b64(&serde_json::to_value(access_header(&key)).unwrap());
    let good_payload = b64(&serde_json::to_value(claims()).unwrap());
    let broken = URL_SAFE_NO_PAD.encode(b"{\"alg\":\"EdDSA\",");
    let verifier = verifier_for(&key);
    let bad_header = signed_raw(&key, &broken, &good_payload);
    let bad_payload = signed_raw(&key, &good_header, &broken);
    for token in [bad_header, bad_payload] {
        assert_eq!(
            verifier.verify(&token),
            Err(VerifyError::Malformed),
            "{token}"
        );
    }
}

#[test]
fn wrong_typ_is_refused() {
    let key = ed25519("ed-1");
    for typ in ["JWT", "id_token+jwt", "application/jwt", "at+jwt2"] {
        let mut header = access_header(&key);
        header.typ = Some(typ.to_owned());
        let token = jsonwebtoken::encode(&header, &claims(), &key.encoding).unwrap();
        assert_eq!(
            verifier_for(&key).verify(&token),
            Err(VerifyError::WrongType),
            "{typ}"
        );
    }
}

#[test]
fn missing_typ_is_refused() {
    let key = ed25519("ed-1");
    let mut header = access_header(&key);
    header.typ = None;
    let token = jsonwebtoken::encode(&header, &claims(), &key.encoding).unwrap();
    assert_eq!(
        verifier_for(&key).verify(&token),
        Err(VerifyError::WrongType)
    );
}

#[test]
fn expired_token_is_refused() {
    let key = ed25519("ed-1");
    let mut claims = claims();
    claims.iat = now() - 1000;
    claims.exp = now() - i64::try_from(LEEWAY_SECS).unwrap() - 10;
    let token = sign(&key, &claims);
    assert_eq!(verifier_for(&key).verify(&token), Err(VerifyError::Expired));
}

#[test]
fn token_expired_within_leeway_is_accepted() {
    let key = ed25519("ed-1");
    let mut claims = claims();
    claims.exp = now() - 5;
    let token = sign(&key, &claims);
    assert_eq!(verifier_for(&key).verify(&token), Ok(claims));
}

#[test]
fn future_nbf_is_refused() {
    let key = ed25519("ed-1");
    let mut payload = serde_json::to_value(claims()).unwrap();
    payload["nbf"] = json!(now() + 3600);
    let token = jsonwebtoken::encode(&access_header(&key), &payload, &key.encoding).unwrap();
    assert_eq!(
        verifier_for(&key).verify(&token),
        Err(VerifyError::InvalidClaims)
    );
}

#[test]
fn wrong_issuer_is_refused() {
    let key = ed25519("ed-1");
    let mut claims = claims();
    claims.iss = "https://evil.example.test".to_owned();
    let token = sign(&key, &claims);
    assert_eq!(
        verifier_for(&key).verify(&token),
        Err(VerifyError::WrongIssuer)
    );
}

#[test]
fn wrong_audience_is_refused() {
    let key = ed25519("ed-1");
    let mut claims = claims();
    claims.aud = "billing".to_owned();
    let token = sign(&key, &claims);
    assert_eq!(
        verifier_for(&key).verify(&token),
        Err(VerifyError::WrongAudience)
    );
}

#[test]
fn missing_claim_is_refused() {
    let key = ed25519("ed-1");
    for claim in ["sid", "exp", "iat", "sub", "jti", "roles"] {
        let mut payload = serde_json::to_value(claims()).unwrap();
        payload.as_object_mut().unwrap().remove(claim);
        let token = jsonwebtoken::encode(&access_header(&key), &payload, &key.encoding).unwrap();
        assert_eq!(
            verifier_for(&key).verify(&token),
            Err(VerifyError::InvalidClaims),
            "{claim}"
        );
    }
}

#[test]
fn critical_header_extension_is_refused() {
    let key = ed25519("ed-1");
    let mut header = access_header(&key);
    header.crit = Some(vec!["exp".to_owned()]);
    let token = jsonwebtoken::encode(&header, &claims(), &key.encoding).unwrap();
    assert_eq!(
        verifier_for(&key).verify(&token),
        Err(VerifyError::Malformed)
    );
}

#[test]
fn token_over_8_kib_is_refused() {
    let key = ed25519("ed-1");
    let mut claims = claims();
    claims.roles = (0..1000).map(|i| format!("role-{i}")).collect();
    let token = sign(&key, &claims);
    assert!(token.len() > MAX_TOKEN_BYTES);
    assert_eq!(
        verifier_for(&key).verify(&token),
        Err(VerifyError::TooLarge)
    );
    assert_eq!(inspect(&token).unwrap_err(), VerifyError::TooLarge);
    // Even garbage of that size is refused for its size, before any parsing.
    let garbage = "a".repeat(MAX_TOKEN_BYTES + 1);
    assert_eq!(
        verifier_for(&key).verify(&garbage),
        Err(VerifyError::TooLarge)
    );
}

#[test]
fn empty_string_is_refused() {
    let key = ed25519("ed-1");
    assert_eq!(verifier_for(&key).verify(""), Err(VerifyError::Malformed));
    assert_eq!(inspect("").unwrap_err(), VerifyError::Malformed);
}

#[test]
fn verifier_without_keys_refuses_everything() {
    let key = ed25519("ed-1");
    let token = sign(&key, &claims());
    assert_eq!(
        Verifier::new(ISSUER, AUDIENCE).verify(&token),
        Err(VerifyError::UnknownKey)
    );
}

#[test]
fn jwks_round_trip_verifies_every_asymmetric_algorithm() {
    let keys = [ed25519("ed-1"), p256("ec-1")];
    let all: Vec<&TestKey> = keys.iter().chain([shared_rsa()]).collect();
    let jwks = JwkSet {
        keys: all.iter().map(|key| key.public_jwk()).collect(),
    };
    // Through the wire format, as a service fetching /.well-known/jwks.json would see it.
    let published = serde_json::to_string(&jwks).unwrap();
    let fetched: JwkSet = serde_json::from_str(&published).unwrap();
    let verifier = Verifier::from_jwks(&fetched, ISSUER, AUDIENCE).unwrap();

    let mut kids: Vec<&str> = verifier.kids().collect();
    kids.sort_unstable();
    assert_eq!(kids, ["ec-1", "ed-1", "rsa-1"]);
    for key in all {
        let claims = claims();
        assert_eq!(
            verifier.verify(&sign(key, &claims)),
            Ok(claims),
            "{}",
            key.alg
        );
    }
}

#[test]
fn jwk_without_alg_gets_the_algorithm_of_its_key_type() {
    for key in [ed25519("ed-1"), p256("ec-1")] {
        let mut jwk = key.public_jwk();
        jwk.common.key_algorithm = None;
        assert_eq!(VerificationKey::from_jwk(&jwk).unwrap().alg(), key.alg);
    }
    let mut jwk = shared_rsa().public_jwk();
    jwk.common.key_algorithm = None;
    assert_eq!(
        VerificationKey::from_jwk(&jwk).unwrap().alg(),
        Algorithm::RS256
    );
}

#[test]
fn jwk_without_kid_is_refused() {
    let mut jwk = ed25519("ed-1").public_jwk();
    jwk.common.key_id = None;
    assert!(matches!(
        VerificationKey::from_jwk(&jwk),
        Err(VerifyError::InvalidKey(_))
    ));
}

#[test]
fn jwk_whose_alg_contradicts_its_key_type_is_refused() {
    let mut jwk = ed25519("ed-1").public_jwk();
    jwk.common.key_algorithm = Some(KeyAlgorithm::HS256);
    assert!(matches!(
        VerificationKey::from_jwk(&jwk),
        Err(VerifyError::InvalidKey(_))
    ));
    let jwks = JwkSet { keys: vec![jwk] };
    assert!(Verifier::from_jwks(&jwks, ISSUER, AUDIENCE).is_err());
}

#[test]
fn jwks_skips_keys_it_does_not_use_but_refuses_malformed_ones() {
    let ed = ed25519("ed-1");
    let mut encryption = shared_rsa().public_jwk();
    encryption.common.key_id = Some("enc-1".to_owned());
    encryption.common.key_algorithm = Some(KeyAlgorithm::RSA_OAEP);
    encryption.common.public_key_use = Some(PublicKeyUse::Encryption);
    let mut ps256 = shared_rsa().public_jwk();
    ps256.common.key_id = Some("ps-1".to_owned());
    ps256.common.key_algorithm = Some(KeyAlgorithm::PS256);
    let unknown_kty: Jwk =
        serde_json::from_value(json!({"kty": "XYZ", "kid": "odd-1", "foo": "bar"})).unwrap();
    let jwks = JwkSet {
        keys: vec![ed.public_jwk(), encryption, ps256, unknown_kty],
    };
    let verifier = Verifier::from_jwks(&jwks, ISSUER, AUDIENCE).unwrap();
    assert_eq!(verifier.kids().collect::<Vec<_>>(), ["ed-1"]);

    let truncated: Jwk = serde_json::from_value(json!({
        "kty": "OKP", "crv": "Ed25519", "kid": "short", "x": URL_SAFE_NO_PAD.encode([7u8; 16]),
    }))
    .unwrap();
    let off_curve: Jwk = serde_json::from_value(json!({
        "kty": "EC", "crv": "P-256", "kid": "bad-ec",
        "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "y": URL_SAFE_NO_PAD.encode([2u8; 32]),
    }))
    .unwrap();
    let small_rsa: Jwk = serde_json::from_value(json!({
        "kty": "RSA", "kid": "rsa-512", "alg": "RS256",
        "n": URL_SAFE_NO_PAD.encode([0xC5u8; 64]), "e": "AQAB",
    }))
    .unwrap();
    for bad in [truncated, off_curve, small_rsa] {
        let jwks = JwkSet {
            keys: vec![ed.public_jwk(), bad.clone()],
        };
        assert!(
            matches!(
                Verifier::from_jwks(&jwks, ISSUER, AUDIENCE),
                Err(VerifyError::InvalidKey(_))
            ),
            "{bad:?}"
        );
    }

    let duplicated = JwkSet {
        keys: vec![ed.public_jwk(), ed.public_jwk()],
    };
    assert!(Verifier::from_jwks(&duplicated, ISSUER, AUDIENCE).is_err());
}

#[test]
fn key_of_the_wrong_family_fails_closed() {
    let ed = ed25519("ed-1");
    // An HMAC secret passed off as an Ed25519 key: refused per token, never a panic.
    let broken = VerificationKey::new("ed-1", Algorithm::EdDSA, DecodingKey::from_secret(b"x"));
    let verifier = Verifier::new(ISSUER, AUDIENCE).with_key(broken);
    assert!(matches!(
        verifier.verify(&sign(&ed, &claims())),
        Err(VerifyError::InvalidKey(_))
    ));
    let short = VerificationKey::new("ed-1", Algorithm::EdDSA, DecodingKey::from_ed_der(&[1; 8]));
    let verifier = Verifier::new(ISSUER, AUDIENCE).with_key(short);
    assert!(matches!(
        verifier.verify(&sign(&ed, &claims())),
        Err(VerifyError::InvalidKey(_))
    ));
}

#[test]
fn inspect_decodes_without_verifying() {
    let signer = ed25519("ed-1");
    let mut claims = claims();
    claims.exp = 1; // long expired, and nobody here knows the key: inspect does not care
    let token = sign(&signer, &claims);
    let (header, payload) = inspect(&token).unwrap();
    assert_eq!(header.kid.as_deref(), Some("ed-1"));
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    assert_eq!(payload["sub"], claims.sub);
    assert_eq!(payload["exp"], 1);
    assert_eq!(inspect("a.b").unwrap_err(), VerifyError::Malformed);
    assert_eq!(inspect("e30.!!!.x").unwrap_err(), VerifyError::Malformed);
}

#[test]
fn algorithm_names_parse_exactly() {
    for alg in Algorithm::ALL {
        assert_eq!(alg.as_str().parse::<Algorithm>(), Ok(alg));
        assert_eq!(alg.to_string(), alg.as_str());
        assert_eq!(format!("{:?}", alg.to_jsonwebtoken()), alg.as_str());
    }
    let err = "eddsa".parse::<Algorithm>().unwrap_err().to_string();
    for name in ["EdDSA", "ES256", "RS256", "HS256"] {
        assert!(err.contains(name), "{err}");
    }
    assert!("none".parse::<Algorithm>().is_err());
    assert!("HS512".parse::<Algorithm>().is_err());
}

#[test]
fn errors_read_well_and_have_stable_reasons() {
    let all = [
        VerifyError::TooLarge,
        VerifyError::Malformed,
        VerifyError::WrongType,
        VerifyError::UnknownKey,
        VerifyError::AlgorithmMismatch,
        VerifyError::InvalidSignature,
        VerifyError::Expired,
        VerifyError::WrongIssuer,
        VerifyError::WrongAudience,
        VerifyError::InvalidClaims,
        VerifyError::InvalidKey("x".to_owned()),
    ];
    for err in &all {
        let text = err.to_string();
        assert!(!text.ends_with('.'), "{text}");
        assert!(text.starts_with(|c: char| c.is_ascii_lowercase()), "{text}");
        let reason = err.reason();
        assert!(reason.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
    }
    assert_eq!(VerifyError::Expired.reason(), "expired");
    let mut reasons: Vec<&str> = all.iter().map(VerifyError::reason).collect();
    reasons.sort_unstable();
    reasons.dedup();
    assert_eq!(reasons.len(), all.len());
}
