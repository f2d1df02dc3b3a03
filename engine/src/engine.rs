//! [`BurnEngine`]: per model, one inference thread fed by a bounded queue (continuous
//! batching). The thread moves submitted requests into per-tenant queues, admits up to
//! `max_active` sequences (fairest tenant first, see [`crate::scheduler`]) while the KV-cache
//! budget has blocks for them, and runs ONE batched forward pass per step over every running
//! sequence: one token for each decoding sequence plus prefill chunks of at most
//! `prefill_chunk` tokens within a `max_batch_tokens` budget, so a long prompt never stalls
//! anyone's decoding. Sequences join and leave between steps; a sequence whose client reads
//! slowly is skipped until its event buffer drains, and a cancelled one is dropped (freeing
//! its KV blocks) before its next step. When a running sequence needs a block and none is
//! free, a newer sequence is preempted: its cache is freed and it is requeued to be
//! recomputed from its prompt and generated tokens (nothing already sent is sent again).

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::embed::{Budget, EmbedJob, EmbedQueue, pooling_from_dir};
use crate::kv::BlockPool;
use crate::loader::{Integrity, LoadedModel, load_dir};
use crate::models::{BatchItem, Want};
use crate::sampling::validate;
use crate::scheduler::TenantQueues;
use crate::sequence::Sequence;
use crate::tokenizer::TextTokenizer;
use crate::{
    EmbedRequest, Engine, EngineError, EngineStatus, GenerateRequest, Generation, GenerationSender,
    ModelInfo, ModelSpec, PendingEmbeddings, Pooling, Prepared, Prompt, TokenEvent,
};

/// Events buffered per request before the engine pauses that sequence.
const EVENT_BUFFER: usize = 64;

/// What a model's queue carries.
enum Work {
    /// Boxed: a generation job carries its compiled stop matcher and grammar.
    Generate(Box<Job>),
    Embed(EmbedJob),
}

struct Job {
    request_id: String,
    tenant: String,
    weight: u32,
    prompt: Vec<u32>,
    params: crate::SamplingParams,
    stop: crate::detok::StopMatcher,
    constraint: Option<crate::constraint::Constraint>,
    sender: GenerationSender,
    submitted: Instant,
}

#[derive(Default)]
struct Counters {
    queued: AtomicUsize,
    active: AtomicUsize,
    kv_cache_bytes: AtomicUsize,
}

