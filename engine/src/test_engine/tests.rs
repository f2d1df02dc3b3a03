use std::time::Duration;

use super::*;
use crate::{ChatMessage, SamplingParams};

fn engine(config: TestEngineConfig) -> TestEngine {
    TestEngine::new(config).expect("test engine starts")
}

fn request(prompt: Prompt, params: SamplingParams) -> GenerateRequest {
    GenerateRequest {
        request_id: "req-1".into(),
        tenant_weight: 1,
        tenant: "t".into(),
        model: "test-echo".into(),
        prompt,
        params,
    }
}

fn text(s: &str) -> Prompt {
    Prompt::Text(s.to_owned())
}

/// Runs a generation to its end: (streamed text, final event).
fn collect(mut generation: Generation) -> (String, TokenEvent) {
    let mut out = String::new();
    let mut started = false;
    loop {
        match generation
            .blocking_next()
            .expect("generation ends with an event")
        {
            TokenEvent::Started { .. } => started = true,
            TokenEvent::Token { text, .. } => {
                assert!(started, "Token before Started");
                out.push_str(&text);
            }
            event @ TokenEvent::Finished { .. } => {
                if let TokenEvent::Finished { text, .. } = &event {
                    out.push_str(text);
                }
                return (out, event);
            }
            event @ TokenEvent::Failed(_) => return (out, event),
        }
    }
}

fn finish(event: &TokenEvent) -> (FinishReason, Usage) {
    match event {
        TokenEvent::Finished { reason, usage, .. } => (*reason, *usage),
        other => panic!("expected Finished, got {other:?}"),
    }
}

#[test]
fn echoes_prompt_and_stops() {
    let engine = engine(TestEngineConfig::default());
    let generation = engine.submit(request(
        text("hello  big\nworld"),
        SamplingParams::default(),
    ));
    let (out, last) = collect(generation.expect("submitted"));
    assert_eq!(out, "hello big world");
    assert_eq!(
        finish(&last),
        (
            FinishReason::Stop,
            Usage {
                prompt_tokens: 3,
                completion_tokens: 3,
                cached_tokens: 0
            }
        )
    );
}

#[test]
fn max_tokens_cuts_with_length() {
    let engine = engine(TestEngineConfig::default());
    let params = SamplingParams {
        max_tokens: Some(2),
        ..Default::default()
    };
    let (out, last) = collect(
        engine
            .submit(request(text("a b c d"), params))
            .expect("submitted"),
    );
    assert_eq!(out, "a b");
    assert_eq!(finish(&last).0, FinishReason::Length);
    assert_eq!(finish(&last).1.completion_tokens, 2);
}

#[test]
fn ignore_eos_repeats_until_context_end() {
    let config = TestEngineConfig {
        context_length: 7,
        ..Default::default()
    };
    let engine = engine(config);
    let params = SamplingParams {
        ignore_eos: true,
        ..Default::default()
    };
    let (out, last) = collect(
        engine
            .submit(request(text("x y"), params))
            .expect("submitted"),
    );
    assert_eq!(out, "x y x y x");
    assert_eq!(
        finish(&last),
        (
            FinishReason::Length,
            Usage {
                prompt_tokens: 2,
                completion_tokens: 5,
                cached_tokens: 0
            }
        )
    );
}

#[test]
fn chat_echoes_last_message_and_counts_roles() {
    let engine = engine(TestEngineConfig::default());
    let prompt = Prompt::Chat(
        vec![
            ChatMessage {
                role: "system".into(),
                content: "be brief".into(),
                ..ChatMessage::default()
            },
            ChatMessage {
                role: "user".into(),
                content: "ping pong".into(),
                ..ChatMessage::default()
            },
        ],
        Vec::new(),
    );
    assert_eq!(
        engine
            .count_prompt_tokens("test-echo", &prompt)
            .expect("counted"),
        6
    );
    let (out, last) = collect(
        engine
            .submit(request(prompt, SamplingParams::default()))
            .expect("submitted"),
    );
    assert_eq!(out, "ping pong");
    assert_eq!(finish(&last).1.prompt_tokens, 6);
}

