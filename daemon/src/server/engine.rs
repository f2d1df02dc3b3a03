//! Builds the inference engine from the `[[models]]` entries: the burn engine for real
//! models, the deterministic test engine for `backend = "test"` (tests and benchmarks only:
//! cargo feature `test-engine`, which the release build leaves off), a
//! [`crate::remote::RemoteEngine`] per `backend = "remote"` pool, and a [`router::Routed`]
//! over them when there is more than one.

mod router;

use std::sync::Arc;

#[cfg(feature = "test-engine")]
use airlock_engine::test_engine::{TestEngine, TestEngineConfig};
use airlock_engine::{Engine, EngineError, ModelSpec};

use crate::config::{ModelBackend, ModelConfig};

/// Why no engine could be built.
#[derive(Debug, thiserror::Error)]
pub enum EngineSetupError {
    #[error("{0}")]
    Engine(#[from] EngineError),
    #[error("backend = \"test\" and backend = \"burn\" models cannot be mixed in one daemon")]
    Mixed,
    #[error("backend = \"test\" serves exactly one model")]
    OneTestModel,
    #[error("{0}")]
    Remote(#[from] crate::remote::RemoteError),
    /// Config validation refuses this first; kept so a config built in code cannot slip by.
    #[cfg(not(feature = "test-engine"))]
    #[error(
        "backend = \"test\" needs an airlockd built with the cargo feature `test-engine` \
         (tests and benchmarks only); this build has it off"
    )]
    TestEngineNotBuilt,
}

/// Loads every configured model (blocking: call from `spawn_blocking` or before the runtime
/// serves traffic, within the runtime's context: remote pools start their health probes on
/// it).
pub fn build(models: &[ModelConfig]) -> Result<Arc<dyn Engine>, EngineSetupError> {
    let local: Vec<ModelConfig> = models
        .iter()
        .filter(|m| m.backend.is_local())
        .cloned()
        .collect();
    let mut engines: Vec<Arc<dyn Engine>> = Vec::new();
    if !local.is_empty() {
        engines.push(build_local(&local)?);
    }
    for model in models {
        if let ModelBackend::Remote(remote) = &model.backend {
            engines.push(Arc::new(crate::remote::RemoteEngine::new(
                &model.name,
                remote,
                model.max_queue.get(),
                model.max_context.map(|c| c.get()),
            )?));
        }
    }
    if engines.len() == 1
        && let Some(engine) = engines.pop()
    {
        return Ok(engine);
    }
    let order: Vec<String> = models.iter().map(|m| m.name.clone()).collect();
    Ok(Arc::new(router::Routed::new(engines, &order)))
}

/// The engine of the models that run in this process.
fn build_local(models: &[ModelConfig]) -> Result<Arc<dyn Engine>, EngineSetupError> {
    let test_models: Vec<_> = models
        .iter()
        .filter(|m| matches!(m.backend, ModelBackend::Test { .. }))
        .collect();
    if !test_models.is_empty() {
        if test_models.len() != models.len() {
            return Err(EngineSetupError::Mixed);
        }
        return test_engine(models);
    }
    let specs: Vec<ModelSpec> = models
        .iter()
        .filter_map(|m| match &m.backend {
            ModelBackend::Burn {
                path,
                device,
                verify_manifest,
                manifest_sha256,
                quantize,
                pooling,
                embeddings,
                prefix_cache,
                speculative,
                kv_cache_dtype,
            } => Some(ModelSpec {
                name: m.name.clone(),
                path: path.clone(),
                device: *device,
                verify_manifest: *verify_manifest,
                manifest_sha256: manifest_sha256.clone(),
                max_queue: m.max_queue.get(),
                max_active: m.max_active.get(),
                max_context: m.max_context.map(|c| c.get()),
                prefill_chunk: m.prefill_chunk.get(),
                max_batch_tokens: m.max_batch_tokens.get(),
                kv_cache_bytes: m.kv_cache_bytes.map(|b| b.get()),
                quantize: *quantize,
                pooling: *pooling,
                embeddings: *embeddings,
                prefix_cache: *prefix_cache,
                speculative: *speculative,
                kv_cache_dtype: *kv_cache_dtype,
            }),
            ModelBackend::Test { .. } | ModelBackend::Remote(_) => None,
        })
        .collect();
    Ok(Arc::new(airlock_engine::BurnEngine::load(&specs)?))
}

#[cfg(not(feature = "test-engine"))]
fn test_engine(_models: &[ModelConfig]) -> Result<Arc<dyn Engine>, EngineSetupError> {
    Err(EngineSetupError::TestEngineNotBuilt)
}

#[cfg(feature = "test-engine")]
fn test_engine(models: &[ModelConfig]) -> Result<Arc<dyn Engine>, EngineSetupError> {
    let [model] = models else {
        return Err(EngineSetupError::OneTestModel);
    };
    let ModelBackend::Test { token_delay } = model.backend else {
        return Err(EngineSetupError::Mixed);
    };
    let config = TestEngineConfig {
        model: model.name.clone(),
        context_length: model.max_context.map_or(2048, |c| c.get()),
        token_delay,
        max_active: model.max_active.get(),
        max_queue: model.max_queue.get(),
    };
    Ok(Arc::new(TestEngine::new(config)?))
}
