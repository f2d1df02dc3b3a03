//! The architecture-neutral part of a model's configuration, and the helpers every
//! architecture's parser reads its fields with: [`HfConfig`] over a Hugging Face
//! `config.json`, [`GgufMeta`] over a GGUF file's `{arch}.*` metadata. Each reports a bad
//! field as an [`EngineError::Load`] naming the file and the field.
//!
//! HF configs carry dozens of fields we do not use (and new ones appear with every
//! `transformers` release), so unknown fields are ignored rather than denied; every field we
//! *do* read is checked.

use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value as Json;

use crate::EngineError;
use crate::gguf::{GgufFile, TensorInfo, Value};
use crate::layers::rope::{Llama3Scaling, RopeScaling};
use crate::tensor_file::WeightDType;

/// The largest attention head dimension accepted (real models use 64 to 576): a hostile
/// `head_dim` (or `attention.key_length`) of 385875976, found by the `gguf` fuzz target,
/// made the RoPE table allocate 1.5 GB.
pub(crate) const MAX_HEAD_DIM: usize = 1024;

/// A validated model configuration: what the scheduler, the KV-cache budget and the shared
/// layers need. Architecture-specific settings live in the architecture's own model.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// The registered architecture family that parsed it (`llama`, `qwen3`, `phi3`, …).
    pub architecture: &'static str,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Dimensions RoPE rotates at the start of each head (`head_dim` unless a partial
    /// rotary factor says less).
    pub rotary_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    /// The model's own context length, already capped to a sliding window when the
    /// architecture implements full attention only (equal to windowed attention inside it).
    pub context_length: usize,
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v projections (Qwen2, Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama with `attention_bias`).
    pub o_bias: bool,
    /// Biases on the MLP projections (Llama with `mlp_bias`).
    pub mlp_bias: bool,
    /// `eos_token_id` from config.json (an int or a list), or the GGUF's EOS/EOT/EOM ids.
    pub eos_token_ids: Vec<u32>,
    /// A bidirectional encoder (BERT): it computes embeddings only, each input in one pass
    /// (no logits, no KV cache carried between passes).
    pub encoder: bool,
    /// The pooling the weights file itself declares (GGUF `{arch}.pooling_type`).
    pub pooling: Option<crate::Pooling>,
    /// The [`crate::models::Family`] that parsed it and loads the model.
    pub(crate) family: &'static str,
    /// The family's own settings (what only its forward pass needs), downcast by its loader.
    pub(crate) extra: Option<Arc<dyn Any + Send + Sync>>,
}

impl ModelConfig {
    /// Reads and validates `dir/config.json` with the parser of the architecture it names.
    pub fn from_dir(dir: &Path) -> Result<ModelConfig, EngineError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| EngineError::Load {
            path: path.clone(),
            reason: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, &path)
    }

    /// Parses the text of a `config.json`; `path` is used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<ModelConfig, EngineError> {
        let hf = HfConfig::parse(text, path)?;
        let family = crate::models::family_for_hf(&hf)?;
        let mut config = family.config_from_hf(&hf)?;
        config.family = family.name();
        Ok(config)
    }

    /// The configuration of a GGUF file, from its `{arch}.*` metadata and tensor shapes.
    pub fn from_gguf(file: &GgufFile) -> Result<ModelConfig, EngineError> {
        let family = crate::models::family_for_gguf(file)?;
        let mut config = family.config_from_gguf(&GgufMeta::new(file)?)?;
        config.family = family.name();
        Ok(config)
    }

    /// The family's settings of type `T` (set by its config parser).
    pub(crate) fn extra<T: Any>(&self) -> Result<&T, EngineError> {
        self.extra
            .as_deref()
            .and_then(|e| e.downcast_ref::<T>())
            .ok_or_else(|| {
                EngineError::Inference(format!(
                    "the `{}` configuration lacks its architecture settings",
                    self.family
                ))
            })
    }

    /// The RoPE inverse frequencies, one per rotated pair, scaling applied (for positions
    /// inside the original context, where scalings with two factor sets differ). For tests
    /// and the fuzz targets; the models build theirs through `layers::rope`.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn inv_freq(&self) -> Vec<f64> {
        self.rope_scaling
            .inv_freq(self.rope_theta, self.rotary_dim, false)
    }

    /// Why this configuration is refused by an architecture that rotates whole heads
    /// (`None` when it does).
    pub(crate) fn partial_rotary_refusal(&self) -> Option<String> {
        (self.rotary_dim != self.head_dim).then(|| {
            format!(
                "partial rotary embeddings ({} of {} dimensions) are not supported for `{}` \
                 (only for phi3)",
                self.rotary_dim, self.head_dim, self.architecture
            )
        })
    }
}

