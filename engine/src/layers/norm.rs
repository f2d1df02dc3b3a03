//! RMSNorm, with Gemma's `1 + w` weight as an option, and LayerNorm (BERT).

use burn::tensor::{DType, FloatDType, Tensor};

/// `x / sqrt(mean(x²) + eps) · w` over the last dimension.
pub struct RmsNorm {
    weight: Tensor<1>,
    eps: f64,
}

impl RmsNorm {
    /// `weight` as stored; with `plus_one` (Gemma) the scale applied is `1 + weight`.
    pub fn new(weight: Tensor<1>, eps: f64, plus_one: bool) -> RmsNorm {
        let weight = if plus_one {
            weight.add_scalar(1.0)
        } else {
            weight
        };
        RmsNorm { weight, eps }
    }

    /// `x`: `[rows, features]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        // Reduced in f32 whatever the storage type: squares of f16 activations overflow.
        let dtype = x.dtype();
        let x32 = if dtype == DType::F32 {
            x
        } else {
            x.cast(FloatDType::F32)
        };
        let var = x32.clone().square().mean_dim(1);
        let normed = x32 * var.add_scalar(self.eps).sqrt().recip();
        let normed = if dtype == DType::F32 {
            normed
        } else {
            normed.cast(FloatDType::F16)
        };
        normed * self.weight.clone().unsqueeze::<2>()
    }

    /// Per-head norm (Qwen3's and Gemma 3's q/k norm): `x` is `[rows, heads × d]` with this
    /// norm's weight of size `d`.
    pub fn forward_heads(&self, x: Tensor<2>, heads: usize) -> Tensor<2> {
        let [rows, width] = x.dims();
        let d = width / heads.max(1);
        self.forward(x.reshape([rows * heads, d]))
            .reshape([rows, width])
    }
}

/// LayerNorm: `(x − mean(x)) / sqrt(var(x) + eps) · w + b` over the last dimension (BERT).
pub struct LayerNorm {
    weight: Tensor<1>,
    bias: Tensor<1>,
    eps: f64,
}

impl LayerNorm {
    pub fn new(weight: Tensor<1>, bias: Tensor<1>, eps: f64) -> LayerNorm {
        LayerNorm { weight, bias, eps }
    }

    /// `x`: `[rows, features]`, reduced in f32 whatever the storage type.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let dtype = x.dtype();
        let x32 = if dtype == DType::F32 {
            x
        } else {
            x.cast(FloatDType::F32)
        };
        let centered = x32.clone() - x32.mean_dim(1);
        let var = centered.clone().square().mean_dim(1);
        let normed = centered * var.add_scalar(self.eps).sqrt().recip();
        let normed = if dtype == DType::F32 {
            normed
        } else {
            normed.cast(FloatDType::F16)
        };
        normed * self.weight.clone().unsqueeze::<2>() + self.bias.clone().unsqueeze::<2>()
    }
}
