//! `Q4_K` / `Q5_K` / `Q6_K` weights (most of a `Q4_K_M` or `Q5_K_M` file, Ollama's and LM
//! Studio's default downloads) in panels of 16 output columns, as [`super::qdot`] keeps `Q8_0` / `Q4_0`,
//! times activations quantized per 256-element super-block ([`super::kdot`]'s `Q8_K`: a
//! scale and 256 × `i8` per super-block, plus the sum of each 16 quants).
//!
//! **The arithmetic.** Per output, super-block by super-block (element `e`'s weight being
//! `d·sc_s·q_e − dmin·m_s` for `Q4_K`'s and `Q5_K`'s 8 sub-blocks `s` of 32, `d·sc_s·(q_e − 32)` for
//! `Q6_K`'s 16 sub-blocks of 16, `q` unsigned as stored):
//!
//! * `Q4_K`, `Q5_K`: `sumi = Σ_s sc_s · Σ_{e∈s} q_e·x_e`, `summ = Σ_s m_s · Σ_{e∈s} x_e`, then
//!   `acc = f32(sumi)·(d·d_x) + acc` and `acc = f32(summ)·(−(dmin·d_x)) + acc`;
//! * `Q6_K`: `sumi = Σ_s sc_s · Σ_{e∈s} q_e·x_e − 32 · Σ_s sc_s · Σ_{e∈s} x_e`, then
//!   `acc = f32(sumi)·(d·d_x) + acc`;
//!
//! one accumulator per output, fused multiply-adds, super-blocks in order, as llama.cpp's
//! scalar reference sums these types. Every integer is exact in `i32` whatever order it is
//! summed in (`Q4_K`: |sumi| ≤ 256·63·15·128 < 2³¹; `Q6_K`: ≤ 256·128·63·128 + 32·256·128·128
//! < 2³¹), so the portable code below and the x86 kernels ([`x86`]: AVX-512 VNNI, AVX2)
//! agree bit for bit, and an output depends only on its weight column and its activation
//! row: alone or batched, the same bits.
//!
//! **Panels.** Repacked once at load ([`to_panels`]): per super-block, the 16 columns'
//! `f16` scales side by side, then the sub-block scales (and `Q4_K`'s minima) as bytes in
//! pairs (lane `c` of pair `j`: column `c`'s sub-blocks `2j`, `2j + 1`, what `vpdpwssd`
//! takes after one widening), then the quants in 4-byte groups, lane `c` of a 64-byte group
//! holding column `c`'s 4 consecutive elements:
//!
//! * `Q4_K` (2,368 bytes per 16 columns; the file's 2,304 plus the scales unpacked from
//!   6 bits to bytes): group `(k, g)`, `k < 4`, `g < 8`: low nibbles elements `64k + 4g..+4`
//!   (sub-block `2k`), high nibbles `64k + 32 + 4g..+4` (sub-block `2k + 1`), the file's own
//!   pairing;
//! * `Q5_K` (2,880 bytes; the file's 2,816 plus the unpacked scales): as `Q4_K`, then 8 groups of
//!   fifth bits (group `g`, byte `i`: bit `s` is element `32s + 4g + i`'s, the file's
//!   `qh[4g + i]`);
//! * `Q6_K` (3,360 bytes, the file's size): 32 groups of low nibbles (group `n`: elements
//!   `4n..+4` low, `128 + 4n..+4` high), then 16 groups of top bits (group `h`: bits `2t..2t + 2`
//!   of byte `i` the top two bits of element `64t + 4h + i`).
//!
//! One 512-bit load is one group of 16 columns, and `vpdpbusd` with the activation's 4
//! bytes broadcast adds 4 products to each column's own lane: a sub-block's 8 (or 4)
//! groups leave column `c`'s exact sub-block sum in lane `c`, one `vpmulld` applies the
//! 16 columns' scales, and the float epilogue is one or two fused multiply-adds per
//! super-block and 16 columns. The row-major kernel it replaces needed a scale multiply and
//! a decode per 64 elements and column, and a horizontal sum at the end.

