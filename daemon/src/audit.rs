//! The audit log: every decision the gateway makes, recorded in a local SQLite database
//! before it takes effect, chained by SHA-256 and sealed by Ed25519-signed checkpoints so
//! that altering, removing or reordering records is detected offline by `airlockd audit
//! verify`. See `docs/audit.md` for the format and the guarantees.
//!
//! * [`record`]: what a record says and its canonical encoding (what the hash covers).
//! * [`writer`]: the single writer thread (group commit, checkpoints, recovery records).
//! * [`verify`]: the offline checker; [`anchors`]: checkpoints kept off the host.
//! * [`head`]: what the writer proves before it extends a log (never signs over a forgery).
//! * [`flood`]: the per-client budget of unauthenticated refusal records.
//! * [`trail`]: one request's records (admission before the engine, completion before the
//!   final bytes), fail closed.
//! * [`tools`]: export, digest, backup, keygen; [`cli`]: the `airlockd audit` subcommand.

pub mod anchors;
pub mod flood;
pub mod head;
pub mod keys;
pub mod lifecycle;
pub mod record;
pub mod rotate;
pub mod sink;
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
    /// The log does not extend its last signed checkpoint: the daemon will not append to it
    /// (its next checkpoint would sign whatever was done to it).
    #[error(
        "{path}: {refusal}. The daemon will not sign over a chain that does not extend its last \
         signed checkpoint. Investigate with `airlockd audit inspect --db {path} --pubkey \
         audit-signing.pub` and `airlockd audit verify`; keep the file as evidence and move it \
         aside (e.g. to {path}.suspect) to start a new log"
    )]
    Refused {
        path: PathBuf,
        refusal: head::Refusal,
    },
}

/// SHA-256 of a file's bytes, hex: the "configuration in force" named in every record.
pub fn config_hash(path: &std::path::Path) -> String {
    use sha2::{Digest, Sha256};
    match std::fs::read(path) {
        Ok(bytes) => hex::encode(Sha256::digest(&bytes)),
        Err(_) => "unreadable".to_owned(),
    }
}

pub use crate::clock::now_ms;
