//! Llama 1/2/3/3.x, TinyLlama, SmolLM/SmolLM2, Mistral and Qwen2/2.5: pre-norm decoder
//! layers of RMSNorm, grouped-query attention with RoPE, and a SwiGLU MLP; final norm and LM
//! head (tied or not). Qwen2 adds biases on q/k/v; Llama may have `attention_bias` /
//! `mlp_bias`; Mistral's (and Qwen2's optional) sliding window caps the context, since
//! within the window full attention is windowed attention.

use burn::tensor::{DType, Device};

use crate::EngineError;
use crate::layers::Loader;
use crate::layers::attention::{Attention, Batch, BatchItem, BatchShape};
use crate::layers::linear::Linear;
use crate::layers::mlp::{Activation, Mlp};
use crate::layers::norm::RmsNorm;
use crate::layers::rope::Rope;
use crate::models::config::{GgufMeta, HfConfig, ModelConfig};
use crate::models::{CausalLm, Family, llama_like_gguf_name};
use crate::weights::RowTable;

pub struct Llama;

impl Family for Llama {
    fn name(&self) -> &'static str {
        "llama"
    }

    fn hf_architectures(&self) -> &'static [&'static str] {
        &[
            "LlamaForCausalLM",
            "MistralForCausalLM",
            "Qwen2ForCausalLM",
            "llama",
            "mistral",
            "qwen2",
        ]
    }

    fn gguf_architectures(&self) -> &'static [&'static str] {
        &["llama", "qwen2"]
    }

    fn config_from_hf(&self, hf: &HfConfig) -> Result<ModelConfig, EngineError> {
        let arch = hf.architecture()?;
        let label = match arch.as_str() {
            "MistralForCausalLM" | "mistral" => "mistral",
            "Qwen2ForCausalLM" | "qwen2" => "qwen2",
            _ => "llama",
        };
        hf.require_act("hidden_act", &["silu"])?;
        let mut c = hf.common(label)?;
        if let Some(reason) = c.partial_rotary_refusal() {
            return Err(hf.err(reason));
        }
        let window_on = match label {
            "mistral" => true,
            "qwen2" => hf.opt_bool("use_sliding_window")?.unwrap_or(false),
            _ => false,
        };
        if window_on && let Some(w) = hf.sliding_window() {
            c.context_length = c.context_length.min(w);
        }
        if label == "qwen2" {
            // Qwen2 always has q/k/v biases and never an output-projection bias.
            c.qkv_bias = true;
            c.o_bias = false;
        }
        Ok(c)
    }

    fn config_from_gguf(&self, meta: &GgufMeta<'_>) -> Result<ModelConfig, EngineError> {
        let label = if meta.arch == "qwen2" {
            "qwen2"
        } else {
            "llama"
        };
        let mut c = meta.common(label)?;
        if let Some(reason) = c.partial_rotary_refusal() {
            return Err(meta.err(reason));
        }
        if label == "qwen2" {
            c.qkv_bias = true;
        }
        Ok(c)
    }

    fn gguf_tensor_name(&self, gguf: &str) -> String {
        llama_like_gguf_name(gguf, |_| None)
    }

    /// llama.cpp permutes q/k rows only for the `llama` architecture (the others use
    /// NEOX-style RoPE, which is Hugging Face's layout).
    fn gguf_permuted_heads(&self, meta: &GgufMeta<'_>, gguf: &str) -> Option<usize> {
        if meta.arch != "llama" {
            return None;
        }
        let heads = |key: &str| meta.need(key).ok();
        match gguf.rsplit('.').nth(1) {
            Some("attn_q") => heads("attention.head_count"),
            Some("attn_k") => heads("attention.head_count_kv").or(heads("attention.head_count")),
            _ => None,
        }
    }

    fn load(
        &self,
        config: &ModelConfig,
        loader: &Loader<'_>,
    ) -> Result<Box<dyn CausalLm>, EngineError> {
        Ok(Box::new(LlamaModel::load(config, loader)?))
    }
}

struct Layer {
    attn_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    mlp_norm: RmsNorm,
    mlp: Mlp,
}

struct LlamaModel {
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

impl LlamaModel {
    fn load(config: &ModelConfig, ld: &Loader<'_>) -> Result<LlamaModel, EngineError> {
        let c = config;
        let (h, hd, eps) = (c.hidden_size, c.head_dim, c.rms_norm_eps);
        let q_out = c.num_heads * hd;
        let kv_out = c.num_kv_heads * hd;
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            layers.push(Layer {
                attn_norm: ld.rms_norm(&format!("{p}.input_layernorm.weight"), h, eps, false)?,
                q: ld.linear(&format!("{p}.self_attn.q_proj"), h, q_out, c.qkv_bias)?,
                k: ld.linear(&format!("{p}.self_attn.k_proj"), h, kv_out, c.qkv_bias)?,
                v: ld.linear(&format!("{p}.self_attn.v_proj"), h, kv_out, c.qkv_bias)?,
                o: ld.linear(&format!("{p}.self_attn.o_proj"), q_out, h, c.o_bias)?,
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
                    c.mlp_bias,
                    Activation::Silu,
                )?,
            });
        }
        let embed = ld.embeddings("model.embed_tokens.weight", c.vocab_size, h)?;
        let lm_head = ld.lm_head(
            "lm_head.weight",
            "model.embed_tokens.weight",
            c.tie_word_embeddings,
            c.vocab_size,
            h,
        )?;
        Ok(LlamaModel {
            config: c.clone(),
            embed,
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
            lm_head,
            device: ld.device.clone(),
            dtype: ld.dtype,
        })
    }
}

impl CausalLm for LlamaModel {
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
        self.layers
            .first()
            .map_or_else(|| self.lm_head.storage(), |l| l.q.storage())
    }
}
