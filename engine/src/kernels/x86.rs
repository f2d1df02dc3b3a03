//! x86-64 kernels: the generic [`run`] compiled for AVX2 / AVX-512, and register-blocked
//! AVX-512 micro-kernels written with intrinsics.
//!
//! A micro-kernel computes an `R × C` tile (activation rows × output columns) with one
//! vector accumulator per element: each weight vector is loaded and widened once and
//! multiplied into all `R` rows, each activation vector into all `C` columns, so a batch of
//! rows reads the weights once (decode) and prefill reuses every load `R` or `C` times
//! instead of once. An element's own arithmetic never depends on `R`, `C` or the tile it
//! sits in: the same lanes, fed in the same `k` order, summed by the same tree as the
//! portable code ([`super::fma_block`], [`super::qdot`]), so the result is bitwise the same
//! alone, batched, or on a machine without AVX-512.
//!
//! Unsafe code is confined to raw loads: each driver checks once that every tile it will
//! visit lies inside its slices, then the micro-kernels index without checks.

use std::arch::x86_64::*;

use super::kdot;
use super::qdot::{Acts, PANEL, Weights};
use super::{Blocks, COL_TILE, Job, LANES, QK, ROW_BLOCK, reduce, run};
use crate::quant::QType;

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
fn v4<D: Blocks>(d: &D, job: &Job<'_>, first: usize, dst: &mut [f32]) {
    run(d, job, first, dst)
}

#[target_feature(enable = "avx2,fma")]
fn v3<D: Blocks>(d: &D, job: &Job<'_>, first: usize, dst: &mut [f32]) {
    run(d, job, first, dst)
}

#[expect(unsafe_code, reason = "calling a #[target_feature] function")]
pub(super) fn run_v4<D: Blocks>(d: &D, job: &Job<'_>, first: usize, dst: &mut [f32]) {
    // SAFETY: `run_best` calls this only when `simd_level` detected every feature `v4`
    // enables.
    unsafe { v4(d, job, first, dst) }
}

#[expect(unsafe_code, reason = "calling a #[target_feature] function")]
pub(super) fn run_v3<D: Blocks>(d: &D, job: &Job<'_>, first: usize, dst: &mut [f32]) {
    // SAFETY: `run_best` calls this only when `simd_level` detected every feature `v3`
    // enables.
    unsafe { v3(d, job, first, dst) }
}