use rayon::prelude::*;

use super::kdot::{self, Acts};
use super::qdot::PANEL;
use super::{Cols, by_panels, f16_bits_to_f32};
use crate::pages;
use crate::quant::kquants::{self, KBlock};
use crate::quant::{QK_K, QType};

#[cfg(target_arch = "x86_64")]
pub(super) mod x86;

/// Which K-quant the panels hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Q4K,
    /// `Q4_K` plus a fifth bit per element (most of a `Q5_K_M` file).
    Q5K,
    Q6K,
}

/// Byte offsets inside a panel block (16 columns, one super-block each).
pub(super) mod at {
    /// The 16 `f16` scales `d`.
    pub(crate) const D: usize = 0;
    /// `Q4_K`: the 16 `f16` `dmin`.
    pub(crate) const DMIN: usize = 32;
    /// `Q4_K`: 4 pairs of sub-block scales, 32 bytes each.
    pub(crate) const Q4K_SC: usize = 64;
    /// `Q4_K`: 4 pairs of sub-block minima.
    pub(crate) const Q4K_MIN: usize = 192;
    /// `Q4_K`: 32 groups of nibbles.
    pub(crate) const Q4K_QS: usize = 320;
    /// `Q5_K` (laid out as `Q4_K` up to here): 8 groups of fifth bits.
    pub(crate) const Q5K_QH: usize = 2368;
    /// `Q6_K`: 8 pairs of signed sub-block scales.
    pub(crate) const Q6K_SC: usize = 32;
    /// `Q6_K`: 32 groups of low nibbles.
    pub(crate) const Q6K_QL: usize = 288;
    /// `Q6_K`: 16 groups of top bits.
    pub(crate) const Q6K_QH: usize = 2336;
}

impl Kind {
    /// The panel format of a GGUF block type, if it has one.
    pub(super) fn of(t: QType) -> Option<Kind> {
        match t {
            QType::Q4_K => Some(Kind::Q4K),
            QType::Q5_K => Some(Kind::Q5K),
            QType::Q6_K => Some(Kind::Q6K),
            _ => None,
        }
    }

    /// The GGUF block type.
    pub(super) fn qtype(self) -> QType {
        match self {
            Kind::Q4K => QType::Q4_K,
            Kind::Q5K => QType::Q5_K,
            Kind::Q6K => QType::Q6_K,
        }
    }

    /// Bytes of one super-block of one column in a panel.
    const fn column_bytes(self) -> usize {
        match self {
            Kind::Q4K => 148,
            Kind::Q5K => 180,
            Kind::Q6K => 210,
        }
    }

    /// Bytes of one panel block: 16 columns' super-blocks.
    pub(super) const fn panel_block_bytes(self) -> usize {
        PANEL * self.column_bytes()
    }

    /// Sub-blocks per super-block (each with its own scale).
    pub(super) const fn subs(self) -> usize {
        match self {
            Kind::Q4K | Kind::Q5K => 8,
            Kind::Q6K => 16,
        }
    }

    /// 4-element groups per sub-block.
    pub(super) const fn groups(self) -> usize {
        QK_K / self.subs() / 4
    }

    /// Where the pairs of what multiplies the activations' group sums start: `Q4_K` /
    /// `Q5_K`'s minima, `Q6_K`'s scales (its offset correction).
    pub(super) const fn corr_at(self) -> usize {
        match self {
            Kind::Q4K | Kind::Q5K => at::Q4K_MIN,
            Kind::Q6K => at::Q6K_SC,
        }
    }

    /// Where the sub-block scales' pairs start.
    pub(super) const fn scales_at(self) -> usize {
        match self {
            Kind::Q4K | Kind::Q5K => at::Q4K_SC,
            Kind::Q6K => at::Q6K_SC,
        }
    }

