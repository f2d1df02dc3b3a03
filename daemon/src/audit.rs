//! The audit log: every decision the gateway makes, recorded in a local SQLite database
//! before it takes effect, chained by SHA-256 and sealed by Ed25519-signed checkpoints so
//! that altering, removing or reordering records is detected offline by `airlockd audit
//! verify`. See `docs/audit.md` for the format and the guarantees.
//!
//! * [`record`]: what a record says and its canonical encoding (what the hash covers).
//! * [`writer`]: the single writer thread (group commit, checkpoints, recovery records).
//! * [`verify`]: the offline checker.
//! * [`trail`]: one request's records (admission before the engine, completion before the
//!   final bytes), fail closed.
//! * [`tools`]: export, digest, backup, keygen; [`cli`]: the `airlockd audit` subcommand.

pub mod cli;
pub mod keys;
pub mod lifecycle;
pub mod record;
pub mod rotate;
#[cfg(test)]
mod tests;
pub mod tools;
pub mod trail;
pub mod verify;
pub mod writer;

use std::path::PathBuf;

pub use keys::{DigestKey, SigningKey};
pub use record::{Kind, Record};
pub use trail::Trail;
pub use writer::{AuditLog, WriterSettings};

/// What can go wrong with the audit log. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("audit database: {0}")]
    Write(#[from] rusqlite::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("the audit writer did not confirm the record within {0:?}")]
    Timeout(std::time::Duration),
    #[error("the audit writer is overloaded (queue full)")]
    Overloaded,
    #[error("audit log unavailable: {0}")]
    Unavailable(String),
    #[error("the audit writer has stopped")]
    Stopped,
    #[error("{0}")]
    Format(String),
}

/// SHA-256 of a file's bytes, hex: the "configuration in force" named in every record.
pub fn config_hash(path: &std::path::Path) -> String {
    use sha2::{Digest, Sha256};
    match std::fs::read(path) {
        Ok(bytes) => hex::encode(Sha256::digest(&bytes)),
        Err(_) => "unreadable".to_owned(),
    }
}

/// Milliseconds since the Unix epoch, UTC.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
