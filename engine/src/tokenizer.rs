//! Tokenization and chat templates, matching what `transformers` produces for the same
//! directory: `tokenizer.json` via the `tokenizers` crate, the `chat_template` from
//! `tokenizer_config.json` rendered with minijinja in Jinja2-compatible mode. A GGUF file
//! without a `tokenizer.json` beside it is tokenized as llama.cpp does from the file's own
//! metadata ([`crate::gguf::vocab`]).

use std::path::Path;

use minijinja::{Environment, Error as JinjaError, ErrorKind, Value};
use serde::Serialize;

use crate::gguf::GgufFile;
use crate::gguf::tokenizer as gguf_tokenizer;
use crate::gguf::vocab::GgufVocab;
use crate::hf_config::token_ids;
use crate::{ChatMessage, ChatToolCall, EngineError, Prompt, ToolFormat};

/// Instructions one chat-template rendering may execute. A chat template is code from a
/// model file; a loop that never ends, or one that grows with no bound, must end in an error
/// and not hold an engine thread. Real templates spend a few dozen instructions per message
/// (the test fixtures' templates render 4096 messages within it), so this covers the
/// gateway's cap of 1024 messages with room to spare.
pub const CHAT_TEMPLATE_FUEL: u64 = 2_000_000;

/// The rendered prompt may be at most this many bytes plus twice the messages' own text:
/// what a template adds around the messages is markup, never megabytes.
pub const CHAT_TEMPLATE_OUTPUT_BASE: usize = 1 << 20;

/// The tokenizer proper: a `tokenizer.json`, or llama.cpp's algorithms on a GGUF file's
/// vocabulary.
enum Backend {
    Hf(Box<tokenizers::Tokenizer>),
    Gguf(Box<GgufVocab>),
}

impl Backend {
    fn token_to_id(&self, text: &str) -> Option<u32> {
        match self {
            Backend::Hf(t) => t.token_to_id(text),
            Backend::Gguf(v) => v.token_id(text),
        }
    }

    fn id_to_token(&self, id: u32) -> Option<String> {
        match self {
            Backend::Hf(t) => t.id_to_token(id),
            Backend::Gguf(v) => v.token_text(id).map(str::to_owned),
        }
    }
}

/// A model's tokenizer, chat template and end-of-sequence ids.
pub struct TextTokenizer {
    inner: Backend,
    chat: Option<ChatTemplate>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    bos_id: Option<u32>,
    add_bos: Option<bool>,
    eos_ids: Vec<u32>,
}

/// A compiled chat template and what it says about tool calling.
struct ChatTemplate {
    env: Environment<'static>,
    /// `None` when the template never mentions `tools`: offered tools would not reach the
    /// model, so a request with tools is refused.
    tools: Option<ToolFormat>,
}

#[derive(Serialize)]
struct ChatContext<'a> {
    messages: Vec<MessageCtx<'a>>,
    add_generation_prompt: bool,
    bos_token: &'a str,
    eos_token: &'a str,
    /// Absent (`none`) without tools, as transformers passes it: templates test `if tools`.
    tools: Option<&'a [serde_json::Value]>,
    documents: Option<()>,
}

/// One message as Hugging Face templates read it: `tool_calls` and `tool_call_id` only
/// when present (templates test `'tool_calls' in message` / `message.tool_calls is
/// defined`).
#[derive(Serialize)]
struct MessageCtx<'a> {
    role: &'a str,
    content: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallCtx<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
}

/// `{"id", "type": "function", "function": {"name", "arguments"}}`, OpenAI's shape, with
/// `arguments` a mapping where it parsed as one ([`ChatToolCall::arguments`]).
#[derive(Serialize)]
struct ToolCallCtx<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionCtx<'a>,
}

#[derive(Serialize)]
struct FunctionCtx<'a> {
    name: &'a str,
    arguments: &'a serde_json::Value,
}

impl<'a> MessageCtx<'a> {
    fn new(m: &'a ChatMessage) -> Self {
        MessageCtx {
            role: &m.role,
            content: &m.content,
            tool_calls: m.tool_calls.iter().map(ToolCallCtx::new).collect(),
            tool_call_id: m.tool_call_id.as_deref(),
        }
    }
}

