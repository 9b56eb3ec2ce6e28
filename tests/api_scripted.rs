//! The API against a scripted engine (the `TurnEngine` trait the handlers talk to): validation
//! before the engine is asked, OpenAI's SSE framing, error bodies before and after the stream
//! began, 429s, and a client that leaves stopping its turn. No weights are loaded and no token is
//! computed (the tokenizer comes from the default GGUF's metadata), so each test takes
//! milliseconds.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{to_bytes, Body};
use axum::http::Request;
use axum::Router;
use common::{in_process_router, require_model, root, TempDir};
use futures_util::StreamExt;
use infini::api::validate::Limits;
use infini::engine::channel::{
    Event, Finished, MemoryVerdict, ModelInfo, Submission, SubmitError, Turn, TurnEngine,
    TurnFailure,
};
use infini::engine::stats::EngineStats;
use infini::gguf::GgufFile;
use infini::session::MemoryParts;
use infini::tokenizer::Tokenizer;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tower::ServiceExt;

/// Streams `pieces` (a few milliseconds apart) for every turn, then ends as told.
struct Scripted {
    info: ModelInfo,
    stats: EngineStats,
    pieces: Vec<String>,
    failure: Option<&'static str>,
    busy: bool,
    submitted: AtomicUsize,
    /// A turn saw its event receiver dropped (the client left).
    saw_cancel: Arc<AtomicBool>,
}

impl TurnEngine for Scripted {
    fn info(&self) -> Option<&ModelInfo> {
        Some(&self.info)
    }

    fn submit(&self, turn: Turn) -> Result<Submission, SubmitError> {
        if self.busy {
            return Err(SubmitError::Busy(3));
        }
        self.submitted.fetch_add(1, Ordering::SeqCst);
        let (events_tx, events) = mpsc::unbounded_channel();
        let (finished_tx, finished) = oneshot::channel();
        let (pieces, failure) = (self.pieces.clone(), self.failure);
        let saw_cancel = self.saw_cancel.clone();
        std::thread::spawn(move || {
            let (mut text, mut sent, mut cancelled) = (String::new(), 0, false);
            for piece in pieces {
                std::thread::sleep(Duration::from_millis(5));
                let event = Event::Text {
                    text: piece.clone(),
                    logprobs: Vec::new(),
                };
                if events_tx.is_closed() || events_tx.send(event).is_err() {
                    cancelled = true;
                    saw_cancel.store(true, Ordering::SeqCst);
                    break;
                }
                text.push_str(&piece);
                sent += 1;
            }
            let _ = finished_tx.send(Finished {
                finish_reason: "stop",
                prompt_tokens: turn.prompt.len(),
                completion_tokens: sent,
                cancelled,
                text,
                error: failure.map(|f| TurnFailure::Model(f.into())),
                memory: None,
                time_to_first_token: Some(0.01),
            });
        });
        Ok(Submission { events, finished })
    }

    fn check_memory(&self, _parts: MemoryParts) -> Result<MemoryVerdict, SubmitError> {
        Err(SubmitError::NotReady)
    }

    fn stats(&self) -> &EngineStats {
        &self.stats
    }
}

struct App {
    router: Router,
    engine: Arc<Scripted>,
    _dir: TempDir,
}

async fn app(pieces: &[&str], failure: Option<&'static str>, busy: bool) -> App {
    require_model();
    let file = GgufFile::open(root().join(infini::model::DEFAULT_MODEL)).unwrap();
    let engine = Arc::new(Scripted {
        info: ModelInfo {
            fingerprint: "llama-scripted".into(),
            layout: "{}".into(),
            tokenizer: Arc::new(Tokenizer::from_gguf(&file).unwrap()),
        },
        stats: EngineStats::default(),
        pieces: pieces.iter().map(|p| p.to_string()).collect(),
        failure,
        busy,
        submitted: AtomicUsize::new(0),
        saw_cancel: Arc::new(AtomicBool::new(false)),
    });
    let dir = TempDir::new("scripted");
    let limits = Limits {
        max_tokens: 16,
        max_prompt_tokens: 256,
    };
    let router = in_process_router(engine.clone(), &dir, limits, 1 << 20).await;
    App {
        router,
        engine,
        _dir: dir,
    }
}

fn request(body: &Value) -> Request<Body> {
    Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn hello(stream: bool) -> Value {
    json!({"messages": [{"role": "user", "content": "hi"}], "stream": stream, "max_tokens": 4})
}

/// The status, the headers' `retry-after`, and the whole body as text.
async fn send(app: &App, body: &Value) -> (u16, Option<String>, String) {
    let response = app.router.clone().oneshot(request(body)).await.unwrap();
    let status = response.status().as_u16();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    (status, retry, String::from_utf8(bytes.to_vec()).unwrap())
}

/// The `data:` payloads of an SSE body.
fn events(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn validation_errors_come_before_the_engine_is_asked() {
    let app = app(&["never"], None, false).await;
    let mut bad = hello(false);
    bad["temperature"] = json!(3);
    let (status, _, body) = send(&app, &bad).await;
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(error["error"]["param"], "temperature");
    assert_eq!(error["error"]["type"], "invalid_request_error");
    let (status, _, _) = send(&app, &json!({"messages": []})).await;
    assert_eq!(status, 400);
    assert_eq!(app.engine.submitted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_streamed_reply_is_framed_as_openai_chunks_then_done() {
    let app = app(&["Hel", "lo", " there"], None, false).await;
    let mut body = hello(true);
    body["stream_options"] = json!({"include_usage": true});
    let (status, _, text) = send(&app, &body).await;
    assert_eq!(status, 200, "{text}");
    let data = events(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks[1..4]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(streamed, "Hello there");
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[5]["choices"], json!([]));
    assert_eq!(chunks[5]["usage"]["completion_tokens"], 3);
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    // The same reply, not streamed.
    let (status, _, text) = send(&app, &hello(false)).await;
    let reply: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(status, 200);
    assert_eq!(reply["choices"][0]["message"]["content"], "Hello there");
}

#[tokio::test]
async fn a_failure_is_an_error_body_or_after_the_stream_began_an_error_event() {
    let app = app(&["partial"], Some("the model broke"), false).await;
    let (status, _, text) = send(&app, &hello(false)).await;
    let error: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(status, 500, "{text}");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("the model broke"));
    let (status, _, text) = send(&app, &hello(true)).await;
    assert_eq!(status, 200);
    let data = events(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let failure: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(failure["error"]["type"], "server_error", "{text}");
}

#[tokio::test]
async fn a_busy_engine_is_a_429_with_retry_after() {
    let app = app(&["x"], None, true).await;
    let (status, retry, text) = send(&app, &hello(true)).await;
    assert_eq!(status, 429, "{text}");
    assert_eq!(retry.as_deref(), Some("1"));
    let error: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(error["error"]["code"], "server_busy");
}

#[tokio::test]
async fn a_client_that_leaves_stops_its_turn() {
    let pieces: Vec<String> = (0..400).map(|i| format!("w{i} ")).collect();
    let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
    let app = app(&pieces, None, false).await;
    let response = app
        .router
        .clone()
        .oneshot(request(&hello(true)))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = response.into_body().into_data_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("assistant"));
    drop(stream);
    let started = Instant::now();
    while !app.engine.saw_cancel.load(Ordering::SeqCst) {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the turn did not see its client leave"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
