//! The typed authentication failures and their metric labels.

use http::HeaderValue;

use super::*;

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in pairs {
        h.insert(*name, HeaderValue::from_str(value).expect("valid header"));
    }
    h
}

fn failure(result: Result<Option<&str>, AuthError>) -> &'static str {
    result.expect_err("refused").label()
}

#[test]
fn credential_failures_carry_their_metric_label() {
    assert_eq!(
        failure(credential(&headers(&[("authorization", "Basic abc")]))),
        "malformed"
    );
    assert_eq!(
        failure(credential(&headers(&[("authorization", "Bearer ")]))),
        "malformed"
    );
    assert_eq!(
        failure(credential(&headers(&[
            ("authorization", "Bearer alk_a"),
            ("x-api-key", "alk_b"),
        ]))),
        "conflicting_credentials"
    );
    assert_eq!(
        credential(&headers(&[("x-api-key", " alk_a ")])),
        Ok(Some("alk_a"))
    );
    let throttled = AuthError::Throttled { retry_after: 3 };
    assert_eq!(throttled.label(), "throttled");
    assert_eq!(AuthError::KeysUnavailable.label(), "unavailable");
    // The message is the client's; it never carries the credential.
    let presented = headers(&[("authorization", "Basic secret-value")]);
    let message = credential(&presented).expect_err("refused").to_string();
    assert!(!message.contains("secret-value"), "{message}");
}

#[tokio::test]
async fn missing_and_unbacked_credentials_are_typed() {
    let access = Access::legacy();
    let conn = ConnInfo {
        peer_addr: None,
        trusted_proxy: false,
        tls_client_cert: None,
        alpn: None,
        forwarded_client_cert: None,
        forwarded_for: None,
    };
    let none = access.authenticate(&conn, &HeaderMap::new()).await;
    assert_eq!(none.expect_err("refused").label(), "missing_credential");
    let key = access
        .authenticate(&conn, &headers(&[("x-api-key", "alk_not-a-key")]))
        .await;
    assert_eq!(key.expect_err("refused").label(), "malformed");
    let token = access
        .authenticate(&conn, &headers(&[("authorization", "Bearer a.b.c")]))
        .await;
    // No `[auth] jwks`: a bearer that is not a key is refused as malformed.
    assert_eq!(token.expect_err("refused").label(), "malformed");
}
