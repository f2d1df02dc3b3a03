//! Audit sinks: every committed record forwarded to a SIEM, at least once, from a persisted
//! cursor. Two kinds share this loop: RFC 5424 syslog over TLS ([`syslog`]) and OTLP logs over
//! HTTP ([`otlp`]).
//!
//! A sink reads the committed log, never the writer's queue: it opens the database
//! read-only and sends the records after its cursor (the last sequence number delivered) in
//! order, in batches. The cursor moves only once a batch is delivered: at once when the
//! receiver acknowledged it (OTLP's 2xx), or, for a transport without acknowledgement
//! (syslog), once the connection has stayed up for [`CONFIRM`] after the write. A failure
//! sends everything after the cursor again. So delivery is at least once (a receiver drops
//! duplicates by the records' `seq`), across restarts too (the cursor is a file, replaced
//! durably). Admission never waits for a sink: a slow or unreachable receiver only makes the
//! sink fall behind (the lag is a metric), and it catches up from its cursor when the
//! receiver is back, reading rotated files where the records it still owes now live.

pub mod otlp;
mod syslog;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use super::AuditError;
use super::rotate::rotated_files;
use crate::config::audit::{SinkConfig, SinkKind};

/// Records per batch (one read, one write or request, one cursor update).
const BATCH: usize = 256;
/// How often an idle sink looks for new records.
const POLL: Duration = Duration::from_millis(200);
/// Connecting and sending a batch must each finish within this.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// An unacknowledged write counts as delivered once its connection has stayed up this long.
const CONFIRM: Duration = Duration::from_millis(500);
/// Retry backoff after a failure: doubles from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(30));

/// One committed record, as the log holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    /// The canonical JSON the chain hash covers, byte for byte.
    pub body: Vec<u8>,
    /// The record's chain hash (32 bytes).
    pub hash: Vec<u8>,
}

/// What a transport could say about a batch it sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// The receiver acknowledged it.
    Delivered,
    /// Written, not acknowledged: delivered once the connection stays up for [`CONFIRM`].
    Unconfirmed,
}

/// How a sink delivers (boxed: both are large, and there is one per sink).
enum Transport {
    Syslog(Box<syslog::Syslog>),
    Otlp(Box<otlp::OtlpLogs>),
}

impl Transport {
    async fn send(&mut self, entries: &[Entry]) -> Result<Sent, String> {
        match self {
            Transport::Syslog(t) => t.send(entries).await,
            Transport::Otlp(t) => t.send(entries).await,
        }
    }

    /// Whether a connection with unconfirmed writes on it was found gone.
    fn lost(&mut self) -> bool {
        match self {
            Transport::Syslog(t) => t.lost(),
            Transport::Otlp(_) => false,
        }
    }

    fn reset(&mut self) {
        match self {
            Transport::Syslog(t) => t.reset(),
            Transport::Otlp(_) => {}
        }
    }
}

/// A configured sink, ready to run.
pub struct Sink {
    cfg: SinkConfig,
    db: PathBuf,
    transport: Transport,
}

impl Sink {
    /// Checks the sink's TLS material (CA, client certificate and key) so that a broken
    /// sink fails the start-up, not silently later. Call within the runtime.
    pub fn new(cfg: &SinkConfig, db: &Path) -> Result<Sink, AuditError> {
        let transport = match &cfg.kind {
            SinkKind::SyslogTls {
                address,
                server_name,
                ca,
                client,
            } => Transport::Syslog(Box::new(syslog::Syslog::new(
                &cfg.name,
                &cfg.hostname,
                address,
                server_name,
                ca,
                client.as_ref(),
            )?)),
            SinkKind::OtlpHttp(endpoint) => Transport::Otlp(Box::new(otlp::OtlpLogs::new(
                &cfg.name,
                &cfg.hostname,
                endpoint,
                IO_TIMEOUT,
            )?)),
        };
        Ok(Sink {
            cfg: cfg.clone(),
            db: db.to_path_buf(),
            transport,
        })
    }

