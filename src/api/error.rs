//! Every failure the API reports, mapped to its HTTP status and OpenAI's error body in one place:
//! `{"error": {"message", "type", "param", "code"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::validate::ValidationError;
use crate::engine::channel::SubmitError;
use crate::store::StoreError;

/// The error object inside [`ErrorBody`].
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq, Eq)]
pub struct ErrorDetail {
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `not_found_error`, `conflict_error`,
    /// `rate_limit_error`, `server_error`, …
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

/// OpenAI's error body.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"error": {
    "message": "temperature must be between 0 and 2, got 3", "type": "invalid_request_error",
    "param": "temperature", "code": null
}}))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// An API failure with its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: ErrorDetail,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            detail: ErrorDetail {
                message: message.into(),
                kind,
                param: None,
                code: None,
            },
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.detail.code = Some(code);
        self
    }

    /// 400 naming the field at fault.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        let mut error = Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message);
        error.detail.param = Some(param.into());
        error
    }

    /// 400 about the body as a whole.
    pub fn bad_body(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            message,
        )
        .with_code("request_too_large")
    }

    /// 415: the body is not declared as JSON (`found`: the `Content-Type` given, if any).
    pub fn unsupported_media_type(found: Option<String>) -> Self {
        let message = match found {
            Some(found) => format!(
                "the request body must be JSON, sent with `Content-Type: application/json`; got `{found}`"
            ),
            None => "the request body must be JSON, sent with `Content-Type: application/json`; \
                     the request has no Content-Type"
                .to_string(),
        };
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            message,
        )
        .with_code("unsupported_media_type")
    }

    /// 422: the session exists but its stored memory cannot be used by this server.
    pub fn unreadable_session(id: &str, reason: impl std::fmt::Display) -> Self {
        let mut error = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request_error",
            format!(
                "session `{id}` cannot be continued on this server: {reason}. Export it and import \
                 it into a server started with the model and memory flags it was made with, or \
                 delete it"
            ),
        );
        error.detail.param = Some("session_id".into());
        error.with_code("session_unreadable")
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "authentication_error", message)
            .with_code("invalid_api_key")
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found_error", message)
    }

    /// The session `id` does not exist for this caller (also when another key owns it).
    pub fn unknown_session(id: &str) -> Self {
        let mut error = Self::not_found(format!("no session `{id}`"));
        error.detail.param = Some("session_id".into());
        error.with_code("session_not_found")
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict_error", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message).with_code("unavailable")
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.detail.clone(),
        }
    }
}

/// Every validation rule is a 400 `invalid_request_error` naming its field, with its code.
impl From<ValidationError> for ApiError {
    fn from(error: ValidationError) -> Self {
        let mut api = Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            error.to_string(),
        );
        api.detail.param = Some(error.param());
        api.detail.code = error.code();
        api
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        tracing::error!(error = %crate::log_text::Escaped(&error), "store failure");
        Self::internal(error.to_string())
    }
}

impl From<SubmitError> for ApiError {
    fn from(error: SubmitError) -> Self {
        match error {
            SubmitError::Busy(_) => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                error.to_string(),
            )
            .with_code("server_busy"),
            SubmitError::NotReady | SubmitError::Stopped => Self::unavailable(error.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let busy = self.status == StatusCode::TOO_MANY_REQUESTS;
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if busy {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
