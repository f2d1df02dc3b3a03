//! Entry points for the fuzz targets in `fuzz/` (cargo feature `fuzzing`, which no shipped
//! build enables): a request body through exactly the parsing and validation the handlers in
//! [`super::endpoints`] run before anything reaches the engine.

use airlock_engine::{Prompt, SamplingParams};
use serde_json::Value;

use super::body::{from_value, parse_json};
use super::error::ApiError;
use super::openai::chat::ChatRequest;
use super::openai::completions::{COMPLETIONS_DEFAULT_MAX_TOKENS, CompletionRequest, GenerateBody};
use super::openai::params::SamplingFields;

/// A body that passed validation: what the handler would hand to the engine.
#[derive(Debug)]
pub struct Validated {
    pub model: Option<String>,
    pub prompt: Prompt,
    pub params: SamplingParams,
}

/// `POST /v1/chat/completions` up to the engine (as in `endpoints::chat`).
pub fn chat(body: &[u8]) -> Result<Validated, ApiError> {
    let value: Value = parse_json(body)?;
    let req: ChatRequest = from_value(&value)?;
    let fields: SamplingFields = from_value(&value)?;
    req.check_unsupported()?;
    Ok(Validated {
        prompt: req.prompt()?,
        params: fields.to_params(None)?,
        model: Some(req.model),
    })
}

/// `POST /v1/completions` up to the engine (as in `endpoints::completions`).
pub fn completions(body: &[u8]) -> Result<Validated, ApiError> {
    let value: Value = parse_json(body)?;
    let req: CompletionRequest = from_value(&value)?;
    let fields: SamplingFields = from_value(&value)?;
    req.check_unsupported()?;
    Ok(Validated {
        prompt: req.prompt()?,
        params: fields.to_params(Some(COMPLETIONS_DEFAULT_MAX_TOKENS))?,
        model: Some(req.model),
    })
}

/// `POST /generate` up to the engine (as in `endpoints::generate`).
pub fn generate(body: &[u8]) -> Result<Validated, ApiError> {
    let value: Value = parse_json(body)?;
    let req: GenerateBody = from_value(&value)?;
    let fields: SamplingFields = from_value(&value)?;
    Ok(Validated {
        prompt: Prompt::Text(req.prompt),
        params: fields.to_params(None)?,
        model: req.model,
    })
}
