//! `[[models]] backend = "remote"`: a pool of OpenAI-compatible upstream servers (engine-role
//! `airlockd` nodes, vLLM, llama.cpp `llama-server`) that generate for this gateway, which
//! keeps identity, filters, limits and audit. Validated here; run by `crate::remote`.

use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::model::RawModel;
use super::{Invalid, duration_field, invalid, nonzero, resolve};

/// Where one upstream listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAddr {
    /// `https://host:port`: TLS, with the pool's CA and client certificate.
    Https { host: String, port: u16 },
    /// `unix:/path`: plain HTTP on a Unix socket (the socket's permissions are the guard).
    Unix(PathBuf),
}

impl std::fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Https { host, port } if host.contains(':') => {
                write!(f, "https://[{host}]:{port}")
            }
            Self::Https { host, port } => write!(f, "https://{host}:{port}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// How a request picks its upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// The eligible upstream with the fewest requests in flight (ties in turn).
    LeastOutstanding,
    /// The upstream a consistent (rendezvous) hash of the prompt's first `prefix_bytes`
    /// bytes names, so that requests sharing a prefix meet the upstream whose prefix cache
    /// holds it; least-outstanding instead when that upstream is overloaded (load guard).
    PrefixAffinity { prefix_bytes: NonZeroUsize },
}

/// The pool's TLS material (files, read when the engine is built and by `check-config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteTls {
    /// CA certificates (PEM) the upstreams' certificates must chain to.
    pub ca: PathBuf,
    /// Client certificate chain and key (PEM) the gateway presents: the identity an
    /// engine-role node admits (`[listener.engine]`).
    pub client: (PathBuf, PathBuf),
    /// The name upstream certificates must carry, when not each upstream's host.
    pub server_name: Option<String>,
}

/// A validated remote pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteConfig {
    pub upstreams: Vec<UpstreamAddr>,
    /// The model name sent upstream (default: this entry's `name`).
    pub upstream_model: String,
    /// `None` only when every upstream is a Unix socket.
    pub tls: Option<RemoteTls>,
    pub balance: Balance,
    /// Probed with GET on every upstream each `health_interval`; 200 is healthy, 503 is
    /// "loading" (llama.cpp), anything else a failure.
    pub health_path: String,
    pub health_interval: Duration,
    /// Consecutive failures (connect, 5xx, timeouts) after which an upstream is ejected.
    pub eject_after: NonZeroU32,
    /// First ejection's length; doubled with each further ejection, at most 5 minutes.
    pub eject_backoff: Duration,
    /// TCP connect plus TLS handshake: protects a request from a black-holed upstream.
    pub connect_timeout: Duration,
    /// Until the upstream's response head.
    pub first_byte_timeout: Duration,
    /// Longest silence between two pieces of a streamed response: a hung upstream ends the
    /// stream with an error instead of holding it open.
    pub idle_timeout: Duration,
    /// Most bytes one upstream response may have (a runaway upstream cannot fill memory).
    pub max_response_bytes: NonZeroUsize,
    /// Most idle connections kept per upstream for later requests (0: a connection per
    /// request). Bounds the sockets and TLS sessions held open on both sides.
    pub keepalive_connections: usize,
    /// Longest a kept connection idles before this gateway closes it: below the upstreams'
    /// own idle limits, so the gateway closes first and a request rarely meets a connection
    /// the upstream is closing.
    pub keepalive_timeout: Duration,
}

/// Most `keepalive_connections` accepted: more idle sockets than any upstream serves at once.
const MAX_KEEPALIVE_CONNECTIONS: u64 = 1024;

