use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderValue};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use super::*;
use crate::config::ProxyConfig;

fn proxy_config(format: ClientCertFormat, header: &'static str) -> ProxyConfig {
    ProxyConfig {
        trusted_proxies: vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ],
        trust_unix_peers: false,
        client_cert_header: HeaderName::from_static(header),
        client_cert_format: format,
        danger_allow_non_loopback_proxy: false,
    }
}

fn conn(peer: &str, trusted: bool) -> ConnInfo {
    ConnInfo {
        peer_addr: Some(peer.parse().unwrap()),
        trusted_proxy: trusted,
        tls_client_cert: None,
        alpn: None,
        forwarded_client_cert: None,
        forwarded_for: None,
    }
}

/// A client certificate (CN alice, a SPIFFE URI and a DNS SAN) as PEM, and its identity.
fn alice() -> (String, CertIdentity) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["alice.example".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "alice");
    params.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://airlock/alice".try_into().unwrap(),
    ));
    let cert = params.self_signed(&key).unwrap();
    let identity = CertIdentity::from_der(cert.der()).unwrap();
    (cert.pem(), identity)
}

#[test]
fn identity_from_der() {
    let (_, id) = alice();
    assert_eq!(id.common_name.as_deref(), Some("alice"));
    assert_eq!(id.dns_names, vec!["alice.example"]);
    assert_eq!(id.uris, vec!["spiffe://airlock/alice"]);
    assert_eq!(id.sha256_fingerprint.len(), 64);
}

#[test]
fn nginx_escaped_pem_from_a_trusted_proxy() {
    let (pem, want) = alice();
    let cfg = proxy_config(ClientCertFormat::EscapedPem, "x-client-cert");
    let mut headers = HeaderMap::new();
    let escaped = utf8_percent_encode(&pem, NON_ALPHANUMERIC).to_string();
    headers.insert("x-client-cert", HeaderValue::from_str(&escaped).unwrap());
    headers.insert(
        "x-forwarded-for",
        HeaderValue::from_static("203.0.113.9, 10.1.2.3"),
    );
    let fwd = forwarded_identity(&conn("127.0.0.1:5000", true), &headers, &cfg);
    assert_eq!(fwd.client_cert, Some(want));
    assert_eq!(
        fwd.client_ip,
        Some("203.0.113.9".parse::<IpAddr>().unwrap())
    );
    assert!(fwd.ignored_headers.is_empty() && fwd.error.is_none());
}

#[test]
fn forwarding_headers_from_an_untrusted_peer_are_ignored() {
    let (pem, _) = alice();
    let cfg = proxy_config(ClientCertFormat::EscapedPem, "x-client-cert");
    let mut headers = HeaderMap::new();
    let escaped = utf8_percent_encode(&pem, NON_ALPHANUMERIC).to_string();
    headers.insert("x-client-cert", HeaderValue::from_str(&escaped).unwrap());
    headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
    let fwd = forwarded_identity(&conn("192.0.2.7:5000", false), &headers, &cfg);
    assert_eq!(fwd.client_cert, None);
    assert_eq!(fwd.client_ip, None);
    assert_eq!(fwd.ignored_headers.len(), 2);
}

#[test]
fn trusted_peers() {
    let mut cfg = proxy_config(ClientCertFormat::Xfcc, "x-forwarded-client-cert");
    let peer = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
    assert!(is_trusted_peer(peer("127.0.0.1:1"), &cfg));
    assert!(is_trusted_peer(peer("10.9.8.7:1"), &cfg));
    assert!(is_trusted_peer(peer("[::ffff:10.9.8.7]:1"), &cfg));
    assert!(!is_trusted_peer(peer("192.0.2.1:1"), &cfg));
    assert!(!is_trusted_peer(None, &cfg));
    cfg.trust_unix_peers = true;
    assert!(is_trusted_peer(None, &cfg));
}

#[test]
fn xfcc_with_cert() {
    let (pem, want) = alice();
    let escaped = utf8_percent_encode(&pem, NON_ALPHANUMERIC).to_string();
    let value = format!(
        "By=spiffe://proxy/first;Hash=00;Subject=\"CN=mallory\",By=spiffe://airlock/gw;Hash={};Cert=\"{escaped}\";Subject=\"CN=alice\";URI=spiffe://airlock/alice",
        want.sha256_fingerprint
    );
    // The first element (an earlier hop, Hash malformed) is ignored: only the last counts.
    assert_eq!(parse_xfcc(&value).unwrap(), Some(want.clone()));

    let wrong_hash = format!("Hash={};Cert=\"{escaped}\"", "a".repeat(64));
    assert!(
        parse_xfcc(&wrong_hash)
            .unwrap_err()
            .contains("does not match")
    );
}

