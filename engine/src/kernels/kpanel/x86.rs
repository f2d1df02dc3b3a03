//! The x86 kernels for `Q4_K` / `Q5_K` / `Q6_K` panels ([`super`], whose docs give the layout and the
//! arithmetic these compute bit for bit): AVX-512 VNNI, and AVX2 for CPUs without it.

use std::arch::x86_64::*;

use super::super::kdot::Acts;
use super::super::qdot::PANEL;
use super::super::{Cols, ROW_BLOCK};
use super::{Kind, at};
use crate::kernels::kpanel;
use crate::quant::QK_K;

/// Most activation rows one tile multiplies. `kernel-bench --rows 16,512` (1B shapes, 2
/// threads, alternated twice): 8 rather than 4 took `Q6_K` from 103–108 / 129–131 to
/// 126–129 / 159 tok/s, `Q4_K` within noise (161–169 / 197–198 → 171–175 / 192–206).
const MAX_ROWS: usize = 8;

/// Output columns `first..first + dst.len()` of the panels `v` into `dst` with AVX-512
/// VNNI. Callers check `vnni()`.
#[expect(unsafe_code, reason = "calling a #[target_feature] function")]
pub(in super::super) fn run(v: &[u8], kind: Kind, a: &Acts, first: usize, dst: &mut Cols<'_>) {
    // SAFETY: `kpanel::matmul` calls this only when `vnni` detected AVX-512 F/BW/VL/VNNI,
    // AVX2, FMA and F16C, every feature `run_v4` enables.
    unsafe { run_v4(v, kind, a, first, dst) }
}

/// [`run`] with AVX2 (no VNNI): half a panel, 8 columns, per 256-bit vector. Callers check
/// `simd_level() >= 1` and `f16c()`.
#[expect(unsafe_code, reason = "calling a #[target_feature] function")]
pub(in super::super) fn run_avx2(v: &[u8], kind: Kind, a: &Acts, first: usize, dst: &mut Cols<'_>) {
    // SAFETY: `kpanel::matmul` calls this only when `simd_level` detected AVX2 and FMA and
    // `f16c` detected F16C, every feature `run_v3` enables.
    unsafe { run_v3(v, kind, a, first, dst) }
}

/// The micro-kernels' type parameter: which K-quant.
const Q4: u8 = 0;
const Q5: u8 = 1;
const Q6: u8 = 2;

const fn kind(t: u8) -> Kind {
    match t {
        Q4 => Kind::Q4K,
        Q5 => Kind::Q5K,
        _ => Kind::Q6K,
    }
}

/// Activation rows at a tile's first row.
struct Rows {
    qs: *const i8,
    ds: *const f32,
    sums: *const i32,
    /// Elements per activation row.
    width: usize,
    /// Super-blocks per row.
    blocks: usize,
}

impl Rows {
    /// Row `r`'s pairs of group sums in super-block `b`, as `i16` pairs in `i32`s: for
    /// `Q6_K` the 16 sums of 16 elements (its sub-blocks), for `Q4_K` the 8 sums of 32.
    ///
    /// # Safety
    /// Row `r` and super-block `b` lie inside the activations.
    #[inline(always)]
    #[expect(unsafe_code, reason = "unchecked loads inside rows the caller checked")]
    unsafe fn pairs(&self, q6: bool, r: usize, b: usize) -> [i32; 8] {
        // SAFETY: the caller guarantees the super-block's 16 group sums.
        let s = unsafe {
            std::slice::from_raw_parts(self.sums.add((r * self.width + b * QK_K) / 16), 16)
        };
        let mut xp = [0i32; 8];
        // A group sum is at most 16 · 127 in magnitude, a sub-block of `Q4_K` twice that:
        // both fit `i16`.
        let half = |v: i32| i32::from(v as i16 as u16);
        for (j, xp) in xp.iter_mut().enumerate() {
            *xp = if q6 {
                half(s[2 * j]) | (s[2 * j + 1] << 16)
            } else if j < 4 {
                half(s[4 * j] + s[4 * j + 1]) | ((s[4 * j + 2] + s[4 * j + 3]) << 16)
            } else {
                0
            };
        }
        xp
    }
}

