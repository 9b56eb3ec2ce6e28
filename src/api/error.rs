//! Every failure the API reports, mapped to its HTTP status and OpenAI's error body in one place:
//! `{"error": {"message", "type", "param", "code"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::export_file::ImportError;
use super::json::BodyError;
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

/// An API failure with its status. Built only here, from a typed error, by [`Failure::to_api`]:
/// no handler chooses a status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: ErrorDetail,
}

/// How one typed failure is reported: status, OpenAI `type`, `code` and `param`; its message is
/// its `Display`.
pub struct Report {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub param: Option<String>,
}

/// A typed failure the API reports ([`ValidationError`], [`BodyError`], [`RequestError`],
/// [`ImportError`], the store's, the engine's): each says how it is reported, in this file.
pub trait Failure: std::fmt::Display {
    fn report(&self) -> Report;

    /// The one mapping from a typed failure to the API's status and OpenAI body.
    fn to_api(&self) -> ApiError {
        let report = self.report();
        ApiError {
            status: report.status,
            detail: ErrorDetail {
                message: self.to_string(),
                kind: report.kind,
                param: report.param,
                code: report.code,
            },
        }
    }
}

const INVALID: &str = "invalid_request_error";

fn report(
    status: StatusCode,
    kind: &'static str,
    code: Option<&'static str>,
    param: Option<&str>,
) -> Report {
    Report {
        status,
        kind,
        code,
        param: param.map(str::to_string),
    }
}

impl Failure for ValidationError {
    /// Every generation rule is a 400 naming its field, with its code.
    fn report(&self) -> Report {
        report(
            StatusCode::BAD_REQUEST,
            INVALID,
            self.code(),
            Some(&self.param()),
        )
    }
}

impl Failure for BodyError {
    fn report(&self) -> Report {
        match self {
            Self::TooLarge(_) => report(
                StatusCode::PAYLOAD_TOO_LARGE,
                INVALID,
                Some("request_too_large"),
                None,
            ),
            Self::NotJsonContentType(_) => report(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                INVALID,
                Some("unsupported_media_type"),
                None,
            ),
            Self::WrongValue { path, .. } => {
                report(StatusCode::BAD_REQUEST, INVALID, None, Some(path))
            }
            Self::Unreadable(_) | Self::NotJson(_) | Self::Invalid(_) | Self::Trailing(_) => {
                report(StatusCode::BAD_REQUEST, INVALID, None, None)
            }
        }
    }
}

impl Failure for ImportError {
    fn report(&self) -> Report {
        let bad = |code, param: &str| report(StatusCode::BAD_REQUEST, INVALID, code, Some(param));
        match self {
            Self::Format(_) => bad(None, "format"),
            Self::Version(_) => bad(None, "format_version"),
            Self::ModelMismatch { param, .. } => bad(Some("model_mismatch"), param),
            Self::NegativeTokens(_) | Self::TokensMismatch { .. } => bad(None, "tokens_seen"),
            Self::NotBase64(_) | Self::Unreadable(_) | Self::Unusable(_) => {
                bad(Some("invalid_memory"), "memory")
            }
            Self::ChecksumMissing(_) => bad(None, "memory_sha256"),
            Self::ChecksumMismatch { .. } => bad(Some("checksum_mismatch"), "memory_sha256"),
            Self::LayoutMismatch { .. } => bad(Some("memory_layout_mismatch"), "memory"),
            Self::Role { index, .. } => bad(None, &format!("transcript[{index}].role")),
            Self::Transcript(_) => bad(Some("transcript_mismatch"), "fed"),
        }
    }
}