/// Keys of `[[models]]` that only a remote pool uses, and whether each is set.
pub(super) fn remote_keys(raw: &RawModel) -> [(&'static str, bool); 18] {
    [
        ("upstreams", raw.upstreams.is_some()),
        ("upstream_model", raw.upstream_model.is_some()),
        ("ca", raw.ca.is_some()),
        ("client_cert", raw.client_cert.is_some()),
        ("client_key", raw.client_key.is_some()),
        ("server_name", raw.server_name.is_some()),
        ("balance", raw.balance.is_some()),
        ("affinity_prefix_bytes", raw.affinity_prefix_bytes.is_some()),
        ("health_path", raw.health_path.is_some()),
        ("health_interval", raw.health_interval.is_some()),
        ("eject_after", raw.eject_after.is_some()),
        ("eject_backoff", raw.eject_backoff.is_some()),
        ("connect_timeout", raw.connect_timeout.is_some()),
        ("first_byte_timeout", raw.first_byte_timeout.is_some()),
        ("idle_timeout", raw.idle_timeout.is_some()),
        ("max_response_bytes", raw.max_response_bytes.is_some()),
        ("keepalive_connections", raw.keepalive_connections.is_some()),
        ("keepalive_timeout", raw.keepalive_timeout.is_some()),
    ]
}

/// Refuses the remote-only keys on a `backend` that does not use them.
pub(super) fn refuse_remote_keys(raw: &RawModel, backend: &str) -> Result<(), Invalid> {
    match remote_keys(raw).into_iter().find(|(_, set)| *set) {
        Some((key, _)) => Err(invalid(
            key,
            format!("only used with backend = \"remote\", not \"{backend}\""),
        )),
        None => Ok(()),
    }
}

/// Validates a `backend = "remote"` entry (paths in errors relative to the entry).
pub(super) fn remote(raw: &mut RawModel, base: &Path) -> Result<RemoteConfig, Invalid> {
    for (key, set) in [
        ("path", raw.path.is_some()),
        ("device", raw.device.is_some()),
        ("verify", raw.verify.is_some()),
        ("manifest_sha256", raw.manifest_sha256.is_some()),
        ("quantize", raw.quantize.is_some()),
        ("pooling", raw.pooling.is_some()),
        ("embeddings", raw.embeddings.is_some()),
        ("test_token_delay", raw.test_token_delay.is_some()),
        ("max_active", raw.max_active.is_some()),
        ("prefill_chunk", raw.prefill_chunk.is_some()),
        ("max_batch_tokens", raw.max_batch_tokens.is_some()),
        ("kv_cache", raw.kv_cache.is_some()),
        ("prefix_cache", raw.prefix_cache.is_some()),
        ("kv_cache_dtype", raw.kv_cache_dtype.is_some()),
        ("speculative", raw.speculative.is_some()),
    ] {
        if set {
            return Err(invalid(
                key,
                "not used with backend = \"remote\" (the upstream runs the model)",
            ));
        }
    }
    let written = raw.upstreams.take().unwrap_or_default();
    if written.is_empty() {
        return Err(invalid(
            "upstreams",
            "required with backend = \"remote\": at least one \"https://host:port\" or \
             \"unix:/path\"",
        ));
    }
    let mut upstreams = Vec::with_capacity(written.len());
    for (i, text) in written.iter().enumerate() {
        let addr =
            upstream(text, base).map_err(|reason| invalid(format!("upstreams[{i}]"), reason))?;
        if upstreams.contains(&addr) {
            return Err(invalid(format!("upstreams[{i}]"), "listed twice"));
        }
        upstreams.push(addr);
    }
    let upstream_model = raw
        .upstream_model
        .take()
        .unwrap_or_else(|| raw.name.clone());
    if upstream_model.is_empty()
        || upstream_model.len() > 256
        || upstream_model.chars().any(char::is_control)
    {
        return Err(invalid(
            "upstream_model",
            "must be 1 to 256 characters without control characters",
        ));
    }
    let https = upstreams
        .iter()
        .any(|u| matches!(u, UpstreamAddr::Https { .. }));
    let client = match (raw.client_cert.take(), raw.client_key.take()) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some((
            resolve(base, cert),
            super::credential::secret_path("client_key", base, key)?,
        )),
        _ => {
            return Err(invalid(
                "client_cert",
                "client_cert and client_key go together",
            ));
        }
    };
    let (ca, server_name) = (raw.ca.take(), raw.server_name.take());
    let tls = if https {
        let ca = ca.ok_or_else(|| {
            invalid(
                "ca",
                "required with an https:// upstream: the CA its certificate must chain to",
            )
        })?;
        // Mutual TLS always: an engine-role node admits only the gateways it names.
        let client = client.ok_or_else(|| {
            invalid(
                "client_cert",
                "required with an https:// upstream (with client_key): the certificate \
                 this gateway presents",
            )
        })?;
        Some(RemoteTls {
            ca: resolve(base, ca),
            client,
            server_name,
        })
    } else {
        for (key, set) in [
            ("ca", ca.is_some()),
            ("client_cert", client.is_some()),
            ("server_name", server_name.is_some()),
        ] {
            if set {
                return Err(invalid(
                    key,
                    "only used with https:// upstreams (these are all unix: sockets)",
                ));
            }
        }
        None
    };
    if let Some(name) = tls.as_ref().and_then(|t| t.server_name.as_ref())
        && rustls_pki_types::ServerName::try_from(name.as_str()).is_err()
    {
        return Err(invalid(
            "server_name",
            format!("`{name}` is not a DNS name or IP address"),
        ));
    }
    let balance = match raw.balance.take().as_deref() {
        None | Some("least_outstanding") => {
            if raw.affinity_prefix_bytes.is_some() {
                return Err(invalid(
                    "affinity_prefix_bytes",
                    "only used with balance = \"prefix_affinity\"",
                ));
            }
            Balance::LeastOutstanding
        }
        Some("prefix_affinity") => Balance::PrefixAffinity {
            prefix_bytes: nonzero("affinity_prefix_bytes", raw.affinity_prefix_bytes, 1024)?,
        },
        Some(other) => {
            return Err(invalid(
                "balance",
                format!("`{other}` is not one of \"least_outstanding\", \"prefix_affinity\""),
            ));
        }
    };
    let health_path = raw
        .health_path
        .take()
        .unwrap_or_else(|| "/v1/models".into());
    if !health_path.starts_with('/')
        || health_path.len() > 256
        || !health_path.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(invalid(
            "health_path",
            "must be an absolute path such as \"/health\" or \"/v1/models\"",
        ));
    }
    let positive = |key: &'static str, value: Option<String>, default: u64| {
        let d = duration_field(key, value, Duration::from_millis(default))?;
        if d.is_zero() {
            return Err(invalid(key, "must be greater than zero"));
        }
        Ok(d)
    };
    let eject_after = raw.eject_after.unwrap_or(3);
    let eject_after = u32::try_from(eject_after)
        .ok()
        .and_then(NonZeroU32::new)
        .ok_or_else(|| invalid("eject_after", "must be between 1 and 4294967295"))?;
    let keepalive_connections = raw.keepalive_connections.unwrap_or(32);
    if keepalive_connections > MAX_KEEPALIVE_CONNECTIONS {
        return Err(invalid(
            "keepalive_connections",
            format!("must be between 0 and {MAX_KEEPALIVE_CONNECTIONS}"),
        ));
    }
    Ok(RemoteConfig {
        upstreams,
        upstream_model,
        tls,
        balance,
        health_path,
        health_interval: positive("health_interval", raw.health_interval.take(), 5_000)?,
        eject_after,
        eject_backoff: positive("eject_backoff", raw.eject_backoff.take(), 5_000)?,
        connect_timeout: positive("connect_timeout", raw.connect_timeout.take(), 2_000)?,
        first_byte_timeout: positive("first_byte_timeout", raw.first_byte_timeout.take(), 60_000)?,
        idle_timeout: positive("idle_timeout", raw.idle_timeout.take(), 60_000)?,
        max_response_bytes: nonzero(
            "max_response_bytes",
            raw.max_response_bytes,
            16 * 1024 * 1024,
        )?,
        keepalive_connections: usize::try_from(keepalive_connections).unwrap_or(0),
        keepalive_timeout: positive("keepalive_timeout", raw.keepalive_timeout.take(), 4_000)?,
    })
}

/// `https://host:port` (port default 443) or `unix:/path`.
fn upstream(text: &str, base: &Path) -> Result<UpstreamAddr, String> {
    if let Some(path) = text.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("`unix:` needs a socket path".into());
        }
        return Ok(UpstreamAddr::Unix(resolve(base, PathBuf::from(path))));
    }
    let bad = || {
        format!(
            "`{text}` is not \"https://host:port\" or \"unix:/path\" (plain http:// over the \
             network is not offered: prompts would cross it in clear)"
        )
    };
    let rest = text.strip_prefix("https://").ok_or_else(bad)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains('/') || rest.contains('@') {
        return Err(bad());
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse::<u16>().map_err(|_| bad())?,
            None if after.is_empty() => 443,
            None => return Err(bad()),
        };
        (host.to_owned(), port)
    } else {
        match rest.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), port.parse::<u16>().map_err(|_| bad())?),
            None => (rest.to_owned(), 443),
        }
    };
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok(UpstreamAddr::Https { host, port })
}

#[cfg(test)]
mod tests;
