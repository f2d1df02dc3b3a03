//! Throttling repeated authentication failures per client (address or certificate)
//! *before* any argon2 work, so guessing keys costs the guesser, not the server.
//! Memory is bounded: stale entries are swept when the map grows past its cap.
//!
//! The bucket is GCRA (as in `governor`), kept here rather than in a `governor` keyed
//! limiter because a client must be forgivable: once a key it presents verifies, the
//! attempts it spent (e.g. racing `airlockd keys create`) no longer count against it.

use std::collections::HashMap;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::nanos::Nanos;

/// Allows `burst` argon2 attempts per client, refilling one every `per_failure`.
pub struct FailureThrottle<K: Hash + Eq + Clone, C: Clock = DefaultClock> {
    /// Per client, the theoretical arrival time of its next attempt. Cleared wholesale when
    /// sweeping cannot bring it under `max_clients`: a flood of distinct clients resets
    /// throttling rather than growing memory without bound.
    clients: std::sync::Mutex<HashMap<K, C::Instant>>,
    /// One attempt's cost.
    period: Nanos,
    /// How far ahead of now a client's next slot may lie: `(burst - 1) × period`.
    tolerance: Nanos,
    clock: C,
    max_clients: usize,
}

impl<K: Hash + Eq + Clone> FailureThrottle<K, DefaultClock> {
    pub fn new(burst: NonZeroU32, per_failure: Duration, max_clients: usize) -> Self {
        Self::with_clock(burst, per_failure, max_clients, DefaultClock::default())
    }
}

impl<K: Hash + Eq + Clone, C: Clock> FailureThrottle<K, C> {
    pub fn with_clock(
        burst: NonZeroU32,
        per_failure: Duration,
        max_clients: usize,
        clock: C,
    ) -> Self {
        let period = Nanos::from(per_failure.max(Duration::from_millis(1)));
        Self {
            clients: std::sync::Mutex::new(HashMap::new()),
            period,
            tolerance: period * u64::from(burst.get() - 1),
            clock,
            max_clients,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, C::Instant>> {
        self.clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Charges one argon2 attempt to `client`; `Err(wait)` if it has none left. Called
    /// only on a verified-key cache miss, i.e. before hashing: an honest client pays once
    /// per key, a guesser pays for every guess, and a refused guess costs no hashing.
    pub fn attempt(&self, client: &K) -> Result<(), Duration> {
        let now = self.clock.now();
        let mut clients = self.lock();
        if clients.len() >= self.max_clients && !clients.contains_key(client) {
            // Entries whose slot lies in the past are back to a full burst: forget them.
            clients.retain(|_, tat| *tat > now);
            clients.shrink_to_fit();
            if clients.len() >= self.max_clients {
                clients.clear();
            }
        }
        let tat = clients.get(client).copied().map_or(now, |t| t.max(now));
        let ahead = tat.duration_since(now);
        if ahead > self.tolerance {
            return Err(Duration::from(ahead.saturating_sub(self.tolerance)));
        }
        clients.insert(client.clone(), tat + self.period);
        Ok(())
    }

    /// Forgets what `client` has spent: called once a key it presented verifies, so a
    /// legitimate client that raced a key's creation (or retried a typo) is not kept
    /// throttled. A guesser never gets here without a valid key, and a valid key's
    /// verification is cached, so this cannot be used to refill a guessing budget faster
    /// than once per cache lifetime per key.
    pub fn forgive(&self, client: &K) {
        self.lock().remove(client);
    }

    /// Clients currently tracked.
    pub fn tracked(&self) -> usize {
        self.lock().len()
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

    #[test]
    fn a_forgiven_client_starts_over() {
        let clock = FakeRelativeClock::default();
        let t = FailureThrottle::with_clock(
            NonZeroU32::new(2).unwrap(),
            Duration::from_secs(6),
            100,
            clock.clone(),
        );
        let client = "10.0.0.1".to_owned();
        assert!(t.attempt(&client).is_ok() && t.attempt(&client).is_ok());
        assert_eq!(t.attempt(&client), Err(Duration::from_secs(6)));
        clock.advance(Duration::from_secs(1));
        assert_eq!(t.attempt(&client), Err(Duration::from_secs(5)));
        t.forgive(&client);
        assert_eq!(t.tracked(), 0);
        assert!(t.attempt(&client).is_ok() && t.attempt(&client).is_ok());
        assert!(
            t.attempt(&client).is_err(),
            "the burst is refilled, not removed"
        );
    }
}
