//! OpenAI's `n` over the real binary and the embedded default model (random weights): a
//! request for `n` choices gets `n` independent samples of one prompt, each what a solo
//! request with seed + index gives, plain and streamed (chunks by `index`), on chat and
//! legacy completions; the prompt counts once in usage, the token reservation counts every
//! choice, the output filter sees every choice, and the audit records say how many.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Daemon, Pki, TestConfig, post_text, sse_chunks};
use serde_json::{Value, json};

const MAX_TOKENS: u64 = 12;

/// A daemon serving the default model to `alice` (no limits), `bob` (an output filter that
/// denies any ASCII letter) and `carol` (a token budget one choice fits and three do not).
fn start(pki: &Pki) -> Daemon {
    let model_dir = tempfile::tempdir().unwrap();
    let path = airlock_engine::default_model::install(model_dir.path()).unwrap();
    // The installed copy must outlive the daemon: leak the temp dir for the test's life.
    std::mem::forget(model_dir);
    let tenants = "[[tenants]]\nname = \"alice\"\nmodels = [\"*\"]\ncert_cn = [\"alice\"]\n\
         [[tenants]]\nname = \"bob\"\nmodels = [\"*\"]\ncert_cn = [\"bob\"]\n\
         [[tenants.filters]]\nid = \"no-letters\"\naction = \"deny\"\nregex = \"[A-Za-z]\"\napply = \"output\"\n\
         [[tenants]]\nname = \"carol\"\nmodels = [\"*\"]\ncert_cn = [\"carol\"]\n\
         tokens_per_minute = 600\n";
    let cfg = TestConfig {
        models: common::cpu_model(airlock_engine::default_model::NAME, &path),
        extra: tenants.into(),
        ..TestConfig::default()
    };
    Daemon::start(pki, &cfg)
}

