//! CPU matrix kernels of our own: `y = x · Wᵀ` with `W` kept packed (`f32`, `bf16`, `f16`,
//! or any GGUF block type of [`QType`]), `f32` accumulation.
//!
//! Decoding is bound by how many weight bytes cross the memory bus, so the weights stay in
//! their compact form and are widened in registers. With AVX-512 the 16/32-bit formats run
//! register-blocked micro-kernels (`x86`): a tile of up to 6 activation rows (4 for the
//! quantized formats) × 4 output columns, each weight vector widened once and used for
//! every row of the tile, each activation vector for every column, so a batched decode step
//! reads `W` once and prefill does several multiply-adds per load; the next tile's weights
//! are prefetched while one is computed. `Q8_0` / `Q4_0` / `Q5_0` quantize each activation row to
//! 8 bits per 32-element block and take integer dot products per block, as llama.cpp does
//! (`qdot`; `vpdpbusd` with AVX-512 VNNI), on weights repacked at load into panels of 16
//! output columns, one column per vector lane, so a tile of up to 8 rows × 16 columns sums
//! each block exactly in integers and pays one float multiply-add per block and column.
//! `Q4_K` / `Q5_K` / `Q6_K` (most of a `Q4_K_M` / `Q5_K_M` file) are kept in panels the same way (`kpanel`),
//! against activations quantized per 256-element super-block (`Q8_K`): exact integer sums
//! per sub-block, one `vpmulld` for 16 columns' scales, one or two float multiply-adds per
//! super-block and column. The other block types (`Q4_1`, `Q5_1`, the other K-quants,
//! `IQ4_NL`, `IQ4_XS`) take activations quantized per 32- or 256-element block as llama.cpp
//! pairs them (`kdot`: `Q8_0`, `Q8_1`, `Q8_K`), with exact integer sums per group (K-quants)
//! or per 4 elements (32-element types); their portable code is compiled for AVX2 / AVX-512
//! as is, except `Q4_1`, `Q5_1`, `IQ4_NL` and `IQ4_XS`, which have AVX-512 VNNI kernels of
//! their own (`kvnni`, bit-identical to the portable code). Work is split over output columns on rayon's
//! global pool, the one burn's Flex backend uses too, so the two never oversubscribe the
//! cores.
//!
//! **Batch invariance.** One kernel serves every row count (decode, batched decode, prefill),
//! and each output element is computed by the same sequence of `f32` operations whatever
//! the other rows are: 16 lane accumulators fed in `k` order with fused multiply-adds
//! (element `k` in lane `k mod 16`; for the K-quants and other block types, exact integer
//! block sums, even blocks in lanes 0–7 and odd ones in 8–15), then summed in a fixed tree;
//! for `Q8_0` / `Q4_0` / `Q5_0`, one accumulator per output fed each block's exact integer sum in
//! block order (`qdot`), for `Q4_K` / `Q5_K` / `Q6_K` each super-block's (`kpanel`). Tiling rows
//! and columns and splitting columns over threads only change which values sit in registers
//! together, never the arithmetic, and quantizing an activation row looks at that row only,
//! so a sequence's logits are bitwise the same alone or in a batch. The SIMD kernels and the
//! portable code compute the same operations, so they agree bit for bit too (tested). No
//! `k`-blocked GEMM: it would sum in an order that depends on the shape.
//!
//! The instruction set is picked once at run time (AVX-512 [+ VNNI], else AVX2+FMA, else
//! portable code). Without AVX-512 the kernels are plain Rust that the compiler vectorizes
//! for the chosen target (the portable path computes the same fused multiply-adds in
//! software: correct, slow).

use half::{bf16, f16};
use rayon::prelude::*;

use crate::pages;
use crate::quant::{self, QK, QType};

