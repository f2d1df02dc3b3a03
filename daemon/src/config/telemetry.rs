//! `[telemetry]`: OpenTelemetry traces of every request, exported by OTLP/HTTP (protobuf).
//! Off without the section: an air-gapped gateway sends nothing it was not told to
//! (docs/telemetry.md). The endpoint rules here ([`otlp_endpoint`]) are shared with the
//! `otlp-http` audit sink.

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{Invalid, duration_field, invalid, resolve};

/// `[telemetry]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    pub endpoint: String,
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
    pub service_name: Option<String>,
    #[serde(default)]
    pub sampling_ratio: Option<f64>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub queue: Option<u64>,
    #[serde(default)]
    pub batch: Option<u64>,
    #[serde(default)]
    pub interval: Option<String>,
    #[serde(default)]
    pub trust_traceparent: Option<String>,
}

/// An OTLP/HTTP collector: where to post, and the TLS to post with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpEndpoint {
    /// The base URL as written, without a trailing `/`; the signal's path (`/v1/traces`,
    /// `/v1/logs`) is appended.
    pub base: String,
    /// Host and port to connect to.
    pub host: String,
    pub port: u16,
    /// `None`: plain HTTP (loopback, or `danger_allow_http`). `Some`: HTTPS with these.
    pub tls: Option<OtlpTls>,
}

/// HTTPS to a collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpTls {
    /// The name the collector's certificate must carry (default: the endpoint's host).
    pub server_name: String,
    /// CA certificates (PEM) the collector's certificate must chain to. Required: an
    /// air-gapped host has no public roots to fall back on.
    pub ca: PathBuf,
    /// Client certificate and key (PEM) when the collector asks for one.
    pub client: Option<(PathBuf, PathBuf)>,
}

impl OtlpEndpoint {
    /// The full URL of one signal, e.g. `https://otel:4318/v1/traces`.
    pub fn url(&self, signal: &str) -> String {
        format!("{}/v1/{signal}", self.base)
    }
}

/// Whose W3C `traceparent` header a request's span continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustTraceparent {
    /// Only a request from a trusted reverse proxy (`listener.mode = "proxy"`, a peer in
    /// `trusted_proxies`); anyone else's is dropped and the span is a root.
    Proxy,
    /// Nobody's: every request's span is a root.
    Never,
    /// Every client's. A client can then choose its trace id and force sampling.
    Always,
}

/// The validated `[telemetry]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    pub endpoint: OtlpEndpoint,
    /// `service.name` of the exported resource.
    pub service_name: String,
    /// Share of root spans sampled (0.0–1.0); a trusted parent's decision is kept.
    pub sampling_ratio: f64,
    /// One export request, connecting included, must finish within this.
    pub timeout: Duration,
    /// Ended spans waiting for export at most; beyond it they are dropped and counted
    /// (`airlock_telemetry_spans_dropped_total`): a slow collector never holds a request.
    pub queue: NonZeroUsize,
    /// Spans per export request at most.
    pub batch: NonZeroUsize,
    /// A batch goes at least this often while spans wait.
    pub interval: Duration,
    pub trust_traceparent: TrustTraceparent,
}

/// Validates the endpoint of `[telemetry]` or of an `otlp-http` sink; `prefix` names the
/// section in errors (`telemetry`, `audit.sinks[0]`).
#[expect(
    clippy::too_many_arguments,
    reason = "the section's raw keys, each named in its own error"
)]
pub(super) fn otlp_endpoint(
    prefix: &str,
    endpoint: &str,
    server_name: Option<String>,
    ca: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    danger_allow_http: bool,
    base: &Path,
) -> Result<OtlpEndpoint, Invalid> {
    let key = |name: &str| format!("{prefix}.{name}");
    let bad = || {
        invalid(
            key("endpoint"),
            format!(
                "`{endpoint}` is not an http(s) URL like \"https://collector.example:4318\" \
                 (no query; `/v1/traces` or `/v1/logs` is appended)"
            ),
        )
    };
    let uri: http::Uri = endpoint.parse().map_err(|_| bad())?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad()),
    };
    if uri.query().is_some() {
        return Err(bad());
    }
    let authority = uri.authority().ok_or_else(bad)?;
    if authority.as_str().contains('@') {
        return Err(bad());
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if host.is_empty() {
        return Err(bad());
    }
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = uri.path().trim_end_matches('/');
    let base_url = format!(
        "{}://{}{path}",
        if https { "https" } else { "http" },
        authority.as_str()
    );
    let client = match (client_cert, client_key) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some((resolve(base, cert), resolve(base, key))),
        _ => {
            return Err(invalid(
                key("client_cert"),
                "client_cert and client_key go together",
            ));
        }
    };
    let tls = if https {
        if danger_allow_http {
            return Err(invalid(
                key("danger_allow_http"),
                "only used with an http:// endpoint",
            ));
        }
        let ca = ca.ok_or_else(|| {
            invalid(
                key("ca"),
                "required with an https:// endpoint: the CA (PEM) the collector's certificate chains to",
            )
        })?;
        Some(OtlpTls {
            server_name: server_name.unwrap_or_else(|| host.clone()),
            ca: resolve(base, ca),
            client,
        })
    } else {
        for (name, set) in [
            ("ca", ca.is_some()),
            ("client_cert", client.is_some()),
            ("server_name", server_name.is_some()),
        ] {
            if set {
                return Err(invalid(key(name), "only used with an https:// endpoint"));
            }
        }
        if !danger_allow_http && !is_loopback(&host) {
            return Err(invalid(
                key("endpoint"),
                "plain http:// only to a loopback collector; use https:// (or, on a network \
                 you trust, danger_allow_http = true)",
            ));
        }
        None
    };
    Ok(OtlpEndpoint {
        base: base_url,
        host,
        port,
        tls,
    })
}

