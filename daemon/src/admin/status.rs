//! `GET /status` and its reader (what `airlockd status` prints): the JSON report, and the
//! short human summary made from it.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Sources;
use crate::metrics;

/// What `/status` answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub version: String,
    /// What the open `/readyz` answers (200 when true).
    #[serde(default)]
    pub ready: bool,
    /// Why not, when not ready (the open `/readyz` does not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_ready_reason: Option<String>,
    /// Seconds since the API key table was confirmed current; absent without `[auth] key_db`.
    /// Past 5 the daemon refuses API keys (503) until the database reads again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_db_staleness_seconds: Option<f64>,
    pub uptime_seconds: u64,
    pub start_time_unix: i64,
    pub models: Vec<ModelStatus>,
    /// Inference requests being served (streams included).
    pub requests_in_flight: usize,
    pub engine: EngineLoad,
    /// Completion tokens per second over the last minute.
    pub tokens_per_second_last_minute: f64,
    pub audit: AuditStatus,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ModelStatus {
    pub id: String,
    pub device: String,
    pub context_length: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct EngineLoad {
    pub queued: usize,
    pub active_sequences: usize,
    pub kv_cache_bytes: usize,
    /// KV blocks kept for prefix reuse, held by no sequence (given up whenever one needs
    /// the blocks). Absent from older daemons' answers.
    #[serde(default)]
    pub prefix_cache_bytes: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AuditStatus {
    pub enabled: bool,
    /// `None` until the first commit.
    pub last_write_ok: Option<bool>,
    pub failed_commits: u64,
    pub chain_head_seq: u64,
    pub chain_head_hash: String,
}

impl Report {
    pub(super) fn collect(sources: &Sources) -> Report {
        let m = metrics::global();
        let engine = sources.engine.status();
        let audit = m.audit_health();
        let readiness = (sources.readiness)();
        Report {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ready: readiness.reason.is_none(),
            not_ready_reason: readiness.reason.map(str::to_owned),
            key_db_staleness_seconds: readiness.key_db_staleness.map(|d| d.as_secs_f64()),
            uptime_seconds: m.uptime().as_secs(),
            start_time_unix: m.start_unix(),
            models: sources
                .engine
                .models()
                .into_iter()
                .map(|info| ModelStatus {
                    id: info.id,
                    device: info.device,
                    context_length: info.context_length,
                })
                .collect(),
            requests_in_flight: (sources.in_flight)(),
            engine: EngineLoad {
                queued: engine.queued,
                active_sequences: engine.active,
                kv_cache_bytes: engine.kv_cache_bytes,
                prefix_cache_bytes: engine.prefix_cache_bytes,
            },
            tokens_per_second_last_minute: m.tokens_per_second(),
            audit: AuditStatus {
                enabled: sources.audited,
                last_write_ok: audit.last_commit_ok,
                failed_commits: audit.failed_commits,
                chain_head_seq: audit.head_seq,
                chain_head_hash: audit.head_hash,
            },
        }
    }

    /// The summary `airlockd status` prints.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let up = self.uptime_seconds;
        let _ = writeln!(
            out,
            "airlockd {}, up {}h {:02}m {:02}s",
            self.version,
            up / 3600,
            up / 60 % 60,
            up % 60
        );
        let _ = match &self.not_ready_reason {
            _ if self.ready => writeln!(out, "ready"),
            Some(reason) => writeln!(out, "NOT READY: {reason}"),
            None => writeln!(out, "NOT READY"),
        };
        if let Some(stale) = self.key_db_staleness_seconds {
            let _ = writeln!(out, "key database: last confirmed {stale:.1}s ago");
        }
        let _ = writeln!(out, "models:");
        for m in &self.models {
            let _ = writeln!(
                out,
                "  {}  {}  context {}",
                m.id, m.device, m.context_length
            );
        }
        let _ = writeln!(
            out,
            "requests in flight: {}; engine: {} active sequences, {} queued, KV cache {} bytes \
             (+ {} bytes of cached prefixes)",
            self.requests_in_flight,
            self.engine.active_sequences,
            self.engine.queued,
            self.engine.kv_cache_bytes,
            self.engine.prefix_cache_bytes
        );
        let _ = writeln!(
            out,
            "tokens/s (last minute): {:.1}",
            self.tokens_per_second_last_minute
        );
        let a = &self.audit;
        let last = match (a.enabled, a.last_write_ok) {
            (false, _) => "NOT CONFIGURED".to_owned(),
            (true, None) => "no write yet".to_owned(),
            (true, Some(true)) => "last write ok".to_owned(),
            (true, Some(false)) => "LAST WRITE FAILED (requests refused)".to_owned(),
        };
        let head: String = a.chain_head_hash.chars().take(16).collect();
        let _ = writeln!(
            out,
            "audit: {last}; {} failed commits; chain head #{} {head}",
            a.failed_commits, a.chain_head_seq
        );
        out
    }
}

/// Where `airlockd status` finds the admin listener.
#[derive(Debug)]
pub enum Target {
    /// `--admin URL`.
    Url(String),
    /// `--config FILE`: its `[admin]` section.
    Config(PathBuf),
}

/// Certificates for an `[admin.tls]` listener: the CA its server certificate chains to,
/// and the client certificate and key it requires.
#[derive(Debug, Default)]
pub struct ClientTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// The admin listener as the command will reach it.
struct Endpoint {
    https: bool,
    /// `host:port`.
    address: String,
}

impl Endpoint {
    fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.address)
    }
}

