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
//! record itself, durable before its final event.
//!
//! Log-probabilities, when asked for, pass through a [`LogprobGate`] on both paths: an
//! entry leaves only with its token's text, once the output filter has let that text
//! through unchanged (see `docs/api.md`, "Log-probabilities and output filters").

mod calls;

use std::collections::VecDeque;
use std::sync::Arc;

use airlock_engine::{
    FinishReason, Generation, GenerationTimings, TokenEvent, TokenLogprob, ToolFormat, Usage,
};
use airlock_policy::FilterSet;
use airlock_policy::filter::StreamFilter;
use airlock_policy::ratelimit::Admission;
use bytes::Bytes;
use futures_util::stream;
use hyper::Response;
use tokio::sync::OwnedSemaphorePermit;

use super::RequestCtx;
use super::generate::{self, Running, Step};
use crate::access::PolicyError;
use crate::api::endpoints::{self, Completion};
use crate::api::openai::logprobs::LogprobGate;
use crate::api::openai::responses::events::ResponseEvents;
use crate::api::openai::tool_calls::Splitter;
use crate::api::request::{Inference, StreamSpec};
use crate::api::sse::{self, Chunker};
use crate::api::tokenize::TokenizeOptions;
use crate::api::{ApiError, BoxBody};
use crate::app::App;
use crate::audit::trail::{StreamAudit, Trail};
use crate::clock::unix_now;
use crate::metrics::GenerationLabels;

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
    admission: Option<Admission>,
    slot: OwnedSemaphorePermit,
) -> Result<Response<BoxBody>, ApiError> {
    let Running {
        mut generation,
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
        streaming: reply.stream.is_some(),
        tool_names: reply.tool_names,
        tool_format: reply.tool_format,
    };
    let id = endpoints::object_id(reply.route);
    let Some(spec) = reply.stream else {
        let collected = collect(
            &mut generation,
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
            text: collected.text,
            reason: collected.reason,
            usage: collected.usage,
            logprobs: reply.logprobs.then_some(collected.logprobs),
            tool_calls: collected.calls,
            echo: reply.echo.as_ref(),
        }));
    };
    let first = generate::first_event(&mut generation, prompt_param).await?;
    let chunker = Chunker {
        shape: spec.shape,
        id,
        created: unix_now(),
        model: finisher.labels.model().to_owned(),
        fingerprint: app.fingerprint.clone(),
        include_usage: spec.include_usage,
        logprobs: reply.logprobs,
        text_offset: 0,
        responses: reply.echo.map(ResponseEvents::new),
    };
    Ok(stream(
        generation,
        first,
        chunker,
        finisher,
        filter,
        ctx.trail.as_ref(),
        slot,
    ))
}

/// A whole completion, filtered.
struct Collected {
    text: String,
    reason: FinishReason,
    usage: Usage,
    /// The entries the output filter let through (empty unless asked for).
    logprobs: Vec<TokenLogprob>,
    /// Tool calls parsed from the output; `text` is then the content before them.
    calls: Vec<calls::ToolCall>,
}

