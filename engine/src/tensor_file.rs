//! Tensor-file primitives shared by the safetensors and GGUF readers (neither imports the
//! other): element types, the bounds-checked conversion of stored bytes to `f32`, and reading
//! a weight file (checked against the integrity manifest when there is one).
//!
//! Files are read, not memory-mapped: see [`crate::weights`] for why.

use std::path::Path;

use crate::EngineError;
use crate::manifest::{Vouched, read_unverified};
use crate::quant::QType;

/// Element types we convert from. [`WeightDType::Quant`] is one of GGUF's block types (see
/// [`crate::quant`]): a row is a run of 32- or 256-element blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightDType {
    F32,
    F16,
    BF16,
    Quant(QType),
}

impl WeightDType {
    /// Elements per block (1 for plain floats).
    pub fn block_elems(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Quant(t) => t.block_elems(),
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Quant(t) => t.block_bytes(),
        }
    }

    /// ggml's name for the type (`F32`, `BF16`, `Q4_K`).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Quant(t) => t.name(),
        }
    }

    /// Bytes of `n` consecutive elements (`n` a multiple of [`Self::block_elems`]).
    pub fn bytes_for(self, n: usize) -> usize {
        n / self.block_elems() * self.block_bytes()
    }
}

/// Reads a weight file: checked against the manifest when there is one.
pub(crate) fn read_weights(
    path: &Path,
    vouched: Option<&mut Vouched>,
) -> Result<Vec<u8>, EngineError> {
    match vouched {
        Some(v) => v.read(path),
        None => read_unverified(path),
    }
}

/// Appends the `f32` values of `bytes` (elements of `dtype`, whole blocks) to `out`; a
/// trailing partial element or block is ignored (callers check shapes and sizes).
pub(crate) fn convert_into(bytes: &[u8], dtype: WeightDType, out: &mut Vec<f32>) {
    match dtype {
        WeightDType::Quant(t) => {
            // Tensors and row tables hold whole blocks (checked when the file is parsed), so
            // the ragged-tail error cannot happen here; a short read yields fewer values and
            // the caller's shape check reports it.
            let whole = bytes.len() - bytes.len() % t.block_bytes();
            let _ = t.dequantize_into(&bytes[..whole], out);
        }
        WeightDType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        WeightDType::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()),
        ),
        WeightDType::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()),
        ),
    }
}
