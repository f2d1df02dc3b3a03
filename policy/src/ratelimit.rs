//! Per-tenant rate limits: requests per second or minute with a burst (`governor`'s
//! GCRA), tokens per minute, and concurrent requests.
//!
//! Tokens are *reserved* at admission — prompt tokens plus the requested `max_tokens` —
//! and the unused part is returned when the request completes. Concurrent requests
//! therefore can never overrun a tenant's token budget: each one holds the worst case
//! until it knows better. A request dropped without completing keeps its whole
//! reservation (its real usage is unknown).
//!
//! State is one limiter per configured tenant, so memory is bounded by the config, not by
//! the principals that come and go. All time comes from a `governor` clock, so tests
//! drive it with `FakeRelativeClock`.

#[cfg(test)]
mod tests;
mod tokens;

use std::num::NonZeroU32;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use tokens::TokenBucket;

/// The period of a request rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Per {
    Second,
    Minute,
}

/// A request rate: `count` per period, with bursts of up to `burst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestRate {
    pub count: NonZeroU32,
    pub per: Per,
    pub burst: NonZeroU32,
}

/// A tenant's limits; `None` means unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitSpec {
    pub requests: Option<RequestRate>,
    pub tokens_per_minute: Option<NonZeroU32>,
    pub max_concurrent: Option<NonZeroU32>,
}

/// What the `x-ratelimit-*` headers report. Limits are `None` when unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateStatus {
    pub limit_requests: Option<u32>,
    pub remaining_requests: u32,
    pub reset_requests: Duration,
    pub limit_tokens: Option<u32>,
    pub remaining_tokens: u32,
    pub reset_tokens: Duration,
}

/// Which limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exceeded {
    Requests,
    Tokens,
    Concurrency,
    /// The request alone needs more tokens than the whole per-minute budget.
    TooLarge,
}

/// A refusal, with when to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub exceeded: Exceeded,
    pub retry_after: Duration,
    pub status: RateStatus,
}

type Requests<C> = RateLimiter<NotKeyed, InMemoryState, C, StateInformationMiddleware>;

/// One tenant's limiter.
pub struct TenantLimiter<C: Clock = DefaultClock> {
    clock: C,
    quota: Option<Quota>,
    requests: Option<Requests<C>>,
    tokens: Option<Mutex<TokenBucket<C::Instant>>>,
    max_concurrent: Option<NonZeroU32>,
    in_flight: AtomicU32,
    /// The remaining request burst after the last decision, and when.
    snapshot: Mutex<Option<(u32, C::Instant)>>,
}

impl<C: Clock> std::fmt::Debug for TenantLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantLimiter")
            .field("quota", &self.quota)
            .field("max_concurrent", &self.max_concurrent)
            .finish_non_exhaustive()
    }
}

impl TenantLimiter<DefaultClock> {
    pub fn new(spec: &LimitSpec) -> Arc<Self> {
        Self::with_clock(spec, DefaultClock::default())
    }
}

impl<C: Clock + Clone> TenantLimiter<C> {
    pub fn with_clock(spec: &LimitSpec, clock: C) -> Arc<Self> {
        let quota = spec.requests.map(|r| {
            let base = match r.per {
                Per::Second => Quota::per_second(r.count),
                Per::Minute => Quota::per_minute(r.count),
            };
            base.allow_burst(r.burst)
        });
        let requests = quota.map(|q| {
            RateLimiter::direct_with_clock(q, clock.clone())
                .with_middleware::<StateInformationMiddleware>()
        });
        let tokens = spec
            .tokens_per_minute
            .map(|tpm| Mutex::new(TokenBucket::new(tpm.get(), clock.now())));
        Arc::new(Self {
            clock,
            quota,
            requests,
            tokens,
            max_concurrent: spec.max_concurrent,
            in_flight: AtomicU32::new(0),
            snapshot: Mutex::new(None),
        })
    }

    /// Admits a request that may use up to `tokens` tokens, or says why not and when to
    /// retry. Nothing is consumed by a refused request.
    pub fn admit(self: &Arc<Self>, tokens: u32) -> Result<Admission<C>, Refusal> {
        let occupancy = self.occupy()?;
        self.admit_occupied(occupancy, tokens)
    }

