//! A deterministic, test-only engine: no model, no weights, no randomness.
//!
//! [`TestEngine`] exists so the gateway can be tested (and its overhead benchmarked) without
//! loading a model. It is never a default: a configuration has to name it explicitly.
//!
//! Its "model", in full:
//!
//! * **Tokens** are whitespace-separated words. A text prompt takes one token per word; a chat
//!   prompt takes, per message, one token for the role plus one per word of its content;
//!   a token-id prompt takes one token per id.
//! * **Generation** echoes the prompt's words back (for a chat prompt: the last message's
//!   words), one word per token, joined by single spaces, then stops with
//!   [`FinishReason::Stop`]. With `ignore_eos` it repeats the words until `max_tokens` or the
//!   context is used up. `max_tokens` (or the context end) cuts it with
//!   [`FinishReason::Length`]. An empty echo source generates nothing.
//! * **Stop strings** end generation before their first occurrence; text that could be the
//!   start of a stop string is held back until it is known not to be one.
//! * **Tools** are accepted and not shown to the "model" (nor counted): it claims the
//!   Hermes format, so a last message of `<tool_call>{…}</tool_call>` comes back as a
//!   tool call through the gateway's parser.
//! * **Log-probabilities** are refused ([`EngineError::InvalidRequest`] naming `logprobs`):
//!   there are no logits to take them from. So are **grammars** (structured outputs, forced
//!   tool calls): there are no logits to mask.
//! * **Failures**: a prompt containing the word [`FAIL_WORD`] is accepted, then fails with
//!   [`EngineError::Inference`] after its first generated token (to test mid-stream errors).
//! * **Embeddings** (`Engine::embed`): each input's vector is [`TEST_EMBEDDING_SIZE`]
//!   numbers drawn from a generator seeded with a hash of its tokens (words, or ids), then
//!   L2-normalized: the same input always gives the same vector, different inputs
//!   (almost surely) different ones. No model meaning whatsoever; it is answered at once,
//!   on the caller's thread. Pooling is reported as `last`.
//! * **Timing**: each token takes `token_delay` (so a test can hold a stream open).
//! * **Capacity**: `max_active` worker threads decode one request each; up to `max_queue`
//!   more wait; beyond that `submit` answers [`EngineError::QueueFull`].
//! * **Cancellation**: checked before every token, so a dropped [`Generation`] frees its
//!   worker within one `token_delay`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::detok::{StopMatcher, StopOutcome};
use crate::{
    EmbedRequest, Embeddings, Engine, EngineError, EngineStatus, FinishReason, GenerateRequest,
    Generation, GenerationSender, GenerationTimings, ModelInfo, PendingEmbeddings, Prompt,
    TokenEvent, Usage,
};

