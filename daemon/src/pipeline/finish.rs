//! Phase `finish`: the output side of a generation — output filter, usage settlement and
//! the completion record — for both the whole JSON response and the SSE stream.
//!
//! One [`Finisher`] serves both: it classifies engine events, settles usage (log line,
//! token metrics, the unused part of the token reservation returned), notes filter actions
//! on the metrics and the audit trail, and carries what the completion record says. The
//! two responses differ only where the client sees a difference: a JSON response is
//! filtered whole (a deny is a 403) and its `complete` record is written by
//! `audit::finish` before the response leaves `handle`; a stream is filtered through a
//! bounded window (a deny ends it with `finish_reason: "content_filter"`) and writes its
//! record itself, durable before its final event (module `stream`).
//!
//! A request for `n` choices has `n` generations: the JSON response collects them side by
//! side and settles them together (the prompt counted once); the stream merges their
//! events, each choice filtered and ended on its own (`docs/api.md`, "Several choices").
//!
//! Log-probabilities, when asked for, pass through a [`LogprobGate`] on both paths: an
//! entry leaves only with its token's text, once the output filter has let that text
//! through unchanged (see `docs/api.md`, "Log-probabilities and output filters").

mod calls;
mod stream;

use stream::ChoiceStream;

use std::sync::Arc;

use airlock_engine::{FinishReason, Generation, GenerationTimings, TokenEvent, ToolFormat, Usage};
use airlock_policy::FilterSet;
use hyper::Response;
use tokio::sync::OwnedSemaphorePermit;

use super::RequestCtx;
use super::generate::{self, Running, Step};
use crate::access::PolicyError;
use crate::api::endpoints::{self, Choice, Completion};
use crate::api::openai::logprobs::LogprobGate;
use crate::api::openai::responses::events::ResponseEvents;
use crate::api::request::{Inference, StreamSpec};
use crate::api::sse::Chunker;
use crate::api::tokenize::TokenizeOptions;
use crate::api::{ApiError, BoxBody};
use crate::app::App;
use crate::audit::trail::Trail;
use crate::clock::unix_now;
use crate::metrics::GenerationLabels;
use crate::telemetry::RequestSpan;

