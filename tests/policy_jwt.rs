//! JWT bearer tokens through the real daemon: tokens signed with the committed test keys
//! (`policy/tests/fixtures`, verified against their `jwks.json`) map to the tenant in their
//! `org` claim; expired, wrong-audience, unsigned and certificate-bound tokens presented
//! over another certificate are refused with 401, as are tokens with a `cnf` other than a
//! lone `x5t#S256` or with a `crit` header. Also: the tenant's `x-ratelimit-*`
//! headers on every response after authentication, refusals included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{Daemon, Pki, TEST_MODEL, TestConfig};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../policy/tests/fixtures");
const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "airlock";

/// Two tenants told apart by their request limits; neither owns a certificate, so a
/// request is theirs only through a token.
fn config(pki: &Pki) -> String {
    let extra = format!(
        r#"
[auth]
jwks = "{FIXTURES}/jwks.json"
jwt_issuer = "{ISSUER}"
jwt_audience = "{AUDIENCE}"
jwt_tenant_claim = "org"

[[tenants]]
name = "acme"
models = ["*"]
requests_per_minute = 100
tokens_per_minute = 100000

[[tenants]]
name = "beta"
models = ["*"]
requests_per_minute = 50
"#
    );
    TestConfig {
        extra,
        ..TestConfig::default()
    }
    .to_toml(pki)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(org: &str) -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "org": org,
        "nbf": now() - 10,
        "exp": now() + 300,
    })
}

fn sign(alg: Algorithm, claims: &Value) -> String {
    let (kid, key) = match alg {
        Algorithm::RS256 => ("rsa1", EncodingKey::from_rsa_pem(&fixture("rsa.pem"))),
        Algorithm::ES256 => ("ec1", EncodingKey::from_ec_pem(&fixture("ec.pem"))),
        Algorithm::EdDSA => ("ed1", EncodingKey::from_ed_pem(&fixture("ed.pem"))),
        other => panic!("no test key for {other:?}"),
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &key.unwrap()).unwrap()
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
}

/// An unsigned token (`alg: none`) naming a real kid.
fn unsigned(claims: &Value) -> String {
    use base64::Engine as _;
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT", "kid": "rsa1"})),
        b64(claims)
    )
}

/// The RFC 8705 thumbprint of a tenant's client certificate.
fn x5t_s256(pki: &Pki, who: &str) -> String {
    let der = CertificateDer::from_pem_file(pki.client(who).0).unwrap();
    airlock_policy::jwt::cert_thumbprint_s256(&der)
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    token: &str,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let body = json!({"model": TEST_MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8});
    let resp = client
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn tokens_accepted_refused_and_bound() {
    let pki = Pki::new(&["carol", "dave"]);
    let daemon = Daemon::start_toml(&config(&pki));
    let url = daemon.url("/v1/chat/completions");
    let carol = daemon.client(&pki, "carol");

    // Valid tokens under each pinned algorithm, mapped to the tenant their claim names
    // (told apart by that tenant's request limit).
    for (alg, org, limit) in [
        (Algorithm::RS256, "acme", "100"),
        (Algorithm::ES256, "beta", "50"),
        (Algorithm::EdDSA, "acme", "100"),
    ] {
        let (status, headers, body) = post(&carol, &url, &sign(alg, &claims(org))).await;
        assert_eq!(status, 200, "{alg:?}: {body}");
        assert_eq!(headers["x-ratelimit-limit-requests"], limit, "{alg:?}");
    }

    // Refusals: 401, never echoing the token, no tenant headers (nobody authenticated).
    let mut expired = claims("acme");
    expired["exp"] = json!(now() - 3600);
    expired["nbf"] = json!(now() - 7200);
    let mut wrong_aud = claims("acme");
    wrong_aud["aud"] = json!("someone-else");
    let refused = [
        ("expired", sign(Algorithm::RS256, &expired)),
        ("wrong aud", sign(Algorithm::ES256, &wrong_aud)),
        ("alg none", unsigned(&claims("acme"))),
    ];
    for (what, token) in refused {
        let (status, headers, body) = post(&carol, &url, &token).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body["error"]["code"], "invalid_api_key", "{what}");
        assert!(
            !body.to_string().contains(&token),
            "{what}: token echoed: {body}"
        );
        assert!(
            !headers.contains_key("x-ratelimit-limit-requests"),
            "{what}"
        );
    }

    // Certificate-bound (RFC 8705): good over carol's certificate only.
    let mut bound = claims("acme");
    bound["cnf"] = json!({"x5t#S256": x5t_s256(&pki, "carol")});
    let token = sign(Algorithm::RS256, &bound);
    let (status, _, body) = post(&carol, &url, &token).await;
    assert_eq!(status, 200, "{body}");
    let dave = daemon.client(&pki, "dave");
    let (status, _, body) = post(&dave, &url, &token).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("another client certificate"),
        "{body}"
    );
}

