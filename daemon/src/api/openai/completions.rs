//! `POST /v1/completions` (legacy text completions) and `POST /generate` (minimal, TGI-like).

use airlock_engine::Prompt;
use serde::Deserialize;
use serde_json::Value;

use super::StreamOptions;
use crate::api::error::ApiError;

/// OpenAI's default `max_tokens` for text completions (chat has none: up to the context).
pub const COMPLETIONS_DEFAULT_MAX_TOKENS: usize = 16;

/// The completion-specific fields; sampling fields are read separately.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: Option<Value>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub echo: Option<bool>,
    pub suffix: Option<String>,
    pub best_of: Option<u32>,
    pub logprobs: Option<u32>,
}

impl CompletionRequest {
    pub fn check_unsupported(&self) -> Result<(), ApiError> {
        if self.echo == Some(true) {
            return Err(ApiError::unsupported("echo", "echo is not supported"));
        }
        if self.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::unsupported("suffix", "suffix is not supported"));
        }
        if self.best_of.is_some_and(|b| b != 1) {
            return Err(ApiError::unsupported(
                "best_of",
                "only best_of = 1 is supported",
            ));
        }
        Ok(())
    }

    /// `prompt`: a string, an array of one string, or token ids (an array of integers, or
    /// an array of one such array). Several prompts in one request are refused (`n` = 1
    /// semantics: one choice per response).
    pub fn prompt(&self) -> Result<Prompt, ApiError> {
        let Some(prompt) = &self.prompt else {
            return Err(ApiError::invalid("prompt", "prompt is required"));
        };
        parse_prompt(prompt)
    }
}

fn parse_prompt(prompt: &Value) -> Result<Prompt, ApiError> {
    match prompt {
        Value::String(s) => Ok(Prompt::Text(s.clone())),
        Value::Array(items) if items.is_empty() => Err(ApiError::invalid(
            "prompt",
            "prompt must not be an empty array",
        )),
        Value::Array(items) if items.iter().all(Value::is_number) => token_ids(items),
        Value::Array(items) if items.len() == 1 => match &items[0] {
            Value::String(s) => Ok(Prompt::Text(s.clone())),
            Value::Array(ids) if !ids.is_empty() => token_ids(ids),
            _ => Err(ApiError::invalid(
                "prompt[0]",
                "prompt[0] must be a string or an array of token ids",
            )),
        },
        Value::Array(_) => Err(ApiError::unsupported(
            "prompt",
            "several prompts in one request are not supported; send one prompt per request",
        )),
        _ => Err(ApiError::invalid(
            "prompt",
            "prompt must be a string or an array",
        )),
    }
}

fn token_ids(items: &[Value]) -> Result<Prompt, ApiError> {
    items
        .iter()
        .map(|v| v.as_u64().and_then(|id| u32::try_from(id).ok()))
        .collect::<Option<Vec<u32>>>()
        .map(Prompt::TokenIds)
        .ok_or_else(|| ApiError::invalid("prompt", "token ids must be integers in [0, 2^32)"))
}

/// `POST /generate`: `{"prompt", "max_tokens", "temperature", "top_p"}` (+ optional `model`,
/// `stop`, `seed`). Defaults are the OpenAI ones; `max_tokens` defaults to the context end.
#[derive(Debug, Deserialize)]
pub struct GenerateBody {
    /// Optional here: the daemon's first model when absent.
    pub model: Option<String>,
    pub prompt: String,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn prompt_of(v: Value) -> Result<Prompt, Option<String>> {
        parse_prompt(&v).map_err(|e| e.object().param)
    }

    #[test]
    fn prompt_forms() {
        assert_eq!(prompt_of(json!("hi")), Ok(Prompt::Text("hi".into())));
        assert_eq!(prompt_of(json!(["hi"])), Ok(Prompt::Text("hi".into())));
        assert_eq!(prompt_of(json!([1, 2])), Ok(Prompt::TokenIds(vec![1, 2])));
        assert_eq!(prompt_of(json!([[3]])), Ok(Prompt::TokenIds(vec![3])));
        assert_eq!(prompt_of(json!(["a", "b"])), Err(Some("prompt".into())));
        assert_eq!(prompt_of(json!([-1])), Err(Some("prompt".into())));
        assert_eq!(prompt_of(json!(5)), Err(Some("prompt".into())));
        assert_eq!(prompt_of(json!([])), Err(Some("prompt".into())));
    }

    #[test]
    fn echo_is_refused() {
        let req: CompletionRequest =
            serde_json::from_value(json!({"model": "m", "prompt": "x", "echo": true}))
                .expect("parses");
        assert_eq!(
            req.check_unsupported().map_err(|e| e.object().param),
            Err(Some("echo".into()))
        );
    }
}
