//! The daemon's configuration: a TOML file deserialized into [`raw`] structs (unknown keys
//! rejected) and validated into the typed [`Config`] the server runs on. Every field is
//! documented in `docs/config.md`.
//!
//! Errors carry the file, the dotted key path and the reason, and print as
//! `FILE: key.path: reason` — the one line `airlockd check-config` shows before exiting 64.

pub mod admin;
pub mod audit;
pub mod credential;
#[cfg(test)]
mod doc_check;
mod duration;
mod listener;
mod locate;
pub mod policy;
pub mod raw;
#[cfg(test)]
mod tests;

use std::fmt;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_engine::{DeviceChoice, Quantize};

pub use admin::AdminConfig;
pub use audit::AuditConfig;
pub use duration::parse_duration;
pub use listener::{
    ClientCertFormat, ListenAddress, ListenerConfig, ListenerMode, ProxyConfig, TlsConfig,
};
use raw::{RawConfig, RawLimits, RawLogging, RawModel};

/// A configuration problem: which file, which key, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted key path, e.g. `listener.tls.cert` or `models[0].device`; empty when the
    /// problem is the file itself (unreadable, not TOML).
    pub path: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file.display())?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        // One line, always: the TOML parser's messages may span several.
        let reason = self.reason.split_whitespace().collect::<Vec<_>>().join(" ");
        write!(f, "{reason}")
    }
}

impl std::error::Error for ConfigError {}

/// A validation failure before the file name is attached: `path` is the dotted key path.
#[derive(Debug)]
pub struct Invalid {
    pub path: String,
    pub reason: String,
}

fn invalid(path: impl Into<String>, reason: impl fmt::Display) -> Invalid {
    Invalid {
        path: path.into(),
        reason: reason.to_string(),
    }
}

/// `backend = "test"` is refused by a build without the cargo feature `test-engine` (the
/// release build): the canned-output engine must never answer in production.
fn test_engine_built(built: bool) -> Result<(), Invalid> {
    if built {
        return Ok(());
    }
    Err(invalid(
        "backend",
        "\"test\" (the canned-output test engine) is not in this build: it needs the cargo \
         feature `test-engine`, which only test and benchmark builds enable; serve a real \
         model with backend = \"burn\"",
    ))
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listener: ListenerConfig,
    pub limits: Limits,
    pub models: Vec<ModelConfig>,
    pub logging: LoggingConfig,
    /// `[auth]` and `[[tenants]]`.
    pub policy: policy::PolicyConfig,
    /// `[audit]`; `None` only runs with a loud warning (see `warnings`).
    pub audit: Option<AuditConfig>,
    /// `[admin]`: the metrics and status listener; `None`: none is served.
    pub admin: Option<AdminConfig>,
}

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_body_bytes: NonZeroUsize,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub request_deadline: Duration,
    pub max_connections: NonZeroUsize,
    pub max_concurrent_requests: NonZeroUsize,
    pub shutdown_grace: Duration,
    /// Connections still in their TLS handshake. They hold no `max_connections` slot (a
    /// client that never finishes its handshake must not lock out those that do), so they
    /// have their own cap.
    pub max_pending_handshakes: NonZeroUsize,
    /// Connections (pending and open together) from one client address (IPv6: one /64);
    /// trusted proxies and Unix-socket peers are exempt. Keeps one client from taking
    /// every slot.
    pub max_connections_per_address: NonZeroUsize,
    /// A connection with no request in flight for this long is closed (HTTP/2: GOAWAY), so
    /// idle connections do not hold `max_connections` slots.
    pub connection_idle_timeout: Duration,
    /// An HTTP/2 connection whose client preface has not arrived this long after the TLS
    /// handshake is closed.
    pub http2_preface_timeout: Duration,
    /// A connection this old is drained (HTTP/1.1: `Connection: close` on its next
    /// response; HTTP/2: GOAWAY), and closed `shutdown_grace` later. Bounds how long a
    /// connection lives on a certificate checked once.
    pub max_connection_age: Duration,
    /// Time allowed to receive a request body, counted once the request holds its tenant's
    /// concurrency slot and a server slot: a slow upload holds them no longer.
    pub body_read_timeout: Duration,
}

