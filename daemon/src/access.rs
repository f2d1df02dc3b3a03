//! The authentication step of the request path, adapting HTTP and TLS to the policy crate.
//!
//! Credentials, in order of precedence:
//! 1. an API key (`alk_…`) in `Authorization: Bearer` or `x-api-key`;
//! 2. a JWT in `Authorization: Bearer` (when `[auth] jwks` is set);
//! 3. the client certificate alone (TLS, or forwarded by a trusted proxy), by the
//!    tenants' `cert_*` rules — or, with `cert_tenants = "cn"`, its CN.
//!
//! With none of these the answer is 401: deny by default. No failure message contains
//! the presented credential.

mod error;

use std::hash::BuildHasher as _;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use airlock_policy::jwt::thumbprint_from_hex;
use airlock_policy::tenant::FailureThrottle;
use airlock_policy::{ApiKey, CertIdentity as PolicyCert, Tenant, VerifiedKeyCache};
use http::HeaderMap;
use tokio::sync::Semaphore;

pub use error::{AuthError, AuthFailure, PolicyError};

use crate::config::policy::{CertTenants, PolicyConfig};
use crate::identity::{CertIdentity, ConnInfo};
use crate::keys::KeySnapshot;

/// Argon2 verifications run at once (each takes ~19 MiB and tens of ms of CPU).
const ARGON2_CONCURRENCY: usize = 2;
/// Cache-miss verifications a client gets in a burst, then one per [`THROTTLE_PERIOD`].
const THROTTLE_BURST: u32 = 10;
const THROTTLE_PERIOD: Duration = Duration::from_secs(6);
const THROTTLE_CLIENTS: usize = 10_000;
const CACHE_CAPACITY: usize = 10_000;

/// Who a request acts for.
#[derive(Clone, Debug)]
pub struct Principal {
    /// The tenant requests are charged to.
    pub tenant: String,
    /// Who within the tenant: a key id, a token `sub`, or a certificate name.
    pub subject: String,
    /// The tenant's policy; `None` in legacy `cert_tenants = "cn"` mode without tenants.
    pub policy: Option<Arc<Tenant>>,
    /// The credential that authenticated the request (for the audit log).
    pub method: AuthMethod,
}

/// How a principal authenticated: the audit log's `auth_method` and its details.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// An API key (its id; never the secret).
    ApiKey { key_id: String },
    /// A bearer JWT: its `iss` and `sub`.
    Jwt { issuer: String, subject: String },
    /// The client certificate alone (its SHA-256 fingerprint).
    Certificate { fingerprint: String },
}

impl AuthMethod {
    /// The `auth_method` value recorded in the audit log.
    pub fn as_str(&self) -> &'static str {
        match self {
            AuthMethod::ApiKey { .. } => "api_key",
            AuthMethod::Jwt { .. } => "jwt",
            AuthMethod::Certificate { .. } => "certificate",
        }
    }

    /// The audit fields naming the credential (besides `auth_method`).
    pub fn audit_fields(&self) -> Vec<(&'static str, String)> {
        match self {
            AuthMethod::ApiKey { key_id } => vec![("key_id", key_id.clone())],
            AuthMethod::Jwt { issuer, subject } => {
                vec![("jwt_iss", issuer.clone()), ("jwt_sub", subject.clone())]
            }
            AuthMethod::Certificate { fingerprint } => {
                vec![("cert_fingerprint", fingerprint.clone())]
            }
        }
    }
}

/// Locks that serialise the verification of one key id (by hash, so memory is fixed).
const VERIFY_STRIPES: usize = 64;

