//! The 32-element block types (`Q5_0`, `Q4_1`, `Q5_1`, `IQ4_NL`) against [`super::kdot`]'s `Q8_0`
//! activations (one `f32` scale and 32 × `i8` per block, plus the sum of each 16 quants).
//!
//! The portable code adds, per block and in block order, `acc = f32(Σ q·x) · (d_w · d_x) +
//! acc` and, for the types with a minimum, `acc = m · (d_x · f32(Σ x)) + acc`. Here each tile
//! of columns is first decoded once per row block into unsigned bytes (`f32` scales and
//! minima beside them), then 8 blocks at a time go through four `vpdpbusd`, a transposing
//! reduction to the 8 blocks' integer sums, the type's offset taken back as `offset · Σ x`
//! from the activations' group sums, and the same fused multiply-adds in the same order.
//! `IQ4_NL`'s nibbles index a table of signed levels: the decoded byte is the level + 128
//! (one `vpshufb`), so it enters `vpdpbusd` unsigned like the others.

use std::arch::x86_64::*;

use super::{KRows, LEVELS, fits, put};
use crate::kernels::kdot::{self, Acts};
use crate::kernels::{COL_TILE, ROW_BLOCK};
use crate::quant::{QK, QType};

/// Where a 32-element type keeps its parts (`legacy.rs` has the layouts) and what its
/// decoded unsigned bytes mean.
#[derive(Clone, Copy)]
struct Layout {
    bytes: usize,
    /// An `f16` minimum follows the `f16` scale (`Q4_1`, `Q5_1`).
    min: bool,
    /// Byte offset of the `u32` of fifth bits, bit `j` for element `j` (`Q5_0`, `Q5_1`).
    qh: Option<usize>,
    /// Byte offset of the 16 bytes of nibbles (element `j`: byte `j`'s low nibble, `j + 16`:
    /// its high one).
    qs: usize,
    /// What a decoded byte exceeds the portable code's `i8` quant by (`Q5_0`: its `q − 16`).
    offset: i32,
    /// The nibbles index `KVALUES` (`IQ4_NL`), decoded as the level + `offset` ([`LEVELS`]).
    table: bool,
}

fn layout(t: QType) -> Option<Layout> {
    Some(match t {
        QType::Q5_0 => Layout {
            bytes: 22,
            min: false,
            qh: Some(2),
            qs: 6,
            offset: 16,
            table: false,
        },
        QType::Q4_1 => Layout {
            bytes: 20,
            min: true,
            qh: None,
            qs: 4,
            offset: 0,
            table: false,
        },
        QType::Q5_1 => Layout {
            bytes: 24,
            min: true,
            qh: Some(4),
            qs: 8,
            offset: 0,
            table: false,
        },
        QType::IQ4_NL => Layout {
            bytes: 18,
            min: false,
            qh: None,
            qs: 2,
            offset: 128,
            table: true,
        },
        _ => return None,
    })
}

/// Whether this file has a kernel for weights of type `t`.
pub(super) fn supports(t: QType) -> bool {
    layout(t).is_some()
}