/// Output columns `first..first + dst.len() / rows` of a `Q8_0`/`Q4_0` matrix in panels
/// against quantized activations, with AVX2 (no VNNI): each 256-bit vector holds half a
/// panel, 8 columns. Callers check `simd_level() >= 1` and `f16c()`.
#[expect(unsafe_code, reason = "calling a #[target_feature] function")]
pub(super) fn run_quant_v3(v: &[u8], kind: Weights, a: &Acts, first: usize, dst: &mut [f32]) {
    // SAFETY: `qdot::matmul` calls this only when `simd_level` detected AVX2 and FMA and
    // `f16c` detected F16C, every feature `quant_v3` enables.
    unsafe { quant_v3(v, kind, a, first, dst) }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[expect(
    unsafe_code,
    reason = "calling the micro-kernel inside the bounds `panel_tiles` checked"
)]
fn quant_v3(v: &[u8], kind: Weights, a: &Acts, first: usize, dst: &mut [f32]) {
    panel_tiles(v, kind, a, first, dst, 2, |t, dst| {
        let put = |dst: &mut [f32], acc: &[[__m256; 2]]| {
            for (i, halves) in acc.iter().enumerate() {
                let mut lanes = [0f32; PANEL];
                // SAFETY: `lanes` holds exactly 16 `f32`.
                unsafe {
                    _mm256_storeu_ps(lanes.as_mut_ptr(), halves[0]);
                    _mm256_storeu_ps(lanes.as_mut_ptr().add(8), halves[1]);
                }
                t.put(dst, i, &lanes);
            }
        };
        // SAFETY: `panel_tiles` hands over a whole panel and `rr` rows inside its bounds.
        unsafe {
            match (kind, t.rr) {
                (Weights::Q8_0, 2) => put(dst, &panel_avx2::<Q8, 2>(t.w, &t.x)),
                (Weights::Q8_0, _) => put(dst, &panel_avx2::<Q8, 1>(t.w, &t.x)),
                (Weights::Q4_0, 2) => put(dst, &panel_avx2::<Q4, 2>(t.w, &t.x)),
                (Weights::Q4_0, _) => put(dst, &panel_avx2::<Q4, 1>(t.w, &t.x)),
                (Weights::Q5_0, 2) => put(dst, &panel_avx2::<Q5, 2>(t.w, &t.x)),
                (Weights::Q5_0, _) => put(dst, &panel_avx2::<Q5, 1>(t.w, &t.x)),
            }
        }
    });
}

/// [`panel_micro`] for AVX2, half a panel per vector and no `vpdpbusd`: `vpmaddubsw` then
/// `vpmaddwd` give each lane the exact sum of 4 products (no 16-bit pair can saturate:
/// `Q4_0` nibbles are at most 15; `Q8_0` multiplies `|w|` ≤ 128 by `x·sign(w)`, |x| ≤ 127,
/// so its offset correction is not needed), then the same conversion and fused multiply-add
/// per block and column.
#[target_feature(enable = "avx2,fma,f16c")]
#[expect(unsafe_code, reason = "unchecked vector loads")]
unsafe fn panel_avx2<const W: u8, const R: usize>(w: *const u8, x: &QRows) -> [[__m256; 2]; R] {
    let pb = weights(W).panel_block_bytes();
    // `Q5_0`'s first group is its fifth bits.
    let first = usize::from(W == Q5);
    let groups = weights(W).groups();
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    let nib = _mm256_set1_epi8(0x0f);
    let flip = _mm256_set1_epi8(-128);
    let ones = _mm256_set1_epi16(1);
    for b in 0..x.blocks {
        // SAFETY: the caller guarantees `blocks` panel blocks at `w` and `R` activation
        // rows of `blocks` blocks at `x`.
        unsafe {
            let p = w.add(b * pb);
            let q = p.add(2 * PANEL);
            for h in 0..2 {
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(p.add(16 * h).cast()));
                let mut sum = [_mm256_setzero_si256(); R];
                for (r, s) in sum.iter_mut().enumerate() {
                    if W != Q8 {
                        *s = _mm256_set1_epi32(x.corr.add(r * x.blocks + b).read());
                    }
                }
                let qh = _mm256_loadu_si256(q.add(32 * h).cast());
                for g in first..groups {
                    let raw = _mm256_loadu_si256(q.add(64 * g + 32 * h).cast());
                    let (mut wl, mut wh) = (
                        _mm256_and_si256(raw, nib),
                        _mm256_and_si256(_mm256_srli_epi16::<4>(raw), nib),
                    );
                    if W == Q5 {
                        // Bit 4 of each byte: see `fifth_bits`.
                        let fifth = |high: bool| {
                            let (byte, bits) = fifth_bits(g - first, high);
                            let bits = _mm256_set1_epi32(bits);
                            let base = _mm256_setr_epi32(
                                0,
                                0x0404_0404,
                                0x0808_0808,
                                0x0c0c_0c0c,
                                0,
                                0x0404_0404,
                                0x0808_0808,
                                0x0c0c_0c0c,
                            );
                            let idx = _mm256_add_epi32(_mm256_set1_epi32(byte), base);
                            let v = _mm256_shuffle_epi8(qh, idx);
                            let set = _mm256_cmpeq_epi8(_mm256_and_si256(v, bits), bits);
                            _mm256_and_si256(set, _mm256_set1_epi8(0x10))
                        };
                        wl = _mm256_or_si256(wl, fifth(false));
                        wh = _mm256_or_si256(wh, fifth(true));
                    }
                    for (r, s) in sum.iter_mut().enumerate() {
                        let xq = x.qs.add((r * x.blocks + b) * QK).cast::<i32>();
                        let lo = _mm256_set1_epi32(xq.add(g - first).read_unaligned());
                        let d = if W != Q8 {
                            let hi = _mm256_set1_epi32(xq.add(g - first + 4).read_unaligned());
                            let l = _mm256_maddubs_epi16(wl, lo);
                            let h = _mm256_maddubs_epi16(wh, hi);
                            _mm256_add_epi32(_mm256_madd_epi16(l, ones), _mm256_madd_epi16(h, ones))
                        } else {
                            let wq = _mm256_xor_si256(raw, flip);
                            let p =
                                _mm256_maddubs_epi16(_mm256_abs_epi8(wq), _mm256_sign_epi8(lo, wq));
                            _mm256_madd_epi16(p, ones)
                        };
                        *s = _mm256_add_epi32(*s, d);
                    }
                }
                for (r, a) in acc.iter_mut().enumerate() {
                    let dx = _mm256_set1_ps(x.ds.add(r * x.blocks + b).read());
                    let f = _mm256_cvtepi32_ps(sum[r]);
                    a[h] = _mm256_fmadd_ps(f, _mm256_mul_ps(dw, dx), a[h]);
                }
            }
        }
    }
    acc
}

