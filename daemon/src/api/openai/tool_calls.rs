//! Tool calls in a model's output, parsed into OpenAI's `message.tool_calls[]`: pure
//! functions over the generated text, one per [`ToolFormat`]. Which format applies is the
//! model's (its chat template's markers, [`airlock_engine::ToolFormat`]); the rules are in
//! `docs/api.md`, "Tool calling".

use airlock_engine::ToolFormat;
use serde_json::Value;

/// One call, as it leaves: `arguments` is JSON text (OpenAI sends a string).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// What the output turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// No tool call: the text is the answer.
    Text,
    /// Calls, and the text before them (`None` when only whitespace).
    Calls {
        content: Option<String>,
        calls: Vec<ToolCall>,
    },
    /// It began a call but is not one we can pass on (not JSON, no name, a tool that was
    /// not offered): as vLLM does, the raw text is the answer; the caller counts it.
    Malformed(&'static str),
}

const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";
const PYTHON_TAG: &str = "<|python_tag|>";
const MISTRAL_TAG: &str = "[TOOL_CALLS]";
const MISTRAL_ARGS: &str = "[ARGS]";
const MISTRAL_CALL_ID: &str = "[CALL_ID]";

/// A fresh call id (unique per call, as OpenAI's): `call_…`, except for Mistral, whose chat
/// templates accept only ids of exactly 9 letters and digits when the call is sent back in
/// a later turn (they raise an exception on any other).
pub fn call_id(format: ToolFormat) -> String {
    let hex = crate::api::random_uuid().simple().to_string();
    match format {
        ToolFormat::Mistral | ToolFormat::MistralArgs => hex[..9].to_owned(),
        ToolFormat::Hermes | ToolFormat::Llama3Json => format!("call_{}", &hex[..24]),
    }
}

/// Parses `text` as `format` writes calls; `offered` are the tool names the request gave.
pub fn parse(format: ToolFormat, text: &str, offered: &[String]) -> Parsed {
    let found = match format {
        ToolFormat::Hermes => hermes(text),
        ToolFormat::Llama3Json => llama3(text),
        ToolFormat::Mistral => mistral(text),
        ToolFormat::MistralArgs => mistral_args(text),
    };
    let (content, raw) = match found {
        Found::None => return Parsed::Text,
        Found::Bad(why) => return Parsed::Malformed(why),
        Found::Calls(content, raw) => (content, raw),
    };
    let mut calls = Vec::with_capacity(raw.len());
    for (name, arguments) in raw {
        if !offered.contains(&name) {
            return Parsed::Malformed("a call names a tool that was not offered");
        }
        calls.push(ToolCall {
            id: call_id(format),
            name,
            arguments,
        });
    }
    let content = content.trim_end();
    Parsed::Calls {
        content: (!content.trim().is_empty()).then(|| content.to_owned()),
        calls,
    }
}

/// The byte length of the longest suffix of `text` that is a proper prefix of one of the
/// format's markers: text a stream must hold back until it knows whether a call starts.
pub fn pending_marker(format: ToolFormat, text: &str) -> usize {
    let markers: &[&str] = match format {
        ToolFormat::Hermes => &[HERMES_OPEN],
        ToolFormat::Llama3Json => &[PYTHON_TAG],
        ToolFormat::Mistral | ToolFormat::MistralArgs => &[MISTRAL_TAG],
    };
    markers
        .iter()
        .flat_map(|m| (1..m.len()).rev().map(move |n| &m[..n]))
        .filter(|prefix| text.ends_with(prefix))
        .map(str::len)
        .max()
        .unwrap_or(0)
}

/// Where a call begins in `text`, if one does: the stream switches from content to
/// buffering there. For the JSON formats a call is the whole output (after whitespace).
pub fn call_start(format: ToolFormat, text: &str) -> Option<usize> {
    match format {
        ToolFormat::Hermes => text.find(HERMES_OPEN),
        ToolFormat::MistralArgs => text.find(MISTRAL_TAG),
        ToolFormat::Mistral => text.find(MISTRAL_TAG).or_else(|| {
            let lead = text.len() - text.trim_start().len();
            text.trim_start().starts_with('[').then_some(lead)
        }),
        ToolFormat::Llama3Json => text.find(PYTHON_TAG).or_else(|| {
            let lead = text.len() - text.trim_start().len();
            text.trim_start().starts_with('{').then_some(lead)
        }),
    }
}