impl<'a> ToolCallCtx<'a> {
    fn new(c: &'a ChatToolCall) -> Self {
        ToolCallCtx {
            id: &c.id,
            kind: "function",
            function: FunctionCtx {
                name: &c.name,
                arguments: &c.arguments,
            },
        }
    }
}

/// Mistral's tool-call markers: control tokens its tool-calling models write around calls.
pub const TOOL_MARKERS: [&str; 3] = ["[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"];

/// The tool-call format a chat template teaches, from the markers in its source. A
/// template that never names `tools` cannot show them to the model. Checked in order:
/// Mistral's `[TOOL_CALLS]`, Hermes/Qwen's `<tool_call>`, then Llama 3.1's
/// `<|python_tag|>` / `ipython` role; a template that names `tools` with none of these
/// teaches a format we do not parse, and is treated as having no tool support.
pub fn tool_format(source: &str) -> Option<ToolFormat> {
    if !source.contains("tools") {
        return None;
    }
    if source.contains("[TOOL_CALLS]") {
        // v11+ templates write each call as `[TOOL_CALLS]name[ARGS]arguments`.
        Some(if source.contains("[ARGS]") {
            ToolFormat::MistralArgs
        } else {
            ToolFormat::Mistral
        })
    } else if source.contains("<tool_call>") {
        Some(ToolFormat::Hermes)
    } else if source.contains("<|python_tag|>") || source.contains("ipython") {
        Some(ToolFormat::Llama3Json)
    } else {
        None
    }
}

/// Collects a rendering, refusing to grow past `limit` bytes (the write that would cross it
/// fails, which ends the rendering).
struct CappedWriter {
    bytes: Vec<u8>,
    limit: usize,
}

impl std::io::Write for CappedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len().saturating_add(buf.len()) > self.limit {
            return Err(std::io::Error::other("rendered prompt over its size limit"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A special token in `tokenizer_config.json`: a string or `{"content": ...}`.
fn special_token(value: Option<&serde_json::Value>) -> Option<String> {
    match value? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>, EngineError> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| EngineError::Load {
        path: path.to_path_buf(),
        reason: format!("cannot read: {e}"),
    })?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| EngineError::Load {
            path: path.to_path_buf(),
            reason: format!("invalid JSON: {e}"),
        })
}

/// The chat template environment, with the Jinja2 settings transformers renders with.
fn chat_env(source: String, path: &Path, field: &str) -> Result<ChatTemplate, EngineError> {
    let tools = tool_format(&source);
    let mut env = Environment::new();
    env.set_fuel(Some(CHAT_TEMPLATE_FUEL));
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.add_template_owned("chat", source)
        .map_err(|e| EngineError::Load {
            path: path.to_path_buf(),
            reason: format!("{field}: {e}"),
        })?;
    Ok(ChatTemplate { env, tools })
}

/// What a template's own `raise_exception(...)` call produced: the template refuses these
/// messages (Gemma's "System role not supported", Mistral's "roles must alternate"). Kept as
/// the error's source so that a refusal is told apart from a broken template by type.
#[derive(Debug)]
struct TemplateRaised(String);

impl std::fmt::Display for TemplateRaised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TemplateRaised {}

fn raise_exception(message: String) -> Result<Value, JinjaError> {
    Err(
        JinjaError::new(ErrorKind::InvalidOperation, message.clone())
            .with_source(TemplateRaised(message)),
    )
}

/// The message of the `raise_exception` call behind `e`, if a template raised it.
fn raised_by_template(e: &JinjaError) -> Option<&str> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(raised) = s.downcast_ref::<TemplateRaised>() {
            return Some(&raised.0);
        }
        source = s.source();
    }
    None
}