/// Output columns `first..first + dst.len() / rows` of a matrix `v` of a type [`supports`]
/// accepts into `dst` (`[n, rows]`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
#[expect(unsafe_code, reason = "unchecked loads inside bounds checked here")]
pub(super) fn run_v4(v: &[u8], t: QType, a: &Acts, first: usize, dst: &mut [f32]) {
    let rows = a.rows;
    let blocks = a.width / QK;
    let n = dst.len() / rows.max(1);
    let Some(l) = layout(t) else {
        return kdot::run_portable(v, t, a, first, dst);
    };
    let row_bytes = blocks * l.bytes;
    if !fits(a, QK, row_bytes, v.len(), first, dst.len()) {
        return kdot::run_portable(v, t, a, first, dst);
    }
    // Decoded weights of one tile of columns: `[COL_TILE, width]` bytes, `[COL_TILE, blocks]`
    // scales and minima.
    let mut wq = vec![0u8; COL_TILE * a.width];
    let mut wd = vec![0f32; COL_TILE * blocks];
    let mut wm = vec![0f32; COL_TILE * blocks];
    for rb in (0..rows).step_by(ROW_BLOCK) {
        let re = (rb + ROW_BLOCK).min(rows);
        let mut c = 0;
        while c < n {
            let cc = if n - c >= COL_TILE { COL_TILE } else { 1 };
            for j in 0..cc {
                let o = first + c + j;
                // SAFETY: row `o < first + n` lies inside `v` (checked above); the buffers
                // hold `COL_TILE > j` columns; `vnni` detected F16C.
                unsafe {
                    decode(
                        &l,
                        v.as_ptr().add(o * row_bytes),
                        blocks,
                        wq.as_mut_ptr().add(j * a.width),
                        wd.as_mut_ptr().add(j),
                        wm.as_mut_ptr().add(j),
                    );
                }
            }
            let w = SmallCols {
                qs: wq.as_ptr(),
                ds: wd.as_ptr(),
                ms: wm.as_ptr(),
                offset: l.offset,
            };
            let mut r = rb;
            while r < re {
                let rr = if re - r >= 2 { 2 } else { 1 };
                let x = KRows::at(a, r, blocks, row_bytes);
                let at = c * rows + r;
                // SAFETY: the tile's `rr` rows and `cc` decoded columns are inside the
                // checked ranges and buffers.
                unsafe {
                    match (l.min, rr, cc) {
                        (false, 2, 4) => put(dst, at, rows, micro_t::<false, 2>(&w, &x)),
                        (false, 1, 4) => put(dst, at, rows, micro_t::<false, 1>(&w, &x)),
                        (false, 2, _) => put(dst, at, rows, micro::<false, 2, 1>(&w, &x)),
                        (false, _, _) => put(dst, at, rows, micro::<false, 1, 1>(&w, &x)),
                        (true, 2, 4) => put(dst, at, rows, micro_t::<true, 2>(&w, &x)),
                        (true, 1, 4) => put(dst, at, rows, micro_t::<true, 1>(&w, &x)),
                        (true, 2, _) => put(dst, at, rows, micro::<true, 2, 1>(&w, &x)),
                        (true, _, _) => put(dst, at, rows, micro::<true, 1, 1>(&w, &x)),
                    }
                }
                r += rr;
            }
            c += cc;
        }
    }
}

/// Decoded 32-element weight blocks of a tile of columns: column `c`'s unsigned quants at
/// `qs + c · width`; block `b`'s scale of column `c` at `ds + b · COL_TILE + c`, its minimum
/// at `ms + b · COL_TILE + c` (block-major: one load holds a block of every column).
struct SmallCols {
    qs: *const u8,
    ds: *const f32,
    ms: *const f32,
    /// What the quants exceed the portable code's by.
    offset: i32,
}

