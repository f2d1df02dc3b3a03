//! Server-sent events for streamed completions: `data: {chunk}\n\n` per event, then
//! `data: [DONE]\n\n`.
//!
//! The response body owns the request's [`Generation`] and its concurrency slot: when the
//! client disconnects, hyper drops the body, which drops the generation (cancelling it in the
//! engine) and frees the slot. One frame per event, so hyper writes each as it comes.

use std::collections::VecDeque;
use std::convert::Infallible;

use airlock_engine::{FinishReason, Generation, TokenEvent};
use bytes::Bytes;
use futures_util::stream;
use http::{HeaderValue, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper::Response;
use serde::Serialize;
use tokio::sync::OwnedSemaphorePermit;

use super::BoxBody;
use super::error::ApiError;
use super::inference::{Started, Step, end_of, log_finished};
use super::openai::{ChatChunk, ChunkChoice, Delta, TextChoice, TextCompletion, UsageJson};

/// Which OpenAI chunk format to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// `chat.completion.chunk`, with `delta`s.
    Chat,
    /// `text_completion`, with `text`s.
    Text,
}

/// Writes the chunks of one stream.
#[derive(Debug)]
pub struct Chunker {
    pub shape: Shape,
    pub id: String,
    pub created: u64,
    pub model: String,
    pub fingerprint: String,
    pub include_usage: bool,
    /// The request field the prompt came from, for error events.
    pub prompt_param: &'static str,
}

impl Chunker {
    /// `null` on every chunk when usage was asked for (OpenAI's convention), else absent.
    fn no_usage(&self) -> Option<Option<UsageJson>> {
        self.include_usage.then_some(None)
    }

    fn chat(&self, delta: Delta<'_>, finish_reason: Option<&'static str>) -> Bytes {
        event(&ChatChunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            system_fingerprint: &self.fingerprint,
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason,
            }],
            usage: self.no_usage(),
        })
    }

    fn text(&self, text: &str, finish_reason: Option<&'static str>) -> Bytes {
        event(&TextCompletion {
            id: &self.id,
            object: "text_completion",
            created: self.created,
            model: &self.model,
            system_fingerprint: &self.fingerprint,
            choices: vec![TextChoice {
                text,
                index: 0,
                logprobs: None,
                finish_reason,
            }],
            usage: self.no_usage(),
        })
    }

    /// Chat streams open with the assistant's role and empty content.
    pub fn opening(&self) -> Option<Bytes> {
        match self.shape {
            Shape::Chat => Some(self.chat(
                Delta {
                    role: Some("assistant"),
                    content: Some(""),
                },
                None,
            )),
            Shape::Text => None,
        }
    }

    pub fn content(&self, text: &str) -> Bytes {
        match self.shape {
            Shape::Chat => self.chat(
                Delta {
                    role: None,
                    content: Some(text),
                },
                None,
            ),
            Shape::Text => self.text(text, None),
        }
    }

    pub fn finish(&self, reason: FinishReason) -> Bytes {
        match self.shape {
            Shape::Chat => self.chat(Delta::default(), Some(reason.as_str())),
            Shape::Text => self.text("", Some(reason.as_str())),
        }
    }

    /// The last content chunk of a stream ended by the tenant's output filter.
    pub fn content_filtered(&self) -> Bytes {
        match self.shape {
            Shape::Chat => self.chat(Delta::default(), Some("content_filter")),
            Shape::Text => self.text("", Some("content_filter")),
        }
    }

    /// The extra last chunk: no choices, the request's usage.
    pub fn usage(&self, usage: UsageJson) -> Bytes {
        match self.shape {
            Shape::Chat => event(&ChatChunk {
                id: &self.id,
                object: "chat.completion.chunk",
                created: self.created,
                model: &self.model,
                system_fingerprint: &self.fingerprint,
                choices: Vec::new(),
                usage: Some(Some(usage)),
            }),
            Shape::Text => event(&TextCompletion {
                id: &self.id,
                object: "text_completion",
                created: self.created,
                model: &self.model,
                system_fingerprint: &self.fingerprint,
                choices: Vec::new(),
                usage: Some(Some(usage)),
            }),
        }
    }
}

