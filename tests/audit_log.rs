//! The audit log over the real binary: every request recorded (allowed and denied), the chain
//! verified offline by `airlockd audit verify`, tampering pinpointed, prompts absent from the
//! database under the default policy, fail-closed on write failure with recovery, and a
//! `kill -9` during a burst.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Daemon, Pki, TEST_MODEL, TestConfig, airlockd};
use serde_json::{Value, json};

/// Keys from `airlockd audit keygen` and an `[audit]` section pointing at them.
struct Audit {
    dir: tempfile::TempDir,
}

impl Audit {
    fn new() -> Audit {
        let dir = tempfile::tempdir().unwrap();
        let (status, out, err) =
            airlockd(&["audit", "keygen", "--dir", dir.path().to_str().unwrap()]);
        assert!(status.success(), "keygen: {out}{err}");
        Audit { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn db(&self) -> PathBuf {
        self.path("audit.db")
    }

    fn section(&self, extra: &str) -> String {
        format!(
            "[audit]\ndb = {:?}\nsigning_key = {:?}\ndigest_key = {:?}\ncheckpoint_every_records = 20\n{extra}\n",
            self.db(),
            self.path("audit-signing.key"),
            self.path("audit-digest.key"),
        )
    }

    fn verify(&self) -> (i32, String) {
        let db = self.db();
        let pubkey = self.path("audit-signing.pub");
        let (status, out, err) = airlockd(&[
            "audit",
            "verify",
            "--db",
            db.to_str().unwrap(),
            "--pubkey",
            pubkey.to_str().unwrap(),
        ]);
        (status.code().unwrap_or(-1), format!("{out}{err}"))
    }

    fn export(&self) -> Vec<Value> {
        let (status, out, err) = airlockd(&[
            "audit",
            "export",
            "--db",
            self.db().to_str().unwrap(),
            "--format",
            "jsonl",
        ]);
        assert!(status.success(), "export: {err}");
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn config(audit: &Audit, limits: &str, audit_extra: &str) -> TestConfig {
    TestConfig {
        limits: format!("shutdown_grace = \"10s\"\n{limits}"),
        extra: audit.section(audit_extra),
        audit: None,
        ..TestConfig::default()
    }
}

fn chat(content: &str) -> Value {
    json!({"model": TEST_MODEL, "messages": [{"role": "user", "content": content}]})
}

fn stop(mut daemon: Daemon) {
    daemon.signal("TERM");
    assert!(daemon.wait_exit(Duration::from_secs(30)).is_some());
}

fn of_kind<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["kind"] == kind).collect()
}

fn file_bytes(db: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(db).unwrap();
    for suffix in ["-wal", "-journal"] {
        if let Ok(more) = std::fs::read(format!("{}{suffix}", db.display())) {
            bytes.extend(more);
        }
    }
    bytes
}

#[tokio::test]
async fn requests_are_recorded_and_the_chain_verifies() {
    let pki = Pki::new(&["alice"]);
    let audit = Audit::new();
    let daemon = Daemon::start(&pki, &config(&audit, "max_body_bytes = 2048", ""));
    let client = daemon.client(&pki, "alice");
    const SECRET: &str = "the launch code is zebra-kumquat-4471";

    let resp = client
        .post(daemon.url("/v1/chat/completions"))
        .json(&chat(SECRET))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ok_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let streamed = client
        .post(daemon.url("/v1/chat/completions"))
        .json(&json!({"model": TEST_MODEL, "stream": true, "messages": [{"role": "user", "content": SECRET}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 200);
    let stream_id = streamed.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(streamed.text().await.unwrap().contains("[DONE]"));
    // Denied: unknown route (404), unknown model (404), body too large (413).
    assert_eq!(
        client
            .get(daemon.url("/v1/nope"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let resp = client
        .post(daemon.url("/v1/chat/completions"))
        .json(&json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let resp = client
        .post(daemon.url("/v1/chat/completions"))
        .json(&chat(&"x".repeat(4096)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    // /readyz is open and not recorded; it reports the audit log healthy.
    assert_eq!(
        client
            .get(daemon.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // While the daemon runs: the live file verifies (its tail not yet sealed), and an online
    // backup copies a log that verifies on its own.
    let (code, out) = audit.verify();
    assert_eq!(code, 0, "{out}");
    let copy = audit.path("copy.db");
    let (status, _, err) = airlockd(&[
        "audit",
        "backup",
        "--db",
        audit.db().to_str().unwrap(),
        "--to",
        copy.to_str().unwrap(),
    ]);
    assert!(status.success(), "{err}");
    let (status, out, err) = airlockd(&["audit", "verify", "--db", copy.to_str().unwrap()]);
    assert!(status.success(), "{out}{err}");
    stop(daemon);

    let (code, out) = audit.verify();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("intact"), "{out}");

    let records = audit.export();
    assert_eq!(records[0]["kind"], "start");
    assert_eq!(records.last().unwrap()["kind"], "stop");
    let admits = of_kind(&records, "admit");
    let completes = of_kind(&records, "complete");
    for id in [&ok_id, &stream_id] {
        let admit = admits
            .iter()
            .find(|r| r["request_id"] == id.as_str())
            .expect("admit record");
        assert_eq!(admit["decision"], "allow");
        assert_eq!(admit["cert_cn"], "alice");
        assert_eq!(admit["auth_method"], "certificate");
        assert_eq!(admit["cert_source"], "mtls");
        assert!(
            admit["prompt_digest"]
                .as_str()
                .unwrap()
                .starts_with("hmac-sha256:")
        );
        assert!(admit["config_hash"].as_str().unwrap().len() == 64);
        assert!(admit.get("prompt_text").is_none() && admit.get("prompt_messages").is_none());
        let done = completes
            .iter()
            .find(|r| r["request_id"] == id.as_str())
            .expect("complete record");
        assert_eq!(done["status"], 200);
        assert_eq!(done["finish_reason"], "stop");
        assert!(done["completion_tokens"].as_u64().unwrap() > 0);
        assert!(
            done["output_digest"]
                .as_str()
                .unwrap()
                .starts_with("hmac-sha256:")
        );
        assert!(done["seq"].as_u64() > admit["seq"].as_u64());
    }
    let denies = of_kind(&records, "deny");
    let statuses: Vec<u64> = denies
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [404, 413], "{denies:?}");
    assert_eq!(denies[0]["route"], "GET /v1/nope");
    assert_eq!(denies[1]["reason"], "request_too_large");
    // An unknown model is the engine's answer: admitted, then completed with 404.
    let nope = admits
        .iter()
        .find(|r| r["model"] == "nope")
        .expect("admit of the unknown model");
    let done = completes
        .iter()
        .find(|r| r["request_id"] == nope["request_id"])
        .unwrap();
    assert_eq!(done["status"], 404);

    // The prompt (and the echoed output) never reach the file under the default policy.
    let bytes = file_bytes(&audit.db());
    assert!(
        !bytes.windows(13).any(|w| w == b"zebra-kumquat"),
        "prompt text found in the audit db"
    );

    // `--checkpoints` interleaves the signed anchors for off-host storage.
    let (status, out, _) = airlockd(&[
        "audit",
        "export",
        "--db",
        audit.db().to_str().unwrap(),
        "--checkpoints",
    ]);
    assert!(status.success());
    let last: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(last["kind"], "checkpoint");
    assert_eq!(last["seq"], records.last().unwrap()["seq"]);
    assert_eq!(last["hash"], records.last().unwrap()["hash"]);

    // `audit digest` finds the request that carried a message.
    let text = audit.path("msg.txt");
    std::fs::write(&text, SECRET).unwrap();
    let (status, out, _) = airlockd(&[
        "audit",
        "digest",
        "--text",
        text.to_str().unwrap(),
        "--key",
        audit.path("audit-digest.key").to_str().unwrap(),
    ]);
    assert!(status.success());
    let digest = out.trim();
    assert!(admits.iter().any(|r| r["message_digests"][0] == digest));

    // Tampering is pinpointed by the CLI.
    let seq = admits[0]["seq"].as_u64().unwrap();
    let conn = rusqlite::Connection::open(audit.db()).unwrap();
    conn.execute(
        "UPDATE records SET body = CAST(replace(CAST(body AS TEXT), 'alice', 'bob') AS BLOB) WHERE seq = ?1",
        [seq],
    )
    .unwrap();
    drop(conn);
    let (code, out) = audit.verify();
    assert_eq!(code, 2, "{out}");
    assert!(out.contains(&format!("seq {seq}: modified")), "{out}");
}

#[tokio::test]
async fn store_text_full_keeps_text_for_that_tenant_only() {
    let pki = Pki::new(&["alice", "bob"]);
    let audit = Audit::new();
    let daemon = Daemon::start(
        &pki,
        &config(&audit, "", "[audit.tenant_store_text]\nalice = \"full\"\n"),
    );
    for tenant in ["alice", "bob"] {
        let client = daemon.client(&pki, tenant);
        let resp = client
            .post(daemon.url("/v1/chat/completions"))
            .json(&chat(&format!("hello from {tenant}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    stop(daemon);
    let records = audit.export();
    let admits = of_kind(&records, "admit");
    let alice = admits.iter().find(|r| r["cert_cn"] == "alice").unwrap();
    assert_eq!(alice["prompt_messages"][0]["content"], "hello from alice");
    let bob = admits.iter().find(|r| r["cert_cn"] == "bob").unwrap();
    assert!(bob.get("prompt_messages").is_none());
}

#[tokio::test]
async fn write_failure_refuses_service_then_recovers() {
    let pki = Pki::new(&["alice"]);
    let audit = Audit::new();
    let daemon = Daemon::start(&pki, &config(&audit, "", "write_timeout = \"1s\""));
    let client = daemon.client(&pki, "alice");
    let url = daemon.url("/v1/chat/completions");
    assert_eq!(
        client
            .post(&url)
            .json(&chat("before"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Another process holds the database's write lock: every commit fails.
    let blocker = rusqlite::Connection::open(audit.db()).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let resp = client
        .post(&url)
        .json(&chat("during"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "audit_unavailable");
    let denied = client.get(daemon.url("/v1/nope")).send().await.unwrap();
    assert_eq!(denied.status(), 503, "even refusals are not sent unaudited");
    let mut not_ready = false;
    for _ in 0..50 {
        if client
            .get(daemon.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            == 503
        {
            not_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        not_ready,
        "/readyz fails while the audit log cannot be written"
    );
    assert!(daemon.logs().contains("AUDIT LOG WRITE FAILED"));

    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);
    let mut recovered = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if client
            .get(daemon.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            == 200
        {
            recovered = true;
            break;
        }
    }
    assert!(recovered, "service resumes by itself");
    assert_eq!(
        client
            .post(&url)
            .json(&chat("after"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    stop(daemon);
    let (code, out) = audit.verify();
    assert_eq!(code, 0, "{out}");
    let records = audit.export();
    assert_eq!(of_kind(&records, "resumed").len(), 1);
    // The refused request left no admission record: it never reached the engine.
    assert_eq!(of_kind(&records, "admit").len(), 2);
}

#[tokio::test]
async fn kill_9_during_a_burst_keeps_every_served_request() {
    let pki = Pki::new(&["alice"]);
    let audit = Audit::new();
    let cfg = TestConfig {
        models: format!(
            "[[models]]\nname = \"{TEST_MODEL}\"\nbackend = \"test\"\ntest_token_delay = \"5ms\"\nmax_active = 16\n"
        ),
        ..config(&audit, "", "")
    };
    let daemon = Daemon::start(&pki, &cfg);
    let client = daemon.client(&pki, "alice");
    let url = daemon.url("/v1/chat/completions");
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 3)).await;
            let resp = client
                .post(url)
                .json(&chat("one two three four five"))
                .send()
                .await
                .ok()?;
            let id = resp
                .headers()
                .get("x-request-id")?
                .to_str()
                .ok()?
                .to_owned();
            let ok = resp.status() == 200 && resp.bytes().await.is_ok();
            ok.then_some(id)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    daemon.signal("KILL");
    let mut served = Vec::new();
    for task in tasks {
        if let Ok(Some(id)) = task.await {
            served.push(id);
        }
    }
    drop(daemon);
    assert!(
        !served.is_empty(),
        "some requests completed before the kill"
    );

    // Restart on the same log: a recovery record, and the chain verifies.
    let daemon = Daemon::start(&pki, &cfg);
    stop(daemon);
    let (code, out) = audit.verify();
    assert_eq!(code, 0, "{out}");
    let records = audit.export();
    assert_eq!(of_kind(&records, "recovery").len(), 1);
    for id in &served {
        for kind in ["admit", "complete"] {
            assert!(
                records
                    .iter()
                    .any(|r| r["kind"] == kind && r["request_id"] == id.as_str()),
                "served request {id} has no {kind} record"
            );
        }
    }
}

#[tokio::test]
async fn policy_refusals_are_recorded_before_they_are_sent() {
    let pki = Pki::new(&["alice", "bob", "carol"]);
    let audit = Audit::new();
    let tenants = r#"
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
case_insensitive = true

[[tenants]]
name = "beta"
models = ["another-model"]
cert_cn = ["bob"]
"#;
    let cfg = TestConfig {
        extra: format!("{}\n{tenants}", audit.section("")),
        audit: None,
        ..TestConfig::default()
    };
    let daemon = Daemon::start(&pki, &cfg);
    let url = daemon.url("/v1/chat/completions");
    let alice = daemon.client(&pki, "alice");
    let bob = daemon.client(&pki, "bob");
    let carol = daemon.client(&pki, "carol");
    let status = |r: reqwest::Response| r.status().as_u16();
    // 401: a verified certificate of no tenant.
    assert_eq!(
        status(carol.post(&url).json(&chat("hi")).send().await.unwrap()),
        401
    );
    // 403: a model the tenant may not use.
    assert_eq!(
        status(bob.post(&url).json(&chat("hi")).send().await.unwrap()),
        403
    );
    // 403: a prompt filter rule.
    assert_eq!(
        status(
            alice
                .post(&url)
                .json(&chat("about Project Zeus"))
                .send()
                .await
                .unwrap()
        ),
        403
    );
    // 429: past the tenant's burst.
    let mut limited = false;
    for _ in 0..4 {
        if status(alice.post(&url).json(&chat("hi")).send().await.unwrap()) == 429 {
            limited = true;
        }
    }
    assert!(limited, "the burst of 2 is exceeded");
    stop(daemon);

    let (code, out) = audit.verify();
    assert_eq!(code, 0, "{out}");
    let records = audit.export();
    let denies = of_kind(&records, "deny");
    let find = |cn: &str, status: u64| {
        denies
            .iter()
            .find(|r| r["cert_cn"] == cn && r["status"] == status)
            .unwrap_or_else(|| panic!("no {status} deny for {cn}: {denies:#?}"))
    };
    let r401 = find("carol", 401);
    assert_eq!(r401["decision"], "deny");
    assert!(r401.get("tenant").is_none());
    let r403 = find("bob", 403);
    assert_eq!(r403["tenant"], "beta");
    let zeus = denies
        .iter()
        .find(|r| r["filter_rules"] == json!(["no-zeus"]))
        .expect("filter deny names its rule");
    assert_eq!(zeus["status"], 403);
    assert_eq!(zeus["tenant"], "acme");
    let r429 = find("alice", 429);
    assert_eq!(r429["tenant"], "acme");
    assert!(r429["reason"].is_string());
}

/// Runs the `sqlite3` CLI on `db` (as an attacker with file access would).
fn sqlite3(db: &Path, sql: &str) -> String {
    let out = std::process::Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("the sqlite3 CLI is needed by this test (.ci/run installs it)");
    assert!(
        out.status.success(),
        "sqlite3 {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn tampering_with_the_sqlite3_cli_is_pinpointed() {
    let pki = Pki::new(&["alice"]);
    let audit = Audit::new();
    let daemon = Daemon::start(&pki, &config(&audit, "", ""));
    let client = daemon.client(&pki, "alice");
    for i in 0..30 {
        let resp = client
            .post(daemon.url("/v1/chat/completions"))
            .json(&chat(&format!("request {i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    stop(daemon);
    assert_eq!(audit.verify().0, 0);
    let last_checkpoint: u64 = sqlite3(&audit.db(), "SELECT MAX(seq) FROM checkpoints")
        .parse()
        .unwrap();
    let first_checkpoint: u64 = sqlite3(&audit.db(), "SELECT MIN(seq) FROM checkpoints")
        .parse()
        .unwrap();
    assert!(last_checkpoint > 40, "{last_checkpoint}");

    let cases: Vec<(String, u64, &str)> = vec![
        (
            "UPDATE records SET body = CAST(replace(CAST(body AS TEXT), '\"v\":1', '\"v\":2') AS BLOB) WHERE seq = 10".into(),
            10,
            "modified",
        ),
        ("DELETE FROM records WHERE seq = 12".into(), 12, "deleted"),
        (
            "UPDATE records SET seq = -1 WHERE seq = 14; UPDATE records SET seq = 14 WHERE seq = 15; UPDATE records SET seq = 15 WHERE seq = -1;".into(),
            14,
            "reordered",
        ),
        (
            "UPDATE records SET seq = -seq WHERE seq >= 16; UPDATE records SET seq = -seq + 1 WHERE seq < 0; INSERT INTO records (seq, body, hash) SELECT 16, body, hash FROM records WHERE seq = 2;".into(),
            16,
            "inserted",
        ),
        (
            format!("DELETE FROM records WHERE seq > {}", last_checkpoint - 2),
            last_checkpoint - 1,
            "truncated",
        ),
        (
            format!("UPDATE checkpoints SET hash = zeroblob(32) WHERE seq = {first_checkpoint}"),
            first_checkpoint,
            "forged checkpoint",
        ),
    ];
    let pubkey = audit.path("audit-signing.pub");
    for (i, (sql, seq, kind)) in cases.iter().enumerate() {
        let copy = audit.path(&format!("tampered-{i}.db"));
        std::fs::copy(audit.db(), &copy).unwrap();
        sqlite3(&copy, sql);
        let (status, out, err) = airlockd(&[
            "audit",
            "verify",
            "--db",
            copy.to_str().unwrap(),
            "--pubkey",
            pubkey.to_str().unwrap(),
        ]);
        assert_eq!(status.code(), Some(2), "{sql}: {out}{err}");
        assert!(
            out.contains(&format!("seq {seq}: {kind}:")),
            "{sql}: expected seq {seq} {kind}, got {out}"
        );
    }
}

#[test]
fn a_config_without_audit_is_refused() {
    let pki = Pki::new(&["alice"]);
    let text = TestConfig {
        audit: None,
        ..TestConfig::default()
    }
    .to_toml(&pki);
    let file = pki.path("unaudited.toml");
    std::fs::write(&file, text).unwrap();
    for command in ["check-config", "serve"] {
        let (status, _, err) = airlockd(&[command, "--config", file.to_str().unwrap()]);
        assert_eq!(status.code(), Some(64), "{command}: {err}");
        assert!(err.contains(": audit: required"), "{command}: {err}");
    }
}

/// Who authenticated and which filter rules acted: an API-key request names `api_key` and
/// its key id; a redacted prompt names the redaction rule with its count, never the text;
/// keys created and revoked by the CLI while the daemon runs become `admin` records.
#[tokio::test]
async fn auth_methods_filter_actions_and_key_changes_are_recorded() {
    let pki = Pki::new(&["alice", "carol"]);
    let audit = Audit::new();
    let keydb = pki.dir().join("keys.db");
    let tenants = format!(
        r#"
[auth]
key_db = {keydb:?}

[[tenants]]
name = "acme"
models = ["test-model"]
cert_cn = ["alice"]
[[tenants.filters]]
id = "pii-email"
action = "redact"
detector = "email"
apply = "prompt"

[[tenants]]
name = "keyed"
models = ["*"]
"#
    );
    let cfg = TestConfig {
        extra: format!("{}\n{tenants}", audit.section("")),
        audit: None,
        ..TestConfig::default()
    };
    let text = cfg.to_toml(&pki);
    let config_path = pki.dir().join("audited-policy.toml");
    std::fs::write(&config_path, &text).unwrap();
    let daemon = Daemon::start_toml(&text);
    let url = daemon.url("/v1/chat/completions");

    let (status, out, err) = airlockd(&[
        "keys",
        "create",
        "--tenant",
        "keyed",
        "--config",
        config_path.to_str().unwrap(),
    ]);
    assert!(status.success(), "{out}{err}");
    let key = out.trim().to_owned();
    let key_id = key[4..16].to_owned();

    // The key reaches the daemon within its refresh bound.
    let carol = daemon.client(&pki, "carol");
    let started = std::time::Instant::now();
    loop {
        let resp = carol
            .post(&url)
            .bearer_auth(&key)
            .json(&chat("hi"))
            .send()
            .await
            .unwrap();
        if resp.status() == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "key not accepted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let alice = daemon.client(&pki, "alice");
    let resp = alice
        .post(&url)
        .json(&chat("mail bob@example.com or eve@example.org"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // A revocation by the CLI in another process: the daemon sees it within its refresh
    // bound and writes the admin record through its own writer.
    let (status, out, err) = airlockd(&[
        "keys",
        "revoke",
        &key_id,
        "--config",
        config_path.to_str().unwrap(),
    ]);
    assert!(status.success(), "{out}{err}");
    let started = std::time::Instant::now();
    loop {
        let resp = carol
            .post(&url)
            .bearer_auth(&key)
            .json(&chat("hi"))
            .send()
            .await
            .unwrap();
        if resp.status() == 401 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "key not revoked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop(daemon);

    let (code, out) = audit.verify();
    assert_eq!(code, 0, "{out}");
    let records = audit.export();
    let admin = of_kind(&records, "admin");
    let event = |name: &str| {
        admin
            .iter()
            .find(|r| r["event"] == name && r["key_id"] == key_id.as_str())
            .unwrap_or_else(|| panic!("no {name} admin record: {admin:#?}"))
    };
    assert_eq!(event("key_created")["tenant"], "keyed");
    assert_eq!(event("key_revoked")["tenant"], "keyed");
    let admits = of_kind(&records, "admit");
    let by_key = admits
        .iter()
        .find(|r| r["tenant"] == "keyed")
        .expect("admit of the API-key request");
    assert_eq!(by_key["auth_method"], "api_key");
    assert_eq!(by_key["key_id"], key_id.as_str());
    let redacted = admits
        .iter()
        .find(|r| r["tenant"] == "acme")
        .expect("admit of the redacted request");
    assert_eq!(redacted["auth_method"], "certificate");
    assert_eq!(redacted["filter_rules"], json!(["pii-email"]));
    assert_eq!(
        redacted["filter_actions"],
        json!([{"rule": "pii-email", "action": "redact", "count": 2}])
    );
    let bytes = file_bytes(&audit.db());
    assert!(
        !bytes
            .windows(b"example.com".len())
            .any(|w| w == b"example.com"),
        "matched text in the audit log"
    );
    assert!(
        !bytes
            .windows(key.len() - 16)
            .any(|w| w == &key.as_bytes()[16..]),
        "a key secret in the audit log"
    );
}

/// Output filter actions (rule ids and counts, never the matched text) land on the
/// completion record, for non-streamed and streamed responses alike.
#[tokio::test(flavor = "multi_thread")]
async fn output_redactions_are_recorded_on_completion() {
    let pki = Pki::new(&["alice"]);
    let audit = Audit::new();
    let tenants = r#"
[[tenants]]
name = "scrub"
models = ["*"]
cert_cn = ["alice"]
[[tenants.filters]]
id = "out-email"
action = "redact"
detector = "email"
apply = "output"
"#;
    let cfg = TestConfig {
        extra: format!("{}\n{tenants}", audit.section("")),
        audit: None,
        ..TestConfig::default()
    };
    let daemon = Daemon::start_toml(&cfg.to_toml(&pki));
    let alice = daemon.client(&pki, "alice");
    let url = daemon.url("/v1/chat/completions");

    // The test engine echoes the prompt, so the output carries the address.
    let resp = alice
        .post(&url)
        .json(&chat("write to bob@example.com"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.contains("[REDACTED:email]"), "{content}");

    let mut streamed = chat("then to eve@example.org");
    streamed["stream"] = json!(true);
    let text = alice
        .post(&url)
        .json(&streamed)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("[REDACTED:email]"), "{text}");
    assert!(text.contains("[DONE]"), "{text}");
    stop(daemon);

    let (code, out) = audit.verify();
    assert_eq!(code, 0, "{out}");
    let records = audit.export();
    let completes = of_kind(&records, "complete");
    let redacting: Vec<_> = completes
        .iter()
        .filter(|r| {
            r["filter_actions"] == json!([{"rule": "out-email", "action": "redact", "count": 1}])
        })
        .collect();
    assert_eq!(redacting.len(), 2, "completion records: {completes:#?}");
    let bytes = file_bytes(&audit.db());
    assert!(
        !bytes.windows(b"example.".len()).any(|w| w == b"example."),
        "matched text in the audit log"
    );
}
