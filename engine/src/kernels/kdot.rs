//! Weights in the block types beyond `Q8_0` / `Q4_0` / `Q5_0` / `Q4_K` / `Q5_K` / `Q6_K` (those are kept in
//! panels: [`super::qdot`], [`super::kpanel`]) times activations quantized per block, as llama.cpp pairs them:
//!
//! * `Q5_0`, `IQ4_NL` (32-element blocks): activations as `Q8_0`, a scale and 32 × `i8`
//!   per block; block product `d_w·d_x·Σ q_w·q_x`.
//! * `Q4_1`, `Q5_1`: activations as `Q8_1`, which also carries the block's quant sum, so
//!   the weights' additive minimum costs one more term, `m_w·d_x·Σ q_x`.
//! * the K-quants and `IQ4_XS` (256-element super-blocks): activations as `Q8_K`, a scale
//!   and 256 × `i8` per super-block plus the sum of each 16 quants (`bsums`), so minima
//!   cost `dmin_w·d_x·Σ_g m_g·bsum_g`.
//!
//! Every activation block is quantized the same way whatever its size: `d = amax / 127`,
//! `q = round(x / d)` ties to even, the scale kept in `f32` (as [`super::qdot`] does; ggml
//! stores `Q8_0`/`Q8_1` scales as `f16` and rounds `Q8_K` against the signed maximum, which
//! moves results by less than the quantization itself).
//!
//! **Exactness and batch invariance.** Integer parts are exact (each fits `i32` with room), so
//! the order the compiler or the vector unit adds them in cannot matter. The K-quants keep 16
//! `f32` lanes as the SIMD kernel holds a super-block: lane `l` the scaled 4-element sums of
//! elements `64k + 4l..+4` of its four 64-element chunks (weights made unsigned by the type's
//! offset) less group `l`'s offset correction, or with group `l`'s minimum term, one or two
//! fused multiply-adds per super-block, summed at the end. The 32-element types keep 16 `f32` lanes as a 512-bit
//! `vpdpbusd` lays out two blocks (lane `(b mod 2)·8 + l`: the exact sum of elements
//! `4l..4l+4` of block `b`), one fused multiply-add per lane and block in block order (the
//! minimum's term on the block's first lane), the lanes summed at the end by [`reduce`], as
//! `qdot` does for `Q8_0`/`Q4_0`: no per-block horizontal sum for the SIMD code to do. An output element depends only on its weight
//! row and its activation row, and the code compiled for AVX2 / AVX-512 (`super::x86`)
//! performs the same operations, so results are bitwise the same alone or batched and on
//! any CPU.

use rayon::prelude::*;

use super::{COL_TILE, LANES, by_columns, reduce};
use crate::quant::iquants;
use crate::quant::kquants::{self, GROUPS, KBlock};
use crate::quant::legacy::{self, SmallBlock};
use crate::quant::{QK, QK_K, QType};

/// Activation rows quantized for one call, in blocks of `block` (32 or 256) elements.
pub(super) struct Acts {
    pub(super) rows: usize,
    /// Elements per row (a multiple of `block`).
    pub(super) width: usize,
    pub(super) block: usize,
    /// `[rows, width]` quants.
    pub(super) qs: Vec<i8>,
    /// `[rows, width / block]` scales.
    pub(super) ds: Vec<f32>,
    /// `[rows, width / 16]`: the sum of each 16 consecutive quants.
    pub(super) sums: Vec<i32>,
}

impl Acts {
    /// Block `b` of row `r`: quants, scale, and the group sums.
    #[inline(always)]
    pub(super) fn block(&self, r: usize, b: usize) -> (&[i8], f32, &[i32]) {
        let start = r * self.width + b * self.block;
        let qs = self.qs.get(start..start + self.block).unwrap_or_default();
        let d = self
            .ds
            .get(r * (self.width / self.block) + b)
            .copied()
            .unwrap_or(f32::NAN);
        let sums = self
            .sums
            .get(start / 16..(start + self.block) / 16)
            .unwrap_or_default();
        (qs, d, sums)
    }
}

