//! The route table: path + method → [`Route`], 404 and 405 otherwise.

use http::Method;

use super::error::ApiError;

/// A resolved route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Healthz,
    Readyz,
    Models,
    Model(String),
    ChatCompletions,
    Responses,
    Completions,
    Generate,
    Tokenize,
    Detokenize,
    Embeddings,
}

impl Route {
    /// The route's name in metrics: fixed strings, so labels stay bounded.
    pub fn label(&self) -> &'static str {
        match self {
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Models => "/v1/models",
            Route::Model(_) => "/v1/models/{id}",
            Route::ChatCompletions => "/v1/chat/completions",
            Route::Responses => "/v1/responses",
            Route::Completions => "/v1/completions",
            Route::Generate => "/generate",
            Route::Tokenize => "/tokenize",
            Route::Detokenize => "/detokenize",
            Route::Embeddings => "/v1/embeddings",
        }
    }

    /// Routes served without authentication: liveness and readiness probes carry no tenant
    /// data. Everything else goes through `authenticate` (deny by default).
    pub fn is_open(&self) -> bool {
        matches!(self, Route::Healthz | Route::Readyz)
    }
}

/// Resolves a request to a route.
pub fn resolve(method: &Method, path: &str) -> Result<Route, ApiError> {
    let (route, allow) = match path {
        "/healthz" => (Route::Healthz, "GET, HEAD"),
        "/readyz" => (Route::Readyz, "GET, HEAD"),
        "/v1/models" => (Route::Models, "GET, HEAD"),
        "/v1/chat/completions" => (Route::ChatCompletions, "POST"),
        "/v1/responses" => (Route::Responses, "POST"),
        "/v1/completions" => (Route::Completions, "POST"),
        "/generate" => (Route::Generate, "POST"),
        "/tokenize" => (Route::Tokenize, "POST"),
        "/detokenize" => (Route::Detokenize, "POST"),
        "/v1/embeddings" => (Route::Embeddings, "POST"),
        _ => match path.strip_prefix("/v1/models/") {
            // Model ids may contain `/` (`org/model`); clients may percent-encode it.
            Some(id) if !id.is_empty() => (Route::Model(percent_decode(id)), "GET, HEAD"),
            _ => {
                return Err(ApiError::NotFound {
                    method: method.to_string(),
                    path: path.to_owned(),
                });
            }
        },
    };
    let allowed = if allow == "POST" {
        method == Method::POST
    } else {
        method == Method::GET || method == Method::HEAD
    };
    if allowed {
        Ok(route)
    } else {
        Err(ApiError::MethodNotAllowed {
            method: method.to_string(),
            path: path.to_owned(),
            allow,
        })
    }
}

/// Decodes `%XX` escapes; malformed escapes stay as they are.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match decoded {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_routes_and_methods() {
        assert_eq!(resolve(&Method::GET, "/healthz").ok(), Some(Route::Healthz));
        assert_eq!(
            resolve(&Method::GET, "/v1/models/org%2Fm").ok(),
            Some(Route::Model("org/m".into()))
        );
        assert_eq!(
            resolve(&Method::GET, "/v1/models/org/m").ok(),
            Some(Route::Model("org/m".into()))
        );
        assert!(matches!(
            resolve(&Method::GET, "/v1/chat/completions"),
            Err(ApiError::MethodNotAllowed { allow: "POST", .. })
        ));
        assert!(matches!(
            resolve(&Method::POST, "/v1/models"),
            Err(ApiError::MethodNotAllowed {
                allow: "GET, HEAD",
                ..
            })
        ));
        assert!(matches!(
            resolve(&Method::GET, "/v1/models/"),
            Err(ApiError::NotFound { .. })
        ));
        assert!(matches!(
            resolve(&Method::GET, "/nope"),
            Err(ApiError::NotFound { .. })
        ));
        assert!(Route::Readyz.is_open() && !Route::Models.is_open());
        assert_eq!(
            resolve(&Method::POST, "/tokenize").ok(),
            Some(Route::Tokenize)
        );
        assert_eq!(
            resolve(&Method::POST, "/detokenize")
                .map(|r| r.label())
                .ok(),
            Some("/detokenize")
        );
        assert!(!Route::Tokenize.is_open());
        assert_eq!(
            resolve(&Method::POST, "/v1/embeddings")
                .map(|r| r.label())
                .ok(),
            Some("/v1/embeddings")
        );
        assert_eq!(
            resolve(&Method::POST, "/v1/responses")
                .map(|r| r.label())
                .ok(),
            Some("/v1/responses")
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2fb%20c"), "a/b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
