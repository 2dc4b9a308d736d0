#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Whatever a client sends as a token, the verifier answers with an error, never a panic, and
//! no change to a real token survives verification. 256 generated cases a property.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use jsonwebtoken::{DecodingKey, EncodingKey, Header};
use proptest::prelude::*;
use rand::rngs::OsRng;
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::traits::PublicKeyParts as _;
use tessera_verify::{
    inspect, Algorithm, Claims, VerificationKey, Verifier, ACCESS_TOKEN_TYPE, MAX_TOKEN_BYTES,
};

const ISSUER: &str = "https://auth.example.test";
const AUDIENCE: &str = "tessera";
const CASES: u32 = 256;

struct TestKey {
    alg: Algorithm,
    kid: &'static str,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

/// One key of each algorithm, made once (RSA-2048 generation is slow), and a verifier that
/// knows them all.
fn keys() -> &'static (Vec<TestKey>, Verifier) {
    static KEYS: OnceLock<(Vec<TestKey>, Verifier)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let ed = ed25519_dalek::SigningKey::generate(&mut OsRng);
        let ec = p256::ecdsa::SigningKey::random(&mut OsRng);
        let rsa = rsa::RsaPrivateKey::new(&mut OsRng, 2048).unwrap();
        let public = rsa.to_public_key();
        let secret: [u8; 32] = rand::random();
        let keys = vec![
            TestKey {
                alg: Algorithm::EdDSA,
                kid: "ed",
                encoding: EncodingKey::from_ed_der(ed.to_pkcs8_der().unwrap().as_bytes()),
                decoding: DecodingKey::from_ed_components(
                    &URL_SAFE_NO_PAD.encode(ed.verifying_key().to_bytes()),
                )
                .unwrap(),
            },
            TestKey {
                alg: Algorithm::ES256,
                kid: "ec",
                encoding: EncodingKey::from_ec_der(
                    p256::pkcs8::EncodePrivateKey::to_pkcs8_der(&ec)
                        .unwrap()
                        .as_bytes(),
                ),
                decoding: DecodingKey::from_ec_der(
                    ec.verifying_key().to_encoded_point(false).as_bytes(),
                ),
            },
            TestKey {
                alg: Algorithm::RS256,
                kid: "rsa",
                encoding: EncodingKey::from_rsa_der(rsa.to_pkcs1_der().unwrap().as_bytes()),
                decoding: DecodingKey::from_rsa_raw_components(
                    &public.n().to_bytes_be(),
                    &public.e().to_bytes_be(),
                ),
            },
            TestKey {
                alg: Algorithm::HS256,
                kid: "hs",
                encoding: EncodingKey::from_secret(&secret),
                decoding: DecodingKey::from_secret(&secret),
            },
        ];
        let mut verifier = Verifier::new(ISSUER, AUDIENCE);
        for key in &keys {
            verifier.insert(VerificationKey::new(key.kid, key.alg, key.decoding.clone()));
        }
        (keys, verifier)
    })
}

fn verifier() -> &'static Verifier {
    &keys().1
}

/// A valid access token signed by the `index`-th key, and its claims.
fn real_token(index: usize) -> (String, Claims) {
    let key = &keys().0[index % keys().0.len()];
    let now = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    let claims = Claims {
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
    };
    let mut header = Header::new(key.alg.to_jsonwebtoken());
    header.typ = Some(ACCESS_TOKEN_TYPE.to_owned());
    header.kid = Some(key.kid.to_owned());
    let token = jsonwebtoken::encode(&header, &claims, &key.encoding).unwrap();
    (token, claims)
}

/// Something a token could be turned into by a careless client or an attacker.
#[derive(Debug, Clone)]
enum Mutation {
    /// Replace the character at (position modulo length).
    Replace(usize, char),
    Insert(usize, String),
    Remove(usize, usize),
    Truncate(usize),
    /// Put segment a where segment b was.
    Swap(usize, usize),
    /// Append a segment, or text after the signature.
    Append(String),
    /// Drop the signature, keeping the dot (an unsecured JWS, RFC 7515 §A.5).
    StripSignature,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let chars = prop_oneof![
        proptest::char::range('A', 'Z'),
        proptest::char::range('a', 'z'),
        proptest::char::range('0', '9'),
        Just('-'),
        Just('_'),
        Just('.'),
        Just('='),
        Just('+'),
        Just('/'),
        any::<char>(),
    ];
    prop_oneof![
        (any::<usize>(), chars).prop_map(|(at, c)| Mutation::Replace(at, c)),
        (any::<usize>(), "[A-Za-z0-9_.=-]{1,8}|\\PC{1,4}")
            .prop_map(|(at, s)| Mutation::Insert(at, s)),
        (any::<usize>(), 1usize..16).prop_map(|(at, n)| Mutation::Remove(at, n)),
        any::<usize>().prop_map(Mutation::Truncate),
        (0usize..3, 0usize..3).prop_map(|(a, b)| Mutation::Swap(a, b)),
        "\\.?[A-Za-z0-9_-]{0,40}".prop_map(Mutation::Append),
        Just(Mutation::StripSignature),
    ]
}

