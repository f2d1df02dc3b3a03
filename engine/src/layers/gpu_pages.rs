//! The KV cache on a GPU, paged as on the CPU: one pool per model holding, per layer, the
//! keys and the values of every page (`[pages × PAGE, kv_heads × head_dim]` tensors in the
//! compute dtype, [`PAGE`] positions a page, the KV budget's block size), and per sequence
//! a [`PageTable`] of reference-counted pages into it. A fork shares pages; the first write
//! to a shared page copies that page only; a page no table holds goes back to the free list.
//!
//! A step writes every new key and value of the batch with one `select_assign` per layer
//! and tensor (the slots are the same for all layers: [`StepSlots`]), and gathers the keys
//! its queries attend to with one `select` (`attention.rs`). The pool grows by doubling, up
//! to the KV budget's block count, so the memory it holds is the budget's, not the sum of
//! per-sequence capacities.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use burn::tensor::{DType, Device, IndexingUpdateOp, Int, Tensor, TensorData};

use crate::EngineError;
use crate::kernels::attend::PAGE;
use crate::layers::attention::inference;

/// Pages a pool starts with when its first page is taken.
const MIN_PAGES: usize = 64;

/// One model's pages on its device.
pub struct GpuPool {
    device: Device,
    dtype: DType,
    state: Mutex<PoolState>,
}

struct PoolState {
    /// Pages the layer tensors hold.
    pages: usize,
    /// Pages no table holds, the lowest last (taken first).
    free: Vec<usize>,
    /// The KV budget's block count, which growth stops at while it can.
    limit: Option<usize>,
    layers: Vec<Layer>,
}

/// One layer's part of the pool.
enum Layer {
    /// Nothing written yet: allocated at the first write.
    Unwritten,
    Held(Box<LayerPages>),
    /// Moved out for a step by [`GpuPool::with_layer`] and not given back (its step
    /// panicked): the caches' contents are gone.
    Lost,
}

/// Keys and values of every page of one layer, `[pages × PAGE, width]`.
pub(crate) struct LayerPages {
    pub(crate) keys: Tensor<2>,
    pub(crate) values: Tensor<2>,
}

impl LayerPages {
    /// Writes `keys` and `values` (`[n, width]`) into the slots `slots` (`[n]`). The
    /// tensors are moved in, so burn writes in place.
    pub(crate) fn write(self, slots: &Tensor<1, Int>, keys: Tensor<2>, values: Tensor<2>) -> Self {
        LayerPages {
            keys: self
                .keys
                .select_assign(0, slots.clone(), keys, IndexingUpdateOp::Assign),
            values: self
                .values
                .select_assign(0, slots.clone(), values, IndexingUpdateOp::Assign),
        }
    }

    /// The keys and the values at `slots`, `[n, width]` each.
    pub(crate) fn gather(&self, slots: &Tensor<1, Int>) -> (Tensor<2>, Tensor<2>) {
        (
            self.keys.clone().select(0, slots.clone()),
            self.values.clone().select(0, slots.clone()),
        )
    }
}

impl GpuPool {
    /// An empty pool for a model of `layers` layers computing in `dtype` on `device`.
    pub fn new(layers: usize, device: &Device, dtype: DType) -> Arc<GpuPool> {
        Arc::new(GpuPool {
            device: device.clone(),
            dtype,
            state: Mutex::new(PoolState {
                pages: 0,
                free: Vec::new(),
                limit: None,
                layers: (0..layers).map(|_| Layer::Unwritten).collect(),
            }),
        })
    }

    /// Stops growth at `pages` (the KV budget's block count) where the pages taken fit.
    pub fn set_limit(&self, pages: usize) {
        self.lock().limit = Some(pages.max(1));
    }

