//! `jwt`: bearer tokens against the committed test JWKS (`policy/tests/fixtures`). The
//! first byte picks the mode:
//! - 0: the rest is a raw token;
//! - 1: the rest is a header and claims (JSON text, NUL-separated), signed here with the
//!   fixture Ed25519 key (kid `ed1`) so that hostile headers and claims get past the
//!   signature and reach the claim checks;
//! - 2: the rest is a JWKS document, loaded and then used on a well-signed token.
//!
//! A token is accepted only with the configured issuer and audience, numeric `exp`/`nbf`
//! around now, a non-empty tenant and subject, and a `cnf` binding that matches.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use airlock_policy::PolicyError;
use airlock_policy::jwt::{JwtSettings, JwtVerifier, TokenIdentity};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::Value;

use crate::split;

const JWKS: &str = include_str!("../../policy/tests/fixtures/jwks.json");
const ED_PEM: &[u8] = include_bytes!("../../policy/tests/fixtures/ed.pem");
/// The client certificate thumbprint presented with every token.
const THUMBPRINT: &str = "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU";

fn settings() -> JwtSettings {
    JwtSettings {
        issuer: "https://idp.example".into(),
        audience: "airlock".into(),
        leeway: Duration::from_secs(5),
        tenant_claim: "org".into(),
    }
}

pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => verify_all(&fixture_verifier(), &split::text(rest), None),
        1 => {
            let parts = split::nul_parts(rest, 2);
            let header = parts.first().copied().unwrap_or_default();
            let claims = parts.get(1).copied().unwrap_or_default();
            let token = sign(header, claims);
            verify_all(
                &fixture_verifier(),
                &token,
                serde_json::from_slice(claims).ok(),
            );
        }
        _ => {
            if let Ok(verifier) = JwtVerifier::from_jwks(&split::text(rest), settings()) {
                let claims = good_claims();
                let token = sign(
                    br#"{"alg":"EdDSA","kid":"ed1"}"#,
                    claims.to_string().as_bytes(),
                );
                verify_all(&verifier, &token, None);
            }
        }
    }
}

fn fixture_verifier() -> JwtVerifier {
    JwtVerifier::from_jwks(JWKS, settings())
        .unwrap_or_else(|e| panic!("the fixture JWKS must load: {e}"))
}

/// Verifies with and without a client certificate; checks what an accepted token says.
fn verify_all(verifier: &JwtVerifier, token: &str, claims: Option<Value>) {
    let with_cert = verifier.verify(token, Some(THUMBPRINT));
    let without = verifier.verify(token, None);
    if let Ok(id) = &without {
        assert!(
            !id.cert_bound,
            "a bound token verified without a certificate"
        );
        assert_eq!(with_cert.as_ref().ok(), Some(id));
    }
    if let Ok(id) = &with_cert {
        check_accepted(id, claims.as_ref());
    }
    for result in [with_cert, without] {
        if let Err(PolicyError::InvalidToken(why)) = result {
            assert!(
                token.len() < 16 || !why.contains(token),
                "error echoes the token"
            );
        }
    }
}

/// An accepted token carries what the policy requires.
fn check_accepted(id: &TokenIdentity, claims: Option<&Value>) {
    assert_eq!(id.issuer, "https://idp.example");
    assert!(!id.tenant.is_empty() && !id.subject.is_empty());
    let Some(claims) = claims else {
        return;
    };
    assert_eq!(
        claims.get("iss").and_then(Value::as_str),
        Some("https://idp.example")
    );
    assert_eq!(
        claims.get("org").and_then(Value::as_str),
        Some(id.tenant.as_str())
    );
    assert_eq!(
        claims.get("sub").and_then(Value::as_str),
        Some(id.subject.as_str())
    );
    let now = now();
    let time = |k: &str| claims.get(k).and_then(Value::as_f64);
    let (Some(exp), Some(nbf)) = (time("exp"), time("nbf")) else {
        panic!("accepted without numeric exp/nbf: {claims}");
    };
    // The leeway is 5 s; 1 s more for whole-second rounding.
    assert!(
        exp + 6.0 >= now && nbf - 6.0 <= now,
        "accepted outside exp/nbf: {claims}"
    );
    let aud = claims.get("aud");
    let aud_ok = match aud {
        Some(Value::String(a)) => a == "airlock",
        Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some("airlock")),
        _ => false,
    };
    assert!(aud_ok, "accepted without our audience: {claims}");
    if let Some(bound) = claims.get("cnf").and_then(|c| c.get("x5t#S256")) {
        assert!(id.cert_bound && bound.as_str() == Some(THUMBPRINT));
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `header.claims.signature` with the fixture Ed25519 key, whatever the header says.
fn sign(header: &[u8], claims: &[u8]) -> String {
    let key = EncodingKey::from_ed_pem(ED_PEM)
        .unwrap_or_else(|e| panic!("the fixture Ed25519 key must load: {e}"));
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::EdDSA)
        .unwrap_or_else(|e| panic!("signing failed: {e}"));
    format!("{message}.{signature}")
}

/// Claims that pass, valid until 2100.
fn good_claims() -> Value {
    serde_json::json!({
        "iss": "https://idp.example",
        "aud": "airlock",
        "sub": "alice",
        "org": "acme",
        "exp": 4_102_444_800u64,
        "nbf": 0,
    })
}

/// Seeds: a good token in each mode, and the classic attacks.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let good = good_claims();
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c.to_string()
    };
    let signed = |header: &str, claims: &str| {
        let mut out = vec![1u8];
        out.extend_from_slice(header.as_bytes());
        out.push(0);
        out.extend_from_slice(claims.as_bytes());
        out
    };
    let raw = |token: &str| {
        let mut out = vec![0u8];
        out.extend_from_slice(token.as_bytes());
        out
    };
    let ed = r#"{"alg":"EdDSA","kid":"ed1","typ":"JWT"}"#;
    let good_token = sign(ed.as_bytes(), good.to_string().as_bytes());
    let none_alg = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"ed1"}"#),
        URL_SAFE_NO_PAD.encode(good.to_string())
    );
    let mut jwks = vec![2u8];
    jwks.extend_from_slice(JWKS.as_bytes());
    vec![
        ("signed_good", signed(ed, &good.to_string())),
        (
            "signed_bound",
            signed(
                ed,
                &with("cnf", serde_json::json!({"x5t#S256": THUMBPRINT})),
            ),
        ),
        (
            "signed_aud_list",
            signed(ed, &with("aud", serde_json::json!(["x", "airlock"]))),
        ),
        (
            "signed_exp_string",
            signed(ed, &with("exp", serde_json::json!("4102444800"))),
        ),
        (
            "signed_float_times",
            signed(ed, &with("nbf", serde_json::json!(-1.5e300))),
        ),
        (
            "signed_wrong_alg",
            signed(r#"{"alg":"RS256","kid":"ed1"}"#, &good.to_string()),
        ),
        (
            "signed_crit",
            signed(
                r#"{"alg":"EdDSA","kid":"ed1","crit":["exp"],"jku":"http://x"}"#,
                &good.to_string(),
            ),
        ),
        ("raw_good", raw(&good_token)),
        ("raw_none", raw(&none_alg)),
        ("raw_garbage", raw("eyJ.eyJ.e")),
        ("jwks", jwks),
        (
            "jwks_oct",
            [
                &[2u8][..],
                &br#"{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0"}]}"#[..],
            ]
            .concat(),
        ),
    ]
}