fn apply(token: &str, mutation: &Mutation) -> String {
    let chars: Vec<char> = token.chars().collect();
    let len = chars.len();
    let mut out = chars.clone();
    match mutation {
        Mutation::Replace(at, c) => out[at % len] = *c,
        Mutation::Insert(at, s) => {
            let at = at % (len + 1);
            out.splice(at..at, s.chars());
        }
        Mutation::Remove(at, n) => {
            let at = at % len;
            out.drain(at..(at + n).min(len));
        }
        Mutation::Truncate(at) => out.truncate(at % len),
        Mutation::Swap(a, b) => {
            let mut segments: Vec<&str> = token.split('.').collect();
            segments.swap(*a, *b);
            return segments.join(".");
        }
        Mutation::Append(s) => out.extend(s.chars()),
        Mutation::StripSignature => {
            let cut = token.rfind('.').unwrap();
            return token[..=cut].to_owned();
        }
    }
    out.into_iter().collect()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn arbitrary_strings_are_refused(token in prop_oneof![
        any::<String>(),
        "[A-Za-z0-9_.-]{0,600}",
        "[A-Za-z0-9_-]{0,120}\\.[A-Za-z0-9_-]{0,300}\\.[A-Za-z0-9_-]{0,120}",
        "\\PC{0,64}\\.\\PC{0,64}\\.\\PC{0,64}",
    ]) {
        prop_assert!(verifier().verify(&token).is_err());
        let _ = inspect(&token);
    }

    #[test]
    fn tokens_of_arbitrary_json_are_refused(
        header in prop_oneof![
            Just(r#"{"alg":"EdDSA","typ":"at+jwt","kid":"ed"}"#.to_owned()),
            Just(r#"{"alg":"HS256","typ":"at+jwt","kid":"hs"}"#.to_owned()),
            Just(r#"{"alg":"none","typ":"at+jwt","kid":"ed"}"#.to_owned()),
            r#"\{"alg":"[A-Za-z0-9]{0,8}","typ":"\PC{0,10}","kid":"\PC{0,6}"(,"crit":\[\])?\}"#,
            any::<String>(),
        ],
        payload in prop_oneof![
            any::<String>(),
            r#"\{"iss":"\PC{0,20}","sub":"\PC{0,20}","aud":("\PC{0,10}"|\[\]|7),"exp":-?[0-9]{0,20},"iat":[0-9]{0,12}\}"#,
        ],
        signature in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let token = format!(
            "{}.{}.{}",
            b64(header.as_bytes()),
            b64(payload.as_bytes()),
            b64(&signature)
        );
        prop_assert!(verifier().verify(&token).is_err(), "{token}");
        let _ = inspect(&token);
    }

    #[test]
    fn a_changed_real_token_is_refused(index in 0usize..4, mutation in mutation()) {
        let (token, claims) = real_token(index);
        prop_assert_eq!(verifier().verify(&token), Ok(claims));
        let changed = apply(&token, &mutation);
        let outcome = verifier().verify(&changed);
        if changed == token {
            prop_assert!(outcome.is_ok());
        } else {
            prop_assert!(outcome.is_err(), "{:?} was accepted: {}", mutation, changed);
        }
        let _ = inspect(&changed);
    }

    #[test]
    fn a_real_token_padded_past_the_size_bound_is_refused(index in 0usize..4, extra in 1usize..64) {
        let (token, _) = real_token(index);
        let padded = format!("{token}{}", "A".repeat(MAX_TOKEN_BYTES + extra - token.len()));
        prop_assert!(verifier().verify(&padded).is_err());
    }
}
