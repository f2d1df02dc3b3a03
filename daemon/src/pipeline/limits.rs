//! Phase `limits`: the tenant's concurrency slot (taken before the body is read), then the
//! prompt's token count, the tenant's prompt cap, the rate limits and the token
//! reservation. Tokenizing is the costly step; the reservation needs its result, so the
//! limiter cannot usefully run before it. The prompt is tokenized once ([`prepare`]) and
//! the engine runs those ids.
//!
//! With shared limits (`[cluster.limits] backend = "redis"`, [`crate::limits_redis`]) the
//! tenant's limits are checked in the shared store in one round trip at [`reserve`], the
//! concurrency lease included: no per-process slot is taken before the body.

use std::sync::Arc;

use airlock_engine::{Engine, EngineError, Prepared, Prompt};
use airlock_policy::Tenant;
use airlock_policy::ratelimit::{Admission, LimitSpec, Occupancy};

use super::generate::Job;
use crate::access::PolicyError;
use crate::api::ApiError;
use crate::api::request::Inference;
use crate::limits_redis::{SharedAdmission, SharedLimits};

/// A tenant's admitted request, by this process's limiter or the shared one. Complete it
/// with the tokens it used.
#[derive(Debug)]
pub enum TenantAdmission {
    Local(Admission),
    Shared(SharedAdmission),
}

impl TenantAdmission {
    /// Returns the unused part of the reservation (and, shared, releases the lease).
    pub fn complete(self, used: u32) {
        match self {
            TenantAdmission::Local(a) => a.complete(used),
            TenantAdmission::Shared(a) => a.complete(used),
        }
    }
}

/// The tenant's concurrency slot, or its refusal (429). Without a tenant policy, or with
/// shared limits (whose lease is taken at [`reserve`]): none.
pub fn occupy(
    shared: Option<&SharedLimits>,
    tenant: Option<&Arc<Tenant>>,
) -> Result<Option<Occupancy>, PolicyError> {
    if shared.is_some() {
        return Ok(None);
    }
    tenant
        .map(|t| {
            t.limiter
                .occupy()
                .map_err(|refusal| PolicyError::rate_limited(t, &refusal))
        })
        .transpose()
}

/// Counts `job`'s prompt (when a cap or a token limit needs it), applies the tenant's
/// prompt cap, and admits the request under the rate limits with its token reservation.
/// The admission takes over `occupancy` (the tenant's concurrency slot; `None`: taken
/// here). Without a tenant policy: no admission.
pub async fn reserve(
    engine: &Arc<dyn Engine>,
    shared: Option<&Arc<SharedLimits>>,
    tenant: Option<&Arc<Tenant>>,
    occupancy: Option<Occupancy>,
    job: &mut Job,
) -> Result<Option<TenantAdmission>, ApiError> {
    let Some(tenant) = tenant else {
        return Ok(None);
    };
    // The engine's own count (chat template included) of the prompt it will be given,
    // skipped when nothing needs it. The prompt is tokenized once: submission runs the
    // ids prepared here (`super::generate::submit`).
    // The tokenizer routes run no model: they count as requests (the request rate, the
    // concurrency slot) and reserve no tokens; their text is no prompt, so the prompt cap
    // does not apply (a client may count a document longer than any prompt).
    // Embedding inputs were tokenized already (`super::embed::prepare`): they count like
    // a prompt, all together.
    let counted = !job.route.is_tokenizer()
        && (tenant.max_prompt_tokens.is_some() || tenant.limits.tokens_per_minute.is_some());
    let prompt_tokens = if job.route == Inference::Embeddings {
        job.input_tokens
    } else if counted {
        let prepared = prepare(engine, job, "token count panicked").await?;
        let count = prepared.token_count();
        job.prepared = Some(prepared);
        count
    } else {
        0
    };
    if let Some(limit) = tenant.max_prompt_tokens
        && prompt_tokens > limit as usize
    {
        return Err(PolicyError::PromptTooLong {
            tenant: tenant.name.clone(),
            tokens: prompt_tokens,
            limit,
            param: job.prompt_param,
        }
        .into());
    }
    // Every choice may generate up to `max_tokens`; the prompt is run (and counted) once.
    let completion = job.params.max_tokens.unwrap_or(0).saturating_mul(job.n);
    let reserve = prompt_tokens.saturating_add(completion);
    let reserve = u32::try_from(reserve).unwrap_or(u32::MAX);
    let refused = |r| ApiError::from(PolicyError::rate_limited(tenant, &r));
    // A tenant without limits has nothing to share: no round trip.
    if let Some(shared) = shared.filter(|_| tenant.limits != LimitSpec::default()) {
        // The shared store decides; when it cannot, `on_unavailable` does: refuse (closed),
        // or this gateway's share of the limits, enforced here (local).
        let error = match shared.admit(tenant, reserve).await {
            Ok(admitted) => {
                return admitted
                    .map(|a| Some(TenantAdmission::Shared(a)))
                    .map_err(refused);
            }
            Err(error) => error,
        };
        let Some(local) = shared.fallback(tenant, &error) else {
            tracing::warn!(error = %error, "refusing the request: limits unavailable");
            return Err(ApiError::LimitsUnavailable);
        };
        return local
            .admit(reserve)
            .map(|a| Some(TenantAdmission::Local(a)))
            .map_err(refused);
    }
    let admitted = match occupancy {
        Some(slot) => tenant.limiter.admit_occupied(slot, reserve),
        None => tenant.limiter.admit(reserve),
    };
    admitted
        .map(|a| Some(TenantAdmission::Local(a)))
        .map_err(refused)
}

