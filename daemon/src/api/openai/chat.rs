//! `POST /v1/chat/completions`: the request's own fields and their conversion to a
//! [`Prompt::Chat`].

use airlock_engine::{ChatMessage, Prompt};
use serde::Deserialize;
use serde_json::Value;

use super::StreamOptions;
use crate::api::error::ApiError;

/// Most messages in one request. The body limit bounds their bytes; this bounds the work
/// the chat template does per request (it runs code from the model file once per message,
/// on an instruction budget sized for many times this).
pub const MAX_MESSAGES: usize = 1024;

/// Most content parts in one message.
pub const MAX_CONTENT_PARTS: usize = 256;

/// Most tools one request may declare (OpenAI's limit), and their total size as JSON. Tool
/// calling is refused today; the bounds are checked first so that they are in place when it
/// arrives (tool schemas are rendered by the chat template and compiled for constrained
/// decoding: work that grows with them).
pub const MAX_TOOLS: usize = 128;
pub const MAX_TOOLS_BYTES: usize = 256 * 1024;

/// Largest `response_format` (a JSON schema, once structured output arrives) as JSON.
pub const MAX_RESPONSE_FORMAT_BYTES: usize = 64 * 1024;

/// The chat-specific fields; sampling fields are read separately (`SamplingFields`).
/// Fields OpenAI defines that we do not act on are ignored, except those whose silent
/// omission would change the meaning of the answer (see [`ChatRequest::check_unsupported`]).
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<RawMessage>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u32>,
    pub tools: Option<Value>,
    pub response_format: Option<Value>,
}

/// One message as sent. `content` is checked by hand to name the failing part precisely.
#[derive(Debug, Deserialize)]
pub struct RawMessage {
    pub role: String,
    pub content: Option<Value>,
}

/// Whether `value`, serialized as JSON, fits in `limit` bytes. Stops serializing at the
/// limit.
fn json_fits(value: &Value, limit: usize) -> bool {
    struct Count {
        left: usize,
    }
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.left = self
                .left
                .checked_sub(buf.len())
                .ok_or_else(|| std::io::Error::other("over the limit"))?;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    serde_json::to_writer(&mut Count { left: limit }, value).is_ok()
}

impl ChatRequest {
    /// Refuses requests whose size would make the work per request unbounded: too many
    /// messages or content parts, too many or too large tools, an oversized
    /// `response_format`. Runs before anything else looks at those fields.
    pub fn check_bounds(&self) -> Result<(), ApiError> {
        if self.messages.len() > MAX_MESSAGES {
            return Err(ApiError::invalid(
                "messages",
                format!(
                    "at most {MAX_MESSAGES} messages are allowed, got {}",
                    self.messages.len()
                ),
            ));
        }
        for (i, m) in self.messages.iter().enumerate() {
            if let Some(Value::Array(parts)) = &m.content
                && parts.len() > MAX_CONTENT_PARTS
            {
                return Err(ApiError::invalid(
                    format!("messages[{i}].content"),
                    format!(
                        "at most {MAX_CONTENT_PARTS} content parts are allowed in a message, \
                         got {}",
                        parts.len()
                    ),
                ));
            }
        }
        if let Some(tools) = &self.tools {
            if let Value::Array(list) = tools
                && list.len() > MAX_TOOLS
            {
                return Err(ApiError::invalid(
                    "tools",
                    format!("at most {MAX_TOOLS} tools are allowed, got {}", list.len()),
                ));
            }
            if !json_fits(tools, MAX_TOOLS_BYTES) {
                return Err(ApiError::invalid(
                    "tools",
                    format!("tools may take at most {MAX_TOOLS_BYTES} bytes as JSON"),
                ));
            }
        }
        if let Some(format) = &self.response_format
            && !json_fits(format, MAX_RESPONSE_FORMAT_BYTES)
        {
            return Err(ApiError::invalid(
                "response_format",
                format!(
                    "response_format may take at most {MAX_RESPONSE_FORMAT_BYTES} bytes as JSON"
                ),
            ));
        }
        Ok(())
    }

    /// Refuses fields we cannot honour rather than answering as if they were absent.
    pub fn check_unsupported(&self) -> Result<(), ApiError> {
        if let Some(Value::Array(tools)) = &self.tools
            && !tools.is_empty()
        {
            return Err(ApiError::unsupported(
                "tools",
                "tool calling is not supported",
            ));
        }
        if let Some(format) = &self.response_format {
            let kind = format.get("type").and_then(Value::as_str);
            if !matches!(kind, None | Some("text")) {
                return Err(ApiError::unsupported(
                    "response_format",
                    "only response_format {\"type\": \"text\"} is supported",
                ));
            }
        }
        Ok(())
    }

    /// The messages as the engine's chat template takes them.
    pub fn prompt(&self) -> Result<Prompt, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid(
                "messages",
                "messages must contain at least one message",
            ));
        }
        let messages = self
            .messages
            .iter()
            .enumerate()
            .map(|(i, m)| convert_message(i, m))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Prompt::Chat(messages))
    }
}

