//! BERT-style encoders (all-MiniLM, bge, e5, gte: `BertModel`; `XLMRobertaModel` /
//! `RobertaModel`, the same block with positions counted from `pad_token_id + 1`): word +
//! absolute position + token-type (always type 0) embeddings and a LayerNorm, then post-LN
//! layers of bidirectional multi-head self-attention (biases on every projection) and a
//! GELU (erf) feed-forward. No causal mask and no KV cache: each input runs through the
//! whole stack in one pass, and what comes out is the last layer's hidden states, which
//! the embedding path pools ([`crate::Pooling`]). An encoder serves embeddings only.
//!
//! Tensor names: Hugging Face's (`embeddings.word_embeddings.weight`,
//! `encoder.layer.N.attention.self.query.weight`, …), with or without the `bert.` /
//! `roberta.` prefix of the task-head checkpoints; GGUF `general.architecture = "bert"` as
//! llama.cpp's converter writes it (`token_embd`, `token_types`, `position_embd`,
//! `token_embd_norm`, `blk.N.attn_q|k|v`, `attn_output`, `attn_output_norm`, `ffn_up`,
//! `ffn_down`, `layer_output_norm`), mapped onto the Hugging Face names.

use burn::tensor::activation::{gelu, softmax};
use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};

use crate::layers::Loader;
use crate::layers::attention::inference;
use crate::layers::linear::Linear;
use crate::layers::norm::LayerNorm;
use crate::models::config::{GgufMeta, HfConfig, ModelConfig};
use crate::models::{BatchItem, CausalLm, Family, Want};
use crate::weights::RowTable;
use crate::{EngineError, Pooling};

pub struct Bert;

/// What only the encoder's forward pass needs.
#[derive(Clone, Copy, Debug)]
struct BertSettings {
    layer_norm_eps: f64,
    /// The position id of the first token (RoBERTa: `pad_token_id + 1`).
    position_offset: usize,
    /// Rows of the position table.
    positions: usize,
    /// Rows of the token-type table.
    type_vocab: usize,
}

/// Model types whose positions start after the padding id.
const ROBERTA: &[&str] = &[
    "XLMRobertaModel",
    "RobertaModel",
    "xlm-roberta",
    "roberta",
];

