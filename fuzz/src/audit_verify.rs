//! `audit_verify`: the offline audit verifier on damaged logs. The first byte picks the
//! mode:
//! - 0: the rest is the whole database file;
//! - 1: the rest is a list of row edits (see [`apply`]) made to a valid, cleanly closed
//!   log written by the real writer, as an attacker with the file would make them;
//! - 2: the same edits to a second file, verified after the untouched log (rotation links).
//!
//! Verification must report (a finding, a warning or an error) and never panic; the
//! untouched log must verify clean.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use airlock_daemon::audit::rotate::Rotation;
use airlock_daemon::audit::verify::verify;
use airlock_daemon::audit::{AuditLog, Kind, Record, SigningKey, WriterSettings};
use rusqlite::types::Value;
use rusqlite::{Connection, params};

/// Records in the template log, a checkpoint every [`EVERY`].
const RECORDS: u64 = 7;
const EVERY: u64 = 3;
const SEED: [u8; 32] = [7; 32];

pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let dir = crate::scratch("audit_verify");
    let live = dir.join("audit.db");
    let key = ed25519_dalek::SigningKey::from_bytes(&SEED).verifying_key();
    match mode % 3 {
        0 => {
            fresh(&live, rest);
            report(std::slice::from_ref(&live), &key, false);
        }
        1 => {
            fresh(&live, template());
            apply(&live, rest);
            report(std::slice::from_ref(&live), &key, rest.is_empty());
        }
        _ => {
            let first = dir.join("audit-1.db");
            fresh(&first, template());
            fresh(&live, template());
            apply(&live, rest);
            report(&[first, live], &key, false);
        }
    }
}

/// Verifies with and without the public key; `clean`: the log must have no finding.
fn report(files: &[PathBuf], key: &ed25519_dalek::VerifyingKey, clean: bool) {
    for pubkey in [Some(key), None] {
        match verify(files, pubkey) {
            Ok(report) => {
                if clean {
                    assert!(
                        report.finding.is_none(),
                        "untouched log: {:?}",
                        report.finding
                    );
                    assert!(report.records >= RECORDS, "untouched log: {report:?}");
                }
                if let Some(finding) = &report.finding {
                    let _ = finding.to_string();
                }
            }
            Err(e) => {
                assert!(!clean, "untouched log: {e}");
                let _ = e.to_string();
            }
        }
    }
}

/// Writes `bytes` as a database file with no stale journal beside it.
fn fresh(db: &Path, bytes: &[u8]) {
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut side = db.as_os_str().to_owned();
        side.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(side));
    }
    crate::write(db, bytes);
}

/// A cleanly closed log of [`RECORDS`] records (plus the writer's own), made once per
/// process by the real writer.
fn template() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let db = dir.path().join("audit.db");
        let log = AuditLog::open(WriterSettings {
            db: db.clone(),
            node: String::new(),
            signing_key: SigningKey::from_seed(SEED),
            checkpoint_every: EVERY,
            checkpoint_interval: Duration::from_secs(3600),
            write_timeout: Duration::from_secs(10),
            queue: 64,
            rotation: Rotation::default(),
        })
        .unwrap_or_else(|e| panic!("template log: {e}"));
        for i in 0..RECORDS {
            let kind = if i % 2 == 0 {
                Kind::Admit
            } else {
                Kind::Complete
            };
            log.append_detached(
                Record::new(kind)
                    .with("request_id", format!("req-{i}"))
                    .with("tenant", "alice")
                    .with("tokens", i),
            );
        }
        log.close();
        std::fs::read(&db).unwrap_or_else(|e| panic!("template log: {e}"))
    })
}