struct ModelHandle {
    info: ModelInfo,
    /// Token ids at or above this are refused at submission.
    vocab_size: usize,
    tokenizer: Arc<TextTokenizer>,
    /// Grammar support, its parser factory built on the first constrained request.
    grammars: crate::constraint::Grammars,
    /// Cache positions the KV budget holds: a request needing more is refused at submission.
    kv_positions: usize,
    kv_budget_bytes: usize,
    queue: Option<SyncSender<Work>>,
    max_queue: usize,
    counters: Arc<Counters>,
    shutdown: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The production engine: Hugging Face Llama-family models on burn.
pub struct BurnEngine {
    models: Vec<ModelHandle>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl BurnEngine {
    /// Loads every model in `specs` (manifest check, weights, tokenizer, device) and starts
    /// one inference thread per model. Fails on the first model that cannot be loaded.
    pub fn load(specs: &[ModelSpec]) -> Result<BurnEngine, EngineError> {
        let mut models = Vec::with_capacity(specs.len());
        for spec in specs {
            if models.iter().any(|m: &ModelHandle| m.info.id == spec.name) {
                return Err(EngineError::Load {
                    path: spec.path.clone(),
                    reason: format!("model name `{}` is used twice", spec.name),
                });
            }
            models.push(start_model(spec)?);
        }
        Ok(BurnEngine { models })
    }

    fn model(&self, name: &str) -> Result<&ModelHandle, EngineError> {
        self.models
            .iter()
            .find(|m| m.info.id == name)
            .ok_or_else(|| EngineError::UnknownModel(name.to_owned()))
    }
}

fn start_model(spec: &ModelSpec) -> Result<ModelHandle, EngineError> {
    let (queue_tx, queue_rx) = std::sync::mpsc::sync_channel::<Work>(spec.max_queue.max(1));
    let pooling = resolve_pooling(spec)?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let counters = Arc::new(Counters::default());
    let shutdown = Arc::new(AtomicBool::new(false));
    let spec2 = spec.clone();
    let (c2, s2) = (Arc::clone(&counters), Arc::clone(&shutdown));
    // The model is built on its own thread: burn device state then never crosses threads.
    let thread = std::thread::Builder::new()
        .name(format!("airlock-infer-{}", spec.name))
        .spawn(move || {
            let loaded = match load_dir(
                &spec2.path,
                spec2.device,
                if spec2.verify_manifest {
                    Integrity::Manifest {
                        pin: spec2.manifest_sha256.as_deref(),
                    }
                } else {
                    Integrity::Unverified
                },
                spec2.max_context,
                spec2.quantize,
            ) {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let model = loaded;
            let info = ModelInfo {
                id: spec2.name.clone(),
                created: unix_now(),
                context_length: model.context_length,
                device: model.device.clone(),
                features: crate::ModelFeatures {
                    chat: model.tokenizer.has_chat_template(),
                    tokenizer: true,
                    logprobs: true,
                    tools: model.tokenizer.tool_format(),
                    // Decided for certain on the first constrained request (the token trie);
                    // a model without an end-of-sequence token could never end its output.
                    grammar: !model.tokenizer.eos_ids().is_empty(),
                    embeddings: pooling,
                },
                embedding_size: pooling.map(|_| model.model.hidden_size()),
            };
            let vocab = model.model.config.vocab_size;
            let per_position = model.model.kv_bytes_per_token();
            let max_active = spec2.max_active.max(1);
            // Default: every slot can hold a full context, so nothing is ever preempted.
            let budget = spec2
                .kv_cache_bytes
                .unwrap_or(max_active * model.context_length * per_position);
            let pool = BlockPool::new(budget, per_position);
            let sizes = (pool.capacity_positions(), budget);
            if ready_tx
                .send(Ok((info, vocab, Arc::clone(&model.tokenizer), sizes)))
                .is_err()
            {
                return;
            }
            let mut worker = Worker {
                model,
                queue: queue_rx,
                counters: c2,
                shutdown: s2,
                limits: Limits {
                    max_active,
                    prefill_chunk: spec2.prefill_chunk.max(1),
                    max_batch_tokens: spec2.max_batch_tokens.max(1),
                },
                pool,
                tenants: TenantQueues::default(),
                embeds: EmbedQueue::new(pooling.unwrap_or(Pooling::Last)),
                active: Vec::new(),
                admissions: 0,
            };
            worker.run();
        })
        .map_err(|e| EngineError::Load {
            path: spec.path.clone(),
            reason: format!("cannot start the inference thread: {e}"),
        })?;
    let (info, vocab_size, tokenizer, (kv_positions, kv_budget_bytes)) = match ready_rx.recv() {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            let _ = thread.join();
            return Err(e);
        }
        Err(_) => {
            let _ = thread.join();
            return Err(EngineError::Load {
                path: spec.path.clone(),
                reason: "the inference thread died while loading".into(),
            });
        }
    };
    Ok(ModelHandle {
        info,
        vocab_size,
        grammars: crate::constraint::Grammars::new(vocab_size),
        tokenizer,
        kv_positions,
        kv_budget_bytes,
        queue: Some(queue_tx),
        max_queue: spec.max_queue,
        counters,
        shutdown,
        thread: Some(thread),
    })
}

/// The pooling a model serves embeddings with (`None`: it serves none): the directory's
/// `1_Pooling/config.json`, else the spec's `pooling`, else `last`; on when either is
/// present unless `embeddings = false`, or when `embeddings = true`.
fn resolve_pooling(spec: &ModelSpec) -> Result<Option<Pooling>, EngineError> {
    let declared = pooling_from_dir(&spec.path)?;
    if let (Some(dir), Some(set)) = (declared, spec.pooling)
        && dir != set
    {
        return Err(EngineError::Load {
            path: spec.path.join("1_Pooling").join("config.json"),
            reason: format!(
                "declares `{}` pooling; the model's `pooling = \"{}\"` contradicts it",
                dir.name(),
                set.name()
            ),
        });
    }
    let pooling = declared.or(spec.pooling);
    let on = spec.embeddings.unwrap_or(pooling.is_some());
    Ok(on.then(|| pooling.unwrap_or(Pooling::Last)))
}

/// A request's sequence and delivery state, waiting in its tenant's queue or running.
struct Slot {
    seq: Sequence,
    tenant: String,
    sender: GenerationSender,
    outbox: VecDeque<TokenEvent>,
    request_id: String,
    /// `Started` was sent (a preempted sequence does not send it again).
    started: bool,
    /// KV-cache blocks held.
    blocks: usize,
    /// Admission order: the newest running sequence is the first to be preempted.
    admitted: u64,
}

impl Slot {
    /// Sends buffered events until the client's buffer is full. Returns whether any went.
    fn flush(&mut self) -> bool {
        let mut sent = false;
        while let Some(ev) = self.outbox.pop_front() {
            match self.sender.try_send(ev) {
                Ok(()) => sent = true,
                Err(Some(ev)) => {
                    self.outbox.push_front(ev);
                    break;
                }
                Err(None) => break,
            }
        }
        sent
    }