/// A 16/32-bit weight matrix `[out, inp]`, row-major.
pub(super) enum Wide<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u16]),
    F16(&'a [u16]),
    /// Not a 16/32-bit matrix.
    None,
}

const F32: u8 = 0;
const BF16: u8 = 1;
const F16: u8 = 2;

/// Output columns `first..first + dst.len() / rows` of a 16/32-bit matrix into `dst`
/// (`[n, rows]`). Callers check `simd_level() == 2`.
#[expect(unsafe_code, reason = "calling a #[target_feature] function")]
pub(super) fn run_wide(w: &Wide<'_>, inp: usize, job: &Job<'_>, first: usize, dst: &mut [f32]) {
    // SAFETY: `matmul_wide` calls this only when `simd_level` detected AVX-512 F/BW/VL,
    // AVX2 and FMA, every feature `wide_v4` enables.
    unsafe { wide_v4(w, inp, job, first, dst) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
fn wide_v4(w: &Wide<'_>, inp: usize, job: &Job<'_>, first: usize, dst: &mut [f32]) {
    let (base, elem, len) = match w {
        Wide::F32(v) => (v.as_ptr().cast::<u8>(), 4, v.len()),
        Wide::Bf16(v) => (v.as_ptr().cast::<u8>(), 2, v.len()),
        Wide::F16(v) => (v.as_ptr().cast::<u8>(), 2, v.len()),
        Wide::None => return,
    };
    let rows = job.rows;
    let width = job.blocks * QK;
    let n = dst.len() / rows.max(1);
    // The one bounds check: weight rows `first..first + n` of `inp` elements, activation
    // rows of `width` ≥ `inp` elements (zero-padded to whole blocks), `dst` exactly `[n, rows]`.
    if rows == 0
        || width < inp
        || (first + n) * inp > len
        || job.xs.len() < rows * width
        || dst.len() != n * rows
    {
        return;
    }
    let t = Tile {
        inp,
        width,
        full: inp / LANES,
        steps: width / LANES,
        row_bytes: inp * elem,
        prefetch: rows <= ROW_BLOCK,
    };
    match w {
        Wide::F32(_) => wide_tiles::<F32>(base, &t, job.xs, rows, first, n, dst),
        Wide::Bf16(_) => wide_tiles::<BF16>(base, &t, job.xs, rows, first, n, dst),
        Wide::F16(_) => wide_tiles::<F16>(base, &t, job.xs, rows, first, n, dst),
        Wide::None => {}
    }
}

/// The `k` geometry of one call.
struct Tile {
    inp: usize,
    /// Activation row stride (`inp` rounded up to whole blocks).
    width: usize,
    /// Steps of [`LANES`] weights that are all inside the row.
    full: usize,
    /// All steps, the last ones partial or empty, as the portable code's zero-padded blocks.
    steps: usize,
    row_bytes: usize,
    /// Prefetch the next tile's weights: worth it when the weights stream from memory
    /// once (decode); prefill reads each from cache once per row block and is compute-bound.
    prefetch: bool,
}

/// Walks `dst` in `R × C` tiles, rows in L2-sized blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
#[expect(
    unsafe_code,
    reason = "unchecked loads inside bounds checked by `wide_v4`"
)]
fn wide_tiles<const F: u8>(
    base: *const u8,
    t: &Tile,
    xs: &[f32],
    rows: usize,
    first: usize,
    n: usize,
    dst: &mut [f32],
) {
    for rb in (0..rows).step_by(ROW_BLOCK) {
        let re = (rb + ROW_BLOCK).min(rows);
        let mut c = 0;
        while c < n {
            let cc = if n - c >= COL_TILE { COL_TILE } else { 1 };
            // SAFETY: `wide_v4` checked that rows `first..first + n` of `row_bytes` bytes
            // lie inside the weights, and `c < n`.
            let w = unsafe { base.add((first + c) * t.row_bytes) };
            let mut r = rb;
            while r < re {
                let rr = match re - r {
                    1 => 1,
                    2 | 3 => 2,
                    4 | 5 => 4,
                    _ => 6,
                };
                // SAFETY: row `r + rr - 1 < rows`, and `wide_v4` checked `xs` holds `rows`
                // rows of `width`.
                let x = unsafe { xs.as_ptr().add(r * t.width) };
                let at = c * rows + r;
                // SAFETY: the tile's `rr` rows and `cc` columns are inside the checked
                // ranges (see above).
                unsafe {
                    match (rr, cc) {
                        (6, 4) => put(dst, at, rows, wide_micro::<F, 6, 4>(w, x, t)),
                        (4, 4) => put(dst, at, rows, wide_micro::<F, 4, 4>(w, x, t)),
                        (2, 4) => put(dst, at, rows, wide_micro::<F, 2, 4>(w, x, t)),
                        (1, 4) => put(dst, at, rows, wide_micro::<F, 1, 4>(w, x, t)),
                        (6, _) => put(dst, at, rows, wide_micro::<F, 6, 1>(w, x, t)),
                        (4, _) => put(dst, at, rows, wide_micro::<F, 4, 1>(w, x, t)),
                        (2, _) => put(dst, at, rows, wide_micro::<F, 2, 1>(w, x, t)),
                        _ => put(dst, at, rows, wide_micro::<F, 1, 1>(w, x, t)),
                    }
                }
                r += rr;
            }
            c += cc;
        }
    }
}

