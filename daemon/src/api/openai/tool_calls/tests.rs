use airlock_engine::ToolFormat::{self, Hermes, Llama3Json, Mistral, MistralArgs};

use super::*;

fn offered() -> Vec<String> {
    vec!["get_weather".to_owned(), "get_time".to_owned()]
}

/// The calls' names and arguments, ids checked for shape and uniqueness.
fn calls(format: ToolFormat, text: &str) -> (Option<String>, Vec<(String, String)>) {
    match parse(format, text, &offered()) {
        Parsed::Calls { content, calls } => {
            let mut ids: Vec<&str> = calls.iter().map(|c| c.id.as_str()).collect();
            // Mistral's templates take back only 9 letters and digits; others get `call_…`.
            assert!(ids.iter().all(|id| match format {
                Mistral | MistralArgs => {
                    id.len() == 9 && id.bytes().all(|b| b.is_ascii_alphanumeric())
                }
                Hermes | Llama3Json => id.starts_with("call_") && id.len() == 29,
            }));
            ids.dedup();
            assert_eq!(ids.len(), calls.len(), "ids are unique");
            let pairs = calls.into_iter().map(|c| (c.name, c.arguments)).collect();
            (content, pairs)
        }
        other => panic!("{text:?}: expected calls, got {other:?}"),
    }
}

fn call(name: &str, args: &str) -> (String, String) {
    (name.to_owned(), args.to_owned())
}

