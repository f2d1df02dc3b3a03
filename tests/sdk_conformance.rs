//! `tests/sdk/openai_conformance.py` run for real: the official, unmodified `openai` Python
//! SDK drives the real `airlockd dev` over mutual TLS (chat, streams, completions, models,
//! logprobs, tool-call refusals on a model without tools, error shapes) and must report no
//! failed check.
//!
//! Needs a Python with the SDK installed, named by `AIRLOCK_EXAMPLE_PYTHON`: the pins of
//! `tests/sdk/requirements.txt` are the same as `examples/pdf_qa/requirements.txt`'s, so
//! CI's example venv serves both (`.ci/run`). Without it the test prints a notice and
//! passes, unless `AIRLOCK_REQUIRE_EXAMPLE_TEST=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::Daemon;

#[test]
fn the_openai_sdk_conformance_checks_pass_against_airlockd_dev() {
    let Some(python) = std::env::var_os("AIRLOCK_EXAMPLE_PYTHON") else {
        assert!(
            std::env::var("AIRLOCK_REQUIRE_EXAMPLE_TEST").as_deref() != Ok("1"),
            "AIRLOCK_REQUIRE_EXAMPLE_TEST=1 but AIRLOCK_EXAMPLE_PYTHON is not set"
        );
        eprintln!(
            "SKIPPED sdk_conformance: set AIRLOCK_EXAMPLE_PYTHON to a Python with \
             tests/sdk/requirements.txt installed"
        );
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("airlock-dev");
    let daemon = Daemon::start_args(&["dev", "--dir", work.to_str().unwrap(), "--port", "0"]);
    let certs = work.join("certs");
    let api_key = std::fs::read_to_string(work.join("demo-api-key")).unwrap();

    let out = Command::new(&python)
        .arg(root.join("tests/sdk/openai_conformance.py"))
        .args([
            "--base-url",
            &format!("https://localhost:{}/v1", daemon.addr.port()),
        ])
        .arg("--cert")
        .arg(certs.join("client-demo.pem"))
        .arg("--key")
        .arg(certs.join("client-demo.key"))
        .arg("--cacert")
        .arg(certs.join("ca.pem"))
        .args(["--model", "airlock-tiny-random"])
        .args(["--api-key", api_key.trim()])
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .output()
        .expect("run the conformance script's Python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "openai_conformance.py failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}\ndaemon log:\n{}",
        out.status,
        daemon.logs()
    );
    // It ran its checks (not zero of them) and none failed.
    let summary = stdout
        .lines()
        .rev()
        .find(|l| l.contains(" passed, "))
        .unwrap_or_else(|| panic!("no summary line in:\n{stdout}"));
    let passed: usize = summary
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {summary:?}"));
    assert!(passed >= 10, "only {passed} checks ran:\n{stdout}");
    assert!(summary.contains(" 0 failed"), "{summary}");
}
