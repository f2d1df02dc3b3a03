//! A real agent framework, unmodified: the OpenAI Agents SDK (`tests/agent/two_tools.py`,
//! pinned in `tests/agent/requirements.txt`) runs a two-tool agent against the real daemon
//! and the real engine. No tool-capable trained model can be fetched here, so the model is
//! the embedded default one (random weights) given a compact Hermes-style chat template
//! with tools ([`TEMPLATE`]), and the agent asks with `tool_choice: "required"`: the grammar makes every
//! answer a valid call of an offered tool with schema-valid arguments, the SDK runs it,
//! sends the result back through the template, and finishes once both tools have run.
//!
//! Needs the Python named by `AIRLOCK_EXAMPLE_PYTHON` with `tests/agent/requirements.txt`
//! installed (CI's example venv, `.ci/run`); without it the test prints a notice and
//! passes, unless `AIRLOCK_REQUIRE_EXAMPLE_TEST=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{Daemon, Pki, TestConfig};

/// A compact Hermes-style template: the tools by name and the call format, calls and tool
/// results rendered back in later turns. Short on purpose: the tiny model's 1k-token
/// vocabulary spells most text byte by byte and its context is 2048 tokens, which a full
/// Qwen2.5 template with the SDK's tool schemas would fill on the first turn.
const TEMPLATE: &str = r#"{%- if tools %}<|start_header_id|>system<|end_header_id|>

Tools: {% for t in tools %}{{ t.function.name }} {% endfor %}
Reply with <tool_call>{"name": …, "arguments": …}</tool_call><|eot_id|>{%- endif %}
{%- for m in messages %}
{%- if m.role == "assistant" and m.tool_calls %}<|start_header_id|>assistant<|end_header_id|>

{% for c in m.tool_calls %}<tool_call>{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}</tool_call>{% endfor %}<|eot_id|>
{%- elif m.role == "tool" %}<|start_header_id|>user<|end_header_id|>

<tool_response>{{ m.content }}</tool_response><|eot_id|>
{%- else %}<|start_header_id|>{{ m.role }}<|end_header_id|>

{{ m.content }}<|eot_id|>
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>

{% endif %}"#;

#[test]
fn an_agents_sdk_two_tool_agent_completes_against_the_daemon() {
    let Some(python) = std::env::var_os("AIRLOCK_EXAMPLE_PYTHON") else {
        assert!(
            std::env::var("AIRLOCK_REQUIRE_EXAMPLE_TEST").as_deref() != Ok("1"),
            "AIRLOCK_REQUIRE_EXAMPLE_TEST=1 but AIRLOCK_EXAMPLE_PYTHON is not set"
        );
        eprintln!(
            "SKIPPED agent_framework: set AIRLOCK_EXAMPLE_PYTHON (tests/agent/requirements.txt)"
        );
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let pki = Pki::new(&["alice"]);
    let model_dir = tempfile::tempdir().unwrap();
    let path = airlock_engine::default_model::install(model_dir.path()).unwrap();
    // The default model with a tool-calling template (its own has none). The manifest no
    // longer matches that file, so this test model is loaded with `verify = false`.
    let config_path = path.join("tokenizer_config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["chat_template"] = TEMPLATE.into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    let cfg = TestConfig {
        models: format!("{}verify = false\n", common::cpu_model("tiny-tools", &path)),
        ..TestConfig::default()
    };
    let daemon = Daemon::start(&pki, &cfg);
    let (cert, key) = pki.client("alice");
    let out = Command::new(&python)
        .arg(root.join("tests/agent/two_tools.py"))
        .args(["--base-url", &daemon.url("/v1")])
        .args(["--model", "tiny-tools"])
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .arg("--cacert")
        .arg(pki.ca())
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .env("OPENAI_AGENTS_DISABLE_TRACING", "1")
        .output()
        .expect("run the agent script's Python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the agent failed\nstdout:\n{stdout}\nstderr:\n{stderr}\ndaemon:\n{}",
        daemon.logs()
    );
    assert!(stdout.contains("call: lookup_rate("), "{stdout}");
    assert!(stdout.contains("call: convert("), "{stdout}");
    assert!(stdout.contains("done: "), "{stdout}");
    eprintln!("{stdout}");
}
