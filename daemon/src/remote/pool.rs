//! The upstreams of one pool: which may take a request now (health), and which one does
//! (balancing). Times are arguments (`now`), so the tests drive a fake clock.
//!
//! Health: an upstream is *eligible* unless it is ejected or loading.
//! * Passive: a failed exchange (connect error, timeout, 5xx, a stream cut short) counts a
//!   failure; `eject_after` consecutive failures eject it for `eject_backoff`, doubled with
//!   each ejection in a row (at most [`MAX_EJECTION`]). A success resets both counts.
//! * Active: the pool's probe (GET `health_path`) answering 2xx clears an ejection early;
//!   503 marks the upstream *loading* (llama.cpp answers 503 while it loads the model) until
//!   a probe or a request succeeds; anything else counts a failure.
//!
//! Balancing: among the eligible upstreams not yet tried by this request, the one with the
//! fewest requests outstanding (ties taken in turn). With prefix affinity, the upstream a
//! rendezvous hash of the prompt's prefix prefers, unless it has more than [`LOAD_GUARD`]
//! requests more than the least loaded (then least outstanding): a shared prefix meets a
//! warm prefix cache, and a hot prefix cannot pile everything on one upstream.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::{Balance, UpstreamAddr};

/// Longest ejection, however many in a row.
pub(super) const MAX_EJECTION: Duration = Duration::from_secs(300);

/// How many more outstanding requests than the least loaded upstream the affinity choice
/// may have before the request goes to the least loaded instead.
pub(super) const LOAD_GUARD: usize = 4;

#[derive(Debug, Default)]
struct Health {
    /// Consecutive failures since the last success or ejection.
    failures: u32,
    /// Ejections in a row (the backoff's exponent).
    ejections: u32,
    ejected_until: Option<Instant>,
    /// Answered 503 (a server still loading its model): skipped until it answers again.
    loading: bool,
}

impl Health {
    fn eligible(&self, now: Instant) -> bool {
        !self.loading && self.ejected_until.is_none_or(|until| now >= until)
    }
}

/// One upstream and its state.
#[derive(Debug)]
pub(super) struct Upstream {
    pub addr: UpstreamAddr,
    /// Its key on the rendezvous hash (from its address, so every gateway agrees).
    key: u64,
    outstanding: AtomicUsize,
    health: Mutex<Health>,
}

/// A pool of upstreams.
#[derive(Debug)]
pub(super) struct Pool {
    upstreams: Vec<Upstream>,
    balance: Balance,
    eject_after: u32,
    eject_backoff: Duration,
    /// Rotates the choice among equally loaded upstreams.
    turn: AtomicUsize,
}

/// One request's claim on an upstream: counted as outstanding until dropped.
#[derive(Debug)]
pub(super) struct Lease {
    pool: Arc<Pool>,
    pub index: usize,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.upstreams[self.index]
            .outstanding
            .fetch_sub(1, Ordering::AcqRel);
    }
}

impl Lease {
    pub fn addr(&self) -> &UpstreamAddr {
        &self.pool.upstreams[self.index].addr
    }
}

/// What a health probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Probe {
    Healthy,
    Loading,
    Failed,
}

impl Pool {
    pub fn new(
        addrs: Vec<UpstreamAddr>,
        balance: Balance,
        eject_after: u32,
        eject_backoff: Duration,
    ) -> Pool {
        let upstreams = addrs
            .into_iter()
            .map(|addr| Upstream {
                key: fnv1a(FNV_OFFSET, addr.to_string().as_bytes()),
                addr,
                outstanding: AtomicUsize::new(0),
                health: Mutex::new(Health::default()),
            })
            .collect();
        Pool {
            upstreams,
            balance,
            eject_after: eject_after.max(1),
            eject_backoff,
            turn: AtomicUsize::new(0),
        }
    }

    pub fn upstreams(&self) -> &[Upstream] {
        &self.upstreams
    }

    fn health(&self, i: usize) -> std::sync::MutexGuard<'_, Health> {
        self.upstreams[i]
            .health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Requests outstanding on all upstreams.
    pub fn outstanding(&self) -> usize {
        self.upstreams
            .iter()
            .map(|u| u.outstanding.load(Ordering::Acquire))
            .sum()
    }

    /// Picks an eligible upstream not in `tried` for a request whose prompt prefix hashes to
    /// `affinity` (used with prefix affinity only); `None` when there is none.
    pub fn pick(
        self: &Arc<Self>,
        affinity: Option<u64>,
        now: Instant,
        tried: &[usize],
    ) -> Option<Lease> {
        let eligible: Vec<usize> = (0..self.upstreams.len())
            .filter(|i| !tried.contains(i) && self.health(*i).eligible(now))
            .collect();
        let load = |i: usize| self.upstreams[i].outstanding.load(Ordering::Acquire);
        let least = eligible.iter().map(|&i| load(i)).min()?;
        let preferred = match (self.balance, affinity) {
            (Balance::PrefixAffinity { .. }, Some(hash)) => eligible
                .iter()
                .copied()
                .max_by_key(|&i| mix(hash ^ self.upstreams[i].key))
                .filter(|&i| load(i) <= least + LOAD_GUARD),
            _ => None,
        };
        let index = preferred.unwrap_or_else(|| {
            let idle: Vec<usize> = eligible
                .iter()
                .copied()
                .filter(|&i| load(i) == least)
                .collect();
            idle[self.turn.fetch_add(1, Ordering::Relaxed) % idle.len()]
        });
        self.upstreams[index]
            .outstanding
            .fetch_add(1, Ordering::AcqRel);
        Some(Lease {
            pool: Arc::clone(self),
            index,
        })
    }

    /// An exchange with upstream `i` went well.
    pub fn succeeded(&self, i: usize) {
        let mut h = self.health(i);
        *h = Health::default();
    }

    /// An exchange with upstream `i` failed; returns whether this failure ejected it.
    pub fn failed(&self, i: usize, now: Instant) -> bool {
        let mut h = self.health(i);
        h.failures += 1;
        if h.failures < self.eject_after {
            return false;
        }
        let backoff = self
            .eject_backoff
            .saturating_mul(1 << h.ejections.min(16))
            .min(MAX_EJECTION);
        h.ejected_until = Some(now + backoff);
        h.ejections = h.ejections.saturating_add(1);
        h.failures = 0;
        true
    }

    /// Upstream `i` answered 503: skipped until it answers a probe or a request again.
    pub fn loading(&self, i: usize) {
        self.health(i).loading = true;
    }

    /// Records a health probe of upstream `i`; returns whether a failure ejected it.
    pub fn probed(&self, i: usize, probe: Probe, now: Instant) -> bool {
        match probe {
            Probe::Healthy => {
                self.succeeded(i);
                false
            }
            Probe::Loading => {
                self.loading(i);
                false
            }
            Probe::Failed => self.failed(i, now),
        }
    }

    /// Whether upstream `i` may take requests at `now`.
    #[cfg(test)]
    pub fn eligible(&self, i: usize, now: Instant) -> bool {
        self.health(i).eligible(now)
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a: a fixed, portable hash (every gateway of a fleet, whatever its build, sends a
/// prefix to the same upstream). Continue a hash by passing the previous result as `state`.
pub(super) fn fnv1a(mut state: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        state ^= u64::from(b);
        state = state.wrapping_mul(0x0000_0100_0000_01b3);
    }
    state
}

/// The start of a new hash.
pub(super) fn fnv_start() -> u64 {
    FNV_OFFSET
}

/// SplitMix64's finalizer: spreads `hash ^ key` so rendezvous scores are independent.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
