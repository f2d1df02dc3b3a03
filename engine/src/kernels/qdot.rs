//! `Q8_0` / `Q4_0` / `Q5_0` weights times activations quantized per row to 8 bits, as llama.cpp
//! does: each 32-element block of an activation row becomes 32 × `i8` and an `f32` scale,
//! a block's dot product is computed exactly in integers and then scaled,
//! `acc = f32(Σ w·x) · (d_w · d_x) + acc` (one fused multiply-add), blocks in order, one
//! accumulator per output. `Σ w·x` of a block is at most 32 · 128 · 127 < 2²⁴ in
//! magnitude, so its `f32` is exact too.
//!
//! **Panels.** The weights are kept in panels of [`PANEL`] output columns (repacked once at
//! load, [`to_panels`]): per block, the 16 columns' `f16` scales side by side, then their
//! quants in 4-byte groups, column `c`'s bytes `4g..4g + 4` of the block at lane `c` of group
//! `g`. One 512-bit load is then one group of 16 columns, `vpdpbusd` with the activation's
//! 4 bytes broadcast adds 4 products to each column's own lane, and after a block's 8 (or,
//! for `Q4_0`'s nibbles, 4 × 2) groups lane `c` holds column `c`'s exact block sum: the
//! float epilogue is one conversion and one fused multiply-add per block and 16 columns,
//! where a row-major layout needs one per 4 elements or a horizontal sum per block.
//! `Q8_0` quants are stored as `w + 128` (unsigned, what `vpdpbusd` multiplies), `Q4_0`
//! nibbles as in the file (`w + 8`); the offset's share, `offset · Σx`, is taken back by
//! starting each block's sum at the activations' precomputed `−offset · Σx`. `Q5_0` (`w + 16`,
//! 5 bits) keeps its nibbles as `Q4_0`'s and its 32 fifth bits as the block's first group
//! (lane `c`: column `c`'s `u32`, bit `j` for element `j`); the kernels move each group's 4
//! bits to bit 4 of its 4 bytes (`vpshufb` + a bit test), so the panels take the file's
//! bytes exactly. Most models under 1B parameters are mostly `Q5_0` in a `Q4_K_M` file
//! (llama.cpp's fallback wherever a row is not a multiple of 256: SmolLM2's 576).
//!
//! Quantizing a row looks at that row only, and a panel's lanes never mix columns, so the
//! result of a row stays the same alone or batched. The portable code below and the VNNI
//! and AVX2 kernels in [`super::x86`] compute the same integers and the same `f32` operations, so
//! they agree bit for bit.
//!
//! Accuracy: the activations' rounding (≤ half a step of `amax / 127` per element) comes on
//! top of the weights' own; llama.cpp makes the same trade for these formats.

use rayon::prelude::*;

use super::{Cols, QK, by_panels, f16_bits_to_f32};
use crate::pages;
use crate::quant::legacy::Q5_0_BLOCK_BYTES;
use crate::quant::{Q4_0_BLOCK_BYTES, Q8_0_BLOCK_BYTES, QType};

/// Output columns per panel: the 16 `i32`/`f32` lanes of one 512-bit vector.
pub(super) const PANEL: usize = 16;

/// Which block format the weights are in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Weights {
    Q8_0,
    Q4_0,
    /// `Q4_0`'s nibbles plus a fifth bit per element: what a `Q4_K_M` file holds wherever
    /// a row is not a multiple of 256 (most models under 1B parameters).
    Q5_0,
}

impl Weights {
    /// The panel format of a GGUF block type, if it has one.
    pub(super) fn of(t: QType) -> Option<Weights> {
        match t {
            QType::Q8_0 => Some(Weights::Q8_0),
            QType::Q4_0 => Some(Weights::Q4_0),
            QType::Q5_0 => Some(Weights::Q5_0),
            _ => None,
        }
    }

    /// The GGUF block type.
    pub(super) fn qtype(self) -> QType {
        match self {
            Weights::Q8_0 => QType::Q8_0,
            Weights::Q4_0 => QType::Q4_0,
            Weights::Q5_0 => QType::Q5_0,
        }
    }

    /// Bytes of one GGUF block (an `f16` scale, then the quants).
    pub(super) const fn block_bytes(self) -> usize {
        match self {
            Weights::Q8_0 => Q8_0_BLOCK_BYTES,
            Weights::Q4_0 => Q4_0_BLOCK_BYTES,
            Weights::Q5_0 => Q5_0_BLOCK_BYTES,
        }
    }

    /// Bytes of one block of a panel: [`PANEL`] blocks.
    pub(super) const fn panel_block_bytes(self) -> usize {
        PANEL * self.block_bytes()
    }

    /// 4-byte quant groups per block and column (`Q5_0`: its fifth bits, then its nibbles).
    pub(super) const fn groups(self) -> usize {
        (self.block_bytes() - 2) / 4
    }

