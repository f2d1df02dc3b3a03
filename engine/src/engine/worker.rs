//! The inference thread of one model: its [`Worker`] receives submitted work, admits
//! sequences into the running set while the KV-cache budget has blocks (fairest tenant
//! first), plans each step's batch (decode tokens, then prefill chunks within the token
//! budget), runs one forward pass, and delivers the events; the module docs of
//! [`super`] tell the whole story.
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

pub(super) use super::prefix::PrefixCache;
use super::{Counters, Work};
use crate::embed::{Budget, EmbedQueue};
use crate::kv::BlockPool;
use crate::loader::LoadedModel;
use crate::models::{BatchItem, Want};
use crate::scheduler::TenantQueues;
use crate::sequence::Sequence;
use crate::{EngineError, GenerationSender, TokenEvent};

/// A request's sequence and delivery state, waiting in its tenant's queue or running.
pub(super) struct Slot {
    pub(super) seq: Sequence,
    pub(super) tenant: String,
    pub(super) sender: GenerationSender,
    pub(super) outbox: VecDeque<TokenEvent>,
    pub(super) request_id: String,
    /// `Started` was sent (a preempted sequence does not send it again).
    pub(super) started: bool,
    /// KV-cache blocks held.
    pub(super) blocks: usize,
    /// Admission order: the newest running sequence is the first to be preempted.
    pub(super) admitted: u64,
    /// The other samples of the same prompt (OpenAI's `n`), waiting for this sequence's
    /// prefill to be forked from it; empty once forked, and for a one-sample request.
    pub(super) forks: Vec<Slot>,
    /// Blocks taken at admission for the forks' copies of the prompt's cache, so that a fork
    /// never waits for blocks once its prompt is prefilled.
    pub(super) reserved: usize,
    /// The tokens this step verifies after the pending one (speculative decoding).
    pub(super) draft: Vec<u32>,
}

impl Slot {
    /// Samples this slot stands for in the queue count: itself and its forks.
    pub(super) fn samples(&self) -> usize {
        1 + self.forks.len()
    }

