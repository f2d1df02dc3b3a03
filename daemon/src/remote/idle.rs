//! The idle connections of a pool, per upstream: what a request may reuse instead of
//! opening a connection (TCP + TLS handshake) of its own. Generic over the connection so
//! the bounds are tested without sockets; times are arguments (`now`), so the tests drive a
//! fake clock.
//!
//! * At most `max` idle connections per upstream; one more returned is dropped (closed).
//! * Newest first (a stack): under a steady load the same few connections stay warm and
//!   the surplus of a burst ages out.
//! * An idle connection older than `timeout` is never handed out, and [`Idle::sweep`]
//!   drops it; so does [`Idle::clear`] (the upstream was ejected) and [`Idle::close`] (the
//!   pool is going away: nothing is kept after it).
//!
//! Dropping a connection closes it; that happens outside the lock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Idle connections of type `C`, per upstream index.
#[derive(Debug)]
pub(super) struct Idle<C> {
    slots: Vec<Mutex<Vec<Parked<C>>>>,
    max: usize,
    timeout: Duration,
    /// Set by [`Idle::close`]: no connection is taken or kept any more.
    closed: AtomicBool,
}

#[derive(Debug)]
struct Parked<C> {
    conn: C,
    since: Instant,
}

impl<C> Idle<C> {
    /// `upstreams` slots of at most `max` connections (0: none kept), each kept `timeout`.
    pub fn new(upstreams: usize, max: usize, timeout: Duration) -> Idle<C> {
        Idle {
            slots: (0..upstreams).map(|_| Mutex::new(Vec::new())).collect(),
            max,
            timeout,
            closed: AtomicBool::new(false),
        }
    }

    fn slot(&self, i: usize) -> Option<MutexGuard<'_, Vec<Parked<C>>>> {
        self.slots
            .get(i)
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Whether connections are kept at all (`max` > 0 and not closed).
    pub fn enabled(&self) -> bool {
        self.max > 0 && !self.closed.load(Ordering::Acquire)
    }

    /// The newest idle connection to upstream `i` that `usable` accepts and that has not
    /// been idle for `timeout`; the others it passes over are dropped.
    pub fn take(&self, i: usize, now: Instant, usable: impl Fn(&C) -> bool) -> Option<C> {
        let mut dropped = Vec::new();
        let found = {
            let mut slot = self.slot(i)?;
            loop {
                let Some(parked) = slot.pop() else {
                    break None;
                };
                if now.saturating_duration_since(parked.since) < self.timeout
                    && usable(&parked.conn)
                {
                    break Some(parked.conn);
                }
                dropped.push(parked);
            }
        };
        drop(dropped);
        found
    }

    /// Keeps `conn` as idle for upstream `i` from `now`; `Err(conn)` (for the caller to
    /// drop) when the slot is full or the set is closed.
    pub fn put(&self, i: usize, conn: C, now: Instant) -> Result<(), C> {
        if !self.enabled() {
            return Err(conn);
        }
        let Some(mut slot) = self.slot(i) else {
            return Err(conn);
        };
        // Checked again under the lock: a `close` that ran meanwhile has emptied the slot,
        // and nothing may be parked after it.
        if slot.len() >= self.max || self.closed.load(Ordering::Acquire) {
            return Err(conn);
        }
        slot.push(Parked { conn, since: now });
        Ok(())
    }

    /// Drops the connections idle for `timeout` or longer at `now`; returns how many.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut dropped = Vec::new();
        for i in 0..self.slots.len() {
            if let Some(mut slot) = self.slot(i) {
                let (old, fresh): (Vec<_>, Vec<_>) = slot
                    .drain(..)
                    .partition(|p| now.saturating_duration_since(p.since) >= self.timeout);
                *slot = fresh;
                dropped.extend(old);
            }
        }
        dropped.len()
    }

    /// Drops upstream `i`'s idle connections (it was ejected: whatever they lead to failed).
    pub fn clear(&self, i: usize) {
        let dropped = self.slot(i).map(|mut slot| std::mem::take(&mut *slot));
        drop(dropped);
    }

    /// Drops every idle connection and keeps none from now on (the pool is going away).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        for i in 0..self.slots.len() {
            self.clear(i);
        }
    }

    /// Idle connections kept for upstream `i`.
    #[cfg(test)]
    pub fn len(&self, i: usize) -> usize {
        self.slot(i).map_or(0, |s| s.len())
    }
}
