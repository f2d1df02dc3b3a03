//! [`Routed`]: one `Engine` over several, by model name, so that one `App` serves the local
//! engine's models and remote pools together. Each call goes to the engine that serves
//! the request's model; `models` lists them all in configuration order.

use std::collections::HashMap;
use std::sync::Arc;

use airlock_engine::{
    EmbedRequest, Engine, EngineError, EngineStatus, GenerateRequest, Generation, ModelInfo,
    PendingEmbeddings, Prepared, Prompt,
};

/// Engines by the models they serve.
pub struct Routed {
    engines: Vec<Arc<dyn Engine>>,
    by_model: HashMap<String, usize>,
    models: Vec<ModelInfo>,
}

impl Routed {
    /// Routes to `engines`; `order` is the configuration's model order (for `models`).
    pub fn new(engines: Vec<Arc<dyn Engine>>, order: &[String]) -> Routed {
        let mut by_model = HashMap::new();
        let mut models = Vec::new();
        for (i, engine) in engines.iter().enumerate() {
            for info in engine.models() {
                by_model.insert(info.id.clone(), i);
                models.push(info);
            }
        }
        models.sort_by_key(|m| order.iter().position(|n| *n == m.id).unwrap_or(usize::MAX));
        Routed {
            engines,
            by_model,
            models,
        }
    }

    fn route(&self, model: &str) -> Result<&dyn Engine, EngineError> {
        self.by_model
            .get(model)
            .map(|&i| self.engines[i].as_ref())
            .ok_or_else(|| EngineError::UnknownModel(model.to_owned()))
    }
}

impl Engine for Routed {
    fn models(&self) -> Vec<ModelInfo> {
        self.models.clone()
    }

    fn count_prompt_tokens(&self, model: &str, prompt: &Prompt) -> Result<usize, EngineError> {
        self.route(model)?.count_prompt_tokens(model, prompt)
    }

    fn submit(&self, request: GenerateRequest) -> Result<Generation, EngineError> {
        self.route(&request.model)?.submit(request)
    }

    fn prepare(&self, model: &str, prompt: &Prompt) -> Result<Prepared, EngineError> {
        self.route(model)?.prepare(model, prompt)
    }

    fn submit_prepared(
        &self,
        request: GenerateRequest,
        prepared: Prepared,
    ) -> Result<Generation, EngineError> {
        self.route(&request.model)?
            .submit_prepared(request, prepared)
    }

    fn submit_n(
        &self,
        request: GenerateRequest,
        prepared: Prepared,
        n: usize,
    ) -> Result<Vec<Generation>, EngineError> {
        self.route(&request.model)?.submit_n(request, prepared, n)
    }

    fn tokenize(
        &self,
        model: &str,
        text: &str,
        add_special: bool,
    ) -> Result<Vec<u32>, EngineError> {
        self.route(model)?.tokenize(model, text, add_special)
    }

    fn token_pieces(&self, model: &str, ids: &[u32]) -> Result<Vec<String>, EngineError> {
        self.route(model)?.token_pieces(model, ids)
    }

    fn detokenize(&self, model: &str, ids: &[u32]) -> Result<String, EngineError> {
        self.route(model)?.detokenize(model, ids)
    }

    fn embed(&self, request: EmbedRequest) -> Result<PendingEmbeddings, EngineError> {
        self.route(&request.model)?.embed(request)
    }

    fn status(&self) -> EngineStatus {
        let mut total = EngineStatus::default();
        for engine in &self.engines {
            let s = engine.status();
            total.queued += s.queued;
            total.active += s.active;
            total.kv_cache_bytes += s.kv_cache_bytes;
            total.prefill_tokens += s.prefill_tokens;
            total.prefix_cache_bytes += s.prefix_cache_bytes;
            total.prefix_cache_tokens += s.prefix_cache_tokens;
            total.spec_drafted_tokens += s.spec_drafted_tokens;
            total.spec_accepted_tokens += s.spec_accepted_tokens;
        }
        total
    }
}