impl TextTokenizer {
    /// Loads `tokenizer.json`, and `tokenizer_config.json` / `generation_config.json` when
    /// present. `config_eos` are the ids `config.json` lists.
    pub fn from_dir(dir: &Path, config_eos: &[u32]) -> Result<TextTokenizer, EngineError> {
        let tok_path = dir.join("tokenizer.json");
        let mut hf =
            tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| EngineError::Load {
                path: tok_path.clone(),
                reason: format!("invalid tokenizer: {e}"),
            })?;
        // Padding and truncation saved in the file (sentence-transformers checkpoints ship
        // both) would pad every input with [PAD] ids or cut it silently: an input is
        // tokenized whole, and one longer than the context is refused instead.
        hf.with_padding(None);
        hf.with_truncation(None).map_err(|e| EngineError::Load {
            path: tok_path.clone(),
            reason: format!("invalid tokenizer: {e}"),
        })?;
        let inner = Backend::Hf(Box::new(hf));
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg = read_json(&cfg_path)?.unwrap_or(serde_json::Value::Null);
        let bos_token = special_token(cfg.get("bos_token"));
        let eos_token = special_token(cfg.get("eos_token"));
        let add_bos = cfg
            .get("add_bos_token")
            .and_then(serde_json::Value::as_bool);
        let template = match cfg.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_owned)),
            _ => None,
        };
        let template = match template {
            Some(t) => Some(t),
            None => {
                // Newer checkpoints ship the template as its own file.
                let p = dir.join("chat_template.jinja");
                p.exists()
                    .then(|| std::fs::read_to_string(&p))
                    .transpose()
                    .map_err(|e| EngineError::Load {
                        path: p.clone(),
                        reason: format!("cannot read: {e}"),
                    })?
            }
        };
        let chat = template
            .map(|source| chat_env(source, &cfg_path, "`chat_template`"))
            .transpose()?;

        let mut eos_ids: Vec<u32> = config_eos.to_vec();
        let gen_path = dir.join("generation_config.json");
        if let Some(gen_cfg) = read_json(&gen_path)? {
            eos_ids.extend(token_ids(gen_cfg.get("eos_token_id")).unwrap_or_default());
        }
        if let Some(id) = eos_token.as_deref().and_then(|t| inner.token_to_id(t)) {
            eos_ids.push(id);
        }
        eos_ids.sort_unstable();
        eos_ids.dedup();
        let bos_id = bos_token.as_deref().and_then(|t| inner.token_to_id(t));
        Ok(TextTokenizer {
            inner,
            chat,
            bos_token,
            eos_token,
            bos_id,
            add_bos,
            eos_ids,
        })
    }

    /// The tokenizer of a GGUF model directory: `tokenizer.json` (+ `tokenizer_config.json`,
    /// `generation_config.json`) beside the file when present, as for a Hugging Face
    /// directory, else rebuilt from the file's `tokenizer.ggml.*` metadata. The GGUF chat
    /// template and special tokens fill in whatever the JSON files do not say.
    pub fn from_gguf(
        dir: &Path,
        file: &GgufFile,
        config_eos: &[u32],
    ) -> Result<TextTokenizer, EngineError> {
        let mut tok = if dir.join("tokenizer.json").exists() {
            Self::from_dir(dir, config_eos)?
        } else {
            let vocab = gguf_tokenizer::build(file)?;
            let mut eos_ids = config_eos.to_vec();
            eos_ids.extend(vocab.eos);
            eos_ids.extend(&vocab.eog);
            eos_ids.retain(|&id| (id as usize) < vocab.len());
            eos_ids.sort_unstable();
            eos_ids.dedup();
            let text = |id: Option<u32>| id.and_then(|id| vocab.token_text(id).map(str::to_owned));
            TextTokenizer {
                bos_token: text(vocab.bos),
                eos_token: text(vocab.eos),
                bos_id: vocab.bos,
                add_bos: Some(vocab.add_bos),
                chat: None,
                eos_ids,
                inner: Backend::Gguf(Box::new(vocab)),
            }
        };
        let id = |key: &str| {
            file.get(key)
                .and_then(crate::gguf::Value::as_u64)
                .and_then(|v| u32::try_from(v).ok())
        };
        let text = |id: Option<u32>| id.and_then(|id| tok.inner.id_to_token(id));
        if tok.bos_token.is_none() {
            tok.bos_token = text(id("tokenizer.ggml.bos_token_id"));
        }
        if tok.eos_token.is_none() {
            tok.eos_token = text(id("tokenizer.ggml.eos_token_id"));
        }
        if tok.bos_id.is_none() {
            tok.bos_id = id("tokenizer.ggml.bos_token_id");
        }
        if tok.add_bos.is_none() {
            tok.add_bos = file
                .get("tokenizer.ggml.add_bos_token")
                .and_then(crate::gguf::Value::as_bool);
        }
        if tok.chat.is_none()
            && let Some(source) = file
                .get("tokenizer.chat_template")
                .and_then(crate::gguf::Value::as_str)
        {
            tok.chat = Some(chat_env(
                source.to_owned(),
                &file.path,
                "metadata `tokenizer.chat_template`",
            )?);
        }
        Ok(tok)
    }

    /// Whether chat prompts can be rendered.
    pub fn has_chat_template(&self) -> bool {
        self.chat.is_some()
    }

    /// The tool-call format of its chat template; `None`: no tool support.
    pub fn tool_format(&self) -> Option<ToolFormat> {
        self.chat.as_ref().and_then(|c| c.tools)
    }

    /// Ids that end a generation.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Tokenizes `text`, special-token strings in it matched as their tokens; `special`
    /// adds the BOS/EOS the tokenizer's post-processor (GGUF: `add_bos`/`add_eos`) adds.
    pub(crate) fn encode_raw(&self, text: &str, special: bool) -> Result<Vec<u32>, EngineError> {
        match &self.inner {
            Backend::Hf(t) => t
                .encode(text, special)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| EngineError::Tokenizer(e.to_string())),
            Backend::Gguf(v) => Ok(v.tokenize(text, special, true)),
        }
    }

    /// Tokenizes plain text as `tokenizer(text)` does: special tokens (BOS) as the
    /// tokenizer's post-processor and `add_bos_token` say.
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        let mut ids = self.encode_raw(text, true)?;
        if let Some(bos) = self.bos_id {
            match self.add_bos {
                Some(true) if ids.first() != Some(&bos) => ids.insert(0, bos),
                Some(false) if ids.first() == Some(&bos) => {
                    let plain = self.encode_raw(text, false)?;
                    if plain.first() != Some(&bos) {
                        ids.remove(0);
                    }
                }
                _ => {}
            }
        }
        Ok(ids)
    }

    /// Renders `messages` with the model's chat template, generation prompt added.
    /// `tools` (possibly empty) reach the template as its `tools` variable.
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        tools: &[serde_json::Value],
    ) -> Result<String, EngineError> {
        self.render_chat_with(messages, tools, true)
    }

    pub(crate) fn render_chat_with(
        &self,
        messages: &[ChatMessage],
        tools: &[serde_json::Value],
        add_generation_prompt: bool,
    ) -> Result<String, EngineError> {
        let chat = self.chat.as_ref().ok_or_else(|| {
            EngineError::Tokenizer("this model has no chat template; send a text prompt".into())
        })?;
        // The gateway refuses this first, naming the model; this keeps the engine honest
        // for any other caller.
        if !tools.is_empty() && chat.tools.is_none() {
            return Err(EngineError::InvalidRequest {
                param: "tools",
                reason: "this model's chat template has no tool support".into(),
            });
        }
        let template = chat
            .env
            .get_template("chat")
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        let ctx = ChatContext {
            messages: messages.iter().map(MessageCtx::new).collect(),
            add_generation_prompt,
            bos_token: self.bos_token.as_deref().unwrap_or(""),
            eos_token: self.eos_token.as_deref().unwrap_or(""),
            tools: (!tools.is_empty()).then_some(tools),
            documents: None,
        };
        // Tool definitions and calls are rendered too: they count as the messages' text.
        let content: usize = messages.iter().map(|m| m.content.len()).sum::<usize>()
            + tools.iter().map(|t| t.to_string().len()).sum::<usize>()
            + messages
                .iter()
                .flat_map(|m| &m.tool_calls)
                .map(|c| c.name.len() + c.arguments.to_string().len())
                .sum::<usize>();
        let mut out = CappedWriter {
            bytes: Vec::new(),
            limit: CHAT_TEMPLATE_OUTPUT_BASE.saturating_add(content.saturating_mul(2)),
        };
        // The template comes from the model file and runs in a third-party engine: a panic in
        // it (minijinja 2.24 overflows on a slice with a huge negative step, found by the
        // `chat_template` fuzz target) becomes this request's error, not a dead task.
        let rendered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            template.render_captured_to(ctx, &mut out).map(drop)
        }))
        .map_err(|_| {
            EngineError::Tokenizer(
                "chat template: the template engine failed on this template".into(),
            )
        })?;
        match rendered {
            Ok(_) => String::from_utf8(out.bytes)
                .map_err(|_| EngineError::Tokenizer("chat template: output is not UTF-8".into())),
            Err(e) if matches!(e.kind(), ErrorKind::OutOfFuel) => {
                Err(EngineError::InvalidRequest {
                    param: "messages",
                    reason: format!(
                        "the model's chat template did not finish within its budget of \
                         {CHAT_TEMPLATE_FUEL} instructions for these messages"
                    ),
                })
            }
            Err(e) if matches!(e.kind(), ErrorKind::WriteFailure) => {
                Err(EngineError::InvalidRequest {
                    param: "messages",
                    reason: format!(
                        "the model's chat template rendered more than {} bytes for these messages",
                        out.limit
                    ),
                })
            }
            // The template itself refuses these messages (a system turn a model has no role
            // for, roles out of order): the client's request, answered with the template's
            // own words, never a server error.
            Err(e) => match raised_by_template(&e) {
                Some(message) => Err(EngineError::InvalidRequest {
                    param: "messages",
                    reason: format!("the model's chat template rejects these messages: {message}"),
                }),
                None => Err(EngineError::Tokenizer(format!("chat template: {e}"))),
            },
        }
    }

    /// The token ids of a prompt. Rendered chat text already holds its special tokens, so
    /// it is tokenized without adding any (as `apply_chat_template(tokenize=True)` does).
    pub fn encode_prompt(&self, prompt: &Prompt) -> Result<Vec<u32>, EngineError> {
        let ids = match prompt {
            Prompt::Text(text) => self.encode_text(text)?,
            Prompt::Chat(messages, tools) => {
                self.encode_raw(&self.render_chat(messages, tools)?, false)?
            }
            Prompt::TokenIds(ids) => ids.clone(),
        };
        if ids.is_empty() {
            return Err(EngineError::InvalidRequest {
                param: "prompt",
                reason: "the prompt is empty".into(),
            });
        }
        Ok(ids)
    }

    /// Decodes ids to text, special tokens skipped, except a Mistral template's tool-call
    /// markers ([`TOOL_MARKERS`]): control tokens, but what tells a call from text (and,
    /// in the `[ARGS]` form, a tool's name from its arguments), so they stay in the text.
    pub fn decode(&self, ids: &[u32]) -> Result<String, EngineError> {
        let markers = self.tool_marker_ids();
        if !ids.iter().any(|id| markers.contains(&Some(*id))) {
            return self.decode_with(ids, true);
        }
        let mut out = String::new();
        for piece in ids.split_inclusive(|id| markers.contains(&Some(*id))) {
            let (last, text) = piece
                .split_last()
                .map_or((None, piece), |(l, t)| (Some(l), t));
            match last {
                Some(&id) if markers.contains(&Some(id)) => {
                    out.push_str(&self.decode_with(text, true)?);
                    out.push_str(&self.inner.id_to_token(id).unwrap_or_default());
                }
                _ => out.push_str(&self.decode_with(piece, true)?),
            }
        }
        Ok(out)
    }

    /// The ids of the tool-call markers the decoded text keeps (Mistral templates only).
    fn tool_marker_ids(&self) -> [Option<u32>; 3] {
        match self.tool_format() {
            Some(ToolFormat::Mistral | ToolFormat::MistralArgs) => {
                TOOL_MARKERS.map(|m| self.inner.token_to_id(m))
            }
            _ => [None; 3],
        }
    }

    /// Every token's bytes, special tokens as `0xFF` + their text: what a token trie for
    /// constrained decoding is built from (`crate::constraint`). A `tokenizer.json` whose
    /// decoder is neither byte-level nor byte-fallback cannot be mapped to bytes.
    pub(crate) fn trie_bytes(&self) -> Result<Vec<Vec<u8>>, String> {
        match &self.inner {
            Backend::Hf(t) => {
                let json = t.to_string(false).map_err(|e| e.to_string())?;
                let json: serde_json::Value =
                    serde_json::from_str(&json).map_err(|e| e.to_string())?;
                llguidance::token_bytes_from_tokenizer_json(&json).map_err(|e| e.to_string())
            }
            Backend::Gguf(v) => Ok(v.trie_bytes()),
        }
    }

    pub(crate) fn decode_with(
        &self,
        ids: &[u32],
        skip_special: bool,
    ) -> Result<String, EngineError> {
        match &self.inner {
            Backend::Hf(t) => t
                .decode(ids, skip_special)
                .map_err(|e| EngineError::Tokenizer(e.to_string())),
            Backend::Gguf(v) => Ok(v.detokenize(ids, skip_special, !skip_special)),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
