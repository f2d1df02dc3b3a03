//! Prefix caching in the worker: when a sequence ends, its KV cache is kept with the tokens
//! whose positions it holds; a later request **of the same tenant** whose prompt starts
//! with enough of the same tokens (a shared system prompt, the earlier turns of a
//! conversation, an agent's tool definitions) starts from a copy of it and prefills only
//! the rest. The copy is cheap: cache tensors are values that share their storage until
//! one side writes (`KvCache::fork`).
//!
//! - **Tenants are isolated.** An entry is only ever matched by its own tenant's requests:
//!   across tenants, a faster first token would tell one tenant what another just sent
//!   (the timing side channel vLLM's `cache_salt` closes).
//! - **Memory is the KV budget's.** An entry holds blocks of the same pool as running
//!   sequences. It lives only in blocks nobody else needs: admission, a step that needs
//!   more blocks and embedding passes evict entries (least recently used first) before they
//!   would wait or preempt anyone.
//! - **Exactness.** The reused positions are the ones the model computed for the same tokens
//!   at the same positions; what follows is computed as a prefill chunk would be. Greedy
//!   output is the same with and without the cache (`engine/tests/prefix_cache.rs`).
//!
//! Matching is by whole blocks ([`BlockPool`] positions, so short coincidences are not
//! worth a lookup) and always leaves at least one token to run, whose logits give the
//! first new token.

use crate::kv::{BLOCK_POSITIONS, BlockPool};
use crate::models::KvCache;

/// Entries kept at most (per model). A lookup compares the prompt with each.
const MAX_ENTRIES: usize = 64;

struct Entry {
    tenant: String,
    tokens: Vec<u32>,
    cache: KvCache,
    blocks: usize,
    /// Last use (insertion or hit), for least-recently-used eviction.
    used: u64,
}

/// One model's cached prefixes.
pub(super) struct PrefixCache {
    enabled: bool,
    entries: Vec<Entry>,
    clock: u64,
    /// Blocks the entries hold, all together.
    blocks: usize,
}

impl PrefixCache {
    pub(super) fn new(enabled: bool) -> PrefixCache {
        PrefixCache {
            enabled,
            entries: Vec::new(),
            clock: 0,
            blocks: 0,
        }
    }

    /// Blocks held by cached prefixes.
    pub(super) fn blocks(&self) -> usize {
        self.blocks
    }

