//! Continuous batching, chunked prefill, the KV-cache budget and tenant-fair scheduling, on
//! the embedded default model (4 layers, 2 KV heads of 32, f32 on the CPU: 2048 bytes per
//! cached position, 32 KiB per 16-position block).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use airlock_engine::{
    BurnEngine, DeviceChoice, Engine, EngineError, GenerateRequest, Generation, ModelSpec, Prompt,
    SamplingParams, TokenEvent, default_model,
};

/// Bytes of KV cache one position takes in the default model on the CPU.
const BYTES_PER_POSITION: usize = 2 * 4 * 2 * 32 * 4;

struct Limits {
    max_queue: usize,
    max_active: usize,
    prefill_chunk: usize,
    max_batch_tokens: usize,
    kv_cache_bytes: Option<usize>,
}

fn engine(dir: &Path, l: Limits) -> anyhow::Result<BurnEngine> {
    let path = default_model::install(dir)?;
    Ok(BurnEngine::load(&[ModelSpec {
        device: DeviceChoice::Cpu,
        max_queue: l.max_queue,
        max_active: l.max_active,
        prefill_chunk: l.prefill_chunk,
        max_batch_tokens: l.max_batch_tokens,
        kv_cache_bytes: l.kv_cache_bytes,
        ..ModelSpec::new("m", path)
    }])?)
}

fn limits(max_active: usize) -> Limits {
    Limits {
        max_queue: 4096,
        max_active,
        prefill_chunk: 64,
        max_batch_tokens: 96,
        kv_cache_bytes: None,
    }
}

/// Deterministic token ids (not special tokens) for a prompt of `n` tokens.
fn prompt_ids(seed: u64, n: usize) -> Vec<u32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) % 900) as u32 + 50
        })
        .collect()
}

fn request(tenant: &str, weight: u32, ids: Vec<u32>, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        request_id: format!("{tenant}-req"),
        tenant: tenant.into(),
        tenant_weight: weight,
        model: "m".into(),
        prompt: Prompt::TokenIds(ids),
        params: SamplingParams {
            max_tokens: Some(max_tokens),
            ignore_eos: true,
            ..Default::default()
        },
    }
}

/// Reads a generation to its end and returns the generated token ids.
fn collect(mut g: Generation) -> anyhow::Result<Vec<u32>> {
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
fn collect_all(gens: Vec<Generation>) -> anyhow::Result<Vec<Vec<u32>>> {
    let handles: Vec<_> = gens
        .into_iter()
        .map(|g| std::thread::spawn(move || collect(g)))
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().map_err(|_| anyhow::anyhow!("reader panicked"))?)
        .collect()
}

/// Waits for the worker to retire everything (it updates its counters after each step).
fn wait_idle(e: &BurnEngine) -> airlock_engine::EngineStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = e.status();
        if (s.active == 0 && s.queued == 0 && s.kv_cache_bytes == 0) || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Prompt lengths around the chunk size (64): one needs five chunks.
const LENGTHS: [usize; 6] = [3, 17, 300, 64, 65, 40];

fn alone_outputs(dir: &Path, max_tokens: usize) -> anyhow::Result<Vec<Vec<u32>>> {
    let e = engine(dir, limits(1))?;
    LENGTHS
        .iter()
        .enumerate()
        .map(|(i, &n)| collect(e.submit(request("t", 1, prompt_ids(i as u64, n), max_tokens))?))
        .collect()
}

fn together_outputs(e: &BurnEngine, max_tokens: usize) -> anyhow::Result<Vec<Vec<u32>>> {
    let gens = LENGTHS
        .iter()
        .enumerate()
        .map(|(i, &n)| e.submit(request("t", 1, prompt_ids(i as u64, n), max_tokens)))
        .collect::<Result<Vec<_>, _>>()?;
    collect_all(gens)
}

#[test]
fn greedy_output_is_the_same_alone_or_batched() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let alone = alone_outputs(dir.path(), 12)?;
    let e = engine(dir.path(), limits(8))?;
    let together = together_outputs(&e, 12)?;
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a.len(), 12);
        assert_eq!(a, t, "prompt {i} ({} tokens)", LENGTHS[i]);
    }
    let s = wait_idle(&e);
    assert_eq!((s.active, s.queued, s.kv_cache_bytes), (0, 0, 0));
    Ok(())
}

