//! Gemma 2 and Gemma 3 (text): RMSNorm with a `1 + w` scale, a norm before *and after*
//! attention and the MLP, GeGLU (tanh GELU), embeddings scaled by √hidden, attention
//! scaled by `query_pre_attn_scalar^-½`, and layers that alternate between a sliding
//! window and global attention. Gemma 2 soft-caps attention logits and final logits
//! (`cap · tanh(x / cap)`) and alternates 1 : 1 (layer 0 local); Gemma 3 instead normalizes
//! each query and key head (q/k RMSNorm, `1 + w` too), alternates 5 local : 1 global, and
//! gives local layers their own RoPE base (`rope_local_base_freq`, unscaled) while global
//! layers take `rope_theta` with `rope_scaling` (linear ×8 in gemma-3-4b and larger).
//!
//! GGUF files (llama.cpp's converter) store the norms with the `+1` already added, carry the
//! soft-caps, window and local base in metadata, and no `query_pre_attn_scalar`: llama.cpp
//! scales by `1/√head_dim`, or `1/√(hidden/heads)` for the 27B models (46 or 62 layers),
//! which is what every released checkpoint's `query_pre_attn_scalar` amounts to.

use std::sync::Arc;

use burn::tensor::{DType, Device};

use crate::EngineError;
use crate::gguf::Value;
use crate::layers::Loader;
use crate::layers::attention::{Attention, Batch, BatchItem, BatchShape, QkNorm};
use crate::layers::linear::Linear;
use crate::layers::mlp::{Activation, Mlp};
use crate::layers::norm::RmsNorm;
use crate::layers::rope::{Rope, RopeScaling};
use crate::models::config::{GgufMeta, HfConfig, ModelConfig};
use crate::models::{CausalLm, Family, llama_like_gguf_name};
use crate::weights::RowTable;

pub struct Gemma;

/// Which generation: what differs between the two is data in [`Settings`], except the
/// q/k norms, which only Gemma 3 has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    Gemma2,
    Gemma3,
}

impl Version {
    fn name(self) -> &'static str {
        match self {
            Self::Gemma2 => "gemma2",
            Self::Gemma3 => "gemma3",
        }
    }

    /// Every `n`-th layer is global, the others local (Gemma 2: 2, Gemma 3: 6).
    fn default_pattern(self) -> usize {
        match self {
            Self::Gemma2 => 2,
            Self::Gemma3 => 6,
        }
    }
}

/// What only Gemma's forward pass needs ([`ModelConfig::extra`]).
#[derive(Debug)]
struct Settings {
    version: Version,
    /// Norm weights stored as `w`, applied as `1 + w` (Hugging Face); GGUF files store `1 + w`.
    norm_plus_one: bool,
    /// Multiplies q·k.
    attn_scale: f64,
    attn_softcap: Option<f64>,
    final_softcap: Option<f64>,
    /// Per layer: attends within the sliding window (`window`) rather than globally.
    sliding: Vec<bool>,
    window: Option<usize>,
    /// RoPE of the local layers (the global ones use the config's `rope_theta` and scaling).
    local_rope_theta: f64,
    local_rope_scaling: RopeScaling,
}

/// `sliding[i]` for `layers` layers where every `pattern`-th is global (llama.cpp's
/// `set_swa_pattern`, transformers' `(i + 1) % pattern != 0`); 0 makes every layer local.
fn pattern_layers(layers: usize, pattern: usize) -> Vec<bool> {
    (0..layers)
        .map(|i| pattern == 0 || (i + 1) % pattern != 0)
        .collect()
}

/// A positive, finite soft-cap (`None` for 0, as llama.cpp reads it).
fn softcap(value: Option<f64>, field: &str) -> Result<Option<f64>, String> {
    match value {
        None => Ok(None),
        Some(0.0) => Ok(None),
        Some(v) if v.is_finite() && v > 0.0 => Ok(Some(v)),
        Some(v) => Err(format!("`{field}`: {v} must be positive")),
    }
}