    /// Keeps the cache of an ended sequence of `tenant` (`tokens`: the positions it holds),
    /// in free blocks only. A prefix of it already kept is replaced; if it is itself the
    /// prefix of an entry, that entry is only marked used.
    pub(super) fn insert(
        &mut self,
        pool: &mut BlockPool,
        tenant: &str,
        tokens: Vec<u32>,
        cache: KvCache,
    ) {
        if !self.enabled || tokens.len() < BLOCK_POSITIONS || cache.len() != tokens.len() {
            return;
        }
        self.clock += 1;
        let now = self.clock;
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.tenant == tenant && e.tokens.starts_with(&tokens))
        {
            e.used = now;
            return;
        }
        let mut i = 0;
        while i < self.entries.len() {
            let e = &self.entries[i];
            if e.tenant == tenant && tokens.starts_with(&e.tokens) {
                self.remove(pool, i);
            } else {
                i += 1;
            }
        }
        if self.entries.len() >= MAX_ENTRIES {
            self.evict_oldest(pool);
        }
        let blocks = BlockPool::blocks_for(tokens.len());
        if !pool.try_take(blocks) {
            return;
        }
        self.blocks += blocks;
        self.entries.push(Entry {
            tenant: tenant.to_owned(),
            tokens,
            cache,
            blocks,
            used: now,
        });
    }

    /// The longest cached prefix of `known` for `tenant`: a copy of its cache cut to the
    /// shared whole blocks, never all of `known`. `None` below one block.
    pub(super) fn lookup(&mut self, tenant: &str, known: &[u32]) -> Option<KvCache> {
        if !self.enabled || known.len() <= BLOCK_POSITIONS {
            return None;
        }
        let usable = |shared: usize| {
            let shared = shared.min(known.len() - 1);
            shared - shared % BLOCK_POSITIONS
        };
        let (best, len) = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.tenant == tenant)
            .map(|(i, e)| {
                let shared = e
                    .tokens
                    .iter()
                    .zip(known)
                    .take_while(|(a, b)| a == b)
                    .count();
                (i, usable(shared))
            })
            .max_by_key(|&(_, len)| len)?;
        if len == 0 {
            return None;
        }
        self.clock += 1;
        let entry = &mut self.entries[best];
        entry.used = self.clock;
        let mut cache = entry.cache.fork();
        cache.truncate(len);
        Some(cache)
    }

    /// Evicts entries, least recently used first, until `need` blocks are free. Returns
    /// whether they are.
    pub(super) fn make_room(&mut self, pool: &mut BlockPool, need: usize) -> bool {
        while pool.free() < need {
            if !self.evict_oldest(pool) {
                return false;
            }
        }
        true
    }

    /// Drops every entry.
    pub(super) fn clear(&mut self, pool: &mut BlockPool) {
        while self.evict_oldest(pool) {}
    }

    fn evict_oldest(&mut self, pool: &mut BlockPool) -> bool {
        let Some(i) = (0..self.entries.len()).min_by_key(|&i| self.entries[i].used) else {
            return false;
        };
        self.remove(pool, i);
        true
    }

    fn remove(&mut self, pool: &mut BlockPool, i: usize) {
        let e = self.entries.swap_remove(i);
        self.blocks -= e.blocks;
        pool.give_back(e.blocks);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache that claims `len` positions (no tensors: matching never reads them).
    fn cache(len: usize) -> KvCache {
        let mut c = KvCache::new(0, crate::KvCacheDtype::F16);
        c.set_len_for_tests(len);
        c
    }

    fn tokens(n: usize, salt: u32) -> Vec<u32> {
        (0..n as u32).map(|i| i * 7 + salt).collect()
    }

    #[test]
    fn matches_whole_blocks_of_the_same_tenant_only() {
        let mut pool = BlockPool::new(1000 * BLOCK_POSITIONS, 1);
        let mut p = PrefixCache::new(true);
        let t = tokens(40, 0);
        p.insert(&mut pool, "a", t.clone(), cache(40));
        assert_eq!(p.blocks(), 3);
        let mut prompt = t[..35].to_vec();
        prompt.extend([9999, 9998]);
        // 35 shared tokens: two whole blocks (32).
        assert_eq!(p.lookup("a", &prompt).map(|c| c.len()), Some(32));
        assert!(p.lookup("b", &prompt).is_none());
        // Never the whole prompt: one token is left to run.
        assert_eq!(p.lookup("a", &t[..32]).map(|c| c.len()), Some(16));
        assert!(p.lookup("a", &t[..10]).is_none());
        // Off: nothing kept, nothing found.
        let mut off = PrefixCache::new(false);
        off.insert(&mut pool, "a", t.clone(), cache(40));
        assert!(off.lookup("a", &prompt).is_none());
    }

    #[test]
    fn longer_entries_replace_their_prefixes_and_room_is_made_oldest_first() {
        let mut pool = BlockPool::new(8 * BLOCK_POSITIONS, 1);
        let mut p = PrefixCache::new(true);
        let t = tokens(64, 1);
        p.insert(&mut pool, "a", t[..32].to_vec(), cache(32));
        p.insert(&mut pool, "a", t.clone(), cache(64));
        assert_eq!((p.entries.len(), p.blocks(), pool.free()), (1, 4, 4));
        // A prefix of a kept entry adds nothing.
        p.insert(&mut pool, "a", t[..48].to_vec(), cache(48));
        assert_eq!(p.entries.len(), 1);
        // Only free blocks are used: 4 are left, a 5-block entry is not kept.
        p.insert(&mut pool, "b", tokens(80, 2), cache(80));
        assert_eq!(p.entries.len(), 1);
        p.insert(&mut pool, "b", tokens(32, 3), cache(32));
        assert_eq!(pool.free(), 2);
        // Room for 5 blocks: the oldest entry ("a", 4 blocks) goes first.
        assert!(p.make_room(&mut pool, 5));
        assert_eq!((p.entries.len(), p.entries[0].tenant.as_str()), (1, "b"));
        assert!(!p.make_room(&mut pool, 9));
        assert_eq!((p.blocks(), pool.free()), (0, 8));
    }
}
