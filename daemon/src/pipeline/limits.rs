//! Phase `limits`: the tenant's concurrency slot (taken before the body is read), then the
//! prompt's token count, the tenant's prompt cap, the rate limits and the token
//! reservation. Tokenizing is the costly step; the reservation needs its result, so the
//! limiter cannot usefully run before it.

use std::sync::Arc;

use airlock_engine::{Engine, EngineError, Prompt};
use airlock_policy::Tenant;
use airlock_policy::ratelimit::{Admission, Occupancy};

use super::generate::Job;
use crate::access::PolicyError;
use crate::api::ApiError;

/// The tenant's concurrency slot, or its refusal (429). Without a tenant policy: none.
pub fn occupy(tenant: Option<&Arc<Tenant>>) -> Result<Option<Occupancy>, PolicyError> {
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
    tenant: Option<&Arc<Tenant>>,
    occupancy: Option<Occupancy>,
    job: &mut Job,
) -> Result<Option<Admission>, ApiError> {
    let Some(tenant) = tenant else {
        return Ok(None);
    };
    // The engine's own count (chat template included) of the prompt it will be given;
    // skipped when nothing needs it, since submission tokenizes again.
    let prompt_tokens =
        if tenant.max_prompt_tokens.is_some() || tenant.limits.tokens_per_minute.is_some() {
            count_prompt_tokens(engine, job).await?
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
    let reserve = prompt_tokens.saturating_add(job.params.max_tokens.unwrap_or(0));
    let reserve = u32::try_from(reserve).unwrap_or(u32::MAX);
    let admitted = match occupancy {
        Some(slot) => tenant.limiter.admit_occupied(slot, reserve),
        None => tenant.limiter.admit(reserve),
    };
    admitted
        .map(Some)
        .map_err(|r| PolicyError::rate_limited(tenant, &r).into())
}

/// Tokenization is CPU work proportional to the prompt: it runs on the blocking pool, not
/// on the runtime. The prompt moves there and back rather than being copied.
async fn count_prompt_tokens(engine: &Arc<dyn Engine>, job: &mut Job) -> Result<usize, ApiError> {
    let engine = Arc::clone(engine);
    let model = job.model.clone();
    let prompt = std::mem::replace(&mut job.prompt, Prompt::TokenIds(Vec::new()));
    let (prompt, counted) = tokio::task::spawn_blocking(move || {
        let counted = engine.count_prompt_tokens(&model, &prompt);
        (prompt, counted)
    })
    .await
    .map_err(|join| {
        tracing::error!(error = %join, "prompt token count panicked");
        ApiError::engine(
            EngineError::Inference("token count panicked".into()),
            job.prompt_param,
        )
    })?;
    job.prompt = prompt;
    counted.map_err(|e| ApiError::engine(e, job.prompt_param))
}
