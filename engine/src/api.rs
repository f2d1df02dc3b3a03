//! The backend-neutral interface between the gateway and an inference engine.
//!
//! No burn, hyper or tokenizer types cross this boundary: the daemon sees models, requests,
//! and a stream of token events. A request's [`Generation`] handle is the only way to receive
//! its events; dropping the handle cancels the request (a client that disconnects mid-stream
//! must not keep a GPU busy).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::EngineError;

/// A model the engine can serve, as `/v1/models` and `/readyz` report it.
#[derive(Clone, Debug, Serialize)]
pub struct ModelInfo {
    /// The name clients use in `model` fields.
    pub id: String,
    /// Unix seconds at which the model was loaded.
    pub created: u64,
    /// Maximum prompt + completion length, in tokens.
    pub context_length: usize,
    /// The device the model runs on, e.g. `cpu (flex, f32)` or `gpu (Vulkan: NVIDIA H100, f16)`.
    pub device: String,
    /// What the model serves beyond text completion.
    pub features: ModelFeatures,
    /// The length of its embedding vectors (its hidden size) when it serves embeddings
    /// ([`ModelFeatures::embeddings`]); `None` otherwise.
    pub embedding_size: Option<usize>,
}

/// What a model serves beyond text completion, for `/v1/models` (clients pick a model by
/// it instead of being told by trial).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ModelFeatures {
    /// It generates text (completions, and chat where [`ModelFeatures::chat`]); `false` for
    /// an encoder, which serves embeddings only.
    pub completions: bool,
    /// It has a chat template: chat prompts render.
    pub chat: bool,
    /// Its tokenizer answers [`Engine::tokenize`] and [`Engine::detokenize`].
    pub tokenizer: bool,
    /// It computes logits, so [`SamplingParams::logprobs`] can be answered.
    pub logprobs: bool,
    /// Its chat template renders `tools`, and its tool calls come out in this format;
    /// `None`: a request offering tools is refused (no silent garbage).
    pub tools: Option<ToolFormat>,
    /// It decodes under a grammar ([`SamplingParams::grammar`]): structured outputs and
    /// forced tool calls.
    pub grammar: bool,
    /// It answers [`Engine::embed`], pooling its final hidden states this way (`None`: it
    /// serves no embeddings).
    pub embeddings: Option<Pooling>,
}

/// How an embedding is pooled from a model's final hidden states (a decoder's after the
/// final norm, before the LM head; an encoder's last layer), then L2-normalized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// The last token's state (Qwen3-Embedding, E5-Mistral: a causal model's last position
    /// has seen the whole input).
    Last,
    /// The mean over every position.
    Mean,
    /// The first position's state (BERT's `[CLS]`: bge, and `pooling_mode_cls_token`).
    Cls,
}

impl Pooling {
    /// The config spelling.
    pub fn name(self) -> &'static str {
        match self {
            Pooling::Last => "last",
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
        }
    }
}

/// A request for embeddings: each input's token ids, pooled into one vector each.
#[derive(Clone, Debug)]
pub struct EmbedRequest {
    /// Correlates engine logs with the gateway's request id.
    pub request_id: String,
    /// A model id from [`Engine::models`] whose features include embeddings.
    pub model: String,
    /// The inputs: text (tokenized as a text prompt is) or token ids; none empty, each
    /// within the model's context. Chat prompts are refused.
    pub inputs: Vec<Prompt>,
}

/// The answer to an [`EmbedRequest`].
#[derive(Clone, Debug, PartialEq)]
pub struct Embeddings {
    /// One L2-normalized vector per input, in input order, each
    /// [`ModelInfo::embedding_size`] long.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens run through the model, all inputs together.
    pub prompt_tokens: usize,
}

/// The receiving end of one embedding request. Dropping it cancels the request (the engine
/// stops before its next forward pass for it).
#[derive(Debug)]
pub struct PendingEmbeddings {
    answer: oneshot::Receiver<Result<Embeddings, EngineError>>,
}

/// The engine's end of one embedding request.
#[derive(Debug)]
pub struct EmbeddingsSender {
    answer: oneshot::Sender<Result<Embeddings, EngineError>>,
}

