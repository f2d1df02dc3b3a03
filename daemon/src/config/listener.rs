//! `[listener]`: address, mode, and the TLS or reverse-proxy settings.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::credential::secret_path;
use super::{Invalid, duration_field, invalid, resolve};

/// `[listener]` as written.
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
    /// `gateway` (default) or `engine`.
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub engine: Option<RawEngineRole>,
}

/// `[listener.engine]`: the gateways an engine-role node serves, by client certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEngineRole {
    #[serde(default)]
    pub cert_cn: Vec<String>,
    #[serde(default)]
    pub cert_san: Vec<String>,
    #[serde(default)]
    pub cert_sha256: Vec<String>,
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

/// Where and how clients connect.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub address: ListenAddress,
    /// A TLS handshake that takes longer is abandoned: a client that opens a socket and says
    /// nothing must not hold a connection slot.
    pub handshake_timeout: Duration,
    pub mode: ListenerMode,
    pub role: Role,
}

/// What the daemon serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The gateway: tenants, credentials, filters, limits, audit, then a local or remote
    /// engine.
    Gateway,
    /// An engine node behind gateways: the model API for the client certificates
    /// `[listener.engine]` names only (the gateways keep the tenant policy).
    Engine,
}

/// A TCP address, a Unix socket path, or the socket systemd passes (socket activation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddress {
    Tcp(SocketAddr),
    Unix(PathBuf),
    /// `"systemd"`: the one listening socket passed by systemd (`LISTEN_FDS`, from
    /// `airlockd.socket`), TCP or Unix; checked against the mode when the server starts.
    Systemd,
}

impl fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Systemd => f.write_str("systemd"),
        }
    }
}

/// Whether the daemon terminates TLS itself or sits behind a reverse proxy that does.
#[derive(Debug, Clone)]
pub enum ListenerMode {
    Tls(TlsConfig),
    Proxy(ProxyConfig),
}

/// `[listener.tls]`: file paths, resolved relative to the config file. The files are read
/// when the TLS state is built (at start and on every reload), not here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA bundle client certificates must chain to; `None` only with `danger_no_client_auth`.
    pub client_ca: Option<PathBuf>,
    pub crls: Vec<PathBuf>,
    pub danger_no_client_auth: bool,
}

impl crate::tls::TlsFiles for TlsConfig {
    fn cert(&self) -> &Path {
        &self.cert
    }
    fn key(&self) -> &Path {
        &self.key
    }
    fn client_ca(&self) -> Option<&Path> {
        self.client_ca.as_deref()
    }
    fn crls(&self) -> &[PathBuf] {
        &self.crls
    }
    fn danger_no_client_auth(&self) -> bool {
        self.danger_no_client_auth
    }
}

/// Builds the TLS state `tls` describes, as the server will, and reports a failure on the
/// key under `section` that names the failing file (`listener.tls.key`, `admin.tls.crls[0]`,
/// or `section` itself when no one file is to blame), so that `check-config` and start-up
/// catch an unreadable key or a malformed CRL before serving.
pub(super) fn check_tls_files(section: &str, tls: &TlsConfig) -> Result<(), Invalid> {
    use crate::tls::TlsError;
    let Err(e) = crate::tls::server_config(tls) else {
        return Ok(());
    };
    let failed = match &e {
        TlsError::Read { path, .. } | TlsError::Pem { path, .. } | TlsError::Empty { path, .. } => {
            Some(path)
        }
        TlsError::Verifier(_) | TlsError::ServerCert(_) | TlsError::ClientCert(_) => None,
    };
    let key = match failed {
        Some(p) if *p == tls.cert => format!("{section}.cert"),
        Some(p) if *p == tls.key => format!("{section}.key"),
        Some(p) if Some(p) == tls.client_ca.as_ref() => format!("{section}.client_ca"),
        Some(p) => match tls.crls.iter().position(|c| c == p) {
            Some(i) => format!("{section}.crls[{i}]"),
            None => section.to_owned(),
        },
        None => section.to_owned(),
    };
    Err(invalid(key, e))
}