    /// Runs until the process ends: delivers what was committed, waits, retries.
    pub async fn run(mut self) {
        let name = self.cfg.name.clone();
        let metrics = crate::metrics::global();
        // `confirmed`: delivered (the persisted cursor); `sent`: written, not yet confirmed.
        let mut confirmed = match read_cursor(&self.cfg.cursor) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(sink = %name, error = %e, "audit sink cursor unreadable: the sink does not run");
                metrics.audit_sink_failure(&name);
                return;
            }
        };
        let mut sent = confirmed;
        let mut sent_at: Option<Instant> = None;
        let mut backoff = BACKOFF.0;
        let mut failing = false;
        loop {
            if self.transport.lost() {
                // Gone: what it may not have received goes again on the next connection.
                sent = confirmed;
                sent_at = None;
                self.failed(&mut failing, "the receiver closed the connection");
            } else if sent > confirmed && sent_at.is_some_and(|t| t.elapsed() >= CONFIRM) {
                self.confirm(&mut confirmed, sent, &mut failing).await;
                sent_at = None;
            }
            let head = metrics.audit_health().head_seq;
            metrics.audit_sink_lag(&name, head.saturating_sub(confirmed));
            let db = self.db.clone();
            let read = tokio::task::spawn_blocking(move || read_batch(&db, sent, BATCH)).await;
            let batch = match read {
                Ok(Ok(batch)) => batch,
                Ok(Err(e)) => {
                    self.failed(&mut failing, &format!("reading the log: {e}"));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF.1);
                    continue;
                }
                Err(e) => {
                    self.failed(&mut failing, &format!("reading the log: {e}"));
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            };
            if batch.records.is_empty() {
                tokio::time::sleep(POLL).await;
                continue;
            }
            if batch.skipped > 0 {
                // Retention removed files the sink had not delivered: say so, go on.
                tracing::error!(sink = %name, records = batch.skipped, "audit sink: records removed by retention before delivery");
            }
            let outcome =
                match tokio::time::timeout(IO_TIMEOUT, self.transport.send(&batch.records)).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err("timed out".to_owned()),
                };
            let last = batch.records.last().map_or(sent, |e| e.seq);
            match outcome {
                Ok(Sent::Delivered) => {
                    self.confirm(&mut confirmed, last, &mut failing).await;
                    sent = last;
                    sent_at = None;
                }
                Ok(Sent::Unconfirmed) => {
                    sent = last;
                    sent_at.get_or_insert_with(Instant::now);
                }
                Err(why) => {
                    self.transport.reset();
                    sent = confirmed;
                    sent_at = None;
                    self.failed(&mut failing, &why);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF.1);
                    continue;
                }
            }
            backoff = BACKOFF.0;
        }
    }

    /// Moves the cursor to `seq` (delivered), durably, and counts the records.
    async fn confirm(&self, confirmed: &mut u64, seq: u64, failing: &mut bool) {
        let name = &self.cfg.name;
        let path = self.cfg.cursor.clone();
        match tokio::task::spawn_blocking(move || write_cursor(&path, seq)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(sink = %name, error = %e, "audit sink cursor not saved: a restart resends from the last saved one")
            }
            Err(e) => tracing::error!(sink = %name, error = %e, "audit sink cursor task failed"),
        }
        crate::metrics::global().audit_sink_shipped(name, seq.saturating_sub(*confirmed));
        *confirmed = seq;
        if *failing {
            *failing = false;
            tracing::info!(sink = %name, seq, "audit sink delivering again");
        }
    }

    /// Counts a failure; logs it when the sink starts failing (not on every retry).
    fn failed(&self, failing: &mut bool, why: &str) {
        crate::metrics::global().audit_sink_failure(&self.cfg.name);
        if !*failing {
            *failing = true;
            tracing::warn!(sink = %self.cfg.name, target = %self.cfg.target(), error = why, "audit sink cannot deliver; retrying (requests are not affected)");
        }
    }
}

/// Records after a cursor, from the file that holds them.
#[derive(Debug, Default)]
struct Batch {
    records: Vec<Entry>,
    /// Records between the cursor and the first one still on disk (removed by retention).
    skipped: u64,
}

/// Up to `limit` records after `after`, in order: from the live file, or from the rotated
/// file that holds `after + 1` when rotation moved it.
fn read_batch(db: &Path, after: u64, limit: usize) -> Result<Batch, rusqlite::Error> {
    let live = open(db)?;
    let live_first = super::writer::meta(&live, "first_seq")?
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1);
    let next = after.saturating_add(1);
    let mut files: Vec<(u64, PathBuf)> = Vec::new();
    // Rotated files are listed only when the records owed are no longer in the live file
    // (not on every poll of a sink that keeps up).
    if next < live_first {
        for file in rotated_files(db) {
            if let Some(first) = file
                .extension()
                .and_then(|e| e.to_str())
                .and_then(|e| e.parse::<u64>().ok())
            {
                files.push((first, file));
            }
        }
    }
    files.push((live_first, db.to_path_buf()));
    // The last file starting at or before `next`; if none (removed by retention), the first.
    let (index, skipped) = match files.iter().rposition(|(first, _)| *first <= next) {
        Some(i) => (i, 0),
        None => (0, files[0].0.saturating_sub(next)),
    };
    let mut batch = Batch {
        skipped,
        ..Batch::default()
    };
    for (_, path) in &files[index..] {
        let conn = if path == db { None } else { Some(open(path)?) };
        let conn = conn.as_ref().unwrap_or(&live);
        let from = batch.records.last().map_or(after, |e| e.seq);
        let mut stmt = conn
            .prepare("SELECT seq, body, hash FROM records WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
        let want = (limit - batch.records.len()) as i64;
        let rows = stmt.query_map(rusqlite::params![from as i64, want], |r| {
            Ok(Entry {
                seq: r.get::<_, i64>(0)? as u64,
                body: r.get(1)?,
                hash: r.get(2)?,
            })
        })?;
        for row in rows {
            batch.records.push(row?);
        }
        if batch.records.len() >= limit {
            break;
        }
    }
    Ok(batch)
}

fn open(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(2))?;
    Ok(conn)
}

/// The cursor: the last sequence number delivered (0: none yet).
fn read_cursor(path: &Path) -> std::io::Result<u64> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.trim().parse().map_err(|_| {
            std::io::Error::other(format!("{}: not a sequence number", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

/// Replaces the cursor file durably (written beside it, synced, renamed).
fn write_cursor(path: &Path, seq: u64) -> std::io::Result<()> {
    let tmp = path.with_extension("cursor.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    std::io::Write::write_all(&mut file, format!("{seq}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_survives_a_restart_and_starts_at_zero() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.db.sink-siem.cursor");
        assert_eq!(read_cursor(&path).expect("absent is zero"), 0);
        write_cursor(&path, 41).expect("written");
        assert_eq!(read_cursor(&path).expect("read"), 41);
        std::fs::write(&path, "x").expect("write");
        assert!(
            read_cursor(&path).is_err(),
            "garbage is an error, not a restart from 0"
        );
    }
}