    /// Takes one of the tenant's concurrent-request slots (`max_concurrent`) without
    /// charging the rate or token limits, or says why not. The server takes it before it
    /// reads a request body, so that a tenant's slow uploads hold its own slots and never
    /// the server's shared ones; [`Self::admit_occupied`] then charges the rest.
    pub fn occupy(self: &Arc<Self>) -> Result<Occupancy<C>, Refusal> {
        if let Some(max) = self.max_concurrent {
            let taken = self
                .in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max.get()).then_some(n + 1)
                });
            if taken.is_err() {
                return Err(Refusal {
                    exceeded: Exceeded::Concurrency,
                    retry_after: Duration::from_secs(1),
                    status: self.status(),
                });
            }
        }
        Ok(Occupancy {
            limiter: Arc::clone(self),
        })
    }

    /// Admits a request that already holds a concurrency slot: charges the request rate and
    /// reserves `tokens`. On refusal the slot is released (nothing else is consumed). A slot
    /// taken from another limiter (a tenant whose limits changed on reload) is released and
    /// a slot is taken here instead.
    pub fn admit_occupied(
        self: &Arc<Self>,
        occupancy: Occupancy<C>,
        tokens: u32,
    ) -> Result<Admission<C>, Refusal> {
        let occupancy = if Arc::ptr_eq(&occupancy.limiter, self) {
            occupancy
        } else {
            drop(occupancy);
            self.occupy()?
        };
        let refuse = |exceeded, retry_after, status| Refusal {
            exceeded,
            retry_after,
            status,
        };
        // The token bucket's lock is held across the request check so that a request is
        // counted only when its tokens are also granted.
        let mut bucket = self
            .tokens
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(PoisonError::into_inner));
        let now = self.clock.now();
        if let Some(b) = bucket.as_mut() {
            b.refill(now);
            if tokens > b.capacity() {
                drop(bucket);
                return Err(refuse(
                    Exceeded::TooLarge,
                    Duration::from_secs(60),
                    self.status(),
                ));
            }
            if let Some(wait) = b.wait_for(tokens) {
                drop(bucket);
                return Err(refuse(Exceeded::Tokens, wait, self.status()));
            }
        }
        if let Some(limiter) = &self.requests {
            match limiter.check() {
                Ok(snap) => self.record(snap.remaining_burst_capacity(), now),
                Err(not_until) => {
                    drop(bucket);
                    self.record(0, now);
                    let wait = not_until.wait_time_from(self.clock.now());
                    return Err(refuse(Exceeded::Requests, wait, self.status()));
                }
            }
        }
        if let Some(b) = bucket.as_mut() {
            b.take(tokens);
        }
        drop(bucket);
        Ok(Admission {
            occupancy,
            reserved: tokens,
        })
    }

    /// The current state, for response headers.
    pub fn status(&self) -> RateStatus {
        let mut status = RateStatus::default();
        if let Some(quota) = self.quota {
            let burst = quota.burst_size().get();
            status.limit_requests = Some(burst);
            status.remaining_requests = self.remaining_requests(quota);
            status.reset_requests =
                quota.replenish_interval() * (burst - status.remaining_requests);
        }
        if let Some(m) = &self.tokens {
            let mut b = m.lock().unwrap_or_else(PoisonError::into_inner);
            b.refill(self.clock.now());
            status.limit_tokens = Some(b.capacity());
            status.remaining_tokens = b.available();
            status.reset_tokens = b.time_to_full();
        }
        status
    }

    /// Governor offers no non-consuming peek: report the remaining burst from the last
    /// decision's snapshot, plus what has replenished since.
    fn remaining_requests(&self, quota: Quota) -> u32 {
        let snap = *self.snapshot.lock().unwrap_or_else(PoisonError::into_inner);
        let Some((remaining, at)) = snap else {
            return quota.burst_size().get();
        };
        let elapsed: Duration = self.clock.now().duration_since(at).into();
        let interval = quota.replenish_interval().as_nanos().max(1);
        let refilled = u32::try_from(elapsed.as_nanos() / interval).unwrap_or(u32::MAX);
        remaining
            .saturating_add(refilled)
            .min(quota.burst_size().get())
    }

    fn record(&self, remaining: u32, at: C::Instant) {
        *self.snapshot.lock().unwrap_or_else(PoisonError::into_inner) = Some((remaining, at));
    }

    /// Requests currently admitted and not yet finished.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// A tenant's concurrent-request slot, from [`TenantLimiter::occupy`]; released on drop.
pub struct Occupancy<C: Clock = DefaultClock> {
    limiter: Arc<TenantLimiter<C>>,
}

impl<C: Clock> std::fmt::Debug for Occupancy<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Occupancy").finish_non_exhaustive()
    }
}

impl<C: Clock> Drop for Occupancy<C> {
    fn drop(&mut self) {
        if self.limiter.max_concurrent.is_some() {
            self.limiter.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// An admitted request. Complete it with the tokens it really used; dropping it without
/// completing keeps the whole reservation but frees the concurrency slot.
pub struct Admission<C: Clock = DefaultClock> {
    occupancy: Occupancy<C>,
    reserved: u32,
}

impl<C: Clock> std::fmt::Debug for Admission<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("reserved", &self.reserved)
            .finish_non_exhaustive()
    }
}

impl<C: Clock> Admission<C> {
    /// Returns the unused part of the reservation.
    pub fn complete(self, used: u32) {
        if let Some(m) = &self.occupancy.limiter.tokens {
            let unused = self.reserved.saturating_sub(used);
            m.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .give_back(unused);
        }
    }

    pub fn reserved(&self) -> u32 {
        self.reserved
    }
}
