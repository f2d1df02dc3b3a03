//! `[audit]`: the tamper-evident audit log (see `docs/audit.md`).

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::credential::{read_key_file, secret_path};
use super::telemetry::{OtlpEndpoint, otlp_endpoint};
use super::{Invalid, duration_field, invalid, resolve};

/// When to rotate the audit database and what to keep (`rotate_bytes`, `rotate_after`,
/// `keep_days`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate once the live file is larger than this.
    pub max_bytes: Option<u64>,
    /// Rotate once the live file is older than this.
    pub max_age: Option<Duration>,
    /// Remove rotated files whose last write is older than this.
    pub keep: Option<Duration>,
}

/// How much prompt/output text a tenant's records keep (`store_text`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StoreText {
    /// Keyed digests only (the default).
    #[default]
    None,
    /// Text with digits and e-mail addresses masked.
    Redacted,
    /// Text as sent and generated.
    Full,
}

impl StoreText {
    pub fn parse(s: &str) -> Option<StoreText> {
        match s {
            "none" => Some(StoreText::None),
            "redacted" => Some(StoreText::Redacted),
            "full" => Some(StoreText::Full),
            _ => None,
        }
    }
}

/// `[audit]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub db: PathBuf,
    pub signing_key: PathBuf,
    pub digest_key: PathBuf,
    #[serde(default)]
    pub checkpoint_every_records: Option<u64>,
    #[serde(default)]
    pub checkpoint_every: Option<String>,
    #[serde(default)]
    pub write_timeout: Option<String>,
    #[serde(default)]
    pub queue: Option<u64>,
    #[serde(default)]
    pub store_text: Option<String>,
    #[serde(default)]
    pub tenant_store_text: BTreeMap<String, String>,
    #[serde(default)]
    pub rotate_bytes: Option<u64>,
    #[serde(default)]
    pub rotate_after: Option<String>,
    #[serde(default)]
    pub keep_days: Option<u64>,
    #[serde(default)]
    pub danger_allow_unaudited: bool,
    #[serde(default)]
    pub sinks: Vec<RawSink>,
    #[serde(default)]
    pub node: Option<String>,
}

/// `[[audit.sinks]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    pub name: String,
    pub kind: String,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub server_name: Option<String>,
    #[serde(default)]
    pub ca: Option<PathBuf>,
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    #[serde(default)]
    pub danger_allow_http: bool,
    #[serde(default)]
    pub hostname: Option<String>,
}

/// Where and how a sink delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkKind {
    /// RFC 5424 syslog over TLS (RFC 5425) to `address`.
    SyslogTls {
        /// `host:port` of the receiver.
        address: String,
        /// The name the receiver's certificate must carry (default: the address's host).
        server_name: String,
        /// CA certificates (PEM) that the receiver's certificate must chain to.
        ca: PathBuf,
        /// Client certificate and key (PEM) when the receiver asks for one.
        client: Option<(PathBuf, PathBuf)>,
    },
    /// OTLP logs over HTTP (protobuf) to a collector's `/v1/logs`.
    OtlpHttp(OtlpEndpoint),
}

/// A validated audit sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkConfig {
    /// Names the sink in logs, metrics and its cursor file.
    pub name: String,
    pub kind: SinkKind,
    /// This node's name on every message (syslog HOSTNAME; OTLP resource `host.name`).
    pub hostname: String,
    /// Where the sink keeps the last sequence number it delivered (beside the database).
    pub cursor: PathBuf,
}

impl SinkConfig {
    /// Where the sink delivers, for logs.
    pub fn target(&self) -> String {
        match &self.kind {
            SinkKind::SyslogTls { address, .. } => address.clone(),
            SinkKind::OtlpHttp(endpoint) => endpoint.url("logs"),
        }
    }
}

