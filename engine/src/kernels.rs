//! CPU matrix kernels of our own: `y = x · Wᵀ` with `W` kept packed (`f32`, `bf16`, `f16`,
//! or any GGUF block type of [`QType`]), `f32` accumulation.
//!
//! Decoding is bound by how many weight bytes cross the memory bus, so the weights stay in
//! their compact form and are widened in registers. The common formats are repacked at load
//! into panels of 16 output columns, one column per vector lane, so that a register tile of
//! several activation rows × 16 or 32 columns loads each weight once for all its rows:
//! a batched decode step reads `W` once and prefill does many multiply-adds per load.
//! `f32` / `bf16` / `f16` (`wpanel`): per `k`, 16 columns' weights widened to `f32` and one
//! fused multiply-add per row and column with the row's `x_k` broadcast, up to 12 rows × 32
//! columns per tile. `Q8_0` / `Q4_0` / `Q5_0` quantize each activation row to
//! 8 bits per 32-element block and take integer dot products per block, as llama.cpp does
//! (`qdot`; `vpdpbusd` with AVX-512 VNNI), so a tile of up to 8 rows × 16 columns sums
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
//! the other rows are: for `f32` / `bf16` / `f16`, one accumulator fed element by element
//! in `k` order with fused multiply-adds (`wpanel`); for `Q8_0` / `Q4_0` / `Q5_0`, one
//! accumulator per output fed each block's exact integer sum in block order (`qdot`), for
//! `Q4_K` / `Q5_K` / `Q6_K` each super-block's (`kpanel`); for the other block types, 16
//! lane accumulators of exact integer block sums (even blocks in lanes 0–7 and odd ones in
//! 8–15) summed in a fixed tree (`kdot`). Tiling rows and columns and splitting columns
//! over threads only change which values sit in registers together, never the arithmetic,
//! and quantizing an activation row looks at that row only, so a sequence's logits are
//! bitwise the same alone or in a batch. The SIMD kernels and the portable code compute the
//! same operations, so they agree bit for bit too (tested). No `k`-blocked GEMM: it would
//! sum in an order that depends on the shape.
//!
//! The instruction set is picked once at run time (AVX-512 [+ VNNI], else AVX2+FMA, else
//! portable code). The portable code is plain Rust that the compiler vectorizes (on x86
//! without FMA it computes the same fused multiply-adds in software: correct, slow).

use half::{bf16, f16};
use rayon::prelude::*;

use wpanel::Elem;

use crate::pages;
use crate::quant::{self, QK, QType};

/// Output columns one register tile of the `kdot` / `kvnni` kernels covers.
const COL_TILE: usize = 4;
/// Activation rows kept in L2 while the quantized kernels walk a run of columns.
const ROW_BLOCK: usize = 64;
/// `f32` lanes of one `kdot` accumulator, whatever the instruction set.
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
    /// `f32` / `bf16` / `f16` in panels of 16 columns ([`wpanel::to_panels`]).
    Wide(wpanel::Elem, Vec<u8>),
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
            Data::Wide(e, v) => Data::Wide(*e, pages::copy(v)),
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
            Format::F32 => Data::Wide(Elem::F32, wpanel::to_panels(w, Elem::F32, out, inp)),
            Format::Bf16 => Data::Wide(Elem::Bf16, wpanel::to_panels(w, Elem::Bf16, out, inp)),
            Format::F16 => Data::Wide(Elem::F16, wpanel::to_panels(w, Elem::F16, out, inp)),
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
            Data::Wide(Elem::F32, _) => Format::F32,
            Data::Wide(Elem::Bf16, _) => Format::Bf16,
            Data::Wide(Elem::F16, _) => Format::F16,
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
            Data::Wide(e, _) => self.out * self.inp * e.bytes(),
            Data::Quant(_, v) | Data::Panels(_, v) | Data::KPanels(_, v) => v.len(),
        }
    }

    /// The matrix as `f32`, row-major.
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            Data::Wide(e, v) => wpanel::to_f32(v, *e, self.out, self.inp),
            // Whole blocks by construction (`pack` / `from_blocks`).
            Data::Quant(t, v) => t.dequantize(v).unwrap_or_default(),
            Data::Panels(k, v) => {
                let raw = qdot::from_panels(v, *k, self.out, self.inp / QK);
                k.qtype().dequantize(&raw).unwrap_or_default()
            }
            Data::KPanels(k, v) => kpanel::to_f32(v, *k, self.out, self.inp / quant::QK_K),
        }
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
            Data::Wide(e, v) => Some(wpanel::matmul(v, *e, self.out, inp, x, rows)),
        }
    }
}