/// Stores an `R × C` tile into `dst` (`[n, rows]`) at column-major offset `at`.
#[inline(always)]
fn put<const R: usize, const C: usize>(dst: &mut [f32], at: usize, rows: usize, v: [[f32; C]; R]) {
    for (r, row) in v.iter().enumerate() {
        for (c, &y) in row.iter().enumerate() {
            if let Some(d) = dst.get_mut(at + c * rows + r) {
                *d = y;
            }
        }
    }
}

/// `LANES` weights of format `F` at `p` (all inside the row), widened to `f32`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
#[inline]
#[expect(unsafe_code, reason = "raw vector load")]
unsafe fn load_w<const F: u8>(p: *const u8) -> __m512 {
    // SAFETY: the caller guarantees `LANES` elements at `p` are inside the weights.
    unsafe {
        match F {
            F32 => _mm512_loadu_ps(p.cast()),
            BF16 => _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
                _mm256_loadu_si256(p.cast()),
            ))),
            _ => _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())),
        }
    }
}

/// The first `count` (< `LANES`, maybe 0) weights at `p`, the other lanes zero, as the
/// portable code's zero-filled partial block.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
#[inline]
#[expect(unsafe_code, reason = "raw masked vector load")]
unsafe fn load_w_part<const F: u8>(p: *const u8, count: usize) -> __m512 {
    let m: __mmask16 = (1u16 << count.min(LANES - 1)) - 1;
    // SAFETY: masked-off lanes are not read; the caller guarantees the `count` lanes
    // are inside the weights.
    unsafe {
        match F {
            F32 => _mm512_maskz_loadu_ps(m, p.cast()),
            BF16 => _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
                _mm256_maskz_loadu_epi16(m, p.cast()),
            ))),
            _ => _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p.cast())),
        }
    }
}