/// The authentication state of one configuration generation.
pub struct Access {
    config: PolicyConfig,
    keys: Option<Arc<KeySnapshot>>,
    cache: VerifiedKeyCache,
    /// Shared with the next configuration generation (see [`Access::inherit_guards`]).
    throttle: Arc<FailureThrottle<String>>,
    argon2: Arc<Semaphore>,
    /// Concurrent cache misses for the same key wait for one verification instead of each
    /// hashing and each paying the throttle: a client that opens with a burst of requests
    /// on a fresh key is verified once, not throttled.
    verifying: Vec<tokio::sync::Mutex<()>>,
    stripe_hasher: std::collections::hash_map::RandomState,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The audit `admin` record of a key change: event, key id, tenant (never a secret).
fn admin_record(event: &crate::keys::KeyEvent) -> crate::audit::record::Record {
    use crate::keys::KeyEvent;
    let mut record = crate::audit::record::Record::new(crate::audit::record::Kind::Admin);
    record.set("event", event.name());
    match event {
        KeyEvent::Created {
            id,
            tenant,
            expires_at,
        }
        | KeyEvent::ExpiryChanged {
            id,
            tenant,
            expires_at,
        } => {
            record
                .set("key_id", id.as_str())
                .set("tenant", tenant.as_str())
                .set("expires_at", *expires_at);
        }
        KeyEvent::Revoked { id, tenant } | KeyEvent::Removed { id, tenant } => {
            record
                .set("key_id", id.as_str())
                .set("tenant", tenant.as_str());
        }
    }
    record
}

impl Access {
    /// Builds the state; opens the key database if one is configured.
    /// With `audit`, key changes made while the daemon runs (`airlockd keys` in another
    /// process) are written to the audit log as `admin` records.
    pub fn new(
        config: PolicyConfig,
        audit: Option<Arc<crate::audit::AuditLog>>,
    ) -> Result<Arc<Self>, crate::keys::KeyStoreError> {
        let keys = config
            .key_db
            .as_deref()
            .map(|path| {
                let observer = audit.map(|log| -> crate::keys::KeyObserver {
                    Box::new(move |events| {
                        for event in events {
                            log.append_detached(admin_record(event));
                        }
                    })
                });
                KeySnapshot::start_observed(path, observer)
            })
            .transpose()?;
        Ok(Arc::new(Self {
            cache: VerifiedKeyCache::new(config.key_cache_ttl, CACHE_CAPACITY),
            throttle: Arc::new(FailureThrottle::new(
                NonZeroU32::new(THROTTLE_BURST).unwrap_or(NonZeroU32::MIN),
                THROTTLE_PERIOD,
                THROTTLE_CLIENTS,
            )),
            argon2: Arc::new(Semaphore::new(ARGON2_CONCURRENCY)),
            verifying: stripes(VERIFY_STRIPES),
            stripe_hasher: std::collections::hash_map::RandomState::new(),
            keys,
            config,
        }))
    }

    /// The legacy default: certificate CN names the tenant, no keys, no tokens (tests and
    /// benches; the daemon always builds its access state from the configuration).
    #[cfg(any(test, feature = "test-engine"))]
    pub fn legacy() -> Arc<Self> {
        let config = PolicyConfig::default();
        Arc::new(Self {
            cache: VerifiedKeyCache::new(config.key_cache_ttl, 1),
            throttle: Arc::new(FailureThrottle::new(NonZeroU32::MIN, THROTTLE_PERIOD, 1)),
            argon2: Arc::new(Semaphore::new(1)),
            verifying: stripes(1),
            stripe_hasher: std::collections::hash_map::RandomState::new(),
            keys: None,
            config,
        })
    }

    /// Takes over `previous`'s key-guessing throttle and argon2 permits (a reload): a
    /// SIGHUP must not refill every client's guessing budget, nor let two generations hash
    /// with twice the permitted concurrency.
    pub(crate) fn inherit_guards(&mut self, previous: &Access) {
        self.throttle = Arc::clone(&previous.throttle);
        self.argon2 = Arc::clone(&previous.argon2);
    }

    /// Whether API keys can be checked: no key database, or one confirmed current within
    /// [`crate::keys::MAX_STALENESS`] (`/readyz`).
    pub fn keys_ready(&self) -> bool {
        self.keys.as_ref().is_none_or(|k| k.is_fresh())
    }

    /// How long since the key table was confirmed current (`None`: no key database).
    pub fn keys_staleness(&self) -> Option<Duration> {
        self.keys.as_ref().map(|k| k.staleness())
    }

    /// The authentication step.
    pub async fn authenticate(
        &self,
        conn: &ConnInfo,
        headers: &HeaderMap,
    ) -> Result<Principal, AuthError> {
        let cert = conn.client_cert().map(|(_, c)| c);
        let (method, result) = match credential(headers) {
            Err(e) => ("header", Err(e)),
            Ok(Some(c)) if c.starts_with(airlock_policy::key::PREFIX) => {
                ("api_key", self.with_key(c, cert, conn).await)
            }
            Ok(Some(c)) => ("jwt", self.with_token(c, cert)),
            Ok(None) => ("certificate", self.with_cert(cert)),
        };
        if let Err(e) = &result {
            crate::metrics::global().auth_failure(method, e.label());
        }
        result
    }