    /// The kernels read weights as unsigned bytes, `w + offset` (`Q8_0`: stored so,
    /// `Q4_0`: the nibble as in the file); the offset's share, `offset · Σx`, is taken back
    /// by starting each block's sum at `−offset · Σx`.
    fn offset(self) -> i32 {
        match self {
            Weights::Q8_0 => 128,
            Weights::Q4_0 => 8,
            Weights::Q5_0 => 16,
        }
    }
}

/// GGUF blocks `[out, blocks]` (row-major, as a file or the load-time quantizers hold
/// them) as panels (see the module docs), on huge pages ([`pages`]). Columns past `out` in
/// the last panel are zero (scale 0). `v` must hold `out · blocks` whole blocks.
pub(super) fn to_panels(v: &[u8], kind: Weights, out: usize, blocks: usize) -> Vec<u8> {
    let bb = kind.block_bytes();
    let panels = out.div_ceil(PANEL);
    let mut p = pages::with_capacity(panels * blocks * kind.panel_block_bytes());
    // Column `c` of panel `pi`, block `b`; `None` past `out` (or past `v`).
    let block = |pi: usize, c: usize, b: usize| {
        let o = pi * PANEL + c;
        (o < out)
            .then(|| v.get((o * blocks + b) * bb..(o * blocks + b + 1) * bb))
            .flatten()
    };
    for pi in 0..panels {
        for b in 0..blocks {
            for c in 0..PANEL {
                p.extend_from_slice(block(pi, c, b).map_or(&[0, 0][..], |k| &k[..2]));
            }
            for g in 0..kind.groups() {
                for c in 0..PANEL {
                    match block(pi, c, b) {
                        Some(k) => {
                            p.extend(k[2 + 4 * g..2 + 4 * g + 4].iter().map(|&q| match kind {
                                Weights::Q8_0 => q ^ 0x80,
                                Weights::Q4_0 | Weights::Q5_0 => q,
                            }))
                        }
                        None => p.extend_from_slice(&[0; 4]),
                    }
                }
            }
        }
    }
    p
}

/// The GGUF blocks `[out, blocks]` of panels made by [`to_panels`].
pub(super) fn from_panels(p: &[u8], kind: Weights, out: usize, blocks: usize) -> Vec<u8> {
    let bb = kind.block_bytes();
    let pb = kind.panel_block_bytes();
    let mut v = Vec::with_capacity(out * blocks * bb);
    for o in 0..out {
        let (pi, c) = (o / PANEL, o % PANEL);
        for b in 0..blocks {
            let Some(k) = p.get((pi * blocks + b) * pb..(pi * blocks + b + 1) * pb) else {
                return v;
            };
            v.extend_from_slice(&k[2 * c..2 * c + 2]);
            for g in 0..kind.groups() {
                let at = 2 * PANEL + 4 * (g * PANEL + c);
                v.extend(k[at..at + 4].iter().map(|&q| match kind {
                    Weights::Q8_0 => q ^ 0x80,
                    Weights::Q4_0 | Weights::Q5_0 => q,
                }));
            }
        }
    }
    v
}

/// Activation rows quantized for one call.
pub(super) struct Acts {
    pub(super) rows: usize,
    pub(super) blocks: usize,
    /// `[rows, blocks, 32]` quants.
    pub(super) qs: Vec<i8>,
    /// `[rows, blocks]` scales.
    pub(super) ds: Vec<f32>,
    /// `[rows, blocks]`: `−offset · Σ` of each block's quants.
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
        corr: vec![0; n],
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
            .zip(a.corr.par_chunks_mut(blocks))
            .zip(x.par_chunks(width))
            .for_each(row);
    } else {
        a.qs.chunks_mut(width)
            .zip(a.ds.chunks_mut(blocks))
            .zip(a.corr.chunks_mut(blocks))
            .zip(x.chunks(width))
            .for_each(row);
    }
    a
}

/// One row's quants, scales and corrections, and its activations.
type RowParts<'a> = (((&'a mut [i8], &'a mut [f32]), &'a mut [i32]), &'a [f32]);

/// One activation row; see [`quantize`]. With AVX-512 the same operations run 16 lanes at a
/// time (`x86::amax`, `x86::round_sums`): the bytes are [`quantize_row_portable`]'s.
pub(super) fn quantize_row(
    x: &[f32],
    qs: &mut [i8],
    ds: &mut [f32],
    corr: &mut [i32],
    offset: i32,
) {
    #[cfg(target_arch = "x86_64")]
    if super::vnni() && x.len() == qs.len() && x.len() == ds.len() * QK && ds.len() == corr.len() {
        let mut halves = [0i32; QK / 16];
        let blocks = x.chunks_exact(QK).zip(qs.chunks_exact_mut(QK));
        for (((x, q), d), c) in blocks.zip(ds.iter_mut()).zip(corr.iter_mut()) {
            *d = super::x86::amax(x) / 127.0;
            let id = if *d != 0.0 { 1.0 / *d } else { 0.0 };
            super::x86::round_sums(x, id, q, &mut halves);
            *c = -offset * halves.iter().sum::<i32>();
        }
        return;
    }
    quantize_row_portable(x, qs, ds, corr, offset);
}

