//! The daemon's in-memory copy of the key table and the thread that keeps it current (see
//! the parent module for what is guaranteed).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use airlock_policy::{KeyId, KeyRecord};
use arc_swap::ArcSwap;

use super::{
    DAEMON_BUSY_TIMEOUT, FORCED_INTERVAL, KeyObserver, KeyStore, KeyStoreError, MAX_STALENESS,
    REFRESH, diff, index,
};

/// The daemon's view of the key table.
pub struct KeySnapshot {
    records: ArcSwap<HashMap<KeyId, KeyRecord>>,
    /// The connection and what it last saw; one check at a time (refresh thread or forced).
    reader: Mutex<Reader>,
    /// When the table was last confirmed current, in nanoseconds since `epoch`.
    confirmed: AtomicU64,
    epoch: Instant,
    /// [`MAX_STALENESS`], shorter in tests.
    max_staleness: Duration,
    /// Serialises forced checks; holds when the last one started.
    forced: tokio::sync::Mutex<Option<Instant>>,
}

/// The refresh side of a [`KeySnapshot`].
struct Reader {
    path: PathBuf,
    /// `None` after a failure: the next check re-opens the file.
    store: Option<KeyStore>,
    /// (device, inode) of the file `store` has open.
    file: Option<(u64, u64)>,
    version: i64,
    observer: Option<KeyObserver>,
    /// The current run of failed checks, for logging once per outage.
    failing_since: Option<Instant>,
    stale_logged: bool,
}

fn file_id(path: &Path) -> Result<(u64, u64), KeyStoreError> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).map_err(|source| KeyStoreError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((meta.dev(), meta.ino()))
}

impl Reader {
    /// Checks the database; `Some(records)` when the table changed (or was re-opened).
    fn check(&mut self) -> Result<Option<Vec<KeyRecord>>, KeyStoreError> {
        let file = file_id(&self.path)?;
        if let Some(store) = self.store.as_ref().filter(|_| self.file == Some(file)) {
            let version = store.data_version()?;
            if version == self.version {
                return Ok(None);
            }
            let records = store.list()?;
            self.version = version;
            return Ok(Some(records));
        }
        // First check, a failure before, or the path now names another file: start over.
        self.store = None;
        let store = KeyStore::open_existing(&self.path)?;
        let version = store.data_version()?;
        let records = store.list()?;
        (self.store, self.file, self.version) = (Some(store), Some(file), version);
        Ok(Some(records))
    }
}

impl KeySnapshot {
    /// Loads the table and starts the refresh thread, which ends once the snapshot is
    /// dropped (at the next [`REFRESH`] tick).
    pub fn start(path: &Path) -> Result<Arc<Self>, KeyStoreError> {
        Self::start_observed(path, None)
    }

    /// As [`KeySnapshot::start`]; `observer` hears of every change the refresh thread sees.
    pub fn start_observed(
        path: &Path,
        observer: Option<KeyObserver>,
    ) -> Result<Arc<Self>, KeyStoreError> {
        Self::start_bounded(path, observer, MAX_STALENESS)
    }

