//! Builds the inference engine from the `[[models]]` entries: the burn engine for real
//! models, the deterministic test engine for `backend = "test"` (tests only).

use std::sync::Arc;

use airlock_engine::{Engine, EngineError, ModelSpec};

use crate::config::{ModelBackend, ModelConfig};

/// Why no engine could be built.
#[derive(Debug, thiserror::Error)]
pub enum EngineSetupError {
    #[error("{0}")]
    Engine(#[from] EngineError),
    #[error("backend = \"test\" and backend = \"burn\" models cannot be mixed in one daemon")]
    Mixed,
}

/// Loads every configured model (blocking: call from `spawn_blocking` or before the runtime
/// serves traffic).
pub fn build(models: &[ModelConfig]) -> Result<Arc<dyn Engine>, EngineSetupError> {
    let test_models: Vec<_> = models.iter().filter(|m| matches!(m.backend, ModelBackend::Test { .. })).collect();
    if !test_models.is_empty() {
        if test_models.len() != models.len() {
            return Err(EngineSetupError::Mixed);
        }
        return Ok(test_engine(models));
    }
    let specs: Vec<ModelSpec> = models
        .iter()
        .filter_map(|m| match &m.backend {
            ModelBackend::Burn { path, device, verify_manifest } => Some(ModelSpec {
                name: m.name.clone(),
                path: path.clone(),
                device: *device,
                verify_manifest: *verify_manifest,
                max_queue: m.max_queue.get(),
                max_active: m.max_active.get(),
                max_context: m.max_context.map(|c| c.get()),
            }),
            ModelBackend::Test { .. } => None,
        })
        .collect();
    Ok(Arc::new(airlock_engine::BurnEngine::load(&specs)?))
}

fn test_engine(models: &[ModelConfig]) -> Arc<dyn Engine> {
    Arc::new(stub_engine::StubEngine { names: models.iter().map(|m| m.name.clone()).collect() })
}

/// TEMPORARY until `airlock_engine::test_engine::TestEngine` lands.
mod stub_engine {
    use airlock_engine::{Engine, EngineError, EngineStatus, GenerateRequest, Generation, ModelInfo, Prompt};

    pub struct StubEngine {
        pub names: Vec<String>,
    }

    impl Engine for StubEngine {
        fn models(&self) -> Vec<ModelInfo> {
            self.names
                .iter()
                .map(|n| ModelInfo { id: n.clone(), created: 0, context_length: 2048, device: "test".into() })
                .collect()
        }
        fn count_prompt_tokens(&self, model: &str, _: &Prompt) -> Result<usize, EngineError> {
            Err(EngineError::UnknownModel(model.to_owned()))
        }
        fn submit(&self, request: GenerateRequest) -> Result<Generation, EngineError> {
            Err(EngineError::UnknownModel(request.model))
        }
        fn status(&self) -> EngineStatus {
            EngineStatus::default()
        }
    }
}