/// Activation rows one pass over a weight block serves.
pub const ROWS_PER_PASS: usize = 4;
/// Activation rows kept hot in cache while a thread walks its output rows.
const ROW_TILE: usize = 16;
/// Output columns one register tile of the AVX-512 kernels covers.
const COL_TILE: usize = 4;
/// Activation rows kept in L2 while the AVX-512 kernels walk a run of columns.
const ROW_BLOCK: usize = 64;
/// `f32` lanes of one accumulator; element `k` of a dot product always lands in lane
/// `k mod LANES`, whatever the instruction set.
const LANES: usize = 16;

/// How a packed matrix stores its elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    F32,
    Bf16,
    F16,
    /// GGUF blocks of a quantized type, as stored in the file.
    Quant(QType),
}

impl Format {
    /// `Q8_0` blocks, the 8-bit type `quantize = "q8"` produces.
    pub const Q8_0: Format = Format::Quant(QType::Q8_0);
    /// `Q4_0` blocks, the 4-bit type `quantize = "q4"` produces.
    pub const Q4_0: Format = Format::Quant(QType::Q4_0);

    /// Lower-case name as used in logs and `ModelInfo::device`.
    pub fn name(self) -> &'static str {
        match self {
            Format::F32 => "f32",
            Format::Bf16 => "bf16",
            Format::F16 => "f16",
            Format::Quant(t) => t.lower_name(),
        }
    }
}

enum Data {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
    F16(Vec<u16>),
    Quant(QType, Vec<u8>),
    /// `Q8_0` / `Q4_0` / `Q5_0` blocks repacked into panels of 16 columns ([`qdot::to_panels`]).
    Panels(qdot::Weights, Vec<u8>),
    /// `Q4_K` / `Q5_K` / `Q6_K` blocks repacked into panels of 16 columns ([`kpanel::to_panels`]).
    KPanels(kpanel::Kind, Vec<u8>),
}

/// A copy is weights too: on huge pages like the original ([`pages`]).
impl Clone for Data {
    fn clone(&self) -> Self {
        match self {
            Data::F32(v) => Data::F32(pages::copy(v)),
            Data::Bf16(v) => Data::Bf16(pages::copy(v)),
            Data::F16(v) => Data::F16(pages::copy(v)),
            Data::Quant(t, v) => Data::Quant(*t, pages::copy(v)),
            Data::Panels(k, v) => Data::Panels(*k, pages::copy(v)),
            Data::KPanels(k, v) => Data::KPanels(*k, pages::copy(v)),
        }
    }
}

/// A weight matrix `[out, inp]` in one of the [`Format`]s.
#[derive(Clone)]
pub struct PackedMatrix {
    data: Data,
    out: usize,
    inp: usize,
}

/// Why a matrix cannot be packed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackError {
    #[error("expected {expected} elements for [{out}, {inp}], got {got}")]
    Shape {
        out: usize,
        inp: usize,
        expected: usize,
        got: usize,
    },
    #[error("{format} needs an input width that is a multiple of {block}, not {inp}")]
    Ragged {
        format: &'static str,
        block: usize,
        inp: usize,
    },
    #[error("cannot quantize to {format} at load (only q8_0 and q4_0)")]
    NoQuantizer { format: &'static str },
}

