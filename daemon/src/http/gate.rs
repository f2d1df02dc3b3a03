//! Tenant policy on a parsed request, just before the engine: model allow-list and caps →
//! rate limits and token reservation → prompt filter. In that order because each step is
//! cheaper than the next and a refusal should cost the least work; the filter runs last
//! so what it lets through (redacted) is exactly what audit admit and the engine see.

use std::sync::Arc;

use airlock_engine::Prompt;
use airlock_policy::Tenant;
use airlock_policy::ratelimit::{Admission, Exceeded};

use super::error::ApiError;
use super::inference::Job;

/// `max_tokens` assumed for the reservation when neither the request nor the tenant caps
/// it (the engine is then told this limit, so usage never exceeds the reservation).
const DEFAULT_RESERVED_COMPLETION: usize = 4096;

/// Applies `tenant`'s policy to `job` (capping `max_tokens`, redacting the prompt) and
/// returns its rate-limit admission.
pub fn admit(tenant: &Arc<Tenant>, job: &mut Job) -> Result<Admission, ApiError> {
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

    // Prompt tokens are not known before the engine tokenizes; a byte-level tokenizer
    // never makes more tokens than bytes, plus the chat template's framing.
    let prompt_bound = prompt_token_bound(&job.prompt);
    // The prompt cap is checked against the usual estimate of 4 bytes per token: the real
    // count exists only after tokenization, inside the engine.
    if let Some(limit) = tenant.max_prompt_tokens
        && prompt_bound / 4 > limit as usize
    {
        return Err(ApiError::Forbidden {
            message: format!(
                "the prompt exceeds tenant `{}`'s limit of about {limit} tokens",
                tenant.name
            ),
            code: "prompt_too_long",
            param: None,
        });
    }
    let reserve = prompt_bound.saturating_add(max_tokens.unwrap_or(0));
    let reserve = u32::try_from(reserve).unwrap_or(u32::MAX);
    let admission = tenant.limiter.admit(reserve).map_err(|r| {
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
    })?;

    match filter_prompt(tenant, &mut job.prompt) {
        Ok(()) => Ok(admission),
        Err(e) => {
            // Refused before the engine: nothing was used.
            admission.complete(0);
            Err(e)
        }
    }
}

fn prompt_token_bound(prompt: &Prompt) -> usize {
    match prompt {
        Prompt::Text(t) => t.len() + 8,
        Prompt::Chat(messages) => {
            messages
                .iter()
                .map(|m| m.content.len() + m.role.len() + 16)
                .sum::<usize>()
                + 32
        }
        Prompt::TokenIds(ids) => ids.len(),
    }
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
    let (out, denied) = tenant.output_filter.check_output(&text);
    match denied {
        Some(rule_id) => Err(ApiError::ContentPolicy { rule_id }),
        None => Ok(out),
    }
}
