//! The HTTP client the OTLP exporters post with: HTTP/1.1 over rustls (the collector's CA
//! only, an optional client certificate) or plain TCP to a loopback collector, on the hyper
//! and rustls the daemon already has. One kept-alive connection, reopened when it closes.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use opentelemetry_http::{HttpClient, HttpError};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::telemetry::OtlpEndpoint;

/// A collector's answer is read up to this (OTLP answers are a few bytes; an error page
/// must not grow without bound).
const MAX_RESPONSE: usize = 64 * 1024;

/// An OTLP/HTTP client for one collector.
#[derive(Clone)]
pub struct OtlpClient {
    inner: Arc<Inner>,
    /// A 2xx answer to a logs export that reports rejected records is an error: the audit
    /// sink sends the batch again rather than move its cursor past a record the collector
    /// dropped.
    strict_logs: bool,
}

struct Inner {
    host: String,
    port: u16,
    /// The `Host` header.
    authority: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// One request, connecting included.
    timeout: Duration,
    /// Requests run here, whatever polls the export (the SDK may drive it from a thread of
    /// its own).
    runtime: tokio::runtime::Handle,
    conn: tokio::sync::Mutex<Option<SendRequest<Full<Bytes>>>>,
}

impl fmt::Debug for OtlpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpClient")
            .field("host", &self.inner.host)
            .field("port", &self.inner.port)
            .field("tls", &self.inner.tls.is_some())
            .finish()
    }
}

impl OtlpClient {
    /// Loads the endpoint's TLS material; an error names the key that did not load.
    /// Call within the runtime.
    pub fn new(
        endpoint: &OtlpEndpoint,
        timeout: Duration,
    ) -> Result<OtlpClient, (&'static str, String)> {
        let tls = match &endpoint.tls {
            None => None,
            Some(tls) => {
                let config =
                    crate::tls::client_config(&tls.ca, tls.client.as_ref(), &[b"http/1.1"])?;
                let name = ServerName::try_from(tls.server_name.clone())
                    .map_err(|e| ("server_name", e.to_string()))?;
                Some((TlsConnector::from(Arc::new(config)), name))
            }
        };
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| ("endpoint", format!("no async runtime: {e}")))?;
        let authority = if endpoint.host.contains(':') {
            format!("[{}]:{}", endpoint.host, endpoint.port)
        } else {
            format!("{}:{}", endpoint.host, endpoint.port)
        };
        Ok(OtlpClient {
            inner: Arc::new(Inner {
                host: endpoint.host.clone(),
                port: endpoint.port,
                authority,
                tls,
                timeout,
                runtime,
                conn: tokio::sync::Mutex::new(None),
            }),
            strict_logs: false,
        })
    }

    /// Refuses a logs export's partial success (see `strict_logs`).
    pub fn strict_logs(mut self) -> OtlpClient {
        self.strict_logs = true;
        self
    }

    /// Posts one request; the answer's body is read whole (up to 64 KiB).
    pub async fn post(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let inner = Arc::clone(&self.inner);
        let timeout = inner.timeout;
        let task = self.inner.runtime.spawn(async move {
            match tokio::time::timeout(timeout, inner.send(request)).await {
                Ok(result) => result,
                Err(_) => {
                    // The connection may be mid-request: never reuse it.
                    *inner.conn.lock().await = None;
                    Err(format!("no answer within {timeout:?}").into())
                }
            }
        });
        let response = task.await??;
        if self.strict_logs && response.status().is_success() {
            rejected_logs(response.body())?;
        }
        Ok(response)
    }
}

impl Inner {
    async fn send(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let mut conn = self.conn.lock().await;
        let mut sender = match conn.take() {
            Some(sender) if !sender.is_closed() => sender,
            _ => self.connect().await?,
        };
        sender.ready().await?;
        let (mut parts, body) = request.into_parts();
        // Origin form on the wire, the authority in `Host`.
        parts.uri = parts
            .uri
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()));
        parts.headers.insert(
            http::header::HOST,
            http::HeaderValue::from_str(&self.authority)?,
        );
        let response = sender
            .send_request(Request::from_parts(parts, Full::new(body)))
            .await?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_RESPONSE).collect().await?.to_bytes();
        *conn = Some(sender);
        Ok(Response::from_parts(parts, body))
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, HttpError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        tcp.set_nodelay(true)?;
        match &self.tls {
            None => handshake(tcp).await,
            Some((connector, name)) => handshake(connector.connect(name.clone(), tcp).await?).await,
        }
    }
}

/// A logs export's answer that reports rejected records, as an error.
fn rejected_logs(body: &[u8]) -> Result<(), HttpError> {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
    use prost::Message;
    let Ok(answer) = ExportLogsServiceResponse::decode(body) else {
        return Ok(());
    };
    match answer.partial_success {
        Some(partial) if partial.rejected_log_records > 0 => Err(format!(
            "the collector rejected {} records: {}",
            partial.rejected_log_records, partial.error_message
        )
        .into()),
        _ => Ok(()),
    }
}

/// HTTP/1.1 on `io`; the connection is driven by a task that ends when it closes.
async fn handshake<T>(io: T) -> Result<SendRequest<Full<Bytes>>, HttpError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "OTLP connection closed");
        }
    });
    Ok(sender)
}

impl HttpClient for OtlpClient {
    fn send_bytes<'a, 'b>(
        &'a self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(self.post(request))
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::logs::v1::{
        ExportLogsPartialSuccess, ExportLogsServiceResponse,
    };
    use prost::Message;

    use super::rejected_logs;

    #[test]
    fn a_partial_success_of_a_logs_export_is_an_error() {
        assert!(
            rejected_logs(b"").is_ok(),
            "an empty answer is a full success"
        );
        let answer = |rejected| {
            ExportLogsServiceResponse {
                partial_success: Some(ExportLogsPartialSuccess {
                    rejected_log_records: rejected,
                    error_message: "too large".to_owned(),
                }),
            }
            .encode_to_vec()
        };
        assert!(rejected_logs(&answer(0)).is_ok());
        let error = rejected_logs(&answer(3)).unwrap_err().to_string();
        assert!(error.contains("rejected 3 records: too large"), "{error}");
    }
}
