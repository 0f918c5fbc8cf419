//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`
//! with the status OpenAI uses, so OpenAI clients raise the exception they
//! would raise against the real API (`BadRequestError`, `NotFoundError`…).

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::llm::LlmError;

/// One failed request, ready to be sent.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    /// Says what is wrong and, where it can, what to do instead.
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error` or `server_error`.
    pub kind: &'static str,
    /// The request field at fault (`messages[2].tool_call_id`), if one is.
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400: the request is well-formed JSON but asks for something wrong.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.into()),
            code: Some("invalid_value"),
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// 404: the model this server does not serve.
    pub fn model_not_found(requested: &str, served: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "The model `{requested}` does not exist on this server; it serves `{served}`."
            ),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    /// 404 for a path no route matches (OpenAI's wording).
    pub fn unknown_url(method: &str, path: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: format!("Unknown request URL: {method} {path}."),
            kind: "invalid_request_error",
            param: None,
            code: Some("unknown_url"),
        }
    }

    /// 405 for a known path asked with the wrong method.
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: format!("{method} is not allowed on {path}."),
            kind: "invalid_request_error",
            param: None,
            code: Some("method_not_allowed"),
        }
    }

    /// 503: the model's queue is full. OpenAI clients retry these.
    pub fn busy(busy: super::served_model::Busy) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!("The server is busy: {busy}."),
            kind: "server_error",
            param: None,
            code: Some("server_overloaded"),
        }
    }

    /// 424: an MCP server named in the request's tools could not be reached
    /// or listed (OpenAI's status for the same failure).
    pub fn mcp_unreachable(label: &str, why: impl std::fmt::Display) -> Self {
        Self {
            status: StatusCode::FAILED_DEPENDENCY,
            message: format!("Error retrieving tool list from MCP server: '{label}': {why}"),
            kind: "external_connector_error",
            param: Some("tools".into()),
            code: Some("http_error"),
        }
    }

    /// 503: `/v1/audio/speech` on a server started without a voice.
    pub fn no_voice() -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "This server has no voice: start `parlor serve` with a pipeline that has a \
                      tts stage (the default pipeline has one)."
                .into(),
            kind: "server_error",
            param: None,
            code: Some("no_voice"),
        }
    }

    /// 500 from `/v1/audio/speech`. The detail goes to the log.
    pub fn speech_failed() -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "The voice failed to speak this input; the server log has the detail.".into(),
            kind: "server_error",
            param: None,
            code: Some("server_error"),
        }
    }

    /// 500. The detail goes to the log, not to the client.
    pub fn server_error() -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "The model failed to answer this request; the server log has the detail."
                .into(),
            kind: "server_error",
            param: None,
            code: Some("server_error"),
        }
    }

    /// The `{"error": …}` body, also sent as an SSE event when a stream fails.
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

/// A body that is not JSON, has fields of the wrong type, or is too large.
/// axum's message names the field (`messages[0].content: invalid type…`).
impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let message = rejection.body_text();
        let (status, code) = match &rejection {
            _ if status == StatusCode::PAYLOAD_TOO_LARGE => (status, "request_too_large"),
            JsonRejection::JsonSyntaxError(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            JsonRejection::MissingJsonContentType(_) => {
                (StatusCode::BAD_REQUEST, "invalid_content_type")
            }
            JsonRejection::JsonDataError(_) if message.contains("missing field") => {
                (StatusCode::BAD_REQUEST, "missing_required_parameter")
            }
            _ => (StatusCode::BAD_REQUEST, "invalid_type"),
        };
        Self {
            status,
            message,
            kind: "invalid_request_error",
            param: None,
            code: Some(code),
        }
    }
}

/// What a failed generation means for the client. `Cancelled` never
/// reaches one (it means the client went away).
impl From<&LlmError> for ApiError {
    fn from(e: &LlmError) -> Self {
        match e {
            LlmError::ContextFull { .. } => {
                ApiError::invalid("messages", e.to_string()).with_code("context_length_exceeded")
            }
            LlmError::Grammar(g) => {
                let param = match g {
                    crate::llm::grammar::GrammarBuildError::NoChoices => "tool_choice",
                    _ => "tools",
                };
                ApiError::invalid(param, e.to_string())
            }
            _ => {
                tracing::error!(error = %e, message = "Chat completion failed.");
                ApiError::server_error()
            }
        }
    }
}
