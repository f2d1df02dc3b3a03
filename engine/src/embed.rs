//! Embeddings: the input's tokens run through the model (no sampling), the final hidden
//! states (a decoder's after the final norm, before the LM head; an encoder's last layer)
//! are pooled (`last` token, `mean`, or the first (`cls`) token) and L2-normalized.
//!
//! Embedding requests share the model's inference thread with generation: the worker runs
//! one embedding pass between two generation steps ([`EmbedQueue::step`]), within the same
//! per-step token budget and chunk size, so a batch of 2048 inputs never stalls anyone's
//! decoding for long. Their KV caches are scratch (dropped once an input is pooled) but
//! take blocks from the same pool while they live, so the cache's memory stays what its
//! budget says. A request whose handle is dropped is dropped before its next pass.
//!
//! An encoder (BERT) runs each input whole in one pass: its budget ([`Budget`]) is its
//! context, so no input is cut into chunks.
//!
//! Where the pooling comes from: `1_Pooling/config.json` (sentence-transformers) in the
//! model directory when present, else a GGUF file's `pooling_type`, else the operator's
//! `pooling` (see `docs/config.md`).

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::path::Path;

use crate::kv::BlockPool;
use crate::models::{BatchItem, KvCache, Model, Want};
use crate::{EmbeddingsSender, EngineError, Pooling};

/// One queued embedding request.
pub(crate) struct EmbedJob {
    pub request_id: String,
    pub inputs: Vec<Vec<u32>>,
    pub sender: EmbeddingsSender,
}

/// An input part-way through the model (longer than one chunk).
struct Partial {
    cache: KvCache,
    done: usize,
    sum: Vec<f64>,
    first: Vec<f32>,
    last: Vec<f32>,
    blocks: usize,
}

/// A request being worked through, input by input.
struct Running {
    job: EmbedJob,
    next: usize,
    partial: Option<Partial>,
    vectors: Vec<Vec<f32>>,
    tokens: usize,
}

/// The embedding requests of one model's worker, oldest first.
pub(crate) struct EmbedQueue {
    pooling: Pooling,
    jobs: VecDeque<Running>,
}

/// What one pass may hold: the worker's chunk size and per-step token budget.
pub(crate) struct Budget {
    pub chunk: usize,
    pub tokens: usize,
}

