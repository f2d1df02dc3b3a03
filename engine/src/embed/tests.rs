//! Parity of the served embeddings with an independent route, on the embedded default
//! model: the engine's path (queued to the inference thread, inputs batched together, a
//! long input prefilled in chunks through a KV cache, pooled incrementally) against one
//! unbatched, unchunked forward pass per input pooled by hand.

use super::*;
use crate::loader::{Integrity, load_dir};
use crate::{BurnEngine, DeviceChoice, EmbedRequest, Engine, ModelSpec, Prompt};

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// The reference: the whole input in one pass on a fresh cache, every position's final
/// hidden state read back, pooled and normalized here.
fn reference(model: &Model, ids: &[u32], pooling: Pooling) -> Vec<f32> {
    let mut cache = model.new_cache();
    let mut items = [BatchItem {
        tokens: ids,
        cache: &mut cache,
        want: Want::Hidden,
    }];
    let rows = model
        .forward_batch(&mut items)
        .unwrap_or_else(|e| panic!("{e}"))
        .pop()
        .flatten()
        .expect("hidden rows");
    let hidden = model.hidden_size();
    assert_eq!(rows.len(), ids.len() * hidden);
    let pooled: Vec<f64> = match pooling {
        Pooling::Last => rows[rows.len() - hidden..]
            .iter()
            .map(|&v| f64::from(v))
            .collect(),
        Pooling::Cls => rows[..hidden].iter().map(|&v| f64::from(v)).collect(),
        Pooling::Mean => (0..hidden)
            .map(|j| {
                rows.chunks_exact(hidden)
                    .map(|r| f64::from(r[j]))
                    .sum::<f64>()
                    / ids.len() as f64
            })
            .collect(),
    };
    let norm = pooled.iter().map(|x| x * x).sum::<f64>().sqrt();
    pooled.iter().map(|x| (x / norm) as f32).collect()
}

#[test]
fn served_embeddings_match_an_unbatched_reference() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = crate::default_model::install(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let m = load_dir(&path, DeviceChoice::Cpu, Integrity::Unverified, None, None)
        .unwrap_or_else(|e| panic!("{e}"));
    let texts = [
        "The quick brown fox jumps over the lazy dog.",
        "hello",
        "Embeddings pool the final hidden states of a decoder model, then normalize them; \
         this input is long enough to be prefilled in several chunks.",
        "hello",
    ];
    let ids: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| m.tokenizer.encode_text(t).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    assert!(ids[2].len() > 8, "the long input spans several chunks");
    for pooling in [Pooling::Last, Pooling::Mean] {
        let engine = BurnEngine::load(&[ModelSpec {
            device: DeviceChoice::Cpu,
            verify_manifest: false,
            prefill_chunk: 4,
            max_batch_tokens: 16,
            pooling: Some(pooling),
            ..ModelSpec::new("m", &path)
        }])
        .unwrap_or_else(|e| panic!("{e}"));
        let info = &engine.models()[0];
        assert_eq!(info.features.embeddings, Some(pooling));
        assert_eq!(info.embedding_size, Some(m.model.hidden_size()));
        let served = engine
            .embed(EmbedRequest {
                request_id: "t".into(),
                model: "m".into(),
                // Text for some, ids for others: both are what the engine runs.
                inputs: vec![
                    Prompt::Text(texts[0].into()),
                    Prompt::TokenIds(ids[1].clone()),
                    Prompt::Text(texts[2].into()),
                    Prompt::Text(texts[3].into()),
                ],
            })
            .unwrap_or_else(|e| panic!("{e}"))
            .blocking_wait()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            served.prompt_tokens,
            ids.iter().map(Vec::len).sum::<usize>()
        );
        assert_eq!(served.vectors.len(), texts.len());
        for (i, (v, ids)) in served.vectors.iter().zip(&ids).enumerate() {
            let want = reference(&m.model, ids, pooling);
            let norm: f64 = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "input {i}: norm {norm}");
            let cos = cosine(v, &want);
            assert!(cos >= 0.9999, "{pooling:?} input {i}: cosine {cos}");
        }
        assert_eq!(
            served.vectors[1], served.vectors[3],
            "same input, same vector"
        );
        assert!(cosine(&served.vectors[0], &served.vectors[2]) < 0.9999);
    }
}