/// A Qwen2.5-style template (Hermes tool format), written from the published
/// `tokenizer_config.json` of Qwen2.5-Instruct: tools in the system turn, calls as
/// `<tool_call>` blocks with `arguments | tojson`, tool results as `<tool_response>` in a
/// user turn. For tests that need a model that takes tools (the embedded default model
/// with this template instead of its own).
pub const HERMES_TOOLS_TEMPLATE: &str = r#"{%- if tools %}
{{- '<|im_start|>system\n' }}
{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}
{{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
{%- for tool in tools %}{{- "\n" }}{{- tool | tojson }}{%- endfor %}
{{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}{%- endif %}
{%- endif %}
{%- for message in messages %}
{%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
{%- elif message.role == "assistant" %}
{{- '<|im_start|>' + message.role }}
{%- if message.content %}{{- '\n' + message.content }}{%- endif %}
{%- for tool_call in message.tool_calls %}
{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
{{- '\n<tool_call>\n{"name": "' }}{{- tool_call.name }}{{- '", "arguments": ' }}{{- tool_call.arguments | tojson }}{{- '}\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\n' }}
{%- elif message.role == "tool" %}
{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\n<tool_response>\n' }}{{- message.content }}{{- '\n</tool_response>' }}
{%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}{{- '<|im_end|>\n' }}{%- endif %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}
"#;

/// A prompt word that makes the request fail after its first generated token.
pub const FAIL_WORD: &str = "__airlock_test_fail__";

/// Events buffered per request before the worker waits for the reader.
const EVENT_BUFFER: usize = 64;

/// How often a worker blocked on a full event buffer re-checks cancellation and shutdown.
const BACKPRESSURE_POLL: Duration = Duration::from_millis(1);

/// How a [`TestEngine`] behaves.
#[derive(Clone, Debug)]
pub struct TestEngineConfig {
    /// The single model id served.
    pub model: String,
    /// Prompt + completion tokens allowed per request.
    pub context_length: usize,
    /// Time each generated token takes.
    pub token_delay: Duration,
    /// Requests decoded at once (worker threads).
    pub max_active: usize,
    /// Requests that may wait for a worker before `submit` answers `QueueFull`.
    pub max_queue: usize,
}

impl Default for TestEngineConfig {
    fn default() -> Self {
        Self {
            model: "test-echo".to_owned(),
            context_length: 2048,
            token_delay: Duration::ZERO,
            max_active: 4,
            max_queue: 16,
        }
    }
}

/// A request handed to a worker.
struct Job {
    prompt_tokens: usize,
    echo: Vec<String>,
    params: crate::SamplingParams,
    /// The same stop-string matcher the real engine uses.
    stop: StopMatcher,
    fail: bool,
    submitted: Instant,
    tx: GenerationSender,
}

/// State shared by the engine handle and its workers.
struct Shared {
    config: TestEngineConfig,
    queued: AtomicUsize,
    active: AtomicUsize,
    shutdown: AtomicBool,
}

/// The deterministic test engine. See the module docs for its behaviour.
pub struct TestEngine {
    shared: Arc<Shared>,
    jobs: Option<SyncSender<Job>>,
    workers: Vec<JoinHandle<()>>,
    created: u64,
}

impl TestEngine {
    /// Starts `config.max_active` worker threads.
    pub fn new(config: TestEngineConfig) -> Result<TestEngine, EngineError> {
        if config.max_active == 0 {
            return Err(EngineError::InvalidRequest {
                param: "max_active",
                reason: "must be at least 1".into(),
            });
        }
        if config.context_length == 0 {
            return Err(EngineError::InvalidRequest {
                param: "context_length",
                reason: "must be at least 1".into(),
            });
        }
        let max_active = config.max_active;
        let (jobs, rx) = mpsc::sync_channel::<Job>(config.max_queue);
        let rx = Arc::new(Mutex::new(rx));
        let shared = Arc::new(Shared {
            config,
            queued: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
        });
        let mut workers = Vec::with_capacity(max_active);
        for i in 0..max_active {
            let shared = Arc::clone(&shared);
            let rx = Arc::clone(&rx);
            let handle = thread::Builder::new()
                .name(format!("test-engine-{i}"))
                .spawn(move || worker(&shared, &rx))
                .map_err(|e| EngineError::Inference(format!("cannot start worker thread: {e}")))?;
            workers.push(handle);
        }
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(TestEngine {
            shared,
            jobs: Some(jobs),
            workers,
            created,
        })
    }

    fn check_model(&self, model: &str) -> Result<(), EngineError> {
        if model == self.shared.config.model {
            Ok(())
        } else {
            Err(EngineError::UnknownModel(model.to_owned()))
        }
    }
}

impl Drop for TestEngine {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        // Closing the queue wakes idle workers; busy ones see `shutdown` within one token.
        self.jobs = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// Splits text into the test engine's tokens.
fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split_whitespace()
}

/// The prompt's token count and the words the engine will echo back.
fn tokenize(prompt: &Prompt) -> (usize, Vec<String>) {
    match prompt {
        Prompt::Text(text) => {
            let echo: Vec<String> = words(text).map(str::to_owned).collect();
            (echo.len(), echo)
        }
        Prompt::Chat(messages, _) => {
            let count = messages.iter().map(|m| 1 + words(&m.content).count()).sum();
            let echo = messages
                .last()
                .map(|m| words(&m.content).map(str::to_owned).collect())
                .unwrap_or_default();
            (count, echo)
        }
        Prompt::TokenIds(ids) => (ids.len(), ids.iter().map(u32::to_string).collect()),
    }
}

/// The length of the test engine's embedding vectors.
pub const TEST_EMBEDDING_SIZE: usize = 64;

/// The test engine's embedding of an input's tokens: a hash-seeded, normalized vector.
pub fn test_embedding(tokens: &[String]) -> Vec<f32> {
    let mut state: u64 = 0xcbf2_9ce4_8422_2325;
    for token in tokens {
        for byte in token.bytes().chain([0]) {
            state ^= u64::from(byte);
            state = state.wrapping_mul(0x0100_0000_01b3);
        }
    }
    let raw: Vec<f64> = (0..TEST_EMBEDDING_SIZE)
        .map(|_| {
            // xorshift64*: a fixed sequence from the seed.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let x = state.wrapping_mul(0x2545_f491_4f6c_dd1d);
            (x >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        })
        .collect();
    crate::embed::normalize(&raw)
}

/// A stable token id for a word (FNV-1a, folded into a 32k vocabulary).
fn token_id(word: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in word.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % 32_000
}

impl Engine for TestEngine {
    fn models(&self) -> Vec<ModelInfo> {
        vec![ModelInfo {
            id: self.shared.config.model.clone(),
            created: self.created,
            context_length: self.shared.config.context_length,
            device: "test engine (deterministic echo, no model)".to_owned(),
            // Chat prompts are echoed; there is no tokenizer to expose and no logits.
            features: crate::ModelFeatures {
                completions: true,
                chat: true,
                tokenizer: false,
                logprobs: false,
                // Its echo can write any call, so it claims the Hermes format.
                tools: Some(crate::ToolFormat::Hermes),
                grammar: false,
                embeddings: Some(crate::Pooling::Last),
            },
            embedding_size: Some(TEST_EMBEDDING_SIZE),
        }]
    }

    fn count_prompt_tokens(&self, model: &str, prompt: &Prompt) -> Result<usize, EngineError> {
        self.check_model(model)?;
        Ok(tokenize(prompt).0)
    }

    fn submit(&self, request: GenerateRequest) -> Result<Generation, EngineError> {
        self.check_model(&request.model)?;
        let context_length = self.shared.config.context_length;
        let (prompt_tokens, echo) = tokenize(&request.prompt);
        crate::sampling::validate(&request.params)?;
        if request.params.logprobs.is_some() {
            // No logits, so nothing faithful to report: refused rather than made up.
            return Err(EngineError::InvalidRequest {
                param: "logprobs",
                reason: "the test engine computes no logits, so it has no log-probabilities".into(),
            });
        }
        if let Some(grammar) = &request.params.grammar {
            // An echo cannot follow a grammar: refused rather than answered unconstrained.
            return Err(EngineError::InvalidRequest {
                param: grammar.param,
                reason: "the test engine computes no logits, so it cannot follow a grammar".into(),
            });
        }
        let stop = StopMatcher::new(&request.params.stop)?;
        let max_tokens = request.params.max_tokens.unwrap_or(0);
        if prompt_tokens >= context_length || prompt_tokens + max_tokens > context_length {
            return Err(EngineError::ContextLength {
                context_length,
                prompt_tokens,
                max_tokens,
            });
        }
        let jobs = self.jobs.as_ref().ok_or(EngineError::Unavailable)?;
        let fail = echo.iter().any(|w| w == FAIL_WORD);
        let (tx, generation) = Generation::channel(EVENT_BUFFER);
        let job = Job {
            prompt_tokens,
            echo,
            params: request.params,
            stop,
            fail,
            submitted: Instant::now(),
            tx,
        };
        // Count the job as queued before a worker can take it, so `queued` never underflows.
        self.shared.queued.fetch_add(1, Ordering::AcqRel);
        match jobs.try_send(job) {
            Ok(()) => Ok(generation),
            Err(e) => {
                self.shared.queued.fetch_sub(1, Ordering::AcqRel);
                match e {
                    TrySendError::Full(_) => Err(EngineError::QueueFull {
                        capacity: self.shared.config.max_queue,
                    }),
                    TrySendError::Disconnected(_) => Err(EngineError::Unavailable),
                }
            }
        }
    }

    fn embed(&self, request: EmbedRequest) -> Result<PendingEmbeddings, EngineError> {
        self.check_model(&request.model)?;
        let context_length = self.shared.config.context_length;
        let mut vectors = Vec::with_capacity(request.inputs.len());
        let mut prompt_tokens = 0;
        for (i, input) in request.inputs.iter().enumerate() {
            let refuse = |reason: String| EngineError::InvalidRequest {
                param: "input",
                reason: format!("input[{i}]: {reason}"),
            };
            if matches!(input, Prompt::Chat(..)) {
                return Err(refuse("chat messages cannot be embedded".into()));
            }
            let (count, tokens) = tokenize(input);
            if count == 0 {
                return Err(refuse("an input has at least one token".into()));
            }
            if count > context_length {
                return Err(refuse(format!(
                    "{count} tokens; this model's maximum context length is {context_length} \
                     tokens"
                )));
            }
            prompt_tokens += count;
            vectors.push(test_embedding(&tokens));
        }
        let (tx, pending) = PendingEmbeddings::channel();
        tx.send(Ok(Embeddings {
            vectors,
            prompt_tokens,
        }));
        Ok(pending)
    }

    fn status(&self) -> EngineStatus {
        EngineStatus {
            queued: self.shared.queued.load(Ordering::Acquire),
            active: self.shared.active.load(Ordering::Acquire),
            ..EngineStatus::default()
        }
    }
}

/// A worker thread: takes jobs until the queue closes.
fn worker(shared: &Shared, rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = {
            let rx = rx.lock().unwrap_or_else(PoisonError::into_inner);
            rx.recv()
        };
        let Ok(job) = job else { return };
        shared.queued.fetch_sub(1, Ordering::AcqRel);
        if job.tx.is_cancelled() {
            continue;
        }
        shared.active.fetch_add(1, Ordering::AcqRel);
        run(shared, job);
        shared.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Delivers one event, waiting while the reader's buffer is full. `false`: stop this job.
fn deliver(shared: &Shared, tx: &GenerationSender, mut event: TokenEvent) -> bool {
    loop {
        if shared.shutdown.load(Ordering::Acquire) {
            return false;
        }
        match tx.try_send(event) {
            Ok(()) => return true,
            Err(None) => return false,
            Err(Some(back)) => {
                event = back;
                thread::sleep(BACKPRESSURE_POLL);
            }
        }
    }
}

/// Decodes one job to its end.
fn run(shared: &Shared, job: Job) {
    let Job {
        prompt_tokens,
        echo,
        params,
        mut stop,
        fail,
        submitted,
        tx,
    } = job;
    if !deliver(shared, &tx, TokenEvent::Started { prompt_tokens }) {
        return;
    }
    let room = shared.config.context_length.saturating_sub(prompt_tokens);
    let limit = params.max_tokens.map_or(room, |m| m.min(room));
    let natural = if params.ignore_eos || echo.is_empty() {
        None
    } else {
        Some(echo.len())
    };
    let mut generated = 0usize;
    let mut first_token: Option<Instant> = None;
    let reason = loop {
        if natural.is_some_and(|n| generated >= n) || echo.is_empty() {
            break FinishReason::Stop;
        }
        if generated >= limit {
            break FinishReason::Length;
        }
        if tx.is_cancelled() || shared.shutdown.load(Ordering::Acquire) {
            return;
        }
        if !shared.config.token_delay.is_zero() {
            thread::sleep(shared.config.token_delay);
        }
        let word = &echo[generated % echo.len()];
        let piece = if generated == 0 {
            word.clone()
        } else {
            format!(" {word}")
        };
        generated += 1;
        first_token.get_or_insert_with(Instant::now);
        match stop.push(&piece) {
            StopOutcome::Continue(text) => {
                if !deliver(
                    shared,
                    &tx,
                    TokenEvent::Token {
                        id: token_id(word),
                        text,
                        logprobs: Vec::new(),
                    },
                ) {
                    return;
                }
            }
            StopOutcome::Stop(text) => {
                // The stop string is not emitted, but its tokens were generated and count.
                let event = finished(
                    FinishReason::Stop,
                    prompt_tokens,
                    generated,
                    submitted,
                    first_token,
                    text,
                );
                deliver(shared, &tx, event);
                return;
            }
        }
        if fail {
            let error = EngineError::Inference(format!("`{FAIL_WORD}` in the prompt"));
            deliver(shared, &tx, TokenEvent::Failed(error));
            return;
        }
    };
    let event = finished(
        reason,
        prompt_tokens,
        generated,
        submitted,
        first_token,
        stop.flush(),
    );
    deliver(shared, &tx, event);
}

fn finished(
    reason: FinishReason,
    prompt_tokens: usize,
    completion_tokens: usize,
    submitted: Instant,
    first_token: Option<Instant>,
    text: String,
) -> TokenEvent {
    let now = Instant::now();
    let first = first_token.unwrap_or(now);
    let ttft = first.duration_since(submitted).as_secs_f64();
    let decode = now.duration_since(first).as_secs_f64();
    let timings = GenerationTimings {
        time_to_first_token_ms: ttft * 1000.0,
        prefill_tokens_per_s: if ttft > 0.0 {
            prompt_tokens as f64 / ttft
        } else {
            0.0
        },
        decode_tokens_per_s: if decode > 0.0 {
            completion_tokens.saturating_sub(1) as f64 / decode
        } else {
            0.0
        },
    };
    TokenEvent::Finished {
        reason,
        usage: Usage {
            prompt_tokens,
            completion_tokens,
            cached_tokens: 0,
        },
        timings,
        text,
        logprobs: Vec::new(),
    }
}

#[cfg(test)]
mod tests;
