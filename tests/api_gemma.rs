//! Gemma through the gateway: a tiny random-weight Gemma 2 (safetensors) and Gemma 3 (a
//! llama.cpp-made Q8_0 GGUF directory) served over mTLS. Gemma 2's chat template
//! has no system role and raises on one: the client gets a 400 naming `messages` with the
//! template's own words, not a 500; Gemma 3's template folds the system message into the
//! first user turn.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Daemon, Pki, TestConfig};
use serde_json::{Value, json};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../engine/tests/fixtures");

fn with_system(model: &str) -> Value {
    json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello!"},
        ],
        "max_tokens": 4,
        "temperature": 0,
    })
}

#[tokio::test]
async fn gemma_models_serve_and_a_refused_system_role_is_a_400() {
    let pki = Pki::new(&["alice"]);
    let models = format!(
        "[[models]]\nname = \"gemma2\"\npath = \"{FIXTURES}/gemma2_softcap_bf16\"\n\
         device = \"cpu\"\n\n[[models]]\nname = \"gemma3\"\n\
         path = \"{FIXTURES}/gguf/gemma3_text_bf16-q8_0\"\ndevice = \"cpu\"\n"
    );
    let cfg = TestConfig {
        models,
        ..TestConfig::default()
    };
    let daemon = Daemon::start(&pki, &cfg);
    let client = daemon.client(&pki, "alice");
    let url = daemon.url("/v1/chat/completions");

    let resp = client
        .post(&url)
        .json(&with_system("gemma2"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert_eq!(body["error"]["param"], "messages", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("System role not supported"), "{body}");

    // Without the system turn Gemma 2 answers; Gemma 3 takes it as it is.
    let mut req = with_system("gemma2");
    req["messages"] = json!([{"role": "user", "content": "Hello!"}]);
    for req in [req, with_system("gemma3")] {
        let resp = client.post(&url).json(&req).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{req}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["object"], "chat.completion", "{body}");
        let completion = body["usage"]["completion_tokens"].as_u64().unwrap();
        assert!((1..=4).contains(&completion), "{body}");
    }
}
