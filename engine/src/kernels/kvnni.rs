//! AVX-512 VNNI micro-kernels for the GGUF block types not kept in panels: `IQ4_XS` here and
//! the 32-element types `Q4_1`, `Q5_1` and `IQ4_NL` in [`small`]. (`Q4_K`, `Q5_K`, `Q6_K` —
//! most of a `Q4_K_M` / `Q5_K_M` file, the default downloads of Ollama and LM Studio — are
//! kept in [`super::kpanel`]'s panels, `Q8_0`, `Q4_0` and `Q5_0` in [`super::qdot`]'s.)
//! `IQ4_XS` runs against [`super::kdot`]'s `Q8_K` activations (one `f32` scale and 256 × `i8`
//! per super-block, plus the sum of each 16 quants).
//!
//! The portable code ([`super::kdot::run_portable`]) unpacks a whole weight row into bytes
//! and takes 16-element dot products one group at a time; this kernel reads the stored
//! blocks directly, 64 weights per `vpdpbusd`, for a tile of up to 4 activation rows × 4
//! output columns, so prefill reuses every decoded weight vector for 4 rows and decode keeps
//! 4 columns' loads in flight.
//!
//! **Same bits as the portable code.** Per super-block the portable code keeps 16 `f32` lanes
//! (see `kdot::run_k`): lane `l` the scaled 4-element sums of elements `64k + 4l..+4` of the
//! four 64-element chunks less group `l`'s offset correction, one fused multiply-add per
//! super-block, the lanes summed at the end. Here the weights enter `vpdpbusd` as unsigned
//! bytes (the table level + 128; the offset is taken back as `128 · sc_g · Σ_{i∈g} x_i` from
//! the activations' group sums), each 4-element lane is multiplied by its group's scale:
//! integer additions in another order give the same integer (no partial sum can overflow:
//! |lane| ≤ 4·255·127·32 per chunk, four chunks < 2³¹), and the `f32` operations are the
//! portable code's, in its order.

use std::arch::x86_64::*;

use super::kdot::{self, Acts};
use super::{COL_TILE, ROW_BLOCK};
use crate::quant::iquants::KVALUES;
use crate::quant::{QK_K, QType, block_scale};

mod small;

/// `IQ4_NL` / `IQ4_XS` levels as unsigned bytes: `KVALUES[i] + 128` in byte `i`, the bit
/// pattern with its sign bit flipped.
const LEVELS: [u8; 16] = {
    let mut l = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        l[i] = KVALUES[i].cast_unsigned() ^ 0x80;
        i += 1;
    }
    l
};

/// Whether this module has a kernel for weights of type `t`.
pub(super) fn supports(t: QType) -> bool {
    t == QType::IQ4_XS || small::supports(t)
}

/// Bytes of one `IQ4_XS` super-block.
const BLOCK_BYTES: usize = 136;

/// Output columns `first..first + dst.len() / rows` of a matrix `v` of a type [`supports`]
/// accepts into `dst` (`[n, rows]`). Callers check `vnni()` and [`supports`].
#[expect(unsafe_code, reason = "calling a #[target_feature] function")]
pub(super) fn run(v: &[u8], t: QType, a: &Acts, first: usize, dst: &mut [f32]) {
    // SAFETY: `kdot::matmul` calls this only when `vnni` detected AVX-512 F/BW/VL/VNNI,
    // AVX2, FMA and F16C, every feature `run_v4` and `small`'s functions enable.
    unsafe {
        if small::supports(t) {
            small::run_v4(v, t, a, first, dst)
        } else {
            run_v4(v, t, a, first, dst)
        }
    }
}

/// Activation rows at a tile's first row.
struct KRows {
    qs: *const i8,
    ds: *const f32,
    sums: *const i32,
    /// Elements per activation row.
    width: usize,
    /// Super-blocks per row.
    blocks: usize,
    /// Bytes per weight row.
    row_bytes: usize,
}

