//! Offline verification: every record's hash and link, every checkpoint's signature, the
//! links between rotated files, and optionally the checkpoints an auditor holds off the host
//! (anchors). Stops at the first problem and names its sequence number and kind. Reads the
//! database read-only; needs only the public key.
//!
//! Every file must hold at least one signed checkpoint (the writer seals the first commit
//! of every file), and a file that does not start the chain must begin with the `rotate`
//! record linking it to its predecessor: otherwise a forger could drop the head of a log
//! (or rewrite it and drop the checkpoints) and leave a file that is consistent in itself.
//!
//! The fast path is one SHA-256 per record and no parsing; a record is parsed only to
//! classify a mismatch (its body names its own `seq`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::AuditError;
use super::record::{GENESIS, chain_hash, checkpoint_message};
use super::writer::meta;

/// What is wrong at a sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// A record's content no longer matches its hash or the chain.
    Modified,
    /// A record is missing (a gap, or later records renumbered down).
    Deleted,
    /// A record that the chain does not contain was added.
    Inserted,
    /// Records are in the wrong order.
    Reordered,
    /// Records signed by a checkpoint are gone from the end.
    Truncated,
    /// A checkpoint's signature is not the daemon's.
    ForgedCheckpoint,
    /// A rotated file does not continue its predecessor.
    BrokenLink,
    /// A file holds no signed checkpoint: nothing proves who wrote its records.
    NoCheckpoint,
}

impl Problem {
    pub fn as_str(self) -> &'static str {
        match self {
            Problem::Modified => "modified",
            Problem::Deleted => "deleted",
            Problem::Inserted => "inserted",
            Problem::Reordered => "reordered",
            Problem::Truncated => "truncated",
            Problem::ForgedCheckpoint => "forged checkpoint",
            Problem::BrokenLink => "broken link between files",
            Problem::NoCheckpoint => "no checkpoint",
        }
    }
}

/// The first problem found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub file: PathBuf,
    pub seq: u64,
    pub problem: Problem,
    pub detail: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: seq {}: {}: {}",
            self.file.display(),
            self.seq,
            self.problem.as_str(),
            self.detail
        )
    }
}

/// What verification saw.
#[derive(Debug, Default)]
pub struct Report {
    pub records: u64,
    pub checkpoints: u64,
    pub first_seq: Option<u64>,
    pub last_seq: u64,
    pub last_checkpoint: u64,
    /// Anchors (checkpoints held off the host) that matched the chain; the last one's seq.
    pub anchors_matched: u64,
    pub last_anchor: Option<u64>,
    pub finding: Option<Finding>,
    pub warnings: Vec<String>,
}

/// `files` grouped by the node that wrote them (the `node` of each file's first record;
/// `(unnamed)` for logs written without one), in the order given within each node, nodes in
/// order of first appearance.
pub fn by_node(files: &[PathBuf]) -> Result<Vec<(String, Vec<PathBuf>)>, AuditError> {
    let mut nodes: Vec<(String, Vec<PathBuf>)> = Vec::new();
    for file in files {
        let conn = open_read_only(file)?;
        let first: Option<Vec<u8>> = conn
            .query_row("SELECT body FROM records ORDER BY seq LIMIT 1", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| sql(file, e))?;
        let node = first
            .and_then(|body| serde_json::from_slice::<serde_json::Value>(&body).ok())
            .and_then(|v| v.get("node").and_then(|n| n.as_str()).map(str::to_owned))
            .unwrap_or_else(|| "(unnamed)".to_owned());
        match nodes.iter_mut().find(|(n, _)| *n == node) {
            Some((_, group)) => group.push(file.clone()),
            None => nodes.push((node, vec![file.clone()])),
        }
    }
    Ok(nodes)
}

fn open_read_only(file: &Path) -> Result<Connection, AuditError> {
    Connection::open_with_flags(
        file,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| sql(file, e))
}

fn sql(file: &Path, source: rusqlite::Error) -> AuditError {
    AuditError::Sqlite {
        path: file.to_path_buf(),
        source,
    }
}

/// The public key a file names (`meta.public_key`), if any.
pub fn stored_key(file: &Path) -> Result<Option<[u8; 32]>, AuditError> {
    let conn = open_read_only(file)?;
    let hex_key = meta(&conn, "public_key").map_err(|e| sql(file, e))?;
    Ok(hex_key
        .and_then(|h| hex::decode(h).ok())
        .and_then(|b| <[u8; 32]>::try_from(b).ok()))
}