fn request(extra: Value) -> Value {
    let mut req = json!({
        "model": airlock_engine::default_model::NAME,
        "messages": [{"role": "user", "content": "Tell me a story about a fox."}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0.9,
        "seed": 11,
        "ignore_eos": true,
    });
    for (k, v) in extra.as_object().unwrap() {
        req[k] = v.clone();
    }
    req
}

/// Per choice index: the streamed text (`field` of each chunk choice) and finish reason.
fn by_index(
    chunks: &[Value],
    n: usize,
    text: impl Fn(&Value) -> Option<&str>,
) -> Vec<(String, String)> {
    let mut out = vec![(String::new(), String::new()); n];
    for chunk in chunks {
        for choice in chunk["choices"].as_array().unwrap() {
            let i = choice["index"].as_u64().unwrap() as usize;
            out[i].0 += text(choice).unwrap_or("");
            if let Some(reason) = choice["finish_reason"].as_str() {
                assert!(out[i].1.is_empty(), "choice {i} finished twice");
                out[i].1 = reason.to_owned();
            }
        }
    }
    out
}

#[tokio::test]
async fn n_choices_are_independent_samples_plain_and_streamed() {
    let pki = Pki::new(&["alice"]);
    let mut daemon = start(&pki);
    let alice = daemon.client(&pki, "alice");
    let url = daemon.url("/v1/chat/completions");

    let (status, body) = post_text(&alice, url.clone(), &request(json!({"n": 3}))).await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3, "{body}");
    let texts: Vec<String> = choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            assert_eq!(c["index"], i, "{body}");
            assert_eq!(c["finish_reason"], "length", "{body}");
            c["message"]["content"].as_str().unwrap().to_owned()
        })
        .collect();
    // Choice i is what a solo request with seed 11 + i gives.
    let mut solo_prompt_tokens = 0;
    for (i, text) in texts.iter().enumerate() {
        let (status, solo) =
            post_text(&alice, url.clone(), &request(json!({"seed": 11 + i}))).await;
        assert_eq!(status, 200, "{solo}");
        let solo: Value = serde_json::from_str(&solo).unwrap();
        assert_eq!(
            solo["choices"][0]["message"]["content"], *text,
            "choice {i}"
        );
        solo_prompt_tokens = solo["usage"]["prompt_tokens"].as_u64().unwrap();
    }
    assert!(
        texts.iter().any(|t| *t != texts[0]),
        "three samples at temperature 0.9 all equal: {texts:?}"
    );
    // The prompt ran once and counts once; every choice's tokens count.
    assert_eq!(body["usage"]["prompt_tokens"], solo_prompt_tokens, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 3 * MAX_TOKENS, "{body}");

    // Streamed: chunks by index, the same texts, one finish per choice, usage once.
    let streamed = request(json!({
        "n": 3, "stream": true, "stream_options": {"include_usage": true}
    }));
    let (status, text) = post_text(&alice, url.clone(), &streamed).await;
    assert_eq!(status, 200, "{text}");
    let events = sse_chunks(&text);
    let got = by_index(&events, 3, |c| c["delta"]["content"].as_str());
    for (i, (text, reason)) in got.iter().enumerate() {
        assert_eq!(*text, texts[i], "streamed choice {i}");
        assert_eq!(reason, "length", "streamed choice {i}");
    }
    // Every choice opens with the assistant's role.
    let roles = events
        .iter()
        .flat_map(|c| c["choices"].as_array().unwrap().clone())
        .filter(|c| c["delta"]["role"] == "assistant")
        .count();
    assert_eq!(roles, 3, "{text}");
    // The same counts (the repeated prompt may also report cached tokens: the prefix cache).
    let usage = &events.last().unwrap()["usage"];
    for count in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(usage[count], body["usage"][count], "{text}");
    }

    // Legacy completions: the same choices for the same prompt text.
    let (status, text) = post_text(
        &alice,
        daemon.url("/v1/completions"),
        &json!({
            "model": airlock_engine::default_model::NAME, "prompt": "Once upon a time",
            "max_tokens": MAX_TOKENS, "temperature": 0.9, "seed": 3, "n": 2,
            "ignore_eos": true, "logprobs": 1,
        }),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let completion: Value = serde_json::from_str(&text).unwrap();
    let choices = completion["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2, "{text}");
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i, "{text}");
        assert_eq!(
            c["logprobs"]["tokens"].as_array().unwrap().len(),
            MAX_TOKENS as usize,
            "each choice its own log-probabilities: {text}"
        );
    }

    // Under a schema every choice follows it, plain and streamed.
    let schema = json!({
        "type": "json_schema",
        "json_schema": {"name": "pick", "schema": {
            "type": "object", "properties": {"a": {"enum": ["x", "y", "z"]}},
            "required": ["a"], "additionalProperties": false,
        }},
    });
    let constrained = request(json!({"n": 3, "response_format": schema, "ignore_eos": false}));
    let (status, text) = post_text(&alice, url.clone(), &constrained).await;
    assert_eq!(status, 200, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    let mut stream_req = constrained.clone();
    stream_req["stream"] = json!(true);
    let (status, streamed) = post_text(&alice, url.clone(), &stream_req).await;
    assert_eq!(status, 200, "{streamed}");
    let streamed = by_index(&sse_chunks(&streamed), 3, |c| {
        c["delta"]["content"].as_str()
    });
    for (i, choice) in body["choices"].as_array().unwrap().iter().enumerate() {
        let content = choice["message"]["content"].as_str().unwrap();
        let value: Value =
            serde_json::from_str(content).unwrap_or_else(|e| panic!("{e}: {content}"));
        assert!(
            ["x", "y", "z"].contains(&value["a"].as_str().unwrap()),
            "{content}"
        );
        assert_eq!(streamed[i].0, content, "streamed choice {i}");
    }

    // The admission record says how many choices; the completion record each one's end.
    daemon.stop();
    let records = common::audit_records(&daemon.audit_db());
    let admit = records
        .iter()
        .find(|r| r["kind"] == "admit" && r["n"] == 3)
        .unwrap_or_else(|| panic!("no admit record with n = 3: {records:?}"));
    let complete = records
        .iter()
        .find(|r| r["kind"] == "complete" && r["admit_seq"] == admit["seq"])
        .unwrap();
    assert_eq!(
        complete["finish_reasons"],
        json!(["length", "length", "length"]),
        "{complete}"
    );
    assert_eq!(complete["completion_tokens"], 3 * MAX_TOKENS, "{complete}");
    assert!(
        records
            .iter()
            .filter(|r| r["kind"] == "admit" && r["n"].is_null())
            .count()
            >= 3,
        "solo requests carry no n"
    );
}

/// The reservation covers every choice: a budget that fits one choice refuses three, and
/// every choice passes the output filter (a deny ends each streamed choice, refuses a
/// whole response).
#[tokio::test]
async fn n_is_limited_and_filtered_like_every_choice() {
    let pki = Pki::new(&["bob", "carol"]);
    let daemon = start(&pki);
    let url = daemon.url("/v1/chat/completions");

    let carol = daemon.client(&pki, "carol");
    let big = |n: u64| request(json!({"n": n, "max_tokens": 250}));
    let (status, body) = post_text(&carol, url.clone(), &big(3)).await;
    assert_eq!(
        status, 429,
        "3 × 250 tokens exceed a 600-token budget: {body}"
    );
    let (status, body) = post_text(&carol, url.clone(), &big(1)).await;
    assert_eq!(status, 200, "one choice fits: {body}");

    let bob = daemon.client(&pki, "bob");
    let (status, body) = post_text(&bob, url.clone(), &request(json!({"n": 2}))).await;
    assert_eq!(status, 403, "{body}");
    let streamed = request(json!({"n": 2, "stream": true}));
    let (status, text) = post_text(&bob, url.clone(), &streamed).await;
    assert_eq!(status, 200, "{text}");
    let got = by_index(&sse_chunks(&text), 2, |c| c["delta"]["content"].as_str());
    for (i, (sent, reason)) in got.iter().enumerate() {
        assert_eq!(reason, "content_filter", "choice {i}: {text}");
        assert!(
            !sent.chars().any(|c| c.is_ascii_alphabetic()),
            "choice {i} leaked {sent:?}"
        );
    }
}
