//! Records, their canonical encoding, and the chain hash.
//!
//! A record is a flat JSON object. Its canonical encoding (what is stored in `records.body`
//! and what the hash covers) is JSON with object keys sorted by their UTF-8 bytes, no
//! whitespace, strings escaped as `serde_json` escapes them, and integers only (no floats),
//! so that the same record always encodes to the same bytes.
//!
//! The chain hash of record `seq` is
//! `SHA-256("airlock-audit-v1\0" ‖ seq as u64 big-endian ‖ previous hash (32 bytes) ‖ body)`.
//! The row's `seq` column is thus authenticated too, and the body also names its own `seq`,
//! which lets `verify` tell reordering from modification.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Domain separator of record hashes.
const RECORD_DOMAIN: &[u8] = b"airlock-audit-v1\0";

/// The hash the first record of a log chains to (a log that is not a rotation successor).
pub const GENESIS: [u8; 32] = [0; 32];

/// What a record is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A request admitted to the engine (written before the engine sees it).
    Admit,
    /// A request refused before the engine (401, 403, 404, 413, 429, ...).
    Deny,
    /// The end of an admitted request (written before its final bytes are sent).
    Complete,
    /// Daemon start.
    Start,
    /// Daemon stop (clean shutdown).
    Stop,
    /// Configuration reload (new config hash) with certificates and CRLs.
    Reload,
    /// The previous run ended without a clean stop.
    Recovery,
    /// This file continues a rotated predecessor.
    Rotate,
    /// Rotated files removed by retention.
    Retention,
    /// Writes succeed again after a failure.
    Resumed,
    /// Administrative event (key create/revoke/rotate, ...), named in the record.
    Admin,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Admit => "admit",
            Kind::Deny => "deny",
            Kind::Complete => "complete",
            Kind::Start => "start",
            Kind::Stop => "stop",
            Kind::Reload => "reload",
            Kind::Recovery => "recovery",
            Kind::Rotate => "rotate",
            Kind::Retention => "retention",
            Kind::Resumed => "resumed",
            Kind::Admin => "admin",
        }
    }
}

/// A record before the writer numbers it: its kind and fields.
///
/// The fields are a short list (a request's records have 10–25) with unique, static keys,
/// in the order they were set: a hash map would cost more per field (a hashed, allocated
/// key) than the scan that keeps keys unique, and the encoding sorts them anyway.
#[derive(Clone, Debug)]
pub struct Record {
    pub kind: Kind,
    fields: Vec<(&'static str, Value)>,
}

impl Record {
    pub fn new(kind: Kind) -> Record {
        Record {
            kind,
            fields: Vec::with_capacity(24),
        }
    }

    /// Sets a field (replacing an earlier value of the same key); `None` and empty values
    /// are left out so records stay small.
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) -> &mut Record {
        let value = value.into();
        let empty = match &value {
            Value::Null => true,
            Value::String(s) => s.is_empty(),
            Value::Array(a) => a.is_empty(),
            _ => false,
        };
        if empty {
            return self;
        }
        match self.fields.iter_mut().find(|(k, _)| *k == key) {
            Some((_, old)) => *old = value,
            None => self.fields.push((key, value)),
        }
        self
    }

    pub fn with(mut self, key: &'static str, value: impl Into<Value>) -> Record {
        self.set(key, value);
        self
    }

    /// The canonical body of this record numbered `seq` at `ts_ms`, written by `node`
    /// (empty: not named). The writer's own fields win over a record field of the same name.
    /// Written straight from borrowed entries: no copy of the record's map per commit.
    pub fn encode(&self, seq: u64, ts_ms: i64, node: &str) -> Vec<u8> {
        let node_value = Value::from(node);
        let seq = Value::from(seq);
        let ts_ms = Value::from(ts_ms);
        let kind = Value::from(self.kind.as_str());
        let version = Value::from(1);
        let mut own: Vec<(&str, &Value)> = vec![
            ("seq", &seq),
            ("ts_ms", &ts_ms),
            ("kind", &kind),
            ("v", &version),
        ];
        if !node.is_empty() {
            own.push(("node", &node_value));
        }
        let mut entries: Vec<(&str, &Value)> = self
            .fields
            .iter()
            .map(|(k, v)| (*k, v))
            .filter(|(k, _)| !own.iter().any(|(o, _)| o == k))
            .collect();
        entries.extend(own);
        let mut out = Vec::with_capacity(256);
        write_object(entries, &mut out);
        out
    }
}

/// Writes `value` canonically (sorted keys, no whitespace). Floats are written as
/// `serde_json` writes them, but records never contain any.
pub fn canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => write_object(map.iter().map(|(k, v)| (k.as_str(), v)).collect(), out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(item, out);
            }
            out.push(b']');
        }
        Value::String(s) => write_string(s, out),
        // Numbers, booleans and null: serde_json's compact form (writing to a Vec cannot fail).
        other => {
            let _ = serde_json::to_writer(&mut *out, other);
        }
    }
}

/// An object's entries in byte order of their keys (keys are unique).
fn write_object(mut entries: Vec<(&str, &Value)>, out: &mut Vec<u8>) {
    entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    out.push(b'{');
    for (i, (key, value)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(key, out);
        out.push(b':');
        canonical(value, out);
    }
    out.push(b'}');
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    // serde_json's string escaping is deterministic; writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// The chain hash of a record body.
pub fn chain_hash(seq: u64, prev: &[u8; 32], body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(RECORD_DOMAIN);
    h.update(seq.to_be_bytes());
    h.update(prev);
    h.update(body);
    h.finalize().into()
}

/// Domain separator of checkpoint signatures.
const CHECKPOINT_DOMAIN: &[u8] = b"airlock-audit-checkpoint-v1\0";

/// The message a checkpoint signs: (sequence, chain hash, time).
pub fn checkpoint_message(seq: u64, hash: &[u8; 32], ts_ms: i64) -> Vec<u8> {
    let mut m = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 48);
    m.extend_from_slice(CHECKPOINT_DOMAIN);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash);
    m.extend_from_slice(&ts_ms.to_be_bytes());
    m
}