    fn unpack(self, block: &[u8], out: &mut KBlock) {
        match self {
            Kind::Q4K => kquants::unpack_q4_k(block, out),
            Kind::Q5K => kquants::unpack_q5_k(block, out),
            Kind::Q6K => kquants::unpack_q6_k(block, out),
        }
    }

    /// Byte offset of the `f16` `d` in a GGUF block.
    const fn d_at(self) -> usize {
        match self {
            Kind::Q4K | Kind::Q5K => 0,
            Kind::Q6K => 208,
        }
    }

    /// Whether the type has minima (and a `dmin`): `Q4_K`, `Q5_K`.
    pub(super) fn has_min(self) -> bool {
        self != Kind::Q6K
    }

    /// The bits per element kept in a top-bits group: `Q5_K` 1, `Q6_K` 2 (`Q4_K` has none).
    fn top_mask(self) -> u8 {
        match self {
            Kind::Q6K => 3,
            _ => 1,
        }
    }
}

/// One column's super-block as the panel stores it.
struct Column {
    d: [u8; 2],
    dmin: [u8; 2],
    /// Sub-block scales (`Q6_K`: signed, as `i8` bits) and `Q4_K`'s minima.
    sc: [u8; 16],
    min: [u8; 16],
    /// The quants, unsigned (`Q6_K`: `q + 32`, 6 bits).
    q: [u8; QK_K],
}

impl Column {
    const EMPTY: Column = Column {
        d: [0; 2],
        dmin: [0; 2],
        sc: [0; 16],
        min: [0; 16],
        q: [0; QK_K],
    };

    /// From a GGUF block (`block` holds a whole one).
    fn from_block(kind: Kind, block: &[u8]) -> Column {
        let mut k = KBlock::default();
        kind.unpack(block, &mut k);
        let mut c = Column::EMPTY;
        let d = kind.d_at();
        c.d.copy_from_slice(&block[d..d + 2]);
        // A sub-block is `16 · 16 / subs` elements: every group's scale is its sub-block's.
        let per = 16 / kind.subs();
        for s in 0..kind.subs() {
            c.sc[s] = k.scales[per * s] as u8;
            c.min[s] = k.mins[per * s] as u8;
        }
        let offset = match kind {
            Kind::Q4K | Kind::Q5K => {
                c.dmin.copy_from_slice(&block[2..4]);
                0
            }
            Kind::Q6K => 32,
        };
        for (q, &v) in c.q.iter_mut().zip(&k.q) {
            *q = (i32::from(v) + offset) as u8;
        }
        c
    }

    /// Back to the integers of a [`KBlock`] (what `to_f32` expands).
    fn to_kblock(&self, kind: Kind) -> KBlock {
        let mut k = KBlock {
            d: f16_bits_to_f32(u16::from_le_bytes(self.d)),
            ..KBlock::default()
        };
        let per = 16 / kind.subs();
        for g in 0..16 {
            let s = g / per;
            match kind {
                Kind::Q4K | Kind::Q5K => {
                    k.scales[g] = i32::from(self.sc[s]);
                    k.mins[g] = i32::from(self.min[s]);
                }
                Kind::Q6K => k.scales[g] = i32::from(self.sc[s] as i8),
            }
        }
        match kind {
            Kind::Q4K | Kind::Q5K => {
                k.dmin = Some(f16_bits_to_f32(u16::from_le_bytes(self.dmin)));
                for (q, &v) in k.q.iter_mut().zip(&self.q) {
                    *q = v as i8;
                }
            }
            Kind::Q6K => {
                for (q, &v) in k.q.iter_mut().zip(&self.q) {
                    *q = v as i8 - 32;
                }
            }
        }
        k
    }
}

