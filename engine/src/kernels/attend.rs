//! Attention of one query position over its cached keys and values, on the CPU, read
//! straight from the KV cache's pages: no `[heads, queries, keys]` score tensor, no mask
//! tensor, no copy of the cache into a contiguous tensor.
//!
//! A task is one query position and one KV head with the `group` query heads that share it
//! (grouped-query attention). Its scores are kept in a scratch row of the visible keys only
//! (causal order and a sliding window are a key range, not a mask), computed a page at a
//! time from the page's transposed keys, then softmax, then the weighted sum of the values.
//!
//! **Batch invariance.** The arithmetic of a task depends on its query, its key range and the
//! cache, never on the other rows of the step: a prompt's last position gets the same bits
//! whether the prompt is prefilled at once, in chunks, or as a speculative step's verified
//! row, and one sequence gets the same bits alone or in a batch. A score is one fused
//! multiply-add per dimension in order (one lane per key of a page), values are accumulated
//! key by key in order, and `exp` is [`exp_nonpositive`] (only multiplies, adds and bit
//! operations), so the AVX-512, AVX2 and portable builds of this code agree bit for bit.
//! The cache's elements (`f16` by default, or `f32`) are widened to `f32` exactly before any
//! of it ([`Elem`]), so the element type changes what is stored, never how it is summed.

use std::ops::Range;
use std::sync::Arc;

use half::f16;

use super::{reduce, simd_level};

/// Positions per page of a KV cache (the budget's block size, so the memory a sequence holds
/// is the block count the scheduler accounts for).
pub const PAGE: usize = crate::kv::BLOCK_POSITIONS;

/// One page of one layer's cache, of [`Elem`]s (`f16` or `f32`, the cache's element type):
/// the keys `[kv_heads][head_dim][PAGE]` (transposed: one vector holds one dimension of the
/// page's [`PAGE`] keys, so a query scores a whole page with one broadcast multiply-add per
/// dimension and no horizontal sums), then the values `[kv_heads][PAGE][head_dim]`.
pub type Page<E> = Arc<[E]>;

/// What a cache page holds: `f16` (the default, half the memory and the bytes read) or
/// `f32`. Attention widens every element to `f32`, exactly, before it computes.
pub trait Elem: Copy + Default + Send + Sync + 'static {
    /// Whether this is `f16` (the AVX-512 loops load it with `vcvtph2ps`).
    const HALF: bool;
    /// `self` as an `f32`, exactly.
    fn widen(self) -> f32;
    /// `x` rounded to this type (to nearest, ties to even).
    fn narrow(x: f32) -> Self;
}

impl Elem for f32 {
    const HALF: bool = false;

    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }

    #[inline(always)]
    fn narrow(x: f32) -> f32 {
        x
    }
}

impl Elem for f16 {
    const HALF: bool = true;

    /// Exact (every half is an `f32`), from bit operations and one multiply by a power of
    /// two, so that it vectorizes and agrees bit for bit with the hardware conversion
    /// (`vcvtph2ps`) of the AVX-512 loops (NaN payloads aside).
    #[inline(always)]
    fn widen(self) -> f32 {
        let b = self.to_bits();
        let magnitude = u32::from(b & 0x7fff) << 13;
        // The exponent moves from bias 15 to bias 127: × 2¹¹² (subnormal halves included).
        let mut v = (f32::from_bits(magnitude) * f32::from_bits(0x7780_0000)).to_bits();
        if b & 0x7c00 == 0x7c00 {
            v = magnitude | 0x7f80_0000;
        }
        f32::from_bits(v | (u32::from(b & 0x8000) << 16))
    }

    #[inline(always)]
    fn narrow(x: f32) -> f16 {
        f16::from_f32(x)
    }
}

/// A row of [`LANES`] elements widened.
#[inline(always)]
fn widen_row<E: Elem>(row: &[E; LANES]) -> [f32; LANES] {
    row.map(E::widen)
}

/// The shape and options of one layer's attention.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub head_dim: usize,
    pub kv_heads: usize,
    /// Query heads per KV head.
    pub group: usize,
    /// Multiplies `q·k`.
    pub scale: f32,
    /// Logit soft-cap `cap · tanh(s / cap)` (Gemma 2), applied after `scale`.
    pub softcap: Option<f32>,
}