/// One weight row of `blocks` blocks laid out as `l` says at `p` into `blocks · 32`
/// unsigned bytes at `q`, `blocks` scales at `d` and `blocks` minima (0 if none) at `m`,
/// block `b`'s at `d + b · COL_TILE` (block-major for the tile: [`SmallCols`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[expect(unsafe_code, reason = "unchecked loads and stores the caller checked")]
unsafe fn decode(l: &Layout, p: *const u8, blocks: usize, q: *mut u8, d: *mut f32, m: *mut f32) {
    let nib = _mm_set1_epi8(0x0f);
    let sixteen = _mm256_set1_epi8(16);
    // SAFETY: 16 bytes.
    let levels = unsafe { _mm_loadu_si128(LEVELS.as_ptr().cast()) };
    // The same row of the next tile of columns, which the next decode reads: the loop is
    // otherwise bound by the latency of its loads. Past the matrix's end is harmless: a
    // prefetch never faults.
    let ahead = COL_TILE * blocks * l.bytes;
    for b in 0..blocks {
        // SAFETY: the caller guarantees `blocks` blocks at `p` and room for them at `q`, `d`,
        // `m`; `l` describes offsets inside one block.
        unsafe {
            let p = p.add(b * l.bytes);
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(ahead).cast());
            // The scale and the minimum (or the next two bytes) widened in one instruction,
            // exactly as `block_scale` widens them: every `f16` is an `f32`. Without this
            // the conversions were most of a decode step's time.
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(p.cast::<i32>().read_unaligned()));
            d.add(b * COL_TILE).write(_mm_cvtss_f32(dm));
            m.add(b * COL_TILE).write(if l.min {
                _mm_cvtss_f32(_mm_movehdup_ps(dm))
            } else {
                0.0
            });
            let qs = _mm_loadu_si128(p.add(l.qs).cast());
            let mut lo = _mm_and_si128(qs, nib);
            let mut hi = _mm_and_si128(_mm_srli_epi16::<4>(qs), nib);
            if l.table {
                lo = _mm_shuffle_epi8(levels, lo);
                hi = _mm_shuffle_epi8(levels, hi);
            }
            let mut both = _mm256_set_m128i(hi, lo);
            if let Some(at) = l.qh {
                let high = p.add(at).cast::<u32>().read_unaligned().to_le();
                both = _mm256_mask_add_epi8(both, high, both, sixteen);
            }
            _mm256_storeu_si256(q.add(b * 32).cast(), both);
        }
    }
}

/// Pairwise sums of `a`'s and `b`'s neighbouring lanes: lanes 0–7 `a[2i] + a[2i + 1]`,
/// lanes 8–15 the same of `b`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
#[inline]
fn fold(a: __m512i, b: __m512i) -> __m512i {
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    _mm512_add_epi32(
        _mm512_permutex2var_epi32(a, even, b),
        _mm512_permutex2var_epi32(a, odd, b),
    )
}

