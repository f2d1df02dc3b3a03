//! What the daemon asks the engine to load.

use std::path::PathBuf;

/// Where a model runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// The best wgpu hardware adapter, else the CPU backend (with one log line saying why).
    #[default]
    Auto,
    /// A wgpu adapter; fail if none.
    Gpu,
    /// burn's pure-Rust CPU backend.
    Cpu,
}

/// One model to serve.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    /// The name clients use in `model` fields.
    pub name: String,
    /// A Hugging Face model directory.
    pub path: PathBuf,
    pub device: DeviceChoice,
    /// Verify `airlock-manifest.json` before loading. `false` only by explicit operator choice.
    pub verify_manifest: bool,
    /// The SHA-256 (hex) `airlock-manifest.json` itself must have (`verify_manifest` only).
    /// The manifest lives beside the weights it vouches for: without a pin, whoever can
    /// rewrite the weights can rewrite the manifest to match.
    pub manifest_sha256: Option<String>,
    /// Requests that may wait for a sequence slot before `submit` answers `QueueFull`.
    pub max_queue: usize,
    /// Sequences decoded at once.
    pub max_active: usize,
    /// Cap on the context length, below the model's own (`None`: the model's).
    pub max_context: Option<usize>,
    /// Most prompt tokens one sequence prefills per step, so a long prompt is processed in
    /// chunks between other sequences' decode steps instead of stalling them.
    pub prefill_chunk: usize,
    /// Most tokens (decode tokens plus prefill chunks) in one batched forward pass.
    pub max_batch_tokens: usize,
    /// The KV-cache budget in bytes (`None`: `max_active` × context length × bytes per
    /// cached position, so no sequence is ever preempted).
    pub kv_cache_bytes: Option<usize>,
    /// Quantize the projection weights (LM head included) to 8- or 4-bit blocks at load
    /// (on a GPU, blocks in GPU memory with 8-bit values; `None`: keep the file's precision).
    pub quantize: Option<Quantize>,
    /// How embeddings are pooled when the directory has no `1_Pooling/config.json` (which
    /// wins; a contradicting setting is refused). `None`: `last`.
    pub pooling: Option<crate::Pooling>,
    /// Whether the model serves embeddings (`None`: when its directory has
    /// `1_Pooling/config.json` or `pooling` is set). A chat model's hidden states are no
    /// trained embedding space, so it serves none unless the operator says so.
    pub embeddings: Option<bool>,
    /// Keep the KV caches of ended sequences so that a later prompt of the same tenant
    /// that starts with the same tokens prefills only the rest (`engine/src/engine/prefix.rs`).
    pub prefix_cache: bool,
    /// Prompt-lookup speculative decoding for greedy requests (`None`: off).
    pub speculative: Option<Speculative>,
    /// The CPU backend's KV-cache element type.
    pub kv_cache_dtype: KvCacheDtype,
}

impl ModelSpec {
    /// Default [`ModelSpec::prefill_chunk`].
    pub const DEFAULT_PREFILL_CHUNK: usize = 256;
    /// Default [`ModelSpec::max_batch_tokens`].
    pub const DEFAULT_MAX_BATCH_TOKENS: usize = 512;

    /// A model served with the default queue, slots and scheduling limits.
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>) -> ModelSpec {
        ModelSpec {
            name: name.into(),
            path: path.into(),
            device: DeviceChoice::Auto,
            verify_manifest: true,
            manifest_sha256: None,
            max_queue: 64,
            max_active: 8,
            max_context: None,
            prefill_chunk: Self::DEFAULT_PREFILL_CHUNK,
            max_batch_tokens: Self::DEFAULT_MAX_BATCH_TOKENS,
            kv_cache_bytes: None,
            quantize: None,
            pooling: None,
            embeddings: None,
            prefix_cache: true,
            speculative: None,
            kv_cache_dtype: KvCacheDtype::F16,
        }
    }
}

/// The element type of the CPU backend's KV cache. wgpu caches in its compute precision,
/// `f16`, whatever this says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KvCacheDtype {
    /// IEEE half precision, as llama.cpp's default cache (`--cache-type-k f16`): half the
    /// memory of `f32`, so twice the positions in the same budget, and half the bytes every
    /// decode step reads; attention still computes in `f32`.
    #[default]
    F16,
    /// Single precision, the activations' own: bit for bit what an `f32` reference computes
    /// (the parity tests against `transformers` and llama.cpp's `f32` cache use it).
    F32,
}

impl KvCacheDtype {
    /// Bytes one cached element takes.
    pub fn bytes(self) -> usize {
        match self {
            KvCacheDtype::F16 => 2,
            KvCacheDtype::F32 => 4,
        }
    }
}

/// Prompt-lookup ("n-gram") speculative decoding, as vLLM's `ngram` speculator and
/// llama.cpp's `lookup`: a greedy sequence whose last `n` tokens (`max_ngram` down to
/// `min_ngram`) occurred earlier in its prompt or output drafts the tokens that followed
/// them there (at most `max_draft`), and one forward pass checks them all. The output is the
/// one plain greedy decoding gives, token for token (CPU device only: its kernels compute
/// every row the same whatever the row count).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Speculative {
    /// Most tokens drafted per step (at least 1).
    pub max_draft: usize,
    /// Shortest n-gram looked up (at least 1).
    pub min_ngram: usize,
    /// Longest n-gram looked up (at least `min_ngram`).
    pub max_ngram: usize,
}

impl Default for Speculative {
    /// Up to 3 tokens from a 3- or 2-gram match (`bench/results/speculative.md`): a
    /// 1-gram match drafts mostly rejected tokens on output that does not copy its input,
    /// and a pending token plus 3 drafts fill one 4-row tile of the quantized kernels.
    fn default() -> Speculative {
        Speculative {
            max_draft: 3,
            min_ngram: 2,
            max_ngram: 3,
        }
    }
}

/// Weight quantization applied at load: llama.cpp-compatible 32-element blocks with an `f16`
/// scale each (on a GPU, burn's block-quantized tensor: `layers::linear`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantize {
    /// `Q8_0`: 8-bit weights, 8.5 bits per weight; logits stay close to the file's.
    Q8,
    /// `Q4_0`: 4-bit weights, 4.5 bits per weight; fastest decode, visibly lower quality.
    Q4,
}

impl Quantize {
    /// The config spelling.
    pub fn name(self) -> &'static str {
        match self {
            Quantize::Q8 => "q8",
            Quantize::Q4 => "q4",
        }
    }
}