/// The drivers' walk: after one bounds check (whole panels inside `v`, `first` a panel's
/// first column, as [`super::super::by_panels`] splits, `rows` activation rows of whole
/// super-blocks with their scales and group sums; else the portable code), runs of
/// [`ROW_BLOCK`] rows, and in each, every panel against tiles of the most rows up to
/// `max_rows` (a power of two, at most 8) that remain; `tile` computes one into its first
/// `rr` rows of lanes.
#[inline(always)]
fn tiles(
    v: &[u8],
    kind: Kind,
    a: &Acts,
    first: usize,
    dst: &mut Cols<'_>,
    max_rows: usize,
    mut tile: impl FnMut(*const u8, &Rows, usize, &mut [[f32; PANEL]; 8]),
) {
    let rows = a.rows;
    let blocks = a.width / QK_K;
    let panel_bytes = blocks * kind.panel_block_bytes();
    let panels = (first + dst.len()).div_ceil(PANEL);
    if rows == 0
        || a.block != QK_K
        || !a.width.is_multiple_of(QK_K)
        || !first.is_multiple_of(PANEL)
        || panels * panel_bytes > v.len()
        || a.qs.len() < rows * a.width
        || a.ds.len() < rows * blocks
        || a.sums.len() < rows * a.width / 16
    {
        return kpanel::run_portable(v, kind, a, first, dst);
    }
    let mut lanes = [[0f32; PANEL]; 8];
    for rb in (0..rows).step_by(ROW_BLOCK) {
        let re = (rb + ROW_BLOCK).min(rows);
        for pi in first / PANEL..panels {
            let c0 = pi * PANEL - first;
            let w = v.as_ptr().wrapping_add(pi * panel_bytes);
            let mut r = rb;
            while r < re {
                let rr = 1 << (re - r).min(max_rows).ilog2();
                // The pointers are only computed here; the check above covers every tile.
                let x = Rows {
                    qs: a.qs.as_ptr().wrapping_add(r * a.width),
                    ds: a.ds.as_ptr().wrapping_add(r * blocks),
                    sums: a.sums.as_ptr().wrapping_add(r * a.width / 16),
                    width: a.width,
                    blocks,
                };
                tile(w, &x, rr, &mut lanes);
                for (i, lanes) in lanes.iter().enumerate().take(rr) {
                    dst.put(r + i, c0, lanes);
                }
                r += rr;
            }
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[expect(
    unsafe_code,
    reason = "calling the micro-kernel inside the bounds `tiles` checked"
)]
fn run_v4(v: &[u8], kind: Kind, a: &Acts, first: usize, dst: &mut Cols<'_>) {
    tiles(v, kind, a, first, dst, MAX_ROWS, |w, x, rr, lanes| {
        // SAFETY: `tiles` hands over a whole panel at `w` and `rr` rows at `x` inside its
        // bounds.
        unsafe {
            match (kind, rr) {
                (Kind::Q4K, 8) => store(lanes, micro::<Q4, 8>(w, x)),
                (Kind::Q4K, 4) => store(lanes, micro::<Q4, 4>(w, x)),
                (Kind::Q4K, 2) => store(lanes, micro::<Q4, 2>(w, x)),
                (Kind::Q4K, _) => store(lanes, micro::<Q4, 1>(w, x)),
                (Kind::Q5K, 8) => store(lanes, micro::<Q5, 8>(w, x)),
                (Kind::Q5K, 4) => store(lanes, micro::<Q5, 4>(w, x)),
                (Kind::Q5K, 2) => store(lanes, micro::<Q5, 2>(w, x)),
                (Kind::Q5K, _) => store(lanes, micro::<Q5, 1>(w, x)),
                (Kind::Q6K, 8) => store(lanes, micro::<Q6, 8>(w, x)),
                (Kind::Q6K, 4) => store(lanes, micro::<Q6, 4>(w, x)),
                (Kind::Q6K, 2) => store(lanes, micro::<Q6, 2>(w, x)),
                (Kind::Q6K, _) => store(lanes, micro::<Q6, 1>(w, x)),
            }
        }
    });
}

/// A tile's vectors into `lanes`' first `R` rows.
#[target_feature(enable = "avx512f")]
fn store<const R: usize>(lanes: &mut [[f32; PANEL]; 8], acc: [__m512; R]) {
    for (l, v) in lanes.iter_mut().zip(acc) {
        // SAFETY: `l` holds exactly 16 `f32`.
        #[expect(unsafe_code, reason = "an unaligned store to a 16-float array")]
        unsafe {
            _mm512_storeu_ps(l.as_mut_ptr(), v)
        };
    }
}

/// The 4-element weight group `q` of sub-block `s` of the panel block at `p`, 16 columns,
/// as unsigned bytes (`Q6_K`: 6 bits, `q + 32`; `Q5_K`: 5 bits; `Q4_K`: its nibbles).
#[target_feature(enable = "avx512f,avx512bw")]
#[expect(
    unsafe_code,
    reason = "unchecked loads inside a block the caller checked"
)]
#[inline]
unsafe fn group<const T: u8>(p: *const u8, s: usize, q: usize) -> __m512i {
    let nib = _mm512_set1_epi8(0x0f);
    let (nibbles, high, top) = group_at(T, s, q);
    // SAFETY: the caller guarantees a whole panel block at `p`.
    unsafe {
        let raw = _mm512_loadu_si512(p.add(nibbles).cast());
        let lo = if high {
            _mm512_and_si512(_mm512_srli_epi16::<4>(raw), nib)
        } else {
            _mm512_and_si512(raw, nib)
        };
        let Some((top, shift)) = top else {
            return lo;
        };
        let top = _mm512_loadu_si512(p.add(top).cast());
        if T == Q5 {
            // Bit `shift` of each byte is its element's fifth.
            let set = _mm512_test_epi8_mask(top, _mm512_set1_epi8((1u8 << shift).cast_signed()));
            return _mm512_mask_add_epi8(lo, set, lo, _mm512_set1_epi8(16));
        }
        // Bits `shift..shift + 2` of each byte to bits 4–5 (the 16-bit shifts move bits
        // across bytes only outside the mask).
        let top = match shift {
            0 => _mm512_slli_epi16::<4>(top),
            2 => _mm512_slli_epi16::<2>(top),
            4 => top,
            _ => _mm512_srli_epi16::<2>(top),
        };
        _mm512_or_si512(lo, _mm512_and_si512(top, _mm512_set1_epi8(0x30)))
    }
}

/// Where the 4-element group `q` of sub-block `s` lies in a panel block, for column 0 (lane
/// `c` is `4c` bytes on): [`super::place`] of its first element.
#[inline(always)]
fn group_at(t: u8, s: usize, q: usize) -> (usize, bool, Option<(usize, usize)>) {
    let kind = kind(t);
    super::place(kind, 0, s * (QK_K / kind.subs()) + 4 * q)
}

/// Pair `j` of the 16 columns' per-sub-block bytes at `p + at` (scales or minima), widened:
/// lane `c` holds column `c`'s sub-blocks `2j`, `2j + 1` as `i16`s.
#[target_feature(enable = "avx512f,avx512bw")]
#[expect(
    unsafe_code,
    reason = "an unchecked load inside a block the caller checked"
)]
#[inline]
unsafe fn pair(p: *const u8, at: usize, j: usize) -> __m512i {
    // SAFETY: the caller guarantees a whole panel block at `p`.
    unsafe { _mm512_cvtepi8_epi16(_mm256_loadu_si256(p.add(at + 32 * j).cast())) }
}

