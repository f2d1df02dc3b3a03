//! The API key store: one SQLite table of argon2id hashes (never keys), shared by the
//! `airlockd keys` commands and the running daemon.
//!
//! The daemon does not query SQLite per request. It keeps an in-memory snapshot of the
//! table, refreshed by its own thread whenever `PRAGMA data_version` says another
//! connection (a `keys revoke` in another process) committed. The thread polls every
//! [`REFRESH`]; a revocation or rotation therefore takes effect within that interval plus
//! one table read — documented as at most 1 second (docs/config.md, `[auth]`).
//!
//! Two things keep the snapshot honest:
//! - an unknown key id triggers one immediate check ([`KeySnapshot::refresh_now`]) before
//!   the key is refused, so a key used right after `airlockd keys create` works; these
//!   forced checks are serialised and spaced by [`FORCED_INTERVAL`], so made-up ids
//!   cannot hammer the database;
//! - a snapshot that could not be confirmed current for [`MAX_STALENESS`] (the file is
//!   unreadable, replaced by something that is not a key database, or removed) is no
//!   longer used: API keys are refused with 503 and `/readyz` fails until the database
//!   reads again. Revocation never fails open for longer than that bound. The file is
//!   re-opened when the path names a different file than the one open (restored from a
//!   backup, replaced), so the daemon never keeps reading a table nobody writes.

mod snapshot;

pub use snapshot::KeySnapshot;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use airlock_policy::{ApiKey, KeyId, KeyRecord};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::clock::{from_unix_secs as time, unix_secs as secs};

/// How often the daemon checks the database for changes.
pub const REFRESH: Duration = Duration::from_millis(250);
/// How long the daemon keeps serving from its last good copy of the table while the
/// database cannot be read; past this, API keys are refused (503) and `/readyz` fails.
pub const MAX_STALENESS: Duration = Duration::from_secs(5);
/// The least time between two checks forced by unknown key ids.
pub const FORCED_INTERVAL: Duration = Duration::from_millis(50);
/// How long the daemon's own connection waits on a lock before the check counts as failed
/// (the CLI waits longer: [`KeyStore::open`]).
const DAEMON_BUSY_TIMEOUT: Duration = Duration::from_millis(500);

/// Key store failures.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    #[error("key database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("key database {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no key with id {0}")]
    NotFound(String),
    #[error(transparent)]
    Policy(#[from] airlock_policy::PolicyError),
}

/// An open key database.
pub struct KeyStore {
    path: PathBuf,
    conn: Connection,
}

