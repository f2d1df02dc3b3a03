//! The admin listener through the real daemon: `/metrics` after a success, a 401, a 403 from
//! a filter and a 429 from a tenant limit (series, values, bounded labels, `promtool check
//! metrics`), `airlockd status`, mutual TLS on the admin listener, and `check-config`
//! refusing a non-loopback admin address without TLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Daemon, Pki, TEST_MODEL, TestConfig};
use serde_json::json;

const TENANTS: &str = r#"
[auth]
key_db = "KEYDB"

[[tenants]]
name = "acme"
models = ["test-model"]
cert_cn = ["alice"]
requests_per_minute = 2
burst = 2
[[tenants.filters]]
id = "no-zeus"
action = "deny"
literal = "project zeus"
"#;

fn start(admin: &str) -> (Pki, Daemon) {
    let pki = Pki::new(&["alice", "carol"]);
    let keydb = pki.dir().join("keys.db");
    let cfg = TestConfig {
        // The test's pooled client connections would otherwise hold the drain for 10 s.
        limits: "shutdown_grace = \"2s\"\n".into(),
        extra: TENANTS.replace("KEYDB", keydb.to_str().unwrap())
            + &admin.replace("PKI", pki.dir().to_str().unwrap()),
        ..TestConfig::default()
    };
    let daemon = Daemon::start(&pki, &cfg);
    (pki, daemon)
}

fn chat(content: &str) -> serde_json::Value {
    json!({"model": TEST_MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 8})
}