#[test]
fn xfcc_without_cert() {
    let hash = "AB".repeat(32);
    let value = format!(
        "By=spiffe://airlock/gw;Hash={hash};Subject=\"CN=bob,OU=ml,O=Example\\, Inc\";URI=spiffe://airlock/bob;DNS=bob.example;DNS=b.example"
    );
    let id = parse_xfcc(&value).unwrap().unwrap();
    assert_eq!(id.sha256_fingerprint, hash.to_ascii_lowercase());
    assert_eq!(id.common_name.as_deref(), Some("bob"));
    assert_eq!(id.uris, vec!["spiffe://airlock/bob"]);
    assert_eq!(id.dns_names, vec!["bob.example", "b.example"]);

    assert!(parse_xfcc("Subject=\"CN=x\"").is_err());
    assert!(parse_xfcc("Hash=xyz").is_err());
    assert!(parse_xfcc("garbage").is_err());
    assert_eq!(parse_xfcc("").unwrap(), None);
}

#[test]
fn escaped_pem_edge_cases() {
    assert_eq!(parse_escaped_pem("").unwrap(), None);
    assert_eq!(parse_escaped_pem("-").unwrap(), None);
    assert!(parse_escaped_pem("not%20a%20cert").is_err());
}

#[test]
fn unparseable_cert_from_a_trusted_proxy_is_an_error_not_an_identity() {
    let cfg = proxy_config(ClientCertFormat::Xfcc, "x-forwarded-client-cert");
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-forwarded-client-cert",
        HeaderValue::from_static("Cert=\"garbage\""),
    );
    let fwd = forwarded_identity(&conn("127.0.0.1:5000", true), &headers, &cfg);
    assert_eq!(fwd.client_cert, None);
    assert!(fwd.error.is_some());
}

#[test]
fn forwarded_for_skips_trusted_hops_and_rejects_garbage() {
    let cfg = proxy_config(ClientCertFormat::Xfcc, "x-forwarded-client-cert");
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-forwarded-for",
        HeaderValue::from_static("1.1.1.1, 198.51.100.4, 10.0.0.2"),
    );
    let fwd = forwarded_identity(&conn("127.0.0.1:5000", true), &headers, &cfg);
    assert_eq!(
        fwd.client_ip,
        Some("198.51.100.4".parse::<IpAddr>().unwrap())
    );
    headers.insert("x-forwarded-for", HeaderValue::from_static("nonsense"));
    let fwd = forwarded_identity(&conn("127.0.0.1:5000", true), &headers, &cfg);
    assert_eq!(fwd.client_ip, None);
    assert_eq!(fwd.malformed_for, vec!["nonsense"]);
}

#[test]
fn a_malformed_forwarded_for_entry_is_skipped_not_the_header() {
    let cfg = proxy_config(ClientCertFormat::Xfcc, "x-forwarded-client-cert");
    let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
    let client = |value: &'static str| {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static(value));
        forwarded_identity(&conn("127.0.0.1:5000", true), &headers, &cfg)
    };
    // The reported attack: one bad entry on the client's side dropped the address.
    let fwd = client("unknown, 203.0.113.9");
    assert_eq!(fwd.client_ip, ip("203.0.113.9"));
    assert_eq!(fwd.malformed_for, vec!["unknown"]);
    assert_eq!(
        client("unknown,, 1.1.1.1, 203.0.113.9, 10.0.0.2").client_ip,
        ip("203.0.113.9")
    );
    // Several header lines are one list.
    let mut headers = HeaderMap::new();
    headers.append("x-forwarded-for", HeaderValue::from_static("garbage"));
    headers.append(
        "x-forwarded-for",
        HeaderValue::from_static("[2001:db8::1]:443"),
    );
    let fwd = forwarded_identity(&conn("127.0.0.1:5000", true), &headers, &cfg);
    assert_eq!(fwd.client_ip, ip("2001:db8::1"));
    // A bad entry where the trusted hop put the client is not papered over with an
    // address the client wrote itself.
    let fwd = client("198.51.100.7, unknown, 10.0.0.2");
    assert_eq!(fwd.client_ip, None);
    assert_eq!(fwd.malformed_for, vec!["unknown"]);
    // Reported entries are bounded in number and length.
    let long =
        Box::leak(format!("{}, 203.0.113.9", vec!["x".repeat(500); 9].join(",")).into_boxed_str());
    let fwd = client(long);
    assert_eq!(fwd.client_ip, ip("203.0.113.9"));
    assert_eq!(fwd.malformed_for.len(), MAX_REPORTED);
    assert!(fwd.malformed_for.iter().all(|e| e.len() == 64));
}
