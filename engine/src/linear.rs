//! Linear layers: `x · Wᵀ (+ b)` with `W` stored as PyTorch does, `[out, in]`.
//!
//! Every projection of the model (q/k/v/o, gate/up/down, LM head) goes through [`Linear`], so
//! how a weight is stored and multiplied (a burn tensor today; quantized blocks and CPU
//! kernels of our own) is decided here and nowhere else.

use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::EngineError;
use crate::weights::Weights;

/// One projection `[in] → [out]`.
pub struct Linear {
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
}

impl Linear {
    /// Loads `{name}.weight` (`[out, inp]`) and, with `bias`, `{name}.bias` (`[out]`).
    pub fn load(
        weights: &Weights,
        name: &str,
        inp: usize,
        out: usize,
        bias: bool,
        device: &Device,
        dtype: DType,
    ) -> Result<Linear, EngineError> {
        let mut linear =
            Self::load_matrix(weights, &format!("{name}.weight"), inp, out, device, dtype)?;
        if bias {
            let b = weights.f32(&format!("{name}.bias"), &[out])?;
            linear.bias = Some(Tensor::from_data(
                TensorData::new(b, [out]),
                (device, dtype),
            ));
        }
        Ok(linear)
    }

    /// A bias-free projection from the full tensor name `tensor` (`[out, inp]`), e.g. a tied
    /// LM head reusing the token embeddings.
    pub fn load_matrix(
        weights: &Weights,
        tensor: &str,
        inp: usize,
        out: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<Linear, EngineError> {
        let w = weights.f32(tensor, &[out, inp])?;
        Ok(Linear {
            weight: Tensor::from_data(TensorData::new(w, [out, inp]), (device, dtype)),
            bias: None,
        })
    }

    /// `x`: `[rows, in]` → `[rows, out]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let y = x.matmul(self.weight.clone().transpose());
        match &self.bias {
            Some(b) => y + b.clone().unsqueeze::<2>(),
            None => y,
        }
    }
}
