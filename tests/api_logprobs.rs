//! Log-probabilities over the real binary and the embedded default model (random weights:
//! the values are meaningless, their shape, consistency and filtering are checked): chat
//! plain and streamed, legacy completions, the refusals, and the output filter keeping
//! redacted text out of `logprobs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Daemon, Pki, TestConfig, post_text, sse_chunks};
use serde_json::{Value, json};

/// A daemon serving the default model to `alice` (no filter) and `bob` (with `bob_filter`
/// lines under a `[[tenants.filters]]`, if any).
fn start(pki: &Pki, bob_filter: Option<&str>) -> Daemon {
    let model_dir = tempfile::tempdir().unwrap();
    let path = airlock_engine::default_model::install(model_dir.path()).unwrap();
    // The installed copy must outlive the daemon: leak the temp dir for the test's life.
    std::mem::forget(model_dir);
    let name = airlock_engine::default_model::NAME;
    let mut tenants = String::from(
        "[[tenants]]\nname = \"alice\"\nmodels = [\"*\"]\ncert_cn = [\"alice\"]\n\
         [[tenants]]\nname = \"bob\"\nmodels = [\"*\"]\ncert_cn = [\"bob\"]\n",
    );
    if let Some(filter) = bob_filter {
        tenants += &format!("[[tenants.filters]]\n{filter}\n");
    }
    let cfg = TestConfig {
        models: common::cpu_model(name, &path),
        extra: tenants,
        ..TestConfig::default()
    };
    Daemon::start(pki, &cfg)
}

fn chat_request(extra: Value) -> Value {
    let mut req = json!({
        "model": airlock_engine::default_model::NAME,
        "messages": [{"role": "user", "content": "Tell me a story about a fox."}],
        "max_tokens": 24,
        "temperature": 0,
        "ignore_eos": true,
    });
    for (k, v) in extra.as_object().unwrap() {
        req[k] = v.clone();
    }
    req
}

fn tokens(content: &Value) -> Vec<String> {
    content
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["token"].as_str().unwrap().to_owned())
        .collect()
}

