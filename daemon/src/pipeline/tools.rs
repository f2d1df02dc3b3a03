//! Phase `tools`: a chat request that offers tools is answered only by a model whose chat
//! template shows them to it and whose call format we parse (see `docs/api.md`, "Tool
//! calling"); one that asks for a grammar (structured output, a forced call) only by a
//! model that decodes under one. Anything else would be silent garbage, so it is refused
//! naming the model.

use airlock_engine::{ModelInfo, SamplingParams, ToolFormat};

use super::finish::Reply;
use crate::api::ApiError;

/// Sets the reply's tool-call format from the model's. Without offered tools: nothing to
/// do. A model the list does not know is left to the engine's own refusal (404).
pub fn resolve(
    models: &[ModelInfo],
    model: &str,
    params: &SamplingParams,
    reply: &mut Reply,
) -> Result<(), ApiError> {
    let Some(info) = models.iter().find(|m| m.id == model) else {
        return Ok(());
    };
    if let Some(grammar) = &params.grammar
        && !info.features.grammar
    {
        return Err(ApiError::invalid(
            grammar.param,
            format!(
                "model `{model}` cannot decode under a grammar, so it cannot guarantee this \
                 {}",
                if grammar.param == "tool_choice" {
                    "forced tool call"
                } else {
                    "output format"
                }
            ),
        ));
    }
    if reply.tool_names.is_empty() {
        return Ok(());
    }
    let format: ToolFormat = info.features.tools.ok_or_else(|| {
        ApiError::invalid(
            "tools",
            format!(
                "model `{model}` does not support tool calling: its chat template does not \
                 render `tools` in a format this server parses"
            ),
        )
    })?;
    reply.tool_format = Some(format);
    Ok(())
}
