use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, params};

use super::record::{Kind, Record, canonical};
use super::verify::{Problem, verify};
use super::writer::{AuditLog, WriterSettings};
use super::{DigestKey, SigningKey};

pub(super) fn settings(db: &Path, every: u64) -> WriterSettings {
    WriterSettings {
        db: db.to_path_buf(),
        node: String::new(),
        signing_key: SigningKey::from_seed([7; 32]),
        checkpoint_every: every,
        checkpoint_interval: Duration::from_secs(3600),
        write_timeout: Duration::from_secs(10),
        queue: 1024,
        rotation: super::rotate::Rotation::default(),
    }
}

/// A cleanly closed log of `n` records, a checkpoint every `every`.
pub(super) async fn log_with(n: u64, every: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let log = AuditLog::open(settings(&db, every)).unwrap();
    // One at a time, so that checkpoints fall exactly every `every` records.
    for i in 0..n {
        let record = Record::new(Kind::Admit)
            .with("request_id", format!("req-{i}"))
            .with("tenant", "alice");
        assert_eq!(log.append(record).await.unwrap(), i + 1);
    }
    tokio::task::spawn_blocking(move || log.close())
        .await
        .unwrap();
    (dir, db)
}

pub(super) fn check(db: &Path) -> Option<(u64, Problem)> {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
    let report = verify(&[db.to_path_buf()], Some(&key)).unwrap();
    report.finding.map(|f| (f.seq, f.problem))
}

pub(super) fn sql(db: &Path, statement: &str) {
    let conn = Connection::open(db).unwrap();
    conn.execute_batch(statement).unwrap();
}

#[test]
fn canonical_encoding_sorts_keys_and_is_stable() {
    let value = serde_json::json!({"b": 1, "a": {"z": "x\"y", "c": [1, 2]}, "A": null});
    let mut out = Vec::new();
    canonical(&value, &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"{"A":null,"a":{"c":[1,2],"z":"x\"y"},"b":1}"#
    );
    let r = Record::new(Kind::Deny)
        .with("tenant", "t")
        .with("empty", "");
    assert_eq!(r.encode(5, 10, ""), r.encode(5, 10, ""));
    assert_eq!(
        String::from_utf8(r.encode(5, 10, "")).unwrap(),
        r#"{"kind":"deny","seq":5,"tenant":"t","ts_ms":10,"v":1}"#
    );
}

#[test]
fn the_writers_fields_win_over_record_fields_of_the_same_name() {
    let r = Record::new(Kind::Admit)
        .with("seq", 99)
        .with("kind", "forged")
        .with("node", "n-record")
        .with("z", true)
        .with("a", serde_json::json!({"y": 1.5, "x": [null]}));
    assert_eq!(
        String::from_utf8(r.encode(7, 3, "n1")).unwrap(),
        r#"{"a":{"x":[null],"y":1.5},"kind":"admit","node":"n1","seq":7,"ts_ms":3,"v":1,"z":true}"#
    );
    // No node name: a record's own `node` field stays.
    assert_eq!(
        String::from_utf8(r.encode(7, 3, "")).unwrap(),
        r#"{"a":{"x":[null],"y":1.5},"kind":"admit","node":"n-record","seq":7,"ts_ms":3,"v":1,"z":true}"#
    );
}

#[test]
fn digests_are_keyed() {
    let a = DigestKey::from_bytes([1; 32]);
    let b = DigestKey::from_bytes([2; 32]);
    assert_eq!(a.digest(b"hello"), a.digest(b"hello"));
    assert_ne!(a.digest(b"hello"), b.digest(b"hello"));
    assert!(a.digest(b"x").starts_with("hmac-sha256:"));
    assert_eq!(format!("{a:?}"), "DigestKey([redacted])");
}

#[test]
fn redaction_masks_digits_and_emails() {
    assert_eq!(
        super::trail::redact("card 4111 1111 mail bob@example.com now"),
        "card #### #### mail [email] now"
    );
}

#[tokio::test]
async fn intact_log_verifies() {
    let (_dir, db) = log_with(250, 100).await;
    assert_eq!(check(&db), None);
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
    let report = verify(&[db], Some(&key)).unwrap();
    assert_eq!(report.records, 250);
    assert_eq!(report.last_seq, 250);
    assert_eq!(report.last_checkpoint, 250, "close seals the tail");
}

#[tokio::test]
async fn modified_record_is_pinpointed() {
    let (_dir, db) = log_with(50, 10).await;
    sql(
        &db,
        "UPDATE records SET body = CAST(replace(CAST(body AS TEXT), 'alice', 'mallory') AS BLOB) WHERE seq = 17",
    );
    assert_eq!(check(&db), Some((17, Problem::Modified)));
}