    /// Pages the pool holds on the device.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.lock().pages
    }

    /// Pages held by tables.
    #[cfg(test)]
    pub fn in_use(&self) -> usize {
        let st = self.lock();
        st.pages - st.free.len()
    }

    /// The state, whatever a panicking holder left: every update to it is one assignment
    /// or push after the fallible tensor work, so it is never half done.
    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take(self: &Arc<Self>) -> Arc<GpuPage> {
        let mut st = self.lock();
        if st.free.is_empty() {
            self.grow(&mut st);
        }
        let id = st.free.pop().unwrap_or(st.pages);
        Arc::new(GpuPage {
            id,
            pool: Arc::clone(self),
        })
    }

    /// Doubles the pages (at least [`MIN_PAGES`]; up to the limit unless that is reached),
    /// copying each written layer into tensors of the new size.
    fn grow(&self, st: &mut PoolState) {
        let old = st.pages;
        let mut new = (old * 2).max(MIN_PAGES);
        if let Some(limit) = st.limit.filter(|&l| l > old) {
            new = new.min(limit);
        }
        for layer in &mut st.layers {
            if let Layer::Held(p) = layer {
                let width = p.keys.dims()[1];
                let more =
                    || Tensor::zeros([(new - old) * PAGE, width], (&self.device, self.dtype));
                p.keys = Tensor::cat(vec![p.keys.clone(), more()], 0);
                p.values = Tensor::cat(vec![p.values.clone(), more()], 0);
            }
        }
        st.free.extend((old..new).rev());
        st.pages = new;
    }

    /// Copies page `from` into page `to` in every written layer.
    fn copy_page(&self, from: usize, to: usize) {
        let mut st = self.lock();
        let (src, dst) = (self.page_slots(from), self.page_slots(to));
        for layer in &mut st.layers {
            if let Layer::Held(_) = layer
                && let Layer::Held(p) = std::mem::replace(layer, Layer::Lost)
            {
                let (keys, values) = p.gather(&src);
                *layer = Layer::Held(Box::new(p.write(&dst, keys, values)));
            }
        }
    }

    fn page_slots(&self, page: usize) -> Tensor<1, Int> {
        self.index((page * PAGE..(page + 1) * PAGE).collect())
    }

    /// `slots` as an index tensor on the pool's device.
    pub(crate) fn index(&self, slots: Vec<usize>) -> Tensor<1, Int> {
        let n = slots.len();
        let data: Vec<i32> = slots.into_iter().map(|s| s as i32).collect();
        Tensor::from_data(TensorData::new(data, [n]), &self.device)
    }

    /// Runs `f` on the pages of `layer` (made `[pages × PAGE, width]` zeros first if nothing
    /// was written to it yet) and keeps the pages it gives back: they are moved in and out,
    /// so the pool's handles are the only ones and burn writes in place.
    pub(crate) fn with_layer<R>(
        &self,
        layer: usize,
        width: usize,
        f: impl FnOnce(LayerPages) -> (LayerPages, R),
    ) -> Result<R, EngineError> {
        let mut st = self.lock();
        let pages = st.pages;
        let slot = st
            .layers
            .get_mut(layer)
            .ok_or_else(|| inference(format!("the KV pool has no layer {layer}")))?;
        let held = match std::mem::replace(slot, Layer::Lost) {
            Layer::Held(p) => *p,
            Layer::Unwritten => {
                let zeros = || Tensor::zeros([pages * PAGE, width], (&self.device, self.dtype));
                LayerPages {
                    keys: zeros(),
                    values: zeros(),
                }
            }
            Layer::Lost => {
                return Err(inference(format!(
                    "the KV pages of layer {layer} were lost to a failed step"
                )));
            }
        };
        let held_width = held.keys.dims()[1];
        if held_width != width {
            *slot = Layer::Held(Box::new(held));
            return Err(inference(format!(
                "layer {layer} writes rows of {width}, its pages hold {held_width}"
            )));
        }
        let (held, out) = f(held);
        *slot = Layer::Held(Box::new(held));
        Ok(out)
    }
}

/// A page of a pool, held by one or more tables; free again when the last one drops it.
pub(crate) struct GpuPage {
    id: usize,
    pool: Arc<GpuPool>,
}

impl Drop for GpuPage {
    fn drop(&mut self) {
        self.pool.lock().free.push(self.id);
    }
}

/// A sequence's pages in position order: position `p` is slot `p % PAGE` of page `p / PAGE`.
#[derive(Clone)]
pub(crate) struct PageTable {
    pool: Arc<GpuPool>,
    pages: Vec<Arc<GpuPage>>,
}

impl PageTable {
    pub(crate) fn new(pool: &Arc<GpuPool>) -> PageTable {
        PageTable {
            pool: Arc::clone(pool),
            pages: Vec::new(),
        }
    }

