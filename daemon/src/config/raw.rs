//! The configuration file exactly as written: every section rejects unknown keys, and no
//! value here has been checked beyond its TOML type. Each section's raw type lives in its
//! section's file beside its validated type; this file holds the whole file's shape. [`super::Config`] is built from these
//! with `TryFrom`, so an invalid file never reaches the server.

use serde::Deserialize;

pub use super::limits::RawLimits;
pub use super::listener::{RawEngineRole, RawListener, RawProxy, RawTls};
pub use super::logging::RawLogging;
pub use super::model::{RawModel, RawSize};

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
    /// `[cluster]` (see `super::cluster`).
    #[serde(default)]
    pub cluster: super::cluster::RawCluster,
    /// `[telemetry]` (see `super::telemetry`).
    #[serde(default)]
    pub telemetry: Option<super::telemetry::RawTelemetry>,
}