/// An `R × C` tile of 32-element blocks, every block; `MIN`: the type has minima.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
#[expect(unsafe_code, reason = "unchecked vector loads")]
unsafe fn micro<const MIN: bool, const R: usize, const C: usize>(
    w: &SmallCols,
    x: &KRows,
) -> [[f32; C]; R] {
    let mut y = [[0f32; C]; R];
    let zero = _mm512_setzero_si512();
    let offset = _mm512_set1_epi32(w.offset);
    let eight = x.blocks / 8 * 8;
    let mut b = 0;
    while b < eight {
        // Four pairs of blocks: A (b, b+1), B, C, D; E = fold(A, B) holds blocks b..b+4 in
        // 4 lanes each, F blocks b+4..b+8, G = fold(E, F) 2 lanes each, H 1 lane each.
        let mut e = [[zero; C]; R];
        let mut f = [[zero; C]; R];
        for j in 0..4 {
            let mut xj = [zero; R];
            for (r, xj) in xj.iter_mut().enumerate() {
                // SAFETY: blocks `b + 2j`, `b + 2j + 1 < blocks` of activation row `r < R`.
                *xj =
                    unsafe { _mm512_loadu_si512(x.qs.add(r * x.width + (b + 2 * j) * 32).cast()) };
            }
            for c in 0..C {
                // SAFETY: the same blocks of decoded column `c < C`.
                let wj =
                    unsafe { _mm512_loadu_si512(w.qs.add(c * x.width + (b + 2 * j) * 32).cast()) };
                for r in 0..R {
                    let dot = _mm512_dpbusd_epi32(zero, wj, xj[r]);
                    let half = if j < 2 { &mut e[r][c] } else { &mut f[r][c] };
                    // The first pair waits in `half` for the second.
                    *half = if j % 2 == 0 { dot } else { fold(*half, dot) };
                }
            }
        }
        for r in 0..R {
            // SAFETY: group sums `2b..2b + 16` and scales `b..b + 8` of row `r < R`.
            let (sums, dx) = unsafe {
                (
                    _mm512_loadu_si512(x.sums.add((r * x.width + b * 32) / 16).cast()),
                    _mm256_loadu_ps(x.ds.add(r * x.blocks + b)),
                )
            };
            // Lanes 0–7: Σ x of blocks b..b+8, what the offset and the minima multiply.
            let sx = fold(sums, sums);
            let off = _mm512_mullo_epi32(sx, offset);
            // The portable code's `d_x · f32(Σ x)`.
            let mut mx = [0f32; 8];
            if MIN {
                let sx = _mm256_cvtepi32_ps(_mm512_castsi512_si256(sx));
                // SAFETY: 8 `f32`.
                unsafe { _mm256_storeu_ps(mx.as_mut_ptr(), _mm256_mul_ps(dx, sx)) };
            }
            for c in 0..C {
                let g = fold(e[r][c], f[r][c]);
                let h = _mm512_sub_epi32(fold(g, g), off);
                let sumi = _mm256_cvtepi32_ps(_mm512_castsi512_si256(h));
                // SAFETY: scales `b..b + 8` of decoded column `c < C` (block-major).
                let dw: [f32; 8] =
                    std::array::from_fn(|i| unsafe { w.ds.add((b + i) * COL_TILE + c).read() });
                // SAFETY: 8 `f32`.
                let dw = unsafe { _mm256_loadu_ps(dw.as_ptr()) };
                let mut fs = [0f32; 8];
                let mut ss = [0f32; 8];
                let mut ms = [0f32; 8];
                // SAFETY: 8 `f32` each; minima `b..b + 8` of decoded column `c < C`.
                unsafe {
                    _mm256_storeu_ps(fs.as_mut_ptr(), sumi);
                    _mm256_storeu_ps(ss.as_mut_ptr(), _mm256_mul_ps(dw, dx));
                    if MIN {
                        for (i, m) in ms.iter_mut().enumerate() {
                            *m = w.ms.add((b + i) * COL_TILE + c).read();
                        }
                    }
                }
                for i in 0..8 {
                    y[r][c] = fs[i].mul_add(ss[i], y[r][c]);
                    if MIN {
                        y[r][c] = ms[i].mul_add(mx[i], y[r][c]);
                    }
                }
            }
        }
        b += 8;
    }
    // SAFETY: blocks `eight..blocks` of the rows and columns the caller checked.
    unsafe { tail_blocks::<MIN, R, C>(w, x, b, &mut y) };
    y
}

/// Blocks `b..blocks` (fewer than 8) of an `R × C` tile, one at a time, added to `y`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
#[expect(unsafe_code, reason = "unchecked vector loads")]
unsafe fn tail_blocks<const MIN: bool, const R: usize, const C: usize>(
    w: &SmallCols,
    x: &KRows,
    mut b: usize,
    y: &mut [[f32; C]; R],
) {
    let zero = _mm512_setzero_si512();
    while b < x.blocks {
        for (r, yr) in y.iter_mut().enumerate() {
            // SAFETY: block `b < blocks` of activation row `r < R`, its two group sums and
            // its scale.
            let (xb, sx, dx) = unsafe {
                let s = x.sums.add((r * x.width + b * 32) / 16);
                (
                    _mm512_zextsi256_si512(_mm256_loadu_si256(
                        x.qs.add(r * x.width + b * 32).cast(),
                    )),
                    s.read() + s.add(1).read(),
                    x.ds.add(r * x.blocks + b).read(),
                )
            };
            for (c, y) in yr.iter_mut().enumerate() {
                // SAFETY: block `b` of decoded column `c < C`.
                let (wb, dw, m) = unsafe {
                    (
                        _mm512_zextsi256_si512(_mm256_loadu_si256(
                            w.qs.add(c * x.width + b * 32).cast(),
                        )),
                        w.ds.add(b * COL_TILE + c).read(),
                        w.ms.add(b * COL_TILE + c).read(),
                    )
                };
                let dot = _mm512_reduce_add_epi32(_mm512_dpbusd_epi32(zero, wb, xb));
                let sumi = dot - w.offset * sx;
                *y = (sumi as f32).mul_add(dw * dx, *y);
                if MIN {
                    *y = m.mul_add(dx * sx as f32, *y);
                }
            }
        }
        b += 1;
    }
}

