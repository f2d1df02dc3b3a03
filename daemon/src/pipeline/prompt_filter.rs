//! Phase `prompt_filter`: the tenant's input rules on the prompt. Redactions rewrite it
//! (before the token count, so limits and audit see exactly what the engine will); a deny
//! refuses the request naming the rule, never the matched text.
//!
//! A chat's tools are prompt text too (the template renders them for the model): every
//! string in the tool definitions (names, descriptions, parameter schemas, keys included)
//! and in the assistant messages' calls (name, argument keys and values) is filtered like
//! a message, redactions staying inside their string so the JSON stays valid; deny rules
//! also see each definition's and each call's whole JSON text. Tool results are `tool`
//! messages, filtered as every message is.

use airlock_engine::Prompt;
use airlock_policy::{FilterSet, Tenant};
use serde_json::Value;

use super::generate::Job;
use crate::access::PolicyError;
use crate::api::request::Inference;
use crate::audit::trail::Trail;

/// Applies the tenant's input filter to `job`'s prompt. Redaction counts go to the metrics
/// and, by rule id, into the admission record.
///
/// `/tokenize` text is filtered like a prompt (a deny refuses it, a redaction changes the
/// tokens returned): it answers with what the model would be given, so a count made there
/// matches what a generation is charged. `/v1/embeddings` inputs are filtered one by one,
/// like prompts (token-id inputs, like token-id prompts, only where no filter is set).
/// `/detokenize` is not: its token ids are the
/// client's own text, encoded, and no model output is involved.
pub fn apply(
    tenant: Option<&std::sync::Arc<Tenant>>,
    trail: Option<&Trail>,
    job: &mut Job,
) -> Result<(), PolicyError> {
    let Some(tenant) = tenant else {
        return Ok(());
    };
    if job.route == Inference::Detokenize {
        return Ok(());
    }
    let prompt = &mut job.prompt;
    let filter = &tenant.input_filter;
    if filter.is_empty() {
        return Ok(());
    }
    let mut check = |text: &mut String| -> Result<(), PolicyError> {
        let filtered = filter
            .check_input(text)
            .map_err(|d| PolicyError::ContentPolicy { rule_id: d.rule_id })?;
        if !filtered.redactions.is_empty() {
            tracing::info!(redactions = ?filtered.redactions, "prompt redacted");
            for (rule, count) in &filtered.redactions {
                crate::metrics::global().filter_action(rule, "redact", *count as u64);
                // Rule ids and counts into the admission record (never the matched text).
                if let Some(trail) = trail {
                    trail.note_filter(rule, "redact", *count);
                }
            }
            let owned = filtered.text.into_owned();
            *text = owned;
        }
        Ok(())
    };
    if job.route == Inference::Embeddings {
        // Every input is a prompt of its own: each is filtered, a deny in any refuses all.
        return job.inputs.iter_mut().try_for_each(|input| match input {
            Prompt::Text(t) => check(t),
            _ => Err(PolicyError::ContentPolicy {
                rule_id: "token_ids_not_inspectable".into(),
            }),
        });
    }
    match prompt {
        Prompt::Text(t) => check(t),
        Prompt::Chat(messages, tools) => {
            for tool in tools.iter_mut() {
                deny_whole(filter, tool)?;
                check_json(tool, &mut check)?;
            }
            for m in messages.iter_mut() {
                check(&mut m.content)?;
                for call in &mut m.tool_calls {
                    deny_whole(filter, &call.arguments)?;
                    check(&mut call.name)?;
                    check_json(&mut call.arguments, &mut check)?;
                }
            }
            Ok(())
        }
        // Token ids cannot be inspected: a filtered tenant may not send them.
        Prompt::TokenIds(_) => Err(PolicyError::ContentPolicy {
            rule_id: "token_ids_not_inspectable".into(),
        }),
    }
}

/// Deny rules over a JSON value's whole text (a match across strings is still a match).
fn deny_whole(filter: &FilterSet, value: &Value) -> Result<(), PolicyError> {
    match filter.check_input(&value.to_string()) {
        Ok(_) => Ok(()),
        Err(d) => Err(PolicyError::ContentPolicy { rule_id: d.rule_id }),
    }
}

/// Runs `check` on every string in `value`, object keys included.
fn check_json(
    value: &mut Value,
    check: &mut impl FnMut(&mut String) -> Result<(), PolicyError>,
) -> Result<(), PolicyError> {
    match value {
        Value::String(s) => check(s),
        Value::Array(items) => items.iter_mut().try_for_each(|v| check_json(v, check)),
        Value::Object(map) => {
            for (key, mut v) in std::mem::take(map) {
                let mut key = key;
                check(&mut key)?;
                check_json(&mut v, check)?;
                map.insert(key, v);
            }
            Ok(())
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}