/// Why `/status` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// A bad config, URL or certificate option: the operator's input, not the daemon.
    #[error("{0}")]
    Usage(String),
    /// The listener was named correctly but did not answer with a report.
    #[error("cannot read {url}/status: {message}")]
    Fetch { url: String, message: String },
}

/// Reads a running daemon's `/status` from its admin listener.
pub fn read(target: Target, tls: &ClientTls) -> Result<Report, StatusError> {
    let endpoint = resolve(target).map_err(StatusError::Usage)?;
    let connector = if endpoint.https {
        Some(
            client_config(tls)
                .map_err(|message| StatusError::Usage(format!("{}: {message}", endpoint.url())))?,
        )
    } else {
        None
    };
    fetch(&endpoint, connector).map_err(|message| StatusError::Fetch {
        url: endpoint.url(),
        message,
    })
}

fn resolve(target: Target) -> Result<Endpoint, String> {
    match target {
        Target::Url(url) => {
            let (https, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
                (Some(rest), _) => (true, rest),
                (None, Some(rest)) => (false, rest),
                (None, None) => (false, url.as_str()),
            };
            let host = rest.split('/').next().unwrap_or(rest);
            if host.is_empty() {
                return Err(format!("--admin `{url}`: no host:port"));
            }
            Ok(Endpoint {
                https,
                address: host.to_owned(),
            })
        }
        Target::Config(path) => {
            let config = crate::config::Config::load(&path).map_err(|e| e.to_string())?;
            let admin = config.admin.ok_or_else(|| {
                format!(
                    "{}: admin: no [admin] section, so the daemon serves no status",
                    path.display()
                )
            })?;
            // A wildcard bind is reached on loopback.
            let mut addr = admin.address;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            Ok(Endpoint {
                https: admin.tls.is_some(),
                address: addr.to_string(),
            })
        }
    }
}

/// The rustls client for an `[admin.tls]` listener (mutual TLS: all three files needed).
fn client_config(tls: &ClientTls) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let (Some(ca), Some(cert), Some(key)) = (&tls.ca, &tls.cert, &tls.key) else {
        return Err(
            "the admin listener uses mutual TLS: pass --cacert, --cert and --key".to_owned(),
        );
    };
    let read_certs = |path: &PathBuf| -> Result<Vec<CertificateDer<'static>>, String> {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no certificate", path.display()));
        }
        Ok(certs)
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(ca)? {
        roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let chain = read_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .map_err(|e| format!("--cert/--key: {e}"))?;
    Ok(std::sync::Arc::new(config))
}

/// One `GET /status` over HTTP/1.1 (`Connection: close`), with timeouts.
fn fetch(
    endpoint: &Endpoint,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> Result<Report, String> {
    let timeout = Duration::from_secs(5);
    let address = endpoint.address.as_str();
    let addrs: Vec<SocketAddr> = address
        .to_socket_addrs()
        .map_err(|e| format!("bad address: {e}"))?
        .collect();
    let mut last = String::from("no address");
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e.to_string(),
        }
    }
    let stream = stream.ok_or(last)?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let raw = match tls {
        None => exchange(stream, address)?,
        Some(config) => {
            let host = address
                .rsplit_once(':')
                .map_or(address, |(host, _)| host)
                .trim_start_matches('[')
                .trim_end_matches(']');
            let name = rustls_pki_types::ServerName::try_from(host.to_owned())
                .map_err(|e| format!("`{host}`: {e}"))?;
            let conn = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
            exchange(rustls::StreamOwned::new(conn, stream), address)?
        }
    };
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("the answer is not HTTP")?;
    let status = head.lines().next().unwrap_or("");
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("answered `{status}`"));
    }
    serde_json::from_str(body).map_err(|e| format!("not a status report: {e}"))
}

/// Writes the request and reads the whole answer (the server closes after it).
fn exchange<S: Read + Write>(mut stream: S, address: &str) -> Result<Vec<u8>, String> {
    write!(
        stream,
        "GET /status HTTP/1.1\r\nHost: {address}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )
    .and_then(|()| stream.flush())
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    match stream.take(4 * 1024 * 1024).read_to_end(&mut raw) {
        Ok(_) => Ok(raw),
        // A peer that closes without TLS close_notify after a complete answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => Ok(raw),
        Err(e) => Err(e.to_string()),
    }
}