impl PackedMatrix {
    /// Packs row-major `w` (`[out, inp]`) as `format`. The 16-bit formats round to nearest;
    /// [`PackedMatrix::lossless`] keeps them only where that rounding changes nothing.
    pub fn pack(w: &[f32], out: usize, inp: usize, format: Format) -> Result<Self, PackError> {
        if w.len() != out * inp {
            return Err(PackError::Shape {
                out,
                inp,
                expected: out * inp,
                got: w.len(),
            });
        }
        let data = match format {
            Format::F32 => Data::F32(pages::copy(w)),
            Format::Bf16 => Data::Bf16(pages::collect(
                w.len(),
                w.iter().map(|&v| bf16::from_f32(v).to_bits()),
            )),
            Format::F16 => Data::F16(pages::collect(
                w.len(),
                w.iter().map(|&v| f16::from_f32(v).to_bits()),
            )),
            Format::Quant(t @ (QType::Q8_0 | QType::Q4_0)) => {
                if !inp.is_multiple_of(QK) {
                    return Err(ragged_err(format, inp));
                }
                let q = match t {
                    QType::Q8_0 => quant::quantize_q8_0(w),
                    _ => quant::quantize_q4_0(w),
                };
                let q = q.map_err(|_| ragged_err(format, inp))?;
                match qdot::Weights::of(t) {
                    Some(k) => Data::Panels(k, qdot::to_panels(&q, k, out, inp / QK)),
                    None => Data::Quant(t, q),
                }
            }
            Format::Quant(_) => {
                return Err(PackError::NoQuantizer {
                    format: format.name(),
                });
            }
        };
        Ok(PackedMatrix { data, out, inp })
    }

    /// The most compact of `f32`, `bf16`, `f16` that holds every element of `w` exactly: a
    /// checkpoint saved in 16 bits stays 16 bits (half the memory traffic of `f32`) and
    /// computes bit for bit what the `f32` copy would.
    pub fn lossless(w: &[f32], out: usize, inp: usize) -> Result<Self, PackError> {
        let exact_bf16 = w
            .iter()
            .all(|&v| bf16::from_f32(v).to_f32().to_bits() == v.to_bits());
        let format = if exact_bf16 {
            Format::Bf16
        } else if w
            .iter()
            .all(|&v| f16::from_f32(v).to_f32().to_bits() == v.to_bits())
        {
            Format::F16
        } else {
            Format::F32
        };
        Self::pack(w, out, inp, format)
    }

    /// Copies blocks already in a [`QType`]'s layout (e.g. read from a GGUF file), rows of
    /// `inp / block_elems` blocks each, into a buffer of its own ([`pages`]).
    pub fn from_blocks(
        bytes: &[u8],
        out: usize,
        inp: usize,
        format: Format,
    ) -> Result<Self, PackError> {
        let Format::Quant(t) = format else {
            return Err(ragged_err(format, inp));
        };
        if !inp.is_multiple_of(t.block_elems()) {
            return Err(ragged_err(format, inp));
        }
        let expected = out * (inp / t.block_elems()) * t.block_bytes();
        if bytes.len() != expected {
            return Err(PackError::Shape {
                out,
                inp,
                expected,
                got: bytes.len(),
            });
        }
        let blocks = inp / t.block_elems();
        let data = match (qdot::Weights::of(t), kpanel::Kind::of(t)) {
            (Some(k), _) => Data::Panels(k, qdot::to_panels(bytes, k, out, blocks)),
            (_, Some(k)) => Data::KPanels(k, kpanel::to_panels(bytes, k, out, blocks)),
            _ => Data::Quant(t, pages::copy(bytes)),
        };
        Ok(PackedMatrix { data, out, inp })
    }

    pub fn format(&self) -> Format {
        match self.data {
            Data::F32(_) => Format::F32,
            Data::Bf16(_) => Format::Bf16,
            Data::F16(_) => Format::F16,
            Data::Quant(t, _) => Format::Quant(t),
            Data::Panels(k, _) => Format::Quant(k.qtype()),
            Data::KPanels(k, _) => Format::Quant(k.qtype()),
        }
    }

