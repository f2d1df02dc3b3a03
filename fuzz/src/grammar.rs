//! `grammar`: a client's `response_format` JSON Schema, compiled by the grammar library
//! against a real tokenizer (the embedded default model's) and followed token by token as a
//! model choosing among the allowed tokens would. Input: the schema (JSON), NUL, then one
//! byte per step choosing which allowed token to take. The schema comes from any tenant, so
//! compiling or following it must end in a result or an error, never a panic (the engine
//! reports a caught panic as an error saying so, which this target treats as the bug).

use crate::split;

/// At most this many steps per input (a request's are bounded by `max_tokens`).
const MAX_STEPS: usize = 256;

pub fn run(data: &[u8]) {
    let parts = split::nul_parts(data, 2);
    let Ok(schema) = serde_json::from_slice::<serde_json::Value>(parts[0]) else {
        return;
    };
    let picks = parts
        .get(1)
        .map_or(&[][..], |p| &p[..p.len().min(MAX_STEPS)]);
    if let Err(e) = airlock_engine::fuzzing::grammar(schema, picks) {
        let reason = e.to_string();
        assert!(
            !reason.ends_with("it panicked"),
            "the grammar library panicked: {reason}"
        );
    }
}

pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let seed = |schema: serde_json::Value, picks: &[u8]| {
        let mut out = schema.to_string().into_bytes();
        out.push(0);
        out.extend_from_slice(picks);
        out
    };
    let walk: Vec<u8> = (0..=255u8).collect();
    vec![
        ("object", seed(serde_json::json!({"type": "object"}), &walk)),
        (
            "ticket",
            seed(
                serde_json::json!({"type": "object", "properties": {
                    "priority": {"enum": ["low", "high"]},
                    "team": {"type": "integer", "minimum": 1, "maximum": 5},
                    "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
                    "when": {"type": "string", "format": "date-time"}},
                    "required": ["priority", "team"], "additionalProperties": false}),
                &walk,
            ),
        ),
        (
            "refs",
            seed(
                serde_json::json!({"$defs": {"node": {"type": "object", "properties": {
                    "v": {"type": "number", "multipleOf": 0.5},
                    "next": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]}}}},
                    "$ref": "#/$defs/node"}),
                &walk,
            ),
        ),
        (
            "pattern",
            seed(
                serde_json::json!({"type": "string", "pattern": "^[A-Z]{2}[0-9]{2}( ?[0-9A-Z]{4}){3,7}$"}),
                &walk,
            ),
        ),
        (
            "contradiction",
            seed(
                serde_json::json!({"type": "integer", "minimum": 5, "maximum": 1}),
                b"",
            ),
        ),
    ]
}
