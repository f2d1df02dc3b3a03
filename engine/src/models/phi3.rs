//! Phi-3 / 3.5 / Phi-4-mini: the Llama layout with the q/k/v projections fused into one
//! `qkv_proj` (rows: q, then k, then v) and the MLP's gate and up fused into `gate_up_proj`
//! (gate rows first), RoPE optionally partial (`partial_rotary_factor`, Phi-4-mini) and
//! scaled by LongRoPE ("longrope", formerly "su": short/long per-pair factors and an
//! attention factor on cos/sin).
//!
//! Which LongRoPE factor set a step uses follows transformers: the long set once the
//! sequence (its cached positions plus the step's) exceeds `original_max_position_embeddings`,
//! the short set before. llama.cpp instead picks by the context size it was given; both agree
//! on a prompt longer than the original context, and on shorter prompts when llama.cpp's
//! context does not exceed it.
//!
//! GGUF (`phi3`): `attn_qkv` (or separate `attn_q`/`attn_k`/`attn_v`), fused `ffn_up`,
//! `rope_factors_long` / `rope_factors_short` tensors, `phi3.rope.scaling.attn_factor` and
//! `phi3.rope.scaling.original_context_length`. Its `attention.sliding_window` is ignored, as
//! llama.cpp ignores it for Phi.

use burn::tensor::{DType, Device, Tensor};

use crate::EngineError;
use crate::layers::Loader;
use crate::layers::attention::{Attention, Batch, BatchItem, BatchShape};
use crate::layers::linear::Linear;
use crate::layers::mlp::{Activation, GateUp, Mlp};
use crate::layers::norm::RmsNorm;
use crate::layers::rope::{LongRope, Rope, RopeScaling};
use crate::models::config::{GgufMeta, HfConfig, ModelConfig};
use crate::models::{CausalLm, Family, llama_like_gguf_name};
use crate::weights::RowTable;

pub struct Phi3;

impl Family for Phi3 {
    fn name(&self) -> &'static str {
        "phi3"
    }

    fn hf_architectures(&self) -> &'static [&'static str] {
        &["Phi3ForCausalLM", "phi3"]
    }

    fn gguf_architectures(&self) -> &'static [&'static str] {
        &["phi3"]
    }

    fn config_from_hf(&self, hf: &HfConfig) -> Result<ModelConfig, EngineError> {
        hf.require_act("hidden_act", &["silu"])?;
        let mut c = hf.common("phi3")?;
        // transformers masks Phi-3's attention to `sliding_window` positions (llama.cpp does
        // not); inside the window that is full attention, so the context is capped to it.
        if let Some(w) = hf.sliding_window() {
            c.context_length = c.context_length.min(w);
        }
        c.qkv_bias = false;
        c.o_bias = false;
        c.mlp_bias = false;
        Ok(c)
    }

    fn config_from_gguf(&self, meta: &GgufMeta<'_>) -> Result<ModelConfig, EngineError> {
        let mut c = meta.common("phi3")?;
        let pairs = c.rotary_dim / 2;
        let long = meta.factors("rope_factors_long.weight", pairs)?;
        let short = meta.factors("rope_factors_short.weight", pairs)?;
        match (long, short) {
            (Some(long_factor), Some(short_factor)) => {
                let arch = meta.arch;
                let original = match meta.get("rope.scaling.original_context_length") {
                    Some(_) => meta.need("rope.scaling.original_context_length")?,
                    None => {
                        return Err(meta.err(format!(
                            "metadata `{arch}.rope.scaling.original_context_length`: missing \
                             (needed with the rope_factors_long/short tensors)"
                        )));
                    }
                };
                let attention_factor = meta.float("rope.scaling.attn_factor", Some(1.0))?;
                if !(attention_factor.is_finite() && attention_factor > 0.0) {
                    return Err(meta.err(format!(
                        "metadata `{arch}.rope.scaling.attn_factor`: {attention_factor} must be \
                         positive"
                    )));
                }
                c.rope_scaling = RopeScaling::LongRope(LongRope {
                    short_factor,
                    long_factor,
                    original_max_position_embeddings: original as f64,
                    attention_factor,
                });
            }
            (None, None) => {}
            _ => {
                return Err(meta.err(
                    "tensors `rope_factors_long.weight` and `rope_factors_short.weight`: only \
                     one of the pair is present",
                ));
            }
        }
        Ok(c)
    }

    fn gguf_tensor_name(&self, gguf: &str) -> String {
        llama_like_gguf_name(gguf, |kind| match kind {
            "attn_qkv" => Some("self_attn.qkv_proj"),
            "ffn_up" => Some("mlp.gate_up_proj"),
            _ => None,
        })
    }

    fn load(
        &self,
        config: &ModelConfig,
        loader: &Loader<'_>,
    ) -> Result<Box<dyn CausalLm>, EngineError> {
        Ok(Box::new(Phi3Model::load(config, loader)?))
    }
}

/// The q/k/v projections: fused (`qkv_proj`) as Phi-3 ships them, or separate (a GGUF may
/// hold either).
#[expect(
    clippy::large_enum_variant,
    reason = "one per layer, built once at load; never moved on the hot path"
)]
enum Qkv {
    Fused(Linear),
    Separate { q: Linear, k: Linear, v: Linear },
}

