//! The forgeries of issue 11 against the verifier and the writer's head check.

use std::path::Path;

use rusqlite::{Connection, params};

use super::super::AuditError;
use super::super::anchors;
use super::super::record::{GENESIS, Kind, Record, chain_hash};
use super::super::tests::{check, log_with, settings, sql};
use super::super::tools::{ExportFilter, export};
use super::super::verify::{Problem, verify, verify_anchored};
use super::super::writer::{AuditLog, WriterSettings};
use super::super::{SigningKey, rotate};

fn public() -> ed25519_dalek::VerifyingKey {
    ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key()
}

/// Rewrites `tenant` in records `from..=to` and recomputes every hash after them, as a
/// forger with the file (but not the signing key) would.
fn rewrite_and_rechain(db: &Path, from: u64, to: u64) {
    let conn = Connection::open(db).unwrap();
    let first: u64 = conn
        .query_row("SELECT MIN(seq) FROM records", [], |r| r.get(0))
        .unwrap();
    let mut prev: [u8; 32] = if first == 1 {
        GENESIS
    } else {
        let hex: String = conn
            .query_row("SELECT value FROM meta WHERE key = 'prev_hash'", [], |r| {
                r.get(0)
            })
            .unwrap();
        hex::decode(hex).unwrap().try_into().unwrap()
    };
    let rows: Vec<(u64, Vec<u8>)> = conn
        .prepare("SELECT seq, body FROM records ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (seq, body) in rows {
        let body = if (from..=to).contains(&seq) {
            String::from_utf8(body)
                .unwrap()
                .replace("\"tenant\":\"alice\"", "\"tenant\":\"mallory\"")
                .into_bytes()
        } else {
            body
        };
        let hash = chain_hash(seq, &prev, &body);
        conn.execute(
            "UPDATE records SET body = ?1, hash = ?2 WHERE seq = ?3",
            params![body, &hash[..], seq],
        )
        .unwrap();
        prev = hash;
    }
}

fn refusal(db: &Path, settings: WriterSettings) -> (u64, Problem) {
    match AuditLog::open(settings) {
        Err(AuditError::Refused { path, refusal }) => {
            assert_eq!(path, db);
            (refusal.seq, refusal.problem)
        }
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("the writer extended a forged log"),
    }
}

#[tokio::test]
async fn the_first_commit_of_a_file_is_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let log = AuditLog::open(settings(&db, 1000)).unwrap();
    for _ in 0..5 {
        log.append(Record::new(Kind::Admit)).await.unwrap();
    }
    // As after kill -9: no final checkpoint.
    std::mem::forget(log);
    let key = public();
    let report = verify(std::slice::from_ref(&db), Some(&key)).unwrap();
    assert_eq!(report.finding, None, "{report:?}");
    assert_eq!(report.last_checkpoint, 1);
    assert_eq!(report.warnings.len(), 1, "the unsealed tail is a warning");
    // And the next start extends it.
    let log = AuditLog::open(settings(&db, 1000)).unwrap();
    tokio::task::spawn_blocking(move || log.close())
        .await
        .unwrap();
    assert_eq!(check(&db), None);
}

