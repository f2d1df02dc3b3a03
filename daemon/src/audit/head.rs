//! The head check: what the daemon proves about a log before it appends to it.
//!
//! A daemon that signs a checkpoint over whatever chain it finds would launder a forgery:
//! someone who rewrote records, recomputed the chain and deleted the checkpoints would get
//! fresh, valid signatures over the forged records at the next start. So before the writer
//! adds a record (and signs anything) it checks, with its own public key, that the file's
//! newest checkpoint is its own signature, that the records from that checkpoint to the head
//! chain onto it, and that a file continuing a rotated one begins with the `rotate` record
//! that links them. That costs one signature and the unsealed tail, not the whole file.
//! Anything else is refused: the operator investigates with `airlockd audit inspect`.
//!
//! Records before the newest checkpoint are not re-read here; `airlockd audit verify`
//! checks them offline.

use ed25519_dalek::VerifyingKey;
use rusqlite::{Connection, OptionalExtension};

use super::record::{GENESIS, chain_hash};
use super::verify::{Problem, check_signature};
use super::writer::meta;

#[cfg(test)]
mod tests;

/// Where a log stands, once it passed the check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// The file's first sequence number (`meta.first_seq`).
    pub first_seq: u64,
    /// The chain hash the first record links to (`meta.prev_hash`).
    pub prev_hash: [u8; 32],
    /// The last record (`first_seq - 1` and `prev_hash` when the file holds none).
    pub seq: u64,
    pub hash: [u8; 32],
    /// The newest signed checkpoint, if the file has one (an empty file has none).
    pub checkpoint: Option<u64>,
    /// `meta.clean`: the last writer closed the file (final checkpoint written).
    pub clean: bool,
    /// `meta.previous_file`: the rotated file this one continues.
    pub previous_file: Option<String>,
}

impl Head {
    /// Records after the newest checkpoint (written before a crash).
    pub fn unsealed(&self) -> u64 {
        self.seq - self.checkpoint.unwrap_or(self.first_seq - 1)
    }

    /// Whether the file holds no record yet.
    pub fn is_empty(&self) -> bool {
        self.seq < self.first_seq
    }
}

/// Why a log may not be extended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub seq: u64,
    pub problem: Problem,
    pub detail: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seq {}: {}: {}",
            self.seq,
            self.problem.as_str(),
            self.detail
        )
    }
}

