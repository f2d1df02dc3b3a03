//! The output side of tool calling: a finished generation split into content and calls
//! (`api::openai::tool_calls` parses), and the output filter applied to the calls'
//! arguments so that a redaction keeps them valid JSON (see `docs/api.md`, "Tool calls
//! and the output filter").

use airlock_engine::ToolFormat;
use airlock_policy::FilterSet;
use serde_json::Value;

pub use crate::api::openai::tool_calls::ToolCall;
use crate::api::openai::tool_calls::{self, Parsed};

/// A finished chat answer: the text before any calls, and the calls.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Answer {
    pub content: String,
    pub calls: Vec<ToolCall>,
}

/// Splits `text` into content and calls when tools were offered (`format` set). Output
/// that starts a call but is not one (not JSON, a tool not offered) is the content, as
/// vLLM answers it; the reason is logged on the request's span (`tool_call_unparsed`) and
/// counted (`airlock_tool_calls_unparsed`, by model and reason).
pub fn split(
    model: &str,
    format: Option<ToolFormat>,
    offered: &[String],
    text: String,
    span: &tracing::Span,
) -> Answer {
    let Some(format) = format else {
        return Answer {
            content: text,
            calls: Vec::new(),
        };
    };
    match tool_calls::parse(format, &text, offered) {
        Parsed::Text => Answer {
            content: text,
            calls: Vec::new(),
        },
        Parsed::Malformed(why) => {
            crate::metrics::global().tool_call_unparsed(model, why);
            span.in_scope(|| {
                tracing::warn!(
                    tool_call_unparsed = why,
                    "model output began a tool call that could not be passed on; sent as content"
                );
            });
            Answer {
                content: text,
                calls: Vec::new(),
            }
        }
        Parsed::Calls { content, calls } => Answer {
            content: content.unwrap_or_default(),
            calls,
        },
    }
}

/// What the output filter made of the calls.
#[derive(Debug, Default)]
pub struct Filtered {
    /// The deny rule that fired: the response is refused (`content_filter` in a stream).
    pub denied: Option<String>,
    /// Redactions per rule, for the metrics and the completion record.
    pub redactions: Vec<(String, usize)>,
}

/// Filters every call's arguments. Deny rules see the arguments' whole JSON text. Redact
/// rules are applied inside JSON strings only (keys and values), so the arguments stay
/// valid JSON; a redact match that is not inside one string (it spans a key and its
/// value, or sits in a number) cannot be redacted without breaking the JSON, so it denies
/// under that rule's id. Names are offered tool names and are not filtered.
pub fn filter(filter: &FilterSet, calls: &mut [ToolCall]) -> Filtered {
    let mut out = Filtered::default();
    for call in calls {
        let whole = filter.check_output_counted(&call.arguments);
        if whole.denied.is_some() {
            out.denied = whole.denied;
            return out;
        }
        if whole.redactions.is_empty() {
            continue;
        }
        let Ok(mut value) = serde_json::from_str::<Value>(&call.arguments) else {
            out.denied = whole.redactions.first().map(|(rule, _)| rule.clone());
            return out;
        };
        redact_strings(filter, &mut value, &mut out.redactions);
        let redacted = value.to_string();
        let again = filter.check_output_counted(&redacted);
        if let Some((rule, _)) = again.redactions.first() {
            out.denied = Some(rule.clone());
            return out;
        }
        call.arguments = redacted;
    }
    out
}

fn redact_strings(filter: &FilterSet, value: &mut Value, notes: &mut Vec<(String, usize)>) {
    match value {
        Value::String(s) => *s = redact(filter, s, notes),
        Value::Array(items) => items
            .iter_mut()
            .for_each(|v| redact_strings(filter, v, notes)),
        Value::Object(map) => {
            for (key, mut v) in std::mem::take(map) {
                redact_strings(filter, &mut v, notes);
                map.insert(redact(filter, &key, notes), v);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

fn redact(filter: &FilterSet, s: &str, notes: &mut Vec<(String, usize)>) -> String {
    let checked = filter.check_output_counted(s);
    for (rule, count) in checked.redactions {
        match notes.iter_mut().find(|(r, _)| *r == rule) {
            Some((_, c)) => *c += count,
            None => notes.push((rule, count)),
        }
    }
    checked.text
}

/// The bytes the completion record's `output_digest` covers when the answer has calls:
/// the content, then per call a newline, its name, a newline and its arguments as sent.
pub fn digest_bytes(answer: &Answer) -> String {
    let mut out = answer.content.clone();
    for call in &answer.calls {
        out.push('\n');
        out.push_str(&call.name);
        out.push('\n');
        out.push_str(&call.arguments);
    }
    out
}

#[cfg(test)]
mod tests {
    use airlock_policy::filter::{Action, FilterSpec, Matcher, RuleSpec};

    use super::*;

    fn call(args: &str) -> ToolCall {
        ToolCall {
            id: "call_1".into(),
            name: "f".into(),
            arguments: args.into(),
        }
    }

    fn rule(id: &str, action: Action, matcher: Matcher) -> RuleSpec {
        RuleSpec {
            id: id.into(),
            action,
            matcher,
            case_insensitive: false,
        }
    }

    #[test]
    fn redaction_stays_inside_strings_and_deny_sees_the_whole_text() {
        let set = FilterSet::compile(&FilterSpec {
            rules: vec![
                rule(
                    "ssn",
                    Action::Redact,
                    Matcher::Regex(r"\d{3}-\d{2}-\d{4}".into()),
                ),
                rule("drop", Action::Deny, Matcher::Literal("DROP TABLE".into())),
            ],
            ..FilterSpec::default()
        })
        .expect("compiles");
        let mut calls = vec![call(r#"{"note":"id 123-45-6789 ok","n":1}"#)];
        let out = filter(&set, &mut calls);
        assert_eq!(out.denied, None);
        assert_eq!(out.redactions, vec![("ssn".to_owned(), 1)]);
        let value: Value = serde_json::from_str(&calls[0].arguments).expect("still JSON");
        assert!(!value["note"].as_str().expect("string").contains("6789"));
        let mut calls = vec![call(r#"{"q":"DROP TABLE users"}"#)];
        assert_eq!(filter(&set, &mut calls).denied.as_deref(), Some("drop"));
    }
}