/// Elements per activation block for weights of type `t`.
pub(super) fn act_block(t: QType) -> usize {
    if t.block_elems() == QK_K { QK_K } else { QK }
}

/// Quantizes `x` (`rows × width`) in blocks of `block`; see the module docs. Rows are
/// independent, so large batches are split over the pool; a row's bytes do not depend on
/// the split.
pub(super) fn quantize(x: &[f32], rows: usize, width: usize, block: usize) -> Acts {
    let mut a = Acts {
        rows,
        width,
        block,
        qs: vec![0; rows * width],
        ds: vec![0.0; rows * width / block],
        sums: vec![0; rows * width / 16],
    };
    if width == 0 {
        return a;
    }
    let per_row = width / block;
    let row = |(((qs, ds), sums), x): RowParts<'_>| quantize_row(x, qs, ds, sums, block);
    if rows >= 8 {
        a.qs.par_chunks_mut(width)
            .zip(a.ds.par_chunks_mut(per_row))
            .zip(a.sums.par_chunks_mut(width / 16))
            .zip(x.par_chunks(width))
            .for_each(row);
    } else {
        a.qs.chunks_mut(width)
            .zip(a.ds.chunks_mut(per_row))
            .zip(a.sums.chunks_mut(width / 16))
            .zip(x.chunks(width))
            .for_each(row);
    }
    a
}

/// One row's quants, scales and group sums, and its activations.
type RowParts<'a> = (((&'a mut [i8], &'a mut [f32]), &'a mut [i32]), &'a [f32]);

pub(super) fn quantize_row(
    x: &[f32],
    qs: &mut [i8],
    ds: &mut [f32],
    sums: &mut [i32],
    block: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if super::vnni()
        && block.is_multiple_of(16)
        && x.len() == qs.len()
        && x.len() == ds.len() * block
        && x.len() == sums.len() * 16
    {
        let blocks = x.chunks_exact(block).zip(qs.chunks_exact_mut(block));
        for (((x, q), d), sums) in blocks
            .zip(ds.iter_mut())
            .zip(sums.chunks_exact_mut(block / 16))
        {
            let amax = super::x86::amax(x);
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            *d = if amax != 0.0 { 1.0 / id } else { 0.0 };
            super::x86::round_sums(x, id, q, sums);
        }
        return;
    }
    quantize_row_portable(x, qs, ds, sums, block);
}

/// [`quantize_row`] in plain Rust (the reference the SIMD version is tested against).
pub(super) fn quantize_row_portable(
    x: &[f32],
    qs: &mut [i8],
    ds: &mut [f32],
    sums: &mut [i32],
    block: usize,
) {
    // Adding and taking away 1.5 · 2²³ rounds any |t| < 2²² to an integer, ties to even.
    const MAGIC: f32 = 12_582_912.0;
    let blocks = x.chunks_exact(block).zip(qs.chunks_exact_mut(block));
    for ((x, q), d) in blocks.zip(ds.iter_mut()) {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        // As llama.cpp's `quantize_row_q8_K_ref`: the inverse scale is 127 / amax and the
        // scale its reciprocal, so that the quants (and the results) equal llama.cpp's
        // bit for bit rather than differing by one step where `v · id` is near a tie.
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        *d = if amax != 0.0 { 1.0 / id } else { 0.0 };
        // `as` saturates, and |v · id| ≤ 127 by construction; NaN becomes 0.
        for (q, &v) in q.iter_mut().zip(x) {
            *q = ((v * id + MAGIC) - MAGIC) as i8;
        }
    }
    for (s, q) in sums.iter_mut().zip(qs.chunks_exact(16)) {
        *s = q.iter().map(|&q| i32::from(q)).sum();
    }
}