/// How the answer of a parsed request is shaped.
#[derive(Clone, Debug)]
pub struct Reply {
    pub route: Inference,
    /// `stream: true`: an SSE response; `None`: one JSON document.
    pub stream: Option<StreamSpec>,
    /// Log-probabilities were asked for.
    pub logprobs: bool,
    /// How `/tokenize` answers.
    pub tokenize: TokenizeOptions,
    /// How `/v1/embeddings` answers.
    pub embed: crate::api::embeddings::EmbedOptions,
    /// The tools offered to the model (empty: its output is text, never parsed for calls).
    pub tool_names: Vec<String>,
    /// How the model writes calls; set by the `tools` phase when tools are offered.
    pub tool_format: Option<ToolFormat>,
    /// `/v1/responses`: the request fields its response object repeats.
    pub echo: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Runs the generation to its response. The concurrency slot lives as long as the
/// stream's body, or until the generation completes.
pub async fn respond(
    app: &App,
    ctx: &RequestCtx,
    running: Running,
    reply: Reply,
    admission: Option<super::limits::TenantAdmission>,
    slot: OwnedSemaphorePermit,
) -> Result<Response<BoxBody>, ApiError> {
    let Running {
        mut generations,
        prompt_param,
        labels,
    } = running;
    let filter = ctx
        .policy()
        .map(|t| Arc::clone(&t.output_filter))
        .filter(|f| !f.is_empty());
    let mut finisher = Finisher {
        prompt_param,
        logprobs: reply.logprobs,
        admission,
        labels,
        span: tracing::Span::current(),
        trace: ctx.span.clone(),
        streaming: reply.stream.is_some(),
        tool_names: reply.tool_names,
        tool_format: reply.tool_format,
    };
    let id = endpoints::object_id(reply.route);
    ctx.span.response(&id, finisher.labels.model());
    let Some(spec) = reply.stream else {
        let collected = collect(
            generations,
            &mut finisher,
            filter.as_deref(),
            ctx.trail.as_deref(),
        )
        .await?;
        drop(slot);
        return Ok(endpoints::completion(Completion {
            route: reply.route,
            id: &id,
            created: unix_now(),
            model: finisher.labels.model(),
            fingerprint: &app.fingerprint,
            choices: collected.choices,
            usage: collected.usage,
            echo: reply.echo.as_ref(),
        }));
    };
    // Errors before the first token are still a proper HTTP status; the samples of one
    // prompt share its prefill, so their first tokens come together.
    let mut firsts = Vec::with_capacity(generations.len());
    for generation in &mut generations {
        firsts.push(generate::first_event(generation, prompt_param).await?);
    }
    let created = unix_now();
    let mut responses = reply.echo.map(ResponseEvents::new);
    let choices = generations
        .into_iter()
        .enumerate()
        .map(|(index, generation)| {
            let chunker = Chunker {
                shape: spec.shape,
                index,
                id: id.clone(),
                created,
                model: finisher.labels.model().to_owned(),
                fingerprint: app.fingerprint.clone(),
                include_usage: spec.include_usage,
                logprobs: reply.logprobs,
                text_offset: 0,
                // A response has one output (`n` is a chat and completions field).
                responses: responses.take(),
            };
            ChoiceStream::new(generation, chunker, filter.clone(), finisher.tool_format)
        })
        .collect();
    Ok(stream::stream(
        choices,
        firsts,
        finisher,
        filter,
        ctx.trail.as_ref(),
        slot,
    ))
}

/// A whole completion, filtered: its choices, in order, and the request's usage.
struct Collected {
    choices: Vec<Choice>,
    usage: Usage,
}

/// The output side shared by both responses.
struct Finisher {
    prompt_param: &'static str,
    /// Log-probabilities were asked for.
    logprobs: bool,
    /// The tenant's rate-limit admission: the unused tokens return when the generation
    /// finishes (a stream cut short keeps its whole reservation).
    admission: Option<super::limits::TenantAdmission>,
    labels: GenerationLabels,
    /// The request's span: a stream's events arrive after `handle` has returned.
    span: tracing::Span,
    /// The request's trace span (`[telemetry]`): a stream holds it open to its end.
    trace: RequestSpan,
    /// Whether the response head (and with it the request's access-log line) has gone out
    /// before the generation finishes: a stream's settlement is a line of its own.
    streaming: bool,
    /// The tools offered (empty: the output is never parsed for calls).
    tool_names: Vec<String>,
    /// How the model writes calls (set whenever tools are offered).
    tool_format: Option<ToolFormat>,
}

impl Finisher {
    /// Classifies one engine event.
    fn step(&self, event: Option<TokenEvent>) -> Result<Step, ApiError> {
        generate::end_of(event, self.prompt_param)
    }

    /// Usage settlement of a finished generation: its log fields, its token metrics, and
    /// the unused part of its token reservation returned.
    fn settle(&mut self, reason: FinishReason, usage: Usage, timings: &GenerationTimings) {
        if self.streaming {
            // The access-log line went out with the stream's head: the outcome gets its own.
            self.span.in_scope(|| {
                tracing::info!(
                    finish_reason = reason.as_str(),
                    prompt_tokens = usage.prompt_tokens,
                    completion_tokens = usage.completion_tokens,
                    ttft_ms = timings.time_to_first_token_ms,
                    decode_tokens_per_s = timings.decode_tokens_per_s,
                    "generation finished"
                );
            });
        } else {
            // One line per request: the fields join the request's span (declared in
            // `server::request`), which the `response` line prints. Recorded together: each
            // `record` call is a trip through every layer of the subscriber.
            record_outcome(&self.span, reason, usage, timings);
        }
        self.labels.finished(usage, timings);
        if let Some(admission) = self.admission.take() {
            let used = usage.prompt_tokens.saturating_add(usage.completion_tokens);
            admission.complete(u32::try_from(used).unwrap_or(u32::MAX));
        }
    }

