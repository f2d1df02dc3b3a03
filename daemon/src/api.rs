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

/// A random (version 4) UUID for request, completion, response and tool-call ids, from the
/// thread-local CSPRNG (`rand::rng()`, seeded from the OS): no `getrandom(2)` per id as
/// `Uuid::new_v4` makes, which showed in the request path's profile.
pub fn random_uuid() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(rand::random()).into_uuid()
}

/// The response body type of every route.
pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

#[cfg(test)]
mod tests {
    #[test]
    fn random_uuids_are_version_4_and_distinct() {
        let a = super::random_uuid();
        let b = super::random_uuid();
        assert_eq!(a.get_version_num(), 4);
        assert_eq!(a.get_variant(), uuid::Variant::RFC4122);
        assert_ne!(a, b);
    }
}
