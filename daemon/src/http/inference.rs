//! Running one request on the engine: submit, then either collect the whole completion or
//! wait for its first token and hand the rest to an event stream.

use std::sync::Arc;

use airlock_engine::{
    Engine, EngineError, FinishReason, GenerateRequest, Generation, GenerationTimings, Prompt,
    SamplingParams, TokenEvent, Usage,
};

use super::error::ApiError;

/// Who asked, for the engine's scheduling and logs.
#[derive(Debug)]
pub struct RequestContext {
    pub request_id: String,
    pub tenant: String,
    /// The tenant's policy (limits, filters); `None` for legacy certificate tenants.
    pub policy: Option<Arc<airlock_policy::Tenant>>,
    /// The tenant's concurrency slot, taken before the body was read; moves into the
    /// rate-limit admission (`gate::admit`).
    pub occupancy: std::sync::Mutex<Option<airlock_policy::ratelimit::Occupancy>>,
}

/// What to run.
#[derive(Debug)]
pub struct Job {
    pub model: String,
    pub prompt: Prompt,
    pub params: SamplingParams,
    /// The request field the prompt came from, named in context-length errors.
    pub prompt_param: &'static str,
}

/// A finished, successful generation.
#[derive(Debug)]
pub struct Completed {
    pub text: String,
    pub reason: FinishReason,
    pub usage: Usage,
}

/// A stream that has produced its first token (or already ended).
pub struct Started {
    pub generation: Generation,
    /// The first token, or the end of a generation that produced none.
    pub first: TokenEvent,
    /// The tenant's rate-limit admission, held by the stream: its concurrency slot lasts
    /// as long as the stream, and the unused tokens return when it finishes (a stream cut
    /// short keeps its whole reservation).
    pub admission: Option<airlock_policy::ratelimit::Admission>,
    /// The tenant's output filter, applied to the stream as it goes.
    pub output_filter: Option<Arc<airlock_policy::FilterSet>>,
    /// Tenant and model for the stream's token metrics.
    pub labels: crate::metrics::GenerationLabels,
}

/// Submits a job. Submission tokenizes the prompt (and may render a chat template), which is
/// CPU work: it runs on the blocking pool, not on the runtime. Dropping the returned future
/// drops the [`Generation`] and so cancels the request.
async fn submit(
    engine: &Arc<dyn Engine>,
    ctx: &RequestContext,
    mut job: Job,
) -> Result<(Generation, Option<airlock_policy::ratelimit::Admission>), ApiError> {
    let prompt_param = job.prompt_param;
    crate::metrics::note(None, Some(&job.model));
    // Tenant policy → prompt filter → token count and reservation (see `gate`), before
    // audit admit so that the audit records what the engine will really see.
    let admission = match &ctx.policy {
        Some(t) => {
            let occupancy = ctx
                .occupancy
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            Some(super::gate::admit(engine, t, occupancy, &mut job).await?)
        }
        None => None,
    };
    // Audit admit is the last step before the engine: the admission record is durable
    // before the engine sees the request, or the request is refused (fail closed).
    if let Some(trail) = crate::audit::trail::current()
        && let Err(e) = trail.admit(&ctx.tenant, &job.model, &job.prompt).await
    {
        tracing::error!(error = %e, "audit admission record not written: refusing the request");
        return Err(ApiError::AuditUnavailable);
    }
    let request = GenerateRequest {
        request_id: ctx.request_id.clone(),
        tenant: ctx.tenant.clone(),
        // Legacy certificate tenants (no policy) all weigh 1.
        tenant_weight: ctx.policy.as_ref().map_or(1, |t| t.weight),
        model: job.model,
        prompt: job.prompt,
        params: job.params,
    };
    let engine = Arc::clone(engine);
    match tokio::task::spawn_blocking(move || engine.submit(request)).await {
        Ok(result) => result
            .map(|g| (g, admission))
            .map_err(|e| ApiError::engine(e, prompt_param)),
        Err(join) => {
            tracing::error!(error = %join, "engine submission panicked");
            Err(ApiError::engine(
                EngineError::Inference("submission panicked".into()),
                prompt_param,
            ))
        }
    }
}

