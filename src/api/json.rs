//! The JSON body extractors: read the body within the size limit and parse it, so that a body that
//! is not `application/json` is a 415, a too large body a 413, malformed JSON (or anything after
//! the JSON value) a 400, and a wrong type a 400 naming the field's path, all in OpenAI's error
//! shape.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use super::types::SamplingFields;

/// A parsed JSON body.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = BodyError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let JsonBody(bytes) = JsonBody::from_request(request, state).await?;
        parse(&bytes).map(ApiJson)
    }
}

/// A body that cannot be taken (status and body: `error.rs`).
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is too large: {0}")]
    TooLarge(String),
    #[error("cannot read the request body: {0}")]
    Unreadable(String),
    #[error(
        "the request body must be JSON, sent with `Content-Type: application/json`; {}",
        .0.as_ref().map_or("the request has no Content-Type".to_string(), |t| format!("got `{t}`"))
    )]
    NotJsonContentType(Option<String>),
    #[error("the request body is not valid JSON: {0}")]
    NotJson(String),
    #[error("the request body is not valid JSON: {0} (one JSON value, nothing after it)")]
    Trailing(String),
    #[error("invalid request body: {0}")]
    Invalid(String),
    #[error("invalid value for `{path}`: {detail}")]
    WrongValue { path: String, detail: String },
}

impl BodyError {
    /// The field at fault, when the error names one.
    fn names_a_field(&self) -> bool {
        matches!(self, Self::WrongValue { .. })
    }
}

/// A request body that is empty or declared `application/json` (not yet parsed).
#[derive(Debug, Clone)]
pub struct JsonBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = BodyError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let declared = declared_json(request.headers());
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    BodyError::TooLarge(rejection.to_string())
                } else {
                    BodyError::Unreadable(rejection.to_string())
                }
            })?;
        match declared {
            Err(found) if !bytes.is_empty() || found.is_some() => {
                Err(BodyError::NotJsonContentType(found))
            }
            _ => Ok(Self(bytes)),
        }
    }
}

/// `Ok` when the `Content-Type` is JSON (`application/json` or a `+json` type, any parameters);
/// otherwise the type found, if any.
fn declared_json(headers: &HeaderMap) -> Result<(), Option<String>> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(None);
    };
    let text = value.to_str().unwrap_or_default();
    let essence = text.split(';').next().unwrap_or_default().trim();
    let essence = essence.to_ascii_lowercase();
    if essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
    {
        Ok(())
    } else {
        Err(Some(
            text.chars().filter(|c| !c.is_control()).take(100).collect(),
        ))
    }
}

/// Parses `bytes` as `T`, naming the field at fault.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, BodyError> {
    let error = match path_aware::<T>(bytes) {
        Ok(value) => return Ok(value),
        Err(error) => error,
    };
    if error.names_a_field() {
        return Err(error);
    }
    // serde loses the path inside `#[serde(flatten)]` fields: the shared sampling fields are
    // read again on their own to name the one at fault.
    match path_aware::<SamplingFields>(bytes) {
        Err(inner) if inner.names_a_field() => Err(inner),
        _ => Err(error),
    }
}

fn path_aware<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, BodyError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            BodyError::NotJson(inner.to_string())
        } else if path == "." {
            BodyError::Invalid(inner.to_string())
        } else {
            BodyError::WrongValue {
                path,
                detail: inner.to_string(),
            }
        }
    })?;
    deserializer
        .end()
        .map_err(|error| BodyError::Trailing(error.to_string()))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::error::ApiError;
    use crate::api::types::ChatCompletionRequest;

    fn param(body: &str) -> Option<String> {
        ApiError::from(parse::<ChatCompletionRequest>(body.as_bytes()).unwrap_err())
            .detail
            .param
    }

    #[test]
    fn wrong_types_name_their_field_even_when_flattened() {
        let messages = r#""messages": [{"role": "user", "content": "hi"}]"#;
        assert_eq!(
            param(&format!("{{{messages}, \"temperature\": \"hot\"}}")).as_deref(),
            Some("temperature")
        );
        assert_eq!(
            param(&format!("{{{messages}, \"seed\": -1}}")).as_deref(),
            Some("seed")
        );
        assert_eq!(param(r#"{"messages": "hi"}"#).as_deref(), Some("messages"));
        assert_eq!(
            param(r#"{"messages": [{"role": 1, "content": "x"}]}"#).as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(param(r#"{"model": "x"}"#), None);
        assert_eq!(param("{"), None);
    }

    #[test]
    fn anything_after_the_json_value_is_refused() {
        let body = r#"{"messages": [{"role": "user", "content": "hi"}]}"#;
        assert!(parse::<ChatCompletionRequest>(body.as_bytes()).is_ok());
        assert!(parse::<ChatCompletionRequest>(format!("{body}  \n").as_bytes()).is_ok());
        for tail in ["}}}", "{}", "x", "\u{0}"] {
            let error = ApiError::from(
                parse::<ChatCompletionRequest>(format!("{body}{tail}").as_bytes()).unwrap_err(),
            );
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{tail:?}");
            assert!(
                error.detail.message.contains("nothing after it"),
                "{tail:?}"
            );
        }
    }

    #[test]
    fn only_json_content_types_are_accepted() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
            declared_json(&headers)
        };
        assert_eq!(with("application/json"), Ok(()));
        assert_eq!(with("Application/JSON; charset=utf-8"), Ok(()));
        assert_eq!(with("application/merge-patch+json"), Ok(()));
        assert_eq!(with("text/plain"), Err(Some("text/plain".into())));
        assert_eq!(
            with("application/jsonx"),
            Err(Some("application/jsonx".into()))
        );
        assert_eq!(declared_json(&HeaderMap::new()), Err(None));
    }
}
