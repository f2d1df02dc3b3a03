//! `[[models]] backend = "remote"`: the model runs on a pool of OpenAI-compatible upstream
//! servers (engine-role `airlockd` nodes, vLLM, llama.cpp `llama-server`), reached over
//! mutual TLS or a Unix socket. This gateway still does identity, filters, limits and audit
//! (the request path does not know the difference: [`RemoteEngine`] is an
//! `airlock_engine::Engine`); the upstream only generates.
//!
//! * [`client`]: HTTP/1.1 exchanges (TCP + rustls, or a Unix socket), every step under a
//!   timeout, every response bounded, on kept-alive connections when one is ready
//!   ([`idle`]: how many, how long).
//! * [`pool`]: the upstreams' health (active probes, passive ejection with backoff) and the
//!   choice of one (least outstanding requests, optionally prefix affinity).
//! * [`wire`]: the request body sent upstream and the SSE stream parsed back.
//! * [`engine`]: [`RemoteEngine`], which streams each request from the pool and turns the
//!   upstream's deltas into `TokenEvent`s.
//!
//! Design notes are in `docs/multi-node.md` ("Remote engine pools").

mod client;
mod engine;
mod idle;
mod pool;
mod wire;

#[cfg(test)]
mod tests;

pub use engine::RemoteEngine;

/// Why a remote pool could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("model `{model}`: TLS client: {key}: {reason}")]
    Tls {
        model: String,
        key: &'static str,
        reason: String,
    },
    #[error("model `{model}`: server_name `{name}` is not a DNS name or IP address")]
    ServerName { model: String, name: String },
    #[error("model `{0}`: a remote pool needs the async runtime (build it from within one)")]
    NoRuntime(String),
}
