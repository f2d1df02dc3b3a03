//! Phase `prompt_filter`: the tenant's input rules on the prompt. Redactions rewrite it
//! (before the token count, so limits and audit see exactly what the engine will); a deny
//! refuses the request naming the rule, never the matched text.

use airlock_engine::Prompt;
use airlock_policy::Tenant;

use super::generate::Job;
use crate::access::PolicyError;
use crate::api::request::Inference;
use crate::audit::trail::Trail;

/// Applies the tenant's input filter to `job`'s prompt. Redaction counts go to the metrics
/// and, by rule id, into the admission record.
///
/// `/tokenize` text is filtered like a prompt (a deny refuses it, a redaction changes the
/// tokens returned): it answers with what the model would be given, so a count made there
/// matches what a generation is charged. `/detokenize` is not: its token ids are the
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
    let check = |text: &mut String| -> Result<(), PolicyError> {
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
    match prompt {
        Prompt::Text(t) => check(t),
        Prompt::Chat(messages) => messages.iter_mut().try_for_each(|m| check(&mut m.content)),
        // Token ids cannot be inspected: a filtered tenant may not send them.
        Prompt::TokenIds(_) => Err(PolicyError::ContentPolicy {
            rule_id: "token_ids_not_inspectable".into(),
        }),
    }
}
