//! The Llama-family decoder forward pass in burn: embedding, RMSNorm, RoPE, grouped-query
//! attention with a per-sequence KV cache, SwiGLU MLP, final norm and LM head.
//!
//! One call runs one sequence over `n` new tokens (`n` > 1 is prefill, 1 is decode). Every
//! activation is `[tokens, features]` and attention is `[kv_heads, group × tokens, keys]`,
//! so stepping several sequences in one pass later means stacking along a leading batch
//! axis, not rewriting the layers.

use burn::tensor::activation::{silu, softmax};
use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};

use crate::EngineError;
use crate::hf_config::ModelConfig;
use crate::linear::Linear;
use crate::weights::{RowTable, Weights};

struct Layer {
    attn_norm: Tensor<1>,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    mlp_norm: Tensor<1>,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// The keys and values of every position a sequence has seen, per layer.
pub struct KvCache {
    layers: Vec<Option<(Tensor<3>, Tensor<3>)>>,
    len: usize,
}

impl KvCache {
    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A loaded model on one device.
pub struct Model {
    pub config: ModelConfig,
    device: Device,
    dtype: DType,
    embed: RowTable,
    layers: Vec<Layer>,
    norm: Tensor<1>,
    lm_head: Linear,
    inv_freq: Vec<f32>,
}

fn inference(e: impl std::fmt::Display) -> EngineError {
    EngineError::Inference(e.to_string())
}

impl Model {
    /// Builds the model from `weights`, checking every tensor's presence and shape.
    pub fn load(
        config: ModelConfig,
        weights: &Weights,
        device: &Device,
        dtype: DType,
    ) -> Result<Model, EngineError> {
        let c = &config;
        let (h, hd) = (c.hidden_size, c.head_dim);
        let q_out = c.num_heads * hd;
        let kv_out = c.num_kv_heads * hd;
        let t1 = |data: Vec<f32>| -> Tensor<1> {
            let n = data.len();
            Tensor::from_data(TensorData::new(data, [n]), (device, dtype))
        };
        let linear = |name: &str, inp: usize, out: usize, bias: bool| {
            Linear::load(weights, name, inp, out, bias, device, dtype)
        };
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            layers.push(Layer {
                attn_norm: t1(weights.f32(&format!("{p}.input_layernorm.weight"), &[h])?),
                q: linear(&format!("{p}.self_attn.q_proj"), h, q_out, c.qkv_bias)?,
                k: linear(&format!("{p}.self_attn.k_proj"), h, kv_out, c.qkv_bias)?,
                v: linear(&format!("{p}.self_attn.v_proj"), h, kv_out, c.qkv_bias)?,
                o: linear(&format!("{p}.self_attn.o_proj"), q_out, h, c.o_bias)?,
                mlp_norm: t1(weights.f32(&format!("{p}.post_attention_layernorm.weight"), &[h])?),
                gate: linear(
                    &format!("{p}.mlp.gate_proj"),
                    h,
                    c.intermediate_size,
                    c.mlp_bias,
                )?,
                up: linear(
                    &format!("{p}.mlp.up_proj"),
                    h,
                    c.intermediate_size,
                    c.mlp_bias,
                )?,
                down: linear(
                    &format!("{p}.mlp.down_proj"),
                    c.intermediate_size,
                    h,
                    c.mlp_bias,
                )?,
            });
        }
        let embed = weights.rows("model.embed_tokens.weight", c.vocab_size, h)?;
        let head_name = if c.tie_word_embeddings || !weights.contains("lm_head.weight") {
            if !c.tie_word_embeddings {
                // Surface the missing tensor by name rather than silently tying.
                weights.f32("lm_head.weight", &[c.vocab_size, h])?;
            }
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        };
        let lm_head = Linear::load_matrix(weights, head_name, h, c.vocab_size, device, dtype)?;
        let norm = t1(weights.f32("model.norm.weight", &[h])?);
        let inv_freq = config.inv_freq().into_iter().map(|f| f as f32).collect();
        Ok(Model {
            config,
            device: device.clone(),
            dtype,
            embed,
            layers,
            norm,
            lm_head,
            inv_freq,
        })
    }

    /// An empty cache for a new sequence.
    pub fn new_cache(&self) -> KvCache {
        KvCache {
            layers: (0..self.layers.len()).map(|_| None).collect(),
            len: 0,
        }
    }

    /// Bytes one cached position takes across all layers.
    pub fn kv_bytes_per_token(&self) -> usize {
        let elem = if self.dtype == DType::F16 { 2 } else { 4 };
        2 * self.layers.len() * self.config.num_kv_heads * self.config.head_dim * elem
    }

    fn rms_norm(&self, x: Tensor<2>, weight: &Tensor<1>) -> Tensor<2> {
        // Reduced in f32 whatever the storage type: squares of f16 activations overflow.
        let x32 = if self.dtype == DType::F32 {
            x
        } else {
            x.cast(FloatDType::F32)
        };
        let var = x32.clone().square().mean_dim(1);
        let normed = x32 * var.add_scalar(self.config.rms_norm_eps).sqrt().recip();
        let normed = if self.dtype == DType::F32 {
            normed
        } else {
            normed.cast(FloatDType::F16)
        };
        normed * weight.clone().unsqueeze::<2>()
    }