/// `[listener.proxy]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Peers whose `X-Forwarded-For` and client-certificate headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Whether peers on the Unix socket are trusted (`"unix"` in `trusted_proxies`).
    pub trust_unix_peers: bool,
    /// Lowercase header name carrying the client certificate.
    pub client_cert_header: http::HeaderName,
    pub client_cert_format: ClientCertFormat,
    pub danger_allow_non_loopback_proxy: bool,
}

/// How the trusted proxy encodes the client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCertFormat {
    /// Envoy's `x-forwarded-client-cert` (`Hash=…;Cert="…";URI=…`).
    Xfcc,
    /// A URL-escaped PEM certificate (nginx `$ssl_client_escaped_cert`, HAProxy, Traefik).
    EscapedPem,
}

pub(super) fn listener(raw: RawListener, base: &Path) -> Result<ListenerConfig, Invalid> {
    let handshake_timeout = duration_field(
        "listener.handshake_timeout",
        raw.handshake_timeout,
        Duration::from_secs(10),
    )?;
    if handshake_timeout.is_zero() {
        return Err(invalid(
            "listener.handshake_timeout",
            "must be greater than zero",
        ));
    }
    let address = match raw.address.strip_prefix("unix:") {
        Some(path) if !path.is_empty() => ListenAddress::Unix(resolve(base, PathBuf::from(path))),
        Some(_) => return Err(invalid("listener.address", "`unix:` needs a socket path")),
        None if raw.address == "systemd" => ListenAddress::Systemd,
        None => ListenAddress::Tcp(raw.address.parse().map_err(|_| {
            invalid(
                "listener.address",
                format!("`{}` is not `ip:port` (e.g. \"127.0.0.1:8443\", \"[::]:8443\"), `unix:/path` or \"systemd\"", raw.address),
            )
        })?),
    };
    let mode = match raw.mode.as_deref().unwrap_or("tls") {
        "tls" => {
            if raw.proxy.is_some() {
                return Err(invalid(
                    "listener.proxy",
                    "only allowed with listener.mode = \"proxy\"",
                ));
            }
            if matches!(address, ListenAddress::Unix(_)) {
                return Err(invalid(
                    "listener.address",
                    "a unix socket needs listener.mode = \"proxy\"",
                ));
            }
            let tls = raw
                .tls
                .ok_or_else(|| invalid("listener.tls", "required when listener.mode = \"tls\""))?;
            ListenerMode::Tls(tls_config(tls, base)?)
        }
        "proxy" => {
            if raw.tls.is_some() {
                return Err(invalid(
                    "listener.tls",
                    "not used with listener.mode = \"proxy\"; remove it",
                ));
            }
            let proxy = raw.proxy.ok_or_else(|| {
                invalid(
                    "listener.proxy",
                    "required when listener.mode = \"proxy\" (at least trusted_proxies)",
                )
            })?;
            let proxy = proxy_config(proxy)?;
            if let ListenAddress::Tcp(addr) = &address
                && !addr.ip().is_loopback()
                && !proxy.danger_allow_non_loopback_proxy
            {
                return Err(invalid(
                    "listener.address",
                    format!(
                        "{addr} is not a loopback address; plain HTTP in proxy mode is only served on \
                         loopback or a unix socket unless listener.proxy.danger_allow_non_loopback_proxy = true"
                    ),
                ));
            }
            ListenerMode::Proxy(proxy)
        }
        other => {
            return Err(invalid(
                "listener.mode",
                format!("`{other}` is not one of \"tls\", \"proxy\""),
            ));
        }
    };
    let role = match raw.role.as_deref() {
        None | Some("gateway") => {
            if raw.engine.is_some() {
                return Err(invalid(
                    "listener.engine",
                    "only allowed with listener.role = \"engine\"",
                ));
            }
            Role::Gateway
        }
        Some("engine") => {
            match &mode {
                ListenerMode::Tls(tls) if !tls.danger_no_client_auth => {}
                _ => {
                    return Err(invalid(
                        "listener.role",
                        "\"engine\" needs listener.mode = \"tls\" with client certificates \
                         (listener.tls.client_ca): gateways authenticate with theirs",
                    ));
                }
            }
            match &raw.engine {
                Some(e)
                    if !(e.cert_cn.is_empty()
                        && e.cert_san.is_empty()
                        && e.cert_sha256.is_empty()) => {}
                _ => {
                    return Err(invalid(
                        "listener.engine",
                        "required with listener.role = \"engine\": the gateways' client \
                         certificates (cert_cn, cert_san or cert_sha256)",
                    ));
                }
            }
            Role::Engine
        }
        Some(other) => {
            return Err(invalid(
                "listener.role",
                format!("`{other}` is not one of \"gateway\", \"engine\""),
            ));
        }
    };
    Ok(ListenerConfig {
        address,
        handshake_timeout,
        mode,
        role,
    })
}

