//! OpenAI API wire types: what requests may carry and exactly what responses contain, so
//! that the official SDKs work unchanged. Field names and `object` strings are OpenAI's.

pub mod chat;
pub mod completions;
pub mod extras;
pub mod logprobs;
pub mod params;
pub mod responses;
pub mod tool_calls;

use airlock_engine::{ModelFeatures, ModelInfo, Usage};
use serde::{Deserialize, Serialize};

use self::logprobs::{ChatLogprobs, TextLogprobs};

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a final chunk with `choices: []` and the request's `usage`.
    pub include_usage: Option<bool>,
}

/// `usage`.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct UsageJson {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    /// Only when a cached prompt prefix served some of the prompt (the engine's prefix
    /// cache, or an upstream's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

/// `usage.prompt_tokens_details`.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

impl From<Usage> for UsageJson {
    fn from(u: Usage) -> Self {
        UsageJson {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.total_tokens(),
            prompt_tokens_details: (u.cached_tokens > 0).then_some(PromptTokensDetails {
                cached_tokens: u.cached_tokens,
            }),
        }
    }
}

/// One entry of `GET /v1/models`, and the body of `GET /v1/models/{id}`.
#[derive(Debug, Serialize)]
pub struct ModelObject {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    /// Not in OpenAI's object (SDKs keep unknown fields): the model's context window in
    /// tokens, so clients can size their prompts. Authenticated, unlike `/readyz`.
    pub context_length: usize,
    /// Not in OpenAI's object: the routes and features this model serves (`completions`,
    /// `chat`, `logprobs`, `tokenize`), so clients need not find out by trial.
    pub capabilities: Vec<&'static str>,
}

impl From<&ModelInfo> for ModelObject {
    fn from(m: &ModelInfo) -> Self {
        ModelObject {
            id: m.id.clone(),
            object: "model",
            created: m.created,
            owned_by: "airlock",
            context_length: m.context_length,
            capabilities: capabilities(m.features),
        }
    }
}

/// The `capabilities` of a model object.
pub fn capabilities(f: ModelFeatures) -> Vec<&'static str> {
    [
        (f.completions, "completions"),
        (f.chat, "chat"),
        (f.logprobs, "logprobs"),
        (f.tokenizer, "tokenize"),
        (f.tools.is_some(), "tools"),
        (f.grammar, "structured_outputs"),
        (f.embeddings.is_some(), "embeddings"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect()
}

/// `GET /v1/models`.
#[derive(Debug, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelObject>,
}

/// `chat.completion`.
#[derive(Debug, Serialize)]
pub struct ChatCompletion<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<ChatChoice>,
    pub usage: UsageJson,
    pub system_fingerprint: &'a str,
}

#[derive(Debug, Serialize)]
pub struct ChatChoice {
    pub index: usize,
    pub message: AssistantMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: &'static str,
}

#[derive(Debug, Serialize)]
pub struct AssistantMessage {
    pub role: &'static str,
    /// `null` when the answer is only tool calls.
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallJson>,
}

/// One entry of `message.tool_calls`, or of a stream's `delta.tool_calls` (where the first
/// delta of a call carries `id`, `type` and the name, and later ones only `index` and an
/// argument fragment).
#[derive(Debug, Serialize)]
pub struct ToolCallJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionJson,
}

#[derive(Debug, Serialize)]
pub struct FunctionJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub arguments: String,
}

impl ToolCallJson {
    /// The whole call, as `message.tool_calls[]` carries it.
    pub fn whole(call: &tool_calls::ToolCall) -> Self {
        ToolCallJson {
            index: None,
            id: Some(call.id.clone()),
            kind: Some("function"),
            function: FunctionJson {
                name: Some(call.name.clone()),
                arguments: call.arguments.clone(),
            },
        }
    }
}

/// `chat.completion.chunk`.
#[derive(Debug, Serialize)]
pub struct ChatChunk<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub system_fingerprint: &'a str,
    pub choices: Vec<ChunkChoice<'a>>,
    /// Absent unless `include_usage`; then `null` on every chunk but the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<UsageJson>>,
}

#[derive(Debug, Serialize)]
pub struct ChunkChoice<'a> {
    pub index: usize,
    pub delta: Delta<'a>,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Default, Serialize)]
pub struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallJson>,
}

/// `text_completion` (both the response and its stream chunks).
#[derive(Debug, Serialize)]
pub struct TextCompletion<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub system_fingerprint: &'a str,
    pub choices: Vec<TextChoice<'a>>,
    /// Always present on the full response; on chunks as for [`ChatChunk::usage`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<UsageJson>>,
}

#[derive(Debug, Serialize)]
pub struct TextChoice<'a> {
    pub text: &'a str,
    pub index: usize,
    pub logprobs: Option<TextLogprobs>,
    pub finish_reason: Option<&'static str>,
}

/// `POST /generate` response.
#[derive(Debug, Serialize)]
pub struct GenerateResponse {
    pub generated_text: String,
    pub finish_reason: &'static str,
    pub usage: UsageJson,
}
