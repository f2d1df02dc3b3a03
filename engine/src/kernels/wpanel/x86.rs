//! The x86 kernels for `f32` / `bf16` / `f16` panels ([`super`], whose docs give the layout
//! and the arithmetic these compute bit for bit): AVX-512, and AVX2 + FMA for CPUs without
//! it.

use std::arch::x86_64::*;

use super::super::Cols;
use super::{Acts, BAND, Elem, PANEL};

/// Panels one group covers: every row tile of a band walks the group's panels, which stay in
/// L2 meanwhile.
const GROUP: usize = 4;

/// Bytes between the weights a single-row tile reads and those it asks for
/// ([`super::super::prefetch_ahead`]). `kernel-bench --rows 1 --formats bf16,f16` (1B
/// shapes, 2 threads, alternated twice): 512 → 18–19 tok/s, 1,024 → 21–22, 4,096 → 22–24
/// (the row-major kernel before: 21–23), 8,192 → 19–22; 8 panels per single-row tile
/// instead of 4 gained nothing.
const AHEAD: usize = 4096;

/// The micro-kernels' type parameter: the stored element.
const F32: u8 = 0;
const BF16: u8 = 1;
const F16: u8 = 2;

/// `$f::<E>(args)` for the `E` of a run-time [`Elem`].
macro_rules! per_elem {
    ($elem:expr, $f:ident($($arg:expr),*)) => {
        match $elem {
            Elem::F32 => $f::<F32>($($arg),*),
            Elem::Bf16 => $f::<BF16>($($arg),*),
            Elem::F16 => $f::<F16>($($arg),*),
        }
    };
}

const fn elem_bytes(e: u8) -> usize {
    if e == F32 { 4 } else { 2 }
}

/// Output columns `first..first + dst.len()` of the panels `v` into `dst` with AVX-512.
/// Callers check `simd_level() == 2`.
#[expect(unsafe_code, reason = "calling a #[target_feature] function")]
pub(in super::super) fn run(v: &[u8], elem: Elem, a: &Acts<'_>, first: usize, dst: &mut Cols<'_>) {
    // SAFETY: `wpanel::matmul` calls this only when `simd_level` detected AVX-512 F/BW/VL,
    // AVX2 and FMA, every feature `run_v4` enables.
    unsafe { run_v4(v, elem, a, first, dst) }
}

/// [`run`] with AVX2 + FMA: half a panel, 8 columns, per 256-bit vector. Callers check
/// `simd_level() >= 1` and `f16c()`.
#[expect(unsafe_code, reason = "calling a #[target_feature] function")]
pub(in super::super) fn run_avx2(
    v: &[u8],
    elem: Elem,
    a: &Acts<'_>,
    first: usize,
    dst: &mut Cols<'_>,
) {
    // SAFETY: `wpanel::matmul` calls this only when `simd_level` detected AVX2 and FMA and
    // `f16c` detected F16C, every feature `run_v3` enables.
    unsafe { run_v3(v, elem, a, first, dst) }
}

/// `P` panels against `R` activation rows, and where the results go.
struct Tile {
    /// The first panel's first byte.
    w: *const u8,
    /// Bytes per panel.
    pb: usize,
    /// The tile's first activation row.
    x: *const f32,
    inp: usize,
    rr: usize,
    pp: usize,
    /// The tile's first row.
    r: usize,
    /// The first panel's first column, relative to the call's `first`.
    c0: usize,
}

impl Tile {
    /// Row `r + i`'s results for panel `j` of the tile (the columns past the call dropped).
    #[inline]
    fn put(&self, dst: &mut Cols<'_>, i: usize, j: usize, lanes: &[f32; PANEL]) {
        dst.put(self.r + i, self.c0 + j * PANEL, lanes);
    }
}

