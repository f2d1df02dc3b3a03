//! Airlock's inference engine: decoder-only language models (one module per architecture
//! family in `models/`, built from the shared `layers/`) run with burn, on wgpu GPUs
//! (Vulkan, Metal, DX12) or burn's pure-Rust CPU backend.
//!
//! The gateway talks to it only through [`Engine`] and the types in [`api`]; the developer
//! CLI uses [`generate_once`], [`write_manifest`] and [`default_model::install`].

pub mod api;
mod constraint;
pub mod default_model;
mod detok;
mod device;
mod embed;
mod engine;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod generate;
mod gguf;
pub mod inspect;
pub mod kernels;
mod kv;
mod layers;
mod loader;
mod manifest;
mod models;
mod pages;
pub mod quant;
mod sampling;
mod scheduler;
mod score;
mod sequence;
mod spec;
mod tensor_file;
#[cfg(any(test, feature = "test-engine"))]
pub mod test_engine;
mod tokenizer;
mod weights;

// The shared config module under its former name, for the tokenizer's imports.
use models::config as hf_config;

pub use api::embeddings_only;
pub use api::{
    CancelToken, ChatMessage, ChatToolCall, ChatTools, EmbedRequest, Embeddings, EmbeddingsSender,
    Engine, EngineStatus, FinishReason, GenerateRequest, Generation, GenerationSender,
    GenerationTimings, Grammar, GrammarSpec, MAX_N, MAX_STOP_BYTES, MAX_STOP_SEQUENCES,
    MAX_TOP_LOGPROBS, ModelFeatures, ModelInfo, PendingEmbeddings, Pooling, Prepared, Prompt,
    SamplingParams, TokenEvent, TokenLogprob, ToolFormat, ToolFunction, TopLogprob, Usage,
};
pub use device::gpu_available;
pub use engine::BurnEngine;
pub use error::EngineError;
pub use generate::{GenerateOptions, GenerateReport, GenerateTimings, generate_once};
pub use inspect::{ModelReport, inspect};
pub use manifest::{
    FILE_MANIFEST_SUFFIX, MANIFEST_FILE, manifest_path, verify_manifest, write_manifest,
};
pub use score::Scorer;
pub use spec::{DeviceChoice, KvCacheDtype, ModelSpec, Quantize, Speculative};