impl PendingEmbeddings {
    /// A handle and the sender an engine answers through.
    pub fn channel() -> (EmbeddingsSender, PendingEmbeddings) {
        let (tx, rx) = oneshot::channel();
        (
            EmbeddingsSender { answer: tx },
            PendingEmbeddings { answer: rx },
        )
    }

    /// The answer; [`EngineError::Unavailable`] when the engine dropped the request.
    pub async fn wait(self) -> Result<Embeddings, EngineError> {
        self.answer.await.unwrap_or(Err(EngineError::Unavailable))
    }

    /// The answer, blocking the calling thread (tests, CLI; never on a runtime).
    pub fn blocking_wait(self) -> Result<Embeddings, EngineError> {
        self.answer
            .blocking_recv()
            .unwrap_or(Err(EngineError::Unavailable))
    }
}

impl EmbeddingsSender {
    /// Answers the request (ignored when its handle is gone).
    pub fn send(self, answer: Result<Embeddings, EngineError>) {
        let _ = self.answer.send(answer);
    }

    /// True once the handle was dropped: the engine must then drop the request.
    pub fn is_cancelled(&self) -> bool {
        self.answer.is_closed()
    }
}

/// How a model writes tool calls, decided from its chat template (the markers it teaches
/// the model): see `docs/api.md`, "Tool calling".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolFormat {
    /// Hermes, Qwen2.5, Qwen3: `<tool_call>{"name": …, "arguments": …}</tool_call>`, one
    /// block per call.
    Hermes,
    /// Llama 3.1/3.2: a JSON object `{"name": …, "parameters": …}`, possibly after
    /// `<|python_tag|>`; several separated by `;`.
    Llama3Json,
    /// Mistral (tokenizer v3–v7: Mistral 7B v0.3, Nemo, Small 2501): `[TOOL_CALLS]` then a
    /// JSON array of `{"name": …, "arguments": …}`.
    Mistral,
    /// Mistral (tokenizer v11+: Small 3.1/3.2, Devstral, Magistral, Ministral 3): per call
    /// `[TOOL_CALLS]name[ARGS]{…}`, optionally `[CALL_ID]id` before `[ARGS]`. The markers
    /// are control tokens, kept in the decoded text so the calls can be told apart.
    MistralArgs,
}

/// One call an assistant message made, as a chat template renders it back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatToolCall {
    pub id: String,
    pub name: String,
    /// A mapping when the client's `arguments` string is a JSON object (what Hugging Face
    /// templates expect: they `tojson` it), else the string as sent.
    pub arguments: serde_json::Value,
}

/// One chat message, as OpenAI's `messages` array carries it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// An assistant turn's tool calls (multi-turn conversations send them back).
    pub tool_calls: Vec<ChatToolCall>,
    /// A `tool` message: the call it answers.
    pub tool_call_id: Option<String>,
}

/// The tools a chat request offers the model, each `{"type": "function", "function":
/// {…}}` as transformers and llama.cpp `--jinja` pass them to the chat template. Empty:
/// none (the template sees no `tools`).
pub type ChatTools = Vec<serde_json::Value>;

/// What the model is asked to continue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prompt {
    /// Raw text, tokenized as is (with the model's BOS token when its tokenizer adds one).
    Text(String),
    /// Chat messages, rendered with the model's own chat template, generation prompt added.
    Chat(Vec<ChatMessage>, ChatTools),
    /// Token ids, used as given (developer CLI, tests).
    TokenIds(Vec<u32>),
}

/// A grammar the output must follow: decoding masks, at every step, the tokens that
/// cannot continue a valid output (llguidance, `crate::constraint`).
#[derive(Clone, Debug, PartialEq)]
pub struct Grammar {
    /// The request field the grammar came from, named when it cannot be compiled
    /// (`response_format`, `text.format`, `tool_choice`).
    pub param: &'static str,
    pub spec: GrammarSpec,
}

/// What the output must be.
#[derive(Clone, Debug, PartialEq)]
pub enum GrammarSpec {
    /// Any JSON object (OpenAI's `json_object`).
    JsonObject,
    /// A JSON value valid against this JSON Schema (OpenAI's `json_schema`). Keywords the
    /// compiler does not implement are refused by name, never ignored.
    JsonSchema(serde_json::Value),
    /// One or more calls (`parallel`) of these functions, in the model's own tool-call
    /// format ([`ModelFeatures::tools`]), arguments valid against each one's parameters
    /// (`tool_choice: required`, or one named function).
    ToolCalls {
        functions: Vec<ToolFunction>,
        parallel: bool,
        /// The answer the model may give instead of calling (`tool_choice: auto` with a
        /// `response_format` schema): `None` forces a call.
        or_schema: Option<serde_json::Value>,
    },
}

