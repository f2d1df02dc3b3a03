//! Things held per key, each under a cap: the connections one client address holds
//! (`server::addresses`) and the request bodies one tenant has arriving (`app::uploads`).
//! A key has an entry only while something holds it, so the table is bounded by the holders.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

/// How many holders each key has now.
#[derive(Debug)]
pub struct Counts<K: Eq + Hash> {
    held: Mutex<HashMap<K, usize>>,
}

/// One holder of `key`; released on drop.
#[derive(Debug)]
pub struct Held<K: Eq + Hash> {
    counts: Arc<Counts<K>>,
    key: K,
}

impl<K: Eq + Hash + Clone> Counts<K> {
    pub fn new() -> Arc<Self> {
        Arc::new(Counts {
            held: Mutex::new(HashMap::new()),
        })
    }

    /// One more holder of `key`, or `Err(holders now)` when it already has `limit`.
    pub fn take(self: &Arc<Self>, key: K, limit: usize) -> Result<Held<K>, usize> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let count = held.entry(key.clone()).or_insert(0);
        if *count >= limit {
            return Err(*count);
        }
        *count += 1;
        Ok(Held {
            counts: Arc::clone(self),
            key,
        })
    }

    /// Holders of `key` now.
    pub fn held(&self, key: &K) -> usize {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.get(key).copied().unwrap_or(0)
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }
}

impl<K: Eq + Hash> Drop for Held<K> {
    fn drop(&mut self) {
        let mut held = self
            .counts
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = held.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}