/// The output side shared by both responses.
struct Finisher {
    prompt_param: &'static str,
    /// Log-probabilities were asked for.
    logprobs: bool,
    /// The tenant's rate-limit admission: the unused tokens return when the generation
    /// finishes (a stream cut short keeps its whole reservation).
    admission: Option<Admission>,
    labels: GenerationLabels,
    /// The request's span: a stream's events arrive after `handle` has returned.
    span: tracing::Span,
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
            // `server::request`), which the `response` line prints.
            self.span
                .record("finish_reason", reason.as_str())
                .record("prompt_tokens", usage.prompt_tokens)
                .record("completion_tokens", usage.completion_tokens)
                .record("ttft_ms", timings.time_to_first_token_ms)
                .record("decode_tokens_per_s", timings.decode_tokens_per_s);
        }
        self.labels.finished(usage, timings);
        if let Some(admission) = self.admission.take() {
            let used = usage.prompt_tokens.saturating_add(usage.completion_tokens);
            admission.complete(u32::try_from(used).unwrap_or(u32::MAX));
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

/// The whole completion: collected, settled, filtered whole, and noted for the `complete`
/// record (which `audit::finish` writes before the response leaves).
async fn collect(
    generation: &mut Generation,
    finisher: &mut Finisher,
    filter: Option<&FilterSet>,
    trail: Option<&Trail>,
) -> Result<Collected, ApiError> {
    let mut text = String::new();
    let mut gate = LogprobGate::new(finisher.logprobs);
    loop {
        match finisher.step(generation.next().await)? {
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
                finisher.settle(reason, usage, &timings);
                // Calls are parsed from the text as the model wrote it, before any
                // redaction could break their JSON; the filter then sees content and
                // arguments apart (`calls::filter`).
                let mut answer = calls::split(
                    finisher.labels.model(),
                    finisher.tool_format,
                    &finisher.tool_names,
                    text,
                    &finisher.span,
                );
                if let Some(filter) = filter {
                    let checked = filter.check_output_counted(&answer.content);
                    // After admission, so these land on the completion record (a deny is
                    // noted where the refusal is rendered, in `handle`).
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
                    reason
                } else {
                    // The request's log line says what the client was told.
                    finisher.span.record("finish_reason", "tool_calls");
                    FinishReason::ToolCalls
                };
                if let Some(trail) = trail {
                    let output = if answer.calls.is_empty() {
                        std::borrow::Cow::Borrowed(answer.content.as_str())
                    } else {
                        std::borrow::Cow::Owned(calls::digest_bytes(&answer))
                    };
                    trail.note_finished(reason, usage, Some(ttft_ms(&timings)), &output);
                    trail.note_tool_calls(answer.calls.iter().map(|c| c.name.as_str()));
                }
                // The text as it leaves: entries up to the filter's first change (with
                // calls, the content's tokens only).
                let logprobs = gate.release(&answer.content);
                return Ok(Collected {
                    text: answer.content,
                    reason,
                    usage,
                    logprobs,
                    calls: answer.calls,
                });
            }
        }
    }
}

/// The state a stream's body carries between events. The body owns the generation and the
/// concurrency slot: when the client disconnects, hyper drops the body, which drops the
/// generation (cancelling it in the engine) and frees the slot.
struct StreamState {
    generation: Generation,
    chunker: Chunker,
    finisher: Finisher,
    out: VecDeque<Bytes>,
    done: bool,
    /// Held until the body is dropped; frees a concurrency slot.
    _slot: OwnedSemaphorePermit,
    /// The completion record, committed before the final events in `tail` are sent.
    audit: Option<StreamAudit>,
    /// The final events (finish reason, usage, `[DONE]` or an error), held back until the
    /// completion record is durable.
    tail: Vec<Bytes>,
    /// What the completion record says.
    ending: Option<Ending>,
    /// The tenant's output filter: holds back a bounded window so matches split across
    /// tokens are caught; a deny ends the stream with `finish_reason: "content_filter"`.
    filter: Option<StreamFilter<Arc<FilterSet>>>,
    /// Log-probabilities wait here until the filter has let their text through.
    gate: LogprobGate,
    /// With tools offered: separates content (streamed) from a call (held to the end,
    /// then parsed, filtered and sent as `delta.tool_calls`).
    splitter: Option<Splitter>,
    /// The output filter's rules, for the calls' arguments.
    filter_set: Option<Arc<FilterSet>>,
}

struct Ending {
    reason: Option<FinishReason>,
    usage: Option<Usage>,
    ttft_ms: Option<u64>,
    error_code: Option<&'static str>,
}

