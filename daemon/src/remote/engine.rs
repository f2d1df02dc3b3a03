//! [`RemoteEngine`]: an `airlock_engine::Engine` whose model runs on a pool of upstreams.
//! Each request is one task: pick an upstream, send the request, and relay the stream as
//! `TokenEvent`s. Until the upstream's response head arrives nothing has reached the
//! client, so a failed upstream is retried on another; after it, a failure ends the
//! stream with an error. The task also watches the `Generation`: when the client goes away
//! it drops the exchange, which closes the connection and cancels the upstream request; an
//! exchange read to its clean end hands its connection back for reuse (`client`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use airlock_engine::{
    Engine, EngineError, EngineStatus, FinishReason, GenerateRequest, Generation, GenerationSender,
    GenerationTimings, ModelFeatures, ModelInfo, Prompt, TokenEvent, Usage,
};
use bytes::Bytes;
use http_body_util::Full;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::RemoteError;
use super::client::{Client, Exchange, Keepalive, MAX_ERROR_BODY};
use super::pool::{Lease, Pool, Probe};
use super::wire::{self, Decoder, Event};
use crate::config::{Balance, RemoteConfig};

/// Events buffered per request for a slow reader (the upstream's socket buffers the rest).
const EVENT_BUFFER: usize = 64;

/// The model's context when `max_context` does not say (what `/v1/models` reports; the
/// upstream enforces its own).
const DEFAULT_CONTEXT: usize = 8192;

/// A model served by a pool of upstreams.
pub struct RemoteEngine {
    info: ModelInfo,
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    /// The health prober; stopped with the engine.
    prober: JoinHandle<()>,
    /// Closes connections idle past `keepalive_timeout`; stopped with the engine. `None`
    /// when no connection is kept.
    sweeper: Option<JoinHandle<()>>,
}

struct Shared {
    name: String,
    cfg: RemoteConfig,
    pool: Arc<Pool>,
    client: Client,
    /// Requests submitted and not yet ended, against `max_queue`.
    in_flight: AtomicUsize,
    max_in_flight: usize,
}

impl Drop for RemoteEngine {
    fn drop(&mut self) {
        self.prober.abort();
        if let Some(sweeper) = &self.sweeper {
            sweeper.abort();
        }
        // Requests still in flight hold `shared` a while; their connections close with
        // them instead of being kept for a pool nobody uses (a reload builds a new one).
        self.shared.client.close();
    }
}

impl RemoteEngine {
    /// Builds the pool of model `name` (TLS material read now) and starts its health
    /// prober on the current runtime. `max_in_flight`: requests at once (`max_queue`).
    pub fn new(
        name: &str,
        cfg: &RemoteConfig,
        max_in_flight: usize,
        max_context: Option<usize>,
    ) -> Result<RemoteEngine, RemoteError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| RemoteError::NoRuntime(name.to_owned()))?;
        let (tls, server_name) = match &cfg.tls {
            None => (None, None),
            Some(tls) => {
                let config = crate::tls::client_config(&tls.ca, Some(&tls.client), &[b"http/1.1"])
                    .map(Arc::new)
                    .map_err(|(key, reason)| RemoteError::Tls {
                        model: name.to_owned(),
                        key,
                        reason,
                    })?;
                let server_name = tls
                    .server_name
                    .as_ref()
                    .map(|n| {
                        rustls_pki_types::ServerName::try_from(n.clone()).map_err(|_| {
                            RemoteError::ServerName {
                                model: name.to_owned(),
                                name: n.clone(),
                            }
                        })
                    })
                    .transpose()?;
                (Some(config), server_name)
            }
        };
        let pool = Arc::new(Pool::new(
            cfg.upstreams.clone(),
            cfg.balance,
            cfg.eject_after.get(),
            cfg.eject_backoff,
        ));
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            cfg: cfg.clone(),
            pool,
            client: Client::new(
                tls,
                server_name,
                cfg.connect_timeout,
                cfg.upstreams.len(),
                Keepalive {
                    connections: cfg.keepalive_connections,
                    timeout: cfg.keepalive_timeout,
                },
            ),
            in_flight: AtomicUsize::new(0),
            max_in_flight: max_in_flight.max(1),
        });
        let prober = runtime.spawn(probe_forever(Arc::clone(&shared)));
        let sweeper = (cfg.keepalive_connections > 0)
            .then(|| runtime.spawn(sweep_forever(Arc::clone(&shared))));
        let info = ModelInfo {
            id: name.to_owned(),
            created: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            context_length: max_context.unwrap_or(DEFAULT_CONTEXT),
            device: format!("remote ({} upstreams)", cfg.upstreams.len()),
            features: ModelFeatures {
                completions: true,
                chat: true,
                tokenizer: false,
                logprobs: false,
                tools: None,
                // `response_format` is passed on; the upstream compiles it (or refuses).
                grammar: true,
                embeddings: None,
            },
            embedding_size: None,
        };
        Ok(RemoteEngine {
            info,
            shared,
            runtime,
            prober,
            sweeper,
        })
    }

    fn check_model(&self, model: &str) -> Result<(), EngineError> {
        if model == self.info.id {
            Ok(())
        } else {
            Err(EngineError::UnknownModel(model.to_owned()))
        }
    }
}