/// Signs `claims` with the EC test key and a header that also carries `crit`.
fn sign_with_crit(claims: &Value, crit: &[&str]) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("ec1".into());
    header.crit = Some(crit.iter().map(|c| (*c).to_owned()).collect());
    for name in crit {
        header.extras.insert((*name).to_owned(), "1".into());
    }
    let key = EncodingKey::from_ec_pem(&fixture("ec.pem")).unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// Tokens whose binding or header the gateway cannot honour are refused, not downgraded to
/// plain bearer tokens: a `cnf` with only `jkt` (DPoP), one with `jkt` beside a matching
/// `x5t#S256`, and a `crit` header naming an extension we do not understand.
#[tokio::test]
async fn unverifiable_confirmation_and_critical_headers_are_refused() {
    let pki = Pki::new(&["carol"]);
    let daemon = Daemon::start_toml(&config(&pki));
    let url = daemon.url("/v1/chat/completions");
    let carol = daemon.client(&pki, "carol");
    let thumbprint = x5t_s256(&pki, "carol");
    let jkt = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";

    let mut dpop = claims("acme");
    dpop["cnf"] = json!({"jkt": jkt});
    let mut mixed = claims("acme");
    mixed["cnf"] = json!({"x5t#S256": thumbprint, "jkt": jkt});
    let refused = [
        ("cnf.jkt only", sign(Algorithm::RS256, &dpop)),
        ("cnf.jkt beside x5t#S256", sign(Algorithm::RS256, &mixed)),
        (
            "unknown crit",
            sign_with_crit(&claims("acme"), &["https://idp.test/ext"]),
        ),
        (
            "crit naming a registered header",
            sign_with_crit(&claims("acme"), &["b64"]),
        ),
    ];
    for (what, token) in refused {
        let (status, headers, body) = post(&carol, &url, &token).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body["error"]["code"], "invalid_api_key", "{what}");
        assert_eq!(body["error"]["message"], "invalid token", "{what}");
        assert!(
            !headers.contains_key("x-ratelimit-limit-requests"),
            "{what}"
        );
    }

    // The same claims without the extras still pass, over the same connection.
    let mut bound = claims("acme");
    bound["cnf"] = json!({"x5t#S256": thumbprint});
    let (status, _, body) = post(&carol, &url, &sign(Algorithm::RS256, &bound)).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = post(&carol, &url, &sign(Algorithm::ES256, &claims("acme"))).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn limit_headers_on_every_authenticated_response() {
    let pki = Pki::new(&["carol"]);
    let daemon = Daemon::start_toml(&config(&pki));
    let carol = daemon.client(&pki, "carol");
    let token = sign(Algorithm::RS256, &claims("acme"));
    let expect_headers = |what: &str, headers: &reqwest::header::HeaderMap| {
        for name in [
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
        ] {
            assert!(headers.contains_key(name), "{what}: no {name}: {headers:?}");
        }
    };

    // A route that runs no inference.
    let resp = carol
        .get(daemon.url("/v1/models"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    expect_headers("models", resp.headers());

    // A 400 after authentication (the body is not JSON).
    let resp = carol
        .post(daemon.url("/v1/chat/completions"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    expect_headers("malformed body", resp.headers());

    // A 404 for an unknown model, refused by the engine.
    let body = json!({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]});
    let resp = carol
        .post(daemon.url("/v1/chat/completions"))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    expect_headers("unknown model", resp.headers());
}
