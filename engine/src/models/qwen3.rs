//! Qwen3 (dense): the Llama layout without q/k/v biases, plus an RMSNorm over each query and
//! key head (`q_norm`, `k_norm`, weight `[head_dim]`) before RoPE. `head_dim` is explicit
//! (128 in the released models, whatever `hidden_size / num_attention_heads` is).

use burn::tensor::{DType, Device};

use crate::EngineError;
use crate::layers::Loader;
use crate::layers::attention::{Attention, Batch, BatchItem, BatchShape, QkNorm};
use crate::layers::linear::Linear;
use crate::layers::mlp::{Activation, Mlp};
use crate::layers::norm::RmsNorm;
use crate::layers::rope::Rope;
use crate::models::config::{GgufMeta, HfConfig, ModelConfig};
use crate::models::{CausalLm, Family, llama_like_gguf_name};
use crate::weights::RowTable;

pub struct Qwen3;

impl Family for Qwen3 {
    fn name(&self) -> &'static str {
        "qwen3"
    }

    fn hf_architectures(&self) -> &'static [&'static str] {
        &["Qwen3ForCausalLM", "qwen3"]
    }

    fn gguf_architectures(&self) -> &'static [&'static str] {
        &["qwen3"]
    }

    fn config_from_hf(&self, hf: &HfConfig) -> Result<ModelConfig, EngineError> {
        hf.require_act("hidden_act", &["silu"])?;
        let mut c = hf.common("qwen3")?;
        if let Some(reason) = c.partial_rotary_refusal() {
            return Err(hf.err(reason));
        }
        // Sliding-window layers (when enabled) see the last `sliding_window` positions:
        // inside that many positions every layer attends fully.
        if hf.opt_bool("use_sliding_window")?.unwrap_or(false)
            && let Some(w) = hf.sliding_window()
        {
            c.context_length = c.context_length.min(w);
        }
        c.mlp_bias = false;
        Ok(c)
    }

    fn config_from_gguf(&self, meta: &GgufMeta<'_>) -> Result<ModelConfig, EngineError> {
        let c = meta.common("qwen3")?;
        match c.partial_rotary_refusal() {
            Some(reason) => Err(meta.err(reason)),
            None => Ok(c),
        }
    }

    fn gguf_tensor_name(&self, gguf: &str) -> String {
        llama_like_gguf_name(gguf, |kind| match kind {
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
        Ok(Box::new(Qwen3Model::load(config, loader)?))
    }
}

struct Layer {
    attn_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    qk_norm: QkNorm,
    o: Linear,
    mlp_norm: RmsNorm,
    mlp: Mlp,
}

struct Qwen3Model {
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

impl Qwen3Model {
    fn load(config: &ModelConfig, ld: &Loader<'_>) -> Result<Qwen3Model, EngineError> {
        let c = config;
        let (h, hd, eps) = (c.hidden_size, c.head_dim, c.rms_norm_eps);
        let q_out = c.num_heads * hd;
        let kv_out = c.num_kv_heads * hd;
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            let a = format!("{p}.self_attn");
            layers.push(Layer {
                attn_norm: ld.rms_norm(&format!("{p}.input_layernorm.weight"), h, eps, false)?,
                q: ld.linear(&format!("{a}.q_proj"), h, q_out, c.qkv_bias)?,
                k: ld.linear(&format!("{a}.k_proj"), h, kv_out, c.qkv_bias)?,
                v: ld.linear(&format!("{a}.v_proj"), h, kv_out, c.qkv_bias)?,
                qk_norm: QkNorm {
                    q: ld.rms_norm(&format!("{a}.q_norm.weight"), hd, eps, false)?,
                    k: ld.rms_norm(&format!("{a}.k_norm.weight"), hd, eps, false)?,
                },
                o: ld.linear(&format!("{a}.o_proj"), q_out, h, c.o_bias)?,
                mlp_norm: ld.rms_norm(
                    &format!("{p}.post_attention_layernorm.weight"),
                    h,
                    eps,
                    false,
                )?,
                mlp: ld.mlp(
                    &format!("{p}.mlp"),
                    h,
                    c.intermediate_size,
                    false,
                    Activation::Silu,
                )?,
            });
        }
        Ok(Qwen3Model {
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
}

impl CausalLm for Qwen3Model {
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
            let q = layer.q.forward(normed.clone());
            let k = layer.k.forward(normed.clone());
            let v = layer.v.forward(normed);
            let attn = self
                .attention
                .forward(li, &batch, items, q, k, v, Some(&layer.qk_norm))?;
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
        self.layers
            .first()
            .map_or_else(|| self.lm_head.storage(), |l| l.q.storage())
    }
}