impl KeyStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, KeyStoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        Self::open_with(path, OpenFlags::default(), Duration::from_secs(5))
    }

    /// Opens the database at `path` only if the file exists (the daemon's re-open: a
    /// removed database must not come back empty, silently forgetting every revocation).
    fn open_existing(path: &Path) -> Result<Self, KeyStoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        Self::open_with(path, flags, DAEMON_BUSY_TIMEOUT)
    }

    fn open_with(path: &Path, flags: OpenFlags, busy: Duration) -> Result<Self, KeyStoreError> {
        let err = |source| KeyStoreError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open_with_flags(path, flags).map_err(err)?;
        conn.busy_timeout(busy).map_err(err)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS api_keys (
                 id TEXT PRIMARY KEY,
                 tenant TEXT NOT NULL,
                 phc TEXT NOT NULL,
                 created_at INTEGER NOT NULL,
                 expires_at INTEGER,
                 bound_cert_sha256 TEXT,
                 revoked INTEGER NOT NULL DEFAULT 0
             );",
        )
        .map_err(err)?;
        Ok(Self {
            path: path.to_path_buf(),
            conn,
        })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> KeyStoreError + '_ {
        |source| KeyStoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Creates a key; the returned [`ApiKey`] is the only time the secret exists outside
    /// the client.
    pub fn create(
        &self,
        tenant: &str,
        expires_at: Option<SystemTime>,
        bound_cert_sha256: Option<String>,
    ) -> Result<(ApiKey, KeyRecord), KeyStoreError> {
        let key = ApiKey::generate();
        let record = KeyRecord {
            id: key.id().clone(),
            tenant: tenant.to_owned(),
            phc: airlock_policy::hash::hash_key(&key)?,
            // Whole seconds, as stored.
            created_at: time(secs(SystemTime::now())),
            expires_at,
            bound_cert_sha256,
            revoked: false,
        };
        self.conn
            .execute(
                "INSERT INTO api_keys (id, tenant, phc, created_at, expires_at, bound_cert_sha256, revoked)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)",
                params![
                    record.id.as_str(),
                    record.tenant,
                    record.phc,
                    secs(record.created_at),
                    record.expires_at.map(secs),
                    record.bound_cert_sha256,
                ],
            )
            .map_err(self.err())?;
        Ok((key, record))
    }

    /// All keys, oldest first.
    pub fn list(&self) -> Result<Vec<KeyRecord>, KeyStoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, tenant, phc, created_at, expires_at, bound_cert_sha256, revoked
                 FROM api_keys ORDER BY created_at, id",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, Option<i64>>(4)?,
                    row.get::<_, Option<String>>(5)?,
                    row.get::<_, i64>(6)?,
                ))
            })
            .map_err(self.err())?;
        let mut out = Vec::new();
        for row in rows {
            let (id, tenant, phc, created, expires, bound, revoked) = row.map_err(self.err())?;
            // A row with a malformed id cannot match any presented key: skip it.
            let Ok(id) = KeyId::parse(&id) else { continue };
            out.push(KeyRecord {
                id,
                tenant,
                phc,
                created_at: time(created),
                expires_at: expires.map(time),
                bound_cert_sha256: bound,
                revoked: revoked != 0,
            });
        }
        Ok(out)
    }

    pub fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, KeyStoreError> {
        Ok(self.list()?.into_iter().find(|r| r.id == *id))
    }

    /// Revokes a key at once.
    pub fn revoke(&self, id: &KeyId) -> Result<(), KeyStoreError> {
        let n = self
            .conn
            .execute(
                "UPDATE api_keys SET revoked = 1 WHERE id = ?1",
                [id.as_str()],
            )
            .map_err(self.err())?;
        if n == 0 {
            return Err(KeyStoreError::NotFound(id.to_string()));
        }
        Ok(())
    }

    /// Issues a new key for the same tenant and binding; the old one stays valid for
    /// `overlap` more (or until its own expiry, if sooner).
    pub fn rotate(
        &self,
        id: &KeyId,
        overlap: Duration,
    ) -> Result<(ApiKey, KeyRecord, SystemTime), KeyStoreError> {
        let old = self
            .get(id)?
            .filter(|r| !r.revoked)
            .ok_or_else(|| KeyStoreError::NotFound(id.to_string()))?;
        let (key, record) =
            self.create(&old.tenant, old.expires_at, old.bound_cert_sha256.clone())?;
        let mut until = SystemTime::now() + overlap;
        if let Some(at) = old.expires_at {
            until = until.min(at);
        }
        self.conn
            .execute(
                "UPDATE api_keys SET expires_at = ?2 WHERE id = ?1",
                params![id.as_str(), secs(until)],
            )
            .map_err(self.err())?;
        Ok((key, record, until))
    }

    fn data_version(&self) -> Result<i64, KeyStoreError> {
        self.conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .optional()
            .map(Option::unwrap_or_default)
            .map_err(self.err())
    }
}

/// A change to the key table seen by the daemon's refresh thread (for the audit log's
/// `admin` records). Ids and tenants only: the table holds no secrets, and none are named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyEvent {
    /// A key appeared (`keys create`, or the new key of `keys rotate`).
    Created {
        id: String,
        tenant: String,
        expires_at: Option<i64>,
    },
    /// A key was revoked (`keys revoke`).
    Revoked { id: String, tenant: String },
    /// A key's expiry changed (the old key of `keys rotate` gets its overlap deadline).
    ExpiryChanged {
        id: String,
        tenant: String,
        expires_at: Option<i64>,
    },
    /// A key disappeared from the table (deleted outside `airlockd keys`).
    Removed { id: String, tenant: String },
}

impl KeyEvent {
    /// The `event` field of the admin record.
    pub fn name(&self) -> &'static str {
        match self {
            KeyEvent::Created { .. } => "key_created",
            KeyEvent::Revoked { .. } => "key_revoked",
            KeyEvent::ExpiryChanged { .. } => "key_expiry_changed",
            KeyEvent::Removed { .. } => "key_removed",
        }
    }
}

