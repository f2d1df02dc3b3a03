//! Attention over a batched step: the per-sequence KV cache, the step's layout ([`Batch`]:
//! every item's new rows stacked into one `[rows, hidden]` activation, with per-item RoPE
//! tables and masks) and grouped-query attention ([`Attention`]) with the options the
//! supported architectures need: q/k RMSNorm per head, logit soft-capping, a sliding window.
//!
//! Projections run once per layer for the whole batch, and so do RoPE and the cache writes.
//! Attention on the CPU reads each item's pages in place, one task per (query row, KV head)
//! ([`attend::attend`]: no score or mask tensors, each row's bits independent of how the step
//! is cut). On a GPU the cache is pages of one pool per model ([`crate::layers::gpu_pages`]): every
//! one-token row of the step (the decodes) attends in one batched product over the keys
//! gathered from the pool, padded to the longest and masked; a prompt chunk attends over its
//! own gathered keys with a causal mask (burn ops, `[kv_heads, group × n, keys]` scores).

use std::sync::Arc;

use burn::tensor::activation::softmax;
use burn::tensor::{DType, Device, FloatDType, Int, Tensor, TensorData};
use half::f16;
use rayon::prelude::*;

use crate::EngineError;
use crate::kernels::attend::{self, Elem, Page};
use crate::layers::gpu_pages::{GpuPool, PageTable};
use crate::layers::norm::RmsNorm;
use crate::layers::rope::{self, Rope};
use crate::spec::KvCacheDtype;
use crate::weights::RowTable;

pub(crate) fn inference(e: impl std::fmt::Display) -> EngineError {
    EngineError::Inference(e.to_string())
}

/// The keys and values of every position a sequence has seen, per layer.
///
/// On the CPU a layer's cache is a table of fixed-size pages ([`attend::PAGE`] positions,
/// the KV budget's block size, so the memory a sequence holds is the block count the
/// scheduler accounts for), each shared by reference count: a fork (OpenAI's `n`, a cached
/// prompt prefix) shares every page, and the first write to a shared page copies that page
/// only. Pages hold `f16` (the default) or `f32`, the cache's [`KvCacheDtype`]; attention
/// reads them in place ([`attend::attend`]), widening each element to `f32`.
///
/// On a GPU it is a table of pages of the model's pool ([`crate::layers::gpu_pages`]), shared and copied
/// on write the same way, one table for all layers.
pub struct KvCache {
    layers: Vec<LayerKv>,
    /// The GPU's pages (`None` on the CPU).
    gpu: Option<PageTable>,
    len: usize,
    /// The pages' element type (the CPU's; GPU pages are the model's compute type).
    dtype: KvCacheDtype,
}

#[derive(Clone)]
enum LayerKv {
    Empty,
    Half(Vec<Page<f16>>),
    Single(Vec<Page<f32>>),
}

