//! Response bodies: JSON documents and (see `sse`) event streams.

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::Response;
use serde::Serialize;

use super::BoxBody;

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> BoxBody {
    Full::new(bytes.into()).boxed()
}

/// A JSON response. Serializing our own response types cannot fail; should it ever, the
/// client still gets a well-formed 500 in the error shape.
pub fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response<BoxBody> {
    let (status, bytes) = match serde_json::to_vec(value) {
        Ok(bytes) => (status, Bytes::from(bytes)),
        Err(e) => {
            tracing::error!(error = %e, "cannot serialize a response");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Bytes::from_static(
                    br#"{"error":{"message":"the server had an error while processing the request","type":"server_error","param":null,"code":null}}"#,
                ),
            )
        }
    };
    let mut resp = Response::new(full(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The rate-limit headers (OpenAI's names), built at compile time: a `&str` name is
/// validated and lowercased on every insert.
pub const LIMIT_REQUESTS: http::HeaderName =
    http::HeaderName::from_static("x-ratelimit-limit-requests");
const REMAINING_REQUESTS: http::HeaderName =
    http::HeaderName::from_static("x-ratelimit-remaining-requests");
const RESET_REQUESTS: http::HeaderName =
    http::HeaderName::from_static("x-ratelimit-reset-requests");
pub const LIMIT_TOKENS: http::HeaderName =
    http::HeaderName::from_static("x-ratelimit-limit-tokens");
const REMAINING_TOKENS: http::HeaderName =
    http::HeaderName::from_static("x-ratelimit-remaining-tokens");
const RESET_TOKENS: http::HeaderName = http::HeaderName::from_static("x-ratelimit-reset-tokens");

/// OpenAI's `x-ratelimit-*` headers; a limit the tenant does not have is left out.
pub fn ratelimit_headers(
    headers: &mut http::HeaderMap,
    status: &airlock_policy::ratelimit::RateStatus,
) {
    // Counts become header values directly (no intermediate `String`); a reset time is
    // formatted once and its buffer becomes the value without a copy.
    let seconds = |d: std::time::Duration| {
        http::HeaderValue::try_from(format!("{:.3}s", d.as_secs_f64())).ok()
    };
    let mut put = |name: http::HeaderName, value: Option<http::HeaderValue>| {
        if let Some(v) = value {
            headers.insert(name, v);
        }
    };
    if let Some(limit) = status.limit_requests {
        put(LIMIT_REQUESTS, Some(limit.into()));
        put(REMAINING_REQUESTS, Some(status.remaining_requests.into()));
        put(RESET_REQUESTS, seconds(status.reset_requests));
    }
    if let Some(limit) = status.limit_tokens {
        put(LIMIT_TOKENS, Some(limit.into()));
        put(REMAINING_TOKENS, Some(status.remaining_tokens.into()));
        put(RESET_TOKENS, seconds(status.reset_tokens));
    }
}