impl Family for Bert {
    fn name(&self) -> &'static str {
        "bert"
    }

    fn hf_architectures(&self) -> &'static [&'static str] {
        &[
            "BertModel",
            "BertForMaskedLM",
            "XLMRobertaModel",
            "RobertaModel",
            "bert",
            "xlm-roberta",
            "roberta",
        ]
    }

    fn gguf_architectures(&self) -> &'static [&'static str] {
        &["bert"]
    }

    fn config_from_hf(&self, hf: &HfConfig) -> Result<ModelConfig, EngineError> {
        let arch = hf.architecture()?;
        hf.require_act("hidden_act", &["gelu"])?;
        if let Some(kind) = hf.opt_str("position_embedding_type")?
            && kind != "absolute"
        {
            return Err(hf.err(format!(
                "`position_embedding_type`: `{kind}` is not supported (supported: absolute)"
            )));
        }
        let positions = hf.need("max_position_embeddings")?;
        let position_offset = if ROBERTA.contains(&arch.as_str()) {
            hf.opt_usize("pad_token_id")?.unwrap_or(1) + 1
        } else {
            0
        };
        let mut context = positions.checked_sub(position_offset).filter(|&c| c > 0).ok_or_else(|| {
            hf.err(format!(
                "`max_position_embeddings`: {positions} leaves no position after the offset \
                 {position_offset} (pad_token_id + 1)"
            ))
        })?;
        // sentence-transformers truncates to its `max_seq_length`; inputs past it are refused
        // here instead, so an embedding is never of a silently shortened input.
        if let Some(max) = max_seq_length(hf)? {
            context = context.min(max);
        }
        let settings = BertSettings {
            layer_norm_eps: positive_eps(hf.opt_f64("layer_norm_eps")?.unwrap_or(1e-12))
                .ok_or_else(|| hf.err("`layer_norm_eps`: must be positive"))?,
            position_offset,
            positions,
            type_vocab: hf.opt_usize("type_vocab_size")?.unwrap_or(2),
        };
        let mut c = hf.common(if position_offset > 0 { "roberta" } else { "bert" })?;
        encoder_config(&mut c, context, settings, None);
        Ok(c)
    }

    fn config_from_gguf(&self, meta: &GgufMeta<'_>) -> Result<ModelConfig, EngineError> {
        let eps = meta.float("attention.layer_norm_epsilon", Some(1e-12))?;
        let layer_norm_eps = positive_eps(eps).ok_or_else(|| {
            meta.err(format!(
                "metadata `bert.attention.layer_norm_epsilon`: {eps} must be positive"
            ))
        })?;
        let hidden = meta.need("embedding_length")?;
        let rows = |name: &str| -> Result<usize, EngineError> {
            match meta.tensor(name).map(|t| t.shape.as_slice()) {
                Some([rows, cols]) if *cols == hidden => Ok(*rows),
                Some(other) => Err(meta.err(format!(
                    "tensor `{name}` has shape {other:?}, expected [rows, {hidden}]"
                ))),
                None => Err(meta.err(format!("tensor `{name}` is missing"))),
            }
        };
        let positions = rows("position_embd.weight")?;
        let pooling = match meta.get("pooling_type").and_then(crate::gguf::Value::as_u64) {
            None | Some(0) => None,
            Some(1) => Some(Pooling::Mean),
            Some(2) => Some(Pooling::Cls),
            Some(3) => Some(Pooling::Last),
            Some(other) => {
                return Err(meta.err(format!(
                    "metadata `bert.pooling_type`: {other} is not supported (supported: 0 none, \
                     1 mean, 2 cls, 3 last)"
                )));
            }
        };
        let settings = BertSettings {
            layer_norm_eps,
            position_offset: 0,
            positions,
            type_vocab: rows("token_types.weight")?,
        };
        let mut c = meta.common("bert")?;
        let context = c.context_length.min(positions);
        encoder_config(&mut c, context, settings, pooling);
        Ok(c)
    }

    fn gguf_tensor_name(&self, gguf: &str) -> String {
        let top = match gguf {
            "token_embd.weight" => Some("embeddings.word_embeddings.weight"),
            "token_types.weight" => Some("embeddings.token_type_embeddings.weight"),
            "position_embd.weight" => Some("embeddings.position_embeddings.weight"),
            "token_embd_norm.weight" => Some("embeddings.LayerNorm.weight"),
            "token_embd_norm.bias" => Some("embeddings.LayerNorm.bias"),
            _ => None,
        };
        if let Some(hf) = top {
            return hf.into();
        }
        let mut parts = gguf.splitn(4, '.');
        if let (Some("blk"), Some(layer), Some(kind), Some(suffix)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        {
            let hf = match kind {
                "attn_q" => "attention.self.query",
                "attn_k" => "attention.self.key",
                "attn_v" => "attention.self.value",
                "attn_output" => "attention.output.dense",
                "attn_output_norm" => "attention.output.LayerNorm",
                "ffn_up" => "intermediate.dense",
                "ffn_down" => "output.dense",
                "layer_output_norm" => "output.LayerNorm",
                _ => return gguf.into(),
            };
            return format!("encoder.layer.{layer}.{hf}.{suffix}");
        }
        gguf.into()
    }

    fn load(
        &self,
        config: &ModelConfig,
        loader: &Loader<'_>,
    ) -> Result<Box<dyn CausalLm>, EngineError> {
        Ok(Box::new(BertModel::load(config, loader)?))
    }
}

fn positive_eps(eps: f64) -> Option<f64> {
    (eps.is_finite() && eps > 0.0).then_some(eps)
}

/// The length sentence-transformers truncates inputs to, in a sentence-transformers
/// directory: `max_seq_length` of `sentence_bert_config.json` (before 5.0), else the
/// tokenizer's `model_max_length` in `tokenizer_config.json` (where 5.0+ keeps it; read
/// only beside a `modules.json`, and only when it is an integer: plain tokenizers often
/// hold a huge float sentinel there).
fn max_seq_length(hf: &HfConfig) -> Result<Option<usize>, EngineError> {
    let Some(dir) = hf.path().parent() else {
        return Ok(None);
    };
    if !dir.join("modules.json").exists() {
        return Ok(None);
    }
    for (file, key) in [
        ("sentence_bert_config.json", "max_seq_length"),
        ("tokenizer_config.json", "model_max_length"),
    ] {
        let path = dir.join(file);
        if !path.exists() {
            continue;
        }
        let err = |reason: String| EngineError::Load {
            path: path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| err(format!("cannot read: {e}")))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| err(format!("not JSON: {e}")))?;
        if let Some(n) = value
            .get(key)
            .and_then(serde_json::Value::as_u64)
            .and_then(|v| usize::try_from(v).ok())
            .filter(|&v| v > 0)
        {
            return Ok(Some(n));
        }
    }
    Ok(None)
}