struct Layer {
    attn_norm: RmsNorm,
    qkv: Qkv,
    o: Linear,
    mlp_norm: RmsNorm,
    mlp: Mlp,
}

struct Phi3Model {
    config: ModelConfig,
    embed: RowTable,
    layers: Vec<Layer>,
    attention: Attention,
    rope: Rope,
    norm: RmsNorm,
    lm_head: Linear,
    device: Device,
    dtype: DType,
}

impl Phi3Model {
    fn load(config: &ModelConfig, ld: &Loader<'_>) -> Result<Phi3Model, EngineError> {
        let c = config;
        let (h, hd, eps, inter) = (
            c.hidden_size,
            c.head_dim,
            c.rms_norm_eps,
            c.intermediate_size,
        );
        let q_out = c.num_heads * hd;
        let kv_out = c.num_kv_heads * hd;
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            let a = format!("{p}.self_attn");
            let qkv = if ld.weights.contains(&format!("{a}.q_proj.weight"))
                && !ld.weights.contains(&format!("{a}.qkv_proj.weight"))
            {
                Qkv::Separate {
                    q: ld.linear(&format!("{a}.q_proj"), h, q_out, false)?,
                    k: ld.linear(&format!("{a}.k_proj"), h, kv_out, false)?,
                    v: ld.linear(&format!("{a}.v_proj"), h, kv_out, false)?,
                }
            } else {
                Qkv::Fused(ld.linear(&format!("{a}.qkv_proj"), h, q_out + 2 * kv_out, false)?)
            };
            layers.push(Layer {
                attn_norm: ld.rms_norm(&format!("{p}.input_layernorm.weight"), h, eps, false)?,
                qkv,
                o: ld.linear(&format!("{a}.o_proj"), q_out, h, false)?,
                mlp_norm: ld.rms_norm(
                    &format!("{p}.post_attention_layernorm.weight"),
                    h,
                    eps,
                    false,
                )?,
                mlp: Mlp {
                    gate_up: GateUp::Fused(ld.linear(
                        &format!("{p}.mlp.gate_up_proj"),
                        h,
                        2 * inter,
                        false,
                    )?),
                    down: ld.linear(&format!("{p}.mlp.down_proj"), inter, h, false)?,
                    act: Activation::Silu,
                    intermediate: inter,
                },
            });
        }
        Ok(Phi3Model {
            config: c.clone(),
            embed: ld.embeddings("model.embed_tokens.weight", c.vocab_size, h)?,
            layers,
            attention: Attention {
                heads: c.num_heads,
                kv_heads: c.num_kv_heads,
                head_dim: hd,
                scale: 1.0 / (hd as f64).sqrt(),
                softcap: None,
                rope: 0,
                window: 0,
            },
            rope: Rope::new(c.rope_theta, c.rotary_dim, &c.rope_scaling),
            norm: ld.rms_norm("model.norm.weight", h, eps, false)?,
            lm_head: ld.lm_head(
                "lm_head.weight",
                "model.embed_tokens.weight",
                c.tie_word_embeddings,
                c.vocab_size,
                h,
            )?,
            device: ld.device.clone(),
            dtype: ld.dtype,
        })
    }

    /// `[rows, hidden]` → q `[rows, heads × d]`, k and v `[rows, kv_heads × d]`.
    fn qkv(&self, qkv: &Qkv, x: Tensor<2>) -> (Tensor<2>, Tensor<2>, Tensor<2>) {
        match qkv {
            Qkv::Separate { q, k, v } => (q.forward(x.clone()), k.forward(x.clone()), v.forward(x)),
            Qkv::Fused(w) => {
                let c = &self.config;
                let q_out = c.num_heads * c.head_dim;
                let kv_out = c.num_kv_heads * c.head_dim;
                let y = w.forward(x);
                (
                    y.clone().narrow(1, 0, q_out),
                    y.clone().narrow(1, q_out, kv_out),
                    y.narrow(1, q_out + kv_out, kv_out),
                )
            }
        }
    }
}

impl CausalLm for Phi3Model {
    fn forward_batch(
        &self,
        items: &mut [BatchItem<'_>],
    ) -> Result<Vec<Option<Vec<f32>>>, EngineError> {
        let c = &self.config;
        let shape = BatchShape {
            context_length: c.context_length,
            ropes: &[&self.rope],
            windows: &[None],
            group: c.num_heads / c.num_kv_heads,
            device: &self.device,
            dtype: self.dtype,
        };
        let (batch, mut x) = Batch::new(items, &self.embed, c.hidden_size, &shape)?;
        for (li, layer) in self.layers.iter().enumerate() {
            let normed = layer.attn_norm.forward(x.clone());
            let (q, k, v) = self.qkv(&layer.qkv, normed);
            let attn = self.attention.forward(li, &batch, items, q, k, v, None)?;
            x = x + layer.o.forward(attn);
            let normed = layer.mlp_norm.forward(x.clone());
            x = x + layer.mlp.forward(normed);
        }
        batch.finish(
            items,
            x,
            |h| self.norm.forward(h),
            |h| self.lm_head.forward(h),
        )
    }

    fn weight_format(&self) -> &'static str {
        self.layers.first().map_or_else(
            || self.lm_head.storage(),
            |l| match &l.qkv {
                Qkv::Fused(w) => w.storage(),
                Qkv::Separate { q, .. } => q.storage(),
            },
        )
    }
}