    /// `[out, inp]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.out, self.inp]
    }

    /// Bytes of weight data, what one pass over the matrix reads.
    pub fn bytes(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len() * 4,
            Data::Bf16(v) | Data::F16(v) => v.len() * 2,
            Data::Quant(_, v) | Data::Panels(_, v) | Data::KPanels(_, v) => v.len(),
        }
    }

    /// The matrix as `f32`, row-major.
    pub fn to_f32(&self) -> Vec<f32> {
        if let Data::Quant(t, v) = &self.data {
            // Whole blocks by construction (`pack` / `from_blocks`).
            return t.dequantize(v).unwrap_or_default();
        }
        if let Data::Panels(k, v) = &self.data {
            let blocks = self.inp / QK;
            let raw = qdot::from_panels(v, *k, self.out, blocks);
            return k.qtype().dequantize(&raw).unwrap_or_default();
        }
        if let Data::KPanels(k, v) = &self.data {
            return kpanel::to_f32(v, *k, self.out, self.inp / quant::QK_K);
        }
        let mut out = Vec::with_capacity(self.out * self.inp);
        let mut buf = [0f32; QK];
        for o in 0..self.out {
            for b in 0..self.inp.div_ceil(QK) {
                let n = (self.inp - b * QK).min(QK);
                self.decode_block(o, b, &mut buf);
                out.extend_from_slice(&buf[..n]);
            }
        }
        out
    }

    /// `x`: `[rows, inp]` row-major → `[rows, out]`. Returns `None` when `x.len()` is not
    /// `rows × inp`.
    pub fn matmul_t(&self, x: &[f32], rows: usize) -> Option<Vec<f32>> {
        if x.len() != rows * self.inp {
            return None;
        }
        if rows == 0 || self.out == 0 {
            return Some(Vec::new());
        }
        let inp = self.inp;
        match &self.data {
            Data::Panels(k, v) => Some(qdot::matmul(v, *k, self.out, inp, x, rows)),
            Data::KPanels(k, v) => Some(kpanel::matmul(v, *k, self.out, inp, x, rows)),
            Data::Quant(t, v) => Some(kdot::matmul(v, *t, self.out, inp, x, rows)),
            Data::F32(v) => Some(self.matmul_wide(&F32Blocks { v, inp }, x, rows)),
            Data::Bf16(v) => Some(self.matmul_wide(&Bf16Blocks { v, inp }, x, rows)),
            Data::F16(v) => Some(self.matmul_wide(&F16Blocks { v, inp }, x, rows)),
        }
    }

    /// The 16/32-bit formats: `x` (`rows × inp`, checked by the caller).
    fn matmul_wide<D: Blocks>(&self, d: &D, x: &[f32], rows: usize) -> Vec<f32> {
        // Zero-padded copy of `x` to whole blocks, so every block is handled alike.
        let blocks = self.inp.div_ceil(QK);
        let width = blocks * QK;
        let padded;
        let xs: &[f32] = if width == self.inp {
            x
        } else {
            let mut p = vec![0f32; rows * width];
            for (dst, src) in p.chunks_exact_mut(width).zip(x.chunks_exact(self.inp)) {
                dst[..self.inp].copy_from_slice(src);
            }
            padded = p;
            &padded
        };
        let job = Job { xs, rows, blocks };
        #[cfg(target_arch = "x86_64")]
        if simd_level() == 2 {
            let wide = match &self.data {
                Data::F32(v) => x86::Wide::F32(v),
                Data::Bf16(v) => x86::Wide::Bf16(v),
                Data::F16(v) => x86::Wide::F16(v),
                Data::Quant(..) | Data::Panels(..) | Data::KPanels(..) => x86::Wide::None,
            };
            if !matches!(wide, x86::Wide::None) {
                return by_columns(self.out, rows, COL_TILE, |first, dst| {
                    x86::run_wide(&wide, self.inp, &job, first, dst)
                });
            }
        }
        by_columns(self.out, rows, COL_TILE, |first, dst| {
            run_best(d, &job, first, dst)
        })
    }

    /// Block `b` of row `o` of a 16/32-bit matrix as `f32` (zero past the end of a ragged
    /// row).
    fn decode_block(&self, o: usize, b: usize, w: &mut [f32; QK]) {
        let inp = self.inp;
        match &self.data {
            Data::F32(v) => F32Blocks { v, inp }.decode(o, b, w),
            Data::Bf16(v) => Bf16Blocks { v, inp }.decode(o, b, w),
            Data::F16(v) => F16Blocks { v, inp }.decode(o, b, w),
            Data::Quant(..) | Data::Panels(..) | Data::KPanels(..) => w.fill(0.0),
        }
    }
}