#[test]
fn stop_string_ends_before_it_and_is_not_emitted() {
    let engine = engine(TestEngineConfig::default());
    let params = SamplingParams {
        stop: vec![" c d".into()],
        ..Default::default()
    };
    let mut generation = engine
        .submit(request(text("a b c d e"), params))
        .expect("submitted");
    let mut pieces = Vec::new();
    let last = loop {
        match generation.blocking_next().expect("event") {
            TokenEvent::Token { text, .. } => pieces.push(text),
            TokenEvent::Started { .. } => {}
            other => break other,
        }
    };
    assert_eq!(pieces.concat(), "a b");
    assert!(
        pieces.iter().all(|p| !p.contains('c')),
        "held-back text leaked: {pieces:?}"
    );
    match last {
        TokenEvent::Finished { reason, text, .. } => {
            assert_eq!(reason, FinishReason::Stop);
            assert_eq!(text, "");
        }
        other => panic!("expected Finished, got {other:?}"),
    }
}

#[test]
fn held_back_text_is_flushed_when_no_stop_follows() {
    let engine = engine(TestEngineConfig::default());
    let params = SamplingParams {
        stop: vec![" b x".into()],
        ..Default::default()
    };
    let (out, last) = collect(
        engine
            .submit(request(text("a b"), params))
            .expect("submitted"),
    );
    assert_eq!(out, "a b");
    assert_eq!(finish(&last).0, FinishReason::Stop);
}

#[test]
fn unknown_model_and_context_length_fail_at_submit() {
    let engine = engine(TestEngineConfig {
        context_length: 4,
        ..Default::default()
    });
    let mut req = request(text("a"), SamplingParams::default());
    req.model = "nope".into();
    assert!(matches!(engine.submit(req), Err(EngineError::UnknownModel(m)) if m == "nope"));

    let err = engine.submit(request(text("a b c d"), SamplingParams::default()));
    assert!(matches!(
        err,
        Err(EngineError::ContextLength {
            context_length: 4,
            prompt_tokens: 4,
            max_tokens: 0
        })
    ));
    let params = SamplingParams {
        max_tokens: Some(3),
        ..Default::default()
    };
    let err = engine.submit(request(text("a b"), params));
    assert!(matches!(
        err,
        Err(EngineError::ContextLength {
            context_length: 4,
            prompt_tokens: 2,
            max_tokens: 3
        })
    ));
}

#[test]
fn queue_full_when_workers_and_queue_are_busy() {
    let config = TestEngineConfig {
        max_active: 1,
        max_queue: 1,
        token_delay: Duration::from_millis(20),
        ..Default::default()
    };
    let engine = engine(config);
    let long = || request(text(&"w ".repeat(100)), SamplingParams::default());
    let mut first = engine.submit(long()).expect("first runs");
    // Wait until the worker has taken the first job, so the queue slot is free.
    assert!(matches!(
        first.blocking_next(),
        Some(TokenEvent::Started { .. })
    ));
    let _second = engine.submit(long()).expect("second waits in the queue");
    assert!(matches!(
        engine.submit(long()),
        Err(EngineError::QueueFull { capacity: 1 })
    ));
    let status = engine.status();
    assert_eq!((status.active, status.queued), (1, 1));
}

