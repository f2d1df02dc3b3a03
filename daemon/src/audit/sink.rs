//! Audit sinks: every committed record forwarded to a SIEM as RFC 5424 syslog over TLS
//! (RFC 5425: octet-counted frames on a TLS stream), at least once, from a persisted cursor.
//!
//! A sink reads the committed log, never the writer's queue: it opens the database
//! read-only and sends the records after its cursor (the last sequence number delivered) in
//! order, in batches. Syslog over TLS has no acknowledgement, and a write to a receiver that
//! just went away can succeed locally and be lost, so the cursor moves only once the
//! connection has stayed up for [`CONFIRM`] after a write (the peer's reset or close arrives
//! well within that): a connection found closed or failing sends everything after the
//! cursor again on the next one. So delivery is at least once (a receiver drops duplicates
//! by the records' `seq`), across restarts too (the cursor is a file, replaced durably).
//! Admission never waits for a sink: a slow or unreachable receiver only makes the sink fall
//! behind (the lag is a metric), and it catches up from its cursor when the receiver is
//! back, reading rotated files where the records it still owes now live.
//!
//! Each message's MSG is the record's body exactly as committed (canonical JSON, the bytes
//! the hash chain covers), so an auditor can check a SIEM's copy against the node's signed
//! checkpoints (`docs/audit-guide.md`). HOSTNAME is the node's name, MSGID the record kind.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use rusqlite::{Connection, OpenFlags};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::AuditError;
use super::rotate::rotated_files;
use crate::config::audit::SinkConfig;

/// Records per batch (one read, one write and flush, one cursor update).
const BATCH: usize = 256;
/// How often an idle sink looks for new records.
const POLL: Duration = Duration::from_millis(200);
/// Connecting and writing a batch must each finish within this.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// A write counts as delivered once its connection has stayed up this long after it.
const CONFIRM: Duration = Duration::from_millis(500);
/// Retry backoff after a failure: doubles from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(30));

/// Syslog priority: facility 13 (log audit), severity 6 (informational).
const PRI: u32 = 13 * 8 + 6;

/// A configured sink, ready to run.
pub struct Sink {
    cfg: SinkConfig,
    db: PathBuf,
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl Sink {
    /// Checks the sink's TLS material (CA, client certificate and key) so that a broken
    /// sink fails the start-up, not silently later.
    pub fn new(cfg: &SinkConfig, db: &Path) -> Result<Sink, AuditError> {
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            AuditError::Format(format!("audit.sinks `{}`: {what}: {e}", cfg.name))
        };
        let mut roots = rustls::RootCertStore::empty();
        let ca =
            std::fs::read(&cfg.ca).map_err(|e| bad(&format!("ca {}", cfg.ca.display()), &e))?;
        for cert in CertificateDer::pem_slice_iter(&ca) {
            let cert = cert.map_err(|e| bad("ca", &e))?;
            roots.add(cert).map_err(|e| bad("ca", &e))?;
        }
        if roots.is_empty() {
            return Err(bad("ca", &"no certificate in the file"));
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("tls", &e))?
        .with_root_certificates(roots);
        let config = match &cfg.client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let pem = std::fs::read(cert).map_err(|e| bad("client_cert", &e))?;
                let chain = CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bad("client_cert", &e))?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("client_key", &e))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| bad("client_cert", &e))?
            }
        };
        let server_name =
            ServerName::try_from(cfg.server_name.clone()).map_err(|e| bad("server_name", &e))?;
        Ok(Sink {
            cfg: cfg.clone(),
            db: db.to_path_buf(),
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// Runs until the process ends: delivers what was committed, waits, reconnects.
    pub async fn run(self) {
        let name = self.cfg.name.clone();
        let metrics = crate::metrics::global();
        // `confirmed`: delivered (the persisted cursor); `sent`: written on this connection.
        let mut confirmed = match read_cursor(&self.cfg.cursor) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(sink = %name, error = %e, "audit sink cursor unreadable: the sink does not run");
                metrics.audit_sink_failure(&name);
                return;
            }
        };
        let mut sent = confirmed;
        let mut sent_at: Option<std::time::Instant> = None;
        let mut conn: Option<TlsStream<TcpStream>> = None;
        let mut backoff = BACKOFF.0;
        let mut failing = false;
        loop {
            if let Some(stream) = conn.as_mut() {
                if !alive(stream) {
                    // Gone: what it may not have received goes again on the next connection.
                    conn = None;
                    sent = confirmed;
                    sent_at = None;
                    self.failed(&mut failing, "the receiver closed the connection");
                } else if sent > confirmed && sent_at.is_some_and(|t| t.elapsed() >= CONFIRM) {
                    let path = self.cfg.cursor.clone();
                    match tokio::task::spawn_blocking(move || write_cursor(&path, sent)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::error!(sink = %name, error = %e, "audit sink cursor not saved: a restart resends from the last saved one")
                        }
                        Err(e) => {
                            tracing::error!(sink = %name, error = %e, "audit sink cursor task failed")
                        }
                    }
                    metrics.audit_sink_shipped(&name, sent - confirmed);
                    confirmed = sent;
                    sent_at = None;
                    if failing {
                        failing = false;
                        tracing::info!(sink = %name, seq = confirmed, "audit sink delivering again");
                    }
                }
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
            let mut frames = Vec::with_capacity(batch.records.len() * 512);
            for (_, body) in &batch.records {
                frame(&self.cfg.hostname, body, &mut frames);
            }
            let written = async {
                if conn.is_none() {
                    conn = Some(self.connect().await?);
                }
                let stream = conn
                    .as_mut()
                    .ok_or_else(|| std::io::Error::other("no connection"))?;
                stream.write_all(&frames).await?;
                stream.flush().await
            };
            let error = match tokio::time::timeout(IO_TIMEOUT, written).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("timed out".to_owned()),
            };
            if let Some(why) = error {
                conn = None;
                sent = confirmed;
                sent_at = None;
                self.failed(&mut failing, &why);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF.1);
                continue;
            }
            sent = batch.records.last().map_or(sent, |(seq, _)| *seq);
            sent_at.get_or_insert_with(std::time::Instant::now);
            backoff = BACKOFF.0;
        }
    }

    async fn connect(&self) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(&self.cfg.address).await?;
        tcp.set_nodelay(true)?;
        self.connector.connect(self.server_name.clone(), tcp).await
    }

    /// Counts a failure; logs it when the sink starts failing (not on every retry).
    fn failed(&self, failing: &mut bool, why: &str) {
        crate::metrics::global().audit_sink_failure(&self.cfg.name);
        if !*failing {
            *failing = true;
            tracing::warn!(sink = %self.cfg.name, address = %self.cfg.address, error = why, "audit sink cannot deliver; retrying (requests are not affected)");
        }
    }
}