impl Gemma {
    fn version_of_hf(arch: &str) -> Version {
        if arch.starts_with("Gemma2") || arch == "gemma2" {
            Version::Gemma2
        } else {
            Version::Gemma3
        }
    }
}

impl Family for Gemma {
    fn name(&self) -> &'static str {
        "gemma"
    }

    fn hf_architectures(&self) -> &'static [&'static str] {
        &[
            "Gemma2ForCausalLM",
            "Gemma3ForCausalLM",
            "gemma2",
            "gemma3_text",
        ]
    }

    fn gguf_architectures(&self) -> &'static [&'static str] {
        &["gemma2", "gemma3"]
    }

    fn config_from_hf(&self, hf: &HfConfig) -> Result<ModelConfig, EngineError> {
        let version = Self::version_of_hf(&hf.architecture()?);
        for field in ["hidden_activation", "hidden_act"] {
            hf.require_act(field, &["gelu_pytorch_tanh"])?;
        }
        if hf.opt_bool("use_bidirectional_attention")? == Some(true) {
            return Err(hf.err(
                "`use_bidirectional_attention`: bidirectional (embedding) Gemma models are not \
                 supported; only causal language models",
            ));
        }
        let mut c = hf.common(version.name())?;
        if let Some(reason) = c.partial_rotary_refusal() {
            return Err(hf.err(reason));
        }
        c.tie_word_embeddings = hf.opt_bool("tie_word_embeddings")?.unwrap_or(true);
        let scalar = hf.opt_f64("query_pre_attn_scalar")?.unwrap_or(256.0);
        if !(scalar.is_finite() && scalar > 0.0) {
            return Err(hf.err(format!(
                "`query_pre_attn_scalar`: {scalar} must be positive"
            )));
        }
        // transformers: a missing soft-cap takes the class default, `null` turns it off.
        // Gemma 3's attention ignores `attn_logit_softcapping` (it has q/k norms instead).
        let cap = |field: &str, default: Option<f64>| -> Result<Option<f64>, EngineError> {
            let v = if hf.has(field) {
                hf.opt_f64(field)?
            } else {
                default
            };
            softcap(v, field).map_err(|e| hf.err(e))
        };
        let (attn_softcap, final_softcap) = match version {
            Version::Gemma2 => (
                cap("attn_logit_softcapping", Some(50.0))?,
                cap("final_logit_softcapping", Some(30.0))?,
            ),
            Version::Gemma3 => (None, cap("final_logit_softcapping", None)?),
        };
        let window = if hf.has("sliding_window") {
            hf.sliding_window()
        } else {
            Some(4096)
        };
        let sliding = match hf.get("layer_types") {
            Some(types) => {
                let list = types
                    .as_array()
                    .filter(|l| l.len() == c.num_layers)
                    .ok_or_else(|| {
                        hf.err(format!(
                            "`layer_types`: expected a list of {} layer types",
                            c.num_layers
                        ))
                    })?;
                list.iter()
                    .map(|t| match t.as_str() {
                        Some("sliding_attention") => Ok(true),
                        Some("full_attention") => Ok(false),
                        _ => Err(hf.err(format!(
                            "`layer_types`: {t} is not supported (supported: \
                             sliding_attention, full_attention)"
                        ))),
                    })
                    .collect::<Result<Vec<bool>, EngineError>>()?
            }
            None => {
                let pattern = match version {
                    Version::Gemma2 => version.default_pattern(),
                    Version::Gemma3 => hf
                        .opt_usize("sliding_window_pattern")?
                        .unwrap_or(version.default_pattern()),
                };
                pattern_layers(c.num_layers, pattern)
            }
        };
        let (local_rope_theta, local_rope_scaling) = match version {
            // One RoPE for every layer.
            Version::Gemma2 => (c.rope_theta, c.rope_scaling.clone()),
            Version::Gemma3 => {
                let nested = hf
                    .get("rope_parameters")
                    .and_then(|p| p.get("sliding_attention"))
                    .and_then(|p| p.get("rope_theta"))
                    .and_then(serde_json::Value::as_f64);
                let has_global = hf.get("rope_theta").is_some()
                    || hf
                        .rope_parameters()
                        .and_then(|p| p.get("rope_theta"))
                        .is_some();
                if !has_global {
                    // Gemma3TextConfig's default global base.
                    c.rope_theta = 1_000_000.0;
                }
                let local = match hf.opt_f64("rope_local_base_freq")? {
                    Some(v) => v,
                    None => nested.unwrap_or(10_000.0),
                };
                (local, RopeScaling::None)
            }
        };
        if !(local_rope_theta.is_finite() && local_rope_theta > 1.0) {
            return Err(hf.err(format!(
                "`rope_local_base_freq`: {local_rope_theta} must be > 1"
            )));
        }
        c.extra = Some(Arc::new(Settings {
            version,
            norm_plus_one: true,
            attn_scale: 1.0 / scalar.sqrt(),
            attn_softcap,
            final_softcap,
            sliding,
            window,
            local_rope_theta,
            local_rope_scaling,
        }));
        Ok(c)
    }

    fn config_from_gguf(&self, meta: &GgufMeta<'_>) -> Result<ModelConfig, EngineError> {
        let version = if meta.arch == "gemma2" {
            Version::Gemma2
        } else {
            Version::Gemma3
        };
        let arch = meta.arch;
        let mut c = meta.common(version.name())?;
        if let Some(reason) = c.partial_rotary_refusal() {
            return Err(meta.err(reason));
        }
        let cap = |key: &str, default: Option<f64>| -> Result<Option<f64>, EngineError> {
            let v = match meta.get(key) {
                Some(_) => Some(meta.float(key, None)?),
                None => default,
            };
            softcap(v, &format!("metadata `{arch}.{key}`")).map_err(|e| meta.err(e))
        };
        // llama.cpp's defaults where the converter wrote nothing.
        let (attn_softcap, final_softcap) = match version {
            Version::Gemma2 => (
                cap("attn_logit_softcapping", Some(50.0))?,
                cap("final_logit_softcapping", Some(30.0))?,
            ),
            Version::Gemma3 => (None, cap("final_logit_softcapping", None)?),
        };
        let window = match (meta.get("attention.sliding_window"), version) {
            (Some(v), _) => v
                .as_u64()
                .and_then(|w| usize::try_from(w).ok())
                .filter(|&w| w > 0)
                .map(Some)
                .or_else(|| (v.as_u64() == Some(0)).then_some(None))
                .ok_or_else(|| {
                    meta.err(format!(
                        "metadata `{arch}.attention.sliding_window`: {v:?} is not a window size"
                    ))
                })?,
            (None, Version::Gemma2) => Some(4096),
            (None, Version::Gemma3) => None,
        };
        let sliding = match meta.get("attention.sliding_window_pattern") {
            None => pattern_layers(c.num_layers, version.default_pattern()),
            Some(Value::Array(flags)) => {
                let flags: Option<Vec<bool>> = flags.iter().map(Value::as_bool).collect();
                flags.filter(|f| f.len() == c.num_layers).ok_or_else(|| {
                    meta.err(format!(
                        "metadata `{arch}.attention.sliding_window_pattern`: expected {} \
                         booleans (one per layer) or a period",
                        c.num_layers
                    ))
                })?
            }
            Some(v) => {
                let n = v
                    .as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| {
                        meta.err(format!(
                            "metadata `{arch}.attention.sliding_window_pattern`: {v:?} is not a \
                             period or a list of booleans"
                        ))
                    })?;
                pattern_layers(c.num_layers, n)
            }
        };
        let local_default = match version {
            Version::Gemma2 => c.rope_theta,
            Version::Gemma3 => 10_000.0,
        };
        let local_rope_theta = meta.float("rope.freq_base_swa", Some(local_default))?;
        if !(local_rope_theta.is_finite() && local_rope_theta > 1.0) {
            return Err(meta.err(format!(
                "metadata `{arch}.rope.freq_base_swa`: {local_rope_theta} must be > 1"
            )));
        }
        // llama.cpp: Gemma 2's local layers share the global frequency scale, Gemma 3's
        // are unscaled.
        let local_rope_scaling = match version {
            Version::Gemma2 => c.rope_scaling.clone(),
            Version::Gemma3 => RopeScaling::None,
        };
        let attn_scale = if matches!(c.num_layers, 46 | 62) {
            1.0 / ((c.hidden_size / c.num_heads) as f64).sqrt()
        } else {
            1.0 / (c.head_dim as f64).sqrt()
        };
        // The converter writes no EOT id for Gemma; its chat turns end with <end_of_turn>,
        // which llama.cpp recognizes by its text.
        if let Some(tokens) = meta
            .file
            .get("tokenizer.ggml.tokens")
            .and_then(Value::as_array)
            && let Some(id) = tokens
                .iter()
                .position(|t| t.as_str() == Some("<end_of_turn>"))
                .and_then(|i| u32::try_from(i).ok())
            && !c.eos_token_ids.contains(&id)
        {
            c.eos_token_ids.push(id);
        }
        c.extra = Some(Arc::new(Settings {
            version,
            norm_plus_one: false,
            attn_scale,
            attn_softcap,
            final_softcap,
            sliding,
            window,
            local_rope_theta,
            local_rope_scaling,
        }));
        Ok(c)
    }

    fn gguf_tensor_name(&self, gguf: &str) -> String {
        llama_like_gguf_name(gguf, |kind| match kind {
            "post_attention_norm" => Some("post_attention_layernorm"),
            "ffn_norm" => Some("pre_feedforward_layernorm"),
            "post_ffw_norm" => Some("post_feedforward_layernorm"),
            "attn_q_norm" => Some("self_attn.q_norm"),
            "attn_k_norm" => Some("self_attn.k_norm"),
            _ => None,
        })
    }

    fn load(
        &self,
        config: &ModelConfig,
        loader: &Loader<'_>,
    ) -> Result<Box<dyn CausalLm>, EngineError> {
        Ok(Box::new(GemmaModel::load(config, loader)?))
    }
}

