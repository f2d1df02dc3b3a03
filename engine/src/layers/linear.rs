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
//! * on a wgpu device, a GGUF file's `Q8_0` and `Q4_0` blocks (and `quantize = "q8"` /
//!   `"q4"`) stay blocks in GPU memory: burn's block-quantized tensor, 8-bit values with one
//!   `f16` scale per 32 inputs, which burn's matmul dequantizes inside its kernel
//!   ([`gpu_blocks`]); the K-quants (and `IQ4_XS`) likewise as 8-bit values with an `f32`
//!   scale per 16, their minima applied by a second, 16× smaller product
//!   ([`gpu_k_blocks`]); every other weight is a burn tensor in the device's float dtype
//!   (f16 on GPUs), the other block types dequantized at load.

use burn::tensor::quantization::{QuantScheme, QuantStore, QuantValue, ScaleDtype};
use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::EngineError;
use crate::kernels::{Format, PackedMatrix};
use crate::quant::kquants::{self, GROUPS, KBlock};
use crate::quant::{self, QK, QK_K, QType, iquants};
use crate::spec::Quantize;
use crate::tensor_file::WeightDType;
use crate::weights::Weights;

enum Weight {
    Tensor(Box<Tensor<2>>),
    /// Block-quantized on a GPU ([`gpu_blocks`]), from blocks of `Format`.
    Blocks(Box<Tensor<2>>, Format),
    /// K-quant blocks on a GPU ([`gpu_k_blocks`]): `W = A∘Q − M`, `A∘Q` block-quantized (16
    /// inputs a scale) and `M` the groups' minima (`[out, inp / 16]`; `None` for the types
    /// without), so `x·Wᵀ = x·(A∘Q)ᵀ − Σ₁₆(x)·Mᵀ`.
    KBlocks {
        values: Box<Tensor<2>>,
        mins: Option<Box<Tensor<2>>>,
        format: Format,
    },
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
    /// LM head reusing the token embeddings, at the file's precision or quantized (on a GPU
    /// `Q8_0`/`Q4_0` only: [`gpu_blocks`]).
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
                let packed =
                    PackedMatrix::from_blocks(&raw.bytes, out, inp, format).map_err(|e| {
                        EngineError::Load {
                            path: tensor.into(),
                            reason: e.to_string(),
                        }
                    })?;
                return Ok(Linear {
                    weight: Weight::Packed(packed),
                    bias: None,
                });
            }
        }
        if !cpu && quantize.is_none() {
            // The file's `Q8_0`/`Q4_0` blocks as they are.
            let raw = weights.raw(tensor, &[out, inp])?;
            if let WeightDType::Quant(t @ (QType::Q8_0 | QType::Q4_0)) = raw.dtype
                && let Some(w) = gpu_blocks(&raw.bytes, Format::Quant(t), out, inp, device)
            {
                return Ok(Linear {
                    weight: Weight::Blocks(Box::new(w), Format::Quant(t)),
                    bias: None,
                });
            }
            if let WeightDType::Quant(t) = raw.dtype
                && let Some(weight) = gpu_k_blocks(&raw.bytes, t, out, inp, device, dtype)
            {
                return Ok(Linear { weight, bias: None });
            }
        }
        let w = weights.f32(tensor, &[out, inp])?;
        let weight = match (cpu, quantize) {
            (false, None) => Weight::Tensor(Box::new(Tensor::from_data(
                TensorData::new(w, [out, inp]),
                (device, dtype),
            ))),
            (false, Some(q)) => {
                let (format, blocks) = match q {
                    Quantize::Q8 => (Format::Q8_0, quant::quantize_q8_0(&w)),
                    Quantize::Q4 => (Format::Q4_0, quant::quantize_q4_0(&w)),
                };
                let refused = |reason: String| EngineError::Load {
                    path: tensor.into(),
                    reason: format!("quantize = \"{}\": {reason}", q.name()),
                };
                let blocks = blocks.map_err(|e| refused(e.to_string()))?;
                let w = gpu_blocks(&blocks, format, out, inp, device).ok_or_else(|| {
                    refused("its blocks have no exact 8-bit form on the GPU".into())
                })?;
                Weight::Blocks(Box::new(w), format)
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

    /// How the weight is stored: `bf16`, `q8_0`, … on the CPU; `q8_0`/`q4_0` blocks or the
    /// device dtype on a GPU.
    pub fn storage(&self) -> &'static str {
        match &self.weight {
            Weight::Packed(p) => p.format().name(),
            Weight::Blocks(_, format) | Weight::KBlocks { format, .. } => format.name(),
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
            Weight::Tensor(w) | Weight::Blocks(w, _) => x.matmul(w.as_ref().clone().transpose()),
            Weight::KBlocks { values, mins, .. } => {
                let y = x.clone().matmul(values.as_ref().clone().transpose());
                match mins {
                    Some(m) => {
                        let [rows, inp] = x.dims();
                        let groups = inp / 16;
                        let sums = x
                            .reshape([rows, groups, 16])
                            .sum_dim(2)
                            .reshape([rows, groups]);
                        y - sums.matmul(m.as_ref().clone().transpose())
                    }
                    None => y,
                }
            }
            Weight::Packed(w) => {
                let device = x.device();
                let dtype = x.dtype();
                let [rows, _] = x.dims();
                let xs = host_rows(x);
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

    /// The CPU matrix of a projection without a bias, which [`Linear::host_matmul`] runs.
    fn host_matrix(&self) -> Option<&PackedMatrix> {
        match (&self.weight, &self.bias) {
            (Weight::Packed(w), None) => Some(w),
            _ => None,
        }
    }

    /// `xs` (`rows` rows of this matrix's inputs, on the host) times the weights, for a CPU
    /// matrix without a bias: what [`Linear::forward`] computes for it, without a tensor on
    /// either side. `None` for a device tensor, a bias, or a shape that does not fit.
    pub fn host_matmul(&self, xs: &[f32], rows: usize) -> Option<Vec<f32>> {
        self.host_matrix()?.matmul_t(xs, rows)
    }

    /// Whether [`Linear::host_matmul`] can run this matrix.
    pub fn on_host(&self) -> bool {
        self.host_matrix().is_some()
    }

    /// A bias-free CPU projection from packed weights (tests).
    #[cfg(test)]
    pub(crate) fn from_packed(w: PackedMatrix) -> Linear {
        Linear {
            weight: Weight::Packed(w),
            bias: None,
        }
    }
}

/// A tensor's values on the host, row-major, as `f32`.
pub fn host_rows(x: Tensor<2>) -> Vec<f32> {
    let data = x.into_data();
    match data.as_slice::<f32>() {
        Ok(s) => s.to_vec(),
        Err(_) => data.iter::<f32>().collect(),
    }
}

/// `Q8_0` or `Q4_0` blocks (`[out, inp]`, `inp` a multiple of 32) as burn's block-quantized
/// tensor on `device`: 8-bit values packed four to a `u32`, one `f16` scale per block of 32
/// along the input dimension. Exact for both types: a `Q8_0` value is its byte, a `Q4_0`
/// value `q − 8`; a negative scale (`Q4_0` makes them) is stored negated with the values
/// negated, since burn stores scales as non-negative. `Q4_0` takes 8.5 bits per weight here,
/// not 4.5: burn 0.22.1's packed 4-bit tensors fail to upload on wgpu. `None` when the bytes
/// do not hold such blocks, or a block has no exact form (a negative `Q8_0` scale with a
/// value of −128); the caller then keeps a dense tensor.
fn gpu_blocks(
    bytes: &[u8],
    format: Format,
    out: usize,
    inp: usize,
    device: &Device,
) -> Option<Tensor<2>> {
    let (block_bytes, q4) = match format {
        Format::Quant(QType::Q8_0) => (2 + QK, false),
        Format::Quant(QType::Q4_0) => (2 + QK / 2, true),
        _ => return None,
    };
    if !inp.is_multiple_of(QK) || bytes.len() != out * (inp / QK) * block_bytes {
        return None;
    }
    let (values, scales) = block_values(bytes, block_bytes, q4)?;
    Some(eight_bit_blocks(
        values,
        [out, inp],
        QK,
        ScaleDtype::F16,
        &scales,
        device,
    ))
}

/// `values` (`shape`) under one non-negative scale per `block` inputs as burn's
/// block-quantized tensor on `device`: 8-bit values packed four to a `u32`.
fn eight_bit_blocks(
    values: Vec<i8>,
    shape: [usize; 2],
    block: usize,
    scale: ScaleDtype,
    scales: &[f32],
    device: &Device,
) -> Tensor<2> {
    let scheme = QuantScheme::default()
        .with_value(QuantValue::Q8F)
        .with_store(QuantStore::PackedU32(0))
        .per_block([block as u8], scale);
    Tensor::from_data(
        TensorData::quantized(values, shape, scheme, scales, None),
        device,
    )
}

/// Appends `q` under scale `d` to `values` as burn stores blocks, with a non-negative scale
/// (a negative one negates the values); returns that scale. `None` when a value has no
/// negation in `i8` (−128).
fn push_signed(values: &mut Vec<i8>, q: impl IntoIterator<Item = i8>, d: f32) -> Option<f32> {
    if d < 0.0 {
        for v in q {
            values.push(v.checked_neg()?);
        }
    } else {
        values.extend(q);
    }
    Some(d.abs())
}

/// K-quant (`Q2_K` … `Q6_K`, `IQ4_XS`) blocks (`[out, inp]`, `inp` a multiple of 256) on
/// `device`: every group of 16 inputs as 8-bit values `q` under one `f32` scale `d·sc` (exact:
/// an `f16` times a small integer), block-quantized as in [`gpu_blocks`], and the groups'
/// minima `dmin·m` as a dense `[out, inp / 16]` tensor for the types that have them; about
/// 10–12 bits a weight where f16 takes 16. `None` for other types or bytes that do not hold
/// such blocks.
fn gpu_k_blocks(
    bytes: &[u8],
    t: QType,
    out: usize,
    inp: usize,
    device: &Device,
    dtype: DType,
) -> Option<Weight> {
    let unpack: fn(&[u8], &mut KBlock) = match t {
        QType::Q2_K => kquants::unpack_q2_k,
        QType::Q3_K => kquants::unpack_q3_k,
        QType::Q4_K => kquants::unpack_q4_k,
        QType::Q5_K => kquants::unpack_q5_k,
        QType::Q6_K => kquants::unpack_q6_k,
        QType::IQ4_XS => iquants::unpack_iq4_xs,
        _ => return None,
    };
    let block_bytes = t.block_bytes();
    if !inp.is_multiple_of(QK_K) || bytes.len() != out * (inp / QK_K) * block_bytes {
        return None;
    }
    let groups = out * inp / 16;
    let mut values: Vec<i8> = Vec::with_capacity(out * inp);
    let mut scales = Vec::with_capacity(groups);
    let mut mins = Vec::with_capacity(groups);
    let mut with_mins = false;
    let mut k = KBlock::default();
    for block in bytes.chunks_exact(block_bytes) {
        unpack(block, &mut k);
        with_mins |= k.dmin.is_some();
        for g in 0..GROUPS {
            let q = k.q[16 * g..16 * (g + 1)].iter().copied();
            scales.push(push_signed(&mut values, q, k.d * k.scales[g] as f32)?);
            mins.push(k.dmin.map_or(0.0, |dm| dm * k.mins[g] as f32));
        }
    }
    let values = eight_bit_blocks(values, [out, inp], 16, ScaleDtype::F32, &scales, device);
    let mins = with_mins.then(|| {
        Box::new(Tensor::from_data(
            TensorData::new(mins, [out, inp / 16]),
            (device, dtype),
        ))
    });
    Some(Weight::KBlocks {
        values: Box::new(values),
        mins,
        format: Format::Quant(t),
    })
}

/// The values (`i8`, 32 per block) and non-negative scales of `Q8_0` (`q4`: `Q4_0`) blocks.
fn block_values(bytes: &[u8], block_bytes: usize, q4: bool) -> Option<(Vec<i8>, Vec<f32>)> {
    let blocks = bytes.len() / block_bytes;
    let mut values = Vec::with_capacity(blocks * QK);
    let mut scales = Vec::with_capacity(blocks);
    for block in bytes.chunks_exact(block_bytes) {
        let d = quant::block_scale(block);
        let scale = if q4 {
            let qs = &block[2..2 + QK / 2];
            let lo = qs.iter().map(|&b| (b & 0x0f) as i8 - 8);
            let hi = qs.iter().map(|&b| (b >> 4) as i8 - 8);
            push_signed(&mut values, lo.chain(hi), d)
        } else {
            push_signed(&mut values, block[2..2 + QK].iter().map(|&b| b as i8), d)
        };
        scales.push(scale?);
    }
    Some((values, scales))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values and scales reproduce the blocks' own dequantization exactly, negative
    /// `Q4_0` scales included.
    #[test]
    fn block_values_are_exact() {
        let x: Vec<f32> = (0..4 * QK)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * if i < 2 * QK { 0.013 } else { -0.4 })
            .collect();
        for (blocks, q4, deq) in [
            (
                quant::quantize_q8_0(&x).unwrap(),
                false,
                quant::dequantize_q8_0 as fn(&[u8]) -> _,
            ),
            (
                quant::quantize_q4_0(&x).unwrap(),
                true,
                quant::dequantize_q4_0,
            ),
        ] {
            let want = deq(&blocks).unwrap();
            let block_bytes = blocks.len() / 4;
            let (values, scales) = block_values(&blocks, block_bytes, q4).unwrap();
            let got: Vec<f32> = values
                .iter()
                .enumerate()
                .map(|(i, &v)| f32::from(v) * scales[i / QK])
                .collect();
            assert_eq!(got, want, "q4 = {q4}");
            assert!(scales.iter().all(|&d| d >= 0.0));
        }
        // Q4_0 scales are negative where a block's largest value is positive.
        let q4 = quant::quantize_q4_0(&x).unwrap();
        assert!(q4.chunks_exact(18).any(|b| quant::block_scale(b) < 0.0));
        // A negative Q8_0 scale with a value of −128 has no exact form.
        let mut odd = quant::quantize_q8_0(&x[..QK]).unwrap();
        odd[..2].copy_from_slice(&half::f16::from_f32(-0.5).to_bits().to_le_bytes());
        odd[2] = 0x80;
        assert!(block_values(&odd, 2 + QK, false).is_none());
    }
}
