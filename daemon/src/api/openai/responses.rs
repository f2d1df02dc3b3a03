//! `POST /v1/responses`, the stateless subset (as Ollama and llama.cpp serve it): the
//! request is rewritten into a chat completion request ([`to_chat`]) and from there takes
//! the chat route's path unchanged (validation, tools, filters, limits, audit); the answer
//! is written back as a `response` object ([`response_object`]).
//!
//! Nothing is stored: `previous_response_id` and `conversation` are refused by name, and
//! `store: true` is accepted and ignored (as llama.cpp does; the audit log is the record).

pub mod events;

use airlock_engine::Usage;
use serde_json::{Map, Value, json};

use super::chat::{MAX_CONTENT_PARTS, MAX_MESSAGES, MAX_TOOLS, MAX_TOOLS_BYTES, json_fits};
use super::tool_calls::ToolCall;
use crate::api::error::ApiError;

/// Accepted and ignored: they carry no instruction for the model. (`metadata`, `user`,
/// `parallel_tool_calls` and `tool_choice` are passed on to the chat checks.)
const IGNORED: [&str; 8] = [
    "store",
    "service_tier",
    "stream_options",
    "prompt_cache_key",
    "safety_identifier",
    "truncation",
    "include",
    "background",
];

/// The Responses request rewritten as a chat completion request, and the fields the
/// response object echoes.
#[derive(Debug)]
pub struct Translated {
    pub chat: Value,
    pub echo: Map<String, Value>,
}

/// Rewrites a Responses request body into a chat completion body. Refusals name the
/// Responses field.
pub fn to_chat(body: &Value) -> Result<Translated, ApiError> {
    let Value::Object(req) = body else {
        return Err(ApiError::invalid("body", "the body must be a JSON object"));
    };
    let mut chat = Map::new();
    for (key, value) in req {
        match key.as_str() {
            "model"
            | "stream"
            | "temperature"
            | "top_p"
            | "user"
            | "metadata"
            | "parallel_tool_calls" => {
                chat.insert(key.clone(), value.clone());
            }
            "tool_choice" => {
                chat.insert(key.clone(), chat_tool_choice(value));
            }
            "input" | "instructions" | "tools" | "text" | "max_output_tokens" => {}
            "previous_response_id" | "conversation" if value.is_null() => {}
            "previous_response_id" | "conversation" => {
                return Err(ApiError::unsupported(
                    key.clone(),
                    format!(
                        "{key} needs stored responses, which this server does not keep; send \
                         the whole conversation in `input`"
                    ),
                ));
            }
            "background" if value.as_bool() == Some(true) => {
                return Err(ApiError::unsupported(
                    "background",
                    "background responses are not supported",
                ));
            }
            k if IGNORED.contains(&k) => {}
            _ if value.is_null() => {}
            other => {
                return Err(ApiError::unsupported(
                    other.to_owned(),
                    format!("`{other}` is not supported on /v1/responses"),
                ));
            }
        }
    }
    if let Some(max) = req.get("max_output_tokens").filter(|v| !v.is_null()) {
        chat.insert("max_completion_tokens".into(), max.clone());
    }
    if let Some(format) = text_format(req.get("text"))? {
        chat.insert("response_format".into(), format);
    }
    let mut messages = Vec::new();
    match req.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(_) => {
            return Err(ApiError::invalid(
                "instructions",
                "instructions must be a string",
            ));
        }
    }
    input_messages(req.get("input"), &mut messages)?;
    chat.insert("messages".into(), Value::Array(messages));
    let tools = match req.get("tools") {
        None | Some(Value::Null) => None,
        Some(tools) => Some(chat_tools(tools)?),
    };
    if let Some(tools) = &tools {
        chat.insert("tools".into(), Value::Array(tools.clone()));
    }
    let echo = echo(req);
    Ok(Translated {
        chat: Value::Object(chat),
        echo,
    })
}

/// A refusal from the chat checks, naming the Responses field it came from
/// (`max_output_tokens`, `tools[i].name`, `input`) rather than its chat counterpart.
pub fn rename_param(error: ApiError) -> ApiError {
    match error {
        ApiError::InvalidRequest {
            message,
            param: Some(param),
        } => ApiError::InvalidRequest {
            message,
            param: Some(responses_param(&param)),
        },
        ApiError::Unsupported { message, param } => ApiError::Unsupported {
            message,
            param: responses_param(&param),
        },
        other => other,
    }
}

