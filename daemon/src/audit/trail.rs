//! One request's audit records, fail closed.
//!
//! `pipeline::handle` opens a [`Trail`] for every request outside the open list and hands it
//! to the phases in the request's `RequestCtx` (explicitly: no task-local):
//!
//! * the `audit` phase (`pipeline::audit::admit`) calls [`Trail::admit`] right before the
//!   engine: the admission record is committed first, or the request is refused with 503
//!   `audit_unavailable`; the engine takes the receipt only that phase constructs.
//! * A request refused earlier (401, 403, 404, 413, 429, ...) gets one `deny` record from
//!   [`Trail::finish`], committed before the refusal is sent.
//! * A non-streaming completion gets its `complete` record from [`Trail::finish`] before
//!   the response leaves `handle`; a stream writes it itself ([`StreamAudit`]) before its
//!   final event.
//!
//! Refusals of requests that never authenticated (an unknown path's 404, a 401) cost a
//! durable record each, so they are budgeted per client ([`super::flood`]): past the budget
//! they are counted and the count goes into the client's next record. Their `route` is cut
//! to [`MAX_ROUTE_BYTES`] too: a path is whatever the client sent, up to `max_header_bytes`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use airlock_engine::{ChatMessage, FinishReason, GrammarSpec, Prompt, SamplingParams, Usage};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::flood::Decision;
use super::keys::{DigestKey, finish};
use super::record::{Kind, Record};
use super::{AuditError, AuditLog};
use crate::identity::ConnInfo;

pub use crate::config::audit::StoreText;

impl StoreText {
    fn apply(self, text: &str) -> Option<String> {
        match self {
            StoreText::None => None,
            StoreText::Full => Some(text.to_owned()),
            StoreText::Redacted => Some(redact(text)),
        }
    }
}

/// Masks e-mail addresses and digits (account numbers, phone numbers, card numbers).
pub fn redact(text: &str) -> String {
    text.split_inclusive(char::is_whitespace)
        .map(|word| {
            if word.contains('@') {
                let tail: String = word.chars().filter(|c| c.is_whitespace()).collect();
                format!("[email]{tail}")
            } else {
                word.chars()
                    .map(|c| if c.is_ascii_digit() { '#' } else { c })
                    .collect()
            }
        })
        .collect()
}

/// What requests need from the audit configuration in force (one per config generation).
#[derive(Debug)]
pub struct Binding {
    pub log: Arc<AuditLog>,
    pub digest: Arc<DigestKey>,
    /// SHA-256 of the configuration file in force.
    pub config_hash: String,
    pub store_text: StoreText,
    pub tenant_store_text: HashMap<String, StoreText>,
    /// `danger_allow_unaudited`: serve even when records cannot be written.
    pub danger_allow_unaudited: bool,
}

impl Binding {
    fn store_text_for(&self, tenant: &str) -> StoreText {
        self.tenant_store_text
            .get(tenant)
            .copied()
            .unwrap_or(self.store_text)
    }
}

#[derive(Debug, Default)]
struct Progress {
    tenant: Option<String>,
    principal: Option<String>,
    /// `auth_method` and the credential's fields, once authentication succeeded.
    auth: Vec<(&'static str, String)>,
    model: Option<String>,
    /// Filter actions on the prompt (and refusals before admission).
    filter_hits: Vec<FilterHit>,
    /// Filter actions on the output, after admission (for the `complete` record).
    output_filter_hits: Vec<FilterHit>,
    admit_seq: Option<u64>,
    streaming: bool,
    finish_reason: Option<&'static str>,
    /// With several choices: each one's finish reason, in choice order.
    finish_reasons: Vec<&'static str>,
    usage: Option<Usage>,
    ttft_ms: Option<u64>,
    output_digest: Option<String>,
    output_text: Option<String>,
    /// The names of the tools the answer called, in order.
    tool_calls: Vec<String>,
}

/// One filter rule that acted on a request: its id, what it did and how many times. Never
/// the matched text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FilterHit {
    rule: String,
    action: &'static str,
    count: usize,
}