/// Applies edits: each is an opcode byte and its operands, read by [`Ops`]. SQL errors
/// (constraints, type mismatches) skip that edit: the attacker's edit did not happen.
fn apply(db: &Path, ops: &[u8]) {
    let conn = Connection::open(db).unwrap_or_else(|e| panic!("{e}"));
    // Durability is not under test: no fsync per edit.
    let _ = conn.pragma_update(None, "synchronous", "OFF");
    let mut ops = Ops(ops);
    while let Some(op) = ops.byte() {
        let seq = ops.int();
        let _ = match op % 12 {
            0 => conn.execute("UPDATE records SET body = ?1 WHERE seq = ?2", params![ops.value(), seq]),
            1 => conn.execute("UPDATE records SET hash = ?1 WHERE seq = ?2", params![ops.value(), seq]),
            2 => conn.execute("DELETE FROM records WHERE seq = ?1", [seq]),
            3 => conn.execute("UPDATE records SET seq = ?1 WHERE seq = ?2", params![ops.int(), seq]),
            4 => conn.execute(
                "INSERT OR REPLACE INTO records (seq, body, hash) SELECT ?1, body, hash FROM records WHERE seq = ?2",
                params![ops.int(), seq],
            ),
            5 => conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                params![meta_key(seq), ops.value()],
            ),
            6 => conn.execute("DELETE FROM meta WHERE key = ?1", [meta_key(seq)]),
            7 => {
                let column = ["seq", "hash", "ts_ms", "signature"][usize::from(ops.byte().unwrap_or(0) % 4)];
                conn.execute(
                    &format!("UPDATE checkpoints SET {column} = ?1 WHERE seq = ?2"),
                    params![ops.value(), seq],
                )
            }
            8 => conn.execute("DELETE FROM checkpoints WHERE seq = ?1", [seq]),
            9 => conn.execute(
                "INSERT OR REPLACE INTO checkpoints (seq, hash, ts_ms, signature) SELECT ?1, hash, ts_ms, signature FROM checkpoints WHERE seq = ?2",
                params![ops.int(), seq],
            ),
            10 => conn.execute(
                "UPDATE records SET body = CAST(body AS TEXT) || ?1 WHERE seq = ?2",
                params![ops.value(), seq],
            ),
            _ => {
                let table = ["records", "checkpoints", "meta"][usize::from(ops.byte().unwrap_or(0) % 3)];
                conn.execute_batch(&format!("DROP TABLE {table}")).map(|()| 0)
            }
        };
    }
}

fn meta_key(i: i64) -> &'static str {
    [
        "first_seq",
        "prev_hash",
        "clean",
        "public_key",
        "created_ms",
        "nonsense",
    ][usize::try_from(i.rem_euclid(6)).unwrap_or(0)]
}

/// A cursor over edit operands.
struct Ops<'a>(&'a [u8]);

impl Ops<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    /// A sequence number: small ones near the log's, and the extremes.
    fn int(&mut self) -> i64 {
        match self.byte().unwrap_or(0) {
            255 => i64::MAX,
            254 => i64::MIN,
            253 => -1,
            252 => u32::MAX.into(),
            b => i64::from(b % 16),
        }
    }

    /// A column value of any SQLite type: a length-prefixed blob or text, or a number.
    fn value(&mut self) -> Value {
        let kind = self.byte().unwrap_or(0);
        match kind % 5 {
            0 | 1 => {
                let len = usize::from(self.byte().unwrap_or(0)).min(self.0.len());
                let (bytes, rest) = self.0.split_at(len);
                self.0 = rest;
                if kind.is_multiple_of(5) {
                    Value::Blob(bytes.to_vec())
                } else {
                    Value::Text(String::from_utf8_lossy(bytes).into_owned())
                }
            }
            2 => Value::Integer(self.int()),
            3 => Value::Real(f64::from(self.byte().unwrap_or(0)) / 3.0),
            _ => Value::Null,
        }
    }
}

/// Seeds: the log itself, and one of each kind of tampering the verifier classifies.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let edits = |mode: u8, ops: &[u8]| [&[mode][..], ops].concat();
    vec![
        ("raw_log", edits(0, template())),
        ("untouched", edits(1, &[])),
        ("modify_body", edits(1, &[0, 2, 1, 3, b'{', b'}', b' '])),
        ("delete_middle", edits(1, &[2, 4])),
        ("swap", edits(1, &[3, 2, 15, 3, 3, 2, 3, 15, 3])),
        ("duplicate", edits(1, &[4, 3, 12, 3, 3, 12])),
        (
            "truncate_tail",
            edits(1, &[2, 8, 2, 7, 8, 8, 5, 2, 1, 1, b'0']),
        ),
        ("forge_checkpoint", edits(1, &[7, 6, 3, 0, 4, 1, 2, 3, 4])),
        ("meta_first_seq_zero", edits(1, &[5, 0, 1, 1, b'0'])),
        ("drop_records", edits(1, &[11, 0, 0])),
        ("link", edits(2, &[5, 1, 1, 3, b'a', b'b', b'c'])),
    ]
}