/// What changed between two versions of the table, in a stable order (by key id).
pub fn diff(old: &HashMap<KeyId, KeyRecord>, new: &HashMap<KeyId, KeyRecord>) -> Vec<KeyEvent> {
    let mut events = Vec::new();
    let mut ids: Vec<&KeyId> = old.keys().chain(new.keys()).collect();
    ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    ids.dedup();
    for id in ids {
        let (id_str, expiry) = (id.to_string(), |r: &KeyRecord| r.expires_at.map(secs));
        match (old.get(id), new.get(id)) {
            (None, Some(n)) => {
                events.push(KeyEvent::Created {
                    id: id_str.clone(),
                    tenant: n.tenant.clone(),
                    expires_at: expiry(n),
                });
                if n.revoked {
                    events.push(KeyEvent::Revoked {
                        id: id_str,
                        tenant: n.tenant.clone(),
                    });
                }
            }
            (Some(o), Some(n)) => {
                if n.revoked && !o.revoked {
                    events.push(KeyEvent::Revoked {
                        id: id_str.clone(),
                        tenant: n.tenant.clone(),
                    });
                }
                if expiry(o) != expiry(n) {
                    events.push(KeyEvent::ExpiryChanged {
                        id: id_str,
                        tenant: n.tenant.clone(),
                        expires_at: expiry(n),
                    });
                }
            }
            (Some(o), None) => events.push(KeyEvent::Removed {
                id: id_str,
                tenant: o.tenant.clone(),
            }),
            (None, None) => {}
        }
    }
    events
}

/// Told of each batch of changes the refresh thread sees (not of the initial load).
pub type KeyObserver = Box<dyn Fn(&[KeyEvent]) + Send>;

fn index(records: Vec<KeyRecord>) -> HashMap<KeyId, KeyRecord> {
    records.into_iter().map(|r| (r.id.clone(), r)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_list_revoke_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(&dir.path().join("keys.db")).unwrap();
        let (key, record) = store.create("acme", None, Some("ab".into())).unwrap();
        let listed = store.list().unwrap();
        assert_eq!(listed, vec![record.clone()]);
        assert!(!listed[0].phc.contains(key.expose()));
        assert!(airlock_policy::hash::verify_key(&key, &listed[0].phc).unwrap());

        let (new_key, new_record, until) =
            store.rotate(&record.id, Duration::from_secs(60)).unwrap();
        assert_ne!(new_key.expose(), key.expose());
        assert_eq!(new_record.tenant, "acme");
        assert_eq!(new_record.bound_cert_sha256.as_deref(), Some("ab"));
        let old = store.get(&record.id).unwrap().unwrap();
        assert_eq!(old.expires_at.map(secs), Some(secs(until)));
        assert!(old.usable(SystemTime::now()));
        assert!(!old.usable(until + Duration::from_secs(1)));

        store.revoke(&new_record.id).unwrap();
        assert!(store.get(&new_record.id).unwrap().unwrap().revoked);
        let unknown = airlock_policy::ApiKey::generate();
        assert!(matches!(
            store.revoke(unknown.id()),
            Err(KeyStoreError::NotFound(_))
        ));
    }

    #[test]
    fn diff_names_created_revoked_and_rotated_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(&dir.path().join("keys.db")).unwrap();
        let (_, a) = store.create("acme", None, None).unwrap();
        let before = index(store.list().unwrap());
        let (_, b) = store.create("beta", None, None).unwrap();
        store.revoke(&a.id).unwrap();
        let after = index(store.list().unwrap());
        let events = diff(&before, &after);
        assert!(events.contains(&KeyEvent::Created {
            id: b.id.to_string(),
            tenant: "beta".into(),
            expires_at: None,
        }));
        assert!(events.contains(&KeyEvent::Revoked {
            id: a.id.to_string(),
            tenant: "acme".into(),
        }));
        assert_eq!(events.len(), 2, "{events:?}");

        let (_, c, until) = store.rotate(&b.id, Duration::from_secs(60)).unwrap();
        let rotated = index(store.list().unwrap());
        let events = diff(&after, &rotated);
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(events.contains(&KeyEvent::ExpiryChanged {
            id: b.id.to_string(),
            tenant: "beta".into(),
            expires_at: Some(secs(until)),
        }));
        assert!(
            events
                .iter()
                .any(|e| matches!(e, KeyEvent::Created { id, .. } if *id == c.id.to_string()))
        );
        assert!(diff(&rotated, &rotated).is_empty());
    }
}
