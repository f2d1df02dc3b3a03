//! The handlers, one per route. Each parses its body (already size-limited), validates it,
//! runs the engine and writes OpenAI's response shape.

use http::StatusCode;
use hyper::Response;
use serde_json::Value;
use tokio::sync::OwnedSemaphorePermit;

use super::BoxBody;
use super::body::{from_value, parse_json};
use super::error::ApiError;
use super::inference::{self, Job, RequestContext};
use super::openai::chat::ChatRequest;
use super::openai::completions::{COMPLETIONS_DEFAULT_MAX_TOKENS, CompletionRequest, GenerateBody};
use super::openai::params::SamplingFields;
use super::openai::{
    AssistantMessage, ChatChoice, ChatCompletion, GenerateResponse, ModelList, ModelObject,
    TextChoice, TextCompletion, UsageJson,
};
use super::response::json_response;
use super::sse::{self, Chunker, Shape};
use crate::app::{App, unix_now};

/// `GET /healthz`: the process is alive and serving HTTP.
pub fn healthz() -> Response<BoxBody> {
    json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

/// `GET /readyz`: `{"status":"ready"}` (200) once a model is loaded and the audit log and
/// key database are usable, else `{"status":"not_ready"}` (503). Unauthenticated, so it says
/// nothing more: the reason, the models and the load figures are on the admin listener's
/// `/status` (`airlockd status`), not for anyone who can reach the API port.
pub fn readyz(app: &App) -> Response<BoxBody> {
    let (status, text) = match app.readiness().reason {
        None => (StatusCode::OK, "ready"),
        Some(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
    };
    json_response(status, &serde_json::json!({ "status": text }))
}

/// `GET /v1/models`.
pub fn models(app: &App) -> Response<BoxBody> {
    let data = app.engine.models().iter().map(ModelObject::from).collect();
    json_response(
        StatusCode::OK,
        &ModelList {
            object: "list",
            data,
        },
    )
}

/// `GET /v1/models/{id}`.
pub fn model(app: &App, id: &str) -> Result<Response<BoxBody>, ApiError> {
    let models = app.engine.models();
    let model = models
        .iter()
        .find(|m| m.id == id)
        .ok_or_else(|| ApiError::ModelNotFound(id.to_owned()))?;
    Ok(json_response(StatusCode::OK, &ModelObject::from(model)))
}

fn include_usage(options: Option<&super::openai::StreamOptions>) -> bool {
    options.and_then(|o| o.include_usage).unwrap_or(false)
}

/// How a streamed OpenAI response is shaped.
struct StreamSpec {
    shape: Shape,
    include_usage: bool,
}

/// The end of an OpenAI route: an SSE response already built, or a finished generation for
/// the route to shape.
enum Run {
    Streamed(Response<BoxBody>),
    Completed(inference::Completed),
}

/// Runs `job` as a stream (when `stream` is given) or to completion. The concurrency slot
/// lives as long as the stream's body, or until the generation completes.
async fn run(
    app: &App,
    ctx: &RequestContext,
    job: Job,
    slot: OwnedSemaphorePermit,
    id: &str,
    stream: Option<StreamSpec>,
) -> Result<Run, ApiError> {
    let Some(spec) = stream else {
        let done = inference::complete(&app.engine, ctx, job).await?;
        drop(slot);
        return Ok(Run::Completed(done));
    };
    let (model, prompt_param) = (job.model.clone(), job.prompt_param);
    let started = inference::start(&app.engine, ctx, job).await?;
    let chunker = Chunker {
        shape: spec.shape,
        id: id.to_owned(),
        created: unix_now(),
        model,
        fingerprint: app.fingerprint.clone(),
        include_usage: spec.include_usage,
        prompt_param,
    };
    Ok(Run::Streamed(sse::response(started, chunker, slot)))
}

/// `POST /v1/chat/completions`.
pub async fn chat(
    app: &App,
    ctx: &RequestContext,
    body: &[u8],
    slot: OwnedSemaphorePermit,
) -> Result<Response<BoxBody>, ApiError> {
    let value: Value = parse_json(body)?;
    let req: ChatRequest = from_value(&value)?;
    let fields: SamplingFields = from_value(&value)?;
    req.check_bounds()?;
    req.check_unsupported()?;
    let job = Job {
        prompt: req.prompt()?,
        params: fields.to_params(None)?,
        model: req.model.clone(),
        prompt_param: "messages",
    };
    let id = format!("chatcmpl-{}", object_id());
    let stream = (req.stream == Some(true)).then(|| StreamSpec {
        shape: Shape::Chat,
        include_usage: include_usage(req.stream_options.as_ref()),
    });
    let done = match run(app, ctx, job, slot, &id, stream).await? {
        Run::Streamed(response) => return Ok(response),
        Run::Completed(done) => done,
    };
    Ok(json_response(
        StatusCode::OK,
        &ChatCompletion {
            id: &id,
            object: "chat.completion",
            created: unix_now(),
            model: &req.model,
            choices: [ChatChoice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant",
                    content: done.text,
                },
                logprobs: None,
                finish_reason: done.reason.as_str(),
            }],
            usage: done.usage.into(),
            system_fingerprint: &app.fingerprint,
        },
    ))
}

