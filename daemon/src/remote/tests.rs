//! Balancing, ejection, the prompt bound, request bodies and stream parsing, without sockets
//! (the integration test `tests/remote_engine.rs` runs real upstreams).

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_engine::{
    ChatMessage, FinishReason, Grammar, GrammarSpec, Prompt, SamplingParams, Usage,
};
use serde_json::json;

use super::pool::{LOAD_GUARD, MAX_EJECTION, Pool, Probe};
use super::wire::{self, Decoder, Event, MAX_LINE_BYTES};
use crate::config::{Balance, UpstreamAddr};

fn addrs(n: usize) -> Vec<UpstreamAddr> {
    (0..n)
        .map(|i| UpstreamAddr::Https {
            host: format!("engine-{i}.example"),
            port: 8443,
        })
        .collect()
}

fn pool(n: usize, balance: Balance) -> Arc<Pool> {
    Arc::new(Pool::new(addrs(n), balance, 3, Duration::from_secs(5)))
}

fn affinity() -> Balance {
    Balance::PrefixAffinity {
        prefix_bytes: NonZeroUsize::new(64).unwrap(),
    }
}

#[test]
fn least_outstanding_spreads_and_prefers_the_idle() {
    let pool = pool(3, Balance::LeastOutstanding);
    let now = Instant::now();
    let a = pool.pick(None, now, &[]).unwrap();
    let b = pool.pick(None, now, &[]).unwrap();
    let c = pool.pick(None, now, &[]).unwrap();
    let mut seen = vec![a.index, b.index, c.index];
    seen.sort_unstable();
    assert_eq!(seen, [0, 1, 2], "three requests, three upstreams");
    let freed = b.index;
    drop(b);
    assert_eq!(pool.outstanding(), 2);
    let d = pool.pick(None, now, &[]).unwrap();
    assert_eq!(
        d.index, freed,
        "the upstream with nothing outstanding is chosen"
    );
}

#[test]
fn a_retry_skips_upstreams_already_tried() {
    let pool = pool(2, Balance::LeastOutstanding);
    let now = Instant::now();
    let first = pool.pick(None, now, &[]).unwrap();
    let tried = [first.index];
    drop(first);
    let second = pool.pick(None, now, &tried).unwrap();
    assert_ne!(second.index, tried[0]);
    assert!(
        pool.pick(None, now, &[0, 1]).is_none(),
        "all tried: none left"
    );
}

#[test]
fn consecutive_failures_eject_with_doubling_backoff() {
    let pool = pool(2, Balance::LeastOutstanding);
    let t0 = Instant::now();
    assert!(!pool.failed(0, t0));
    assert!(!pool.failed(0, t0));
    assert!(pool.failed(0, t0), "the third failure in a row ejects");
    assert!(!pool.eligible(0, t0 + Duration::from_secs(4)));
    assert!(
        pool.eligible(0, t0 + Duration::from_secs(5)),
        "back after 5 s"
    );
    for _ in 0..10 {
        assert_eq!(
            pool.pick(None, t0, &[]).unwrap().index,
            1,
            "requests go to the other"
        );
    }
    // Ejected again at once: twice as long.
    let t1 = t0 + Duration::from_secs(5);
    for _ in 0..3 {
        pool.failed(0, t1);
    }
    assert!(!pool.eligible(0, t1 + Duration::from_secs(9)));
    assert!(pool.eligible(0, t1 + Duration::from_secs(10)));
    // A success resets the count and the backoff.
    pool.succeeded(0);
    for _ in 0..2 {
        assert!(!pool.failed(0, t1));
    }
    assert!(pool.eligible(0, t1));
    // Never longer than the cap.
    for _ in 0..60 {
        pool.failed(0, t1);
    }
    assert!(pool.eligible(0, t1 + MAX_EJECTION));
}

#[test]
fn a_failure_between_successes_does_not_eject() {
    let pool = pool(1, Balance::LeastOutstanding);
    let now = Instant::now();
    for _ in 0..10 {
        pool.failed(0, now);
        pool.failed(0, now);
        pool.succeeded(0);
    }
    assert!(pool.eligible(0, now));
}