impl StreamState {
    /// Sends released text on (and into the output digest), with the log-probabilities
    /// of the tokens it completes.
    fn release(&mut self, text: &str) {
        // Empty while the engine holds text back (partial UTF-8, possible stop string).
        if !text.is_empty() {
            let logprobs = self.gate.release(text);
            if let Some(audit) = &mut self.audit {
                audit.token(text);
            }
            let chunks = self.chunker.content(text, &logprobs);
            self.out.extend(chunks);
        }
    }

    /// After a filter step: if the filter denied, sends what it released, ends the stream
    /// with `finish_reason: "content_filter"` and returns true (dropping the generation
    /// with the state cancels it in the engine).
    fn filter_denied(&mut self, released: &str) -> bool {
        let Some(rule) = self
            .filter
            .as_ref()
            .and_then(|f| f.denied())
            .map(str::to_owned)
        else {
            return false;
        };
        self.release(released);
        self.end_filtered(rule);
        true
    }

    /// Ends the stream after a deny by `rule`: `finish_reason: "content_filter"`.
    fn end_filtered(&mut self, rule: String) {
        if let Some(audit) = &self.audit {
            audit.note_filter(&rule, "deny", 1);
        }
        crate::metrics::global().filter_action(&rule, "deny", 1);
        self.finisher
            .span
            .in_scope(|| tracing::info!(rule_id = %rule, "output filter ended the stream"));
        let filtered = self.chunker.content_filtered();
        self.tail.extend(filtered);
        self.tail.extend(self.chunker.done());
        self.done = true;
        self.ending = Some(Ending {
            reason: Some(FinishReason::Stop),
            usage: None,
            ttft_ms: None,
            error_code: Some("content_filter"),
        });
    }

    /// The last text of a generation: with tools, the content still to send (held-back
    /// text, or a region that turned out not to be a call) and the calls parsed.
    fn split_final(&mut self, text: String) -> (String, Vec<calls::ToolCall>) {
        let Some(mut splitter) = self.splitter.take() else {
            return (text, Vec::new());
        };
        let mut out = splitter.push(&text);
        let answer = calls::split(
            self.finisher.labels.model(),
            self.finisher.tool_format,
            &self.finisher.tool_names,
            splitter.finish(),
            &self.finisher.span,
        );
        out.push_str(&answer.content);
        (out, answer.calls)
    }

    /// Filters the calls' arguments and queues their deltas; false when the filter denied
    /// (the stream has then ended with `content_filter`).
    fn send_calls(&mut self, mut calls: Vec<calls::ToolCall>) -> bool {
        if let Some(set) = &self.filter_set {
            let filtered = calls::filter(set, &mut calls);
            let trail = self.audit.as_ref().map(StreamAudit::trail);
            Finisher::note_redactions(trail, &filtered.redactions);
            if let Some(rule) = filtered.denied {
                self.end_filtered(rule);
                return false;
            }
        }
        for (index, call) in calls.iter().enumerate() {
            if let Some(audit) = &mut self.audit {
                // The same bytes as a JSON response's digest (`calls::digest_bytes`).
                audit.token(&format!("\n{}\n{}", call.name, call.arguments));
            }
            let chunks = self.chunker.tool_call(index, call);
            self.out.extend(chunks);
        }
        if let Some(audit) = &self.audit {
            audit
                .trail()
                .note_tool_calls(calls.iter().map(|c| c.name.as_str()));
        }
        true
    }