/// `Σ w·x` over equal-length runs, exact in `i32`.
#[inline(always)]
fn idot(w: &[i8], x: &[i8]) -> i32 {
    w.iter()
        .zip(x)
        .map(|(&w, &x)| i32::from(w) * i32::from(x))
        .sum()
}

/// `x` (`rows × inp`, `inp` a multiple of `t`'s block) times the `[out, inp]` blocks `v`ᵀ.
pub(super) fn matmul(
    v: &[u8],
    t: QType,
    out: usize,
    inp: usize,
    x: &[f32],
    rows: usize,
) -> Vec<f32> {
    let a = quantize(x, rows, inp, act_block(t));
    by_columns(out, rows, COL_TILE, |first, dst| {
        #[cfg(target_arch = "x86_64")]
        if super::vnni() && super::kvnni::supports(t) {
            return super::kvnni::run(v, t, &a, first, dst);
        }
        #[cfg(target_arch = "x86_64")]
        match super::simd_level() {
            2 => return super::x86::run_kquant_v4(v, t, &a, first, dst),
            1 => return super::x86::run_kquant_v3(v, t, &a, first, dst),
            _ => {}
        }
        run_portable(v, t, &a, first, dst)
    })
}

/// Output columns `first..first + dst.len() / rows` into `dst` (`[n, rows]`). `Q8_0`,
/// `Q4_0`, `Q5_0`, `Q4_K`, `Q5_K` and `Q6_K` matrices are kept in panels and never come here
/// ([`super::qdot`], [`super::kpanel`]); their arms define these types' row-major products
/// all the same.
#[inline(always)]
pub(super) fn run_portable(v: &[u8], t: QType, a: &Acts, first: usize, dst: &mut [f32]) {
    match t {
        QType::Q4_0 => run_small(v, t, a, first, dst, legacy::unpack_q4_0),
        QType::Q8_0 => run_small(v, t, a, first, dst, legacy::unpack_q8_0),
        QType::Q4_1 => run_small(v, t, a, first, dst, legacy::unpack_q4_1),
        QType::Q5_0 => run_small(v, t, a, first, dst, legacy::unpack_q5_0),
        QType::Q5_1 => run_small(v, t, a, first, dst, legacy::unpack_q5_1),
        QType::IQ4_NL => run_small(v, t, a, first, dst, iquants::unpack_iq4_nl),
        QType::Q2_K => run_k(v, t, a, first, dst, kquants::unpack_q2_k),
        QType::Q3_K => run_k(v, t, a, first, dst, kquants::unpack_q3_k),
        QType::Q4_K => run_k(v, t, a, first, dst, kquants::unpack_q4_k),
        QType::Q5_K => run_k(v, t, a, first, dst, kquants::unpack_q5_k),
        QType::Q6_K => run_k(v, t, a, first, dst, kquants::unpack_q6_k),
        QType::IQ4_XS => run_k(v, t, a, first, dst, kquants_iq4_xs),
    }
}

#[inline(always)]
fn kquants_iq4_xs(block: &[u8], out: &mut KBlock) {
    iquants::unpack_iq4_xs(block, out)
}

/// The weight row `o` of `v` (`row_bytes` each), if it lies inside `v`.
#[inline(always)]
fn weight_row(v: &[u8], o: usize, row_bytes: usize) -> Option<&[u8]> {
    v.get(o * row_bytes..(o + 1) * row_bytes)
}