/// Which engine serves a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelBackend {
    /// The real engine: a Hugging Face model directory run with burn.
    Burn {
        path: PathBuf,
        device: DeviceChoice,
        verify_manifest: bool,
        /// The SHA-256 the model's `airlock-manifest.json` must have (lowercase hex): the
        /// manifest sits beside the weights, so without a pin whoever can replace the
        /// weights can replace the manifest too.
        manifest_sha256: Option<String>,
        /// Weight quantization at load (`None`: the file's precision).
        quantize: Option<Quantize>,
    },
    /// The deterministic test engine. Never for production: it answers with canned text.
    Test { token_delay: Duration },
}

/// One `[[models]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelConfig {
    pub name: String,
    pub backend: ModelBackend,
    pub max_queue: NonZeroUsize,
    pub max_active: NonZeroUsize,
    pub max_context: Option<NonZeroUsize>,
    /// Most prompt tokens one sequence prefills per engine step (long prompts go in chunks
    /// between other sequences' decode steps).
    pub prefill_chunk: NonZeroUsize,
    /// Most tokens in one batched forward pass.
    pub max_batch_tokens: NonZeroUsize,
    /// KV-cache budget in bytes; `None`: room for `max_active` full contexts.
    pub kv_cache_bytes: Option<NonZeroUsize>,
}

/// `[logging]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggingConfig {
    pub format: LogFormat,
    /// A `tracing` filter directive, e.g. `info` or `airlock_daemon=debug,info`.
    pub level: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

impl Config {
    /// Reads and validates `file`. Relative paths inside are resolved against the file's
    /// directory, so a config and its certificates can move together.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let source = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_path_buf(),
            path: String::new(),
            reason: format!("cannot read: {e}"),
        })?;
        let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::parse(&source, &base).map_err(|Invalid { path, reason }| ConfigError {
            file: file.to_path_buf(),
            path,
            reason,
        })
    }

    /// Reads `file` and validates only `[auth]` and `[[tenants]]`: what the `keys` commands
    /// need. The rest of the file must still parse (unknown keys are errors), but secrets it
    /// names (TLS key, audit keys as `credential:` paths) are not opened, so an operator can
    /// manage API keys outside the service's sandbox.
    pub fn load_policy(file: &Path) -> Result<policy::PolicyConfig, ConfigError> {
        let error = |path: String, reason: String| ConfigError {
            file: file.to_path_buf(),
            path,
            reason,
        };
        let source = std::fs::read_to_string(file)
            .map_err(|e| error(String::new(), format!("cannot read: {e}")))?;
        let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let raw: RawConfig = toml::from_str(&source).map_err(|e| {
            let Invalid { path, reason } = toml_error(&source, &e);
            error(path, reason)
        })?;
        policy::policy(raw.auth, raw.tenants, &base)
            .map_err(|Invalid { path, reason }| error(path, reason))
    }

    /// Parses and validates TOML text; relative paths are resolved against `base`.
    fn parse(source: &str, base: &Path) -> Result<Config, Invalid> {
        let raw: RawConfig = toml::from_str(source).map_err(|e| toml_error(source, &e))?;
        Self::from_raw(raw, base)
    }

    fn from_raw(raw: RawConfig, base: &Path) -> Result<Config, Invalid> {
        let listener = listener::listener(raw.listener, base)?;
        let limits = Limits::try_from(raw.limits)?;
        let mut models = Vec::with_capacity(raw.models.len());
        for (i, model) in raw.models.into_iter().enumerate() {
            let model = model_config(model, base).map_err(|e| Invalid {
                path: format!("models[{i}].{}", e.path),
                reason: e.reason,
            })?;
            if models.iter().any(|m: &ModelConfig| m.name == model.name) {
                return Err(invalid(
                    format!("models[{i}].name"),
                    format!("duplicate model name `{}`", model.name),
                ));
            }
            models.push(model);
        }
        // The test engine serves a single model and runs alone.
        let tests = models
            .iter()
            .filter(|m| matches!(m.backend, ModelBackend::Test { .. }))
            .count();
        if tests > 0 && models.len() > 1 {
            return Err(invalid(
                "models[1].backend",
                "backend = \"test\" is for tests and runs alone: use exactly one [[models]] entry",
            ));
        }
        if models.is_empty() {
            return Err(invalid(
                "models",
                "at least one [[models]] entry is required",
            ));
        }
        let logging = LoggingConfig::try_from(raw.logging)?;
        let policy = policy::policy(raw.auth, raw.tenants, base)?;
        let audit = raw.audit.map(|a| audit::audit(a, base)).transpose()?;
        let admin = raw.admin.map(|a| admin::admin(a, base)).transpose()?;
        Ok(Config {
            listener,
            limits,
            models,
            logging,
            audit,
            policy,
            admin,
        })
    }

    /// Warnings about dangerous but permitted settings, logged at start and on reload.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        match &self.listener.mode {
            ListenerMode::Tls(tls) if tls.danger_no_client_auth => out.push(
                "listener.tls.danger_no_client_auth = true: client certificates are NOT verified; \
                 any client can connect"
                    .to_owned(),
            ),
            ListenerMode::Tls(_) => {}
            ListenerMode::Proxy(proxy) => {
                out.push(format!(
                    "listener.mode = \"proxy\": serving plain HTTP on {}; TLS and client \
                     certificates must be verified by the reverse proxy",
                    self.listener.address
                ));
                if proxy.danger_allow_non_loopback_proxy {
                    out.push(
                        "listener.proxy.danger_allow_non_loopback_proxy = true: plain HTTP may be \
                         reachable from other hosts"
                            .to_owned(),
                    );
                }
            }
        }
        match &self.audit {
            None => out.push(
                "no [audit] section: requests are NOT recorded in a tamper-evident audit log"
                    .to_owned(),
            ),
            Some(audit) if audit.danger_allow_unaudited => out.push(
                "audit.danger_allow_unaudited = true: requests are served even when their audit \
                 records cannot be written"
                    .to_owned(),
            ),
            Some(_) => {}
        }
        for model in &self.models {
            if matches!(model.backend, ModelBackend::Test { .. }) {
                out.push(format!(
                    "model `{}` uses backend = \"test\": canned test output, never for production",
                    model.name
                ));
            }
        }
        out
    }
}