/// Where, in a panel block, column `c`'s 4-element group holding element `e` sits, and
/// which of its parts: `(low-nibble byte, high nibble?, top-bits byte and shift)` (`Q5_K`'s
/// fifth bit, `Q6_K`'s top two bits).
fn place(kind: Kind, c: usize, e: usize) -> (usize, bool, Option<(usize, usize)>) {
    let i = e % 4;
    match kind {
        Kind::Q4K | Kind::Q5K => {
            // Sub-block `s = 2k + h`, element `4g + i` of it; `Q5_K`'s fifth bit is bit `s`
            // of byte `i` of group `g`'s top bits (the file's `qh[4g + i]`).
            let (k, h, g) = (e / 64, (e / 32) % 2, (e % 32) / 4);
            let top = (kind == Kind::Q5K).then(|| (at::Q5K_QH + (g * PANEL + c) * 4 + i, e / 32));
            (at::Q4K_QS + ((8 * k + g) * PANEL + c) * 4 + i, h == 1, top)
        }
        Kind::Q6K => {
            let n = (e % 128) / 4;
            let (t, h) = (e / 64, (e % 64) / 4);
            (
                at::Q6K_QL + (n * PANEL + c) * 4 + i,
                e >= 128,
                Some((at::Q6K_QH + (h * PANEL + c) * 4 + i, 2 * t)),
            )
        }
    }
}

/// Byte offset, inside the pairs of per-sub-block bytes (scales or minima), of column `c`'s
/// sub-block `s`: lane `c` of pair `s / 2`, its byte `s % 2`.
const fn pair_at(s: usize, c: usize) -> usize {
    (s / 2 * PANEL + c) * 2 + s % 2
}

/// Writes `col` as column `c` of the panel block `p`.
fn put(kind: Kind, p: &mut [u8], c: usize, col: &Column) {
    p[at::D + 2 * c..at::D + 2 * c + 2].copy_from_slice(&col.d);
    if kind.has_min() {
        p[at::DMIN + 2 * c..at::DMIN + 2 * c + 2].copy_from_slice(&col.dmin);
    }
    for s in 0..kind.subs() {
        let pair = pair_at(s, c);
        p[kind.scales_at() + pair] = col.sc[s];
        if kind.has_min() {
            p[at::Q4K_MIN + pair] = col.min[s];
        }
    }
    // A group's 4 elements sit in 4 consecutive bytes: one `place` per group.
    for (g, quad) in col.q.chunks_exact(4).enumerate() {
        let (lo, high, top) = place(kind, c, 4 * g);
        for (i, &q) in quad.iter().enumerate() {
            let nibble = q & 0x0f;
            p[lo + i] |= if high { nibble << 4 } else { nibble };
            if let Some((hb, shift)) = top {
                p[hb + i] |= (q >> 4) << shift;
            }
        }
    }
}

/// Reads column `c` of the panel block `p`.
fn get(kind: Kind, p: &[u8], c: usize) -> Column {
    let mut col = Column::EMPTY;
    col.d.copy_from_slice(&p[at::D + 2 * c..at::D + 2 * c + 2]);
    if kind.has_min() {
        col.dmin
            .copy_from_slice(&p[at::DMIN + 2 * c..at::DMIN + 2 * c + 2]);
    }
    for s in 0..kind.subs() {
        let pair = pair_at(s, c);
        col.sc[s] = p[kind.scales_at() + pair];
        if kind.has_min() {
            col.min[s] = p[at::Q4K_MIN + pair];
        }
    }
    for (e, q) in col.q.iter_mut().enumerate() {
        let (lo, high, top) = place(kind, c, e);
        let nibble = if high { p[lo] >> 4 } else { p[lo] & 0x0f };
        let top = top.map_or(0, |(hb, shift)| ((p[hb] >> shift) & kind.top_mask()) << 4);
        *q = nibble | top;
    }
    col
}

