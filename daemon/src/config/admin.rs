//! `[admin]`: the operator listener serving `/metrics`, `/status` and `/healthz`.
//!
//! Closed by default: without the section there is no admin listener (`airlockd dev` writes
//! one on loopback). A non-loopback address is refused unless `[admin.tls]` is set, and
//! `[admin.tls]` always verifies client certificates: metrics name tenants and models, so
//! only the local host or a holder of a certificate from `client_ca` may read them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::listener::TlsConfig;
use super::{Invalid, invalid, resolve};

/// The conventional port for an exporter of this kind (Prometheus' port allocation list).
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:9464";

/// `[admin]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// `ip:port`; default `127.0.0.1:9464`.
    #[serde(default)]
    pub address: Option<String>,
    /// `[admin.tls]`: serve HTTPS and require client certificates.
    #[serde(default)]
    pub tls: Option<RawAdminTls>,
}

/// `[admin.tls]` as written: the listener's TLS files, with the client CA required.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdminTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    #[serde(default)]
    pub crls: Vec<PathBuf>,
}

/// The validated `[admin]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub address: SocketAddr,
    /// Mutual TLS on the admin listener (same types as `[listener.tls]`, client
    /// certificates always verified); `None` only on a loopback address.
    pub tls: Option<TlsConfig>,
}

pub(super) fn admin(raw: RawAdmin, base: &Path) -> Result<AdminConfig, Invalid> {
    let text = raw.address.as_deref().unwrap_or(DEFAULT_ADDRESS);
    let address: SocketAddr = text.parse().map_err(|_| {
        invalid(
            "admin.address",
            format!("`{text}` is not `ip:port` (e.g. \"127.0.0.1:9464\")"),
        )
    })?;
    let tls = raw.tls.map(|t| TlsConfig {
        cert: resolve(base, t.cert),
        key: resolve(base, t.key),
        client_ca: Some(resolve(base, t.client_ca)),
        crls: t.crls.into_iter().map(|p| resolve(base, p)).collect(),
        danger_no_client_auth: false,
    });
    if tls.is_none() && !address.ip().is_loopback() {
        return Err(invalid(
            "admin.address",
            format!(
                "{address} is not a loopback address; serving metrics and status beyond this \
                 host needs [admin.tls] (cert, key, client_ca: mutual TLS)"
            ),
        ));
    }
    Ok(AdminConfig { address, tls })
}