#[test]
fn dropping_the_generation_frees_the_worker() {
    let config = TestEngineConfig {
        token_delay: Duration::from_millis(5),
        ..Default::default()
    };
    let engine = engine(config);
    let mut generation = engine
        .submit(request(text(&"w ".repeat(1000)), SamplingParams::default()))
        .expect("submitted");
    assert!(matches!(
        generation.blocking_next(),
        Some(TokenEvent::Started { .. })
    ));
    assert!(matches!(
        generation.blocking_next(),
        Some(TokenEvent::Token { .. })
    ));
    assert_eq!(engine.status().active, 1);
    drop(generation);
    let deadline = Instant::now() + Duration::from_secs(5);
    while engine.status().active != 0 {
        assert!(
            Instant::now() < deadline,
            "worker still busy after cancellation"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn fail_word_fails_after_first_token() {
    let engine = engine(TestEngineConfig::default());
    let prompt = text(&format!("a {FAIL_WORD} b"));
    let (out, last) = collect(
        engine
            .submit(request(prompt, SamplingParams::default()))
            .expect("submitted"),
    );
    assert_eq!(out, "a");
    assert!(matches!(
        last,
        TokenEvent::Failed(EngineError::Inference(_))
    ));
}

#[test]
fn token_ids_are_deterministic() {
    assert_eq!(token_id("hello"), token_id("hello"));
    assert_ne!(token_id("hello"), token_id("world"));
}

#[test]
fn drop_with_a_busy_unread_generation_returns() {
    let config = TestEngineConfig {
        max_active: 1,
        ..Default::default()
    };
    let engine = engine(config);
    // Never read: the worker fills the event buffer and waits; shutdown must still end it.
    let _generation = engine
        .submit(request(text(&"w ".repeat(500)), SamplingParams::default()))
        .expect("submitted");
    thread::sleep(Duration::from_millis(20));
    drop(engine);
}

#[test]
fn oversized_stop_strings_are_refused_at_submit() {
    let engine = engine(TestEngineConfig::default());
    for stop in [
        vec!["x".repeat(crate::MAX_STOP_BYTES + 1)],
        vec!["s".to_owned(); crate::MAX_STOP_SEQUENCES + 1],
    ] {
        let params = SamplingParams {
            stop,
            ..Default::default()
        };
        match engine.submit(request(text("a b"), params)) {
            Err(EngineError::InvalidRequest { param, .. }) => assert_eq!(param, "stop"),
            other => panic!("expected a refusal naming `stop`, got {other:?}"),
        }
    }
}

/// The trait's default `submit_n`: `n` independent requests, in choice order, each with
/// its own stream and the whole prompt's count; `n` out of range refused; a submission
/// that fails part-way cancels the ones already queued.
#[test]
fn default_submit_n_submits_n_requests() {
    let engine = engine(TestEngineConfig::default());
    let params = SamplingParams {
        seed: Some(u64::MAX),
        max_tokens: Some(2),
        ..Default::default()
    };
    let prepared = crate::Prepared::counted(3);
    let samples = engine
        .submit_n(
            request(text("one two three"), params.clone()),
            prepared.clone(),
            3,
        )
        .expect("submitted");
    assert_eq!(samples.len(), 3);
    for sample in samples {
        let (out, last) = collect(sample);
        assert_eq!(out, "one two");
        assert_eq!(
            finish(&last),
            (
                FinishReason::Length,
                Usage {
                    prompt_tokens: 3,
                    completion_tokens: 2,
                    cached_tokens: 0
                }
            )
        );
    }
    for n in [0, crate::MAX_N + 1] {
        match engine.submit_n(request(text("a"), params.clone()), prepared.clone(), n) {
            Err(EngineError::InvalidRequest { param: "n", .. }) => {}
            other => panic!("n = {n}: expected InvalidRequest, got {other:?}"),
        }
    }

    // One worker busy, a queue of two: the third sample does not fit.
    let config = TestEngineConfig {
        max_active: 1,
        max_queue: 2,
        token_delay: Duration::from_millis(20),
        ..Default::default()
    };
    let engine = super::TestEngine::new(config).expect("test engine starts");
    let long = || request(text(&"w ".repeat(100)), SamplingParams::default());
    let mut busy = engine.submit(long()).expect("first runs");
    assert!(matches!(
        busy.blocking_next(),
        Some(TokenEvent::Started { .. })
    ));
    assert!(matches!(
        engine.submit_n(long(), crate::Prepared::counted(100), 3),
        Err(EngineError::QueueFull { capacity: 2 })
    ));
    // The two queued samples were cancelled with the failure: once the busy request goes,
    // the worker drains them at once and the queue takes new work.
    drop(busy);
    let deadline = Instant::now() + Duration::from_secs(5);
    while engine.status().queued + engine.status().active != 0 {
        assert!(Instant::now() < deadline, "cancelled samples still queued");
        thread::sleep(Duration::from_millis(5));
    }
    let (out, _) = collect(
        engine
            .submit(request(text("done"), SamplingParams::default()))
            .expect("queue free again"),
    );
    assert_eq!(out, "done");
}