#[test]
fn chat_models_serve_no_embeddings_unless_asked() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = crate::default_model::install(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let spec = ModelSpec {
        device: DeviceChoice::Cpu,
        verify_manifest: false,
        ..ModelSpec::new("m", &path)
    };
    let engine = BurnEngine::load(std::slice::from_ref(&spec)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(engine.models()[0].features.embeddings, None);
    let refused = engine.embed(EmbedRequest {
        request_id: "t".into(),
        model: "m".into(),
        inputs: vec![Prompt::Text("hi".into())],
    });
    assert!(matches!(
        refused,
        Err(EngineError::InvalidRequest { param: "model", .. })
    ));
    drop(engine);
    // `embeddings = true` alone: `last` pooling. A dropped handle cancels the request.
    let engine = BurnEngine::load(&[ModelSpec {
        embeddings: Some(true),
        ..spec
    }])
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(engine.models()[0].features.embeddings, Some(Pooling::Last));
    let empty = engine.embed(EmbedRequest {
        request_id: "t".into(),
        model: "m".into(),
        inputs: vec![Prompt::Text("a".into()), Prompt::TokenIds(Vec::new())],
    });
    assert!(
        matches!(&empty, Err(EngineError::InvalidRequest { param: "input", reason }) if reason.starts_with("input[1]")),
        "{empty:?}"
    );
}

#[test]
fn pooling_config_of_sentence_transformers() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pooling_from_dir(dir.path()).ok(), Some(None));
    let pooling = dir.path().join("1_Pooling");
    std::fs::create_dir(&pooling).unwrap_or_else(|e| panic!("{e}"));
    let write = |json: &str| {
        std::fs::write(pooling.join("config.json"), json).unwrap_or_else(|e| panic!("{e}"));
        pooling_from_dir(dir.path())
    };
    assert_eq!(
        write(r#"{"word_embedding_dimension": 8, "pooling_mode_lasttoken": true, "pooling_mode_mean_tokens": false}"#).ok(),
        Some(Some(Pooling::Last))
    );
    assert_eq!(
        write(r#"{"pooling_mode_mean_tokens": true}"#).ok(),
        Some(Some(Pooling::Mean))
    );
    assert_eq!(
        write(r#"{"pooling_mode_cls_token": true}"#).ok(),
        Some(Some(Pooling::Cls))
    );
    let max = write(r#"{"pooling_mode_max_tokens": true}"#);
    assert!(
        matches!(&max, Err(EngineError::Load { reason, .. }) if reason.contains("pooling_mode_max_tokens")),
        "{max:?}"
    );
    assert!(write(r#"{}"#).is_err());
    // sentence-transformers 5+: one `pooling_mode` string.
    assert_eq!(
        write(r#"{"embedding_dimension": 8, "pooling_mode": "cls"}"#).ok(),
        Some(Some(Pooling::Cls))
    );
    assert!(write(r#"{"pooling_mode": "max"}"#).is_err());
    // A Pooling module elsewhere, as modules.json lists it.
    let listed = dir.path().join("pool");
    std::fs::create_dir(&listed).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        listed.join("config.json"),
        r#"{"pooling_mode_mean_tokens": true}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        dir.path().join("modules.json"),
        r#"[{"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "path": "pool", "type": "sentence_transformers.models.Pooling"}]"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pooling_from_dir(dir.path()).ok(), Some(Some(Pooling::Mean)));
}

#[test]
fn cls_pooling_takes_the_first_row() {
    let (mut sum, mut first, mut last) = (vec![0.0; 2], Vec::new(), Vec::new());
    accumulate(&[3.0, 4.0, 1.0, 0.0], &mut sum, &mut first, &mut last, 2);
    assert_eq!(
        pool_vector(Pooling::Cls, &sum, &first, &last, 2),
        vec![0.6, 0.8]
    );
    assert_eq!(
        pool_vector(Pooling::Last, &sum, &first, &last, 2),
        vec![1.0, 0.0]
    );
}