/// Dot products of weight rows `w + c·row_bytes` (`c < C`) with activation rows
/// `x + r·width` (`r < R`). Per element: one 16-lane accumulator, `k` in order, element `k`
/// in lane `k mod 16`, summed by [`reduce`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
#[expect(unsafe_code, reason = "unchecked vector loads")]
unsafe fn wide_micro<const F: u8, const R: usize, const C: usize>(
    w: *const u8,
    x: *const f32,
    t: &Tile,
) -> [[f32; C]; R] {
    let elem = if F == F32 { 4 } else { 2 };
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    let mut wv = [_mm512_setzero_ps(); C];
    // Whole steps first, without a branch, then the partial or empty ones.
    for s in 0..t.full {
        let k = s * LANES;
        for (c, v) in wv.iter_mut().enumerate() {
            let at = c * t.row_bytes + k * elem;
            // The same spot one tile of columns ahead (see `q_micro`), once per cache line.
            if t.prefetch && (F == F32 || s % 2 == 0) {
                super::prefetch_ahead(w.wrapping_add(at + C * t.row_bytes), R == 1);
            }
            // SAFETY: the caller guarantees `C` weight rows of `inp` elements at `w`; a
            // whole step reads elements `k..k + LANES ≤ inp` of one.
            *v = unsafe { load_w::<F>(w.add(at)) };
        }
        // SAFETY: the caller guarantees `R` activation rows of `width ≥ k + LANES`
        // elements at `x`.
        unsafe { fma_rows(&mut acc, &wv, x, t.width, k) };
    }
    for s in t.full..t.steps {
        let k = s * LANES;
        let left = t.inp.saturating_sub(k);
        for (c, v) in wv.iter_mut().enumerate() {
            *v = if left == 0 {
                _mm512_setzero_ps()
            } else {
                // SAFETY: as above, reading only the `inp - k < LANES` elements left.
                unsafe { load_w_part::<F>(w.add(c * t.row_bytes + k * elem), left) }
            };
        }
        // SAFETY: as above.
        unsafe { fma_rows(&mut acc, &wv, x, t.width, k) };
    }
    let mut y = [[0f32; C]; R];
    for (yr, ar) in y.iter_mut().zip(&acc) {
        for (y, &a) in yr.iter_mut().zip(ar) {
            *y = hsum16(a);
        }
    }
    y
}

/// `acc[r][c] += w[c] · x[r]`, `x[r]` being `LANES` activations at `x + r·width + k`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
#[inline]
#[expect(unsafe_code, reason = "unchecked vector loads")]
unsafe fn fma_rows<const R: usize, const C: usize>(
    acc: &mut [[__m512; C]; R],
    w: &[__m512; C],
    x: *const f32,
    width: usize,
    k: usize,
) {
    for (r, row) in acc.iter_mut().enumerate() {
        // SAFETY: the caller guarantees `R` rows of `width ≥ k + LANES` elements at `x`.
        let xv = unsafe { _mm512_loadu_ps(x.add(r * width + k)) };
        for (a, &wc) in row.iter_mut().zip(w) {
            *a = _mm512_fmadd_ps(wc, xv, *a);
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
#[inline]
#[expect(unsafe_code, reason = "store to a local array")]
fn hsum16(v: __m512) -> f32 {
    let mut a = [0f32; LANES];
    // SAFETY: `a` holds exactly 16 `f32`.
    unsafe { _mm512_storeu_ps(a.as_mut_ptr(), v) };
    reduce(a)
}

/// Output columns `first..first + dst.len() / rows` of a `Q8_0`/`Q4_0` matrix `v` against
/// quantized activations. Callers check `vnni()`.
#[expect(unsafe_code, reason = "calling a #[target_feature] function")]
pub(super) fn run_quant(v: &[u8], kind: Weights, a: &Acts, first: usize, dst: &mut [f32]) {
    // SAFETY: `qdot::matmul` calls this only when `vnni` detected AVX-512 F/BW/VL/VNNI,
    // AVX2 and FMA, every feature `quant_v4` enables.
    unsafe { quant_v4(v, kind, a, first, dst) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
#[expect(
    unsafe_code,
    reason = "calling the micro-kernel inside the bounds `panel_tiles` checked"
)]
fn quant_v4(v: &[u8], kind: Weights, a: &Acts, first: usize, dst: &mut [f32]) {
    panel_tiles(v, kind, a, first, dst, 8, |t, dst| {
        let put = |dst: &mut [f32], acc: &[__m512]| {
            for (i, &v) in acc.iter().enumerate() {
                let mut lanes = [0f32; PANEL];
                // SAFETY: `lanes` holds exactly 16 `f32`.
                unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), v) };
                t.put(dst, i, &lanes);
            }
        };
        // SAFETY: `panel_tiles` hands over a whole panel and `rr` rows inside its bounds.
        unsafe {
            match (kind, t.rr) {
                (Weights::Q8_0, 8) => put(dst, &panel_micro::<Q8, 8>(t.w, &t.x)),
                (Weights::Q8_0, 4) => put(dst, &panel_micro::<Q8, 4>(t.w, &t.x)),
                (Weights::Q8_0, 2) => put(dst, &panel_micro::<Q8, 2>(t.w, &t.x)),
                (Weights::Q8_0, _) => put(dst, &panel_micro::<Q8, 1>(t.w, &t.x)),
                (Weights::Q4_0, 8) => put(dst, &panel_micro::<Q4, 8>(t.w, &t.x)),
                (Weights::Q4_0, 4) => put(dst, &panel_micro::<Q4, 4>(t.w, &t.x)),
                (Weights::Q4_0, 2) => put(dst, &panel_micro::<Q4, 2>(t.w, &t.x)),
                (Weights::Q4_0, _) => put(dst, &panel_micro::<Q4, 1>(t.w, &t.x)),
                (Weights::Q5_0, 8) => put(dst, &panel_micro::<Q5, 8>(t.w, &t.x)),
                (Weights::Q5_0, 4) => put(dst, &panel_micro::<Q5, 4>(t.w, &t.x)),
                (Weights::Q5_0, 2) => put(dst, &panel_micro::<Q5, 2>(t.w, &t.x)),
                (Weights::Q5_0, _) => put(dst, &panel_micro::<Q5, 1>(t.w, &t.x)),
            }
        }
    });
}

