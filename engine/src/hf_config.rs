//! The subset of a Hugging Face `config.json` a Llama-family decoder needs, validated.
//!
//! HF configs carry dozens of fields we do not use (and new ones appear with every
//! `transformers` release), so unknown fields are ignored rather than denied; every field we
//! *do* read is checked, and an error names the file and the field.

use std::path::Path;

use serde::Deserialize;

use crate::EngineError;
use crate::gguf::{GgufFile, Value};
use crate::weights::WeightDType;

/// The architectures whose weights and forward pass this engine implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 1/2/3/3.1/3.2, TinyLlama, SmolLM.
    Llama,
    /// Mistral 7B-style (Llama with a sliding window we cap the context to).
    Mistral,
    /// Qwen2/2.5: Llama with biases on the q/k/v projections.
    Qwen2,
}

/// Llama 3.1-style frequency-dependent RoPE scaling (`rope_scaling.rope_type == "llama3"`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

/// How RoPE frequencies are scaled.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (`"linear"`).
    Linear(f64),
    Llama3(Llama3Scaling),
    /// One divisor per rotated pair: GGUF's `rope_freqs` tensor, which is how llama.cpp
    /// stores Llama 3.1 scaling (already computed from the factors above).
    Factors(Vec<f64>),
}

/// A validated model configuration.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    /// The model's own context length, already capped to a sliding window when it has one
    /// (we implement full attention only, which equals windowed attention inside the window).
    pub context_length: usize,
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v projections (Qwen2, Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama with `attention_bias`).
    pub o_bias: bool,
    /// Biases on the MLP projections (Llama with `mlp_bias`).
    pub mlp_bias: bool,
    /// `eos_token_id` from config.json (an int or a list).
    pub eos_token_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    /// transformers 5 layout: `rope_theta` and the scaling fields in one object.
    rope_parameters: Option<serde_json::Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    sliding_window: Option<serde_json::Value>,
    use_sliding_window: Option<bool>,
    eos_token_id: Option<serde_json::Value>,
    hidden_act: Option<String>,
}

/// The largest attention head dimension accepted (real models use 64 to 576): a hostile
/// `head_dim` (or `attention.key_length`) of 385875976, found by the `gguf` fuzz target,
/// made [`ModelConfig::inv_freq`] allocate 1.5 GB.
const MAX_HEAD_DIM: usize = 1024;

/// Reads a token id field that may be an int, a list of ints or null.
pub(crate) fn token_ids(value: Option<&serde_json::Value>) -> Option<Vec<u32>> {
    match value? {
        serde_json::Value::Number(n) => n
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .map(|v| vec![v]),
        serde_json::Value::Array(items) => Some(
            items
                .iter()
                .filter_map(|v| v.as_u64().and_then(|v| u32::try_from(v).ok()))
                .collect(),
        ),
        _ => None,
    }
}