#[tokio::test]
async fn rehashed_chain_is_caught_by_the_checkpoint() {
    let (_dir, db) = log_with(50, 10).await;
    // A forger who recomputes every hash after the edit still cannot re-sign checkpoints.
    let conn = Connection::open(&db).unwrap();
    let rows: Vec<(u64, Vec<u8>)> = conn
        .prepare("SELECT seq, body FROM records ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut prev = super::record::GENESIS;
    for (seq, body) in rows {
        let body = if seq == 23 {
            String::from_utf8(body)
                .unwrap()
                .replace("alice", "eve")
                .into_bytes()
        } else {
            body
        };
        let hash = super::record::chain_hash(seq, &prev, &body);
        conn.execute(
            "UPDATE records SET body = ?1, hash = ?2 WHERE seq = ?3",
            params![body, &hash[..], seq],
        )
        .unwrap();
        prev = hash;
    }
    let finding = check(&db).unwrap();
    assert_eq!(
        finding,
        (30, Problem::Modified),
        "first checkpoint after the edit"
    );
}

#[tokio::test]
async fn deleted_record_is_pinpointed() {
    let (_dir, db) = log_with(50, 10).await;
    sql(&db, "DELETE FROM records WHERE seq = 33");
    assert_eq!(check(&db), Some((33, Problem::Deleted)));
}

#[tokio::test]
async fn swapped_records_are_reordered() {
    let (_dir, db) = log_with(50, 10).await;
    sql(
        &db,
        "UPDATE records SET seq = -1 WHERE seq = 12;
         UPDATE records SET seq = 12 WHERE seq = 13;
         UPDATE records SET seq = 13 WHERE seq = -1;",
    );
    assert_eq!(check(&db), Some((12, Problem::Reordered)));
}

#[tokio::test]
async fn inserted_record_is_pinpointed() {
    let (_dir, db) = log_with(50, 10).await;
    // Make room at 20 by renumbering the rest, then insert a forged record there.
    sql(
        &db,
        "UPDATE records SET seq = -seq WHERE seq >= 20;
         UPDATE records SET seq = -seq + 1 WHERE seq < 0;",
    );
    let body = Record::new(Kind::Admit)
        .with("tenant", "mallory")
        .encode(20, 1, "");
    let conn = Connection::open(&db).unwrap();
    conn.execute(
        "INSERT INTO records (seq, body, hash) VALUES (20, ?1, ?2)",
        params![body, &[0u8; 32][..]],
    )
    .unwrap();
    assert_eq!(check(&db), Some((20, Problem::Inserted)));
}

#[tokio::test]
async fn truncated_tail_is_detected() {
    let (_dir, db) = log_with(50, 10).await;
    // Remove records sealed by the last checkpoint (seq 50).
    sql(&db, "DELETE FROM records WHERE seq > 45");
    assert_eq!(check(&db), Some((46, Problem::Truncated)));
    // Removing the checkpoint too still shows in a cleanly closed log.
    sql(&db, "DELETE FROM checkpoints WHERE seq = 50");
    assert_eq!(check(&db).map(|f| f.1), Some(Problem::Truncated));
}

#[tokio::test]
async fn forged_checkpoint_is_detected() {
    let (_dir, db) = log_with(50, 10).await;
    sql(
        &db,
        "UPDATE checkpoints SET signature = zeroblob(64) WHERE seq = 20",
    );
    assert_eq!(check(&db), Some((20, Problem::ForgedCheckpoint)));
}

#[tokio::test]
async fn unclean_stop_appends_a_recovery_record() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let log = AuditLog::open(settings(&db, 1000)).unwrap();
    log.append(Record::new(Kind::Start)).await.unwrap();
    // No close: as after kill -9 (the thread is abandoned).
    std::mem::forget(log);
    let log = AuditLog::open(settings(&db, 1000)).unwrap();
    log.append(Record::new(Kind::Start)).await.unwrap();
    tokio::task::spawn_blocking(move || log.close())
        .await
        .unwrap();
    let conn = Connection::open(&db).unwrap();
    let kinds: Vec<String> = conn
        .prepare("SELECT CAST(body AS TEXT) FROM records ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|b| b.unwrap())
        .collect();
    assert!(kinds[1].contains("\"kind\":\"recovery\""), "{kinds:?}");
    assert_eq!(check(&db), None);
}

#[tokio::test]
async fn write_failure_refuses_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let log = AuditLog::open(WriterSettings {
        write_timeout: Duration::from_secs(1),
        ..settings(&db, 1000)
    })
    .unwrap();
    log.append(Record::new(Kind::Start)).await.unwrap();
    // Another process holds the write lock past the busy timeout: the commit fails.
    let blocker = Connection::open(&db).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let big = Record::new(Kind::Admit).with("x", "y".repeat(100));
    let result = tokio::time::timeout(Duration::from_secs(30), log.append(big)).await;
    assert!(
        matches!(result, Ok(Err(_))),
        "a locked database must fail the write"
    );
    for _ in 0..50 {
        if !log.healthy() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!log.healthy());
    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);
    // The writer probes once a second and recovers by itself.
    let mut healthy = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if log.healthy() {
            healthy = true;
            break;
        }
    }
    assert!(healthy, "the writer recovers once writes succeed");
    log.append(Record::new(Kind::Stop)).await.unwrap();
    tokio::task::spawn_blocking(move || log.close())
        .await
        .unwrap();
    assert_eq!(check(&db), None);
}

