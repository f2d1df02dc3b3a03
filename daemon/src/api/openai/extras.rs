//! The request fields that carry no instruction for the model: accepted (with size
//! bounds), as OpenAI accepts them, and ignored; and the fields that would change the
//! answer in ways this server cannot honour, refused by name rather than ignored.
//!
//! Accepted and ignored: `user`, `metadata`, `store` (nothing is kept for later retrieval;
//! the audit log is the record), `service_tier` (every request is served alike),
//! `prediction` (a latency hint; the output is the same without it), `parallel_tool_calls`
//! and `tool_choice` `none` or `auto` on completions (chat requests check both in
//! `chat.rs`), `modalities: ["text"]`.
//!
//! Refused (400, naming the field): `logit_bias`, `tool_choice` `required` or a named
//! function outside chat, `functions`/`function_call` (the deprecated tool API), `audio`
//! and audio `modalities`, `web_search_options`, `reasoning_effort`.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::api::error::ApiError;

/// Longest `user`, in characters.
pub const MAX_USER_CHARS: usize = 512;
/// Most `metadata` pairs, longest key and value in characters (OpenAI's limits).
pub const MAX_METADATA_PAIRS: usize = 16;
pub const MAX_METADATA_KEY_CHARS: usize = 64;
pub const MAX_METADATA_VALUE_CHARS: usize = 512;
/// OpenAI's `service_tier` values.
const SERVICE_TIERS: [&str; 5] = ["auto", "default", "flex", "scale", "priority"];

/// The informational and refused fields of a chat or text completion request.
#[derive(Debug, Default, Deserialize)]
pub struct Extras {
    pub user: Option<String>,
    pub metadata: Option<Map<String, Value>>,
    pub store: Option<bool>,
    pub service_tier: Option<String>,
    pub prediction: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    pub tool_choice: Option<Value>,
    pub logit_bias: Option<Map<String, Value>>,
    pub modalities: Option<Vec<String>>,
    pub audio: Option<Value>,
    pub functions: Option<Vec<Value>>,
    pub function_call: Option<Value>,
    pub web_search_options: Option<Value>,
    pub reasoning_effort: Option<String>,
}

impl Extras {
    /// Bounds what is accepted and refuses what cannot be honoured.
    pub fn check(&self) -> Result<(), ApiError> {
        if let Some(user) = &self.user
            && user.chars().count() > MAX_USER_CHARS
        {
            return Err(ApiError::invalid(
                "user",
                format!("user may be at most {MAX_USER_CHARS} characters"),
            ));
        }
        if let Some(metadata) = &self.metadata {
            check_metadata(metadata)?;
        }
        if let Some(tier) = &self.service_tier
            && !SERVICE_TIERS.contains(&tier.as_str())
        {
            return Err(ApiError::invalid(
                "service_tier",
                format!("service_tier must be one of {}", SERVICE_TIERS.join(", ")),
            ));
        }
        if !matches!(self.prediction, None | Some(Value::Null | Value::Object(_))) {
            return Err(ApiError::invalid(
                "prediction",
                "prediction must be an object",
            ));
        }
        if !choice_is_none_or_auto(self.tool_choice.as_ref()) {
            return Err(ApiError::unsupported(
                "tool_choice",
                "tool_choice \"required\" or a named function applies to chat requests that \
                 offer tools; here tool_choice may only be \"none\" or \"auto\"",
            ));
        }
        if self.logit_bias.as_ref().is_some_and(|b| !b.is_empty()) {
            return Err(ApiError::unsupported(
                "logit_bias",
                "logit_bias is not supported",
            ));
        }
        if let Some(modalities) = &self.modalities
            && modalities.iter().any(|m| m != "text")
        {
            return Err(ApiError::unsupported(
                "modalities",
                "only the text modality is supported",
            ));
        }
        if !matches!(self.audio, None | Some(Value::Null)) {
            return Err(ApiError::unsupported(
                "audio",
                "audio output is not supported",
            ));
        }
        if self.functions.as_ref().is_some_and(|f| !f.is_empty()) {
            return Err(ApiError::unsupported(
                "functions",
                "function calling is not supported",
            ));
        }
        if !choice_is_none_or_auto(self.function_call.as_ref()) {
            return Err(ApiError::unsupported(
                "function_call",
                "function calling is not supported",
            ));
        }
        if !matches!(self.web_search_options, None | Some(Value::Null)) {
            return Err(ApiError::unsupported(
                "web_search_options",
                "web search is not supported",
            ));
        }
        if self.reasoning_effort.is_some() {
            return Err(ApiError::unsupported(
                "reasoning_effort",
                "reasoning_effort is not supported: the served models have no such control",
            ));
        }
        Ok(())
    }
}