/// A function a forced tool call may name.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolFunction {
    pub name: String,
    /// Its JSON Schema (`{"type": "object"}` when the tool declares none).
    pub parameters: serde_json::Value,
}

/// Most stop strings one request may carry (OpenAI's limit).
pub const MAX_STOP_SEQUENCES: usize = 4;

/// Most bytes in one stop string. Stop strings are matched with one automaton whose cost per
/// token does not depend on their length, but held-back text does: a stream may lag the
/// model by up to this many bytes while its end could still begin a stop string.
pub const MAX_STOP_BYTES: usize = 512;

/// Most alternatives reported per generated token ([`SamplingParams::logprobs`]): OpenAI's
/// `top_logprobs` cap. Finding them is one pass over the vocabulary per token, whatever the
/// count; the cap bounds what each token event carries.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Most samples one request may ask for ([`Engine::submit_n`], OpenAI's `n`): each holds its
/// own KV cache and event stream, so the cap bounds what one request can take.
pub const MAX_N: usize = 16;

/// Refuses an `n` outside 1..=[`MAX_N`].
pub(crate) fn check_n(n: usize) -> Result<(), EngineError> {
    if (1..=MAX_N).contains(&n) {
        return Ok(());
    }
    Err(EngineError::InvalidRequest {
        param: "n",
        reason: format!("must be between 1 and {MAX_N}, got {n}"),
    })
}

/// Sampling parameters. The defaults are the engine's, not OpenAI's: the gateway fills in
/// OpenAI's defaults (temperature 1, top_p 1) before submitting.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus sampling mass in (0, 1]; 1 disables it.
    pub top_p: f32,
    /// Keep only the k most likely tokens; `None` disables it.
    pub top_k: Option<usize>,
    /// Drop tokens whose probability is below `min_p` × the top token's; 0 disables it.
    pub min_p: f32,
    /// Multiplicative penalty (> 1 discourages) on tokens already in prompt or output.
    pub repetition_penalty: f32,
    /// OpenAI's presence penalty, in [-2, 2].
    pub presence_penalty: f32,
    /// OpenAI's frequency penalty, in [-2, 2].
    pub frequency_penalty: f32,
    /// Same seed + same request = same output.
    pub seed: Option<u64>,
    /// Upper bound on generated tokens; `None` means up to the context length.
    pub max_tokens: Option<usize>,
    /// Stop strings: generation ends before the first occurrence, which is not emitted.
    /// At most [`MAX_STOP_SEQUENCES`] of at most [`MAX_STOP_BYTES`] bytes each.
    pub stop: Vec<String>,
    /// Keep generating past EOS tokens (benchmarks with a fixed length).
    pub ignore_eos: bool,
    /// Log-probabilities to report: `None`, none (and no work for them); `Some(n)`, each
    /// generated token's and its `n` most likely alternatives' (`n` at most
    /// [`MAX_TOP_LOGPROBS`]). The values are the log-softmax of the model's raw logits,
    /// before penalties, temperature and top-k/top-p/min-p.
    pub logprobs: Option<usize>,
    /// Constrained decoding: the output follows this grammar (`None`: free text).
    pub grammar: Option<Grammar>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: None,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            max_tokens: None,
            stop: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            grammar: None,
        }
    }
}

/// A request for the engine.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    /// Correlates engine logs with the gateway's request id.
    pub request_id: String,
    /// The tenant the request is charged to (used for fair scheduling).
    pub tenant: String,
    /// The tenant's scheduling weight (≥ 1; 0 counts as 1): its share of the engine against
    /// other busy tenants is proportional to it.
    pub tenant_weight: u32,
    /// A model id from [`Engine::models`].
    pub model: String,
    pub prompt: Prompt,
    pub params: SamplingParams,
}

