//! Airlock's tenant policy, as pure logic: who a request acts for (API keys, JWTs,
//! certificate identities), what its tenant may do (models, caps), how fast (rate limits
//! and token budgets) and what may pass in and out of the model (filters).
//!
//! Nothing here knows HTTP, TLS or the engine: the daemon adapts requests to these types
//! (a client certificate becomes a [`CertIdentity`], a header a presented key or token).
//! Time comes from a clock the caller passes in, so tests use fake clocks, not sleeps.

pub mod cache;
pub mod clock;
pub mod filter;
pub mod hash;
pub mod jwt;
pub mod key;
pub mod ratelimit;
pub mod tenant;

pub use cache::VerifiedKeyCache;
pub use clock::{Clock, FakeClock, SystemClock};
pub use filter::{FilterSet, FilterSpec, RuleSpec};
pub use key::{ApiKey, KeyId, KeyRecord};
pub use tenant::{CertIdentity, IdentityRule, Tenant, TenantSet};

/// Everything the policy layer can refuse or fail at. Messages never contain a presented
/// key, token or matched text: they are safe to return to clients and to log.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    /// The presented API key is not well-formed (wrong prefix, length, alphabet or
    /// checksum). Rejected before any hashing.
    #[error("malformed API key")]
    MalformedKey,
    /// The key is well-formed but unknown, wrong, revoked or expired. One message for
    /// all: a client learns nothing about which.
    #[error("invalid API key")]
    InvalidKey,
    /// A token failed verification; the reason is for logs (it never includes the token).
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// The credential is bound to a client certificate that was not presented.
    #[error("credential is bound to a different client certificate")]
    CertificateMismatch,
    /// Hashing failed (bad parameters or a corrupt stored hash).
    #[error("key hashing failed: {0}")]
    Hashing(String),
    /// A JWKS file or policy setting is invalid.
    #[error("invalid policy configuration: {0}")]
    Config(String),
}
