//! Prompt-lookup speculative decoding (`ModelSpec::speculative`): the output is the one
//! plain greedy decoding gives, token for token and byte for byte (stop strings,
//! `max_tokens` landing inside a draft, logprobs), on f32, bf16 and GGUF-quantized models,
//! alone and batched with sequences that sample.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airlock_engine::{
    BurnEngine, DeviceChoice, Engine, EngineStatus, FinishReason, GenerateRequest, Generation,
    ModelSpec, Prompt, SamplingParams, Speculative, TokenEvent, default_model,
};
use support::fixtures;

fn engine(path: &Path, speculative: Option<Speculative>) -> anyhow::Result<BurnEngine> {
    engine_with_budget(path, speculative, None)
}

fn engine_with_budget(
    path: &Path,
    speculative: Option<Speculative>,
    kv_cache_bytes: Option<usize>,
) -> anyhow::Result<BurnEngine> {
    Ok(BurnEngine::load(&[ModelSpec {
        device: DeviceChoice::Cpu,
        max_active: 8,
        kv_cache_bytes,
        // Each request prefills its prompt afresh: the comparison is about decoding.
        prefix_cache: false,
        speculative,
        ..ModelSpec::new("m", path)
    }])?)
}

/// Everything a client sees of one generation.
#[derive(Debug, PartialEq)]
struct Output {
    ids: Vec<u32>,
    text: String,
    reason: FinishReason,
    logprobs: Vec<(u32, f32)>,
}

fn collect(mut g: Generation) -> anyhow::Result<Output> {
    let mut out = Output {
        ids: Vec::new(),
        text: String::new(),
        reason: FinishReason::Cancelled,
        logprobs: Vec::new(),
    };
    while let Some(ev) = g.blocking_next() {
        match ev {
            TokenEvent::Token { id, text, logprobs } => {
                out.ids.push(id);
                out.text.push_str(&text);
                out.logprobs
                    .extend(logprobs.iter().map(|l| (l.chosen.id, l.chosen.logprob)));
            }
            TokenEvent::Finished {
                reason,
                text,
                logprobs,
                ..
            } => {
                out.text.push_str(&text);
                out.logprobs
                    .extend(logprobs.iter().map(|l| (l.chosen.id, l.chosen.logprob)));
                out.reason = reason;
                return Ok(out);
            }
            TokenEvent::Failed(e) => anyhow::bail!("{e}"),
            TokenEvent::Started { .. } => {}
        }
    }
    anyhow::bail!("generation ended without Finished")
}

/// Submits every request at once, then reads them all (on their own threads).
fn run_all(e: &BurnEngine, reqs: &[GenerateRequest]) -> anyhow::Result<Vec<Output>> {
    let gens = reqs
        .iter()
        .map(|r| e.submit(r.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    support::on_threads(gens, collect)
}

fn wait_idle(e: &BurnEngine) -> EngineStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = e.status();
        if (s.active == 0 && s.queued == 0) || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn request(prompt: Prompt, params: SamplingParams) -> GenerateRequest {
    GenerateRequest {
        request_id: "r".into(),
        tenant: "t".into(),
        tenant_weight: 1,
        model: "m".into(),
        prompt,
        params,
    }
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        max_tokens: Some(max_tokens),
        ignore_eos: true,
        ..Default::default()
    }
}

/// Deterministic token ids below 250 (inside every fixture's vocabulary, no special ids
/// among the small ones the fixtures reserve).
fn ids(seed: u64, n: usize) -> Vec<u32> {
    support::token_ids(seed, n, 40, 200)
}

/// Prompts where lookup finds drafts (a phrase said three times) and one where it hardly
/// does, each with several `max_tokens` (1: no room for a draft; small odd ones land inside
/// a draft of 4).
fn greedy_requests() -> Vec<GenerateRequest> {
    let phrase = ids(7, 11);
    let repeated: Vec<u32> = phrase.iter().cycle().take(33).copied().collect();
    let mut reqs = Vec::new();
    for prompt in [repeated, ids(3, 20)] {
        for max_tokens in [1, 2, 3, 6, 41] {
            reqs.push(request(
                Prompt::TokenIds(prompt.clone()),
                greedy(max_tokens),
            ));
        }
    }
    reqs
}

/// Drafting as eagerly as the settings allow (1-grams, 4 tokens): the most drafts to check.
fn spec() -> Option<Speculative> {
    Some(Speculative {
        max_draft: 4,
        min_ngram: 1,
        max_ngram: 3,
    })
}

/// Each request alone on a plain engine, then all of them together on a speculating one:
/// the same outputs, and the speculating engine did accept drafts.
fn assert_same_as_plain(dir: &Path, reqs: &[GenerateRequest]) -> anyhow::Result<EngineStatus> {
    let plain = engine(dir, None)?;
    let mut want = Vec::new();
    for r in reqs {
        want.extend(run_all(&plain, std::slice::from_ref(r))?);
    }
    let fast = engine(dir, spec())?;
    // One at a time, then all at once (a batch of speculating sequences).
    for (r, w) in reqs.iter().zip(&want) {
        let got = run_all(&fast, std::slice::from_ref(r))?;
        assert_eq!(&got[0], w, "{}: {:?}", dir.display(), r.params.max_tokens);
    }
    let together = run_all(&fast, reqs)?;
    for (i, (got, w)) in together.iter().zip(&want).enumerate() {
        assert_eq!(got, w, "{}: request {i} batched", dir.display());
        if let Some(m) = reqs[i].params.max_tokens {
            assert!(got.ids.len() <= m, "never more than max_tokens");
        }
    }
    let s = wait_idle(&fast);
    assert!(
        s.spec_accepted_tokens > 0 && s.spec_accepted_tokens <= s.spec_drafted_tokens,
        "{}: drafted {}, accepted {}",
        dir.display(),
        s.spec_drafted_tokens,
        s.spec_accepted_tokens
    );
    assert_eq!(wait_idle(&plain).spec_drafted_tokens, 0);
    Ok(s)
}

#[test]
fn greedy_output_is_unchanged_on_the_default_model() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = default_model::install(dir.path())?;
    let s = assert_same_as_plain(&path, &greedy_requests())?;
    println!(
        "default model: drafted {}, accepted {}",
        s.spec_drafted_tokens, s.spec_accepted_tokens
    );
    Ok(())
}

