//! The daemon's configuration: a TOML file deserialized into [`raw`] structs (unknown keys
//! rejected) and validated into the typed [`Config`] the server runs on. Every field is
//! documented in `docs/config.md`.
//!
//! Errors carry the file, the dotted key path and the reason, and print as
//! `FILE: key.path: reason` — the one line `airlockd check-config` shows before exiting 64.

pub mod admin;
pub mod audit;
pub mod cluster;
pub mod credential;
#[cfg(test)]
mod doc_check;
mod duration;
mod limits;
mod listener;
mod locate;
mod logging;
mod model;
pub mod policy;
pub mod raw;
pub mod remote;
pub mod telemetry;
#[cfg(test)]
mod tests;

use std::fmt;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use admin::AdminConfig;
pub use audit::AuditConfig;
pub use duration::parse_duration;
pub use limits::Limits;
pub use listener::{
    ClientCertFormat, ListenAddress, ListenerConfig, ListenerMode, ProxyConfig, Role, TlsConfig,
};
pub use logging::{LogFormat, LoggingConfig};
pub use model::{ModelBackend, ModelConfig};
use raw::RawConfig;
pub use remote::{Balance, RemoteConfig, RemoteTls, UpstreamAddr};
pub use telemetry::TelemetryConfig;

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
    /// `[cluster]`: where the tenants' limits are kept (this process, or a shared Redis).
    pub cluster: cluster::ClusterConfig,
    /// `[telemetry]`: request traces exported by OTLP; `None` (the default): nothing is sent.
    pub telemetry: Option<TelemetryConfig>,
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

    /// [`Config::load`], plus what serving needs beyond a well-formed file: an `[audit]`
    /// section, and TLS files (`[listener.tls]`, `[admin.tls]`) that load. What `serve`,
    /// `dev` and `check-config` run; a failure exits 64 naming the key.
    pub fn load_for_serve(file: &Path) -> Result<Config, ConfigError> {
        let config = Self::load(file)?;
        config
            .check_serve()
            .map_err(|Invalid { path, reason }| ConfigError {
                file: file.to_path_buf(),
                path,
                reason,
            })?;
        Ok(config)
    }

    /// The rules of [`Config::load_for_serve`] beyond [`Config::load`].
    fn check_serve(&self) -> Result<(), Invalid> {
        if let ListenerMode::Tls(tls) = &self.listener.mode {
            listener::check_tls_files("listener.tls", tls)?;
        }
        if let Some(tls) = self.admin.as_ref().and_then(|a| a.tls.as_ref()) {
            // The admin listener's failures are reported on the section as a whole.
            listener::check_tls_files("admin.tls", tls)
                .map_err(|Invalid { reason, .. }| invalid("admin.tls", reason))?;
        }
        for (i, model) in self.models.iter().enumerate() {
            if let ModelBackend::Remote(remote) = &model.backend
                && let Some(tls) = &remote.tls
            {
                check_remote_tls(i, tls)?;
            }
        }
        // The collectors' and SIEM receivers' TLS files: a CA or client key that does not
        // load is a bad configuration (exit 64 naming the key), not a failed start later.
        if let Some(t) = &self.telemetry {
            telemetry::check_tls_files("telemetry", &t.endpoint)?;
        }
        for (i, sink) in self.audit.iter().flat_map(|a| a.sinks.iter()).enumerate() {
            let section = format!("audit.sinks[{i}]");
            match &sink.kind {
                audit::SinkKind::OtlpHttp(endpoint) => {
                    telemetry::check_tls_files(&section, endpoint)?;
                }
                audit::SinkKind::SyslogTls { ca, client, .. } => {
                    crate::tls::client_config(ca, client.as_ref(), &[])
                        .map_err(|(key, reason)| invalid(format!("{section}.{key}"), reason))?;
                }
            }
        }
        // The shared limits store's TLS files (`rediss://`).
        if let Some(tls) = self.cluster.limits.as_ref().and_then(|l| l.tls.as_ref()) {
            tls.read()
                .map_err(|(key, reason)| invalid(format!("cluster.limits.{key}"), reason))?;
        }
        // Closed by default: the daemon makes no decision it cannot record (docs/audit.md).
        if self.audit.is_none() {
            return Err(invalid(
                "audit",
                "required: every request is recorded in the audit log; \
                 `airlockd audit keygen --dir DIR` creates its keys (docs/audit.md)",
            ));
        }
        Ok(())
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
        let engine_rules = raw.listener.engine.clone();
        let listener = listener::listener(raw.listener, base)?;
        let limits = Limits::try_from(raw.limits)?;
        let mut models = Vec::with_capacity(raw.models.len());
        for (i, model) in raw.models.into_iter().enumerate() {
            let model = model::model_config(model, base).map_err(|e| Invalid {
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
        // The test engine serves a single model and runs alone (remote pools beside it
        // are other engines).
        let tests = models
            .iter()
            .filter(|m| matches!(m.backend, ModelBackend::Test { .. }))
            .count();
        let local = models.iter().filter(|m| m.backend.is_local()).count();
        if tests > 0 && local > 1 {
            return Err(invalid(
                "models[1].backend",
                "backend = \"test\" is for tests and runs alone: use exactly one local \
                 [[models]] entry",
            ));
        }
        if listener.role == Role::Engine
            && let Some(i) = models.iter().position(|m| !m.backend.is_local())
        {
            return Err(invalid(
                format!("models[{i}].backend"),
                "\"remote\" is not served by listener.role = \"engine\": an engine node \
                 runs its models itself",
            ));
        }
        if models.is_empty() {
            return Err(invalid(
                "models",
                "at least one [[models]] entry is required",
            ));
        }
        let logging = LoggingConfig::try_from(raw.logging)?;
        let policy = match (listener.role, engine_rules) {
            (Role::Engine, Some(rules)) => {
                if raw.auth.is_some() {
                    return Err(invalid(
                        "auth",
                        "not used with listener.role = \"engine\": gateways authenticate by \
                         certificate ([listener.engine])",
                    ));
                }
                if !raw.tenants.is_empty() {
                    return Err(invalid(
                        "tenants",
                        "not used with listener.role = \"engine\": tenants are the gateways' \
                         business",
                    ));
                }
                policy::engine_role(rules, base)?
            }
            _ => policy::policy(raw.auth, raw.tenants, base)?,
        };
        let audit = raw.audit.map(|a| audit::audit(a, base)).transpose()?;
        let admin = raw.admin.map(|a| admin::admin(a, base)).transpose()?;
        let cluster = cluster::ClusterConfig::from_raw(raw.cluster, base)?;
        let telemetry = raw
            .telemetry
            .map(|t| TelemetryConfig::from_raw(t, base))
            .transpose()?;
        Ok(Config {
            listener,
            limits,
            models,
            logging,
            audit,
            policy,
            admin,
            cluster,
            telemetry,
        })
    }

    /// Warnings about dangerous but permitted settings, logged at start and on reload.
    /// (An engine-role node's policy is its `[listener.engine]` rules: nothing to warn.)
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
        if let Some(t) = &self.telemetry
            && t.endpoint.tls.is_none()
            && !telemetry::is_loopback(&t.endpoint.host)
        {
            out.push(format!(
                "telemetry.danger_allow_http = true: traces go to {} without TLS",
                t.endpoint.base
            ));
        }
        if let Some(section) = &self.audit {
            for sink in &section.sinks {
                if let audit::SinkKind::OtlpHttp(e) = &sink.kind
                    && e.tls.is_none()
                    && !telemetry::is_loopback(&e.host)
                {
                    out.push(format!(
                        "audit sink `{}`: danger_allow_http = true: audit records go to {} without TLS",
                        sink.name, e.base
                    ));
                }
            }
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

/// Builds a remote pool's TLS client as the engine will, naming the key whose file fails.
fn check_remote_tls(i: usize, tls: &RemoteTls) -> Result<(), Invalid> {
    crate::tls::client_config(&tls.ca, Some(&tls.client), &[])
        .map(drop)
        .map_err(|(key, reason)| invalid(format!("models[{i}].{key}"), reason))
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