#[test]
fn loading_upstreams_are_skipped_until_a_probe_says_healthy() {
    let pool = pool(2, Balance::LeastOutstanding);
    let now = Instant::now();
    pool.loading(0);
    assert!(
        !pool.eligible(0, now + Duration::from_secs(3600)),
        "no timeout: it says when"
    );
    assert_eq!(pool.pick(None, now, &[]).unwrap().index, 1);
    assert!(!pool.probed(0, Probe::Loading, now));
    assert!(!pool.eligible(0, now));
    pool.probed(0, Probe::Healthy, now);
    assert!(pool.eligible(0, now));
}

#[test]
fn a_healthy_probe_ends_an_ejection_early() {
    let pool = pool(1, Balance::LeastOutstanding);
    let now = Instant::now();
    for _ in 0..3 {
        pool.probed(0, Probe::Failed, now);
    }
    assert!(!pool.eligible(0, now));
    assert!(
        pool.pick(None, now, &[]).is_none(),
        "the only upstream is ejected"
    );
    pool.probed(0, Probe::Healthy, now);
    assert!(pool.pick(None, now, &[]).is_some());
}

#[test]
fn prefix_affinity_is_sticky_and_spreads_prefixes() {
    let pool = pool(4, affinity());
    let now = Instant::now();
    let mut chosen = std::collections::BTreeSet::new();
    for p in 0..64 {
        let prompt = Prompt::Text(format!("system prompt number {p} and then some"));
        let hash = wire::prefix_hash(&prompt, 64);
        let first = pool.pick(hash, now, &[]).unwrap().index;
        for _ in 0..3 {
            assert_eq!(
                pool.pick(hash, now, &[]).unwrap().index,
                first,
                "same prefix, same upstream"
            );
        }
        chosen.insert(first);
    }
    assert_eq!(chosen.len(), 4, "64 prefixes use every upstream");
}

#[test]
fn prefix_affinity_load_guard_sends_a_hot_prefix_elsewhere() {
    let pool = pool(2, affinity());
    let now = Instant::now();
    let hash = Some(42);
    let mut held = Vec::new();
    let preferred = pool.pick(hash, now, &[]).unwrap();
    let home = preferred.index;
    held.push(preferred);
    // The preferred upstream takes up to LOAD_GUARD more than the idle one...
    for _ in 0..LOAD_GUARD {
        let lease = pool.pick(hash, now, &[]).unwrap();
        assert_eq!(lease.index, home);
        held.push(lease);
    }
    // ...then the request goes to the least loaded.
    let spill = pool.pick(hash, now, &[]).unwrap();
    assert_ne!(spill.index, home);
}

#[test]
fn prefix_hash_reads_only_the_prefix() {
    let long = |tail: &str| Prompt::Text(format!("{}{tail}", "x".repeat(100)));
    assert_eq!(
        wire::prefix_hash(&long("a"), 100),
        wire::prefix_hash(&long("b"), 100)
    );
    assert_ne!(
        wire::prefix_hash(&long("a"), 101),
        wire::prefix_hash(&long("b"), 101)
    );
    let chat = |content: &str| {
        Prompt::Chat(
            vec![ChatMessage {
                role: "user".into(),
                content: content.into(),
                ..ChatMessage::default()
            }],
            Vec::new(),
        )
    };
    assert_ne!(
        wire::prefix_hash(&chat("a"), 64),
        wire::prefix_hash(&chat("b"), 64)
    );
    assert_eq!(wire::prefix_hash(&Prompt::TokenIds(vec![1, 2]), 64), None);
}

#[test]
fn the_prompt_bound_never_undercounts() {
    // Every token covers at least one byte: bytes (plus the template allowance) bound it.
    let text = "Grüße, 世界! tokens ≤ bytes";
    assert!(wire::prompt_upper_bound(&Prompt::Text(text.into())) >= text.len());
    let chat = Prompt::Chat(
        vec![
            ChatMessage {
                role: "system".into(),
                content: "be brief".into(),
                ..ChatMessage::default()
            },
            ChatMessage {
                role: "user".into(),
                content: text.into(),
                ..ChatMessage::default()
            },
        ],
        Vec::new(),
    );
    assert!(
        wire::prompt_upper_bound(&chat) >= "systembe brief".len() + "user".len() + text.len() + 32
    );
    assert_eq!(
        wire::prompt_upper_bound(&Prompt::TokenIds(vec![1, 2, 3])),
        3
    );
}

