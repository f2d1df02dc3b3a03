//! `Q8_0` / `Q4_0` weights times activations quantized per row to 8 bits, as llama.cpp
//! does: each 32-element block of an activation row becomes 32 × `i8` and an `f32` scale,
//! a block's dot product is computed exactly in integers and then scaled,
//! `acc = f32(Σ w·x) · (d_w · d_x) + acc`, blocks in order, in 16 lanes (lane `j` of an even
//! block and lane `8 + j` of an odd one hold its elements `4j..4j+4`), lanes summed by a
//! fixed tree.
//!
//! Quantizing a row looks at that row only, so the result of a row stays the same alone or
//! batched. The portable code below and the VNNI kernel in [`super::x86`] compute the same
//! integers and the same `f32` operations, so they agree bit for bit.
//!
//! Accuracy: the activations' rounding (≤ half a step of `amax / 127` per element) comes on
//! top of the weights' own; llama.cpp makes the same trade for these formats.

use rayon::prelude::*;

use super::{QK, by_columns, f16_bits_to_f32, reduce};
use crate::quant::{Q4_0_BLOCK_BYTES, Q8_0_BLOCK_BYTES};

/// Which block format the weights are in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Weights {
    Q8_0,
    Q4_0,
}

impl Weights {
    pub(super) fn block_bytes(self) -> usize {
        match self {
            Weights::Q8_0 => Q8_0_BLOCK_BYTES,
            Weights::Q4_0 => Q4_0_BLOCK_BYTES,
        }
    }

    /// The kernels read weights as unsigned bytes, `w + offset` (`Q8_0`: `i8 + 128`,
    /// `Q4_0`: the stored nibble, `q − 8 + 8`); the offset's share, `offset · Σx`, is taken
    /// back by starting each lane at `−offset · Σx` over its 4 elements.
    fn offset(self) -> i32 {
        match self {
            Weights::Q8_0 => 128,
            Weights::Q4_0 => 8,
        }
    }
}

/// Activation rows quantized for one call.
pub(super) struct Acts {
    pub(super) rows: usize,
    pub(super) blocks: usize,
    /// `[rows, blocks, 32]` quants.
    pub(super) qs: Vec<i8>,
    /// `[rows, blocks]` scales.
    pub(super) ds: Vec<f32>,
    /// `[rows, blocks, 8]`: `−offset · Σ` of each lane's 4 quants.
    pub(super) corr: Vec<i32>,
}

/// Quantizes `x` (`rows × blocks·32`) block by block: `d = amax / 127`,
/// `q = round(x / d)`, ties to even as llama.cpp's AVX code rounds (its scalar reference
/// rounds ties away from zero), the scale kept in `f32`. Rows are independent, so large
/// batches are split over the pool; a row's bytes do not depend on the split.
pub(super) fn quantize(x: &[f32], rows: usize, blocks: usize, kind: Weights) -> Acts {
    let n = rows * blocks;
    let mut a = Acts {
        rows,
        blocks,
        qs: vec![0; n * QK],
        ds: vec![0.0; n],
        corr: vec![0; n * 8],
    };
    let offset = kind.offset();
    let width = blocks * QK;
    if width == 0 {
        return a;
    }
    let row = |(((qs, ds), corr), x): RowParts<'_>| quantize_row(x, qs, ds, corr, offset);
    if rows >= 8 {
        a.qs.par_chunks_mut(width)
            .zip(a.ds.par_chunks_mut(blocks))
            .zip(a.corr.par_chunks_mut(blocks * 8))
            .zip(x.par_chunks(width))
            .for_each(row);
    } else {
        a.qs.chunks_mut(width)
            .zip(a.ds.chunks_mut(blocks))
            .zip(a.corr.chunks_mut(blocks * 8))
            .zip(x.chunks(width))
            .for_each(row);
    }
    a
}

/// One row's quants, scales and corrections, and its activations.
type RowParts<'a> = (((&'a mut [i8], &'a mut [f32]), &'a mut [i32]), &'a [f32]);