/// The drivers' one bounds check: `a` holds whole activation blocks of `block` elements with
/// their scales and group sums, the `n = dst_len / rows` weight rows `first..first + n` of
/// `row_bytes` lie inside the `v_len` weight bytes, and `dst` is exactly `[n, rows]`.
fn fits(
    a: &Acts,
    block: usize,
    row_bytes: usize,
    v_len: usize,
    first: usize,
    dst_len: usize,
) -> bool {
    let rows = a.rows;
    let blocks = a.width / block;
    let n = dst_len / rows.max(1);
    rows > 0
        && a.block == block
        && a.width.is_multiple_of(block)
        && (first + n) * row_bytes <= v_len
        && a.qs.len() >= rows * a.width
        && a.ds.len() >= rows * blocks
        && a.sums.len() >= rows * a.width / 16
        && dst_len == n * rows
}

impl KRows {
    /// Activation row `r` of `a` (`blocks` blocks per row) onwards, for weight rows of
    /// `row_bytes`. The pointers are only computed here (`wrapping_add`); the drivers check
    /// once that every tile they hand to a micro-kernel lies inside `a`.
    fn at(a: &Acts, r: usize, blocks: usize, row_bytes: usize) -> KRows {
        KRows {
            qs: a.qs.as_ptr().wrapping_add(r * a.width),
            ds: a.ds.as_ptr().wrapping_add(r * blocks),
            sums: a.sums.as_ptr().wrapping_add(r * a.width / 16),
            width: a.width,
            blocks,
            row_bytes,
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[expect(unsafe_code, reason = "unchecked loads inside bounds checked here")]
fn run_v4(v: &[u8], t: QType, a: &Acts, first: usize, dst: &mut [f32]) {
    let rows = a.rows;
    let blocks = a.width / QK_K;
    let row_bytes = blocks * t.block_bytes();
    let n = dst.len() / rows.max(1);
    // The one bounds check: weight rows `first..first + n`, `rows` activation rows of
    // `blocks` super-blocks with their scales and group sums, `dst` exactly `[n, rows]`.
    if t != QType::IQ4_XS || !fits(a, QK_K, row_bytes, v.len(), first, dst.len()) {
        return kdot::run_portable(v, t, a, first, dst);
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
                let x = KRows::at(a, r, blocks, row_bytes);
                let at = c * rows + r;
                // SAFETY: the tile's `rr` rows and `cc` columns are inside the checked ranges.
                unsafe { tile(dst, at, rows, (rr, cc), w, &x) }
                r += rr;
            }
            c += cc;
        }
    }
}

/// The `rr × cc` tile at weight row `w`, activation rows `x`, into `dst` at `at`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[expect(unsafe_code, reason = "unchecked vector loads")]
unsafe fn tile(
    dst: &mut [f32],
    at: usize,
    rows: usize,
    (rr, cc): (usize, usize),
    w: *const u8,
    x: &KRows,
) {
    // SAFETY: the caller guarantees `rr` activation rows at `x` and `cc` weight rows at `w`.
    unsafe {
        match (rr, cc) {
            (4, 4) => put(dst, at, rows, k_micro::<4, 4>(w, x)),
            (2, 4) => put(dst, at, rows, k_micro::<2, 4>(w, x)),
            (1, 4) => put(dst, at, rows, k_micro::<1, 4>(w, x)),
            (4, _) => put(dst, at, rows, k_micro::<4, 1>(w, x)),
            (2, _) => put(dst, at, rows, k_micro::<2, 1>(w, x)),
            _ => put(dst, at, rows, k_micro::<1, 1>(w, x)),
        }
    }
}

fn put<const R: usize, const C: usize>(dst: &mut [f32], at: usize, rows: usize, v: [[f32; C]; R]) {
    for (r, row) in v.iter().enumerate() {
        for (c, &y) in row.iter().enumerate() {
            if let Some(d) = dst.get_mut(at + c * rows + r) {
                *d = y;
            }
        }
    }
}

/// One super-block's scalars and per-group integers for one weight column.
#[derive(Clone, Copy)]
struct Scales {
    d: f32,
    /// Lanes 0–7: the 8 sub-block scales.
    sc: __m512i,
    /// Lane `g`: the offset correction `128 · sc_g` that multiplies the activations' group
    /// sum `g`.
    corr: __m512i,
}

/// The scales of the super-block at `p`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
#[expect(
    unsafe_code,
    reason = "unchecked loads inside a block the caller checked"
)]
#[inline]
unsafe fn scales(p: *const u8) -> Scales {
    // SAFETY: the caller guarantees one whole block at `p`.
    unsafe { scales_body(p) }
}