/// A prompt tokenized once, by [`Engine::prepare`]: its token count (chat template
/// applied) for admission control, and, where tokenizing is real work, the token ids that
/// [`Engine::submit_prepared`] runs without tokenizing again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepared {
    tokens: usize,
    ids: Option<Vec<u32>>,
}

impl Prepared {
    /// A prompt of `tokens` tokens whose ids submission computes itself (engines whose
    /// tokenizing costs next to nothing).
    pub fn counted(tokens: usize) -> Self {
        Self { tokens, ids: None }
    }

    /// A prompt tokenized to `ids`, which submission uses as they are.
    pub fn tokenized(ids: Vec<u32>) -> Self {
        Self {
            tokens: ids.len(),
            ids: Some(ids),
        }
    }

    /// The prompt's token count, chat template included.
    pub fn token_count(&self) -> usize {
        self.tokens
    }

    /// The token ids, when preparation kept them.
    pub fn into_ids(self) -> Option<Vec<u32>> {
        self.ids
    }
}

/// One candidate token and its log-probability.
#[derive(Clone, Debug, PartialEq)]
pub struct TopLogprob {
    pub id: u32,
    /// The token decoded on its own, special tokens kept (a token holding part of a UTF-8
    /// character decodes to U+FFFD).
    pub token: String,
    /// The log-softmax of the raw logits at this token (`-inf` when its logit is).
    pub logprob: f32,
}

/// A generated token's log-probability and its most likely alternatives.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    /// The generated token itself.
    pub chosen: TopLogprob,
    /// The most likely tokens at this position, most likely first (ties: lower id first);
    /// as many as [`SamplingParams::logprobs`] asked for.
    pub top: Vec<TopLogprob>,
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An EOS token or a stop string.
    Stop,
    /// `max_tokens` or the context length was reached.
    Length,
    /// Cancelled by the caller (never reported to a client: it has gone).
    Cancelled,
    /// The output was tool calls: never reported by an engine, set by the gateway when it
    /// parsed calls out of a finished generation (OpenAI's `tool_calls`).
    ToolCalls,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Cancelled => "cancelled",
            Self::ToolCalls => "tool_calls",
        }
    }
}

/// Token counts, as OpenAI's `usage` object reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Of `prompt_tokens`, those a cached prefix held, so they were not run through the
    /// model (OpenAI's `prompt_tokens_details.cached_tokens`).
    pub cached_tokens: usize,
}

impl Usage {
    pub fn total_tokens(&self) -> usize {
        self.prompt_tokens + self.completion_tokens
    }
}

/// Timings of one generation, for logs, metrics and the audit log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct GenerationTimings {
    /// Time from submission to the first generated token.
    pub time_to_first_token_ms: f64,
    /// Prefill throughput, prompt tokens per second.
    pub prefill_tokens_per_s: f64,
    /// Decode throughput, generated tokens per second after the first.
    pub decode_tokens_per_s: f64,
}

/// What a generation reports, in order: one `Started`, any number of `Token`s, then exactly
/// one `Finished` or `Failed`.
#[derive(Clone, Debug)]
pub enum TokenEvent {
    /// The prompt was accepted and tokenized.
    Started { prompt_tokens: usize },
    /// One generated token. `text` is the newly decodable text (may be empty while a
    /// multi-byte character or a possible stop string is held back). `logprobs`: when they
    /// were asked for, those of the tokens whose text `text` completes (so they travel with
    /// their text; tokens of a matched stop string, and the end-of-sequence token, have
    /// none); otherwise empty.
    Token {
        id: u32,
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    /// Generation ended normally. `text` flushes anything held back, `logprobs` those of
    /// the tokens it completes.
    Finished {
        reason: FinishReason,
        usage: Usage,
        timings: GenerationTimings,
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    /// Generation failed after it was accepted.
    Failed(EngineError),
}

/// The receiving end of one request. Dropping it cancels the request.
pub struct Generation {
    events: mpsc::Receiver<TokenEvent>,
    cancel: CancelToken,
}

impl Generation {
    /// Creates a handle and the sender an engine feeds. `capacity` bounds the events buffered
    /// for a slow reader; the engine stops stepping that sequence while it is full.
    pub fn channel(capacity: usize) -> (GenerationSender, Generation) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let cancel = CancelToken::default();
        (
            GenerationSender {
                events: tx,
                cancel: cancel.clone(),
            },
            Generation { events: rx, cancel },
        )
    }

    /// The next event, or `None` once the engine has dropped the sequence.
    pub async fn next(&mut self) -> Option<TokenEvent> {
        self.events.recv().await
    }

    /// The next event, blocking the calling thread (CLI, benchmarks; never on a runtime).
    pub fn blocking_next(&mut self) -> Option<TokenEvent> {
        self.events.blocking_recv()
    }

    /// Asks the engine to stop this request within one decode step.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl fmt::Debug for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Generation")
            .field("cancelled", &self.cancel.is_cancelled())
            .finish()
    }
}