impl Engine for RemoteEngine {
    fn models(&self) -> Vec<ModelInfo> {
        vec![self.info.clone()]
    }

    fn count_prompt_tokens(&self, model: &str, prompt: &Prompt) -> Result<usize, EngineError> {
        self.check_model(model)?;
        Ok(wire::prompt_upper_bound(prompt))
    }

    fn submit(&self, request: GenerateRequest) -> Result<Generation, EngineError> {
        self.check_model(&request.model)?;
        let (path, body) = wire::request_body(
            &self.shared.cfg.upstream_model,
            &request.prompt,
            &request.params,
        )?;
        let body = Bytes::from(serde_json::to_vec(&body).map_err(|e| {
            EngineError::Inference(format!("cannot encode the upstream request: {e}"))
        })?);
        let affinity = match self.shared.cfg.balance {
            Balance::PrefixAffinity { prefix_bytes } => {
                wire::prefix_hash(&request.prompt, prefix_bytes.get())
            }
            Balance::LeastOutstanding => None,
        };
        let shared = &self.shared;
        if shared.in_flight.fetch_add(1, Ordering::AcqRel) >= shared.max_in_flight {
            shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(EngineError::QueueFull {
                capacity: shared.max_in_flight,
            });
        }
        let job = Job {
            path,
            body,
            affinity,
            request_id: request.request_id,
            prompt_tokens: wire::prompt_upper_bound(&request.prompt),
            prompt_param: match request.prompt {
                Prompt::Chat(..) => "messages",
                _ => "prompt",
            },
        };
        let (tx, generation) = Generation::channel(EVENT_BUFFER);
        let shared = Arc::clone(&self.shared);
        self.runtime.spawn(async move {
            run(&shared, job, tx).await;
            shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        });
        Ok(generation)
    }

    fn status(&self) -> EngineStatus {
        let active = self.shared.pool.outstanding();
        EngineStatus {
            queued: self
                .shared
                .in_flight
                .load(Ordering::Acquire)
                .saturating_sub(active),
            active,
            ..EngineStatus::default()
        }
    }
}

/// One request, ready to send.
struct Job {
    path: &'static str,
    body: Bytes,
    affinity: Option<u64>,
    request_id: String,
    /// The admission bound, reported in `Started` and used when an upstream sends no usage.
    prompt_tokens: usize,
    prompt_param: &'static str,
}

/// Why an attempt ended before streaming began.
enum Refused {
    /// The upstream could not take it (down, overloaded, loading): try another.
    Retry(String),
    /// The request itself was refused: no other upstream would do better.
    Final(EngineError),
}

/// Runs `job` on the pool until it is answered, refused, or no upstream is left.
async fn run(shared: &Shared, job: Job, tx: GenerationSender) {
    let started = Instant::now();
    let mut tried = Vec::new();
    let mut last = String::from("no upstream is eligible (all ejected or loading)");
    loop {
        let Some(lease) = shared.pool.pick(job.affinity, Instant::now(), &tried) else {
            tracing::warn!(model = %shared.name, request_id = %job.request_id, reason = %last, "remote pool: no upstream answered");
            let _ = tx.send(TokenEvent::Failed(EngineError::Unavailable)).await;
            return;
        };
        tried.push(lease.index);
        let attempt = tokio::select! {
            attempt = head(shared, &lease, &job) => attempt,
            () = tx.closed() => return,
        };
        match attempt {
            Ok(exchange) => return relay(shared, lease, exchange, &job, &tx, started).await,
            Err(Refused::Final(e)) => {
                let _ = tx.send(TokenEvent::Failed(e)).await;
                return;
            }
            Err(Refused::Retry(reason)) => {
                crate::metrics::global().upstream_retry(&shared.name, &lease.addr().to_string());
                tracing::warn!(model = %shared.name, upstream = %lease.addr(), request_id = %job.request_id, reason = %reason, "remote pool: trying another upstream");
                last = reason;
            }
        }
    }
}