/// [`quantize_row`] in plain Rust (the reference the SIMD version is tested against).
pub(super) fn quantize_row_portable(
    x: &[f32],
    qs: &mut [i8],
    ds: &mut [f32],
    corr: &mut [i32],
    offset: i32,
) {
    // Adding and taking away 1.5 · 2²³ rounds any |t| < 2²² to an integer, ties to even,
    // in two additions that vectorize (`f32::round` is a library call here).
    const MAGIC: f32 = 12_582_912.0;
    let blocks = x.chunks_exact(QK).zip(qs.chunks_exact_mut(QK));
    for (((x, q), d), c) in blocks.zip(ds.iter_mut()).zip(corr.iter_mut()) {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        *d = amax / 127.0;
        let id = if *d != 0.0 { 1.0 / *d } else { 0.0 };
        // `as` saturates, and |v · id| ≤ 127 by construction; NaN becomes 0.
        for (q, &v) in q.iter_mut().zip(x) {
            *q = ((v * id + MAGIC) - MAGIC) as i8;
        }
        *c = -offset * q.iter().map(|&q| i32::from(q)).sum::<i32>();
    }
}

/// `x` (`rows × inp`, `inp` a multiple of 32) times the `[out, inp]` weights in panels `v`ᵀ.
pub(super) fn matmul(
    v: &[u8],
    kind: Weights,
    out: usize,
    inp: usize,
    x: &[f32],
    rows: usize,
) -> Vec<f32> {
    let a = quantize(x, rows, inp / QK, kind);
    by_panels(out, rows, PANEL, |first, dst| {
        #[cfg(target_arch = "x86_64")]
        if super::vnni() {
            return super::x86::run_quant(v, kind, &a, first, dst);
        } else if super::simd_level() >= 1 && super::f16c() {
            return super::x86::run_quant_v3(v, kind, &a, first, dst);
        }
        run_portable(v, kind, &a, first, dst)
    })
}

/// Output columns `first..first + dst.len()` into `dst`; `first` is a multiple of
/// [`PANEL`] ([`by_panels`] splits so).
pub(super) fn run_portable(v: &[u8], kind: Weights, a: &Acts, first: usize, dst: &mut Cols<'_>) {
    let pb = kind.panel_block_bytes();
    let panel_bytes = a.blocks * pb;
    for j in 0..dst.len() {
        let o = first + j;
        let Some(p) = v.get(o / PANEL * panel_bytes..(o / PANEL + 1) * panel_bytes) else {
            return;
        };
        for r in 0..a.rows {
            dst.put(r, j, &[dot(p, kind, o % PANEL, a, r)]);
        }
    }
}

/// Column `c` of panel `p` · activation row `r`.
fn dot(p: &[u8], kind: Weights, c: usize, a: &Acts, r: usize) -> f32 {
    let pb = kind.panel_block_bytes();
    let mut acc = 0f32;
    for (b, block) in p.chunks_exact(pb).enumerate() {
        let i = r * a.blocks + b;
        let (Some(xq), Some(&dx)) = (a.qs.get(i * QK..(i + 1) * QK), a.ds.get(i)) else {
            return f32::NAN;
        };
        let dw = f16_bits_to_f32(u16::from_le_bytes([block[2 * c], block[2 * c + 1]]));
        let group = |g: usize| {
            let at = 2 * PANEL + 4 * (g * PANEL + c);
            [block[at], block[at + 1], block[at + 2], block[at + 3]]
        };
        // `Q5_0`: bit `j` of group 0 is element `j`'s fifth bit, its nibbles follow.
        let (qh, first) = match kind {
            Weights::Q5_0 => (u32::from_le_bytes(group(0)), 1),
            _ => (0, 0),
        };
        let fifth = |k: usize| (((qh >> k) & 1) << 4) as u8;
        let mut sum = 0i32;
        for g in first..kind.groups() {
            for (e, q) in group(g).into_iter().enumerate() {
                let k = 4 * (g - first) + e;
                match kind {
                    Weights::Q8_0 => sum += (i32::from(q) - 128) * i32::from(xq[k]),
                    Weights::Q4_0 | Weights::Q5_0 => {
                        let (lo, hi) = (q & 0x0f | fifth(k), q >> 4 | fifth(k + QK / 2));
                        let off = kind.offset();
                        sum += (i32::from(lo) - off) * i32::from(xq[k]);
                        sum += (i32::from(hi) - off) * i32::from(xq[k + QK / 2]);
                    }
                }
            }
        }
        acc = (sum as f32).mul_add(dw * dx, acc);
    }
    acc
}
