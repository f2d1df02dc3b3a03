//! Server-sent events for streamed completions: `data: {chunk}\n\n` per event, then
//! `data: [DONE]\n\n`.
//!
//! Framing only: which events a stream carries and how they are written. What goes into them
//! (filtering, usage, the completion record) is the request path's `finish` phase
//! (`crate::pipeline::finish`), which owns the generation the stream reads from.

use std::convert::Infallible;

use airlock_engine::{FinishReason, TokenLogprob, Usage};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::{HeaderValue, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper::Response;
use serde::Serialize;

use super::BoxBody;
use super::error::ApiError;
use super::openai::logprobs::{ChatLogprobs, TextLogprobs};
use super::openai::responses::events::ResponseEvents;
use super::openai::responses::{Ending, Head};
use super::openai::tool_calls::ToolCall;
use super::openai::{
    ChatChunk, ChunkChoice, Delta, FunctionJson, TextChoice, TextCompletion, ToolCallJson,
    UsageJson,
};

/// Which OpenAI chunk format to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// `chat.completion.chunk`, with `delta`s.
    Chat,
    /// `text_completion`, with `text`s.
    Text,
    /// `/v1/responses`: typed events (`response.output_text.delta`, …), written by
    /// [`Chunker::responses`].
    Responses,
}

/// Writes the chunks of one stream.
#[derive(Debug)]
pub struct Chunker {
    pub shape: Shape,
    /// The choice this writer's chunks belong to (`n` > 1: one writer per choice).
    pub index: usize,
    pub id: String,
    pub created: u64,
    pub model: String,
    pub fingerprint: String,
    pub include_usage: bool,
    /// Log-probabilities were asked for: content chunks carry those of their tokens.
    pub logprobs: bool,
    /// Characters of token text sent so far (completions' `text_offset`).
    pub text_offset: usize,
    /// [`Shape::Responses`]: what the stream has sent so far.
    pub responses: Option<ResponseEvents>,
}

impl Chunker {
    /// `null` on every chunk when usage was asked for (OpenAI's convention), else absent.
    fn no_usage(&self) -> Option<Option<UsageJson>> {
        self.include_usage.then_some(None)
    }