fn responses_param(chat: &str) -> String {
    if chat == "max_completion_tokens" {
        return "max_output_tokens".into();
    }
    if let Some(rest) = chat.strip_prefix("response_format") {
        // `text.format` flattens `json_schema`'s fields into the format object.
        let rest = rest.strip_prefix(".json_schema").unwrap_or(rest);
        return format!("text.format{rest}");
    }
    if chat.starts_with("messages") {
        // Item indexes shift with `instructions` and merged calls: the field as a whole.
        return "input".into();
    }
    if let Some(rest) = chat.strip_prefix("tools[")
        && let Some((index, field)) = rest.split_once("].function.")
    {
        return format!("tools[{index}].{field}");
    }
    chat.to_owned()
}

/// `text`: `{"format": …}` with `type` `text`, `json_object` or `json_schema` (`name`,
/// `schema`, `strict`, `description` beside `type`, as the Responses API flattens them):
/// rewritten into the chat `response_format`, whose checks then apply (their refusals name
/// `text.format`).
fn text_format(text: Option<&Value>) -> Result<Option<Value>, ApiError> {
    let Some(text) = text.filter(|t| !t.is_null()) else {
        return Ok(None);
    };
    let Value::Object(text) = text else {
        return Err(ApiError::invalid("text", "text must be an object"));
    };
    let mut format = None;
    for (key, value) in text {
        match key.as_str() {
            "format" if value.is_null() => {}
            "format" => {
                let Value::Object(f) = value else {
                    return Err(ApiError::invalid(
                        "text.format",
                        "text.format must be an object",
                    ));
                };
                format = Some(match f.get("type").and_then(Value::as_str) {
                    Some("json_schema") => {
                        let mut spec = f.clone();
                        spec.remove("type");
                        json!({"type": "json_schema", "json_schema": spec})
                    }
                    _ => value.clone(),
                });
            }
            // OpenAI's output-length hint: no effect on what is allowed.
            "verbosity" => {}
            _ if value.is_null() => {}
            other => {
                return Err(ApiError::unsupported(
                    format!("text.{other}"),
                    format!("text.{other} is not supported"),
                ));
            }
        }
    }
    Ok(format)
}

/// The Responses API's named `tool_choice` (`{"type": "function", "name": …}`) in the chat
/// shape (`{"type": "function", "function": {"name": …}}`); other values as they are.
fn chat_tool_choice(choice: &Value) -> Value {
    match (
        choice.get("type").and_then(Value::as_str),
        choice.get("name"),
    ) {
        (Some("function"), Some(name)) => json!({"type": "function", "function": {"name": name}}),
        _ => choice.clone(),
    }
}