/// Runs `f(first, dst)` over runs of output columns on rayon's pool, `dst` being the
/// transposed result `[n, rows]` of columns `first..first + n`, and returns `[rows, out]`.
/// Every run but the last is a multiple of `align` columns (a kernel's register tile or
/// panel), so every `first` is too. The split only decides which thread computes an
/// element, never how.
fn by_columns(
    out: usize,
    rows: usize,
    align: usize,
    f: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let threads = rayon::current_num_threads().max(1);
    // Whole register tiles of columns, enough runs to balance, few enough to amortize.
    let chunk = (out / (threads * 8)).clamp(8, 256).next_multiple_of(align);
    let mut yt = vec![0f32; out * rows];
    yt.par_chunks_mut(chunk * rows)
        .enumerate()
        .for_each(|(i, dst)| f(i * chunk, dst));
    if rows == 1 {
        return yt;
    }
    // Transposed in tiles of 16 rows × 64 columns: a naive walk would touch a new page with
    // every store (a quarter of a 512-row prefill's time went there).
    const TR: usize = 16;
    const TC: usize = 64;
    let mut y = vec![0f32; rows * out];
    y.par_chunks_mut(out * TR)
        .enumerate()
        .for_each(|(i, band)| {
            let r0 = i * TR;
            for o0 in (0..out).step_by(TC) {
                for (r, dst) in band.chunks_exact_mut(out).enumerate() {
                    for (o, d) in dst.iter_mut().enumerate().skip(o0).take(TC) {
                        if let Some(&v) = yt.get(o * rows + r0 + r) {
                            *d = v;
                        }
                    }
                }
            }
        });
    y
}

/// The activations of one call, zero-padded to whole blocks.
struct Job<'a> {
    xs: &'a [f32],
    rows: usize,
    blocks: usize,
}

/// A weight matrix readable one 32-element block at a time.
trait Blocks: Sync {
    /// Block `b` of output row `o` as `f32`; zero past the row's end.
    fn decode(&self, o: usize, b: usize, w: &mut [f32; QK]);
}

/// Widens a 16/32-bit row slice with `f`, zero-filling a partial last block.
#[inline(always)]
fn widen<T: Copy>(
    v: &[T],
    inp: usize,
    o: usize,
    b: usize,
    w: &mut [f32; QK],
    f: impl Fn(T) -> f32,
) {
    let start = o * inp + b * QK;
    let n = (inp - b * QK).min(QK);
    match v.get(start..start + QK).filter(|_| n == QK) {
        Some(src) => {
            for (d, &s) in w.iter_mut().zip(src) {
                *d = f(s);
            }
        }
        None => {
            let src = v.get(start..start + n).unwrap_or_default();
            w.fill(0.0);
            for (d, &s) in w.iter_mut().zip(src) {
                *d = f(s);
            }
        }
    }
}

struct F32Blocks<'a> {
    v: &'a [f32],
    inp: usize,
}
impl Blocks for F32Blocks<'_> {
    #[inline(always)]
    fn decode(&self, o: usize, b: usize, w: &mut [f32; QK]) {
        widen(self.v, self.inp, o, b, w, |s| s);
    }
}

struct Bf16Blocks<'a> {
    v: &'a [u16],
    inp: usize,
}
impl Blocks for Bf16Blocks<'_> {
    #[inline(always)]
    fn decode(&self, o: usize, b: usize, w: &mut [f32; QK]) {
        widen(self.v, self.inp, o, b, w, |s| {
            f32::from_bits(u32::from(s) << 16)
        });
    }
}