    /// Turns one engine event into zero or more SSE events.
    fn on_event(&mut self, event: Option<TokenEvent>) {
        match self.finisher.step(event) {
            Ok(Step::Started) => {}
            Ok(Step::Token(text, logprobs)) => {
                self.gate.push(&text, logprobs);
                let text = match &mut self.splitter {
                    Some(s) => s.push(&text),
                    None => text,
                };
                let text = match &mut self.filter {
                    Some(f) => f.push(&text),
                    None => text,
                };
                if !self.filter_denied(&text) {
                    self.release(&text);
                }
            }
            Ok(Step::Finished {
                reason,
                usage,
                timings,
                text,
                logprobs,
            }) => {
                self.gate.push(&text, logprobs);
                let (text, calls) = self.split_final(text);
                let text = match &mut self.filter {
                    Some(f) => {
                        let mut out = f.push(&text);
                        if f.denied().is_none() {
                            out.push_str(&f.finish());
                        }
                        out
                    }
                    None => text,
                };
                if self.filter_denied(&text) {
                    return;
                }
                self.release(&text);
                let reason = if calls.is_empty() {
                    reason
                } else {
                    if !self.send_calls(calls) {
                        return;
                    }
                    FinishReason::ToolCalls
                };
                self.finisher.settle(reason, usage, &timings);
                let finish = self.chunker.finish(reason, usage);
                self.tail.extend(finish);
                if self.chunker.include_usage {
                    self.tail.push(self.chunker.usage(usage.into()));
                }
                self.tail.extend(self.chunker.done());
                self.done = true;
                self.ending = Some(Ending {
                    reason: Some(reason),
                    usage: Some(usage),
                    ttft_ms: Some(ttft_ms(&timings)),
                    error_code: None,
                });
            }
            Err(error) => {
                let event = self.finisher.span.in_scope(|| self.chunker.error(&error));
                self.tail.push(event);
                self.tail.extend(self.chunker.done());
                self.done = true;
                self.ending = Some(Ending {
                    reason: None,
                    usage: None,
                    ttft_ms: None,
                    error_code: error.object().code.or(Some("stream_error")),
                });
            }
        }
    }

    /// Audit complete: the record is durable before the final events are sent; if it
    /// cannot be written the stream ends with an error instead.
    async fn complete(&mut self, ending: Ending) {
        let redactions = self.filter.as_ref().map(|f| f.redactions());
        // Output redactions (rule ids and counts) go on the completion record.
        let trail = self.audit.as_ref().map(StreamAudit::trail);
        Finisher::note_redactions(trail, redactions.into_iter().flatten());
        let Some(audit) = &mut self.audit else {
            return;
        };
        let written = audit
            .finish(
                ending.reason,
                ending.usage,
                ending.ttft_ms,
                ending.error_code,
            )
            .await;
        if let Err(e) = written {
            self.finisher.span.in_scope(|| {
                tracing::error!(error = %e, "audit completion record not written: ending the stream with an error");
            });
            self.tail = vec![self.chunker.error(&ApiError::AuditUnavailable)];
            self.tail.extend(self.chunker.done());
        }
    }
}

/// The 200 response streaming a started generation.
fn stream(
    generation: Generation,
    first: TokenEvent,
    mut chunker: Chunker,
    finisher: Finisher,
    filter: Option<Arc<FilterSet>>,
    trail: Option<&Arc<Trail>>,
    slot: OwnedSemaphorePermit,
) -> Response<BoxBody> {
    let chunker_logprobs = chunker.logprobs;
    let splitter = finisher.tool_format.map(Splitter::new);
    let mut state = StreamState {
        splitter,
        filter_set: filter.clone(),
        generation,
        out: chunker.opening().into(),
        chunker,
        finisher,
        done: false,
        _slot: slot,
        audit: trail.map(|trail| trail.stream()),
        tail: Vec::new(),
        ending: None,
        filter: filter.map(StreamFilter::new),
        gate: LogprobGate::new(chunker_logprobs),
    };
    state.on_event(Some(first));
    let events = stream::unfold(state, |mut state| async move {
        loop {
            if let Some(bytes) = state.out.pop_front() {
                return Some((bytes, state));
            }
            if state.done {
                let ending = state.ending.take()?;
                state.complete(ending).await;
                let tail = std::mem::take(&mut state.tail);
                state.out.extend(tail);
                continue;
            }
            let event = state.generation.next().await;
            state.on_event(event);
        }
    });
    sse::response(events)
}