/// Maps a deserializer error to the key path its span points at.
fn toml_error(source: &str, err: &toml::de::Error) -> Invalid {
    let message = err.message().trim().to_owned();
    let mut path = err
        .span()
        .map(|span| locate::key_path(source, span))
        .unwrap_or_default();
    // serde reports a missing field at the enclosing table: name the field itself.
    let reason = match message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
    {
        Some(field) => {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(field);
            "required key is missing".to_owned()
        }
        None => message,
    };
    Invalid { path, reason }
}

fn resolve(base: &Path, path: PathBuf) -> PathBuf {
    if path.is_absolute() {
        path
    } else {
        base.join(path)
    }
}

fn duration_field(
    path: &str,
    value: Option<String>,
    default: Duration,
) -> Result<Duration, Invalid> {
    match value {
        None => Ok(default),
        Some(text) => parse_duration(&text).map_err(|reason| invalid(path, reason)),
    }
}

fn nonzero(path: &str, value: Option<u64>, default: usize) -> Result<NonZeroUsize, Invalid> {
    let value = match value {
        None => default,
        Some(v) => usize::try_from(v).map_err(|_| invalid(path, "value is too large"))?,
    };
    NonZeroUsize::new(value).ok_or_else(|| invalid(path, "must be at least 1"))
}

impl TryFrom<RawLimits> for Limits {
    type Error = Invalid;