    /// Releases the pages past the first `len` positions.
    pub(crate) fn truncate(&mut self, len: usize) {
        self.pages.truncate(len.div_ceil(PAGE));
    }

    pub(crate) fn clear(&mut self) {
        self.pages.clear();
    }

    /// Makes positions `past..past + n` writable by this table alone: a shared page among
    /// them is replaced by a copy, missing pages are taken from the pool.
    pub(crate) fn prepare(&mut self, past: usize, n: usize) -> Result<(), EngineError> {
        if self.pages.len() < past.div_ceil(PAGE) {
            return Err(inference(format!(
                "the page table holds fewer than {past} positions"
            )));
        }
        let end = (past + n).div_ceil(PAGE);
        self.pages.truncate(end);
        for i in past / PAGE..self.pages.len() {
            if Arc::strong_count(&self.pages[i]) > 1 {
                let fresh = self.pool.take();
                self.pool.copy_page(self.pages[i].id, fresh.id);
                self.pages[i] = fresh;
            }
        }
        while self.pages.len() < end {
            self.pages.push(self.pool.take());
        }
        Ok(())
    }

    /// The pool slot of position `pos` (a position [`PageTable::prepare`] covered).
    pub(crate) fn slot(&self, pos: usize) -> Option<usize> {
        let page = self.pages.get(pos / PAGE)?;
        Some(page.id * PAGE + pos % PAGE)
    }

    pub(crate) fn pool(&self) -> &Arc<GpuPool> {
        &self.pool
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_shared_until_written_and_freed_with_their_last_table() {
        let pool = GpuPool::new(1, &Device::flex(), DType::F32);
        let mut a = PageTable::new(&pool);
        a.prepare(0, 20).unwrap();
        assert_eq!(pool.in_use(), 2);
        assert_eq!(pool.capacity(), MIN_PAGES);
        let mut b = a.clone();
        assert_eq!(pool.in_use(), 2);
        // A copy before anything was written leaves the layer writable.
        let mut c = a.clone();
        c.prepare(20, 1).unwrap();
        drop(c);
        let zeros = pool.with_layer(0, 2, |p| {
            let g = p.gather(&pool.index(vec![0]));
            (p, g)
        });
        assert!(zeros.is_ok());
        // b writes inside the second page: only that page is copied.
        b.prepare(20, 1).unwrap();
        assert_eq!(pool.in_use(), 3);
        assert_eq!(a.slot(3), b.slot(3));
        assert_ne!(a.slot(17), b.slot(17));
        // a's second page is its own again: no copy.
        a.prepare(20, 1).unwrap();
        assert_eq!(pool.in_use(), 3);
        drop(a);
        assert_eq!(pool.in_use(), 2);
        b.truncate(5);
        assert_eq!(pool.in_use(), 1);
        assert!(b.prepare(40, 1).is_err());
        drop(b);
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn growth_keeps_what_was_written_and_stops_at_the_limit() {
        let pool = GpuPool::new(1, &Device::flex(), DType::F32);
        pool.set_limit(MIN_PAGES + 3);
        let mut t = PageTable::new(&pool);
        t.prepare(0, 1).unwrap();
        let first = t.slot(0).unwrap();
        let row =
            Tensor::<2>::from_data(TensorData::new(vec![1.5f32, -2.0], [1, 2]), &Device::flex());
        pool.with_layer(0, 2, |p| {
            (p.write(&pool.index(vec![first]), row.clone(), row), ())
        })
        .unwrap();
        t.prepare(1, MIN_PAGES * PAGE).unwrap();
        assert_eq!(pool.capacity(), MIN_PAGES + 3);
        // Past the limit, the pool still gives a page: the limit is where doubling stops.
        t.prepare(1 + MIN_PAGES * PAGE, 4 * PAGE).unwrap();
        assert!(pool.capacity() > MIN_PAGES + 3);
        let kept = pool
            .with_layer(0, 2, |p| {
                let kept = p.gather(&pool.index(vec![first]));
                (p, kept)
            })
            .unwrap();
        for t in [kept.0, kept.1] {
            assert_eq!(t.into_data().try_to_vec::<f32>().unwrap(), vec![1.5, -2.0]);
        }
    }
}
