//! Tenants: who may use which models, with which caps, limits and filters, and which
//! client certificates belong to them.

mod throttle;

use std::collections::HashMap;
use std::sync::Arc;

use crate::filter::FilterSet;
use crate::ratelimit::{LimitSpec, TenantLimiter};

pub use throttle::FailureThrottle;

/// A client certificate as the policy sees it (the daemon extracts it from TLS or from
/// a trusted proxy's header).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertIdentity {
    pub common_name: Option<String>,
    /// DNS, e-mail and URI subject alternative names.
    pub sans: Vec<String>,
    /// SHA-256 of the DER, lowercase hex.
    pub sha256: String,
}

/// A rule that makes a certificate belong to a tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityRule {
    CommonName(String),
    San(String),
    /// SHA-256 fingerprint, lowercase hex without separators.
    Fingerprint(String),
}

impl IdentityRule {
    pub fn matches(&self, cert: &CertIdentity) -> bool {
        match self {
            IdentityRule::CommonName(cn) => cert.common_name.as_deref() == Some(cn.as_str()),
            IdentityRule::San(san) => cert.sans.iter().any(|s| s == san),
            IdentityRule::Fingerprint(fp) => cert.sha256.eq_ignore_ascii_case(fp),
        }
    }
}

/// One tenant, validated.
#[derive(Debug)]
pub struct Tenant {
    pub name: String,
    /// Models this tenant may use; empty means none.
    pub allowed_models: Vec<String>,
    /// Refuse prompts longer than this many tokens.
    pub max_prompt_tokens: Option<u32>,
    /// Cap on `max_tokens` (also the default when a request gives none).
    pub max_completion_tokens: Option<u32>,
    pub limits: LimitSpec,
    pub limiter: Arc<TenantLimiter>,
    pub input_filter: Arc<FilterSet>,
    pub output_filter: Arc<FilterSet>,
    /// Certificates that select this tenant on their own (no key or token needed).
    pub identities: Vec<IdentityRule>,
    /// Keys and tokens for this tenant are accepted only over a certificate matching
    /// `identities`: a leaked key alone is not enough.
    pub require_cert: bool,
    /// Scheduling weight (≥ 1): a flooding tenant gets its weighted share of the engine and
    /// no more, so it cannot starve the others.
    pub weight: u32,
    /// Time allowed to receive one request body once the request holds its concurrency
    /// slots; `None`: the server's default. Bounds how long slow uploads hold them.
    pub body_read_timeout: Option<std::time::Duration>,
}

impl Tenant {
    pub fn allows_model(&self, model: &str) -> bool {
        self.allowed_models.iter().any(|m| m == "*" || m == model)
    }

    /// Whether `cert` belongs to this tenant.
    pub fn owns_cert(&self, cert: &CertIdentity) -> bool {
        self.identities.iter().any(|r| r.matches(cert))
    }
}

/// All tenants of one config load.
#[derive(Debug, Default)]
pub struct TenantSet {
    tenants: HashMap<String, Arc<Tenant>>,
    /// In config order, for certificate rules (first match wins).
    order: Vec<Arc<Tenant>>,
}