/// Splits a stream's text into content that may go out now and a call region held until
/// the generation ends: text that could be the start of a call marker is held back (at most
/// a marker's length), and once a call begins everything after it is buffered (bounded by
/// `max_tokens`) and parsed whole at the end ([`Splitter::finish`]).
#[derive(Debug)]
pub struct Splitter {
    format: ToolFormat,
    held: String,
    in_call: bool,
    /// Content other than whitespace has gone out: the JSON formats (whose calls are the
    /// whole output) can no longer start a call.
    sent_text: bool,
}

impl Splitter {
    pub fn new(format: ToolFormat) -> Self {
        Splitter {
            format,
            held: String::new(),
            in_call: false,
            sent_text: false,
        }
    }

    /// Takes the next released text; returns the content that may be sent now.
    pub fn push(&mut self, text: &str) -> String {
        self.held.push_str(text);
        if self.in_call {
            return String::new();
        }
        if let Some(at) = self.call_start() {
            self.in_call = true;
            let rest = self.held.split_off(at);
            let out = std::mem::replace(&mut self.held, rest);
            return self.emit(out);
        }
        // Formats whose calls may be bare JSON: the whole output, after whitespace.
        let json_format = matches!(self.format, ToolFormat::Llama3Json | ToolFormat::Mistral);
        let keep = if json_format && !self.sent_text && self.held.trim().is_empty() {
            // Leading whitespace: a JSON call may still follow.
            self.held.len()
        } else {
            pending_marker(self.format, &self.held)
        };
        let rest = self.held.split_off(self.held.len() - keep);
        let out = std::mem::replace(&mut self.held, rest);
        self.emit(out)
    }

    fn emit(&mut self, out: String) -> String {
        self.sent_text |= !out.trim().is_empty();
        out
    }

    fn call_start(&self) -> Option<usize> {
        let at = call_start(self.format, &self.held)?;
        let marked = match self.format {
            ToolFormat::Hermes | ToolFormat::MistralArgs => true,
            ToolFormat::Llama3Json => self.held[at..].starts_with(PYTHON_TAG),
            ToolFormat::Mistral => self.held[at..].starts_with(MISTRAL_TAG),
        };
        // A bare JSON call is the whole output: not after content.
        (marked || !self.sent_text).then_some(at)
    }

    /// The held text at the end: a call region (when one began) or held-back content.
    /// Parse it with [`parse`]; what is not a call goes out as content.
    pub fn finish(self) -> String {
        self.held
    }
}

enum Found {
    None,
    Bad(&'static str),
    /// The text before the calls and each call's name and arguments (JSON text).
    Calls(String, Vec<(String, String)>),
}

/// `{"name": …, <args_key>: …}` → name and arguments as JSON text. Arguments given as a
/// string must hold JSON themselves.
fn call_of(value: &Value, args_keys: &[&str]) -> Result<(String, String), &'static str> {
    let name = value
        .get("name")
        .and_then(Value::as_str)
        .ok_or("a call has no string `name`")?;
    let args = args_keys
        .iter()
        .find_map(|k| value.get(*k))
        .cloned()
        .unwrap_or_else(|| Value::Object(serde_json::Map::new()));
    let arguments = match args {
        Value::String(s) => match serde_json::from_str::<Value>(&s) {
            Ok(Value::Object(_)) => s,
            _ => return Err("a call's arguments are not a JSON object"),
        },
        Value::Object(_) => args.to_string(),
        _ => return Err("a call's arguments are not a JSON object"),
    };
    Ok((name.to_owned(), arguments))
}

/// Hermes / Qwen: `text <tool_call>{…}</tool_call> <tool_call>{…}</tool_call>`. The last
/// block may lack its closing tag (generation ended at EOS right after the JSON).
fn hermes(text: &str) -> Found {
    let Some(start) = text.find(HERMES_OPEN) else {
        return Found::None;
    };
    let mut rest = &text[start..];
    let mut calls = Vec::new();
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        let Some(body) = rest.strip_prefix(HERMES_OPEN) else {
            return Found::Bad("text after a tool call");
        };
        let (json, after) = match body.find(HERMES_CLOSE) {
            Some(end) => (&body[..end], &body[end + HERMES_CLOSE.len()..]),
            None => (body, ""),
        };
        let Ok(value) = serde_json::from_str::<Value>(json.trim()) else {
            return Found::Bad("a tool call is not JSON");
        };
        match call_of(&value, &["arguments", "parameters"]) {
            Ok(call) => calls.push(call),
            Err(why) => return Found::Bad(why),
        }
        rest = after;
    }
    Found::Calls(text[..start].to_owned(), calls)
}