/// One activation row; see [`quantize`].
fn quantize_row(x: &[f32], qs: &mut [i8], ds: &mut [f32], corr: &mut [i32], offset: i32) {
    // Adding and taking away 1.5 · 2²³ rounds any |t| < 2²² to an integer, ties to even,
    // in two additions that vectorize (`f32::round` is a library call here).
    const MAGIC: f32 = 12_582_912.0;
    let blocks = x.chunks_exact(QK).zip(qs.chunks_exact_mut(QK));
    for (((x, q), d), c) in blocks.zip(ds.iter_mut()).zip(corr.chunks_exact_mut(8)) {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        *d = amax / 127.0;
        let id = if *d != 0.0 { 1.0 / *d } else { 0.0 };
        // `as` saturates, and |v · id| ≤ 127 by construction; NaN becomes 0.
        for (q, &v) in q.iter_mut().zip(x) {
            *q = ((v * id + MAGIC) - MAGIC) as i8;
        }
        for (c, l) in c.iter_mut().zip(q.chunks_exact(4)) {
            *c = -offset * l.iter().map(|&q| i32::from(q)).sum::<i32>();
        }
    }
}

/// `x` (`rows × inp`, `inp` a multiple of 32) times the `[out, inp]` blocks `v`ᵀ.
pub(super) fn matmul(
    v: &[u8],
    kind: Weights,
    out: usize,
    inp: usize,
    x: &[f32],
    rows: usize,
) -> Vec<f32> {
    let a = quantize(x, rows, inp / QK, kind);
    by_columns(out, rows, |first, dst| {
        #[cfg(target_arch = "x86_64")]
        if super::vnni() {
            return super::x86::run_quant(v, kind, &a, first, dst);
        } else if super::simd_level() >= 1 {
            return super::x86::run_quant_v3(v, kind, &a, first, dst);
        }
        run_portable(v, kind, &a, first, dst)
    })
}

/// Output columns `first..first + dst.len() / rows` into `dst` (`[n, rows]`).
pub(super) fn run_portable(v: &[u8], kind: Weights, a: &Acts, first: usize, dst: &mut [f32]) {
    let row_bytes = a.blocks * kind.block_bytes();
    for (j, col) in dst.chunks_exact_mut(a.rows).enumerate() {
        let o = first + j;
        let Some(w) = v.get(o * row_bytes..(o + 1) * row_bytes) else {
            return;
        };
        for (r, y) in col.iter_mut().enumerate() {
            *y = dot(w, kind, a, r);
        }
    }
}

/// Weight row `w` · activation row `r`.
fn dot(w: &[u8], kind: Weights, a: &Acts, r: usize) -> f32 {
    let bb = kind.block_bytes();
    let mut acc = [0f32; 16];
    let mut wq = [0i32; QK];
    for (b, block) in w.chunks_exact(bb).enumerate() {
        let i = r * a.blocks + b;
        let (Some(xq), Some(&dx)) = (a.qs.get(i * QK..(i + 1) * QK), a.ds.get(i)) else {
            return f32::NAN;
        };
        let dw = f16_bits_to_f32(u16::from_le_bytes([block[0], block[1]]));
        match kind {
            Weights::Q8_0 => {
                for (q, &b) in wq.iter_mut().zip(&block[2..]) {
                    *q = i32::from(b as i8);
                }
            }
            Weights::Q4_0 => {
                let (lo, hi) = wq.split_at_mut(QK / 2);
                for ((l, h), &b) in lo.iter_mut().zip(hi).zip(&block[2..]) {
                    *l = i32::from(b & 0x0f) - 8;
                    *h = i32::from(b >> 4) - 8;
                }
            }
        }
        let s = dw * dx;
        let lanes = &mut acc[b % 2 * 8..][..8];
        for ((acc, w4), x4) in lanes
            .iter_mut()
            .zip(wq.chunks_exact(4))
            .zip(xq.chunks_exact(4))
        {
            let d: i32 = w4.iter().zip(x4).map(|(&w, &x)| w * i32::from(x)).sum();
            *acc = (d as f32).mul_add(s, *acc);
        }
    }
    reduce(acc)
}
