//! Attention over a batched step: the per-sequence KV cache, the step's layout ([`Batch`]:
//! every item's new rows stacked into one `[rows, hidden]` activation, with per-item RoPE
//! tables and masks) and grouped-query attention ([`Attention`]) with the options the
//! supported architectures need: q/k RMSNorm per head, logit soft-capping, a sliding window.
//!
//! Projections run once per layer for the whole batch; RoPE and attention run per item
//! against its own cache: on the CPU over the cache's pages in place, one task per (query
//! row, KV head) ([`attend::attend`]: no score or mask tensors, each row's bits independent of
//! how the step is cut), on a GPU as burn ops (`[kv_heads, group × n, keys]` scores, masks).

use std::sync::Arc;

use burn::tensor::activation::softmax;
use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};
use half::f16;
use rayon::prelude::*;

use crate::EngineError;
use crate::kernels::attend::{self, Elem, Page};
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
/// On a GPU it is a pair of `[kv_heads, capacity, head_dim]` tensors of which the first
/// `len` positions are filled; capacity doubles when full, so a decode step writes one
/// position in place instead of copying the whole cache.
pub struct KvCache {
    layers: Vec<LayerKv>,
    len: usize,
    /// The pages' element type (the CPU's; GPU tensors are the model's compute type).
    dtype: KvCacheDtype,
}

#[derive(Clone)]
enum LayerKv {
    Empty,
    Half(Vec<Page<f16>>),
    Single(Vec<Page<f32>>),
    Tensors(Box<(Tensor<3>, Tensor<3>)>),
}