    fn try_from(raw: RawLimits) -> Result<Self, Invalid> {
        let max_header_bytes = match raw.max_header_bytes {
            None => 16 * 1024,
            // hyper cannot read headers into a buffer smaller than 8 KiB.
            Some(v @ 8192..=1_048_576) => v as usize,
            Some(_) => {
                return Err(invalid(
                    "limits.max_header_bytes",
                    "must be between 8192 and 1048576",
                ));
            }
        };
        let limits = Limits {
            max_body_bytes: nonzero("limits.max_body_bytes", raw.max_body_bytes, 4 * 1024 * 1024)?,
            header_read_timeout: duration_field(
                "limits.header_read_timeout",
                raw.header_read_timeout,
                Duration::from_secs(10),
            )?,
            max_header_bytes,
            request_deadline: duration_field(
                "limits.request_deadline",
                raw.request_deadline,
                Duration::from_secs(300),
            )?,
            max_connections: nonzero("limits.max_connections", raw.max_connections, 1024)?,
            max_concurrent_requests: nonzero(
                "limits.max_concurrent_requests",
                raw.max_concurrent_requests,
                256,
            )?,
            shutdown_grace: duration_field(
                "limits.shutdown_grace",
                raw.shutdown_grace,
                Duration::from_secs(30),
            )?,
            max_pending_handshakes: nonzero(
                "limits.max_pending_handshakes",
                raw.max_pending_handshakes,
                256,
            )?,
            max_connections_per_address: nonzero(
                "limits.max_connections_per_address",
                raw.max_connections_per_address,
                64,
            )?,
            connection_idle_timeout: duration_field(
                "limits.connection_idle_timeout",
                raw.connection_idle_timeout,
                Duration::from_secs(60),
            )?,
            http2_preface_timeout: duration_field(
                "limits.http2_preface_timeout",
                raw.http2_preface_timeout,
                Duration::from_secs(5),
            )?,
            max_connection_age: duration_field(
                "limits.max_connection_age",
                raw.max_connection_age,
                Duration::from_secs(3600),
            )?,
            body_read_timeout: duration_field(
                "limits.body_read_timeout",
                raw.body_read_timeout,
                Duration::from_secs(30),
            )?,
        };
        for (path, d) in [
            ("limits.header_read_timeout", limits.header_read_timeout),
            ("limits.request_deadline", limits.request_deadline),
            (
                "limits.connection_idle_timeout",
                limits.connection_idle_timeout,
            ),
            ("limits.http2_preface_timeout", limits.http2_preface_timeout),
            ("limits.max_connection_age", limits.max_connection_age),
            ("limits.body_read_timeout", limits.body_read_timeout),
        ] {
            if d.is_zero() {
                return Err(invalid(path, "must be greater than zero"));
            }
        }
        Ok(limits)
    }
}

impl Default for Limits {
    fn default() -> Self {
        match Limits::try_from(RawLimits::default()) {
            Ok(limits) => limits,
            // The defaults above are constants that validate; this arm is unreachable.
            Err(_) => Limits {
                max_body_bytes: NonZeroUsize::MIN,
                header_read_timeout: Duration::from_secs(10),
                max_header_bytes: 16 * 1024,
                request_deadline: Duration::from_secs(300),
                max_connections: NonZeroUsize::MIN,
                max_concurrent_requests: NonZeroUsize::MIN,
                shutdown_grace: Duration::from_secs(30),
                max_pending_handshakes: NonZeroUsize::MIN,
                max_connections_per_address: NonZeroUsize::MIN,
                connection_idle_timeout: Duration::from_secs(60),
                http2_preface_timeout: Duration::from_secs(5),
                max_connection_age: Duration::from_secs(3600),
                body_read_timeout: Duration::from_secs(30),
            },
        }
    }
}

