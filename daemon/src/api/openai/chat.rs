//! `POST /v1/chat/completions`: the request's own fields and their conversion to a
//! [`Prompt::Chat`].

use airlock_engine::{ChatMessage, ChatToolCall, Grammar, GrammarSpec, Prompt, ToolFunction};
use serde::Deserialize;
use serde_json::Value;

use super::StreamOptions;
use crate::api::error::ApiError;

/// Most messages in one request. The body limit bounds their bytes; this bounds the work
/// the chat template does per request (it runs code from the model file once per message,
/// on an instruction budget sized for many times this).
pub const MAX_MESSAGES: usize = 1024;

/// Most content parts in one message.
pub const MAX_CONTENT_PARTS: usize = 256;

/// Most tools one request may declare (OpenAI's limit), and their total size as JSON (tool
/// schemas are rendered by the chat template, filtered and, once constrained decoding
/// arrives, compiled: work that grows with them).
pub const MAX_TOOLS: usize = 128;
pub const MAX_TOOLS_BYTES: usize = 256 * 1024;

/// Largest `response_format` (its JSON schema is compiled per request) as JSON.
pub const MAX_RESPONSE_FORMAT_BYTES: usize = 64 * 1024;

/// The chat-specific fields; sampling fields are read separately (`SamplingFields`).
/// Fields OpenAI defines that we do not act on are ignored, except those whose silent
/// omission would change the meaning of the answer (see [`ChatRequest::check_unsupported`]).
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<RawMessage>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u32>,
    pub tools: Option<Value>,
    /// `auto` (the default with tools), `none`, `required` or a named function (the last
    /// two decode under a grammar that only allows calls).
    pub tool_choice: Option<Value>,
    /// `false`: a forced call is exactly one call. Free (`auto`) answers are parsed for
    /// every call the model writes either way.
    pub parallel_tool_calls: Option<bool>,
    pub response_format: Option<Value>,
}

/// One message as sent. `content` is checked by hand to name the failing part precisely.
#[derive(Debug, Deserialize)]
pub struct RawMessage {
    pub role: String,
    pub content: Option<Value>,
    /// An assistant turn's calls, sent back in a multi-turn conversation.
    pub tool_calls: Option<Value>,
    /// A `tool` message: the call it answers.
    pub tool_call_id: Option<String>,
}

/// Whether `value`, serialized as JSON, fits in `limit` bytes. Stops serializing at the
/// limit.
pub fn json_fits(value: &Value, limit: usize) -> bool {
    struct Count {
        left: usize,
    }
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.left = self
                .left
                .checked_sub(buf.len())
                .ok_or_else(|| std::io::Error::other("over the limit"))?;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    serde_json::to_writer(&mut Count { left: limit }, value).is_ok()
}

