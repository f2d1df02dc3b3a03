//! A decoder embeddings model (Qwen3-Embedding's layout: sentence-transformers last-token
//! pooling + Normalize, a tokenizer that appends `<|endoftext|>`): parity with
//! `sentence-transformers` through the served path (`Engine::embed`), with prefill chunks
//! small enough that the longest input runs in several.
//!
//! Reference: `fixtures/expected.json` `decoder_embeddings` (sentence-transformers'
//! embeddings and token ids), see `fixtures/README.md`.

use airlock_engine::{BurnEngine, DeviceChoice, EmbedRequest, Engine, ModelSpec, Pooling, Prompt};

mod support;

use support::{cosine, fixtures, floats, json, numbers};

#[test]
fn qwen3_last_token_embeddings_match_sentence_transformers() -> anyhow::Result<()> {
    const CHUNK: usize = 16;
    let expected = json(&fixtures().join("expected.json"))?;
    let v = &expected["decoder_embeddings"]["qwen3_embed"];
    let dir = fixtures().join(v["dir"].as_str().unwrap_or_default());
    let engine = BurnEngine::load(&[ModelSpec {
        device: DeviceChoice::Cpu,
        verify_manifest: true,
        prefill_chunk: CHUNK,
        max_batch_tokens: 2 * CHUNK,
        ..ModelSpec::new("qwen3-embed", &dir)
    }])?;
    let info = &engine.models()[0];
    // The directory's sentence-transformers Pooling module turns embeddings on: last token.
    assert_eq!(info.features.embeddings, Some(Pooling::Last));
    assert_eq!(
        info.embedding_size,
        v["hidden_size"].as_u64().map(|h| h as usize)
    );

    let inputs = v["inputs"].as_array().cloned().unwrap_or_default();
    assert_eq!(inputs.len(), 4);
    let texts: Vec<String> = inputs
        .iter()
        .map(|i| i["text"].as_str().unwrap_or_default().to_owned())
        .collect();
    for (text, input) in texts.iter().zip(&inputs) {
        // The tokenizer's post-processor appends `<|endoftext|>`, as sentence-transformers ran.
        let ids = engine.tokenize("qwen3-embed", text, true)?;
        assert_eq!(ids, numbers::<u32>(&input["ids"]), "token ids of {text:?}");
    }
    let longest = inputs
        .iter()
        .map(|i| numbers::<u32>(&i["ids"]).len())
        .max()
        .unwrap_or(0);
    assert!(longest > 2 * CHUNK, "no input spans several prefill chunks");

    let served = engine
        .embed(EmbedRequest {
            request_id: "t".into(),
            model: "qwen3-embed".into(),
            inputs: texts.iter().map(|t| Prompt::Text(t.clone())).collect(),
        })?
        .blocking_wait()?;
    assert_eq!(served.vectors.len(), inputs.len());
    for ((got, input), text) in served.vectors.iter().zip(&inputs).zip(&texts) {
        let want = floats(&input["embedding"]);
        assert_eq!(got.len(), want.len(), "{text:?}: dimensions");
        let cos = cosine(got, &want);
        eprintln!("{text:?}: cosine {cos:.9} (1 - cos = {:.1e})", 1.0 - cos);
        assert!(cos >= 0.9999, "{text:?}: cosine {cos}");
    }
    Ok(())
}
