//! JWT verification. Raw tokens: no panic, and nothing unsigned passes.
//! Signed tokens whose header and claims are the fuzzer's bytes: a token
//! that passes carries HS256, the audience, a future `exp` and a UUID `sub`
//! equal to the user it yields.
#![no_main]

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use ragctl::auth::{AUDIENCE, AuthUser, Verifier};
use serde_json::Value;
use uuid::Uuid;

const SECRET: &str = "fuzz-secret";

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| Verifier::new(SECRET).expect("secret"))
}

fn now() -> u64 {
    chrono::Utc::now().timestamp() as u64
}

fn sign(header: &[u8], claims: &[u8]) -> String {
    let signing_input = format!("{}.{}", B64.encode(header), B64.encode(claims));
    let key = EncodingKey::from_secret(SECRET.as_bytes()).expect("a key");
    let sig = jsonwebtoken::crypto::sign(signing_input.as_bytes(), &key, Algorithm::HS256)
        .expect("HS256 signs");
    format!("{signing_input}.{sig}")
}

/// `before`: the time just before the check, which no accepted `exp` is
/// under (the check compares with its own, later, now).
fn accepted(header: &[u8], claims: &[u8], user: AuthUser, before: u64) {
    let h: Value = serde_json::from_slice(header).expect("an accepted header is JSON");
    assert_eq!(h["alg"], "HS256");
    let c: Value = serde_json::from_slice(claims).expect("accepted claims are JSON");
    let sub = c["sub"].as_str().expect("a string `sub`");
    assert_eq!(Uuid::parse_str(sub).ok(), Some(user.user_id));
    assert_eq!(c["exp"].as_u64(), Some(user.exp));
    assert!(user.exp >= before, "expired token accepted");
    if let Some(nbf) = c["nbf"].as_u64() {
        assert!(nbf <= now(), "token accepted before its `nbf`");
    }
    let aud_ok = match &c["aud"] {
        Value::String(a) => a == AUDIENCE,
        Value::Array(a) => a.iter().any(|x| x == AUDIENCE),
        _ => false,
    };
    assert!(aud_ok, "wrong audience accepted: {}", c["aud"]);
}

fn run(u: &mut Unstructured) -> Result<()> {
    if u.arbitrary()? {
        let raw: &str = u.arbitrary()?;
        if let Ok(user) = verifier().verify(raw) {
            panic!("an unsigned token verified: {raw:?} -> {user:?}");
        }
        return Ok(());
    }
    let header: &[u8] = u.arbitrary()?;
    let claims = u.bytes(u.len())?;
    let before = now();
    if let Ok(user) = verifier().verify(&sign(header, claims)) {
        accepted(header, claims, user, before);
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
