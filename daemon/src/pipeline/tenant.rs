//! Phase `tenant`: the tenant's model allow-list, its `max_tokens` caps, and what its
//! output filter rules out. Cheap checks, before anything is tokenized.

use airlock_policy::Tenant;

use super::generate::Job;
use crate::access::PolicyError;
use crate::api::ApiError;
use crate::api::request::Inference;

/// `max_tokens` assumed for the reservation when neither the request nor the tenant caps
/// it (the engine is then told this limit, so usage never exceeds the reservation).
const DEFAULT_RESERVED_COMPLETION: usize = 4096;

/// Refuses a model the tenant may not use and caps `job`'s `max_tokens` by the tenant's
/// `max_completion_tokens` (with a token rate limit, a request always has a cap, so that
/// its reservation is bounded). Refuses alternatives (`top_logprobs`) to a tenant with an
/// output filter. Without a tenant policy: nothing to check.
pub fn check(tenant: Option<&std::sync::Arc<Tenant>>, job: &mut Job) -> Result<(), ApiError> {
    let Some(tenant) = tenant else {
        return Ok(());
    };
    if !tenant.allows_model(&job.model) {
        return Err(PolicyError::ModelNotAllowed {
            tenant: tenant.name.clone(),
            model: job.model.clone(),
        }
        .into());
    }
    // The alternatives are text the model did not emit, so the output filter never sees
    // it in context: a tenant whose output is filtered gets the chosen tokens' values only.
    if job.params.logprobs.is_some_and(|n| n > 0) && !tenant.output_filter.is_empty() {
        let param = match job.route {
            Inference::Chat | Inference::Responses => "top_logprobs",
            _ => "logprobs",
        };
        return Err(ApiError::invalid(
            param,
            format!(
                "{param} > 0 is not available to this tenant: alternative tokens would bypass \
                 its output filter; {param} = 0 gives the generated tokens' log-probabilities"
            ),
        ));
    }
    // The tokenizer routes and embeddings generate nothing: no completion to cap or
    // reserve for.
    if !job.route.generates() {
        return Ok(());
    }
    let cap = tenant.max_completion_tokens.map(|c| c as usize);
    job.params.max_tokens = match (job.params.max_tokens, cap) {
        (Some(m), Some(c)) => Some(m.min(c)),
        (None, Some(c)) => Some(c),
        (m, None) if tenant.limits.tokens_per_minute.is_some() => {
            Some(m.unwrap_or(DEFAULT_RESERVED_COMPLETION))
        }
        (m, None) => m,
    };
    Ok(())
}
