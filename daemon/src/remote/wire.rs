//! What goes to an upstream and what comes back: the OpenAI request body (always streamed,
//! with `stream_options.include_usage`), the admission count of a prompt this gateway
//! cannot tokenize, the prefix the affinity hash reads, and the SSE stream parser.

use airlock_engine::{EngineError, FinishReason, GrammarSpec, Prompt, SamplingParams, Usage};
use serde_json::{Map, Value, json};

use super::pool;

/// Most bytes in one SSE line: far above any one delta or usage chunk; a longer line means
/// an upstream that is not speaking SSE (or is misbehaving) and ends the stream.
pub(super) const MAX_LINE_BYTES: usize = 256 * 1024;

/// Tokens allowed per chat message for the template's markup (role markers, separators:
/// chat templates use 3–10), and once per prompt for BOS, the generation prompt and a
/// default system preamble a template may add (Llama 3.1's knowledge-cutoff and date
/// lines are about 30 tokens with their headers).
const TEMPLATE_TOKENS_PER_MESSAGE: usize = 16;
const TEMPLATE_TOKENS_PER_PROMPT: usize = 64;

/// An upper bound on the tokens `prompt` takes upstream, for admission (the tenant's prompt
/// cap and token reservation) without the model's tokenizer: every token of a BPE or
/// SentencePiece vocabulary covers at least one byte of the text (byte fallback included),
/// so the UTF-8 byte count bounds the text's tokens, and the template's markup is allowed
/// for per message. The reservation therefore never under-reserves; settlement uses the
/// upstream's own `usage`.
pub(super) fn prompt_upper_bound(prompt: &Prompt) -> usize {
    match prompt {
        Prompt::Text(text) => text.len() + TEMPLATE_TOKENS_PER_PROMPT,
        Prompt::Chat(messages, tools) => {
            let messages: usize = messages
                .iter()
                .map(|m| {
                    m.role.len()
                        + m.content.len()
                        + m.tool_call_id.as_ref().map_or(0, String::len)
                        + m.tool_calls
                            .iter()
                            .map(|c| c.id.len() + c.name.len() + c.arguments.to_string().len())
                            .sum::<usize>()
                        + TEMPLATE_TOKENS_PER_MESSAGE
                })
                .sum();
            let tools: usize = tools.iter().map(|t| t.to_string().len()).sum();
            messages + tools + TEMPLATE_TOKENS_PER_PROMPT
        }
        Prompt::TokenIds(ids) => ids.len(),
    }
}

/// The affinity hash of the prompt's first `limit` bytes (chat: role, NUL, content, NUL per
/// message), or `None` for a prompt of token ids.
pub(super) fn prefix_hash(prompt: &Prompt, limit: usize) -> Option<u64> {
    let mut state = pool::fnv_start();
    let mut left = limit;
    let mut feed = |bytes: &[u8]| {
        let take = bytes.len().min(left);
        state = pool::fnv1a(state, &bytes[..take]);
        left -= take;
        left > 0
    };
    match prompt {
        Prompt::Text(text) => {
            feed(text.as_bytes());
        }
        Prompt::Chat(messages, _) => {
            for m in messages {
                if !(feed(m.role.as_bytes())
                    && feed(b"\0")
                    && feed(m.content.as_bytes())
                    && feed(b"\0"))
                {
                    break;
                }
            }
        }
        Prompt::TokenIds(_) => return None,
    }
    Some(state)
}

/// The path and JSON body of the upstream request for `prompt` under `params`.
pub(super) fn request_body(
    model: &str,
    prompt: &Prompt,
    params: &SamplingParams,
) -> Result<(&'static str, Value), EngineError> {
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    let path = match prompt {
        Prompt::Chat(messages, tools) => {
            if !tools.is_empty() {
                return Err(EngineError::InvalidRequest {
                    param: "tools",
                    reason: format!(
                        "model `{model}` is served by a remote pool, which does not offer tools"
                    ),
                });
            }
            let messages: Vec<Value> = messages
                .iter()
                .map(|m| {
                    let mut msg = json!({"role": m.role, "content": m.content});
                    if !m.tool_calls.is_empty() {
                        msg["tool_calls"] = m
                            .tool_calls
                            .iter()
                            .map(|c| {
                                let arguments = match &c.arguments {
                                    Value::String(s) => s.clone(),
                                    other => other.to_string(),
                                };
                                json!({"id": c.id, "type": "function",
                                       "function": {"name": c.name, "arguments": arguments}})
                            })
                            .collect();
                    }
                    if let Some(id) = &m.tool_call_id {
                        msg["tool_call_id"] = json!(id);
                    }
                    msg
                })
                .collect();
            body.insert("messages".into(), Value::Array(messages));
            "/v1/chat/completions"
        }
        Prompt::Text(text) => {
            body.insert("prompt".into(), json!(text));
            "/v1/completions"
        }
        Prompt::TokenIds(ids) => {
            body.insert("prompt".into(), json!(ids));
            "/v1/completions"
        }
    };
    body.insert("stream".into(), json!(true));
    body.insert("stream_options".into(), json!({"include_usage": true}));
    body.insert("temperature".into(), json!(params.temperature));
    body.insert("top_p".into(), json!(params.top_p));
    if let Some(max) = params.max_tokens {
        body.insert("max_tokens".into(), json!(max));
    }
    if let Some(seed) = params.seed {
        body.insert("seed".into(), json!(seed));
    }
    if !params.stop.is_empty() {
        body.insert("stop".into(), json!(params.stop));
    }
    // Non-default extras only: a server that does not know one is not bothered by it.
    if params.presence_penalty != 0.0 {
        body.insert("presence_penalty".into(), json!(params.presence_penalty));
    }
    if params.frequency_penalty != 0.0 {
        body.insert("frequency_penalty".into(), json!(params.frequency_penalty));
    }
    if let Some(k) = params.top_k {
        body.insert("top_k".into(), json!(k));
    }
    if params.min_p > 0.0 {
        body.insert("min_p".into(), json!(params.min_p));
    }
    if params.repetition_penalty != 1.0 {
        body.insert(
            "repetition_penalty".into(),
            json!(params.repetition_penalty),
        );
    }
    if params.ignore_eos {
        body.insert("ignore_eos".into(), json!(true));
    }
    if params.logprobs.is_some() {
        return Err(EngineError::InvalidRequest {
            param: "logprobs",
            reason: format!(
                "model `{model}` is served by a remote pool, which does not report log-probabilities"
            ),
        });
    }
    if let Some(grammar) = &params.grammar {
        let format = match &grammar.spec {
            GrammarSpec::JsonObject => json!({"type": "json_object"}),
            GrammarSpec::JsonSchema(schema) => json!({"type": "json_schema",
                "json_schema": {"name": "response", "schema": schema, "strict": true}}),
            GrammarSpec::ToolCalls { .. } => {
                return Err(EngineError::InvalidRequest {
                    param: grammar.param,
                    reason: format!(
                        "model `{model}` is served by a remote pool, which does not offer tools"
                    ),
                });
            }
        };
        body.insert("response_format".into(), format);
    }
    Ok((path, Value::Object(body)))
}

