//! SIGHUP: certificates, CA bundle and CRLs reload atomically; in-flight requests are untouched;
//! a broken reload keeps the running state.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Daemon, Pki, TEST_MODEL, TestConfig, client_tls, raw_get, server_cert_sha256};

const RELOADED: &str = "reload complete";

fn ok(text: &std::io::Result<String>) -> bool {
    matches!(text, Ok(t) if t.starts_with("HTTP/1.1 200"))
}

#[tokio::test]
async fn sighup_applies_a_new_crl() {
    let pki = Pki::new(&["alice", "bob"]);
    let daemon = Daemon::start(&pki, &TestConfig::default());
    let alice = || client_tls(&pki.ca(), Some(pki.client("alice")));
    assert!(ok(&raw_get(daemon.addr, alice(), "/healthz").await));

    pki.revoke("alice");
    daemon.signal("HUP");
    assert!(
        daemon.wait_for_log(RELOADED, Duration::from_secs(10)),
        "{}",
        daemon.logs()
    );

    let result = raw_get(daemon.addr, alice(), "/healthz").await;
    assert!(
        !ok(&result),
        "revoked certificate accepted after reload: {result:?}"
    );
    let bob = raw_get(
        daemon.addr,
        client_tls(&pki.ca(), Some(pki.client("bob"))),
        "/healthz",
    )
    .await;
    assert!(ok(&bob), "{bob:?}");
}

#[tokio::test]
async fn failed_reload_keeps_the_old_state() {
    let pki = Pki::new(&["alice"]);
    let daemon = Daemon::start(&pki, &TestConfig::default());
    let before = server_cert_sha256(
        daemon.addr,
        client_tls(&pki.ca(), Some(pki.client("alice"))),
    )
    .await;

    std::fs::write(&daemon.config_path, "[listener]\naddress = 12\n").unwrap();
    daemon.signal("HUP");
    assert!(
        daemon.wait_for_log("reload failed", Duration::from_secs(10)),
        "{}",
        daemon.logs()
    );
    assert!(
        daemon.logs().contains("listener.address"),
        "the reason names the key: {}",
        daemon.logs()
    );

    let after = server_cert_sha256(
        daemon.addr,
        client_tls(&pki.ca(), Some(pki.client("alice"))),
    )
    .await;
    assert_eq!(before, after);
    assert!(ok(&raw_get(
        daemon.addr,
        client_tls(&pki.ca(), Some(pki.client("alice"))),
        "/healthz"
    )
    .await));
}

#[tokio::test]
async fn sighup_swaps_the_server_certificate_without_disturbing_an_inflight_stream() {
    let pki = Pki::new(&["alice"]);
    let cfg = TestConfig {
        models: format!(
            "[[models]]\nname = \"{TEST_MODEL}\"\nbackend = \"test\"\ntest_token_delay = \"100ms\"\n"
        ),
        ..TestConfig::default()
    };
    let daemon = Daemon::start(&pki, &cfg);
    let tls = || client_tls(&pki.ca(), Some(pki.client("alice")));
    let before = server_cert_sha256(daemon.addr, tls()).await;

    // A slow stream (~2 s) on the old state.
    let client = daemon.client(&pki, "alice");
    let stream = tokio::spawn({
        let (client, url) = (client.clone(), daemon.url("/v1/chat/completions"));
        async move {
            let resp = client
                .post(url)
                .json(&serde_json::json!({
                    "model": TEST_MODEL,
                    "messages": [{"role": "user", "content": common::TWENTY_WORDS}],
                    "stream": true,
                    "max_tokens": 20,
                }))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            resp.text().await.unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;

    // New server key and certificate from the same CA, then reload.
    std::fs::remove_file(pki.path("server.pem")).unwrap();
    std::fs::remove_file(pki.path("server.key")).unwrap();
    airlock_daemon::certs::init(pki.dir(), &[]).unwrap();
    daemon.signal("HUP");
    assert!(
        daemon.wait_for_log(RELOADED, Duration::from_secs(10)),
        "{}",
        daemon.logs()
    );

    let after = server_cert_sha256(daemon.addr, tls()).await;
    assert_ne!(
        before, after,
        "a new connection must see the new certificate"
    );
    assert!(
        !stream.is_finished(),
        "the stream should still be running across the reload"
    );

    let body = tokio::time::timeout(Duration::from_secs(30), stream)
        .await
        .unwrap()
        .unwrap();
    assert!(
        body.trim_end().ends_with("data: [DONE]"),
        "stream cut short: {body}"
    );
}
