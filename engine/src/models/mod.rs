//! The architectures the engine runs, one module per family, and their registry.
//!
//! A family ([`Family`]) owns everything specific to it: which Hugging Face `architectures`
//! and GGUF `general.architecture` names it answers to, its config parsing (with the shared
//! field readers of [`config`]), its GGUF → Hugging Face tensor-name map, and its model
//! ([`CausalLm`]): weights loaded by name and the forward pass, built from
//! [`crate::layers`]. The scheduler sees only [`Model`], which runs a batched step over
//! several sequences and their KV caches.
//!
//! Adding an architecture: one new file here implementing [`Family`] and [`CausalLm`], and
//! one line in the `families!` list below (see `docs/engine.md`).

pub mod config;

use burn::tensor::{DType, Device};
use rayon::prelude::*;

use crate::EngineError;
use crate::gguf::GgufFile;
use crate::layers::Loader;
pub use crate::layers::attention::{BatchItem, KvCache, Want};
use crate::spec::{KvCacheDtype, Quantize};
use crate::weights::Weights;
use config::{GgufMeta, HfConfig, ModelConfig};

/// Declares each family's module and lists its `Family` in [`FAMILIES`].
macro_rules! families {
    ($($module:ident :: $family:ident),* $(,)?) => {
        $(mod $module;)*
        /// Every supported architecture family, in lookup order.
        static FAMILIES: &[&dyn Family] = &[$(&$module::$family),*];
    };
}

// Registering an architecture is one line here: `<module>::<Family struct>`.
families! {
    llama::Llama,
    qwen3::Qwen3,
    phi3::Phi3,
    gemma::Gemma,
    bert::Bert,
}

/// One architecture family: names, config parsers, GGUF tensor names, model loader.
pub trait Family: Sync {
    /// The family's name (`llama`, `qwen3`, …), stored in [`ModelConfig::family`].
    fn name(&self) -> &'static str;
    /// The `config.json` `architectures[0]` values (and `model_type`s) it loads.
    fn hf_architectures(&self) -> &'static [&'static str];
    /// The GGUF `general.architecture` values it loads.
    fn gguf_architectures(&self) -> &'static [&'static str];
    /// Parses and validates a `config.json`.
    fn config_from_hf(&self, hf: &HfConfig) -> Result<ModelConfig, EngineError>;
    /// Parses and validates a GGUF file's metadata.
    fn config_from_gguf(&self, meta: &GgufMeta<'_>) -> Result<ModelConfig, EngineError>;
    /// The name a GGUF tensor is looked up under (the Hugging Face name).
    fn gguf_tensor_name(&self, gguf: &str) -> String;
    /// The head count of a GGUF tensor whose rows llama.cpp's converter permuted per head.
    fn gguf_permuted_heads(&self, _meta: &GgufMeta<'_>, _gguf: &str) -> Option<usize> {
        None
    }
    /// Builds the model from `config` (as this family parsed it).
    fn load(
        &self,
        config: &ModelConfig,
        loader: &Loader<'_>,
    ) -> Result<Box<dyn CausalLm>, EngineError>;
}

impl std::fmt::Debug for dyn Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A loaded model: what the scheduler calls.
pub trait CausalLm: Send + Sync {
    /// One forward pass over several sequences at once: every item's new tokens after the
    /// positions in its cache (appended to it). Returns, per item, what its
    /// [`BatchItem::want`] asks for: the logits of its last position, or the final hidden
    /// state of each new position.
    fn forward_batch(
        &self,
        items: &mut [BatchItem<'_>],
    ) -> Result<Vec<Option<Vec<f32>>>, EngineError>;
    /// How the projection weights are stored (`bf16`, `q8_0`, `f16` on a GPU, …).
    fn weight_format(&self) -> &'static str;
}

fn supported_hf() -> String {
    FAMILIES
        .iter()
        .flat_map(|f| f.hf_architectures().iter().filter(|a| a.contains("For")))
        .copied()
        .collect::<Vec<_>>()
        .join(", ")
}

fn supported_gguf() -> String {
    FAMILIES
        .iter()
        .flat_map(|f| f.gguf_architectures().iter())
        .copied()
        .collect::<Vec<_>>()
        .join(", ")
}

/// The family that loads a `config.json`.
pub(crate) fn family_for_hf(hf: &HfConfig) -> Result<&'static dyn Family, EngineError> {
    let arch = hf.architecture()?;
    FAMILIES
        .iter()
        .find(|f| f.hf_architectures().contains(&arch.as_str()))
        .copied()
        .ok_or_else(|| {
            hf.err(format!(
                "`architectures`: `{arch}` is not supported (supported: {})",
                supported_hf()
            ))
        })
}