/// The body of [`scales`]. Not a `#[target_feature]` function itself, so that it can be
/// `#[inline(always)]` (Rust refuses the two together); it runs under its caller's features.
/// A single-row tile inlines it: left to `#[inline]`, LLVM kept it out of line there and
/// returned its vectors through the stack (14 % of a `Q4_K` decode when this kernel served
/// `Q4_K`). Wider tiles call it through [`scales`]: inlined into them it cost them 1–10 %
/// (more vectors live at once).
#[expect(
    unsafe_code,
    reason = "unchecked loads inside a block the caller checked"
)]
#[inline(always)]
unsafe fn scales_body(p: *const u8) -> Scales {
    // SAFETY: the AVX-512 intrinsics below run inside `k_micro` or `scales`, which enable them.
    unsafe {
        // SAFETY: the caller guarantees one whole block at `p`.
        let block = std::slice::from_raw_parts(p, BLOCK_BYTES);
        // Sub-block `s`'s scale: 4 low bits in nibble `s` of `scales_l` (bytes 4..8), 2 high
        // bits in bits `2s` of `scales_h` (bytes 2..4), minus 32.
        let high = u16::from_le_bytes([block[2], block[3]]);
        let mut ls = [0i32; 16];
        for (s, ls) in ls.iter_mut().take(8).enumerate() {
            let low = (block[4 + s / 2] >> (4 * (s % 2))) & 0x0f;
            *ls = i32::from(low | (((high >> (2 * s)) & 3) as u8) << 4) - 32;
        }
        // SAFETY: 16 `i32`.
        let sc = _mm512_loadu_si512(ls.as_ptr().cast());
        // Group `g`'s scale is sub-block `g / 2`'s; the levels are offset by 128.
        let sub = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
        Scales {
            d: block_scale(block),
            sc,
            corr: _mm512_slli_epi32::<7>(_mm512_permutexvar_epi32(sub, sc)),
        }
    }
}

/// Weights `64k..64k + 64` of the super-block at `p` as unsigned bytes, in element order.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
#[expect(
    unsafe_code,
    reason = "unchecked loads inside a block the caller checked"
)]
#[inline]
unsafe fn chunk(p: *const u8, k: usize) -> __m512i {
    // Sub-blocks 2k and 2k + 1 are `qs[32k..32k + 16]` and `qs[32k + 16..32k + 32]`, each
    // laid out as an `IQ4_NL` block: element `j` in byte `j`'s low nibble, `j + 16` in
    // its high one.
    // SAFETY: `qs` is bytes 8..136 of the block.
    let v = unsafe { _mm256_loadu_si256(p.add(8 + 32 * k).cast()) };
    let lo = _mm256_and_si256(v, _mm256_set1_epi8(0x0f));
    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), _mm256_set1_epi8(0x0f));
    // 128-bit lanes [lo₀, lo₁, hi₀, hi₁] → [lo₀, hi₀, lo₁, hi₁]: element order.
    let both = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
    let idx = _mm512_shuffle_i64x2::<0b11_01_10_00>(both, both);
    // SAFETY: 16 bytes.
    let levels = unsafe { _mm_loadu_si128(LEVELS.as_ptr().cast()) };
    _mm512_shuffle_epi8(_mm512_broadcast_i32x4(levels), idx)
}

