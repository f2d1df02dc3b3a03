//! `examples/pdf_qa` run for real: the Python client (official `openai` SDK over mutual TLS,
//! `pypdf`) against the real `airlockd dev`. It must extract the sample PDF's text, summarize
//! it chunk by chunk and answer questions through the gateway; the built-in model has random
//! weights, so the words are meaningless but the flow, the counts and the exit status are
//! checked.
//!
//! Needs a Python with `examples/pdf_qa/requirements.txt` installed, named by
//! `AIRLOCK_EXAMPLE_PYTHON`. Without it the test prints a notice and passes, unless
//! `AIRLOCK_REQUIRE_EXAMPLE_TEST=1` (CI sets both; see `.ci/run`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::Daemon;

const QUESTIONS: [&str; 2] = [
    "Who may approve moving a model into the enclave?",
    "How long are audit checkpoints kept off the host?",
];

/// The number after `label` on the line that starts with it (`chunks summarized: 3`).
fn figure(out: &str, label: &str) -> usize {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no `{label}` line in:\n{out}"));
    line.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after `{label}` in:\n{out}"))
}

#[test]
fn pdf_qa_example_summarizes_and_answers_through_airlockd_dev() {
    let Some(python) = std::env::var_os("AIRLOCK_EXAMPLE_PYTHON") else {
        assert!(
            std::env::var("AIRLOCK_REQUIRE_EXAMPLE_TEST").as_deref() != Ok("1"),
            "AIRLOCK_REQUIRE_EXAMPLE_TEST=1 but AIRLOCK_EXAMPLE_PYTHON is not set"
        );
        eprintln!(
            "SKIPPED example_pdf_qa: set AIRLOCK_EXAMPLE_PYTHON to a Python with \
             examples/pdf_qa/requirements.txt installed"
        );
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let example = root.join("examples/pdf_qa");

    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("airlock-dev");
    let daemon = Daemon::start_args(&["dev", "--dir", work.to_str().unwrap(), "--port", "0"]);
    let base_url = format!("https://localhost:{}/v1", daemon.addr.port());

    let mut cmd = Command::new(&python);
    cmd.arg(example.join("pdf_qa.py"))
        .arg("--dev-dir")
        .arg(&work)
        .args(["--base-url", &base_url])
        .arg("--pdf")
        .arg(example.join("sample.pdf"));
    for q in QUESTIONS {
        cmd.args(["--question", q]);
    }
    let out = cmd
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .output()
        .expect("run the example's Python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "pdf_qa.py failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}\ndaemon log:\n{}",
        out.status,
        daemon.logs()
    );

    // The text really came out of the PDF: both pages, and a sentence from each.
    assert_eq!(figure(&stdout, "pages: "), 2, "{stdout}");
    assert!(figure(&stdout, "characters: ") > 2000, "{stdout}");
    assert!(
        stdout.contains("first words: Airlock enclave operations"),
        "{stdout}"
    );
    // Several chunks, each summarized by the model through the gateway.
    let chunks = figure(&stdout, "chunks: ");
    assert!(
        chunks >= 2,
        "the sample should need several chunks:\n{stdout}"
    );
    assert_eq!(figure(&stdout, "chunks summarized: "), chunks, "{stdout}");
    // Every question got a non-empty answer (the script fails on an empty completion).
    assert_eq!(figure(&stdout, "answers: "), QUESTIONS.len(), "{stdout}");
    for q in QUESTIONS {
        assert!(stdout.contains(&format!("question: {q}")), "{stdout}");
    }

    // The gateway saw them: every call was admitted and completed in the audit log.
    let (status, export, err) = common::airlockd(&[
        "audit",
        "export",
        "--db",
        work.join("audit/audit.db").to_str().unwrap(),
    ]);
    assert!(status.success(), "{err}");
    let completed = export
        .lines()
        .filter(|l| l.contains("\"kind\":\"complete\"") && l.contains("\"status\":200"))
        .count();
    let calls = figure(&stdout, "completions: ");
    assert!(calls > QUESTIONS.len(), "{stdout}");
    assert!(
        completed >= calls,
        "{calls} completions reported, {completed} completed in the audit log:\n{export}"
    );
}