/// Checks the file behind `conn` against `key` (see the module docs). The outer error is a
/// database that cannot be read; the inner one a log that must not be extended.
pub fn check(
    conn: &Connection,
    key: &VerifyingKey,
) -> Result<Result<Head, Refusal>, rusqlite::Error> {
    let refuse = |seq: u64,
                  problem: Problem,
                  detail: String|
     -> Result<Result<Head, Refusal>, rusqlite::Error> {
        Ok(Err(Refusal {
            seq,
            problem,
            detail,
        }))
    };
    let Some(first_seq) = meta(conn, "first_seq")?.and_then(|v| v.parse::<u64>().ok()) else {
        return refuse(
            1,
            Problem::BrokenLink,
            "meta.first_seq is missing or not a number".into(),
        );
    };
    if first_seq == 0 {
        return refuse(0, Problem::BrokenLink, "meta.first_seq is 0".into());
    }
    let prev_hash = match meta(conn, "prev_hash")? {
        None => GENESIS,
        Some(text) => match hex::decode(&text).ok().and_then(|v| v.try_into().ok()) {
            Some(hash) => hash,
            None => {
                return refuse(
                    first_seq,
                    Problem::BrokenLink,
                    "meta.prev_hash is not a 32-byte hex hash".into(),
                );
            }
        },
    };
    if first_seq == 1 && prev_hash != GENESIS {
        return refuse(
            1,
            Problem::BrokenLink,
            "the file starts the chain (first_seq 1) but meta.prev_hash is not the genesis hash"
                .into(),
        );
    }
    let clean = meta(conn, "clean")?.as_deref() == Some("1");
    let previous_file = meta(conn, "previous_file")?;
    let mut head = Head {
        first_seq,
        prev_hash,
        seq: first_seq - 1,
        hash: prev_hash,
        checkpoint: None,
        clean,
        previous_file,
    };
    let checkpoint: Option<(u64, Vec<u8>, i64, Vec<u8>)> = conn
        .query_row(
            "SELECT seq, hash, ts_ms, signature FROM checkpoints ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let bounds: (Option<u64>, Option<u64>) =
        conn.query_row("SELECT MIN(seq), MAX(seq) FROM records", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let (Some(min_seq), Some(_)) = bounds else {
        // No records: a new file, or a rotation successor whose first commit failed.
        return match checkpoint {
            Some((seq, ..)) => refuse(
                first_seq,
                Problem::Truncated,
                format!("a checkpoint covers seq {seq}, but the file holds no records"),
            ),
            None => Ok(Ok(head)),
        };
    };
    if min_seq != first_seq {
        return refuse(
            first_seq,
            Problem::Deleted,
            format!(
                "the file starts at seq {first_seq} (meta.first_seq) but its first record is seq {min_seq}"
            ),
        );
    }
    if first_seq > 1
        && let Some(detail) = rotation_link_problem(conn, first_seq, &prev_hash)?
    {
        return refuse(first_seq, Problem::BrokenLink, detail);
    }
    let Some((cp_seq, cp_hash, cp_ts, cp_signature)) = checkpoint else {
        return refuse(
            first_seq,
            Problem::NoCheckpoint,
            "the file holds records but no signed checkpoint (checkpoints were deleted, or \
             another program wrote it)"
                .into(),
        );
    };
    if let Some(problem) = check_signature(Some(key), cp_seq, &cp_hash, cp_ts, &cp_signature) {
        return refuse(
            cp_seq,
            Problem::ForgedCheckpoint,
            format!("the newest checkpoint is not this daemon's: {problem}"),
        );
    }
    if cp_seq < first_seq {
        return refuse(
            cp_seq,
            Problem::ForgedCheckpoint,
            "checkpoint for a sequence number this file does not hold".into(),
        );
    }
    // The hash the checkpointed record chains to: its predecessor's stored hash. That one
    // is not proven here, but if it was altered the checkpointed record no longer matches.
    let mut prev = if cp_seq == first_seq {
        prev_hash
    } else {
        let stored: Option<Vec<u8>> = conn
            .query_row(
                "SELECT hash FROM records WHERE seq = ?1",
                [cp_seq - 1],
                |r| r.get(0),
            )
            .optional()?;
        match stored.and_then(|h| <[u8; 32]>::try_from(h).ok()) {
            Some(h) => h,
            None => {
                return refuse(
                    cp_seq - 1,
                    Problem::Deleted,
                    "the record before the newest checkpoint is missing or malformed".into(),
                );
            }
        }
    };
    let mut stmt =
        conn.prepare("SELECT seq, body, hash FROM records WHERE seq >= ?1 ORDER BY seq")?;
    let mut rows = stmt.query([cp_seq])?;
    let mut expected = cp_seq;
    while let Some(row) = rows.next()? {
        let seq: u64 = row.get(0)?;
        let body: Vec<u8> = row.get(1)?;
        let stored: Vec<u8> = row.get(2)?;
        if seq != expected {
            let detail = if expected == cp_seq {
                format!("the newest checkpoint covers seq {cp_seq}, which the file does not hold")
            } else {
                format!("records {expected}..{} are missing", seq - 1)
            };
            let problem = if expected == cp_seq {
                Problem::Truncated
            } else {
                Problem::Deleted
            };
            return refuse(expected, problem, detail);
        }
        let computed = chain_hash(seq, &prev, &body);
        if seq == cp_seq && cp_hash[..] != computed[..] {
            return refuse(
                seq,
                Problem::Modified,
                "the record does not match its signed checkpoint (the chain was rewritten)".into(),
            );
        }
        if stored[..] != computed[..] {
            return refuse(
                seq,
                Problem::Modified,
                "the record's content does not match its hash and the chain".into(),
            );
        }
        prev = computed;
        expected = seq + 1;
    }
    if expected == cp_seq {
        return refuse(
            cp_seq,
            Problem::Truncated,
            format!("the newest checkpoint covers seq {cp_seq}, but the file ends before it"),
        );
    }
    head.seq = expected - 1;
    head.hash = prev;
    head.checkpoint = Some(cp_seq);
    if clean && head.seq > cp_seq {
        return refuse(
            cp_seq + 1,
            Problem::Truncated,
            format!(
                "the file was closed cleanly but records {}..{} are not covered by its final \
                 checkpoint (records were appended, or later checkpoints deleted)",
                cp_seq + 1,
                head.seq
            ),
        );
    }
    Ok(Ok(head))
}

/// A file that does not start the chain must begin with the `rotate` record naming the last
/// sequence number and hash of the file before it; `None` when it does.
pub fn rotation_link_problem(
    conn: &Connection,
    first_seq: u64,
    prev_hash: &[u8; 32],
) -> Result<Option<String>, rusqlite::Error> {
    let body: Option<Vec<u8>> = conn
        .query_row(
            "SELECT body FROM records WHERE seq = ?1",
            [first_seq],
            |r| r.get(0),
        )
        .optional()?;
    Ok(rotation_record_problem(
        body.as_deref(),
        first_seq,
        prev_hash,
    ))
}

/// Checks that `body` (the file's first record) is a `rotate` record linking to
/// (`first_seq - 1`, `prev_hash`).
pub fn rotation_record_problem(
    body: Option<&[u8]>,
    first_seq: u64,
    prev_hash: &[u8; 32],
) -> Option<String> {
    let record: Option<serde_json::Value> = body.and_then(|b| serde_json::from_slice(b).ok());
    let linked = record.as_ref().is_some_and(|r| {
        r.get("kind").and_then(|k| k.as_str()) == Some("rotate")
            && r.get("seq").and_then(serde_json::Value::as_u64) == Some(first_seq)
            && r.get("previous_last_seq")
                .and_then(serde_json::Value::as_u64)
                == Some(first_seq - 1)
            && r.get("previous_last_hash").and_then(|h| h.as_str())
                == Some(hex::encode(prev_hash).as_str())
    });
    (!linked).then(|| {
        format!(
            "the file starts at seq {first_seq} but its first record is not a `rotate` record \
             linking to seq {} of the previous file (records before it were removed?)",
            first_seq - 1
        )
    })
}

/// The newest rotated file of `db`, checked like a live file: its last (seq, hash) and name.
/// Used when the live file is missing: a new one continues this chain.
pub(super) fn predecessor(
    db: &std::path::Path,
    key: &VerifyingKey,
) -> Result<Option<(u64, [u8; 32], String)>, super::AuditError> {
    let Some(file) = super::rotate::rotated_files(db).pop() else {
        return Ok(None);
    };
    let sql = |source| super::AuditError::Sqlite {
        path: file.clone(),
        source,
    };
    let conn = Connection::open_with_flags(
        &file,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql)?;
    let head = check(&conn, key)
        .map_err(sql)?
        .map_err(|refusal| super::AuditError::Refused {
            path: file.clone(),
            refusal,
        })?;
    Ok(Some((head.seq, head.hash, file.display().to_string())))
}