/// Quantized activation rows at a tile's first row.
struct QRows {
    qs: *const i8,
    ds: *const f32,
    corr: *const i32,
    blocks: usize,
}

/// One panel of weights against `rr` activation rows, and where the results go.
struct PanelTile {
    /// The panel's first byte; `x.blocks` panel blocks follow.
    w: *const u8,
    x: QRows,
    rr: usize,
    /// The tile's first row.
    r: usize,
    /// Activation rows in the call (`dst` is `[n, rows]`).
    rows: usize,
    /// The panel's first column, relative to the call's `first`.
    c0: usize,
    /// Columns of the panel inside the call (16, or fewer in the matrix's last panel).
    cols: usize,
}

impl PanelTile {
    /// Row `r + i`'s results for the panel's 16 columns, the padded ones dropped.
    fn put(&self, dst: &mut [f32], i: usize, lanes: &[f32; PANEL]) {
        for (c, &y) in lanes.iter().enumerate().take(self.cols) {
            if let Some(d) = dst.get_mut((self.c0 + c) * self.rows + self.r + i) {
                *d = y;
            }
        }
    }
}

/// Walks output columns `first..first + dst.len() / rows` of a `Q8_0`/`Q4_0` matrix in
/// panels: after one bounds check (whole panels inside `v`, `first` a panel's first column,
/// as [`super::by_columns`] splits, `rows` activation rows of `blocks` blocks, `dst` exactly
/// `[n, rows]`), runs of [`ROW_BLOCK`] rows, and in each, every panel against tiles of the
/// most rows up to `max_rows` (a power of two) that remain; `f` computes a tile and puts it.
#[expect(unsafe_code, reason = "pointer offsets inside the bounds checked here")]
fn panel_tiles(
    v: &[u8],
    kind: Weights,
    a: &Acts,
    first: usize,
    dst: &mut [f32],
    max_rows: usize,
    mut f: impl FnMut(&PanelTile, &mut [f32]),
) {
    let rows = a.rows;
    let blocks = a.blocks;
    let panel_bytes = blocks * kind.panel_block_bytes();
    let n = dst.len() / rows.max(1);
    let panels = (first + n).div_ceil(PANEL);
    if rows == 0
        || !first.is_multiple_of(PANEL)
        || panels * panel_bytes > v.len()
        || a.qs.len() < rows * blocks * QK
        || a.ds.len() < rows * blocks
        || a.corr.len() < rows * blocks
        || dst.len() != n * rows
    {
        return;
    }
    for rb in (0..rows).step_by(ROW_BLOCK) {
        let re = (rb + ROW_BLOCK).min(rows);
        for pi in first / PANEL..panels {
            let c0 = pi * PANEL - first;
            let mut r = rb;
            while r < re {
                let rr = 1 << (re - r).min(max_rows).ilog2();
                let t = PanelTile {
                    // SAFETY: panels `..panels` lie inside `v` (checked above).
                    w: unsafe { v.as_ptr().add(pi * panel_bytes) },
                    x: QRows {
                        // SAFETY: row `r + rr - 1 < rows`; the activation arrays hold `rows`
                        // rows (checked above).
                        qs: unsafe { a.qs.as_ptr().add(r * blocks * QK) },
                        // SAFETY: as above.
                        ds: unsafe { a.ds.as_ptr().add(r * blocks) },
                        // SAFETY: as above.
                        corr: unsafe { a.corr.as_ptr().add(r * blocks) },
                        blocks,
                    },
                    rr,
                    r,
                    rows,
                    c0,
                    cols: (n - c0).min(PANEL),
                };
                f(&t, dst);
                r += rr;
            }
        }
    }
}