/// One panel (16 columns, one per lane) against `R` activation rows, every super-block:
/// per sub-block, its weight groups are unpacked once and used for every row; a row's
/// `vpdpbusd` chain leaves the 16 columns' exact sub-block sums, one `vpmulld` scales them;
/// the minima (`Q4_K`) or the offset correction (`Q6_K`) take one `vpdpwssd` per pair of
/// sub-blocks against the row's pairs of group sums; then the `f32` epilogue of
/// [`kpanel`]'s docs.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[expect(unsafe_code, reason = "unchecked vector loads")]
unsafe fn micro<const T: u8, const R: usize>(w: *const u8, x: &Rows) -> [__m512; R] {
    let kind = kind(T);
    let pb = kind.panel_block_bytes();
    let (pairs, per) = (kind.subs() / 2, kind.groups());
    let scales_at = kind.scales_at();
    let mut acc = [_mm512_setzero_ps(); R];
    for b in 0..x.blocks {
        // SAFETY: the caller guarantees `blocks` panel blocks at `w` and `R` activation rows
        // of `blocks` super-blocks at `x`.
        unsafe {
            let p = w.add(b * pb);
            // The panel is read front to back: ask for the next block (past the panel's
            // end is harmless, a prefetch never faults).
            for line in (0..pb).step_by(64) {
                super::super::prefetch_ahead(p.wrapping_add(pb + line), R == 1);
            }
            let mut xp = [[0i32; 8]; R];
            for (r, xp) in xp.iter_mut().enumerate() {
                *xp = x.pairs(T == Q6, r, b);
            }
            let mut raw = [_mm512_setzero_si512(); R];
            for j in 0..pairs {
                // Lane `c`: column `c`'s scales of sub-blocks `2j`, `2j + 1` as `i16`s.
                let sc = pair(p, scales_at, j);
                let halves = [
                    _mm512_srai_epi32::<16>(_mm512_slli_epi32::<16>(sc)),
                    _mm512_srai_epi32::<16>(sc),
                ];
                for (h, &scale) in halves.iter().enumerate() {
                    let s = 2 * j + h;
                    let mut wv = [_mm512_setzero_si512(); 8];
                    for (q, wq) in wv.iter_mut().enumerate().take(per) {
                        *wq = group::<T>(p, s, q);
                    }
                    for (r, raw) in raw.iter_mut().enumerate() {
                        let xq = x.qs.add(r * x.width + b * QK_K + s * 4 * per).cast::<i32>();
                        let mut dot = _mm512_setzero_si512();
                        for (q, wq) in wv.iter().enumerate().take(per) {
                            let xv = _mm512_set1_epi32(xq.add(q).read_unaligned());
                            dot = _mm512_dpbusd_epi32(dot, *wq, xv);
                        }
                        *raw = _mm512_add_epi32(*raw, _mm512_mullo_epi32(dot, scale));
                    }
                }
            }
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(at::D).cast()));
            // What multiplies the pairs of group sums: `Q6_K` its scales, `Q4_K` its minima
            // (unsigned 6-bit, so widening them as signed keeps them).
            let m_at = kind.corr_at();
            for (r, acc) in acc.iter_mut().enumerate() {
                let mut corr = _mm512_setzero_si512();
                for (j, &xp) in xp[r].iter().enumerate().take(pairs) {
                    corr = _mm512_dpwssd_epi32(corr, pair(p, m_at, j), _mm512_set1_epi32(xp));
                }
                let dx = _mm512_set1_ps(x.ds.add(r * x.blocks + b).read());
                if T == Q6 {
                    let sumi = _mm512_sub_epi32(raw[r], _mm512_slli_epi32::<5>(corr));
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi), _mm512_mul_ps(d, dx), *acc);
                } else {
                    let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(at::DMIN).cast()));
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(raw[r]), _mm512_mul_ps(d, dx), *acc);
                    // −(dmin · dx): the sign bit flipped, as the portable code negates.
                    let m = _mm512_castsi512_ps(_mm512_xor_si512(
                        _mm512_castps_si512(_mm512_mul_ps(dmin, dx)),
                        _mm512_set1_epi32(i32::MIN),
                    ));
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(corr), m, *acc);
                }
            }
        }
    }
    acc
}