/// What one SSE event of an OpenAI stream says.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Event {
    /// Generated text (a chat delta's `content`, a completion's `text`); never empty.
    Text(String),
    Finish(FinishReason),
    Usage(Usage),
    /// `data: [DONE]`.
    Done,
    /// An error object inside the stream (vLLM, llama.cpp report late failures so).
    Error(String),
}

/// Splits an SSE byte stream into events, bounding each line.
#[derive(Debug, Default)]
pub(super) struct Decoder {
    line: Vec<u8>,
}

impl Decoder {
    /// Feeds `bytes`; appends the events of every line they complete.
    pub fn push(&mut self, mut bytes: &[u8], out: &mut Vec<Event>) -> Result<(), String> {
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            self.extend(&bytes[..end])?;
            let line = std::mem::take(&mut self.line);
            let line = line.strip_suffix(b"\r").unwrap_or(&line);
            parse_line(line, out)?;
            bytes = &bytes[end + 1..];
        }
        self.extend(bytes)
    }

    fn extend(&mut self, bytes: &[u8]) -> Result<(), String> {
        if self.line.len() + bytes.len() > MAX_LINE_BYTES {
            return Err(format!("an SSE line longer than {MAX_LINE_BYTES} bytes"));
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }
}

fn parse_line(line: &[u8], out: &mut Vec<Event>) -> Result<(), String> {
    // Comments (`:`), `event:`, `id:`, `retry:` and blank separators carry nothing we use.
    let Some(data) = line.strip_prefix(b"data:") else {
        return Ok(());
    };
    let data = data.strip_prefix(b" ").unwrap_or(data);
    if data == b"[DONE]" {
        out.push(Event::Done);
        return Ok(());
    }
    let value: Value =
        serde_json::from_slice(data).map_err(|e| format!("a data line that is not JSON: {e}"))?;
    chunk(&value, out);
    Ok(())
}

/// The events of one streamed chunk (`chat.completion.chunk` or `text_completion`).
pub(super) fn chunk(value: &Value, out: &mut Vec<Event>) {
    if let Some(error) = value.get("error").filter(|e| !e.is_null()) {
        out.push(Event::Error(error_message(error)));
        return;
    }
    if let Some(choice) = value.get("choices").and_then(|c| c.get(0)) {
        let text = choice
            .get("delta")
            .and_then(|d| d.get("content"))
            .or_else(|| choice.get("text"))
            .and_then(Value::as_str);
        if let Some(text) = text.filter(|t| !t.is_empty()) {
            out.push(Event::Text(text.to_owned()));
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            out.push(Event::Finish(match reason {
                "length" => FinishReason::Length,
                // `stop`, and what a server adds (`tool_calls`, `content_filter`, `abort`...):
                // the text ended; no tools were offered, so none were called.
                _ => FinishReason::Stop,
            }));
        }
    }
    if let Some(usage) = value.get("usage").filter(|u| u.is_object()) {
        let count = |k: &str| {
            usage
                .get(k)
                .and_then(Value::as_u64)
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(0)
        };
        let cached = usage
            .get("prompt_tokens_details")
            .and_then(|d| d.get("cached_tokens"))
            .and_then(Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0);
        let prompt_tokens = count("prompt_tokens");
        out.push(Event::Usage(Usage {
            prompt_tokens,
            completion_tokens: count("completion_tokens"),
            cached_tokens: cached.min(prompt_tokens),
        }));
    }
}

/// The message of an OpenAI error object (or of a bare string), at most 512 bytes: it
/// reaches the client, and an upstream's text is not ours to pass on unbounded.
pub(super) fn error_message(error: &Value) -> String {
    let text = error
        .get("message")
        .and_then(Value::as_str)
        .or_else(|| error.as_str())
        .unwrap_or("(no message)");
    let mut end = text.len().min(512);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}