/// The lane permutations of [`micro_t`]'s transposing float stage, indexed by the constants
/// below.
///
/// R = 2: output `p = r·4 + c`; the folded sums come as `H_m` = [output 2m: blocks 0..8 |
/// output 2m + 1: blocks 0..8]. `T_A`/`T_B` (on `H_0, H_1`, and the same on `H_2, H_3`) gather
/// blocks 0..4 / 4..8 of 4 outputs (lane `i·4 + p mod 4`); `O_IDX + k mod 2` makes `O_k`, two
/// blocks × 8 outputs (lane `h·8 + p`, block `2k + h`) from a T and a U; `ROW + k` moves
/// per-block row values laid out as [row 0: blocks 0..8 | row 1: blocks 0..8] to `O_k`'s lanes
/// (element `r·8 + 2k + h`); `COL + k mod 2` moves 4 blocks of block-major column values
/// (element `(2(k mod 2) + h)·4 + c`).
///
/// R = 1: `H_m` = [output 2m | output 2m + 1]; `O1 + k` makes `O_k`, four blocks × 4 outputs
/// (lane `i·4 + c`, block `4k + i`); `ROW1 + k` moves per-block row values (element `4k + i`).
const IDX: [[i32; 16]; 14] = {
    let mut t = [[0i32; 16]; 14];
    let mut l = 0;
    while l < 16 {
        let li = l as i32;
        let mut k = 0;
        while k < 4 {
            let ki = k as i32;
            if k < 2 {
                t[T_A + k][l] = (li % 4 / 2) * 16 + (li % 2) * 8 + 4 * ki + li / 4;
                t[O_IDX + k][l] = (li % 8 / 4) * 16 + (2 * ki + li / 8) * 4 + li % 4;
                t[COL + k][l] = (li / 8) * 4 + li % 4 + 8 * ki;
                t[O1 + k][l] = (li % 4 / 2) * 16 + (li % 2) * 8 + 4 * ki + li / 4;
                t[ROW1 + k][l] = 4 * ki + li / 4;
            }
            t[ROW + k][l] = (li % 8 / 4) * 8 + 2 * ki + li / 8;
            k += 1;
        }
        l += 1;
    }
    t
};
const T_A: usize = 0;
const T_B: usize = 1;
const O_IDX: usize = 2;
const COL: usize = 4;
const O1: usize = 6;
const ROW1: usize = 8;
const ROW: usize = 10;

#[target_feature(enable = "avx512f")]
#[inline]
fn lanes(v: &[i32; 16]) -> __m512i {
    // SAFETY: 16 `i32`.
    #[expect(unsafe_code, reason = "an unaligned vector load from a 16-int array")]
    unsafe {
        _mm512_loadu_si512(v.as_ptr().cast())
    }
}

