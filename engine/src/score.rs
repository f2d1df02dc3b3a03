//! Teacher-forced scoring: the logits a model gives after each token of a fixed sequence.
//!
//! The quantization quality report (`bench` bin `quant-quality`) runs a reference model and
//! a quantized one side by side over the same tokens and compares their logits position by
//! position, and computes perplexity; nothing in the serving path uses this.

use std::path::Path;

use crate::loader::{Integrity, LoadedModel, load_dir};
use crate::models::KvCache;
use crate::{DeviceChoice, EngineError, Quantize};

/// One model and the KV cache of the sequence fed to it so far.
pub struct Scorer {
    loaded: LoadedModel,
    cache: KvCache,
}

impl Scorer {
    /// Loads `dir` (manifest not checked: the report compares files the operator chose).
    pub fn load(
        dir: &Path,
        device: DeviceChoice,
        quantize: Option<Quantize>,
    ) -> Result<Scorer, EngineError> {
        let loaded = load_dir(dir, device, Integrity::Unverified, None, quantize)?;
        let cache = loaded.model.new_cache();
        Ok(Scorer { loaded, cache })
    }

    /// e.g. `cpu (flex, f32, q8_0 weights)`.
    pub fn device(&self) -> &str {
        &self.loaded.device
    }

    pub fn context_length(&self) -> usize {
        self.loaded.context_length
    }

    /// Token ids of `text`, with the BOS token when the model's tokenizer adds one.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        self.loaded.tokenizer.encode_text(text)
    }

    /// Forgets every token fed so far.
    pub fn reset(&mut self) {
        self.cache = self.loaded.model.new_cache();
    }

    /// Feeds `tokens` after the ones fed so far and returns the `f32` logits at the last of
    /// them (the model's prediction for the next token).
    pub fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        self.loaded.model.forward(tokens, &mut self.cache)
    }
}
