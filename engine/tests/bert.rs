//! BERT-style encoders: parity with `sentence-transformers` (the safetensors fixture) and
//! with llama.cpp (the same model converted to GGUF by llama.cpp's own converter), through
//! the served path (`Engine::embed`); and an encoder serves embeddings only.
//!
//! References: `fixtures/expected.json` `encoders` (sentence-transformers' embeddings and
//! token ids) and `fixtures/gguf/llamacpp_embeddings.json` (llama.cpp's), see the READMEs.

use std::path::Path;

use airlock_engine::{
    BurnEngine, DeviceChoice, EmbedRequest, Engine, EngineError, GenerateRequest, ModelSpec,
    Pooling, Prompt, SamplingParams,
};
use serde_json::Value;

mod support;

use support::{cosine, fixtures, floats, json, numbers};

fn engine(path: &Path) -> anyhow::Result<BurnEngine> {
    Ok(BurnEngine::load(&[ModelSpec {
        device: DeviceChoice::Cpu,
        verify_manifest: true,
        ..ModelSpec::new("bert", path)
    }])?)
}

/// Tokenizes and embeds every reference input through the engine; checks the ids equal
/// the reference's and each vector's cosine with the reference is at least 0.9999.
/// Returns the smallest cosine.
fn check(engine: &BurnEngine, inputs: &[Value], what: &str) -> anyhow::Result<f64> {
    let texts: Vec<String> = inputs
        .iter()
        .map(|i| i["text"].as_str().unwrap_or_default().to_owned())
        .collect();
    for (text, input) in texts.iter().zip(inputs) {
        let ids = engine.tokenize("bert", text, true)?;
        anyhow::ensure!(
            ids == numbers::<u32>(&input["ids"]),
            "{what}: token ids of {text:?}: {ids:?}, reference {}",
            input["ids"]
        );
    }
    let served = engine
        .embed(EmbedRequest {
            request_id: "t".into(),
            model: "bert".into(),
            inputs: texts.iter().map(|t| Prompt::Text(t.clone())).collect(),
        })?
        .blocking_wait()?;
    anyhow::ensure!(served.vectors.len() == inputs.len(), "{what}: vector count");
    let mut worst = 1.0f64;
    for ((v, input), text) in served.vectors.iter().zip(inputs).zip(&texts) {
        let want = floats(&input["embedding"]);
        anyhow::ensure!(v.len() == want.len(), "{what}: {} dimensions", v.len());
        let cos = cosine(v, &want);
        eprintln!(
            "{what}: {text:?}: cosine {cos:.9} (1 - cos = {:.1e})",
            1.0 - cos
        );
        anyhow::ensure!(cos >= 0.9999, "{what}: {text:?}: cosine {cos}");
        worst = worst.min(cos);
    }
    Ok(worst)
}

#[test]
fn safetensors_bert_matches_sentence_transformers() -> anyhow::Result<()> {
    let expected = json(&fixtures().join("expected.json"))?;
    let v = &expected["encoders"]["bert_wordpiece"];
    let dir = fixtures().join(v["dir"].as_str().unwrap_or_default());
    let engine = engine(&dir)?;
    let info = &engine.models()[0];
    // The directory's sentence-transformers Pooling module: mean; an embeddings model only.
    assert_eq!(info.features.embeddings, Some(Pooling::Mean));
    assert_eq!(
        info.embedding_size,
        v["hidden_size"].as_u64().map(|h| h as usize)
    );
    assert!(!info.features.completions && !info.features.chat && !info.features.logprobs);
    // sentence-transformers' max_seq_length caps the context (longer inputs are refused).
    assert_eq!(
        Some(info.context_length as u64),
        v["max_seq_length"].as_u64()
    );
    let inputs = v["inputs"].as_array().cloned().unwrap_or_default();
    check(&engine, &inputs, "safetensors")?;
    Ok(())
}

