//! The JSON body extractor: reads the body within the size limit and parses it, so that a too
//! large body is a 413, malformed JSON a 400, and a wrong type a 400 naming the field's path, all
//! in OpenAI's error shape.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::types::SamplingFields;

/// A parsed JSON body.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::too_large(format!("the request body is too large: {rejection}"))
                } else {
                    ApiError::bad_body(format!("cannot read the request body: {rejection}"))
                }
            })?;
        parse(&bytes).map(ApiJson)
    }
}

/// Parses `bytes` as `T`, naming the field at fault.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let error = match path_aware::<T>(bytes) {
        Ok(value) => return Ok(value),
        Err(error) => error,
    };
    if error.detail.param.is_some() {
        return Err(error);
    }
    // serde loses the path inside `#[serde(flatten)]` fields: the shared sampling fields are
    // read again on their own to name the one at fault.
    match path_aware::<SamplingFields>(bytes) {
        Err(inner) if inner.detail.param.is_some() => Err(inner),
        _ => Err(error),
    }
}

fn path_aware<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::bad_body(format!("the request body is not valid JSON: {inner}"))
        } else if path == "." {
            ApiError::bad_body(format!("invalid request body: {inner}"))
        } else {
            ApiError::invalid(path.clone(), format!("invalid value for `{path}`: {inner}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::ChatCompletionRequest;

    fn param(body: &str) -> Option<String> {
        parse::<ChatCompletionRequest>(body.as_bytes())
            .unwrap_err()
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
}
