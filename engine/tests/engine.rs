//! The engine as the gateway drives it: streaming, cancellation, queue bounds, context checks.

use std::path::Path;
use std::time::{Duration, Instant};

use airlock_engine::{
    BurnEngine, DeviceChoice, Engine, EngineError, FinishReason, GenerateRequest, KvCacheDtype,
    ModelSpec, Prompt, SamplingParams, TokenEvent, default_model,
};

fn engine(dir: &Path, max_queue: usize, max_active: usize) -> anyhow::Result<BurnEngine> {
    let path = default_model::install(dir)?;
    Ok(BurnEngine::load(&[ModelSpec {
        name: "m".into(),
        path,
        device: DeviceChoice::Cpu,
        verify_manifest: true,
        manifest_sha256: None,
        max_queue,
        max_active,
        max_context: None,
        prefill_chunk: ModelSpec::DEFAULT_PREFILL_CHUNK,
        max_batch_tokens: ModelSpec::DEFAULT_MAX_BATCH_TOKENS,
        kv_cache_bytes: None,
        quantize: None,
        pooling: None,
        embeddings: None,
        prefix_cache: true,
        speculative: None,
        kv_cache_dtype: KvCacheDtype::F16,
    }])?)
}

fn request(prompt: &str, params: SamplingParams) -> GenerateRequest {
    GenerateRequest {
        request_id: "r".into(),
        tenant: "t".into(),
        tenant_weight: 1,
        model: "m".into(),
        prompt: Prompt::Text(prompt.into()),
        params,
    }
}

#[test]
fn streams_started_tokens_finished() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let e = engine(dir.path(), 4, 2)?;
    let info = e.models();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].device, "cpu (flex, f32, bf16 weights)");
    let params = SamplingParams {
        max_tokens: Some(8),
        ignore_eos: true,
        ..Default::default()
    };
    let mut g = e.submit(request("The quick brown fox", params))?;
    let mut tokens = 0;
    let mut text = String::new();
    match g.blocking_next() {
        Some(TokenEvent::Started { prompt_tokens }) => {
            assert_eq!(
                prompt_tokens,
                e.count_prompt_tokens("m", &Prompt::Text("The quick brown fox".into()))?
            )
        }
        other => anyhow::bail!("expected Started, got {other:?}"),
    }
    loop {
        match g.blocking_next() {
            Some(TokenEvent::Token { text: t, .. }) => {
                tokens += 1;
                text.push_str(&t);
            }
            Some(TokenEvent::Finished {
                reason,
                usage,
                text: t,
                ..
            }) => {
                text.push_str(&t);
                assert_eq!(reason, FinishReason::Length);
                assert_eq!(usage.completion_tokens, 8);
                break;
            }
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    assert_eq!(tokens, 8);
    Ok(())
}

#[test]
fn same_seed_same_text() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let e = engine(dir.path(), 4, 2)?;
    let run = || -> anyhow::Result<Vec<u32>> {
        let params = SamplingParams {
            temperature: 1.0,
            seed: Some(42),
            max_tokens: Some(12),
            ignore_eos: true,
            ..Default::default()
        };
        let mut g = e.submit(request("Hello", params))?;
        let mut ids = Vec::new();
        while let Some(ev) = g.blocking_next() {
            match ev {
                TokenEvent::Token { id, .. } => ids.push(id),
                TokenEvent::Finished { .. } => break,
                TokenEvent::Failed(err) => anyhow::bail!("{err}"),
                TokenEvent::Started { .. } => {}
            }
        }
        Ok(ids)
    };
    assert_eq!(run()?, run()?);
    Ok(())
}

#[test]
fn context_length_is_checked_at_submit() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let e = engine(dir.path(), 4, 1)?;
    let ctx = e.models()[0].context_length;
    let params = SamplingParams {
        max_tokens: Some(ctx),
        ..Default::default()
    };
    match e.submit(request("Hello", params)) {
        Err(EngineError::ContextLength {
            context_length,
            max_tokens,
            ..
        }) => {
            assert_eq!((context_length, max_tokens), (ctx, ctx));
        }
        other => anyhow::bail!("expected ContextLength, got {other:?}"),
    }
    assert!(matches!(
        e.submit(GenerateRequest {
            model: "nope".into(),
            ..request("x", SamplingParams::default())
        }),
        Err(EngineError::UnknownModel(_))
    ));
    Ok(())
}