/// Reads a token id field that may be an int, a list of ints or null.
pub(crate) fn token_ids(value: Option<&Json>) -> Option<Vec<u32>> {
    match value? {
        Json::Number(n) => n
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .map(|v| vec![v]),
        Json::Array(items) => Some(
            items
                .iter()
                .filter_map(|v| v.as_u64().and_then(|v| u32::try_from(v).ok()))
                .collect(),
        ),
        _ => None,
    }
}

/// A parsed `config.json` with typed, checked field accessors.
pub struct HfConfig {
    path: PathBuf,
    obj: serde_json::Map<String, Json>,
}

impl HfConfig {
    pub fn parse(text: &str, path: &Path) -> Result<HfConfig, EngineError> {
        let err = |reason: String| EngineError::Load {
            path: path.to_path_buf(),
            reason,
        };
        let value: Json =
            serde_json::from_str(text).map_err(|e| err(format!("invalid JSON: {e}")))?;
        match value {
            Json::Object(obj) => Ok(HfConfig {
                path: path.to_path_buf(),
                obj,
            }),
            _ => Err(err("invalid JSON: not an object".into())),
        }
    }

    /// The `config.json` this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An error about `field` of this file.
    pub fn err(&self, reason: impl Into<String>) -> EngineError {
        EngineError::Load {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    /// A field, absent when missing or `null`.
    pub fn get(&self, field: &str) -> Option<&Json> {
        self.obj.get(field).filter(|v| !v.is_null())
    }

    /// Whether the file names `field` at all (`null` included): where transformers gives a
    /// missing field a default but reads `null` as "off" (Gemma 2's soft-caps).
    pub fn has(&self, field: &str) -> bool {
        self.obj.contains_key(field)
    }

    /// `rope_parameters` of the transformers-5 layout; with per-layer-type parameters
    /// (Gemma 3: `full_attention` / `sliding_attention`), those of the global layers.
    pub fn rope_parameters(&self) -> Option<&Json> {
        let p = self.get("rope_parameters")?;
        Some(
            p.get("full_attention")
                .filter(|f| !f.is_null())
                .unwrap_or(p),
        )
    }

    /// `architectures[0]`, else `model_type`.
    pub fn architecture(&self) -> Result<String, EngineError> {
        self.get("architectures")
            .and_then(Json::as_array)
            .and_then(|a| a.first())
            .and_then(Json::as_str)
            .or_else(|| self.get("model_type").and_then(Json::as_str))
            .map(str::to_owned)
            .ok_or_else(|| self.err("`architectures`: missing"))
    }

    /// An optional non-negative integer.
    pub fn opt_usize(&self, field: &str) -> Result<Option<usize>, EngineError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|v| usize::try_from(v).ok())
                .map(Some)
                .ok_or_else(|| self.err(format!("`{field}`: {v} is not a non-negative integer"))),
        }
    }

    /// A required positive integer.
    pub fn need(&self, field: &str) -> Result<usize, EngineError> {
        match self.opt_usize(field)? {
            Some(0) => Err(self.err(format!("`{field}`: must be positive"))),
            Some(v) => Ok(v),
            None => Err(self.err(format!("`{field}`: missing"))),
        }
    }

    pub fn opt_f64(&self, field: &str) -> Result<Option<f64>, EngineError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(format!("`{field}`: {v} is not a number"))),
        }
    }

    pub fn opt_bool(&self, field: &str) -> Result<Option<bool>, EngineError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(format!("`{field}`: {v} is not a boolean"))),
        }
    }

    pub fn opt_str(&self, field: &str) -> Result<Option<&str>, EngineError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.err(format!("`{field}`: {v} is not a string"))),
        }
    }

    /// Refuses an activation other than `allowed` (checked when the field is present).
    pub fn require_act(&self, field: &str, allowed: &[&str]) -> Result<(), EngineError> {
        match self.opt_str(field)? {
            Some(act) if !allowed.contains(&act) => Err(self.err(format!(
                "`{field}`: `{act}` is not supported (supported: {})",
                allowed.join(", ")
            ))),
            _ => Ok(()),
        }
    }

    /// The fields every Llama-like decoder shares, parsed and validated, for `architecture`.
    /// Architectures adjust the result (biases, windows, scalings) in their own parser.
    pub fn common(&self, architecture: &'static str) -> Result<ModelConfig, EngineError> {
        let vocab_size = self.need("vocab_size")?;
        let hidden_size = self.need("hidden_size")?;
        let intermediate_size = self.need("intermediate_size")?;
        let num_layers = self.need("num_hidden_layers")?;
        let num_heads = self.need("num_attention_heads")?;
        let num_kv_heads = match self.opt_usize("num_key_value_heads")? {
            None => num_heads,
            Some(_) => self.need("num_key_value_heads")?,
        };
        if num_heads % num_kv_heads != 0 {
            return Err(self.err(format!(
                "`num_key_value_heads`: {num_kv_heads} does not divide num_attention_heads \
                 {num_heads}"
            )));
        }
        let head_dim = match self.opt_usize("head_dim")? {
            Some(_) => self.need("head_dim")?,
            None if hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => {
                return Err(self.err(format!(
                    "`hidden_size`: {hidden_size} is not a multiple of num_attention_heads \
                     {num_heads} and `head_dim` is not given"
                )));
            }
        };
        if head_dim > MAX_HEAD_DIM {
            return Err(self.err(format!("`head_dim`: {head_dim} exceeds {MAX_HEAD_DIM}")));
        }
        if head_dim % 2 != 0 {
            return Err(self.err(format!("`head_dim`: {head_dim} must be even for RoPE")));
        }
        let rms_norm_eps = self.opt_f64("rms_norm_eps")?.unwrap_or(1e-6);
        if !(rms_norm_eps.is_finite() && rms_norm_eps > 0.0) {
            return Err(self.err(format!("`rms_norm_eps`: {rms_norm_eps} must be positive")));
        }
        let params_theta = self
            .rope_parameters()
            .and_then(|p| p.get("rope_theta"))
            .and_then(Json::as_f64);
        let rope_theta = self
            .opt_f64("rope_theta")?
            .or(params_theta)
            .unwrap_or(10_000.0);
        if !(rope_theta.is_finite() && rope_theta > 1.0) {
            return Err(self.err(format!("`rope_theta`: {rope_theta} must be > 1")));
        }
        let partial = match self.opt_f64("partial_rotary_factor")? {
            Some(f) => Some(f),
            None => self
                .get("rope_parameters")
                .and_then(|p| p.get("partial_rotary_factor"))
                .and_then(Json::as_f64),
        };
        let rotary_dim = match partial {
            None => head_dim,
            Some(f) => {
                let rd = (head_dim as f64 * f) as usize;
                if !(f > 0.0 && f <= 1.0) || rd == 0 || !rd.is_multiple_of(2) {
                    return Err(self.err(format!(
                        "`partial_rotary_factor`: {f} must be in (0, 1] and leave an even, \
                         non-zero number of rotated dimensions (head_dim {head_dim})"
                    )));
                }
                rd
            }
        };
        let context_length = self.need("max_position_embeddings")?;
        let attention_bias = self.opt_bool("attention_bias")?.unwrap_or(false);
        Ok(ModelConfig {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rotary_dim,
            rms_norm_eps,
            rope_theta,
            rope_scaling: self.rope_scaling(rotary_dim, context_length)?,
            context_length,
            tie_word_embeddings: self.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            qkv_bias: attention_bias,
            o_bias: attention_bias,
            mlp_bias: self.opt_bool("mlp_bias")?.unwrap_or(false),
            eos_token_ids: token_ids(self.get("eos_token_id")).unwrap_or_default(),
            encoder: false,
            pooling: None,
            family: architecture,
            extra: None,
        })
    }

    /// `sliding_window` as a positive size, when set.
    pub fn sliding_window(&self) -> Option<usize> {
        self.get("sliding_window")
            .and_then(Json::as_u64)
            .map(|w| usize::try_from(w).unwrap_or(usize::MAX))
            .filter(|&w| w > 0)
    }

    /// `rope_scaling` (transformers 4 layout) or `rope_parameters` (transformers 5).
    fn rope_scaling(
        &self,
        head_dim: usize,
        max_positions: usize,
    ) -> Result<RopeScaling, EngineError> {
        let value = match (self.get("rope_scaling"), self.rope_parameters()) {
            (Some(s), _) => s,
            (None, Some(p)) => p,
            (None, None) => return Ok(RopeScaling::None),
        };
        let obj = value
            .as_object()
            .ok_or_else(|| self.err("`rope_scaling`: must be an object or null"))?;
        let kind = obj
            .get("rope_type")
            .or_else(|| obj.get("type"))
            .and_then(Json::as_str)
            .ok_or_else(|| self.err("`rope_scaling.rope_type`: missing"))?;
        let num = |field: &str| -> Result<f64, EngineError> {
            obj.get(field)
                .and_then(Json::as_f64)
                .filter(|v| v.is_finite() && *v > 0.0)
                .ok_or_else(|| {
                    self.err(format!(
                        "`rope_scaling.{field}`: missing or not a positive number"
                    ))
                })
        };
        match kind {
            "default" => Ok(RopeScaling::None),
            "linear" => Ok(RopeScaling::Linear(num("factor")?)),
            "llama3" => {
                let s = Llama3Scaling {
                    factor: num("factor")?,
                    low_freq_factor: num("low_freq_factor")?,
                    high_freq_factor: num("high_freq_factor")?,
                    original_max_position_embeddings: num("original_max_position_embeddings")?,
                };
                if s.high_freq_factor <= s.low_freq_factor {
                    return Err(
                        self.err("`rope_scaling.high_freq_factor`: must exceed low_freq_factor")
                    );
                }
                Ok(RopeScaling::Llama3(s))
            }
            "longrope" | "su" => {
                let factors = |field: &str| -> Result<Vec<f64>, EngineError> {
                    let list = obj.get(field).and_then(Json::as_array).ok_or_else(|| {
                        self.err(format!("`rope_scaling.{field}`: missing or not a list"))
                    })?;
                    let values: Vec<f64> = list
                        .iter()
                        .filter_map(Json::as_f64)
                        .filter(|v| v.is_finite() && *v > 0.0)
                        .collect();
                    if values.len() != list.len() || values.len() != head_dim / 2 {
                        return Err(self.err(format!(
                            "`rope_scaling.{field}`: expected {} positive numbers (one per rotated pair)",
                            head_dim / 2
                        )));
                    }
                    Ok(values)
                };
                // transformers: `original_max_position_embeddings` sits in the scaling object
                // (transformers 5) or at the top level (Phi-3's own configs).
                let original = match obj.get("original_max_position_embeddings") {
                    Some(_) => num("original_max_position_embeddings")?,
                    None => match self.opt_usize("original_max_position_embeddings")? {
                        Some(v) if v > 0 => v as f64,
                        _ => {
                            return Err(
                                self.err("`original_max_position_embeddings`: missing or zero")
                            );
                        }
                    },
                };
                let factor = match obj.get("factor") {
                    Some(_) => num("factor")?,
                    None => max_positions as f64 / original,
                };
                let attention_factor = match obj.get("attention_factor") {
                    Some(_) => num("attention_factor")?,
                    None if factor <= 1.0 => 1.0,
                    None => (1.0 + factor.ln() / original.ln()).sqrt(),
                };
                Ok(RopeScaling::LongRope(crate::layers::rope::LongRope {
                    short_factor: factors("short_factor")?,
                    long_factor: factors("long_factor")?,
                    original_max_position_embeddings: original,
                    attention_factor,
                }))
            }
            other => Err(self.err(format!(
                "`rope_scaling.rope_type`: `{other}` is not supported (supported: default, \
                 linear, llama3, longrope, su)"
            ))),
        }
    }
}

