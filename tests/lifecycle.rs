//! Process lifecycle: CLI contract, config validation exit codes, graceful shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Daemon, Pki, TEST_MODEL, TestConfig, airlockd};

#[test]
fn help_works_everywhere() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["check-config", "--help"],
        &["certs", "--help"],
        &["certs", "init", "--help"],
        &["certs", "revoke", "--help"],
        &["dev", "--help"],
    ] {
        let (status, out, err) = airlockd(args);
        assert!(status.success(), "{args:?}: {err}");
        assert!(out.contains("Usage"), "{args:?}: {out}");
    }
}

#[test]
fn usage_errors_are_one_line_and_exit_64() {
    for args in [
        &["serve"][..],
        &["frobnicate"],
        &["serve", "--config"],
        &["certs", "init"],
    ] {
        let (status, _, err) = airlockd(args);
        assert_eq!(status.code(), Some(64), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("airlockd: "), "{err}");
    }
    let (status, out, _) = airlockd(&["--version"]);
    assert!(status.success());
    assert!(out.starts_with("airlockd "), "{out}");
}

#[test]
fn check_config_accepts_a_good_file() {
    let pki = Pki::new(&["alice"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("airlockd.toml");
    std::fs::write(&file, TestConfig::default().to_toml(&pki)).unwrap();
    let (status, out, err) = airlockd(&["check-config", "--config", file.to_str().unwrap()]);
    assert!(status.success(), "{err}");
    assert!(out.contains("ok"), "{out}");
    assert!(
        err.contains("backend = \\\"test\\\"") || err.contains("test"),
        "test backend warns: {err}"
    );
}

#[test]
fn check_config_exits_64_with_file_key_and_reason() {
    let pki = Pki::new(&[]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("airlockd.toml");
    let text = TestConfig::default()
        .to_toml(&pki)
        .replace("[limits]\n", "[limits]\nmax_connections = 0\n");
    std::fs::write(&file, text).unwrap();
    let (status, _, err) = airlockd(&["check-config", "--config", file.to_str().unwrap()]);
    assert_eq!(status.code(), Some(64));
    assert_eq!(
        err.trim_end(),
        format!(
            "{}: limits.max_connections: must be at least 1",
            file.display()
        )
    );

    // (`[[tenants]]` is a real section now: an unknown one stands in for a typo.)
    let text = TestConfig::default().to_toml(&pki) + "\n[tenantz]\nalice = {}\n";
    std::fs::write(&file, text).unwrap();
    let (status, _, err) = airlockd(&["check-config", "--config", file.to_str().unwrap()]);
    assert_eq!(status.code(), Some(64));
    assert!(
        err.starts_with(&format!("{}: tenantz: unknown field", file.display())),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    let (status, _, err) = airlockd(&["check-config", "--config", "/nonexistent/airlockd.toml"]);
    assert_eq!(status.code(), Some(64));
    assert!(
        err.starts_with("/nonexistent/airlockd.toml: cannot read"),
        "{err}"
    );

    // serve refuses the same way, before doing anything else.
    let (status, _, err) = airlockd(&["serve", "--config", "/nonexistent/airlockd.toml"]);
    assert_eq!(status.code(), Some(64));
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn certs_match_openssl() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        eprintln!("openssl not installed; skipping the cross-check");
        return;
    }
    let pki = Pki::new(&["alice"]);
    let verify = || {
        std::process::Command::new("openssl")
            .args(["verify", "-crl_check", "-CAfile"])
            .arg(pki.ca())
            .arg("-CRLfile")
            .arg(pki.path("crl.pem"))
            .arg(pki.client("alice").0)
            .output()
            .unwrap()
    };
    let out = verify();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pki.revoke("alice");
    let out = verify();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("revoked")
            || String::from_utf8_lossy(&out.stderr).contains("revoked")
    );
}

#[tokio::test]
async fn sigterm_lets_an_inflight_stream_finish_then_exits_0() {
    let pki = Pki::new(&["alice"]);
    let cfg = TestConfig {
        models: format!(
            "[[models]]\nname = \"{TEST_MODEL}\"\nbackend = \"test\"\ntest_token_delay = \"100ms\"\n"
        ),
        ..TestConfig::default()
    };
    let mut daemon = Daemon::start(&pki, &cfg);
    let client = daemon.client(&pki, "alice");
    let stream = tokio::spawn({
        let url = daemon.url("/v1/chat/completions");
        async move {
            let resp = client
                .post(url)
                .json(&serde_json::json!({
                    "model": TEST_MODEL,
                    "messages": [{"role": "user", "content": common::TWENTY_WORDS}],
                    "stream": true,
                    "max_tokens": 15,
                }))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            resp.text().await.unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !stream.is_finished(),
        "the stream should still be running at SIGTERM"
    );
    daemon.signal("TERM");
    assert!(
        daemon.wait_for_log("draining", Duration::from_secs(5)),
        "{}",
        daemon.logs()
    );

    // New connections are refused while the old stream drains.
    let fresh = daemon.client(&pki, "alice");
    assert!(fresh.get(daemon.url("/healthz")).send().await.is_err());

    let body = tokio::time::timeout(Duration::from_secs(30), stream)
        .await
        .unwrap()
        .unwrap();
    assert!(
        body.trim_end().ends_with("data: [DONE]"),
        "stream cut short: {body}"
    );
    let status = tokio::task::spawn_blocking(move || daemon.wait_exit(Duration::from_secs(15)))
        .await
        .unwrap()
        .expect("daemon did not exit");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn sigterm_when_idle_exits_promptly() {
    let pki = Pki::new(&["alice"]);
    let mut daemon = Daemon::start(&pki, &TestConfig::default());
    let client = daemon.client(&pki, "alice");
    assert_eq!(
        client
            .get(daemon.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    daemon.signal("INT");
    let status = tokio::task::spawn_blocking(move || daemon.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("daemon did not exit");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn systemd_notify_protocol() {
    let pki = Pki::new(&["alice"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let recv_until = |prefix: &str| -> String {
        let mut buf = [0u8; 512];
        loop {
            let n = socket.recv(&mut buf).expect("no notification");
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if text.starts_with(prefix) {
                return text;
            }
        }
    };
    let toml = TestConfig::default().to_toml(&pki);
    let env = [
        ("NOTIFY_SOCKET", path.to_str().unwrap()),
        ("WATCHDOG_USEC", "200000"),
    ];
    let mut daemon = Daemon::start_toml_env(&toml, &env);

    assert!(recv_until("READY=1").starts_with("READY=1"));
    recv_until("WATCHDOG=1");
    daemon.signal("HUP");
    let reloading = recv_until("RELOADING=1");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    recv_until("READY=1");
    daemon.signal("TERM");
    recv_until("STOPPING=1");
    let status = tokio::task::spawn_blocking(move || daemon.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("daemon did not exit");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let pki = Pki::new(&["alice"]);
    // `extra` lands right after `[logging] level = ...`.
    let cfg = TestConfig {
        extra: "format = \"json\"\n".into(),
        ..TestConfig::default()
    };
    let daemon = Daemon::start(&pki, &cfg);
    let client = daemon.client(&pki, "alice");
    let resp = client
        .get(daemon.url("/healthz"))
        .header("x-request-id", "json-req-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        daemon.wait_for_log("json-req-1", Duration::from_secs(5)),
        "{}",
        daemon.logs()
    );
    for line in daemon.logs().lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(value.get("level").is_some(), "{line}");
    }
    let access = daemon
        .logs()
        .lines()
        .find(|l| l.contains("json-req-1") && l.contains("latency_ms"))
        .map(str::to_owned);
    let access: serde_json::Value =
        serde_json::from_str(&access.expect("access log line")).unwrap();
    assert_eq!(access["status"], 200);
    assert_eq!(access["span"]["request_id"], "json-req-1");
}