fn fixture(name: &str) -> PathBuf {
    fixtures().join(name)
}

/// f32 and bf16 safetensors (GQA; Gemma 2's soft-capping and sliding window; Qwen3's q/k
/// norm) and GGUF quantizations (`Q8_0`, `Q4_K_M`).
#[test]
fn greedy_output_is_unchanged_on_fixtures() -> anyhow::Result<()> {
    for name in [
        "llama_gqa_f32",
        "gemma2_softcap_bf16",
        "qwen3_qknorm",
        "gguf/llama_gqa_f32-q8_0",
        "gguf/qwen3_qknorm-q4_k_m",
    ] {
        let s = assert_same_as_plain(&fixture(name), &greedy_requests())?;
        println!(
            "{name}: drafted {}, accepted {}",
            s.spec_drafted_tokens, s.spec_accepted_tokens
        );
    }
    Ok(())
}

/// Stop strings ending the output inside an accepted draft, and logprobs: the same text,
/// finish reason and log-probabilities as plain decoding (on Qwen3, whose output the
/// repeated prompt makes repetitive enough for most drafts to be accepted).
#[test]
fn stop_strings_and_logprobs_are_unchanged() -> anyhow::Result<()> {
    let path = fixture("qwen3_qknorm");
    let plain = engine(&path, None)?;
    let base = greedy_requests().swap_remove(4);
    let full = run_all(&plain, std::slice::from_ref(&base))?.remove(0);
    let chars: Vec<char> = full.text.chars().collect();
    assert!(chars.len() > 12, "{full:?}");
    // Stops taken from the plain output: one early, one late, one that never occurs.
    let piece = |from: usize, len: usize| -> String { chars[from..][..len].iter().collect() };
    let stops = [
        piece(3, 2),
        piece(chars.len() * 2 / 3, 3),
        "\u{2603}never".to_string(),
    ];
    let mut reqs = Vec::new();
    for stop in &stops {
        for logprobs in [None, Some(2)] {
            let mut r = base.clone();
            r.params.stop = vec![stop.clone()];
            r.params.logprobs = logprobs;
            reqs.push(r);
        }
    }
    let s = assert_same_as_plain(&path, &reqs)?;
    println!(
        "stops: drafted {}, accepted {}",
        s.spec_drafted_tokens, s.spec_accepted_tokens
    );
    Ok(())
}

/// Speculating greedy sequences batched with seeded sampled ones (which never draft): every
/// output is what it is alone on a plain engine.
#[test]
fn speculating_and_sampling_sequences_batch_together() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = default_model::install(dir.path())?;
    let mut reqs = greedy_requests();
    for (i, r) in greedy_requests().into_iter().enumerate().step_by(2) {
        let mut r = r;
        r.params.temperature = 0.8;
        r.params.seed = Some(i as u64);
        reqs.push(r);
    }
    assert_same_as_plain(&path, &reqs)?;
    Ok(())
}

/// A KV budget of 8 blocks (128 positions) for ten sequences of up to 74 positions each:
/// sequences wait and are preempted while they speculate (a planned draft is dropped with
/// the cache), and the rejected drafts' blocks go back. The output does not change and no
/// block is left held.
#[test]
fn preemption_while_speculating_changes_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = default_model::install(dir.path())?;
    // The default model: 2 × 4 layers × 2 KV heads × 32 × 4 bytes per position.
    let block = 16 * 2 * 4 * 2 * 32 * 4;
    let reqs: Vec<GenerateRequest> = greedy_requests()
        .into_iter()
        .filter(|r| r.params.max_tokens == Some(41))
        .cycle()
        .take(10)
        .collect();
    let plain = engine(&path, None)?;
    let want = run_all(&plain, &reqs[..2])?;
    let tight = engine_with_budget(&path, spec(), Some(8 * block))?;
    let got = run_all(&tight, &reqs)?;
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g, &want[i % 2], "request {i}");
    }
    let s = wait_idle(&tight);
    assert!(s.spec_accepted_tokens > 0);
    assert_eq!(s.kv_cache_bytes, 0, "every block given back");
    Ok(())
}
