//! Errors answered to HTTP clients, as OpenAI-style error objects:
//! `{"error": {"message", "type", "param", "code"}}` with a matching status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::engine::scheduler::CANCELLED;
use crate::error::Error;

/// One error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The OpenAI error type, e.g. `invalid_request_error`.
    pub kind: &'static str,
    /// The request field at fault, where one is.
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    /// 400: the request is malformed or a field is invalid.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 400 naming the field at fault.
    pub fn invalid_field(param: &str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.to_string()),
            ..Self::bad_request(message)
        }
    }

    /// 401: no API key, or the wrong one.
    pub fn unauthorized() -> Self {
        Self {
            code: Some("invalid_api_key"),
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "a valid API key is required: `Authorization: Bearer <key>`",
            )
        }
    }

    /// 404: no such endpoint.
    pub fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("no endpoint `{}`", crate::error::printable(path)),
        )
    }

    /// 413: the body is over the limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is larger than {} MiB", limit >> 20),
        )
    }

    /// 429: the queue is full.
    pub fn queue_full(limit: usize) -> Self {
        Self {
            code: Some("queue_full"),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                format!("the server holds its limit of {limit} sequences; retry later"),
            )
        }
    }

    /// 503: the server is stopping.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
    }

    /// 500: something failed on the server's side.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// The answer for an engine error: the request's fault (400) or the server's (500).
    pub fn from_engine(err: &Error) -> Self {
        match err {
            Error::InvalidArgument { name, reason } => {
                let param = match name.as_str() {
                    "max_new_tokens" => "max_tokens",
                    other => other,
                };
                Self::invalid_field(param, format!("`{param}`: {reason}"))
            }
            Error::Request(message) if message == CANCELLED => Self::unavailable(message.clone()),
            Error::Request(message) => {
                let mut e = Self::bad_request(message.clone());
                if message.contains("context window") {
                    e.code = Some("context_length_exceeded");
                    e.param = Some("messages".into());
                }
                e
            }
            Error::Tokenizer(_) | Error::ChatTemplate(_) => Self::bad_request(err.to_string()),
            other => Self::internal(other.to_string()),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_objects_have_the_openai_shape() {
        let e = ApiError::invalid_field("temperature", "bad");
        let body = e.body();
        assert_eq!(body["error"]["message"], "bad");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["param"], "temperature");
        assert!(body["error"]["code"].is_null());
        assert_eq!(
            ApiError::too_large(8 << 20).status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            ApiError::queue_full(4).status,
            StatusCode::TOO_MANY_REQUESTS
        );
    }

    #[test]
    fn engine_errors_map_to_the_field_or_the_server() {
        let e = ApiError::from_engine(&Error::InvalidArgument {
            name: "max_new_tokens".into(),
            reason: "must be at least 1".into(),
        });
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let e = ApiError::from_engine(&Error::Request(
            "prompt of 9000 tokens does not fit the context window of 8192 tokens".into(),
        ));
        assert_eq!(e.code, Some("context_length_exceeded"));
        let e = ApiError::from_engine(&Error::Tensor {
            name: "x".into(),
            reason: "y".into(),
        });
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
