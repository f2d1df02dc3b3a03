//! ggml's original 32-element block types beside `Q8_0` / `Q4_0` (which live in the parent
//! module with their quantizers): `Q4_1`, `Q5_0`, `Q5_1`, and the integer unpacking all
//! five share with `IQ4_NL` for the kernels.
//!
//! Layouts (`ggml-common.h`), scales little-endian `f16`:
//!
//! * `Q4_1`: `d`, `m`, 16 bytes of nibbles (element `j` low, `j + 16` high); value
//!   `d·q + m`, `q ∈ [0, 15]` (20 bytes).
//! * `Q5_0`: `d`, `qh: u32` (bit `j` = fifth bit of element `j`), 16 bytes of nibbles as
//!   `Q4_0`; value `d·(q − 16)`, `q ∈ [0, 31]` (22 bytes).
//! * `Q5_1`: `d`, `m`, `qh`, nibbles; value `d·q + m` (24 bytes).

use super::{QK, block_scale};

/// Bytes of one `Q4_1` block.
pub const Q4_1_BLOCK_BYTES: usize = 4 + QK / 2;
/// Bytes of one `Q5_0` block.
pub const Q5_0_BLOCK_BYTES: usize = 2 + 4 + QK / 2;
/// Bytes of one `Q5_1` block.
pub const Q5_1_BLOCK_BYTES: usize = 4 + 4 + QK / 2;

/// A 32-element block as integers: value `i = d·q[i] (+ m)`.
#[derive(Clone, Copy, Debug)]
pub struct SmallBlock {
    pub q: [i8; QK],
    pub d: f32,
    /// The additive minimum of `Q4_1` / `Q5_1`; `None` for the symmetric types.
    pub m: Option<f32>,
}

impl Default for SmallBlock {
    fn default() -> Self {
        SmallBlock {
            q: [0; QK],
            d: 0.0,
            m: None,
        }
    }
}

impl SmallBlock {
    /// The values, computed as ggml's reference does (`d·q`, then `+ m`).
    pub fn expand(&self, out: &mut [f32]) {
        for (o, &q) in out.iter_mut().zip(&self.q) {
            let v = self.d * f32::from(q);
            *o = match self.m {
                Some(m) => v + m,
                None => v,
            };
        }
    }
}

fn f16_at(block: &[u8], at: usize) -> f32 {
    block.get(at..).map_or(0.0, block_scale)
}

/// Splits 16 bytes of nibbles: element `j` is byte `j`'s low nibble, `j + 16` its high one.
fn nibbles(bytes: &[u8], q: &mut [i8; QK], f: impl Fn(u8, usize) -> i8) {
    for (j, &b) in bytes.iter().take(QK / 2).enumerate() {
        q[j] = f(b & 0x0f, j);
        q[j + QK / 2] = f(b >> 4, j + QK / 2);
    }
}

fn qh_at(block: &[u8], at: usize) -> u32 {
    block
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

pub fn unpack_q8_0(block: &[u8], out: &mut SmallBlock) {
    out.d = f16_at(block, 0);
    out.m = None;
    for (q, &b) in out.q.iter_mut().zip(block.iter().skip(2)) {
        *q = b as i8;
    }
}

pub fn unpack_q4_0(block: &[u8], out: &mut SmallBlock) {
    out.d = f16_at(block, 0);
    out.m = None;
    nibbles(block.get(2..).unwrap_or_default(), &mut out.q, |n, _| {
        n as i8 - 8
    });
}

pub fn unpack_q4_1(block: &[u8], out: &mut SmallBlock) {
    out.d = f16_at(block, 0);
    out.m = Some(f16_at(block, 2));
    nibbles(block.get(4..).unwrap_or_default(), &mut out.q, |n, _| {
        n as i8
    });
}

pub fn unpack_q5_0(block: &[u8], out: &mut SmallBlock) {
    out.d = f16_at(block, 0);
    out.m = None;
    let qh = qh_at(block, 2);
    nibbles(block.get(6..).unwrap_or_default(), &mut out.q, |n, j| {
        (n | (((qh >> j) & 1) as u8) << 4) as i8 - 16
    });
}

pub fn unpack_q5_1(block: &[u8], out: &mut SmallBlock) {
    out.d = f16_at(block, 0);
    out.m = Some(f16_at(block, 2));
    let qh = qh_at(block, 4);
    nibbles(block.get(8..).unwrap_or_default(), &mut out.q, |n, j| {
        (n | (((qh >> j) & 1) as u8) << 4) as i8
    });
}

fn dequantize(block: &[u8], out: &mut [f32], unpack: fn(&[u8], &mut SmallBlock)) {
    let mut b = SmallBlock::default();
    unpack(block, &mut b);
    b.expand(out);
}

/// Expands one `Q4_1` block into `out` (32 values).
pub fn dequantize_q4_1(block: &[u8], out: &mut [f32]) {
    dequantize(block, out, unpack_q4_1);
}

/// Expands one `Q5_0` block into `out` (32 values).
pub fn dequantize_q5_0(block: &[u8], out: &mut [f32]) {
    dequantize(block, out, unpack_q5_0);
}

/// Expands one `Q5_1` block into `out` (32 values).
pub fn dequantize_q5_1(block: &[u8], out: &mut [f32]) {
    dequantize(block, out, unpack_q5_1);
}