/// The family that loads a GGUF file.
pub(crate) fn family_for_gguf(file: &GgufFile) -> Result<&'static dyn Family, EngineError> {
    let arch = file.architecture()?;
    FAMILIES
        .iter()
        .find(|f| f.gguf_architectures().contains(&arch))
        .copied()
        .ok_or_else(|| {
            file.err(format!(
                "metadata `general.architecture`: `{arch}` is not supported (supported: {})",
                supported_gguf()
            ))
        })
}

fn family_named(name: &str) -> Result<&'static dyn Family, EngineError> {
    FAMILIES
        .iter()
        .find(|f| f.name() == name)
        .copied()
        .ok_or_else(|| EngineError::Inference(format!("no architecture family `{name}`")))
}

/// The tensors of a GGUF file, registered under its architecture's names.
pub(crate) fn gguf_weights(file: &GgufFile) -> Result<Weights, EngineError> {
    let family = family_for_gguf(file)?;
    let meta = GgufMeta::new(file)?;
    Weights::from_gguf(
        file,
        |name| family.gguf_tensor_name(name),
        |name| family.gguf_permuted_heads(&meta, name),
    )
}

/// GGUF → Hugging Face name for the tensors every Llama-like decoder shares
/// (`blk.3.attn_q.weight` → `model.layers.3.self_attn.q_proj.weight`); `extra` maps a
/// family's own block tensor kinds first. Names without a counterpart (`rope_freqs.weight`)
/// are kept.
pub(crate) fn llama_like_gguf_name(
    gguf: &str,
    extra: impl Fn(&str) -> Option<&'static str>,
) -> String {
    match gguf {
        "token_embd.weight" => return "model.embed_tokens.weight".into(),
        "output_norm.weight" => return "model.norm.weight".into(),
        "output.weight" => return "lm_head.weight".into(),
        _ => {}
    }
    let mut parts = gguf.splitn(4, '.');
    if let (Some("blk"), Some(layer), Some(kind), Some(suffix)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    {
        let hf = match extra(kind) {
            Some(hf) => hf,
            None => match kind {
                "attn_norm" => "input_layernorm",
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "ffn_norm" => "post_attention_layernorm",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                _ => return gguf.into(),
            },
        };
        return format!("model.layers.{layer}.{hf}.{suffix}");
    }
    gguf.into()
}

/// A loaded model on one device.
pub struct Model {
    pub config: ModelConfig,
    dtype: DType,
    /// The GPU's KV pages, shared by every cache of the model (`None`: the CPU backend, `f32`
    /// compute, whose caches are host pages).
    gpu_pool: Option<std::sync::Arc<crate::layers::gpu_pages::GpuPool>>,
    /// The element type of the caches' pages.
    kv_dtype: KvCacheDtype,
    inner: Box<dyn CausalLm>,
}

impl Model {
    /// Builds the model from `weights` with its family's loader, checking every tensor's
    /// presence and shape.
    pub fn load(
        config: ModelConfig,
        weights: &Weights,
        device: &Device,
        dtype: DType,
        quantize: Option<Quantize>,
    ) -> Result<Model, EngineError> {
        let loader = Loader {
            weights,
            device,
            dtype,
            quantize,
        };
        let inner = family_named(config.family)?.load(&config, &loader)?;
        let gpu_pool = (!crate::layers::attention::is_paged(device, dtype))
            .then(|| crate::layers::gpu_pages::GpuPool::new(config.num_layers, device, dtype));
        Ok(Model {
            config,
            dtype,
            gpu_pool,
            kv_dtype: KvCacheDtype::default(),
            inner,
        })
    }

    /// Makes [`Model::new_cache`]'s caches hold `dtype` elements (CPU only; wgpu caches in
    /// `f16`). Caches made before keep theirs.
    pub fn set_kv_cache_dtype(&mut self, dtype: KvCacheDtype) {
        self.kv_dtype = dtype;
    }

    /// An empty cache for a new sequence.
    pub fn new_cache(&self) -> KvCache {
        match &self.gpu_pool {
            Some(pool) => KvCache::on_gpu(self.config.num_layers, pool),
            None => KvCache::new(self.config.num_layers, self.kv_dtype),
        }
    }

    /// Holds the GPU's KV pool to `blocks` pages (the KV budget's block count) as it grows,
    /// so that the memory it takes is the budget's; no effect on the CPU, whose pages are
    /// allocated one by one.
    pub fn limit_kv_pages(&self, blocks: usize) {
        if let Some(pool) = &self.gpu_pool {
            pool.set_limit(blocks);
        }
    }

    /// How the projection weights are stored (`bf16`, `q8_0`, `f16` on a GPU, …).
    pub fn weight_format(&self) -> &'static str {
        self.inner.weight_format()
    }

    /// The width of its hidden states (the length of its embeddings).
    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    /// Bytes one cached position takes across all layers.
    pub fn kv_bytes_per_token(&self) -> usize {
        let elem = match (&self.gpu_pool, self.dtype) {
            (None, _) => self.kv_dtype.bytes(),
            (Some(_), DType::F16) => 2,
            (Some(_), _) => 4,
        };
        crate::kv::kv_bytes_per_token(
            self.config.num_layers,
            self.config.num_kv_heads,
            self.config.head_dim,
            elem,
        )
    }

    /// Runs `tokens` through the model after the positions already in `cache`, appends their
    /// keys and values to it, and returns the logits of the last position (`f32`, vocab-sized).
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>, EngineError> {
        let mut items = [BatchItem {
            tokens,
            cache,
            want: Want::Logits,
        }];
        self.forward_batch(&mut items)?
            .pop()
            .flatten()
            .ok_or_else(|| EngineError::Inference("the batch returned no logits".into()))
    }

    /// One forward pass over several sequences at once (see [`CausalLm::forward_batch`]).
    pub fn forward_batch(
        &self,
        items: &mut [BatchItem<'_>],
    ) -> Result<Vec<Option<Vec<f32>>>, EngineError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        // The pass runs on a thread of rayon's pool (`scope` called from outside the pool
        // hands its closure to a pool thread and waits; inside it, it runs in place), so
        // the pass's parallel kernels split their work from inside the pool by work
        // stealing. Called from an outside thread (the engine's worker), every parallel
        // kernel would hand a job into the pool and sleep until it was done: two context
        // switches per kernel call, several hundred per token on a 30-layer model.
        rayon::scope(|_| {
            let groups = self.decode_groups(items);
            if groups < 2 {
                return self.inner.forward_batch(items);
            }
            // Each group is a whole forward pass on one thread of the pool (its kernels'
            // own splits rarely find an idle thread to steal them); see `decode_groups`.
            let per = items.len().div_ceil(groups);
            let parts: Vec<_> = items
                .par_chunks_mut(per)
                .map(|group| self.inner.forward_batch(group))
                .collect();
            let mut out = Vec::with_capacity(items.len());
            for part in parts {
                out.extend(part?);
            }
            Ok(out)
        })
    }

    /// How many groups of sequences a decode step runs in, each a forward pass of its own
    /// on one thread of the pool: one (the whole batch in one pass, every kernel split over
    /// the pool) unless this is the CPU backend, a small model and a large decode batch.
    ///
    /// A small model's kernels are a few microseconds each at 16 rows, so a pass that splits
    /// every one of them over the pool (several per layer) spends a fifth of its time
    /// handing work over and waiting for the slowest half; split by sequences instead, the
    /// threads meet once per step. Each group reads all the weights, which costs more than
    /// it saves on a larger model (1B shapes: −5 to 0 %; SmolLM2-135M, 16 streams: +14 to
    /// +33 %, bench/results/cpu.md). A row's results do not depend on the rows beside it
    /// (every kernel is row-independent), so grouping changes no bit of any output.
    fn decode_groups(&self, items: &[BatchItem<'_>]) -> usize {
        let threads = rayon::current_num_threads();
        if self.gpu_pool.is_some()
            || self.config.hidden_size > SMALL_HIDDEN
            || items.iter().any(|it| it.tokens.len() != 1)
        {
            return 1;
        }
        threads.min(items.len() / MIN_GROUP).max(1)
    }
}

/// Hidden sizes up to this count as a small model for [`Model::decode_groups`] (SmolLM2-135M
/// and -360M, Qwen2.5-0.5B, Qwen3-0.6B, Gemma 3 270M).
const SMALL_HIDDEN: usize = 1024;

/// Sequences per group at least, when a decode step splits its batch over the pool (fewer
/// rows per group read the weights too often for what they compute).
const MIN_GROUP: usize = 8;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Models whose forward passes take different paths, for tests that compare passes: the
    /// embedded default model (installed into `dir`), Gemma 2 (sliding window, logit
    /// soft-cap, bf16) and a `Q4_K_M` GGUF (Qwen 3's q/k norms, K-quant kernels).
    pub(crate) fn layout_variants(dir: &std::path::Path) -> [std::path::PathBuf; 3] {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        [
            crate::default_model::install(dir).unwrap_or_else(|e| panic!("{e}")),
            fixtures.join("gemma2_softcap_bf16"),
            fixtures.join("gguf/qwen3_qknorm-q4_k_m"),
        ]
    }

    /// A small model's decode step split into groups of sequences (one pass per pool thread)
    /// computes, for every sequence, bitwise the logits of that sequence's step alone, and
    /// leaves the same caches: grouping is invisible in the output. On the default model,
    /// Gemma 2 (sliding window, soft-capping) and a `Q4_K_M` GGUF, in a pool of 2 threads
    /// with 17 sequences (groups of 9 and 8) of different lengths.
    #[test]
    fn grouped_decode_steps_are_bitwise_each_sequence_alone() {
        use crate::DeviceChoice;
        use crate::loader::{Integrity, load_dir};
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let paths = layout_variants(dir.path());
        pool.install(|| {
            for path in paths {
                let m = load_dir(&path, DeviceChoice::Cpu, Integrity::Unverified, None, None)
                    .unwrap_or_else(|e| panic!("{e}"));
                let model = &m.model;
                let run = |cache: &mut KvCache, tokens: &[u32]| {
                    model
                        .forward(tokens, cache)
                        .unwrap_or_else(|e| panic!("{e}"))
                };
                let mut caches: Vec<KvCache> = (0..17u32)
                    .map(|i| {
                        let prompt: Vec<u32> =
                            (0..3 + 5 * i).map(|j| 40 + (i + j * 7) % 50).collect();
                        let mut cache = model.new_cache();
                        run(&mut cache, &prompt);
                        cache
                    })
                    .collect();
                let mut alone: Vec<KvCache> = caches.iter().map(KvCache::fork).collect();
                let next: Vec<[u32; 1]> = (0..17).map(|i| [41 + i % 5]).collect();
                let want: Vec<Vec<f32>> = alone
                    .iter_mut()
                    .zip(&next)
                    .map(|(cache, t)| run(cache, t))
                    .collect();
                let mut items: Vec<BatchItem<'_>> = caches
                    .iter_mut()
                    .zip(&next)
                    .map(|(cache, t)| BatchItem {
                        tokens: t,
                        cache,
                        want: Want::Logits,
                    })
                    .collect();
                assert_eq!(model.decode_groups(&items), 2, "{}", path.display());
                let got = model
                    .forward_batch(&mut items)
                    .unwrap_or_else(|e| panic!("{e}"));
                drop(items);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    let g = g.as_deref().unwrap_or_else(|| panic!("no logits for {i}"));
                    assert_eq!(bits(g), bits(w), "{}: sequence {i}", path.display());
                }
                // The grouped step left the same caches: the next step agrees too.
                for (i, (a, b)) in caches.iter_mut().zip(&mut alone).enumerate() {
                    assert_eq!(
                        bits(&run(a, &[46])),
                        bits(&run(b, &[46])),
                        "{}: {i}",
                        path.display()
                    );
                }
            }
        });
    }

    #[test]
    fn maps_gguf_names_to_hf_names() {
        let none = |_: &str| None;
        assert_eq!(
            llama_like_gguf_name("token_embd.weight", none),
            "model.embed_tokens.weight"
        );
        assert_eq!(
            llama_like_gguf_name("blk.11.attn_k.bias", none),
            "model.layers.11.self_attn.k_proj.bias"
        );
        assert_eq!(
            llama_like_gguf_name("blk.0.ffn_norm.weight", none),
            "model.layers.0.post_attention_layernorm.weight"
        );
        assert_eq!(
            llama_like_gguf_name("rope_freqs.weight", none),
            "rope_freqs.weight"
        );
        assert_eq!(
            llama_like_gguf_name("blk.2.ffn_up.weight", |k| (k == "ffn_up")
                .then_some("mlp.gate_up_proj")),
            "model.layers.2.mlp.gate_up_proj.weight"
        );
    }
}