    /// The trace span's outcome: every choice's finish reason, as the client was told it,
    /// and the request's usage.
    fn trace(&self, reasons: impl Iterator<Item = FinishReason>, usage: Usage) {
        if self.trace.is_recording() {
            let reasons: Vec<&'static str> = reasons.map(FinishReason::as_str).collect();
            self.trace.finished(
                &reasons,
                usage.prompt_tokens as u64,
                usage.completion_tokens as u64,
            );
        }
    }

    /// Output redactions: counted, and noted (rule ids and counts, never the text) on the
    /// completion record.
    fn note_redactions<'a>(
        trail: Option<&Trail>,
        redactions: impl IntoIterator<Item = &'a (String, usize)>,
    ) {
        for (rule, count) in redactions {
            crate::metrics::global().filter_action(rule, "redact", *count as u64);
            if let Some(trail) = trail {
                trail.note_filter(rule, "redact", *count);
            }
        }
    }
}

fn ttft_ms(timings: &GenerationTimings) -> u64 {
    timings.time_to_first_token_ms.max(0.0) as u64
}

/// One choice's generation, run to its end (text not yet split or filtered).
struct Gathered {
    text: String,
    reason: FinishReason,
    usage: Usage,
    timings: GenerationTimings,
    gate: LogprobGate,
}

/// Runs one choice's generation to its end.
async fn gather(
    mut generation: Generation,
    prompt_param: &'static str,
    logprobs: bool,
) -> Result<Gathered, ApiError> {
    let mut text = String::new();
    let mut gate = LogprobGate::new(logprobs);
    loop {
        match generate::end_of(generation.next().await, prompt_param)? {
            Step::Started => {}
            Step::Token(piece, logprobs) => {
                gate.push(&piece, logprobs);
                text.push_str(&piece);
            }
            Step::Finished {
                reason,
                usage,
                timings,
                text: rest,
                logprobs,
            } => {
                gate.push(&rest, logprobs);
                text.push_str(&rest);
                return Ok(Gathered {
                    text,
                    reason,
                    usage,
                    timings,
                    gate,
                });
            }
        }
    }
}

/// The usage of a request's choices together: the prompt once (it ran once), every
/// choice's completion tokens.
fn total_usage<'a>(usages: impl IntoIterator<Item = &'a Usage>) -> Usage {
    let mut total = Usage::default();
    for (i, usage) in usages.into_iter().enumerate() {
        if i == 0 {
            total.prompt_tokens = usage.prompt_tokens;
            total.cached_tokens = usage.cached_tokens;
        }
        total.completion_tokens = total
            .completion_tokens
            .saturating_add(usage.completion_tokens);
    }
    total
}

/// Separates the choices' outputs in the bytes the completion record's `output_digest`
/// covers when there are several (ASCII record separator).
const CHOICE_SEPARATOR: char = '\u{1e}';