#[target_feature(enable = "avx2,fma,f16c")]
#[expect(
    unsafe_code,
    reason = "calling the micro-kernel inside the bounds `tiles` checked"
)]
fn run_v3(v: &[u8], kind: Kind, a: &Acts, first: usize, dst: &mut Cols<'_>) {
    tiles(v, kind, a, first, dst, 2, |w, x, rr, lanes| {
        let store = |lanes: &mut [[f32; PANEL]; 8], acc: &[[__m256; 2]]| {
            for (l, halves) in lanes.iter_mut().zip(acc) {
                // SAFETY: `l` holds exactly 16 `f32`.
                unsafe {
                    _mm256_storeu_ps(l.as_mut_ptr(), halves[0]);
                    _mm256_storeu_ps(l.as_mut_ptr().add(8), halves[1]);
                }
            }
        };
        // SAFETY: `tiles` hands over a whole panel at `w` and `rr` rows at `x` inside its
        // bounds.
        unsafe {
            match (kind, rr) {
                (Kind::Q4K, 2) => store(lanes, &micro_avx2::<Q4, 2>(w, x)),
                (Kind::Q4K, _) => store(lanes, &micro_avx2::<Q4, 1>(w, x)),
                (Kind::Q5K, 2) => store(lanes, &micro_avx2::<Q5, 2>(w, x)),
                (Kind::Q5K, _) => store(lanes, &micro_avx2::<Q5, 1>(w, x)),
                (Kind::Q6K, 2) => store(lanes, &micro_avx2::<Q6, 2>(w, x)),
                (Kind::Q6K, _) => store(lanes, &micro_avx2::<Q6, 1>(w, x)),
            }
        }
    });
}

