//! `[cluster]`: settings shared by the gateway processes that serve one deployment.
//! `[cluster.limits]` chooses where the tenants' limits are kept (docs/multi-node.md).

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{Invalid, duration_field, invalid, resolve};

/// `[cluster]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    #[serde(default)]
    pub limits: Option<RawClusterLimits>,
}

/// `[cluster.limits]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClusterLimits {
    pub backend: Option<String>,
    pub url: Option<String>,
    pub key_prefix: Option<String>,
    pub timeout: Option<String>,
    pub on_unavailable: Option<String>,
    pub replicas: Option<u64>,
    pub lease_ttl: Option<String>,
    /// `rediss://`: the CA bundle (PEM) the server's certificate must chain to.
    pub ca: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// What a gateway does when the shared store does not answer within `timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnavailable {
    /// Refuse with 503 `limits_unavailable`: no request is served past a limit nobody
    /// can check.
    Closed,
    /// Enforce this process's share (the limits divided by `replicas`) locally until the
    /// store answers again.
    Local { replicas: NonZeroU32 },
}

/// `[cluster.limits]` with `backend = "redis"`: the tenants' limits are enforced across
/// every gateway sharing this Redis/Valkey.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedLimitsConfig {
    /// `redis://host:port/db`, `rediss://host:port/db` (TLS) or `unix:///path/redis.sock`.
    pub url: String,
    /// TLS for a `rediss://` URL (`None` for the others).
    pub tls: Option<StoreTls>,
    /// Prepended to every key, so deployments (or environments) can share one server.
    pub key_prefix: String,
    /// Budget of one round trip, connecting included. Protects the request path from a
    /// slow store: past it the store counts as unavailable.
    pub timeout: Duration,
    pub on_unavailable: OnUnavailable,
    /// How long a concurrency lease lives without renewal: the gateway renews the leases of
    /// its requests in flight every third of it, so a crashed gateway's slots come back
    /// within one `lease_ttl`.
    pub lease_ttl: Duration,
}

/// TLS to the store (`rediss://`): the server is verified against `ca` only (no system
/// trust store: air-gapped deployments name their CA), and `client` is presented when the
/// server asks for a client certificate (Redis `tls-auth-clients yes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreTls {
    pub ca: PathBuf,
    /// Certificate chain and private key (PEM), both or neither.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// The PEM files of a [`StoreTls`], read and checked.
pub struct StorePem {
    pub ca: Vec<u8>,
    /// Certificate chain and private key.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl StoreTls {
    /// Reads the CA bundle (at least one certificate) and the client certificate chain and
    /// key (a PEM private key). An error names the key of `[cluster.limits]` at fault and the
    /// file, never its contents.
    pub fn read(&self) -> Result<StorePem, (&'static str, String)> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};

        let read = |key: &'static str, path: &Path| {
            std::fs::read(path).map_err(|e| (key, format!("cannot read {}: {e}", path.display())))
        };
        let certificates = |key: &'static str, path: &Path| {
            let pem = read(key, path)?;
            let count = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    let reason = format!("{}: not a PEM certificate bundle: {e}", path.display());
                    (key, reason)
                })?
                .len();
            if count == 0 {
                return Err((key, format!("{}: no certificate in it", path.display())));
            }
            Ok(pem)
        };
        let ca = certificates("ca", &self.ca)?;
        let client = match &self.client {
            None => None,
            Some((cert, key)) => {
                let chain = certificates("client_cert", cert)?;
                let private = read("client_key", key)?;
                PrivateKeyDer::from_pem_slice(&private).map_err(|_| {
                    let reason = format!("{}: no PEM private key in it", key.display());
                    ("client_key", reason)
                })?;
                Some((chain, private))
            }
        };
        Ok(StorePem { ca, client })
    }
}

/// `[cluster]`; `limits` is `None` for the default `backend = "local"` (each process
/// enforces the limits alone).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterConfig {
    pub limits: Option<SharedLimitsConfig>,
}

