//! The JSON body extractor: reads the body within the size limit and parses it, so that a too
//! large body is a 413, malformed JSON a 400, and a wrong type a 400 naming the field's path, all
//! in OpenAI's error shape.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;

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
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize(&mut deserializer) {
        Ok(value) => Ok(value),
        Err(error) => {
            let path = error.path().to_string();
            let inner = error.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                Err(ApiError::bad_body(format!(
                    "the request body is not valid JSON: {inner}"
                )))
            } else if path == "." {
                Err(ApiError::bad_body(format!("invalid request body: {inner}")))
            } else {
                Err(ApiError::invalid(
                    path.clone(),
                    format!("invalid value for `{path}`: {inner}"),
                ))
            }
        }
    }
}
