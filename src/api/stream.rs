//! SSE framing shared by every streaming endpoint (`style.md`: one small state machine owns it):
//! `data: {chunk}` events from a [`ChunkFormat`], an optional usage chunk with `choices: []`, an
//! error event on a mid-stream failure, and always `data: [DONE]` last; keep-alive comments, and
//! `X-Accel-Buffering: no` so proxies do not hold chunks back.

use std::convert::Infallible;
use std::time::Duration;

use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use serde_json::Value;
use tokio::sync::mpsc;

use super::turn::TurnEvent;
use super::types::Usage;
use crate::engine::channel::TokenLogprob;

/// How one endpoint spells its chunks.
pub trait ChunkFormat: Send + 'static {
    /// Sent before any text (chat: the assistant role).
    fn opening(&self) -> Option<Value>;
    fn text(&mut self, text: String, logprobs: Vec<TokenLogprob>) -> Value;
    fn finish(&self, finish_reason: &'static str) -> Value;
    fn usage(&self, usage: Usage) -> Value;
}

enum Phase {
    Opening,
    Running,
    Usage(Usage),
    Done,
    Ended,
}

/// The SSE response for a turn's events.
pub fn sse<F: ChunkFormat>(
    format: F,
    events: mpsc::Receiver<TurnEvent>,
    include_usage: bool,
    keep_alive: Duration,
) -> Response {
    let mut response = Sse::new(chunks(format, events, include_usage))
        .keep_alive(KeepAlive::new().interval(keep_alive))
        .into_response();
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

fn data(value: &Value) -> Result<Event, Infallible> {
    Ok(Event::default().data(value.to_string()))
}

fn chunks<F: ChunkFormat>(
    format: F,
    events: mpsc::Receiver<TurnEvent>,
    include_usage: bool,
) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(
        (format, events, Phase::Opening),
        move |(format, events, phase)| async move {
            match phase {
                Phase::Opening => match format.opening() {
                    Some(chunk) => Some((data(&chunk), (format, events, Phase::Running))),
                    None => next_event(format, events, include_usage).await,
                },
                Phase::Running => next_event(format, events, include_usage).await,
                Phase::Usage(usage) => {
                    let chunk = format.usage(usage);
                    Some((data(&chunk), (format, events, Phase::Done)))
                }
                Phase::Done => Some((
                    Ok(Event::default().data("[DONE]")),
                    (format, events, Phase::Ended),
                )),
                Phase::Ended => None,
            }
        },
    )
}

type Step<F> = Option<(
    Result<Event, Infallible>,
    (F, mpsc::Receiver<TurnEvent>, Phase),
)>;

async fn next_event<F: ChunkFormat>(
    mut format: F,
    mut events: mpsc::Receiver<TurnEvent>,
    include_usage: bool,
) -> Step<F> {
    let event = events.recv().await;
    let (chunk, next) = match event {
        Some(TurnEvent::Text { text, logprobs }) => (format.text(text, logprobs), Phase::Running),
        Some(TurnEvent::Done {
            finish_reason,
            usage,
        }) => (
            format.finish(finish_reason),
            if include_usage {
                Phase::Usage(usage)
            } else {
                Phase::Done
            },
        ),
        Some(TurnEvent::Failed(error)) => (
            serde_json::to_value(error.body()).unwrap_or_default(),
            Phase::Done,
        ),
        None => (
            serde_json::to_value(
                super::error::ApiError::from(super::error::RequestError::Internal(
                    "the turn ended without a result".into(),
                ))
                .body(),
            )
            .unwrap_or_default(),
            Phase::Done,
        ),
    };
    Some((data(&chunk), (format, events, next)))
}