/// `input` (a string, or an array of items) as chat messages, after `instructions`.
fn input_messages(input: Option<&Value>, messages: &mut Vec<Value>) -> Result<(), ApiError> {
    let items = match input {
        Some(Value::String(s)) => {
            messages.push(json!({"role": "user", "content": s}));
            return Ok(());
        }
        Some(Value::Array(items)) => items,
        None | Some(Value::Null) => {
            return Err(ApiError::invalid("input", "input is required"));
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "input",
                "input must be a string or an array of input items",
            ));
        }
    };
    if items.len() > MAX_MESSAGES {
        return Err(ApiError::invalid(
            "input",
            format!(
                "at most {MAX_MESSAGES} input items are allowed, got {}",
                items.len()
            ),
        ));
    }
    for (i, item) in items.iter().enumerate() {
        let param = format!("input[{i}]");
        let kind = item.get("type").and_then(Value::as_str);
        match kind {
            None | Some("message") => messages.push(message(&param, item)?),
            Some("function_call") => {
                let field = |name: &str| {
                    item.get(name).and_then(Value::as_str).ok_or_else(|| {
                        ApiError::invalid(
                            format!("{param}.{name}"),
                            format!("a function_call item needs a string `{name}`"),
                        )
                    })
                };
                let call = json!({
                    "id": field("call_id")?,
                    "type": "function",
                    "function": {"name": field("name")?, "arguments": field("arguments")?},
                });
                // Consecutive calls (and a message the calls follow) are one assistant turn.
                match messages.last_mut() {
                    Some(Value::Object(last))
                        if last.get("role").and_then(Value::as_str) == Some("assistant") =>
                    {
                        let calls = last
                            .entry("tool_calls")
                            .or_insert_with(|| Value::Array(Vec::new()));
                        if let Value::Array(calls) = calls {
                            calls.push(call);
                        }
                    }
                    _ => messages
                        .push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
                }
            }
            Some("function_call_output") => {
                let call_id = item.get("call_id").and_then(Value::as_str).ok_or_else(|| {
                    ApiError::invalid(
                        format!("{param}.call_id"),
                        "a function_call_output item needs a string `call_id`",
                    )
                })?;
                let output = match item.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(parts)) => text_parts(&format!("{param}.output"), parts)?,
                    _ => {
                        return Err(ApiError::invalid(
                            format!("{param}.output"),
                            "output must be a string or an array of input_text parts",
                        ));
                    }
                };
                messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
            }
            Some(other) => {
                return Err(ApiError::unsupported(
                    format!("{param}.type"),
                    format!(
                        "input items of type `{other}` are not supported; only message, \
                         function_call and function_call_output"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A `{"role", "content"}` input item as a chat message.
fn message(param: &str, item: &Value) -> Result<Value, ApiError> {
    let role = match item.get("role").and_then(Value::as_str) {
        Some(role @ ("user" | "assistant" | "system" | "developer")) => role,
        _ => {
            return Err(ApiError::invalid(
                format!("{param}.role"),
                "role must be user, assistant, system or developer",
            ));
        }
    };
    let content_param = format!("{param}.content");
    let content = match item.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => text_parts(&content_param, parts)?,
        _ => {
            return Err(ApiError::invalid(
                content_param,
                "content must be a string or an array of content parts",
            ));
        }
    };
    Ok(json!({"role": role, "content": content}))
}

/// Joins `input_text` (and, in earlier assistant turns sent back, `output_text`) parts;
/// refuses images, files and audio by name.
fn text_parts(param: &str, parts: &[Value]) -> Result<String, ApiError> {
    if parts.len() > MAX_CONTENT_PARTS {
        return Err(ApiError::invalid(
            param,
            format!(
                "at most {MAX_CONTENT_PARTS} content parts are allowed, got {}",
                parts.len()
            ),
        ));
    }
    let mut text = String::new();
    for (j, part) in parts.iter().enumerate() {
        let part_param = format!("{param}[{j}]");
        match part.get("type").and_then(Value::as_str) {
            Some("input_text" | "output_text") => match part.get("text").and_then(Value::as_str) {
                Some(t) => text.push_str(t),
                None => {
                    return Err(ApiError::invalid(
                        format!("{part_param}.text"),
                        "a text part needs a string `text`",
                    ));
                }
            },
            Some(kind @ ("input_image" | "input_file" | "input_audio")) => {
                return Err(ApiError::unsupported(
                    part_param,
                    format!("content parts of type `{kind}` are not supported; only text"),
                ));
            }
            _ => {
                return Err(ApiError::invalid(
                    format!("{part_param}.type"),
                    "content parts must be of type input_text or output_text",
                ));
            }
        }
    }
    Ok(text)
}

/// Responses tools (flat `{"type": "function", "name", …}`) as chat tools (nested under
/// `function`). Built-in tools (`web_search`, `file_search`, …) are refused by name.
fn chat_tools(tools: &Value) -> Result<Vec<Value>, ApiError> {
    let Value::Array(list) = tools else {
        return Err(ApiError::invalid("tools", "tools must be an array"));
    };
    if list.len() > MAX_TOOLS {
        return Err(ApiError::invalid(
            "tools",
            format!("at most {MAX_TOOLS} tools are allowed, got {}", list.len()),
        ));
    }
    if !json_fits(tools, MAX_TOOLS_BYTES) {
        return Err(ApiError::invalid(
            "tools",
            format!("tools may take at most {MAX_TOOLS_BYTES} bytes as JSON"),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, tool)| {
            match tool.get("type").and_then(Value::as_str) {
                Some("function") => {}
                Some(other) => {
                    return Err(ApiError::unsupported(
                        format!("tools[{i}].type"),
                        format!("built-in tools (`{other}`) are not supported; only function"),
                    ));
                }
                None => {
                    return Err(ApiError::invalid(
                        format!("tools[{i}].type"),
                        "a tool needs a string `type`",
                    ));
                }
            }
            let name = tool.get("name").and_then(Value::as_str);
            if name.is_none_or(str::is_empty) {
                return Err(ApiError::invalid(
                    format!("tools[{i}].name"),
                    "a function tool needs a non-empty string name",
                ));
            }
            let mut function = Map::new();
            for key in ["name", "description", "parameters", "strict"] {
                if let Some(v) = tool.get(key).filter(|v| !v.is_null()) {
                    function.insert(key.into(), v.clone());
                }
            }
            Ok(json!({"type": "function", "function": function}))
        })
        .collect()
}

/// The request fields a response object repeats, with OpenAI's defaults.
fn echo(req: &Map<String, Value>) -> Map<String, Value> {
    let get = |key: &str, default: Value| {
        req.get(key)
            .filter(|v| !v.is_null())
            .cloned()
            .unwrap_or(default)
    };
    let mut echo = Map::new();
    echo.insert("instructions".into(), get("instructions", Value::Null));
    echo.insert(
        "max_output_tokens".into(),
        get("max_output_tokens", Value::Null),
    );
    echo.insert("temperature".into(), get("temperature", json!(1.0)));
    echo.insert("top_p".into(), get("top_p", json!(1.0)));
    echo.insert("tools".into(), get("tools", json!([])));
    echo.insert("tool_choice".into(), get("tool_choice", json!("auto")));
    echo.insert(
        "text".into(),
        get("text", json!({"format": {"type": "text"}})),
    );
    echo.insert(
        "parallel_tool_calls".into(),
        get("parallel_tool_calls", json!(true)),
    );
    echo.insert("metadata".into(), get("metadata", json!({})));
    echo.insert("user".into(), get("user", Value::Null));
    // Nothing is kept, whatever was asked.
    echo.insert("store".into(), json!(false));
    echo
}

/// A fresh `resp_…` id.
pub fn response_id() -> String {
    format!("resp_{}", crate::api::random_uuid().simple())
}

pub fn item_id(prefix: &str) -> String {
    format!("{prefix}_{}", crate::api::random_uuid().simple())
}

/// What a finished generation contributes to a response object.
#[derive(Debug)]
pub struct Answer<'a> {
    pub id: &'a str,
    pub created_at: u64,
    pub model: &'a str,
    pub text: &'a str,
    /// Length-limited: `status: "incomplete"`.
    pub length_limited: bool,
    pub calls: &'a [ToolCall],
    pub usage: Usage,
}

/// The `output_text` message item.
pub fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "type": "message",
        "id": id,
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    })
}