/// GGUF blocks `[out, blocks]` (row-major, as a file holds them) as panels (see the module
/// docs), on huge pages ([`pages`]). Columns past `out` in the last panel are zero (scale
/// 0). `v` must hold `out · blocks` whole blocks.
pub(super) fn to_panels(v: &[u8], kind: Kind, out: usize, blocks: usize) -> Vec<u8> {
    let bb = kind.qtype().block_bytes();
    let pb = kind.panel_block_bytes();
    let panels = out.div_ceil(PANEL);
    let mut p = pages::zeroed(panels * blocks * pb);
    // Panel blocks are independent: repacked on the pool (a 1B `Q4_K_M` file's ~1.2 G
    // weights are most of its load time).
    p.par_chunks_exact_mut(pb).enumerate().for_each(|(i, dst)| {
        let (pi, b) = (i / blocks.max(1), i % blocks.max(1));
        for c in 0..PANEL {
            let o = pi * PANEL + c;
            let block = (o < out)
                .then(|| v.get((o * blocks + b) * bb..(o * blocks + b + 1) * bb))
                .flatten();
            if let Some(block) = block {
                put(kind, dst, c, &Column::from_block(kind, block));
            }
        }
    });
    p
}

/// The weights `[out, blocks · 256]` of panels made by [`to_panels`] as `f32`, the values
/// the file's blocks expand to.
pub(super) fn to_f32(p: &[u8], kind: Kind, out: usize, blocks: usize) -> Vec<f32> {
    let pb = kind.panel_block_bytes();
    let mut w = vec![0f32; out * blocks * QK_K];
    for (o, row) in w.chunks_exact_mut((blocks * QK_K).max(1)).enumerate() {
        let (pi, c) = (o / PANEL, o % PANEL);
        for (b, dst) in row.chunks_exact_mut(QK_K).enumerate() {
            if let Some(block) = p.get((pi * blocks + b) * pb..(pi * blocks + b + 1) * pb) {
                get(kind, block, c).to_kblock(kind).expand(dst);
            }
        }
    }
    w
}

/// `x` (`rows × inp`, `inp` a multiple of 256) times the `[out, inp]` weights in panels `v`ᵀ.
pub(super) fn matmul(
    v: &[u8],
    kind: Kind,
    out: usize,
    inp: usize,
    x: &[f32],
    rows: usize,
) -> Vec<f32> {
    let a = kdot::quantize(x, rows, inp, QK_K);
    by_panels(out, rows, PANEL, |first, dst| {
        #[cfg(target_arch = "x86_64")]
        if super::vnni() {
            return x86::run(v, kind, &a, first, dst);
        } else if super::simd_level() >= 1 && super::f16c() {
            return x86::run_avx2(v, kind, &a, first, dst);
        }
        run_portable(v, kind, &a, first, dst)
    })
}

/// Output columns `first..first + dst.len()` into `dst`; `first` is a multiple of
/// [`PANEL`] ([`by_panels`] splits so).
#[inline(always)]
pub(super) fn run_portable(v: &[u8], kind: Kind, a: &Acts, first: usize, dst: &mut Cols<'_>) {
    let blocks = a.width / QK_K;
    let panel_bytes = blocks * kind.panel_block_bytes();
    let n = dst.len();
    for pi in first / PANEL..(first + n).div_ceil(PANEL) {
        let p = v.get(pi * panel_bytes..(pi + 1) * panel_bytes);
        for r in 0..a.rows {
            let lanes = p.map_or([f32::NAN; PANEL], |p| panel_row(p, kind, a, r));
            dst.put(r, pi * PANEL - first, &lanes);
        }
    }
}

