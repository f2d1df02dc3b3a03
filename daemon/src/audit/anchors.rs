//! Anchors: signed checkpoints an auditor keeps off the gateway host, as
//! `airlockd audit export --checkpoints` prints them (`{"kind":"checkpoint","seq",
//! "hash","ts_ms","signature"}`, one per line). `audit verify --anchors FILE` requires the
//! chain to pass through each one and to reach the newest: someone who can write the
//! host can drop a log's tail with its checkpoints, or rewrite records past the newest
//! checkpoint left in the file, but cannot change what the auditor already holds.
//!
//! Other lines of an export (records) are skipped, so the whole export can serve as the
//! anchors file. Every anchor's signature is checked with the auditor's public key: an
//! anchors file with a bad signature is an error (exit 1), not a finding about the log.

use std::path::Path;

use ed25519_dalek::VerifyingKey;
use serde_json::Value;

use super::AuditError;
use super::verify::{Anchors, check_signature};

/// Reads and checks the anchors in `path`.
pub fn load(path: &Path, key: &VerifyingKey) -> Result<Anchors, AuditError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, key).map_err(|(line, reason)| {
        AuditError::Format(format!("{}: line {line}: {reason}", path.display()))
    })
}

/// Parses anchors from JSON lines; the error names the 1-based line and what is wrong.
pub fn parse(text: &str, key: &VerifyingKey) -> Result<Anchors, (usize, String)> {
    let mut anchors = Anchors::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(line).map_err(|e| (line_no, format!("not a JSON object: {e}")))?;
        if value.get("kind").and_then(Value::as_str) != Some("checkpoint") {
            continue;
        }
        let field = |name: &str| {
            value
                .get(name)
                .ok_or_else(|| (line_no, format!("checkpoint without `{name}`")))
        };
        let seq = field("seq")?
            .as_u64()
            .ok_or_else(|| (line_no, "`seq` is not a non-negative integer".to_owned()))?;
        let ts_ms = field("ts_ms")?
            .as_i64()
            .ok_or_else(|| (line_no, "`ts_ms` is not an integer".to_owned()))?;
        let hex_field = |name: &str, len: usize| {
            field(name)?
                .as_str()
                .and_then(|h| hex::decode(h).ok())
                .filter(|b| b.len() == len)
                .ok_or_else(|| (line_no, format!("`{name}` is not {len} bytes of hex")))
        };
        let hash = hex_field("hash", 32)?;
        let signature = hex_field("signature", 64)?;
        if let Some(problem) = check_signature(Some(key), seq, &hash, ts_ms, &signature) {
            return Err((line_no, format!("checkpoint seq {seq}: {problem}")));
        }
        let hash: [u8; 32] = hash
            .try_into()
            .map_err(|_| (line_no, "`hash` is not 32 bytes".to_owned()))?;
        if let Some(other) = anchors.insert(seq, hash)
            && other != hash
        {
            return Err((
                line_no,
                format!("two validly signed checkpoints for seq {seq} with different hashes"),
            ));
        }
    }
    Ok(anchors)
}
