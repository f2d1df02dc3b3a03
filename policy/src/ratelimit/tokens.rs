//! A token bucket for tokens per minute: capacity = the per-minute budget, refilled
//! continuously at budget/60 s. Kept in milli-tokens so slow refill does not round away.

use std::time::Duration;

use governor::clock::Reference;

const MILLI: u128 = 1000;
const MINUTE_NANOS: u128 = 60_000_000_000;

#[derive(Debug)]
pub(super) struct TokenBucket<I> {
    capacity: u32,
    level_milli: u128,
    last: I,
}

impl<I: Reference> TokenBucket<I> {
    pub(super) fn new(capacity: u32, now: I) -> Self {
        Self {
            capacity,
            level_milli: u128::from(capacity) * MILLI,
            last: now,
        }
    }

    fn full(&self) -> u128 {
        u128::from(self.capacity) * MILLI
    }

    pub(super) fn refill(&mut self, now: I) {
        if now <= self.last {
            return;
        }
        let elapsed = u128::from(now.duration_since(self.last).as_u64());
        let gained = elapsed * u128::from(self.capacity) * MILLI / MINUTE_NANOS;
        if gained > 0 {
            self.level_milli = (self.level_milli + gained).min(self.full());
            self.last = now;
        }
    }

    pub(super) fn capacity(&self) -> u32 {
        self.capacity
    }

    pub(super) fn available(&self) -> u32 {
        u32::try_from(self.level_milli / MILLI).unwrap_or(u32::MAX)
    }

    /// `None` if `n` tokens are available now, else how long until they are.
    pub(super) fn wait_for(&self, n: u32) -> Option<Duration> {
        let need = u128::from(n) * MILLI;
        if need <= self.level_milli {
            return None;
        }
        Some(self.time_for(need - self.level_milli))
    }

    pub(super) fn take(&mut self, n: u32) {
        self.level_milli = self.level_milli.saturating_sub(u128::from(n) * MILLI);
    }

    pub(super) fn give_back(&mut self, n: u32) {
        self.level_milli = (self.level_milli + u128::from(n) * MILLI).min(self.full());
    }

    pub(super) fn time_to_full(&self) -> Duration {
        self.time_for(self.full() - self.level_milli)
    }

    fn time_for(&self, milli: u128) -> Duration {
        let per_token = u128::from(self.capacity.max(1)) * MILLI;
        let nanos = (milli * MINUTE_NANOS).div_ceil(per_token);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}