/// One layer's pages, of the cache's element type.
#[derive(Clone, Copy)]
enum Pages<'a> {
    Half(&'a [Page<f16>]),
    Single(&'a [Page<f32>]),
}

/// Smallest capacity a GPU cache tensor is allocated with, in positions.
const MIN_CAPACITY: usize = 32;

impl KvCache {
    /// An empty cache for a model of `layers` layers, whose CPU pages hold `dtype`.
    pub fn new(layers: usize, dtype: KvCacheDtype) -> KvCache {
        KvCache {
            layers: vec![LayerKv::Empty; layers],
            len: 0,
            dtype,
        }
    }

    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// A copy for another sequence with the same prefix (OpenAI's `n`: samples forked after
    /// one prefill). Pages and tensors are shared until either side writes its next
    /// position, which then copies the page (or tensor) it writes to: no write is ever seen
    /// by both.
    pub fn fork(&self) -> KvCache {
        KvCache {
            layers: self.layers.clone(),
            len: self.len,
            dtype: self.dtype,
        }
    }

    /// Keeps only the first `len` positions (a cached prompt prefix reused by a longer
    /// prompt): the next append writes from `len` on. Pages past them are released; GPU
    /// tensors keep their capacity.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        let keep = self.len.div_ceil(attend::PAGE);
        for layer in &mut self.layers {
            match layer {
                LayerKv::Half(pages) => pages.truncate(keep),
                LayerKv::Single(pages) => pages.truncate(keep),
                LayerKv::Empty | LayerKv::Tensors(_) => {}
            }
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
        if matches!(slot, LayerKv::Empty | LayerKv::Tensors(_)) {
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

    /// Writes `k`, `v` (`[kv_heads, n, head_dim]`) at positions `past..past + n` of `layer`
    /// and returns the filled keys and values `[kv_heads, past + n, head_dim]` (GPU).
    fn append(
        &mut self,
        layer: usize,
        past: usize,
        k: Tensor<3>,
        v: Tensor<3>,
    ) -> Result<(Tensor<3>, Tensor<3>), EngineError> {
        let [heads, n, hd] = k.dims();
        let total = past + n;
        let slot = self
            .layers
            .get_mut(layer)
            .ok_or_else(|| inference(format!("the cache has no layer {layer}")))?;
        let (kc, vc) = match std::mem::replace(slot, LayerKv::Empty) {
            LayerKv::Tensors(kv) if kv.0.dims()[1] >= total => *kv,
            old => {
                let cap = total.max(MIN_CAPACITY).next_power_of_two();
                let fresh = || Tensor::<3>::zeros([heads, cap, hd], (&k.device(), k.dtype()));
                let (mut kc, mut vc) = (fresh(), fresh());
                if let LayerKv::Tensors(kv) = old
                    && past > 0
                {
                    let (ko, vo) = *kv;
                    kc = kc.slice_assign([0..heads, 0..past, 0..hd], ko.narrow(1, 0, past));
                    vc = vc.slice_assign([0..heads, 0..past, 0..hd], vo.narrow(1, 0, past));
                }
                (kc, vc)
            }
        };
        let kc = kc.slice_assign([0..heads, past..total, 0..hd], k);
        let vc = vc.slice_assign([0..heads, past..total, 0..hd], v);
        let out = (
            kc.clone().narrow(1, 0, total),
            vc.clone().narrow(1, 0, total),
        );
        *slot = LayerKv::Tensors(Box::new((kc, vc)));
        Ok(out)
    }
}

/// Whether a model on `device` computing in `dtype` caches in pages read by
/// [`attend::attend`] (the CPU backend), not in GPU tensors.
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
    /// `(cos, sin)` per RoPE schedule of the model (GPU).
    rope: Vec<(Tensor<3>, Tensor<3>)>,
    /// `(cos, sin)` rows `[n, rotary_dim]` per RoPE schedule of the model (CPU).
    host_rope: Vec<(Vec<f32>, Vec<f32>)>,
    /// Additive mask per attention window of the model (`None`: nothing to mask).
    masks: Vec<Option<Tensor<3>>>,
    /// For [`Want::AllLogits`]: attend one query row at a time, each with its one-row mask
    /// per window (`row_masks[window][row]`), as one-token decode steps would.
    row_masks: Option<Vec<Vec<Option<Tensor<3>>>>>,
}

/// The layout of one batched step.
pub struct Batch {
    spans: Vec<Span>,
    /// The CPU path: paged caches read in place by [`attend::attend`], RoPE on the host, no
    /// mask tensors (a window is a key range).
    paged: bool,
    /// [`BatchShape::windows`].
    windows: Vec<Option<usize>>,
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
    /// Embeds every item's new tokens (rows of `embed`) and builds its RoPE tables and masks;
    /// returns the layout and the stacked embeddings `[rows, hidden]`.
    pub fn new(
        items: &[BatchItem<'_>],
        embed: &RowTable,
        hidden: usize,
        shape: &BatchShape<'_>,
    ) -> Result<(Batch, Tensor<2>), EngineError> {
        let mut rows = Vec::new();
        let mut spans = Vec::with_capacity(items.len());
        let paged = is_paged(shape.device, shape.dtype);
        let mut offset = 0;
        for item in items {
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
            if paged {
                spans.push(Span {
                    offset,
                    n,
                    past,
                    rope: Vec::new(),
                    host_rope: shape.ropes.iter().map(|r| r.host_tables(past, n)).collect(),
                    masks: Vec::new(),
                    row_masks: None,
                });
                offset += n;
                continue;
            }
            spans.push(Span {
                offset,
                n,
                past,
                rope: shape
                    .ropes
                    .iter()
                    .map(|r| r.tables(past, n, shape.device, shape.dtype))
                    .collect(),
                host_rope: Vec::new(),
                masks: shape
                    .windows
                    .iter()
                    .map(|w| mask(past, n, shape.group, *w, shape.device))
                    .collect(),
                row_masks: (item.want == Want::AllLogits).then(|| {
                    shape
                        .windows
                        .iter()
                        .map(|w| {
                            (0..n)
                                .map(|i| mask(past + i, 1, shape.group, *w, shape.device))
                                .collect()
                        })
                        .collect()
                }),
            });
            offset += n;
        }
        let x = Tensor::from_data(
            TensorData::new(rows, [offset, hidden]),
            (shape.device, shape.dtype),
        );
        let batch = Batch {
            spans,
            paged,
            windows: shape.windows.to_vec(),
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
        if batch.paged {
            return self.forward_paged(layer, batch, items, q_all, k_all, v_all);
        }
        let dtype = q_all.dtype();
        let mut outs = Vec::with_capacity(items.len());
        for (item, sp) in items.iter_mut().zip(&batch.spans) {
            let n = sp.n;
            let rows_of = |t: &Tensor<2>, heads: usize| {
                t.clone()
                    .narrow(0, sp.offset, n)
                    .reshape([n, heads, hd])
                    .swap_dims(0, 1)
            };
            let (cos, sin) = sp
                .rope
                .get(self.rope)
                .ok_or_else(|| inference(format!("no RoPE schedule {}", self.rope)))?;
            let q = rope::apply(rows_of(&q_all, nh), cos, sin);
            let k = rope::apply(rows_of(&k_all, nkv), cos, sin);
            let v = rows_of(&v_all, nkv);
            let (keys, values) = item.cache.append(layer, sp.past, k, v)?;
            match &sp.row_masks {
                None => {
                    let mask = sp.masks.get(self.window).and_then(Option::as_ref);
                    outs.push(self.attend(q, keys, values, mask, n, dtype));
                }
                Some(row_masks) => {
                    // One query row at a time over the keys up to its position: the shapes
                    // (and so the bits) of a one-token decode step there.
                    let masks = row_masks
                        .get(self.window)
                        .ok_or_else(|| inference(format!("no window {}", self.window)))?;
                    for (i, mask) in masks.iter().enumerate() {
                        let keys_i = keys.clone().narrow(1, 0, sp.past + i + 1);
                        let values_i = values.clone().narrow(1, 0, sp.past + i + 1);
                        let q_i = q.clone().narrow(1, i, 1);
                        outs.push(self.attend(q_i, keys_i, values_i, mask.as_ref(), 1, dtype));
                    }
                }
            }
        }
        if outs.len() == 1 {
            outs.pop().ok_or_else(|| inference("empty batch"))
        } else {
            Ok(Tensor::cat(outs, 0))
        }
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

    /// `n` query positions `q` `[heads, n, head_dim]` over `keys` and `values`
    /// `[kv_heads, keys, head_dim]`, with an additive `mask` → `[n, heads × head_dim]`.
    fn attend(
        &self,
        q: Tensor<3>,
        keys: Tensor<3>,
        values: Tensor<3>,
        mask: Option<&Tensor<3>>,
        n: usize,
        dtype: DType,
    ) -> Tensor<2> {
        let (hd, nh, nkv) = (self.head_dim, self.heads, self.kv_heads);
        let group = nh / nkv.max(1);
        // Query heads h·group..(h+1)·group share kv head h: fold the group into rows.
        let q = q.reshape([nkv, group * n, hd]);
        let mut scores = q.matmul(keys.swap_dims(1, 2)).mul_scalar(self.scale);
        if dtype != DType::F32 {
            scores = scores.cast(FloatDType::F32);
        }
        if let Some(cap) = self.softcap {
            scores = scores.div_scalar(cap).tanh().mul_scalar(cap);
        }
        if let Some(mask) = mask {
            scores = scores + mask.clone();
        }
        let mut probs = softmax(scores, 2);
        if dtype != DType::F32 {
            probs = probs.cast(FloatDType::F16);
        }
        probs
            .matmul(values)
            .reshape([nh, n, hd])
            .swap_dims(0, 1)
            .reshape([n, nh * hd])
    }
}