    fn start_bounded(
        path: &Path,
        observer: Option<KeyObserver>,
        max_staleness: Duration,
    ) -> Result<Arc<Self>, KeyStoreError> {
        // Creates the file (and table) if needed; from here on it is only re-opened.
        let store = KeyStore::open(path)?;
        store
            .conn
            .busy_timeout(DAEMON_BUSY_TIMEOUT)
            .map_err(store.err())?;
        let version = store.data_version()?;
        let records = store.list()?;
        let file = file_id(path)?;
        let snapshot = Arc::new(Self {
            records: ArcSwap::from_pointee(index(records)),
            reader: Mutex::new(Reader {
                path: path.to_path_buf(),
                store: Some(store),
                file: Some(file),
                version,
                observer,
                failing_since: None,
                stale_logged: false,
            }),
            confirmed: AtomicU64::new(0),
            epoch: Instant::now(),
            max_staleness,
            forced: tokio::sync::Mutex::new(None),
        });
        let weak: Weak<Self> = Arc::downgrade(&snapshot);
        let spawned = std::thread::Builder::new()
            .name("airlock-keys".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(REFRESH);
                    let Some(snapshot) = weak.upgrade() else {
                        return;
                    };
                    snapshot.refresh();
                }
            });
        if let Err(e) = spawned {
            // Without the thread nothing confirms the table: it goes stale and keys are
            // refused after MAX_STALENESS rather than served from an unwatched copy.
            tracing::error!(error = %e, "key database: cannot start the refresh thread");
        }
        Ok(snapshot)
    }

    /// One check of the database, applying any change. Blocking (SQLite).
    fn refresh(&self) {
        let started = Instant::now();
        let mut reader = self.reader.lock().unwrap_or_else(PoisonError::into_inner);
        match reader.check() {
            Ok(changed) => {
                if let Some(since) = reader.failing_since.take() {
                    tracing::warn!(
                        path = %reader.path.display(),
                        unreadable_for_ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX),
                        "key database readable again; API keys are served"
                    );
                }
                reader.stale_logged = false;
                if let Some(records) = changed {
                    let new = Arc::new(index(records));
                    let old = self.records.swap(Arc::clone(&new));
                    if let Some(observer) = &reader.observer {
                        let events = diff(&old, &new);
                        if !events.is_empty() {
                            observer(&events);
                        }
                    }
                }
                // The table was current when the check began.
                let at = started.saturating_duration_since(self.epoch).as_nanos();
                self.confirmed
                    .fetch_max(u64::try_from(at).unwrap_or(u64::MAX), Ordering::Relaxed);
            }
            Err(e) => {
                reader.store = None;
                if reader.failing_since.is_none() {
                    reader.failing_since = Some(started);
                    tracing::warn!(error = %e, bound_s = self.max_staleness.as_secs_f64(),
                        "key database unreadable; serving the last good copy of the key table for at most the bound");
                } else if !self.is_fresh() && !reader.stale_logged {
                    reader.stale_logged = true;
                    tracing::error!(error = %e,
                        "KEY DATABASE UNREADABLE: API keys are refused (503) and /readyz fails until it reads again");
                }
            }
        }
    }

    /// Whether the table was confirmed current within [`MAX_STALENESS`]. When not, keys
    /// must not be accepted from it: a revocation may be missing.
    pub fn is_fresh(&self) -> bool {
        self.staleness() <= self.max_staleness
    }

    /// How long since the table was last confirmed current.
    pub fn staleness(&self) -> Duration {
        let confirmed = Duration::from_nanos(self.confirmed.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(confirmed)
    }

    /// Makes sure the table has been checked since `arrived` (when a request presenting an
    /// unknown key id came in): a key created just before is then found. Concurrent callers
    /// share one check, and checks are at least [`FORCED_INTERVAL`] apart, so a flood of
    /// made-up ids costs the database one cheap `data_version` query per interval.
    pub async fn refresh_now(self: &Arc<Self>, arrived: Instant) {
        let mut last = self.forced.lock().await;
        if last.is_some_and(|started| started >= arrived) {
            return;
        }
        if let Some(started) = *last {
            tokio::time::sleep_until((started + FORCED_INTERVAL).into()).await;
        }
        *last = Some(Instant::now());
        let snapshot = Arc::clone(self);
        if let Err(e) = tokio::task::spawn_blocking(move || snapshot.refresh()).await {
            tracing::warn!(error = %e, "key database: forced check failed");
        }
    }

    pub fn get(&self, id: &KeyId) -> Option<KeyRecord> {
        self.records.load().get(id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !done() {
            assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Renames a database and its `-wal`/`-shm` files, where present.
    fn move_db(from: &Path, to: &Path) {
        for suffix in ["", "-wal", "-shm"] {
            let src = PathBuf::from(format!("{}{suffix}", from.display()));
            if src.exists() {
                std::fs::rename(&src, format!("{}{suffix}", to.display())).unwrap();
            }
        }
    }

    #[test]
    fn an_unreadable_database_fails_closed_after_the_bound_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let bound = Duration::from_millis(600);
        let snapshot = KeySnapshot::start_bounded(&path, None, bound).unwrap();
        let (_, record) = KeyStore::open(&path)
            .unwrap()
            .create("acme", None, None)
            .unwrap();
        wait_until("key seen", Duration::from_secs(5), || {
            snapshot.get(&record.id).is_some()
        });
        assert!(snapshot.is_fresh());
        // Replace the file with something that is not a key database. Its WAL goes too:
        // SQLite would read the latest pages (the header included) from a WAL left behind.
        let saved = dir.path().join("keys.db.saved");
        move_db(&path, &saved);
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        std::thread::sleep(REFRESH * 2);
        assert!(snapshot.is_fresh(), "stale copy served within the bound");
        wait_until("stale", Duration::from_secs(10), || !snapshot.is_fresh());
        assert!(snapshot.staleness() > bound);
        // Back: fresh again by itself, with the table read from the restored file.
        move_db(&saved, &path);
        wait_until("fresh again", Duration::from_secs(10), || {
            snapshot.is_fresh()
        });
        assert!(snapshot.get(&record.id).is_some());
        // A removed file is a failure too, and is not re-created empty.
        std::fs::remove_file(&path).unwrap();
        wait_until("stale after removal", Duration::from_secs(10), || {
            !snapshot.is_fresh()
        });
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn an_unknown_id_forces_one_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let snapshot = KeySnapshot::start(&path).unwrap();
        let store = KeyStore::open(&path).unwrap();
        for _ in 0..20 {
            let (_, record) = store.create("acme", None, None).unwrap();
            snapshot.refresh_now(Instant::now()).await;
            assert!(snapshot.get(&record.id).is_some(), "seen at once");
        }
        // Concurrent callers share checks, spaced FORCED_INTERVAL apart.
        let started = Instant::now();
        let calls: Vec<_> = (0..50)
            .map(|_| {
                let s = Arc::clone(&snapshot);
                tokio::spawn(async move { s.refresh_now(Instant::now()).await })
            })
            .collect();
        for call in calls {
            call.await.unwrap();
        }
        assert!(
            started.elapsed() < FORCED_INTERVAL * 20,
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn snapshot_sees_changes_from_another_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let snapshot = KeySnapshot::start(&path).unwrap();
        let store = KeyStore::open(&path).unwrap();
        let (_, record) = store.create("acme", None, None).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while snapshot.get(&record.id).is_none() {
            assert!(std::time::Instant::now() < deadline, "not seen within 1 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        store.revoke(&record.id).unwrap();
        while !snapshot.get(&record.id).is_some_and(|r| r.revoked) {
            assert!(
                std::time::Instant::now() < deadline + Duration::from_secs(1),
                "revocation not seen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
