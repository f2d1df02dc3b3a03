//! Block-quantized weight formats, byte-compatible with GGUF / llama.cpp.
//!
//! [`QType`] names every block type the engine reads (the legacy 32-element types, the
//! K-quants and the 4-bit i-quants) and dequantizes any of them; the layouts are documented
//! in [`legacy`], [`kquants`] and [`iquants`]. Each type also unpacks into an integer form
//! ([`legacy::SmallBlock`], [`kquants::KBlock`]) that the CPU kernels multiply with
//! quantized activations. This file holds the two types the engine can also *produce*
//! (`quantize = "q8" | "q4"` at load):
//!
//! Both formats cut a row into blocks of [`QK`] = 32 elements, each with its own `f16` scale
//! `d`, so one outlier only costs the precision of its own block:
//!
//! * [`Q8_0`](Q8_0_BLOCK_BYTES): `d: f16` then 32 × `i8`; value = `q × d` (34 bytes / block).
//! * [`Q4_0`](Q4_0_BLOCK_BYTES): `d: f16` then 16 bytes of nibbles; byte `j` holds element `j`
//!   in its low nibble and element `j + 16` in its high one; value = `(q − 8) × d`
//!   (18 bytes / block).
//!
//! The scale is little-endian, as in GGUF files, so a tensor read from a GGUF file is already
//! in this layout and [`dequantize_q8_0`] / [`dequantize_q4_0`] apply to it unchanged.
//! Quantization follows llama.cpp's reference (`quantize_row_q8_0_ref`, `quantize_row_q4_0_ref`),
//! so our blocks and llama.cpp's are the same bytes for the same input.

use half::f16;

pub mod iquants;
pub mod kquants;
pub mod legacy;
mod qtype;

pub use qtype::{QK_K, QType};

/// Elements per block.
pub const QK: usize = 32;
/// Bytes of one `Q8_0` block: `f16` scale + 32 × `i8`.
pub const Q8_0_BLOCK_BYTES: usize = 2 + QK;
/// Bytes of one `Q4_0` block: `f16` scale + 32 nibbles.
pub const Q4_0_BLOCK_BYTES: usize = 2 + QK / 2;

/// Why a slice cannot be (de)quantized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    #[error("{len} elements are not a whole number of {QK}-element blocks")]
    Ragged { len: usize },
    #[error("{bytes} bytes are not a whole number of {block}-byte blocks")]
    BadBytes { bytes: usize, block: usize },
}

fn check_len(len: usize) -> Result<usize, QuantError> {
    if len.is_multiple_of(QK) {
        Ok(len / QK)
    } else {
        Err(QuantError::Ragged { len })
    }
}

fn check_bytes(bytes: usize, block: usize) -> Result<usize, QuantError> {
    if bytes.is_multiple_of(block) {
        Ok(bytes / block)
    } else {
        Err(QuantError::BadBytes { bytes, block })
    }
}

/// The block's `f16` scale as `f32`.
#[inline(always)]
pub fn block_scale(block: &[u8]) -> f32 {
    match block {
        [a, b, ..] => f16::from_bits(u16::from_le_bytes([*a, *b])).to_f32(),
        _ => 0.0,
    }
}

/// Quantizes `x` (a multiple of [`QK`] long) to `Q8_0` blocks, in a buffer on huge pages
/// (`engine/src/pages.rs`): what `quantize = "q8"` keeps as the weights.
pub fn quantize_q8_0(x: &[f32]) -> Result<Vec<u8>, QuantError> {
    let blocks = check_len(x.len())?;
    let mut out = crate::pages::with_capacity(blocks * Q8_0_BLOCK_BYTES);
    for b in x.chunks_exact(QK) {
        let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        // `as` saturates, and |v · id| ≤ 127 by construction; NaN inputs become 0.
        out.extend(b.iter().map(|v| (v * id).round() as i8 as u8));
    }
    Ok(out)
}

/// Quantizes `x` (a multiple of [`QK`] long) to `Q4_0` blocks, in a buffer on huge pages
/// (`engine/src/pages.rs`): what `quantize = "q4"` keeps as the weights.
pub fn quantize_q4_0(x: &[f32]) -> Result<Vec<u8>, QuantError> {
    let blocks = check_len(x.len())?;
    let mut out = crate::pages::with_capacity(blocks * Q4_0_BLOCK_BYTES);
    for b in x.chunks_exact(QK) {
        // The signed value of largest magnitude maps to −8, so the full [−8, 7] range is used.
        let max = b
            .iter()
            .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        let q = |v: f32| ((v * id + 8.5) as u8).min(15);
        out.extend((0..QK / 2).map(|j| q(b[j]) | (q(b[j + QK / 2]) << 4)));
    }
    Ok(out)
}