impl TenantSet {
    pub fn new(tenants: Vec<Tenant>) -> Result<Self, crate::PolicyError> {
        let mut set = Self::default();
        for t in tenants {
            let t = Arc::new(t);
            if set.tenants.insert(t.name.clone(), Arc::clone(&t)).is_some() {
                return Err(crate::PolicyError::Config(format!(
                    "tenant {:?} defined twice",
                    t.name
                )));
            }
            set.order.push(t);
        }
        Ok(set)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Tenant>> {
        self.tenants.get(name)
    }

    /// The first tenant (in config order) whose identity rules match `cert`.
    pub fn for_cert(&self, cert: &CertIdentity) -> Option<&Arc<Tenant>> {
        self.order.iter().find(|t| t.owns_cert(cert))
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        self.order.iter()
    }

    /// Carries rate-limiter state over a reload: each tenant whose name and limits are
    /// unchanged from `previous` takes over its limiter, so a reload neither refills a
    /// tenant's quota nor splits it between connections of two generations. A tenant whose
    /// limits changed starts afresh. Tenants already shared elsewhere are left as they are.
    pub fn inherit_limiters(self, previous: &TenantSet) -> TenantSet {
        let TenantSet { tenants, order } = self;
        drop(tenants);
        let mut out = TenantSet::default();
        for tenant in order {
            let tenant = match previous.get(&tenant.name) {
                Some(old) if old.limits == tenant.limits => match Arc::try_unwrap(tenant) {
                    Ok(mut owned) => {
                        owned.limiter = Arc::clone(&old.limiter);
                        Arc::new(owned)
                    }
                    Err(shared) => shared,
                },
                _ => tenant,
            };
            out.tenants.insert(tenant.name.clone(), Arc::clone(&tenant));
            out.order.push(tenant);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str, rules: Vec<IdentityRule>) -> Tenant {
        Tenant {
            name: name.into(),
            allowed_models: vec!["m1".into()],
            max_prompt_tokens: None,
            max_completion_tokens: None,
            limits: LimitSpec::default(),
            limiter: TenantLimiter::new(&LimitSpec::default()),
            input_filter: Arc::new(FilterSet::empty()),
            output_filter: Arc::new(FilterSet::empty()),
            identities: rules,
            require_cert: false,
            weight: 1,
            body_read_timeout: None,
        }
    }

    #[test]
    fn cert_rules_select_tenants() {
        let set = TenantSet::new(vec![
            tenant("a", vec![IdentityRule::CommonName("svc-a".into())]),
            tenant("b", vec![IdentityRule::San("b.internal".into())]),
            tenant("c", vec![IdentityRule::Fingerprint("ABCD".into())]),
        ])
        .unwrap();
        let cert = |cn: Option<&str>, san: &str, fp: &str| CertIdentity {
            common_name: cn.map(str::to_owned),
            sans: vec![san.to_owned()],
            sha256: fp.to_owned(),
        };
        assert_eq!(
            set.for_cert(&cert(Some("svc-a"), "x", "00")).unwrap().name,
            "a"
        );
        assert_eq!(
            set.for_cert(&cert(None, "b.internal", "00")).unwrap().name,
            "b"
        );
        assert_eq!(set.for_cert(&cert(None, "x", "abcd")).unwrap().name, "c");
        assert!(set.for_cert(&cert(Some("svc-z"), "x", "00")).is_none());
        assert!(set.get("a").unwrap().allows_model("m1"));
        assert!(!set.get("a").unwrap().allows_model("m2"));
    }

    #[test]
    fn limiters_carry_over_when_limits_are_unchanged() {
        let limited = |name: &str, max: u32| Tenant {
            limits: LimitSpec {
                max_concurrent: std::num::NonZeroU32::new(max),
                ..LimitSpec::default()
            },
            ..tenant(name, vec![])
        };
        let old = TenantSet::new(vec![limited("a", 1), limited("b", 1)]).unwrap();
        let new = TenantSet::new(vec![limited("a", 1), limited("b", 2), limited("c", 1)])
            .unwrap()
            .inherit_limiters(&old);
        let same =
            |n: &str| Arc::ptr_eq(&old.get(n).unwrap().limiter, &new.get(n).unwrap().limiter);
        assert!(same("a"));
        assert!(!same("b"), "changed limits start afresh");
        assert!(new.get("c").is_some());
        assert!(Arc::ptr_eq(new.get("a").unwrap(), &new.order[0]));
    }

    #[test]
    fn duplicate_names_refused() {
        assert!(TenantSet::new(vec![tenant("a", vec![]), tenant("a", vec![])]).is_err());
    }
}