/// The 16 columns of panel `p` · activation row `r`; see the module docs.
#[inline(always)]
fn panel_row(p: &[u8], kind: Kind, a: &Acts, r: usize) -> [f32; PANEL] {
    let pb = kind.panel_block_bytes();
    let mut acc = [0f32; PANEL];
    for (b, blk) in p.chunks_exact(pb).enumerate() {
        let (xq, dx, sums) = a.block(r, b);
        let (Some(xq), Some(sums)) = (xq.get(..QK_K), sums.get(..16)) else {
            return [f32::NAN; PANEL];
        };
        // `sumi` before its offset correction, and what the correction or minimum term
        // multiplies: per column.
        let mut raw = [0i32; PANEL];
        let mut corr = [0i32; PANEL];
        let scale = |s: usize, c: usize| {
            let v = blk[kind.scales_at() + pair_at(s, c)];
            match kind {
                Kind::Q4K | Kind::Q5K => i32::from(v),
                Kind::Q6K => i32::from(v as i8),
            }
        };
        match kind {
            Kind::Q4K | Kind::Q5K => {
                let q5 = kind == Kind::Q5K;
                for k in 0..4 {
                    let (mut lo, mut hi) = ([0i32; PANEL], [0i32; PANEL]);
                    for g in 0..8 {
                        let q = &blk[at::Q4K_QS + (8 * k + g) * 64..][..64];
                        // `Q5_K`: bit `s` of the top-bits byte is sub-block `s`'s fifth bit.
                        let top = blk.get(at::Q5K_QH + g * 64..).unwrap_or_default();
                        let xl = &xq[64 * k + 4 * g..][..4];
                        let xh = &xq[64 * k + 32 + 4 * g..][..4];
                        for c in 0..PANEL {
                            for i in 0..4 {
                                let w = q[4 * c + i];
                                let t = if q5 { top[4 * c + i] >> (2 * k) } else { 0 };
                                let (wl, wh) =
                                    ((w & 0x0f) | ((t & 1) << 4), (w >> 4) | ((t & 2) << 3));
                                lo[c] += i32::from(wl) * i32::from(xl[i]);
                                hi[c] += i32::from(wh) * i32::from(xh[i]);
                            }
                        }
                    }
                    for c in 0..PANEL {
                        raw[c] += scale(2 * k, c) * lo[c] + scale(2 * k + 1, c) * hi[c];
                    }
                }
                for s in 0..8 {
                    let xs = sums[2 * s] + sums[2 * s + 1];
                    for (c, corr) in corr.iter_mut().enumerate() {
                        let m = blk[at::Q4K_MIN + pair_at(s, c)];
                        *corr += i32::from(m) * xs;
                    }
                }
            }
            Kind::Q6K => {
                let mut dots = [[0i32; PANEL]; 16];
                for n in 0..32 {
                    let ql = &blk[at::Q6K_QL + n * 64..][..64];
                    let qh = &blk[at::Q6K_QH + (n % 16) * 64..][..64];
                    let t = n / 16;
                    let xl = &xq[4 * n..][..4];
                    let xh = &xq[128 + 4 * n..][..4];
                    let (dl, dh) = dots.split_at_mut(8);
                    let (dl, dh) = (&mut dl[n / 4], &mut dh[n / 4]);
                    for c in 0..PANEL {
                        for i in 0..4 {
                            let (l, h) = (ql[4 * c + i], qh[4 * c + i]);
                            let w0 = (l & 0x0f) | (((h >> (2 * t)) & 3) << 4);
                            let w1 = (l >> 4) | (((h >> (2 * t + 4)) & 3) << 4);
                            dl[c] += i32::from(w0) * i32::from(xl[i]);
                            dh[c] += i32::from(w1) * i32::from(xh[i]);
                        }
                    }
                }
                for (s, dot) in dots.iter().enumerate() {
                    for c in 0..PANEL {
                        raw[c] += scale(s, c) * dot[c];
                        corr[c] += scale(s, c) * sums[s];
                    }
                }
            }
        }
        for c in 0..PANEL {
            let d = f16_bits_to_f32(u16::from_le_bytes([
                blk[at::D + 2 * c],
                blk[at::D + 2 * c + 1],
            ]));
            match kind {
                Kind::Q4K | Kind::Q5K => {
                    let dmin = f16_bits_to_f32(u16::from_le_bytes([
                        blk[at::DMIN + 2 * c],
                        blk[at::DMIN + 2 * c + 1],
                    ]));
                    acc[c] = (raw[c] as f32).mul_add(d * dx, acc[c]);
                    acc[c] = (corr[c] as f32).mul_add(-(dmin * dx), acc[c]);
                }
                Kind::Q6K => {
                    acc[c] = ((raw[c] - 32 * corr[c]) as f32).mul_add(d * dx, acc[c]);
                }
            }
        }
    }
    acc
}
