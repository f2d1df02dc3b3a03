//! Mutual TLS at the front door: who gets in, who does not, and slow clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Daemon, Pki, TEST_MODEL, TestConfig, client_tls, raw_get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn refused(result: &std::io::Result<String>) -> bool {
    match result {
        Err(_) => true,
        Ok(text) => !text.starts_with("HTTP/1.1 200"),
    }
}

#[tokio::test]
async fn valid_client_certificate_round_trip() {
    let pki = Pki::new(&["alice"]);
    let daemon = Daemon::start(&pki, &TestConfig::default());
    let client = daemon.client(&pki, "alice");

    let resp = client.get(daemon.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.version(),
        reqwest::Version::HTTP_2,
        "ALPN should pick h2"
    );
    assert!(resp.headers().contains_key("x-request-id"));

    let resp = client
        .get(daemon.url("/v1/models"))
        .header("x-request-id", "test-req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "test-req-42");
    let body = resp.text().await.unwrap();
    assert!(body.contains(TEST_MODEL), "{body}");

    // HTTP/1.1 over raw TLS works too, and an insane request id is replaced.
    let text = raw_get(
        daemon.addr,
        client_tls(&pki.ca(), Some(pki.client("alice"))),
        "/healthz",
    )
    .await
    .unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        daemon.wait_for_log("test-req-42", Duration::from_secs(5)),
        "request id in the access log"
    );
}

#[tokio::test]
async fn refused_without_a_client_certificate() {
    let pki = Pki::new(&["alice"]);
    let daemon = Daemon::start(&pki, &TestConfig::default());
    let result = raw_get(daemon.addr, client_tls(&pki.ca(), None), "/healthz").await;
    assert!(refused(&result), "{result:?}");
    assert!(
        daemon.wait_for_log("TLS handshake failed", Duration::from_secs(5)),
        "{}",
        daemon.logs()
    );
}

#[tokio::test]
async fn refused_with_a_certificate_from_another_ca() {
    let pki = Pki::new(&["alice"]);
    let other = Pki::new(&["alice"]);
    let daemon = Daemon::start(&pki, &TestConfig::default());
    let result = raw_get(
        daemon.addr,
        client_tls(&pki.ca(), Some(other.client("alice"))),
        "/healthz",
    )
    .await;
    assert!(refused(&result), "{result:?}");
}

#[tokio::test]
async fn refused_with_an_expired_certificate() {
    let pki = Pki::new(&["alice"]);
    let now = time::OffsetDateTime::now_utc();
    airlock_daemon::certs::issue_client(
        pki.dir(),
        "old",
        now - time::Duration::days(30),
        now - time::Duration::days(1),
    )
    .unwrap();
    let daemon = Daemon::start(&pki, &TestConfig::default());
    let result = raw_get(
        daemon.addr,
        client_tls(&pki.ca(), Some(pki.client("old"))),
        "/healthz",
    )
    .await;
    assert!(refused(&result), "{result:?}");
    // The same CA's valid certificate still works.
    let ok = raw_get(
        daemon.addr,
        client_tls(&pki.ca(), Some(pki.client("alice"))),
        "/healthz",
    )
    .await
    .unwrap();
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}

#[tokio::test]
async fn refused_with_a_revoked_certificate() {
    let pki = Pki::new(&["alice", "bob"]);
    pki.revoke("bob");
    let daemon = Daemon::start(&pki, &TestConfig::default());
    let result = raw_get(
        daemon.addr,
        client_tls(&pki.ca(), Some(pki.client("bob"))),
        "/healthz",
    )
    .await;
    assert!(refused(&result), "{result:?}");
    let ok = raw_get(
        daemon.addr,
        client_tls(&pki.ca(), Some(pki.client("alice"))),
        "/healthz",
    )
    .await
    .unwrap();
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}