/// `micro::<MIN, R, 4>` with the per-block float work done across the tile instead of per
/// output: the `R × 4` outputs' integer block sums are reduced together (the last folds
/// pair two outputs) and transposed so that one vector holds one block of every output,
/// then the portable code's multiply-adds — block by block, in order, per output — run
/// with one lane per output. The same integers and the same `f32` operations in the same
/// order as [`micro`] and the portable code: only which values share a register changes.
/// `R` is 1 or 2; columns must be a full [`COL_TILE`] of 4.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
#[expect(unsafe_code, reason = "unchecked vector loads")]
unsafe fn micro_t<const MIN: bool, const R: usize>(w: &SmallCols, x: &KRows) -> [[f32; 4]; R] {
    const C: usize = 4;
    let zero = _mm512_setzero_si512();
    let offset = _mm512_set1_epi32(w.offset);
    // y: lane r·4 + c.
    let mut y = _mm256_setzero_ps();
    // The permutations of `IDX` (see there), loaded from constants.
    let idx = |i: usize| lanes(&IDX[i]);
    let (ta, tb) = (idx(T_A), idx(T_B));
    let o_idx = [idx(O_IDX), idx(O_IDX + 1)];
    let row_idx = [idx(ROW), idx(ROW + 1), idx(ROW + 2), idx(ROW + 3)];
    let col_idx = [idx(COL), idx(COL + 1)];
    let o1_idx = [idx(O1), idx(O1 + 1)];
    let row1_idx = [idx(ROW1), idx(ROW1 + 1)];
    let eight = x.blocks / 8 * 8;
    let mut b = 0;
    while b < eight {
        // Integer sums: g[r][c] holds blocks b..b+8 two lanes each (as in `micro`).
        let mut g = [[zero; C]; R];
        // One column at a time keeps 2 accumulators per row live instead of 8.
        #[expect(
            clippy::needless_range_loop,
            reason = "`c` also addresses the decoded column"
        )]
        for c in 0..C {
            let mut ef = [[zero; 2]; R];
            for j in 0..4 {
                // SAFETY: blocks `b + 2j`, `b + 2j + 1 < blocks` of decoded column `c < C`.
                let wj =
                    unsafe { _mm512_loadu_si512(w.qs.add(c * x.width + (b + 2 * j) * 32).cast()) };
                for (r, efr) in ef.iter_mut().enumerate() {
                    // SAFETY: the same blocks of activation row `r < R`.
                    let xj = unsafe {
                        _mm512_loadu_si512(x.qs.add(r * x.width + (b + 2 * j) * 32).cast())
                    };
                    let dot = _mm512_dpbusd_epi32(zero, wj, xj);
                    let half = &mut efr[j / 2];
                    *half = if j % 2 == 0 { dot } else { fold(*half, dot) };
                }
            }
            for r in 0..R {
                g[r][c] = fold(ef[r][0], ef[r][1]);
            }
        }
        let r1 = R - 1;
        // SAFETY: group sums `2b..2b + 16` and scales `b..b + 8` of rows 0 and `R - 1`;
        // scales and minima `b..b + 8` of the tile's 4 decoded columns (block-major).
        let (sx, dx, dw, mw) = unsafe {
            let sums0 = _mm512_loadu_si512(x.sums.add(b * 2).cast());
            let sums1 = _mm512_loadu_si512(x.sums.add((r1 * x.width + b * 32) / 16).cast());
            let ds0 = _mm256_loadu_ps(x.ds.add(b));
            let ds1 = _mm256_loadu_ps(x.ds.add(r1 * x.blocks + b));
            (
                // [row 0: Σ x of blocks b..b+8 | row 1 (row 0 again when R = 1)]
                fold(sums0, sums1),
                _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                    _mm512_castpd256_pd512(_mm256_castps_pd(ds0)),
                    _mm256_castps_pd(ds1),
                )),
                [
                    _mm512_loadu_ps(w.ds.add(b * C)),
                    _mm512_loadu_ps(w.ds.add((b + 4) * C)),
                ],
                [
                    _mm512_loadu_ps(w.ms.add(b * C)),
                    _mm512_loadu_ps(w.ms.add((b + 4) * C)),
                ],
            )
        };
        let off = _mm512_mullo_epi32(sx, offset);
        let sxf = _mm512_cvtepi32_ps(sx);
        if R == 2 {
            let h = [
                fold(g[0][0], g[0][1]),
                fold(g[0][2], g[0][3]),
                fold(g[r1][0], g[r1][1]),
                fold(g[r1][2], g[r1][3]),
            ];
            let t = [
                _mm512_permutex2var_epi32(h[0], ta, h[1]),
                _mm512_permutex2var_epi32(h[0], tb, h[1]),
            ];
            let u = [
                _mm512_permutex2var_epi32(h[2], ta, h[3]),
                _mm512_permutex2var_epi32(h[2], tb, h[3]),
            ];
            for k in 0..4 {
                let o = _mm512_permutex2var_epi32(t[k / 2], o_idx[k % 2], u[k / 2]);
                let sumi = _mm512_cvtepi32_ps(_mm512_sub_epi32(
                    o,
                    _mm512_permutexvar_epi32(row_idx[k], off),
                ));
                let dxk = _mm512_permutexvar_ps(row_idx[k], dx);
                // Blocks 2k, 2k + 1: 8 block-major column values from `dw[k / 2]`.
                let ss = _mm512_mul_ps(_mm512_permutexvar_ps(col_idx[k % 2], dw[k / 2]), dxk);
                let (mx, ms) = if MIN {
                    let sxk = _mm512_permutexvar_ps(row_idx[k], sxf);
                    (
                        _mm512_mul_ps(dxk, sxk),
                        _mm512_permutexvar_ps(col_idx[k % 2], mw[k / 2]),
                    )
                } else {
                    (_mm512_setzero_ps(), _mm512_setzero_ps())
                };
                for (fs, ss, ms, mx) in [
                    (
                        _mm512_castps512_ps256(sumi),
                        _mm512_castps512_ps256(ss),
                        _mm512_castps512_ps256(ms),
                        _mm512_castps512_ps256(mx),
                    ),
                    (hi(sumi), hi(ss), hi(ms), hi(mx)),
                ] {
                    y = _mm256_fmadd_ps(fs, ss, y);
                    if MIN {
                        y = _mm256_fmadd_ps(ms, mx, y);
                    }
                }
            }
        } else {
            let h = [fold(g[0][0], g[0][1]), fold(g[0][2], g[0][3])];
            let mut y4 = _mm256_castps256_ps128(y);
            for k in 0..2 {
                let o = _mm512_permutex2var_epi32(h[0], o1_idx[k], h[1]);
                let sumi = _mm512_cvtepi32_ps(_mm512_sub_epi32(
                    o,
                    _mm512_permutexvar_epi32(row1_idx[k], off),
                ));
                let dxk = _mm512_permutexvar_ps(row1_idx[k], dx);
                let ss = _mm512_mul_ps(dw[k], dxk);
                let (mx, ms) = if MIN {
                    let sxk = _mm512_permutexvar_ps(row1_idx[k], sxf);
                    (_mm512_mul_ps(dxk, sxk), mw[k])
                } else {
                    (_mm512_setzero_ps(), _mm512_setzero_ps())
                };
                macro_rules! block {
                    ($i:literal) => {
                        y4 = _mm_fmadd_ps(
                            _mm512_extractf32x4_ps::<$i>(sumi),
                            _mm512_extractf32x4_ps::<$i>(ss),
                            y4,
                        );
                        if MIN {
                            y4 = _mm_fmadd_ps(
                                _mm512_extractf32x4_ps::<$i>(ms),
                                _mm512_extractf32x4_ps::<$i>(mx),
                                y4,
                            );
                        }
                    };
                }
                block!(0);
                block!(1);
                block!(2);
                block!(3);
            }
            y = _mm256_castps128_ps256(y4);
        }
        b += 8;
    }
    let mut lanes_y = [0f32; 8];
    // SAFETY: 8 `f32`.
    unsafe { _mm256_storeu_ps(lanes_y.as_mut_ptr(), y) };
    let mut out: [[f32; C]; R] =
        std::array::from_fn(|r| std::array::from_fn(|c| lanes_y[r * C + c]));
    // SAFETY: as for `micro`'s tail: blocks `eight..blocks` of the same rows and columns.
    unsafe { tail_blocks::<MIN, R, C>(w, x, eight, &mut out) };
    out
}

/// The upper 8 lanes of `v`.
#[target_feature(enable = "avx512f")]
#[inline]
fn hi(v: __m512) -> __m256 {
    _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)))
}