#[test]
fn the_request_body_streams_with_usage_and_carries_the_parameters() {
    let params = SamplingParams {
        temperature: 0.5,
        max_tokens: Some(12),
        seed: Some(7),
        stop: vec!["END".into()],
        top_k: Some(40),
        ..SamplingParams::default()
    };
    let chat = Prompt::Chat(
        vec![ChatMessage {
            role: "user".into(),
            content: "hi".into(),
            ..ChatMessage::default()
        }],
        Vec::new(),
    );
    let (path, body) = wire::request_body("up-model", &chat, &params).unwrap();
    assert_eq!(path, "/v1/chat/completions");
    assert_eq!(body["model"], "up-model");
    assert_eq!(body["messages"], json!([{"role": "user", "content": "hi"}]));
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    assert_eq!(body["max_tokens"], 12);
    assert_eq!(body["seed"], 7);
    assert_eq!(body["stop"], json!(["END"]));
    assert_eq!(body["top_k"], 40);
    assert!(body.get("min_p").is_none(), "defaults are not sent");
    let (path, body) = wire::request_body(
        "m",
        &Prompt::Text("once upon".into()),
        &SamplingParams::default(),
    )
    .unwrap();
    assert_eq!(path, "/v1/completions");
    assert_eq!(body["prompt"], "once upon");
    let schema = SamplingParams {
        grammar: Some(Grammar {
            param: "response_format",
            spec: GrammarSpec::JsonSchema(json!({"type": "object"})),
        }),
        ..SamplingParams::default()
    };
    let (_, body) = wire::request_body("m", &chat, &schema).unwrap();
    assert_eq!(body["response_format"]["type"], "json_schema");
    let logprobs = SamplingParams {
        logprobs: Some(1),
        ..SamplingParams::default()
    };
    assert!(wire::request_body("m", &chat, &logprobs).is_err());
}

fn decode(chunks: &[&[u8]]) -> Result<Vec<Event>, String> {
    let mut decoder = Decoder::default();
    let mut out = Vec::new();
    for c in chunks {
        decoder.push(c, &mut out)?;
    }
    Ok(out)
}

#[test]
fn the_stream_parser_reads_chat_and_completion_chunks_split_anywhere() {
    let stream = concat!(
        ": keep-alive\n\n",
        "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\r\n\r\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"},\"finish_reason\":null}]}\n\n",
        "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"length\"}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n",
        "data: [DONE]\n\n"
    )
    .as_bytes();
    let want = vec![
        Event::Text("Hel".into()),
        Event::Text("lo".into()),
        Event::Finish(FinishReason::Length),
        Event::Usage(Usage {
            prompt_tokens: 5,
            completion_tokens: 2,
            cached_tokens: 0,
        }),
        Event::Done,
    ];
    assert_eq!(decode(&[stream]).unwrap(), want);
    // Byte by byte, the same events.
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(decode(&bytes).unwrap(), want);
    let completion = b"data: {\"choices\":[{\"text\":\"abc\",\"finish_reason\":\"stop\"}]}\n";
    assert_eq!(
        decode(&[completion]).unwrap(),
        vec![Event::Text("abc".into()), Event::Finish(FinishReason::Stop)]
    );
}

#[test]
fn the_stream_parser_reports_errors_and_bounds_lines() {
    let error = b"data: {\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\"}}\n";
    assert_eq!(
        decode(&[error]).unwrap(),
        vec![Event::Error("out of memory".into())]
    );
    assert!(decode(&[b"data: {not json\n"]).is_err());
    let long = vec![b'a'; MAX_LINE_BYTES + 1];
    assert!(
        decode(&[&long]).is_err(),
        "an endless line is refused, not buffered"
    );
    let half = vec![b'a'; MAX_LINE_BYTES / 2 + 1];
    assert!(decode(&[&half, &half]).is_err(), "across pieces too");
}

#[test]
fn error_messages_are_bounded_on_a_char_boundary() {
    let long = "é".repeat(400);
    let msg = wire::error_message(&json!({"message": long}));
    assert!(msg.len() <= 512 && msg.chars().all(|c| c == 'é'));
}

#[test]
fn upstream_addresses_display_as_written() {
    assert_eq!(addrs(1)[0].to_string(), "https://engine-0.example:8443");
    assert_eq!(
        UpstreamAddr::Unix(PathBuf::from("/run/vllm.sock")).to_string(),
        "unix:/run/vllm.sock"
    );
}

mod fake_upstream;
mod keepalive;