fn note_hit(hits: &mut Vec<FilterHit>, rule: &str, action: &'static str, count: usize) {
    match hits
        .iter_mut()
        .find(|h| h.rule == rule && h.action == action)
    {
        Some(hit) => hit.count = hit.count.saturating_add(count),
        None => hits.push(FilterHit {
            rule: rule.to_owned(),
            action,
            count,
        }),
    }
}

/// `filter_rules` (distinct rule ids, in order) and `filter_actions` (id, action, count).
fn set_filter_fields(record: &mut Record, hits: &[FilterHit]) {
    let mut rules: Vec<&str> = Vec::new();
    for hit in hits {
        if !rules.contains(&hit.rule.as_str()) {
            rules.push(&hit.rule);
        }
    }
    let actions: Vec<Value> = hits
        .iter()
        .map(|h| json!({"rule": h.rule, "action": h.action, "count": h.count as u64}))
        .collect();
    record
        .set("filter_rules", json!(rules))
        .set("filter_actions", actions);
}

/// The longest `route` ("METHOD /path") a record keeps, in bytes; a longer one is cut (at a
/// character boundary) and `route_bytes` gives its full length.
pub const MAX_ROUTE_BYTES: usize = 256;

/// `METHOD /path`, cut to [`MAX_ROUTE_BYTES`]; the full length when cut.
fn route_field(method: &str, path: &str) -> (String, Option<u64>) {
    let mut route = format!("{method} {path}");
    if route.len() <= MAX_ROUTE_BYTES {
        return (route, None);
    }
    let full = route.len() as u64;
    let mut end = MAX_ROUTE_BYTES;
    while !route.is_char_boundary(end) {
        end -= 1;
    }
    route.truncate(end);
    (route, Some(full))
}

/// Who a refusal budget belongs to: the client certificate if there is one (a name the CA
/// vouches for), else the client's address (the trusted proxy's `forwarded_for`, else the
/// peer), without the port.
fn client_key(conn: &ConnInfo) -> String {
    if let Some((_, cert)) = conn.client_cert() {
        return format!("cert:{}", cert.sha256_fingerprint);
    }
    match (conn.forwarded_for, conn.peer_addr) {
        (Some(ip), _) => format!("ip:{ip}"),
        (None, Some(addr)) => format!("ip:{}", addr.ip()),
        (None, None) => "unknown".to_owned(),
    }
}

/// One request's audit state.
#[derive(Debug)]
pub struct Trail {
    binding: Arc<Binding>,
    started: Instant,
    request_id: String,
    /// The refusal budget this request draws on (see [`client_key`]).
    client: String,
    /// Identity and route facts known before authentication.
    base: Record,
    progress: Mutex<Progress>,
}

impl Trail {
    pub fn new(
        binding: Arc<Binding>,
        conn: &ConnInfo,
        request_id: &str,
        method: &str,
        path: &str,
    ) -> Arc<Trail> {
        let mut base = Record::new(Kind::Admit);
        let (route, route_bytes) = route_field(method, path);
        base.set("request_id", request_id)
            .set("route", route)
            .set("route_bytes", route_bytes)
            .set("config_hash", binding.config_hash.as_str());
        if let Some(addr) = conn.peer_addr {
            base.set("source", addr.to_string());
        }
        if let Some(ip) = conn.forwarded_for {
            // Only ever set from a trusted proxy's header (see identity::forwarded).
            base.set("forwarded_for", json!([ip.to_string()]));
        }
        if let Some((source, cert)) = conn.client_cert() {
            let source = match source {
                crate::identity::CertSource::Tls => "mtls",
                crate::identity::CertSource::TrustedProxy => "proxy_client_cert",
            };
            base.set("cert_source", source)
                .set("cert_fingerprint", cert.sha256_fingerprint.as_str())
                .set("cert_cn", cert.common_name.clone());
        }
        Arc::new(Trail {
            binding,
            started: Instant::now(),
            request_id: request_id.to_owned(),
            client: client_key(conn),
            base,
            progress: Mutex::new(Progress::default()),
        })
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        match self.progress.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The principal the authentication step settled on (API key id, JWT iss/sub, ...).
    pub fn note_principal(&self, tenant: &str, principal: &str) {
        let mut p = self.progress();
        p.tenant = Some(tenant.to_owned());
        p.principal = Some(principal.to_owned());
    }

    /// How the caller authenticated: `auth_method` (`api_key`, `jwt`, `certificate`) and
    /// the credential's fields (`key_id`; `jwt_iss`, `jwt_sub`; `cert_fingerprint`).
    pub fn note_auth(&self, method: &'static str, fields: Vec<(&'static str, String)>) {
        let mut auth = vec![("auth_method", method.to_owned())];
        auth.extend(fields);
        self.progress().auth = auth;
    }