    /// Sends buffered events until the client's buffer is full. Returns whether any went.
    pub(super) fn flush(&mut self) -> bool {
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

    pub(super) fn fail(&mut self, e: EngineError) {
        tracing::warn!(request_id = %self.request_id, error = %e, "generation failed");
        self.outbox.push_back(TokenEvent::Failed(e));
        self.seq.abort();
    }
}

/// Scheduling limits of one worker.
pub(super) struct Limits {
    pub(super) max_active: usize,
    pub(super) prefill_chunk: usize,
    pub(super) max_batch_tokens: usize,
    /// Prompt-lookup drafting for greedy sequences (`None`: off).
    pub(super) speculative: Option<crate::Speculative>,
}

pub(super) struct Worker {
    pub(super) model: LoadedModel,
    pub(super) queue: Receiver<Work>,
    pub(super) counters: Arc<Counters>,
    pub(super) shutdown: Arc<AtomicBool>,
    pub(super) limits: Limits,
    pub(super) pool: BlockPool,
    pub(super) tenants: TenantQueues<Slot>,
    /// Embedding requests, run one pass between two generation steps.
    pub(super) embeds: EmbedQueue,
    /// Running sequences, in admission order.
    pub(super) active: Vec<Slot>,
    pub(super) admissions: u64,
    /// KV caches of ended sequences, for later prompts that start the same way.
    pub(super) prefixes: PrefixCache,
}

impl Worker {
    pub(super) fn run(&mut self) {
        loop {
            if self.shutdown.load(Ordering::Acquire) {
                let waiting = self.tenants.drain_all();
                for a in self.active.drain(..).chain(waiting) {
                    for s in std::iter::once(&a).chain(&a.forks) {
                        let _ = s
                            .sender
                            .try_send(TokenEvent::Failed(EngineError::Unavailable));
                    }
                }
                self.embeds.fail_all(&EngineError::Unavailable);
                return;
            }
            if !self.receive() {
                return;
            }
            for gone in self.tenants.remove_waiting(|s| s.sender.is_cancelled()) {
                self.counters
                    .queued
                    .fetch_sub(gone.samples(), Ordering::Relaxed);
                self.requeue_forks(&gone.tenant, gone.forks);
            }
            let gone = self.embeds.drop_cancelled(&mut self.pool);
            self.counters.queued.fetch_sub(gone, Ordering::Relaxed);
            if !self.embeds.is_empty() {
                // Embedding passes take their blocks as they go: no cached prefix stands
                // in their way.
                self.prefixes.clear(&mut self.pool);
            }
            self.admit();
            let mut progressed = self.step();
            progressed |= self.embed_step();
            self.retire();
            self.counters
                .active
                .store(self.active.len(), Ordering::Relaxed);
            let cached = self.prefixes.blocks() * self.pool.block_bytes();
            self.counters
                .kv_cache_bytes
                .store(self.pool.bytes_in_use() - cached, Ordering::Relaxed);
            self.counters
                .prefix_cache_bytes
                .store(cached, Ordering::Relaxed);
            let busy = !self.active.is_empty() || !self.embeds.is_empty();
            if !progressed && busy {
                // Every sequence waits on a slow reader: do not spin.
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    /// Moves submitted jobs into their tenants' queues, waiting a little when there is
    /// nothing to do. Returns `false` once the engine is gone.
    pub(super) fn receive(&mut self) -> bool {
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

    pub(super) fn enqueue(&mut self, work: Work) {
        let job = match work {
            Work::Generate(job) => *job,
            Work::Embed(job) => return self.embeds.push(job),
        };
        let capacity = self.pool.capacity_positions();
        let mut slots = job.samples.into_iter().map(|sample| {
            let mut seq = Sequence::new(
                &self.model,
                job.prompt.clone(),
                &sample.params,
                sample.stop,
                job.submitted,
            );
            seq.cap_positions(capacity);
            if let Some(c) = sample.constraint {
                seq.constrain(c);
            }
            Slot {
                seq,
                tenant: job.tenant.clone(),
                sender: sample.sender,
                outbox: VecDeque::new(),
                request_id: job.request_id.clone(),
                started: false,
                blocks: 0,
                admitted: 0,
                forks: Vec::new(),
                reserved: 0,
                draft: Vec::new(),
            }
        });
        let Some(mut slot) = slots.next() else {
            return;
        };
        slot.forks = slots.collect();
        self.tenants.push_back(&job.tenant, job.weight, slot);
    }

    /// Frees a running sequence's KV cache and requeues it at the front of its tenant's
    /// queue, to be prefilled again (prompt and generated tokens) when readmitted.
    pub(super) fn preempt(&mut self, index: usize) {
        let mut slot = self.active.remove(index);
        tracing::debug!(request_id = %slot.request_id, "sequence preempted");
        slot.seq.preempt();
        // Planned with a draft, then preempted for an older sequence: nothing to verify.
        slot.draft.clear();
        self.pool
            .give_back(std::mem::take(&mut slot.blocks) + std::mem::take(&mut slot.reserved));
        self.tenants.leave(&slot.tenant);
        self.counters
            .queued
            .fetch_add(slot.samples(), Ordering::Relaxed);
        let tenant = slot.tenant.clone();
        self.tenants.push_front(&tenant, slot);
    }

    /// The newest running sequence of `tenant`.
    pub(super) fn newest_of(&self, tenant: &str) -> Option<usize> {
        (0..self.active.len())
            .filter(|&i| self.active[i].tenant == tenant)
            .max_by_key(|&i| self.active[i].admitted)
    }

    /// Admits waiting sequences, fairest tenant first, while slots and KV blocks for their
    /// first prefill chunk are free. With every slot taken by tenants above their share while
    /// another waits below its own, the newest sequence of the tenant most over its share is
    /// preempted to make room.
    pub(super) fn admit(&mut self) {
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
            if slot.seq.cached_tokens() == 0 {
                let known: Vec<u32> = slot.seq.known_tokens().collect();
                if let Some(cache) = self.prefixes.lookup(&tenant, &known) {
                    self.counters
                        .prefix_cache_tokens
                        .fetch_add(cache.len() as u64, Ordering::Relaxed);
                    tracing::debug!(request_id = %slot.request_id, reused = cache.len(), "cached prefix reused");
                    slot.seq.resume_from(cache);
                }
            }
            let first = slot.seq.pending().min(self.limits.prefill_chunk);
            let need = BlockPool::blocks_for(slot.seq.cached_tokens() + first);
            let reserve = slot.forks.len() * BlockPool::blocks_for(slot.seq.prompt().len());
            if !self.prefixes.make_room(&mut self.pool, need + reserve)
                || !self.pool.try_take(need + reserve)
            {
                // The pool is exhausted: the request stays queued until blocks are freed.
                self.tenants.leave(&tenant);
                self.tenants.push_front(&tenant, slot);
                return;
            }
            slot.blocks = need;
            slot.reserved = reserve;
            self.counters
                .queued
                .fetch_sub(slot.samples(), Ordering::Relaxed);
            self.admissions += 1;
            slot.admitted = self.admissions;
            if !slot.started {
                let started = TokenEvent::Started {
                    prompt_tokens: slot.seq.prompt().len(),
                };
                for f in &mut slot.forks {
                    f.started = true;
                    f.outbox.push_back(started.clone());
                    f.flush();
                }
                slot.started = true;
                slot.outbox.push_back(started);
            }
            tracing::debug!(request_id = %slot.request_id, "sequence admitted");
            self.active.push(slot);
        }
    }

    /// Which sequences take part in this step and with how many tokens: every decoding
    /// sequence one token, then prefill chunks, lowest tenant virtual time first, within
    /// the step's token budget. Takes the KV blocks they need, preempting newer sequences
    /// (of the tenant with the highest virtual time) when the pool runs dry.
    pub(super) fn plan(&mut self) -> Vec<(usize, usize)> {
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
                // A greedy decode verifies a draft in the same pass, within the budget.
                let draft = match &self.limits.speculative {
                    Some(spec) => {
                        let mut d = self.active[i].seq.draft(spec);
                        d.truncate(budget.saturating_sub(1));
                        d
                    }
                    None => Vec::new(),
                };
                self.active[i].draft = draft;
                1 + self.active[i].draft.len()
            } else if budget > 0 {
                chunk.min(budget)
            } else if planned.is_empty() {
                chunk
            } else {
                continue;
            };
            let need = BlockPool::blocks_for(self.active[i].seq.cached_tokens() + n)
                .saturating_sub(self.active[i].blocks);
            // Cached prefixes give way before any running sequence does.
            self.prefixes.make_room(&mut self.pool, need);
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
    pub(super) fn step(&mut self) -> bool {
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
        let inputs: Vec<(Vec<u32>, Want)> = plan
            .iter()
            .map(|&(i, n)| {
                let a = &self.active[i];
                if a.draft.is_empty() {
                    let (tokens, last) = a.seq.next_input(n);
                    (tokens, if last { Want::Logits } else { Want::Nothing })
                } else {
                    let (mut tokens, _) = a.seq.next_input(1);
                    tokens.extend_from_slice(&a.draft);
                    (tokens, Want::AllLogits)
                }
            })
            .collect();
        let prefilled: usize = plan
            .iter()
            .map(|&(i, n)| {
                let seq = &self.active[i].seq;
                seq.prompt()
                    .len()
                    .saturating_sub(seq.cached_tokens())
                    .min(n)
            })
            .sum();
        let mut items = Vec::with_capacity(plan.len());
        let mut next = plan.iter().zip(&inputs).peekable();
        for (i, a) in self.active.iter_mut().enumerate() {
            if let Some((_, (tokens, want))) = next.next_if(|((p, _), _)| *p == i) {
                items.push(BatchItem {
                    tokens,
                    cache: a.seq.cache_mut(),
                    want: *want,
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
                self.counters
                    .prefill_tokens
                    .fetch_add(prefilled as u64, Ordering::Relaxed);
                // Before anyone samples: the forks take the logits as the pass gave them.
                let mut forked = self.fork(&plan, &logits);
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
                for (f, logits) in &mut forked {
                    planned.push((f, logits.take()));
                }
                let drafted: usize = planned.iter().map(|(a, _)| a.draft.len()).sum();
                let accepted = std::sync::atomic::AtomicUsize::new(0);
                let sample = |(a, logits): (&mut Slot, Option<Vec<f32>>)| {
                    let draft = std::mem::take(&mut a.draft);
                    let result = if draft.is_empty() {
                        a.seq.after_forward(&self.model, logits, elapsed)
                    } else {
                        a.seq
                            .after_verify(&self.model, logits, &draft, elapsed)
                            .map(|(events, n)| {
                                accepted.fetch_add(n, Ordering::Relaxed);
                                events
                            })
                    };
                    match result {
                        Ok(events) => a.outbox.extend(events),
                        Err(e) => a.fail(e),
                    }
                };
                if planned.len() > 1 {
                    use rayon::iter::{IntoParallelIterator, ParallelIterator};
                    planned.into_par_iter().for_each(sample);
                } else {
                    planned.into_iter().for_each(sample);
                }
                for (f, _) in forked {
                    self.join(f);
                }
                if drafted > 0 {
                    self.counters
                        .spec_drafted_tokens
                        .fetch_add(drafted as u64, Ordering::Relaxed);
                    self.counters
                        .spec_accepted_tokens
                        .fetch_add(accepted.into_inner() as u64, Ordering::Relaxed);
                    // Rejected drafts left the caches: so do the blocks they took.
                    for (&(i, _), (_, want)) in plan.iter().zip(&inputs) {
                        let a = &mut self.active[i];
                        let keep = BlockPool::blocks_for(a.seq.cached_tokens());
                        if *want == Want::AllLogits && a.blocks > keep {
                            self.pool.give_back(a.blocks - keep);
                            a.blocks = keep;
                        }
                    }
                }
            }
            Err(e) => {
                for &(i, _) in &plan {
                    self.active[i].draft.clear();
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
    pub(super) fn embed_step(&mut self) -> bool {
        // An encoder attends over the whole input at once: its inputs are never chunked.
        let whole = if self.model.model.config.encoder {
            self.model.context_length
        } else {
            0
        };
        let budget = Budget {
            chunk: self.limits.prefill_chunk.max(whole),
            tokens: self.limits.max_batch_tokens.max(whole),
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
    pub(super) fn retire(&mut self) {
        let mut orphans = Vec::new();
        let mut i = 0;
        while i < self.active.len() {
            let a = &mut self.active[i];
            // Read once: the client may cancel between two reads.
            let cancelled = a.sender.is_cancelled();
            if a.seq.is_finished() || cancelled {
                let (tokens, cache) = a.seq.take_cache();
                self.pool
                    .give_back(std::mem::take(&mut a.blocks) + std::mem::take(&mut a.reserved));
                // After its blocks went back: the entry takes only blocks nobody holds.
                self.prefixes
                    .insert(&mut self.pool, &a.tenant, tokens, cache);
                if !a.forks.is_empty() {
                    // Ended before its prefill was forked: the forks go on without it.
                    orphans.push((a.tenant.clone(), std::mem::take(&mut a.forks)));
                }
            }
            if cancelled || a.seq.is_finished() && a.outbox.is_empty() {
                let a = self.active.remove(i);
                self.tenants.leave(&a.tenant);
            } else {
                i += 1;
            }
        }
        for (tenant, forks) in orphans {
            self.requeue_forks(&tenant, forks);
        }
    }
}
