//! A per-client budget for the records of unauthenticated refusals.
//!
//! A request for an unknown path gets its 404 before authentication, and a bad credential
//! its 401: each is a `deny` record, durable (fsync'd) before the refusal is sent. Without a
//! bound, anyone who can open a connection could fill the disk with them, and a full disk
//! fails the gateway closed for everyone. So each client (its certificate fingerprint, else
//! its address) gets a token bucket of such records: within it every refusal is recorded;
//! past it refusals are still refused but only counted, and the count goes into that
//! client's next record (`suppressed_refusals`), so the log still says how many there were.
//!
//! Time is an argument, so tests drive the bucket with made-up instants.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Records of unauthenticated refusals a client may cause at once.
pub const BURST: u32 = 20;
/// And then one per this interval.
pub const REFILL: Duration = Duration::from_secs(1);
/// Clients tracked at most; past it new clients share one bucket (`*`).
const MAX_CLIENTS: usize = 4096;

/// What to do with an unauthenticated refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Record it, with the number of this client's refusals suppressed since its last
    /// record.
    Record { suppressed: u64 },
    /// Over budget: refuse without a record (counted for the next one).
    Suppress,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    suppressed: u64,
}

/// The budgets of all clients. Shared by every config generation (it lives with the log).
#[derive(Debug)]
pub struct RefusalBudget {
    clients: Mutex<HashMap<String, Bucket>>,
    burst: f64,
    refill: Duration,
}

impl Default for RefusalBudget {
    fn default() -> Self {
        RefusalBudget::new(BURST, REFILL)
    }
}

impl RefusalBudget {
    pub fn new(burst: u32, refill: Duration) -> RefusalBudget {
        RefusalBudget {
            clients: Mutex::new(HashMap::new()),
            burst: f64::from(burst.max(1)),
            refill: refill.max(Duration::from_millis(1)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Bucket>> {
        match self.clients.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Whether `client`'s refusal at `now` is recorded; takes the suppressed count when so.
    pub fn check(&self, client: &str, now: Instant) -> Decision {
        let mut clients = self.lock();
        if !clients.contains_key(client) && clients.len() >= MAX_CLIENTS {
            self.prune(&mut clients, now);
        }
        let key = if clients.contains_key(client) || clients.len() < MAX_CLIENTS {
            client
        } else {
            "*"
        };
        let bucket = clients.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            last: now,
            suppressed: 0,
        });
        self.refill_bucket(bucket, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Decision::Record {
                suppressed: std::mem::take(&mut bucket.suppressed),
            }
        } else {
            bucket.suppressed = bucket.suppressed.saturating_add(1);
            Decision::Suppress
        }
    }

    /// The count suppressed since `client`'s last record, for a record written anyway (an
    /// authenticated request of the same client).
    pub fn take_suppressed(&self, client: &str) -> u64 {
        self.lock()
            .get_mut(client)
            .map_or(0, |b| std::mem::take(&mut b.suppressed))
    }

    /// Puts back a count taken for a record that could not be written.
    pub fn restore(&self, client: &str, suppressed: u64) {
        if suppressed == 0 {
            return;
        }
        let mut clients = self.lock();
        let key = if clients.contains_key(client) {
            client
        } else {
            "*"
        };
        if let Some(bucket) = clients.get_mut(key) {
            bucket.suppressed = bucket.suppressed.saturating_add(suppressed);
        }
    }

    fn refill_bucket(&self, bucket: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(bucket.last);
        bucket.tokens =
            (bucket.tokens + elapsed.as_secs_f64() / self.refill.as_secs_f64()).min(self.burst);
        bucket.last = now;
    }

    /// Forgets clients with a full bucket and nothing to report.
    fn prune(&self, clients: &mut HashMap<String, Bucket>, now: Instant) {
        clients.retain(|_, b| {
            self.refill_bucket(b, now);
            b.suppressed > 0 || b.tokens < self.burst
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_recorded_then_refusals_are_counted_into_the_next_record() {
        let budget = RefusalBudget::new(3, Duration::from_secs(1));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(budget.check("a", t0), Decision::Record { suppressed: 0 });
        }
        for _ in 0..5 {
            assert_eq!(budget.check("a", t0), Decision::Suppress);
        }
        // Another client has its own budget.
        assert_eq!(budget.check("b", t0), Decision::Record { suppressed: 0 });
        // Half a token later: still over budget.
        assert_eq!(
            budget.check("a", t0 + Duration::from_millis(500)),
            Decision::Suppress
        );
        assert_eq!(
            budget.check("a", t0 + Duration::from_millis(1100)),
            Decision::Record { suppressed: 6 }
        );
        assert_eq!(
            budget.check("a", t0 + Duration::from_millis(1200)),
            Decision::Suppress
        );
        assert_eq!(budget.take_suppressed("a"), 1);
        assert_eq!(budget.take_suppressed("a"), 0);
        budget.restore("a", 4);
        assert_eq!(
            budget.check("a", t0 + Duration::from_secs(10)),
            Decision::Record { suppressed: 4 }
        );
    }

    #[test]
    fn too_many_clients_share_one_bucket_and_idle_ones_are_forgotten() {
        let budget = RefusalBudget::new(1, Duration::from_secs(1));
        let t0 = Instant::now();
        for i in 0..MAX_CLIENTS {
            assert!(matches!(
                budget.check(&format!("c{i}"), t0),
                Decision::Record { .. }
            ));
        }
        // All buckets are empty: a new client goes to the shared one.
        assert!(matches!(budget.check("new-1", t0), Decision::Record { .. }));
        assert_eq!(budget.check("new-2", t0), Decision::Suppress);
        assert!(budget.lock().len() <= MAX_CLIENTS + 1);
        // Later every old bucket is full again and is forgotten.
        let later = t0 + Duration::from_secs(5);
        assert_eq!(
            budget.check("new-3", later),
            Decision::Record { suppressed: 0 }
        );
        assert!(budget.lock().len() < 10);
    }
}