#[test]
fn hermes_single_and_parallel() {
    assert_eq!(
        calls(
            Hermes,
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"
        ),
        (None, vec![call("get_weather", r#"{"city":"Paris"}"#)])
    );
    assert_eq!(
        calls(
            Hermes,
            "Let me check.\n<tool_call>{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Oslo\"}}</tool_call>\n<tool_call>{\"name\":\"get_time\",\"arguments\":{}}</tool_call>\n"
        ),
        (
            Some("Let me check.".to_owned()),
            vec![
                call("get_weather", r#"{"city":"Oslo"}"#),
                call("get_time", "{}")
            ]
        )
    );
    // EOS straight after the JSON: the last block's closing tag is missing.
    assert_eq!(
        calls(
            Hermes,
            "<tool_call>{\"name\":\"get_time\",\"arguments\":{\"tz\":\"UTC\"}}"
        ),
        (None, vec![call("get_time", r#"{"tz":"UTC"}"#)])
    );
    // Arguments sent as a JSON string pass through as that string.
    assert_eq!(
        calls(
            Hermes,
            r#"<tool_call>{"name":"get_time","arguments":"{\"tz\": \"UTC\"}"}</tool_call>"#
        ),
        (None, vec![call("get_time", r#"{"tz": "UTC"}"#)])
    );
    assert_eq!(parse(Hermes, "just text", &offered()), Parsed::Text);
}

#[test]
fn llama3_with_and_without_python_tag() {
    let want = (None, vec![call("get_weather", r#"{"city":"Rome"}"#)]);
    assert_eq!(
        calls(
            Llama3Json,
            r#"{"name": "get_weather", "parameters": {"city": "Rome"}}"#
        ),
        want
    );
    assert_eq!(
        calls(
            Llama3Json,
            r#"<|python_tag|>{"name": "get_weather", "parameters": {"city": "Rome"}}"#
        ),
        want
    );
    assert_eq!(
        calls(
            Llama3Json,
            r#"{"name": "get_weather", "parameters": {"city": "Rome"}}; {"name": "get_time", "parameters": {}}"#
        )
        .1
        .len(),
        2
    );
    // JSON the user asked for is an answer, not a call.
    assert_eq!(
        parse(Llama3Json, r#"{"city": "Rome"}"#, &offered()),
        Parsed::Text
    );
    assert_eq!(
        parse(Llama3Json, "Rome is sunny.", &offered()),
        Parsed::Text
    );
}

#[test]
fn mistral_with_and_without_its_marker() {
    let want = (None, vec![call("get_weather", r#"{"city":"Lyon"}"#)]);
    assert_eq!(
        calls(
            Mistral,
            r#"[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Lyon"}}]"#
        ),
        want
    );
    // `[TOOL_CALLS]` is a special token that decoding skips.
    assert_eq!(
        calls(
            Mistral,
            r#" [{"name": "get_weather", "arguments": {"city": "Lyon"}}]"#
        ),
        want
    );
    assert_eq!(parse(Mistral, "[1, 2]", &offered()), Parsed::Text);
}

#[test]
fn mistral_args_form_one_and_several_calls() {
    assert_eq!(
        calls(
            MistralArgs,
            r#"[TOOL_CALLS]get_weather[ARGS]{"city": "Lyon"}"#
        ),
        (None, vec![call("get_weather", r#"{"city": "Lyon"}"#)])
    );
    // Content first, two calls, one with the model's own `[CALL_ID]`.
    assert_eq!(
        calls(
            MistralArgs,
            "Checking.[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{\"city\": \"Oslo\"}\
             [TOOL_CALLS]get_time[ARGS]{}",
        ),
        (
            Some("Checking.".to_owned()),
            vec![
                call("get_weather", r#"{"city": "Oslo"}"#),
                call("get_time", "{}"),
            ]
        )
    );
    // The older array after the marker still reads.
    assert_eq!(
        calls(
            MistralArgs,
            r#"[TOOL_CALLS][{"name": "get_time", "arguments": {}}]"#
        ),
        (None, vec![call("get_time", "{}")])
    );
    // Without the marker it is an answer, whatever it looks like.
    assert_eq!(
        parse(MistralArgs, r#"get_time{"a": 1}"#, &offered()),
        Parsed::Text
    );
}

#[test]
fn malformed_calls_are_text() {
    for (format, text) in [
        (Hermes, "<tool_call>{not json}</tool_call>"),
        (Hermes, "<tool_call>{\"arguments\":{}}</tool_call>"),
        (
            Hermes,
            "<tool_call>{\"name\":\"rm_rf\",\"arguments\":{}}</tool_call>",
        ),
        (
            Hermes,
            "<tool_call>{\"name\":\"get_time\",\"arguments\":{}}</tool_call> and more",
        ),
        (
            Hermes,
            "<tool_call>{\"name\":\"get_time\",\"arguments\":[1]}</tool_call>",
        ),
        (Llama3Json, "<|python_tag|>{\"name\": \"get_time\", "),
        (Llama3Json, "{\"name\": \"delete_all\", \"parameters\": {}}"),
        (Mistral, "[TOOL_CALLS][{\"name\": \"get_time\""),
        (MistralArgs, "[TOOL_CALLS]get_time{}"),
        (MistralArgs, "[TOOL_CALLS]get_time[ARGS]{\"a\":"),
        (MistralArgs, "[TOOL_CALLS]get_time[ARGS][1]"),
        (MistralArgs, "[TOOL_CALLS][ARGS]{}"),
        (MistralArgs, "[TOOL_CALLS]rm_rf[ARGS]{}"),
    ] {
        assert!(
            matches!(parse(format, text, &offered()), Parsed::Malformed(_)),
            "{format:?} {text:?}"
        );
    }
}

#[test]
fn markers_split_at_every_position_are_held_back() {
    for (format, marker) in [
        (Hermes, HERMES_OPEN),
        (Llama3Json, PYTHON_TAG),
        (Mistral, MISTRAL_TAG),
        (MistralArgs, MISTRAL_TAG),
    ] {
        for cut in 1..marker.len() {
            let text = format!("Sure. {}", &marker[..cut]);
            assert_eq!(pending_marker(format, &text), cut, "{format:?} cut {cut}");
        }
        assert_eq!(pending_marker(format, "Sure."), 0);
        assert_eq!(call_start(format, &format!("Sure. {marker}")), Some(6));
    }
    assert_eq!(call_start(Hermes, "no call"), None);
    assert_eq!(call_start(Llama3Json, "  {\"name\""), Some(2));
}

/// Feeds `text` cut at `cut` through a splitter: the content sent while streaming, and the
/// region held to the end.
fn split_at(format: ToolFormat, text: &str, cut: usize) -> (String, String) {
    let mut splitter = Splitter::new(format);
    let mut sent = splitter.push(&text[..cut]);
    sent.push_str(&splitter.push(&text[cut..]));
    (sent, splitter.finish())
}

#[test]
fn the_stream_splitter_holds_calls_whatever_the_chunking() {
    let cases = [
        (
            Hermes,
            "Let me look. <tool_call>{\"name\":\"get_time\",\"arguments\":{}}</tool_call>",
            "Let me look. ",
        ),
        (
            Llama3Json,
            " <|python_tag|>{\"name\": \"get_time\", \"parameters\": {}}",
            " ",
        ),
        (
            Llama3Json,
            "{\"name\": \"get_time\", \"parameters\": {}}",
            "",
        ),
        (
            Mistral,
            "[TOOL_CALLS][{\"name\": \"get_time\", \"arguments\": {}}]",
            "",
        ),
        (
            MistralArgs,
            "One moment. [TOOL_CALLS]get_time[ARGS]{}",
            "One moment. ",
        ),
    ];
    for (format, text, content) in cases {
        for cut in 0..=text.len() {
            if !text.is_char_boundary(cut) {
                continue;
            }
            let (sent, held) = split_at(format, text, cut);
            assert_eq!(sent.trim(), content.trim(), "{format:?} cut at {cut}");
            let parsed = parse(format, &held, &offered());
            assert!(
                matches!(&parsed, Parsed::Calls { calls, .. } if calls.len() == 1),
                "{format:?} cut at {cut}: {held:?} -> {parsed:?}"
            );
            assert_eq!(format!("{sent}{held}"), text);
        }
    }
    // Plain text streams through; text that only looks like a marker's start is released
    // once it is not one.
    for cut in 0..=12 {
        let text = "a <tool_ca b";
        let (sent, held) = split_at(Hermes, text, cut);
        assert_eq!(format!("{sent}{held}"), text);
        assert_eq!(held, "");
    }
    // After content, a JSON object is an answer, not a Llama call.
    let (sent, held) = split_at(Llama3Json, "Here: {\"a\": 1}", 6);
    assert_eq!((sent.as_str(), held.as_str()), ("Here: {\"a\": 1}", ""));
}