    /// `cos` and `sin` tables `[n, head_dim]` for positions `start..start + n`, computed the
    /// way transformers does (f32 angles, halves duplicated).
    fn rope_tables(&self, start: usize, n: usize) -> (Tensor<3>, Tensor<3>) {
        let hd = self.config.head_dim;
        let half = hd / 2;
        let mut cos = Vec::with_capacity(n * hd);
        let mut sin = Vec::with_capacity(n * hd);
        for p in start..start + n {
            let row: Vec<f32> = self.inv_freq.iter().map(|f| f * p as f32).collect();
            for _ in 0..2 {
                cos.extend(row.iter().map(|a| (*a as f64).cos() as f32));
                sin.extend(row.iter().map(|a| (*a as f64).sin() as f32));
            }
        }
        debug_assert_eq!(cos.len(), n * 2 * half);
        let make = |d: Vec<f32>| {
            Tensor::<3>::from_data(TensorData::new(d, [1, n, hd]), (&self.device, self.dtype))
        };
        (make(cos), make(sin))
    }

    fn apply_rope(x: Tensor<3>, cos: &Tensor<3>, sin: &Tensor<3>) -> Tensor<3> {
        let [_, _, hd] = x.dims();
        let half = hd / 2;
        let x1 = x.clone().narrow(2, 0, half);
        let x2 = x.clone().narrow(2, half, half);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 2);
        x * cos.clone() + rotated * sin.clone()
    }

    /// Runs `tokens` through the model after the positions already in `cache`, appends their
    /// keys and values to it, and returns the logits of the last position (`f32`, vocab-sized).
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>, EngineError> {
        let c = &self.config;
        let n = tokens.len();
        if n == 0 {
            return Err(EngineError::Inference(
                "forward called with no tokens".into(),
            ));
        }
        let past = cache.len;
        let total = past + n;
        if total > c.context_length {
            return Err(EngineError::Inference(format!(
                "sequence of {total} tokens exceeds the context length {}",
                c.context_length
            )));
        }
        let (h, hd, nh, nkv) = (c.hidden_size, c.head_dim, c.num_heads, c.num_kv_heads);
        let group = nh / nkv;

        let mut rows = Vec::with_capacity(n * h);
        for &t in tokens {
            self.embed.push_row(t as usize, &mut rows).ok_or_else(|| {
                EngineError::InvalidRequest {
                    param: "prompt",
                    reason: format!(
                        "token id {t} is outside the vocabulary ({})",
                        self.embed.rows()
                    ),
                }
            })?;
        }
        let mut x: Tensor<2> =
            Tensor::from_data(TensorData::new(rows, [n, h]), (&self.device, self.dtype));
        let (cos, sin) = self.rope_tables(past, n);
        let mask = (n > 1).then(|| self.causal_mask(past, n, group));
        let scale = 1.0 / (hd as f64).sqrt();

        for (layer, slot) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let normed = self.rms_norm(x.clone(), &layer.attn_norm);
            let q = layer
                .q
                .forward(normed.clone())
                .reshape([n, nh, hd])
                .swap_dims(0, 1);
            let k = layer
                .k
                .forward(normed.clone())
                .reshape([n, nkv, hd])
                .swap_dims(0, 1);
            let v = layer
                .v
                .forward(normed)
                .reshape([n, nkv, hd])
                .swap_dims(0, 1);
            let q = Self::apply_rope(q, &cos, &sin);
            let k = Self::apply_rope(k, &cos, &sin);
            let (k_all, v_all) = match slot.take() {
                Some((kc, vc)) => (Tensor::cat(vec![kc, k], 1), Tensor::cat(vec![vc, v], 1)),
                None => (k, v),
            };
            *slot = Some((k_all.clone(), v_all.clone()));

            // Query heads h·group..(h+1)·group share kv head h: fold the group into rows.
            let q = q.reshape([nkv, group * n, hd]);
            let mut scores = q.matmul(k_all.swap_dims(1, 2)).mul_scalar(scale);
            if self.dtype != DType::F32 {
                scores = scores.cast(FloatDType::F32);
            }
            if let Some(mask) = &mask {
                scores = scores + mask.clone();
            }
            let mut probs = softmax(scores, 2);
            if self.dtype != DType::F32 {
                probs = probs.cast(FloatDType::F16);
            }
            let attn = probs
                .matmul(v_all)
                .reshape([nh, n, hd])
                .swap_dims(0, 1)
                .reshape([n, nh * hd]);
            x = x + layer.o.forward(attn);

            let normed = self.rms_norm(x.clone(), &layer.mlp_norm);
            let gated = silu(layer.gate.forward(normed.clone())) * layer.up.forward(normed);
            x = x + layer.down.forward(gated);
        }
        cache.len = total;

        let last = x.narrow(0, n - 1, 1);
        let logits = self.lm_head.forward(self.rms_norm(last, &self.norm));
        logits
            .try_into_vec_as::<f32>()
            .map_err(|e| inference(format!("{e:?}")))
    }

    /// Additive mask `[1, group × n, past + n]`: row `g·n + i` is query position `past + i`,
    /// which may see keys `0..=past + i`.
    fn causal_mask(&self, past: usize, n: usize, group: usize) -> Tensor<3> {
        let total = past + n;
        let mut data = Vec::with_capacity(group * n * total);
        for _ in 0..group {
            for i in 0..n {
                data.extend((0..total).map(|j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }));
            }
        }
        Tensor::from_data(
            TensorData::new(data, [1, group * n, total]),
            (&self.device, DType::F32),
        )
    }
}