impl Failure for RequestError {
    fn report(&self) -> Report {
        let session = Some("session_id");
        match self {
            Self::BadPathId(_) => report(StatusCode::BAD_REQUEST, INVALID, None, Some("id")),
            Self::BadQuery(_) => report(StatusCode::BAD_REQUEST, INVALID, None, None),
            Self::ListLimit(_) => report(StatusCode::BAD_REQUEST, INVALID, None, Some("limit")),
            Self::SessionHeaderNotText => {
                report(StatusCode::BAD_REQUEST, INVALID, None, Some("X-Session-Id"))
            }
            Self::Template(_) => report(StatusCode::BAD_REQUEST, INVALID, None, Some("messages")),
            Self::MissingKey | Self::NotBearer | Self::InvalidKey => report(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                Some("invalid_api_key"),
                None,
            ),
            Self::UnknownSession(_) => report(
                StatusCode::NOT_FOUND,
                "not_found_error",
                Some("session_not_found"),
                session,
            ),
            Self::UnknownModel { .. } => report(
                StatusCode::NOT_FOUND,
                "not_found_error",
                Some("model_not_found"),
                None,
            ),
            Self::NoRoute => report(StatusCode::NOT_FOUND, "not_found_error", None, None),
            Self::SessionBusy(_) => report(
                StatusCode::CONFLICT,
                "conflict_error",
                Some("session_busy"),
                None,
            ),
            Self::VersionConflict(_) => report(
                StatusCode::CONFLICT,
                "conflict_error",
                Some("session_version_conflict"),
                None,
            ),
            Self::Unreadable { .. } => report(
                StatusCode::UNPROCESSABLE_ENTITY,
                INVALID,
                Some("session_unreadable"),
                session,
            ),
            Self::Loading | Self::ShuttingDown => report(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                Some("unavailable"),
                None,
            ),
            Self::Internal(_) => report(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                None,
                None,
            ),
        }
    }
}

impl Failure for SubmitError {
    fn report(&self) -> Report {
        match self {
            Self::Busy(_) => report(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                Some("server_busy"),
                None,
            ),
            Self::NotReady | Self::Stopped => report(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                Some("unavailable"),
                None,
            ),
        }
    }
}

impl Failure for StoreError {
    fn report(&self) -> Report {
        tracing::error!(error = %crate::log_text::Escaped(self), "store failure");
        report(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            None,
            None,
        )
    }
}

/// The failures that are neither a generation rule, a body, nor an import: authentication,
/// routes, sessions, and the server's own state.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("invalid session id in the path: {0}")]
    BadPathId(String),
    #[error("invalid query: {0}")]
    BadQuery(String),
    #[error("limit must be between 1 and 100, got {0}")]
    ListLimit(i64),
    #[error("the X-Session-Id header is not text")]
    SessionHeaderNotText,
    #[error("{0}")]
    Template(String),
    #[error("missing `Authorization: Bearer <key>` header")]
    MissingKey,
    #[error("the Authorization header must be `Bearer <key>`")]
    NotBearer,
    #[error("invalid API key")]
    InvalidKey,
    #[error("no session `{0}`")]
    UnknownSession(String),
    #[error("the model `{name}` does not exist; this server serves `{ours}`")]
    UnknownModel { name: String, ours: String },
    #[error("no such route")]
    NoRoute,
    #[error("session `{0}` is already running a turn; send the next message when it has finished")]
    SessionBusy(String),
    #[error(
        "session `{0}` was changed or deleted by another request while this turn ran; the turn \
         was not stored"
    )]
    VersionConflict(String),
    #[error(
        "session `{id}` cannot be continued on this server: {reason}. Export it and import it into \
         a server started with the model and memory flags it was made with, or delete it"
    )]
    Unreadable { id: String, reason: String },
    #[error("the model is still loading")]
    Loading,
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Internal(String),
}

impl<F: Failure> From<F> for ApiError {
    fn from(error: F) -> Self {
        error.to_api()
    }
}

impl ApiError {
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.detail.clone(),
        }
    }
}

/// The JSON extractors' rejection (`json.rs`), answered through the one mapping.
impl IntoResponse for BodyError {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionFormatError;

