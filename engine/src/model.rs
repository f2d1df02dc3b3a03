//! The Llama-family decoder forward pass in burn: embedding, RMSNorm, RoPE, grouped-query
//! attention with a per-sequence KV cache, SwiGLU MLP, final norm and LM head.
//!
//! One call ([`Model::forward_batch`]) runs several sequences, each over its own `n` new
//! tokens (a prefill chunk or one decode token): every activation is `[rows, features]` with
//! all items' rows stacked, so each projection runs once per layer for the whole batch, while
//! RoPE and attention (`[kv_heads, group × n, keys]`) run per item against its own cache.

use burn::tensor::activation::{silu, softmax};
use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};

use crate::EngineError;
use crate::hf_config::ModelConfig;
use crate::linear::Linear;
use crate::spec::Quantize;
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

/// The keys and values of every position a sequence has seen, per layer: `[kv_heads,
/// capacity, head_dim]` tensors of which the first `len` positions are filled. Capacity
/// doubles when full, so a decode step writes one position in place instead of copying the
/// whole cache (`Tensor::cat` on every step did).
pub struct KvCache {
    layers: Vec<Option<(Tensor<3>, Tensor<3>)>>,
    len: usize,
}

/// Smallest capacity a cache tensor is allocated with, in positions.
const MIN_CAPACITY: usize = 32;

impl KvCache {
    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Drops every cached position (recompute preemption), keeping the layer count.
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
        self.len = 0;
    }

    /// Writes `k`, `v` (`[kv_heads, n, head_dim]`) at positions `past..past + n` of `layer`
    /// and returns the filled keys and values `[kv_heads, past + n, head_dim]`.
    fn append(
        &mut self,
        layer: usize,
        past: usize,
        k: Tensor<3>,
        v: Tensor<3>,
    ) -> (Tensor<3>, Tensor<3>) {
        let [heads, n, hd] = k.dims();
        let total = past + n;
        let (kc, vc) = match self.layers[layer].take() {
            Some((kc, vc)) if kc.dims()[1] >= total => (kc, vc),
            old => {
                let cap = total.max(MIN_CAPACITY).next_power_of_two();
                let fresh = || Tensor::<3>::zeros([heads, cap, hd], (&k.device(), k.dtype()));
                let (mut kc, mut vc) = (fresh(), fresh());
                if let Some((ko, vo)) = old
                    && past > 0
                {
                    kc = kc.slice_assign([0..heads, 0..past, 0..hd], ko.narrow(1, 0, past));
                    vc = vc.slice_assign([0..heads, 0..past, 0..hd], vo.narrow(1, 0, past));
                }
                (kc, vc)
            }
        };
        let kc = kc.slice_assign([0..heads, past..total, 0..hd], k);
        let vc = vc.slice_assign([0..heads, past..total, 0..hd], v);
        let out = (
            kc.clone().narrow(1, 0, total),
            vc.clone().narrow(1, 0, total),
        );
        self.layers[layer] = Some((kc, vc));
        out
    }
}

/// One sequence's part of a batched forward pass.
pub struct BatchItem<'a> {
    /// The new tokens, after the positions already in `cache`.
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
    /// Return the logits of the last new position (the chunk that ends a prompt, a decode).
    pub want_logits: bool,
}

/// Where an item's rows sit in the stacked activation, and its per-position tables.
struct Span {
    offset: usize,
    n: usize,
    past: usize,
    cos: Tensor<3>,
    sin: Tensor<3>,
    mask: Option<Tensor<3>>,
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
        quantize: Option<Quantize>,
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
            Linear::load_with(weights, name, inp, out, bias, device, dtype, quantize)
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
        let lm_head =
            Linear::load_matrix_with(weights, head_name, h, c.vocab_size, device, dtype, quantize)?;
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