impl EmbedQueue {
    pub fn new(pooling: Pooling) -> EmbedQueue {
        EmbedQueue {
            pooling,
            jobs: VecDeque::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    pub fn push(&mut self, job: EmbedJob) {
        self.jobs.push_back(Running {
            vectors: Vec::with_capacity(job.inputs.len()),
            job,
            next: 0,
            partial: None,
            tokens: 0,
        });
    }

    /// Fails every request (shutdown). Returns how many there were.
    pub fn fail_all(&mut self, e: &EngineError) -> usize {
        let n = self.jobs.len();
        for r in self.jobs.drain(..) {
            r.job.sender.send(Err(e.clone()));
        }
        n
    }

    /// Drops requests whose clients have gone, giving back their blocks. Returns how many.
    pub fn drop_cancelled(&mut self, pool: &mut BlockPool) -> usize {
        let before = self.jobs.len();
        self.jobs.retain_mut(|r| {
            let gone = r.job.sender.is_cancelled();
            if gone && let Some(p) = r.partial.take() {
                pool.give_back(p.blocks);
            }
            !gone
        });
        before - self.jobs.len()
    }

    /// Runs one forward pass for the oldest request: the next chunk of an input longer
    /// than a chunk, or as many whole inputs as fit the budget. Returns `None` when there
    /// was nothing to run (or no KV blocks for it yet), else how many requests finished
    /// (answered, successfully or not).
    pub fn step(&mut self, model: &Model, pool: &mut BlockPool, budget: &Budget) -> Option<usize> {
        let pooling = self.pooling;
        let outcome = {
            let run = self.jobs.front_mut()?;
            let result = match run.partial.take() {
                Some(partial) => run.continue_partial(model, pool, budget, partial, pooling),
                None => run.whole_inputs(model, pool, budget, pooling),
            };
            match result {
                Ok(false) => return None,
                Ok(true) if run.next < run.job.inputs.len() => return Some(0),
                Ok(true) => Ok(()),
                Err(e) => {
                    tracing::warn!(request_id = %run.job.request_id, error = %e, "embedding failed");
                    if let Some(p) = run.partial.take() {
                        pool.give_back(p.blocks);
                    }
                    Err(e)
                }
            }
        };
        let done = self.jobs.pop_front()?;
        done.job.sender.send(outcome.map(|()| crate::Embeddings {
            vectors: done.vectors,
            prompt_tokens: done.tokens,
        }));
        Some(1)
    }
}

impl Running {
    /// The next chunk of the input in progress. `Ok(false)`: no blocks for it yet.
    fn continue_partial(
        &mut self,
        model: &Model,
        pool: &mut BlockPool,
        budget: &Budget,
        mut p: Partial,
        pooling: Pooling,
    ) -> Result<bool, EngineError> {
        let input = &self.job.inputs[self.next];
        let n = (input.len() - p.done)
            .min(budget.chunk)
            .min(budget.tokens.max(1));
        let need = BlockPool::blocks_for(p.done + n).saturating_sub(p.blocks);
        if !pool.try_take(need) {
            self.partial = Some(p);
            return Ok(false);
        }
        p.blocks += need;
        let rows = match forward(model, &mut [(&input[p.done..p.done + n], &mut p.cache)]) {
            Ok(mut rows) => rows.pop().unwrap_or_default(),
            Err(e) => {
                pool.give_back(p.blocks);
                return Err(e);
            }
        };
        accumulate(
            &rows,
            &mut p.sum,
            &mut p.first,
            &mut p.last,
            model.hidden_size(),
        );
        p.done += n;
        self.tokens += n;
        if p.done < input.len() {
            self.partial = Some(p);
            return Ok(true);
        }
        pool.give_back(p.blocks);
        self.vectors
            .push(pool_vector(pooling, &p.sum, &p.first, &p.last, p.done));
        self.next += 1;
        Ok(true)
    }

    /// Whole inputs that fit one chunk each, as many as the budget holds; or the first
    /// chunk of an input longer than a chunk. `Ok(false)`: no blocks for them yet.
    fn whole_inputs(
        &mut self,
        model: &Model,
        pool: &mut BlockPool,
        budget: &Budget,
        pooling: Pooling,
    ) -> Result<bool, EngineError> {
        let hidden = model.hidden_size();
        let Some(first) = self.job.inputs.get(self.next) else {
            return Ok(true);
        };
        if first.len() > budget.chunk.min(budget.tokens.max(1)) {
            let partial = Partial {
                cache: model.new_cache(),
                done: 0,
                sum: vec![0.0; hidden],
                first: Vec::new(),
                last: Vec::new(),
                blocks: 0,
            };
            return self.continue_partial(model, pool, budget, partial, pooling);
        }
        let inputs = &self.job.inputs;
        let mut end = self.next;
        let mut tokens = 0;
        let mut blocks = 0;
        while let Some(input) = inputs.get(end) {
            let fits = input.len() <= budget.chunk && tokens + input.len() <= budget.tokens;
            if end > self.next && !fits {
                break;
            }
            tokens += input.len();
            blocks += BlockPool::blocks_for(input.len());
            end += 1;
        }
        if !pool.try_take(blocks) {
            return Ok(false);
        }
        let mut caches: Vec<KvCache> = (self.next..end).map(|_| model.new_cache()).collect();
        let mut items: Vec<(&[u32], &mut KvCache)> = inputs[self.next..end]
            .iter()
            .map(Vec::as_slice)
            .zip(caches.iter_mut())
            .collect();
        let result = forward(model, &mut items);
        drop(items);
        drop(caches);
        pool.give_back(blocks);
        let rows = result?;
        for (input, rows) in inputs[self.next..end].iter().zip(&rows) {
            let (mut sum, mut first, mut last) = (vec![0.0; hidden], Vec::new(), Vec::new());
            accumulate(rows, &mut sum, &mut first, &mut last, hidden);
            self.vectors
                .push(pool_vector(pooling, &sum, &first, &last, input.len()));
        }
        self.tokens += tokens;
        self.next = end;
        Ok(true)
    }
}

/// One forward pass over `(tokens, cache)` items, returning each item's final hidden rows.
fn forward(
    model: &Model,
    items: &mut [(&[u32], &mut KvCache)],
) -> Result<Vec<Vec<f32>>, EngineError> {
    let mut batch: Vec<BatchItem<'_>> = items
        .iter_mut()
        .map(|(tokens, cache)| BatchItem {
            tokens,
            cache,
            want: Want::Hidden,
        })
        .collect();
    // burn reports some failures by panicking; an embedding must fail, not the worker.
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| model.forward_batch(&mut batch)))
        .unwrap_or_else(|_| Err(EngineError::Inference("the forward pass panicked".into())))?;
    result
        .into_iter()
        .map(|rows| rows.ok_or_else(|| EngineError::Inference("no hidden states".into())))
        .collect()
}