/// Walks output columns `first..first + dst.len()` of the panels `v`: after one bounds check
/// (whole panels inside `v`, `first` a panel's first column, as [`super::super::by_tiles`]
/// splits, `rows` activation rows of `inp`), bands of [`BAND`] rows, in each groups of
/// [`GROUP`] panels, and in each group tiles of `shape(rows left)` = (rows, most panels); `f`
/// computes a tile and puts it.
#[expect(unsafe_code, reason = "pointer offsets inside the bounds checked here")]
fn tiles(
    v: &[u8],
    elem: Elem,
    a: &Acts<'_>,
    first: usize,
    dst: &mut Cols<'_>,
    shape: impl Fn(usize) -> (usize, usize),
    mut f: impl FnMut(&Tile, &mut Cols<'_>),
) {
    let (rows, inp) = (a.rows, a.inp);
    let pb = elem.panel_bytes(inp);
    let end = (first + dst.len()).div_ceil(PANEL);
    if rows == 0 || !first.is_multiple_of(PANEL) || end * pb > v.len() || a.x.len() < rows * inp {
        return;
    }
    for rb in (0..rows).step_by(BAND) {
        let re = (rb + BAND).min(rows);
        for g in (first / PANEL..end).step_by(GROUP) {
            let ge = (g + GROUP).min(end);
            let mut r = rb;
            while r < re {
                let (rr, most) = shape(re - r);
                let mut pi = g;
                while pi < ge {
                    let pp = 1 << (ge - pi).min(most).ilog2();
                    let t = Tile {
                        // SAFETY: panels `..end` lie inside `v` (checked above).
                        w: unsafe { v.as_ptr().add(pi * pb) },
                        pb,
                        // SAFETY: row `r + rr - 1 < rows`, and `x` holds `rows` rows.
                        x: unsafe { a.x.as_ptr().add(r * inp) },
                        inp,
                        rr,
                        pp,
                        r,
                        c0: pi * PANEL - first,
                    };
                    f(&t, dst);
                    pi += pp;
                }
                r += rr;
            }
        }
    }
}

/// Rows and most panels of the AVX-512 tiles: up to 12 rows × 2 panels, 24 accumulators of
/// the 32 registers; a single row takes 4 panels, 4 independent chains of multiply-adds.
fn shape_v4(left: usize) -> (usize, usize) {
    match left {
        12.. => (12, 2),
        8.. => (8, 2),
        4.. => (4, 2),
        2 | 3 => (2, 2),
        _ => (1, 4),
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
fn run_v4(v: &[u8], elem: Elem, a: &Acts<'_>, first: usize, dst: &mut Cols<'_>) {
    per_elem!(elem, tiles_v4(v, elem, a, first, dst))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
#[expect(
    unsafe_code,
    reason = "calling the micro-kernel inside the bounds `tiles` checked"
)]
fn tiles_v4<const E: u8>(v: &[u8], elem: Elem, a: &Acts<'_>, first: usize, dst: &mut Cols<'_>) {
    tiles(v, elem, a, first, dst, shape_v4, |t, dst| {
        macro_rules! go {
            ($r:literal, $p:literal) => {{
                // SAFETY: `tiles` hands over `pp` whole panels and `rr` rows inside its
                // bounds.
                put_v4(t, dst, &unsafe { micro_v4::<E, $r, $p>(t) });
            }};
        }
        match (t.rr, t.pp) {
            (12, 2) => go!(12, 2),
            (12, _) => go!(12, 1),
            (8, 2) => go!(8, 2),
            (8, _) => go!(8, 1),
            (4, 2) => go!(4, 2),
            (4, _) => go!(4, 1),
            (2, 2) => go!(2, 2),
            (2, _) => go!(2, 1),
            (_, 4) => go!(1, 4),
            (_, 2) => go!(1, 2),
            _ => go!(1, 1),
        }
    });
}

/// A tile's accumulators into `dst`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
#[expect(unsafe_code, reason = "store to a local array")]
fn put_v4<const R: usize, const P: usize>(t: &Tile, dst: &mut Cols<'_>, acc: &[[__m512; P]; R]) {
    for (i, row) in acc.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            let mut lanes = [0f32; PANEL];
            // SAFETY: `lanes` holds exactly 16 `f32`.
            unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), v) };
            t.put(dst, i, j, &lanes);
        }
    }
}

/// 16 elements of type `E` at `p`, widened to `f32` (exact).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
#[inline]
#[expect(unsafe_code, reason = "raw vector load")]
unsafe fn load16<const E: u8>(p: *const u8) -> __m512 {
    // SAFETY: the caller guarantees 16 elements at `p`.
    unsafe {
        match E {
            F32 => _mm512_loadu_ps(p.cast()),
            BF16 => _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
                _mm256_loadu_si256(p.cast()),
            ))),
            _ => _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())),
        }
    }
}

/// `P` panels × `R` rows: per `k`, each panel's 16 weights loaded and widened once, each
/// row's `x_k` broadcast once, `acc = w · x + acc` per pair.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
#[expect(unsafe_code, reason = "unchecked loads")]
unsafe fn micro_v4<const E: u8, const R: usize, const P: usize>(t: &Tile) -> [[__m512; P]; R] {
    let step = PANEL * elem_bytes(E);
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    let mut wv = [_mm512_setzero_ps(); P];
    for k in 0..t.inp {
        for (j, w) in wv.iter_mut().enumerate() {
            // SAFETY: the caller guarantees `P` panels of `inp` steps at `t.w`.
            let p = unsafe { t.w.add(j * t.pb + k * step) };
            // A single row streams the weights from memory: ask for them ahead.
            if R == 1 && (k * step).is_multiple_of(64) {
                super::super::prefetch_ahead(p.wrapping_add(AHEAD), true);
            }
            // SAFETY: as above.
            *w = unsafe { load16::<E>(p) };
        }
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: the caller guarantees `R` rows of `inp` activations at `t.x`.
            let x = _mm512_set1_ps(unsafe { t.x.add(r * t.inp + k).read() });
            for (a, &w) in row.iter_mut().zip(&wv) {
                *a = _mm512_fmadd_ps(w, x, *a);
            }
        }
    }
    acc
}