/// Prompts of at most this many bytes of text are tokenized on the async worker itself;
/// larger ones on the blocking pool. Tokenizing 2 KiB (a BPE pass, or the operator's chat
/// template rendered over at most 2 KiB of messages) is bounded work of the order of the
/// JSON parse the worker already did for the same bytes, and costs less than the two
/// thread hand-offs of a trip to the blocking pool; beyond it the work grows with the
/// prompt (up to `max_body_bytes`) and would stall the worker's other connections.
pub(super) const INLINE_PREPARE_BYTES: usize = 2048;

/// Bytes of text the engine tokenizes for `prompt` (token ids are used as given).
pub(super) fn text_bytes(prompt: &Prompt) -> usize {
    match prompt {
        Prompt::Text(text) => text.len(),
        // Tool definitions and calls are rendered too.
        Prompt::Chat(messages, tools) => {
            messages
                .iter()
                .map(|m| {
                    m.role.len()
                        + m.content.len()
                        + m.tool_calls
                            .iter()
                            .map(|c| c.name.len() + c.arguments.to_string().len())
                            .sum::<usize>()
                })
                .sum::<usize>()
                + tools.iter().map(|t| t.to_string().len()).sum::<usize>()
        }
        Prompt::TokenIds(_) => 0,
    }
}

/// Tokenizes (renders) `job`'s prompt once, for the count and for submission: inline when
/// small, else on the blocking pool, where the prompt moves there and back rather than
/// being copied. `panicked`: the error text if tokenizing panics.
pub(super) async fn prepare(
    engine: &Arc<dyn Engine>,
    job: &mut Job,
    panicked: &'static str,
) -> Result<Prepared, ApiError> {
    if text_bytes(&job.prompt) <= INLINE_PREPARE_BYTES {
        return engine
            .prepare(&job.model, &job.prompt)
            .map_err(|e| ApiError::engine(e, job.prompt_param));
    }
    let engine = Arc::clone(engine);
    let model = job.model.clone();
    let prompt = std::mem::replace(&mut job.prompt, Prompt::TokenIds(Vec::new()));
    let (prompt, prepared) = tokio::task::spawn_blocking(move || {
        let prepared = engine.prepare(&model, &prompt);
        (prompt, prepared)
    })
    .await
    .map_err(|join| {
        tracing::error!(error = %join, "{panicked}");
        ApiError::engine(EngineError::Inference(panicked.into()), job.prompt_param)
    })?;
    job.prompt = prompt;
    prepared.map_err(|e| ApiError::engine(e, job.prompt_param))
}
