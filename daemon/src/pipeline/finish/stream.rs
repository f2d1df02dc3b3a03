//! The SSE side of `finish`: one [`ChoiceStream`] per choice, their events merged into
//! one stream, each filtered through a bounded window; the completion record is durable
//! before the final events (finish reasons, usage, `[DONE]`) go out.

use std::collections::VecDeque;
use std::sync::Arc;

use airlock_engine::{FinishReason, Generation, GenerationTimings, TokenEvent, ToolFormat, Usage};
use airlock_policy::FilterSet;
use airlock_policy::filter::StreamFilter;
use bytes::Bytes;
use futures_util::stream;
use hyper::Response;
use tokio::sync::OwnedSemaphorePermit;

use super::calls;
use super::{CHOICE_SEPARATOR, Finisher, total_usage, ttft_ms};
use crate::api::openai::logprobs::LogprobGate;
use crate::api::openai::tool_calls::Splitter;
use crate::api::sse::{self, Chunker};
use crate::api::{ApiError, BoxBody};
use crate::audit::trail::{StreamAudit, Trail};
use crate::pipeline::generate::Step;

/// The state a stream's body carries between events. The body owns the generations and
/// the concurrency slot: when the client disconnects, hyper drops the body, which drops the
/// generations (cancelling them in the engine) and frees the slot.
struct StreamState {
    /// One per choice, in choice order (one unless the request asked for `n`).
    choices: Vec<ChoiceStream>,
    finisher: Finisher,
    out: VecDeque<Bytes>,
    done: bool,
    /// Held until the body is dropped; frees a concurrency slot.
    _slot: OwnedSemaphorePermit,
    /// The completion record, committed before the final events in `tail` are sent.
    audit: Option<StreamAudit>,
    /// The final events (finish reasons, usage, `[DONE]` or an error), held back until the
    /// completion record is durable.
    tail: Vec<Bytes>,
    /// What the completion record says.
    ending: Option<Ending>,
    /// The output filter's rules, for the calls' arguments.
    filter_set: Option<Arc<FilterSet>>,
}

/// One choice of a stream.
pub(super) struct ChoiceStream {
    generation: Generation,
    /// Writes this choice's chunks (its `index`, its completions `text_offset`).
    chunker: Chunker,
    /// The tenant's output filter: holds back a bounded window so matches split across
    /// tokens are caught; a deny ends the choice with `finish_reason: "content_filter"`.
    filter: Option<StreamFilter<Arc<FilterSet>>>,
    /// Log-probabilities wait here until the filter has let their text through.
    gate: LogprobGate,
    /// With tools offered: separates content (streamed) from a call (held to the end,
    /// then parsed, filtered and sent as `delta.tool_calls`).
    splitter: Option<Splitter>,
    /// With several choices: what this one sent, for the output digest (taken in choice
    /// order at the end, as a JSON response's; one choice streams into the digest).
    sent: String,
    /// How it ended (`None` while it runs).
    end: Option<ChoiceEnd>,
}

impl ChoiceStream {
    /// Choice `chunker.index` of a stream, reading `generation`; `filter`: the tenant's
    /// output filter; `tools`: how the model writes calls, when tools were offered.
    pub(super) fn new(
        generation: Generation,
        chunker: Chunker,
        filter: Option<Arc<FilterSet>>,
        tools: Option<ToolFormat>,
    ) -> Self {
        let logprobs = chunker.logprobs;
        ChoiceStream {
            generation,
            chunker,
            filter: filter.map(StreamFilter::new),
            gate: LogprobGate::new(logprobs),
            splitter: tools.map(Splitter::new),
            sent: String::new(),
            end: None,
        }
    }
}

enum ChoiceEnd {
    Finished {
        reason: FinishReason,
        usage: Usage,
        timings: GenerationTimings,
    },
    /// Ended by the output filter.
    Filtered,
}

struct Ending {
    reason: Option<FinishReason>,
    usage: Option<Usage>,
    ttft_ms: Option<u64>,
    error_code: Option<&'static str>,
}

impl StreamState {
    /// Bytes of choice `i`'s output, for the completion record's digest.
    fn audit_bytes(&mut self, i: usize, text: &str) {
        if self.choices.len() > 1 {
            self.choices[i].sent.push_str(text);
        } else if let Some(audit) = &mut self.audit {
            audit.token(text);
        }
    }

    /// Sends choice `i`'s released text on (and into the output digest), with the
    /// log-probabilities of the tokens it completes.
    fn release(&mut self, i: usize, text: &str) {
        // Empty while the engine holds text back (partial UTF-8, possible stop string).
        if !text.is_empty() {
            let logprobs = self.choices[i].gate.release(text);
            self.audit_bytes(i, text);
            let chunks = self.choices[i].chunker.content(text, &logprobs);
            self.out.extend(chunks);
        }
    }