    fn fail(&mut self, e: EngineError) {
        tracing::warn!(request_id = %self.request_id, error = %e, "generation failed");
        self.outbox.push_back(TokenEvent::Failed(e));
        self.seq.abort();
    }
}

/// Scheduling limits of one worker.
struct Limits {
    max_active: usize,
    prefill_chunk: usize,
    max_batch_tokens: usize,
}

struct Worker {
    model: LoadedModel,
    queue: Receiver<Work>,
    counters: Arc<Counters>,
    shutdown: Arc<AtomicBool>,
    limits: Limits,
    pool: BlockPool,
    tenants: TenantQueues<Slot>,
    /// Embedding requests, run one pass between two generation steps.
    embeds: EmbedQueue,
    /// Running sequences, in admission order.
    active: Vec<Slot>,
    admissions: u64,
}

impl Worker {
    fn run(&mut self) {
        loop {
            if self.shutdown.load(Ordering::Acquire) {
                let waiting = self.tenants.drain_all();
                for a in self.active.drain(..).chain(waiting) {
                    let _ = a
                        .sender
                        .try_send(TokenEvent::Failed(EngineError::Unavailable));
                }
                self.embeds.fail_all(&EngineError::Unavailable);
                return;
            }
            if !self.receive() {
                return;
            }
            let gone = self.tenants.remove_waiting(|s| s.sender.is_cancelled());
            self.counters
                .queued
                .fetch_sub(gone.len(), Ordering::Relaxed);
            let gone = self.embeds.drop_cancelled(&mut self.pool);
            self.counters.queued.fetch_sub(gone, Ordering::Relaxed);
            self.admit();
            let mut progressed = self.step();
            progressed |= self.embed_step();
            self.retire();
            self.counters
                .active
                .store(self.active.len(), Ordering::Relaxed);
            self.counters
                .kv_cache_bytes
                .store(self.pool.bytes_in_use(), Ordering::Relaxed);
            let busy = !self.active.is_empty() || !self.embeds.is_empty();
            if !progressed && busy {
                // Every sequence waits on a slow reader: do not spin.
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    /// Moves submitted jobs into their tenants' queues, waiting a little when there is
    /// nothing to do. Returns `false` once the engine is gone.
    fn receive(&mut self) -> bool {
        let idle = self.active.is_empty() && self.tenants.waiting() == 0 && self.embeds.is_empty();
        if idle {
            match self.queue.recv_timeout(Duration::from_millis(200)) {
                Ok(work) => self.enqueue(work),
                Err(RecvTimeoutError::Timeout) => return true,
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
        while let Ok(work) = self.queue.try_recv() {
            self.enqueue(work);
        }
        true
    }

    fn enqueue(&mut self, work: Work) {
        let job = match work {
            Work::Generate(job) => *job,
            Work::Embed(job) => return self.embeds.push(job),
        };
        let mut seq = Sequence::new(
            &self.model,
            job.prompt,
            &job.params,
            job.stop,
            job.submitted,
        );
        seq.cap_positions(self.pool.capacity_positions());
        if let Some(c) = job.constraint {
            seq.constrain(c);
        }
        let slot = Slot {
            seq,
            tenant: job.tenant,
            sender: job.sender,
            outbox: VecDeque::new(),
            request_id: job.request_id,
            started: false,
            blocks: 0,
            admitted: 0,
        };
        let tenant = slot.tenant.clone();
        self.tenants.push_back(&tenant, job.weight, slot);
    }

    /// Frees a running sequence's KV cache and requeues it at the front of its tenant's
    /// queue, to be prefilled again (prompt and generated tokens) when readmitted.
    fn preempt(&mut self, index: usize) {
        let mut slot = self.active.remove(index);
        tracing::debug!(request_id = %slot.request_id, "sequence preempted");
        slot.seq.preempt();
        self.pool.give_back(std::mem::take(&mut slot.blocks));
        self.tenants.leave(&slot.tenant);
        self.counters.queued.fetch_add(1, Ordering::Relaxed);
        let tenant = slot.tenant.clone();
        self.tenants.push_front(&tenant, slot);
    }

    /// The newest running sequence of `tenant`.
    fn newest_of(&self, tenant: &str) -> Option<usize> {
        (0..self.active.len())
            .filter(|&i| self.active[i].tenant == tenant)
            .max_by_key(|&i| self.active[i].admitted)
    }

    /// Admits waiting sequences, fairest tenant first, while slots and KV blocks for their
    /// first prefill chunk are free. With every slot taken by tenants above their share while
    /// another waits below its own, the newest sequence of the tenant most over its share is
    /// preempted to make room.
    fn admit(&mut self) {
        loop {
            let tenant = if self.active.len() >= self.limits.max_active {
                let Some((starved, victim)) = self.tenants.slot_victim(self.limits.max_active)
                else {
                    return;
                };
                let Some(i) = self.newest_of(&victim) else {
                    return;
                };
                self.preempt(i);
                starved
            } else {
                match self.tenants.next_to_admit(self.limits.max_active) {
                    Some(t) => t,
                    None => return,
                }
            };
            let Some(mut slot) = self.tenants.admit(&tenant) else {
                return;
            };
            let first = slot.seq.pending().min(self.limits.prefill_chunk);
            let need = BlockPool::blocks_for(slot.seq.cached_tokens() + first);
            if !self.pool.try_take(need) {
                // The pool is exhausted: the request stays queued until blocks are freed.
                self.tenants.leave(&tenant);
                self.tenants.push_front(&tenant, slot);
                return;
            }
            slot.blocks = need;
            self.counters.queued.fetch_sub(1, Ordering::Relaxed);
            self.admissions += 1;
            slot.admitted = self.admissions;
            if !slot.started {
                slot.started = true;
                slot.outbox.push_back(TokenEvent::Started {
                    prompt_tokens: slot.seq.prompt().len(),
                });
            }
            tracing::debug!(request_id = %slot.request_id, "sequence admitted");
            self.active.push(slot);
        }
    }

    /// Which sequences take part in this step and with how many tokens: every decoding
    /// sequence one token, then prefill chunks, lowest tenant virtual time first, within
    /// the step's token budget. Takes the KV blocks they need, preempting newer sequences
    /// (of the tenant with the highest virtual time) when the pool runs dry.
    fn plan(&mut self) -> Vec<(usize, usize)> {
        let ready: Vec<usize> = (0..self.active.len())
            .filter(|&i| {
                let a = &self.active[i];
                !a.sender.is_cancelled() && a.outbox.is_empty() && !a.seq.is_finished()
            })
            .collect();
        let mut decodes: Vec<usize> = ready
            .iter()
            .copied()
            .filter(|&i| self.active[i].seq.pending() == 1)
            .collect();
        let mut prefills: Vec<usize> = ready
            .iter()
            .copied()
            .filter(|&i| self.active[i].seq.pending() > 1)
            .collect();
        decodes.sort_by_key(|&i| self.active[i].admitted);
        prefills.sort_by(|&a, &b| {
            let (sa, sb) = (&self.active[a], &self.active[b]);
            self.tenants
                .vtime(&sa.tenant)
                .total_cmp(&self.tenants.vtime(&sb.tenant))
                .then(sa.admitted.cmp(&sb.admitted))
        });
        let mut budget = self.limits.max_batch_tokens;
        // Planned by admission number, so preemption (which shifts indices) cannot confuse
        // them; resolved to indices at the end.
        let mut planned: Vec<(u64, usize)> = Vec::new();
        let order: Vec<(u64, bool)> = decodes
            .iter()
            .map(|&i| (self.active[i].admitted, true))
            .chain(prefills.iter().map(|&i| (self.active[i].admitted, false)))
            .collect();
        for (id, decode) in order {
            let Some(i) = self.active.iter().position(|a| a.admitted == id) else {
                continue; // preempted for an earlier item
            };
            let pending = self.active[i].seq.pending();
            let chunk = pending.min(self.limits.prefill_chunk);
            let n = if decode {
                1
            } else if budget > 0 {
                chunk.min(budget)
            } else if planned.is_empty() {
                chunk
            } else {
                continue;
            };
            let need = BlockPool::blocks_for(self.active[i].seq.cached_tokens() + n)
                .saturating_sub(self.active[i].blocks);
            while self.pool.free() < need {
                // The newest sequence admitted after this one, of the tenant furthest ahead.
                let victim = (0..self.active.len())
                    .filter(|&j| self.active[j].admitted > id)
                    .max_by(|&a, &b| {
                        let (sa, sb) = (&self.active[a], &self.active[b]);
                        self.tenants
                            .vtime(&sa.tenant)
                            .total_cmp(&self.tenants.vtime(&sb.tenant))
                            .then(sa.admitted.cmp(&sb.admitted))
                    });
                let Some(j) = victim else { break };
                let vid = self.active[j].admitted;
                planned.retain(|&(p, _)| p != vid);
                self.preempt(j);
            }
            let Some(i) = self.active.iter().position(|a| a.admitted == id) else {
                continue;
            };
            if !self.pool.try_take(need) {
                // Nothing newer to preempt: this sequence gives way to the older ones.
                self.preempt(i);
                continue;
            }
            self.active[i].blocks += need;
            budget = budget.saturating_sub(n);
            planned.push((id, n));
        }
        let mut plan: Vec<(usize, usize)> = planned
            .into_iter()
            .filter_map(|(id, n)| {
                self.active
                    .iter()
                    .position(|a| a.admitted == id)
                    .map(|i| (i, n))
            })
            .collect();
        plan.sort_unstable();
        plan
    }

    /// Runs one batched forward pass over every sequence that can take a step. Returns
    /// whether anything happened (a step, or events delivered).
    fn step(&mut self) -> bool {
        let mut progressed = false;
        for a in &mut self.active {
            progressed |= a.flush();
            if a.outbox.is_empty() && a.seq.wants_nothing() {
                match a.seq.finish_empty(&self.model) {
                    Ok(ev) => a.outbox.push_back(ev),
                    Err(e) => a.fail(e),
                }
                progressed = true;
            }
        }
        let plan = self.plan();
        if plan.is_empty() {
            return progressed;
        }
        let inputs: Vec<(Vec<u32>, bool)> = plan
            .iter()
            .map(|&(i, n)| self.active[i].seq.next_input(n))
            .collect();
        let mut items = Vec::with_capacity(plan.len());
        let mut next = plan.iter().zip(&inputs).peekable();
        for (i, a) in self.active.iter_mut().enumerate() {
            if let Some((_, (tokens, want))) = next.next_if(|((p, _), _)| *p == i) {
                items.push(BatchItem {
                    tokens,
                    cache: a.seq.cache_mut(),
                    want: if *want { Want::Logits } else { Want::Nothing },
                });
            }
        }
        let model = &self.model.model;
        let started = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| model.forward_batch(&mut items)))
            .unwrap_or_else(|_| Err(EngineError::Inference("the forward pass panicked".into())));
        drop(items);
        let elapsed = started.elapsed().as_secs_f64();
        match result {
            Ok(logits) => {
                for (&(i, n), (tokens, _)) in plan.iter().zip(&inputs) {
                    debug_assert_eq!(n, tokens.len());
                    self.tenants.charge(&self.active[i].tenant, tokens.len());
                }
                // Sampling, grammar masks and detokenizing are per sequence: with several
                // in the batch they run on the thread pool side by side (each over its own
                // 100k-entry logits), not one after another on this thread.
                let mut planned: Vec<(&mut Slot, Option<Vec<f32>>)> =
                    Vec::with_capacity(plan.len());
                let mut logits = logits.into_iter();
                let mut next = plan.iter().peekable();
                for (i, a) in self.active.iter_mut().enumerate() {
                    if next.next_if(|(p, _)| *p == i).is_some() {
                        planned.push((a, logits.next().flatten()));
                    }
                }
                let sample = |(a, logits): (&mut Slot, Option<Vec<f32>>)| match a.seq.after_forward(
                    &self.model,
                    logits,
                    elapsed,
                ) {
                    Ok(events) => a.outbox.extend(events),
                    Err(e) => a.fail(e),
                };
                if planned.len() > 1 {
                    use rayon::iter::{IntoParallelIterator, ParallelIterator};
                    planned.into_par_iter().for_each(sample);
                } else {
                    planned.into_iter().for_each(sample);
                }
            }
            Err(e) => {
                for &(i, _) in &plan {
                    self.active[i].fail(e.clone());
                }
            }
        }
        for &(i, _) in &plan {
            self.active[i].flush();
        }
        true
    }

    /// One embedding pass, within the same chunk size and token budget as a generation
    /// step. Returns whether one ran. A finished request leaves the queue count.
    fn embed_step(&mut self) -> bool {
        let budget = Budget {
            chunk: self.limits.prefill_chunk,
            tokens: self.limits.max_batch_tokens,
        };
        match self.embeds.step(&self.model.model, &mut self.pool, &budget) {
            None => false,
            Some(finished) => {
                self.counters.queued.fetch_sub(finished, Ordering::Relaxed);
                true
            }
        }
    }

    /// Drops cancelled sequences and finished ones whose events are delivered; a finished
    /// sequence gives its KV blocks back at once, even while its last events wait.
    fn retire(&mut self) {
        let mut i = 0;
        while i < self.active.len() {
            let a = &mut self.active[i];
            // Read once: the client may cancel between two reads.
            let cancelled = a.sender.is_cancelled();
            if a.seq.is_finished() || cancelled {
                a.seq.preempt();
                self.pool.give_back(std::mem::take(&mut a.blocks));
            }
            if cancelled || a.seq.is_finished() && a.outbox.is_empty() {
                let a = self.active.remove(i);
                self.tenants.leave(&a.tenant);
            } else {
                i += 1;
            }
        }
    }
}

impl Drop for BurnEngine {
    fn drop(&mut self) {
        for m in &mut self.models {
            m.shutdown.store(true, Ordering::Release);
            m.queue.take();
        }
        for m in &mut self.models {
            if let Some(t) = m.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl ModelHandle {
    /// Hands work to the model's thread within `max_queue`: the bound covers the worker's
    /// tenant queues too, not only the channel (the worker counts a job out when it starts).
    fn enqueue(&self, work: Work) -> Result<(), EngineError> {
        let queue = self.queue.as_ref().ok_or(EngineError::Unavailable)?;
        let full = EngineError::QueueFull {
            capacity: self.max_queue,
        };
        if self
            .counters
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q < self.max_queue.max(1)).then_some(q + 1)
            })
            .is_err()
        {
            return Err(full);
        }
        queue.try_send(work).map_err(|e| {
            self.counters.queued.fetch_sub(1, Ordering::Relaxed);
            match e {
                TrySendError::Full(_) => full,
                TrySendError::Disconnected(_) => EngineError::Unavailable,
            }
        })
    }
}

/// Refuses token ids outside the model's vocabulary (named `prompt`: the field token ids
/// arrive in, on every route that takes them).
fn check_vocab(m: &ModelHandle, ids: &[u32]) -> Result<(), EngineError> {
    match ids.iter().find(|&&t| t as usize >= m.vocab_size) {
        Some(bad) => Err(EngineError::InvalidRequest {
            param: "prompt",
            reason: format!(
                "token id {bad} is outside the vocabulary ({})",
                m.vocab_size
            ),
        }),
        None => Ok(()),
    }
}

impl Engine for BurnEngine {
    fn models(&self) -> Vec<ModelInfo> {
        self.models.iter().map(|m| m.info.clone()).collect()
    }

    fn count_prompt_tokens(&self, model: &str, prompt: &Prompt) -> Result<usize, EngineError> {
        Ok(self.model(model)?.tokenizer.encode_prompt(prompt)?.len())
    }

    fn submit(&self, request: GenerateRequest) -> Result<Generation, EngineError> {
        self.submit_prepared(request, Prepared::counted(0))
    }

    fn prepare(&self, model: &str, prompt: &Prompt) -> Result<Prepared, EngineError> {
        Ok(Prepared::tokenized(
            self.model(model)?.tokenizer.encode_prompt(prompt)?,
        ))
    }

    fn submit_prepared(
        &self,
        request: GenerateRequest,
        prepared: Prepared,
    ) -> Result<Generation, EngineError> {
        let m = self.model(&request.model)?;
        validate(&request.params)?;
        let stop = crate::detok::StopMatcher::new(&request.params.stop)?;
        // Compiled here, on the caller's thread: a schema the compiler refuses is the
        // client's 400, and the engine thread only advances a compiled matcher.
        let constraint = request
            .params
            .grammar
            .as_ref()
            .map(|g| m.grammars.compile(&m.tokenizer, g))
            .transpose()?;
        let prompt = match prepared.into_ids() {
            Some(ids) => ids,
            None => m.tokenizer.encode_prompt(&request.prompt)?,
        };
        check_vocab(m, &prompt)?;
        let context = m.info.context_length;
        let wanted = request.params.max_tokens.unwrap_or(1);
        if prompt.len() + wanted > context {
            return Err(EngineError::ContextLength {
                context_length: context,
                prompt_tokens: prompt.len(),
                max_tokens: wanted,
            });
        }
        // Without `max_tokens` the completion is capped to what the budget holds instead.
        let kv_needed = prompt.len() + request.params.max_tokens.unwrap_or(1);
        if kv_needed > m.kv_positions {
            return Err(EngineError::KvBudget {
                budget_tokens: m.kv_positions,
                budget_bytes: m.kv_budget_bytes,
                prompt_tokens: prompt.len(),
                max_tokens: request.params.max_tokens.unwrap_or(1),
            });
        }
        let (sender, generation) = Generation::channel(EVENT_BUFFER);
        let job = Job {
            request_id: request.request_id,
            tenant: request.tenant,
            weight: request.tenant_weight.max(1),
            prompt,
            params: request.params,
            stop,
            constraint,
            sender,
            submitted: Instant::now(),
        };
        m.enqueue(Work::Generate(Box::new(job)))?;
        Ok(generation)
    }

    fn embed(&self, request: EmbedRequest) -> Result<PendingEmbeddings, EngineError> {
        let m = self.model(&request.model)?;
        if m.info.features.embeddings.is_none() {
            return Err(crate::api::no_embeddings(&request.model));
        }
        // Tokenized here, on the caller's thread (the gateway sends ids it already has).
        let mut inputs = Vec::with_capacity(request.inputs.len());
        for (i, input) in request.inputs.iter().enumerate() {
            let refuse = |reason: String| EngineError::InvalidRequest {
                param: "input",
                reason: format!("input[{i}]: {reason}"),
            };
            let ids = match input {
                Prompt::Chat(..) => return Err(refuse("chat messages cannot be embedded".into())),
                Prompt::TokenIds(ids) => ids.clone(),
                text => m.tokenizer.encode_prompt(text)?,
            };
            if ids.is_empty() {
                return Err(refuse("an input has at least one token".into()));
            }
            if ids.len() > m.info.context_length {
                return Err(refuse(format!(
                    "{} tokens; this model's maximum context length is {} tokens",
                    ids.len(),
                    m.info.context_length
                )));
            }
            if ids.len() > m.kv_positions {
                return Err(EngineError::KvBudget {
                    budget_tokens: m.kv_positions,
                    budget_bytes: m.kv_budget_bytes,
                    prompt_tokens: ids.len(),
                    max_tokens: 0,
                });
            }
            check_vocab(m, &ids)?;
            inputs.push(ids);
        }
        let (sender, pending) = PendingEmbeddings::channel();
        let job = EmbedJob {
            request_id: request.request_id,
            inputs,
            sender,
        };
        m.enqueue(Work::Embed(job))?;
        Ok(pending)
    }

    fn tokenize(
        &self,
        model: &str,
        text: &str,
        add_special: bool,
    ) -> Result<Vec<u32>, EngineError> {
        let tokenizer = &self.model(model)?.tokenizer;
        if add_special {
            tokenizer.encode_text(text)
        } else {
            tokenizer.encode_raw(text, false)
        }
    }

    fn token_pieces(&self, model: &str, ids: &[u32]) -> Result<Vec<String>, EngineError> {
        let m = self.model(model)?;
        check_vocab(m, ids)?;
        ids.iter()
            .map(|&id| m.tokenizer.decode_with(&[id], false))
            .collect()
    }

    fn detokenize(&self, model: &str, ids: &[u32]) -> Result<String, EngineError> {
        let m = self.model(model)?;
        check_vocab(m, ids)?;
        m.tokenizer.decode_with(ids, false)
    }

    fn status(&self) -> EngineStatus {
        let mut s = EngineStatus::default();
        for m in &self.models {
            s.queued += m.counters.queued.load(Ordering::Relaxed);
            s.active += m.counters.active.load(Ordering::Relaxed);
            s.kv_cache_bytes += m.counters.kv_cache_bytes.load(Ordering::Relaxed);
        }
        s
    }
}