/// Adds `rows` (`[n, hidden]`) to the running sum and keeps the input's first row and the
/// last row.
fn accumulate(
    rows: &[f32],
    sum: &mut [f64],
    first: &mut Vec<f32>,
    last: &mut Vec<f32>,
    hidden: usize,
) {
    for row in rows.chunks_exact(hidden.max(1)) {
        if first.is_empty() {
            first.extend_from_slice(row);
        }
        for (s, &v) in sum.iter_mut().zip(row) {
            *s += f64::from(v);
        }
        last.clear();
        last.extend_from_slice(row);
    }
}

/// The pooled, L2-normalized vector of an input of `count` tokens.
fn pool_vector(
    pooling: Pooling,
    sum: &[f64],
    first: &[f32],
    last: &[f32],
    count: usize,
) -> Vec<f32> {
    let raw: Vec<f64> = match pooling {
        Pooling::Last => last.iter().map(|&v| f64::from(v)).collect(),
        Pooling::Cls => first.iter().map(|&v| f64::from(v)).collect(),
        Pooling::Mean => sum.iter().map(|&s| s / count.max(1) as f64).collect(),
    };
    normalize(&raw)
}

/// `v / ‖v‖₂` (a zero vector stays zero).
pub(crate) fn normalize(v: &[f64]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
    v.iter().map(|&x| (x * scale) as f32).collect()
}

/// The pooling a sentence-transformers directory declares in its Pooling module's
/// `config.json` (the module `modules.json` lists, else `1_Pooling/`; `None`: no such
/// file). Modes the engine does not implement (`max`, weighted mean) are refused by name
/// rather than replaced. (Its `2_Normalize` module needs no reading: every embedding is
/// L2-normalized.)
pub(crate) fn pooling_from_dir(dir: &Path) -> Result<Option<Pooling>, EngineError> {
    let path = pooling_module(dir).join("config.json");
    if !dir.is_dir() || !path.exists() {
        return Ok(None);
    }
    let err = |reason: String| EngineError::Load {
        path: path.clone(),
        reason,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| err(format!("not JSON: {e}")))?;
    // sentence-transformers 5+ writes one `pooling_mode` string; older versions one
    // boolean per mode.
    if let Some(mode) = value
        .get("pooling_mode")
        .and_then(serde_json::Value::as_str)
    {
        return match mode {
            "lasttoken" => Ok(Some(Pooling::Last)),
            "mean" => Ok(Some(Pooling::Mean)),
            "cls" => Ok(Some(Pooling::Cls)),
            other => Err(err(format!(
                "`pooling_mode`: `{other}` is not supported (supported: lasttoken, mean, cls)"
            ))),
        };
    }
    let on = |key: &str| value.get(key).and_then(serde_json::Value::as_bool) == Some(true);
    let modes = [
        ("pooling_mode_lasttoken", Some(Pooling::Last)),
        ("pooling_mode_mean_tokens", Some(Pooling::Mean)),
        ("pooling_mode_cls_token", Some(Pooling::Cls)),
        ("pooling_mode_max_tokens", None),
        ("pooling_mode_mean_sqrt_len_tokens", None),
        ("pooling_mode_weightedmean_tokens", None),
    ];
    let set: Vec<_> = modes.iter().filter(|(k, _)| on(k)).collect();
    match set.as_slice() {
        [(_, Some(pooling))] => Ok(Some(*pooling)),
        [(key, None)] => Err(err(format!(
            "`{key}` is not supported (supported: pooling_mode_lasttoken, \
             pooling_mode_mean_tokens, pooling_mode_cls_token)"
        ))),
        [] => Err(err("no pooling mode is set".into())),
        _ => Err(err("more than one pooling mode is set".into())),
    }
}

/// The directory of the Pooling module `modules.json` lists (`1_Pooling` when there is no
/// readable `modules.json` or it lists none).
fn pooling_module(dir: &Path) -> std::path::PathBuf {
    let listed = std::fs::read_to_string(dir.join("modules.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|modules| {
            modules.as_array()?.iter().find_map(|m| {
                let kind = m.get("type")?.as_str()?;
                let path = m.get("path")?.as_str()?;
                // A relative path inside the directory only.
                let safe = !path.is_empty()
                    && !path.starts_with('/')
                    && !path.split(['/', '\\']).any(|p| p == "..");
                (kind.ends_with(".Pooling") && safe).then(|| path.to_owned())
            })
        });
    dir.join(listed.unwrap_or_else(|| "1_Pooling".into()))
}

#[cfg(test)]
mod tests;