/// An `R × C` tile: activation rows × weight columns, every super-block.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[expect(unsafe_code, reason = "unchecked vector loads")]
unsafe fn k_micro<const R: usize, const C: usize>(w: *const u8, x: &KRows) -> [[f32; C]; R] {
    let bb = BLOCK_BYTES;
    // Lane `l`: see `kdot::run_k`, the definition this computes.
    let mut y = [[_mm512_setzero_ps(); C]; R];
    // Lane `l` of chunk `k` holds elements `64k + 4l..64k + 4l + 4`: sub-block `2k + l / 8`;
    // see [`Scales::sc`].
    let group = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    let step = 2;
    for b in 0..x.blocks {
        let zero = Scales {
            d: 0.0,
            sc: _mm512_setzero_si512(),
            corr: _mm512_setzero_si512(),
        };
        let mut s = [zero; C];
        for (c, s) in s.iter_mut().enumerate() {
            // SAFETY: the caller guarantees `C` weight rows of `blocks` super-blocks at `w`.
            let p = unsafe { w.add(c * x.row_bytes + b * bb) };
            // The same spot one tile of columns ahead, which the next tile reads. Past the
            // matrix's end is harmless: a prefetch never faults.
            // Every cache line of it (when this kernel served `Q6_K`, whose blocks span
            // four, prefetching two of them left a single row's decode ~25 % slower). Into
            // L1 even for a single row: `Q4_K` was 10 % slower with `T1`.
            for line in (0..bb).step_by(64) {
                super::prefetch_ahead(p.wrapping_add(C * x.row_bytes + line), false);
            }
            // SAFETY: as above.
            *s = unsafe { if R == 1 { scales_body(p) } else { scales(p) } };
        }
        let mut acc = [[_mm512_setzero_si512(); C]; R];
        for k in 0..4 {
            let mut xk = [_mm512_setzero_si512(); R];
            for (r, xk) in xk.iter_mut().enumerate() {
                // SAFETY: the caller guarantees `R` activation rows of `width` quants.
                *xk =
                    unsafe { _mm512_loadu_si512(x.qs.add(r * x.width + b * QK_K + 64 * k).cast()) };
            }
            let idx = _mm512_add_epi32(group, _mm512_set1_epi32(step * k as i32));
            for (c, s) in s.iter().enumerate() {
                // SAFETY: as above.
                let wk = unsafe { chunk(w.add(c * x.row_bytes + b * bb), k) };
                let sk = _mm512_permutexvar_epi32(idx, s.sc);
                for (acc, xk) in acc.iter_mut().zip(&xk) {
                    let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wk, *xk);
                    acc[c] = _mm512_add_epi32(acc[c], _mm512_mullo_epi32(dot, sk));
                }
            }
        }
        for (r, (yr, acc)) in y.iter_mut().zip(&acc).enumerate() {
            // SAFETY: the caller guarantees `R` activation rows of `blocks` scales and
            // `width / 16` group sums.
            let (sums, dx) = unsafe {
                (
                    _mm512_loadu_si512(x.sums.add((r * x.width + b * QK_K) / 16).cast()),
                    x.ds.add(r * x.blocks + b).read(),
                )
            };
            for ((y, acc), s) in yr.iter_mut().zip(acc).zip(&s) {
                let corr = _mm512_mullo_epi32(s.corr, sums);
                let d = _mm512_set1_ps(s.d * dx);
                let sumi = _mm512_cvtepi32_ps(_mm512_sub_epi32(*acc, corr));
                *y = _mm512_fmadd_ps(sumi, d, *y);
            }
        }
    }
    let mut out = [[0f32; C]; R];
    for (o, y) in out.iter_mut().zip(&y) {
        for (o, &y) in o.iter_mut().zip(y) {
            *o = sum_lanes(y);
        }
    }
    out
}

/// The 16 lanes of `v` summed by [`super::reduce`]'s fixed tree, as the portable code sums
/// its 16 lane accumulators.
#[target_feature(enable = "avx512f")]
#[inline]
fn sum_lanes(v: __m512) -> f32 {
    let mut lanes = [0f32; 16];
    // SAFETY: 16 `f32`.
    #[expect(unsafe_code, reason = "an unaligned vector store to a 16-float array")]
    unsafe {
        _mm512_storeu_ps(lanes.as_mut_ptr(), v)
    };
    super::reduce(lanes)
}