/// Verifies `files` in order (oldest rotated file first, the live file last).
pub fn verify(files: &[PathBuf], pubkey: Option<&VerifyingKey>) -> Result<Report, AuditError> {
    verify_anchored(files, pubkey, &Anchors::default())
}

/// As [`verify`], and the chain must also pass through every anchor (a checkpoint exported
/// earlier and kept off the host; see [`super::anchors`]) and reach the newest one: a log
/// whose tail or checkpoints were removed, or rewritten since, fails.
pub fn verify_anchored(
    files: &[PathBuf],
    pubkey: Option<&VerifyingKey>,
    anchors: &Anchors,
) -> Result<Report, AuditError> {
    let mut report = Report::default();
    let mut link: Option<(u64, [u8; 32])> = None;
    for file in files {
        let end = verify_file(file, pubkey, anchors, link, &mut report)?;
        if report.finding.is_some() {
            return Ok(report);
        }
        link = Some(end);
    }
    let first = report.first_seq.unwrap_or(report.last_seq + 1);
    let before = anchors.range(..first).count();
    if before > 0 {
        report.warnings.push(format!(
            "{before} anchor(s) precede seq {first}, where the files given start: pass the \
             rotated files that hold them to check them too"
        ));
    }
    if let (Some((&seq, _)), Some(last)) = (anchors.last_key_value(), files.last())
        && seq > report.last_seq
    {
        report.finding = Some(Finding {
            file: last.clone(),
            seq: report.last_seq + 1,
            problem: Problem::Truncated,
            detail: format!(
                "an anchored checkpoint covers seq {seq}, but the log ends at seq {}",
                report.last_seq
            ),
        });
    }
    Ok(report)
}

/// Anchors by sequence number: the chain hash each one seals.
pub type Anchors = BTreeMap<u64, [u8; 32]>;

struct Row {
    seq: u64,
    body: Vec<u8>,
    hash: Vec<u8>,
}

fn body_seq(body: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .get("seq")?
        .as_u64()
}