impl ClusterConfig {
    /// Validates `[cluster]`; relative paths are resolved against `base` (the config
    /// file's directory).
    pub fn from_raw(raw: RawCluster, base: &Path) -> Result<Self, Invalid> {
        let Some(raw) = raw.limits else {
            return Ok(ClusterConfig::default());
        };
        let redis = match raw.backend.as_deref() {
            None | Some("local") => false,
            Some("redis") => true,
            Some(other) => {
                return Err(invalid(
                    "cluster.limits.backend",
                    format!("unknown backend `{other}`: expected \"local\" or \"redis\""),
                ));
            }
        };
        let replicas =
            match raw.replicas {
                None => None,
                Some(n) => Some(u32::try_from(n).ok().and_then(NonZeroU32::new).ok_or_else(
                    || {
                        invalid(
                            "cluster.limits.replicas",
                            "must be between 1 and 4294967295",
                        )
                    },
                )?),
            };
        let on_unavailable = match raw.on_unavailable.as_deref() {
            None | Some("closed") => {
                if replicas.is_some() {
                    return Err(invalid(
                        "cluster.limits.replicas",
                        "only used with on_unavailable = \"local\"",
                    ));
                }
                OnUnavailable::Closed
            }
            Some("local") => OnUnavailable::Local {
                replicas: replicas.ok_or_else(|| {
                    invalid(
                        "cluster.limits.replicas",
                        "required with on_unavailable = \"local\": the number of gateways \
                         the limits are divided between",
                    )
                })?,
            },
            Some(other) => {
                return Err(invalid(
                    "cluster.limits.on_unavailable",
                    format!("unknown value `{other}`: expected \"closed\" or \"local\""),
                ));
            }
        };
        let timeout = duration_field(
            "cluster.limits.timeout",
            raw.timeout,
            Duration::from_millis(250),
        )?;
        if timeout.is_zero() {
            return Err(invalid(
                "cluster.limits.timeout",
                "must be greater than zero",
            ));
        }
        let lease_ttl = duration_field(
            "cluster.limits.lease_ttl",
            raw.lease_ttl,
            Duration::from_secs(30),
        )?;
        if lease_ttl < Duration::from_secs(1) {
            return Err(invalid(
                "cluster.limits.lease_ttl",
                "must be at least 1s (leases are renewed every third of it)",
            ));
        }
        if !redis {
            if raw.url.is_some() {
                return Err(invalid(
                    "cluster.limits.url",
                    "only used with backend = \"redis\"",
                ));
            }
            return Ok(ClusterConfig::default());
        }
        let url = raw
            .url
            .ok_or_else(|| invalid("cluster.limits.url", "required with backend = \"redis\""))?;
        check_url(&url)?;
        let client = match (raw.client_cert, raw.client_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((resolve(base, cert), resolve(base, key))),
            _ => {
                return Err(invalid(
                    "cluster.limits.client_cert",
                    "client_cert and client_key go together",
                ));
            }
        };
        let tls = if url.starts_with("rediss://") {
            let ca = raw.ca.ok_or_else(|| {
                invalid(
                    "cluster.limits.ca",
                    "required with rediss://: the CA bundle the store's certificate must \
                     chain to",
                )
            })?;
            Some(StoreTls {
                ca: resolve(base, ca),
                client,
            })
        } else {
            if raw.ca.is_some() || client.is_some() {
                let key = if raw.ca.is_some() {
                    "ca"
                } else {
                    "client_cert"
                };
                return Err(invalid(
                    format!("cluster.limits.{key}"),
                    "only used with a rediss:// url",
                ));
            }
            None
        };
        Ok(ClusterConfig {
            limits: Some(SharedLimitsConfig {
                url,
                tls,
                key_prefix: raw.key_prefix.unwrap_or_else(|| "airlock:".to_owned()),
                timeout,
                on_unavailable,
                lease_ttl,
            }),
        })
    }
}

