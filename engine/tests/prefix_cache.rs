//! Prefix caching (`engine/src/engine/prefix.rs`) through the public engine API, on the
//! embedded default model: a later prompt that starts like an earlier one of the same
//! tenant prefills only the rest, and the output is the same as without the cache.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use airlock_engine::{
    BurnEngine, DeviceChoice, Engine, EngineStatus, GenerateRequest, Generation, ModelSpec, Prompt,
    SamplingParams, TokenEvent, default_model,
};

/// Bytes of KV cache one position takes in the default model on the CPU.
const BYTES_PER_POSITION: usize = 2 * 4 * 2 * 32 * 4;

fn engine(dir: &Path, prefix_cache: bool, kv_positions: Option<usize>) -> BurnEngine {
    let path = default_model::install(dir).unwrap();
    BurnEngine::load(&[ModelSpec {
        device: DeviceChoice::Cpu,
        max_active: 4,
        prefill_chunk: 64,
        max_batch_tokens: 96,
        kv_cache_bytes: kv_positions.map(|p| p * BYTES_PER_POSITION),
        prefix_cache,
        ..ModelSpec::new("m", path)
    }])
    .unwrap()
}

/// Deterministic token ids (not special tokens).
fn ids(seed: u64, n: usize) -> Vec<u32> {
    support::token_ids(seed, n, 50, 900)
}

fn request(tenant: &str, prompt: Vec<u32>, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        request_id: format!("{tenant}-req"),
        tenant: tenant.into(),
        tenant_weight: 1,
        model: "m".into(),
        prompt: Prompt::TokenIds(prompt),
        params: SamplingParams {
            max_tokens: Some(max_tokens),
            ignore_eos: true,
            ..Default::default()
        },
    }
}

fn collect(g: Generation) -> Vec<u32> {
    collect_usage(g).0
}

/// The generated ids and the usage's `cached_tokens`.
fn collect_usage(mut g: Generation) -> (Vec<u32>, usize) {
    let mut out = Vec::new();
    while let Some(ev) = g.blocking_next() {
        match ev {
            TokenEvent::Token { id, .. } => out.push(id),
            TokenEvent::Finished { usage, .. } => return (out, usage.cached_tokens),
            TokenEvent::Failed(e) => panic!("{e}"),
            TokenEvent::Started { .. } => {}
        }
    }
    panic!("generation ended without Finished")
}

fn run(e: &BurnEngine, tenant: &str, prompt: &[u32], max_tokens: usize) -> Vec<u32> {
    collect(
        e.submit(request(tenant, prompt.to_vec(), max_tokens))
            .unwrap(),
    )
}

/// The worker updates its counters after each step: wait until it has retired everything.
fn idle(e: &BurnEngine) -> EngineStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = e.status();
        if (s.active == 0 && s.queued == 0 && s.kv_cache_bytes == 0) || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A conversation: a system prompt, a first question, the answer, a second question.
#[test]
fn a_conversation_prefills_each_turn_once_and_answers_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let cached = engine(dir.path(), true, None);
    let plain = engine(dir.path(), false, None);
    let system = ids(1, 150);
    let mut turn1 = system.clone();
    turn1.extend(ids(2, 20));

    let answer = run(&cached, "t", &turn1, 12);
    assert_eq!(answer, run(&plain, "t", &turn1, 12));
    let before = idle(&cached);
    assert_eq!(before.prefix_cache_tokens, 0, "nothing to reuse yet");
    assert!(
        before.prefix_cache_bytes > 0,
        "the ended sequence's cache is kept"
    );

    // Turn 2: everything so far (prompt, answer) plus a new question.
    let mut turn2 = turn1.clone();
    turn2.extend(&answer);
    turn2.extend(ids(3, 10));
    let second = run(&cached, "t", &turn2, 12);
    assert_eq!(
        second,
        run(&plain, "t", &turn2, 12),
        "the cache changed the output"
    );
    let after = idle(&cached);
    // The first turn's 170 prompt positions and 11 of its answer's (the last sampled token
    // never went through the model) are cached; whole blocks of 16: 176.
    assert_eq!(after.prefix_cache_tokens - before.prefix_cache_tokens, 176);
    assert_eq!(
        after.prefill_tokens - before.prefill_tokens,
        (turn2.len() - 176) as u64
    );

    // A new conversation with the same system prompt reuses the system prompt's blocks.
    let mut other = system.clone();
    other.extend(ids(4, 30));
    assert_eq!(run(&cached, "t", &other, 8), run(&plain, "t", &other, 8));
    let third = idle(&cached);
    assert_eq!(third.prefix_cache_tokens - after.prefix_cache_tokens, 144);
}

#[test]
fn tenants_never_share_a_cached_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), true, None);
    let prompt = ids(7, 100);
    run(&e, "alice", &prompt, 4);
    run(&e, "bob", &prompt, 4);
    assert_eq!(idle(&e).prefix_cache_tokens, 0, "bob reused alice's cache");
    run(&e, "alice", &prompt, 4);
    assert_eq!(idle(&e).prefix_cache_tokens, 96);
}

/// A KV budget of two full sequences: cached prefixes give way to every new request (they
/// never make one wait or be preempted), and outputs stay the same.
#[test]
fn cached_prefixes_give_way_under_a_small_budget() {
    let dir = tempfile::tempdir().unwrap();
    let cached = engine(dir.path(), true, Some(2 * 256));
    let plain = engine(dir.path(), false, Some(2 * 256));
    let prompts: Vec<Vec<u32>> = (0..6).map(|i| ids(10 + i, 180 + 10 * i as usize)).collect();
    // One after another: each leaves an entry that the next must evict.
    for p in &prompts {
        assert_eq!(run(&cached, "t", p, 16), run(&plain, "t", p, 16));
    }
    // All at once, repeating earlier prompts (some reuse, the rest evicts).
    let gens: Vec<Generation> = prompts
        .iter()
        .rev()
        .map(|p| cached.submit(request("t", p.clone(), 16)).unwrap())
        .collect();
    // Each read on its own thread, so no reader holds up another's sequence.
    let readers: Vec<_> = gens
        .into_iter()
        .map(|g| std::thread::spawn(move || collect(g)))
        .collect();
    let together: Vec<Vec<u32>> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    for (p, out) in prompts.iter().rev().zip(together) {
        assert_eq!(out, run(&plain, "t", p, 16));
    }
    let s = idle(&cached);
    assert_eq!((s.active, s.queued, s.kv_cache_bytes), (0, 0, 0), "{s:?}");
    assert!(s.prefix_cache_bytes <= 2 * 256 * BYTES_PER_POSITION);
}