impl ChatRequest {
    /// Refuses requests whose size would make the work per request unbounded: too many
    /// messages or content parts, too many or too large tools, an oversized
    /// `response_format`. Runs before anything else looks at those fields.
    pub fn check_bounds(&self) -> Result<(), ApiError> {
        if self.messages.len() > MAX_MESSAGES {
            return Err(ApiError::invalid(
                "messages",
                format!(
                    "at most {MAX_MESSAGES} messages are allowed, got {}",
                    self.messages.len()
                ),
            ));
        }
        for (i, m) in self.messages.iter().enumerate() {
            if let Some(Value::Array(parts)) = &m.content
                && parts.len() > MAX_CONTENT_PARTS
            {
                return Err(ApiError::invalid(
                    format!("messages[{i}].content"),
                    format!(
                        "at most {MAX_CONTENT_PARTS} content parts are allowed in a message, \
                         got {}",
                        parts.len()
                    ),
                ));
            }
        }
        if let Some(tools) = &self.tools {
            if let Value::Array(list) = tools
                && list.len() > MAX_TOOLS
            {
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
        }
        if let Some(format) = &self.response_format
            && !json_fits(format, MAX_RESPONSE_FORMAT_BYTES)
        {
            return Err(ApiError::invalid(
                "response_format",
                format!(
                    "response_format may take at most {MAX_RESPONSE_FORMAT_BYTES} bytes as JSON"
                ),
            ));
        }
        Ok(())
    }

    /// Refuses fields we cannot honour rather than answering as if they were absent.
    pub fn check_unsupported(&self) -> Result<(), ApiError> {
        self.check_tools()?;
        self.response_schema()?;
        Ok(())
    }

    /// `response_format`: `text` (or absent) → `None`; `json_object` → any object;
    /// `json_schema` → its `schema` (`{}`, any JSON value, when it has none). The schema
    /// is always enforced, `strict` or not: a grammar that holds only sometimes is no use
    /// to a parser.
    fn response_schema(&self) -> Result<Option<GrammarSpec>, ApiError> {
        let Some(format) = self.response_format.as_ref().filter(|f| !f.is_null()) else {
            return Ok(None);
        };
        if !format.is_object() {
            return Err(ApiError::invalid(
                "response_format",
                "response_format must be an object",
            ));
        }
        match format.get("type").and_then(Value::as_str) {
            Some("text") => Ok(None),
            Some("json_object") => Ok(Some(GrammarSpec::JsonObject)),
            Some("json_schema") => {
                let Some(spec) = format.get("json_schema").filter(|s| s.is_object()) else {
                    return Err(ApiError::invalid(
                        "response_format.json_schema",
                        "a json_schema response format needs a `json_schema` object",
                    ));
                };
                let name = spec.get("name").and_then(Value::as_str).unwrap_or_default();
                if !valid_schema_name(name) {
                    return Err(ApiError::invalid(
                        "response_format.json_schema.name",
                        "name must be 1 to 64 characters of a-z, A-Z, 0-9, _ and -",
                    ));
                }
                match spec.get("schema") {
                    None | Some(Value::Null) => Ok(Some(GrammarSpec::JsonSchema(Value::Object(
                        serde_json::Map::new(),
                    )))),
                    Some(schema @ (Value::Object(_) | Value::Bool(_))) => {
                        Ok(Some(GrammarSpec::JsonSchema(schema.clone())))
                    }
                    Some(_) => Err(ApiError::invalid(
                        "response_format.json_schema.schema",
                        "schema must be a JSON Schema object",
                    )),
                }
            }
            _ => Err(ApiError::invalid(
                "response_format.type",
                "response_format.type must be \"text\", \"json_object\" or \"json_schema\"",
            )),
        }
    }

    /// The grammar the output follows, if any: a forced call (`tool_choice` `required` or
    /// named) in the model's own tool-call format; a call or the `response_format` answer
    /// (`auto` with tools and a schema); the `response_format` answer alone.
    pub fn grammar(&self) -> Result<Option<Grammar>, ApiError> {
        let answer = self.response_schema()?;
        let parallel = self.parallel_tool_calls != Some(false);
        let forced = match &self.tool_choice {
            Some(Value::String(s)) if s == "required" => Some(self.tool_functions()),
            Some(Value::Object(choice)) => {
                let name = choice
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                Some(
                    self.tool_functions()
                        .into_iter()
                        .filter(|f| f.name == name)
                        .collect(),
                )
            }
            _ => None,
        };
        if let Some(functions) = forced {
            return Ok(Some(Grammar {
                param: "tool_choice",
                spec: GrammarSpec::ToolCalls {
                    functions,
                    parallel,
                    or_schema: None,
                },
            }));
        }
        let functions = self.tool_functions();
        let grammar = |spec| Grammar {
            param: "response_format",
            spec,
        };
        Ok(match answer {
            None => None,
            Some(spec) if functions.is_empty() => Some(grammar(spec)),
            Some(spec) => Some(grammar(GrammarSpec::ToolCalls {
                functions,
                parallel,
                or_schema: Some(match spec {
                    GrammarSpec::JsonSchema(schema) => schema,
                    _ => serde_json::json!({"type": "object"}),
                }),
            })),
        })
    }

    /// The offered tools as functions a forced call may name (a tool without
    /// `parameters` takes an empty object).
    fn tool_functions(&self) -> Vec<ToolFunction> {
        self.offered_tools()
            .iter()
            .filter_map(|t| {
                let name = t.pointer("/function/name").and_then(Value::as_str)?;
                let parameters = t
                    .pointer("/function/parameters")
                    .cloned()
                    .unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}}));
                Some(ToolFunction {
                    name: name.to_owned(),
                    parameters,
                })
            })
            .collect()
    }

    /// `tools` are function definitions with a name; `tool_choice` is one we honour.
    fn check_tools(&self) -> Result<(), ApiError> {
        let names: Vec<&str> = match &self.tools {
            Some(Value::Array(tools)) => tools
                .iter()
                .filter_map(|t| t.pointer("/function/name").and_then(Value::as_str))
                .collect(),
            _ => Vec::new(),
        };
        match &self.tool_choice {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s == "auto" || s == "none" => {}
            Some(Value::String(s)) if s == "required" => {
                if names.is_empty() {
                    return Err(ApiError::invalid(
                        "tool_choice",
                        "tool_choice \"required\" needs at least one tool in `tools`",
                    ));
                }
            }
            Some(Value::Object(choice)) => {
                if choice.get("type").and_then(Value::as_str) != Some("function") {
                    return Err(ApiError::invalid(
                        "tool_choice.type",
                        "a named tool_choice must have type \"function\"",
                    ));
                }
                let name = choice
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str);
                match name {
                    Some(name) if names.contains(&name) => {}
                    Some(name) => {
                        return Err(ApiError::invalid(
                            "tool_choice.function.name",
                            format!("tool_choice names `{name}`, which is not in `tools`"),
                        ));
                    }
                    None => {
                        return Err(ApiError::invalid(
                            "tool_choice.function.name",
                            "a named tool_choice needs function.name",
                        ));
                    }
                }
            }
            Some(_) => {
                return Err(ApiError::invalid(
                    "tool_choice",
                    "tool_choice must be \"auto\", \"none\", \"required\" or a named function",
                ));
            }
        }
        let tools = match &self.tools {
            None | Some(Value::Null) => return Ok(()),
            Some(Value::Array(tools)) => tools,
            Some(_) => return Err(ApiError::invalid("tools", "tools must be an array")),
        };
        for (i, tool) in tools.iter().enumerate() {
            if tool.get("type").and_then(Value::as_str) != Some("function") {
                return Err(ApiError::invalid(
                    format!("tools[{i}].type"),
                    "only tools of type \"function\" are supported",
                ));
            }
            let name = tool.pointer("/function/name").and_then(Value::as_str);
            if name.is_none_or(str::is_empty) {
                return Err(ApiError::invalid(
                    format!("tools[{i}].function.name"),
                    "a function tool needs a non-empty string name",
                ));
            }
            if let Some(params) = tool.pointer("/function/parameters")
                && !params.is_object()
            {
                return Err(ApiError::invalid(
                    format!("tools[{i}].function.parameters"),
                    "parameters must be a JSON schema object",
                ));
            }
        }
        Ok(())
    }

    /// The tools the model is offered: none with `tool_choice: "none"` (as OpenAI: the
    /// model must not call, so it is not told it could). Run after [`Self::check_unsupported`].
    pub fn offered_tools(&self) -> Vec<Value> {
        if self.tool_choice.as_ref().and_then(Value::as_str) == Some("none") {
            return Vec::new();
        }
        match &self.tools {
            Some(Value::Array(tools)) => tools.clone(),
            _ => Vec::new(),
        }
    }

    /// The messages as the engine's chat template takes them.
    pub fn prompt(&self) -> Result<Prompt, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid(
                "messages",
                "messages must contain at least one message",
            ));
        }
        let messages = self
            .messages
            .iter()
            .enumerate()
            .map(|(i, m)| convert_message(i, m))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Prompt::Chat(messages, self.offered_tools()))
    }
}