#[test]
fn tiny_kv_budget_waits_and_preempts_without_changing_output() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let alone = alone_outputs(dir.path(), 40)?;
    // 24 blocks = 384 positions: the 300-token prompt plus its 40 tokens fit alone, but not
    // beside the others, so admission waits and growing sequences preempt newer ones.
    let e = engine(
        dir.path(),
        Limits {
            kv_cache_bytes: Some(24 * 16 * BYTES_PER_POSITION),
            ..limits(6)
        },
    )?;
    let together = together_outputs(&e, 40)?;
    assert_eq!(alone, together);
    let s = wait_idle(&e);
    assert_eq!((s.active, s.queued, s.kv_cache_bytes), (0, 0, 0));
    Ok(())
}

#[test]
fn request_beyond_the_whole_budget_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let e = engine(
        dir.path(),
        Limits {
            kv_cache_bytes: Some(4 * 16 * BYTES_PER_POSITION + 100),
            ..limits(2)
        },
    )?;
    match e.submit(request("t", 1, prompt_ids(1, 10), 60)) {
        Err(EngineError::KvBudget {
            budget_tokens,
            budget_bytes,
            prompt_tokens,
            max_tokens,
        }) => assert_eq!(
            (budget_tokens, budget_bytes, prompt_tokens, max_tokens),
            (64, 4 * 16 * BYTES_PER_POSITION + 100, 10, 60)
        ),
        other => anyhow::bail!("expected KvBudget, got {other:?}"),
    }
    // Exactly the budget fits.
    assert_eq!(
        collect(e.submit(request("t", 1, prompt_ids(1, 10), 54))?)?.len(),
        54
    );
    Ok(())
}

#[test]
fn thousands_of_short_requests_leave_nothing_behind() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let e = Arc::new(engine(
        dir.path(),
        Limits {
            kv_cache_bytes: Some(64 * 16 * BYTES_PER_POSITION),
            ..limits(8)
        },
    )?);
    let mut finished = 0;
    for wave in 0..50u64 {
        let mut gens = Vec::new();
        for i in 0..40u64 {
            let n = 1 + ((wave * 40 + i) % 23) as usize;
            let g = e.submit(request(
                ["a", "b", "c"][(i % 3) as usize],
                1,
                prompt_ids(wave * 40 + i, n),
                3,
            ))?;
            gens.push((i, g));
        }
        let mut keep = Vec::new();
        for (i, mut g) in gens {
            match i % 5 {
                // Cancelled while queued or just started.
                0 => drop(g),
                // Cancelled mid-way, after its first token.
                1 => loop {
                    match g.blocking_next() {
                        Some(TokenEvent::Token { .. }) | None => break,
                        Some(_) => {}
                    }
                },
                _ => keep.push(g),
            }
        }
        finished += collect_all(keep)?.len();
    }
    assert_eq!(finished, 50 * 24);
    let s = wait_idle(&e);
    assert_eq!((s.active, s.queued, s.kv_cache_bytes), (0, 0, 0), "{s:?}");
    Ok(())
}

/// What a reader saw, numbered in one global order shared by all readers.
#[derive(Default)]
struct Seen {
    started: Option<usize>,
    first_token: Option<usize>,
    tokens: Vec<usize>,
}

fn watch(mut g: Generation, clock: Arc<AtomicUsize>) -> std::thread::JoinHandle<Seen> {
    std::thread::spawn(move || {
        let mut seen = Seen::default();
        while let Some(ev) = g.blocking_next() {
            let at = clock.fetch_add(1, Ordering::SeqCst);
            match ev {
                TokenEvent::Started { .. } => seen.started = Some(at),
                TokenEvent::Token { .. } => {
                    seen.first_token.get_or_insert(at);
                    seen.tokens.push(at);
                }
                TokenEvent::Finished { .. } | TokenEvent::Failed(_) => break,
            }
        }
        seen
    })
}