    /// One of every failure a request can meet, rules of generation first.
    fn every_failure() -> Vec<ApiError> {
        let mut all: Vec<ApiError> = ValidationError::every_rule()
            .into_iter()
            .map(ApiError::from)
            .collect();
        all.extend(
            [
                BodyError::TooLarge("length limit exceeded".into()),
                BodyError::Unreadable("connection reset".into()),
                BodyError::NotJsonContentType(Some("text/plain".into())),
                BodyError::NotJsonContentType(None),
                BodyError::NotJson("EOF while parsing an object at line 1 column 1".into()),
                BodyError::Trailing("trailing characters at line 1 column 3".into()),
                BodyError::Invalid("missing field `messages`".into()),
                BodyError::WrongValue {
                    path: "temperature".into(),
                    detail: "invalid type: string \"hot\", expected f64".into(),
                },
            ]
            .map(ApiError::from),
        );
        all.extend(
            [
                ImportError::Format("other".into()),
                ImportError::Version(3),
                ImportError::model_mismatch("model_fingerprint", "llama-b", "llama-a"),
                ImportError::NegativeTokens(-5),
                ImportError::NotBase64("Invalid byte 33, offset 3.".into()),
                ImportError::Unreadable(SessionFormatError::NotAMemory),
                ImportError::ChecksumMissing(2),
                ImportError::ChecksumMismatch {
                    given: "9f86…".into(),
                    actual: "60b7…".into(),
                },
                ImportError::LayoutMismatch {
                    found: r#"{"stm_len":512}"#.into(),
                    ours: r#"{"stm_len":256}"#.into(),
                },
                ImportError::Role {
                    index: 0,
                    role: "wizard".into(),
                },
                ImportError::Transcript("fed is not the chat template's rendering".into()),
                ImportError::TokensMismatch {
                    file: 41,
                    memory: 40,
                },
                ImportError::Unusable(SessionFormatError::Corrupt("…".into())),
            ]
            .map(ApiError::from),
        );
        all.extend(
            [
                RequestError::BadPathId("invalid utf-8".into()),
                RequestError::BadQuery("invalid digit found in string".into()),
                RequestError::ListLimit(0),
                RequestError::SessionHeaderNotText,
                RequestError::Template(
                    "the chat template renders earlier turns differently".into(),
                ),
                RequestError::MissingKey,
                RequestError::NotBearer,
                RequestError::InvalidKey,
                RequestError::UnknownSession("sess_x".into()),
                RequestError::UnknownModel {
                    name: "gpt-4".into(),
                    ours: "smollm2".into(),
                },
                RequestError::NoRoute,
                RequestError::SessionBusy("sess_x".into()),
                RequestError::VersionConflict("sess_x".into()),
                RequestError::Unreadable {
                    id: "sess_x".into(),
                    reason: "the session was made with another memory layout".into(),
                },
                RequestError::Loading,
                RequestError::ShuttingDown,
                RequestError::Internal("generation failed: …".into()),
            ]
            .map(ApiError::from),
        );
        all.extend([SubmitError::Busy(80), SubmitError::NotReady].map(ApiError::from));
        all
    }

    /// docs/SERVER.md's table: every failure with its status, type, code and param.
    fn failures_table() -> String {
        let mut table = String::from(
            "| failure (example message) | status | type | code | param |\n|---|---|---|---|---|\n",
        );
        for error in every_failure() {
            let detail = &error.detail;
            table.push_str(&format!(
                "| {} | {} | `{}` | {} | {} |\n",
                detail.message.replace('|', "\\|"),
                error.status.as_u16(),
                detail.kind,
                detail.code.map_or("—".to_string(), |c| format!("`{c}`")),
                detail
                    .param
                    .as_deref()
                    .map_or("—".to_string(), |p| format!("`{p}`")),
            ));
        }
        table
    }

    #[test]
    fn docs_list_every_failure_with_its_status_type_code_and_param() {
        let table = failures_table();
        let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/SERVER.md"))
            .unwrap();
        assert!(
            docs.contains(&table),
            "docs/SERVER.md's table of failures is out of date; it should read:\n{table}"
        );
    }

    #[test]
    fn every_failure_has_a_message_and_client_errors_name_their_kind() {
        for error in every_failure() {
            assert!(!error.detail.message.is_empty());
            let server_side = error.status.is_server_error();
            assert_eq!(
                error.detail.kind == "server_error",
                server_side,
                "{error:?}"
            );
        }
        assert_eq!(
            ApiError::from(SubmitError::Busy(1))
                .into_response()
                .headers()
                .get(header::RETRY_AFTER)
                .unwrap(),
            "1"
        );
    }
}