/// Checks one chat logprobs entry's shape: bytes are the token's, alternatives sorted and
/// as many as asked, the chosen token's value at most the best alternative's.
fn check_entry(e: &Value, top: usize) {
    let token = e["token"].as_str().unwrap();
    let bytes: Vec<u8> = e["bytes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| u8::try_from(b.as_u64().unwrap()).unwrap())
        .collect();
    assert_eq!(bytes, token.as_bytes(), "{e}");
    let logprob = e["logprob"].as_f64().unwrap();
    assert!(logprob <= 0.0, "{e}");
    let alts = e["top_logprobs"].as_array().unwrap();
    assert_eq!(alts.len(), top, "{e}");
    let values: Vec<f64> = alts
        .iter()
        .map(|a| a["logprob"].as_f64().unwrap())
        .collect();
    assert!(values.windows(2).all(|w| w[0] >= w[1]), "{e}");
    if let Some(best) = values.first() {
        assert!(logprob <= best + 1e-6, "{e}");
        // Greedy decoding picks the most likely token: it is the first alternative.
        assert_eq!(alts[0]["token"], e["token"], "{e}");
    }
}

#[tokio::test]
async fn chat_logprobs_plain_and_streamed_agree() {
    let pki = Pki::new(&["alice", "bob"]);
    let daemon = start(&pki, None);
    let alice = daemon.client(&pki, "alice");
    let url = daemon.url("/v1/chat/completions");

    let (status, body) = post_text(
        &alice,
        url.clone(),
        &chat_request(json!({"logprobs": true, "top_logprobs": 3})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    let choice = &body["choices"][0];
    let content = &choice["logprobs"]["content"];
    let entries = content.as_array().unwrap();
    assert!(!entries.is_empty(), "{body}");
    assert!(entries.len() <= 24, "{body}");
    for e in entries {
        check_entry(e, 3);
    }
    assert_eq!(choice["logprobs"]["refusal"], Value::Null);
    // The tokens' text is the message's text, where every token is whole characters (the
    // random model also emits lone bytes of multi-byte characters, which decode to U+FFFD
    // on their own).
    let joined: String = tokens(content).concat();
    let message = choice["message"]["content"].as_str().unwrap();
    if !joined.contains('\u{FFFD}') {
        assert_eq!(joined, message);
    }

    // Streamed: the same entries, spread over the content chunks.
    let (status, text) = post_text(
        &alice,
        url.clone(),
        &chat_request(json!({"logprobs": true, "top_logprobs": 3, "stream": true})),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let streamed: Vec<Value> = sse_chunks(&text)
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        })
        .flat_map(|c| {
            c["choices"][0]["logprobs"]["content"]
                .as_array()
                .unwrap()
                .clone()
        })
        .collect();
    assert_eq!(&streamed, entries, "{text}");

    // Without the fields: `logprobs: null`, as before.
    let (status, body) = post_text(&alice, url.clone(), &chat_request(json!({}))).await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["choices"][0]["logprobs"], Value::Null);

    // `logprobs: true` alone: entries without alternatives.
    let (_, body) = post_text(
        &alice,
        url.clone(),
        &chat_request(json!({"logprobs": true})),
    )
    .await;
    let body: Value = serde_json::from_str(&body).unwrap();
    for e in body["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
    {
        check_entry(e, 0);
    }

    // Out of range, or alternatives without `logprobs: true`: 400 naming the field.
    for bad in [
        json!({"logprobs": true, "top_logprobs": 21}),
        json!({"top_logprobs": 2}),
        json!({"logprobs": true, "top_logprobs": -1}),
    ] {
        let (status, body) = post_text(&alice, url.clone(), &chat_request(bad)).await;
        assert_eq!(status, 400, "{body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"]["param"], "top_logprobs", "{body}");
    }
}

#[tokio::test]
async fn completions_logprobs_plain_and_streamed() {
    let pki = Pki::new(&["alice", "bob"]);
    let daemon = start(&pki, None);
    let alice = daemon.client(&pki, "alice");
    let url = daemon.url("/v1/completions");
    let req = |extra: Value| {
        let mut req = json!({
            "model": airlock_engine::default_model::NAME,
            "prompt": "Once upon a time",
            "max_tokens": 10,
            "temperature": 0,
            "ignore_eos": true,
        });
        for (k, v) in extra.as_object().unwrap() {
            req[k] = v.clone();
        }
        req
    };

    let (status, body) = post_text(&alice, url.clone(), &req(json!({"logprobs": 2}))).await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    let lp = &body["choices"][0]["logprobs"];
    let toks = lp["tokens"].as_array().unwrap();
    let n = toks.len();
    assert!(n > 0, "{body}");
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), n, "{body}");
    assert_eq!(lp["text_offset"].as_array().unwrap().len(), n, "{body}");
    assert_eq!(lp["text_offset"][0], 0, "{body}");
    let tops = lp["top_logprobs"].as_array().unwrap();
    assert_eq!(tops.len(), n, "{body}");
    for (i, top) in tops.iter().enumerate() {
        let top = top.as_object().unwrap();
        // Two alternatives, plus the chosen token when it is not one of them (greedy: it is;
        // tokens that decode alike, lone bytes as U+FFFD, share a key).
        assert!((1..=2).contains(&top.len()), "{body}");
        let chosen = toks[i].as_str().unwrap();
        assert_eq!(top[chosen], lp["token_logprobs"][i], "{body}");
    }
    // Offsets count the tokens' characters.
    let mut offset = 0;
    for (i, t) in toks.iter().enumerate() {
        assert_eq!(lp["text_offset"][i], offset, "{body}");
        offset += t.as_str().unwrap().chars().count();
    }

    // Streamed: the same tokens and values, offsets continuing across chunks.
    let (status, text) = post_text(
        &alice,
        url.clone(),
        &req(json!({"logprobs": 2, "stream": true})),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let mut streamed_tokens = Vec::new();
    let mut streamed_offsets = Vec::new();
    for c in sse_chunks(&text) {
        let choice = &c["choices"][0];
        if choice["text"].as_str().is_some_and(|t| !t.is_empty()) {
            let lp = &choice["logprobs"];
            streamed_tokens.extend(lp["tokens"].as_array().unwrap().iter().cloned());
            streamed_offsets.extend(lp["text_offset"].as_array().unwrap().iter().cloned());
        }
    }
    assert_eq!(&streamed_tokens, toks, "{text}");
    assert_eq!(&streamed_offsets, lp["text_offset"].as_array().unwrap());

    // `logprobs: 0`: the chosen tokens only; above 5: 400 naming `logprobs`.
    let (status, body) = post_text(&alice, url.clone(), &req(json!({"logprobs": 0}))).await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    for top in body["choices"][0]["logprobs"]["top_logprobs"]
        .as_array()
        .unwrap()
    {
        assert_eq!(top.as_object().unwrap().len(), 1, "{body}");
    }
    let (status, body) = post_text(&alice, url.clone(), &req(json!({"logprobs": 6}))).await;
    assert_eq!(status, 400, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["param"], "logprobs", "{body}");
}

