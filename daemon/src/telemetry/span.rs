//! [`RequestSpan`]: one request's server span, written to by the phases that learn its
//! attributes and ended when the last of them lets go (a stream's body holds it until its
//! final event). Attribute names follow the OpenTelemetry semantic conventions for HTTP
//! servers and for generative AI (`gen_ai.*`); never a secret, a prompt or a completion.

use std::sync::{Arc, Mutex};

use opentelemetry::trace::{Span as _, Status};
use opentelemetry::{Array, KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::Span;

/// A request's span; the default (telemetry off, or an open route) records nothing.
#[derive(Clone, Debug, Default)]
pub struct RequestSpan(Option<Arc<Mutex<Span>>>);

/// What the admitted request asked for.
#[derive(Debug, Clone, Copy)]
pub struct Requested<'a> {
    /// `gen_ai.operation.name`: `chat`, `text_completion`, `embeddings`; `None` for the
    /// tokenizer routes, which are no generative operation.
    pub operation: Option<&'static str>,
    pub model: &'a str,
    pub max_tokens: Option<usize>,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: Option<u64>,
    /// Choices asked for (`n`).
    pub choices: usize,
    /// Embedding inputs' tokens (0 elsewhere: a generation's come with its usage).
    pub input_tokens: usize,
}

impl RequestSpan {
    pub(super) fn new(span: Span) -> RequestSpan {
        RequestSpan(Some(Arc::new(Mutex::new(span))))
    }

    fn with(&self, f: impl FnOnce(&mut Span)) {
        if let Some(span) = &self.0
            && let Ok(mut span) = span.lock()
        {
            f(&mut span);
        }
    }

    /// Whether anything is recorded (lets a caller skip building attributes).
    pub fn is_recording(&self) -> bool {
        self.0.is_some()
    }

    /// The request as admitted (the same job the `admit` audit record names).
    pub fn requested(&self, r: &Requested<'_>) {
        self.with(|span| {
            if let Some(operation) = r.operation {
                span.update_name(format!("{operation} {}", r.model));
                span.set_attribute(KeyValue::new("gen_ai.operation.name", operation));
                // The gateway runs the model itself: it is the provider.
                span.set_attribute(KeyValue::new("gen_ai.provider.name", "airlock"));
            }
            span.set_attribute(KeyValue::new("gen_ai.request.model", r.model.to_owned()));
            if let Some(max) = r.max_tokens {
                span.set_attribute(KeyValue::new(
                    "gen_ai.request.max_tokens",
                    i64::try_from(max).unwrap_or(i64::MAX),
                ));
            }
            if r.operation.is_some_and(|o| o != "embeddings") {
                span.set_attribute(KeyValue::new(
                    "gen_ai.request.temperature",
                    f64::from(r.temperature),
                ));
                span.set_attribute(KeyValue::new("gen_ai.request.top_p", f64::from(r.top_p)));
            }
            if let Some(seed) = r.seed {
                span.set_attribute(KeyValue::new(
                    "gen_ai.request.seed",
                    i64::try_from(seed).unwrap_or(i64::MAX),
                ));
            }
            if r.choices > 1 {
                span.set_attribute(KeyValue::new(
                    "gen_ai.request.choice.count",
                    i64::try_from(r.choices).unwrap_or(i64::MAX),
                ));
            }
            if r.input_tokens > 0 {
                span.set_attribute(KeyValue::new(
                    "gen_ai.usage.input_tokens",
                    i64::try_from(r.input_tokens).unwrap_or(i64::MAX),
                ));
            }
        });
    }

    /// The response's id (`chatcmpl-…`) and the model that answered, as the client sees
    /// them.
    pub fn response(&self, id: &str, model: &str) {
        self.with(|span| {
            span.set_attribute(KeyValue::new("gen_ai.response.id", id.to_owned()));
            span.set_attribute(KeyValue::new("gen_ai.response.model", model.to_owned()));
        });
    }

    /// A finished generation: why each choice ended, and the tokens in and out.
    pub fn finished(&self, reasons: &[&'static str], input_tokens: u64, output_tokens: u64) {
        self.with(|span| {
            let reasons: Vec<StringValue> = reasons.iter().map(|r| StringValue::from(*r)).collect();
            span.set_attribute(KeyValue::new(
                "gen_ai.response.finish_reasons",
                Value::Array(Array::String(reasons)),
            ));
            span.set_attribute(KeyValue::new(
                "gen_ai.usage.input_tokens",
                i64::try_from(input_tokens).unwrap_or(i64::MAX),
            ));
            span.set_attribute(KeyValue::new(
                "gen_ai.usage.output_tokens",
                i64::try_from(output_tokens).unwrap_or(i64::MAX),
            ));
        });
    }

    /// The outcome as `handle` sends it: who, which model, the status, the error code.
    pub fn responded(&self, tenant: &str, model: Option<&str>, status: u16, error: Option<&str>) {
        self.with(|span| {
            span.set_attribute(KeyValue::new("airlock.tenant", tenant.to_owned()));
            if let Some(model) = model {
                span.set_attribute(KeyValue::new("gen_ai.request.model", model.to_owned()));
            }
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
            if status >= 500 {
                span.set_status(Status::error(error.unwrap_or("server error").to_owned()));
            }
            if let Some(error) = error.filter(|_| status >= 400) {
                span.set_attribute(KeyValue::new("error.type", error.to_owned()));
            } else if status >= 400 {
                span.set_attribute(KeyValue::new("error.type", status.to_string()));
            }
        });
    }
}
