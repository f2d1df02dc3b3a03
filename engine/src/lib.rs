//! Airlock's inference engine: Hugging Face Llama-family models run with burn, on wgpu GPUs
//! (Vulkan, Metal, DX12) or burn's pure-Rust CPU backend.
//!
//! The gateway talks to it only through [`Engine`] and the types in [`api`]; the developer
//! CLI uses [`generate_once`] and [`write_manifest`].

pub mod api;
pub mod default_model;
mod engine;
mod error;
mod spec;
pub mod test_engine;

pub use api::{
    CancelToken, ChatMessage, Engine, EngineStatus, FinishReason, GenerateRequest, Generation,
    GenerationSender, GenerationTimings, ModelInfo, Prompt, SamplingParams, TokenEvent, Usage,
};
pub use engine::BurnEngine;
pub use error::EngineError;
pub use spec::{DeviceChoice, ModelSpec};