/// Sends the request to the leased upstream and classifies its response head.
async fn head(shared: &Shared, lease: &Lease, job: &Job) -> Result<Exchange, Refused> {
    let request = http::Request::post(job.path)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "text/event-stream")
        .header("x-request-id", job.request_id.as_str())
        .body(Full::new(job.body.clone()))
        .map_err(|e| Refused::Final(EngineError::Inference(e.to_string())))?;
    let mut exchange = match shared
        .client
        .send(
            lease.index,
            lease.addr(),
            request,
            shared.cfg.first_byte_timeout,
        )
        .await
    {
        Ok(exchange) => exchange,
        Err(e) => {
            failed(shared, lease);
            return Err(Refused::Retry(e.to_string()));
        }
    };
    if !exchange.reused {
        crate::metrics::global().upstream_connection(&shared.name, &lease.addr().to_string());
    }
    let status = exchange.response.status();
    if status.is_success() {
        return Ok(exchange);
    }
    let body = exchange
        .read_bounded(MAX_ERROR_BODY, shared.cfg.idle_timeout)
        .await;
    // Read to its end: the connection may serve another request (before `failed` below,
    // which may eject the upstream and close its idle connections).
    shared.client.release(lease.index, exchange).await;
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .map(|v| wire::error_message(v.get("error").unwrap_or(&v)))
        .unwrap_or_else(|| format!("HTTP {status}"));
    match status.as_u16() {
        // Loading (llama.cpp) or overloaded: skip it, no fault of the request.
        503 => {
            shared.pool.loading(lease.index);
            Err(Refused::Retry(format!("HTTP 503: {message}")))
        }
        429 => Err(Refused::Retry(format!("HTTP 429: {message}"))),
        400 | 413 | 422 => Err(Refused::Final(EngineError::InvalidRequest {
            param: job.prompt_param,
            reason: format!("the upstream refused the request: {message}"),
        })),
        // 401/403 (this gateway's certificate not admitted), 404 (the model is not there),
        // 5xx: that upstream is misconfigured or failing.
        _ => {
            failed(shared, lease);
            Err(Refused::Retry(format!("HTTP {status}: {message}")))
        }
    }
}

/// Counts a failed exchange with the leased upstream (ejecting it after `eject_after`).
fn failed(shared: &Shared, lease: &Lease) {
    failed_at(shared, lease.index);
}

fn failed_at(shared: &Shared, index: usize) {
    let ejected = shared.pool.failed(index, Instant::now());
    let upstream = shared.pool.upstreams()[index].addr.to_string();
    crate::metrics::global().upstream_failure(&shared.name, &upstream, ejected);
    if ejected {
        // Whatever the kept connections lead to just failed: the next requests after the
        // ejection start afresh.
        shared.client.close_idle(index);
        tracing::warn!(model = %shared.name, upstream = %upstream, "remote pool: upstream ejected after consecutive failures");
    }
}