/// [`micro`] for AVX2, half a panel (8 columns) per vector and no `vpdpbusd`: per group,
/// `vpmaddubsw` multiplies the unsigned weights by the row's 4 activation bytes into 16-bit
/// pair sums, which add up exactly over a sub-block (`Q4_K`: 8 groups of at most
/// 2·15·127; `Q6_K`: two groups at a time of at most 2·63·127, then two halves), and one
/// `vpmaddwd` against the sub-block's scale in both 16-bit halves of each lane gives the
/// scaled 4-element sum: the same integers as [`micro`], the same `f32` epilogue.
#[target_feature(enable = "avx2,fma,f16c")]
#[expect(unsafe_code, reason = "unchecked vector loads")]
#[expect(
    clippy::needless_range_loop,
    reason = "pair `j` also addresses the panel's bytes and names two sub-blocks"
)]
unsafe fn micro_avx2<const T: u8, const R: usize>(w: *const u8, x: &Rows) -> [[__m256; 2]; R] {
    let kind = kind(T);
    let pb = kind.panel_block_bytes();
    let (pairs, per) = (kind.subs() / 2, kind.groups());
    let (scales_at, m_at) = (kind.scales_at(), kind.corr_at());
    // Groups whose `vpmaddubsw` pair sums (at most 2·w_max·127) add up in 16 bits: 8 of
    // `Q4_K`'s 4 bits, 4 of `Q5_K`'s 5, 2 of `Q6_K`'s 6.
    let run = match T {
        Q4 => 8,
        Q5 => 4,
        _ => 2,
    };
    let nib = _mm256_set1_epi8(0x0f);
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for b in 0..x.blocks {
        // SAFETY: the caller guarantees `blocks` panel blocks at `w` and `R` activation rows
        // of `blocks` super-blocks at `x`.
        unsafe {
            let p = w.add(b * pb);
            for line in (0..pb).step_by(64) {
                super::super::prefetch_ahead(p.wrapping_add(pb + line), R == 1);
            }
            let mut xp = [[0i32; 8]; R];
            for (r, xp) in xp.iter_mut().enumerate() {
                *xp = x.pairs(T == Q6, r, b);
            }
            for h in 0..2 {
                // Columns `8h..8h + 8`: bytes `32h..32h + 32` of each group, `16h..16h + 16`
                // of each pair of scales.
                let mut raw = [_mm256_setzero_si256(); R];
                let mut corr = [_mm256_setzero_si256(); R];
                for j in 0..pairs {
                    let pair = |at: usize| {
                        _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(at + 32 * j + 16 * h).cast()))
                    };
                    let sc = pair(scales_at);
                    let m = if T == Q6 { sc } else { pair(m_at) };
                    for (r, corr) in corr.iter_mut().enumerate() {
                        let xv = _mm256_set1_epi32(xp[r][j]);
                        *corr = _mm256_add_epi32(*corr, _mm256_madd_epi16(m, xv));
                    }
                    // Sub-block `2j`'s scale, then `2j + 1`'s, in both halves of each lane.
                    let scales = [
                        _mm256_blend_epi16::<0xaa>(sc, _mm256_slli_epi32::<16>(sc)),
                        _mm256_blend_epi16::<0xaa>(_mm256_srli_epi32::<16>(sc), sc),
                    ];
                    for (e, &scale) in scales.iter().enumerate() {
                        let s = 2 * j + e;
                        let mut wv = [_mm256_setzero_si256(); 8];
                        for (q, wq) in wv.iter_mut().enumerate().take(per) {
                            *wq = group_avx2::<T>(p.add(32 * h), s, q, nib);
                        }
                        for (r, raw) in raw.iter_mut().enumerate() {
                            let xq = x.qs.add(r * x.width + b * QK_K + s * 4 * per).cast::<i32>();
                            let mut sum = _mm256_setzero_si256();
                            for (q, wq) in wv.iter().enumerate().take(per) {
                                let xv = _mm256_set1_epi32(xq.add(q).read_unaligned());
                                let d = _mm256_maddubs_epi16(*wq, xv);
                                if q > 0 && q % run == 0 {
                                    // `run` groups' pair sums so far: take them out before
                                    // one more could exceed `i16`.
                                    *raw = _mm256_add_epi32(*raw, _mm256_madd_epi16(sum, scale));
                                    sum = d;
                                } else {
                                    sum = _mm256_add_epi16(sum, d);
                                }
                            }
                            *raw = _mm256_add_epi32(*raw, _mm256_madd_epi16(sum, scale));
                        }
                    }
                }
                let d = _mm256_cvtph_ps(_mm_loadu_si128(p.add(at::D + 16 * h).cast()));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let dx = _mm256_set1_ps(x.ds.add(r * x.blocks + b).read());
                    if T == Q6 {
                        let sumi = _mm256_sub_epi32(raw[r], _mm256_slli_epi32::<5>(corr[r]));
                        acc[h] =
                            _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), _mm256_mul_ps(d, dx), acc[h]);
                    } else {
                        let dmin =
                            _mm256_cvtph_ps(_mm_loadu_si128(p.add(at::DMIN + 16 * h).cast()));
                        acc[h] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(raw[r]),
                            _mm256_mul_ps(d, dx),
                            acc[h],
                        );
                        let m = _mm256_castsi256_ps(_mm256_xor_si256(
                            _mm256_castps_si256(_mm256_mul_ps(dmin, dx)),
                            _mm256_set1_epi32(i32::MIN),
                        ));
                        acc[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(corr[r]), m, acc[h]);
                    }
                }
            }
        }
    }
    acc
}

