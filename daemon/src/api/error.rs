//! Every way a request can fail, and the one place failures become HTTP responses in
//! OpenAI's error shape: `{"error":{"message","type","param","code"}}`.

use std::time::Duration;

use airlock_engine::EngineError;
use http::{HeaderValue, StatusCode, header};
use hyper::Response;
use serde::Serialize;

use super::BoxBody;
use super::response::{json_response, ratelimit_headers};
use crate::access::{AuthError, PolicyError};
use crate::audit::AuditError;

/// A request failure, as the client will see it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not syntactically valid JSON.
    #[error("malformed JSON in the request body at line {line} column {column}: {reason}")]
    MalformedJson {
        line: usize,
        column: usize,
        reason: String,
    },

    /// A field is missing, has the wrong type, or an invalid value. `param` is its path
    /// (`temperature`, `messages[0].content`), `None` for the body as a whole.
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
    },

    /// A field we understand but cannot honour (`n` > 1, image parts, `echo`).
    #[error("{message}")]
    Unsupported { message: String, param: String },

    /// No route at this path.
    #[error("no route for {method} {path}")]
    NotFound { method: String, path: String },

    /// A model id that is not served (outside the engine: `GET /v1/models/{id}`).
    #[error("the model `{0}` does not exist")]
    ModelNotFound(String),

    /// The path exists but not for this method.
    #[error("method {method} is not allowed on {path}; allowed: {allow}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allow: &'static str,
    },

    /// The body exceeds `limits.max_body_bytes`.
    #[error("the request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },

    /// The body is not declared as JSON (`None`: no `Content-Type` at all).
    #[error("{}", media_type_message(.0.as_deref()))]
    UnsupportedMediaType(Option<String>),

    /// The body could not be read (client went away, malformed framing).
    #[error("cannot read the request body: {0}")]
    BodyRead(String),

    /// The body did not arrive within `limits.body_read_timeout`.
    #[error("the request body did not arrive within {}s", .0.as_secs_f64())]
    BodyTimeout(Duration),

    /// `limits.max_concurrent_requests` inference requests are already in flight.
    #[error("the server is at its limit of {limit} concurrent requests; retry shortly")]
    TooManyRequests { limit: usize },

    /// The tenant already has half the server's request slots with bodies arriving.
    #[error(
        "this tenant already has {limit} request bodies arriving (half the server's request slots); retry shortly"
    )]
    TooManyUploads { limit: usize },

    /// `limits.request_deadline` passed before the response (or first token) was ready.
    #[error("the request did not complete within the server's deadline of {}s", .0.as_secs_f64())]
    Timeout(Duration),

    /// The request's audit record could not be committed: the gateway refuses service
    /// rather than serve unaudited. The reason is logged, not sent.
    #[error("the audit log is unavailable; the request was not served")]
    AuditUnavailable,

    /// `[cluster.limits]` with `on_unavailable = "closed"`: the shared limits store did not
    /// answer in time, so no limit can be checked. The reason is logged, not sent.
    #[error("the tenant limits cannot be checked right now; the request was not served")]
    LimitsUnavailable,

    /// Authentication failed (401, or 503/429 when keys cannot be checked or the client is
    /// throttled). Never contains the presented credential.
    #[error(transparent)]
    Auth(#[from] AuthError),

    /// The tenant's policy refused the request (403, or 429 for a rate limit).
    #[error(transparent)]
    Policy(#[from] PolicyError),

    /// The engine refused or failed the request. `prompt_param` names the field the prompt
    /// came from (`messages`, `prompt`), used for context-length errors.
    #[error("{source}")]
    Engine {
        source: EngineError,
        prompt_param: &'static str,
    },
}

/// An audit record that could not be written: the request is refused (fail closed). The
/// reason goes to the log, never to the client.
impl From<AuditError> for ApiError {
    fn from(error: AuditError) -> ApiError {
        tracing::error!(error = %error, "audit record not written: refusing the request");
        ApiError::AuditUnavailable
    }
}

/// An engine failure outside a prompt's context (no prompt field to name: `model` lookups,
/// shutdown). The generation path names its prompt field with [`ApiError::engine`].
impl From<EngineError> for ApiError {
    fn from(source: EngineError) -> ApiError {
        ApiError::engine(source, "prompt")
    }
}

fn media_type_message(declared: Option<&str>) -> String {
    match declared {
        Some(declared) => {
            format!("unsupported Content-Type `{declared}`; send Content-Type: application/json")
        }
        None => "the Content-Type header is missing; send Content-Type: application/json".into(),
    }
}

/// The OpenAI error object.
#[derive(Debug, Serialize)]
pub struct ErrorObject {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a ErrorObject,
}

/// How an error renders: status, OpenAI fields, extra headers.
struct Rendered {
    status: StatusCode,
    object: ErrorObject,
    retry_after: Option<u64>,
    allow: Option<&'static str>,
}

const INVALID: &str = "invalid_request_error";
const NOT_FOUND: &str = "not_found_error";
const SERVER: &str = "server_error";

impl ApiError {
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::InvalidRequest {
            message: message.into(),
            param: Some(param.into()),
        }
    }

    pub fn unsupported(param: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::Unsupported {
            message: message.into(),
            param: param.into(),
        }
    }

    pub fn engine(source: EngineError, prompt_param: &'static str) -> ApiError {
        ApiError::Engine {
            source,
            prompt_param,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.render().status
    }

    /// The error object, for a response body or an SSE error event.
    pub fn object(&self) -> ErrorObject {
        self.render().object
    }

    /// The HTTP response. The only place an error becomes one.
    pub fn into_response(self) -> Response<BoxBody> {
        self.into_response_and_code().0
    }

    /// The HTTP response and the error object's `code` (for the audit record), from one
    /// rendering of the error.
    pub fn into_response_and_code(self) -> (Response<BoxBody>, Option<&'static str>) {
        let rendered = self.render();
        if rendered.status.is_server_error() {
            tracing::warn!(status = rendered.status.as_u16(), error = %self, "request failed");
        } else {
            tracing::debug!(status = rendered.status.as_u16(), error = %self, "request refused");
        }
        let mut resp = json_response(
            rendered.status,
            &ErrorBody {
                error: &rendered.object,
            },
        );
        if let Some(seconds) = rendered.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let ApiError::Policy(PolicyError::RateLimited { status, .. }) = &self {
            ratelimit_headers(resp.headers_mut(), status);
        }
        if let Some(allow) = rendered.allow {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        (resp, rendered.object.code)
    }

    fn render(&self) -> Rendered {
        let message = self.to_string();
        let plain = |status, kind, param: Option<String>, code| Rendered {
            status,
            object: ErrorObject {
                message: message.clone(),
                kind,
                param,
                code,
            },
            retry_after: None,
            allow: None,
        };
        match self {
            ApiError::MalformedJson { .. } => {
                plain(StatusCode::BAD_REQUEST, INVALID, None, Some("invalid_json"))
            }
            ApiError::InvalidRequest { param, .. } => {
                plain(StatusCode::BAD_REQUEST, INVALID, param.clone(), None)
            }
            ApiError::Unsupported { param, .. } => plain(
                StatusCode::BAD_REQUEST,
                INVALID,
                Some(param.clone()),
                Some("unsupported_parameter"),
            ),
            ApiError::NotFound { .. } => {
                plain(StatusCode::NOT_FOUND, NOT_FOUND, None, Some("not_found"))
            }
            ApiError::ModelNotFound(_) => plain(
                StatusCode::NOT_FOUND,
                NOT_FOUND,
                Some("model".into()),
                Some("model_not_found"),
            ),
            ApiError::MethodNotAllowed { allow, .. } => Rendered {
                allow: Some(*allow),
                ..plain(
                    StatusCode::METHOD_NOT_ALLOWED,
                    INVALID,
                    None,
                    Some("method_not_allowed"),
                )
            },
            ApiError::PayloadTooLarge { .. } => plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                INVALID,
                None,
                Some("request_too_large"),
            ),
            ApiError::UnsupportedMediaType(_) => plain(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                INVALID,
                Some("Content-Type".into()),
                Some("unsupported_media_type"),
            ),
            ApiError::BodyRead(_) => plain(StatusCode::BAD_REQUEST, INVALID, None, None),
            ApiError::BodyTimeout(_) => plain(
                StatusCode::REQUEST_TIMEOUT,
                INVALID,
                None,
                Some("body_read_timeout"),
            ),
            ApiError::TooManyRequests { .. } => Rendered {
                retry_after: Some(1),
                ..plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    SERVER,
                    None,
                    Some("server_overloaded"),
                )
            },
            ApiError::TooManyUploads { .. } => Rendered {
                retry_after: Some(1),
                ..plain(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    None,
                    Some("rate_limit_exceeded"),
                )
            },
            ApiError::Timeout(_) => {
                plain(StatusCode::GATEWAY_TIMEOUT, SERVER, None, Some("timeout"))
            }
            ApiError::AuditUnavailable => Rendered {
                retry_after: Some(1),
                ..plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    SERVER,
                    None,
                    Some("audit_unavailable"),
                )
            },
            ApiError::LimitsUnavailable => Rendered {
                retry_after: Some(1),
                ..plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    SERVER,
                    None,
                    Some("limits_unavailable"),
                )
            },
            ApiError::Auth(AuthError::Refused { .. }) => plain(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                None,
                Some("invalid_api_key"),
            ),
            ApiError::Auth(AuthError::KeysUnavailable) => Rendered {
                retry_after: Some(1),
                ..plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    SERVER,
                    None,
                    Some("auth_unavailable"),
                )
            },
            ApiError::Auth(AuthError::Throttled { retry_after }) => Rendered {
                retry_after: Some(*retry_after),
                ..plain(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    None,
                    Some("rate_limit_exceeded"),
                )
            },
            ApiError::Policy(PolicyError::ModelNotAllowed { .. }) => plain(
                StatusCode::FORBIDDEN,
                "permission_error",
                Some("model".into()),
                Some("model_not_allowed"),
            ),
            ApiError::Policy(PolicyError::PromptTooLong { param, .. }) => plain(
                StatusCode::FORBIDDEN,
                "permission_error",
                Some((*param).into()),
                Some("prompt_too_long"),
            ),
            ApiError::Policy(PolicyError::ContentPolicy { .. }) => plain(
                StatusCode::FORBIDDEN,
                "permission_error",
                None,
                Some("content_policy_violation"),
            ),
            ApiError::Policy(PolicyError::RateLimited { retry_after, .. }) => Rendered {
                retry_after: Some(*retry_after),
                ..plain(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    None,
                    Some("rate_limit_exceeded"),
                )
            },
            ApiError::Engine {
                source,
                prompt_param,
            } => render_engine(source, prompt_param, message.clone()),
        }
    }
}