#[test]
fn a_light_tenant_starts_before_a_flood_is_served() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let e = engine(dir.path(), limits(4))?;
    let clock = Arc::new(AtomicUsize::new(0));
    let flood: Vec<_> = (0..24)
        .map(|i| {
            e.submit(request("a", 1, prompt_ids(i, 8), 24))
                .map(|g| watch(g, Arc::clone(&clock)))
        })
        .collect::<Result<_, _>>()?;
    let light = watch(
        e.submit(request("b", 1, prompt_ids(99, 8), 4))?,
        Arc::clone(&clock),
    );
    let b = light
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))?;
    let b_first = b
        .first_token
        .ok_or_else(|| anyhow::anyhow!("b got no token"))?;
    let mut started_before_b = 0;
    for h in flood {
        let a = h.join().map_err(|_| anyhow::anyhow!("reader panicked"))?;
        if a.started.is_some_and(|s| s < b_first) {
            started_before_b += 1;
        }
    }
    // Four slots: at most those first four and a few admitted before b arrived, never most
    // of the 24.
    assert!(
        started_before_b <= 8,
        "{started_before_b} of a's 24 requests started before b's first token"
    );
    Ok(())
}

#[test]
fn tokens_follow_tenant_weights() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let e = engine(dir.path(), limits(4))?;
    let clock = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for i in 0..16 {
        for (tenant, weight) in [("a", 3), ("b", 1)] {
            let g = e.submit(request(tenant, weight, prompt_ids(i, 6), 8))?;
            readers.push((tenant, watch(g, Arc::clone(&clock))));
        }
    }
    let mut per_tenant: Vec<(&str, Vec<usize>)> = Vec::new();
    for (tenant, h) in readers {
        let seen = h.join().map_err(|_| anyhow::anyhow!("reader panicked"))?;
        per_tenant.push((tenant, seen.tokens));
    }
    let mut all: Vec<(usize, &str)> = per_tenant
        .iter()
        .flat_map(|(t, ts)| ts.iter().map(move |&at| (at, *t)))
        .collect();
    assert_eq!(all.len(), 2 * 16 * 8);
    all.sort_unstable();
    // While both tenants are busy (the first 128 tokens: a alone has 128), a gets about 3×.
    let window = &all[..128];
    let a = window.iter().filter(|(_, t)| *t == "a").count();
    let b = window.len() - a;
    let ratio = a as f64 / b.max(1) as f64;
    assert!(
        (2.0..=4.5).contains(&ratio),
        "a {a} vs b {b} tokens (ratio {ratio:.2})"
    );
    Ok(())
}

/// Sequences decoding under grammars, seeded, batched: each answer is what it is alone
/// (the masks and sampling of a batch's sequences run side by side, each on its own state),
/// and each is valid JSON for its schema.
#[test]
fn constrained_sampled_output_is_the_same_alone_or_batched() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let schema = |i: usize| {
        serde_json::json!({
            "type": "object",
            "properties": {
                "k": {"enum": ["a", "b", "c"]},
                "n": {"type": "integer", "minimum": 0, "maximum": 9 + i},
                "f": {"type": "boolean"},
            },
            "required": ["k", "n", "f"],
            "additionalProperties": false,
        })
    };
    let req = |i: usize| {
        let mut r = request("t", 1, prompt_ids(i as u64, 5 + 7 * i), 60);
        r.params.ignore_eos = false;
        r.params.temperature = 1.0;
        r.params.seed = Some(i as u64);
        r.params.grammar = Some(airlock_engine::Grammar {
            param: "response_format",
            spec: airlock_engine::GrammarSpec::JsonSchema(schema(i)),
        });
        r
    };
    let text = |mut g: Generation| -> anyhow::Result<String> {
        let mut out = String::new();
        while let Some(ev) = g.blocking_next() {
            match ev {
                TokenEvent::Token { text, .. } => out.push_str(&text),
                TokenEvent::Finished { text, .. } => {
                    out.push_str(&text);
                    return Ok(out);
                }
                TokenEvent::Failed(e) => anyhow::bail!("{e}"),
                TokenEvent::Started { .. } => {}
            }
        }
        anyhow::bail!("generation ended without Finished")
    };
    let solo = engine(dir.path(), limits(1))?;
    let alone = (0..6)
        .map(|i| text(solo.submit(req(i))?))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let batched = engine(dir.path(), limits(8))?;
    let gens = (0..6)
        .map(|i| batched.submit(req(i)))
        .collect::<Result<Vec<_>, _>>()?;
    let handles: Vec<_> = gens
        .into_iter()
        .map(|g| std::thread::spawn(move || text(g)))
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let together = h.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
        assert_eq!(together, alone[i], "request {i}");
        let v: serde_json::Value = serde_json::from_str(&together)?;
        assert!(
            v["n"].as_u64().is_some_and(|n| n <= 9 + i as u64),
            "{together}"
        );
    }
    Ok(())
}