#[test]
fn an_encoder_refuses_completions_and_overlong_inputs() -> anyhow::Result<()> {
    let dir = fixtures().join("bert_wordpiece");
    let engine = engine(&dir)?;
    let refused = engine.submit(GenerateRequest {
        request_id: "r".into(),
        tenant: "t".into(),
        tenant_weight: 1,
        model: "bert".into(),
        prompt: Prompt::Text("hello".into()),
        params: SamplingParams::default(),
    });
    match refused {
        Err(EngineError::InvalidRequest {
            param: "model",
            reason,
        }) => {
            assert!(
                reason.contains("`bert`") && reason.contains("embeddings"),
                "{reason}"
            );
        }
        other => panic!("{:?}", other.err()),
    }
    let context = engine.models()[0].context_length;
    let long = vec![5u32; context + 1];
    let too_long = engine.embed(EmbedRequest {
        request_id: "t".into(),
        model: "bert".into(),
        inputs: vec![Prompt::TokenIds(long)],
    });
    match too_long {
        Err(EngineError::InvalidRequest {
            param: "input",
            reason,
        }) => {
            assert!(reason.contains(&context.to_string()), "{reason}");
        }
        other => panic!("{:?}", other.err()),
    }
    Ok(())
}

/// The llama.cpp-converted files: llama.cpp's own token ids and embeddings, and (the same
/// model) sentence-transformers' embeddings too.
#[test]
fn gguf_bert_matches_llama_cpp_and_sentence_transformers() -> anyhow::Result<()> {
    let expected = json(&fixtures().join("expected.json"))?;
    let st_inputs = expected["encoders"]["bert_wordpiece"]["inputs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let refs = json(&fixtures().join("gguf/llamacpp_embeddings.json"))?;
    for name in ["bert_wordpiece-f32", "bert_wordpiece-f16"] {
        let engine = engine(&fixtures().join("gguf").join(name))?;
        let info = &engine.models()[0];
        // llama.cpp's `bert.pooling_type` 1 (mean), from the file.
        assert_eq!(refs[name]["pooling_type"].as_u64(), Some(1));
        assert_eq!(info.features.embeddings, Some(Pooling::Mean), "{name}");
        assert!(!info.features.completions, "{name}");
        let inputs = refs[name]["inputs"].as_array().cloned().unwrap_or_default();
        anyhow::ensure!(inputs.len() == st_inputs.len(), "{name}: reference inputs");
        check(&engine, &inputs, &format!("{name} vs llama.cpp"))?;
        check(
            &engine,
            &st_inputs,
            &format!("{name} vs sentence-transformers"),
        )?;
    }
    Ok(())
}

/// A real checkpoint against a reference made outside the repository (see
/// `bench/results/embeddings.md`): `AIRLOCK_BERT_MODEL` (a model directory or `.gguf`
/// file, served unverified) and `AIRLOCK_BERT_REFERENCE` (JSON `{"inputs": [{"text",
/// "ids", "embedding"}]}`, written by sentence-transformers or llama.cpp).
#[test]
#[ignore = "needs a real model and its reference; see bench/results/embeddings.md"]
fn real_model_matches_reference() -> anyhow::Result<()> {
    let (Ok(model), Ok(reference)) = (
        std::env::var("AIRLOCK_BERT_MODEL"),
        std::env::var("AIRLOCK_BERT_REFERENCE"),
    ) else {
        anyhow::bail!("set AIRLOCK_BERT_MODEL and AIRLOCK_BERT_REFERENCE");
    };
    let engine = BurnEngine::load(&[ModelSpec {
        device: DeviceChoice::Cpu,
        verify_manifest: false,
        ..ModelSpec::new("bert", &model)
    }])?;
    let inputs = json(Path::new(&reference))?["inputs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let worst = check(&engine, &inputs, &model)?;
    eprintln!("{model}: smallest cosine {worst:.7}");
    Ok(())
}