    /// After a filter step: if the filter denied, sends what it released, ends choice `i`
    /// with `finish_reason: "content_filter"` and returns true.
    fn filter_denied(&mut self, i: usize, released: &str) -> bool {
        let Some(rule) = self.choices[i]
            .filter
            .as_ref()
            .and_then(|f| f.denied())
            .map(str::to_owned)
        else {
            return false;
        };
        self.release(i, released);
        self.end_filtered(i, rule);
        true
    }

    /// Ends choice `i` after a deny by `rule`: `finish_reason: "content_filter"`, its
    /// generation cancelled in the engine.
    fn end_filtered(&mut self, i: usize, rule: String) {
        if let Some(audit) = &self.audit {
            audit.note_filter(&rule, "deny", 1);
        }
        crate::metrics::global().filter_action(&rule, "deny", 1);
        self.finisher.span.in_scope(
            || tracing::info!(rule_id = %rule, choice = i, "output filter ended the stream"),
        );
        let choice = &mut self.choices[i];
        choice.generation.cancel();
        let filtered = choice.chunker.content_filtered();
        self.tail.extend(filtered);
        choice.end = Some(ChoiceEnd::Filtered);
        self.end_if_all_ended();
    }

    /// The last text of choice `i`: with tools, the content still to send (held-back
    /// text, or a region that turned out not to be a call) and the calls parsed.
    fn split_final(&mut self, i: usize, text: String) -> (String, Vec<calls::ToolCall>) {
        let Some(mut splitter) = self.choices[i].splitter.take() else {
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

    /// Filters choice `i`'s calls' arguments and queues their deltas; false when the
    /// filter denied (the choice has then ended with `content_filter`).
    fn send_calls(&mut self, i: usize, mut calls: Vec<calls::ToolCall>) -> bool {
        if let Some(set) = &self.filter_set {
            let filtered = calls::filter(set, &mut calls);
            let trail = self.audit.as_ref().map(StreamAudit::trail);
            Finisher::note_redactions(trail, &filtered.redactions);
            if let Some(rule) = filtered.denied {
                self.end_filtered(i, rule);
                return false;
            }
        }
        for (index, call) in calls.iter().enumerate() {
            // The same bytes as a JSON response's digest (`calls::digest_bytes`).
            self.audit_bytes(i, &format!("\n{}\n{}", call.name, call.arguments));
            let chunks = self.choices[i].chunker.tool_call(index, call);
            self.out.extend(chunks);
        }
        if let Some(audit) = &self.audit {
            audit
                .trail()
                .note_tool_calls(calls.iter().map(|c| c.name.as_str()));
        }
        true
    }

    /// Turns one engine event of choice `i` into zero or more SSE events.
    fn on_event(&mut self, i: usize, event: Option<TokenEvent>) {
        match self.finisher.step(event) {
            Ok(Step::Started) => {}
            Ok(Step::Token(text, logprobs)) => {
                let choice = &mut self.choices[i];
                choice.gate.push(&text, logprobs);
                let text = match &mut choice.splitter {
                    Some(s) => s.push(&text),
                    None => text,
                };
                let text = match &mut choice.filter {
                    Some(f) => f.push(&text),
                    None => text,
                };
                if !self.filter_denied(i, &text) {
                    self.release(i, &text);
                }
            }
            Ok(Step::Finished {
                reason,
                usage,
                timings,
                text,
                logprobs,
            }) => {
                self.choices[i].gate.push(&text, logprobs);
                let (text, calls) = self.split_final(i, text);
                let text = match &mut self.choices[i].filter {
                    Some(f) => {
                        let mut out = f.push(&text);
                        if f.denied().is_none() {
                            out.push_str(&f.finish());
                        }
                        out
                    }
                    None => text,
                };
                if self.filter_denied(i, &text) {
                    return;
                }
                self.release(i, &text);
                let reason = if calls.is_empty() {
                    reason
                } else {
                    if !self.send_calls(i, calls) {
                        return;
                    }
                    FinishReason::ToolCalls
                };
                let finish = self.choices[i].chunker.finish(reason, usage);
                self.tail.extend(finish);
                self.choices[i].end = Some(ChoiceEnd::Finished {
                    reason,
                    usage,
                    timings,
                });
                self.end_if_all_ended();
            }
            Err(error) => {
                let chunker = &mut self.choices[0].chunker;
                let event = self.finisher.span.in_scope(|| chunker.error(&error));
                self.tail.push(event);
                self.tail.extend(chunker.done());
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

    /// Once every choice has ended: usage settled, the usage chunk and `[DONE]` queued,
    /// and what the completion record says. A choice ended by the filter leaves the
    /// request's whole token reservation in place, as a stream cut short does.
    fn end_if_all_ended(&mut self) {
        if self.choices.iter().any(|c| c.end.is_none()) {
            return;
        }
        let mut finished = Vec::with_capacity(self.choices.len());
        let mut filtered = false;
        for choice in &self.choices {
            match &choice.end {
                Some(ChoiceEnd::Finished {
                    reason,
                    usage,
                    timings,
                }) => finished.push((*reason, *usage, timings)),
                _ => filtered = true,
            }
        }
        let usage = total_usage(finished.iter().map(|(_, usage, _)| usage));
        let first = match &self.choices[0].end {
            Some(ChoiceEnd::Finished {
                reason, timings, ..
            }) => Some((*reason, *timings)),
            _ => None,
        };
        if !filtered && let Some((reason, timings)) = &first {
            self.finisher.settle(*reason, usage, timings);
            self.finisher
                .trace(finished.iter().map(|(reason, _, _)| *reason), usage);
            if self.choices[0].chunker.include_usage {
                self.tail.push(self.choices[0].chunker.usage(usage.into()));
            }
        }
        if self.choices.len() > 1
            && let Some(audit) = &mut self.audit
        {
            for (index, choice) in self.choices.iter_mut().enumerate() {
                if index > 0 {
                    audit.token(&CHOICE_SEPARATOR.to_string());
                }
                audit.token(&std::mem::take(&mut choice.sent));
            }
            audit
                .trail()
                .note_finish_reasons(self.choices.iter().map(|c| match &c.end {
                    Some(ChoiceEnd::Finished { reason, .. }) => *reason,
                    _ => FinishReason::Stop,
                }));
        }
        self.tail.extend(self.choices[0].chunker.done());
        self.done = true;
        self.ending = Some(if filtered {
            Ending {
                reason: Some(first.map_or(FinishReason::Stop, |(reason, _)| reason)),
                usage: None,
                ttft_ms: None,
                error_code: Some("content_filter"),
            }
        } else {
            Ending {
                reason: first.as_ref().map(|(reason, _)| *reason),
                usage: Some(usage),
                ttft_ms: first.as_ref().map(|(_, timings)| ttft_ms(timings)),
                error_code: None,
            }
        });
    }

    /// The next event of a choice still running (choice index and event).
    async fn next_event(&mut self) -> (usize, Option<TokenEvent>) {
        if let [only] = self.choices.as_mut_slice() {
            return (0, only.generation.next().await);
        }
        // Receiving is cancel-safe: the futures not chosen lose nothing.
        let running = self
            .choices
            .iter_mut()
            .enumerate()
            .filter(|(_, c)| c.end.is_none())
            .map(|(i, c)| Box::pin(async move { (i, c.generation.next().await) }));
        futures_util::future::select_all(running).await.0
    }

    /// Audit complete: the record is durable before the final events are sent; if it
    /// cannot be written the stream ends with an error instead.
    async fn complete(&mut self, ending: Ending) {
        // Output redactions (rule ids and counts) go on the completion record.
        let trail = self.audit.as_ref().map(StreamAudit::trail);
        for choice in &self.choices {
            let redactions = choice.filter.as_ref().map(|f| f.redactions());
            Finisher::note_redactions(trail, redactions.into_iter().flatten());
        }
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
            let chunker = &mut self.choices[0].chunker;
            self.tail = vec![chunker.error(&ApiError::AuditUnavailable)];
            self.tail.extend(chunker.done());
        }
    }
}

/// The 200 response streaming started generations (their first events in `firsts`).
pub(super) fn stream(
    mut choices: Vec<ChoiceStream>,
    firsts: Vec<TokenEvent>,
    finisher: Finisher,
    filter: Option<Arc<FilterSet>>,
    trail: Option<&Arc<Trail>>,
    slot: OwnedSemaphorePermit,
) -> Response<BoxBody> {
    let out = choices
        .iter_mut()
        .flat_map(|c| c.chunker.opening())
        .collect();
    let mut state = StreamState {
        choices,
        filter_set: filter,
        out,
        finisher,
        done: false,
        _slot: slot,
        audit: trail.map(|trail| trail.stream()),
        tail: Vec::new(),
        ending: None,
    };
    for (i, first) in firsts.into_iter().enumerate() {
        if !state.done && state.choices[i].end.is_none() {
            state.on_event(i, Some(first));
        }
    }
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
            let (i, event) = state.next_event().await;
            state.on_event(i, event);
        }
    });
    sse::response(events)
}