/// 32-element types: each weight row is unpacked once, then dotted with every activation
/// row.
#[inline(always)]
fn run_small(
    v: &[u8],
    t: QType,
    a: &Acts,
    first: usize,
    dst: &mut [f32],
    unpack: impl Fn(&[u8], &mut SmallBlock),
) {
    let blocks = a.width / QK;
    let row_bytes = blocks * t.block_bytes();
    let mut unpacked = vec![SmallBlock::default(); blocks];
    for (j, col) in dst.chunks_exact_mut(a.rows.max(1)).enumerate() {
        let Some(w) = weight_row(v, first + j, row_bytes) else {
            col.fill(f32::NAN);
            continue;
        };
        for (u, b) in unpacked.iter_mut().zip(w.chunks_exact(t.block_bytes())) {
            unpack(b, u);
        }
        for (r, y) in col.iter_mut().enumerate() {
            // Lane `(b mod 2)·8 + l`: the 4-element sums `l` of block `b`, as the SIMD
            // kernels hold them (two blocks per 16-lane vector).
            let mut acc = [0f32; LANES];
            for (b, w) in unpacked.iter().enumerate() {
                let (xq, dx, sums) = a.block(r, b);
                let s = w.d * dx;
                let lanes = &mut acc[(b % 2) * 8..(b % 2) * 8 + 8];
                for ((l, wq), xq) in lanes
                    .iter_mut()
                    .zip(w.q.chunks_exact(4))
                    .zip(xq.chunks_exact(4))
                {
                    *l = (idot(wq, xq) as f32).mul_add(s, *l);
                }
                if let (Some(m), Some(l)) = (w.m, lanes.first_mut()) {
                    let sx: i32 = sums.iter().sum();
                    *l = m.mul_add(dx * sx as f32, *l);
                }
            }
            *y = reduce(acc);
        }
    }
}

/// 256-element types; see [`run_small`].
#[inline(always)]
fn run_k(
    v: &[u8],
    t: QType,
    a: &Acts,
    first: usize,
    dst: &mut [f32],
    unpack: impl Fn(&[u8], &mut KBlock),
) {
    let blocks = a.width / QK_K;
    let row_bytes = blocks * t.block_bytes();
    let mut unpacked = vec![KBlock::default(); blocks];
    for (j, col) in dst.chunks_exact_mut(a.rows.max(1)).enumerate() {
        let Some(w) = weight_row(v, first + j, row_bytes) else {
            col.fill(f32::NAN);
            continue;
        };
        for (u, b) in unpacked.iter_mut().zip(w.chunks_exact(t.block_bytes())) {
            unpack(b, u);
        }
        // What the SIMD kernels add to the weights to make them unsigned, taken back per
        // group as `offset · scale_g · Σ x_g`.
        let offset = match t {
            QType::Q6_K => 32,
            QType::IQ4_XS => 128,
            _ => 0,
        };
        for (r, y) in col.iter_mut().enumerate() {
            // Lane `l`: elements `64k + 4l..64k + 4l + 4` of each of the super-block's 4
            // chunks `k` (as a 512-bit `vpdpbusd` holds them), each 4-element sum times its
            // group's scale; the group correction (offset or minimum) of group `l`.
            let mut acc = [0f32; LANES];
            for (b, w) in unpacked.iter().enumerate() {
                let (xq, dx, sums) = a.block(r, b);
                for (l, (acc, &sum)) in acc.iter_mut().zip(sums).enumerate() {
                    let raw: i32 = (0..4)
                        .map(|k| {
                            let at = 64 * k + 4 * l;
                            let d: i32 = w.q[at..at + 4]
                                .iter()
                                .zip(&xq[at..at + 4])
                                .map(|(&q, &x)| (i32::from(q) + offset) * i32::from(x))
                                .sum();
                            w.scales[4 * k + l / 4] * d
                        })
                        .sum();
                    match w.dmin {
                        Some(dmin) => {
                            *acc = (raw as f32).mul_add(w.d * dx, *acc);
                            let summ = w.mins[l] * sum;
                            *acc = (summ as f32).mul_add(-(dmin * dx), *acc);
                        }
                        None => {
                            let corr = offset * w.scales[l] * sum;
                            *acc = ((raw - corr) as f32).mul_add(w.d * dx, *acc);
                        }
                    }
                }
            }
            *y = reduce(acc);
        }
    }
}

const _: () = assert!(GROUPS * 16 == QK_K);