fn convert_message(i: usize, message: &RawMessage) -> Result<ChatMessage, ApiError> {
    let role = match message.role.as_str() {
        // `developer` is OpenAI's newer name for `system`; chat templates only know `system`.
        "system" | "developer" => "system",
        "user" => "user",
        "assistant" => "assistant",
        "tool" => "tool",
        other => {
            return Err(ApiError::invalid(
                format!("messages[{i}].role"),
                format!(
                    "unknown role `{other}`; expected system, developer, user, assistant or tool"
                ),
            ));
        }
    };
    let param = format!("messages[{i}].content");
    let content = match &message.content {
        Some(Value::String(s)) => s.clone(),
        // An assistant turn that only called tools has no content.
        None | Some(Value::Null) if role == "assistant" => String::new(),
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                param,
                format!("a {role} message needs content"),
            ));
        }
        Some(Value::Array(parts)) => text_parts(&param, parts)?,
        Some(_) => {
            return Err(ApiError::invalid(
                param.clone(),
                format!("{param} must be a string or an array of content parts"),
            ));
        }
    };
    Ok(ChatMessage {
        role: role.to_owned(),
        content,
    })
}

/// Joins `{"type":"text","text":…}` parts; refuses images, audio and files by name.
fn text_parts(param: &str, parts: &[Value]) -> Result<String, ApiError> {
    let mut text = String::new();
    for (j, part) in parts.iter().enumerate() {
        let part_param = format!("{param}[{j}]");
        let kind = part.get("type").and_then(Value::as_str);
        match kind {
            Some("text") => match part.get("text").and_then(Value::as_str) {
                Some(t) => text.push_str(t),
                None => {
                    return Err(ApiError::invalid(
                        format!("{part_param}.text"),
                        format!("{part_param}.text must be a string"),
                    ));
                }
            },
            Some(kind @ ("image_url" | "input_audio" | "file" | "image")) => {
                return Err(ApiError::unsupported(
                    part_param,
                    format!("content parts of type `{kind}` are not supported; only text"),
                ));
            }
            Some(other) => {
                return Err(ApiError::invalid(
                    format!("{part_param}.type"),
                    format!("unknown content part type `{other}`"),
                ));
            }
            None => {
                return Err(ApiError::invalid(
                    format!("{part_param}.type"),
                    format!("{part_param} needs a string `type`"),
                ));
            }
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn request(v: Value) -> ChatRequest {
        serde_json::from_value(v).expect("parses")
    }

    #[test]
    fn converts_string_and_part_contents() {
        let req = request(json!({
            "model": "m",
            "messages": [
                {"role": "developer", "content": "sys"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": null}
            ]
        }));
        let Prompt::Chat(messages) = req.prompt().expect("valid") else {
            panic!("chat prompt")
        };
        assert_eq!(
            messages[0],
            ChatMessage {
                role: "system".into(),
                content: "sys".into()
            }
        );
        assert_eq!(messages[1].content, "ab");
        assert_eq!(messages[2].content, "");
    }

    #[test]
    fn refusals_name_the_param() {
        let param = |v: Value| request(v).prompt().expect_err("refused").object().param;
        assert_eq!(
            param(json!({"model": "m", "messages": [
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}]}
            ]}))
            .as_deref(),
            Some("messages[0].content[1]")
        );
        assert_eq!(
            param(json!({"model": "m", "messages": [{"role": "robot", "content": "x"}]}))
                .as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(
            param(json!({"model": "m", "messages": [{"role": "user"}]})).as_deref(),
            Some("messages[0].content")
        );
        assert_eq!(
            param(json!({"model": "m", "messages": []})).as_deref(),
            Some("messages")
        );
    }

    #[test]
    fn sizes_are_bounded_before_anything_else() {
        let check = |v: Value| request(v).check_bounds().map_err(|e| e.object().param);
        let user = json!({"role": "user", "content": "x"});
        let messages = vec![user.clone(); MAX_MESSAGES + 1];
        assert_eq!(
            check(json!({"model": "m", "messages": messages})),
            Err(Some("messages".into()))
        );
        let messages = vec![user; MAX_MESSAGES];
        assert!(check(json!({"model": "m", "messages": messages})).is_ok());
        let parts = vec![json!({"type": "text", "text": "a"}); MAX_CONTENT_PARTS + 1];
        assert_eq!(
            check(json!({"model": "m", "messages": [{"role": "user", "content": parts}]})),
            Err(Some("messages[0].content".into()))
        );
        let tools = vec![json!({"type": "function"}); MAX_TOOLS + 1];
        assert_eq!(
            check(json!({"model": "m", "messages": [], "tools": tools})),
            Err(Some("tools".into()))
        );
        let big = "d".repeat(MAX_TOOLS_BYTES);
        assert_eq!(
            check(json!({"model": "m", "messages": [], "tools": [{"description": big}]})),
            Err(Some("tools".into()))
        );
        let schema = json!({"type": "json_schema", "json_schema": {"description": "s".repeat(MAX_RESPONSE_FORMAT_BYTES)}});
        assert_eq!(
            check(json!({"model": "m", "messages": [], "response_format": schema})),
            Err(Some("response_format".into()))
        );
        assert!(
            check(
                json!({"model": "m", "messages": [], "tools": [{"type": "function"}],
                "response_format": {"type": "text"}})
            )
            .is_ok()
        );
    }

    #[test]
    fn unsupported_features_are_refused() {
        let check = |v: Value| request(v).check_unsupported().map_err(|e| e.object().param);
        assert!(check(json!({"model": "m", "messages": [], "tools": []})).is_ok());
        assert_eq!(
            check(json!({"model": "m", "messages": [], "tools": [{"type": "function"}]})),
            Err(Some("tools".into()))
        );
        assert!(check(json!({"model": "m", "messages": [], "logprobs": true})).is_ok());
        assert!(
            check(json!({"model": "m", "messages": [], "response_format": {"type": "text"}}))
                .is_ok()
        );
    }
}
