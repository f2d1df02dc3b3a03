//! One HTTP/1.1 exchange with an upstream, on a connection of its own: TCP + TLS (the pool's
//! CA and client certificate) or a Unix socket. A connection per request keeps cancellation
//! exact (dropping the exchange closes the socket, which is how every OpenAI-compatible
//! server learns that the client went away) and needs no pool of idle sockets to keep
//! honest; the cost is a handshake per request (TLS 1.3: one round trip).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use crate::config::UpstreamAddr;

/// Most bytes of an error response (or a health probe's body) read: enough for an OpenAI
/// error object, never a flood.
pub(super) const MAX_ERROR_BODY: usize = 64 * 1024;

/// Why an exchange failed before a response head arrived.
#[derive(Debug, thiserror::Error)]
pub(super) enum ClientError {
    #[error("connect: {0}")]
    Connect(String),
    #[error("no connection within {0:?}")]
    ConnectTimeout(Duration),
    #[error("no response head within {0:?}")]
    FirstByteTimeout(Duration),
    #[error("HTTP: {0}")]
    Http(String),
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// How the pool reaches its upstreams.
pub(super) struct Client {
    /// `None` when every upstream is a Unix socket.
    tls: Option<TlsConnector>,
    /// The name upstream certificates must carry, when not each upstream's host.
    server_name: Option<ServerName<'static>>,
    connect_timeout: Duration,
}

/// A response head and the connection it arrived on. Dropping it closes the connection
/// (the upstream's signal to stop generating).
pub(super) struct Exchange {
    pub response: http::Response<Incoming>,
    conn: JoinHandle<()>,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

impl Client {
    pub(super) fn new(
        tls: Option<Arc<rustls::ClientConfig>>,
        server_name: Option<ServerName<'static>>,
        connect_timeout: Duration,
    ) -> Client {
        Client {
            tls: tls.map(TlsConnector::from),
            server_name,
            connect_timeout,
        }
    }

    /// Sends `request` to `addr` and waits for the response head, `first_byte` at most.
    pub(super) async fn send(
        &self,
        addr: &UpstreamAddr,
        mut request: http::Request<Full<Bytes>>,
        first_byte: Duration,
    ) -> Result<Exchange, ClientError> {
        let io = timeout(self.connect_timeout, self.connect(addr))
            .await
            .map_err(|_| ClientError::ConnectTimeout(self.connect_timeout))??;
        let host = match addr {
            UpstreamAddr::Https { host, port } if host.contains(':') => format!("[{host}]:{port}"),
            UpstreamAddr::Https { host, port } => format!("{host}:{port}"),
            UpstreamAddr::Unix(_) => "localhost".to_owned(),
        };
        if let Ok(value) = http::HeaderValue::from_str(&host) {
            request.headers_mut().insert(http::header::HOST, value);
        }
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let conn = tokio::spawn(async move {
            let _ = connection.await;
        });
        let exchange = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| ClientError::Http(e.to_string()))?;
            Ok(Exchange { response, conn })
        };
        timeout(first_byte, exchange)
            .await
            .map_err(|_| ClientError::FirstByteTimeout(first_byte))?
    }

    async fn connect(&self, addr: &UpstreamAddr) -> Result<Box<dyn Io>, ClientError> {
        let connect = |e: std::io::Error| ClientError::Connect(e.to_string());
        match addr {
            UpstreamAddr::Unix(path) => {
                Ok(Box::new(UnixStream::connect(path).await.map_err(connect)?))
            }
            UpstreamAddr::Https { host, port } => {
                let Some(tls) = &self.tls else {
                    return Err(ClientError::Connect("no TLS client configured".into()));
                };
                let tcp = TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(connect)?;
                let _ = tcp.set_nodelay(true);
                let name = match &self.server_name {
                    Some(name) => name.clone(),
                    None => ServerName::try_from(host.clone())
                        .map_err(|e| ClientError::Connect(format!("server name `{host}`: {e}")))?,
                };
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| ClientError::Connect(format!("TLS: {e}")))?;
                Ok(Box::new(stream))
            }
        }
    }
}

/// Reads at most `limit` bytes of `body` (the rest is dropped), each piece within `idle`.
pub(super) async fn read_bounded(body: &mut Incoming, limit: usize, idle: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < limit {
        match timeout(idle, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    let room = limit - out.len();
                    out.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            _ => break,
        }
    }
    out
}