/// `POST /v1/completions`.
pub async fn completions(
    app: &App,
    ctx: &RequestContext,
    body: &[u8],
    slot: OwnedSemaphorePermit,
) -> Result<Response<BoxBody>, ApiError> {
    let value: Value = parse_json(body)?;
    let req: CompletionRequest = from_value(&value)?;
    let fields: SamplingFields = from_value(&value)?;
    req.check_unsupported()?;
    let job = Job {
        prompt: req.prompt()?,
        params: fields.to_params(Some(COMPLETIONS_DEFAULT_MAX_TOKENS))?,
        model: req.model.clone(),
        prompt_param: "prompt",
    };
    let id = format!("cmpl-{}", object_id());
    let stream = (req.stream == Some(true)).then(|| StreamSpec {
        shape: Shape::Text,
        include_usage: include_usage(req.stream_options.as_ref()),
    });
    let done = match run(app, ctx, job, slot, &id, stream).await? {
        Run::Streamed(response) => return Ok(response),
        Run::Completed(done) => done,
    };
    Ok(json_response(
        StatusCode::OK,
        &TextCompletion {
            id: &id,
            object: "text_completion",
            created: unix_now(),
            model: &req.model,
            system_fingerprint: &app.fingerprint,
            choices: vec![TextChoice {
                text: &done.text,
                index: 0,
                logprobs: None,
                finish_reason: Some(done.reason.as_str()),
            }],
            usage: Some(Some(UsageJson::from(done.usage))),
        },
    ))
}

/// `POST /generate`: the minimal endpoint. Sampling fields as in OpenAI's API.
pub async fn generate(
    app: &App,
    ctx: &RequestContext,
    body: &[u8],
    slot: OwnedSemaphorePermit,
) -> Result<Response<BoxBody>, ApiError> {
    let value: Value = parse_json(body)?;
    let req: GenerateBody = from_value(&value)?;
    let fields: SamplingFields = from_value(&value)?;
    let model = match req.model {
        Some(model) => model,
        None => app
            .engine
            .models()
            .into_iter()
            .next()
            .map(|m| m.id)
            .ok_or_else(|| ApiError::engine(airlock_engine::EngineError::Unavailable, "prompt"))?,
    };
    let job = Job {
        model,
        prompt: airlock_engine::Prompt::Text(req.prompt),
        params: fields.to_params(None)?,
        prompt_param: "prompt",
    };
    let done = inference::complete(&app.engine, ctx, job).await?;
    drop(slot);
    Ok(json_response(
        StatusCode::OK,
        &GenerateResponse {
            generated_text: done.text,
            finish_reason: done.reason.as_str(),
            usage: done.usage.into(),
        },
    ))
}

/// A fresh id for a completion object. Not the request id: clients may reuse theirs, and
/// OpenAI's ids are unique.
fn object_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