struct F16Blocks<'a> {
    v: &'a [u16],
    inp: usize,
}
impl Blocks for F16Blocks<'_> {
    #[inline(always)]
    fn decode(&self, o: usize, b: usize, w: &mut [f32; QK]) {
        widen(self.v, self.inp, o, b, w, f16_bits_to_f32);
    }
}

/// Output rows `first..first + dst.len() / rows` into `dst` (`[n, rows]`).
#[inline(always)]
fn run<D: Blocks>(d: &D, job: &Job<'_>, first: usize, dst: &mut [f32]) {
    let rows = job.rows;
    let width = job.blocks * QK;
    let n = dst.len() / rows;
    let blocks = job.blocks;
    for tile in (0..rows).step_by(ROW_TILE) {
        let tile_end = (tile + ROW_TILE).min(rows);
        for j in 0..n {
            let o = first + j;
            let out = &mut dst[j * rows..(j + 1) * rows];
            let mut r = tile;
            while r < tile_end {
                let x = &job.xs[r * width..];
                let out = &mut out[r..];
                // Four rows keep their 8 accumulators in AVX-512 registers; more would spill.
                match tile_end - r {
                    1 => {
                        pass1(d, o, blocks, x, width, out);
                        r += 1;
                    }
                    2 | 3 => {
                        pass2(d, o, blocks, x, width, out);
                        r += 2;
                    }
                    _ => {
                        pass4(d, o, blocks, x, width, out);
                        r += ROWS_PER_PASS;
                    }
                }
            }
        }
    }
}

/// `a += w · x` lane-wise, fused: the block's first half, then its second half, into the
/// same [`LANES`] accumulators (the order the AVX-512 kernels use too).
#[inline(always)]
fn fma_block(a: &mut [f32; LANES], w: &[f32; QK], x: &[f32; QK]) {
    for half in 0..QK / LANES {
        let at = half * LANES;
        for ((a, &w), &x) in a.iter_mut().zip(&w[at..at + LANES]).zip(&x[at..at + LANES]) {
            *a = w.mul_add(x, *a);
        }
    }
}

/// `fn $name`: dot products of weight row `o` with as many activation rows as accumulators
/// are named (rows at `x[r·width..]`), written out per row so the accumulators stay in
/// registers.
macro_rules! rows_pass {
    ($name:ident, $($acc:ident $xr:ident),+) => {
        #[inline(always)]
        fn $name<D: Blocks>(
            d: &D,
            o: usize,
            blocks: usize,
            x: &[f32],
            width: usize,
            out: &mut [f32],
        ) {
            let mut rows = x.chunks(width);
            let mut n = blocks;
            $(
                let $xr: &[[f32; QK]] = rows.next().unwrap_or_default().as_chunks::<QK>().0;
                n = n.min($xr.len());
                let mut $acc = [0f32; LANES];
            )+
            let mut w = [0f32; QK];
            // `b < n ≤ len` for every row: the indexing below cannot fail, and without a
            // branch per row the accumulators stay in registers.
            for b in 0..n {
                d.decode(o, b, &mut w);
                $(
                    fma_block(&mut $acc, &w, &$xr[b]);
                )+
            }
            let mut out = out.iter_mut();
            $(
                if let Some(dst) = out.next() {
                    *dst = reduce($acc);
                }
            )+
        }
    };
}

rows_pass!(pass1, a0 x0);
rows_pass!(pass2, a0 x0, a1 x1);
rows_pass!(pass4, a0 x0, a1 x1, a2 x2, a3 x3);

fn ragged_err(format: Format, inp: usize) -> PackError {
    PackError::Ragged {
        format: format.name(),
        block: match format {
            Format::Quant(t) => t.block_elems(),
            _ => QK,
        },
        inp,
    }
}

/// Sums the lanes in a fixed tree (the order is part of the batch-invariance contract).
#[inline(always)]
fn reduce<const N: usize>(mut a: [f32; N]) -> f32 {
    let mut half = N / 2;
    while half > 0 {
        for i in 0..half {
            a[i] += a[i + half];
        }
        half /= 2;
    }
    a[0]
}