    fn chat(
        &self,
        delta: Delta<'_>,
        logprobs: Option<ChatLogprobs>,
        finish_reason: Option<&'static str>,
    ) -> Bytes {
        event(&ChatChunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            system_fingerprint: &self.fingerprint,
            choices: vec![ChunkChoice {
                index: self.index,
                delta,
                logprobs,
                finish_reason,
            }],
            usage: self.no_usage(),
        })
    }

    fn text(
        &self,
        text: &str,
        logprobs: Option<TextLogprobs>,
        finish_reason: Option<&'static str>,
    ) -> Bytes {
        event(&TextCompletion {
            id: &self.id,
            object: "text_completion",
            created: self.created,
            model: &self.model,
            system_fingerprint: &self.fingerprint,
            choices: vec![TextChoice {
                text,
                index: self.index,
                logprobs,
                finish_reason,
            }],
            usage: self.no_usage(),
        })
    }

    /// The Responses event writer with the response's head (`None` unless the shape is
    /// [`Shape::Responses`]).
    fn responses(&mut self) -> Option<(&mut ResponseEvents, Head<'_>)> {
        let head = Head {
            id: &self.id,
            created_at: self.created,
            model: &self.model,
        };
        self.responses.as_mut().map(|r| (r, head))
    }

    /// Chat streams open with the assistant's role and empty content; responses with
    /// `response.created` and `response.in_progress`.
    pub fn opening(&mut self) -> Vec<Bytes> {
        if let Some((events, head)) = self.responses() {
            return events.opening(&head);
        }
        let opening = match self.shape {
            Shape::Chat => Some(self.chat(
                Delta {
                    role: Some("assistant"),
                    content: Some(""),
                    tool_calls: Vec::new(),
                },
                None,
                None,
            )),
            Shape::Text | Shape::Responses => None,
        };
        opening.into_iter().collect()
    }

    /// A content chunk: `text` and, when they were asked for, the log-probabilities of
    /// the tokens it completes.
    pub fn content(&mut self, text: &str, logprobs: &[TokenLogprob]) -> Vec<Bytes> {
        if let Some((events, _)) = self.responses() {
            return events.text(text);
        }
        let chunk = match self.shape {
            Shape::Chat | Shape::Responses => self.chat(
                Delta {
                    role: None,
                    content: Some(text),
                    tool_calls: Vec::new(),
                },
                self.logprobs.then(|| ChatLogprobs::new(logprobs)),
                None,
            ),
            Shape::Text => {
                let logprobs = self
                    .logprobs
                    .then(|| TextLogprobs::new(logprobs, &mut self.text_offset));
                self.text(text, logprobs, None)
            }
        };
        vec![chunk]
    }

    /// The deltas of one parsed call, as OpenAI streams them: `index`, `id`, `type` and the
    /// name with empty arguments first, then the arguments (one fragment: the SDKs
    /// concatenate fragments, so one is as good as many).
    pub fn tool_call(&mut self, index: usize, call: &ToolCall) -> Vec<Bytes> {
        if let Some((events, _)) = self.responses() {
            return events.call(call);
        }
        let head = ToolCallJson {
            index: Some(index),
            id: Some(call.id.clone()),
            kind: Some("function"),
            function: FunctionJson {
                name: Some(call.name.clone()),
                arguments: String::new(),
            },
        };
        let args = ToolCallJson {
            index: Some(index),
            id: None,
            kind: None,
            function: FunctionJson {
                name: None,
                arguments: call.arguments.clone(),
            },
        };
        [head, args]
            .into_iter()
            .map(|c| {
                self.chat(
                    Delta {
                        tool_calls: vec![c],
                        ..Delta::default()
                    },
                    None,
                    None,
                )
            })
            .collect()
    }

    /// The chunk with the finish reason; for responses, `response.completed` (or
    /// `response.incomplete` when length-limited) with the whole response and its usage.
    pub fn finish(&mut self, reason: FinishReason, usage: Usage) -> Vec<Bytes> {
        if let Some((events, head)) = self.responses() {
            let ending = match reason {
                FinishReason::Length => Ending::Incomplete("max_output_tokens"),
                _ => Ending::Completed,
            };
            return events.finish(&head, ending, Some(usage));
        }
        vec![match self.shape {
            Shape::Chat | Shape::Responses => {
                self.chat(Delta::default(), None, Some(reason.as_str()))
            }
            Shape::Text => self.text("", None, Some(reason.as_str())),
        }]
    }

    /// The last content chunk of a stream ended by the tenant's output filter; for
    /// responses, `response.incomplete` with `incomplete_details.reason: "content_filter"`.
    pub fn content_filtered(&mut self) -> Vec<Bytes> {
        if let Some((events, head)) = self.responses() {
            return events.finish(&head, Ending::Incomplete("content_filter"), None);
        }
        vec![match self.shape {
            Shape::Chat | Shape::Responses => {
                self.chat(Delta::default(), None, Some("content_filter"))
            }
            Shape::Text => self.text("", None, Some("content_filter")),
        }]
    }

    /// An error after the stream began: OpenAI's error object (chat and completions), or
    /// the `error` event of a response stream.
    pub fn error(&mut self, error: &ApiError) -> Bytes {
        if error.status().is_server_error() {
            tracing::warn!(error = %error, "stream failed");
        }
        match self.responses() {
            Some((events, _)) => events.error(error),
            None => error_event(error),
        }
    }

    /// The stream's last event: `[DONE]`, which response streams do not send.
    pub fn done(&self) -> Option<Bytes> {
        self.responses.is_none().then(done)
    }

    /// The extra last chunk: no choices, the request's usage.
    pub fn usage(&self, usage: UsageJson) -> Bytes {
        match self.shape {
            Shape::Chat | Shape::Responses => event(&ChatChunk {
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
    #[derive(Serialize)]
    struct ErrorEvent {
        error: super::error::ErrorObject,
    }
    event(&ErrorEvent {
        error: error.object(),
    })
}

/// `data: [DONE]\n\n`: the last event of every stream.
pub fn done() -> Bytes {
    Bytes::from_static(DONE)
}

/// The 200 response streaming `events`, one frame each (so hyper writes each as it comes).
pub fn response<S>(events: S) -> Response<BoxBody>
where
    S: Stream<Item = Bytes> + Send + Sync + 'static,
{
    let events = events.map(|bytes| Ok::<_, Infallible>(Frame::data(bytes)));
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(events)));
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
