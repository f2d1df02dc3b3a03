//! x86-64 kernels for `Q8_0` / `Q4_0` / `Q5_0` in panels ([`super::qdot`], which gives the
//! layout and the arithmetic these compute bit for bit: AVX-512 VNNI and AVX2), and the
//! portable code of the other block types ([`super::kdot`]) compiled for AVX2 / AVX-512.
//!
//! A panel micro-kernel computes a tile of activation rows × 16 output columns, one column
//! per vector lane: each weight group is loaded once and used for every row, so a batch of
//! rows reads the weights once (decode) and prefill reuses every load. An element's own
//! arithmetic never depends on the tile it sits in, so the result is bitwise the same alone,
//! batched, or on a machine without AVX-512.
//!
//! Unsafe code is confined to raw loads: each driver checks once that every tile it will
//! visit lies inside its slices, then the micro-kernels index without checks.

use std::arch::x86_64::*;

use super::kdot;
use super::qdot::{Acts, PANEL, Weights};
use super::{Cols, QK, ROW_BLOCK};
use crate::quant::QType;

/// Output columns `first..first + dst.len()` of a `Q8_0`/`Q4_0` matrix in panels
/// against quantized activations, with AVX2 (no VNNI): each 256-bit vector holds half a
/// panel, 8 columns. Callers check `simd_level() >= 1` and `f16c()`.
#[expect(unsafe_code, reason = "calling a #[target_feature] function")]
pub(super) fn run_quant_v3(v: &[u8], kind: Weights, a: &Acts, first: usize, dst: &mut Cols<'_>) {
    // SAFETY: `qdot::matmul` calls this only when `simd_level` detected AVX2 and FMA and
    // `f16c` detected F16C, every feature `quant_v3` enables.
    unsafe { quant_v3(v, kind, a, first, dst) }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[expect(
    unsafe_code,
    reason = "calling the micro-kernel inside the bounds `panel_tiles` checked"
)]
fn quant_v3(v: &[u8], kind: Weights, a: &Acts, first: usize, dst: &mut Cols<'_>) {
    panel_tiles(v, kind, a, first, dst, 2, |t, dst| {
        let put = |dst: &mut Cols<'_>, acc: &[[__m256; 2]]| {
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

/// Output columns `first..first + dst.len()` of a `Q8_0`/`Q4_0` matrix `v` against
/// quantized activations. Callers check `vnni()`.
#[expect(unsafe_code, reason = "calling a #[target_feature] function")]
pub(super) fn run_quant(v: &[u8], kind: Weights, a: &Acts, first: usize, dst: &mut Cols<'_>) {
    // SAFETY: `qdot::matmul` calls this only when `vnni` detected AVX-512 F/BW/VL/VNNI,
    // AVX2 and FMA, every feature `quant_v4` enables.
    unsafe { quant_v4(v, kind, a, first, dst) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
#[expect(
    unsafe_code,
    reason = "calling the micro-kernel inside the bounds `panel_tiles` checked"
)]
fn quant_v4(v: &[u8], kind: Weights, a: &Acts, first: usize, dst: &mut Cols<'_>) {
    panel_tiles(v, kind, a, first, dst, 8, |t, dst| {
        let put = |dst: &mut Cols<'_>, acc: &[__m512]| {
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
    /// The panel's first column, relative to the call's `first`.
    c0: usize,
}

impl PanelTile {
    /// Row `r + i`'s results for the panel's 16 columns, the padded ones dropped.
    #[inline]
    fn put(&self, dst: &mut Cols<'_>, i: usize, lanes: &[f32; PANEL]) {
        dst.put(self.r + i, self.c0, lanes);
    }
}

/// Walks output columns `first..first + dst.len()` of a `Q8_0`/`Q4_0` matrix in panels:
/// after one bounds check (whole panels inside `v`, `first` a panel's first column, as
/// [`super::by_panels`] splits, `rows` activation rows of `blocks` blocks), runs of
/// [`ROW_BLOCK`] rows, and in each, every panel against tiles of the most rows up to
/// `max_rows` (a power of two) that remain; `f` computes a tile and puts it.
#[expect(unsafe_code, reason = "pointer offsets inside the bounds checked here")]
fn panel_tiles(
    v: &[u8],
    kind: Weights,
    a: &Acts,
    first: usize,
    dst: &mut Cols<'_>,
    max_rows: usize,
    mut f: impl FnMut(&PanelTile, &mut Cols<'_>),
) {
    let rows = a.rows;
    let blocks = a.blocks;
    let panel_bytes = blocks * kind.panel_block_bytes();
    let panels = (first + dst.len()).div_ceil(PANEL);
    if rows == 0
        || !first.is_multiple_of(PANEL)
        || panels * panel_bytes > v.len()
        || a.qs.len() < rows * blocks * QK
        || a.ds.len() < rows * blocks
        || a.corr.len() < rows * blocks
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
                    c0,
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

/// The largest `|v|` of `x` (its length a multiple of 16), NaNs skipped, as the portable
/// activation quantizers' `fold(0, |m, v| m.max(v.abs()))`: a maximum is exact in any order.
/// Callers check `vnni()` (AVX-512 F among its features) and the length.
#[expect(unsafe_code, reason = "calling a #[target_feature] function")]
pub(super) fn amax(x: &[f32]) -> f32 {
    // SAFETY: the caller checked AVX-512 F.
    unsafe { amax_v4(x) }
}

#[target_feature(enable = "avx512f")]
#[expect(
    unsafe_code,
    reason = "unaligned loads of whole 16-lane steps inside `x`"
)]
fn amax_v4(x: &[f32]) -> f32 {
    let magnitude = _mm512_set1_epi32(0x7fff_ffff);
    let mut m = _mm512_setzero_ps();
    for step in x.chunks_exact(16) {
        // SAFETY: `step` holds 16 `f32`.
        let v = unsafe { _mm512_loadu_ps(step.as_ptr()) };
        let v = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), magnitude));
        // `max(v, m)` is `m` where `v` is NaN (`maxps` returns its second operand), as
        // `f32::max` skips a NaN; `m` never holds one.
        m = _mm512_max_ps(v, m);
    }
    _mm512_reduce_max_ps(m)
}

/// `q = round(v · id)` of each element, ties to even, saturated to `i8`, NaN to 0 — the
/// portable quantizers' `((v * id + MAGIC) - MAGIC) as i8`, the same three roundings in
/// the same order — and `sums[g]` = the sum of each 16-element group's quants. `x.len()`
/// = `q.len()` = 16 · `sums.len()`. Callers check `vnni()` (AVX-512 F/BW) and the lengths.
#[expect(unsafe_code, reason = "calling a #[target_feature] function")]
pub(super) fn round_sums(x: &[f32], id: f32, q: &mut [i8], sums: &mut [i32]) {
    // SAFETY: the caller checked AVX-512 F and BW.
    unsafe { round_sums_v4(x, id, q, sums) }
}

#[target_feature(enable = "avx512f,avx512bw")]
#[expect(
    unsafe_code,
    reason = "unaligned loads and stores of whole 16-lane steps inside the slices"
)]
fn round_sums_v4(x: &[f32], id: f32, q: &mut [i8], sums: &mut [i32]) {
    const MAGIC: f32 = 12_582_912.0;
    let (idv, magic) = (_mm512_set1_ps(id), _mm512_set1_ps(MAGIC));
    let (lowest, highest) = (_mm512_set1_ps(-128.0), _mm512_set1_ps(127.0));
    let steps = x.chunks_exact(16).zip(q.chunks_exact_mut(16));
    for ((x, q), sum) in steps.zip(sums.iter_mut()) {
        // SAFETY: `x` holds 16 `f32`.
        let v = unsafe { _mm512_loadu_ps(x.as_ptr()) };
        let t = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(v, idv), magic), magic);
        // `as i8`: NaN → 0, ±∞ and anything past the range → its end (`cvtps` alone would
        // give `i32::MIN` for those).
        let ordered = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(t, t);
        let t = _mm512_min_ps(_mm512_max_ps(t, lowest), highest);
        let i = _mm512_maskz_cvtps_epi32(ordered, t);
        // SAFETY: `q` holds 16 `i8`.
        unsafe { _mm_storeu_si128(q.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(i)) };
        *sum = _mm512_reduce_add_epi32(i);
    }
}