impl ModelConfig {
    /// Reads and validates `dir/config.json`.
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
        let err = |reason: String| EngineError::Load {
            path: path.to_path_buf(),
            reason,
        };
        let raw: RawConfig =
            serde_json::from_str(text).map_err(|e| err(format!("invalid JSON: {e}")))?;
        let arch_name = raw
            .architectures
            .as_ref()
            .and_then(|a| a.first().cloned())
            .or_else(|| raw.model_type.clone())
            .ok_or_else(|| err("`architectures`: missing".into()))?;
        let architecture = match arch_name.as_str() {
            "LlamaForCausalLM" | "llama" => Architecture::Llama,
            "MistralForCausalLM" | "mistral" => Architecture::Mistral,
            "Qwen2ForCausalLM" | "qwen2" => Architecture::Qwen2,
            other => {
                return Err(err(format!(
                    "`architectures`: `{other}` is not supported (supported: LlamaForCausalLM, \
                     MistralForCausalLM, Qwen2ForCausalLM)"
                )));
            }
        };
        if let Some(act) = &raw.hidden_act
            && act != "silu"
        {
            return Err(err(format!(
                "`hidden_act`: `{act}` is not supported (only `silu`)"
            )));
        }
        let need = |v: Option<usize>, field: &str| -> Result<usize, EngineError> {
            match v {
                Some(0) => Err(err(format!("`{field}`: must be positive"))),
                Some(v) => Ok(v),
                None => Err(err(format!("`{field}`: missing"))),
            }
        };
        let vocab_size = need(raw.vocab_size, "vocab_size")?;
        let hidden_size = need(raw.hidden_size, "hidden_size")?;
        let intermediate_size = need(raw.intermediate_size, "intermediate_size")?;
        let num_layers = need(raw.num_hidden_layers, "num_hidden_layers")?;
        let num_heads = need(raw.num_attention_heads, "num_attention_heads")?;
        let num_kv_heads = need(
            raw.num_key_value_heads.or(Some(num_heads)),
            "num_key_value_heads",
        )?;
        if num_heads % num_kv_heads != 0 {
            return Err(err(format!(
                "`num_key_value_heads`: {num_kv_heads} does not divide num_attention_heads \
                 {num_heads}"
            )));
        }
        let head_dim = match raw.head_dim {
            Some(d) => need(Some(d), "head_dim")?,
            None if hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => {
                return Err(err(format!(
                    "`hidden_size`: {hidden_size} is not a multiple of num_attention_heads \
                     {num_heads} and `head_dim` is not given"
                )));
            }
        };
        if head_dim > MAX_HEAD_DIM {
            return Err(err(format!(
                "`head_dim`: {head_dim} exceeds {MAX_HEAD_DIM}"
            )));
        }
        if head_dim % 2 != 0 {
            return Err(err(format!("`head_dim`: {head_dim} must be even for RoPE")));
        }
        let rms_norm_eps = raw.rms_norm_eps.unwrap_or(1e-6);
        if !(rms_norm_eps.is_finite() && rms_norm_eps > 0.0) {
            return Err(err(format!(
                "`rms_norm_eps`: {rms_norm_eps} must be positive"
            )));
        }
        let params_theta = raw
            .rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_theta"))
            .and_then(serde_json::Value::as_f64);
        let rope_theta = raw.rope_theta.or(params_theta).unwrap_or(10_000.0);
        if !(rope_theta.is_finite() && rope_theta > 1.0) {
            return Err(err(format!("`rope_theta`: {rope_theta} must be > 1")));
        }
        let scaling = match (&raw.rope_scaling, &raw.rope_parameters) {
            (Some(s), _) if !s.is_null() => Some(s),
            (_, Some(p)) => Some(p),
            _ => None,
        };
        let rope_scaling = parse_rope_scaling(scaling).map_err(err)?;
        let mut context_length = need(raw.max_position_embeddings, "max_position_embeddings")?;
        let window_on = match architecture {
            Architecture::Mistral => true,
            Architecture::Qwen2 => raw.use_sliding_window.unwrap_or(false),
            Architecture::Llama => false,
        };
        if window_on
            && let Some(w) = raw
                .sliding_window
                .as_ref()
                .and_then(serde_json::Value::as_u64)
        {
            let w = usize::try_from(w).unwrap_or(usize::MAX);
            if w > 0 {
                context_length = context_length.min(w);
            }
        }
        let attention_bias = raw.attention_bias.unwrap_or(false);
        let qkv_bias = architecture == Architecture::Qwen2 || attention_bias;
        Ok(ModelConfig {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            rope_scaling,
            context_length,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            qkv_bias,
            o_bias: architecture != Architecture::Qwen2 && attention_bias,
            mlp_bias: raw.mlp_bias.unwrap_or(false),
            eos_token_ids: token_ids(raw.eos_token_id.as_ref()).unwrap_or_default(),
        })
    }

    /// The RoPE inverse frequencies, one per rotated pair, scaling applied.
    pub fn inv_freq(&self) -> Vec<f64> {
        let dim = self.head_dim as f64;
        let base: Vec<f64> = (0..self.head_dim / 2)
            .map(|i| 1.0 / self.rope_theta.powf((2 * i) as f64 / dim))
            .collect();
        match &self.rope_scaling {
            RopeScaling::None => base,
            RopeScaling::Linear(f) => base.into_iter().map(|x| x / f).collect(),
            RopeScaling::Factors(f) => base.into_iter().zip(f).map(|(x, f)| x / f).collect(),
            RopeScaling::Llama3(s) => {
                // transformers `_compute_llama3_parameters`.
                let low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
                let high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
                base.into_iter()
                    .map(|freq| {
                        let wavelen = 2.0 * std::f64::consts::PI / freq;
                        if wavelen < high_wavelen {
                            freq
                        } else if wavelen > low_wavelen {
                            freq / s.factor
                        } else {
                            let smooth = (s.original_max_position_embeddings / wavelen
                                - s.low_freq_factor)
                                / (s.high_freq_factor - s.low_freq_factor);
                            (1.0 - smooth) * freq / s.factor + smooth * freq
                        }
                    })
                    .collect()
            }
        }
    }
}

