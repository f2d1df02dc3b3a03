//! `[cluster]`: settings shared by the gateway processes that serve one deployment.
//! `[cluster.limits]` chooses where the tenants' limits are kept (docs/multi-node.md).

use std::num::NonZeroU32;
use std::time::Duration;

use serde::Deserialize;

use super::{Invalid, duration_field, invalid};

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
    /// `redis://host:port/db` or `unix:///path/redis.sock` (no TLS yet).
    pub url: String,
    /// Prepended to every key, so deployments (or environments) can share one server.
    pub key_prefix: String,
    /// Budget of one round trip, connecting included. Protects the request path from a
    /// slow store: past it the store counts as unavailable.
    pub timeout: Duration,
    pub on_unavailable: OnUnavailable,
}

/// `[cluster]`; `limits` is `None` for the default `backend = "local"` (each process
/// enforces the limits alone).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterConfig {
    pub limits: Option<SharedLimitsConfig>,
}

impl TryFrom<RawCluster> for ClusterConfig {
    type Error = Invalid;

    fn try_from(raw: RawCluster) -> Result<Self, Invalid> {
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
        Ok(ClusterConfig {
            limits: Some(SharedLimitsConfig {
                url,
                key_prefix: raw.key_prefix.unwrap_or_else(|| "airlock:".to_owned()),
                timeout,
                on_unavailable,
            }),
        })
    }
}

/// A URL the Redis client accepts, over TCP or a Unix socket. `rediss://` (TLS) is not
/// built in yet: refusing it beats sending credentials in clear.
fn check_url(url: &str) -> Result<(), Invalid> {
    let path = "cluster.limits.url";
    if !(url.starts_with("redis://") || url.starts_with("unix://")) {
        return Err(invalid(
            path,
            "must start with redis:// or unix:// (rediss:// is not supported yet)",
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
        ClusterConfig::try_from(raw)
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
        ];
        for (body, path, reason) in cases {
            let e = parse(&format!("[limits]\n{body}")).unwrap_err();
            assert_eq!(e.path, path, "{body}");
            assert!(e.reason.contains(reason), "{body}: {}", e.reason);
        }
    }
}
