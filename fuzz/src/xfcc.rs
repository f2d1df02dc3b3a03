//! `xfcc`: the client identity a reverse proxy forwards. Input: the client-certificate
//! header value, then (after a NUL) the `X-Forwarded-For` value. Each value goes through
//! both header formats, directly and through `forwarded_identity` from a trusted and an
//! untrusted peer.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use airlock_daemon::config::{ClientCertFormat, ProxyConfig};
use airlock_daemon::identity::forwarded::{
    X_FORWARDED_FOR, forwarded_identity, parse_escaped_pem, parse_xfcc,
};
use airlock_daemon::identity::{CertIdentity, ConnInfo};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::split;

const CERT_HEADER: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

pub fn run(data: &[u8]) {
    let parts = split::nul_parts(data, 2);
    let cert = parts.first().copied().unwrap_or_default();
    let xff = parts.get(1).copied();
    let text = split::text(cert);
    let direct = [
        (ClientCertFormat::Xfcc, parse_xfcc(&text)),
        (ClientCertFormat::EscapedPem, parse_escaped_pem(&text)),
    ];
    for (_, result) in &direct {
        if let Ok(Some(identity)) = result {
            check_identity(identity);
        }
    }
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_bytes(cert) {
        headers.insert(CERT_HEADER, value);
    }
    if let Some(xff) = xff
        && let Ok(value) = HeaderValue::from_bytes(xff)
    {
        headers.insert(X_FORWARDED_FOR, value);
    }
    for (format, result) in direct {
        let cfg = config(format);
        // From an untrusted peer, forwarded headers establish nothing.
        let untrusted = forwarded_identity(&conn(false), &headers, &cfg);
        assert!(untrusted.client_cert.is_none() && untrusted.client_ip.is_none());
        assert!(untrusted.error.is_none());
        let trusted = forwarded_identity(&conn(true), &headers, &cfg);
        match headers.get(&CERT_HEADER).map(HeaderValue::to_str) {
            // Visible ASCII: the direct parse saw the same text.
            Some(Ok(_)) => match result {
                Ok(identity) => assert_eq!(trusted.client_cert, identity),
                Err(_) => assert!(trusted.client_cert.is_none() && trusted.error.is_some()),
            },
            Some(Err(_)) => assert!(trusted.client_cert.is_none() && trusted.error.is_some()),
            None => assert!(trusted.client_cert.is_none() && trusted.error.is_none()),
        }
    }
}

/// A forwarded identity always carries a well-formed certificate fingerprint.
fn check_identity(identity: &CertIdentity) {
    let fp = &identity.sha256_fingerprint;
    assert!(
        fp.len() == 64
            && fp
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "fingerprint {fp:?}"
    );
}

fn config(format: ClientCertFormat) -> ProxyConfig {
    ProxyConfig {
        trusted_proxies: vec![
            "127.0.0.0/8".parse().unwrap_or_else(|e| panic!("{e}")),
            "::1/128".parse().unwrap_or_else(|e| panic!("{e}")),
            "10.0.0.0/8".parse().unwrap_or_else(|e| panic!("{e}")),
        ],
        trust_unix_peers: false,
        client_cert_header: CERT_HEADER,
        client_cert_format: format,
        danger_allow_non_loopback_proxy: false,
    }
}

fn conn(trusted: bool) -> ConnInfo {
    ConnInfo {
        peer_addr: Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 40000)),
        trusted_proxy: trusted,
        tls_client_cert: None,
        alpn: None,
        forwarded_client_cert: None,
        forwarded_for: None,
    }
}

/// Seeds: a real certificate in both encodings, Envoy's documented examples, XFF chains.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut params = rcgen::CertificateParams::new(vec!["alice.example".to_owned()])
        .unwrap_or_else(|e| panic!("{e}"));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "alice");
    params.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://example/alice"
            .try_into()
            .unwrap_or_else(|e| panic!("{e:?}")),
    ));
    let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
    let cert = params.self_signed(&key).unwrap_or_else(|e| panic!("{e}"));
    let pem = cert.pem();
    let escaped: String = pem
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let hash = "a".repeat(64);
    let with_xff = |cert: &str, xff: &str| [cert.as_bytes(), &[0u8][..], xff.as_bytes()].concat();
    vec![
        ("escaped_pem", with_xff(&escaped, "203.0.113.7, 10.0.0.1")),
        (
            "xfcc_cert",
            format!("By=spiffe://proxy;Cert=\"{escaped}\";Subject=\"CN=alice\"").into_bytes(),
        ),
        (
            "xfcc_hash",
            with_xff(
                &format!("By=spiffe://a,Hash={hash};Subject=\"CN=alice,OU=x\";URI=spiffe://e/alice;DNS=alice.example"),
                "[2001:db8::1]:443, ::ffff:10.1.2.3",
            ),
        ),
        (
            "xfcc_quoted",
            br#"Hash=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef;Subject="CN=\"a,b\";x";URI="a\\"#.to_vec(),
        ),
        ("null", with_xff("(null)", "unknown")),
        ("dash", b"-".to_vec()),
    ]
}