/// Panel blocks between the one a kernel reads and the one it prefetches.
const AHEAD: usize = 4;

/// The panel micro-kernels' type parameter: which block type.
const Q8: u8 = 0;
const Q4: u8 = 1;
const Q5: u8 = 2;

/// The weights' block type of a micro-kernel instantiated for `W`.
const fn weights(w: u8) -> Weights {
    match w {
        Q4 => Weights::Q4_0,
        Q5 => Weights::Q5_0,
        _ => Weights::Q8_0,
    }
}

/// `Q5_0`'s fifth bits for the 4-element group `g` (or, `high`, `g + 4`: the elements
/// `16 + 4g..`) of each 32-bit lane of `qh` (a panel's fifth-bit group, lane `c` column `c`'s
/// `u32`), as bit 4 of the group's 4 bytes: `vpshufb` copies the lane's byte holding bits
/// `4g..4g + 4` (or `16 + 4g..`) to all 4 bytes, and byte `i` keeps bit `i` of its nibble.
/// Returns the byte shuffle and the bit of each byte to test.
fn fifth_bits(g: usize, high: bool) -> (i32, i32) {
    let byte = (g / 2 + if high { 2 } else { 0 }) as i32;
    let bits = if g.is_multiple_of(2) {
        0x0804_0201
    } else {
        0x8040_2010_u32 as i32
    };
    (byte * 0x0101_0101, bits)
}

/// `vpshufb` indices that keep each byte inside its 32-bit lane: `4d` in every byte of
/// dword `d` of each 128-bit lane (the shuffle indexes within 128-bit lanes).
#[target_feature(enable = "avx512f")]
fn dword_base512() -> __m512i {
    _mm512_set4_epi32(0x0c0c_0c0c, 0x0808_0808, 0x0404_0404, 0)
}