    fn tenant_policy(&self, name: &str) -> Result<Option<Arc<Tenant>>, AuthError> {
        match self.config.cert_tenants {
            CertTenants::CommonName => Ok(self.config.tenants.get(name).cloned()),
            CertTenants::Rules => {
                self.config
                    .tenants
                    .get(name)
                    .cloned()
                    .map(Some)
                    .ok_or_else(|| {
                        refused(
                            AuthFailure::UnknownTenant,
                            "the credential's tenant is not configured",
                        )
                    })
            }
        }
    }

    /// A tenant with `require_cert` accepts keys and tokens only over its own certificate.
    fn check_cert_requirement(
        policy: Option<&Arc<Tenant>>,
        cert: Option<&CertIdentity>,
    ) -> Result<(), AuthError> {
        if let Some(t) = policy.filter(|t| t.require_cert) {
            let owned = cert.is_some_and(|c| t.owns_cert(&policy_cert(c)));
            if !owned {
                return Err(refused(
                    AuthFailure::CertificateMismatch,
                    "this tenant's credentials must be presented over its client certificate",
                ));
            }
        }
        Ok(())
    }

    async fn with_key(
        &self,
        presented: &str,
        cert: Option<&CertIdentity>,
        conn: &ConnInfo,
    ) -> Result<Principal, AuthError> {
        // Format and checksum first: a mistyped key costs no lookup and no hashing.
        let key = ApiKey::parse(presented)
            .map_err(|_| refused(AuthFailure::Malformed, "malformed API key"))?;
        let keys = self
            .keys
            .as_ref()
            .ok_or_else(|| refused(AuthFailure::MethodDisabled, "API keys are not enabled"))?;
        // Fail closed: a table not confirmed current may miss a revocation.
        if !keys.is_fresh() {
            return Err(AuthError::KeysUnavailable);
        }
        let record = match keys.get(key.id()) {
            Some(record) => record,
            None => {
                // Perhaps created a moment ago (`airlockd keys create` in another process):
                // look once more before refusing. Shared and spaced, see `refresh_now`.
                keys.refresh_now(std::time::Instant::now()).await;
                if !keys.is_fresh() {
                    return Err(AuthError::KeysUnavailable);
                }
                keys.get(key.id()).ok_or_else(invalid_key)?
            }
        };
        let now = SystemTime::now();
        if !record.usable(now) {
            return Err(invalid_key());
        }
        record
            .check_binding(cert.map(|c| c.sha256_fingerprint.as_str()))
            .map_err(|_| {
                refused(
                    AuthFailure::CertificateMismatch,
                    "this API key is bound to another client certificate",
                )
            })?;
        // One verification per key at a time; whoever waited finds it cached.
        let stripe = self.stripe_hasher.hash_one(key.id().as_str()) as usize % self.verifying.len();
        let turn = if self.cache.check(&key, &record, now) {
            None
        } else {
            Some(self.verifying[stripe].lock().await)
        };
        if turn.is_some() && !self.cache.check(&key, &record, now) {
            // Throttle before hashing: guesses cost the guesser, not the server.
            let client = cert.map_or_else(
                || {
                    conn.client_ip()
                        .map_or_else(|| "unknown".into(), |ip| ip.to_string())
                },
                |c| c.sha256_fingerprint.clone(),
            );
            if let Err(wait) = self.throttle.attempt(&client) {
                return Err(AuthError::Throttled {
                    retry_after: wait.as_secs().max(1),
                });
            }
            let permit = Arc::clone(&self.argon2)
                .acquire_owned()
                .await
                .map_err(|_| refused(AuthFailure::Unavailable, "authentication unavailable"))?;
            let (k, phc) = (key.clone(), record.phc.clone());
            let verified = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                airlock_policy::hash::verify_key(&k, &phc)
            })
            .await
            .map_err(|_| refused(AuthFailure::Unavailable, "authentication unavailable"))?;
            match verified {
                Ok(true) => {
                    self.cache.insert(&key, &record, now);
                    // A client holding a valid key is not kept throttled for attempts it
                    // spent before (racing the key's creation, a typo).
                    self.throttle.forgive(&client);
                }
                Ok(false) => return Err(invalid_key()),
                Err(e) => {
                    tracing::warn!(key_id = %record.id, error = %e, "stored key hash unusable");
                    return Err(invalid_key());
                }
            }
        }
        drop(turn);
        let policy = self.tenant_policy(&record.tenant)?;
        Self::check_cert_requirement(policy.as_ref(), cert)?;
        Ok(Principal {
            tenant: record.tenant,
            subject: format!("key:{}", record.id),
            policy,
            method: AuthMethod::ApiKey {
                key_id: record.id.to_string(),
            },
        })
    }

    fn with_token(&self, token: &str, cert: Option<&CertIdentity>) -> Result<Principal, AuthError> {
        let jwt = self
            .config
            .jwt
            .as_ref()
            .ok_or_else(|| refused(AuthFailure::Malformed, "malformed API key"))?;
        let x5t = cert.and_then(|c| thumbprint_from_hex(&c.sha256_fingerprint));
        let id = jwt.verify(token, x5t.as_deref()).map_err(|e| {
            tracing::debug!(error = %e, "token refused");
            match e {
                airlock_policy::PolicyError::CertificateMismatch => refused(
                    AuthFailure::CertificateMismatch,
                    "the token is bound to another client certificate",
                ),
                _ => refused(AuthFailure::InvalidToken, "invalid token"),
            }
        })?;
        let policy = self.tenant_policy(&id.tenant)?;
        Self::check_cert_requirement(policy.as_ref(), cert)?;
        Ok(Principal {
            tenant: id.tenant,
            subject: format!("jwt:{}", id.subject),
            policy,
            method: AuthMethod::Jwt {
                issuer: id.issuer,
                subject: id.subject,
            },
        })
    }

    fn with_cert(&self, cert: Option<&CertIdentity>) -> Result<Principal, AuthError> {
        let cert = cert.ok_or_else(|| {
            refused(
                AuthFailure::MissingCredential,
                "authentication required: an API key, a token or a client certificate",
            )
        })?;
        let name = cert
            .common_name
            .clone()
            .unwrap_or_else(|| cert.sha256_fingerprint.clone());
        if let Some(t) = self.config.tenants.for_cert(&policy_cert(cert)) {
            return Ok(Principal {
                tenant: t.name.clone(),
                subject: format!("cert:{name}"),
                policy: Some(Arc::clone(t)),
                method: AuthMethod::Certificate {
                    fingerprint: cert.sha256_fingerprint.clone(),
                },
            });
        }
        match self.config.cert_tenants {
            CertTenants::CommonName => Ok(Principal {
                tenant: name.clone(),
                subject: format!("cert:{name}"),
                policy: None,
                method: AuthMethod::Certificate {
                    fingerprint: cert.sha256_fingerprint.clone(),
                },
            }),
            CertTenants::Rules => Err(refused(
                AuthFailure::UnknownTenant,
                "the client certificate does not belong to any tenant",
            )),
        }
    }
}

