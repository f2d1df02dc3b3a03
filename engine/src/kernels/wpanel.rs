//! `f32` / `bf16` / `f16` weights (a checkpoint's own precision, an F16 GGUF file) in panels
//! of 16 output columns, times `f32` activations.
//!
//! **The arithmetic.** Per output, one `f32` accumulator fed element by element in `k`
//! order with fused multiply-adds, `acc = w_k · x_k + acc` (the weight widened to `f32`
//! exactly), starting at zero. This is a plain sequential dot product: an output depends
//! only on its weight column and its activation row, so it is the same alone or batched,
//! and the portable code below and the x86 kernels ([`x86`]: AVX-512, AVX2) agree bit for
//! bit.
//!
//! **Panels.** Repacked once at load ([`to_panels`]): panel `p` holds columns
//! `16p..16p + 16`, element `k` of all 16 side by side (`[inp][16]`, the stored type, no
//! padding along `k`; columns past `out` zero). One 512-bit vector is then one `k` of 16
//! columns, and a tile of `R` activation rows × `P` panels takes per `k` `P` weight loads
//! (widened once), `R` activation broadcasts and `R · P` multiply-adds into `R · P`
//! accumulators that stay in registers: prefill does 24 multiply-adds per 2 weight loads
//! where the row-major dot product kernel this replaced did 24 per 10 loads plus its 16-lane
//! tree at the end, and streamed its activation rows from L2 for every 4 columns.
//! `kernel-bench --rows 1,16,512 --formats bf16 --no-head` (1B layer stack, 2 threads,
//! Intel Xeon with AVX-512; tok/s): 22.0 / 78.8 / 80.7 → 20.7–22.1 / 101.0 / 158.7.

use rayon::prelude::*;

use super::{Cols, by_tiles, f16_bits_to_f32};
use crate::pages;
use half::{bf16, f16};

/// Output columns per panel: the 16 `f32` lanes of one 512-bit vector.
pub(super) const PANEL: usize = 16;

/// Activation rows the x86 kernels keep in L2 while a thread walks its panels: 4 tiles of 12
/// rows, 192 KiB at `inp` = 1,024 (a 1B model's 2,048: 384 KiB, beside a group's panels).
/// Also the least rows per band when [`by_tiles`] splits a long prompt by rows.
const BAND: usize = 48;

/// How the panels store an element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Elem {
    F32,
    Bf16,
    F16,
}

impl Elem {
    /// Bytes per element.
    pub(super) const fn bytes(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::Bf16 | Elem::F16 => 2,
        }
    }

    /// Bytes of one panel of `inp` elements per column.
    pub(super) const fn panel_bytes(self, inp: usize) -> usize {
        inp * PANEL * self.bytes()
    }

    /// Element `i` of `p` widened to `f32` (exact); 0 past the end.
    #[inline(always)]
    fn get(self, p: &[u8], i: usize) -> f32 {
        let e = self.bytes();
        let Some(b) = p.get(i * e..i * e + e) else {
            return 0.0;
        };
        match self {
            Elem::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            Elem::Bf16 => f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16),
            Elem::F16 => f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]])),
        }
    }
}

