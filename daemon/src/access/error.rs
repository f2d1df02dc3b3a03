//! The typed failures of the access phases: authentication ([`AuthError`]) and the
//! tenant's policy ([`PolicyError`]). `crate::api::error` renders them; the metrics read
//! their labels from the variants, never from the messages.

use airlock_policy::Tenant;

/// Why authentication failed: what the metrics label (`reason`) and the client's 401 say.
/// No variant carries the presented credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// A header or credential that cannot be parsed (scheme, encoding, key format).
    Malformed,
    /// `Authorization` and `x-api-key` carry different credentials.
    ConflictingCredentials,
    /// An API key that does not exist, is revoked or expired, or does not verify.
    InvalidKey,
    /// A token that does not verify.
    InvalidToken,
    /// A credential kind the configuration does not enable.
    MethodDisabled,
    /// The credential is bound to (or its tenant requires) another client certificate.
    CertificateMismatch,
    /// The credential names no configured tenant.
    UnknownTenant,
    /// No credential at all.
    MissingCredential,
    /// Verification could not run (the hashing pool went away).
    Unavailable,
}

impl AuthFailure {
    /// The `reason` label of `airlock_auth_failures_total`.
    pub fn label(self) -> &'static str {
        match self {
            AuthFailure::Malformed => "malformed",
            AuthFailure::ConflictingCredentials => "conflicting_credentials",
            AuthFailure::InvalidKey => "invalid_key",
            AuthFailure::InvalidToken => "invalid_token",
            AuthFailure::MethodDisabled => "method_disabled",
            AuthFailure::CertificateMismatch => "certificate_mismatch",
            AuthFailure::UnknownTenant => "unknown_tenant",
            AuthFailure::MissingCredential => "missing_credential",
            AuthFailure::Unavailable => "unavailable",
        }
    }
}

/// An authentication failure, as the `authn` phase reports it (`api::error` renders it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Refused with 401: `message` is what the client reads.
    #[error("{message}")]
    Refused {
        failure: AuthFailure,
        message: &'static str,
    },
    /// The API key table is not confirmed current: keys are refused, fail closed (503).
    #[error("API keys cannot be checked right now (the key database is unavailable); retry later")]
    KeysUnavailable,
    /// Too many failed key verifications from this client (429).
    #[error("too many authentication attempts; retry in {retry_after}s")]
    Throttled { retry_after: u64 },
}

impl AuthError {
    /// The `reason` label of `airlock_auth_failures_total`.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::Refused { failure, .. } => failure.label(),
            AuthError::KeysUnavailable => "unavailable",
            AuthError::Throttled { .. } => "throttled",
        }
    }
}

/// A refusal by the tenant's policy (the `tenant`, `prompt_filter` and `limits` phases).
#[derive(Clone, Debug, thiserror::Error)]
pub enum PolicyError {
    /// The tenant's model allow-list does not name the model.
    #[error("tenant `{tenant}` is not allowed to use model `{model}`")]
    ModelNotAllowed { tenant: String, model: String },
    /// The prompt is over the tenant's `max_prompt_tokens`.
    #[error("the prompt is {tokens} tokens, over tenant `{tenant}`'s limit of {limit}")]
    PromptTooLong {
        tenant: String,
        tokens: usize,
        limit: u32,
        /// The request field the prompt came from.
        param: &'static str,
    },
    /// A filter's deny rule matched (names the rule, never the matched text).
    #[error("the request was refused by content policy rule `{rule_id}`")]
    ContentPolicy { rule_id: String },
    /// A rate limit refused the request.
    #[error("rate limit exceeded for tenant `{tenant}`: {}", exceeded_text(.exceeded))]
    RateLimited {
        tenant: String,
        exceeded: airlock_policy::ratelimit::Exceeded,
        retry_after: u64,
        status: airlock_policy::ratelimit::RateStatus,
    },
}

fn exceeded_text(exceeded: &airlock_policy::ratelimit::Exceeded) -> &'static str {
    use airlock_policy::ratelimit::Exceeded;
    match exceeded {
        Exceeded::Requests => "requests",
        Exceeded::Tokens => "tokens per minute",
        Exceeded::Concurrency => "concurrent requests",
        Exceeded::TooLarge => "tokens per minute (this request alone exceeds it)",
    }
}

impl PolicyError {
    /// A rate-limit refusal of `tenant` (counted in the metrics here, where it is decided).
    pub fn rate_limited(tenant: &Tenant, r: &airlock_policy::ratelimit::Refusal) -> PolicyError {
        use airlock_policy::ratelimit::Exceeded;
        let kind = match r.exceeded {
            Exceeded::Requests => "requests",
            Exceeded::Tokens => "tokens",
            Exceeded::Concurrency => "concurrency",
            Exceeded::TooLarge => "too_large",
        };
        crate::metrics::global().rate_limited(&tenant.name, kind);
        PolicyError::RateLimited {
            tenant: tenant.name.clone(),
            exceeded: r.exceeded,
            retry_after: r.retry_after.as_secs_f64().ceil().max(1.0) as u64,
            status: r.status,
        }
    }
}