fn render_engine(source: &EngineError, prompt_param: &'static str, message: String) -> Rendered {
    let rendered = |status, kind, param: Option<&str>, code, message| Rendered {
        status,
        object: ErrorObject {
            message,
            kind,
            param: param.map(str::to_owned),
            code,
        },
        retry_after: None,
        allow: None,
    };
    match source {
        EngineError::UnknownModel(_) => rendered(
            StatusCode::NOT_FOUND,
            NOT_FOUND,
            Some("model"),
            Some("model_not_found"),
            message,
        ),
        EngineError::ContextLength { .. } | EngineError::KvBudget { .. } => rendered(
            StatusCode::BAD_REQUEST,
            INVALID,
            Some(prompt_param),
            Some("context_length_exceeded"),
            message,
        ),
        EngineError::InvalidRequest { param, reason } => rendered(
            StatusCode::BAD_REQUEST,
            INVALID,
            Some(*param),
            None,
            reason.clone(),
        ),
        EngineError::QueueFull { .. } => Rendered {
            retry_after: Some(1),
            ..rendered(
                StatusCode::SERVICE_UNAVAILABLE,
                SERVER,
                None,
                Some("engine_overloaded"),
                "the inference queue is full; retry shortly".into(),
            )
        },
        EngineError::Unavailable => Rendered {
            retry_after: Some(5),
            ..rendered(
                StatusCode::SERVICE_UNAVAILABLE,
                SERVER,
                None,
                Some("engine_unavailable"),
                "the inference engine is not running".into(),
            )
        },
        // Load, integrity, device, tokenizer and inference failures carry paths and internal
        // detail: logged by `into_response`, never sent.
        EngineError::Load { .. }
        | EngineError::Integrity { .. }
        | EngineError::Device(_)
        | EngineError::Tokenizer(_)
        | EngineError::Inference(_) => rendered(
            StatusCode::INTERNAL_SERVER_ERROR,
            SERVER,
            None,
            None,
            "the server had an error while processing the request".into(),
        ),
    }
}
