//! ggml's K-quants: 256-element super-blocks of 16 or 8 sub-blocks, each sub-block with a
//! small integer scale (and, for the asymmetric types, minimum) under one or two `f16`
//! super-scales. Layouts from `ggml-common.h` (`block_q2_K` … `block_q6_K`); every `f16` is
//! little-endian.
//!
//! | type | bytes | layout | value |
//! |---|---|---|---|
//! | `Q2_K` | 84 | `scales[16]` (low nibble scale, high nibble min), `qs[64]` (2 bits), `d`, `dmin` | `d·sc·q − dmin·m`, `q ∈ [0, 3]` |
//! | `Q3_K` | 110 | `hmask[32]`, `qs[64]` (2 low bits), `scales[12]` (16 × 6 bits), `d` | `d·(sc − 32)·q`, `q ∈ [−4, 3]` |
//! | `Q4_K` | 144 | `d`, `dmin`, `scales[12]` (8 × 6-bit scale and min), `qs[128]` | `d·sc·q − dmin·m`, `q ∈ [0, 15]` |
//! | `Q5_K` | 176 | `d`, `dmin`, `scales[12]`, `qh[32]`, `qs[128]` | `d·sc·q − dmin·m`, `q ∈ [0, 31]` |
//! | `Q6_K` | 210 | `ql[128]`, `qh[64]`, `scales[16]` (`i8`), `d` | `d·sc·q`, `q ∈ [−32, 31]` |
//!
//! Bit placement: in the 2-bit planes (`Q2_K`/`Q3_K` `qs`, `Q6_K` `qh`) byte `l` of each
//! 32-byte run holds element `l` of four consecutive 32-element groups, lowest bits first;
//! nibble planes hold element `l` in the low nibble and `l + 32` in the high one; the
//! single-bit planes (`Q3_K` `hmask`, `Q5_K` `qh`) hold bit `g` of byte `l` for element
//! `32g + l`.
//!
//! [`KBlock`] is the common integer form: 256 quants, and per 16 elements a scale and a
//! minimum, so one dequantization and one dot product (in the kernels) serve every type.

use super::QK_K;
use super::block_scale;

pub const Q2_K_BLOCK_BYTES: usize = QK_K / 16 + QK_K / 4 + 4;
pub const Q3_K_BLOCK_BYTES: usize = QK_K / 8 + QK_K / 4 + 12 + 2;
pub const Q4_K_BLOCK_BYTES: usize = 4 + 12 + QK_K / 2;
pub const Q5_K_BLOCK_BYTES: usize = 4 + 12 + QK_K / 8 + QK_K / 2;
pub const Q6_K_BLOCK_BYTES: usize = QK_K / 2 + QK_K / 4 + QK_K / 16 + 2;

/// Groups of 16 elements in a super-block, the finest granularity any type scales at.
pub const GROUPS: usize = QK_K / 16;

/// A super-block as integers: element `e` is `d·scales[e/16]·q[e] − dmin·mins[e/16]`.
#[derive(Clone, Copy, Debug)]
pub struct KBlock {
    pub q: [i8; QK_K],
    pub scales: [i32; GROUPS],
    pub mins: [i32; GROUPS],
    pub d: f32,
    /// `None` for the types without minima (`Q3_K`, `Q6_K`, `IQ4_XS`).
    pub dmin: Option<f32>,
}

impl Default for KBlock {
    fn default() -> Self {
        KBlock {
            q: [0; QK_K],
            scales: [0; GROUPS],
            mins: [0; GROUPS],
            d: 0.0,
            dmin: None,
        }
    }
}

impl KBlock {
    /// The values, computed as ggml's reference does: `dl = d·sc`, `ml = dmin·m` per
    /// group, then `dl·q − ml` (or `dl·q`), each rounded to `f32`.
    pub fn expand(&self, out: &mut [f32]) {
        let groups = out.chunks_mut(16).zip(self.q.chunks_exact(16));
        for (g, (out, q)) in groups.enumerate() {
            let dl = self.d * self.scales[g] as f32;
            let ml = self.dmin.map(|dm| dm * self.mins[g] as f32);
            for (o, &q) in out.iter_mut().zip(q) {
                let v = dl * f32::from(q);
                *o = match ml {
                    Some(ml) => v - ml,
                    None => v,
                };
            }
        }
    }

    /// Sets the scale and minimum of the 32-element sub-block `s` (groups `2s`, `2s + 1`).
    fn set_sub(&mut self, s: usize, scale: i32, min: i32) {
        self.scales[2 * s] = scale;
        self.scales[2 * s + 1] = scale;
        self.mins[2 * s] = min;
        self.mins[2 * s + 1] = min;
    }
}

fn f16_at(block: &[u8], at: usize) -> f32 {
    block.get(at..).map_or(0.0, block_scale)
}

/// `(scale, min)` of sub-block `j` (0..8) from the 12 packed bytes of `Q4_K` / `Q5_K`:
/// sub-blocks 0–3 keep 6 bits in bytes `j` / `j + 4`; 4–7 keep their low 4 bits in byte
/// `j + 4`'s nibbles and their top 2 bits in the spare top bits of bytes `j − 4` / `j`.
pub fn scale_min_k4(j: usize, s: &[u8; 12]) -> (i32, i32) {
    if j < 4 {
        (i32::from(s[j] & 63), i32::from(s[j + 4] & 63))
    } else {
        (
            i32::from((s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4)),
            i32::from((s[j + 4] >> 4) | ((s[j] >> 6) << 4)),
        )
    }
}

fn array<const N: usize>(block: &[u8], at: usize) -> [u8; N] {
    block
        .get(at..at + N)
        .and_then(|b| b.try_into().ok())
        .unwrap_or([0; N])
}

