//! What wraps every request before the application sees it: the request id, the tracing
//! span and access log line, and (proxy mode) the forwarded client identity.

use std::sync::Arc;
use std::time::Instant;

use ::http::{HeaderName, HeaderValue, Request, Response};
use tracing::Instrument;

use super::app;
use super::state::State;
use crate::config::ListenerMode;
use crate::identity::ConnInfo;
use crate::identity::forwarded::{self, X_FORWARDED_FOR};

pub use crate::api::X_REQUEST_ID;

/// Serves one request: request id → span → forwarded identity → application.
pub async fn serve(
    state: Arc<State>,
    conn: Arc<ConnInfo>,
    mut req: Request<hyper::body::Incoming>,
) -> Response<app::BoxBody> {
    let start = Instant::now();
    // The id comes first so that every later log line, including the application's, has it.
    let request_id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_sane_request_id(v))
        .map(str::to_owned)
        .unwrap_or_else(|| crate::api::random_uuid().to_string());
    let id_value =
        HeaderValue::from_str(&request_id).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    req.headers_mut().insert(X_REQUEST_ID, id_value.clone());

    // The generation's outcome fields are filled in by `pipeline::finish` for a JSON
    // response, so that one line (`response`, below) tells the whole request.
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %req.method(),
        path = %req.uri().path(),
        finish_reason = tracing::field::Empty,
        prompt_tokens = tracing::field::Empty,
        completion_tokens = tracing::field::Empty,
        ttft_ms = tracing::field::Empty,
        decode_tokens_per_s = tracing::field::Empty,
    );

    // Proxy mode: resolve the forwarded identity here, once, and strip the raw headers so
    // nothing downstream can read an unverified value by mistake.
    let conn = match &state.config.listener.mode {
        ListenerMode::Proxy(proxy) => {
            let fwd = forwarded::forwarded_identity(&conn, req.headers(), proxy);
            if !fwd.ignored_headers.is_empty() {
                let names: Vec<&str> = fwd.ignored_headers.iter().map(HeaderName::as_str).collect();
                span.in_scope(|| {
                    tracing::warn!(
                        peer = ?conn.peer_addr,
                        headers = ?names,
                        "ignoring forwarding headers from an untrusted peer"
                    );
                });
            }
            if !fwd.malformed_for.is_empty() {
                span.in_scope(|| {
                    tracing::warn!(
                        peer = ?conn.peer_addr,
                        entries = ?fwd.malformed_for,
                        client = ?fwd.client_ip,
                        "skipping malformed X-Forwarded-For entries"
                    );
                });
            }
            if let Some(error) = &fwd.error {
                span.in_scope(|| tracing::warn!(peer = ?conn.peer_addr, %error, "unusable forwarded client certificate"));
            }
            req.headers_mut().remove(&proxy.client_cert_header);
            req.headers_mut().remove(&X_FORWARDED_FOR);
            let mut per_request = ConnInfo::clone(&conn);
            per_request.forwarded_client_cert = fwd.client_cert;
            per_request.forwarded_for = fwd.client_ip;
            Arc::new(per_request)
        }
        ListenerMode::Tls(_) => conn,
    };

    let mut resp = app::handle(state.app.clone(), conn, req)
        .instrument(span.clone())
        .await;
    resp.headers_mut().insert(X_REQUEST_ID, id_value);
    span.in_scope(|| {
        // Latency to response headers; a streamed body may run on well after this line.
        tracing::info!(
            status = resp.status().as_u16(),
            latency_ms = start.elapsed().as_millis() as u64,
            "response"
        );
    });
    resp
}

/// Accepts ids of 1 to 128 visible, unreserved characters, so that a client cannot inject
/// log syntax or oversized values through the id.
fn is_sane_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::is_sane_request_id;

    #[test]
    fn request_ids() {
        assert!(is_sane_request_id("0b6c2e1e-5f0e-4a57-9d1c-1b2b3c4d5e6f"));
        assert!(is_sane_request_id("req_123.abc:1"));
        assert!(!is_sane_request_id(""));
        assert!(!is_sane_request_id("a b"));
        assert!(!is_sane_request_id("x\"}"));
        assert!(!is_sane_request_id(&"a".repeat(129)));
    }
}