fn tls_config(raw: RawTls, base: &Path) -> Result<TlsConfig, Invalid> {
    let client_ca = raw.client_ca.map(|p| resolve(base, p));
    if client_ca.is_none() && !raw.danger_no_client_auth {
        return Err(invalid(
            "listener.tls.client_ca",
            "required: clients authenticate with certificates (set danger_no_client_auth = true to \
             accept any client)",
        ));
    }
    if raw.danger_no_client_auth && (client_ca.is_some() || !raw.crls.is_empty()) {
        return Err(invalid(
            "listener.tls.danger_no_client_auth",
            "cannot be combined with client_ca or crls",
        ));
    }
    Ok(TlsConfig {
        cert: secret_path("listener.tls.cert", base, raw.cert)?,
        key: secret_path("listener.tls.key", base, raw.key)?,
        client_ca,
        crls: raw.crls.into_iter().map(|p| resolve(base, p)).collect(),
        danger_no_client_auth: raw.danger_no_client_auth,
    })
}

fn proxy_config(raw: RawProxy) -> Result<ProxyConfig, Invalid> {
    let mut trusted_proxies = Vec::new();
    let mut trust_unix_peers = false;
    for (i, entry) in raw.trusted_proxies.iter().enumerate() {
        if entry == "unix" {
            trust_unix_peers = true;
            continue;
        }
        let net = entry
            .parse::<IpNet>()
            .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| {
                invalid(
                    format!("listener.proxy.trusted_proxies[{i}]"),
                    format!(
                        "`{entry}` is not an IP address, a CIDR (e.g. \"10.0.0.0/8\") or \"unix\""
                    ),
                )
            })?;
        trusted_proxies.push(net);
    }
    let header_text = raw
        .client_cert_header
        .as_deref()
        .unwrap_or("x-forwarded-client-cert");
    let client_cert_header =
        http::HeaderName::from_bytes(header_text.as_bytes()).map_err(|_| {
            invalid(
                "listener.proxy.client_cert_header",
                format!("`{header_text}` is not a header name"),
            )
        })?;
    let client_cert_format = match raw.client_cert_format.as_deref() {
        None if client_cert_header.as_str() == "x-forwarded-client-cert" => ClientCertFormat::Xfcc,
        None => ClientCertFormat::EscapedPem,
        Some("xfcc") => ClientCertFormat::Xfcc,
        Some("escaped-pem") => ClientCertFormat::EscapedPem,
        Some(other) => {
            return Err(invalid(
                "listener.proxy.client_cert_format",
                format!("`{other}` is not one of \"xfcc\", \"escaped-pem\""),
            ));
        }
    };
    Ok(ProxyConfig {
        trusted_proxies,
        trust_unix_peers,
        client_cert_header,
        client_cert_format,
        danger_allow_non_loopback_proxy: raw.danger_allow_non_loopback_proxy,
    })
}