struct Layer {
    attn_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    qk_norm: Option<QkNorm>,
    o: Linear,
    post_attn_norm: RmsNorm,
    pre_mlp_norm: RmsNorm,
    mlp: Mlp,
    post_mlp_norm: RmsNorm,
    attention: Attention,
}

struct GemmaModel {
    config: ModelConfig,
    embed: RowTable,
    /// √hidden, multiplied into the embeddings.
    embed_scale: f64,
    layers: Vec<Layer>,
    /// RoPE of the global layers (index 0) and of the local ones (index 1).
    ropes: [Rope; 2],
    /// Attention windows: global (index 0), local (index 1).
    windows: [Option<usize>; 2],
    norm: RmsNorm,
    lm_head: Linear,
    final_softcap: Option<f64>,
    device: Device,
    dtype: DType,
}

impl GemmaModel {
    fn load(config: &ModelConfig, ld: &Loader<'_>) -> Result<GemmaModel, EngineError> {
        let c = config;
        let s: &Settings = c.extra()?;
        let (h, hd, eps, plus) = (c.hidden_size, c.head_dim, c.rms_norm_eps, s.norm_plus_one);
        let q_out = c.num_heads * hd;
        let kv_out = c.num_kv_heads * hd;
        if s.sliding.len() != c.num_layers {
            return Err(EngineError::Inference(format!(
                "{} layer types for {} layers",
                s.sliding.len(),
                c.num_layers
            )));
        }
        let mut layers = Vec::with_capacity(c.num_layers);
        for (i, &local) in s.sliding.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let a = format!("{p}.self_attn");
            let norm = |name: &str, n: usize| ld.rms_norm(name, n, eps, plus);
            layers.push(Layer {
                attn_norm: norm(&format!("{p}.input_layernorm.weight"), h)?,
                q: ld.linear(&format!("{a}.q_proj"), h, q_out, c.qkv_bias)?,
                k: ld.linear(&format!("{a}.k_proj"), h, kv_out, c.qkv_bias)?,
                v: ld.linear(&format!("{a}.v_proj"), h, kv_out, c.qkv_bias)?,
                qk_norm: match s.version {
                    Version::Gemma2 => None,
                    Version::Gemma3 => Some(QkNorm {
                        q: norm(&format!("{a}.q_norm.weight"), hd)?,
                        k: norm(&format!("{a}.k_norm.weight"), hd)?,
                    }),
                },
                o: ld.linear(&format!("{a}.o_proj"), q_out, h, c.o_bias)?,
                post_attn_norm: norm(&format!("{p}.post_attention_layernorm.weight"), h)?,
                pre_mlp_norm: norm(&format!("{p}.pre_feedforward_layernorm.weight"), h)?,
                mlp: ld.mlp(
                    &format!("{p}.mlp"),
                    h,
                    c.intermediate_size,
                    false,
                    Activation::GeluTanh,
                )?,
                post_mlp_norm: norm(&format!("{p}.post_feedforward_layernorm.weight"), h)?,
                attention: Attention {
                    heads: c.num_heads,
                    kv_heads: c.num_kv_heads,
                    head_dim: hd,
                    scale: s.attn_scale,
                    softcap: s.attn_softcap,
                    rope: usize::from(local),
                    window: usize::from(local),
                },
            });
        }
        Ok(GemmaModel {
            config: c.clone(),
            embed: ld.embeddings("model.embed_tokens.weight", c.vocab_size, h)?,
            embed_scale: (h as f64).sqrt(),
            layers,
            ropes: [
                Rope::new(c.rope_theta, c.rotary_dim, &c.rope_scaling),
                Rope::new(s.local_rope_theta, c.rotary_dim, &s.local_rope_scaling),
            ],
            windows: [None, s.window],
            norm: ld.rms_norm("model.norm.weight", h, eps, plus)?,
            lm_head: ld.lm_head(
                "lm_head.weight",
                "model.embed_tokens.weight",
                c.tie_word_embeddings,
                c.vocab_size,
                h,
            )?,
            final_softcap: s.final_softcap,
            device: ld.device.clone(),
            dtype: ld.dtype,
        })
    }
}