/// A URL the Redis client accepts, over TCP (`redis://`), TLS (`rediss://`) or a Unix
/// socket (`unix://`).
fn check_url(url: &str) -> Result<(), Invalid> {
    let path = "cluster.limits.url";
    if !["redis://", "rediss://", "unix://"]
        .iter()
        .any(|scheme| url.starts_with(scheme))
    {
        return Err(invalid(
            path,
            "must start with redis://, rediss:// or unix://",
        ));
    }
    redis::Client::open(url).map(drop).map_err(|e| {
        invalid(
            path,
            format!(
                "not a valid Redis URL: {}",
                e.detail().unwrap_or("malformed")
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClusterConfig, Invalid> {
        let raw: RawCluster = toml::from_str(text).map_err(|e| invalid("toml", e))?;
        ClusterConfig::from_raw(raw, Path::new("/etc/airlock"))
    }

    #[test]
    fn local_is_the_default() {
        assert_eq!(parse("").unwrap(), ClusterConfig::default());
        assert_eq!(
            parse("[limits]\nbackend = \"local\"").unwrap(),
            ClusterConfig::default()
        );
    }

    #[test]
    fn redis_with_defaults() {
        let c = parse("[limits]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:6379/0\"").unwrap();
        let l = c.limits.unwrap();
        assert_eq!(l.key_prefix, "airlock:");
        assert_eq!(l.timeout, Duration::from_millis(250));
        assert_eq!(l.on_unavailable, OnUnavailable::Closed);
        assert_eq!(l.lease_ttl, Duration::from_secs(30));
        assert_eq!(l.tls, None);
        let c = parse(
            "[limits]\nbackend = \"redis\"\nurl = \"unix:///run/redis.sock\"\n\
             on_unavailable = \"local\"\nreplicas = 3",
        )
        .unwrap();
        assert_eq!(
            c.limits.unwrap().on_unavailable,
            OnUnavailable::Local {
                replicas: NonZeroU32::new(3).unwrap()
            }
        );
    }

    #[test]
    fn rediss_takes_a_ca_and_an_optional_client_certificate() {
        let c = parse(
            "[limits]\nbackend = \"redis\"\nurl = \"rediss://redis.internal:6380/0\"\n\
             ca = \"redis-ca.pem\"\nclient_cert = \"/pki/gw.pem\"\nclient_key = \"gw.key\"\n\
             lease_ttl = \"10s\"",
        )
        .unwrap();
        let l = c.limits.unwrap();
        assert_eq!(l.lease_ttl, Duration::from_secs(10));
        assert_eq!(
            l.tls,
            Some(StoreTls {
                ca: PathBuf::from("/etc/airlock/redis-ca.pem"),
                client: Some((
                    PathBuf::from("/pki/gw.pem"),
                    PathBuf::from("/etc/airlock/gw.key")
                )),
            })
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                "backend = \"etcd\"",
                "cluster.limits.backend",
                "unknown backend",
            ),
            ("backend = \"redis\"", "cluster.limits.url", "required"),
            (
                "backend = \"redis\"\nurl = \"http://x\"",
                "cluster.limits.url",
                "redis://",
            ),
            (
                "backend = \"redis\"\nurl = \"redis://\"",
                "cluster.limits.url",
                "not a valid",
            ),
            (
                "backend = \"redis\"\nurl = \"redis://h\"\non_unavailable = \"local\"\nreplicas = 0",
                "cluster.limits.replicas",
                "between 1",
            ),
            (
                "backend = \"redis\"\nurl = \"redis://h\"\non_unavailable = \"local\"",
                "cluster.limits.replicas",
                "required",
            ),
            (
                "backend = \"redis\"\nurl = \"redis://h\"\nreplicas = 3",
                "cluster.limits.replicas",
                "only used",
            ),
            (
                "backend = \"redis\"\nurl = \"redis://h\"\non_unavailable = \"open\"",
                "cluster.limits.on_unavailable",
                "unknown",
            ),
            (
                "backend = \"redis\"\nurl = \"redis://h\"\ntimeout = \"0s\"",
                "cluster.limits.timeout",
                "greater than zero",
            ),
            (
                "backend = \"redis\"\nurl = \"rediss://h\"",
                "cluster.limits.ca",
                "required with rediss://",
            ),
            (
                "backend = \"redis\"\nurl = \"redis://h\"\nca = \"ca.pem\"",
                "cluster.limits.ca",
                "only used with a rediss://",
            ),
            (
                "backend = \"redis\"\nurl = \"rediss://h\"\nca = \"ca.pem\"\nclient_cert = \"c.pem\"",
                "cluster.limits.client_cert",
                "go together",
            ),
            (
                "backend = \"redis\"\nurl = \"redis://h\"\nlease_ttl = \"500ms\"",
                "cluster.limits.lease_ttl",
                "at least 1s",
            ),
        ];
        for (body, path, reason) in cases {
            let e = parse(&format!("[limits]\n{body}")).unwrap_err();
            assert_eq!(e.path, path, "{body}");
            assert!(e.reason.contains(reason), "{body}: {}", e.reason);
        }
    }
}