    /// How the projection weights are stored (`bf16`, `q8_0`, `f16` on a GPU, …).
    pub fn weight_format(&self) -> &'static str {
        self.layers
            .first()
            .map_or_else(|| self.lm_head.storage(), |l| l.q.storage())
    }

    /// Bytes one cached position takes across all layers.
    pub fn kv_bytes_per_token(&self) -> usize {
        let elem = if self.dtype == DType::F16 { 2 } else { 4 };
        crate::kv::kv_bytes_per_token(
            self.layers.len(),
            self.config.num_kv_heads,
            self.config.head_dim,
            elem,
        )
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
        let mut items = [BatchItem {
            tokens,
            cache,
            want_logits: true,
        }];
        self.forward_batch(&mut items)?
            .pop()
            .flatten()
            .ok_or_else(|| inference("the batch returned no logits"))
    }

    /// One forward pass over several sequences at once. Every item's new tokens are stacked
    /// into one `[rows, hidden]` activation, so each projection runs once per layer for the
    /// whole batch (the weights are read once per step); RoPE and attention run per item, at
    /// its own positions against its own cache. Returns, per item, the logits of its last
    /// position when `want_logits` is set.
    pub fn forward_batch(
        &self,
        items: &mut [BatchItem<'_>],
    ) -> Result<Vec<Option<Vec<f32>>>, EngineError> {
        let c = &self.config;
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let (h, hd, nh, nkv) = (c.hidden_size, c.head_dim, c.num_heads, c.num_kv_heads);
        let group = nh / nkv;
        let mut rows = Vec::new();
        let mut spans = Vec::with_capacity(items.len());
        let mut offset = 0;
        for item in items.iter() {
            let n = item.tokens.len();
            if n == 0 {
                return Err(inference("forward called with no tokens"));
            }
            let past = item.cache.len;
            if past + n > c.context_length {
                return Err(EngineError::Inference(format!(
                    "sequence of {} tokens exceeds the context length {}",
                    past + n,
                    c.context_length
                )));
            }
            for &t in item.tokens {
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
            let (cos, sin) = self.rope_tables(past, n);
            let mask = (n > 1).then(|| self.causal_mask(past, n, group));
            spans.push(Span {
                offset,
                n,
                past,
                cos,
                sin,
                mask,
            });
            offset += n;
        }
        let total_rows = offset;
        let mut x: Tensor<2> = Tensor::from_data(
            TensorData::new(rows, [total_rows, h]),
            (&self.device, self.dtype),
        );
        let scale = 1.0 / (hd as f64).sqrt();

        for (li, layer) in self.layers.iter().enumerate() {
            let normed = self.rms_norm(x.clone(), &layer.attn_norm);
            let q_all = layer.q.forward(normed.clone());
            let k_all = layer.k.forward(normed.clone());
            let v_all = layer.v.forward(normed);
            let mut outs = Vec::with_capacity(items.len());
            for (item, sp) in items.iter_mut().zip(&spans) {
                let n = sp.n;
                let rows_of = |t: &Tensor<2>, heads: usize| {
                    t.clone()
                        .narrow(0, sp.offset, n)
                        .reshape([n, heads, hd])
                        .swap_dims(0, 1)
                };
                let q = Self::apply_rope(rows_of(&q_all, nh), &sp.cos, &sp.sin);
                let k = Self::apply_rope(rows_of(&k_all, nkv), &sp.cos, &sp.sin);
                let v = rows_of(&v_all, nkv);
                let (keys, values) = item.cache.append(li, sp.past, k, v);

                // Query heads h·group..(h+1)·group share kv head h: fold the group into rows.
                let q = q.reshape([nkv, group * n, hd]);
                let mut scores = q.matmul(keys.swap_dims(1, 2)).mul_scalar(scale);
                if self.dtype != DType::F32 {
                    scores = scores.cast(FloatDType::F32);
                }
                if let Some(mask) = &sp.mask {
                    scores = scores + mask.clone();
                }
                let mut probs = softmax(scores, 2);
                if self.dtype != DType::F32 {
                    probs = probs.cast(FloatDType::F16);
                }
                outs.push(
                    probs
                        .matmul(values)
                        .reshape([nh, n, hd])
                        .swap_dims(0, 1)
                        .reshape([n, nh * hd]),
                );
            }
            let attn = if outs.len() == 1 {
                outs.pop().ok_or_else(|| inference("empty batch"))?
            } else {
                Tensor::cat(outs, 0)
            };
            x = x + layer.o.forward(attn);

            let normed = self.rms_norm(x.clone(), &layer.mlp_norm);
            let gated = silu(layer.gate.forward(normed.clone())) * layer.up.forward(normed);
            x = x + layer.down.forward(gated);
        }
        for (item, sp) in items.iter_mut().zip(&spans) {
            item.cache.len = sp.past + sp.n;
        }

        // The LM head only on the rows whose logits are wanted: one per finishing item.
        let wanted: Vec<usize> = items
            .iter()
            .zip(&spans)
            .filter(|(item, _)| item.want_logits)
            .map(|(_, sp)| sp.offset + sp.n - 1)
            .collect();
        let mut out = vec![None; items.len()];
        if wanted.is_empty() {
            return Ok(out);
        }
        let last: Vec<Tensor<2>> = wanted.iter().map(|&r| x.clone().narrow(0, r, 1)).collect();
        let last = if last.len() == 1 {
            last.into_iter()
                .next()
                .ok_or_else(|| inference("empty batch"))?
        } else {
            Tensor::cat(last, 0)
        };
        let logits = self.lm_head.forward(self.rms_norm(last, &self.norm));
        let flat = logits
            .try_into_vec_as::<f32>()
            .map_err(|e| inference(format!("{e:?}")))?;
        let vocab = flat.len() / wanted.len();
        let mut chunks = flat.chunks_exact(vocab);
        for (slot, item) in out.iter_mut().zip(items.iter()) {
            if item.want_logits {
                *slot = chunks.next().map(<[f32]>::to_vec);
            }
        }
        Ok(out)
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
