//! The pieces architectures are built from: projections ([`linear`]), norms ([`norm`]),
//! rotary embeddings ([`rope`]), attention with its KV cache and the batched step layout
//! ([`attention`]) and gated MLPs ([`mlp`]). An architecture in [`crate::models`] combines
//! them in its own forward pass; [`Loader`] reads their weights by name.

pub mod attention;
pub mod gpu_pages;
pub mod linear;
pub mod mlp;
pub mod norm;
pub mod rope;

use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::EngineError;
use crate::spec::Quantize;
use crate::weights::{RowTable, Weights};
use linear::Linear;
use mlp::{Activation, GateUp, Mlp};
use norm::RmsNorm;

/// Reads layers from a model's weights (Hugging Face names, `[out, in]` layout) onto a
/// device, at the file's precision or quantized as the operator asked.
pub struct Loader<'a> {
    pub weights: &'a Weights,
    pub device: &'a Device,
    pub dtype: DType,
    pub quantize: Option<Quantize>,
}

impl Loader<'_> {
    /// `{name}.weight` `[out, inp]` (and `{name}.bias` `[out]` with `bias`).
    pub fn linear(
        &self,
        name: &str,
        inp: usize,
        out: usize,
        bias: bool,
    ) -> Result<Linear, EngineError> {
        Linear::load_with(
            self.weights,
            name,
            inp,
            out,
            bias,
            self.device,
            self.dtype,
            self.quantize,
        )
    }

    /// The bias-free projection of the full tensor name `tensor` (`[out, inp]`).
    pub fn matrix(&self, tensor: &str, inp: usize, out: usize) -> Result<Linear, EngineError> {
        Linear::load_matrix_with(
            self.weights,
            tensor,
            inp,
            out,
            self.device,
            self.dtype,
            self.quantize,
        )
    }

    /// A 1-D tensor `[n]` on the device.
    pub fn vector(&self, tensor: &str, n: usize) -> Result<Tensor<1>, EngineError> {
        let data = self.weights.f32(tensor, &[n])?;
        Ok(Tensor::from_data(
            TensorData::new(data, [n]),
            (self.device, self.dtype),
        ))
    }

    /// The RMSNorm of weight `tensor` (`[n]`).
    pub fn rms_norm(
        &self,
        tensor: &str,
        n: usize,
        eps: f64,
        plus_one: bool,
    ) -> Result<RmsNorm, EngineError> {
        Ok(RmsNorm::new(self.vector(tensor, n)?, eps, plus_one))
    }

    /// The token embeddings `[vocab, hidden]`, kept as stored.
    pub fn embeddings(
        &self,
        tensor: &str,
        vocab: usize,
        hidden: usize,
    ) -> Result<RowTable, EngineError> {
        self.weights.rows(tensor, vocab, hidden)
    }

    /// The LM head: `head` (`[vocab, hidden]`), or the token embeddings `embed` when the
    /// model ties them (or `head` is absent and `tied` says it may be: a missing head of an
    /// untied model is reported by name).
    pub fn lm_head(
        &self,
        head: &str,
        embed: &str,
        tied: bool,
        vocab: usize,
        hidden: usize,
    ) -> Result<Linear, EngineError> {
        let name = if tied || !self.weights.contains(head) {
            if !tied {
                // Surface the missing tensor by name rather than silently tying.
                self.weights.f32(head, &[vocab, hidden])?;
            }
            embed
        } else {
            head
        };
        self.matrix(name, hidden, vocab)
    }

    /// A gated MLP with separate `{prefix}.gate_proj` / `{prefix}.up_proj` and
    /// `{prefix}.down_proj`.
    pub fn mlp(
        &self,
        prefix: &str,
        hidden: usize,
        intermediate: usize,
        bias: bool,
        act: Activation,
    ) -> Result<Mlp, EngineError> {
        Ok(Mlp {
            gate_up: GateUp::Separate {
                gate: self.linear(&format!("{prefix}.gate_proj"), hidden, intermediate, bias)?,
                up: self.linear(&format!("{prefix}.up_proj"), hidden, intermediate, bias)?,
            },
            down: self.linear(&format!("{prefix}.down_proj"), intermediate, hidden, bias)?,
            act,
            intermediate,
        })
    }
}
