//! [`BurnEngine`]: one inference thread per model, fed by a bounded queue.

use crate::{
    Engine, EngineError, EngineStatus, GenerateRequest, Generation, ModelInfo, ModelSpec, Prompt,
};

/// The production engine: Hugging Face Llama-family models on burn.
pub struct BurnEngine {
    _private: (),
}

impl BurnEngine {
    /// Loads every model in `specs` (manifest check, weights, tokenizer) and starts one
    /// inference thread per model.
    pub fn load(specs: &[ModelSpec]) -> Result<BurnEngine, EngineError> {
        let _ = specs;
        Err(EngineError::Unavailable)
    }
}

impl Engine for BurnEngine {
    fn models(&self) -> Vec<ModelInfo> {
        Vec::new()
    }

    fn count_prompt_tokens(&self, model: &str, _prompt: &Prompt) -> Result<usize, EngineError> {
        Err(EngineError::UnknownModel(model.to_owned()))
    }

    fn submit(&self, request: GenerateRequest) -> Result<Generation, EngineError> {
        Err(EngineError::UnknownModel(request.model))
    }

    fn status(&self) -> EngineStatus {
        EngineStatus::default()
    }
}