/// A `function_call` output item.
pub fn call_item(call: &ToolCall) -> Value {
    json!({
        "type": "function_call",
        "id": item_id("fc"),
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
        "status": "completed",
    })
}

/// The `response` object of a finished generation.
pub fn response_object(answer: &Answer<'_>, echo: &Map<String, Value>) -> Value {
    let mut output = Vec::new();
    if answer.calls.is_empty() || !answer.text.is_empty() {
        output.push(message_item(&item_id("msg"), answer.text, "completed"));
    }
    output.extend(answer.calls.iter().map(call_item));
    let ending = if answer.length_limited {
        Ending::Incomplete("max_output_tokens")
    } else {
        Ending::Completed
    };
    object(
        &Head {
            id: answer.id,
            created_at: answer.created_at,
            model: answer.model,
        },
        ending,
        output,
        Some(answer.usage),
        echo,
    )
}

/// What every response object of one request shares.
#[derive(Clone, Copy, Debug)]
pub struct Head<'a> {
    pub id: &'a str,
    pub created_at: u64,
    pub model: &'a str,
}

/// A response object's `status` (and `incomplete_details`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    InProgress,
    Completed,
    /// `incomplete_details.reason`: `max_output_tokens` or `content_filter`.
    Incomplete(&'static str),
}

/// A `response` object; `usage` once known (`input_tokens_details.cached_tokens`: the prompt
/// tokens a cached prefix served, as for chat).
pub fn object(
    head: &Head<'_>,
    ending: Ending,
    output: Vec<Value>,
    usage: Option<Usage>,
    echo: &Map<String, Value>,
) -> Value {
    let (status, incomplete) = match ending {
        Ending::InProgress => ("in_progress", Value::Null),
        Ending::Completed => ("completed", Value::Null),
        Ending::Incomplete(reason) => ("incomplete", json!({ "reason": reason })),
    };
    let usage = usage.map_or(Value::Null, |u| {
        json!({
            "input_tokens": u.prompt_tokens,
            "input_tokens_details": {"cached_tokens": u.cached_tokens, "cache_write_tokens": 0},
            "output_tokens": u.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u.total_tokens(),
        })
    });
    let mut object = Map::new();
    object.insert("id".into(), json!(head.id));
    object.insert("object".into(), json!("response"));
    object.insert("created_at".into(), json!(head.created_at));
    object.insert("status".into(), json!(status));
    object.insert("error".into(), Value::Null);
    object.insert("incomplete_details".into(), incomplete);
    object.insert("model".into(), json!(head.model));
    object.insert("output".into(), Value::Array(output));
    object.insert("usage".into(), usage);
    for (key, value) in echo {
        object.insert(key.clone(), value.clone());
    }
    Value::Object(object)
}

#[cfg(test)]
mod tests;
