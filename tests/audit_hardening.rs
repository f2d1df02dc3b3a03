//! The audit-log attacks of issue 11, each reproduced against the real binary: a log whose
//! head was cut off, a chain rewritten with its checkpoints deleted (verify fails, and the
//! daemon refuses to sign over it at restart), a flood of unknown paths (records cut and
//! throttled per client), and a disk that really fills up (a tmpfs mounted by the test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, Pki, TEST_MODEL, TestConfig, airlockd};
use serde_json::{Value, json};

/// Keys from `airlockd audit keygen`, and an `[audit]` section with the database at `db`.
struct Audit {
    dir: tempfile::TempDir,
    db: PathBuf,
}

impl Audit {
    fn new() -> Audit {
        let dir = tempfile::tempdir().unwrap();
        let (status, out, err) =
            airlockd(&["audit", "keygen", "--dir", dir.path().to_str().unwrap()]);
        assert!(status.success(), "keygen: {out}{err}");
        let db = dir.path().join("audit.db");
        Audit { dir, db }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn pubkey(&self) -> PathBuf {
        self.path("audit-signing.pub")
    }

    fn config(&self, extra: &str) -> TestConfig {
        TestConfig {
            extra: format!(
                "[audit]\ndb = {:?}\nsigning_key = {:?}\ndigest_key = {:?}\ncheckpoint_every_records = 20\n{extra}\n",
                self.db,
                self.path("audit-signing.key"),
                self.path("audit-digest.key"),
            ),
            audit: None,
            ..TestConfig::default()
        }
    }

    /// `audit verify --pubkey` with extra arguments: (exit code, output).
    fn verify(&self, extra: &[&str]) -> (i32, String) {
        let db = self.db.to_str().unwrap().to_owned();
        let pubkey = self.pubkey().to_str().unwrap().to_owned();
        let mut args = vec!["audit", "verify", "--db", &db, "--pubkey", &pubkey];
        args.extend_from_slice(extra);
        let (status, out, err) = airlockd(&args);
        (status.code().unwrap_or(-1), format!("{out}{err}"))
    }

    fn inspect(&self) -> (i32, String) {
        let (status, out, err) = airlockd(&[
            "audit",
            "inspect",
            "--db",
            self.db.to_str().unwrap(),
            "--pubkey",
            self.pubkey().to_str().unwrap(),
        ]);
        (status.code().unwrap_or(-1), format!("{out}{err}"))
    }

    fn export(&self) -> Vec<Value> {
        let (status, out, err) = airlockd(&["audit", "export", "--db", self.db.to_str().unwrap()]);
        assert!(status.success(), "export: {err}");
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn sql(&self, statement: &str) {
        let conn = rusqlite::Connection::open(&self.db).unwrap();
        conn.execute_batch(statement).unwrap();
    }

    fn count(&self, table: &str) -> u64 {
        let conn = rusqlite::Connection::open(&self.db).unwrap();
        conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }
}

fn chat(content: &str) -> Value {
    json!({"model": TEST_MODEL, "messages": [{"role": "user", "content": content}]})
}

fn stop(mut daemon: Daemon) {
    daemon.signal("TERM");
    assert!(daemon.wait_exit(Duration::from_secs(30)).is_some());
}

/// A daemon that served `n` chat requests and stopped cleanly.
async fn served_log(pki: &Pki, audit: &Audit, n: usize) {
    let daemon = Daemon::start(pki, &audit.config(""));
    let client = daemon.client(pki, "alice");
    for i in 0..n {
        let resp = client
            .post(daemon.url("/v1/chat/completions"))
            .json(&chat(&format!("request {i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    stop(daemon);
    let (code, out) = audit.verify(&[]);
    assert_eq!(code, 0, "{out}");
}

/// Runs `airlockd serve` on `cfg` and expects it to refuse to start (exit non-zero within a
/// minute); returns its stderr.
fn refused_start(pki: &Pki, cfg: &TestConfig) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("airlockd.toml");
    std::fs::write(&file, cfg.to_toml(pki)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_airlockd"))
        .args(["serve", "--config", file.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(!status.success(), "the daemon started: {err}");
            return err;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the daemon started on a forged audit log and kept running");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Attack 4a: records 1–20 and their checkpoints deleted, `meta.first_seq`/`prev_hash` set
/// so the file looks like it starts there. It used to verify as intact.
#[tokio::test]
async fn a_log_with_its_head_cut_off_fails_verify_and_start() {
    let pki = Pki::new(&["alice"]);
    let audit = Audit::new();
    served_log(&pki, &audit, 15).await;
    let (code, out) = audit.inspect();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("daemon start: would extend this log"), "{out}");
    let conn = rusqlite::Connection::open(&audit.db).unwrap();
    let hash20: Vec<u8> = conn
        .query_row("SELECT hash FROM records WHERE seq = 20", [], |r| r.get(0))
        .unwrap();
    drop(conn);
    audit.sql(&format!(
        "DELETE FROM records WHERE seq <= 20; DELETE FROM checkpoints WHERE seq <= 20;
         UPDATE meta SET value = '21' WHERE key = 'first_seq';
         UPDATE meta SET value = '{}' WHERE key = 'prev_hash';",
        hex::encode(hash20)
    ));
    let (code, out) = audit.verify(&[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("seq 21: broken link"), "{out}");

    let err = refused_start(&pki, &audit.config(""));
    assert!(err.contains("will not sign over"), "{err}");
    assert!(err.contains("airlockd audit inspect"), "{err}");
    let (code, out) = audit.inspect();
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("REFUSED"), "{out}");
}

/// Recomputes every record hash after `tenant` was rewritten in `n` records: what a forger
/// with write access but no signing key can do. Returns how many records were rewritten.
fn rewrite_tenant_and_rechain(db: &Path, n: usize) -> usize {
    use airlock_daemon::audit::record::{GENESIS, chain_hash};
    let conn = rusqlite::Connection::open(db).unwrap();
    let rows: Vec<(u64, Vec<u8>)> = conn
        .prepare("SELECT seq, body FROM records ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut prev = GENESIS;
    let mut rewritten = 0;
    for (seq, body) in rows {
        let text = String::from_utf8(body).unwrap();
        let body = if rewritten < n && text.contains("\"tenant\":\"alice\"") {
            rewritten += 1;
            text.replace("\"tenant\":\"alice\"", "\"tenant\":\"mallory\"")
        } else {
            text
        };
        let hash = chain_hash(seq, &prev, body.as_bytes());
        conn.execute(
            "UPDATE records SET body = ?1, hash = ?2 WHERE seq = ?3",
            rusqlite::params![body.as_bytes(), &hash[..], seq],
        )
        .unwrap();
        prev = hash;
    }
    rewritten
}

/// Attack 4b: `tenant` rewritten in 19 records, the chain recomputed, every checkpoint
/// deleted. Verify used to warn and exit 0, and the restarted daemon signed new checkpoints
/// over the forgery.
#[tokio::test]
async fn a_rewritten_chain_fails_verify_and_the_daemon_refuses_to_sign_over_it() {
    let pki = Pki::new(&["alice"]);
    let audit = Audit::new();
    served_log(&pki, &audit, 15).await;
    // The auditor's anchors, shipped off the host before the attack.
    let (status, anchors, _) = airlockd(&[
        "audit",
        "export",
        "--db",
        audit.db.to_str().unwrap(),
        "--checkpoints",
    ]);
    assert!(status.success());
    let anchors_file = audit.path("anchors.jsonl");
    std::fs::write(&anchors_file, &anchors).unwrap();
    let anchors_arg = ["--anchors", anchors_file.to_str().unwrap()];
    let (code, out) = audit.verify(&anchors_arg);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("anchors matched"), "{out}");

    let pristine = audit.path("pristine.db");
    std::fs::copy(&audit.db, &pristine).unwrap();
    assert_eq!(rewrite_tenant_and_rechain(&audit.db, 19), 19);
    audit.sql("DELETE FROM checkpoints");
    let (records, checkpoints) = (audit.count("records"), audit.count("checkpoints"));
    let (code, out) = audit.verify(&[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("no checkpoint"), "{out}");

    // Restart: the daemon refuses, and leaves the file as it found it.
    let err = refused_start(&pki, &audit.config(""));
    assert!(err.contains("no checkpoint"), "{err}");
    assert!(err.contains("airlockd audit inspect"), "{err}");
    assert_eq!(
        (audit.count("records"), audit.count("checkpoints")),
        (records, checkpoints)
    );
    let (code, out) = audit.inspect();
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("checkpoints: none"), "{out}");

    // A subtler forger keeps the checkpoints before the edit, deletes the later ones and
    // clears the clean mark: the file alone looks like a crashed daemon's, so only the
    // anchors held off the host catch it.
    std::fs::copy(&pristine, &audit.db).unwrap();
    let first_tenant_record: u64 = {
        let conn = rusqlite::Connection::open(&audit.db).unwrap();
        conn.query_row(
            "SELECT MIN(seq) FROM records WHERE CAST(body AS TEXT) LIKE '%\"tenant\":\"alice\"%'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(rewrite_tenant_and_rechain(&audit.db, 19), 19);
    audit.sql(&format!(
        "DELETE FROM checkpoints WHERE seq >= {first_tenant_record};
         UPDATE meta SET value = '0' WHERE key = 'clean'"
    ));
    let (code, out) = audit.verify(&anchors_arg);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("anchored checkpoint"), "{out}");

    // The documented way out: keep the file as evidence, move it aside, start a new log.
    std::fs::rename(&audit.db, audit.path("audit.db.suspect")).unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", audit.db.display()));
    }
    let daemon = Daemon::start(&pki, &audit.config(""));
    stop(daemon);
    let (code, out) = audit.verify(&[]);
    assert_eq!(code, 0, "{out}");
}

/// Attack 5: unknown paths answered 404 before authentication, each an fsync'd record
/// holding the whole path. Now the route is cut to 256 bytes and a client's refusals past
/// its budget are counted into its next record instead of written one by one.
#[tokio::test]
async fn an_unknown_path_flood_is_cut_and_throttled_per_client() {
    let pki = Pki::new(&["alice", "bob"]);
    let audit = Audit::new();
    let daemon = Daemon::start(&pki, &audit.config(""));
    let alice = daemon.client(&pki, "alice");
    let bob = daemon.client(&pki, "bob");
    let long_path = format!("/v1/{}", "a".repeat(12_000));
    const FLOOD: usize = 80;
    for _ in 0..FLOOD {
        let resp = alice.get(daemon.url(&long_path)).send().await.unwrap();
        assert_eq!(resp.status(), 404);
    }
    // Another client has its own budget: its refusal is recorded at once.
    let resp = bob.get(daemon.url("/v1/nope")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    // Once alice's budget refills, her next refusal carries the count.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let resp = alice.get(daemon.url("/v1/after")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    stop(daemon);

    let (code, out) = audit.verify(&[]);
    assert_eq!(code, 0, "{out}");
    let records = audit.export();
    let denies = |cn: &str| -> Vec<&Value> {
        records
            .iter()
            .filter(|r| r["kind"] == "deny" && r["cert_cn"] == cn)
            .collect()
    };
    let alice_denies = denies("alice");
    let recorded = alice_denies.len();
    let suppressed: u64 = alice_denies
        .iter()
        .filter_map(|r| r["suppressed_refusals"].as_u64())
        .sum();
    assert!(
        recorded < FLOOD / 2,
        "{recorded} of {FLOOD} flood refusals were recorded one by one"
    );
    assert_eq!(
        recorded as u64 + suppressed,
        FLOOD as u64 + 1,
        "every refusal is recorded or counted"
    );
    let last = alice_denies.last().unwrap();
    assert_eq!(last["route"], "GET /v1/after");
    assert!(last["suppressed_refusals"].as_u64().unwrap() > 0, "{last}");
    for r in alice_denies
        .iter()
        .filter(|r| r["route"] != "GET /v1/after")
    {
        let route = r["route"].as_str().unwrap();
        assert!(route.len() <= 256, "route of {} bytes", route.len());
        assert!(route.starts_with("GET /v1/aaaa"));
        assert_eq!(r["route_bytes"], long_path.len() + 4);
    }
    let bob_denies = denies("bob");
    assert_eq!(bob_denies.len(), 1);
    assert!(bob_denies[0].get("suppressed_refusals").is_none());
    let conn = rusqlite::Connection::open(&audit.db).unwrap();
    let largest: u64 = conn
        .query_row("SELECT MAX(length(body)) FROM records", [], |r| r.get(0))
        .unwrap();
    assert!(largest < 2048, "a record of {largest} bytes");
}

/// A tmpfs mounted for one test, unmounted when dropped (also when the test fails).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` (with the reason) when this machine cannot mount one (not root, no
    /// permission in a container).
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Still busy (a daemon that did not exit): detach it so the directory can go.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// Writes `file` until the file system is full (ENOSPC); returns the bytes written.
fn fill(file: &Path) -> u64 {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .unwrap();
    let chunk = vec![0x5a_u8; 4096];
    let mut written = 0;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling {}: {e}", file.display()),
        }
    }
    let _ = f.sync_all();
    written
}

async fn status_of(client: &reqwest::Client, daemon: &Daemon, path: &str) -> u16 {
    client
        .get(daemon.url(path))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The audit database on a 2 MiB tmpfs, filled until SQLite reports SQLITE_FULL under
/// load: from then on every response is 503 `audit_unavailable` and `/readyz` fails; no
/// 200 was ever sent without its records; deleting the filler file brings service back by
/// itself, and the chain verifies.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_refuses_service_then_recovers_when_space_is_freed() {
    let tmpfs = match Tmpfs::mount("2m") {
        Ok(t) => t,
        Err(reason) => {
            assert!(
                std::env::var("AIRLOCK_REQUIRE_TMPFS_TEST").as_deref() != Ok("1"),
                "AIRLOCK_REQUIRE_TMPFS_TEST=1 but no tmpfs can be mounted: {reason}"
            );
            eprintln!("skipping the disk-full test: {reason} (run as root to include it)");
            return;
        }
    };
    let pki = Pki::new(&["alice"]);
    let mut audit = Audit::new();
    audit.db = tmpfs.path("audit.db");
    let daemon = Daemon::start(&pki, &audit.config("write_timeout = \"2s\""));
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

    // Fill the disk, then free 192 KiB so that the log fills it under load.
    let filler = tmpfs.path("filler");
    let written = fill(&filler);
    assert!(written > 0);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap();
    f.set_len(written.saturating_sub(192 * 1024)).unwrap();
    drop(f);

    let mut served = Vec::new();
    let mut first_refusal = None;
    for wave in 0..200 {
        let mut tasks = Vec::new();
        for i in 0..8 {
            let (client, url) = (client.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let resp = client
                    .post(url)
                    .json(&chat(&format!("load {wave} {i} {}", "x".repeat(500))))
                    .send()
                    .await
                    .unwrap();
                let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
                let status = resp.status().as_u16();
                let body: Value = resp.json().await.unwrap();
                (status, id, body)
            }));
        }
        for task in tasks {
            let (status, id, body) = task.await.unwrap();
            match status {
                200 => served.push(id),
                503 => {
                    assert_eq!(body["error"]["code"], "audit_unavailable", "{body}");
                    first_refusal.get_or_insert(wave);
                }
                other => panic!("unexpected {other}: {body}"),
            }
        }
        if first_refusal.is_some() {
            break;
        }
    }
    assert!(first_refusal.is_some(), "the log never filled the disk");
    assert!(!served.is_empty());
    assert!(
        daemon.logs().contains("AUDIT LOG WRITE FAILED"),
        "{}",
        daemon.logs()
    );
    assert!(
        daemon.logs().contains("full"),
        "SQLITE_FULL is reported: {}",
        daemon.logs()
    );

    // The disk stays full (take whatever the failed commits released): a failed log refuses
    // every record without trying it, and only its probe, which waits for 1 MiB of free
    // space, can bring it back. SQLite could otherwise fit a small commit into pages it
    // already holds, and service would flicker on a full disk.
    fill(&filler);
    let mut flickers = 0;
    let mut refused_in_a_row = 0;
    let mut attempts = 0;
    while refused_in_a_row < 10 {
        attempts += 1;
        assert!(attempts < 300, "the log keeps writing on a full disk");
        let resp = client
            .post(&url)
            .json(&chat(&format!("settle {attempts}")))
            .send()
            .await
            .unwrap();
        match resp.status().as_u16() {
            200 => {
                flickers += 1;
                refused_in_a_row = 0;
                served.push(resp.headers()["x-request-id"].to_str().unwrap().to_owned());
            }
            503 => refused_in_a_row += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(flickers, 0, "{flickers} commits succeeded on a full disk");
    eprintln!(
        "disk full: first refusal in wave {}, {} requests served before, {flickers} served while settling",
        first_refusal.unwrap_or(0),
        served.len() - flickers
    );
    assert_eq!(status_of(&client, &daemon, "/readyz").await, 503);
    for i in 0..20 {
        let resp = client
            .post(&url)
            .json(&chat(&format!("while full {i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 503, "request {i} on a full disk");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "audit_unavailable");
        assert_eq!(status_of(&client, &daemon, "/v1/models").await, 503);
    }
    assert_eq!(status_of(&client, &daemon, "/readyz").await, 503);

    // Space comes back: service resumes by itself.
    std::fs::remove_file(&filler).unwrap();
    let back = Instant::now();
    while status_of(&client, &daemon, "/readyz").await != 200 {
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "service did not resume after space was freed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let resp = client.post(&url).json(&chat("after")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    served.push(resp.headers()["x-request-id"].to_str().unwrap().to_owned());
    stop(daemon);

    let (code, out) = audit.verify(&[]);
    assert_eq!(code, 0, "{out}");
    let records = audit.export();
    assert!(records.iter().any(|r| r["kind"] == "resumed"));
    // No 200 went out without its records.
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
    drop(tmpfs);
}
