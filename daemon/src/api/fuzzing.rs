//! Entry points for the fuzz targets in `fuzz/` (cargo feature `fuzzing`, which no shipped
//! build enables): a request body through exactly the parsing and validation the request
//! path runs ([`super::request::parse`]) before anything reaches the engine.

use airlock_engine::{Prompt, SamplingParams};

use super::error::ApiError;
use super::request::{Inference, parse};

/// A body that passed validation: what the request path would hand to the engine.
#[derive(Debug)]
pub struct Validated {
    pub model: Option<String>,
    pub prompt: Prompt,
    pub params: SamplingParams,
}

fn validate(route: Inference, body: &[u8]) -> Result<Validated, ApiError> {
    // A `/generate` body without a model gets the first loaded one; any name does here.
    let parsed = parse(route, body, || Some("default".to_owned()))?;
    Ok(Validated {
        model: Some(parsed.model),
        prompt: parsed.prompt,
        params: parsed.params,
    })
}

/// `POST /v1/chat/completions` up to the engine.
pub fn chat(body: &[u8]) -> Result<Validated, ApiError> {
    validate(Inference::Chat, body)
}

/// `POST /v1/completions` up to the engine.
pub fn completions(body: &[u8]) -> Result<Validated, ApiError> {
    validate(Inference::Completions, body)
}

/// `POST /generate` up to the engine.
pub fn generate(body: &[u8]) -> Result<Validated, ApiError> {
    validate(Inference::Generate, body)
}
