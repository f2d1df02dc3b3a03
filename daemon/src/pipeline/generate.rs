//! Phase `generate`: the admitted job goes to the engine ([`submit`], which takes the audit
//! receipt), then either the whole completion is collected or the first token awaited
//! (`super::finish` does both with the output side of the request).

use std::sync::Arc;

use airlock_engine::{
    Engine, EngineError, FinishReason, GenerateRequest, Generation, GenerationTimings, ModelInfo,
    Prepared, Prompt, SamplingParams, TokenEvent, TokenLogprob, Usage,
};

use super::RequestCtx;
use super::audit::Admitted;
use super::finish::Reply;
use crate::api::ApiError;
use crate::api::request::{Inference, Parsed};
use crate::metrics::GenerationLabels;

/// A generation route (chat, completions, responses, generate) needs a model that generates:
/// an encoder serves embeddings only, so the request is refused naming the model. A model
/// the list does not know is left to the engine's own refusal (404).
pub fn check_generates(models: &[ModelInfo], job: &Job) -> Result<(), ApiError> {
    if !job.route.generates() {
        return Ok(());
    }
    match models.iter().find(|m| m.id == job.model) {
        Some(info) if !info.features.completions => Err(ApiError::engine(
            airlock_engine::embeddings_only(&job.model),
            job.prompt_param,
        )),
        _ => Ok(()),
    }
}

/// What to run.
#[derive(Debug)]
pub struct Job {
    /// The route the job came from.
    pub route: Inference,
    pub model: String,
    pub prompt: Prompt,
    pub params: SamplingParams,
    /// The request field the prompt came from, named in context-length errors.
    pub prompt_param: &'static str,
    /// How many choices (OpenAI's `n`): samples of one prompt, sharing its prefill.
    pub n: usize,
    /// `/v1/embeddings`: the inputs, each replaced by its token ids once `super::embed`
    /// has tokenized them (empty on every other route).
    pub inputs: Vec<Prompt>,
    /// `/v1/embeddings`: the inputs' token count, all together (set by `super::embed`).
    pub input_tokens: usize,
    /// The prompt as tokenized by `limits` when a tenant limit needed its count
    /// (`None`: [`submit`] tokenizes it). Only this module and `limits` set it, from this
    /// job's own `prompt` after the last phase that changes it (`prompt_filter`).
    pub(super) prepared: Option<Prepared>,
}

impl Job {
    /// The job of a parsed request, and how its answer is shaped.
    pub fn from_parsed(parsed: Parsed) -> (Job, Reply) {
        let reply = Reply {
            route: parsed.route,
            stream: parsed.stream,
            logprobs: parsed.params.logprobs.is_some(),
            tokenize: parsed.tokenize,
            tool_names: parsed.tools,
            tool_format: None,
            echo: parsed.echo,
            embed: parsed.embed,
        };
        let job = Job {
            route: parsed.route,
            model: parsed.model,
            prompt: parsed.prompt,
            params: parsed.params,
            prompt_param: parsed.prompt_param,
            n: parsed.n,
            inputs: parsed.inputs,
            input_tokens: 0,
            prepared: None,
        };
        (job, reply)
    }
}

/// A generation the engine accepted: one handle per choice, in choice order.
pub struct Running {
    pub generations: Vec<Generation>,
    pub prompt_param: &'static str,
    /// Tenant and model for the generation's token metrics (and the response's `model`).
    pub labels: GenerationLabels,
}

/// Submits an admitted job: the only way to the engine, and it takes the audit receipt.
/// The prompt is tokenized once: `limits` may already have done it for the tenant's token
/// count; otherwise it is done here ([`super::limits::prepare`]: inline when small, else
/// on the blocking pool). Submitting the prepared ids is bounded work (checks and a queue
/// hand-off), done on the runtime. Dropping the returned [`Generation`] cancels the request.
pub async fn submit(
    engine: &Arc<dyn Engine>,
    ctx: &RequestCtx,
    admitted: Admitted,
) -> Result<Running, ApiError> {
    let mut job = admitted.into_job();
    let prepared = match job.prepared.take() {
        Some(prepared) => prepared,
        None => super::limits::prepare(engine, &mut job, "submission panicked").await?,
    };
    let prompt_param = job.prompt_param;
    let n = job.n;
    let labels = GenerationLabels::new(ctx.policy(), job.model.clone());
    let request = GenerateRequest {
        request_id: ctx.request_id.clone(),
        tenant: ctx.tenant().to_owned(),
        // Legacy certificate tenants (no policy) all weigh 1.
        tenant_weight: ctx.policy().map_or(1, |t| t.weight),
        model: job.model,
        prompt: job.prompt,
        params: job.params,
    };
    let grammar = request.params.grammar.is_some();
    // A grammar is compiled at submission (and a model's token trie built on its first
    // one): milliseconds of CPU, tens for a large schema, so off the runtime's threads.
    // Everything else about submitting is a few checks and a queue hand-off.
    let submit = move |engine: &dyn Engine| {
        if n == 1 {
            engine.submit_prepared(request, prepared).map(|g| vec![g])
        } else {
            engine.submit_n(request, prepared, n)
        }
    };
    let generations = if grammar {
        let engine = Arc::clone(engine);
        tokio::task::spawn_blocking(move || submit(engine.as_ref()))
            .await
            .map_err(|_| {
                ApiError::engine(
                    EngineError::Inference("submission panicked".into()),
                    prompt_param,
                )
            })?
    } else {
        submit(engine.as_ref())
    }
    .map_err(|e| ApiError::engine(e, prompt_param))?;
    Ok(Running {
        generations,
        prompt_param,
        labels,
    })
}

/// Waits until a stream's first token (or its end): errors until then still become a
/// proper HTTP status instead of an error inside a 200 stream.
pub async fn first_event(
    generation: &mut Generation,
    prompt_param: &'static str,
) -> Result<TokenEvent, ApiError> {
    loop {
        match generation.next().await {
            Some(TokenEvent::Started { .. }) => {}
            Some(
                first @ (TokenEvent::Token { .. }
                | TokenEvent::Finished {
                    reason: FinishReason::Stop | FinishReason::Length,
                    ..
                }),
            ) => return Ok(first),
            // Failed, cancelled, or the engine hung up: always an error.
            other => {
                end_of(other, prompt_param)?;
            }
        }
    }
}

/// One engine event, classified; engine failures and premature ends become errors. Text
/// comes with the log-probabilities of the tokens it completes (empty unless asked for).
pub enum Step {
    Started,
    Token(String, Vec<TokenLogprob>),
    Finished {
        reason: FinishReason,
        usage: Usage,
        timings: GenerationTimings,
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
}

/// Classifies one engine event (`None`: the engine hung up).
pub fn end_of(event: Option<TokenEvent>, prompt_param: &'static str) -> Result<Step, ApiError> {
    match event {
        Some(TokenEvent::Started { .. }) => Ok(Step::Started),
        Some(TokenEvent::Token { text, logprobs, .. }) => Ok(Step::Token(text, logprobs)),
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
            logprobs,
        }) => Ok(Step::Finished {
            reason,
            usage,
            timings,
            text,
            logprobs,
        }),
        Some(TokenEvent::Failed(e)) => Err(ApiError::engine(e, prompt_param)),
    }
}
