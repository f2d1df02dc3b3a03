//! The verified-key cache: what keeps argon2 off the per-request path.
//!
//! An entry is keyed by HMAC-SHA256 of the *full* presented key under a random secret
//! that lives only in this process, so the cache holds nothing an attacker with a memory
//! dump could test key guesses against offline, and two keys sharing an id never collide.
//! An entry remembers which stored hash it was verified against; a hit counts only when
//! the caller's *current* record for that id is still usable and still carries the same
//! hash. The cache can therefore never outlive a revocation, an expiry or a rotation: it
//! saves the argon2 work, never the record check.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::key::{ApiKey, KeyId, KeyRecord};

type Tag = [u8; 32];

#[derive(Debug, Clone)]
struct Entry {
    id: KeyId,
    /// SHA-256 of the PHC string the key was verified against.
    phc_digest: Tag,
    /// When this entry stops counting even if the record is unchanged: bounds how long a
    /// verification is trusted and lets stale entries be swept.
    valid_until: SystemTime,
}

/// A bounded cache of successful verifications.
pub struct VerifiedKeyCache {
    secret: [u8; 32],
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<Tag, Entry>>,
}

impl std::fmt::Debug for VerifiedKeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedKeyCache")
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl VerifiedKeyCache {
    /// A cache whose entries are trusted for at most `ttl` and that holds at most
    /// `capacity` entries (at capacity, expired entries are swept, then everything).
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        let mut secret = [0u8; 32];
        rand::Rng::fill(&mut rand::rng(), &mut secret);
        Self {
            secret,
            ttl,
            capacity: capacity.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn tag(&self, key: &ApiKey) -> Tag {
        // HMAC accepts keys of any length: `new_from_slice` cannot fail here.
        let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(&self.secret) {
            Ok(mac) => mac,
            Err(_) => return [0; 32],
        };
        mac.update(key.expose().as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Whether `key` was verified against `record`'s current hash, and `record` is still
    /// usable at `now`.
    pub fn check(&self, key: &ApiKey, record: &KeyRecord, now: SystemTime) -> bool {
        if !record.usable(now) || record.id != *key.id() {
            return false;
        }
        let tag = self.tag(key);
        let digest = phc_digest(&record.phc);
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        match entries.get(&tag) {
            Some(e) if e.id == record.id && e.phc_digest == digest && now < e.valid_until => true,
            Some(_) => {
                entries.remove(&tag);
                false
            }
            None => false,
        }
    }

    /// Records a successful argon2 verification of `key` against `record`.
    pub fn insert(&self, key: &ApiKey, record: &KeyRecord, now: SystemTime) {
        let mut valid_until = now + self.ttl;
        if let Some(at) = record.expires_at {
            valid_until = valid_until.min(at);
        }
        let entry = Entry {
            id: record.id.clone(),
            phc_digest: phc_digest(&record.phc),
            valid_until,
        };
        let tag = self.tag(key);
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= self.capacity {
            entries.retain(|_, e| now < e.valid_until);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(tag, entry);
    }

    /// Drops every entry for `id` (revocation, rotation, deletion).
    pub fn forget(&self, id: &KeyId) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|_, e| e.id != *id);
    }

    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn phc_digest(phc: &str) -> Tag {
    Sha256::digest(phc.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, FakeClock};

    fn record(key: &ApiKey, now: SystemTime) -> KeyRecord {
        KeyRecord {
            id: key.id().clone(),
            tenant: "acme".into(),
            phc: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
            created_at: now,
            expires_at: Some(now + Duration::from_secs(60)),
            bound_cert_sha256: None,
            revoked: false,
        }
    }

    #[test]
    fn hit_after_insert_miss_for_other_key() {
        let clock = FakeClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000));
        let cache = VerifiedKeyCache::new(Duration::from_secs(300), 16);
        let key = ApiKey::generate();
        let rec = record(&key, clock.now());
        assert!(!cache.check(&key, &rec, clock.now()));
        cache.insert(&key, &rec, clock.now());
        assert!(cache.check(&key, &rec, clock.now()));
        let other = ApiKey::generate();
        assert!(!cache.check(&other, &rec, clock.now()));
    }

    #[test]
    fn never_outlives_expiry_or_ttl() {
        let clock = FakeClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000));
        let cache = VerifiedKeyCache::new(Duration::from_secs(300), 16);
        let key = ApiKey::generate();
        let rec = record(&key, clock.now());
        cache.insert(&key, &rec, clock.now());
        clock.advance(Duration::from_secs(59));
        assert!(cache.check(&key, &rec, clock.now()));
        clock.advance(Duration::from_secs(1));
        assert!(!cache.check(&key, &rec, clock.now()), "expired key");

        let mut forever = rec.clone();
        forever.expires_at = None;
        cache.insert(&key, &forever, clock.now());
        clock.advance(Duration::from_secs(299));
        assert!(cache.check(&key, &forever, clock.now()));
        clock.advance(Duration::from_secs(1));
        assert!(!cache.check(&key, &forever, clock.now()), "ttl");
    }

    #[test]
    fn never_outlives_revocation_or_rotation() {
        let clock = FakeClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000));
        let cache = VerifiedKeyCache::new(Duration::from_secs(300), 16);
        let key = ApiKey::generate();
        let rec = record(&key, clock.now());
        cache.insert(&key, &rec, clock.now());
        let mut revoked = rec.clone();
        revoked.revoked = true;
        assert!(!cache.check(&key, &revoked, clock.now()));
        // The record changed its hash (re-keyed): the old verification does not count.
        let mut rehashed = rec.clone();
        rehashed.phc.push('x');
        assert!(!cache.check(&key, &rehashed, clock.now()));
        cache.insert(&key, &rec, clock.now());
        cache.forget(key.id());
        assert!(!cache.check(&key, &rec, clock.now()));
    }

    #[test]
    fn bounded() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let cache = VerifiedKeyCache::new(Duration::from_secs(300), 4);
        for _ in 0..10 {
            let key = ApiKey::generate();
            cache.insert(&key, &record(&key, now), now);
            assert!(cache.len() <= 4);
        }
    }
}