/// OpenAI's rule for a response format's `name`.
fn valid_schema_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn convert_message(i: usize, message: &RawMessage) -> Result<ChatMessage, ApiError> {
    let role = match message.role.as_str() {
        // `developer` is OpenAI's newer name for `system`; chat templates only know `system`.
        "system" | "developer" => "system",
        "user" => "user",
        "assistant" => "assistant",
        "tool" => "tool",
        other => {
            return Err(ApiError::invalid(
                format!("messages[{i}].role"),
                format!(
                    "unknown role `{other}`; expected system, developer, user, assistant or tool"
                ),
            ));
        }
    };
    let tool_calls = match (&message.tool_calls, role) {
        (None | Some(Value::Null), _) => Vec::new(),
        (Some(Value::Array(calls)), "assistant") => calls
            .iter()
            .enumerate()
            .map(|(j, c)| tool_call(&format!("messages[{i}].tool_calls[{j}]"), c))
            .collect::<Result<_, _>>()?,
        (Some(_), _) => {
            return Err(ApiError::invalid(
                format!("messages[{i}].tool_calls"),
                "tool_calls must be an array, on an assistant message",
            ));
        }
    };
    let tool_call_id = match role {
        "tool" => Some(message.tool_call_id.clone().ok_or_else(|| {
            ApiError::invalid(
                format!("messages[{i}].tool_call_id"),
                "a tool message needs the tool_call_id it answers",
            )
        })?),
        _ => None,
    };
    let param = format!("messages[{i}].content");
    let content = match &message.content {
        Some(Value::String(s)) => s.clone(),
        // An assistant turn that only called tools has no content.
        None | Some(Value::Null) if role == "assistant" => String::new(),
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                param,
                format!("a {role} message needs content"),
            ));
        }
        Some(Value::Array(parts)) => text_parts(&param, parts)?,
        Some(_) => {
            return Err(ApiError::invalid(
                param.clone(),
                format!("{param} must be a string or an array of content parts"),
            ));
        }
    };
    Ok(ChatMessage {
        role: role.to_owned(),
        content,
        tool_calls,
        tool_call_id,
    })
}