/// Expands one `Q8_0` block into `out` (32 values).
#[inline(always)]
pub fn dequantize_block_q8_0(block: &[u8], out: &mut [f32; QK]) {
    let d = block_scale(block);
    for (o, &q) in out.iter_mut().zip(&block[2..2 + QK]) {
        *o = f32::from(q as i8) * d;
    }
}

/// Expands one `Q4_0` block into `out` (32 values).
#[inline(always)]
pub fn dequantize_block_q4_0(block: &[u8], out: &mut [f32; QK]) {
    let d = block_scale(block);
    let (lo, hi) = out.split_at_mut(QK / 2);
    for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&block[2..2 + QK / 2]) {
        *l = (f32::from(q & 0x0f) - 8.0) * d;
        *h = (f32::from(q >> 4) - 8.0) * d;
    }
}

fn dequantize(
    bytes: &[u8],
    block_bytes: usize,
    f: fn(&[u8], &mut [f32; QK]),
) -> Result<Vec<f32>, QuantError> {
    let blocks = check_bytes(bytes.len(), block_bytes)?;
    let mut out = Vec::with_capacity(blocks * QK);
    let mut buf = [0f32; QK];
    for b in bytes.chunks_exact(block_bytes) {
        f(b, &mut buf);
        out.extend_from_slice(&buf);
    }
    Ok(out)
}

/// Expands `Q8_0` blocks to `f32`.
pub fn dequantize_q8_0(bytes: &[u8]) -> Result<Vec<f32>, QuantError> {
    dequantize(bytes, Q8_0_BLOCK_BYTES, dequantize_block_q8_0)
}

/// Expands `Q4_0` blocks to `f32`.
pub fn dequantize_q4_0(bytes: &[u8]) -> Result<Vec<f32>, QuantError> {
    dequantize(bytes, Q4_0_BLOCK_BYTES, dequantize_block_q4_0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect()
    }

    #[test]
    fn q8_round_trip_is_within_half_a_step() {
        let x = ramp(4 * QK);
        let q = quantize_q8_0(&x).unwrap();
        assert_eq!(q.len(), 4 * Q8_0_BLOCK_BYTES);
        let y = dequantize_q8_0(&q).unwrap();
        for (b, (xb, yb)) in x.chunks(QK).zip(y.chunks(QK)).enumerate() {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (a, c) in xb.iter().zip(yb) {
                assert!(
                    (a - c).abs() <= amax / 127.0 * 0.51 + 1e-3,
                    "block {b}: {a} vs {c}"
                );
            }
        }
    }

    #[test]
    fn q4_round_trip_is_within_one_step() {
        let x = ramp(4 * QK);
        let y = dequantize_q4_0(&quantize_q4_0(&x).unwrap()).unwrap();
        for (xb, yb) in x.chunks(QK).zip(y.chunks(QK)) {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (a, c) in xb.iter().zip(yb) {
                assert!((a - c).abs() <= amax / 8.0 + 1e-3, "{a} vs {c}");
            }
        }
    }

    #[test]
    fn q4_layout_matches_llama_cpp() {
        // Element j in the low nibble of byte j, element j + 16 in the high one.
        let mut x = vec![0f32; QK];
        x[0] = -8.0; // sets d = 1
        x[1] = 1.0;
        x[17] = 7.0;
        let q = quantize_q4_0(&x).unwrap();
        assert_eq!(block_scale(&q), 1.0);
        assert_eq!(q[2], 0x80); // element 0 → 0, element 16 → 8
        assert_eq!(q[3], 0xf9); // element 1 → 9, element 17 → 15
        assert_eq!(dequantize_q4_0(&q).unwrap(), x);
    }

    #[test]
    fn zero_blocks_and_bad_lengths() {
        let z = vec![0f32; QK];
        assert_eq!(dequantize_q8_0(&quantize_q8_0(&z).unwrap()).unwrap(), z);
        assert_eq!(dequantize_q4_0(&quantize_q4_0(&z).unwrap()).unwrap(), z);
        assert_eq!(
            quantize_q8_0(&[1.0; 33]),
            Err(QuantError::Ragged { len: 33 })
        );
        assert_eq!(
            dequantize_q4_0(&[0; 19]),
            Err(QuantError::BadBytes {
                bytes: 19,
                block: 18
            })
        );
    }
}