/// Turns the shared fields into an encoder's: full attention over `context` positions,
/// biases everywhere, no end-of-sequence tokens (RoPE settings are read but unused).
fn encoder_config(
    c: &mut ModelConfig,
    context: usize,
    settings: BertSettings,
    pooling: Option<Pooling>,
) {
    c.num_kv_heads = c.num_heads;
    c.rotary_dim = c.head_dim;
    c.context_length = context;
    c.tie_word_embeddings = false;
    c.qkv_bias = true;
    c.o_bias = true;
    c.mlp_bias = true;
    c.rms_norm_eps = settings.layer_norm_eps;
    c.eos_token_ids.clear();
    c.encoder = true;
    c.pooling = pooling;
    c.extra = Some(std::sync::Arc::new(settings));
}

struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    attn_norm: LayerNorm,
    up: Linear,
    down: Linear,
    out_norm: LayerNorm,
}

struct BertModel {
    hidden: usize,
    heads: usize,
    head_dim: usize,
    context: usize,
    settings: BertSettings,
    words: RowTable,
    positions: RowTable,
    types: RowTable,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    device: Device,
    dtype: DType,
}

impl BertModel {
    fn load(c: &ModelConfig, ld: &Loader<'_>) -> Result<BertModel, EngineError> {
        let s = *c.extra::<BertSettings>()?;
        let (h, eps) = (c.hidden_size, s.layer_norm_eps);
        // Task-head checkpoints (`BertForMaskedLM`) keep the encoder under `bert.`.
        let prefix = ["", "bert.", "roberta."]
            .into_iter()
            .find(|p| {
                ld.weights
                    .contains(&format!("{p}embeddings.word_embeddings.weight"))
            })
            .unwrap_or("");
        let norm = |name: &str| -> Result<LayerNorm, EngineError> {
            Ok(LayerNorm::new(
                ld.vector(&format!("{prefix}{name}.weight"), h)?,
                ld.vector(&format!("{prefix}{name}.bias"), h)?,
                eps,
            ))
        };
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("{prefix}encoder.layer.{i}");
            let linear = |name: &str, inp: usize, out: usize| {
                ld.linear(&format!("{p}.{name}"), inp, out, true)
            };
            let inner = c.num_heads * c.head_dim;
            layers.push(Layer {
                q: linear("attention.self.query", h, inner)?,
                k: linear("attention.self.key", h, inner)?,
                v: linear("attention.self.value", h, inner)?,
                o: linear("attention.output.dense", inner, h)?,
                attn_norm: norm(&format!("encoder.layer.{i}.attention.output.LayerNorm"))?,
                up: linear("intermediate.dense", h, c.intermediate_size)?,
                down: linear("output.dense", c.intermediate_size, h)?,
                out_norm: norm(&format!("encoder.layer.{i}.output.LayerNorm"))?,
            });
        }
        let table = |name: &str, rows: usize| {
            ld.embeddings(&format!("{prefix}embeddings.{name}.weight"), rows, h)
        };
        Ok(BertModel {
            hidden: h,
            heads: c.num_heads,
            head_dim: c.head_dim,
            context: c.context_length,
            settings: s,
            words: table("word_embeddings", c.vocab_size)?,
            positions: table("position_embeddings", s.positions)?,
            types: table("token_type_embeddings", s.type_vocab.max(1))?,
            embed_norm: norm("embeddings.LayerNorm")?,
            layers,
            device: ld.device.clone(),
            dtype: ld.dtype,
        })
    }

    /// The last layer's hidden states of one whole input, `[n, hidden]` row-major.
    fn encode(&self, tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        let n = tokens.len();
        if n == 0 {
            return Err(inference("forward called with no tokens"));
        }
        if n > self.context {
            return Err(EngineError::Inference(format!(
                "an input of {n} tokens exceeds the encoder's {} positions",
                self.context
            )));
        }
        let h = self.hidden;
        let mut rows = Vec::with_capacity(n * h);
        let (mut pos, mut ty) = (Vec::with_capacity(h), Vec::with_capacity(h));
        self.types
            .push_row(0, &mut ty)
            .ok_or_else(|| inference("no token type 0"))?;
        for (i, &t) in tokens.iter().enumerate() {
            let start = rows.len();
            self.words.push_row(t as usize, &mut rows).ok_or_else(|| {
                EngineError::InvalidRequest {
                    param: "input",
                    reason: format!(
                        "token id {t} is outside the vocabulary ({})",
                        self.words.rows()
                    ),
                }
            })?;
            pos.clear();
            self.positions
                .push_row(self.settings.position_offset + i, &mut pos)
                .ok_or_else(|| inference(format!("no position {i}")))?;
            for ((x, p), t) in rows[start..].iter_mut().zip(&pos).zip(&ty) {
                *x += p + t;
            }
        }
        let x = Tensor::from_data(TensorData::new(rows, [n, h]), (&self.device, self.dtype));
        let mut x = self.embed_norm.forward(x);
        for layer in &self.layers {
            let attn = self.attend(
                layer.q.forward(x.clone()),
                layer.k.forward(x.clone()),
                layer.v.forward(x.clone()),
                n,
            );
            x = layer.attn_norm.forward(x + layer.o.forward(attn));
            let ff = layer.down.forward(gelu(layer.up.forward(x.clone())));
            x = layer.out_norm.forward(x + ff);
        }
        x.try_into_vec_as::<f32>()
            .map_err(|e| inference(format!("{e:?}")))
    }

    /// Bidirectional attention: `q`, `k`, `v` `[n, heads × head_dim]` → `[n, heads × head_dim]`.
    fn attend(&self, q: Tensor<2>, k: Tensor<2>, v: Tensor<2>, n: usize) -> Tensor<2> {
        let (nh, hd) = (self.heads, self.head_dim);
        let split = |t: Tensor<2>| t.reshape([n, nh, hd]).swap_dims(0, 1);
        let dtype = q.dtype();
        let mut scores = split(q)
            .matmul(split(k).swap_dims(1, 2))
            .mul_scalar(1.0 / (hd as f64).sqrt());
        if dtype != DType::F32 {
            scores = scores.cast(FloatDType::F32);
        }
        let mut probs = softmax(scores, 2);
        if dtype != DType::F32 {
            probs = probs.cast(FloatDType::F16);
        }
        probs
            .matmul(split(v))
            .swap_dims(0, 1)
            .reshape([n, nh * hd])
    }
}

