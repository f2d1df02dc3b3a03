//! One accepted connection: TLS handshake (with a deadline), peer identity, then HTTP/1.1 or
//! HTTP/2 with hyper, watched for graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OwnedSemaphorePermit;

use super::request;
use super::state::State;
use crate::config::ListenerMode;
use crate::identity::forwarded::is_trusted_peer;
use crate::identity::{CertIdentity, ConnInfo};

/// HTTP/2 streams one connection may have open. Not `max_concurrent_requests`: that limit
/// is the application's, answered promptly with 503; a lower stream cap would instead make
/// clients queue silently. This only bounds a single connection's stream flood.
const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// Which HTTP versions to speak on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// Serves a TCP or Unix connection until it closes. The permit (a `limits.max_connections`
/// slot) is held until then.
pub async fn serve<IO>(
    io: IO,
    peer: Option<SocketAddr>,
    state: Arc<State>,
    watcher: Watcher,
    permit: OwnedSemaphorePermit,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _permit = permit;
    match &state.tls {
        Some(acceptor) => {
            let handshake = acceptor.accept(io);
            let stream = match tokio::time::timeout(
                state.config.listener.handshake_timeout,
                handshake,
            )
            .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::info!(peer = ?peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::info!(peer = ?peer, "TLS handshake timed out");
                    return;
                }
            };
            let (_, session) = stream.get_ref();
            let alpn = session
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned());
            let tls_client_cert = match session.peer_certificates().and_then(|c| c.first()) {
                None => None,
                Some(leaf) => match CertIdentity::from_der(leaf) {
                    Ok(identity) => Some(identity),
                    Err(e) => {
                        // rustls verified it, so this is a parser disagreement: refuse.
                        tracing::warn!(peer = ?peer, error = %e, "verified client certificate could not be parsed");
                        return;
                    }
                },
            };
            let protocol = if alpn.as_deref() == Some("h2") {
                Protocol::Http2
            } else {
                Protocol::Http1
            };
            let conn = ConnInfo {
                peer_addr: peer,
                trusted_proxy: false,
                tls_client_cert,
                alpn,
                forwarded_client_cert: None,
                forwarded_for: None,
            };
            http(stream, conn, protocol, state, watcher).await;
        }
        None => {
            let trusted_proxy = match &state.config.listener.mode {
                ListenerMode::Proxy(proxy) => is_trusted_peer(peer, proxy),
                ListenerMode::Tls(_) => false,
            };
            let conn = ConnInfo {
                peer_addr: peer,
                trusted_proxy,
                tls_client_cert: None,
                alpn: None,
                forwarded_client_cert: None,
                forwarded_for: None,
            };
            // Reverse proxies speak HTTP/1.1 upstream; no h2c.
            http(io, conn, Protocol::Http1, state, watcher).await;
        }
    }
}

async fn http<IO>(io: IO, conn: ConnInfo, protocol: Protocol, state: Arc<State>, watcher: Watcher)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = &state.config.limits;
    // The protocol is fixed up front (by ALPN) so that hyper never waits, without a
    // deadline, for a preface to guess the version from.
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .keep_alive_interval(Some(std::time::Duration::from_secs(30)));
    let builder = match protocol {
        Protocol::Http1 => builder.http1_only(),
        Protocol::Http2 => builder.http2_only(),
    };

    let peer = conn.peer_addr;
    let conn = Arc::new(conn);
    let service_state = state.clone();
    let service = service_fn(move |req| {
        let state = service_state.clone();
        let conn = conn.clone();
        async move { Ok::<_, std::convert::Infallible>(request::serve(state, conn, req).await) }
    });
    let connection = builder.serve_connection(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(connection.into_owned()).await {
        tracing::debug!(peer = ?peer, error = %e, "connection ended with an error");
    }
}