#[tokio::test]
async fn silent_client_is_dropped_after_the_handshake_timeout() {
    let pki = Pki::new(&["alice"]);
    let cfg = TestConfig {
        listener: "handshake_timeout = \"1s\"\n".into(),
        ..TestConfig::default()
    };
    let daemon = Daemon::start(&pki, &cfg);
    let mut tcp = tokio::net::TcpStream::connect(daemon.addr).await.unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "connection should be closed: {read:?}"
    );
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "closed too early"
    );
}

#[tokio::test]
async fn slow_header_client_is_dropped_while_others_are_served() {
    let pki = Pki::new(&["alice"]);
    let cfg = TestConfig {
        limits: "header_read_timeout = \"1s\"\n".into(),
        ..TestConfig::default()
    };
    let daemon = Daemon::start(&pki, &cfg);

    // A client that completes TLS, then trickles an unfinished request head.
    let mut tls = client_tls(&pki.ca(), Some(pki.client("alice")));
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(daemon.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut slow = connector.connect(name, tcp).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n")
        .await
        .unwrap();
    let start = Instant::now();

    // Meanwhile another client is served promptly.
    let client = daemon.client(&pki, "alice");
    let resp = client.get(daemon.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);

    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "slow client was not dropped");
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "dropped too early"
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(
        !text.contains(" 200 "),
        "slow request must not be served: {text}"
    );
}

#[tokio::test]
async fn connections_beyond_max_connections_are_closed() {
    let pki = Pki::new(&["alice"]);
    let cfg = TestConfig {
        limits: "max_connections = 1\n".into(),
        ..TestConfig::default()
    };
    let daemon = Daemon::start(&pki, &cfg);
    let tls = || client_tls(&pki.ca(), Some(pki.client("alice")));

    // A silent TCP connection holds no connection slot (only a pending-handshake one):
    // a client that completes its handshake still gets in.
    let silent = tokio::net::TcpStream::connect(daemon.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let result = raw_get(daemon.addr, tls(), "/healthz").await;
    assert!(!refused(&result), "{result:?}");
    drop(silent);

    // A connection past its handshake holds the only slot.
    let mut holder_tls = tls();
    holder_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(holder_tls));
    let tcp = tokio::net::TcpStream::connect(daemon.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let holder = connector.connect(name, tcp).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let result = raw_get(daemon.addr, tls(), "/healthz").await;
    assert!(refused(&result), "{result:?}");
    assert!(
        daemon.wait_for_log("connection limit reached", Duration::from_secs(5)),
        "{}",
        daemon.logs()
    );

    // Freeing the slot lets the next client in.
    drop(holder);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let result = raw_get(daemon.addr, tls(), "/healthz").await;
        if !refused(&result) {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed: {result:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn tls12_clients_are_served_with_aead_suites() {
    use rustls::pki_types::pem::PemObject;
    let pki = Pki::new(&["alice"]);
    let daemon = Daemon::start(&pki, &TestConfig::default());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_file(pki.ca()).unwrap())
        .unwrap();
    let (cert, key) = pki.client("alice");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![rustls::pki_types::CertificateDer::from_pem_file(cert).unwrap()],
            rustls::pki_types::PrivateKeyDer::from_pem_file(key).unwrap(),
        )
        .unwrap();
    let text = raw_get(daemon.addr, tls, "/healthz").await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[tokio::test]
async fn oversized_request_heads_are_refused() {
    let pki = Pki::new(&["alice"]);
    let daemon = Daemon::start(
        &pki,
        &TestConfig {
            limits: "max_header_bytes = 8192\n".into(),
            ..TestConfig::default()
        },
    );
    let mut tls = client_tls(&pki.ca(), Some(pki.client("alice")));
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(daemon.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = connector.connect(name, tcp).await.unwrap();
    let head = format!(
        "GET /healthz HTTP/1.1\r\nhost: localhost\r\nx-big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    // The server may stop reading (and close) before the whole head is written.
    let _ = stream.write_all(head.as_bytes()).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "{text}"
    );
    assert!(!text.contains(" 200 "), "{text}");
}