/// The 2-bit field of element `e` in a plane laid out as the module docs say (`Q2_K` /
/// `Q3_K` `qs`): byte `32·(e/128) + e%32`, bits `2·((e%128)/32)`.
#[inline(always)]
fn two_bits(plane: &[u8], e: usize) -> u8 {
    let byte = plane.get(32 * (e / 128) + e % 32).copied().unwrap_or(0);
    (byte >> (2 * ((e % 128) / 32))) & 3
}

pub fn unpack_q2_k(block: &[u8], out: &mut KBlock) {
    let scales: [u8; 16] = array(block, 0);
    let qs = block.get(16..80).unwrap_or_default();
    for (g, &s) in scales.iter().enumerate() {
        out.scales[g] = i32::from(s & 0x0f);
        out.mins[g] = i32::from(s >> 4);
    }
    for (e, q) in out.q.iter_mut().enumerate() {
        *q = two_bits(qs, e) as i8;
    }
    out.d = f16_at(block, 80);
    out.dmin = Some(f16_at(block, 82));
}

pub fn unpack_q3_k(block: &[u8], out: &mut KBlock) {
    let hmask: [u8; 32] = array(block, 0);
    let qs = block.get(32..96).unwrap_or_default();
    let s: [u8; 12] = array(block, 96);
    for g in 0..GROUPS {
        let low = if g < 8 { s[g] & 0x0f } else { s[g - 8] >> 4 };
        let high = (s[8 + g % 4] >> (2 * (g / 4))) & 3;
        out.scales[g] = i32::from(low | (high << 4)) - 32;
        out.mins[g] = 0;
    }
    for (e, q) in out.q.iter_mut().enumerate() {
        let h = (hmask[e % 32] >> (e / 32)) & 1;
        *q = two_bits(qs, e) as i8 - if h == 0 { 4 } else { 0 };
    }
    out.d = f16_at(block, 108);
    out.dmin = None;
}

/// The nibble of element `e` in a `Q4_K` / `Q5_K` plane: sub-block `s = e/32` sits in
/// byte `32·(s/2) + e%32`, low nibble for even `s`.
#[inline(always)]
fn nibble(qs: &[u8], e: usize) -> u8 {
    let s = e / 32;
    let byte = qs.get(32 * (s / 2) + e % 32).copied().unwrap_or(0);
    (byte >> (4 * (s % 2))) & 0x0f
}

fn k4_scales(block: &[u8], out: &mut KBlock) {
    let s: [u8; 12] = array(block, 4);
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &s);
        out.set_sub(j, sc, m);
    }
    out.d = f16_at(block, 0);
    out.dmin = Some(f16_at(block, 2));
}

pub fn unpack_q4_k(block: &[u8], out: &mut KBlock) {
    k4_scales(block, out);
    let qs = block.get(16..144).unwrap_or_default();
    for (e, q) in out.q.iter_mut().enumerate() {
        *q = nibble(qs, e) as i8;
    }
}

pub fn unpack_q5_k(block: &[u8], out: &mut KBlock) {
    k4_scales(block, out);
    let qh: [u8; 32] = array(block, 16);
    let qs = block.get(48..176).unwrap_or_default();
    for (e, q) in out.q.iter_mut().enumerate() {
        let h = (qh[e % 32] >> (e / 32)) & 1;
        *q = (nibble(qs, e) | (h << 4)) as i8;
    }
}

pub fn unpack_q6_k(block: &[u8], out: &mut KBlock) {
    let ql = block.get(0..128).unwrap_or_default();
    let qh = block.get(128..192).unwrap_or_default();
    let scales: [u8; 16] = array(block, 192);
    for (g, &s) in scales.iter().enumerate() {
        out.scales[g] = i32::from(s as i8);
        out.mins[g] = 0;
    }
    for (e, q) in out.q.iter_mut().enumerate() {
        // Half `h` (128 elements) uses 64 bytes of `ql` and 32 of `qh`; within it, group
        // `t` of 32 takes `ql[32·(t%2) + l]`'s low (t < 2) or high nibble and bits `2t` of
        // `qh[l]`.
        let (h, t, l) = (e / 128, (e % 128) / 32, e % 32);
        let lo = ql.get(64 * h + 32 * (t % 2) + l).copied().unwrap_or(0) >> (4 * (t / 2));
        let hi = (qh.get(32 * h + l).copied().unwrap_or(0) >> (2 * t)) & 3;
        *q = ((lo & 0x0f) | (hi << 4)) as i8 - 32;
    }
    out.d = f16_at(block, 208);
    out.dmin = None;
}

fn dequantize(block: &[u8], out: &mut [f32], unpack: fn(&[u8], &mut KBlock)) {
    let mut b = KBlock::default();
    unpack(block, &mut b);
    b.expand(out);
}

/// Expands one `Q2_K` block into `out` (256 values).
pub fn dequantize_q2_k(block: &[u8], out: &mut [f32]) {
    dequantize(block, out, unpack_q2_k);
}

/// Expands one `Q3_K` block into `out` (256 values).
pub fn dequantize_q3_k(block: &[u8], out: &mut [f32]) {
    dequantize(block, out, unpack_q3_k);
}

/// Expands one `Q4_K` block into `out` (256 values).
pub fn dequantize_q4_k(block: &[u8], out: &mut [f32]) {
    dequantize(block, out, unpack_q4_k);
}

/// Expands one `Q5_K` block into `out` (256 values).
pub fn dequantize_q5_k(block: &[u8], out: &mut [f32]) {
    dequantize(block, out, unpack_q5_k);
}

/// Expands one `Q6_K` block into `out` (256 values).
pub fn dequantize_q6_k(block: &[u8], out: &mut [f32]) {
    dequantize(block, out, unpack_q6_k);
}