    /// Deny rules that refused the request, once each (recorded with the denial, or with
    /// the completion when the output was refused after admission).
    pub fn note_filter_rules(&self, rules: &[String]) {
        for rule in rules {
            self.note_filter(rule, "deny", 1);
        }
    }

    /// A filter rule that acted (`action` = `redact` or `deny`) `count` times: before
    /// admission it belongs to the prompt (`admit`/`deny` record), after it to the output
    /// (`complete` record). Rule ids and counts only, never the matched text.
    pub fn note_filter(&self, rule: &str, action: &'static str, count: usize) {
        let mut p = self.progress();
        let hits = if p.admit_seq.is_some() {
            &mut p.output_filter_hits
        } else {
            &mut p.filter_hits
        };
        note_hit(hits, rule, action, count);
    }

    fn record(&self, kind: Kind) -> Record {
        let mut record = self.base.clone();
        record.kind = kind;
        let p = self.progress();
        record
            .set("tenant", p.tenant.clone())
            .set("principal", p.principal.clone())
            .set("model", p.model.clone());
        for (key, value) in &p.auth {
            record.set(key, value.as_str());
        }
        set_filter_fields(&mut record, &p.filter_hits);
        record
    }

    async fn write(&self, record: Record) -> Result<u64, AuditError> {
        match self.binding.log.append(record).await {
            Ok(seq) => Ok(seq),
            Err(e) if self.binding.danger_allow_unaudited => {
                tracing::error!(error = %e, "audit record NOT written; serving anyway (danger_allow_unaudited)");
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }

    /// The admission record, committed before the engine sees the request. From the
    /// sampling parameters: the alternatives per token asked for when log-probabilities
    /// were (`logprobs`; the values themselves never are) and the kind of grammar the
    /// output must follow (`grammar`: `json_object`, `json_schema`, `tool_calls`) with a
    /// keyed digest of its schema (`grammar_digest`).
    pub async fn admit(
        &self,
        tenant: &str,
        model: &str,
        prompt: &Prompt,
        params: &SamplingParams,
        embedding_inputs: &[Prompt],
        n: usize,
    ) -> Result<(), AuditError> {
        {
            let mut p = self.progress();
            p.tenant.get_or_insert_with(|| tenant.to_owned());
            p.model = Some(model.to_owned());
        }
        let mut record = self.record(Kind::Admit);
        record
            .set("decision", "allow")
            .set("logprobs", params.logprobs.map(|n| n as u64))
            // Choices asked for (OpenAI's `n`), when more than one.
            .set("n", (n > 1).then_some(n as u64));
        if let Some(grammar) = &params.grammar {
            let (kind, schema) = match &grammar.spec {
                GrammarSpec::JsonObject => ("json_object", None),
                GrammarSpec::JsonSchema(schema) => ("json_schema", Some(schema.clone())),
                GrammarSpec::ToolCalls {
                    functions,
                    parallel,
                    or_schema,
                } => {
                    let functions: Vec<Value> = functions
                        .iter()
                        .map(|f| json!({"name": f.name, "parameters": f.parameters}))
                        .collect();
                    let whole = json!({
                        "functions": functions, "parallel": parallel, "or_schema": or_schema,
                    });
                    ("tool_calls", Some(whole))
                }
            };
            record.set("grammar", kind);
            if let Some(schema) = schema {
                let mut bytes = Vec::new();
                super::record::canonical(&schema, &mut bytes);
                record.set("grammar_digest", self.binding.digest.digest(&bytes));
            }
        }
        let suppressed = self.binding.log.refusals().take_suppressed(&self.client);
        record.set(
            "suppressed_refusals",
            (suppressed > 0).then_some(suppressed),
        );
        let digest = &self.binding.digest;
        let store = self.binding.store_text_for(tenant);
        if !embedding_inputs.is_empty() {
            // `/v1/embeddings`: how many inputs, a keyed digest of all of them (as the
            // engine runs them: text, or token ids once tokenized), and, where text is
            // kept, the text inputs.
            let whole: Vec<Value> = embedding_inputs
                .iter()
                .map(|input| match input {
                    Prompt::Text(text) => Value::from(text.as_str()),
                    Prompt::TokenIds(ids) => Value::from(ids.clone()),
                    Prompt::Chat(..) => Value::Null,
                })
                .collect();
            let mut bytes = Vec::new();
            super::record::canonical(&Value::Array(whole), &mut bytes);
            record
                .set("embedding_inputs", embedding_inputs.len() as u64)
                .set("prompt_digest", digest.digest(&bytes));
            if store != StoreText::None {
                let kept: Vec<Value> = embedding_inputs
                    .iter()
                    .filter_map(|input| match input {
                        Prompt::Text(text) => Some(store.apply(text).into()),
                        _ => None,
                    })
                    .collect();
                if !kept.is_empty() {
                    record.set("embedding_texts", kept);
                }
            }
        } else {
            match prompt {
                Prompt::Text(text) => {
                    record.set("prompt_digest", digest.digest(text.as_bytes()));
                    record.set("prompt_text", store.apply(text));
                }
                Prompt::Chat(messages, tools) => {
                    record.set("prompt_digest", digest.digest(&chat_bytes(messages)));
                    // The tools offered: how many, a keyed digest of their definitions (names,
                    // descriptions, schemas) and, where text is kept, their names.
                    if !tools.is_empty() {
                        let mut bytes = Vec::new();
                        super::record::canonical(&Value::Array(tools.clone()), &mut bytes);
                        record
                            .set("tools_offered", tools.len() as u64)
                            .set("tools_digest", digest.digest(&bytes));
                        if store != StoreText::None {
                            let names: Vec<Value> = tools
                                .iter()
                                .map(|t| {
                                    let name = t.pointer("/function/name").and_then(Value::as_str);
                                    store.apply(name.unwrap_or_default()).into()
                                })
                                .collect();
                            record.set("tool_names", names);
                        }
                    }
                    let each: Vec<Value> = messages
                        .iter()
                        .map(|m| Value::from(digest.digest(m.content.as_bytes())))
                        .collect();
                    record.set("message_digests", each);
                    if store != StoreText::None {
                        let kept: Vec<Value> = messages
                            .iter()
                            .map(|m| json!({"role": m.role, "content": store.apply(&m.content)}))
                            .collect();
                        record.set("prompt_messages", kept);
                    }
                }
                Prompt::TokenIds(ids) => {
                    let bytes = serde_json::to_vec(ids).unwrap_or_default();
                    record.set("prompt_digest", digest.digest(&bytes));
                }
            }
        }
        let seq = match self.write(record).await {
            Ok(seq) => seq,
            Err(e) => {
                self.binding
                    .log
                    .refusals()
                    .restore(&self.client, suppressed);
                return Err(e);
            }
        };
        self.progress().admit_seq = Some(seq);
        Ok(())
    }

    /// What the engine reported at the end of a non-streaming generation.
    pub fn note_finished(
        &self,
        reason: FinishReason,
        usage: Usage,
        ttft_ms: Option<u64>,
        text: &str,
    ) {
        let store = self
            .binding
            .store_text_for(self.progress().tenant.as_deref().unwrap_or(""));
        let digest = self.binding.digest.digest(text.as_bytes());
        let mut p = self.progress();
        p.finish_reason = Some(reason.as_str());
        p.usage = Some(usage);
        p.ttft_ms = ttft_ms;
        p.output_digest = Some(digest);
        p.output_text = store.apply(text);
    }

    /// With several choices: each one's finish reason, in choice order (the record's
    /// `finish_reason` is the first choice's).
    pub fn note_finish_reasons(&self, reasons: impl IntoIterator<Item = FinishReason>) {
        self.progress().finish_reasons = reasons.into_iter().map(FinishReason::as_str).collect();
    }

    /// The tools the answer called (recorded as keyed digests of their names, and the
    /// names where `store_text` keeps text).
    pub fn note_tool_calls<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        self.progress()
            .tool_calls
            .extend(names.into_iter().map(str::to_owned));
    }

    /// What a tokenizer route answered: the token count (`prompt_tokens`), a keyed digest
    /// of the answer (`output` as sent: the ids' JSON, or the text), and the text where
    /// `store_text` keeps outputs.
    pub fn note_tokenizer(&self, tokens: usize, output: &[u8], text: Option<&str>) {
        let store = self
            .binding
            .store_text_for(self.progress().tenant.as_deref().unwrap_or(""));
        let digest = self.binding.digest.digest(output);
        let mut p = self.progress();
        p.usage = Some(Usage {
            prompt_tokens: tokens,
            ..Usage::default()
        });
        p.output_digest = Some(digest);
        p.output_text = text.and_then(|t| store.apply(t));
    }

    /// Called by `handle` once the response is known: the `deny` record of a request refused
    /// before admission, or the `complete` record of a non-streaming one. A stream writes its
    /// own. An error means the response must not be sent.
    pub async fn finish(&self, status: u16, error_code: Option<&str>) -> Result<(), AuditError> {
        let (admitted, streaming) = {
            let p = self.progress();
            (p.admit_seq.is_some(), p.streaming)
        };
        if streaming {
            return Ok(());
        }
        if admitted {
            let record = self.completion(status, error_code);
            return self.write(record).await.map(drop);
        }
        let refused = status >= 400;
        // Budget the records of refusals nobody authenticated for (see `super::flood`).
        let budget = self.binding.log.refusals();
        let suppressed = if refused && self.progress().auth.is_empty() {
            match budget.check(&self.client, Instant::now()) {
                Decision::Record { suppressed } => suppressed,
                Decision::Suppress => return self.suppressed(),
            }
        } else {
            budget.take_suppressed(&self.client)
        };
        let mut record = self.record(if refused { Kind::Deny } else { Kind::Admit });
        record
            .set("decision", if refused { "deny" } else { "allow" })
            .set("reason", error_code.map(str::to_owned))
            .set("status", status)
            .set("latency_ms", self.elapsed_ms())
            .set(
                "suppressed_refusals",
                (suppressed > 0).then_some(suppressed),
            );
        let written = self.write(record).await.map(drop);
        if written.is_err() {
            budget.restore(&self.client, suppressed);
        }
        written
    }

    /// A refusal over its client's budget goes out without a record (it is counted), but
    /// not while the log is failing: then, like every other response, it becomes a 503.
    fn suppressed(&self) -> Result<(), AuditError> {
        if self.binding.log.healthy() || self.binding.danger_allow_unaudited {
            Ok(())
        } else {
            Err(AuditError::Unavailable(
                "the audit log is failing writes".into(),
            ))
        }
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn completion(&self, status: u16, error_code: Option<&str>) -> Record {
        let p = self.progress();
        let mut record = Record::new(Kind::Complete);
        record
            .set("request_id", self.request_id.as_str())
            .set("tenant", p.tenant.clone())
            .set("admit_seq", p.admit_seq)
            .set("status", status)
            .set("reason", error_code.map(str::to_owned))
            .set("finish_reason", p.finish_reason)
            .set(
                "finish_reasons",
                (p.finish_reasons.len() > 1).then(|| {
                    p.finish_reasons
                        .iter()
                        .map(|r| Value::from(*r))
                        .collect::<Vec<_>>()
                }),
            )
            .set("latency_ms", self.elapsed_ms())
            .set("ttft_ms", p.ttft_ms)
            .set("output_digest", p.output_digest.clone())
            .set("output_text", p.output_text.clone());
        set_filter_fields(&mut record, &p.output_filter_hits);
        if !p.tool_calls.is_empty() {
            let digest = &self.binding.digest;
            let digests: Vec<Value> = p
                .tool_calls
                .iter()
                .map(|n| Value::from(digest.digest(n.as_bytes())))
                .collect();
            record.set("tool_call_digests", digests);
            let store = self
                .binding
                .store_text_for(p.tenant.as_deref().unwrap_or(""));
            if store != StoreText::None {
                let names: Vec<Value> =
                    p.tool_calls.iter().map(|n| store.apply(n).into()).collect();
                record.set("tool_call_names", names);
            }
        }
        if let Some(usage) = p.usage {
            record
                .set("prompt_tokens", usage.prompt_tokens as u64)
                .set("completion_tokens", usage.completion_tokens as u64);
        }
        record
    }

    /// Hands the completion over to a stream (called when the stream is built).
    pub fn stream(self: &Arc<Self>) -> StreamAudit {
        self.progress().streaming = true;
        let store = self
            .binding
            .store_text_for(self.progress().tenant.as_deref().unwrap_or(""));
        StreamAudit {
            trail: Arc::clone(self),
            mac: Some(self.binding.digest.hasher()),
            text: (store != StoreText::None).then(String::new),
            store,
            done: false,
        }
    }
}

/// The canonical bytes a chat prompt's digest covers: `[{"content":…,"role":…},…]`, with
/// `tool_calls` (`[{"arguments","id","name"}]`) and `tool_call_id` on the messages that
/// carry them (so a plain chat's digest is what it always was).
pub fn chat_bytes(messages: &[ChatMessage]) -> Vec<u8> {
    let value: Vec<Value> = messages
        .iter()
        .map(|m| {
            let mut v = json!({"role": m.role, "content": m.content});
            if !m.tool_calls.is_empty() {
                v["tool_calls"] = m
                    .tool_calls
                    .iter()
                    .map(|c| json!({"id": c.id, "name": c.name, "arguments": c.arguments}))
                    .collect();
            }
            if let Some(id) = &m.tool_call_id {
                v["tool_call_id"] = Value::from(id.as_str());
            }
            v
        })
        .collect();
    let mut out = Vec::new();
    super::record::canonical(&Value::Array(value), &mut out);
    out
}

/// A stream's completion record: the output digest is computed as tokens pass.
pub struct StreamAudit {
    trail: Arc<Trail>,
    mac: Option<Hmac<Sha256>>,
    text: Option<String>,
    store: StoreText,
    done: bool,
}

impl StreamAudit {
    /// The request's trail.
    pub fn trail(&self) -> &Trail {
        &self.trail
    }

    /// An output filter rule that acted on this stream (rule id and count only).
    pub fn note_filter(&self, rule: &str, action: &'static str, count: usize) {
        self.trail.note_filter(rule, action, count);
    }

    pub fn token(&mut self, text: &str) {
        if let Some(mac) = &mut self.mac {
            mac.update(text.as_bytes());
        }
        if let Some(t) = &mut self.text {
            t.push_str(text);
        }
    }

    fn record(&mut self, status: u16, error_code: Option<&str>) -> Record {
        self.done = true;
        let mut record = self.trail.completion(status, error_code);
        if let Some(mac) = self.mac.take() {
            record.set("output_digest", finish(mac));
        }
        if let Some(text) = self.text.take() {
            record.set("output_text", self.store.apply(&text));
        }
        record
    }

    /// The completion record, committed before the stream's final event.
    pub async fn finish(
        &mut self,
        reason: Option<FinishReason>,
        usage: Option<Usage>,
        ttft_ms: Option<u64>,
        error_code: Option<&str>,
    ) -> Result<(), AuditError> {
        {
            let mut p = self.trail.progress();
            p.finish_reason = reason.map(FinishReason::as_str);
            p.usage = usage;
            p.ttft_ms = ttft_ms;
        }
        let record = self.record(200, error_code);
        self.trail.write(record).await.map(drop)
    }
}

impl Drop for StreamAudit {
    fn drop(&mut self) {
        if !self.done {
            // The client went away mid-stream: record it without anyone to wait.
            self.trail.progress().finish_reason = Some("cancelled");
            let record = self.record(499, Some("client_disconnected"));
            self.trail.binding.log.append_detached(record);
        }
    }
}
