//! The 32-element block types `Q4_1`, `Q5_1`, `IQ4_NL` (`Q5_0` is kept in [`super::super::qdot`]'s
//! panels) against [`super::kdot`]'s `Q8_0`
//! activations (one `f32` scale and 32 × `i8` per block, plus the sum of each 16 quants).
//!
//! The portable code (`kdot::run_small`) keeps 16 lane accumulators, two blocks per vector as
//! `vpdpbusd` lays them out: lane `(b mod 2)·8 + l` adds, block by block in order,
//! `f32(Σ q·x over elements 4l..4l+4 of block b) · (d_w · d_x)`, and for the types with a
//! minimum the block's first lane adds `m · (d_x · f32(Σ x))`; the lanes are summed at the
//! end in a fixed tree. Here each tile of columns is first decoded once per row block into
//! unsigned bytes (`f32` scales and minima beside them), then two blocks per step take one
//! `vpdpbusd` per output starting from `−offset · Σ x` per lane (one more `vpdpbusd` of the
//! offset byte with the activations, shared by the tile's columns), one conversion and one
//! (masked) fused multiply-add: the same integers and the same `f32` operations per lane.
//! `IQ4_NL`'s nibbles index a table of signed levels: the decoded byte is the level + 128
//! (one `vpshufb`), so it enters `vpdpbusd` unsigned like the others.

use std::arch::x86_64::*;

use super::{KRows, LEVELS, fits, put, sum_lanes};
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
    /// Byte offset of the `u32` of fifth bits, bit `j` for element `j` (`Q5_1`).
    qh: Option<usize>,
    /// Byte offset of the 16 bytes of nibbles (element `j`: byte `j`'s low nibble, `j + 16`:
    /// its high one).
    qs: usize,
    /// What a decoded byte exceeds the portable code's `i8` quant by (`IQ4_NL`: 128).
    offset: i32,
    /// The nibbles index `KVALUES` (`IQ4_NL`), decoded as the level + `offset` ([`LEVELS`]).
    table: bool,
}