/// Relays a streamed response as `TokenEvent`s until it finishes, fails, or the client
/// leaves (dropping `exchange` then closes the connection: the upstream stops).
async fn relay(
    shared: &Shared,
    lease: Lease,
    mut exchange: Exchange,
    job: &Job,
    tx: &GenerationSender,
    started: Instant,
) {
    if !tx
        .send(TokenEvent::Started {
            prompt_tokens: job.prompt_tokens,
        })
        .await
    {
        return;
    }
    let cfg = &shared.cfg;
    let mut decoder = Decoder::default();
    let mut events = Vec::new();
    let mut received = 0usize;
    let mut stream = Stream::default();
    let failure = loop {
        let frame = tokio::select! {
            frame = timeout(cfg.idle_timeout, exchange.frame()) => frame,
            () = tx.closed() => return,
        };
        let data = match frame {
            Err(_) => {
                break Some(format!(
                    "the upstream sent nothing for {:?}",
                    cfg.idle_timeout
                ));
            }
            Ok(None) => break None,
            Ok(Some(Err(e))) => break Some(format!("the upstream connection failed: {e}")),
            Ok(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
        };
        received += data.len();
        if received > cfg.max_response_bytes.get() {
            break Some(format!(
                "the upstream response exceeds max_response_bytes ({})",
                cfg.max_response_bytes
            ));
        }
        if let Err(e) = decoder.push(&data, &mut events) {
            break Some(format!("the upstream stream is malformed: {e}"));
        }
        let mut failed = None;
        for event in events.drain(..) {
            match event {
                Event::Text(text) => {
                    stream.token(Instant::now());
                    let sent = tx
                        .send(TokenEvent::Token {
                            id: 0,
                            text,
                            logprobs: Vec::new(),
                        })
                        .await;
                    if !sent {
                        return;
                    }
                }
                Event::Finish(reason) => stream.finish = Some(reason),
                Event::Usage(usage) => stream.usage = Some(usage),
                Event::Done => stream.done = true,
                Event::Error(message) => {
                    failed = Some(format!("the upstream reported: {message}"));
                    break;
                }
            }
        }
        if failed.is_some() {
            break failed;
        }
        if stream.done {
            break None;
        }
    };
    // A clean end needs the upstream's word: `[DONE]`, or at least a finish reason.
    let failure = failure.or_else(|| {
        (stream.finish.is_none() && !stream.done)
            .then(|| "the upstream ended the stream before it finished".to_owned())
    });
    if let Some(reason) = failure {
        // Closed, never kept: the upstream may be mid-stream on it.
        drop(exchange);
        failed(shared, &lease);
        tracing::warn!(model = %shared.name, upstream = %lease.addr(), request_id = %job.request_id, reason = %reason, "remote pool: stream failed");
        let _ = tx
            .send(TokenEvent::Failed(EngineError::Inference(reason)))
            .await;
        return;
    }
    let index = lease.index;
    shared.pool.succeeded(index);
    drop(lease);
    let usage = stream.usage.unwrap_or(Usage {
        // No usage from the upstream: the admission bound and the deltas relayed (each at
        // least one token), so settlement never charges less than it could have been.
        prompt_tokens: job.prompt_tokens,
        completion_tokens: stream.tokens,
        cached_tokens: 0,
    });
    let _ = tx
        .send(TokenEvent::Finished {
            reason: stream.finish.unwrap_or(FinishReason::Stop),
            usage,
            timings: stream.timings(started, usage.completion_tokens),
            text: String::new(),
            logprobs: Vec::new(),
        })
        .await;
    // After the client has its answer: the body's last chunk, then the connection kept.
    shared.client.release(index, exchange).await;
}

/// What a relayed stream has said so far.
#[derive(Default)]
struct Stream {
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    done: bool,
    /// Text deltas relayed.
    tokens: usize,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Stream {
    fn token(&mut self, now: Instant) {
        self.tokens += 1;
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    fn timings(&self, started: Instant, completion_tokens: usize) -> GenerationTimings {
        let (Some(first), Some(last)) = (self.first, self.last) else {
            return GenerationTimings::default();
        };
        let decode = last.duration_since(first).as_secs_f64();
        GenerationTimings {
            time_to_first_token_ms: first.duration_since(started).as_secs_f64() * 1000.0,
            // Not measured here: the upstream's prefill is inside the time to first token.
            prefill_tokens_per_s: 0.0,
            decode_tokens_per_s: if decode > 0.0 {
                completion_tokens.saturating_sub(1) as f64 / decode
            } else {
                0.0
            },
        }
    }
}

/// Probes every upstream each `health_interval`, all at once, for as long as the engine lives.
async fn probe_forever(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.cfg.health_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let probes = (0..shared.pool.upstreams().len()).map(|i| {
            let shared = &shared;
            async move {
                let probe = probe(shared, i).await;
                match probe {
                    Probe::Failed => failed_at(shared, i),
                    _ => {
                        shared.pool.probed(i, probe, Instant::now());
                    }
                }
                if probe != Probe::Healthy {
                    tracing::debug!(model = %shared.name, upstream = %shared.pool.upstreams()[i].addr, ?probe, "remote pool: health probe");
                }
            }
        });
        futures_util::future::join_all(probes).await;
    }
}

/// One GET of `health_path`: 2xx healthy, 503 loading, anything else (or no answer within
/// the interval) failed.
async fn probe(shared: &Shared, i: usize) -> Probe {
    let limit = shared
        .cfg
        .health_interval
        .min(shared.cfg.first_byte_timeout);
    let Ok(request) =
        http::Request::get(shared.cfg.health_path.as_str()).body(Full::new(Bytes::new()))
    else {
        return Probe::Failed;
    };
    let addr = &shared.pool.upstreams()[i].addr;
    match shared.client.send_once(addr, request, limit).await {
        Ok(mut exchange) => {
            let status = exchange.response.status();
            // Drain a little so the server sees a complete exchange, not a reset.
            let _ = exchange
                .read_bounded(MAX_ERROR_BODY, Duration::from_millis(200))
                .await;
            match status.as_u16() {
                200..=299 => Probe::Healthy,
                503 => Probe::Loading,
                _ => Probe::Failed,
            }
        }
        Err(_) => Probe::Failed,
    }
}

/// Closes kept connections idle past `keepalive_timeout`, for as long as the engine lives:
/// each is closed between one and one and a half `keepalive_timeout` after its last use.
async fn sweep_forever(shared: Arc<Shared>) {
    let every = (shared.cfg.keepalive_timeout / 2).max(Duration::from_millis(10));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        shared.client.sweep(Instant::now());
    }
}