/// One `{"id", "type": "function", "function": {"name", "arguments"}}` of an assistant
/// message. `arguments` (a JSON string on the wire) reaches the template as a mapping when
/// it parses as an object, as transformers' templates expect (they `tojson` it).
fn tool_call(param: &str, call: &Value) -> Result<ChatToolCall, ApiError> {
    let field = |name: &str| call.pointer(name).and_then(Value::as_str);
    let name = field("/function/name").ok_or_else(|| {
        ApiError::invalid(
            format!("{param}.function.name"),
            "a tool call needs a string function name",
        )
    })?;
    let arguments = match field("/function/arguments") {
        None => Value::Object(serde_json::Map::new()),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(object @ Value::Object(_)) => object,
            _ => Value::String(text.to_owned()),
        },
    };
    Ok(ChatToolCall {
        id: field("/id").unwrap_or_default().to_owned(),
        name: name.to_owned(),
        arguments,
    })
}

/// Joins `{"type":"text","text":…}` parts; refuses images, audio and files by name.
fn text_parts(param: &str, parts: &[Value]) -> Result<String, ApiError> {
    let mut text = String::new();
    for (j, part) in parts.iter().enumerate() {
        let part_param = format!("{param}[{j}]");
        let kind = part.get("type").and_then(Value::as_str);
        match kind {
            Some("text") => match part.get("text").and_then(Value::as_str) {
                Some(t) => text.push_str(t),
                None => {
                    return Err(ApiError::invalid(
                        format!("{part_param}.text"),
                        format!("{part_param}.text must be a string"),
                    ));
                }
            },
            Some(kind @ ("image_url" | "input_audio" | "file" | "image")) => {
                return Err(ApiError::unsupported(
                    part_param,
                    format!("content parts of type `{kind}` are not supported; only text"),
                ));
            }
            Some(other) => {
                return Err(ApiError::invalid(
                    format!("{part_param}.type"),
                    format!("unknown content part type `{other}`"),
                ));
            }
            None => {
                return Err(ApiError::invalid(
                    format!("{part_param}.type"),
                    format!("{part_param} needs a string `type`"),
                ));
            }
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn request(v: Value) -> ChatRequest {
        serde_json::from_value(v).expect("parses")
    }

    #[test]
    fn converts_string_and_part_contents() {
        let req = request(json!({
            "model": "m",
            "messages": [
                {"role": "developer", "content": "sys"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": null}
            ]
        }));
        let Prompt::Chat(messages, _) = req.prompt().expect("valid") else {
            panic!("chat prompt")
        };
        assert_eq!(
            messages[0],
            ChatMessage {
                role: "system".into(),
                content: "sys".into(),
                ..ChatMessage::default()
            }
        );
        assert_eq!(messages[1].content, "ab");
        assert_eq!(messages[2].content, "");
    }

    #[test]
    fn tool_calls_and_results_convert_for_the_template() {
        let req = request(json!({
            "model": "m",
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "f", "arguments": "not json"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "r"}
            ]
        }));
        let Prompt::Chat(messages, tools) = req.prompt().expect("valid") else {
            panic!("chat prompt")
        };
        assert_eq!(tools.len(), 1);
        let calls = &messages[1].tool_calls;
        // A JSON object reaches the template as a mapping; anything else as the string.
        assert_eq!(calls[0].arguments, json!({"a": 1}));
        assert_eq!(calls[1].arguments, json!("not json"));
        assert_eq!(calls[0].id, "call_1");
        assert_eq!(messages[2].tool_call_id.as_deref(), Some("call_1"));
        // `tool_choice: "none"` shows the model no tools.
        let mut none = request(json!({"model": "m", "tool_choice": "none",
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "messages": [{"role": "user", "content": "q"}]}));
        assert!(none.offered_tools().is_empty());
        none.tool_choice = None;
        assert_eq!(none.offered_tools().len(), 1);
        let param = |v: Value| request(v).prompt().expect_err("refused").object().param;
        assert_eq!(
            param(json!({"model": "m", "messages": [{"role": "tool", "content": "r"}]})).as_deref(),
            Some("messages[0].tool_call_id")
        );
    }

    #[test]
    fn refusals_name_the_param() {
        let param = |v: Value| request(v).prompt().expect_err("refused").object().param;
        assert_eq!(
            param(json!({"model": "m", "messages": [
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}]}
            ]}))
            .as_deref(),
            Some("messages[0].content[1]")
        );
        assert_eq!(
            param(json!({"model": "m", "messages": [{"role": "robot", "content": "x"}]}))
                .as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(
            param(json!({"model": "m", "messages": [{"role": "user"}]})).as_deref(),
            Some("messages[0].content")
        );
        assert_eq!(
            param(json!({"model": "m", "messages": []})).as_deref(),
            Some("messages")
        );
    }

    #[test]
    fn sizes_are_bounded_before_anything_else() {
        let check = |v: Value| request(v).check_bounds().map_err(|e| e.object().param);
        let user = json!({"role": "user", "content": "x"});
        let messages = vec![user.clone(); MAX_MESSAGES + 1];
        assert_eq!(
            check(json!({"model": "m", "messages": messages})),
            Err(Some("messages".into()))
        );
        let messages = vec![user; MAX_MESSAGES];
        assert!(check(json!({"model": "m", "messages": messages})).is_ok());
        let parts = vec![json!({"type": "text", "text": "a"}); MAX_CONTENT_PARTS + 1];
        assert_eq!(
            check(json!({"model": "m", "messages": [{"role": "user", "content": parts}]})),
            Err(Some("messages[0].content".into()))
        );
        let tools = vec![json!({"type": "function"}); MAX_TOOLS + 1];
        assert_eq!(
            check(json!({"model": "m", "messages": [], "tools": tools})),
            Err(Some("tools".into()))
        );
        let big = "d".repeat(MAX_TOOLS_BYTES);
        assert_eq!(
            check(json!({"model": "m", "messages": [], "tools": [{"description": big}]})),
            Err(Some("tools".into()))
        );
        let schema = json!({"type": "json_schema", "json_schema": {"description": "s".repeat(MAX_RESPONSE_FORMAT_BYTES)}});
        assert_eq!(
            check(json!({"model": "m", "messages": [], "response_format": schema})),
            Err(Some("response_format".into()))
        );
        assert!(
            check(
                json!({"model": "m", "messages": [], "tools": [{"type": "function"}],
                "response_format": {"type": "text"}})
            )
            .is_ok()
        );
    }

    #[test]
    fn unsupported_features_are_refused() {
        let check = |v: Value| request(v).check_unsupported().map_err(|e| e.object().param);
        assert!(check(json!({"model": "m", "messages": [], "tools": []})).is_ok());
        assert_eq!(
            check(json!({"model": "m", "messages": [], "tools": [{"type": "function"}]})),
            Err(Some("tools[0].function.name".into()))
        );
        let tools = json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]);
        assert!(check(json!({"model": "m", "messages": [], "tools": tools})).is_ok());
        assert!(
            check(
                json!({"model": "m", "messages": [], "tools": tools, "tool_choice": "none",
                "parallel_tool_calls": true})
            )
            .is_ok()
        );
        for choice in [
            json!("required"),
            json!({"type": "function", "function": {"name": "f"}}),
        ] {
            let req = json!({"model": "m", "messages": [], "tools": tools, "tool_choice": choice});
            assert!(check(req.clone()).is_ok());
            let grammar = request(req).grammar().expect("valid").expect("a grammar");
            assert_eq!(grammar.param, "tool_choice");
            assert!(matches!(
                grammar.spec,
                GrammarSpec::ToolCalls { ref functions, parallel: true, or_schema: None }
                    if functions.len() == 1 && functions[0].name == "f"
            ));
        }
        for (req, param) in [
            (json!({"tool_choice": "required"}), "tool_choice"),
            (
                json!({"tools": tools, "tool_choice": {"type": "function", "function": {"name": "g"}}}),
                "tool_choice.function.name",
            ),
            (
                json!({"tools": tools, "tool_choice": {"type": "custom", "custom": {"name": "f"}}}),
                "tool_choice.type",
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "a b"}}}),
                "response_format.json_schema.name",
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": 3}}}),
                "response_format.json_schema.schema",
            ),
            (
                json!({"response_format": {"type": "json_schema"}}),
                "response_format.json_schema",
            ),
            (
                json!({"response_format": {"type": "yaml"}}),
                "response_format.type",
            ),
            (json!({"response_format": "json"}), "response_format"),
        ] {
            let mut body = json!({"model": "m", "messages": []});
            for (k, v) in req.as_object().expect("object") {
                body[k] = v.clone();
            }
            assert_eq!(check(body), Err(Some(param.into())), "{req}");
        }
        // A schema with tools under `auto`: a call or the answer.
        let req = json!({"model": "m", "messages": [], "tools": tools, "parallel_tool_calls": false,
            "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}});
        let grammar = request(req).grammar().expect("valid").expect("a grammar");
        assert_eq!(grammar.param, "response_format");
        assert!(matches!(
            grammar.spec,
            GrammarSpec::ToolCalls {
                parallel: false,
                or_schema: Some(_),
                ..
            }
        ));
        // Without tools: the schema alone; json_object; text is none.
        let with = |format: Value| {
            request(json!({"model": "m", "messages": [], "response_format": format}))
                .grammar()
                .expect("valid")
                .map(|g| g.spec)
        };
        assert_eq!(
            with(json!({"type": "json_schema", "json_schema": {"name": "a"}})),
            Some(GrammarSpec::JsonSchema(json!({})))
        );
        assert_eq!(
            with(json!({"type": "json_object"})),
            Some(GrammarSpec::JsonObject)
        );
        assert_eq!(with(json!({"type": "text"})), None);
        assert!(check(json!({"model": "m", "messages": [], "logprobs": true})).is_ok());
        assert!(
            check(json!({"model": "m", "messages": [], "response_format": {"type": "text"}}))
                .is_ok()
        );
    }
}