/// One layer's pages, of the cache's element type.
#[derive(Clone, Copy)]
enum Pages<'a> {
    Half(&'a [Page<f16>]),
    Single(&'a [Page<f32>]),
}

impl KvCache {
    /// An empty cache for a model of `layers` layers, whose CPU pages hold `dtype`.
    pub fn new(layers: usize, dtype: KvCacheDtype) -> KvCache {
        KvCache {
            layers: vec![LayerKv::Empty; layers],
            gpu: None,
            len: 0,
            dtype,
        }
    }

    /// An empty cache whose positions will live in pages of `pool` (a GPU model's).
    pub fn on_gpu(layers: usize, pool: &Arc<GpuPool>) -> KvCache {
        KvCache {
            gpu: Some(PageTable::new(pool)),
            ..KvCache::new(layers, KvCacheDtype::F16)
        }
    }

    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// A copy for another sequence with the same prefix (OpenAI's `n`: samples forked after
    /// one prefill). Pages are shared until either side writes its next position, which
    /// then copies the page it writes to: no write is ever seen by both.
    pub fn fork(&self) -> KvCache {
        KvCache {
            layers: self.layers.clone(),
            gpu: self.gpu.clone(),
            len: self.len,
            dtype: self.dtype,
        }
    }

    /// Keeps only the first `len` positions (a cached prompt prefix reused by a longer
    /// prompt): the next append writes from `len` on. Pages past them are released.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        let keep = self.len.div_ceil(attend::PAGE);
        for layer in &mut self.layers {
            match layer {
                LayerKv::Half(pages) => pages.truncate(keep),
                LayerKv::Single(pages) => pages.truncate(keep),
                LayerKv::Empty => {}
            }
        }
        if let Some(table) = &mut self.gpu {
            table.truncate(self.len);
        }
    }

    /// Claims `len` positions without computing them (bookkeeping tests).
    #[cfg(test)]
    pub(crate) fn set_len_for_tests(&mut self, len: usize) {
        self.len = len;
    }

    /// Drops every cached position (recompute preemption), keeping the layer count.
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = LayerKv::Empty);
        if let Some(table) = &mut self.gpu {
            table.clear();
        }
        self.len = 0;
    }

    /// The pages of `layer` (none before its first append).
    fn pages(&self, layer: usize) -> Pages<'_> {
        match self.layers.get(layer) {
            Some(LayerKv::Half(pages)) => Pages::Half(pages),
            Some(LayerKv::Single(pages)) => Pages::Single(pages),
            _ => Pages::Half(&[]),
        }
    }

    /// Writes the keys and values of `n` new positions from `past` on into the pages of
    /// `layer`: `k` and `v` are the step's rows (`[rows, kv_heads × head_dim]`), this
    /// sequence's at rows `offset..offset + n`.
    fn append_pages(
        &mut self,
        layer: usize,
        spec: &attend::Spec,
        past: usize,
        n: usize,
        rows: (&[f32], &[f32], usize),
    ) -> Result<(), EngineError> {
        let dtype = self.dtype;
        let slot = self
            .layers
            .get_mut(layer)
            .ok_or_else(|| inference(format!("the cache has no layer {layer}")))?;
        if matches!(slot, LayerKv::Empty) {
            *slot = match dtype {
                KvCacheDtype::F16 => LayerKv::Half(Vec::new()),
                KvCacheDtype::F32 => LayerKv::Single(Vec::new()),
            };
        }
        let written = match (dtype, slot) {
            (KvCacheDtype::F16, LayerKv::Half(pages)) => write_pages(pages, spec, past, n, rows),
            (KvCacheDtype::F32, LayerKv::Single(pages)) => write_pages(pages, spec, past, n, rows),
            _ => return Err(inference("the cache layer's pages are not of its type")),
        };
        written.map_err(|e| match e {
            PagesError::Short => inference(format!(
                "the cache of layer {layer} holds fewer than {past} positions"
            )),
            PagesError::OutsideStep => inference("a key or value row is outside the step"),
        })
    }
}

/// Whether a model on `device` computing in `dtype` caches in host pages read by
/// [`attend::attend`] (the CPU backend), not in a GPU pool.
pub(crate) fn is_paged(device: &Device, dtype: DType) -> bool {
    *device == Device::flex() && dtype == DType::F32
}

/// Why [`write_pages`] wrote nothing.
enum PagesError {
    /// The pages hold fewer than `past` positions.
    Short,
    /// A row of the step is missing.
    OutsideStep,
}

/// Writes the keys and values of `n` new positions from `past` on into `pages`, rounded to
/// the pages' element type: `k` and `v` are the step's rows (`[rows, kv_heads × head_dim]`),
/// this sequence's at rows `offset..offset + n`.
fn write_pages<E: Elem>(
    pages: &mut Vec<Page<E>>,
    spec: &attend::Spec,
    past: usize,
    n: usize,
    rows: (&[f32], &[f32], usize),
) -> Result<(), PagesError> {
    let (k, v, offset) = rows;
    let hd = spec.head_dim;
    let width = spec.kv_heads * hd;
    let total = past + n;
    if pages.len() < past.div_ceil(attend::PAGE) {
        return Err(PagesError::Short);
    }
    pages.truncate(total.div_ceil(attend::PAGE));
    while pages.len() < total.div_ceil(attend::PAGE) {
        pages.push(vec![E::default(); spec.page_len()].into());
    }
    for i in 0..n {
        let pos = past + i;
        let row = (offset + i) * width;
        let (Some(krow), Some(vrow)) = (k.get(row..row + width), v.get(row..row + width)) else {
            return Err(PagesError::OutsideStep);
        };
        let page = Arc::make_mut(&mut pages[pos / attend::PAGE]);
        for h in 0..spec.kv_heads {
            for (d, &x) in krow[h * hd..(h + 1) * hd].iter().enumerate() {
                page[spec.key_at(pos, h, d).1] = E::narrow(x);
            }
            let (_, at) = spec.value_at(pos, h);
            for (o, &x) in page[at..at + hd]
                .iter_mut()
                .zip(&vrow[h * hd..(h + 1) * hd])
            {
                *o = E::narrow(x);
            }
        }
    }
    Ok(())
}

