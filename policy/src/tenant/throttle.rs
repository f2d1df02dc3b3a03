//! Throttling repeated authentication failures per client (address or certificate)
//! *before* any argon2 work, so guessing keys costs the guesser, not the server.
//! Memory is bounded: stale entries are swept when the map grows past its cap.

use std::hash::Hash;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

type Limiter<K, C> = RateLimiter<K, HashMapStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// Allows `burst` argon2 attempts per client, refilling one every `per_failure`.
pub struct FailureThrottle<K: Hash + Eq + Clone, C: Clock = DefaultClock> {
    /// Replaced wholesale when sweeping cannot bring it under `max_clients`: a flood of
    /// distinct clients resets throttling rather than growing memory without bound.
    limiter: std::sync::Mutex<Limiter<K, C>>,
    quota: Quota,
    clock: C,
    max_clients: usize,
}

impl<K: Hash + Eq + Clone> FailureThrottle<K, DefaultClock> {
    pub fn new(burst: NonZeroU32, per_failure: Duration, max_clients: usize) -> Self {
        Self::with_clock(burst, per_failure, max_clients, DefaultClock::default())
    }
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> FailureThrottle<K, C>
where
    C::Instant: governor::clock::Reference,
{
    pub fn with_clock(
        burst: NonZeroU32,
        per_failure: Duration,
        max_clients: usize,
        clock: C,
    ) -> Self {
        let quota = Quota::with_period(per_failure)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        Self {
            limiter: std::sync::Mutex::new(RateLimiter::hashmap_with_clock(quota, clock.clone())),
            quota,
            clock,
            max_clients,
        }
    }

    /// Charges one argon2 attempt to `client`; `Err(wait)` if it has none left. Called
    /// only on a verified-key cache miss, i.e. before hashing: an honest client pays once
    /// per key, a guesser pays for every guess, and a refused guess costs no hashing.
    pub fn attempt(&self, client: &K) -> Result<(), Duration> {
        let mut limiter = self
            .limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if limiter.len() >= self.max_clients {
            limiter.retain_recent();
            limiter.shrink_to_fit();
            if limiter.len() >= self.max_clients {
                *limiter = RateLimiter::hashmap_with_clock(self.quota, self.clock.clone());
            }
        }
        limiter
            .check_key(client)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Clients currently tracked.
    pub fn tracked(&self) -> usize {
        self.limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    #[test]
    fn throttles_then_recovers_and_stays_bounded() {
        let clock = FakeRelativeClock::default();
        let t = FailureThrottle::with_clock(
            NonZeroU32::new(3).unwrap(),
            Duration::from_secs(2),
            100,
            clock.clone(),
        );
        for _ in 0..3 {
            assert!(t.attempt(&"10.0.0.1".to_owned()).is_ok());
        }
        assert_eq!(
            t.attempt(&"10.0.0.1".to_owned()),
            Err(Duration::from_secs(2))
        );
        assert!(
            t.attempt(&"10.0.0.2".to_owned()).is_ok(),
            "other clients unaffected"
        );
        clock.advance(Duration::from_secs(2));
        assert!(t.attempt(&"10.0.0.1".to_owned()).is_ok());
        clock.advance(Duration::from_secs(60));
        for i in 0..500 {
            let _ = t.attempt(&format!("c{i}"));
        }
        assert!(t.tracked() <= 101);
    }
}
