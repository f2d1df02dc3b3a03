//! Concurrent decode through the engine API, shared by the engine and grammar benchmarks.

use std::path::Path;
use std::time::Instant;

use airlock_engine::{
    BurnEngine, DeviceChoice, Engine, GenerateRequest, ModelSpec, Prompt, SamplingParams,
    TokenEvent,
};

/// Aggregate decode tokens/s with `n` concurrent requests of `params`: tokens after each stream's first,
/// over the time from the first token anywhere to the last stream's end.
pub fn concurrent_decode(
    model: &Path,
    device: DeviceChoice,
    n: usize,
    params: &SamplingParams,
) -> anyhow::Result<f64> {
    let engine = BurnEngine::load(&[ModelSpec {
        device,
        verify_manifest: false,
        max_queue: n,
        max_active: n,
        ..ModelSpec::new("bench", model)
    }])?;
    let mut gens = Vec::with_capacity(n);
    for i in 0..n {
        gens.push(engine.submit(GenerateRequest {
            request_id: format!("bench-{i}"),
            tenant: "bench".into(),
            tenant_weight: 1,
            model: "bench".into(),
            prompt: Prompt::TokenIds(vec![100 + i as u32, 101, 102, 103]),
            params: params.clone(),
        })?);
    }
    let readers: Vec<_> = gens
        .into_iter()
        .map(|mut g| {
            std::thread::spawn(move || {
                let (mut first, mut last, mut tokens) = (None, None, 0usize);
                while let Some(ev) = g.blocking_next() {
                    match ev {
                        TokenEvent::Token { .. } => {
                            tokens += 1;
                            first.get_or_insert_with(Instant::now);
                        }
                        TokenEvent::Finished { .. } => {
                            last = Some(Instant::now());
                            break;
                        }
                        TokenEvent::Failed(e) => return Err(anyhow::anyhow!("{e}")),
                        TokenEvent::Started { .. } => {}
                    }
                }
                Ok((first, last, tokens))
            })
        })
        .collect();
    let (mut first, mut last, mut tokens) = (None::<Instant>, None::<Instant>, 0usize);
    for r in readers {
        let (f, l, t) = r
            .join()
            .map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
        first = match (first, f) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        last = last.max(l);
        tokens += t.saturating_sub(1);
    }
    let secs = match (first, last) {
        (Some(f), Some(l)) => l.duration_since(f).as_secs_f64(),
        _ => 0.0,
    };
    Ok(if secs > 0.0 {
        tokens as f64 / secs
    } else {
        0.0
    })
}
