//! Bugs the fuzz targets found, each pinned by a test on the production entry point
//! (the inputs themselves are in `fuzz/corpus/<target>/crash-*`, replayed by `corpus.rs`).

use airlock_daemon::audit::AuditError;
use airlock_daemon::audit::verify::verify;
use rusqlite::Connection;

/// `audit_verify`: a log whose meta says `first_seq = 0` and that holds no records made
/// the verifier compute `0 - 1` (a panic in debug builds, seq 18446744073709551615 in
/// release ones). Sequence numbers start at 1, so it is refused as not an audit log.
#[test]
fn audit_log_with_first_seq_zero_is_refused() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let db = dir.path().join("audit.db");
    let conn = Connection::open(&db).unwrap_or_else(|e| panic!("{e}"));
    conn.execute_batch(
        "CREATE TABLE records (seq INTEGER PRIMARY KEY, body BLOB NOT NULL, hash BLOB NOT NULL);
         CREATE TABLE checkpoints (seq INTEGER PRIMARY KEY, hash BLOB NOT NULL,
             ts_ms INTEGER NOT NULL, signature BLOB NOT NULL);
         CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         INSERT INTO meta (key, value) VALUES ('first_seq', '0'), ('clean', '1');",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    drop(conn);
    match verify(&[db], None) {
        Err(AuditError::Format(reason)) => assert!(reason.contains("not an audit log"), "{reason}"),
        other => panic!("expected a format error, got {other:?}"),
    }
}

/// `chat_template`: one expression (`'ab' * 40000000`) rendered an 80 MB prompt, then the
/// request tokenized it: a minute of CPU per request from a hostile model directory. The
/// rendered prompt is now capped (engine/src/tokenizer.rs, `CappedWriter`: 1 MiB plus twice the
/// messages' text).
#[test]
fn chat_template_output_is_capped() {
    let model =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/assets/default-model");
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    std::fs::copy(
        model.join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let messages = [airlock_engine::ChatMessage {
        role: "user".into(),
        content: "hi".into(),
        ..airlock_engine::ChatMessage::default()
    }];
    for (template, capped) in [
        ("{{ 'ab' * 40000000 }}", true),
        (
            "{% for i in range(100) %}{{ 'x' * 99999 }}{% endfor %}",
            true,
        ),
        (
            "{% for m in messages %}{{ m.content * 1000 }}{% endfor %}",
            false,
        ),
    ] {
        let config = serde_json::json!({ "chat_template": template });
        std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        let result = airlock_engine::fuzzing::chat_template(dir.path(), &messages);
        let refused = matches!(&result, Err(e) if e.to_string().contains("rendered more than"));
        assert_eq!(refused, capped, "{template}: {result:?}");
    }
}