/// A token the output filter redacts never reaches the client through `logprobs`: the
/// entries stop before the first redacted text, for a whole response and a stream; and a
/// filtered tenant cannot ask for alternatives (text the filter never sees).
#[tokio::test]
async fn redacting_output_filter_does_not_leak_through_logprobs() {
    let pki = Pki::new(&["alice", "bob"]);
    // The greedy output and its tokens, from a tenant without a filter.
    let reference = {
        let daemon = start(&pki, None);
        let alice = daemon.client(&pki, "alice");
        let (status, body) = post_text(
            &alice,
            daemon.url("/v1/chat/completions"),
            &chat_request(json!({"logprobs": true})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        tokens(&body["choices"][0]["logprobs"]["content"])
    };
    // A token in the middle, plainly printable, becomes a redaction rule for bob.
    let (index, secret) = reference
        .iter()
        .enumerate()
        .skip(2)
        .find(|(_, t)| !t.trim().is_empty() && !t.contains('\u{FFFD}'))
        .map(|(i, t)| (i, t.trim().to_owned()))
        .unwrap_or_else(|| panic!("no printable token in {reference:?}"));
    let rule = format!(
        "id = \"secret\"\naction = \"redact\"\nliteral = {}\napply = \"output\"",
        serde_json::to_string(&secret).unwrap()
    );
    let daemon = start(&pki, Some(&rule));
    let bob = daemon.client(&pki, "bob");
    let url = daemon.url("/v1/chat/completions");

    let (status, body) =
        post_text(&bob, url.clone(), &chat_request(json!({"logprobs": true}))).await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    let message = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(message.contains("[REDACTED:secret]"), "{message}");
    let got = tokens(&body["choices"][0]["logprobs"]["content"]);
    assert!(
        got.len() <= index,
        "{got:?} reaches the redacted token {index}"
    );
    assert_eq!(got[..], reference[..got.len()], "a prefix of the reference");
    assert!(!got.concat().contains(&secret), "{got:?}");
    let unmarked = message.replace("[REDACTED:secret]", "");
    assert!(!unmarked.contains(&secret), "{message}");

    let mut streamed = chat_request(json!({"logprobs": true}));
    streamed["stream"] = json!(true);
    let (status, text) = post_text(&bob, url.clone(), &streamed).await;
    assert_eq!(status, 200, "{text}");
    let streamed_text: String = sse_chunks(&text)
        .iter()
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert!(streamed_text.contains("[REDACTED:secret]"), "{text}");
    assert!(
        !streamed_text
            .replace("[REDACTED:secret]", "")
            .contains(&secret),
        "{text}"
    );
    let got: Vec<String> = sse_chunks(&text)
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array().cloned())
        .flatten()
        .map(|e| e["token"].as_str().unwrap().to_owned())
        .collect();
    assert!(got.len() <= index, "{got:?}");
    assert_eq!(got[..], reference[..got.len()]);

    // Alternatives are text the filter never sees in context: refused to a filtered tenant.
    let (status, body) = post_text(
        &bob,
        url.clone(),
        &chat_request(json!({"logprobs": true, "top_logprobs": 2})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["param"], "top_logprobs", "{body}");
    // The tenant without a filter may.
    let alice = daemon.client(&pki, "alice");
    let (status, body) = post_text(
        &alice,
        url,
        &chat_request(json!({"logprobs": true, "top_logprobs": 2})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}