/// The value of the series written exactly as `series` (labels in exposition order).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn metrics_count_outcomes_and_pass_promtool() {
    let (pki, daemon) = start("\n[admin]\naddress = \"127.0.0.1:0\"\n");
    let admin = daemon.admin_url();
    assert!(admin.starts_with("http://127.0.0.1:"), "{admin}");
    let alice = daemon.client(&pki, "alice");
    let carol = daemon.client(&pki, "carol");
    let url = daemon.url("/v1/chat/completions");

    let send = |client: &reqwest::Client, body: serde_json::Value| {
        let req = client.post(&url).json(&body);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(send(&alice, chat("hello there")).await, 200);
    // The filter refuses before the limiter counts the request.
    assert_eq!(send(&alice, chat("about project zeus")).await, 403);
    assert_eq!(send(&alice, chat("hello again")).await, 200);
    // Burst of 2 spent: the limiter refuses.
    assert_eq!(send(&alice, chat("one more")).await, 429);
    // A well-formed key nobody issued: 401, and the key must not surface in metrics.
    let bogus = airlock_policy::ApiKey::generate().expose().to_owned();
    let resp = carol
        .post(&url)
        .bearer_auth(&bogus)
        .json(&chat("hi"))
        .send()
        .await;
    assert_eq!(resp.unwrap().status(), 401);

    let http = common::http_client();
    let resp = http.get(format!("{admin}/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = resp.text().await.unwrap();
    let route = "route=\"/v1/chat/completions\"";
    for (series, expected) in [
        (
            format!(
                "airlock_requests_total{{tenant=\"acme\",model=\"test-model\",{route},status=\"200\"}}"
            ),
            2.0,
        ),
        (
            format!(
                "airlock_requests_total{{tenant=\"acme\",model=\"test-model\",{route},status=\"403\"}}"
            ),
            1.0,
        ),
        (
            format!(
                "airlock_requests_total{{tenant=\"acme\",model=\"test-model\",{route},status=\"429\"}}"
            ),
            1.0,
        ),
        (
            format!(
                "airlock_requests_total{{tenant=\"unknown\",model=\"none\",{route},status=\"401\"}}"
            ),
            1.0,
        ),
        (
            "airlock_auth_failures_total{method=\"api_key\",reason=\"invalid_key\"}".to_owned(),
            1.0,
        ),
        (
            "airlock_rate_limited_total{tenant=\"acme\",kind=\"requests\"}".to_owned(),
            1.0,
        ),
        (
            "airlock_filter_actions_total{rule=\"no-zeus\",action=\"deny\"}".to_owned(),
            1.0,
        ),
        (
            format!("airlock_request_duration_seconds_count{{{route}}}"),
            5.0,
        ),
        (
            "airlock_time_to_first_token_seconds_count{model=\"test-model\"}".to_owned(),
            2.0,
        ),
        ("airlock_audit_commit_failures_total".to_owned(), 0.0),
        ("airlock_engine_queued_requests".to_owned(), 0.0),
    ] {
        assert_eq!(value(&text, &series), Some(expected), "{series} in\n{text}");
    }
    let completion = value(
        &text,
        "airlock_completion_tokens_total{tenant=\"acme\",model=\"test-model\"}",
    );
    assert!(completion.is_some_and(|v| v >= 2.0), "{text}");
    let prompt = value(
        &text,
        "airlock_prompt_tokens_total{tenant=\"acme\",model=\"test-model\"}",
    );
    assert!(prompt.is_some_and(|v| v > 0.0), "{text}");
    assert!(
        value(&text, "airlock_audit_commit_duration_seconds_count").is_some_and(|v| v > 0.0),
        "{text}"
    );
    assert!(
        value(&text, "airlock_process_resident_memory_bytes").is_some_and(|v| v > 1e6),
        "{text}"
    );
    assert!(
        text.lines().any(
            |l| l.starts_with("airlock_model_info{model=\"test-model\",") && l.ends_with(" 1")
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "airlock_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    // Never the presented key, nor its id.
    assert!(!text.contains(&bogus[..12]), "{text}");

    // A Prometheus server's Accept header gets OpenMetrics.
    let resp = http
        .get(format!("{admin}/metrics"))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )
        .send()
        .await
        .unwrap();
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let om = resp.text().await.unwrap();
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE airlock_requests counter"), "{om}");

    promtool_check(&text);

    // Unknown admin paths are 404; the daemon's API is not served here.
    let resp = http.get(format!("{admin}/v1/models")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
}

/// `promtool check metrics` (Debian's `prometheus` package) on the scraped text. Skipped
/// with a notice where promtool is missing, unless `AIRLOCK_REQUIRE_PROMTOOL=1` (CI).
fn promtool_check(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            assert!(
                std::env::var("AIRLOCK_REQUIRE_PROMTOOL").as_deref() != Ok("1"),
                "promtool is required (AIRLOCK_REQUIRE_PROMTOOL=1) but cannot run: {e}"
            );
            eprintln!("NOTICE: promtool not found ({e}); skipping `promtool check metrics`");
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn status_prints_a_summary_and_fails_clearly_without_a_listener() {
    let (pki, mut daemon) = start("\n[admin]\naddress = \"127.0.0.1:0\"\n");
    let admin = daemon.admin_url();
    let alice = daemon.client(&pki, "alice");
    let resp = alice
        .post(daemon.url("/v1/chat/completions"))
        .json(&chat("hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let (status, stdout, stderr) = common::airlockd(&["status", "--admin", &admin]);
    assert!(status.success(), "{stdout}{stderr}");
    assert!(
        stdout.starts_with(&format!("airlockd {}, up ", env!("CARGO_PKG_VERSION"))),
        "{stdout}"
    );
    assert!(stdout.contains("\n  test-model  "), "{stdout}");
    assert!(stdout.contains("requests in flight: 0;"), "{stdout}");
    assert!(stdout.contains("tokens/s (last minute): "), "{stdout}");
    assert!(
        stdout.contains("audit: last write ok; 0 failed commits; chain head #"),
        "{stdout}"
    );

    // The JSON it reads.
    let report: serde_json::Value = common::http_client()
        .get(format!("{admin}/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["models"][0]["id"], TEST_MODEL);
    assert_eq!(report["audit"]["last_write_ok"], true);
    assert!(
        report["audit"]["chain_head_seq"].as_u64().unwrap() >= 2,
        "{report}"
    );

    // SIGTERM drains the admin listener with the server: exit 0, then nothing answers.
    drop(alice);
    daemon.signal("TERM");
    let exit = daemon.wait_exit(Duration::from_secs(30));
    assert!(exit.is_some_and(|s| s.success()), "{exit:?}");
    let after = common::http_client()
        .get(format!("{admin}/healthz"))
        .send()
        .await;
    assert!(after.is_err(), "{after:?}");

    // Nothing listening: one clear line, exit 1.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let (status, stdout, stderr) =
        common::airlockd(&["status", "--admin", &format!("http://127.0.0.1:{port}")]);
    assert_eq!(status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "airlockd status: cannot read http://127.0.0.1:{port}/status: "
        )),
        "{stderr}"
    );
}

#[tokio::test]
async fn admin_tls_requires_a_client_certificate() {
    let admin = "\n[admin]\naddress = \"127.0.0.1:0\"\n[admin.tls]\ncert = \"PKI/server.pem\"\n\
                 key = \"PKI/server.key\"\nclient_ca = \"PKI/ca.pem\"\n";
    let (pki, daemon) = start(admin);
    let url = daemon.admin_url();
    let addr = url.strip_prefix("https://").expect(&url).parse().unwrap();
    let with_cert = common::client_tls(&pki.ca(), Some(pki.client("alice")));
    let answer = common::raw_get(addr, with_cert, "/healthz").await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // `airlockd status` with the client certificate; without one it is refused.
    let ca = pki.ca();
    let (cert, key) = pki.client("alice");
    let (status, stdout, stderr) = common::airlockd(&[
        "status",
        "--admin",
        &url,
        "--cacert",
        ca.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert!(status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("\n  test-model  "), "{stdout}");
    let (status, stdout, stderr) = common::airlockd(&["status", "--admin", &url]);
    assert_eq!(status.code(), Some(64), "{stdout}{stderr}");
    assert!(
        stderr.contains("uses mutual TLS: pass --cacert, --cert and --key"),
        "{stderr}"
    );
    let without = common::client_tls(&pki.ca(), None);
    let refused = common::raw_get(addr, without, "/healthz").await;
    assert!(
        !matches!(&refused, Ok(answer) if answer.starts_with("HTTP/1.1 200")),
        "{refused:?}"
    );
}

#[test]
fn check_config_refuses_a_non_loopback_admin_address_without_tls() {
    let pki = Pki::new(&["alice"]);
    let cfg = TestConfig {
        extra: "\n[admin]\naddress = \"0.0.0.0:9464\"\n".into(),
        ..TestConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("airlockd.toml");
    std::fs::write(&path, cfg.to_toml(&pki)).unwrap();
    let (status, stdout, stderr) =
        common::airlockd(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(status.code(), Some(64), "{stdout}{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "{}: admin.address: 0.0.0.0:9464 is not a loopback address",
            path.display()
        )),
        "{stderr}"
    );
    // The same file with the section's default address passes.
    let cfg = TestConfig {
        extra: "\n[admin]\n".into(),
        ..TestConfig::default()
    };
    std::fs::write(&path, cfg.to_toml(&pki)).unwrap();
    let (status, stdout, stderr) =
        common::airlockd(&["check-config", "--config", path.to_str().unwrap()]);
    assert!(status.success(), "{stdout}{stderr}");
    // `airlockd status --config` on a file without [admin]: nothing to ask, exit 64.
    std::fs::write(&path, TestConfig::default().to_toml(&pki)).unwrap();
    let (status, stdout, stderr) =
        common::airlockd(&["status", "--config", path.to_str().unwrap()]);
    assert_eq!(status.code(), Some(64), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("{}: admin: no [admin] section", path.display())),
        "{stderr}"
    );
}
