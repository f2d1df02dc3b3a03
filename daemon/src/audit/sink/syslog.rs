//! `kind = "syslog-tls"`: RFC 5424 syslog over TLS (RFC 5425: octet-counted frames on a TLS
//! stream).
//!
//! Syslog over TLS has no acknowledgement, and a write to a receiver that just went away can
//! succeed locally and be lost, so a batch written here is only [`Sent::Unconfirmed`]: the
//! common loop (`super`) counts it delivered once the connection has stayed up for
//! `CONFIRM` after it (the peer's reset or close arrives well within that), and a connection
//! found closed sends everything after the cursor again on the next one.
//!
//! Each message's MSG is the record's body exactly as committed (canonical JSON, the bytes
//! the hash chain covers), so an auditor can check a SIEM's copy against the node's signed
//! checkpoints (`docs/audit-guide.md`). HOSTNAME is the node's name, MSGID the record kind.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::FutureExt;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::{Entry, Sent};
use crate::audit::AuditError;

/// Syslog priority: facility 13 (log audit), severity 6 (informational).
const PRI: u32 = 13 * 8 + 6;

/// A syslog-over-TLS receiver and the connection to it, if one is open.
pub(super) struct Syslog {
    address: String,
    hostname: String,
    connector: TlsConnector,
    server_name: ServerName<'static>,
    conn: Option<TlsStream<TcpStream>>,
}

impl Syslog {
    /// Checks the TLS material (CA, client certificate and key) so that a broken sink fails
    /// the start-up, not silently later.
    pub(super) fn new(
        name: &str,
        hostname: &str,
        address: &str,
        server_name: &str,
        ca: &Path,
        client: Option<&(PathBuf, PathBuf)>,
    ) -> Result<Syslog, AuditError> {
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            AuditError::Format(format!("audit.sinks `{name}`: {what}: {e}"))
        };
        let config = crate::tls::client_config(ca, client, &[]).map_err(|(key, e)| bad(key, &e))?;
        let server_name =
            ServerName::try_from(server_name.to_owned()).map_err(|e| bad("server_name", &e))?;
        Ok(Syslog {
            address: address.to_owned(),
            hostname: hostname.to_owned(),
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
            conn: None,
        })
    }

    /// Writes `entries` as frames on the connection (opened first if none is).
    pub(super) async fn send(&mut self, entries: &[Entry]) -> Result<Sent, String> {
        let mut frames = Vec::with_capacity(entries.len() * 512);
        for entry in entries {
            frame(&self.hostname, &entry.body, &mut frames);
        }
        if self.conn.is_none() {
            self.conn = Some(self.connect().await.map_err(|e| e.to_string())?);
        }
        let stream = self.conn.as_mut().ok_or("no connection")?;
        stream.write_all(&frames).await.map_err(|e| e.to_string())?;
        stream.flush().await.map_err(|e| e.to_string())?;
        Ok(Sent::Unconfirmed)
    }

    /// Whether the connection was found gone (it is then dropped): a receiver sends
    /// nothing, so a readable end of stream (its close) or an error means it went away.
    pub(super) fn lost(&mut self) -> bool {
        let Some(stream) = self.conn.as_mut() else {
            return false;
        };
        let mut byte = [0u8; 1];
        let gone = matches!(stream.read(&mut byte).now_or_never(), Some(Ok(0) | Err(_)));
        if gone {
            self.conn = None;
        }
        gone
    }

    /// After a failure: the next batch goes on a new connection.
    pub(super) fn reset(&mut self) {
        self.conn = None;
    }

    async fn connect(&self) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(&self.address).await?;
        tcp.set_nodelay(true)?;
        self.connector.connect(self.server_name.clone(), tcp).await
    }
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
}
