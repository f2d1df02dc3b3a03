//! `[auth]` and `[[tenants]]`: who may call, as which tenant, with which limits and filters.
//! Validated into [`PolicyConfig`]: filters compiled, the JWKS file loaded and checked,
//! so an invalid policy never reaches the server.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use airlock_policy::filter::{Action, Detector, FilterSet, FilterSpec, Matcher, RuleSpec};
use airlock_policy::jwt::{JwtSettings, JwtVerifier};
use airlock_policy::ratelimit::{LimitSpec, Per, RequestRate, TenantLimiter};
use airlock_policy::{IdentityRule, Tenant, TenantSet};
use serde::Deserialize;

use super::{Invalid, duration_field, invalid, resolve};

/// `[auth]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub cert_tenants: Option<String>,
    pub key_db: Option<PathBuf>,
    pub key_cache_ttl: Option<String>,
    pub jwks: Option<PathBuf>,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    pub jwt_tenant_claim: Option<String>,
    pub jwt_leeway: Option<String>,
}

/// One `[[tenants]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    pub name: String,
    #[serde(default)]
    pub models: Vec<String>,
    pub max_prompt_tokens: Option<u32>,
    pub max_tokens: Option<u32>,
    pub requests_per_second: Option<u32>,
    pub requests_per_minute: Option<u32>,
    pub burst: Option<u32>,
    pub tokens_per_minute: Option<u32>,
    pub max_concurrent: Option<u32>,
    #[serde(default)]
    pub cert_cn: Vec<String>,
    #[serde(default)]
    pub cert_san: Vec<String>,
    #[serde(default)]
    pub cert_sha256: Vec<String>,
    #[serde(default)]
    pub require_cert: bool,
    pub max_input_bytes: Option<u64>,
    #[serde(default)]
    pub filters: Vec<RawFilterRule>,
    /// Scheduling weight, integer ≥ 1 (default 1).
    pub weight: Option<u32>,
    /// Overrides `limits.body_read_timeout` for this tenant's requests.
    pub body_read_timeout: Option<String>,
}

/// One `[[tenants.filters]]` rule as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFilterRule {
    pub id: String,
    pub action: String,
    pub detector: Option<String>,
    pub regex: Option<String>,
    pub literal: Option<String>,
    #[serde(default)]
    pub case_insensitive: bool,
    /// `prompt`, `output` or `both` (default).
    pub apply: Option<String>,
}

/// How a client certificate alone names a tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertTenants {
    /// Only through the `cert_*` rules of `[[tenants]]`.
    Rules,
    /// Legacy: any verified certificate is a tenant named by its CN (else fingerprint),
    /// without limits or filters. The default only when there is no `[[tenants]]`.
    CommonName,
}

/// The validated policy.
#[derive(Clone, Debug)]
pub struct PolicyConfig {
    pub cert_tenants: CertTenants,
    pub tenants: Arc<TenantSet>,
    /// The API key database; `None` disables API keys.
    pub key_db: Option<PathBuf>,
    /// How long one argon2 verification is trusted (revocation is checked regardless).
    pub key_cache_ttl: Duration,
    pub jwt: Option<Arc<JwtVerifier>>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            cert_tenants: CertTenants::CommonName,
            tenants: Arc::new(TenantSet::default()),
            key_db: None,
            key_cache_ttl: Duration::from_secs(300),
            jwt: None,
        }
    }
}

