//! Tenant policy on a parsed request, just before the engine: model allow-list and caps →
//! prompt filter → prompt token count → prompt cap → rate limits and token reservation.
//! Cheap refusals come first. The filter runs before the count because redaction changes
//! the prompt: the cap and the reservation must be measured on exactly what audit admit
//! and the engine will see, or a redaction that adds tokens could overrun the budget.
//! Tokenizing is the costly step either way (the reservation needs its result), so the
//! limiter cannot usefully run before it.

use std::sync::Arc;

use airlock_engine::{Engine, EngineError, Prompt};
use airlock_policy::Tenant;
use airlock_policy::ratelimit::{Admission, Exceeded, Occupancy, Refusal};

use super::error::ApiError;
use super::inference::Job;

/// `max_tokens` assumed for the reservation when neither the request nor the tenant caps
/// it (the engine is then told this limit, so usage never exceeds the reservation).
const DEFAULT_RESERVED_COMPLETION: usize = 4096;

/// Applies `tenant`'s policy to `job` (capping `max_tokens`, redacting the prompt) and
/// returns its rate-limit admission, which takes over `occupancy` (the tenant's concurrency
/// slot, taken before the body was read; `None`: taken here).
pub async fn admit(
    engine: &Arc<dyn Engine>,
    tenant: &Arc<Tenant>,
    occupancy: Option<Occupancy>,
    job: &mut Job,
) -> Result<Admission, ApiError> {
    if !tenant.allows_model(&job.model) {
        return Err(ApiError::Forbidden {
            message: format!(
                "tenant `{}` is not allowed to use model `{}`",
                tenant.name, job.model
            ),
            code: "model_not_allowed",
            param: Some("model".into()),
        });
    }
    let cap = tenant.max_completion_tokens.map(|c| c as usize);
    let max_tokens = match (job.params.max_tokens, cap) {
        (Some(m), Some(c)) => Some(m.min(c)),
        (None, Some(c)) => Some(c),
        (m, None) if tenant.limits.tokens_per_minute.is_some() => {
            Some(m.unwrap_or(DEFAULT_RESERVED_COMPLETION))
        }
        (m, None) => m,
    };
    job.params.max_tokens = max_tokens;

    filter_prompt(tenant, &mut job.prompt)?;

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
        return Err(ApiError::Forbidden {
            message: format!(
                "the prompt is {prompt_tokens} tokens, over tenant `{}`'s limit of {limit}",
                tenant.name
            ),
            code: "prompt_too_long",
            param: Some(job.prompt_param.into()),
        });
    }
    let reserve = prompt_tokens.saturating_add(max_tokens.unwrap_or(0));
    let reserve = u32::try_from(reserve).unwrap_or(u32::MAX);
    let admitted = match occupancy {
        Some(slot) => tenant.limiter.admit_occupied(slot, reserve),
        None => tenant.limiter.admit(reserve),
    };
    admitted.map_err(|r| refused(tenant, &r))
}

/// A rate-limit refusal as the client sees it (and counted in the metrics).
pub fn refused(tenant: &Tenant, r: &Refusal) -> ApiError {
    let kind = match r.exceeded {
        Exceeded::Requests => "requests",
        Exceeded::Tokens => "tokens",
        Exceeded::Concurrency => "concurrency",
        Exceeded::TooLarge => "too_large",
    };
    crate::metrics::global().rate_limited(&tenant.name, kind);
    let what = match r.exceeded {
        Exceeded::Requests => "requests",
        Exceeded::Tokens => "tokens per minute",
        Exceeded::Concurrency => "concurrent requests",
        Exceeded::TooLarge => "tokens per minute (this request alone exceeds it)",
    };
    ApiError::RateLimited {
        message: format!("rate limit exceeded for tenant `{}`: {what}", tenant.name),
        retry_after: r.retry_after.as_secs_f64().ceil().max(1.0) as u64,
        status: r.status,
    }
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

fn filter_prompt(tenant: &Tenant, prompt: &mut Prompt) -> Result<(), ApiError> {
    let filter = &tenant.input_filter;
    if filter.is_empty() {
        return Ok(());
    }
    let check = |text: &mut String| -> Result<(), ApiError> {
        let filtered = filter
            .check_input(text)
            .map_err(|d| ApiError::ContentPolicy { rule_id: d.rule_id })?;
        if !filtered.redactions.is_empty() {
            tracing::info!(redactions = ?filtered.redactions, "prompt redacted");
            for (rule, count) in &filtered.redactions {
                crate::metrics::global().filter_action(rule, "redact", *count as u64);
            }
            // Rule ids and counts into the admission record (never the matched text).
            if let Some(trail) = crate::audit::trail::current() {
                for (rule, count) in &filtered.redactions {
                    trail.note_filter(rule, "redact", *count);
                }
            }
            let owned = filtered.text.into_owned();
            *text = owned;
        }
        Ok(())
    };
    match prompt {
        Prompt::Text(t) => check(t),
        Prompt::Chat(messages) => messages.iter_mut().try_for_each(|m| check(&mut m.content)),
        // Token ids cannot be inspected: a filtered tenant may not send them.
        Prompt::TokenIds(_) => Err(ApiError::ContentPolicy {
            rule_id: "token_ids_not_inspectable".into(),
        }),
    }
}

/// Filters a whole (non-streamed) completion with the tenant's output rules: redactions
/// applied; a deny refuses the response naming the rule.
pub fn filter_output(tenant: &Tenant, text: String) -> Result<String, ApiError> {
    if tenant.output_filter.is_empty() {
        return Ok(text);
    }
    let checked = tenant.output_filter.check_output_counted(&text);
    for (rule, count) in &checked.redactions {
        crate::metrics::global().filter_action(rule, "redact", *count as u64);
    }
    // After admission, so these land on the completion record (the deny is noted where
    // the refusal is rendered).
    if let Some(trail) = crate::audit::trail::current() {
        for (rule, count) in &checked.redactions {
            trail.note_filter(rule, "redact", *count);
        }
    }
    match checked.denied {
        Some(rule_id) => Err(ApiError::ContentPolicy { rule_id }),
        None => Ok(checked.text),
    }
}