/// Llama 3.1/3.2: the whole output is `[<|python_tag|>]{"name": …, "parameters": …}`,
/// several separated by `;`. Output that merely starts with `{` and is not such an object
/// is an answer (JSON the user asked for), not a malformed call.
fn llama3(text: &str) -> Found {
    let trimmed = text.trim();
    let (tagged, body) = match trimmed.strip_prefix(PYTHON_TAG) {
        Some(body) => (true, body.trim_start()),
        None => (false, trimmed),
    };
    if !body.starts_with('{') {
        return if tagged {
            Found::Bad("<|python_tag|> without a JSON call")
        } else {
            Found::None
        };
    }
    let not_a_call = |why| if tagged { Found::Bad(why) } else { Found::None };
    let mut calls = Vec::new();
    for piece in json_values(body, ';') {
        let Ok(value) = piece else {
            return not_a_call("a tool call is not JSON");
        };
        if value.get("name").is_none()
            || (value.get("parameters").is_none() && value.get("arguments").is_none())
        {
            return not_a_call("a JSON object that is not a call");
        }
        match call_of(&value, &["parameters", "arguments"]) {
            Ok(call) => calls.push(call),
            Err(why) => return Found::Bad(why),
        }
    }
    Found::Calls(String::new(), calls)
}

/// Mistral: `text[TOOL_CALLS][{"name": …, "arguments": …}, …]`. `[TOOL_CALLS]` is a
/// special token, which decoding drops: an output that is exactly such an array counts too.
fn mistral(text: &str) -> Found {
    let (content, body, tagged) = match text.find(MISTRAL_TAG) {
        Some(at) => (&text[..at], &text[at + MISTRAL_TAG.len()..], true),
        None => ("", text, false),
    };
    let body = body.trim();
    let value = match serde_json::from_str::<Value>(body) {
        Ok(v) => v,
        Err(_) if tagged => return Found::Bad("a tool call is not JSON"),
        Err(_) => return Found::None,
    };
    let Value::Array(items) = value else {
        return if tagged {
            Found::Bad("[TOOL_CALLS] without a JSON array")
        } else {
            Found::None
        };
    };
    if !tagged && !items.iter().all(|i| i.get("name").is_some()) || items.is_empty() {
        return if tagged {
            Found::Bad("[TOOL_CALLS] without a call")
        } else {
            Found::None
        };
    }
    let mut calls = Vec::new();
    for item in &items {
        match call_of(item, &["arguments", "parameters"]) {
            Ok(call) => calls.push(call),
            Err(why) => return Found::Bad(why),
        }
    }
    Found::Calls(content.to_owned(), calls)
}

/// Mistral v11+: `text[TOOL_CALLS]name[ARGS]{…}[TOOL_CALLS]name[ARGS]{…}`, with an
/// optional `[CALL_ID]id` before `[ARGS]` (the id is the model's; ours replaces it, as
/// vLLM's does). The markers are control tokens the engine keeps in the text. A model that
/// still writes the older array after `[TOOL_CALLS]` is read as [`mistral`] reads it.
fn mistral_args(text: &str) -> Found {
    let Some(at) = text.find(MISTRAL_TAG) else {
        return Found::None;
    };
    let (content, body) = (&text[..at], &text[at..]);
    if body[MISTRAL_TAG.len()..].trim_start().starts_with('[') {
        return mistral(text);
    }
    let mut calls = Vec::new();
    for call in body.split(MISTRAL_TAG).skip(1) {
        let Some((head, args)) = call.split_once(MISTRAL_ARGS) else {
            return Found::Bad("[TOOL_CALLS] without [ARGS]");
        };
        let name = head.split(MISTRAL_CALL_ID).next().unwrap_or(head).trim();
        if name.is_empty() {
            return Found::Bad("a call has no name");
        }
        let args = args.trim();
        match serde_json::from_str::<Value>(args) {
            Ok(Value::Object(_)) => calls.push((name.to_owned(), args.to_owned())),
            Ok(_) => return Found::Bad("a call's arguments are not a JSON object"),
            Err(_) => return Found::Bad("a tool call is not JSON"),
        }
    }
    Found::Calls(content.to_owned(), calls)
}

/// Consecutive JSON values in `text`, separated by whitespace and `sep`.
fn json_values(text: &str, sep: char) -> Vec<Result<Value, ()>> {
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == sep);
        if rest.is_empty() {
            return out;
        }
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        match values.next() {
            Some(Ok(v)) => {
                let used = values.byte_offset();
                out.push(Ok(v));
                rest = &rest[used..];
            }
            _ => {
                out.push(Err(()));
                return out;
            }
        }
    }
}

#[cfg(test)]
mod tests;