impl CausalLm for GemmaModel {
    fn forward_batch(
        &self,
        items: &mut [BatchItem<'_>],
    ) -> Result<Vec<Option<Vec<f32>>>, EngineError> {
        let c = &self.config;
        let shape = BatchShape {
            context_length: c.context_length,
            ropes: &[&self.ropes[0], &self.ropes[1]],
            windows: &self.windows,
            group: c.num_heads / c.num_kv_heads,
            device: &self.device,
            dtype: self.dtype,
        };
        let (batch, x) = Batch::new(items, &self.embed, c.hidden_size, &shape)?;
        let mut x = x.mul_scalar(self.embed_scale);
        for (li, layer) in self.layers.iter().enumerate() {
            let normed = layer.attn_norm.forward(x.clone());
            let q = layer.q.forward(normed.clone());
            let k = layer.k.forward(normed.clone());
            let v = layer.v.forward(normed);
            let attn =
                layer
                    .attention
                    .forward(li, &batch, items, q, k, v, layer.qk_norm.as_ref())?;
            x = x + layer.post_attn_norm.forward(layer.o.forward(attn));
            let mlp = layer.mlp.forward(layer.pre_mlp_norm.forward(x.clone()));
            x = x + layer.post_mlp_norm.forward(mlp);
        }
        batch.finish(items, x, |h| self.norm.forward(h), |last| {
            let logits = self.lm_head.forward(last);
            match self.final_softcap {
                Some(cap) => logits.div_scalar(cap).tanh().mul_scalar(cap),
                None => logits,
            }
        })
    }

    fn weight_format(&self) -> &'static str {
        self.layers
            .first()
            .map_or_else(|| self.lm_head.storage(), |l| l.q.storage())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_patterns_match_transformers_and_llama_cpp() {
        // Gemma 2: layer 0 local, 1 global, …; Gemma 3: 5 local then 1 global.
        assert_eq!(pattern_layers(4, 2), [true, false, true, false]);
        assert_eq!(
            pattern_layers(7, 6),
            [true, true, true, true, true, false, true]
        );
        assert_eq!(pattern_layers(2, 0), [true, true]);
    }

    #[test]
    fn gguf_norm_names_map_to_the_pre_and_post_norms() {
        let g = Gemma;
        assert_eq!(
            g.gguf_tensor_name("blk.1.ffn_norm.weight"),
            "model.layers.1.pre_feedforward_layernorm.weight"
        );
        assert_eq!(
            g.gguf_tensor_name("blk.1.post_ffw_norm.weight"),
            "model.layers.1.post_feedforward_layernorm.weight"
        );
        assert_eq!(
            g.gguf_tensor_name("blk.0.post_attention_norm.weight"),
            "model.layers.0.post_attention_layernorm.weight"
        );
        assert_eq!(
            g.gguf_tensor_name("blk.0.attn_k_norm.weight"),
            "model.layers.0.self_attn.k_norm.weight"
        );
    }

    #[test]
    fn refuses_other_activations_and_bidirectional_models_by_field() {
        let base = r#""vocab_size":16,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":2,"num_attention_heads":2,"head_dim":4,
            "max_position_embeddings":64"#;
        for (extra, field) in [
            (r#""hidden_activation":"relu""#, "hidden_activation"),
            (
                r#""use_bidirectional_attention":true"#,
                "use_bidirectional_attention",
            ),
            (r#""layer_types":["sliding_attention"]"#, "layer_types"),
            (r#""final_logit_softcapping":-1.0"#, "final_logit_softcapping"),
        ] {
            let text = format!(r#"{{"architectures":["Gemma3ForCausalLM"],{base},{extra}}}"#);
            let e = ModelConfig::parse(&text, std::path::Path::new("c.json"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("c.json") && e.contains(field), "{extra}: {e}");
        }
    }

    #[test]
    fn hf_defaults_follow_transformers() {
        let text = r#"{"architectures":["Gemma2ForCausalLM"],"vocab_size":16,"hidden_size":8,
            "intermediate_size":16,"num_hidden_layers":3,"num_attention_heads":2,"head_dim":4,
            "max_position_embeddings":64,"final_logit_softcapping":null}"#;
        let c = ModelConfig::parse(text, std::path::Path::new("c.json"));
        let c = c.as_ref().map_err(ToString::to_string);
        assert!(c.is_ok(), "{c:?}");
        if let Ok(c) = c {
            assert!(c.tie_word_embeddings);
            let s = c.extra::<Settings>().map_err(|e| e.to_string());
            assert!(s.is_ok(), "{s:?}");
            if let Ok(s) = s {
                assert_eq!(s.attn_softcap, Some(50.0));
                assert_eq!(s.final_softcap, None);
                assert_eq!(s.window, Some(4096));
                assert_eq!(s.sliding, [true, false, true]);
                assert!((s.attn_scale - 1.0 / 16.0).abs() < 1e-12);
            }
        }
    }
}