/// Runs a job to its end and returns the whole completion.
pub async fn complete(
    engine: &Arc<dyn Engine>,
    ctx: &RequestContext,
    job: Job,
) -> Result<Completed, ApiError> {
    let prompt_param = job.prompt_param;
    let labels = crate::metrics::GenerationLabels::new(ctx.policy.as_deref(), &job.model);
    let (mut generation, admission) = submit(engine, ctx, job).await?;
    let mut text = String::new();
    loop {
        match end_of(generation.next().await, prompt_param)? {
            Step::Started => {}
            Step::Token(piece) => text.push_str(&piece),
            Step::Finished {
                reason,
                usage,
                timings,
                text: rest,
            } => {
                text.push_str(&rest);
                log_finished(reason, usage, &timings);
                labels.finished(usage, &timings);
                // Return the unused part of the token reservation.
                if let Some(admission) = admission {
                    let used = usage.prompt_tokens.saturating_add(usage.completion_tokens);
                    admission.complete(u32::try_from(used).unwrap_or(u32::MAX));
                }
                // Output filter on the whole completion (streams: not yet filtered).
                if let Some(tenant) = &ctx.policy {
                    text = super::gate::filter_output(tenant, text)?;
                }
                if let Some(trail) = crate::audit::trail::current() {
                    let ttft = timings.time_to_first_token_ms.max(0.0) as u64;
                    trail.note_finished(reason, usage, Some(ttft), &text);
                }
                return Ok(Completed {
                    text,
                    reason,
                    usage,
                });
            }
        }
    }
}

/// Submits a job and waits until its first token (or its end): errors until then still
/// become a proper HTTP status instead of an error inside a 200 stream.
pub async fn start(
    engine: &Arc<dyn Engine>,
    ctx: &RequestContext,
    job: Job,
) -> Result<Started, ApiError> {
    let prompt_param = job.prompt_param;
    let labels = crate::metrics::GenerationLabels::new(ctx.policy.as_deref(), &job.model);
    let (mut generation, admission) = submit(engine, ctx, job).await?;
    loop {
        match generation.next().await {
            Some(TokenEvent::Started { .. }) => {}
            Some(
                first @ (TokenEvent::Token { .. }
                | TokenEvent::Finished {
                    reason: FinishReason::Stop | FinishReason::Length,
                    ..
                }),
            ) => {
                return Ok(Started {
                    generation,
                    first,
                    admission,
                    output_filter: ctx
                        .policy
                        .as_ref()
                        .map(|t| Arc::clone(&t.output_filter))
                        .filter(|f| !f.is_empty()),
                    labels,
                });
            }
            // Failed, cancelled, or the engine hung up: always an error.
            other => {
                end_of(other, prompt_param)?;
            }
        }
    }
}

/// One event, classified; engine failures and premature ends become errors.
pub enum Step {
    Started,
    Token(String),
    Finished {
        reason: FinishReason,
        usage: Usage,
        timings: GenerationTimings,
        text: String,
    },
}

pub fn end_of(event: Option<TokenEvent>, prompt_param: &'static str) -> Result<Step, ApiError> {
    match event {
        Some(TokenEvent::Started { .. }) => Ok(Step::Started),
        Some(TokenEvent::Token { text, .. }) => Ok(Step::Token(text)),
        Some(TokenEvent::Finished {
            reason: FinishReason::Cancelled,
            ..
        })
        | None => {
            // The engine dropped or cancelled a request we still wanted: it is shutting down.
            Err(ApiError::engine(EngineError::Unavailable, prompt_param))
        }
        Some(TokenEvent::Finished {
            reason,
            usage,
            timings,
            text,
        }) => Ok(Step::Finished {
            reason,
            usage,
            timings,
            text,
        }),
        Some(TokenEvent::Failed(e)) => Err(ApiError::engine(e, prompt_param)),
    }
}

/// One log line per finished generation, in the request's span.
pub fn log_finished(reason: FinishReason, usage: Usage, timings: &GenerationTimings) {
    tracing::info!(
        finish_reason = reason.as_str(),
        prompt_tokens = usage.prompt_tokens,
        completion_tokens = usage.completion_tokens,
        ttft_ms = timings.time_to_first_token_ms,
        decode_tokens_per_s = timings.decode_tokens_per_s,
        "generation finished"
    );
}