/// One file; returns its last (seq, hash) for the next file's link.
fn verify_file(
    file: &Path,
    pubkey: Option<&VerifyingKey>,
    anchors: &Anchors,
    link: Option<(u64, [u8; 32])>,
    report: &mut Report,
) -> Result<(u64, [u8; 32]), AuditError> {
    let sql = |source| AuditError::Sqlite {
        path: file.to_path_buf(),
        source,
    };
    let conn = Connection::open_with_flags(
        file,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql)?;
    let first_seq: u64 = meta(&conn, "first_seq")
        .map_err(sql)?
        // Sequence numbers start at 1: a `first_seq` of 0 is no log the writer made.
        .and_then(|v| v.parse().ok().filter(|&seq: &u64| seq > 0))
        .ok_or_else(|| AuditError::Format(format!("{}: not an audit log", file.display())))?;
    let prev_hash: Option<[u8; 32]> = match meta(&conn, "prev_hash").map_err(sql)? {
        None => Some(GENESIS),
        Some(v) => hex::decode(v).ok().and_then(|v| v.try_into().ok()),
    };
    let clean = meta(&conn, "clean").map_err(sql)?.as_deref() == Some("1");
    let stored_key = meta(&conn, "public_key")
        .map_err(sql)?
        .and_then(|v| hex::decode(v).ok())
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
        .and_then(|b| VerifyingKey::from_bytes(&b).ok());
    let key = match (pubkey, &stored_key) {
        (Some(k), _) => Some(*k),
        (None, Some(k)) => {
            report.warnings.push(format!(
                "{}: no --pubkey given: checkpoints were checked against the key stored in the \
                 file, which proves consistency but not authorship",
                file.display()
            ));
            Some(*k)
        }
        (None, None) => None,
    };
    let found = |seq, problem, detail: String| Finding {
        file: file.to_path_buf(),
        seq,
        problem,
        detail,
    };

    let Some(prev_hash) = prev_hash.filter(|h| first_seq > 1 || *h == GENESIS) else {
        report.finding = Some(found(
            first_seq,
            Problem::BrokenLink,
            "meta.prev_hash is malformed, or names a predecessor although the file starts the \
             chain (first_seq 1)"
                .into(),
        ));
        return Ok((0, GENESIS));
    };
    if first_seq == 0 {
        report.finding = Some(found(0, Problem::BrokenLink, "meta.first_seq is 0".into()));
        return Ok((0, GENESIS));
    }
    if let Some((last_seq, last_hash)) = link
        && (first_seq != last_seq + 1 || prev_hash != last_hash)
    {
        report.finding = Some(found(
            first_seq,
            Problem::BrokenLink,
            format!(
                "file starts at seq {first_seq} but does not continue the previous file (ends at {last_seq})"
            ),
        ));
        return Ok((0, GENESIS));
    }

    let mut checkpoints: BTreeMap<u64, (Vec<u8>, i64, Vec<u8>)> = BTreeMap::new();
    {
        let mut stmt = conn
            .prepare("SELECT seq, hash, ts_ms, signature FROM checkpoints ORDER BY seq")
            .map_err(sql)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?))))
            .map_err(sql)?;
        for row in rows {
            let (seq, value) = row.map_err(sql)?;
            checkpoints.insert(seq, value);
        }
    }
    report.checkpoints += checkpoints.len() as u64;

    let mut stmt = conn
        .prepare("SELECT seq, body, hash FROM records ORDER BY seq")
        .map_err(sql)?;
    let mut rows = stmt
        .query_map([], |r| {
            Ok(Row {
                seq: r.get(0)?,
                body: r.get(1)?,
                hash: r.get(2)?,
            })
        })
        .map_err(sql)?
        .peekable();
    let mut expected = first_seq;
    let mut prev = prev_hash;
    let mut last_checkpoint = 0;
    while let Some(row) = rows.next() {
        let row = row.map_err(sql)?;
        report.first_seq.get_or_insert(row.seq);
        if row.seq != expected {
            report.finding = Some(found(
                expected,
                Problem::Deleted,
                format!(
                    "records {expected}..{} are missing",
                    row.seq.saturating_sub(1)
                ),
            ));
            return Ok((0, GENESIS));
        }
        if row.seq == first_seq
            && first_seq > 1
            && let Some(detail) = super::head::rotation_record_problem(
                Some(row.body.as_slice()),
                first_seq,
                &prev_hash,
            )
        {
            report.finding = Some(found(row.seq, Problem::BrokenLink, detail));
            return Ok((0, GENESIS));
        }
        let computed = chain_hash(row.seq, &prev, &row.body);
        if row.hash[..] != computed[..] {
            let next = match rows.peek() {
                Some(Ok(next)) => Some((next.seq, body_seq(&next.body))),
                _ => None,
            };
            let (problem, detail) = classify(&row, next);
            report.finding = Some(found(row.seq, problem, detail));
            return Ok((0, GENESIS));
        }
        if let Some((hash, ts, signature)) = checkpoints.get(&row.seq) {
            if let Some(problem) = check_signature(key.as_ref(), row.seq, hash, *ts, signature) {
                report.finding = Some(found(row.seq, Problem::ForgedCheckpoint, problem));
                return Ok((0, GENESIS));
            }
            if hash[..] != computed[..] {
                report.finding = Some(found(
                    row.seq,
                    Problem::Modified,
                    format!(
                        "the chain does not match the signed checkpoint: records after seq \
                         {last_checkpoint} were rewritten"
                    ),
                ));
                return Ok((0, GENESIS));
            }
            last_checkpoint = row.seq;
        }
        if let Some(anchor) = anchors.get(&row.seq) {
            if anchor[..] != computed[..] {
                report.finding = Some(found(
                    row.seq,
                    Problem::Modified,
                    "the chain does not match the anchored checkpoint held off the host: \
                     records up to here were rewritten"
                        .into(),
                ));
                return Ok((0, GENESIS));
            }
            report.anchors_matched += 1;
            report.last_anchor = Some(row.seq);
        }
        prev = computed;
        expected = row.seq + 1;
        report.records += 1;
    }
    let last_seq = expected - 1;
    report.last_seq = last_seq;
    report.last_checkpoint = last_checkpoint;
    // Checkpoints past the last record: the records they sealed were removed.
    if let Some((&seq, (_, ts, signature))) = checkpoints.range(expected..).next() {
        let forged = checkpoints
            .get(&seq)
            .and_then(|(hash, _, _)| check_signature(key.as_ref(), seq, hash, *ts, signature));
        report.finding = Some(match forged {
            Some(problem) => found(seq, Problem::ForgedCheckpoint, problem),
            None => found(
                expected,
                Problem::Truncated,
                format!("a signed checkpoint covers seq {seq}, but the log ends at seq {last_seq}"),
            ),
        });
        return Ok((0, GENESIS));
    }
    // Checkpoints that name a sequence no record has (within the range) were inserted.
    if let Some((&seq, _)) = checkpoints
        .range(..expected)
        .find(|(seq, _)| **seq < first_seq)
    {
        report.finding = Some(found(
            seq,
            Problem::ForgedCheckpoint,
            "checkpoint for a sequence number this file does not hold".into(),
        ));
        return Ok((0, GENESIS));
    }
    if last_seq < first_seq {
        // An empty file: a forger who removed every record and checkpoint leaves one.
        report.finding = Some(found(
            first_seq,
            Problem::NoCheckpoint,
            "the file holds no records and no signed checkpoint".into(),
        ));
        return Ok((0, GENESIS));
    }
    if last_checkpoint == 0 {
        report.finding = Some(found(
            first_seq,
            Problem::NoCheckpoint,
            format!(
                "records {first_seq}..{last_seq} are sealed by no signed checkpoint (the \
                 daemon seals the first commit of every file: checkpoints were deleted, or \
                 another program wrote the file)"
            ),
        ));
        return Ok((0, GENESIS));
    }
    if last_seq > last_checkpoint {
        if clean {
            report.finding = Some(found(
                last_checkpoint + 1,
                Problem::Truncated,
                format!(
                    "the log was closed cleanly but records {}..{last_seq} are not covered by \
                     its final checkpoint (the tail was truncated or records were appended)",
                    last_checkpoint + 1
                ),
            ));
            return Ok((0, GENESIS));
        }
        report.warnings.push(format!(
            "{}: records {}..{last_seq} are not yet sealed by a checkpoint (the daemon is running \
             or stopped uncleanly)",
            file.display(),
            last_checkpoint + 1
        ));
    }
    Ok((last_seq, prev))
}

