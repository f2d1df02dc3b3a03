//! Proxy mode: plain HTTP on loopback or a Unix socket behind a TLS-terminating reverse proxy.
//! Forwarded identity headers count only from trusted proxies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Daemon, Pki, TestConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const IGNORED: &str = "ignoring forwarding headers from an untrusted peer";

#[tokio::test]
async fn forwarded_headers_from_an_untrusted_peer_are_ignored_and_logged() {
    let pki = Pki::new(&["alice"]);
    let cfg = TestConfig {
        mode: "proxy",
        proxy: "trusted_proxies = [\"10.20.30.40\"]\nclient_cert_header = \"x-client-cert\"\n"
            .into(),
        ..TestConfig::default()
    };
    let daemon = Daemon::start(&pki, &cfg);
    assert!(
        daemon.logs().contains("plain HTTP"),
        "proxy mode warns at start: {}",
        daemon.logs()
    );

    let pem = std::fs::read_to_string(pki.client("alice").0).unwrap();
    let escaped =
        percent_encoding::utf8_percent_encode(&pem, percent_encoding::NON_ALPHANUMERIC).to_string();
    let client = common::http_client();
    let resp = client
        .get(daemon.http_url("/healthz"))
        .header("x-client-cert", escaped)
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        daemon.wait_for_log(IGNORED, Duration::from_secs(5)),
        "{}",
        daemon.logs()
    );
    assert!(daemon.logs().contains("x-client-cert"), "{}", daemon.logs());
}

#[tokio::test]
async fn forwarded_headers_from_a_trusted_peer_are_used_silently() {
    let pki = Pki::new(&["alice"]);
    let cfg = TestConfig {
        mode: "proxy",
        proxy: "trusted_proxies = [\"127.0.0.1\"]\nclient_cert_header = \"x-client-cert\"\n".into(),
        ..TestConfig::default()
    };
    let daemon = Daemon::start(&pki, &cfg);
    let pem = std::fs::read_to_string(pki.client("alice").0).unwrap();
    let escaped =
        percent_encoding::utf8_percent_encode(&pem, percent_encoding::NON_ALPHANUMERIC).to_string();
    let resp = common::http_client()
        .get(daemon.http_url("/healthz"))
        .header("x-client-cert", escaped)
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-request-id"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = daemon.logs();
    assert!(
        !logs.contains(IGNORED) && !logs.contains("unusable forwarded"),
        "{logs}"
    );
}

/// One malformed `X-Forwarded-For` entry (`unknown, 203.0.113.9`) used to drop the client
/// address altogether: the audit record lost it and every client behind the proxy shared
/// one pre-hash throttle (the proxy's own address). Now the entry is skipped and logged.
#[tokio::test]
async fn a_malformed_forwarded_for_entry_keeps_the_client_address() {
    let pki = Pki::new(&[]);
    let keydb = pki.dir().join("keys.db");
    let cfg = TestConfig {
        mode: "proxy",
        proxy: "trusted_proxies = [\"127.0.0.1\"]\n".into(),
        extra: format!(
            "[auth]\nkey_db = {:?}\n\n[[tenants]]\nname = \"keyed\"\nmodels = [\"*\"]\n",
            keydb.to_str().unwrap()
        ),
        ..TestConfig::default()
    };
    let daemon = Daemon::start(&pki, &cfg);
    let (status, key, err) = common::airlockd(&[
        "keys",
        "create",
        "--tenant",
        "keyed",
        "--config",
        daemon.config_path.to_str().unwrap(),
    ]);
    assert!(status.success(), "{err}");
    let key = key.trim().to_owned();
    let client = common::http_client();
    let models = |xff: &'static str, key: String| {
        let req = client
            .get(daemon.http_url("/v1/models"))
            .bearer_auth(key)
            .header("x-forwarded-for", xff);
        async move { req.send().await.unwrap().status().as_u16() }
    };

    // The open readiness probe, with no credential at all: ready or not, no figures.
    let resp = client.get(daemon.http_url("/readyz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), r#"{"status":"ready"}"#);

    assert_eq!(models("unknown, 203.0.113.9", key.clone()).await, 200);
    assert!(
        daemon.wait_for_log(
            "skipping malformed X-Forwarded-For entries",
            Duration::from_secs(5)
        ),
        "{}",
        daemon.logs()
    );

    // Throttling is per client address: one client spends its attempts...
    let typo = common::wrong_secret(&key);
    // (10 in a burst, one more per 6 s: a slow machine may refill one while hashing.)
    let mut statuses = Vec::new();
    while statuses.last() != Some(&429) {
        statuses.push(models("unknown, 203.0.113.9", typo.clone()).await);
        assert!(statuses.len() < 40, "never throttled: {statuses:?}");
    }
    assert!(
        statuses.len() > 10 && statuses[..statuses.len() - 1].iter().all(|s| *s == 401),
        "{statuses:?}"
    );
    // ...and another client behind the same proxy is not throttled with it.
    assert_eq!(models("garbage, 203.0.113.10", typo.clone()).await, 401);

    // The audit log names the client the proxy vouched for.
    let db = daemon.config_path.parent().unwrap().join("audit.db");
    let (status, out, err) = common::airlockd(&[
        "audit",
        "export",
        "--db",
        db.to_str().unwrap(),
        "--format",
        "jsonl",
    ]);
    assert!(status.success(), "{err}");
    let first_models = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["route"] == "GET /v1/models")
        .expect("a record of the request");
    assert_eq!(
        first_models["forwarded_for"],
        serde_json::json!(["203.0.113.9"]),
        "{first_models}"
    );
}

#[tokio::test]
async fn proxy_mode_refuses_a_public_address() {
    let pki = Pki::new(&[]);
    let cfg = TestConfig {
        mode: "proxy",
        ..TestConfig::default()
    };
    let toml = cfg.to_toml(&pki).replace("127.0.0.1:0", "0.0.0.0:0");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.toml");
    std::fs::write(&file, toml).unwrap();
    let (status, _, err) = common::airlockd(&["check-config", "--config", file.to_str().unwrap()]);
    assert_eq!(status.code(), Some(64));
    assert!(
        err.contains("listener.address") && err.contains("danger_allow_non_loopback_proxy"),
        "{err}"
    );
}

#[tokio::test]
async fn serves_on_a_unix_socket() {
    let pki = Pki::new(&[]);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("airlockd.sock");
    let cfg = TestConfig {
        mode: "proxy",
        proxy: "trusted_proxies = [\"unix\"]\n".into(),
        ..TestConfig::default()
    };
    let toml = cfg
        .to_toml(&pki)
        .replace("127.0.0.1:0", &format!("unix:{}", socket.display()));
    // Daemon::start parses a TCP address; watch the socket file instead.
    let mut child = std::process::Command::new(common::AIRLOCKD)
        .args(["serve", "--config"])
        .arg({
            let f = dir.path().join("a.toml");
            std::fs::write(&f, toml).unwrap();
            f
        })
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stream = None;
    for _ in 0..300 {
        if let Ok(s) = tokio::net::UnixStream::connect(&socket).await {
            stream = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut stream = stream.expect("unix socket never appeared");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: airlock\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}