/// Row-major `w` (`[out, inp]`, checked by the caller) as panels (see the module docs),
/// rounded to nearest in `elem`, on huge pages ([`pages`]), repacked on the pool (a 1B
/// model's LM head alone is 263 M elements).
pub(super) fn to_panels(w: &[f32], elem: Elem, out: usize, inp: usize) -> Vec<u8> {
    let pb = elem.panel_bytes(inp);
    let len = out.div_ceil(PANEL) * pb;
    let mut p = pages::zeroed(len);
    if pb == 0 {
        return p;
    }
    // Panel `pi`'s columns, each element rounded to nearest and stored little-endian by
    // `enc` (the format chosen once, not per element).
    fn fill<const N: usize>(
        dst: &mut [u8],
        w: &[f32],
        pi: usize,
        out: usize,
        inp: usize,
        enc: impl Fn(f32) -> [u8; N],
    ) {
        for c in 0..PANEL {
            let o = pi * PANEL + c;
            let Some(row) = w.get(o * inp..(o + 1) * inp).filter(|_| o < out) else {
                continue;
            };
            for (k, &v) in row.iter().enumerate() {
                let at = (k * PANEL + c) * N;
                if let Some(d) = dst.get_mut(at..at + N) {
                    d.copy_from_slice(&enc(v));
                }
            }
        }
    }
    p.par_chunks_exact_mut(pb)
        .enumerate()
        .for_each(|(pi, dst)| match elem {
            Elem::F32 => fill(dst, w, pi, out, inp, f32::to_le_bytes),
            Elem::Bf16 => fill(dst, w, pi, out, inp, |v| {
                bf16::from_f32(v).to_bits().to_le_bytes()
            }),
            Elem::F16 => fill(dst, w, pi, out, inp, |v| {
                f16::from_f32(v).to_bits().to_le_bytes()
            }),
        });
    p
}

/// The weights `[out, inp]` of panels made by [`to_panels`] as `f32`, row-major.
pub(super) fn to_f32(p: &[u8], elem: Elem, out: usize, inp: usize) -> Vec<f32> {
    let pb = elem.panel_bytes(inp);
    let mut w = vec![0f32; out * inp];
    for (o, row) in w.chunks_exact_mut(inp.max(1)).enumerate() {
        let (pi, c) = (o / PANEL, o % PANEL);
        let panel = p.get(pi * pb..(pi + 1) * pb).unwrap_or_default();
        for (k, v) in row.iter_mut().enumerate() {
            *v = elem.get(panel, k * PANEL + c);
        }
    }
    w
}

/// `x` (`rows × inp`, checked by the caller) times the `[out, inp]` weights in panels `v`ᵀ.
pub(super) fn matmul(
    v: &[u8],
    elem: Elem,
    out: usize,
    inp: usize,
    x: &[f32],
    rows: usize,
) -> Vec<f32> {
    by_tiles(out, rows, 2 * PANEL, BAND, |band, first, dst| {
        let a = Acts {
            x: x.get(band.start * inp..band.end * inp).unwrap_or_default(),
            rows: band.len(),
            inp,
        };
        #[cfg(target_arch = "x86_64")]
        match super::simd_level() {
            2 => return x86::run(v, elem, &a, first, dst),
            1 if super::f16c() => return x86::run_avx2(v, elem, &a, first, dst),
            _ => {}
        }
        run_portable(v, elem, &a, first, dst)
    })
}

/// The activations of one call: `rows` rows of `inp` elements.
pub(super) struct Acts<'a> {
    pub(super) x: &'a [f32],
    pub(super) rows: usize,
    pub(super) inp: usize,
}

/// Output columns `first..first + dst.len()` into `dst`; `first` is a multiple of [`PANEL`]
/// ([`by_panels`] splits so). One panel and row at a time, the 16 columns' accumulators
/// side by side so that the compiler vectorizes the loop over them.
pub(super) fn run_portable(v: &[u8], elem: Elem, a: &Acts<'_>, first: usize, dst: &mut Cols<'_>) {
    let pb = elem.panel_bytes(a.inp);
    let n = dst.len();
    for pi in first / PANEL..(first + n).div_ceil(PANEL) {
        let Some(panel) = v.get(pi * pb..(pi + 1) * pb) else {
            return;
        };
        for r in 0..a.rows {
            let x = a.x.get(r * a.inp..(r + 1) * a.inp).unwrap_or_default();
            let mut acc = [0f32; PANEL];
            for (k, &xv) in x.iter().enumerate() {
                for (c, acc) in acc.iter_mut().enumerate() {
                    *acc = elem.get(panel, k * PANEL + c).mul_add(xv, *acc);
                }
            }
            dst.put(r, pi * PANEL - first, &acc);
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86;