fn choice_is_none_or_auto(choice: Option<&Value>) -> bool {
    match choice {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s == "none" || s == "auto",
        Some(_) => false,
    }
}

/// `metadata`: at most 16 string pairs, keys up to 64 characters, values up to 512.
fn check_metadata(metadata: &Map<String, Value>) -> Result<(), ApiError> {
    if metadata.len() > MAX_METADATA_PAIRS {
        return Err(ApiError::invalid(
            "metadata",
            format!(
                "metadata may hold at most {MAX_METADATA_PAIRS} pairs, got {}",
                metadata.len()
            ),
        ));
    }
    for (key, value) in metadata {
        if key.chars().count() > MAX_METADATA_KEY_CHARS {
            return Err(ApiError::invalid(
                "metadata",
                format!("metadata keys may be at most {MAX_METADATA_KEY_CHARS} characters"),
            ));
        }
        match value {
            Value::String(v) if v.chars().count() <= MAX_METADATA_VALUE_CHARS => {}
            Value::String(_) => {
                return Err(ApiError::invalid(
                    format!("metadata.{key}"),
                    format!("metadata values may be at most {MAX_METADATA_VALUE_CHARS} characters"),
                ));
            }
            _ => {
                return Err(ApiError::invalid(
                    format!("metadata.{key}"),
                    "metadata values must be strings",
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(v: Value) -> Result<(), Option<String>> {
        serde_json::from_value::<Extras>(v)
            .expect("parses")
            .check()
            .map_err(|e| e.object().param)
    }

    #[test]
    fn informational_fields_are_accepted() {
        assert!(
            check(json!({
                "user": "u-1", "metadata": {"team": "risk"}, "store": true,
                "service_tier": "auto", "prediction": {"type": "content", "content": "x"},
                "parallel_tool_calls": false, "tool_choice": "none", "modalities": ["text"],
                "logit_bias": {}, "functions": [], "function_call": "auto", "audio": null
            }))
            .is_ok()
        );
        assert!(check(json!({"store": false, "tool_choice": "auto"})).is_ok());
    }

    #[test]
    fn bounds_name_their_field() {
        let param = |v| check(v).expect_err("refused");
        assert_eq!(param(json!({"user": "u".repeat(513)})), Some("user".into()));
        let many: Map<String, Value> = (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
        assert_eq!(param(json!({"metadata": many})), Some("metadata".into()));
        assert_eq!(
            param(json!({"metadata": {"k".repeat(65): "v"}})),
            Some("metadata".into())
        );
        assert_eq!(
            param(json!({"metadata": {"k": "v".repeat(513)}})),
            Some("metadata.k".into())
        );
        assert_eq!(
            param(json!({"metadata": {"k": 1}})),
            Some("metadata.k".into())
        );
        assert_eq!(
            param(json!({"service_tier": "gold"})),
            Some("service_tier".into())
        );
        assert_eq!(param(json!({"prediction": "x"})), Some("prediction".into()));
    }

    #[test]
    fn answer_changing_fields_are_refused() {
        let param = |v| check(v).expect_err("refused");
        assert_eq!(
            param(json!({"tool_choice": "required"})),
            Some("tool_choice".into())
        );
        assert_eq!(
            param(json!({"tool_choice": {"type": "function", "function": {"name": "f"}}})),
            Some("tool_choice".into())
        );
        assert_eq!(
            param(json!({"logit_bias": {"50256": -100}})),
            Some("logit_bias".into())
        );
        assert_eq!(
            param(json!({"modalities": ["text", "audio"]})),
            Some("modalities".into())
        );
        assert_eq!(
            param(json!({"audio": {"voice": "x"}})),
            Some("audio".into())
        );
        assert_eq!(
            param(json!({"functions": [{"name": "f"}]})),
            Some("functions".into())
        );
        assert_eq!(
            param(json!({"function_call": {"name": "f"}})),
            Some("function_call".into())
        );
        assert_eq!(
            param(json!({"web_search_options": {}})),
            Some("web_search_options".into())
        );
        assert_eq!(
            param(json!({"reasoning_effort": "low"})),
            Some("reasoning_effort".into())
        );
    }
}
