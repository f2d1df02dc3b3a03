//! The audit steps that wrap a whole request (see `crate::audit::trail`): opening its trail,
//! and the record written once the response is known — the `deny` record of a refused
//! request or the `complete` record of a non-streaming one — committed before the response
//! is returned. If that record cannot be written the response is replaced by 503
//! `audit_unavailable`: nothing leaves unaudited.

use std::sync::Arc;

use hyper::{Request, Response};

use super::BoxBody;
use super::error::ApiError;
use super::route;
use crate::app::App;
use crate::audit::trail::{self, Trail};
use crate::identity::ConnInfo;

/// A trail for every request except the open routes (`/healthz`, `/readyz`), which make no
/// decision worth recording.
pub fn open<B>(app: &App, conn: &ConnInfo, req: &Request<B>) -> Option<Arc<Trail>> {
    let binding = app.audit.as_ref()?;
    if route::resolve(req.method(), req.uri().path()).is_ok_and(|r| r.is_open()) {
        return None;
    }
    let request_id = req
        .headers()
        .get(super::X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    Some(Trail::new(
        Arc::clone(binding),
        conn,
        request_id,
        req.method().as_str(),
        req.uri().path(),
    ))
}

/// Runs `fut` with the trail reachable from the steps inside it.
pub async fn scope<F: Future>(trail: Option<Arc<Trail>>, fut: F) -> F::Output {
    match trail {
        Some(trail) => trail::scope(trail, fut).await,
        None => fut.await,
    }
}

/// Writes the request's final record, if it still needs one, before `resp` is sent.
pub async fn finish(
    trail: Option<&Trail>,
    resp: Response<BoxBody>,
    error_code: Option<&str>,
) -> Response<BoxBody> {
    let Some(trail) = trail else {
        return resp;
    };
    match trail.finish(resp.status().as_u16(), error_code).await {
        Ok(()) => resp,
        Err(e) => {
            tracing::error!(error = %e, status = resp.status().as_u16(), "audit record not written: refusing the response");
            ApiError::AuditUnavailable.into_response()
        }
    }
}