/// The whole completion: every choice collected (side by side), settled together,
/// filtered whole, and noted for the `complete` record (which `audit::finish` writes
/// before the response leaves). A deny in any choice refuses the response.
async fn collect(
    generations: Vec<Generation>,
    finisher: &mut Finisher,
    filter: Option<&FilterSet>,
    trail: Option<&Trail>,
) -> Result<Collected, ApiError> {
    let (prompt_param, logprobs) = (finisher.prompt_param, finisher.logprobs);
    // An error in one choice drops the others, which cancels them in the engine.
    let gathered = futures_util::future::try_join_all(
        generations
            .into_iter()
            .map(|g| gather(g, prompt_param, logprobs)),
    )
    .await?;
    let usage = total_usage(gathered.iter().map(|g| &g.usage));
    let first = &gathered[0];
    let (first_reason, ttft) = (first.reason, ttft_ms(&first.timings));
    finisher.settle(first_reason, usage, &first.timings);
    let many = gathered.len() > 1;
    let mut choices = Vec::with_capacity(gathered.len());
    let mut output = String::new();
    for (index, mut one) in gathered.into_iter().enumerate() {
        // Calls are parsed from the text as the model wrote it, before any redaction
        // could break their JSON; the filter then sees content and arguments apart
        // (`calls::filter`).
        let mut answer = calls::split(
            finisher.labels.model(),
            finisher.tool_format,
            &finisher.tool_names,
            one.text,
            &finisher.span,
        );
        if let Some(filter) = filter {
            let checked = filter.check_output_counted(&answer.content);
            // After admission, so these land on the completion record (a deny is noted
            // where the refusal is rendered, in `handle`).
            Finisher::note_redactions(trail, &checked.redactions);
            if let Some(rule_id) = checked.denied {
                return Err(PolicyError::ContentPolicy { rule_id }.into());
            }
            answer.content = checked.text;
            let filtered = calls::filter(filter, &mut answer.calls);
            Finisher::note_redactions(trail, &filtered.redactions);
            if let Some(rule_id) = filtered.denied {
                return Err(PolicyError::ContentPolicy { rule_id }.into());
            }
        }
        let reason = if answer.calls.is_empty() {
            one.reason
        } else {
            if index == 0 {
                // The request's log line says what the client was told.
                finisher.span.record("finish_reason", "tool_calls");
            }
            FinishReason::ToolCalls
        };
        if trail.is_some() {
            if many && index > 0 {
                output.push(CHOICE_SEPARATOR);
            }
            if answer.calls.is_empty() {
                output.push_str(&answer.content);
            } else {
                output.push_str(&calls::digest_bytes(&answer));
            }
        }
        // The text as it leaves: entries up to the filter's first change (with calls, the
        // content's tokens only).
        let logprobs = one.gate.release(&answer.content);
        choices.push(Choice {
            text: answer.content,
            reason,
            logprobs: finisher.logprobs.then_some(logprobs),
            tool_calls: answer.calls,
        });
    }
    finisher.trace(choices.iter().map(|c| c.reason), usage);
    if let Some(trail) = trail {
        trail.note_finished(choices[0].reason, usage, Some(ttft), &output);
        if many {
            trail.note_finish_reasons(choices.iter().map(|c| c.reason));
        }
        trail.note_tool_calls(
            choices
                .iter()
                .flat_map(|c| c.tool_calls.iter().map(|call| call.name.as_str())),
        );
    }
    Ok(Collected { choices, usage })
}

/// Records a JSON response's outcome on the request's span in one call (one pass through
/// the subscriber instead of one per field). A span without these fields (no subscriber, or
/// a span declared elsewhere) records nothing.
fn record_outcome(
    span: &tracing::Span,
    reason: FinishReason,
    usage: Usage,
    timings: &GenerationTimings,
) {
    let Some(meta) = span.metadata() else {
        return;
    };
    let fields = meta.fields();
    let (Some(f_reason), Some(f_prompt), Some(f_completion), Some(f_ttft), Some(f_decode)) = (
        fields.field("finish_reason"),
        fields.field("prompt_tokens"),
        fields.field("completion_tokens"),
        fields.field("ttft_ms"),
        fields.field("decode_tokens_per_s"),
    ) else {
        return;
    };
    let reason = reason.as_str();
    let (ttft, decode) = (timings.time_to_first_token_ms, timings.decode_tokens_per_s);
    span.record_all(&fields.value_set(&[
        (&f_reason, Some(&reason as &dyn tracing::Value)),
        (&f_prompt, Some(&usage.prompt_tokens as &dyn tracing::Value)),
        (
            &f_completion,
            Some(&usage.completion_tokens as &dyn tracing::Value),
        ),
        (&f_ttft, Some(&ttft as &dyn tracing::Value)),
        (&f_decode, Some(&decode as &dyn tracing::Value)),
    ]));
}
