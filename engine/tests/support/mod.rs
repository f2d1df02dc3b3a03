//! Helpers the engine's tests share: the fixtures directory, reading the references' JSON,
//! comparing vectors, deterministic prompt token ids, reading generations to their end.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use airlock_engine::{Generation, TokenEvent};
use serde_json::Value;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn json(path: &Path) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
}

/// The unsigned integers of a JSON array (token ids), as `T`.
pub fn numbers<T: TryFrom<u64>>(v: &Value) -> Vec<T> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_u64().and_then(|x| T::try_from(x).ok()))
        .collect()
}

pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_f64().map(|x| x as f32))
        .collect()
}

/// Cosine similarity, accumulated in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

/// Deterministic token ids for prompts: `n` ids in `lowest..lowest + span`, the same for
/// the same `seed` (a fixed LCG; no special tokens when the range avoids them).
pub fn token_ids(seed: u64, n: usize, lowest: u32, span: u32) -> Vec<u32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) % u64::from(span)) as u32 + lowest
        })
        .collect()
}

/// Reads a generation to its end and returns the generated token ids.
pub fn collect(mut g: Generation) -> anyhow::Result<Vec<u32>> {
    let mut ids = Vec::new();
    while let Some(ev) = g.blocking_next() {
        match ev {
            TokenEvent::Token { id, .. } => ids.push(id),
            TokenEvent::Finished { .. } => return Ok(ids),
            TokenEvent::Failed(e) => anyhow::bail!("{e}"),
            TokenEvent::Started { .. } => {}
        }
    }
    anyhow::bail!("generation ended without Finished")
}

/// Reads every generation on its own thread; returns their token ids in order.
pub fn collect_all(gens: Vec<Generation>) -> anyhow::Result<Vec<Vec<u32>>> {
    on_threads(gens, collect)
}

/// Reads every generation with `read` on its own thread (a slow reader must not stall the
/// others); returns what each gave, in order.
pub fn on_threads<T: Send + 'static>(
    gens: Vec<Generation>,
    read: fn(Generation) -> anyhow::Result<T>,
) -> anyhow::Result<Vec<T>> {
    let handles: Vec<_> = gens
        .into_iter()
        .map(|g| std::thread::spawn(move || read(g)))
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().map_err(|_| anyhow::anyhow!("reader panicked"))?)
        .collect()
}
