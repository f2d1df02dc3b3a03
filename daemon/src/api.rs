//! The OpenAI wire format and nothing else: the route table (resolved once per request),
//! reading and parsing request bodies, the request and response types, SSE framing, and the
//! one place errors become HTTP responses ([`error`]).
//!
//! No decisions are made here: who may do what, limits, audit and the engine are the
//! request path's phases in [`crate::pipeline`], which calls into this module.

pub mod body;
pub mod embeddings;
pub mod endpoints;
pub mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod openai;
pub mod request;
pub mod response;
pub mod route;
pub mod sse;
pub mod tokenize;

use std::convert::Infallible;

use bytes::Bytes;

pub use error::{ApiError, ErrorObject};

/// `x-request-id`: accepted from the client when sane, generated otherwise, always returned
/// (`server/request.rs` sets it before the request path reads it).
pub const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// The response body type of every route.
pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;