#[tokio::test]
async fn a_rewritten_chain_without_checkpoints_fails_verify_and_is_refused() {
    let (_dir, db) = log_with(40, 10).await;
    rewrite_and_rechain(&db, 5, 23);
    sql(&db, "DELETE FROM checkpoints");
    assert_eq!(check(&db), Some((1, Problem::NoCheckpoint)));
    assert_eq!(refusal(&db, settings(&db, 10)), (1, Problem::NoCheckpoint));
    // The refused file is untouched: still no checkpoint, no new record.
    let conn = Connection::open(&db).unwrap();
    let (records, checkpoints): (u64, u64) = conn
        .query_row(
            "SELECT (SELECT COUNT(*) FROM records), (SELECT COUNT(*) FROM checkpoints)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((records, checkpoints), (40, 0));
}

#[tokio::test]
async fn a_rewritten_tail_is_refused_when_its_checkpoint_remains() {
    let (_dir, db) = log_with(40, 10).await;
    // Rewrite past the newest checkpoint, which stays: it no longer matches.
    rewrite_and_rechain(&db, 35, 38);
    assert_eq!(check(&db), Some((40, Problem::Modified)));
    assert_eq!(refusal(&db, settings(&db, 10)), (40, Problem::Modified));
}

#[tokio::test]
async fn a_truncated_head_fails_verify_and_is_refused() {
    let (_dir, db) = log_with(40, 10).await;
    let conn = Connection::open(&db).unwrap();
    let hash20: Vec<u8> = conn
        .query_row("SELECT hash FROM records WHERE seq = 20", [], |r| r.get(0))
        .unwrap();
    conn.execute_batch(&format!(
        "DELETE FROM records WHERE seq <= 20; DELETE FROM checkpoints WHERE seq <= 20;
         UPDATE meta SET value = '21' WHERE key = 'first_seq';
         UPDATE meta SET value = '{}' WHERE key = 'prev_hash';",
        hex::encode(hash20)
    ))
    .unwrap();
    drop(conn);
    assert_eq!(check(&db), Some((21, Problem::BrokenLink)));
    assert_eq!(refusal(&db, settings(&db, 10)), (21, Problem::BrokenLink));
}

#[tokio::test]
async fn a_log_signed_by_another_key_is_refused() {
    let (_dir, db) = log_with(20, 10).await;
    let other = WriterSettings {
        signing_key: SigningKey::from_seed([8; 32]),
        ..settings(&db, 10)
    };
    assert_eq!(refusal(&db, other), (20, Problem::ForgedCheckpoint));
}

fn exported_anchors(db: &Path) -> String {
    let mut out = Vec::new();
    let filter = ExportFilter {
        checkpoints: true,
        ..ExportFilter::default()
    };
    export(db, &filter, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn anchors_catch_what_the_file_alone_cannot() {
    let (_dir, db) = log_with(50, 10).await;
    let text = exported_anchors(&db);
    let anchors = anchors::parse(&text, &public()).unwrap();
    assert_eq!(anchors.len(), 6, "seq 1, 10, 20, 30, 40, 50");
    let key = public();
    let report = verify_anchored(std::slice::from_ref(&db), Some(&key), &anchors).unwrap();
    assert_eq!(report.finding, None);
    assert_eq!(report.anchors_matched, 6);

    // The documented limit: records past a checkpoint rewritten, the later checkpoints
    // deleted, the clean mark cleared. The file alone is consistent (the writer cannot
    // tell it from a crash either); the anchors are not.
    let forged = db.with_file_name("forged.db");
    std::fs::copy(&db, &forged).unwrap();
    rewrite_and_rechain(&forged, 25, 45);
    sql(
        &forged,
        "DELETE FROM checkpoints WHERE seq > 20; UPDATE meta SET value = '0' WHERE key = 'clean'",
    );
    assert_eq!(check(&forged), None);
    let report = verify_anchored(std::slice::from_ref(&forged), Some(&key), &anchors).unwrap();
    let finding = report.finding.unwrap();
    assert_eq!((finding.seq, finding.problem), (30, Problem::Modified));

    // A dropped tail with its checkpoints.
    let cut = db.with_file_name("cut.db");
    std::fs::copy(&db, &cut).unwrap();
    sql(
        &cut,
        "DELETE FROM records WHERE seq > 35; DELETE FROM checkpoints WHERE seq > 30;
         UPDATE meta SET value = '0' WHERE key = 'clean'",
    );
    assert_eq!(check(&cut), None);
    let report = verify_anchored(&[cut], Some(&key), &anchors).unwrap();
    let finding = report.finding.unwrap();
    assert_eq!((finding.seq, finding.problem), (36, Problem::Truncated));

    // An anchor whose signature does not verify is an error about the anchors file.
    let malformed = text.replace("\"signature\":\"", "\"signature\":\"00");
    let tampered: String = text
        .lines()
        .map(|l| {
            if l.contains("\"kind\":\"checkpoint\"") {
                l.replace("\"ts_ms\":", "\"ts_ms\":1")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(anchors::parse(&tampered, &key).is_err());
    assert!(anchors::parse(&malformed, &key).is_err());
}

#[tokio::test]
async fn a_lost_live_file_continues_the_rotated_chain() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let log = AuditLog::open(WriterSettings {
        rotation: rotate::Rotation {
            max_bytes: Some(1),
            ..rotate::Rotation::default()
        },
        ..settings(&db, 1000)
    })
    .unwrap();
    log.append(Record::new(Kind::Admit)).await.unwrap();
    tokio::task::spawn_blocking(move || log.close())
        .await
        .unwrap();
    // The live file is lost (e.g. a crash right after the rename of a rotation).
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let log = AuditLog::open(settings(&db, 1000)).unwrap();
    log.append(Record::new(Kind::Admit)).await.unwrap();
    tokio::task::spawn_blocking(move || log.close())
        .await
        .unwrap();
    let mut files = rotate::rotated_files(&db);
    files.push(db.clone());
    let report = verify(&files, Some(&public())).unwrap();
    assert_eq!(report.finding, None, "{report:?}");
    let conn = Connection::open(&db).unwrap();
    let first: String = conn
        .query_row(
            "SELECT CAST(body AS TEXT) FROM records ORDER BY seq LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(first.contains("\"kind\":\"rotate\""), "{first}");
}
