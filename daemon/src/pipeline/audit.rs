//! Phase `audit`: the request's audit records, fail closed (see `crate::audit::trail`).
//!
//! * [`open`]: every request outside the open routes gets a trail when it arrives.
//! * [`admit`]: the admission record, durable before the engine sees the request; its
//!   [`Admitted`] receipt is the only way to the engine ([`super::generate::submit`]).
//! * [`finish`]: the `deny` record of a refused request or the `complete` record of a
//!   non-streaming one, committed before the response is returned (a stream writes its own
//!   before its final event, `super::finish`). If it cannot be written the response becomes
//!   503 `audit_unavailable`: nothing leaves unaudited.
//!
//! The receipt cannot be forged outside this module, so skipping admission does not
//! compile (these doc-tests pin the error codes, so they fail for no other reason):
//!
//! ```compile_fail,E0308
//! # use std::sync::Arc;
//! # use airlock_daemon::pipeline::{RequestCtx, generate::{self, Job}};
//! async fn skip_admission(engine: &Arc<dyn airlock_engine::Engine>, ctx: &RequestCtx, job: Job) {
//!     // A job is not a receipt: error[E0308]: mismatched types.
//!     let _ = generate::submit(engine, ctx, job).await;
//! }
//! ```
//!
//! ```compile_fail,E0451
//! # use airlock_daemon::pipeline::{audit::Admitted, generate::Job};
//! fn forge(job: Job) -> Admitted {
//!     // The receipt's field is private to this module: error[E0451].
//!     Admitted { job }
//! }
//! ```
//!
//! The path as written does compile:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use airlock_daemon::api::ApiError;
//! # use airlock_daemon::pipeline::{RequestCtx, audit, generate::{self, Job}};
//! async fn admitted(
//!     engine: &Arc<dyn airlock_engine::Engine>,
//!     ctx: &RequestCtx,
//!     job: Job,
//! ) -> Result<(), ApiError> {
//!     let receipt = audit::admit(ctx, job).await?;
//!     let _generation = generate::submit(engine, ctx, receipt).await?;
//!     Ok(())
//! }
//! ```

use std::sync::Arc;

use hyper::{Request, Response};

use super::RequestCtx;
use super::generate::Job;
use crate::api::request::Inference;
use crate::api::route::Route;
use crate::api::{ApiError, BoxBody};
use crate::app::App;
use crate::audit::AuditError;
use crate::audit::trail::Trail;
use crate::identity::ConnInfo;
use crate::telemetry::Requested;

/// Proof that a job's admission was decided by this phase: its `admit` record is durable
/// (or the configuration audits nothing). Carries the job exactly as recorded, so the
/// engine runs what the audit log names. Only [`admit`] constructs one.
#[derive(Debug)]
pub struct Admitted {
    job: Job,
}

impl Admitted {
    /// The admitted job, for the engine (consumes the receipt).
    pub(super) fn into_job(self) -> Job {
        self.job
    }

    /// The admitted job.
    pub fn job(&self) -> &Job {
        &self.job
    }
}

/// A trail for every request except the open routes (`/healthz`, `/readyz`), which make no
/// decision worth recording. `route`: the resolved route (`None`: 404/405, still audited).
pub fn open<B>(
    app: &App,
    conn: &ConnInfo,
    req: &Request<B>,
    route: Option<&Route>,
) -> Option<Arc<Trail>> {
    let binding = app.audit.as_ref()?;
    if route.is_some_and(Route::is_open) {
        return None;
    }
    let request_id = req
        .headers()
        .get("x-request-id")
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

/// Audit admit, the last phase before the engine: the admission record is durable before
/// the engine sees the request, or the request is refused (fail closed).
pub async fn admit(ctx: &RequestCtx, job: Job) -> Result<Admitted, AuditError> {
    // The trace span names what the admission record names (never the prompt).
    if ctx.span.is_recording() {
        ctx.span.requested(&Requested {
            operation: match job.route {
                Inference::Chat | Inference::Responses => Some("chat"),
                Inference::Completions | Inference::Generate => Some("text_completion"),
                Inference::Embeddings => Some("embeddings"),
                Inference::Tokenize | Inference::Detokenize => None,
            },
            model: &job.model,
            max_tokens: job.params.max_tokens,
            temperature: job.params.temperature,
            top_p: job.params.top_p,
            seed: job.params.seed,
            choices: job.n,
            input_tokens: job.input_tokens,
        });
    }
    if let Some(trail) = &ctx.trail {
        trail
            .admit(
                ctx.tenant(),
                &job.model,
                &job.prompt,
                &job.params,
                &job.inputs,
                job.n,
            )
            .await?;
    }
    Ok(Admitted { job })
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
