//! One end-to-end request against the real engine: the embedded default model (random
//! weights, so the text is meaningless; the shape, counts and stream framing are checked).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Daemon, Pki, TestConfig};
use serde_json::{Value, json};

#[tokio::test]
async fn default_model_chat_completion_plain_and_streamed() {
    let pki = Pki::new(&["alice"]);
    let model_dir = tempfile::tempdir().unwrap();
    let path = airlock_engine::default_model::install(model_dir.path()).unwrap();
    let name = airlock_engine::default_model::NAME;
    let cfg = TestConfig {
        models: common::cpu_model(name, &path),
        extra: "[admin]\naddress = \"127.0.0.1:0\"\n".into(),
        ..TestConfig::default()
    };
    let daemon = Daemon::start(&pki, &cfg);
    let client = daemon.client(&pki, "alice");

    let resp = client.get(daemon.url("/readyz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"status": "ready"})
    );
    // The model and its device are reported on the admin listener.
    let ready = daemon.admin_status().await;
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["models"][0]["id"], name);
    assert!(
        ready["models"][0]["device"]
            .as_str()
            .unwrap()
            .starts_with("cpu"),
        "{ready}"
    );

    let req = json!({
        "model": name,
        "messages": [{"role": "user", "content": "Hello!"}],
        "max_tokens": 8,
        "temperature": 0,
    });
    let resp = client
        .post(daemon.url("/v1/chat/completions"))
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion", "{body}");
    let finish = body["choices"][0]["finish_reason"].as_str().unwrap();
    assert!(finish == "stop" || finish == "length", "{body}");
    let usage = &body["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0, "{body}");
    let completion = usage["completion_tokens"].as_u64().unwrap();
    assert!((1..=8).contains(&completion), "{body}");
    let plain = body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();

    // Greedy decoding: the streamed text is the same as the plain one.
    let mut req = req;
    req["stream"] = json!(true);
    let text = client
        .post(daemon.url("/v1/chat/completions"))
        .json(&req)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").unwrap())
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{text}");
    let streamed: String = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(streamed, plain);
}

/// The engine's prefix cache through the API: a second request of the same tenant that
/// starts with the same system prompt reports the reused part in
/// `usage.prompt_tokens_details.cached_tokens` (whole blocks of 16); another tenant's
/// identical prompt reuses nothing.
#[tokio::test]
async fn a_repeated_system_prompt_is_served_from_the_prefix_cache() {
    let pki = Pki::new(&["alice", "bob"]);
    let model_dir = tempfile::tempdir().unwrap();
    let path = airlock_engine::default_model::install(model_dir.path()).unwrap();
    let name = airlock_engine::default_model::NAME;
    let cfg = TestConfig {
        models: common::cpu_model(name, &path),
        ..TestConfig::default()
    };
    let daemon = Daemon::start(&pki, &cfg);
    let system = "You are a careful assistant for a hospital's records team. Answer in \
                  plain English, cite the policy section you rely on, and never guess a \
                  patient's identity from partial data.";
    let ask = |tenant: &str, question: &str| {
        let client = daemon.client(&pki, tenant);
        let url = daemon.url("/v1/chat/completions");
        let body = json!({
            "model": name,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": question},
            ],
            "max_tokens": 4,
            "temperature": 0,
        });
        async move {
            let resp = client.post(url).json(&body).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.json::<Value>().await.unwrap()["usage"].clone()
        }
    };
    let first = ask("alice", "Which form do I use?").await;
    assert!(first.get("prompt_tokens_details").is_none(), "{first}");
    let second = ask("alice", "Who signs it?").await;
    let cached = second["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or_else(|| panic!("no cached tokens: {second}"));
    assert!(
        cached >= 16 && cached % 16 == 0 && cached < second["prompt_tokens"].as_u64().unwrap(),
        "{second}"
    );
    let other = ask("bob", "Who signs it?").await;
    assert!(other.get("prompt_tokens_details").is_none(), "{other}");
}

/// Speculative decoding through the daemon: the same greedy request to the same model
/// configured with and without `speculative` gets the same text, and `/metrics` counts the
/// drafted and accepted tokens (the embedded model's greedy output repeats itself, so
/// 2-gram lookups find drafts).
#[tokio::test]
async fn speculative_decoding_changes_no_output_and_is_counted() {
    let pki = Pki::new(&["alice"]);
    let model_dir = tempfile::tempdir().unwrap();
    let path = airlock_engine::default_model::install(model_dir.path()).unwrap();
    let cfg = TestConfig {
        models: format!(
            "[[models]]\nname = \"plain\"\npath = {p:?}\ndevice = \"cpu\"\n\n\
             [[models]]\nname = \"lookup\"\npath = {p:?}\ndevice = \"cpu\"\n\
             speculative = {{ method = \"ngram\", max_draft = 3, min_ngram = 2, max_ngram = 3 }}\n",
            p = path.to_str().unwrap()
        ),
        extra: "[[tenants]]\nname = \"alice\"\nmodels = [\"*\"]\ncert_cn = [\"alice\"]\n\n\
                [admin]\naddress = \"127.0.0.1:0\"\n"
            .into(),
        ..TestConfig::default()
    };
    let daemon = Daemon::start(&pki, &cfg);
    let client = daemon.client(&pki, "alice");
    let ask = |model: &'static str| {
        let body = json!({
            "model": model,
            "messages": [{"role": "user", "content": "Repeat after me: the cat sat on the mat, the cat sat on the mat."}],
            "max_tokens": 48,
            "temperature": 0,
        });
        let request = client.post(daemon.url("/v1/chat/completions")).json(&body);
        async move {
            let resp = request.send().await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.json::<Value>().await.unwrap()
        }
    };
    let plain = ask("plain").await;
    let lookup = ask("lookup").await;
    assert_eq!(
        plain["choices"][0]["message"]["content"], lookup["choices"][0]["message"]["content"],
        "{plain}\n{lookup}"
    );
    assert_eq!(
        plain["usage"]["completion_tokens"],
        lookup["usage"]["completion_tokens"]
    );

    let metrics = daemon.metrics().await;
    let total = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let drafted = total("airlock_engine_spec_drafted_tokens_total");
    let accepted = total("airlock_engine_spec_accepted_tokens_total");
    assert!(drafted > 0.0, "no drafts counted:\n{metrics}");
    assert!(accepted <= drafted, "{metrics}");
}
