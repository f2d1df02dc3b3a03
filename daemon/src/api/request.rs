//! The inference routes' request bodies, parsed and validated up to what the engine takes:
//! the model, the prompt, the sampling parameters and how the answer is shaped. The same
//! functions serve the request path and the fuzz targets ([`super::fuzzing`]).

use airlock_engine::{EngineError, Prompt, SamplingParams};
use serde_json::{Map, Value};

use super::body::{from_value, parse_json};
use super::embeddings::{EmbedOptions, EmbeddingsBody};
use super::error::ApiError;
use super::openai::StreamOptions;
use super::openai::chat::ChatRequest;
use super::openai::completions::{COMPLETIONS_DEFAULT_MAX_TOKENS, CompletionRequest, GenerateBody};
use super::openai::extras::Extras;
use super::openai::logprobs;
use super::openai::params::SamplingFields;
use super::openai::responses;
use super::sse::Shape;
use super::tokenize::{DetokenizeBody, TokenizeBody, TokenizeOptions};

/// The routes that run inference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inference {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/responses`: a chat request in the Responses shape (stateless subset).
    Responses,
    /// `POST /v1/completions`.
    Completions,
    /// `POST /generate`: the minimal endpoint (never streams).
    Generate,
    /// `POST /tokenize`: the model's tokenizer, no generation.
    Tokenize,
    /// `POST /detokenize`: the model's tokenizer, no generation.
    Detokenize,
    /// `POST /v1/embeddings`: the model runs, nothing is generated.
    Embeddings,
}

impl Inference {
    /// The tokenizer routes: admitted and audited like a generation, answered without one.
    pub fn is_tokenizer(self) -> bool {
        matches!(self, Inference::Tokenize | Inference::Detokenize)
    }

    /// The routes that generate nothing (no completion to cap, reserve or filter).
    pub fn generates(self) -> bool {
        !self.is_tokenizer() && self != Inference::Embeddings
    }
}

/// How a streamed response is shaped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamSpec {
    pub shape: Shape,
    /// `stream_options.include_usage`: a last chunk with the usage.
    pub include_usage: bool,
}

/// A request body that passed validation.
#[derive(Debug)]
pub struct Parsed {
    pub route: Inference,
    pub model: String,
    pub prompt: Prompt,
    pub params: SamplingParams,
    /// The request field the prompt came from, named in context-length errors.
    pub prompt_param: &'static str,
    /// `stream: true`; `None` for a whole JSON response.
    pub stream: Option<StreamSpec>,
    /// How `/tokenize` answers (default elsewhere).
    pub tokenize: TokenizeOptions,
    /// The names of the tools the model is offered (chat with tools, `tool_choice` not
    /// `none`): its output is parsed for calls to these.
    pub tools: Vec<String>,
    /// `/v1/responses`: the request fields its response object repeats.
    pub echo: Option<Map<String, Value>>,
    /// `/v1/embeddings`: the inputs (text or token ids; empty elsewhere).
    pub inputs: Vec<Prompt>,
    /// How `/v1/embeddings` answers (default elsewhere).
    pub embed: EmbedOptions,
    /// How many choices (OpenAI's `n`; 1 on routes without choices).
    pub n: usize,
}

/// Parses and validates the body of an inference route. `default_model` names the model of
/// a `/generate` request that names none (`None`: no model is loaded).
pub fn parse(
    route: Inference,
    body: &[u8],
    default_model: impl FnOnce() -> Option<String>,
) -> Result<Parsed, ApiError> {
    match route {
        Inference::Chat => chat(body),
        Inference::Responses => responses(body),
        Inference::Completions => completions(body),
        Inference::Generate => generate(body, default_model),
        Inference::Tokenize => tokenize(body, default_model),
        Inference::Detokenize => detokenize(body, default_model),
        Inference::Embeddings => embeddings(body),
    }
}

fn embeddings(body: &[u8]) -> Result<Parsed, ApiError> {
    let value: Value = parse_json(body)?;
    let req: EmbeddingsBody = from_value(&value)?;
    let (inputs, embed) = req.inputs()?;
    Ok(Parsed {
        n: 1,
        tools: Vec::new(),
        echo: None,
        route: Inference::Embeddings,
        model: req.model,
        // The inputs travel in `inputs`; every phase handles them there.
        prompt: Prompt::Text(String::new()),
        params: SamplingParams::default(),
        prompt_param: "input",
        stream: None,
        tokenize: TokenizeOptions::default(),
        inputs,
        embed,
    })
}

/// The named model, else the default one (`None`: no model is loaded).
fn model_or_default(
    model: Option<String>,
    default_model: impl FnOnce() -> Option<String>,
    prompt_param: &'static str,
) -> Result<String, ApiError> {
    match model {
        Some(model) => Ok(model),
        None => {
            default_model().ok_or_else(|| ApiError::engine(EngineError::Unavailable, prompt_param))
        }
    }
}

