//! The block-quantized tensor types GGUF files hold and the engine reads: their ggml ids,
//! block geometry and one dequantization entry point for all of them.

use super::{QK, QuantError, iquants, kquants, legacy};

/// Elements per super-block of the K-quants and `IQ4_XS` (ggml's `QK_K`).
pub const QK_K: usize = 256;

/// A ggml block type (`enum ggml_type`). Every type cuts a row into blocks of
/// [`QType::block_elems`] elements stored in [`QType::block_bytes`] bytes; a row of a GGUF
/// tensor is a whole number of blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[expect(
    non_camel_case_types,
    reason = "ggml's type names, as GGUF files and llama.cpp users spell them"
)]
pub enum QType {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    IQ4_NL,
    IQ4_XS,
}

impl QType {
    /// Every supported type, in ggml id order.
    pub const ALL: [QType; 12] = [
        QType::Q4_0,
        QType::Q4_1,
        QType::Q5_0,
        QType::Q5_1,
        QType::Q8_0,
        QType::Q2_K,
        QType::Q3_K,
        QType::Q4_K,
        QType::Q5_K,
        QType::Q6_K,
        QType::IQ4_NL,
        QType::IQ4_XS,
    ];

    /// The type with ggml id `id`, if the engine reads it.
    pub fn from_ggml(id: u32) -> Option<QType> {
        QType::ALL.into_iter().find(|t| t.ggml_id() == id)
    }

    /// ggml's id for the type (`GGML_TYPE_*`).
    pub fn ggml_id(self) -> u32 {
        match self {
            QType::Q4_0 => 2,
            QType::Q4_1 => 3,
            QType::Q5_0 => 6,
            QType::Q5_1 => 7,
            QType::Q8_0 => 8,
            QType::Q2_K => 10,
            QType::Q3_K => 11,
            QType::Q4_K => 12,
            QType::Q5_K => 13,
            QType::Q6_K => 14,
            QType::IQ4_NL => 20,
            QType::IQ4_XS => 23,
        }
    }

    /// ggml's name (`Q4_K`).
    pub fn name(self) -> &'static str {
        match self {
            QType::Q4_0 => "Q4_0",
            QType::Q4_1 => "Q4_1",
            QType::Q5_0 => "Q5_0",
            QType::Q5_1 => "Q5_1",
            QType::Q8_0 => "Q8_0",
            QType::Q2_K => "Q2_K",
            QType::Q3_K => "Q3_K",
            QType::Q4_K => "Q4_K",
            QType::Q5_K => "Q5_K",
            QType::Q6_K => "Q6_K",
            QType::IQ4_NL => "IQ4_NL",
            QType::IQ4_XS => "IQ4_XS",
        }
    }

    /// Lower-case name, as in logs and `ModelInfo::device` (`q4_k`).
    pub fn lower_name(self) -> &'static str {
        match self {
            QType::Q4_0 => "q4_0",
            QType::Q4_1 => "q4_1",
            QType::Q5_0 => "q5_0",
            QType::Q5_1 => "q5_1",
            QType::Q8_0 => "q8_0",
            QType::Q2_K => "q2_k",
            QType::Q3_K => "q3_k",
            QType::Q4_K => "q4_k",
            QType::Q5_K => "q5_k",
            QType::Q6_K => "q6_k",
            QType::IQ4_NL => "iq4_nl",
            QType::IQ4_XS => "iq4_xs",
        }
    }

    /// Elements per block: 32 for the legacy types and `IQ4_NL`, 256 for the rest.
    pub fn block_elems(self) -> usize {
        match self {
            QType::Q4_0 | QType::Q4_1 | QType::Q5_0 | QType::Q5_1 | QType::Q8_0 => QK,
            QType::IQ4_NL => QK,
            _ => QK_K,
        }
    }

    /// Bytes per block (`sizeof(block_*)` in ggml).
    pub fn block_bytes(self) -> usize {
        match self {
            QType::Q4_0 => super::Q4_0_BLOCK_BYTES,
            QType::Q4_1 => legacy::Q4_1_BLOCK_BYTES,
            QType::Q5_0 => legacy::Q5_0_BLOCK_BYTES,
            QType::Q5_1 => legacy::Q5_1_BLOCK_BYTES,
            QType::Q8_0 => super::Q8_0_BLOCK_BYTES,
            QType::Q2_K => kquants::Q2_K_BLOCK_BYTES,
            QType::Q3_K => kquants::Q3_K_BLOCK_BYTES,
            QType::Q4_K => kquants::Q4_K_BLOCK_BYTES,
            QType::Q5_K => kquants::Q5_K_BLOCK_BYTES,
            QType::Q6_K => kquants::Q6_K_BLOCK_BYTES,
            QType::IQ4_NL => iquants::IQ4_NL_BLOCK_BYTES,
            QType::IQ4_XS => iquants::IQ4_XS_BLOCK_BYTES,
        }
    }

    /// Expands one block (`block_bytes` long) into `out` (`block_elems` long). Shorter
    /// slices leave `out` untouched (callers pass whole blocks, checked once per tensor).
    pub fn dequantize_block(self, block: &[u8], out: &mut [f32]) {
        if block.len() < self.block_bytes() || out.len() < self.block_elems() {
            return;
        }
        match self {
            QType::Q4_0 => dequant32(block, out, super::dequantize_block_q4_0),
            QType::Q8_0 => dequant32(block, out, super::dequantize_block_q8_0),
            QType::Q4_1 => legacy::dequantize_q4_1(block, out),
            QType::Q5_0 => legacy::dequantize_q5_0(block, out),
            QType::Q5_1 => legacy::dequantize_q5_1(block, out),
            QType::Q2_K => kquants::dequantize_q2_k(block, out),
            QType::Q3_K => kquants::dequantize_q3_k(block, out),
            QType::Q4_K => kquants::dequantize_q4_k(block, out),
            QType::Q5_K => kquants::dequantize_q5_k(block, out),
            QType::Q6_K => kquants::dequantize_q6_k(block, out),
            QType::IQ4_NL => iquants::dequantize_iq4_nl(block, out),
            QType::IQ4_XS => iquants::dequantize_iq4_xs(block, out),
        }
    }

    /// Expands whole blocks to `f32`, appending to `out`; trailing bytes short of a block
    /// are an error.
    pub fn dequantize_into(self, bytes: &[u8], out: &mut Vec<f32>) -> Result<(), QuantError> {
        let bb = self.block_bytes();
        if !bytes.len().is_multiple_of(bb) {
            return Err(QuantError::BadBytes {
                bytes: bytes.len(),
                block: bb,
            });
        }
        let n = self.block_elems();
        let mut buf = [0f32; QK_K];
        out.reserve(bytes.len() / bb * n);
        for b in bytes.chunks_exact(bb) {
            self.dequantize_block(b, &mut buf[..n]);
            out.extend_from_slice(&buf[..n]);
        }
        Ok(())
    }

    /// Expands whole blocks to `f32`.
    pub fn dequantize(self, bytes: &[u8]) -> Result<Vec<f32>, QuantError> {
        let mut out = Vec::new();
        self.dequantize_into(bytes, &mut out)?;
        Ok(out)
    }
}

fn dequant32(block: &[u8], out: &mut [f32], f: fn(&[u8], &mut [f32; QK])) {
    if let Some(o) = out.first_chunk_mut::<QK>() {
        f(block, o);
    }
}

impl std::fmt::Display for QType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
