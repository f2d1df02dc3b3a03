//! The configuration file exactly as written: every section rejects unknown keys, and no
//! value here has been checked beyond its TOML type. [`super::Config`] is built from these
//! with `TryFrom`, so an invalid file never reaches the server.

use std::path::PathBuf;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listener: RawListener,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub models: Vec<RawModel>,
    #[serde(default)]
    pub logging: RawLogging,
    /// `[auth]`: credentials accepted (API keys, JWTs, certificates).
    #[serde(default)]
    pub auth: Option<super::policy::RawAuth>,
    /// `[[tenants]]`: tenant policy.
    #[serde(default)]
    pub tenants: Vec<super::policy::RawTenant>,
    /// `[audit]` (see `super::audit`).
    #[serde(default)]
    pub audit: Option<super::audit::RawAudit>,
    /// `[admin]` (see `super::admin`).
    #[serde(default)]
    pub admin: Option<super::admin::RawAdmin>,
}

/// `[listener]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// `tls` (default) or `proxy`.
    #[serde(default)]
    pub mode: Option<String>,
    /// `host:port`, or `unix:/path` (proxy mode only).
    pub address: String,
    #[serde(default)]
    pub handshake_timeout: Option<String>,
    #[serde(default)]
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub proxy: Option<RawProxy>,
}

/// `[listener.tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    #[serde(default)]
    pub crls: Vec<PathBuf>,
    #[serde(default)]
    pub danger_no_client_auth: bool,
}

/// `[listener.proxy]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(default)]
    pub client_cert_header: Option<String>,
    #[serde(default)]
    pub client_cert_format: Option<String>,
    #[serde(default)]
    pub danger_allow_non_loopback_proxy: bool,
}

/// `[limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_body_bytes: Option<u64>,
    pub header_read_timeout: Option<String>,
    pub max_header_bytes: Option<u64>,
    pub request_deadline: Option<String>,
    pub max_connections: Option<u64>,
    pub max_concurrent_requests: Option<u64>,
    pub shutdown_grace: Option<String>,
    pub max_pending_handshakes: Option<u64>,
    pub max_connections_per_address: Option<u64>,
    pub connection_idle_timeout: Option<String>,
    pub http2_preface_timeout: Option<String>,
    pub max_connection_age: Option<String>,
    pub body_read_timeout: Option<String>,
}

/// One `[[models]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub name: String,
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub backend: Option<String>,
    #[serde(default)]
    pub device: Option<String>,
    #[serde(default)]
    pub verify: Option<bool>,
    /// SHA-256 (hex) of the model's `airlock-manifest.json`.
    #[serde(default)]
    pub manifest_sha256: Option<String>,
    #[serde(default)]
    pub max_queue: Option<u64>,
    #[serde(default)]
    pub max_active: Option<u64>,
    #[serde(default)]
    pub max_context: Option<u64>,
    /// `"q8"` or `"q4"`: quantize the weights at load (CPU only).
    #[serde(default)]
    pub quantize: Option<String>,
    #[serde(default)]
    pub prefill_chunk: Option<u64>,
    #[serde(default)]
    pub max_batch_tokens: Option<u64>,
    /// Bytes, as an integer or a string with a binary unit (`"512MiB"`, `"2GiB"`).
    #[serde(default)]
    pub kv_cache: Option<RawSize>,
    #[serde(default)]
    pub test_token_delay: Option<String>,
}

/// A size in bytes: an integer, or a string with a unit.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    Bytes(u64),
    Text(String),
}

/// `[logging]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogging {
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub level: Option<String>,
}
