//! Offline tools over an audit database: JSON-lines export for SIEMs and online backup.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

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