/// Tells modification, insertion and reordering apart from what the bodies say.
fn classify(row: &Row, next: Option<(u64, Option<u64>)>) -> (Problem, String) {
    match body_seq(&row.body) {
        None => (
            Problem::Modified,
            "the record is not a valid canonical record".into(),
        ),
        Some(own) if own != row.seq => {
            let next_is_this = next.is_some_and(|(_, b)| b == Some(row.seq));
            if own > row.seq && next_is_this {
                (
                    Problem::Reordered,
                    format!("holds record {own}; record {} comes after it", row.seq),
                )
            } else if own > row.seq {
                (
                    Problem::Deleted,
                    format!(
                        "holds record {own}: records before it were removed and the rest renumbered"
                    ),
                )
            } else if next_is_this {
                (
                    Problem::Inserted,
                    format!(
                        "a copy of record {own} was inserted here; the original seq {} follows it",
                        row.seq
                    ),
                )
            } else {
                (
                    Problem::Reordered,
                    format!("holds record {own}, which belongs earlier"),
                )
            }
        }
        Some(_) => {
            if next.is_some_and(|(_, b)| b == Some(row.seq)) {
                (
                    Problem::Inserted,
                    "a record was inserted here; the original record with this seq follows it"
                        .into(),
                )
            } else {
                (
                    Problem::Modified,
                    "the record's content does not match its hash and the chain".into(),
                )
            }
        }
    }
}

pub(super) fn check_signature(
    key: Option<&VerifyingKey>,
    seq: u64,
    hash: &[u8],
    ts: i64,
    signature: &[u8],
) -> Option<String> {
    let Some(key) = key else {
        return Some("no public key to check the checkpoint with".into());
    };
    let Ok(hash) = <[u8; 32]>::try_from(hash) else {
        return Some("malformed checkpoint hash".into());
    };
    let Ok(signature) = <[u8; 64]>::try_from(signature) else {
        return Some("malformed signature".into());
    };
    let message = checkpoint_message(seq, &hash, ts);
    match key.verify(&message, &Signature::from_bytes(&signature)) {
        Ok(()) => None,
        Err(_) => Some("the signature does not verify with the public key".into()),
    }
}