fn tokenize(
    body: &[u8],
    default_model: impl FnOnce() -> Option<String>,
) -> Result<Parsed, ApiError> {
    let value: Value = parse_json(body)?;
    let req: TokenizeBody = from_value(&value)?;
    let model = req.model.clone();
    let (prompt, prompt_param, tokenize) = req.text()?;
    Ok(Parsed {
        n: 1,
        tools: Vec::new(),
        echo: None,
        route: Inference::Tokenize,
        model: model_or_default(model, default_model, prompt_param)?,
        prompt,
        params: SamplingParams::default(),
        prompt_param,
        stream: None,
        tokenize,
        inputs: Vec::new(),
        embed: EmbedOptions::default(),
    })
}

fn detokenize(
    body: &[u8],
    default_model: impl FnOnce() -> Option<String>,
) -> Result<Parsed, ApiError> {
    let value: Value = parse_json(body)?;
    let req: DetokenizeBody = from_value(&value)?;
    let model = req.model.clone();
    Ok(Parsed {
        n: 1,
        tools: Vec::new(),
        echo: None,
        route: Inference::Detokenize,
        model: model_or_default(model, default_model, "tokens")?,
        prompt: req.ids()?,
        params: SamplingParams::default(),
        prompt_param: "tokens",
        stream: None,
        tokenize: TokenizeOptions::default(),
        inputs: Vec::new(),
        embed: EmbedOptions::default(),
    })
}

fn stream_spec(
    stream: Option<bool>,
    shape: Shape,
    options: Option<&StreamOptions>,
) -> Option<StreamSpec> {
    (stream == Some(true)).then(|| StreamSpec {
        shape,
        include_usage: options.and_then(|o| o.include_usage).unwrap_or(false),
    })
}

fn chat(body: &[u8]) -> Result<Parsed, ApiError> {
    chat_value(parse_json(body)?)
}

/// `/v1/responses`: rewritten into a chat request, which then passes the chat route's
/// checks unchanged.
fn responses(body: &[u8]) -> Result<Parsed, ApiError> {
    let translated = responses::to_chat(&parse_json(body)?)?;
    let mut parsed = chat_value(translated.chat).map_err(responses::rename_param)?;
    if let Some(spec) = &mut parsed.stream {
        spec.shape = Shape::Responses;
        spec.include_usage = false;
    }
    parsed.route = Inference::Responses;
    parsed.prompt_param = "input";
    if let Some(grammar) = &mut parsed.params.grammar
        && grammar.param == "response_format"
    {
        grammar.param = "text.format";
    }
    parsed.echo = Some(translated.echo);
    Ok(parsed)
}

fn chat_value(value: Value) -> Result<Parsed, ApiError> {
    let req: ChatRequest = from_value(&value)?;
    let fields: SamplingFields = from_value(&value)?;
    req.check_bounds()?;
    req.check_unsupported()?;
    let mut extras = from_value::<Extras>(&value)?;
    // Checked with the tools it refers to (`ChatRequest::grammar`).
    extras.tool_choice = None;
    extras.check()?;
    let mut params = fields.to_params(None)?;
    params.logprobs = logprobs::chat_request(req.logprobs, req.top_logprobs)?;
    params.grammar = req.grammar()?;
    Ok(Parsed {
        n: fields.choices(true)?,
        route: Inference::Chat,
        prompt: req.prompt()?,
        tools: req
            .offered_tools()
            .iter()
            .filter_map(|t| t.pointer("/function/name").and_then(Value::as_str))
            .map(str::to_owned)
            .collect(),
        params,
        stream: stream_spec(req.stream, Shape::Chat, req.stream_options.as_ref()),
        model: req.model,
        prompt_param: "messages",
        tokenize: TokenizeOptions::default(),
        echo: None,
        inputs: Vec::new(),
        embed: EmbedOptions::default(),
    })
}

fn completions(body: &[u8]) -> Result<Parsed, ApiError> {
    let value: Value = parse_json(body)?;
    let req: CompletionRequest = from_value(&value)?;
    let fields: SamplingFields = from_value(&value)?;
    req.check_unsupported()?;
    from_value::<Extras>(&value)?.check()?;
    let mut params = fields.to_params(Some(COMPLETIONS_DEFAULT_MAX_TOKENS))?;
    params.logprobs = logprobs::completion_request(req.logprobs)?;
    Ok(Parsed {
        n: fields.choices(true)?,
        tools: Vec::new(),
        echo: None,
        route: Inference::Completions,
        prompt: req.prompt()?,
        params,
        stream: stream_spec(req.stream, Shape::Text, req.stream_options.as_ref()),
        model: req.model,
        prompt_param: "prompt",
        tokenize: TokenizeOptions::default(),
        inputs: Vec::new(),
        embed: EmbedOptions::default(),
    })
}

fn generate(
    body: &[u8],
    default_model: impl FnOnce() -> Option<String>,
) -> Result<Parsed, ApiError> {
    let value: Value = parse_json(body)?;
    let req: GenerateBody = from_value(&value)?;
    let fields: SamplingFields = from_value(&value)?;
    let model = model_or_default(req.model, default_model, "prompt")?;
    Ok(Parsed {
        n: fields.choices(false)?,
        tools: Vec::new(),
        echo: None,
        route: Inference::Generate,
        model,
        prompt: Prompt::Text(req.prompt),
        params: fields.to_params(None)?,
        stream: None,
        prompt_param: "prompt",
        tokenize: TokenizeOptions::default(),
        inputs: Vec::new(),
        embed: EmbedOptions::default(),
    })
}
