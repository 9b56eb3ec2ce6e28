//! Request bodies on a kept-alive connection. A handler may answer without reading the body (a
//! 401 from the key check, a 404 for an unknown route, a 413 part-way through); HTTP/1.1 can then
//! take the connection's next request only once the rest of the body has been read. Hyper reads
//! what has already arrived and, when more is still on its way, silently closes the connection,
//! so a client's next request on it fails. [`settle`] reads what is left (up to the ordinary body
//! limit, for a short while) before answering; a body it cannot finish ends the connection openly,
//! with `Connection: close` on the response.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::header::CONNECTION;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use futures_util::StreamExt;

/// How long an answered request's remaining body may take to arrive.
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// The body a handler reads, shared with [`settle`], which reads what the handler left.
struct SharedBody(Arc<Mutex<Option<Body>>>);

impl HttpBody for SharedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match slot.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        let slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        slot.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        slot.as_ref().map(Body::size_hint).unwrap_or_default()
    }
}

/// Runs the request, then reads whatever of its body the handler left (at most `limit` bytes
/// within `DRAIN_TIME`); past that, the response closes the connection.
pub async fn settle(State(limit): State<usize>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    if body.is_end_stream() {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let shared = Arc::new(Mutex::new(Some(body)));
    let request = Request::from_parts(parts, Body::new(SharedBody(shared.clone())));
    let mut response = next.run(request).await;
    let rest = shared
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
        .filter(|body| !body.is_end_stream());
    if let Some(rest) = rest {
        let drained = tokio::time::timeout(DRAIN_TIME, drain(rest, limit)).await;
        if drained != Ok(true) {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
    }
    response
}

/// Reads `body` to its end, discarding it; false when it is longer than `limit` or fails.
async fn drain(body: Body, limit: usize) -> bool {
    let mut stream = body.into_data_stream();
    let mut read = 0usize;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => {
                read += bytes.len();
                if read > limit {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
    true
}