/// A GGUF file's `{arch}.*` metadata and tensor table, with checked accessors.
pub struct GgufMeta<'a> {
    pub file: &'a GgufFile,
    /// `general.architecture`, the metadata key prefix.
    pub arch: &'a str,
}

impl<'a> GgufMeta<'a> {
    pub fn new(file: &'a GgufFile) -> Result<GgufMeta<'a>, EngineError> {
        Ok(GgufMeta {
            file,
            arch: file.architecture()?,
        })
    }

    pub fn err(&self, reason: impl Into<String>) -> EngineError {
        self.file.err(reason)
    }

    /// `{arch}.{key}`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.file.get(&format!("{}.{key}", self.arch))
    }

    /// A required positive integer `{arch}.{key}`.
    pub fn need(&self, key: &str) -> Result<usize, EngineError> {
        let arch = self.arch;
        match self.get(key) {
            None => Err(self.err(format!("metadata `{arch}.{key}`: missing"))),
            Some(v) => v
                .as_u64()
                .and_then(|v| usize::try_from(v).ok())
                .filter(|&v| v > 0)
                .ok_or_else(|| {
                    self.err(format!(
                        "metadata `{arch}.{key}`: {v:?} is not a positive integer"
                    ))
                }),
        }
    }

    /// A number `{arch}.{key}`, `default` when missing (an error when there is none).
    pub fn float(&self, key: &str, default: Option<f64>) -> Result<f64, EngineError> {
        let arch = self.arch;
        match self.get(key) {
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.err(format!("metadata `{arch}.{key}`: {v:?} is not a number"))),
            None => default.ok_or_else(|| self.err(format!("metadata `{arch}.{key}`: missing"))),
        }
    }

    pub fn tensor(&self, name: &str) -> Option<&'a TensorInfo> {
        self.file.tensors.iter().find(|t| t.name == name)
    }

    /// An `F32` vector tensor of `n` positive values (RoPE factors).
    pub fn factors(&self, name: &str, n: usize) -> Result<Option<Vec<f64>>, EngineError> {
        let Some(t) = self.tensor(name) else {
            return Ok(None);
        };
        if t.shape != [n] || t.dtype != WeightDType::F32 {
            return Err(self.err(format!(
                "tensor `{name}`: {:?} {:?}, expected F32 [{n}]",
                t.dtype, t.shape
            )));
        }
        if !self.file.holds_data() {
            // A header read alone (`model inspect`): the tensor's presence decides the
            // scaling kind, as it does when serving; its values are never read there.
            return Ok(Some(vec![1.0; n]));
        }
        let factors: Vec<f64> = self
            .file
            .bytes(t)
            .chunks_exact(4)
            .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .collect();
        if factors.len() != n || factors.iter().any(|f| !(f.is_finite() && *f > 0.0)) {
            return Err(self.err(format!("tensor `{name}`: factors must be positive")));
        }
        Ok(Some(factors))
    }

    /// The fields every Llama-like decoder shares, for `architecture`: sizes, norms, RoPE
    /// (with `rope_freqs` factors or linear scaling), vocabulary from `token_embd`, biases
    /// from the tensors present, EOS ids. Architectures adjust the result.
    pub fn common(&self, architecture: &'static str) -> Result<ModelConfig, EngineError> {
        let arch = self.arch;
        let hidden_size = self.need("embedding_length")?;
        let num_heads = self.need("attention.head_count")?;
        let num_kv_heads = match self.get("attention.head_count_kv") {
            Some(_) => self.need("attention.head_count_kv")?,
            None => num_heads,
        };
        if num_heads % num_kv_heads != 0 {
            return Err(self.err(format!(
                "metadata `{arch}.attention.head_count_kv`: {num_kv_heads} does not divide \
                 head_count {num_heads}"
            )));
        }
        let head_dim = match self.get("attention.key_length") {
            Some(_) => self.need("attention.key_length")?,
            None if hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => {
                return Err(self.err(format!(
                    "metadata `{arch}.embedding_length`: {hidden_size} is not a multiple of \
                     head_count {num_heads} and `attention.key_length` is not given"
                )));
            }
        };
        if head_dim > MAX_HEAD_DIM {
            return Err(self.err(format!("head dimension {head_dim} exceeds {MAX_HEAD_DIM}")));
        }
        if head_dim % 2 != 0 {
            return Err(self.err(format!("head dimension {head_dim} must be even for RoPE")));
        }
        let rotary_dim = match self.get("rope.dimension_count") {
            None => head_dim,
            Some(_) => self.need("rope.dimension_count")?,
        };
        if rotary_dim > head_dim || rotary_dim % 2 != 0 {
            return Err(self.err(format!(
                "metadata `{arch}.rope.dimension_count`: {rotary_dim} must be even and at most \
                 the head dimension {head_dim}"
            )));
        }
        // An encoder (BERT) has a LayerNorm epsilon where decoders have an RMSNorm one.
        let eps_key = match self.get("attention.layer_norm_rms_epsilon") {
            None if self.get("attention.layer_norm_epsilon").is_some() => {
                "attention.layer_norm_epsilon"
            }
            _ => "attention.layer_norm_rms_epsilon",
        };
        let rms_norm_eps = self.float(eps_key, None)?;
        if !(rms_norm_eps.is_finite() && rms_norm_eps > 0.0) {
            return Err(self.err(format!(
                "metadata `{arch}.{eps_key}`: {rms_norm_eps} must be positive"
            )));
        }
        let rope_theta = self.float("rope.freq_base", Some(10_000.0))?;
        if !(rope_theta.is_finite() && rope_theta > 1.0) {
            return Err(self.err(format!(
                "metadata `{arch}.rope.freq_base`: {rope_theta} must be > 1"
            )));
        }
        let rope_scaling = match (
            self.get("rope.scaling.type").and_then(Value::as_str),
            self.factors("rope_freqs.weight", rotary_dim / 2)?,
        ) {
            (_, Some(factors)) => RopeScaling::Factors(factors),
            (None | Some("none"), None) => RopeScaling::None,
            (Some("linear"), None) => {
                let f = self.float("rope.scaling.factor", None)?;
                if !(f.is_finite() && f > 0.0) {
                    return Err(self.err(format!(
                        "metadata `{arch}.rope.scaling.factor`: {f} must be positive"
                    )));
                }
                RopeScaling::Linear(f)
            }
            (Some(other), None) => {
                return Err(self.err(format!(
                    "metadata `{arch}.rope.scaling.type`: `{other}` is not supported \
                     (supported: none, linear, llama3 via rope_freqs)"
                )));
            }
        };
        let embd = self
            .tensor("token_embd.weight")
            .ok_or_else(|| self.err("tensor `token_embd.weight` is missing"))?;
        let vocab_size = match embd.shape.as_slice() {
            [rows, cols] if *cols == hidden_size => *rows,
            other => {
                return Err(self.err(format!(
                    "tensor `token_embd.weight` has shape {other:?}, expected [vocab, {hidden_size}]"
                )));
            }
        };
        let has = |kind: &str| self.tensor(&format!("blk.0.{kind}.bias")).is_some();
        let mut eos_token_ids = Vec::new();
        for key in [
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
        ] {
            if let Some(id) = self
                .file
                .get(key)
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok())
                && !eos_token_ids.contains(&id)
            {
                eos_token_ids.push(id);
            }
        }
        Ok(ModelConfig {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size: self.need("feed_forward_length")?,
            num_layers: self.need("block_count")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rotary_dim,
            rms_norm_eps,
            rope_theta,
            rope_scaling,
            context_length: self.need("context_length")?,
            tie_word_embeddings: self.tensor("output.weight").is_none(),
            qkv_bias: has("attn_q"),
            o_bias: has("attn_output"),
            mlp_bias: has("ffn_up"),
            eos_token_ids,
            encoder: false,
            pooling: None,
            family: architecture,
            extra: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_unknown_architecture_naming_the_field() {
        let e = ModelConfig::parse(
            r#"{"architectures":["GPT2LMHeadModel"]}"#,
            Path::new("c.json"),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            e.contains("c.json") && e.contains("architectures") && e.contains("Qwen3ForCausalLM"),
            "{e}"
        );
    }

    #[test]
    fn parses_llama3_scaling() {
        let text = r#"{"architectures":["LlamaForCausalLM"],"vocab_size":10,"hidden_size":8,
            "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,
            "num_key_value_heads":1,"max_position_embeddings":64,"rope_theta":500000.0,
            "rope_scaling":{"rope_type":"llama3","factor":32.0,"low_freq_factor":1.0,
            "high_freq_factor":4.0,"original_max_position_embeddings":8192},
            "eos_token_id":[1,2]}"#;
        let c = ModelConfig::parse(text, Path::new("c.json")).map_err(|e| e.to_string());
        let c = c.as_ref().map_err(String::clone);
        assert!(c.is_ok(), "{c:?}");
        if let Ok(c) = c {
            assert_eq!(c.head_dim, 4);
            assert_eq!(c.eos_token_ids, vec![1, 2]);
            assert_eq!(c.inv_freq().len(), 2);
        }
    }

    #[test]
    fn longrope_needs_one_factor_per_pair() {
        let text = r#"{"architectures":["Phi3ForCausalLM"],"vocab_size":10,"hidden_size":8,
            "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,
            "max_position_embeddings":64,"original_max_position_embeddings":16,
            "rope_scaling":{"type":"longrope","short_factor":[1.0],"long_factor":[2.0,3.0]}}"#;
        let e = ModelConfig::parse(text, Path::new("c.json"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("rope_scaling.short_factor") && e.contains("expected 2"),
            "{e}"
        );
    }

    fn phi3(extra: &str) -> String {
        format!(
            r#"{{"architectures":["Phi3ForCausalLM"],"vocab_size":10,"hidden_size":16,
            "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,
            "max_position_embeddings":1024,"original_max_position_embeddings":256{extra}}}"#
        )
    }

    #[test]
    fn phi3_longrope_defaults_its_attention_factor_from_the_context_ratio() {
        let text = phi3(
            r#","partial_rotary_factor":0.75,"rope_scaling":{"type":"su",
            "short_factor":[1,1,1],"long_factor":[2,2,2]}"#,
        );
        let c = ModelConfig::parse(&text, Path::new("c.json")).map_err(|e| e.to_string());
        match c.as_ref().map(|c| (&c.rope_scaling, c.rotary_dim)) {
            Ok((RopeScaling::LongRope(l), 6)) => {
                let want = (1.0 + 4f64.ln() / 256f64.ln()).sqrt();
                assert!((l.attention_factor - want).abs() < 1e-12, "{l:?}");
                assert_eq!(l.original_max_position_embeddings, 256.0);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn partial_rotary_is_refused_where_the_architecture_rotates_whole_heads() {
        let text = r#"{"architectures":["LlamaForCausalLM"],"vocab_size":10,"hidden_size":16,
            "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,
            "max_position_embeddings":64,"partial_rotary_factor":0.5}"#;
        let e = ModelConfig::parse(text, Path::new("c.json"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("partial rotary") && e.contains("llama"), "{e}");
        let e = ModelConfig::parse(
            &phi3(r#","partial_rotary_factor":1.5"#),
            Path::new("c.json"),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("`partial_rotary_factor`"), "{e}");
    }
}