/// The engine's end of one request.
#[derive(Debug)]
pub struct GenerationSender {
    events: mpsc::Sender<TokenEvent>,
    cancel: CancelToken,
}

impl GenerationSender {
    /// Sends an event from an engine thread. Returns `false` when the receiver is gone or the
    /// request was cancelled: the engine must then free the sequence.
    pub fn send_blocking(&self, event: TokenEvent) -> bool {
        !self.cancel.is_cancelled() && self.events.blocking_send(event).is_ok()
    }

    /// Sends an event from an async task (an engine that is I/O, not a thread: a remote
    /// upstream), waiting while the buffer is full. Returns `false` as [`Self::send_blocking`].
    pub async fn send(&self, event: TokenEvent) -> bool {
        !self.cancel.is_cancelled() && self.events.send(event).await.is_ok()
    }

    /// Completes once the receiver is dropped: an async engine waits on it beside its I/O,
    /// so that a client that went away cancels the work at once, not at the next event.
    pub async fn closed(&self) {
        self.events.closed().await;
    }

    /// Sends an event without waiting; `Err` returns the event when the buffer is full.
    pub fn try_send(&self, event: TokenEvent) -> Result<(), Option<TokenEvent>> {
        if self.is_cancelled() {
            return Err(None);
        }
        self.events.try_send(event).map_err(|e| match e {
            mpsc::error::TrySendError::Full(ev) => Some(ev),
            mpsc::error::TrySendError::Closed(_) => None,
        })
    }

    /// True once the request was cancelled or its receiver dropped.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled() || self.events.is_closed()
    }
}

/// A shared cancellation flag.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Engine health, for `/readyz` and metrics.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EngineStatus {
    /// Requests waiting for a sequence slot.
    pub queued: usize,
    /// Sequences being decoded.
    pub active: usize,
    /// Bytes held by KV caches.
    pub kv_cache_bytes: usize,
    /// Prompt tokens run through the model since it started (recomputation after a
    /// preemption included): a request with `n` samples runs its prompt once.
    pub prefill_tokens: u64,
    /// Bytes of the KV-cache budget held by cached prompt prefixes (not counted in
    /// `kv_cache_bytes`; given up whenever a sequence needs the blocks).
    pub prefix_cache_bytes: usize,
    /// Prompt tokens not run through the model because a cached prefix held them.
    pub prefix_cache_tokens: u64,
    /// Tokens drafted by speculative decoding (prompt lookup) and verified.
    pub spec_drafted_tokens: u64,
    /// Drafted tokens the verification accepted (each one a decode step saved).
    pub spec_accepted_tokens: u64,
}

fn no_tokenizer(model: &str) -> EngineError {
    EngineError::InvalidRequest {
        param: "model",
        reason: format!("model `{model}` has no tokenizer to expose"),
    }
}

/// The refusal of an embedding request to a model that serves none.
pub fn no_embeddings(model: &str) -> EngineError {
    EngineError::InvalidRequest {
        param: "model",
        reason: format!("model `{model}` does not serve embeddings"),
    }
}

/// The refusal of a completion or chat request to a model that serves embeddings only.
pub fn embeddings_only(model: &str) -> EngineError {
    EngineError::InvalidRequest {
        param: "model",
        reason: format!(
            "model `{model}` is an embeddings model: it serves /v1/embeddings only, not \
             completions or chat"
        ),
    }
}

