//! Offline tools over an audit database: JSON-lines export for SIEMs, online backup, and
//! `inspect` (the daemon's head check, for an operator whose daemon refused a log).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::AuditError;

/// What to export.
#[derive(Debug, Default)]
pub struct ExportFilter {
    /// Only records at or after this time (ms since the epoch, UTC).
    pub since_ms: Option<i64>,
    /// Only records of this tenant.
    pub tenant: Option<String>,
    /// Also emit each signed checkpoint (`"kind":"checkpoint"`) after the record it seals,
    /// so a SIEM holds anchors that a forger on this host cannot rewrite.
    pub checkpoints: bool,
}

/// Writes every matching record as one JSON object per line, with its chain hash added as
/// `"hash"` (hex). Returns the number written.
pub fn export(db: &Path, filter: &ExportFilter, out: &mut dyn Write) -> Result<u64, AuditError> {
    let sql = |source| AuditError::Sqlite {
        path: db.to_path_buf(),
        source,
    };
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(sql)?;
    let mut anchors = std::collections::HashMap::new();
    if filter.checkpoints {
        let mut stmt = conn
            .prepare("SELECT seq, hash, ts_ms, signature FROM checkpoints")
            .map_err(sql)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, u64>(0)?,
                    (
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Vec<u8>>(3)?,
                    ),
                ))
            })
            .map_err(sql)?;
        for row in rows {
            let (seq, anchor) = row.map_err(sql)?;
            anchors.insert(seq, anchor);
        }
    }
    let mut stmt = conn
        .prepare("SELECT body, hash FROM records ORDER BY seq")
        .map_err(sql)?;
    let mut rows = stmt.query([]).map_err(sql)?;
    let mut n = 0;
    let io = |source| AuditError::Io {
        path: "<stdout>".into(),
        source,
    };
    while let Some(row) = rows.next().map_err(sql)? {
        let body: Vec<u8> = row.get(0).map_err(sql)?;
        let hash: Vec<u8> = row.get(1).map_err(sql)?;
        let Ok(serde_json::Value::Object(mut record)) = serde_json::from_slice(&body) else {
            return Err(AuditError::Format("a record is not a JSON object".into()));
        };
        if let Some(since) = filter.since_ms
            && record.get("ts_ms").and_then(serde_json::Value::as_i64) < Some(since)
        {
            continue;
        }
        if let Some(tenant) = &filter.tenant
            && record.get("tenant").and_then(serde_json::Value::as_str) != Some(tenant)
        {
            continue;
        }
        let seq = record.get("seq").and_then(serde_json::Value::as_u64);
        record.insert("hash".into(), hex::encode(hash).into());
        serde_json::to_writer(&mut *out, &record).map_err(|e| AuditError::Format(e.to_string()))?;
        out.write_all(b"\n").map_err(io)?;
        n += 1;
        if let Some((hash, ts_ms, signature)) = seq.and_then(|s| anchors.get(&s)) {
            let anchor = serde_json::json!({
                "kind": "checkpoint",
                "seq": seq,
                "hash": hex::encode(hash),
                "ts_ms": ts_ms,
                "signature": hex::encode(signature),
            });
            serde_json::to_writer(&mut *out, &anchor)
                .map_err(|e| AuditError::Format(e.to_string()))?;
            out.write_all(b"\n").map_err(io)?;
        }
    }
    out.flush().map_err(io)?;
    Ok(n)
}

/// Copies a live database with SQLite's online backup API (the daemon keeps writing).
pub fn backup(db: &Path, to: &Path) -> Result<(), AuditError> {
    let src =
        Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|source| {
            AuditError::Sqlite {
                path: db.to_path_buf(),
                source,
            }
        })?;
    let mut dst = Connection::open(to).map_err(|source| AuditError::Sqlite {
        path: to.to_path_buf(),
        source,
    })?;
    let backup =
        rusqlite::backup::Backup::new(&src, &mut dst).map_err(|source| AuditError::Sqlite {
            path: to.to_path_buf(),
            source,
        })?;
    backup
        .run_to_completion(1024, Duration::from_millis(10), None)
        .map_err(|source| AuditError::Sqlite {
            path: to.to_path_buf(),
            source,
        })
}

