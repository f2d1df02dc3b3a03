//! Reading a JSON request body: content type, size limit, then parsing with errors that say
//! where (line/column for syntax, the field's path for a wrong type or value).

use bytes::Bytes;
use http::{HeaderMap, header};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Checks the content type, then reads at most `limit` bytes of body.
///
/// A declared `Content-Length` over the limit is refused before any byte is read; a body
/// without one (chunked, HTTP/2) is read until the limit is passed and then abandoned, so an
/// oversized body is never buffered whole.
pub async fn read_limited<B>(headers: &HeaderMap, body: B, limit: usize) -> Result<Bytes, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    check_content_type(headers)?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::PayloadTooLarge { limit })
        }
        Err(e) => Err(ApiError::BodyRead(e.to_string())),
    }
}

/// JSON bodies only, declared as such: `Content-Type: application/json`, parameters allowed
/// (a `charset` must be UTF-8). A missing header is refused too: browsers send a cross-site
/// POST without a CORS preflight only with a form or `text/plain` type, or none, and a
/// browser holding a client certificate would otherwise let any web page drive the API.
/// Refused with 415 naming the header, so a mistaken client hears why.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(ApiError::UnsupportedMediaType(None));
    };
    let text = String::from_utf8_lossy(value.as_bytes());
    let mut parts = text.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    let charset_ok = parts.all(|param| {
        let Some((name, value)) = param.split_once('=') else {
            return true;
        };
        !name.trim().eq_ignore_ascii_case("charset") || {
            let value = value.trim().trim_matches('"');
            value.eq_ignore_ascii_case("utf-8") || value.eq_ignore_ascii_case("utf8")
        }
    });
    if essence.eq_ignore_ascii_case("application/json") && charset_ok {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(Some(
            text.chars().take(100).collect(),
        )))
    }
}

/// Parses a JSON body into `T`. Unknown fields are ignored by `T`'s own definition.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::InvalidRequest {
            message: "the request body is empty; expected a JSON object".into(),
            param: None,
        });
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| classify(e.path().to_string(), e.into_inner()))?;
    // Trailing garbage after the object.
    de.end().map_err(|e| classify(String::new(), e))?;
    Ok(value)
}

/// Reads a part of an already parsed body into `T`, naming the failing field by its path.
/// Requests are parsed in parts (the endpoint's own fields, the shared sampling fields) from
/// one [`serde_json::Value`] rather than with `#[serde(flatten)]`, which loses field paths.
pub fn from_value<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, ApiError> {
    if !value.is_object() {
        return Err(ApiError::InvalidRequest {
            message: "the request body must be a JSON object".into(),
            param: None,
        });
    }
    serde_path_to_error::deserialize(value)
        .map_err(|e| classify(e.path().to_string(), e.into_inner()))
}

fn classify(path: String, inner: serde_json::Error) -> ApiError {
    match inner.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            ApiError::MalformedJson {
                line: inner.line(),
                column: inner.column(),
                reason: reason_without_position(&inner),
            }
        }
        serde_json::error::Category::Data | serde_json::error::Category::Io => {
            let reason = reason_without_position(&inner);
            let top = path.is_empty() || path == ".";
            // A missing field is reported at its parent; name the field itself.
            match (missing_field(&reason), top) {
                (Some(field), true) => {
                    ApiError::invalid(field, format!("missing required field `{field}`"))
                }
                (Some(field), false) => {
                    let param = format!("{path}.{field}");
                    ApiError::invalid(param.clone(), format!("missing required field `{param}`"))
                }
                (None, true) => ApiError::InvalidRequest {
                    message: format!("invalid request body: {reason}"),
                    param: None,
                },
                (None, false) => {
                    ApiError::invalid(path.clone(), format!("invalid `{path}`: {reason}"))
                }
            }
        }
    }
}

/// serde_json appends " at line L column C"; the line and column are reported separately
/// (syntax errors) or are meaningless to the client (a field path is more useful).
fn reason_without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

fn missing_field(reason: &str) -> Option<&str> {
    reason.strip_prefix("missing field `")?.strip_suffix('`')
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    struct Inner {
        #[expect(dead_code, reason = "only parsed")]
        role: String,
    }

    #[derive(Debug, Deserialize)]
    struct Req {
        #[expect(dead_code, reason = "only parsed")]
        temperature: Option<f32>,
        #[expect(dead_code, reason = "only parsed")]
        messages: Option<Vec<Inner>>,
    }

    fn param(e: ApiError) -> Option<String> {
        e.object().param
    }

    #[test]
    fn syntax_errors_say_where() {
        let e = parse_json::<Req>(b"{\n  \"temperature\": 1,,\n}").unwrap_err();
        assert!(
            matches!(e, ApiError::MalformedJson { line: 2, .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("line 2 column"), "{e}");
        let e = parse_json::<Req>(b"{\"temperature\": 1").unwrap_err();
        assert!(matches!(e, ApiError::MalformedJson { .. }), "{e:?}");
        let e = parse_json::<Req>(b"{} x").unwrap_err();
        assert!(matches!(e, ApiError::MalformedJson { .. }), "{e:?}");
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e = parse_json::<Req>(br#"{"temperature": "hot"}"#).unwrap_err();
        assert_eq!(e.status(), 400);
        assert_eq!(param(e).as_deref(), Some("temperature"));
        let e = parse_json::<Req>(br#"{"messages": [{"role": 1}]}"#).unwrap_err();
        assert_eq!(param(e).as_deref(), Some("messages[0].role"));
        let e = parse_json::<Req>(br#"{"messages": [{}]}"#).unwrap_err();
        assert_eq!(param(e).as_deref(), Some("messages[0].role"));
        let e = parse_json::<Req>(b"[]").unwrap_err();
        assert_eq!(e.status(), 400);
        let e = parse_json::<Req>(b"  ").unwrap_err();
        assert!(e.to_string().contains("empty"));
    }

    #[test]
    fn content_types() {
        let mut h = HeaderMap::new();
        let missing = check_content_type(&h).unwrap_err();
        assert_eq!(missing.status(), 415);
        assert_eq!(param(missing).as_deref(), Some("Content-Type"));
        for ok in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
            "application/json; foo=bar",
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ok));
            assert!(check_content_type(&h).is_ok(), "{ok}");
        }
        // What a cross-site form or fetch can send without a preflight, and near misses.
        for refused in [
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "text/plain",
            "text/plain; charset=utf-8",
            "application/json; charset=utf-16",
            "application/jsonx",
            "",
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(refused));
            let e = check_content_type(&h).unwrap_err();
            assert_eq!(e.status(), 415, "{refused}");
            assert!(e.to_string().contains("Content-Type"), "{e}");
        }
    }
}