pub fn policy(
    auth: Option<RawAuth>,
    tenants: Vec<RawTenant>,
    base: &Path,
) -> Result<PolicyConfig, Invalid> {
    let auth = auth.unwrap_or_default();
    let mut built = Vec::with_capacity(tenants.len());
    for (i, raw) in tenants.into_iter().enumerate() {
        let t = tenant(raw).map_err(|e| Invalid {
            path: format!("tenants[{i}].{}", e.path),
            reason: e.reason,
        })?;
        built.push(t);
    }
    let cert_tenants = match auth.cert_tenants.as_deref() {
        None if built.is_empty() => CertTenants::CommonName,
        None | Some("rules") => CertTenants::Rules,
        Some("cn") if built.is_empty() => CertTenants::CommonName,
        Some("cn") => {
            return Err(invalid(
                "auth.cert_tenants",
                "\"cn\" is only allowed without [[tenants]]",
            ));
        }
        Some(other) => {
            return Err(invalid(
                "auth.cert_tenants",
                format!("`{other}` is not one of \"rules\", \"cn\""),
            ));
        }
    };
    let tenants = TenantSet::new(built).map_err(|e| invalid("tenants", e))?;
    let jwt = match auth.jwks {
        None => {
            for (key, set) in [
                ("auth.jwt_issuer", auth.jwt_issuer.is_some()),
                ("auth.jwt_audience", auth.jwt_audience.is_some()),
            ] {
                if set {
                    return Err(invalid(key, "only allowed with auth.jwks"));
                }
            }
            None
        }
        Some(path) => {
            let path = resolve(base, path);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                invalid("auth.jwks", format!("cannot read {}: {e}", path.display()))
            })?;
            let settings = JwtSettings {
                issuer: auth
                    .jwt_issuer
                    .ok_or_else(|| invalid("auth.jwt_issuer", "required with auth.jwks"))?,
                audience: auth
                    .jwt_audience
                    .ok_or_else(|| invalid("auth.jwt_audience", "required with auth.jwks"))?,
                tenant_claim: auth.jwt_tenant_claim.unwrap_or_else(|| "tenant".into()),
                leeway: duration_field(
                    "auth.jwt_leeway",
                    auth.jwt_leeway,
                    Duration::from_secs(30),
                )?,
            };
            if settings.leeway > Duration::from_secs(300) {
                return Err(invalid("auth.jwt_leeway", "must be at most 5m"));
            }
            Some(Arc::new(
                JwtVerifier::from_jwks(&text, settings).map_err(|e| invalid("auth.jwks", e))?,
            ))
        }
    };
    Ok(PolicyConfig {
        cert_tenants,
        tenants: Arc::new(tenants),
        key_db: auth.key_db.map(|p| resolve(base, p)),
        key_cache_ttl: duration_field(
            "auth.key_cache_ttl",
            auth.key_cache_ttl,
            Duration::from_secs(300),
        )?,
        jwt,
    })
}

/// The one tenant of an engine-role node: every gateway it admits.
pub const ENGINE_ROLE_TENANT: &str = "gateway";

/// The policy of an engine-role node (`[listener] role = "engine"`): one tenant, `gateway`,
/// that only the client certificates `[listener.engine]` names can be (no API keys, no
/// JWTs, no other certificate), with every model and no limits or filters of its own —
/// the gateways in front apply the real tenants' policy before a request gets here.
pub fn engine_role(
    rules: super::listener::RawEngineRole,
    base: &Path,
) -> Result<PolicyConfig, Invalid> {
    let gateway = RawTenant {
        name: ENGINE_ROLE_TENANT.into(),
        models: vec!["*".into()],
        max_prompt_tokens: None,
        max_tokens: None,
        requests_per_second: None,
        requests_per_minute: None,
        burst: None,
        tokens_per_minute: None,
        max_concurrent: None,
        cert_cn: rules.cert_cn,
        cert_san: rules.cert_san,
        cert_sha256: rules.cert_sha256,
        require_cert: true,
        max_input_bytes: None,
        filters: Vec::new(),
        weight: None,
        body_read_timeout: None,
    };
    policy(None, vec![gateway], base).map_err(|e| Invalid {
        path: e
            .path
            .strip_prefix("tenants[0].")
            .map_or(e.path.clone(), |key| format!("listener.engine.{key}")),
        reason: e.reason,
    })
}

fn nz(path: &str, v: Option<u32>) -> Result<Option<NonZeroU32>, Invalid> {
    v.map(|v| NonZeroU32::new(v).ok_or_else(|| invalid(path, "must be at least 1")))
        .transpose()
}

