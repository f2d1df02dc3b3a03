//! Rotation and retention. When the live file passes `rotate_bytes` or `rotate_after`, the
//! writer seals it (final checkpoint, clean mark, WAL folded in), renames it to
//! `DB.NNNNNNNNNNNN` (its first sequence number, zero-padded, so names sort in chain order)
//! and starts a new live file whose `meta.prev_hash`/`first_seq` continue the chain and whose
//! first record (`rotate`) names its predecessor. Retention removes only whole rotated files
//! older than `keep_days`, and records which in a `retention` record.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// When to rotate and what to keep: the validated `[audit]` settings.
pub use crate::config::audit::Rotation;

/// The name a live file gets when rotated.
pub fn archived_name(db: &Path, first_seq: u64) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(format!(".{first_seq:012}"));
    PathBuf::from(name)
}

/// Rotated files of `db`, oldest first.
pub fn rotated_files(db: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(base)) = (db.parent(), db.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{base}.");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let rest = name.strip_prefix(&prefix)?;
            (rest.len() == 12 && rest.bytes().all(|b| b.is_ascii_digit())).then(|| entry.path())
        })
        .collect();
    files.sort();
    files
}

/// Removes rotated files last written before `now - keep`; returns their names.
pub fn apply_retention(db: &Path, keep: Duration) -> Vec<String> {
    let Some(cutoff) = SystemTime::now().checked_sub(keep) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for file in rotated_files(db) {
        let old = std::fs::metadata(&file)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < cutoff);
        if !old {
            // Files are in chain order: keep everything from the first young one on, so
            // what remains is always a contiguous tail of the chain.
            break;
        }
        match std::fs::remove_file(&file) {
            Ok(()) => removed.push(file.display().to_string()),
            Err(e) => {
                tracing::error!(file = %file.display(), error = %e, "audit retention: cannot remove");
                break;
            }
        }
    }
    removed
}

/// The first record of a file that continues `previous` (which ends at `last_seq`, `last_hash`).
pub(super) fn rotate_record(
    previous: String,
    last_seq: u64,
    last_hash: &[u8; 32],
) -> super::record::Record {
    super::record::Record::new(super::record::Kind::Rotate)
        .with("previous_file", previous)
        .with("previous_last_seq", last_seq)
        .with("previous_last_hash", hex::encode(last_hash))
}
