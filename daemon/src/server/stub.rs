//! TEMPORARY stand-ins for `crate::app::App` and `crate::http::handle`, owned by the HTTP
//! work and not yet landed. Same signatures; deleted once the real ones exist.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use airlock_engine::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use crate::identity::ConnInfo;

pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Mirrors `crate::app::AppSettings`.
#[derive(Clone, Debug)]
pub struct AppSettings {
    pub max_body_bytes: usize,
    pub request_deadline: Duration,
    pub max_concurrent_requests: usize,
}

/// Mirrors `crate::app::App`.
pub struct App {
    engine: Arc<dyn Engine>,
}

impl App {
    pub fn new(engine: Arc<dyn Engine>, settings: AppSettings) -> Arc<App> {
        let _ = settings;
        Arc::new(App { engine })
    }
}

/// Mirrors `crate::http::handle`: `/healthz`, `/v1/models`, 404 otherwise.
pub async fn handle(
    app: Arc<App>,
    conn: Arc<ConnInfo>,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<BoxBody> {
    let (status, body) = match req.uri().path() {
        "/healthz" => (200, "{\"status\":\"ok\"}".to_owned()),
        "/v1/models" => {
            let ids: Vec<String> = app.engine.models().into_iter().map(|m| format!("{{\"id\":\"{}\"}}", m.id)).collect();
            let cn = conn.client_cert().and_then(|(_, c)| c.common_name.clone()).unwrap_or_default();
            (200, format!("{{\"object\":\"list\",\"data\":[{}],\"client\":\"{cn}\"}}", ids.join(",")))
        }
        _ => (404, "{\"error\":{\"message\":\"not found\",\"type\":\"invalid_request_error\",\"code\":null,\"param\":null}}".to_owned()),
    };
    let mut resp = hyper::Response::new(Full::new(Bytes::from(body)).boxed());
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    resp
}