impl Spec {
    /// `f32`s in one page.
    pub fn page_len(&self) -> usize {
        2 * self.kv_heads * PAGE * self.head_dim
    }

    /// Where dimension `d` of position `pos`'s key for `kv_head` is: (page, offset in it).
    pub fn key_at(&self, pos: usize, kv_head: usize, d: usize) -> (usize, usize) {
        (
            pos / PAGE,
            (kv_head * self.head_dim + d) * PAGE + pos % PAGE,
        )
    }

    /// Where position `pos`'s value vector for `kv_head` starts: (page, offset in it).
    pub fn value_at(&self, pos: usize, kv_head: usize) -> (usize, usize) {
        let plane = self.kv_heads + kv_head;
        (pos / PAGE, (plane * PAGE + pos % PAGE) * self.head_dim)
    }
}

/// Attention of the `group` query heads `q` (`[group, head_dim]`) of `kv_head` over the keys
/// at positions `keys` of `pages` → `out` (`[group, head_dim]`). `keys` must be non-empty
/// and lie inside `pages`; otherwise `out` is left as it is (the caller checks).
pub fn attend<E: Elem>(
    spec: &Spec,
    pages: &[Page<E>],
    kv_head: usize,
    keys: Range<usize>,
    q: &[f32],
    out: &mut [f32],
) {
    let width = spec.group * spec.head_dim;
    if keys.is_empty()
        || keys.end > pages.len() * PAGE
        || q.len() != width
        || out.len() != width
        || kv_head >= spec.kv_heads
        || pages[keys.start / PAGE..keys.end.div_ceil(PAGE)]
            .iter()
            .any(|p| p.len() != spec.page_len())
    {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    match simd_level() {
        2 => return x86::v4(spec, pages, kv_head, keys, q, out),
        1 => return x86::v3(spec, pages, kv_head, keys, q, out),
        _ => {}
    }
    attend_portable(spec, pages, kv_head, keys, q, out)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::*;

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    fn v4_impl<E: Elem>(
        s: &Spec,
        p: &[Page<E>],
        h: usize,
        k: Range<usize>,
        q: &[f32],
        o: &mut [f32],
    ) {
        attend_with::<Avx512, E>(s, p, h, k, q, o)
    }

    #[target_feature(enable = "avx2,fma")]
    fn v3_impl<E: Elem>(
        s: &Spec,
        p: &[Page<E>],
        h: usize,
        k: Range<usize>,
        q: &[f32],
        o: &mut [f32],
    ) {
        attend_with::<Portable, E>(s, p, h, k, q, o)
    }

    #[expect(unsafe_code, reason = "calling a #[target_feature] function")]
    pub(super) fn v4<E: Elem>(
        s: &Spec,
        p: &[Page<E>],
        h: usize,
        k: Range<usize>,
        q: &[f32],
        o: &mut [f32],
    ) {
        // SAFETY: `attend` calls this only when `simd_level` detected every feature enabled.
        unsafe { v4_impl(s, p, h, k, q, o) }
    }

    #[expect(unsafe_code, reason = "calling a #[target_feature] function")]
    pub(super) fn v3<E: Elem>(
        s: &Spec,
        p: &[Page<E>],
        h: usize,
        k: Range<usize>,
        q: &[f32],
        o: &mut [f32],
    ) {
        // SAFETY: `attend` calls this only when `simd_level` detected AVX2 and FMA.
        unsafe { v3_impl(s, p, h, k, q, o) }
    }

    /// The inner loops with one `zmm` register per accumulator row (the compiler does not
    /// keep `[[f32; 16]; M]` in registers on its own): the same fused multiply-adds, in the
    /// same order, as [`Portable`].
    struct Avx512;

    impl Inner for Avx512 {
        #[inline(always)]
        fn dots<E: Elem, const M: usize, const G: usize>(
            qs: &[&[f32]; G],
            planes: &[&[[E; LANES]]; M],
        ) -> [[[f32; LANES]; M]; G] {
            // SAFETY: only reached from `v4_impl`, whose features include AVX-512F.
            #[expect(unsafe_code, reason = "calling a #[target_feature] function")]
            unsafe {
                dots_v4(qs, planes)
            }
        }

        const HEADS: usize = 4;

        #[inline(always)]
        fn weighted<'a, E: Elem, const C: usize, const G: usize>(
            rows: impl Iterator<Item = ([f32; G], &'a [E])>,
        ) -> [[[f32; LANES]; C]; G] {
            // SAFETY: as in `dots`.
            #[expect(unsafe_code, reason = "calling a #[target_feature] function")]
            unsafe {
                weighted_v4(rows)
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    fn dots_v4<E: Elem, const M: usize, const G: usize>(
        qs: &[&[f32]; G],
        planes: &[&[[E; LANES]]; M],
    ) -> [[[f32; LANES]; M]; G] {
        let mut acc = [[_mm512_setzero_ps(); M]; G];
        let hd = qs.first().map_or(0, |q| q.len());
        for d in 0..hd {
            let mut k = [_mm512_setzero_ps(); M];
            for (k, plane) in k.iter_mut().zip(planes) {
                if let Some(row) = plane.get(d) {
                    *k = load(row);
                }
            }
            for (ag, q) in acc.iter_mut().zip(qs) {
                let qv = _mm512_set1_ps(q.get(d).copied().unwrap_or(0.0));
                for (a, k) in ag.iter_mut().zip(&k) {
                    *a = _mm512_fmadd_ps(qv, *k, *a);
                }
            }
        }
        let mut out = [[[0f32; LANES]; M]; G];
        for (og, ag) in out.iter_mut().zip(&acc) {
            for (o, &a) in og.iter_mut().zip(ag) {
                *o = store(a);
            }
        }
        out
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    fn weighted_v4<'a, E: Elem, const C: usize, const G: usize>(
        rows: impl Iterator<Item = ([f32; G], &'a [E])>,
    ) -> [[[f32; LANES]; C]; G] {
        let mut acc = [[_mm512_setzero_ps(); C]; G];
        for (p, v) in rows {
            let mut vs = [_mm512_setzero_ps(); C];
            for (x, v) in vs.iter_mut().zip(v.as_chunks::<LANES>().0) {
                *x = load(v);
            }
            for (ag, &p) in acc.iter_mut().zip(&p) {
                let pv = _mm512_set1_ps(p);
                for (a, &x) in ag.iter_mut().zip(&vs) {
                    *a = _mm512_fmadd_ps(pv, x, *a);
                }
            }
        }
        acc.map(|ag| ag.map(|v| store(v)))
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    fn load<E: Elem>(v: &[E; LANES]) -> __m512 {
        // SAFETY: `v` holds the 16 elements read: 16 halves (32 bytes; `f16` is a transparent
        // `u16`) when `E::HALF`, else 16 `f32`s (`Elem` has no other implementations).
        #[expect(unsafe_code, reason = "an unaligned load of 16 elements, widened")]
        unsafe {
            if E::HALF {
                _mm512_cvtph_ps(_mm256_loadu_si256(v.as_ptr().cast()))
            } else {
                _mm512_loadu_ps(v.as_ptr().cast())
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    fn store(v: __m512) -> [f32; LANES] {
        let mut out = [0f32; LANES];
        // SAFETY: `out` holds the 16 floats written.
        #[expect(unsafe_code, reason = "an unaligned vector store to a 16-float array")]
        unsafe {
            _mm512_storeu_ps(out.as_mut_ptr(), v)
        };
        out
    }
}

/// The two inner loops of [`attend_with`], per instruction set; every implementation
/// computes the same fused multiply-adds in the same order.
trait Inner {
    /// `acc[g][i][l] = Σ_d qs[g][d] · planes[i][d][l]`, one fused multiply-add per `d` in
    /// order; each plane row is loaded once for the `G` query heads.
    fn dots<E: Elem, const M: usize, const G: usize>(
        qs: &[&[f32]; G],
        planes: &[&[[E; LANES]]; M],
    ) -> [[[f32; LANES]; M]; G];

    /// Query heads [`Inner::weighted`] takes at once: as many as keep `HEADS × 4`
    /// accumulator vectors in registers.
    const HEADS: usize;

    /// `acc[g][c][l] = Σ_j p_j[g] · v_j[c·LANES + l]` over `rows` `(p_j, v_j)` in order (each
    /// `v_j` `C × LANES` long), one fused multiply-add per row and head: each value vector is
    /// loaded once for the `G` query heads that share it, and a head's sums are the same
    /// bits whatever `G` is.
    fn weighted<'a, E: Elem, const C: usize, const G: usize>(
        rows: impl Iterator<Item = ([f32; G], &'a [E])>,
    ) -> [[[f32; LANES]; C]; G];
}

/// The inner loops as plain Rust.
struct Portable;

impl Inner for Portable {
    #[inline(always)]
    fn dots<E: Elem, const M: usize, const G: usize>(
        qs: &[&[f32]; G],
        planes: &[&[[E; LANES]]; M],
    ) -> [[[f32; LANES]; M]; G] {
        let mut acc = [[[0f32; LANES]; M]; G];
        let hd = qs.first().map_or(0, |q| q.len());
        for d in 0..hd {
            let ks: [Option<[f32; LANES]>; M] =
                std::array::from_fn(|i| planes[i].get(d).map(widen_row));
            for (ag, q) in acc.iter_mut().zip(qs) {
                let qd = q.get(d).copied().unwrap_or(0.0);
                for (a, k) in ag.iter_mut().zip(&ks) {
                    if let Some(k) = k {
                        for (x, &k) in a.iter_mut().zip(k) {
                            *x = qd.mul_add(k, *x);
                        }
                    }
                }
            }
        }
        acc
    }

    // AVX2 has 16 registers: one head's 4 × 2 accumulator halves and the values fill them.
    const HEADS: usize = 1;

    #[inline(always)]
    fn weighted<'a, E: Elem, const C: usize, const G: usize>(
        rows: impl Iterator<Item = ([f32; G], &'a [E])>,
    ) -> [[[f32; LANES]; C]; G] {
        let mut acc = [[[0f32; LANES]; C]; G];
        for (p, v) in rows {
            let vs: [[f32; LANES]; C] = std::array::from_fn(|c| {
                v.as_chunks::<LANES>()
                    .0
                    .get(c)
                    .map_or([0.0; LANES], widen_row)
            });
            for (ag, p) in acc.iter_mut().zip(p) {
                for (a, v) in ag.iter_mut().zip(&vs) {
                    for (x, &v) in a.iter_mut().zip(v) {
                        *x = p.mul_add(v, *x);
                    }
                }
            }
        }
        acc
    }
}

/// The arithmetic of [`attend`] with plain Rust inner loops.
fn attend_portable<E: Elem>(
    spec: &Spec,
    pages: &[Page<E>],
    kv_head: usize,
    keys: Range<usize>,
    q: &[f32],
    out: &mut [f32],
) {
    attend_with::<Portable, E>(spec, pages, kv_head, keys, q, out)
}

/// The arithmetic of [`attend`], compiled as is for each instruction set.
#[inline(always)]
fn attend_with<I: Inner, E: Elem>(
    spec: &Spec,
    pages: &[Page<E>],
    kv_head: usize,
    keys: Range<usize>,
    q: &[f32],
    out: &mut [f32],
) {
    let hd = spec.head_dim;
    let n = keys.len();
    let (first_page, end_page) = (keys.start / PAGE, keys.end.div_ceil(PAGE));
    // Scores of every lane of the pages the keys touch, per query head; the lanes of
    // positions outside `keys` are computed and then left alone (lanes never mix).
    let span = (end_page - first_page) * PAGE;
    let skip = keys.start - first_page * PAGE;
    let mut scores = vec![0f32; spec.group * span];
    let qs: Vec<&[f32]> = q.chunks_exact(hd).collect();
    let mut rows: Vec<&mut [f32]> = scores.chunks_exact_mut(span).collect();
    // Up to 3 query heads × 4 pages per tile.
    for (qs, rows) in qs.chunks(3).zip(rows.chunks_mut(3)) {
        let mut page = first_page;
        while page < end_page {
            let m = (end_page - page).min(4);
            let at = (page - first_page) * PAGE;
            macro_rules! tile {
                ($m:literal, $g:literal) => {
                    score_pages::<I, E, $m, $g>(spec, pages, page, kv_head, qs, rows, at)
                };
            }
            match (m, qs.len()) {
                (4, 3) => tile!(4, 3),
                (4, 2) => tile!(4, 2),
                (4, _) => tile!(4, 1),
                (3, 3) => tile!(3, 3),
                (3, 2) => tile!(3, 2),
                (3, _) => tile!(3, 1),
                (2, 3) => tile!(2, 3),
                (2, 2) => tile!(2, 2),
                (2, _) => tile!(2, 1),
                (_, 3) => tile!(1, 3),
                (_, 2) => tile!(1, 2),
                (_, _) => tile!(1, 1),
            }
            page += m;
        }
    }
    for row in scores.chunks_exact_mut(span) {
        let probs = &mut row[skip..skip + n];
        let max = lanes_max(probs);
        for s in probs.iter_mut() {
            *s = exp_nonpositive(*s - max);
        }
        let sum = lanes_sum(probs);
        for s in probs.iter_mut() {
            *s /= sum;
        }
    }
    // Up to `I::HEADS` query heads at once, each value vector loaded once for them.
    for (rows, outs) in scores
        .chunks(I::HEADS * span)
        .zip(out.chunks_mut(I::HEADS * hd))
    {
        macro_rules! heads {
            ($g:literal) => {{
                let probs: [&[f32]; $g] =
                    std::array::from_fn(|g| &rows[g * span + skip..g * span + skip + n]);
                let mut at = 0;
                while at + 4 * LANES <= hd {
                    weighted::<I, E, 4, $g>(spec, pages, kv_head, keys.start, &probs, at, outs);
                    at += 4 * LANES;
                }
                while at + LANES <= hd {
                    weighted::<I, E, 1, $g>(spec, pages, kv_head, keys.start, &probs, at, outs);
                    at += LANES;
                }
                at
            }};
        }
        let at = match outs.len() / hd {
            4 => heads!(4),
            3 => heads!(3),
            2 => heads!(2),
            _ => heads!(1),
        };
        for (og, row) in outs.chunks_exact_mut(hd).zip(rows.chunks_exact(span)) {
            tail_dims(
                spec,
                pages,
                kv_head,
                keys.start,
                &row[skip..skip + n],
                at,
                og,
            );
        }
    }
}

/// Dimensions `at..` of one head's output, where fewer than [`LANES`] remain: per dimension,
/// one fused multiply-add per key in order, as the vector loops.
fn tail_dims<E: Elem>(
    spec: &Spec,
    pages: &[Page<E>],
    kv_head: usize,
    first: usize,
    probs: &[f32],
    at: usize,
    og: &mut [f32],
) {
    for (d, o) in og.iter_mut().enumerate().skip(at) {
        let mut acc = 0f32;
        for (j, &p) in probs.iter().enumerate() {
            let (page, base) = spec.value_at(first + j, kv_head);
            acc = p.mul_add(pages[page][base + d].widen(), acc);
        }
        *o = acc;
    }
}

/// `f32` lanes of a vector accumulator (one page of keys per score vector).
const LANES: usize = PAGE;

/// Scores of the `G` query heads `qs` against every key of `M` pages from `first` into
/// `rows[g][at..at + M × PAGE]`: per key, one fused multiply-add per dimension in order; `M`
/// pages × `G` heads in flight, so the multiply-adds do not wait on each other and each key
/// vector is loaded once for the `G` heads.
#[inline(always)]
fn score_pages<I: Inner, E: Elem, const M: usize, const G: usize>(
    spec: &Spec,
    pages: &[Page<E>],
    first: usize,
    kv_head: usize,
    qs: &[&[f32]],
    rows: &mut [&mut [f32]],
    at: usize,
) {
    let hd = spec.head_dim;
    let (_, off) = spec.key_at(0, kv_head, 0);
    let planes: [&[[E; PAGE]]; M] =
        std::array::from_fn(|i| pages[first + i][off..off + hd * PAGE].as_chunks::<PAGE>().0);
    let qs: [&[f32]; G] = std::array::from_fn(|g| qs[g]);
    let acc = I::dots(&qs, &planes);
    for (ag, row) in acc.iter().zip(rows.iter_mut()) {
        for (a, dst) in ag.iter().zip(row[at..at + M * PAGE].chunks_exact_mut(PAGE)) {
            for (d, &s) in dst.iter_mut().zip(a) {
                let s = s * spec.scale;
                *d = match spec.softcap {
                    Some(cap) => (s / cap).tanh() * cap,
                    None => s,
                };
            }
        }
    }
}

/// Dimensions `at..at + C × LANES` of `Σ probs[g][j] · value[first + j]` → head `g`'s row of
/// `outs` (`G` rows of `head_dim`): per dimension and head, one fused multiply-add per key in
/// order, `C × G` vectors in flight.
#[inline(always)]
fn weighted<I: Inner, E: Elem, const C: usize, const G: usize>(
    spec: &Spec,
    pages: &[Page<E>],
    kv_head: usize,
    first: usize,
    probs: &[&[f32]; G],
    at: usize,
    outs: &mut [f32],
) {
    let n = probs[0].len();
    let rows = (0..n).map(|j| {
        let (page, base) = spec.value_at(first + j, kv_head);
        (
            std::array::from_fn(|g| probs[g][j]),
            &pages[page][base + at..base + at + C * LANES],
        )
    });
    let acc = I::weighted::<E, C, G>(rows);
    for (ag, out) in acc.iter().zip(outs.chunks_exact_mut(spec.head_dim)) {
        for (a, o) in ag
            .iter()
            .zip(out[at..at + C * LANES].chunks_exact_mut(LANES))
        {
            o.copy_from_slice(a);
        }
    }
}

/// The largest of `xs` (exact in any order), over [`LANES`] lanes so that it vectorizes.
#[inline(always)]
fn lanes_max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] = acc[l].max(c[l]);
        }
    }
    for (a, &x) in acc.iter_mut().zip(tail) {
        *a = a.max(x);
    }
    acc.into_iter().fold(f32::NEG_INFINITY, f32::max)
}

/// `Σ xs` with element `j` in lane `j mod LANES`, lanes summed by [`reduce`]: a fixed order
/// that vectorizes.
#[inline(always)]
fn lanes_sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    for (a, &x) in acc.iter_mut().zip(tail) {
        *a += x;
    }
    reduce(acc)
}

/// `eˣ` for `x ≤ 0` (softmax's `s − max`), within 2 ulp of the exact value, from multiplies,
/// adds and bit operations only, so the compiler vectorizes the softmax loop and every
/// instruction set gets the same bits (libm's `expf` is a call per element and may differ
/// between builds). Cephes' `expf`: `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2` (`ln 2` split in
/// two parts so `r` is exact; `n` rounded by the 1.5·2²³ trick, whose low bits then hold
/// `n`), a degree-7 polynomial for `eʳ`, `2ⁿ` put in the exponent bits. Inputs below −87
/// give about `e⁻⁸⁷`: a weight that small next to the row's maximum (weight 1) is lost in
/// the sum anyway.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 0.0);
    let t = x * LOG2_E + ROUND;
    let n = t - ROUND;
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, x));
    let mut p = 1.987_569_1e-4_f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let y = (p * r).mul_add(r, r) + 1.0;
    // n ∈ [−126, 0] sits in the low bits of `t` (two's complement): 2ⁿ is normal.
    let e = t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23;
    y * f32::from_bits(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_libm_over_softmax_range() {
        let mut worst = 0u32;
        let mut x = 0f32;
        while x > -87.0 {
            let (got, want) = (exp_nonpositive(x), x.exp());
            let ulps = got.to_bits().abs_diff(want.to_bits());
            worst = worst.max(ulps);
            x -= 0.000_731;
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-0.0), 1.0);
    }

    /// A cache of `len` positions with deterministic pseudo-random keys and values.
    fn pages<E: Elem>(spec: &Spec, len: usize) -> Vec<Page<E>> {
        let mut state = 0x9e37_79b9_u32;
        (0..len.div_ceil(PAGE))
            .map(|_| {
                (0..spec.page_len())
                    .map(|_| {
                        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                        E::narrow((state >> 8) as f32 / (1 << 24) as f32 - 0.5)
                    })
                    .collect()
            })
            .collect()
    }

    /// The textbook definition in f64: softmax(q·k·scale) · V.
    fn reference<E: Elem>(
        spec: &Spec,
        pages: &[Page<E>],
        h: usize,
        keys: Range<usize>,
        q: &[f32],
    ) -> Vec<f64> {
        let hd = spec.head_dim;
        let mut out = Vec::new();
        for qg in q.chunks_exact(hd) {
            let s: Vec<f64> = keys
                .clone()
                .map(|pos| {
                    let d: f64 = (0..hd)
                        .map(|d| {
                            let (p, at) = spec.key_at(pos, h, d);
                            f64::from(qg[d]) * f64::from(pages[p][at].widen())
                        })
                        .sum();
                    let s = d * f64::from(spec.scale);
                    match spec.softcap {
                        Some(c) => (s / f64::from(c)).tanh() * f64::from(c),
                        None => s,
                    }
                })
                .collect();
            let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|v| (v - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for d in 0..hd {
                out.push(
                    keys.clone()
                        .zip(&e)
                        .map(|(pos, w)| {
                            let (p, at) = spec.value_at(pos, h);
                            w / sum * f64::from(pages[p][at + d].widen())
                        })
                        .sum(),
                );
            }
        }
        out
    }

    #[test]
    fn matches_the_textbook_definition_and_the_portable_build() {
        check_against_reference::<f32>();
        check_against_reference::<f16>();
    }

    /// Every half widens to the `f32` the `half` crate gives (NaNs: to a NaN), so the
    /// portable loops read the cache as the hardware conversion of the AVX-512 loops does.
    #[test]
    fn halves_widen_exactly() {
        for bits in 0..=u16::MAX {
            let h = f16::from_bits(bits);
            let (got, want) = (h.widen(), h.to_f32());
            if want.is_nan() {
                assert!(got.is_nan(), "{bits:#06x}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{bits:#06x}");
            }
        }
    }

    fn check_against_reference<E: Elem>() {
        for (hd, kv_heads, group, softcap, len, keys) in [
            (64, 3, 3, None, 40, 0..40),
            (64, 1, 7, None, 50, 3..50),
            (96, 2, 6, Some(40.0), 35, 0..35),
            (80, 2, 4, None, 33, 5..33),
            (24, 1, 1, Some(50.0), 17, 16..17),
            (128, 2, 2, Some(30.0), 70, 30..62),
        ] {
            let spec = Spec {
                head_dim: hd,
                kv_heads,
                group,
                scale: 1.0 / (hd as f32).sqrt(),
                softcap,
            };
            let pages = pages::<E>(&spec, len);
            let q: Vec<f32> = (0..group * hd)
                .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
                .collect();
            for h in 0..kv_heads {
                let mut got = vec![f32::NAN; group * hd];
                attend(&spec, &pages, h, keys.clone(), &q, &mut got);
                let want = reference(&spec, &pages, h, keys.clone(), &q);
                for (g, w) in got.iter().zip(&want) {
                    assert!((f64::from(*g) - w).abs() < 1e-5, "hd {hd}: {g} vs {w}");
                }
                let mut portable = vec![f32::NAN; group * hd];
                attend_portable(&spec, &pages, h, keys.clone(), &q, &mut portable);
                assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    portable.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "the SIMD build and the portable code differ (hd {hd})"
                );
            }
        }
    }

    #[test]
    fn refuses_keys_outside_the_cache() {
        let spec = Spec {
            head_dim: 16,
            kv_heads: 1,
            group: 1,
            scale: 0.25,
            softcap: None,
        };
        let pages = pages::<f16>(&spec, PAGE);
        let mut out = vec![7.0; 16];
        attend(&spec, &pages, 0, 0..PAGE + 1, &[0.0; 16], &mut out);
        assert_eq!(out, vec![7.0; 16]);
    }
}
