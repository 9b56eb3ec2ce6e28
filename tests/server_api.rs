//! `infini serve` over HTTP with the real default model: the OpenAI routes streaming and not,
//! their SSE framing, every bad-input case with its status and error body, the public operations
//! routes, and a client that leaves mid-stream stopping its generation.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::{chat, read_events, reply_text, require_model, Server, TempDir};
use serde_json::{json, Value};

const KEY: &str = "Bearer test-key";

fn start(dir: &TempDir) -> Server {
    Server::start(
        &[
            ("INFINI_DATA_DIR", dir.0.display().to_string()),
            ("INFINI_API_KEYS", "tester:test-key".into()),
            ("INFINI_MAX_PROMPT_TOKENS", "200".into()),
            ("INFINI_MAX_TOKENS", "64".into()),
            ("INFINI_MAX_BODY_BYTES", "16384".into()),
            ("INFINI_MODEL_NAME", "smollm2".into()),
            ("INFINI_MAX_RUNNING", "1".into()),
            ("INFINI_MAX_WAITING", "0".into()),
        ],
        &dir.0,
    )
}

fn hello() -> Value {
    json!([{"role": "user", "content": "Say hello."}])
}

#[test]
fn openai_routes_answer_streaming_and_not() {
    require_model();
    let dir = TempDir::new("api");
    let server = start(&dir);

    // Non-streaming chat.
    let response = server.post("/v1/chat/completions", Some(KEY), &chat(hello(), 8));
    let text = reply_text(&response);
    let body = response.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "smollm2");
    assert!(!text.is_empty());
    let usage = &body["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 5);
    assert!((1..=8).contains(&usage["completion_tokens"].as_u64().unwrap()));
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );

    // Streaming chat with usage: the same greedy text, OpenAI's framing.
    let mut request = chat(hello(), 8);
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});
    let response = server.post("/v1/chat/completions", Some(KEY), &request);
    assert_eq!(response.status, 200);
    assert!(response
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(response.header("x-accel-buffering"), Some("no"));
    let data = response.sse_data();
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, text, "greedy streaming equals non-streaming");
    let finish = &chunks[chunks.len() - 2];
    assert!(finish["choices"][0]["finish_reason"].is_string());
    let last = &chunks[chunks.len() - 1];
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], body["usage"]);

    // Stop strings, max_completion_tokens and logprobs.
    let mut request = chat(hello(), 0);
    request.as_object_mut().unwrap().remove("max_tokens");
    request["max_completion_tokens"] = json!(3);
    request["logprobs"] = json!(true);
    request["top_logprobs"] = json!(2);
    let response = server.post("/v1/chat/completions", Some(KEY), &request);
    let body = response.json();
    assert_eq!(body["choices"][0]["finish_reason"], "length", "{body}");
    let content = body["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap();
    assert_eq!(content.len(), 3);
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 2);
    let top = content[0]["top_logprobs"][0]["logprob"].as_f64().unwrap();
    assert!(content[0]["logprob"].as_f64().unwrap() <= top + 1e-6 && top <= 0.0);
    let first_word = text.split_whitespace().next().unwrap().to_string();
    let mut request = chat(hello(), 8);
    request["stop"] = json!([first_word]);
    let stopped = reply_text(&server.post("/v1/chat/completions", Some(KEY), &request));
    assert!(
        !stopped.contains(&first_word) && text.starts_with(&stopped),
        "{stopped:?} vs {text:?}"
    );

    // Text completions, both ways.
    let request = json!({"prompt": "The capital of France is", "max_tokens": 5, "temperature": 0, "logprobs": 1});
    let body = server.post("/v1/completions", Some(KEY), &request).json();
    assert_eq!(body["object"], "text_completion");
    let completion = body["choices"][0]["text"].as_str().unwrap().to_string();
    assert!(completion.contains("Paris"), "{completion:?}");
    assert_eq!(
        body["choices"][0]["logprobs"]["tokens"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    let mut request = request;
    request["stream"] = json!(true);
    let data = server
        .post("/v1/completions", Some(KEY), &request)
        .sse_data();
    assert_eq!(data.last().unwrap(), "[DONE]");
    let streamed: String = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(streamed, completion);

    // Models and the public routes.
    let models = server.get("/v1/models", Some(KEY)).json();
    assert_eq!(models["data"][0]["id"], "smollm2");
    assert_eq!(server.get("/health", None).status, 200);
    assert_eq!(server.get("/ready", None).json()["status"], "ok");
    let spec = server.get("/openapi.json", None).json();
    assert!(spec["paths"]["/v1/chat/completions"]["post"].is_object());
    assert!(server.get("/docs", None).text().contains("/openapi.json"));
    assert!(server.metric("infini_generated_tokens_total") >= 8.0);
    assert!(server
        .get("/metrics", None)
        .text()
        .contains("infini_requests_total{route=\"/v1/chat/completions\",status=\"200\"}"));
}

#[test]
fn bad_input_gets_openai_errors_before_any_200() {
    require_model();
    let dir = TempDir::new("errors");
    let server = start(&dir);
    let post_raw = |body: &str| {
        server.request(
            "POST",
            "/v1/chat/completions",
            &[("Authorization", KEY)],
            Some(body),
        )
    };
    let param = |error: Value| error["param"].as_str().map(str::to_string);

    let error = post_raw("{\"messages\": [").expect_error(400);
    assert_eq!(error["type"], "invalid_request_error");
    assert!(error["message"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));
    let error =
        post_raw(r#"{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}"#)
            .expect_error(400);
    assert_eq!(param(error).as_deref(), Some("temperature"));
    let error = post_raw(r#"{"messages": "hi"}"#).expect_error(400);
    assert_eq!(param(error).as_deref(), Some("messages"));
    post_raw(r#"{"model": "x"}"#).expect_error(400);

    let cases: Vec<(Value, &str)> = vec![
        (json!({"temperature": 3.0}), "temperature"),
        (json!({"top_p": 0}), "top_p"),
        (json!({"presence_penalty": 9}), "presence_penalty"),
        (json!({"n": 2}), "n"),
        (json!({"max_tokens": 0}), "max_tokens"),
        (json!({"max_tokens": 65}), "max_tokens"),
        (
            json!({"max_tokens": 5, "max_completion_tokens": 5}),
            "max_completion_tokens",
        ),
        (json!({"stop": ["a", "b", "c", "d", "e"]}), "stop"),
        (json!({"top_logprobs": 2}), "top_logprobs"),
        (
            json!({"logprobs": true, "top_logprobs": 21}),
            "top_logprobs",
        ),
        (
            json!({"stream_options": {"include_usage": true}}),
            "stream_options",
        ),
        (json!({"messages": []}), "messages"),
        (
            json!({"messages": [{"role": "tool", "content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"messages": [{"role": "user", "content": "word ".repeat(300)}]}),
            "messages",
        ),
    ];
    for (patch, field) in cases {
        let mut body = chat(json!([{"role": "user", "content": "hi"}]), 4);
        body.as_object_mut().unwrap().remove("max_tokens");
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let error = server
            .post("/v1/chat/completions", Some(KEY), &body)
            .expect_error(400);
        assert_eq!(
            param(error.clone()).as_deref(),
            Some(field),
            "{patch}: {error}"
        );
    }
    let long = json!({"messages": [{"role": "user", "content": "word ".repeat(300)}]});
    let error = server
        .post("/v1/chat/completions", Some(KEY), &long)
        .expect_error(400);
    assert_eq!(error["code"], "context_length_exceeded");
    let error = server
        .post(
            "/v1/completions",
            Some(KEY),
            &json!({"prompt": "x", "logprobs": 6}),
        )
        .expect_error(400);
    assert_eq!(param(error).as_deref(), Some("logprobs"));

    let body = json!({"messages": [{"role": "user", "content": "x".repeat(20_000)}]});
    server
        .post("/v1/chat/completions", Some(KEY), &body)
        .expect_error(413);
    let error = server
        .post(
            "/v1/chat/completions",
            Some(KEY),
            &json!({"model": "gpt-4", "messages": hello()}),
        )
        .expect_error(404);
    assert_eq!(error["code"], "model_not_found");
    let mut body = chat(hello(), 4);
    body["session_id"] = json!("sess_missing");
    let error = server
        .post("/v1/chat/completions", Some(KEY), &body)
        .expect_error(404);
    assert_eq!(error["code"], "session_not_found");
    let error = server
        .post("/v1/chat/completions", None, &chat(hello(), 4))
        .expect_error(401);
    assert_eq!(error["type"], "authentication_error");
    server
        .post(
            "/v1/chat/completions",
            Some("Bearer wrong"),
            &chat(hello(), 4),
        )
        .expect_error(401);
    server.get("/v1/models", None).expect_error(401);
    server.get("/nowhere", Some(KEY)).expect_error(404);
    assert_eq!(server.get("/health", None).status, 200);
    assert_eq!(
        server.metric("infini_generated_tokens_total"),
        0.0,
        "no error reached the model"
    );
}

#[test]
fn a_client_that_leaves_mid_stream_stops_the_generation() {
    require_model();
    let dir = TempDir::new("disconnect");
    let server = start(&dir);
    let mut body = chat(
        json!([{"role": "user", "content": "Count from one to one hundred."}]),
        64,
    );
    body["stream"] = json!(true);
    let mut stream = server.open_stream("/v1/chat/completions", KEY, &body);
    read_events(&mut stream, 3);
    drop(stream);
    let started = Instant::now();
    while server.metric("infini_generations_cancelled_total") < 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no cancellation; log:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(server.metric("infini_generated_tokens_total") < 64.0);
    assert!(server.log_text().contains("generation stopped early"));
}

#[test]
fn sigterm_drains_in_flight_turns_then_exits_zero() {
    require_model();
    let dir = TempDir::new("drain");
    let server = start(&dir);
    let body = json!({"prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 40, "temperature": 0, "stream": true,
                      "stream_options": {"include_usage": true}});
    let mut stream = server.open_stream("/v1/completions", KEY, &body);
    let mut seen = read_events(&mut stream, 2);
    // One turn runs (INFINI_MAX_RUNNING=1) and none may wait (INFINI_MAX_WAITING=0): a second is
    // refused at once.
    let busy = server.post(
        "/v1/completions",
        Some(KEY),
        &json!({"prompt": "x", "max_tokens": 2}),
    );
    assert_eq!(busy.expect_error(429)["code"], "server_busy");
    assert_eq!(busy.header("retry-after"), Some("1"));
    server.terminate();
    // Draining: not ready, no new turns, the running one goes on.
    let started = Instant::now();
    loop {
        let ready = server.get("/ready", None);
        if ready.status == 503 {
            assert_eq!(ready.json()["status"], "draining");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still ready after SIGTERM"
        );
    }
    server
        .post("/v1/chat/completions", Some(KEY), &chat(hello(), 4))
        .expect_error(503);
    stream.read_to_end(&mut seen).unwrap();
    let data = common::Response::parse(&seen).sse_data();
    assert_eq!(data.last().unwrap(), "[DONE]");
    let usage: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(
        usage["usage"]["completion_tokens"], 40,
        "the turn ran to its end"
    );
    assert!(server.stop().success());
}

/// The README's examples, sent as written to a server on the defaults, answer what they ask: the
/// first curl's question, and the session that remembers a name (the default precision once
/// answered the first with nonsense while f32 answered it right: a bf16 residual stream).
#[test]
fn the_readmes_examples_answer_correctly_on_the_defaults() {
    require_model();
    let readme = std::fs::read_to_string(common::root().join("README.md")).unwrap();
    let body = readme
        .split("-d '")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .expect("the README's first curl has a -d '…' body");
    let request: Value = serde_json::from_str(body).expect("the README's first body is JSON");
    assert!(body.contains("What is the capital of France?"), "{body}");
    for text in ["My name is Zorblax.", "What is my name?"] {
        assert!(
            readme.contains(text),
            "the README's session example says {text:?}"
        );
    }
    let dir = TempDir::new("readme");
    let server = Server::start(&[("INFINI_DATA_DIR", dir.0.display().to_string())], &dir.0);
    let reply = reply_text(&server.post("/v1/chat/completions", None, &request));
    assert!(
        reply.contains("Paris"),
        "the README's first example answered {reply:?}"
    );

    let session = server.request("POST", "/v1/sessions", &[], None).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut reply = String::new();
    for text in ["My name is Zorblax.", "What is my name?"] {
        let mut body = chat(json!([{"role": "user", "content": text}]), 32);
        body["session_id"] = json!(session);
        reply = reply_text(&server.post("/v1/chat/completions", None, &body));
    }
    assert!(
        reply.contains("Zorblax"),
        "the session example answered {reply:?}"
    );
}