fn stripes(n: usize) -> Vec<tokio::sync::Mutex<()>> {
    (0..n.max(1)).map(|_| tokio::sync::Mutex::new(())).collect()
}

/// A connection's certificate identity as the policy crate matches it.
pub(crate) fn policy_cert(c: &CertIdentity) -> PolicyCert {
    PolicyCert {
        common_name: c.common_name.clone(),
        sans: c
            .dns_names
            .iter()
            .chain(&c.uris)
            .chain(&c.emails)
            .cloned()
            .collect(),
        sha256: c.sha256_fingerprint.clone(),
    }
}

fn refused(failure: AuthFailure, message: &'static str) -> AuthError {
    AuthError::Refused { failure, message }
}

fn invalid_key() -> AuthError {
    refused(AuthFailure::InvalidKey, "invalid API key")
}

/// The presented credential from `Authorization: Bearer` or `x-api-key`; both present
/// and different is refused rather than guessed at.
fn credential(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    let bearer = match headers.get(http::header::AUTHORIZATION) {
        None => None,
        Some(v) => {
            let v = v
                .to_str()
                .map_err(|_| refused(AuthFailure::Malformed, "malformed Authorization header"))?;
            let (scheme, rest) = v
                .split_once(' ')
                .ok_or_else(|| refused(AuthFailure::Malformed, "malformed Authorization header"))?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(refused(
                    AuthFailure::Malformed,
                    "the Authorization scheme must be Bearer",
                ));
            }
            Some(rest.trim())
        }
    };
    let api_key = headers
        .get("x-api-key")
        .map(|v| v.to_str().map(str::trim))
        .transpose()
        .map_err(|_| refused(AuthFailure::Malformed, "malformed x-api-key header"))?;
    match (bearer, api_key) {
        (Some(a), Some(b)) if a != b => Err(refused(
            AuthFailure::ConflictingCredentials,
            "Authorization and x-api-key carry different credentials",
        )),
        (Some(c), _) | (None, Some(c)) if c.is_empty() => {
            Err(refused(AuthFailure::Malformed, "empty credential"))
        }
        (Some(c), _) | (None, Some(c)) => Ok(Some(c)),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests;
