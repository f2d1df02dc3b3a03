//! `airlockd`: a mutual-TLS gateway that serves local LLMs over the OpenAI API to tenants.
//!
//! The request path, in order: TLS (or a trusted proxy) → request id + tracing →
//! authentication → tenant policy → rate limits → prompt filter → audit admit → engine →
//! output filter → audit complete. `main.rs` only parses the command line and calls in here.

pub mod access;
pub mod admin;
pub mod app;
pub mod audit;
pub mod certs;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dev;
pub mod http;
pub mod identity;
pub mod keys;
pub mod logging;
pub mod metrics;
mod model_inspect;
pub mod notify;
pub mod server;
pub mod tls;
