//! The two common non-linear 4-bit types: each nibble indexes a fixed table of 16 signed
//! levels (denser near zero, where most weights are) instead of being a linear step.
//!
//! * `IQ4_NL`: `d: f16`, 16 bytes of nibbles laid out as `Q4_0`; value `d·K[q]`
//!   (18 bytes / 32 elements).
//! * `IQ4_XS`: `d: f16`, `scales_h: u16` (2 high bits per sub-block), `scales_l[4]`
//!   (4 low bits per sub-block), `qs[128]`: eight 32-element sub-blocks, each laid out as
//!   an `IQ4_NL` block; value `d·(ls − 32)·K[q]` (136 bytes / 256 elements).
//!
//! `K` is llama.cpp's `kvalues_iq4nl`.

use super::legacy::SmallBlock;
use super::{QK, QK_K, block_scale, kquants::KBlock};

pub const IQ4_NL_BLOCK_BYTES: usize = 2 + QK / 2;
pub const IQ4_XS_BLOCK_BYTES: usize = 2 + 2 + QK_K / 64 + QK_K / 2;

/// The 16 levels a nibble selects.
pub const KVALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

fn level(n: u8) -> i8 {
    KVALUES[usize::from(n & 0x0f)]
}

/// Element `j` of a 32-element run from its 16 bytes (`j` low nibbles, `j + 16` high).
fn split(bytes: &[u8], q: &mut [i8]) {
    for (j, &b) in bytes.iter().take(QK / 2).enumerate() {
        q[j] = level(b);
        q[j + QK / 2] = level(b >> 4);
    }
}

pub fn unpack_iq4_nl(block: &[u8], out: &mut SmallBlock) {
    out.d = block_scale(block);
    out.m = None;
    split(block.get(2..).unwrap_or_default(), &mut out.q);
}

pub fn unpack_iq4_xs(block: &[u8], out: &mut KBlock) {
    out.d = block_scale(block);
    out.dmin = None;
    let scales_h = u16::from_le_bytes([
        block.get(2).copied().unwrap_or(0),
        block.get(3).copied().unwrap_or(0),
    ]);
    for s in 0..8 {
        let low = block.get(4 + s / 2).copied().unwrap_or(0) >> (4 * (s % 2)) & 0x0f;
        let high = ((scales_h >> (2 * s)) & 3) as u8;
        let ls = i32::from(low | (high << 4)) - 32;
        out.scales[2 * s] = ls;
        out.scales[2 * s + 1] = ls;
        out.mins[2 * s] = 0;
        out.mins[2 * s + 1] = 0;
        let qs = block.get(8 + 16 * s..8 + 16 * (s + 1)).unwrap_or_default();
        split(qs, &mut out.q[32 * s..32 * (s + 1)]);
    }
}

/// Expands one `IQ4_NL` block into `out` (32 values).
pub fn dequantize_iq4_nl(block: &[u8], out: &mut [f32]) {
    let mut b = SmallBlock::default();
    unpack_iq4_nl(block, &mut b);
    b.expand(out);
}

/// Expands one `IQ4_XS` block into `out` (256 values).
pub fn dequantize_iq4_xs(block: &[u8], out: &mut [f32]) {
    let mut b = KBlock::default();
    unpack_iq4_xs(block, &mut b);
    b.expand(out);
}