/// `data: <json>\n\n`.
fn event<T: Serialize>(value: &T) -> Bytes {
    let mut out = b"data: ".to_vec();
    if let Err(e) = serde_json::to_writer(&mut out, value) {
        // Our own chunk types always serialize; should one not, the stream says so.
        tracing::error!(error = %e, "cannot serialize a stream chunk");
        out.truncate(6);
        out.extend_from_slice(br#"{"error":{"message":"the server had an error while processing the request","type":"server_error","param":null,"code":null}}"#);
    }
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

const DONE: &[u8] = b"data: [DONE]\n\n";

/// An error after the stream began: an event with OpenAI's error object (the SDKs raise it),
/// then `[DONE]`, as vLLM does.
fn error_event(error: &ApiError) -> Bytes {
    if error.status().is_server_error() {
        tracing::warn!(error = %error, "stream failed");
    }
    #[derive(Serialize)]
    struct ErrorEvent {
        error: super::error::ErrorObject,
    }
    event(&ErrorEvent {
        error: error.object(),
    })
}

/// The state the body stream carries between events.
struct StreamState {
    generation: Generation,
    chunker: Chunker,
    out: VecDeque<Bytes>,
    done: bool,
    span: tracing::Span,
    /// Held until the body is dropped; frees a concurrency slot.
    _slot: OwnedSemaphorePermit,
    /// The completion record, committed before the final events in `tail` are sent.
    audit: Option<crate::audit::trail::StreamAudit>,
    /// The final events (finish reason, usage, `[DONE]` or an error), held back until the
    /// completion record is durable.
    tail: Vec<Bytes>,
    /// What the completion record says.
    ending: Option<Ending>,
    /// The tenant's output filter: holds back a bounded window so matches split across
    /// tokens are caught; a deny ends the stream with `finish_reason: "content_filter"`.
    filter: Option<airlock_policy::filter::StreamFilter<std::sync::Arc<airlock_policy::FilterSet>>>,
    /// The tenant's rate-limit admission (see `Started::admission`).
    admission: Option<airlock_policy::ratelimit::Admission>,
    /// Tenant and model for the token metrics.
    labels: crate::metrics::GenerationLabels,
}

struct Ending {
    reason: Option<FinishReason>,
    usage: Option<airlock_engine::Usage>,
    ttft_ms: Option<u64>,
    error_code: Option<&'static str>,
}

impl StreamState {
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
        if !released.is_empty() {
            if let Some(audit) = &mut self.audit {
                audit.token(released);
            }
            self.out.push_back(self.chunker.content(released));
        }
        if let Some(audit) = &self.audit {
            audit.note_filter(&rule, "deny", 1);
        }
        crate::metrics::global().filter_action(&rule, "deny", 1);
        self.span
            .in_scope(|| tracing::info!(rule_id = %rule, "output filter ended the stream"));
        self.tail.push(self.chunker.content_filtered());
        self.tail.push(Bytes::from_static(DONE));
        self.done = true;
        self.ending = Some(Ending {
            reason: Some(FinishReason::Stop),
            usage: None,
            ttft_ms: None,
            error_code: Some("content_filter"),
        });
        true
    }

    /// Turns one engine event into zero or more SSE events.
    fn on_event(&mut self, event: Option<TokenEvent>) {
        match end_of(event, self.chunker.prompt_param) {
            Ok(Step::Started) => {}
            Ok(Step::Token(text)) => {
                let text = match &mut self.filter {
                    Some(f) => f.push(&text),
                    None => text,
                };
                if self.filter_denied(&text) {
                    return;
                }
                // Empty while the engine holds text back (partial UTF-8, possible stop string).
                if !text.is_empty() {
                    if let Some(audit) = &mut self.audit {
                        audit.token(&text);
                    }
                    self.out.push_back(self.chunker.content(&text));
                }
            }
            Ok(Step::Finished {
                reason,
                usage,
                timings,
                text,
            }) => {
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
                if !text.is_empty() {
                    if let Some(audit) = &mut self.audit {
                        audit.token(&text);
                    }
                    self.out.push_back(self.chunker.content(&text));
                }
                if let Some(admission) = self.admission.take() {
                    let used = usage.prompt_tokens.saturating_add(usage.completion_tokens);
                    admission.complete(u32::try_from(used).unwrap_or(u32::MAX));
                }
                self.tail.push(self.chunker.finish(reason));
                if self.chunker.include_usage {
                    self.tail.push(self.chunker.usage(usage.into()));
                }
                self.tail.push(Bytes::from_static(DONE));
                self.done = true;
                self.ending = Some(Ending {
                    reason: Some(reason),
                    usage: Some(usage),
                    ttft_ms: Some(timings.time_to_first_token_ms.max(0.0) as u64),
                    error_code: None,
                });
                self.span.in_scope(|| log_finished(reason, usage, &timings));
                self.labels.finished(usage, &timings);
            }
            Err(error) => {
                self.span.in_scope(|| self.tail.push(error_event(&error)));
                self.tail.push(Bytes::from_static(DONE));
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
}

/// The 200 response streaming a started generation.
pub fn response(
    started: Started,
    chunker: Chunker,
    slot: OwnedSemaphorePermit,
) -> Response<BoxBody> {
    let mut state = StreamState {
        generation: started.generation,
        out: chunker.opening().into_iter().collect(),
        chunker,
        done: false,
        span: tracing::Span::current(),
        _slot: slot,
        audit: crate::audit::trail::current().map(|trail| trail.stream()),
        tail: Vec::new(),
        ending: None,
        filter: started
            .output_filter
            .map(airlock_policy::filter::StreamFilter::new),
        admission: started.admission,
        labels: started.labels,
    };
    state.on_event(Some(started.first));
    let events = stream::unfold(state, |mut state| async move {
        loop {
            if let Some(bytes) = state.out.pop_front() {
                return Some((Ok::<_, Infallible>(Frame::data(bytes)), state));
            }
            if state.done {
                let ending = state.ending.take()?;
                if let Some(filter) = &state.filter {
                    for (rule, count) in filter.redactions() {
                        crate::metrics::global().filter_action(rule, "redact", *count as u64);
                    }
                }
                // Audit complete: the record is durable before the final event is sent.
                if let Some(audit) = &mut state.audit {
                    // Output redactions (rule ids and counts) go on the completion record.
                    if let Some(filter) = &state.filter {
                        for (rule, count) in filter.redactions() {
                            audit.note_filter(rule, "redact", *count);
                        }
                    }
                    let written = audit
                        .finish(
                            ending.reason,
                            ending.usage,
                            ending.ttft_ms,
                            ending.error_code,
                        )
                        .await;
                    if let Err(e) = written {
                        state.span.in_scope(|| {
                            tracing::error!(error = %e, "audit completion record not written: ending the stream with an error");
                        });
                        state.tail = vec![
                            error_event(&ApiError::AuditUnavailable),
                            Bytes::from_static(DONE),
                        ];
                    }
                }
                state.out.extend(state.tail.drain(..));
                continue;
            }
            let event = state.generation.next().await;
            state.on_event(event);
        }
    });
    let mut resp = Response::new(StreamBody::new(events).boxed());
    *resp.status_mut() = StatusCode::OK;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx-style reverse proxies not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}
