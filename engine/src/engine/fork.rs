//! OpenAI's `n` in the worker: one job, `n` samples of one prompt. The first sample's
//! sequence prefills the prompt (in chunks, preemptible, like any other); the others wait
//! inside its [`Slot`] as `forks`. In the step whose pass completes the prompt, before
//! anyone samples, each fork takes a copy of the KV cache and the same last-position
//! logits, and from then on is a sequence of its own: its own seed, grammar matcher, stop
//! matcher, event stream, blocks, preemption and cancellation.
//!
//! Blocks: admission takes, beside the first sample's prefill chunk, every fork's share of
//! the prompt's blocks (`Slot::reserved`), so a fork never waits for blocks; the blocks of a
//! fork cancelled before the fork go back to the pool then. A first sample that ends before
//! the fork (cancelled, failed, `max_tokens` 0) hands the prompt to the next live fork,
//! which is requeued at the front of its tenant's queue and prefills it again.

use std::sync::atomic::Ordering;

use super::{Slot, Worker};
use crate::kv::BlockPool;

impl Worker {
    /// Forks the planned sequences whose pass completed their prompt (`logits` per `plan`
    /// entry): the live forks, each with a copy of the cache and the logits to sample from.
    pub(super) fn fork(
        &mut self,
        plan: &[(usize, usize)],
        logits: &[Option<Vec<f32>>],
    ) -> Vec<(Slot, Option<Vec<f32>>)> {
        let mut forked = Vec::new();
        for (&(i, _), logits) in plan.iter().zip(logits) {
            let parent = &mut self.active[i];
            let Some(logits) = logits else { continue };
            if parent.forks.is_empty() {
                continue;
            }
            let blocks = BlockPool::blocks_for(parent.seq.cached_tokens());
            let mut reserved = std::mem::take(&mut parent.reserved);
            debug_assert_eq!(reserved, parent.forks.len() * blocks);
            for mut f in std::mem::take(&mut parent.forks) {
                if f.sender.is_cancelled() {
                    continue;
                }
                f.seq.fork_from(&parent.seq);
                f.blocks = blocks.min(reserved);
                reserved -= f.blocks;
                forked.push((f, Some(logits.clone())));
            }
            self.pool.give_back(reserved);
        }
        forked
    }

    /// A forked sample joins the running sequences, admitted after everyone running.
    pub(super) fn join(&mut self, mut slot: Slot) {
        self.admissions += 1;
        slot.admitted = self.admissions;
        self.tenants.join(&slot.tenant);
        slot.flush();
        tracing::debug!(request_id = %slot.request_id, "sample forked");
        self.active.push(slot);
    }

    /// The forks of a first sample that ended before its prefill was forked: the first live
    /// one takes the others and is requeued at the front of the tenant's queue.
    pub(super) fn requeue_forks(&mut self, tenant: &str, forks: Vec<Slot>) {
        let mut live = forks.into_iter().filter(|f| !f.sender.is_cancelled());
        let Some(mut heir) = live.next() else {
            return;
        };
        heir.forks = live.collect();
        self.counters
            .queued
            .fetch_add(heir.samples(), Ordering::Relaxed);
        self.tenants.push_front(tenant, heir);
    }
}