/// Whether the endpoint's TLS files (CA, client certificate and key) load; an error names
/// the key under `section`.
pub(super) fn check_tls_files(section: &str, endpoint: &OtlpEndpoint) -> Result<(), Invalid> {
    let Some(tls) = &endpoint.tls else {
        return Ok(());
    };
    crate::tls::client_config(&tls.ca, tls.client.as_ref(), &[])
        .map(|_| ())
        .map_err(|(key, reason)| invalid(format!("{section}.{key}"), reason))
}

pub(crate) fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn count(path: &str, value: Option<u64>, default: usize) -> Result<NonZeroUsize, Invalid> {
    match value {
        None => NonZeroUsize::new(default).ok_or_else(|| invalid(path, "must be at least 1")),
        Some(v @ 1..=1_048_576) => {
            NonZeroUsize::new(v as usize).ok_or_else(|| invalid(path, "must be at least 1"))
        }
        Some(_) => Err(invalid(path, "must be between 1 and 1048576")),
    }
}

impl TelemetryConfig {
    pub(super) fn from_raw(raw: RawTelemetry, base: &Path) -> Result<TelemetryConfig, Invalid> {
        let endpoint = otlp_endpoint(
            "telemetry",
            &raw.endpoint,
            raw.server_name,
            raw.ca,
            raw.client_cert,
            raw.client_key,
            raw.danger_allow_http,
            base,
        )?;
        let service_name = raw.service_name.unwrap_or_else(|| "airlockd".to_owned());
        if service_name.is_empty() || service_name.len() > 255 {
            return Err(invalid(
                "telemetry.service_name",
                "must be 1-255 characters",
            ));
        }
        let sampling_ratio = raw.sampling_ratio.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&sampling_ratio) {
            return Err(invalid(
                "telemetry.sampling_ratio",
                "must be between 0.0 and 1.0",
            ));
        }
        let timeout = duration_field("telemetry.timeout", raw.timeout, Duration::from_secs(10))?;
        let interval = duration_field("telemetry.interval", raw.interval, Duration::from_secs(5))?;
        for (path, d) in [
            ("telemetry.timeout", timeout),
            ("telemetry.interval", interval),
        ] {
            if d.is_zero() {
                return Err(invalid(path, "must be greater than zero"));
            }
        }
        let queue = count("telemetry.queue", raw.queue, 2048)?;
        let batch = count("telemetry.batch", raw.batch, 512.min(queue.get()))?;
        if batch > queue {
            return Err(invalid(
                "telemetry.batch",
                "must not exceed telemetry.queue",
            ));
        }
        let trust_traceparent = match raw.trust_traceparent.as_deref() {
            None | Some("proxy") => TrustTraceparent::Proxy,
            Some("never") => TrustTraceparent::Never,
            Some("always") => TrustTraceparent::Always,
            Some(other) => {
                return Err(invalid(
                    "telemetry.trust_traceparent",
                    format!("`{other}` is not one of \"proxy\", \"never\", \"always\""),
                ));
            }
        };
        Ok(TelemetryConfig {
            endpoint,
            service_name,
            sampling_ratio,
            timeout,
            queue,
            batch,
            interval,
            trust_traceparent,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::super::Config;
    use super::TrustTraceparent;

    const BASE: &str = "[listener]\naddress = \"127.0.0.1:8443\"\n[listener.tls]\ncert = \"s.pem\"\nkey = \"s.key\"\nclient_ca = \"ca.pem\"\n[[models]]\nname = \"m\"\nbackend = \"test\"\n";

    fn parse(section: &str) -> Result<Config, (String, String)> {
        Config::parse(
            &format!("{BASE}[telemetry]\n{section}"),
            Path::new("/etc/airlock"),
        )
        .map_err(|e| (e.path, e.reason))
    }

    #[test]
    fn off_without_the_section() {
        let config = Config::parse(BASE, Path::new("/etc/airlock")).unwrap();
        assert!(
            config.telemetry.is_none(),
            "nothing is exported unless configured"
        );
    }

    #[test]
    fn defaults_and_https_endpoint() {
        let t = parse("endpoint = \"https://otel.example:4318/\"\nca = \"otel-ca.pem\"\n")
            .unwrap()
            .telemetry
            .unwrap();
        assert_eq!(
            t.endpoint.url("traces"),
            "https://otel.example:4318/v1/traces"
        );
        assert_eq!(
            (t.endpoint.host.as_str(), t.endpoint.port),
            ("otel.example", 4318)
        );
        let tls = t.endpoint.tls.as_ref().unwrap();
        assert_eq!(tls.server_name, "otel.example");
        assert_eq!(tls.ca, Path::new("/etc/airlock/otel-ca.pem"));
        assert_eq!(t.service_name, "airlockd");
        assert_eq!(t.sampling_ratio, 1.0);
        assert_eq!(t.timeout, Duration::from_secs(10));
        assert_eq!((t.queue.get(), t.batch.get()), (2048, 512));
        assert_eq!(t.trust_traceparent, TrustTraceparent::Proxy);

        let t = parse("endpoint = \"http://127.0.0.1:4318/otlp\"\nsampling_ratio = 0.25\ntrust_traceparent = \"never\"\nqueue = 16\n")
            .unwrap()
            .telemetry
            .unwrap();
        assert!(t.endpoint.tls.is_none());
        assert_eq!(t.endpoint.url("logs"), "http://127.0.0.1:4318/otlp/v1/logs");
        assert_eq!((t.queue.get(), t.batch.get()), (16, 16));
        assert_eq!(t.trust_traceparent, TrustTraceparent::Never);
        assert!(
            parse("endpoint = \"http://otel.example:4318\"\ndanger_allow_http = true\n").is_ok()
        );
    }

    #[test]
    fn tls_files_that_do_not_load_are_config_errors() {
        let dir = tempfile::tempdir().unwrap();
        let proxy = "[listener]\nmode = \"proxy\"\naddress = \"127.0.0.1:8443\"\n\
                     [listener.proxy]\ntrusted_proxies = [\"127.0.0.1\"]\n\
                     [[models]]\nname = \"m\"\nbackend = \"test\"\n";
        let text = format!(
            "{proxy}[telemetry]\nendpoint = \"https://otel.example:4318\"\nca = \"missing-ca.pem\"\n"
        );
        let config = Config::parse(&text, dir.path()).unwrap();
        let e = config.check_serve().unwrap_err();
        assert_eq!(e.path, "telemetry.ca", "{}", e.reason);
        assert!(e.reason.contains("missing-ca.pem"), "{}", e.reason);
    }

    #[test]
    fn errors_name_the_key() {
        for (text, key) in [
            ("", "telemetry.endpoint"),
            ("endpoint = \"ftp://x:1\"\n", "telemetry.endpoint"),
            (
                "endpoint = \"https://x:4318/?a=b\"\nca = \"c\"\n",
                "telemetry.endpoint",
            ),
            (
                "endpoint = \"http://otel.example:4318\"\n",
                "telemetry.endpoint",
            ),
            ("endpoint = \"https://otel.example:4318\"\n", "telemetry.ca"),
            (
                "endpoint = \"http://127.0.0.1:4318\"\nca = \"c\"\n",
                "telemetry.ca",
            ),
            (
                "endpoint = \"https://x:4318\"\nca = \"c\"\nclient_key = \"k\"\n",
                "telemetry.client_cert",
            ),
            (
                "endpoint = \"https://x:4318\"\nca = \"c\"\ndanger_allow_http = true\n",
                "telemetry.danger_allow_http",
            ),
            (
                "endpoint = \"http://[::1]:4318\"\nsampling_ratio = 1.5\n",
                "telemetry.sampling_ratio",
            ),
            (
                "endpoint = \"http://[::1]:4318\"\ntimeout = \"0s\"\n",
                "telemetry.timeout",
            ),
            (
                "endpoint = \"http://[::1]:4318\"\nqueue = 0\n",
                "telemetry.queue",
            ),
            (
                "endpoint = \"http://[::1]:4318\"\nqueue = 8\nbatch = 9\n",
                "telemetry.batch",
            ),
            (
                "endpoint = \"http://[::1]:4318\"\ntrust_traceparent = \"yes\"\n",
                "telemetry.trust_traceparent",
            ),
            (
                "endpoint = \"http://[::1]:4318\"\nservice_name = \"\"\n",
                "telemetry.service_name",
            ),
            ("endpoint = \"http://[::1]:4318\"\nnope = 1\n", "telemetry"),
        ] {
            let (path, reason) = parse(text).unwrap_err();
            assert!(path.starts_with(key), "{text}: {path}: {reason}");
        }
    }
}