/// What `audit inspect` prints about `db` (meta, records, newest checkpoint) and the head
/// check's verdict with `pubkey` (or the key stored in the file): `None` when the daemon
/// would extend the log.
pub fn inspect(
    db: &Path,
    pubkey: Option<&Path>,
) -> Result<(String, Option<super::head::Refusal>), AuditError> {
    use std::fmt::Write as _;
    let sql = |source| AuditError::Sqlite {
        path: db.to_path_buf(),
        source,
    };
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(sql)?;
    let meta = |key: &str| super::writer::meta(&conn, key).map_err(sql);
    if meta("format")?.is_none() {
        return Err(AuditError::Format(format!(
            "{}: not an audit log (no meta.format)",
            db.display()
        )));
    }
    let (key, key_source) = match pubkey {
        Some(path) => (
            super::keys::read_public(path)?,
            format!("{} (--pubkey)", path.display()),
        ),
        None => {
            let stored = meta("public_key")?
                .and_then(|v| hex::decode(v).ok())
                .and_then(|v| <[u8; 32]>::try_from(v).ok())
                .and_then(|b| ed25519_dalek::VerifyingKey::from_bytes(&b).ok())
                .ok_or_else(|| {
                    AuditError::Format(format!(
                        "{}: no usable public key stored in the file: pass --pubkey",
                        db.display()
                    ))
                })?;
            (
                stored,
                "the key stored in the file (proves consistency, not authorship: pass --pubkey)"
                    .to_owned(),
            )
        }
    };
    let mut out = String::new();
    let text = |v: Option<String>| v.unwrap_or_else(|| "(missing)".into());
    let _ = writeln!(out, "file: {}", db.display());
    let _ = writeln!(out, "first seq: {}", text(meta("first_seq")?));
    if let Some(previous) = meta("previous_file")? {
        let _ = writeln!(out, "continues: {previous}");
    }
    let (count, min, max): (u64, Option<u64>, Option<u64>) = conn
        .query_row(
            "SELECT COUNT(*), MIN(seq), MAX(seq) FROM records",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(sql)?;
    match (min, max) {
        (Some(min), Some(max)) => {
            let _ = writeln!(out, "records: {count} (seq {min}..{max})");
        }
        _ => {
            let _ = writeln!(out, "records: none");
        }
    }
    let newest: Option<(u64, i64)> = conn
        .query_row(
            "SELECT seq, ts_ms FROM checkpoints ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(sql)?;
    let checkpoints: u64 = conn
        .query_row("SELECT COUNT(*) FROM checkpoints", [], |r| r.get(0))
        .map_err(sql)?;
    match newest {
        Some((seq, ts_ms)) => {
            let _ = writeln!(
                out,
                "checkpoints: {checkpoints}, newest at seq {seq} ({})",
                format_ms(ts_ms)
            );
            if let Some(max) = max.filter(|m| *m > seq) {
                let _ = writeln!(
                    out,
                    "unsealed: records {}..{max} (list them: airlockd audit export --db {} | jq 'select(.seq > {seq})')",
                    seq + 1,
                    db.display()
                );
            }
        }
        None => {
            let _ = writeln!(out, "checkpoints: none");
        }
    }
    let clean = meta("clean")?.as_deref() == Some("1");
    let _ = writeln!(
        out,
        "closed cleanly: {}",
        if clean {
            "yes"
        } else {
            "no (running, or crashed)"
        }
    );
    let _ = writeln!(out, "key: {key_source}");
    let verdict = super::head::check(&conn, &key).map_err(sql)?;
    Ok((out, verdict.err()))
}

/// UTC time of `ms` since the epoch, RFC 3339.
fn format_ms(ms: i64) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// Parses `--since`: RFC 3339 (`2026-01-31T12:00:00Z`) or a date (`2026-01-31`, UTC).
pub fn parse_since(text: &str) -> Result<i64, String> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX));
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    match time::Date::parse(text, &format) {
        Ok(date) => Ok(date.midnight().assume_utc().unix_timestamp() * 1000),
        Err(_) => Err(format!(
            "`{text}` is not an RFC 3339 time (2026-01-31T12:00:00Z) or a date (2026-01-31)"
        )),
    }
}
