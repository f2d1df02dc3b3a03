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
use super::qdot::{Acts, Weights};
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

#[target_feature(enable = "avx2,fma")]
fn quant_v3(v: &[u8], kind: Weights, a: &Acts, first: usize, dst: &mut [f32]) {
    super::qdot::run_portable(v, kind, a, first, dst)
}

/// The portable quantized kernel compiled for AVX2 + FMA (same operations, same bits).
#[expect(unsafe_code, reason = "calling a #[target_feature] function")]
pub(super) fn run_quant_v3(v: &[u8], kind: Weights, a: &Acts, first: usize, dst: &mut [f32]) {
    // SAFETY: `qdot::matmul` calls this only when `simd_level` detected AVX2 and FMA.
    unsafe { quant_v3(v, kind, a, first, dst) }
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
#[expect(unsafe_code, reason = "unchecked loads inside bounds checked here")]
fn quant_v4(v: &[u8], kind: Weights, a: &Acts, first: usize, dst: &mut [f32]) {
    let rows = a.rows;
    let blocks = a.blocks;
    let bb = kind.block_bytes();
    let row_bytes = blocks * bb;
    let n = dst.len() / rows.max(1);
    // The one bounds check: weight rows `first..first + n`, `rows` activation rows of
    // `blocks` blocks, `dst` exactly `[n, rows]`.
    if rows == 0
        || (first + n) * row_bytes > v.len()
        || a.qs.len() < rows * blocks * QK
        || a.ds.len() < rows * blocks
        || a.corr.len() < rows * blocks * 8
        || dst.len() != n * rows
    {
        return;
    }
    for rb in (0..rows).step_by(ROW_BLOCK) {
        let re = (rb + ROW_BLOCK).min(rows);
        let mut c = 0;
        while c < n {
            let cc = if n - c >= COL_TILE { COL_TILE } else { 1 };
            // SAFETY: rows `first..first + n` lie inside `v` (checked above), `c < n`.
            let w = unsafe { v.as_ptr().add((first + c) * row_bytes) };
            let mut r = rb;
            while r < re {
                let rr = match re - r {
                    1 => 1,
                    2 | 3 => 2,
                    _ => 4,
                };
                let x = QRows {
                    // SAFETY: row `r + rr - 1 < rows`; the activation arrays hold `rows`
                    // rows (checked above).
                    qs: unsafe { a.qs.as_ptr().add(r * blocks * QK) },
                    // SAFETY: as above.
                    ds: unsafe { a.ds.as_ptr().add(r * blocks) },
                    // SAFETY: as above.
                    corr: unsafe { a.corr.as_ptr().add(r * blocks * 8) },
                    blocks,
                    row_bytes,
                };
                let at = c * rows + r;
                // SAFETY: the tile's `rr` rows and `cc` columns are inside the checked ranges.
                unsafe {
                    match (kind, rr, cc) {
                        (Weights::Q8_0, 4, 4) => put(dst, at, rows, q_micro::<false, 4, 4>(w, &x)),
                        (Weights::Q8_0, 2, 4) => put(dst, at, rows, q_micro::<false, 2, 4>(w, &x)),
                        (Weights::Q8_0, 1, 4) => put(dst, at, rows, q_micro::<false, 1, 4>(w, &x)),
                        (Weights::Q8_0, 4, _) => put(dst, at, rows, q_micro::<false, 4, 1>(w, &x)),
                        (Weights::Q8_0, 2, _) => put(dst, at, rows, q_micro::<false, 2, 1>(w, &x)),
                        (Weights::Q8_0, _, _) => put(dst, at, rows, q_micro::<false, 1, 1>(w, &x)),
                        (Weights::Q4_0, 4, 4) => put(dst, at, rows, q_micro::<true, 4, 4>(w, &x)),
                        (Weights::Q4_0, 2, 4) => put(dst, at, rows, q_micro::<true, 2, 4>(w, &x)),
                        (Weights::Q4_0, 1, 4) => put(dst, at, rows, q_micro::<true, 1, 4>(w, &x)),
                        (Weights::Q4_0, 4, _) => put(dst, at, rows, q_micro::<true, 4, 1>(w, &x)),
                        (Weights::Q4_0, 2, _) => put(dst, at, rows, q_micro::<true, 2, 1>(w, &x)),
                        (Weights::Q4_0, _, _) => put(dst, at, rows, q_micro::<true, 1, 1>(w, &x)),
                    }
                }
                r += rr;
            }
            c += cc;
        }
    }
}

/// Quantized activation rows at a tile's first row.
struct QRows {
    qs: *const i8,
    ds: *const f32,
    corr: *const i32,
    blocks: usize,
    row_bytes: usize,
}

/// Integer dot products per block: `vpdpbusd` of the weights as unsigned bytes (`Q8_0`
/// offset by 128, `Q4_0` nibbles as stored) with the signed activation bytes, started from
/// the activations' precomputed offset correction, so each 4-element lane holds the exact
/// `Σ w·x`; then `acc = f32(dot) · (d_w · d_x) + acc`. Two blocks per 512-bit vector: even
/// blocks in lanes 0–7, odd ones in lanes 8–15 (an odd last block leaves 8–15 untouched),
/// then the 16 lanes are summed by [`reduce`], as [`super::qdot`]'s portable code does.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
#[expect(unsafe_code, reason = "unchecked vector loads")]
unsafe fn q_micro<const Q4: bool, const R: usize, const C: usize>(
    w: *const u8,
    x: &QRows,
) -> [[f32; C]; R] {
    let bb = if Q4 { 2 + QK / 2 } else { 2 + QK };
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    let mut wu = [_mm512_setzero_si512(); C];
    let mut dw = [_mm512_setzero_ps(); C];
    let flip = _mm512_set1_epi8(-128);
    let nib = _mm256_set1_epi8(0x0f);
    // Lanes 0–7 from element 0, 8–15 from element 1.
    let spread = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    let mut b = 0;
    while b < x.blocks {
        let pair = b + 1 < x.blocks;
        for c in 0..C {
            // SAFETY: the caller guarantees `C` weight rows of `blocks` blocks at `w`; the
            // second block is read only when `b + 1 < blocks`.
            unsafe {
                let p = w.add(c * x.row_bytes + b * bb);
                // The same spot one tile of columns ahead, which the next tile reads
                // (without it a single row's `Q4_0` down projection streamed at ~25 GB/s,
                // with it ~50). Past the matrix's end is harmless: a prefetch never faults,
                // and `wrapping_add` makes no claim on the address.
                super::prefetch_ahead(p.wrapping_add(C * x.row_bytes), R == 1);
                let s0 = u32::from(u16::from_le_bytes([p.read(), p.add(1).read()]));
                let (q0, q1, s1) = if Q4 {
                    let q0 = _mm_loadu_si128(p.add(2).cast());
                    if pair {
                        let p1 = p.add(bb);
                        let s1 = u16::from_le_bytes([p1.read(), p1.add(1).read()]);
                        (q0, _mm_loadu_si128(p1.add(2).cast()), u32::from(s1))
                    } else {
                        (q0, _mm_setzero_si128(), 0)
                    }
                } else {
                    let q0 = _mm256_loadu_si256(p.add(2).cast());
                    let (q1, s1) = if pair {
                        let p1 = p.add(bb);
                        let s1 = u16::from_le_bytes([p1.read(), p1.add(1).read()]);
                        (_mm256_loadu_si256(p1.add(2).cast()), u32::from(s1))
                    } else {
                        (_mm256_setzero_si256(), 0)
                    };
                    let both = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(q0), q1);
                    wu[c] = _mm512_xor_si512(both, flip);
                    (_mm_setzero_si128(), _mm_setzero_si128(), s1)
                };
                if Q4 {
                    // [q0 | q1] → low nibbles [l0 | l1], high [h0 | h1] → [l0, h0, l1, h1].
                    let v = _mm256_set_m128i(q1, q0);
                    let l = _mm256_and_si256(v, nib);
                    let h = _mm256_and_si256(_mm256_srli_epi16::<4>(v), nib);
                    let z = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(l), h);
                    wu[c] = _mm512_shuffle_i64x2::<0b11_01_10_00>(z, z);
                }
                let scales = _mm_cvtph_ps(_mm_cvtsi32_si128((s0 | (s1 << 16)) as i32));
                dw[c] = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(scales));
            }
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let i = r * x.blocks + b;
            // SAFETY: the caller guarantees `R` activation rows of `blocks` blocks; the
            // second block is read only when `b + 1 < blocks`.
            let (xq, corr, dx) = unsafe {
                let qp = x.qs.add(i * QK);
                let cp = x.corr.add(i * 8);
                let d0 = x.ds.add(i).read();
                if pair {
                    let d1 = x.ds.add(i + 1).read();
                    (
                        _mm512_loadu_si512(qp.cast()),
                        _mm512_loadu_si512(cp.cast()),
                        _mm512_permutexvar_ps(
                            spread,
                            _mm512_castps128_ps512(_mm_set_ps(0.0, 0.0, d1, d0)),
                        ),
                    )
                } else {
                    (
                        _mm512_castsi256_si512(_mm256_loadu_si256(qp.cast())),
                        _mm512_castsi256_si512(_mm256_loadu_si256(cp.cast())),
                        _mm512_castps256_ps512(_mm256_set1_ps(d0)),
                    )
                }
            };
            let lanes: __mmask16 = if pair { 0xffff } else { 0x00ff };
            for ((a, &wc), &d) in row.iter_mut().zip(&wu).zip(&dw) {
                let dot = _mm512_dpbusd_epi32(corr, wc, xq);
                let f = _mm512_cvtepi32_ps(dot);
                *a = _mm512_mask3_fmadd_ps(f, _mm512_mul_ps(d, dx), *a, lanes);
            }
        }
        b += 2;
    }
    let mut y = [[0f32; C]; R];
    for (yr, ar) in y.iter_mut().zip(&acc) {
        for (y, &a) in yr.iter_mut().zip(ar) {
            *y = hsum16(a);
        }
    }
    y
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