/// Rows and most panels of the AVX2 tiles (16 registers): up to 6 rows × 1 panel (2 vectors
/// each), 12 accumulators; 2 rows × 2 panels; a single row 4 panels.
fn shape_v3(left: usize) -> (usize, usize) {
    match left {
        6.. => (6, 1),
        4 | 5 => (4, 1),
        2 | 3 => (2, 2),
        _ => (1, 4),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn run_v3(v: &[u8], elem: Elem, a: &Acts<'_>, first: usize, dst: &mut Cols<'_>) {
    per_elem!(elem, tiles_v3(v, elem, a, first, dst))
}

#[target_feature(enable = "avx2,fma,f16c")]
#[expect(
    unsafe_code,
    reason = "calling the micro-kernel inside the bounds `tiles` checked"
)]
fn tiles_v3<const E: u8>(v: &[u8], elem: Elem, a: &Acts<'_>, first: usize, dst: &mut Cols<'_>) {
    tiles(v, elem, a, first, dst, shape_v3, |t, dst| {
        macro_rules! go {
            ($r:literal, $p:literal) => {{
                // SAFETY: `tiles` hands over `pp` whole panels and `rr` rows inside its
                // bounds.
                put_v3(t, dst, &unsafe { micro_v3::<E, $r, $p>(t) });
            }};
        }
        match (t.rr, t.pp) {
            (6, _) => go!(6, 1),
            (4, _) => go!(4, 1),
            (2, 2) => go!(2, 2),
            (2, _) => go!(2, 1),
            (_, 4) => go!(1, 4),
            (_, 2) => go!(1, 2),
            _ => go!(1, 1),
        }
    });
}

/// A tile's accumulators into `dst`.
#[target_feature(enable = "avx2,fma,f16c")]
#[expect(unsafe_code, reason = "stores to a local array")]
fn put_v3<const R: usize, const P: usize>(
    t: &Tile,
    dst: &mut Cols<'_>,
    acc: &[[[__m256; 2]; P]; R],
) {
    for (i, row) in acc.iter().enumerate() {
        for (j, halves) in row.iter().enumerate() {
            let mut lanes = [0f32; PANEL];
            // SAFETY: `lanes` holds exactly 16 `f32`.
            unsafe {
                _mm256_storeu_ps(lanes.as_mut_ptr(), halves[0]);
                _mm256_storeu_ps(lanes.as_mut_ptr().add(8), halves[1]);
            }
            t.put(dst, i, j, &lanes);
        }
    }
}

/// 8 elements of type `E` at `p`, widened to `f32` (exact).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
#[expect(unsafe_code, reason = "raw vector load")]
unsafe fn load8<const E: u8>(p: *const u8) -> __m256 {
    // SAFETY: the caller guarantees 8 elements at `p`.
    unsafe {
        match E {
            F32 => _mm256_loadu_ps(p.cast()),
            BF16 => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
                _mm_loadu_si128(p.cast()),
            ))),
            _ => _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
        }
    }
}

/// [`micro_v4`] with two 8-lane halves per panel.
#[target_feature(enable = "avx2,fma,f16c")]
#[expect(unsafe_code, reason = "unchecked loads")]
unsafe fn micro_v3<const E: u8, const R: usize, const P: usize>(t: &Tile) -> [[[__m256; 2]; P]; R] {
    let step = PANEL * elem_bytes(E);
    let half = 8 * elem_bytes(E);
    let mut acc = [[[_mm256_setzero_ps(); 2]; P]; R];
    let mut wv = [[_mm256_setzero_ps(); 2]; P];
    for k in 0..t.inp {
        for (j, w) in wv.iter_mut().enumerate() {
            // SAFETY: the caller guarantees `P` panels of `inp` steps at `t.w`.
            let p = unsafe { t.w.add(j * t.pb + k * step) };
            // A single row streams the weights from memory: ask for them ahead.
            if R == 1 && (k * step).is_multiple_of(64) {
                super::super::prefetch_ahead(p.wrapping_add(AHEAD), true);
            }
            // SAFETY: as above, both halves.
            *w = unsafe { [load8::<E>(p), load8::<E>(p.add(half))] };
        }
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: the caller guarantees `R` rows of `inp` activations at `t.x`.
            let x = _mm256_set1_ps(unsafe { t.x.add(r * t.inp + k).read() });
            for (a, w) in row.iter_mut().zip(&wv) {
                a[0] = _mm256_fmadd_ps(w[0], x, a[0]);
                a[1] = _mm256_fmadd_ps(w[1], x, a[1]);
            }
        }
    }
    acc
}