/// `f16` → `f32` without table or branch (vectorizes): the exponent is rebased by a
/// multiplication by 2¹¹², exact for normal and subnormal values; Inf/NaN are patched.
#[inline(always)]
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let sign = (h & 0x8000) << 16;
    let em = h & 0x7fff;
    let scaled = (f32::from_bits(em << 13) * f32::from_bits(0x7780_0000)).to_bits();
    let bits = if em >= 0x7c00 {
        0x7f80_0000 | ((em & 0x03ff) << 13)
    } else {
        scaled
    };
    f32::from_bits(bits | sign)
}

/// The instruction set level found at run time: 2 = AVX-512, 1 = AVX2 + FMA, 0 = neither.
fn simd_level() -> u8 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static LEVEL: OnceLock<u8> = OnceLock::new();
        *LEVEL.get_or_init(|| {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
            {
                2
            } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                1
            } else {
                0
            }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    0
}

/// Whether the AVX-512 level also has the 8-bit dot products (`vpdpbusd`) the quantized
/// kernels use (and F16C, which every such CPU has, for their block scales).
#[cfg(target_arch = "x86_64")]
fn vnni() -> bool {
    use std::sync::OnceLock;
    static VNNI: OnceLock<bool> = OnceLock::new();
    *VNNI.get_or_init(|| {
        simd_level() == 2
            && is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("f16c")
    })
}

/// Whether the CPU converts `f16` in vectors (F16C, which every AVX2 CPU but a few early
/// ones has), for the AVX2 `Q8_0`/`Q4_0` kernel's block scales (std caches the answer).
#[cfg(target_arch = "x86_64")]
fn f16c() -> bool {
    is_x86_feature_detected!("f16c")
}

/// [`run`] compiled for the best instruction set this CPU has.
fn run_best<D: Blocks>(d: &D, job: &Job<'_>, first: usize, dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match simd_level() {
        2 => return x86::run_v4(d, job, first, dst),
        1 => return x86::run_v3(d, job, first, dst),
        _ => {}
    }
    run(d, job, first, dst)
}

/// Asks for the cache line at `p`, which a kernel reads next (the same spot one tile of
/// weight rows ahead): into L2 (`prefetcht1`) when the kernel multiplies a single
/// activation row, into L1 (`prefetcht0`) when it multiplies several. A single row streams
/// its weights from DRAM with little work per byte, and on this VM one core then holds only
/// ~10 GB/s in flight; prefetches into L1 take the L1's few miss buffers, which the
/// kernel's own loads wait for. `kernel-bench --rows 1` (1B shapes, weights from DRAM, 2
/// threads, alternated twice): Q6_K 23–24 → 28–32 tok/s, bf16 12–13 → 15–16, Q8_0 20–21 →
/// 21–24, Q5_0 20–25 → 26–27; Q4_K was 10 % slower with `T1` and keeps `T0`; with 16 or 512
/// rows `T1` gave nothing or lost up to 10 %. A prefetch never faults: `p` may lie past the
/// matrix's end.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[expect(
    unsafe_code,
    reason = "an SSE intrinsic outside a #[target_feature] function"
)]
fn prefetch_ahead(p: *const u8, one_row: bool) {
    use std::arch::x86_64::{_MM_HINT_T0, _MM_HINT_T1, _mm_prefetch};
    // SAFETY: SSE is part of the x86-64 baseline; a prefetch reads nothing and never faults.
    unsafe {
        if one_row {
            _mm_prefetch::<_MM_HINT_T1>(p.cast());
        } else {
            _mm_prefetch::<_MM_HINT_T0>(p.cast());
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86;

pub mod attend;
mod kdot;
mod kpanel;
#[cfg(target_arch = "x86_64")]
mod kvnni;
mod qdot;

#[cfg(test)]
mod tests;