impl ModelConfig {
    /// The configuration of a GGUF file, from its `{arch}.*` metadata and tensor shapes.
    pub fn from_gguf(file: &GgufFile) -> Result<ModelConfig, EngineError> {
        let arch = file.architecture()?;
        let architecture = match arch {
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            other => {
                return Err(file.err(format!(
                    "metadata `general.architecture`: `{other}` is not supported (supported: \
                     llama, qwen2)"
                )));
            }
        };
        let get = |key: &str| file.get(&format!("{arch}.{key}"));
        let need = |key: &str| -> Result<usize, EngineError> {
            match get(key) {
                None => Err(file.err(format!("metadata `{arch}.{key}`: missing"))),
                Some(v) => v
                    .as_u64()
                    .and_then(|v| usize::try_from(v).ok())
                    .filter(|&v| v > 0)
                    .ok_or_else(|| {
                        file.err(format!(
                            "metadata `{arch}.{key}`: {v:?} is not a positive integer"
                        ))
                    }),
            }
        };
        let hidden_size = need("embedding_length")?;
        let num_heads = need("attention.head_count")?;
        let num_kv_heads = match get("attention.head_count_kv") {
            Some(_) => need("attention.head_count_kv")?,
            None => num_heads,
        };
        if num_heads % num_kv_heads != 0 {
            return Err(file.err(format!(
                "metadata `{arch}.attention.head_count_kv`: {num_kv_heads} does not divide \
                 head_count {num_heads}"
            )));
        }
        let head_dim = match get("attention.key_length") {
            Some(_) => need("attention.key_length")?,
            None if hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => {
                return Err(file.err(format!(
                    "metadata `{arch}.embedding_length`: {hidden_size} is not a multiple of \
                     head_count {num_heads} and `attention.key_length` is not given"
                )));
            }
        };
        if head_dim > MAX_HEAD_DIM {
            return Err(file.err(format!("head dimension {head_dim} exceeds {MAX_HEAD_DIM}")));
        }
        if head_dim % 2 != 0 {
            return Err(file.err(format!("head dimension {head_dim} must be even for RoPE")));
        }
        if get("rope.dimension_count").is_some() && need("rope.dimension_count")? != head_dim {
            return Err(file.err(format!(
                "metadata `{arch}.rope.dimension_count`: partial rotary embeddings are not \
                 supported (head dimension {head_dim})"
            )));
        }
        let float = |key: &str, default: Option<f64>| -> Result<f64, EngineError> {
            match get(key) {
                Some(v) => v.as_f64().ok_or_else(|| {
                    file.err(format!("metadata `{arch}.{key}`: {v:?} is not a number"))
                }),
                None => {
                    default.ok_or_else(|| file.err(format!("metadata `{arch}.{key}`: missing")))
                }
            }
        };
        let rms_norm_eps = float("attention.layer_norm_rms_epsilon", None)?;
        if !(rms_norm_eps.is_finite() && rms_norm_eps > 0.0) {
            return Err(file.err(format!(
                "metadata `{arch}.attention.layer_norm_rms_epsilon`: {rms_norm_eps} must be positive"
            )));
        }
        let rope_theta = float("rope.freq_base", Some(10_000.0))?;
        if !(rope_theta.is_finite() && rope_theta > 1.0) {
            return Err(file.err(format!(
                "metadata `{arch}.rope.freq_base`: {rope_theta} must be > 1"
            )));
        }
        let tensor = |name: &str| file.tensors.iter().find(|t| t.name == name);
        let rope_scaling = match (
            get("rope.scaling.type").and_then(Value::as_str),
            tensor("rope_freqs.weight"),
        ) {
            (_, Some(t)) => {
                let n = head_dim / 2;
                if t.shape != [n] || t.dtype != WeightDType::F32 {
                    return Err(file.err(format!(
                        "tensor `rope_freqs.weight`: {:?} {:?}, expected F32 [{n}]",
                        t.dtype, t.shape
                    )));
                }
                let factors: Vec<f64> = file
                    .bytes(t)
                    .chunks_exact(4)
                    .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                    .collect();
                if factors.iter().any(|f| !(f.is_finite() && *f > 0.0)) {
                    return Err(file.err("tensor `rope_freqs.weight`: factors must be positive"));
                }
                RopeScaling::Factors(factors)
            }
            (None | Some("none"), None) => RopeScaling::None,
            (Some("linear"), None) => {
                let f = float("rope.scaling.factor", None)?;
                if !(f.is_finite() && f > 0.0) {
                    return Err(file.err(format!(
                        "metadata `{arch}.rope.scaling.factor`: {f} must be positive"
                    )));
                }
                RopeScaling::Linear(f)
            }
            (Some(other), None) => {
                return Err(file.err(format!(
                    "metadata `{arch}.rope.scaling.type`: `{other}` is not supported \
                     (supported: none, linear, llama3 via rope_freqs)"
                )));
            }
        };
        let embd = tensor("token_embd.weight")
            .ok_or_else(|| file.err("tensor `token_embd.weight` is missing"))?;
        let vocab_size = match embd.shape.as_slice() {
            [rows, cols] if *cols == hidden_size => *rows,
            other => {
                return Err(file.err(format!(
                    "tensor `token_embd.weight` has shape {other:?}, expected [vocab, {hidden_size}]"
                )));
            }
        };
        let has = |kind: &str| tensor(&format!("blk.0.{kind}.bias")).is_some();
        let mut eos_token_ids = Vec::new();
        for key in [
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
        ] {
            if let Some(id) = file
                .get(key)
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok())
            {
                eos_token_ids.push(id);
            }
        }
        Ok(ModelConfig {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size: need("feed_forward_length")?,
            num_layers: need("block_count")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            rope_scaling,
            context_length: need("context_length")?,
            tie_word_embeddings: tensor("output.weight").is_none(),
            qkv_bias: architecture == Architecture::Qwen2 || has("attn_q"),
            o_bias: has("attn_output"),
            mlp_bias: has("ffn_up"),
            eos_token_ids,
        })
    }
}

fn parse_rope_scaling(value: Option<&serde_json::Value>) -> Result<RopeScaling, String> {
    let Some(value) = value else {
        return Ok(RopeScaling::None);
    };
    if value.is_null() {
        return Ok(RopeScaling::None);
    }
    let obj = value
        .as_object()
        .ok_or("`rope_scaling`: must be an object or null")?;
    let kind = obj
        .get("rope_type")
        .or_else(|| obj.get("type"))
        .and_then(serde_json::Value::as_str)
        .ok_or("`rope_scaling.rope_type`: missing")?;
    let num = |field: &str| -> Result<f64, String> {
        obj.get(field)
            .and_then(serde_json::Value::as_f64)
            .filter(|v| v.is_finite() && *v > 0.0)
            .ok_or_else(|| format!("`rope_scaling.{field}`: missing or not a positive number"))
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
                return Err("`rope_scaling.high_freq_factor`: must exceed low_freq_factor".into());
            }
            Ok(RopeScaling::Llama3(s))
        }
        other => Err(format!(
            "`rope_scaling.rope_type`: `{other}` is not supported (supported: default, linear, llama3)"
        )),
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
        assert!(e.contains("c.json") && e.contains("architectures"), "{e}");
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
}