impl CausalLm for BertModel {
    fn forward_batch(
        &self,
        items: &mut [BatchItem<'_>],
    ) -> Result<Vec<Option<Vec<f32>>>, EngineError> {
        items
            .iter()
            .map(|item| match item.want {
                Want::Nothing => Ok(None),
                Want::Logits | Want::AllLogits => {
                    Err(inference("an encoder computes embeddings, not logits"))
                }
                Want::Hidden if item.cache.len() > 0 => Err(inference(
                    "an encoder runs each input whole, in one pass (no cache to continue)",
                )),
                Want::Hidden => self.encode(item.tokens).map(Some),
            })
            .collect()
    }

    fn weight_format(&self) -> &'static str {
        self.layers.first().map_or("f32", |l| l.q.storage())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_llama_cpp_bert_names_to_hf_names() {
        for (gguf, hf) in [
            ("token_embd.weight", "embeddings.word_embeddings.weight"),
            ("token_types.weight", "embeddings.token_type_embeddings.weight"),
            ("position_embd.weight", "embeddings.position_embeddings.weight"),
            ("token_embd_norm.bias", "embeddings.LayerNorm.bias"),
            ("blk.3.attn_q.weight", "encoder.layer.3.attention.self.query.weight"),
            ("blk.0.attn_output.bias", "encoder.layer.0.attention.output.dense.bias"),
            (
                "blk.1.attn_output_norm.weight",
                "encoder.layer.1.attention.output.LayerNorm.weight",
            ),
            ("blk.2.ffn_up.bias", "encoder.layer.2.intermediate.dense.bias"),
            ("blk.2.ffn_down.weight", "encoder.layer.2.output.dense.weight"),
            (
                "blk.5.layer_output_norm.bias",
                "encoder.layer.5.output.LayerNorm.bias",
            ),
            ("cls.output.weight", "cls.output.weight"),
        ] {
            assert_eq!(Bert.gguf_tensor_name(gguf), hf);
        }
    }

    #[test]
    fn roberta_positions_start_after_the_padding_id() {
        let text = r#"{"architectures": ["XLMRobertaModel"], "vocab_size": 10,
            "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": 2, "max_position_embeddings": 514, "pad_token_id": 1,
            "hidden_act": "gelu", "type_vocab_size": 1, "layer_norm_eps": 1e-5}"#;
        let c = ModelConfig::parse(text, std::path::Path::new("/nonexistent/config.json"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(c.encoder);
        assert_eq!(c.context_length, 512);
        let s = c.extra::<BertSettings>().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((s.position_offset, s.positions, s.type_vocab), (2, 514, 1));
        let relu = text.replace("\"gelu\"", "\"relu\"");
        let e = ModelConfig::parse(&relu, std::path::Path::new("c.json")).err();
        assert!(
            e.is_some_and(|e| e.to_string().contains("hidden_act")),
            "relu refused"
        );
    }
}
