//! Engine errors. Each names what is wrong precisely enough for an operator (file, tensor,
//! field) or a client (the numbers that exceed a limit) to act on it.

use std::path::PathBuf;

/// Everything that can go wrong in the engine.
#[derive(Clone, Debug, thiserror::Error)]
pub enum EngineError {
    /// The model directory is unusable: a file is missing, malformed, or a tensor is absent or
    /// mis-shaped. `path` names the file, `reason` the field or tensor.
    #[error("{path}: {reason}")]
    Load { path: PathBuf, reason: String },

    /// A model file does not match the integrity manifest.
    #[error("{path}: integrity check failed: {reason}")]
    Integrity { path: PathBuf, reason: String },

    /// The requested device cannot be used.
    #[error("device: {0}")]
    Device(String),

    /// No model of that name is served.
    #[error("model `{0}` does not exist")]
    UnknownModel(String),

    /// Prompt plus requested completion exceed the model's context.
    #[error(
        "this model's maximum context length is {context_length} tokens; the request asks for \
         {prompt_tokens} prompt tokens plus {max_tokens} completion tokens"
    )]
    ContextLength {
        context_length: usize,
        prompt_tokens: usize,
        max_tokens: usize,
    },

    /// Prompt plus requested completion exceed the model's whole KV-cache budget: the
    /// request could never run, however long it waited.
    #[error(
        "this model's KV-cache budget holds {budget_tokens} tokens ({budget_bytes} bytes); the \
         request asks for {prompt_tokens} prompt tokens plus {max_tokens} completion tokens"
    )]
    KvBudget {
        budget_tokens: usize,
        budget_bytes: usize,
        prompt_tokens: usize,
        max_tokens: usize,
    },

    /// A request parameter is out of range. `param` names the field.
    #[error("{param}: {reason}")]
    InvalidRequest { param: &'static str, reason: String },

    /// The bounded request queue is full; the gateway answers 503 with `Retry-After`.
    #[error("the engine queue is full ({capacity} requests waiting)")]
    QueueFull { capacity: usize },

    /// The engine is shutting down or its worker died.
    #[error("the engine is not running")]
    Unavailable,

    /// Tokenization or chat-template rendering failed for this input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// An internal failure during inference.
    #[error("inference failed: {0}")]
    Inference(String),
}
