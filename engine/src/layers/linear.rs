//! Linear layers: `x · Wᵀ (+ b)` with `W` stored as PyTorch does, `[out, in]`.
//!
//! Every projection of the model (q/k/v/o, gate/up/down, LM head) goes through [`Linear`], so
//! how a weight is stored and multiplied is decided here and nowhere else:
//!
//! * on burn's Flex CPU device, `W` is a [`PackedMatrix`] multiplied by our own kernels
//!   ([`crate::kernels`]): the file's 16-bit dtype is kept when it is exact (a bf16
//!   checkpoint stays bf16, half the bytes per decoded token, same results as widening it to
//!   `f32` first), a GGUF file's quantized blocks as stored (every [`crate::quant::QType`]),
//!   or `Q8_0` / `Q4_0` blocks with `quantize`;
//! * on a wgpu device, `W` is a burn tensor in the device's float dtype (f16 on GPUs); a
//!   GGUF file's quantized blocks are dequantized at load. `quantize` is refused there: see
//!   [`Linear::load_with`].

use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::EngineError;
use crate::kernels::{Format, PackedMatrix};
use crate::spec::Quantize;
use crate::tensor_file::WeightDType;
use crate::weights::Weights;

enum Weight {
    Tensor(Box<Tensor<2>>),
    Packed(PackedMatrix),
}

/// One projection `[in] → [out]`.
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor<1>>,
}

impl Linear {
    /// Loads `{name}.weight` (`[out, inp]`) and, with `bias`, `{name}.bias` (`[out]`), at the
    /// file's precision or quantized to `quantize` blocks.
    #[expect(
        clippy::too_many_arguments,
        reason = "shape, device and storage choices"
    )]
    pub fn load_with(
        weights: &Weights,
        name: &str,
        inp: usize,
        out: usize,
        bias: bool,
        device: &Device,
        dtype: DType,
        quantize: Option<Quantize>,
    ) -> Result<Linear, EngineError> {
        let mut linear = Self::load_matrix_with(
            weights,
            &format!("{name}.weight"),
            inp,
            out,
            device,
            dtype,
            quantize,
        )?;
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
    /// LM head reusing the token embeddings, at the file's precision or quantized.
    ///
    /// Quantization runs only on the CPU device: on wgpu it is refused with an error naming
    /// the option (burn 0.22's block-quantized matmul is not wired up here).
    pub fn load_matrix_with(
        weights: &Weights,
        tensor: &str,
        inp: usize,
        out: usize,
        device: &Device,
        dtype: DType,
        quantize: Option<Quantize>,
    ) -> Result<Linear, EngineError> {
        let cpu = *device == Device::flex();
        if cpu {
            // Block-quantized GGUF tensors (any `QType`) are used as stored: no dequantize and
            // requantize round trip, unless `quantize` asks for a different block format.
            let raw = weights.raw(tensor, &[out, inp])?;
            let stored = match raw.dtype {
                WeightDType::Quant(t) => Some(Format::Quant(t)),
                _ => None,
            };
            let wanted = quantize.map(|q| match q {
                Quantize::Q8 => Format::Q8_0,
                Quantize::Q4 => Format::Q4_0,
            });
            if let Some(format) = stored
                && wanted.is_none_or(|w| w == format)
            {
                let packed = PackedMatrix::from_blocks(raw.bytes.into_owned(), out, inp, format)
                    .map_err(|e| EngineError::Load {
                        path: tensor.into(),
                        reason: e.to_string(),
                    })?;
                return Ok(Linear {
                    weight: Weight::Packed(packed),
                    bias: None,
                });
            }
        }
        let w = weights.f32(tensor, &[out, inp])?;
        let weight = match (cpu, quantize) {
            (false, None) => Weight::Tensor(Box::new(Tensor::from_data(
                TensorData::new(w, [out, inp]),
                (device, dtype),
            ))),
            (false, Some(q)) => {
                return Err(EngineError::Device(format!(
                    "quantize = \"{}\" is supported on the CPU device only; remove it or set \
                     device = \"cpu\"",
                    q.name()
                )));
            }
            (true, q) => {
                let packed = match q {
                    None => PackedMatrix::lossless(&w, out, inp),
                    Some(Quantize::Q8) => PackedMatrix::pack(&w, out, inp, Format::Q8_0),
                    Some(Quantize::Q4) => PackedMatrix::pack(&w, out, inp, Format::Q4_0),
                };
                Weight::Packed(packed.map_err(|e| EngineError::Load {
                    path: tensor.into(),
                    reason: match q {
                        Some(q) => format!("quantize = \"{}\": {e}", q.name()),
                        None => e.to_string(),
                    },
                })?)
            }
        };
        Ok(Linear { weight, bias: None })
    }

    /// How the weight is stored: `bf16`, `q8_0`, … on the CPU, the device dtype on a GPU.
    pub fn storage(&self) -> &'static str {
        match &self.weight {
            Weight::Packed(p) => p.format().name(),
            Weight::Tensor(t) => match t.dtype() {
                DType::F16 => "f16",
                DType::BF16 => "bf16",
                _ => "f32",
            },
        }
    }

    /// `x`: `[rows, in]` → `[rows, out]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let y = match &self.weight {
            Weight::Tensor(w) => x.matmul(w.as_ref().clone().transpose()),
            Weight::Packed(w) => {
                let device = x.device();
                let dtype = x.dtype();
                let [rows, _] = x.dims();
                let data = x.into_data();
                let xs: Vec<f32> = match data.as_slice::<f32>() {
                    Ok(s) => s.to_vec(),
                    Err(_) => data.iter::<f32>().collect(),
                };
                let [out, _] = w.shape();
                // `Linear` was built with `inp` columns and the model only feeds it those; a
                // mismatch is a programming error that burn's matmul would panic on too.
                let y = w
                    .matmul_t(&xs, rows)
                    .unwrap_or_else(|| vec![f32::NAN; rows * out]);
                Tensor::from_data(TensorData::new(y, [rows, out]), (&device, dtype))
            }
        };
        match &self.bias {
            Some(b) => y + b.clone().unsqueeze::<2>(),
            None => y,
        }
    }
}