/// Whether a receiver's connection is still up: a receiver sends nothing, so a readable end
/// of stream (its close) or an error means it went away.
fn alive(stream: &mut TlsStream<TcpStream>) -> bool {
    let mut byte = [0u8; 1];
    !matches!(stream.read(&mut byte).now_or_never(), Some(Ok(0) | Err(_)))
}

/// Records after a cursor, from the file that holds them.
#[derive(Debug, Default)]
struct Batch {
    records: Vec<(u64, Vec<u8>)>,
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
        let from = batch.records.last().map_or(after, |(seq, _)| *seq);
        let mut stmt =
            conn.prepare("SELECT seq, body FROM records WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
        let want = (limit - batch.records.len()) as i64;
        let rows = stmt.query_map(rusqlite::params![from as i64, want], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?))
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

/// One RFC 5424 message, octet-counted (RFC 5425 §4.3): `LEN SP <PRI>1 TIMESTAMP HOSTNAME
/// APP-NAME PROCID MSGID - MSG`, MSG the record's body as committed.
fn frame(hostname: &str, body: &[u8], out: &mut Vec<u8>) {
    let fields: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let kind = fields
        .as_ref()
        .and_then(|f| f.get("kind"))
        .and_then(|k| k.as_str())
        .filter(|k| !k.is_empty() && k.len() <= 32 && k.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or("-")
        .to_owned();
    let ts = fields
        .as_ref()
        .and_then(|f| f.get("ts_ms"))
        .and_then(serde_json::Value::as_i64)
        .map_or_else(|| "-".to_owned(), rfc3339_millis);
    let head = format!(
        "<{PRI}>1 {ts} {hostname} airlockd {} {kind} - ",
        std::process::id()
    );
    let len = head.len() + body.len();
    out.extend_from_slice(format!("{len} ").as_bytes());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body);
}

/// `2026-12-04T06:10:00.123Z`.
fn rfc3339_millis(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| "-".to_owned())
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
    fn frames_are_octet_counted_rfc5424_with_the_body_as_committed() {
        let body = br#"{"kind":"admit","seq":7,"ts_ms":1764828600123,"v":1}"#;
        let mut out = Vec::new();
        frame("node-a", body, &mut out);
        let text = String::from_utf8(out).expect("utf-8");
        let (len, msg) = text.split_once(' ').expect("length prefix");
        assert_eq!(len.parse::<usize>().expect("number"), msg.len());
        let pid = std::process::id();
        assert_eq!(
            msg,
            format!(
                "<110>1 2025-12-04T06:10:00.123Z node-a airlockd {pid} admit - {}",
                std::str::from_utf8(body).expect("utf-8")
            )
        );
    }

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