/// [`group`] for 8 columns, the half panel whose bytes start at `p` (a panel block's start,
/// plus 32 for the second half).
#[target_feature(enable = "avx2")]
#[expect(
    unsafe_code,
    reason = "unchecked loads inside a block the caller checked"
)]
#[inline]
unsafe fn group_avx2<const T: u8>(p: *const u8, s: usize, q: usize, nib: __m256i) -> __m256i {
    let (nibbles, high, top) = group_at(T, s, q);
    // SAFETY: the caller guarantees a whole panel block around `p`.
    unsafe {
        let raw = _mm256_loadu_si256(p.add(nibbles).cast());
        let lo = if high {
            _mm256_and_si256(_mm256_srli_epi16::<4>(raw), nib)
        } else {
            _mm256_and_si256(raw, nib)
        };
        let Some((top, shift)) = top else {
            return lo;
        };
        let top = _mm256_loadu_si256(p.add(top).cast());
        if T == Q5 {
            let bit = _mm256_set1_epi8((1u8 << shift).cast_signed());
            let set = _mm256_cmpeq_epi8(_mm256_and_si256(top, bit), bit);
            return _mm256_or_si256(lo, _mm256_and_si256(set, _mm256_set1_epi8(0x10)));
        }
        let top = match shift {
            0 => _mm256_slli_epi16::<4>(top),
            2 => _mm256_slli_epi16::<2>(top),
            4 => top,
            _ => _mm256_srli_epi16::<2>(top),
        };
        _mm256_or_si256(lo, _mm256_and_si256(top, _mm256_set1_epi8(0x30)))
    }
}
