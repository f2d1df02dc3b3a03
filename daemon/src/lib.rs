//! `airlockd`: a mutual-TLS gateway that serves local LLMs over the OpenAI API to tenants.
//!
//! The request path, in order: TLS (or a trusted proxy) → request id + tracing (`server`)
//! → authentication → tenant policy → prompt filter → limits → audit admit → engine →
//! output filter → audit complete, written as one function in [`pipeline`]; the OpenAI wire
//! format is [`api`]. `main.rs` only parses the command line and calls in here.

pub mod access;
pub mod admin;
pub mod api;
pub mod app;
pub mod audit;
pub mod certs;
pub mod cli;
pub mod clock;
pub mod config;
pub mod counts;
pub mod dev;
pub mod identity;
pub mod keys;
pub mod limits_redis;
pub mod logging;
pub mod metrics;
mod model_inspect;
pub mod notify;
pub mod pipeline;
pub mod remote;
pub mod server;
pub mod telemetry;
pub mod tls;