/// Runs `f(first, cols)` over runs of output columns on rayon's pool, `cols` being columns
/// `first..first + cols.len()` of the row-major result `[rows, out]`, which it returns. Runs
/// are split as [`by_columns`] splits them (multiples of `align` but the last). The panel
/// kernels write each tile's rows straight into the result, 16 columns at a time: no
/// transposed copy, no scatter (both were ~16 % of a small model's prefill).
fn by_panels(
    out: usize,
    rows: usize,
    align: usize,
    f: impl Fn(usize, &mut Cols<'_>) + Sync,
) -> Vec<f32> {
    grid(out, rows, run_columns(out, align), 1, |_, first, cols| {
        f(first, cols)
    })
}

/// [`by_panels`] for kernels that also take a range of activation rows: `f(rows, first,
/// cols)`, `cols` being that range's rows of the columns. A long prompt (at least 2 bands of
/// `band` rows per thread, the kernel's own row blocking; the engine prefills in chunks of
/// 256) is split into 2 bands of rows per thread × 2 runs of columns, so that the activations are read twice and each weight
/// 2 × threads times, instead of the activations once per run of 256 columns or fewer (9
/// runs of a small model's 576-wide projections, 8–32 of a 1B model's).
fn by_tiles(
    out: usize,
    rows: usize,
    align: usize,
    band: usize,
    f: impl Fn(std::ops::Range<usize>, usize, &mut Cols<'_>) + Sync,
) -> Vec<f32> {
    let threads = rayon::current_num_threads().max(1);
    if threads > 1 && rows >= 2 * band * threads {
        let chunk = out.div_ceil(2).next_multiple_of(align);
        return grid(out, rows, chunk, 2 * threads, f);
    }
    grid(out, rows, run_columns(out, align), 1, f)
}

/// Columns per run of [`by_columns`] / [`by_panels`]: whole register tiles or panels
/// (`align`), enough runs to balance the pool's threads, few enough to amortize.
fn run_columns(out: usize, align: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    (out / (threads * 8)).clamp(8, 256).next_multiple_of(align)
}

/// Runs `f(rows, first, cols)` over `bands` bands of rows × runs of `chunk` columns.
fn grid(
    out: usize,
    rows: usize,
    chunk: usize,
    bands: usize,
    f: impl Fn(std::ops::Range<usize>, usize, &mut Cols<'_>) + Sync,
) -> Vec<f32> {
    let mut y = vec![0f32; out * rows];
    let shared = Shared(y.as_mut_ptr());
    let runs = out.div_ceil(chunk.max(1));
    let band = rows.div_ceil(bands.max(1)).max(1);
    (0..runs * rows.div_ceil(band))
        .into_par_iter()
        .for_each(|i| {
            let (b, run) = (i / runs, i % runs);
            let (r0, first) = (b * band, run * chunk);
            let mut cols = Cols {
                y: shared.ptr(),
                out,
                r0,
                rows: band.min(rows - r0),
                first,
                n: chunk.min(out - first),
                _y: std::marker::PhantomData,
            };
            f(r0..r0 + cols.rows, first, &mut cols);
        });
    y
}

/// The result's buffer, shared by [`grid`]'s runs, each writing only its own part.
struct Shared(*mut f32);

impl Shared {
    /// The buffer (a method, so that closures capture the `Sync` wrapper, not the pointer).
    fn ptr(&self) -> *mut f32 {
        self.0
    }
}

// SAFETY: the runs of `grid` write disjoint parts of the buffer (see `Cols::put`),
// and the buffer outlives them (`for_each` returns after every run).
#[expect(
    unsafe_code,
    reason = "a pointer shared by runs that write disjoint elements"
)]
unsafe impl Sync for Shared {}

/// Rows `r0..r0 + rows` × columns `first..first + n` of a row-major result `[_, out]`: one
/// run of [`grid`], which no other run writes.
pub(super) struct Cols<'a> {
    y: *mut f32,
    out: usize,
    /// The first row.
    r0: usize,
    rows: usize,
    first: usize,
    n: usize,
    _y: std::marker::PhantomData<&'a mut [f32]>,
}

impl Cols<'_> {
    /// Columns in the run.
    pub(super) fn len(&self) -> usize {
        self.n
    }

    /// `vals` into row `r` (of the run's rows) from the run's column `c` on; what falls past
    /// the run's last column (a matrix's padded last panel) or outside the rows is dropped.
    #[inline]
    #[expect(unsafe_code, reason = "a write into the run's own columns")]
    pub(super) fn put(&mut self, r: usize, c: usize, vals: &[f32]) {
        if r >= self.rows || c >= self.n {
            return;
        }
        let k = vals.len().min(self.n - c);
        // SAFETY: row `r0 + r < r0 + rows ≤` the result's rows, columns
        // `first + c..first + c + k ≤ first + n ≤ out`: inside the result, and inside this
        // run's rows and columns, which no other run writes; `vals` is a separate slice.
        unsafe {
            std::ptr::copy_nonoverlapping(
                vals.as_ptr(),
                self.y.add((self.r0 + r) * self.out + self.first + c),
                k,
            );
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
    let chunk = run_columns(out, align);
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
mod wpanel;

#[cfg(test)]
mod tests;