/// The validated `[audit]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// The SQLite database (WAL mode: `-wal` and `-shm` files sit beside it).
    pub db: PathBuf,
    /// Ed25519 checkpoint signing key (64 hex characters); a forger without it cannot
    /// re-seal a rewritten log.
    pub signing_key: PathBuf,
    /// HMAC-SHA256 key of prompt/output digests; without it nobody can test guesses of a
    /// prompt against the log.
    pub digest_key: PathBuf,
    /// A signed checkpoint at least every this many records.
    pub checkpoint_every_records: NonZeroU64,
    /// And at least this often while records arrive.
    pub checkpoint_every: Duration,
    /// How long a request waits for its record to be durable before it gets 503.
    pub write_timeout: Duration,
    /// Records queued for the writer at most (beyond: 503).
    pub queue: usize,
    /// Default text retention for all tenants.
    pub store_text: StoreText,
    /// Per-tenant overrides of `store_text`.
    pub tenant_store_text: HashMap<String, StoreText>,
    /// Rotation by size/age into a new file chained to the old one; retention of whole
    /// rotated files.
    pub rotation: Rotation,
    /// Serve even when audit records cannot be written. Labs only; warns at every start.
    pub danger_allow_unaudited: bool,
    /// Forwarders of every committed record to a SIEM.
    pub sinks: Vec<SinkConfig>,
    /// This node's name, in every record (`node`) and every sink message (HOSTNAME).
    pub node: String,
}

fn store_text(path: &str, value: &str) -> Result<StoreText, Invalid> {
    StoreText::parse(value).ok_or_else(|| {
        invalid(
            path,
            format!("`{value}` is not one of \"none\", \"redacted\", \"full\""),
        )
    })
}

/// Validates `[audit]`; key files must exist and hold 32-byte hex keys.
pub fn audit(raw: RawAudit, base: &Path) -> Result<AuditConfig, Invalid> {
    let signing_key = secret_path("audit.signing_key", base, raw.signing_key)?;
    let digest_key = secret_path("audit.digest_key", base, raw.digest_key)?;
    if let Err(e) = read_key_file(&signing_key) {
        return Err(invalid("audit.signing_key", e));
    }
    if let Err(e) = read_key_file(&digest_key) {
        return Err(invalid("audit.digest_key", e));
    }
    let every = raw.checkpoint_every_records.unwrap_or(1000);
    let checkpoint_every_records = NonZeroU64::new(every)
        .ok_or_else(|| invalid("audit.checkpoint_every_records", "must be at least 1"))?;
    let checkpoint_every = duration_field(
        "audit.checkpoint_every",
        raw.checkpoint_every,
        Duration::from_secs(10),
    )?;
    let write_timeout = duration_field(
        "audit.write_timeout",
        raw.write_timeout,
        Duration::from_secs(5),
    )?;
    for (path, d) in [
        ("audit.checkpoint_every", checkpoint_every),
        ("audit.write_timeout", write_timeout),
    ] {
        if d.is_zero() {
            return Err(invalid(path, "must be greater than zero"));
        }
    }
    let queue = match raw.queue {
        None => 65_536,
        Some(v @ 1..=16_777_216) => v as usize,
        Some(_) => return Err(invalid("audit.queue", "must be between 1 and 16777216")),
    };
    let default = match raw.store_text.as_deref() {
        None => StoreText::None,
        Some(v) => store_text("audit.store_text", v)?,
    };
    let mut tenants = HashMap::new();
    for (tenant, value) in raw.tenant_store_text {
        let parsed = store_text(&format!("audit.tenant_store_text.{tenant}"), &value)?;
        tenants.insert(tenant, parsed);
    }
    let max_age = match raw.rotate_after {
        None => None,
        Some(text) => {
            let d = duration_field("audit.rotate_after", Some(text), Duration::ZERO)?;
            if d.is_zero() {
                return Err(invalid("audit.rotate_after", "must be greater than zero"));
            }
            Some(d)
        }
    };
    let max_bytes = match raw.rotate_bytes {
        None => None,
        Some(v) if v >= 65_536 => Some(v),
        Some(_) => return Err(invalid("audit.rotate_bytes", "must be at least 65536")),
    };
    let keep = match raw.keep_days {
        None => None,
        Some(0) => return Err(invalid("audit.keep_days", "must be at least 1")),
        Some(days) => Some(Duration::from_secs(days.saturating_mul(86_400))),
    };
    let db = resolve(base, raw.db);
    // Default: the system's host name (RFC 5424's NILVALUE `-` when there is none).
    let node = raw.node.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| valid_node(h))
            .unwrap_or_else(|| "-".to_owned())
    });
    // RFC 5424 HOSTNAME rules: 1-255 printable US-ASCII characters, no spaces.
    if !valid_node(&node) {
        return Err(invalid(
            "audit.node",
            "must be 1-255 printable ASCII characters without spaces",
        ));
    }
    let mut sinks: Vec<SinkConfig> = Vec::with_capacity(raw.sinks.len());
    for (i, sink) in raw.sinks.into_iter().enumerate() {
        let sink = sink_config(i, sink, base, &db, &node)?;
        if sinks.iter().any(|s| s.name == sink.name) {
            return Err(invalid(
                format!("audit.sinks[{i}].name"),
                "names a sink twice",
            ));
        }
        sinks.push(sink);
    }
    Ok(AuditConfig {
        db,
        signing_key,
        digest_key,
        checkpoint_every_records,
        checkpoint_every,
        write_timeout,
        queue,
        store_text: default,
        tenant_store_text: tenants,
        rotation: Rotation {
            max_bytes,
            max_age,
            keep,
        },
        danger_allow_unaudited: raw.danger_allow_unaudited,
        sinks,
        node,
    })
}