#[tokio::test]
async fn rotation_chains_files_and_retention_keeps_a_contiguous_tail() {
    use super::rotate::{Rotation, rotated_files};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let log = AuditLog::open(WriterSettings {
        rotation: Rotation {
            max_bytes: Some(1),
            ..Rotation::default()
        },
        ..settings(&db, 1000)
    })
    .unwrap();
    for i in 0..3 {
        log.append(Record::new(Kind::Admit).with("i", i))
            .await
            .unwrap();
    }
    tokio::task::spawn_blocking(move || log.close())
        .await
        .unwrap();
    let mut files = rotated_files(&db);
    assert!(files.len() >= 2, "{files:?}");
    files.push(db.clone());
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
    let report = verify(&files, Some(&key)).unwrap();
    assert_eq!(report.finding, None, "{report:?}");
    // A missing middle file breaks the link.
    let gap: Vec<PathBuf> = files
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, f)| f.clone())
        .collect();
    let report = verify(&gap, Some(&key)).unwrap();
    assert_eq!(report.finding.map(|f| f.problem), Some(Problem::BrokenLink));

    // Retention removes whole rotated files only, and says so in the log.
    let log = AuditLog::open(WriterSettings {
        rotation: Rotation {
            max_bytes: Some(1),
            keep: Some(Duration::ZERO),
            ..Rotation::default()
        },
        ..settings(&db, 1000)
    })
    .unwrap();
    log.append(Record::new(Kind::Admit)).await.unwrap();
    tokio::task::spawn_blocking(move || log.close())
        .await
        .unwrap();
    let conn = Connection::open(&db).unwrap();
    let bodies: Vec<String> = conn
        .prepare("SELECT CAST(body AS TEXT) FROM records ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|b| b.unwrap())
        .collect();
    assert!(
        bodies.iter().any(|b| b.contains("\"kind\":\"retention\"")),
        "{bodies:?}"
    );
    let mut files = rotated_files(&db);
    files.push(db.clone());
    assert_eq!(verify(&files, Some(&key)).unwrap().finding, None);
}

#[tokio::test]
async fn a_removed_database_fails_writes_until_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let log = AuditLog::open(settings(&db, 1000)).unwrap();
    log.append(Record::new(Kind::Start)).await.unwrap();
    let away = dir.path().join("moved.db");
    std::fs::rename(&db, &away).unwrap();
    assert!(log.append(Record::new(Kind::Admit)).await.is_err());
    assert!(!log.healthy());
    std::fs::rename(&away, &db).unwrap();
    let mut healthy = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if log.healthy() {
            healthy = true;
            break;
        }
    }
    assert!(healthy, "writes resume once the file is back");
    log.append(Record::new(Kind::Admit)).await.unwrap();
    tokio::task::spawn_blocking(move || log.close())
        .await
        .unwrap();
    assert_eq!(check(&db), None);
}

/// Several nodes' logs given together: each node's files are its own chain (grouped by the
/// `node` in their records), each checked against its own key; a tampered node is named.
#[tokio::test]
async fn files_of_several_nodes_verify_node_by_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (node, seed) in [("gw-1", 7u8), ("gw-2", 8u8)] {
        let db = dir.path().join(format!("{node}.db"));
        let log = AuditLog::open(WriterSettings {
            node: node.to_owned(),
            signing_key: SigningKey::from_seed([seed; 32]),
            ..settings(&db, 4)
        })
        .unwrap();
        for i in 0..6 {
            log.append(Record::new(Kind::Admit).with("request_id", format!("{node}-{i}")))
                .await
                .unwrap();
        }
        tokio::task::spawn_blocking(move || log.close())
            .await
            .unwrap();
        files.push(db);
    }
    let nodes = super::verify::by_node(&files).unwrap();
    let names: Vec<&str> = nodes.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["gw-1", "gw-2"]);
    for ((_, group), seed) in nodes.iter().zip([7u8, 8]) {
        let key = SigningKey::from_seed([seed; 32]).verifying_key();
        let report = verify(group, Some(&key)).unwrap();
        assert!(report.finding.is_none(), "{:?}", report.finding);
        assert_eq!(report.records, 6);
        // The other node's key does not verify it.
        let other = SigningKey::from_seed([15 - seed; 32]).verifying_key();
        assert!(verify(group, Some(&other)).unwrap().finding.is_some());
    }
    // A record of gw-2 rewritten: gw-2 is tampered, gw-1 still intact.
    let conn = Connection::open(&files[1]).unwrap();
    conn.execute(
        "UPDATE records SET body = CAST(REPLACE(CAST(body AS TEXT), 'gw-2-3', 'gw-2-X') AS BLOB) WHERE seq = 4",
        [],
    )
    .unwrap();
    let nodes = super::verify::by_node(&files).unwrap();
    let key = SigningKey::from_seed([8; 32]).verifying_key();
    assert!(verify(&nodes[1].1, Some(&key)).unwrap().finding.is_some());
}