/// An inference engine as the gateway sees it.
pub trait Engine: Send + Sync + 'static {
    /// The models this engine serves.
    fn models(&self) -> Vec<ModelInfo>;

    /// Counts the tokens a prompt takes for `model` (chat template applied), for admission
    /// control before submission.
    fn count_prompt_tokens(&self, model: &str, prompt: &Prompt) -> Result<usize, EngineError>;

    /// Queues a request. Fails at once with [`EngineError::QueueFull`] when the bounded
    /// queue is full, [`EngineError::UnknownModel`], or [`EngineError::ContextLength`].
    fn submit(&self, request: GenerateRequest) -> Result<Generation, EngineError>;

    /// Tokenizes (renders) a prompt once for `model`, for both the admission count and
    /// [`Engine::submit_prepared`]. The same errors as [`Engine::count_prompt_tokens`].
    /// The default keeps only the count (for engines whose tokenizing is trivial).
    fn prepare(&self, model: &str, prompt: &Prompt) -> Result<Prepared, EngineError> {
        self.count_prompt_tokens(model, prompt)
            .map(Prepared::counted)
    }

    /// [`Engine::submit`] for a request whose prompt `prepared` came from
    /// [`Engine::prepare`] with the same model and prompt: the same checks and errors,
    /// without tokenizing the prompt again. Its work beyond that is bounded (no
    /// tokenizing of prompts that `prepare` kept the ids of), so callers may run it on an
    /// async runtime. The default submits as [`Engine::submit`] does.
    fn submit_prepared(
        &self,
        request: GenerateRequest,
        prepared: Prepared,
    ) -> Result<Generation, EngineError> {
        let _ = prepared;
        self.submit(request)
    }

    /// [`Engine::submit_prepared`] for `n` ≥ 1 independent samples of one prompt (OpenAI's
    /// `n`). Returns one [`Generation`] per sample, in choice order; each reports its own
    /// `Started`/`Token`/`Finished` (its `usage.prompt_tokens` is the whole prompt's count).
    /// With a seed `s`, sample `i` samples as a solo request with seed `s + i` (wrapping) would.
    /// Dropping one handle cancels only that sample. Admission counts all `n` (queue slots, KV
    /// budget); a request that cannot fit fails at once as `submit_prepared` does.
    /// The default submits `n` independent requests; engines that can share the prompt's
    /// prefill (one pass, the KV cache forked) override it.
    fn submit_n(
        &self,
        request: GenerateRequest,
        prepared: Prepared,
        n: usize,
    ) -> Result<Vec<Generation>, EngineError> {
        check_n(n)?;
        let mut samples = Vec::with_capacity(n);
        for i in 0..n {
            let mut r = request.clone();
            r.params.seed = request.params.seed.map(|s| s.wrapping_add(i as u64));
            // On an error `samples` is dropped, which cancels the ones already queued.
            samples.push(self.submit_prepared(r, prepared.clone())?);
        }
        Ok(samples)
    }

    /// Tokenizes `text` for `model` without a chat template; `add_special` adds the
    /// special tokens (BOS) the model's tokenizer adds to a text prompt. For clients that
    /// count or chunk text. The default: this engine has no tokenizer to expose.
    fn tokenize(
        &self,
        model: &str,
        text: &str,
        add_special: bool,
    ) -> Result<Vec<u32>, EngineError> {
        let _ = (text, add_special);
        Err(no_tokenizer(model))
    }

    /// Each token's text on its own (special tokens kept), for `with_pieces`.
    fn token_pieces(&self, model: &str, ids: &[u32]) -> Result<Vec<String>, EngineError> {
        let _ = ids;
        Err(no_tokenizer(model))
    }

    /// Decodes token ids to text, special tokens kept (so that detokenizing what
    /// [`Engine::tokenize`] returned gives the text back).
    fn detokenize(&self, model: &str, ids: &[u32]) -> Result<String, EngineError> {
        let _ = ids;
        Err(no_tokenizer(model))
    }

    /// Queues an embedding request for a model that serves embeddings
    /// ([`ModelFeatures::embeddings`]): it runs on the model's inference thread, between
    /// generation steps. Fails at once like [`Engine::submit`] (queue full, unknown model,
    /// an input beyond the context). The default: this engine serves no embeddings.
    fn embed(&self, request: EmbedRequest) -> Result<PendingEmbeddings, EngineError> {
        Err(no_embeddings(&request.model))
    }

    /// Current queue and cache figures.
    fn status(&self) -> EngineStatus;
}