/// One panel (16 output columns, one per lane) against `R` activation rows: per block,
/// the block's 8 weight groups are loaded once (`Q4_0`: 4 loads, low and high nibbles) and
/// used for every row; each row's sum starts at its precomputed `−offset · Σx` and takes
/// one `vpdpbusd` per group with the row's 4 activation bytes broadcast, so lane `c` ends
/// with column `c`'s exact `Σ w·x`; then `acc = f32(sum) · (d_w · d_x) + acc`, as
/// [`super::qdot`]'s portable code does per column.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
#[expect(unsafe_code, reason = "unchecked vector loads")]
unsafe fn panel_micro<const W: u8, const R: usize>(w: *const u8, x: &QRows) -> [__m512; R] {
    let pb = weights(W).panel_block_bytes();
    let mut acc = [_mm512_setzero_ps(); R];
    let nib = _mm512_set1_epi8(0x0f);
    let mut wv = [_mm512_setzero_si512(); 8];
    for b in 0..x.blocks {
        // SAFETY: the caller guarantees `blocks` panel blocks at `w` and `R` activation
        // rows of `blocks` blocks at `x`.
        unsafe {
            let p = w.add(b * pb);
            // The panel is read front to back; ask for the block `AHEAD` blocks on (see
            // `prefetch_ahead`; past the panel's end is harmless).
            for line in (0..pb).step_by(64) {
                super::prefetch_ahead(p.wrapping_add(AHEAD * pb + line), R == 1);
            }
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()));
            let q = p.add(2 * PANEL);
            if W == Q5 {
                // The fifth bits' group, then the nibbles as `Q4_0`'s.
                let qh = _mm512_loadu_si512(q.cast());
                let sixteen = _mm512_set1_epi8(16);
                for g in 0..4 {
                    let raw = _mm512_loadu_si512(q.add(64 * (g + 1)).cast());
                    for (high, wg) in [(false, g), (true, g + 4)] {
                        // Bit 4 of each byte: see `fifth_bits`.
                        let (byte, bits) = fifth_bits(g, high);
                        let idx = _mm512_add_epi32(_mm512_set1_epi32(byte), dword_base512());
                        let set = _mm512_test_epi8_mask(
                            _mm512_shuffle_epi8(qh, idx),
                            _mm512_set1_epi32(bits),
                        );
                        let v = if high {
                            _mm512_srli_epi16::<4>(raw)
                        } else {
                            raw
                        };
                        let v = _mm512_and_si512(v, nib);
                        wv[wg] = _mm512_mask_add_epi8(v, set, v, sixteen);
                    }
                }
            } else if W == Q4 {
                for g in 0..4 {
                    let raw = _mm512_loadu_si512(q.add(64 * g).cast());
                    wv[g] = _mm512_and_si512(raw, nib);
                    wv[g + 4] = _mm512_and_si512(_mm512_srli_epi16::<4>(raw), nib);
                }
            } else {
                for (g, wg) in wv.iter_mut().enumerate() {
                    *wg = _mm512_loadu_si512(q.add(64 * g).cast());
                }
            }
            for (r, a) in acc.iter_mut().enumerate() {
                let i = r * x.blocks + b;
                let xq = x.qs.add(i * QK).cast::<i32>();
                // Group `g` multiplies activation elements `4g..4g + 4` (for `Q4_0`'s high
                // nibbles, groups 4–7, elements 16 + 4(g − 4).. = 4g.. too). Two chains of
                // `vpdpbusd` halve the latency a single row waits on; integer sums are exact
                // in any order.
                let mut even = _mm512_set1_epi32(x.corr.add(i).read());
                let mut odd = _mm512_setzero_si512();
                for g in (0..8).step_by(2) {
                    let x0 = _mm512_set1_epi32(xq.add(g).read_unaligned());
                    let x1 = _mm512_set1_epi32(xq.add(g + 1).read_unaligned());
                    even = _mm512_dpbusd_epi32(even, wv[g], x0);
                    odd = _mm512_dpbusd_epi32(odd, wv[g + 1], x1);
                }
                let sum = _mm512_add_epi32(even, odd);
                let s = _mm512_mul_ps(dw, _mm512_set1_ps(x.ds.add(i).read()));
                *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), s, *a);
            }
        }
    }
    acc
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
fn kquant_v4(v: &[u8], t: QType, a: &kdot::Acts, first: usize, dst: &mut [f32]) {
    kdot::run_portable(v, t, a, first, dst)
}

#[target_feature(enable = "avx2,fma")]
fn kquant_v3(v: &[u8], t: QType, a: &kdot::Acts, first: usize, dst: &mut [f32]) {
    kdot::run_portable(v, t, a, first, dst)
}

/// The portable kernel for the other block types ([`kdot`]) compiled for AVX-512: the
/// same integer and `f32` operations, so the same bits.
#[expect(unsafe_code, reason = "calling a #[target_feature] function")]
pub(super) fn run_kquant_v4(v: &[u8], t: QType, a: &kdot::Acts, first: usize, dst: &mut [f32]) {
    // SAFETY: `kdot::matmul` calls this only when `simd_level` detected AVX-512 F/BW/VL,
    // AVX2 and FMA, every feature `kquant_v4` enables.
    unsafe { kquant_v4(v, t, a, first, dst) }
}

/// [`run_kquant_v4`] for AVX2 + FMA.
#[expect(unsafe_code, reason = "calling a #[target_feature] function")]
pub(super) fn run_kquant_v3(v: &[u8], t: QType, a: &kdot::Acts, first: usize, dst: &mut [f32]) {
    // SAFETY: `kdot::matmul` calls this only when `simd_level` detected AVX2 and FMA.
    unsafe { kquant_v3(v, t, a, first, dst) }
}