fn valid_node(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name.bytes().all(|b| b.is_ascii_graphic())
}

fn sink_config(
    i: usize,
    raw: RawSink,
    base: &Path,
    db: &Path,
    node: &str,
) -> Result<SinkConfig, Invalid> {
    let field = |name: &str| format!("audit.sinks[{i}].{name}");
    let name_ok = !raw.name.is_empty()
        && raw.name.len() <= 32
        && raw
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !name_ok {
        return Err(invalid(
            field("name"),
            "must be 1-32 characters of a-z A-Z 0-9 - _",
        ));
    }
    let refuse = |key: &str, kind: &str| {
        Err(invalid(
            field(key),
            format!("not used with kind = \"{kind}\""),
        ))
    };
    let kind = match raw.kind.as_str() {
        "syslog-tls" => {
            if raw.endpoint.is_some() {
                return refuse("endpoint", "syslog-tls");
            }
            if raw.danger_allow_http {
                return refuse("danger_allow_http", "syslog-tls");
            }
            let address = raw
                .address
                .ok_or_else(|| invalid(field("address"), "required with kind = \"syslog-tls\""))?;
            let host = match address.rsplit_once(':') {
                Some((host, port))
                    if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) =>
                {
                    host.trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_owned()
                }
                _ => {
                    return Err(invalid(
                        field("address"),
                        format!("`{address}` is not host:port"),
                    ));
                }
            };
            let ca = raw
                .ca
                .ok_or_else(|| invalid(field("ca"), "required with kind = \"syslog-tls\""))?;
            let client = match (raw.client_cert, raw.client_key) {
                (None, None) => None,
                (Some(cert), Some(key)) => Some((resolve(base, cert), resolve(base, key))),
                _ => {
                    return Err(invalid(
                        field("client_cert"),
                        "client_cert and client_key go together",
                    ));
                }
            };
            SinkKind::SyslogTls {
                server_name: raw.server_name.unwrap_or(host),
                address,
                ca: resolve(base, ca),
                client,
            }
        }
        "otlp-http" => {
            if raw.address.is_some() {
                return refuse("address", "otlp-http");
            }
            let endpoint = raw
                .endpoint
                .ok_or_else(|| invalid(field("endpoint"), "required with kind = \"otlp-http\""))?;
            SinkKind::OtlpHttp(otlp_endpoint(
                &format!("audit.sinks[{i}]"),
                &endpoint,
                raw.server_name,
                raw.ca,
                raw.client_cert,
                raw.client_key,
                raw.danger_allow_http,
                base,
            )?)
        }
        other => {
            return Err(invalid(
                field("kind"),
                format!("unknown kind `{other}`; expected \"syslog-tls\" or \"otlp-http\""),
            ));
        }
    };
    let hostname = raw.hostname.unwrap_or_else(|| node.to_owned());
    if !valid_node(&hostname) {
        return Err(invalid(
            field("hostname"),
            "must be 1-255 printable ASCII characters without spaces",
        ));
    }
    let mut cursor = db.as_os_str().to_owned();
    cursor.push(format!(".sink-{}.cursor", raw.name));
    Ok(SinkConfig {
        name: raw.name,
        kind,
        hostname,
        cursor: PathBuf::from(cursor),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::super::Config;
    use super::StoreText;

    const BASE: &str = "[listener]\naddress = \"127.0.0.1:8443\"\n[listener.tls]\ncert = \"s.pem\"\nkey = \"s.key\"\nclient_ca = \"ca.pem\"\n[[models]]\nname = \"m\"\nbackend = \"test\"\n";

    fn parse(audit: &str, dir: &Path) -> Result<Config, (String, String)> {
        let text = format!(
            "{BASE}[audit]\ndb = \"audit.db\"\nsigning_key = \"audit-signing.key\"\ndigest_key = \"audit-digest.key\"\n{audit}"
        );
        Config::parse(&text, dir).map_err(|e| (e.path, e.reason))
    }

    #[test]
    fn audit_section_validates() {
        let dir = tempfile::tempdir().unwrap();
        crate::audit::keys::keygen(dir.path()).unwrap();
        let config = parse("", dir.path()).unwrap();
        let audit = config.audit.unwrap();
        assert_eq!(audit.db, dir.path().join("audit.db"));
        assert_eq!(audit.checkpoint_every_records.get(), 1000);
        assert_eq!(audit.checkpoint_every, Duration::from_secs(10));
        assert_eq!(audit.store_text, StoreText::None);
        assert!(!audit.danger_allow_unaudited);

        let config = parse(
            "store_text = \"redacted\"\nrotate_bytes = 1048576\nkeep_days = 400\n[audit.tenant_store_text]\nacme = \"full\"\n",
            dir.path(),
        )
        .unwrap();
        let audit = config.audit.unwrap();
        assert_eq!(audit.store_text, StoreText::Redacted);
        assert_eq!(audit.tenant_store_text["acme"], StoreText::Full);
        assert_eq!(audit.rotation.max_bytes, Some(1_048_576));
        assert_eq!(audit.rotation.keep, Some(Duration::from_secs(400 * 86_400)));

        let danger = parse("danger_allow_unaudited = true\n", dir.path()).unwrap();
        assert!(
            danger
                .warnings()
                .iter()
                .any(|w| w.contains("danger_allow_unaudited"))
        );

        for (text, path) in [
            ("store_text = \"some\"\n", "audit.store_text"),
            (
                "checkpoint_every_records = 0\n",
                "audit.checkpoint_every_records",
            ),
            ("write_timeout = \"0s\"\n", "audit.write_timeout"),
            ("rotate_bytes = 10\n", "audit.rotate_bytes"),
            ("keep_days = 0\n", "audit.keep_days"),
        ] {
            assert_eq!(parse(text, dir.path()).unwrap_err().0, path, "{text}");
        }
        assert!(parse("nope = 1\n", dir.path()).is_err());
    }

    #[test]
    fn sinks_validate_by_field() {
        let dir = tempfile::tempdir().unwrap();
        crate::audit::keys::keygen(dir.path()).unwrap();
        let sink = |extra: &str| {
            format!(
                "[[audit.sinks]]\nname = \"siem\"\nkind = \"syslog-tls\"\naddress = \"siem.example:6514\"\nca = \"siem-ca.pem\"\n{extra}"
            )
        };
        let audit = parse(&format!("node = \"gw-9\"\n{}", sink("")), dir.path())
            .unwrap()
            .audit
            .unwrap();
        assert_eq!(
            (audit.node.as_str(), audit.sinks[0].hostname.as_str()),
            ("gw-9", "gw-9"),
            "a sink's HOSTNAME is the node's name by default"
        );
        let audit = parse(&sink("hostname = \"gw-1\"\n"), dir.path())
            .unwrap()
            .audit
            .unwrap();
        let s = &audit.sinks[0];
        let super::SinkKind::SyslogTls {
            server_name,
            ca,
            client,
            ..
        } = &s.kind
        else {
            panic!("a syslog-tls sink: {s:?}");
        };
        assert_eq!(
            (server_name.as_str(), s.hostname.as_str(), client.is_none()),
            ("siem.example", "gw-1", true)
        );
        assert_eq!(*ca, dir.path().join("siem-ca.pem"));
        assert_eq!(s.cursor, dir.path().join("audit.db.sink-siem.cursor"));
        for (text, path) in [
            (
                sink("").replace("syslog-tls", "kafka"),
                "audit.sinks[0].kind",
            ),
            (
                sink("").replace("siem.example:6514", "siem.example"),
                "audit.sinks[0].address",
            ),
            (
                sink("").replace("\"siem\"", "\"a b\""),
                "audit.sinks[0].name",
            ),
            (
                sink("client_cert = \"c.pem\"\n"),
                "audit.sinks[0].client_cert",
            ),
            (
                sink("hostname = \"two words\"\n"),
                "audit.sinks[0].hostname",
            ),
            (format!("{}{}", sink(""), sink("")), "audit.sinks[1].name"),
            (
                sink("endpoint = \"https://otel:4318\"\n"),
                "audit.sinks[0].endpoint",
            ),
            (
                sink("").replace("address = \"siem.example:6514\"\n", ""),
                "audit.sinks[0].address",
            ),
            ("node = \"\"\n".to_owned(), "audit.node"),
            ("node = \"gw 1\"\n".to_owned(), "audit.node"),
        ] {
            assert_eq!(parse(&text, dir.path()).unwrap_err().0, path, "{text}");
        }
    }

    #[test]
    fn otlp_sinks_validate_by_field() {
        let dir = tempfile::tempdir().unwrap();
        crate::audit::keys::keygen(dir.path()).unwrap();
        let sink = |lines: &str| {
            format!("[[audit.sinks]]\nname = \"otel\"\nkind = \"otlp-http\"\n{lines}")
        };
        let audit = parse(
            &sink("endpoint = \"https://otel.example:4318\"\nca = \"otel-ca.pem\"\n"),
            dir.path(),
        )
        .unwrap()
        .audit
        .unwrap();
        let super::SinkKind::OtlpHttp(endpoint) = &audit.sinks[0].kind else {
            panic!("an otlp-http sink: {:?}", audit.sinks[0]);
        };
        assert_eq!(endpoint.url("logs"), "https://otel.example:4318/v1/logs");
        assert_eq!(
            endpoint.tls.as_ref().unwrap().ca,
            dir.path().join("otel-ca.pem")
        );
        assert!(parse(&sink("endpoint = \"http://127.0.0.1:4318\"\n"), dir.path()).is_ok());
        for (text, path) in [
            (sink(""), "audit.sinks[0].endpoint"),
            (
                sink("endpoint = \"https://otel.example:4318\"\n"),
                "audit.sinks[0].ca",
            ),
            (
                sink("endpoint = \"http://otel.example:4318\"\n"),
                "audit.sinks[0].endpoint",
            ),
            (
                sink("endpoint = \"http://127.0.0.1:4318\"\naddress = \"a:1\"\n"),
                "audit.sinks[0].address",
            ),
        ] {
            assert_eq!(parse(&text, dir.path()).unwrap_err().0, path, "{text}");
        }
    }

    #[test]
    fn missing_or_malformed_keys_are_config_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(parse("", dir.path()).unwrap_err().0, "audit.signing_key");
        crate::audit::keys::keygen(dir.path()).unwrap();
        std::fs::write(dir.path().join("audit-digest.key"), "not hex").unwrap();
        let (path, reason) = parse("", dir.path()).unwrap_err();
        assert_eq!(path, "audit.digest_key");
        assert!(
            !reason.contains("not hex"),
            "never echo key material: {reason}"
        );
    }
}
