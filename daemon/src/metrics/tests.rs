use std::time::Duration;

use airlock_engine::{EngineStatus, GenerationTimings, ModelInfo, Usage};

use super::*;

#[test]
fn text_format_names_counters_with_total_and_drops_openmetrics_lines() {
    let om = "# HELP a_requests Requests.\n# TYPE a_requests counter\n\
              a_requests_total{tenant=\"t\"} 2\na_requests_created{tenant=\"t\"} 1.0\n\
              # HELP a_seconds Time.\n# TYPE a_seconds histogram\n# UNIT a_seconds seconds\n\
              a_seconds_sum 0.5\na_seconds_count 1\na_seconds_bucket{le=\"+Inf\"} 1\n\
              # TYPE a_other unknown\na_other 3\n# EOF\n";
    let text = to_text_format(om);
    assert_eq!(
        text,
        "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\n\
         a_requests_total{tenant=\"t\"} 2\n\
         # HELP a_seconds Time.\n# TYPE a_seconds histogram\n\
         a_seconds_sum 0.5\na_seconds_count 1\na_seconds_bucket{le=\"+Inf\"} 1\n\
         # TYPE a_other untyped\na_other 3\n"
    );
}

#[test]
fn device_strings_split_into_device_and_dtype() {
    assert_eq!(
        split_device("cpu (flex, f32)"),
        ("cpu (flex)".to_owned(), "f32".to_owned())
    );
    assert_eq!(
        split_device("cpu (flex, f32, q8_0 weights)"),
        ("cpu (flex, f32)".to_owned(), "q8_0".to_owned())
    );
    assert_eq!(
        split_device("gpu (Vulkan: NVIDIA H100, f16)"),
        ("gpu (Vulkan: NVIDIA H100)".to_owned(), "f16".to_owned())
    );
    assert_eq!(
        split_device("test"),
        ("test".to_owned(), "unknown".to_owned())
    );
}

#[test]
fn labels_stay_bounded_and_series_appear() {
    let m = Metrics::new();
    m.set_models(&[ModelInfo {
        id: "m1".into(),
        created: 0,
        context_length: 128,
        device: "cpu (flex, f32)".into(),
        features: Default::default(),
        embedding_size: None,
    }]);
    m.request(
        Some("acme"),
        Some("m1"),
        "/v1/completions",
        200,
        Duration::from_millis(5),
    );
    m.request(
        None,
        Some("attacker-chosen-model"),
        "/v1/completions",
        404,
        Duration::ZERO,
    );
    m.generation(
        Some("acme"),
        "m1",
        Usage {
            prompt_tokens: 7,
            completion_tokens: 3,
            cached_tokens: 0,
        },
        &GenerationTimings {
            time_to_first_token_ms: 12.0,
            prefill_tokens_per_s: 100.0,
            decode_tokens_per_s: 50.0,
        },
    );
    m.auth_failure("api_key", "invalid_key");
    m.audit_commit(Some(Duration::from_millis(1)), Some((9, &[0xab; 32])));
    let text = to_text_format(&m.encode(&EngineStatus::default(), 0));
    for series in [
        "airlock_requests_total{tenant=\"acme\",model=\"m1\",route=\"/v1/completions\",status=\"200\"} 1",
        "airlock_requests_total{tenant=\"unknown\",model=\"unknown\",route=\"/v1/completions\",status=\"404\"} 1",
        "airlock_prompt_tokens_total{tenant=\"acme\",model=\"m1\"} 7",
        "airlock_completion_tokens_total{tenant=\"acme\",model=\"m1\"} 3",
        "airlock_auth_failures_total{method=\"api_key\",reason=\"invalid_key\"} 1",
        "airlock_model_info{model=\"m1\",device=\"cpu (flex)\",dtype=\"f32\",context_length=\"128\"} 1",
        "airlock_time_to_first_token_seconds_count{model=\"m1\"} 1",
        "airlock_audit_commit_duration_seconds_count 1",
    ] {
        assert!(text.contains(series), "missing {series} in\n{text}");
    }
    assert!(!text.contains("attacker-chosen-model"));
    let audit = m.audit_health();
    assert_eq!((audit.last_commit_ok, audit.head_seq), (Some(true), 9));
    assert!(m.tokens_per_second() > 0.0);
}

#[test]
fn speculative_totals_become_counters() {
    let m = Metrics::new();
    let status = |drafted, accepted| EngineStatus {
        spec_drafted_tokens: drafted,
        spec_accepted_tokens: accepted,
        ..Default::default()
    };
    let text = to_text_format(&m.encode(&status(10, 7), 0));
    assert!(
        text.contains("airlock_engine_spec_drafted_tokens_total 10"),
        "{text}"
    );
    assert!(
        text.contains("airlock_engine_spec_accepted_tokens_total 7"),
        "{text}"
    );
    let text = to_text_format(&m.encode(&status(15, 9), 0));
    assert!(
        text.contains("airlock_engine_spec_drafted_tokens_total 15"),
        "{text}"
    );
    assert!(
        text.contains("airlock_engine_spec_accepted_tokens_total 9"),
        "{text}"
    );
    // An engine that restarted counts from zero again: the counters never go back.
    let text = to_text_format(&m.encode(&status(4, 1), 0));
    assert!(
        text.contains("airlock_engine_spec_drafted_tokens_total 19"),
        "{text}"
    );
    assert!(
        text.contains("airlock_engine_spec_accepted_tokens_total 10"),
        "{text}"
    );
}