fn tenant(raw: RawTenant) -> Result<Tenant, Invalid> {
    if raw.name.is_empty() || raw.name.len() > 128 || raw.name.chars().any(char::is_control) {
        return Err(invalid(
            "name",
            "must be 1 to 128 characters without control characters",
        ));
    }
    let requests = match (raw.requests_per_second, raw.requests_per_minute) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "requests_per_minute",
                "set requests_per_second or requests_per_minute, not both",
            ));
        }
        (Some(n), None) => Some((n, Per::Second, "requests_per_second")),
        (None, Some(n)) => Some((n, Per::Minute, "requests_per_minute")),
        (None, None) => None,
    };
    let requests = match requests {
        None => {
            if raw.burst.is_some() {
                return Err(invalid("burst", "only allowed with a request rate"));
            }
            None
        }
        Some((n, per, key)) => {
            let count = nz(key, Some(n))?.ok_or_else(|| invalid(key, "required"))?;
            Some(RequestRate {
                count,
                per,
                burst: nz("burst", raw.burst)?.unwrap_or(count),
            })
        }
    };
    let limits = LimitSpec {
        requests,
        tokens_per_minute: nz("tokens_per_minute", raw.tokens_per_minute)?,
        max_concurrent: nz("max_concurrent", raw.max_concurrent)?,
    };
    let mut identities = Vec::new();
    identities.extend(raw.cert_cn.into_iter().map(IdentityRule::CommonName));
    identities.extend(raw.cert_san.into_iter().map(IdentityRule::San));
    for fp in raw.cert_sha256 {
        let fp: String = fp
            .chars()
            .filter(|c| *c != ':')
            .collect::<String>()
            .to_ascii_lowercase();
        if fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid(
                "cert_sha256",
                "must be SHA-256 fingerprints in hex",
            ));
        }
        identities.push(IdentityRule::Fingerprint(fp));
    }
    if raw.require_cert && identities.is_empty() {
        return Err(invalid(
            "require_cert",
            "needs cert_cn, cert_san or cert_sha256 rules",
        ));
    }
    let max_input_bytes = match raw.max_input_bytes {
        None => airlock_policy::filter::DEFAULT_MAX_INPUT_BYTES,
        Some(v) => usize::try_from(v).map_err(|_| invalid("max_input_bytes", "too large"))?,
    };
    let (mut input, mut output) = (Vec::new(), Vec::new());
    for (i, rule) in raw.filters.into_iter().enumerate() {
        let at = |key: &str| format!("filters[{i}].{key}");
        let action = match rule.action.as_str() {
            "deny" => Action::Deny,
            "redact" => Action::Redact,
            other => {
                return Err(invalid(
                    at("action"),
                    format!("`{other}` is not one of \"deny\", \"redact\""),
                ));
            }
        };
        let matcher = match (rule.detector, rule.regex, rule.literal) {
            (Some(d), None, None) => Matcher::Detector(
                Detector::from_name(&d)
                    .ok_or_else(|| invalid(at("detector"), format!("unknown detector `{d}`")))?,
            ),
            (None, Some(r), None) => Matcher::Regex(r),
            (None, None, Some(l)) => Matcher::Literal(l),
            _ => {
                return Err(invalid(
                    at("id"),
                    "set exactly one of detector, regex, literal",
                ));
            }
        };
        let spec = RuleSpec {
            id: rule.id,
            action,
            matcher,
            case_insensitive: rule.case_insensitive,
        };
        match rule.apply.as_deref().unwrap_or("both") {
            "prompt" => input.push(spec),
            "output" => output.push(spec),
            "both" => {
                input.push(spec.clone());
                output.push(spec);
            }
            other => {
                return Err(invalid(
                    at("apply"),
                    format!("`{other}` is not one of \"prompt\", \"output\", \"both\""),
                ));
            }
        }
    }
    let compile = |rules| {
        FilterSet::compile(&FilterSpec {
            rules,
            max_input_bytes,
        })
        .map(Arc::new)
        .map_err(|e| invalid("filters", e))
    };
    Ok(Tenant {
        name: raw.name,
        allowed_models: raw.models,
        max_prompt_tokens: raw.max_prompt_tokens,
        max_completion_tokens: raw.max_tokens,
        limiter: TenantLimiter::new(&limits),
        limits,
        input_filter: compile(input)?,
        output_filter: compile(output)?,
        identities,
        require_cert: raw.require_cert,
        body_read_timeout: match raw.body_read_timeout {
            None => None,
            Some(text) => match super::parse_duration(&text) {
                Ok(d) if d.is_zero() => {
                    return Err(invalid("body_read_timeout", "must be greater than zero"));
                }
                Ok(d) => Some(d),
                Err(reason) => return Err(invalid("body_read_timeout", reason)),
            },
        },
        weight: match raw.weight {
            None => 1,
            Some(0) => return Err(invalid("weight", "must be at least 1")),
            Some(w) => w,
        },
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Config;
    use super::CertTenants;

    const BASE: &str = r#"
[listener]
address = "127.0.0.1:8443"
[listener.tls]
cert = "server.pem"
key = "server.key"
client_ca = "ca.pem"
[[models]]
name = "m"
backend = "test"
"#;

    fn parse(extra: &str) -> Result<Config, (String, String)> {
        Config::parse(&format!("{BASE}{extra}"), Path::new("/etc/airlock"))
            .map_err(|e| (e.path, e.reason))
    }

    #[test]
    fn no_tenants_is_legacy_cn_mode() {
        let c = parse("").unwrap();
        assert_eq!(c.policy.cert_tenants, CertTenants::CommonName);
        assert!(c.policy.tenants.is_empty() && c.policy.jwt.is_none());
    }

    #[test]
    fn tenants_parse_with_limits_and_filters() {
        let c = parse(
            r#"
[auth]
key_db = "keys.db"
[[tenants]]
name = "acme"
models = ["m"]
requests_per_minute = 60
burst = 5
tokens_per_minute = 1000
cert_cn = ["svc"]
[[tenants.filters]]
id = "cards"
action = "redact"
detector = "payment_card"
"#,
        )
        .unwrap();
        assert_eq!(c.policy.cert_tenants, CertTenants::Rules);
        assert_eq!(
            c.policy.key_db.as_deref(),
            Some(Path::new("/etc/airlock/keys.db"))
        );
        let t = c.policy.tenants.get("acme").unwrap();
        assert_eq!(t.limiter.status().limit_requests, Some(5));
        assert!(!t.input_filter.is_empty() && !t.output_filter.is_empty());
    }

    #[test]
    fn invalid_policies_name_the_key() {
        let cases = [
            ("[[tenants]]\nname = \"a\"\nbogus = 1\n", "tenants"),
            (
                "[auth]\ncert_tenants = \"cn\"\n[[tenants]]\nname = \"a\"\n",
                "auth.cert_tenants",
            ),
            (
                "[[tenants]]\nname = \"a\"\nrequests_per_second = 1\nrequests_per_minute = 1\n",
                "tenants[0].requests_per_minute",
            ),
            (
                "[[tenants]]\nname = \"a\"\n[[tenants.filters]]\nid = \"x\"\naction = \"deny\"\ndetector = \"nope\"\n",
                "tenants[0].filters[0].detector",
            ),
            (
                "[[tenants]]\nname = \"a\"\n[[tenants.filters]]\nid = \"x\"\naction = \"deny\"\nregex = \"(\"\n",
                "tenants[0].filters",
            ),
            (
                "[[tenants]]\nname = \"a\"\nrequire_cert = true\n",
                "tenants[0].require_cert",
            ),
            ("[auth]\njwt_issuer = \"x\"\n", "auth.jwt_issuer"),
            (
                "[[tenants]]\nname = \"a\"\nweight = 0\n",
                "tenants[0].weight",
            ),
            (
                "[[tenants]]\nname = \"a\"\n[[tenants]]\nname = \"a\"\n",
                "tenants",
            ),
        ];
        for (text, path) in cases {
            let (p, reason) = parse(text)
                .err()
                .unwrap_or_else(|| panic!("accepted {text}"));
            assert!(p.starts_with(path), "{text}: {p}: {reason}");
        }
    }
}