/// One sequence's part of a batched forward pass.
pub struct BatchItem<'a> {
    /// The new tokens, after the positions already in `cache`.
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
    /// What the pass returns for this item.
    pub want: Want,
}

/// What a forward pass returns for one item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Nothing (a prefill chunk that does not end its prompt).
    Nothing,
    /// The logits of the last new position (the chunk that ends a prompt, a decode).
    Logits,
    /// The logits of every new position, row-major `[new tokens, vocab]`: a speculative
    /// decoding step verifying its draft. Each new position attends as a one-token decode
    /// at that position would (its own query alone over its keys, no mask), so its logits
    /// are bitwise the ones a plain decode step computes (the projections are batch
    /// invariant: `kernels.rs`).
    AllLogits,
    /// The final hidden state (after the final norm, before the LM head) of every new
    /// position, row-major `[new tokens, hidden]`: what embeddings are pooled from.
    Hidden,
}

/// Where an item's rows sit in the stacked activation, and its per-position tables.
struct Span {
    offset: usize,
    n: usize,
    past: usize,
    /// `(cos, sin)` rows `[n, rotary_dim]` per RoPE schedule of the model (CPU).
    host_rope: Vec<(Vec<f32>, Vec<f32>)>,
}

/// The layout of one batched step.
pub struct Batch {
    spans: Vec<Span>,
    /// [`BatchShape::windows`].
    windows: Vec<Option<usize>>,
    /// The GPU path: where the step reads and writes the pool. `None` on the CPU path: host
    /// pages read in place by [`attend::attend`], RoPE on the host, no mask tensors (a window
    /// is a key range).
    gpu: Option<GpuStep>,
}

/// A step's addresses in a GPU pool, the same for every layer.
struct GpuStep {
    pool: Arc<GpuPool>,
    /// `(cos, sin)` `[rows, 1, rotary_dim]` per RoPE schedule: every row's position.
    rope: Vec<(Tensor<3>, Tensor<3>)>,
    /// The pool slot each row's key and value go to, `[rows]`.
    write: Tensor<1, Int>,
    /// The rows that attend as one-token decodes, together.
    decode: Option<DecodeRows>,
    /// The prompt chunks of more than one row, each over its own keys.
    chunks: Vec<Chunk>,
    /// Where each row of the step is in `[decode rows, chunk rows…]`, when that is not
    /// the step's order.
    order: Option<Tensor<1, Int>>,
}

/// One-token rows (decodes, and each row of a [`Want::AllLogits`] item: a one-token decode
/// at its position) attending in one product: each over its own keys, gathered from the
/// pool and padded to the longest with masked slots.
struct DecodeRows {
    /// Their rows in the step (`None`: every row, in order).
    rows: Option<Tensor<1, Int>>,
    count: usize,
    /// Keys per row after padding.
    keys: usize,
    /// Pool slots `[count × keys]`: row `r`'s keys, then padding.
    gather: Tensor<1, Int>,
    /// Per window of the model, the additive mask `[count, 1, 1, keys]` (`None`: nothing
    /// to mask).
    masks: Vec<Option<Tensor<4>>>,
}

/// A prompt chunk of `n` > 1 rows attending causally over its item's keys.
struct Chunk {
    offset: usize,
    n: usize,
    /// Pool slots of positions `0..past + n`.
    gather: Tensor<1, Int>,
    /// Per window of the model, the additive mask `[1, group × n, past + n]`.
    masks: Vec<Option<Tensor<3>>>,
}

