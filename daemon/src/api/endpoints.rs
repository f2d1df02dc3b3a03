//! The response documents of each route: the probes, the model list, and the JSON body of a
//! finished (non-streamed) completion in its route's shape.

use airlock_engine::{FinishReason, ModelInfo, TokenLogprob, Usage};
use http::StatusCode;
use hyper::Response;

use super::BoxBody;
use super::error::ApiError;
use super::openai::logprobs::{ChatLogprobs, TextLogprobs};
use super::openai::responses;
use super::openai::tool_calls::ToolCall;
use super::openai::{
    AssistantMessage, ChatChoice, ChatCompletion, GenerateResponse, ModelList, ModelObject,
    TextChoice, TextCompletion, ToolCallJson, UsageJson,
};
use super::request::Inference;
use super::response::json_response;

/// `GET /healthz`: the process is alive and serving HTTP.
pub fn healthz() -> Response<BoxBody> {
    json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

/// `GET /readyz`: `{"status":"ready"}` (200) once a model is loaded and the audit log and
/// key database are usable, else `{"status":"not_ready"}` (503). Unauthenticated, so it says
/// nothing more: the reason, the models and the load figures are on the admin listener's
/// `/status` (`airlockd status`), not for anyone who can reach the API port.
pub fn readyz(ready: bool) -> Response<BoxBody> {
    let (status, text) = if ready {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    };
    json_response(status, &serde_json::json!({ "status": text }))
}

/// `GET /v1/models`.
pub fn models(models: &[ModelInfo]) -> Response<BoxBody> {
    let data = models.iter().map(ModelObject::from).collect();
    json_response(
        StatusCode::OK,
        &ModelList {
            object: "list",
            data,
        },
    )
}

/// `GET /v1/models/{id}`.
pub fn model(models: &[ModelInfo], id: &str) -> Result<Response<BoxBody>, ApiError> {
    let model = models
        .iter()
        .find(|m| m.id == id)
        .ok_or_else(|| ApiError::ModelNotFound(id.to_owned()))?;
    Ok(json_response(StatusCode::OK, &ModelObject::from(model)))
}

/// A finished generation, as a whole JSON response.
#[derive(Debug)]
pub struct Completion<'a> {
    pub route: Inference,
    /// The completion object's id (`chatcmpl-…`, `cmpl-…`; unused by `/generate`).
    pub id: &'a str,
    pub created: u64,
    pub model: &'a str,
    pub fingerprint: &'a str,
    /// The choices, in order (one unless the request asked for `n`).
    pub choices: Vec<Choice>,
    /// The whole request's usage (the prompt once, every choice's completion).
    pub usage: Usage,
    /// `/v1/responses`: the request fields its response object repeats.
    pub echo: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

/// One choice of a finished generation.
#[derive(Debug)]
pub struct Choice {
    pub text: String,
    pub reason: FinishReason,
    /// The tokens' log-probabilities, when asked for (those the output filter let through).
    pub logprobs: Option<Vec<TokenLogprob>>,
    /// Calls parsed from the output (chat with tools); `text` is then what came before
    /// them.
    pub tool_calls: Vec<ToolCall>,
}

/// The 200 response of a finished generation, in its route's shape.
pub fn completion(done: Completion<'_>) -> Response<BoxBody> {
    match done.route {
        Inference::Chat => json_response(
            StatusCode::OK,
            &ChatCompletion {
                id: done.id,
                object: "chat.completion",
                created: done.created,
                model: done.model,
                choices: done
                    .choices
                    .into_iter()
                    .enumerate()
                    .map(|(index, choice)| ChatChoice {
                        index,
                        message: AssistantMessage {
                            role: "assistant",
                            tool_calls: choice.tool_calls.iter().map(ToolCallJson::whole).collect(),
                            content: (choice.tool_calls.is_empty() || !choice.text.is_empty())
                                .then_some(choice.text),
                        },
                        logprobs: choice.logprobs.as_deref().map(ChatLogprobs::new),
                        finish_reason: choice.reason.as_str(),
                    })
                    .collect(),
                usage: done.usage.into(),
                system_fingerprint: done.fingerprint,
            },
        ),
        Inference::Completions => json_response(
            StatusCode::OK,
            &TextCompletion {
                id: done.id,
                object: "text_completion",
                created: done.created,
                model: done.model,
                system_fingerprint: done.fingerprint,
                choices: done
                    .choices
                    .iter()
                    .enumerate()
                    .map(|(index, choice)| TextChoice {
                        text: &choice.text,
                        index,
                        logprobs: choice
                            .logprobs
                            .as_deref()
                            .map(|entries| TextLogprobs::new(entries, &mut 0)),
                        finish_reason: Some(choice.reason.as_str()),
                    })
                    .collect(),
                usage: Some(Some(UsageJson::from(done.usage))),
            },
        ),
        // One output: `n` is a chat and completions field.
        Inference::Responses => {
            let Some(choice) = done.choices.into_iter().next() else {
                return no_choice();
            };
            json_response(
                StatusCode::OK,
                &responses::response_object(
                    &responses::Answer {
                        id: done.id,
                        created_at: done.created,
                        model: done.model,
                        text: &choice.text,
                        length_limited: choice.reason == FinishReason::Length,
                        calls: &choice.tool_calls,
                        usage: done.usage,
                    },
                    done.echo.unwrap_or(&serde_json::Map::new()),
                ),
            )
        }
        // The tokenizer routes and embeddings never generate (`pipeline::tokenize` and
        // `pipeline::embed` answer them).
        Inference::Generate
        | Inference::Tokenize
        | Inference::Detokenize
        | Inference::Embeddings => {
            let Some(choice) = done.choices.into_iter().next() else {
                return no_choice();
            };
            json_response(
                StatusCode::OK,
                &GenerateResponse {
                    generated_text: choice.text,
                    finish_reason: choice.reason.as_str(),
                    usage: done.usage.into(),
                },
            )
        }
    }
}

/// A generation always has a choice (the engine returns one handle per choice, at least
/// one); should one be missing, the client gets a 500, not a panic.
fn no_choice() -> Response<BoxBody> {
    ApiError::from(airlock_engine::EngineError::Inference(
        "the generation returned no choice".into(),
    ))
    .into_response()
}

/// A fresh id for a completion object: `chatcmpl-…` or `cmpl-…`. Not the request id:
/// clients may reuse theirs, and OpenAI's ids are unique.
pub fn object_id(route: Inference) -> String {
    let prefix = match route {
        Inference::Chat => "chatcmpl",
        Inference::Responses => return responses::response_id(),
        Inference::Completions
        | Inference::Generate
        | Inference::Tokenize
        | Inference::Detokenize
        | Inference::Embeddings => "cmpl",
    };
    format!("{prefix}-{}", crate::api::random_uuid().simple())
}
