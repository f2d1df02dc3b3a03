//! `openai_request`: a request body through the validation of `/v1/chat/completions`,
//! `/v1/completions` and `/generate`. Whatever the body, the outcome is a validated request
//! within OpenAI's ranges or a refusal in OpenAI's error shape naming a client error.

use airlock_daemon::api::ApiError;
use airlock_daemon::api::fuzzing::{self, Validated};
use airlock_engine::Prompt;

pub fn run(data: &[u8]) {
    check(fuzzing::chat(data), true);
    check(fuzzing::completions(data), false);
    check(fuzzing::generate(data), false);
}

fn check(result: Result<Validated, ApiError>, chat: bool) {
    match result {
        Ok(v) => {
            if chat {
                assert!(
                    matches!(&v.prompt, Prompt::Chat(m, _) if !m.is_empty()),
                    "a validated chat request has messages: {v:?}"
                );
            }
            let p = &v.params;
            assert!(
                (0.0..=2.0).contains(&p.temperature),
                "temperature out of range: {v:?}"
            );
            assert!(p.top_p > 0.0 && p.top_p <= 1.0, "top_p out of range: {v:?}");
        }
        Err(e) => {
            let status = e.status();
            assert!(
                status.is_client_error(),
                "a bad body is a client error, got {status}: {e:?}"
            );
            let object = e.object();
            assert!(!object.message.is_empty(), "error without a message: {e:?}");
            assert_eq!(object.kind, "invalid_request_error", "{e:?}");
            let response = e.into_response();
            assert_eq!(response.status(), status);
        }
    }
}

/// Seeds: valid requests of each kind and near-misses.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let seeds: &[(&str, &str)] = &[
        (
            "chat",
            r#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":"hi"}],"temperature":0.7,"top_p":0.9,"max_tokens":16,"stop":["\n","END"],"seed":42,"stream":true,"stream_options":{"include_usage":true}}"#,
        ),
        (
            "chat_parts",
            r#"{"model":"m","messages":[{"role":"developer","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},{"role":"assistant","content":null},{"role":"tool","content":"t"}],"max_completion_tokens":3,"top_k":-1,"min_p":0.1,"repetition_penalty":1.1,"presence_penalty":-2,"frequency_penalty":2,"ignore_eos":true,"n":1,"response_format":{"type":"text"},"tools":[]}"#,
        ),
        (
            "chat_refused",
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}],"logprobs":true,"top_logprobs":3,"n":2,"temperature":2.5}"#,
        ),
        (
            "completions",
            r#"{"model":"m","prompt":"Once upon","max_tokens":5,"echo":false,"suffix":"","best_of":1,"logprobs":0,"stop":"."}"#,
        ),
        (
            "completions_ids",
            r#"{"model":"m","prompt":[[1,2,3]],"temperature":0,"stream":false}"#,
        ),
        (
            "generate",
            r#"{"prompt":"hello","max_tokens":4294967295,"temperature":1e-45,"top_p":1,"seed":-9223372036854775808}"#,
        ),
        (
            "nested",
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stop":[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]],"tools":{"a":[{"b":null}]}}"#,
        ),
        ("bad_json", "{\"model\": \"m\",, \"messages\": [}"),
        (
            "unicode",
            "{\"model\":\"\\ud800\",\"prompt\":\"\u{10ffff}\u{0}\"}",
        ),
    ];
    seeds
        .iter()
        .map(|(n, s)| (*n, s.as_bytes().to_vec()))
        .collect()
}