/// Validates one model; paths in errors are relative to the entry (`device`, not `models[0].device`).
fn model_config(raw: RawModel, base: &Path) -> Result<ModelConfig, Invalid> {
    if raw.name.is_empty()
        || raw.name.len() > 128
        || raw
            .name
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(invalid(
            "name",
            "must be 1 to 128 characters without spaces or control characters",
        ));
    }
    let backend = match raw.backend.as_deref().unwrap_or("burn") {
        "burn" => {
            if raw.test_token_delay.is_some() {
                return Err(invalid(
                    "test_token_delay",
                    "only allowed with backend = \"test\"",
                ));
            }
            let path = raw
                .path
                .ok_or_else(|| invalid("path", "required: the model directory"))?;
            let device = match raw.device.as_deref().unwrap_or("auto") {
                "auto" => DeviceChoice::Auto,
                "gpu" => DeviceChoice::Gpu,
                "cpu" => DeviceChoice::Cpu,
                other => {
                    return Err(invalid(
                        "device",
                        format!("`{other}` is not one of \"auto\", \"gpu\", \"cpu\""),
                    ));
                }
            };
            let quantize = match raw.quantize.as_deref() {
                None => None,
                Some("q8") => Some(Quantize::Q8),
                Some("q4") => Some(Quantize::Q4),
                Some(other) => {
                    return Err(invalid(
                        "quantize",
                        format!("`{other}` is not one of \"q8\", \"q4\""),
                    ));
                }
            };
            let verify_manifest = raw.verify.unwrap_or(true);
            let manifest_sha256 = match raw.manifest_sha256 {
                None => None,
                Some(_) if !verify_manifest => {
                    return Err(invalid(
                        "manifest_sha256",
                        "pins the manifest that `verify` checks; it cannot be used with \
                         verify = false",
                    ));
                }
                Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    Some(hex.to_ascii_lowercase())
                }
                Some(_) => {
                    return Err(invalid(
                        "manifest_sha256",
                        "must be 64 hexadecimal characters: the SHA-256 of the model's \
                         airlock-manifest.json (`sha256sum airlock-manifest.json`)",
                    ));
                }
            };
            ModelBackend::Burn {
                path: resolve(base, path),
                device,
                verify_manifest,
                manifest_sha256,
                quantize,
            }
        }
        "test" => {
            test_engine_built(cfg!(feature = "test-engine"))?;
            for (key, set) in [
                ("path", raw.path.is_some()),
                ("device", raw.device.is_some()),
                ("verify", raw.verify.is_some()),
                ("manifest_sha256", raw.manifest_sha256.is_some()),
                ("quantize", raw.quantize.is_some()),
            ] {
                if set {
                    return Err(invalid(key, "not used with backend = \"test\""));
                }
            }
            ModelBackend::Test {
                token_delay: duration_field(
                    "test_token_delay",
                    raw.test_token_delay,
                    Duration::ZERO,
                )?,
            }
        }
        other => {
            return Err(invalid(
                "backend",
                format!("`{other}` is not one of \"burn\", \"test\""),
            ));
        }
    };
    Ok(ModelConfig {
        name: raw.name,
        backend,
        max_queue: nonzero("max_queue", raw.max_queue, 64)?,
        max_active: nonzero("max_active", raw.max_active, 8)?,
        max_context: match raw.max_context {
            None => None,
            Some(v) => Some(nonzero("max_context", Some(v), 1)?),
        },
        prefill_chunk: nonzero("prefill_chunk", raw.prefill_chunk, 256)?,
        max_batch_tokens: nonzero("max_batch_tokens", raw.max_batch_tokens, 512)?,
        kv_cache_bytes: match raw.kv_cache {
            None => None,
            Some(size) => Some(byte_size("kv_cache", size)?),
        },
    })
}

/// `1048576`, `"1048576"`, `"512MiB"`, `"2GiB"`, `"64 KiB"` → bytes (binary units only, so
/// there is no doubt whether a G is 10⁹ or 2³⁰).
fn byte_size(path: &str, size: raw::RawSize) -> Result<NonZeroUsize, Invalid> {
    let bytes = match size {
        raw::RawSize::Bytes(b) => b,
        raw::RawSize::Text(text) => {
            let t = text.trim();
            let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            let (digits, unit) = t.split_at(split);
            let shift = match unit.trim() {
                "" | "B" => 0,
                "KiB" => 10,
                "MiB" => 20,
                "GiB" => 30,
                "TiB" => 40,
                other => {
                    return Err(invalid(
                        path,
                        format!("unit `{other}` is not one of B, KiB, MiB, GiB, TiB"),
                    ));
                }
            };
            let n: u64 = digits
                .parse()
                .map_err(|_| invalid(path, format!("`{text}` is not a size like \"2GiB\"")))?;
            n.checked_mul(1 << shift)
                .ok_or_else(|| invalid(path, "value is too large"))?
        }
    };
    let bytes = usize::try_from(bytes).map_err(|_| invalid(path, "value is too large"))?;
    NonZeroUsize::new(bytes).ok_or_else(|| invalid(path, "must be at least 1 byte"))
}

impl TryFrom<RawLogging> for LoggingConfig {
    type Error = Invalid;

    fn try_from(raw: RawLogging) -> Result<Self, Invalid> {
        let format = match raw.format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "logging.format",
                    format!("`{other}` is not one of \"text\", \"json\""),
                ));
            }
        };
        let level = raw.level.unwrap_or_else(|| "info".into());
        if let Err(e) = level.parse::<tracing_subscriber::EnvFilter>() {
            return Err(invalid(
                "logging.level",
                format!("`{level}` is not a valid filter: {e}"),
            ));
        }
        Ok(LoggingConfig { format, level })
    }
}