#[test]
fn cancelled_generation_frees_its_slot() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let e = engine(dir.path(), 4, 1)?;
    let long = SamplingParams {
        max_tokens: Some(1500),
        ignore_eos: true,
        ..Default::default()
    };
    let mut g = e.submit(request("Hello", long))?;
    assert!(matches!(
        g.blocking_next(),
        Some(TokenEvent::Started { .. })
    ));
    assert!(matches!(g.blocking_next(), Some(TokenEvent::Token { .. })));
    drop(g);
    // The single slot is free again within a few steps: a short request completes.
    let short = SamplingParams {
        max_tokens: Some(2),
        ignore_eos: true,
        ..Default::default()
    };
    let started = Instant::now();
    let mut g2 = e.submit(request("Hi", short))?;
    let mut finished = false;
    while let Some(ev) = g2.blocking_next() {
        if let TokenEvent::Finished { .. } = ev {
            finished = true;
            break;
        }
    }
    assert!(finished);
    assert!(started.elapsed() < Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(5);
    while e.status().active > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(e.status().active, 0);
    assert_eq!(e.status().kv_cache_bytes, 0);
    Ok(())
}

#[test]
fn full_queue_is_refused_at_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let e = engine(dir.path(), 1, 1)?;
    let long = SamplingParams {
        max_tokens: Some(1500),
        ignore_eos: true,
        ..Default::default()
    };
    // One running (held by its unread handle), then one queued, then refused.
    let mut running = e.submit(request("a", long.clone()))?;
    assert!(matches!(
        running.blocking_next(),
        Some(TokenEvent::Started { .. })
    ));
    let _queued = e.submit(request("b", long.clone()))?;
    let t = Instant::now();
    match e.submit(request("c", long)) {
        Err(EngineError::QueueFull { capacity }) => assert_eq!(capacity, 1),
        other => anyhow::bail!("expected QueueFull, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(e.status().queued, 1);
    Ok(())
}

/// Log-probabilities through the batched engine: several requests in one batch, each
/// entry with its token's text; asking for them changes nothing about what is generated.
#[test]
fn logprobs_through_the_batched_engine_change_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let e = engine(dir.path(), 8, 4)?;
    let params = |logprobs: Option<usize>| SamplingParams {
        temperature: 0.9,
        // Seed 5 drew, with the sampler of its time, a last token that ends inside a
        // multi-byte character (its bytes never become text); `sequence.rs`'s
        // `every_token_keeps_its_logprob_entry` holds that case to its entry directly.
        seed: Some(5),
        max_tokens: Some(10),
        ignore_eos: true,
        logprobs,
        ..Default::default()
    };
    let prompts = ["Hello", "The quick brown fox", "Once upon a time"];
    // All submitted before any is read: they share the engine's batches.
    let mut with: Vec<_> = prompts
        .iter()
        .map(|p| e.submit(request(p, params(Some(3)))))
        .collect::<Result<_, _>>()?;
    let mut without: Vec<_> = prompts
        .iter()
        .map(|p| e.submit(request(p, params(None))))
        .collect::<Result<_, _>>()?;
    for (a, b) in with.iter_mut().zip(without.iter_mut()) {
        let (ids_a, text_a, entries) = drain(a)?;
        let (ids_b, text_b, none) = drain(b)?;
        assert_eq!((&ids_a, &text_a), (&ids_b, &text_b));
        assert!(none.is_empty());
        // No stop string, no EOS: every token's text is released, so each has its entry.
        assert_eq!(entries.len(), ids_a.len());
        for (entry, id) in entries.iter().zip(&ids_a) {
            assert_eq!(entry.chosen.id, *id);
            assert!(entry.chosen.logprob <= 0.0);
            assert_eq!(entry.top.len(), 3);
            assert!(entry.top.windows(2).all(|w| w[0].logprob >= w[1].logprob));
            assert!(entry.chosen.logprob <= entry.top[0].logprob);
        }
    }
    Ok(())
}

type Drained = (Vec<u32>, String, Vec<airlock_engine::TokenLogprob>);

fn drain(g: &mut airlock_engine::Generation) -> anyhow::Result<Drained> {
    let (mut ids, mut text, mut entries) = (Vec::new(), String::new(), Vec::new());
    while let Some(ev) = g.blocking_next() {
        match ev {
            TokenEvent::Token {
                id,
                text: t,
                logprobs,
            } => {
                ids.push(id);
                text.push_str(&t);
                entries.extend(logprobs);
            }
            TokenEvent::Finished {
                text: t, logprobs, ..
            } => {
                text.push_str(&t);
                entries.extend(logprobs);
                break;
            }
            TokenEvent::Failed(err) => anyhow::bail!("{err}"),
            TokenEvent::Started { .. } => {}
        }
    }
    Ok((ids, text, entries))
}