fn layout(t: QType) -> Option<Layout> {
    Some(match t {
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
                        wd.as_mut_ptr().add(j * blocks),
                        wm.as_mut_ptr().add(j * blocks),
                        rows == 1,
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
                        (false, 2, 4) => put(dst, at, rows, micro::<false, 2, 4>(&w, &x)),
                        (false, 1, 4) => put(dst, at, rows, micro::<false, 1, 4>(&w, &x)),
                        (false, 2, _) => put(dst, at, rows, micro::<false, 2, 1>(&w, &x)),
                        (false, _, _) => put(dst, at, rows, micro::<false, 1, 1>(&w, &x)),
                        (true, 2, 4) => put(dst, at, rows, micro::<true, 2, 4>(&w, &x)),
                        (true, 1, 4) => put(dst, at, rows, micro::<true, 1, 4>(&w, &x)),
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
/// `qs + c · width`, its scales at `ds + c · blocks`, its minima at `ms + c · blocks`.
struct SmallCols {
    qs: *const u8,
    ds: *const f32,
    ms: *const f32,
    /// What the quants exceed the portable code's by.
    offset: i32,
}

/// One weight row of `blocks` blocks laid out as `l` says at `p` into `blocks · 32`
/// unsigned bytes at `q`, `blocks` scales at `d` and `blocks` minima (0 if none) at `m`;
/// `one_row`: the tile will be multiplied by a single activation row (see
/// [`crate::kernels::prefetch_ahead`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[expect(unsafe_code, reason = "unchecked loads and stores the caller checked")]
unsafe fn decode(
    l: &Layout,
    p: *const u8,
    blocks: usize,
    q: *mut u8,
    d: *mut f32,
    m: *mut f32,
    one_row: bool,
) {
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
            crate::kernels::prefetch_ahead(p.wrapping_add(ahead), one_row);
            // The scale and the minimum (or the next two bytes) widened in one instruction,
            // exactly as `block_scale` widens them: every `f16` is an `f32`. Without this
            // the conversions were most of a decode step's time.
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(p.cast::<i32>().read_unaligned()));
            d.add(b).write(_mm_cvtss_f32(dm));
            m.add(b).write(if l.min {
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

/// An `R × C` tile of 32-element blocks, every block, in [`kdot`]'s lane order: two blocks
/// per 512-bit vector (even blocks in lanes 0–7, odd ones in lanes 8–15), lane `l` of a block
/// its 4-element integer sum `Σ q·x` (one `vpdpbusd` on the decoded unsigned bytes, less
/// `offset · Σ x` from one `vpdpbusd` of the offset byte with the activations), converted
/// and multiply-added with the block's `d_w · d_x`; types with a minimum add `m · (d_x · Σ x)`
/// to the block's first lane. The 16 lanes are summed at the end by [`reduce`]. `MIN`: the
/// type has minima.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
#[expect(unsafe_code, reason = "unchecked vector loads")]
unsafe fn micro<const MIN: bool, const R: usize, const C: usize>(
    w: &SmallCols,
    x: &KRows,
) -> [[f32; C]; R] {
    let zero = _mm512_setzero_si512();
    let offset = _mm512_set1_epi8(w.offset as u8 as i8);
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    let mut b = 0;
    while b < x.blocks {
        let pair = b + 1 < x.blocks;
        // An odd last block leaves lanes 8–15 as they are.
        let (all, first): (__mmask16, __mmask16) = if pair {
            (0xffff, 0x0101)
        } else {
            (0x00ff, 0x0001)
        };
        let mut xv = [zero; R];
        let mut offv = [zero; R];
        let mut dx = [_mm512_setzero_ps(); R];
        let mut mx = [_mm512_setzero_ps(); R];
        for r in 0..R {
            // SAFETY: blocks `b` (and `b + 1` when `pair`) of activation row `r < R`, their
            // scales and group sums.
            unsafe {
                let q = x.qs.add(r * x.width + b * 32);
                let d = x.ds.add(r * x.blocks + b);
                xv[r] = if pair {
                    _mm512_loadu_si512(q.cast())
                } else {
                    _mm512_zextsi256_si512(_mm256_loadu_si256(q.cast()))
                };
                dx[r] = spread2(d, pair);
                if MIN {
                    let s = x.sums.add((r * x.width + b * 32) / 16);
                    let s = if pair {
                        _mm_loadu_si128(s.cast())
                    } else {
                        _mm_loadl_epi64(s.cast())
                    };
                    // [Σ x of block b, of block b + 1]: the two group sums of each.
                    let sx = _mm_cvtepi32_ps(_mm_hadd_epi32(s, s));
                    let sx = spread(sx);
                    mx[r] = _mm512_mul_ps(dx[r], sx);
                }
            }
            // The integer sums start from `−offset · Σ x` of each lane's 4 activations.
            if w.offset != 0 {
                offv[r] = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, offset, xv[r]));
            }
        }
        #[expect(
            clippy::needless_range_loop,
            reason = "`c` also addresses the decoded column"
        )]
        for c in 0..C {
            // SAFETY: blocks `b` (and `b + 1` when `pair`) of decoded column `c < C`, their
            // scales and minima.
            let (wv, dw, mw) = unsafe {
                let q = w.qs.add(c * x.width + b * 32);
                let d = w.ds.add(c * x.blocks + b);
                let m = w.ms.add(c * x.blocks + b);
                (
                    if pair {
                        _mm512_loadu_si512(q.cast())
                    } else {
                        _mm512_zextsi256_si512(_mm256_loadu_si256(q.cast()))
                    },
                    spread2(d, pair),
                    if MIN {
                        spread2(m, pair)
                    } else {
                        _mm512_setzero_ps()
                    },
                )
            };
            for r in 0..R {
                let sumi = _mm512_dpbusd_epi32(offv[r], wv, xv[r]);
                let s = _mm512_mul_ps(dw, dx[r]);
                let a = _mm512_mask3_fmadd_ps(_mm512_cvtepi32_ps(sumi), s, acc[r][c], all);
                acc[r][c] = if MIN {
                    _mm512_mask3_fmadd_ps(mw, mx[r], a, first)
                } else {
                    a
                };
            }
        }
        b += 2;
    }
    let mut y = [[0f32; C]; R];
    for (yr, ar) in y.iter_mut().zip(&acc) {
        for (y, &a) in yr.iter_mut().zip(ar) {
            *y = sum_lanes(a);
        }
    }
    y
}

/// `[p[0] × 8 | p[1] × 8]`, or `[p[0] × 8 | 0 × 8]` when not `pair` (then `p[1]` is not read).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
#[inline]
#[expect(unsafe_code, reason = "unchecked loads the caller checked")]
unsafe fn spread2(p: *const f32, pair: bool) -> __m512 {
    // SAFETY: the caller guarantees `p[0]`, and `p[1]` when `pair`.
    let v = unsafe {
        if pair {
            _mm_castsi128_ps(_mm_loadl_epi64(p.cast()))
        } else {
            _mm_load_ss(p)
        }
    };
    spread(v)
}

/// `[v[0] × 8 | v[1] × 8]`: lanes 0–7 from element 0, 8–15 from element 1.
#[target_feature(enable = "avx512f")]
#[inline]
fn spread(v: __m128) -> __m512 {
    let idx = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(v))
}