/// What [`Batch::new`] prepares per item: the model's RoPE schedules and attention windows
/// (`None` = full causal attention), indexed by [`Attention::rope`] and [`Attention::window`].
pub struct BatchShape<'a> {
    pub context_length: usize,
    pub ropes: &'a [&'a Rope],
    pub windows: &'a [Option<usize>],
    /// Query heads per kv head.
    pub group: usize,
    pub device: &'a Device,
    pub dtype: DType,
}

impl Batch {
    /// Embeds every item's new tokens (rows of `embed`) and prepares its RoPE tables (and,
    /// on a GPU, its pages, slots and masks); returns the layout and the stacked embeddings
    /// `[rows, hidden]`.
    pub fn new(
        items: &mut [BatchItem<'_>],
        embed: &RowTable,
        hidden: usize,
        shape: &BatchShape<'_>,
    ) -> Result<(Batch, Tensor<2>), EngineError> {
        let mut rows = Vec::new();
        let mut spans = Vec::with_capacity(items.len());
        let mut offset = 0;
        for item in items.iter() {
            let n = item.tokens.len();
            if n == 0 {
                return Err(inference("forward called with no tokens"));
            }
            let past = item.cache.len;
            if past + n > shape.context_length {
                return Err(EngineError::Inference(format!(
                    "sequence of {} tokens exceeds the context length {}",
                    past + n,
                    shape.context_length
                )));
            }
            for &t in item.tokens {
                embed.push_row(t as usize, &mut rows).ok_or_else(|| {
                    EngineError::InvalidRequest {
                        param: "prompt",
                        reason: format!(
                            "token id {t} is outside the vocabulary ({})",
                            embed.rows()
                        ),
                    }
                })?;
            }
            spans.push(Span {
                offset,
                n,
                past,
                host_rope: shape.ropes.iter().map(|r| r.host_tables(past, n)).collect(),
            });
            offset += n;
        }
        let gpu = (!is_paged(shape.device, shape.dtype))
            .then(|| GpuStep::new(items, &spans, shape))
            .transpose()?;
        let x = Tensor::from_data(
            TensorData::new(rows, [offset, hidden]),
            (shape.device, shape.dtype),
        );
        let batch = Batch {
            spans,
            windows: shape.windows.to_vec(),
            gpu,
        };
        Ok((batch, x))
    }

    /// Ends the step: records the new cache lengths and returns, per item, what it wants
    /// ([`Want`]): the logits of its last position (`norm` then `head` map final rows of `x`
    /// to logits; they run once, on those rows only), or the normed rows of all its
    /// positions.
    pub fn finish(
        self,
        items: &mut [BatchItem<'_>],
        x: Tensor<2>,
        norm: impl Fn(Tensor<2>) -> Tensor<2>,
        head: impl FnOnce(Tensor<2>) -> Tensor<2>,
    ) -> Result<Vec<Option<Vec<f32>>>, EngineError> {
        for (item, sp) in items.iter_mut().zip(&self.spans) {
            item.cache.len = sp.past + sp.n;
        }
        let mut out = vec![None; items.len()];
        for ((slot, item), sp) in out.iter_mut().zip(items.iter()).zip(&self.spans) {
            if item.want == Want::Hidden {
                let rows = norm(x.clone().narrow(0, sp.offset, sp.n))
                    .try_into_vec_as::<f32>()
                    .map_err(|e| inference(format!("{e:?}")))?;
                *slot = Some(rows);
            }
        }
        // (first row, rows) of every item that wants logits.
        let wanted: Vec<(usize, usize)> = items
            .iter()
            .zip(&self.spans)
            .filter_map(|(item, sp)| match item.want {
                Want::Logits => Some((sp.offset + sp.n - 1, 1)),
                Want::AllLogits => Some((sp.offset, sp.n)),
                Want::Nothing | Want::Hidden => None,
            })
            .collect();
        if wanted.is_empty() {
            return Ok(out);
        }
        let mut last: Vec<Tensor<2>> = wanted
            .iter()
            .map(|&(r, n)| x.clone().narrow(0, r, n))
            .collect();
        let last = if last.len() == 1 {
            last.pop().ok_or_else(|| inference("empty batch"))?
        } else {
            Tensor::cat(last, 0)
        };
        let flat = head(norm(last))
            .try_into_vec_as::<f32>()
            .map_err(|e| inference(format!("{e:?}")))?;
        let rows: usize = wanted.iter().map(|&(_, n)| n).sum();
        let vocab = flat.len() / rows;
        let mut rest = flat.as_slice();
        let mut wanted = wanted.iter();
        for (slot, item) in out.iter_mut().zip(items.iter()) {
            if matches!(item.want, Want::Logits | Want::AllLogits)
                && let Some(&(_, n)) = wanted.next()
            {
                let (mine, tail) = rest.split_at((n * vocab).min(rest.len()));
                *slot = Some(mine.to_vec());
                rest = tail;
            }
        }
        Ok(out)
    }
}

impl GpuStep {
    /// Takes the pages every item's new positions need (copying shared ones) and lays out
    /// the step's slots, gathers and masks.
    fn new(
        items: &mut [BatchItem<'_>],
        spans: &[Span],
        shape: &BatchShape<'_>,
    ) -> Result<GpuStep, EngineError> {
        let rows: usize = spans.iter().map(|s| s.n).sum();
        let mut pool: Option<Arc<GpuPool>> = None;
        let mut write = Vec::with_capacity(rows);
        // One-token rows: (row in the step, its item's slots in `item_slots`, keys it sees).
        let mut decode: Vec<(usize, usize, usize)> = Vec::new();
        let mut item_slots: Vec<Vec<usize>> = Vec::new();
        let mut chunks = Vec::new();
        let mut order = Vec::with_capacity(rows);
        for (item, sp) in items.iter_mut().zip(spans) {
            let table = item
                .cache
                .gpu
                .as_mut()
                .ok_or_else(|| inference("a GPU step got a cache without a page table"))?;
            let pool = pool.get_or_insert_with(|| Arc::clone(table.pool()));
            if !Arc::ptr_eq(pool, table.pool()) {
                return Err(inference("a step's caches are in different KV pools"));
            }
            table.prepare(sp.past, sp.n)?;
            let total = sp.past + sp.n;
            let slots = (0..total)
                .map(|p| table.slot(p))
                .collect::<Option<Vec<usize>>>()
                .ok_or_else(|| inference("a position has no page after its table was prepared"))?;
            write.extend_from_slice(&slots[sp.past..]);
            if sp.n == 1 || item.want == Want::AllLogits {
                for i in 0..sp.n {
                    decode.push((sp.offset + i, item_slots.len(), sp.past + i + 1));
                }
                item_slots.push(slots);
            } else {
                chunks.push(Chunk {
                    offset: sp.offset,
                    n: sp.n,
                    gather: pool.index(slots),
                    masks: shape
                        .windows
                        .iter()
                        .map(|w| mask(sp.past, sp.n, shape.group, *w, shape.device))
                        .collect(),
                });
            }
        }
        let pool = pool.ok_or_else(|| inference("empty batch"))?;
        order.extend(decode.iter().map(|&(row, _, _)| row));
        for c in &chunks {
            order.extend(c.offset..c.offset + c.n);
        }
        let decode = (!decode.is_empty()).then(|| {
            let count = decode.len();
            let keys = decode.iter().map(|&(_, _, len)| len).max().unwrap_or(1);
            let mut gather = Vec::with_capacity(count * keys);
            for &(_, item, len) in &decode {
                let slots = &item_slots[item];
                gather.extend_from_slice(&slots[..len]);
                gather.extend(std::iter::repeat_n(slots[0], keys - len));
            }
            let masks = shape
                .windows
                .iter()
                .map(|w| {
                    // Row r sees keys first..len: the last `window` of its `len`.
                    let seen = |len: usize| (w.map_or(0, |w| len.saturating_sub(w)), len);
                    if decode.iter().all(|&(_, _, len)| seen(len) == (0, keys)) {
                        return None;
                    }
                    let mut data = Vec::with_capacity(count * keys);
                    for &(_, _, len) in &decode {
                        let (first, end) = seen(len);
                        data.extend((0..keys).map(|j| {
                            if (first..end).contains(&j) {
                                0.0
                            } else {
                                f32::NEG_INFINITY
                            }
                        }));
                    }
                    Some(Tensor::from_data(
                        TensorData::new(data, [count, 1, 1, keys]),
                        (shape.device, DType::F32),
                    ))
                })
                .collect();
            let all = count == rows && decode.iter().enumerate().all(|(i, d)| d.0 == i);
            DecodeRows {
                rows: (!all).then(|| pool.index(decode.iter().map(|d| d.0).collect())),
                count,
                keys,
                gather: pool.index(gather),
                masks,
            }
        });
        // `order` lists the step's rows in the order attention computes them; the output
        // needs, for each step row, its place in that order.
        let identity = order.iter().enumerate().all(|(i, &r)| i == r);
        let order = (!identity).then(|| {
            let mut place = vec![0; rows];
            for (i, &r) in order.iter().enumerate() {
                place[r] = i;
            }
            pool.index(place)
        });
        let rope = (0..shape.ropes.len())
            .map(|r| {
                let (mut cos, mut sin) = (Vec::new(), Vec::new());
                for sp in spans {
                    let (c, s) = &sp.host_rope[r];
                    cos.extend_from_slice(c);
                    sin.extend_from_slice(s);
                }
                let rd = cos.len() / rows.max(1);
                let make = |d: Vec<f32>| {
                    Tensor::<3>::from_data(
                        TensorData::new(d, [rows, 1, rd]),
                        (shape.device, shape.dtype),
                    )
                };
                (make(cos), make(sin))
            })
            .collect();
        Ok(GpuStep {
            write: pool.index(write),
            pool,
            rope,
            decode,
            chunks,
            order,
        })
    }
}

/// Additive mask `[1, group × n, past + n]`: row `g·n + i` is query position `past + i`,
/// which may see keys `0..=past + i` (and, with a `window`, only the last `window` of them).
/// `None` when nothing is masked: one new position with every cached key in view.
fn mask(
    past: usize,
    n: usize,
    group: usize,
    window: Option<usize>,
    device: &Device,
) -> Option<Tensor<3>> {
    let total = past + n;
    let windowed = window.is_some_and(|w| total > w);
    if n == 1 && !windowed {
        return None;
    }
    let mut data = Vec::with_capacity(group * n * total);
    for _ in 0..group {
        for i in 0..n {
            let q = past + i;
            data.extend((0..total).map(|j| {
                let hidden = j > q || window.is_some_and(|w| q - j >= w);
                if hidden { f32::NEG_INFINITY } else { 0.0 }
            }));
        }
    }
    Some(Tensor::from_data(
        TensorData::new(data, [1, group * n, total]),
        (device, DType::F32),
    ))
}

/// Grouped-query attention settings of one layer.
pub struct Attention {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies q·k (`1/√head_dim` unless the architecture says otherwise).
    pub scale: f64,
    /// Gemma 2's attention logit soft-cap: `cap · tanh(scores / cap)` before the mask.
    pub softcap: Option<f64>,
    /// Which of the batch's RoPE schedules this layer uses ([`BatchShape::ropes`]).
    pub rope: usize,
    /// Which of the batch's windows this layer uses ([`BatchShape::windows`]).
    pub window: usize,
}

/// Per-head RMSNorm of queries and keys before RoPE (Qwen3, Gemma 3).
pub struct QkNorm {
    pub q: RmsNorm,
    pub k: RmsNorm,
}

impl Attention {
    /// Attention of every item's new queries over its cache (the new keys and values are
    /// appended to the cache at `layer`): `q_all` `[rows, heads × head_dim]`, `k_all` and
    /// `v_all` `[rows, kv_heads × head_dim]` → `[rows, heads × head_dim]`.
    #[expect(clippy::too_many_arguments, reason = "the step's tensors and options")]
    pub fn forward(
        &self,
        layer: usize,
        batch: &Batch,
        items: &mut [BatchItem<'_>],
        q_all: Tensor<2>,
        k_all: Tensor<2>,
        v_all: Tensor<2>,
        qk_norm: Option<&QkNorm>,
    ) -> Result<Tensor<2>, EngineError> {
        let (hd, nh, nkv) = (self.head_dim, self.heads, self.kv_heads);
        let (q_all, k_all) = match qk_norm {
            Some(norm) => (
                norm.q.forward_heads(q_all, nh),
                norm.k.forward_heads(k_all, nkv),
            ),
            None => (q_all, k_all),
        };
        let Some(step) = &batch.gpu else {
            return self.forward_paged(layer, batch, items, q_all, k_all, v_all);
        };
        let group = nh / nkv.max(1);
        let rows = q_all.dims()[0];
        let dtype = q_all.dtype();
        let (cos, sin) = step
            .rope
            .get(self.rope)
            .ok_or_else(|| inference(format!("no RoPE schedule {}", self.rope)))?;
        if self.window >= batch.windows.len() {
            return Err(inference(format!("no window {}", self.window)));
        }
        let q = rope::apply(q_all.reshape([rows, nh, hd]), cos, sin);
        let k = rope::apply(k_all.reshape([rows, nkv, hd]), cos, sin).reshape([rows, nkv * hd]);
        step.pool.with_layer(layer, nkv * hd, |pages| {
            let pages = pages.write(&step.write, k, v_all);
            let mut outs = Vec::with_capacity(1 + step.chunks.len());
            if let Some(d) = &step.decode {
                let q = match &d.rows {
                    None => q.clone(),
                    Some(rows) => q.clone().select(0, rows.clone()),
                };
                let (keys, values) = pages.gather(&d.gather);
                let heads = |t: Tensor<2>| t.reshape([d.count, d.keys, nkv, hd]).swap_dims(1, 2);
                let mask = d.masks.get(self.window).and_then(Option::as_ref);
                let out = self.attend(
                    q.reshape([d.count, nkv, group, hd]),
                    heads(keys),
                    heads(values),
                    mask,
                    dtype,
                );
                outs.push(out.reshape([d.count, nh * hd]));
            }
            for c in &step.chunks {
                // Query heads h·group..(h+1)·group share kv head h: fold the group into rows.
                let q = q.clone().narrow(0, c.offset, c.n).swap_dims(0, 1);
                let (keys, values) = pages.gather(&c.gather);
                let total = keys.dims()[0];
                let heads = |t: Tensor<2>| t.reshape([total, nkv, hd]).swap_dims(0, 1);
                let mask = c.masks.get(self.window).and_then(Option::as_ref);
                let out = self.attend(
                    q.reshape([nkv, group * c.n, hd]),
                    heads(keys),
                    heads(values),
                    mask,
                    dtype,
                );
                outs.push(
                    out.reshape([nh, c.n, hd])
                        .swap_dims(0, 1)
                        .reshape([c.n, nh * hd]),
                );
            }
            let out = match outs.len() {
                1 => outs.swap_remove(0),
                _ => Tensor::cat(outs, 0),
            };
            let out = match &step.order {
                Some(place) => out.select(0, place.clone()),
                None => out,
            };
            (pages, out)
        })
    }

    /// [`Attention::forward`] on the CPU: RoPE on the host, the new keys and values written
    /// into each item's pages, then one [`attend::attend`] task per (query row, KV head),
    /// reading the pages in place, on rayon's pool.
    fn forward_paged(
        &self,
        layer: usize,
        batch: &Batch,
        items: &mut [BatchItem<'_>],
        q_all: Tensor<2>,
        k_all: Tensor<2>,
        v_all: Tensor<2>,
    ) -> Result<Tensor<2>, EngineError> {
        let (hd, nh, nkv) = (self.head_dim, self.heads, self.kv_heads);
        let group = nh / nkv.max(1);
        let [rows, _] = q_all.dims();
        let device = q_all.device();
        let host = |t: Tensor<2>| {
            t.into_data()
                .try_into_vec::<f32>()
                .map_err(|e| inference(format!("{e:?}")))
        };
        let (mut q, mut k, v) = (host(q_all)?, host(k_all)?, host(v_all)?);
        if nkv == 0
            || group * nkv != nh
            || q.len() != rows * nh * hd
            || k.len() != rows * nkv * hd
            || v.len() != k.len()
        {
            return Err(inference("attention inputs do not match the layer's shape"));
        }
        let spec = attend::Spec {
            head_dim: hd,
            kv_heads: nkv,
            group,
            scale: self.scale as f32,
            softcap: self.softcap.map(|c| c as f32),
        };
        let window = *batch
            .windows
            .get(self.window)
            .ok_or_else(|| inference(format!("no window {}", self.window)))?;
        let mut row_span = Vec::with_capacity(rows);
        for ((si, item), sp) in items.iter_mut().enumerate().zip(&batch.spans) {
            let (cos, sin) = sp
                .host_rope
                .get(self.rope)
                .ok_or_else(|| inference(format!("no RoPE schedule {}", self.rope)))?;
            let rd = cos.len() / sp.n.max(1);
            for i in 0..sp.n {
                let (c, s) = (&cos[i * rd..(i + 1) * rd], &sin[i * rd..(i + 1) * rd]);
                let row = sp.offset + i;
                for head in q[row * nh * hd..(row + 1) * nh * hd].chunks_exact_mut(hd) {
                    rope::rotate(head, c, s);
                }
                for head in k[row * nkv * hd..(row + 1) * nkv * hd].chunks_exact_mut(hd) {
                    rope::rotate(head, c, s);
                }
                row_span.push(si);
            }
            item.cache
                .append_pages(layer, &spec, sp.past, sp.n, (&k, &v, sp.offset))?;
        }
        if row_span.len() != rows {
            return Err(inference("the batch's spans do not cover its rows"));
        }
        let caches: Vec<Pages<'_>> = items.iter().map(|it| it.cache.pages(layer)).collect();
        let task = |t: usize, out: &mut [f32]| {
            let (row, h) = (t / nkv, t % nkv);
            let si = row_span[row];
            let sp = &batch.spans[si];
            let pos = sp.past + row - sp.offset;
            let first = window.map_or(0, |w| (pos + 1).saturating_sub(w));
            let q = &q[(row * nh + h * group) * hd..(row * nh + (h + 1) * group) * hd];
            match caches[si] {
                Pages::Half(pages) => attend::attend(&spec, pages, h, first..pos + 1, q, out),
                Pages::Single(pages) => attend::attend(&spec, pages, h, first..pos + 1, q, out),
            }
        };
        let mut out = vec![0f32; rows * nh * hd];
        // Multiply-adds of the step: below a few of rayon's hand-offs' worth, stay on this
        // thread (a short decode step).
        let work: usize = batch
            .spans
            .iter()
            .map(|s| s.n * (s.past + s.n))
            .sum::<usize>()
            * nh
            * hd;
        if work < 1 << 16 {
            out.chunks_mut(group * hd)
                .enumerate()
                .for_each(|(t, o)| task(t, o));
        } else {
            out.par_chunks_mut(group * hd)
                .enumerate()
                .for_each(|(t, o)| task(t, o));
        }
        Ok(Tensor::from_data(
            TensorData::new(out, [rows, nh * hd]),
            (&device, DType::F32),
        ))
    }

    /// Queries `q` `[…, kv_heads, queries, head_dim]` over `keys` and `values`
    /// `[…, kv_heads, keys, head_dim]` with an additive `mask` (broadcast over what it has
    /// as 1) → `[…, kv_heads, queries, head_dim]`; scores and softmax in `f32`.
    fn attend<const D: usize>(
        &self,
        q: Tensor<D>,
        keys: Tensor<D>,
        values: Tensor<D>,
        mask: Option<&Tensor<D>>,
        dtype: DType,
    ) -> Tensor<D> {
        let mut scores = q
            .matmul(keys.swap_dims(D - 2, D - 1))
            .mul_scalar(self.scale);
        if dtype != DType::F32 {
            scores = scores.cast(FloatDType::F32);
        }
        if let Some(cap) = self.softcap {
            scores = scores.div_scalar(cap).tanh().mul_scalar(cap);
        }
        if let Some(mask) = mask {
            scores = scores + mask.clone();
        }
        let mut probs = softmax(scores, D - 1);
        if dtype != DType::F32 {
            probs = probs.cast(FloatDType::F16);
        }
        probs.matmul(values)
    }
}
