//! Continuous batching through the real server and the default model: the same greedy requests
//! give the same tokens alone and batched, and past capacity every request gets either a whole
//! answer or a prompt 429, with no 5xx, no hang, and every session intact.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::{chat, reply_text, require_model, Response, Server, TempDir};
use serde_json::{json, Value};

/// More prompts than 8, so that a batch has more rows than one pass of the kernels takes at once.
const PROMPTS: [&str; 12] = [
    "What is the capital of France?",
    "Name three colours.",
    "Write one sentence about the sea.",
    "What is two plus two?",
    "Say hello in Spanish.",
    "Why is the sky blue?",
    "List two fruits.",
    "What do bees make?",
    "Name a large animal.",
    "What colour is grass?",
    "Count to five.",
    "Where do fish live?",
];

fn ask(server: &Server, text: &str, max_tokens: u32) -> Value {
    let mut body = chat(json!([{"role": "user", "content": text}]), max_tokens);
    body["logprobs"] = json!(true);
    let response = server.post("/v1/chat/completions", None, &body);
    reply_text(&response);
    response.json()
}

/// The generated token strings of a reply (one per token, from `logprobs`).
fn tokens(reply: &Value) -> Vec<String> {
    reply["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap_or_else(|| panic!("no logprobs in {reply}"))
        .iter()
        .map(|t| t["token"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn batched_greedy_output_equals_unbatched() {
    require_model();
    let dir = TempDir::new("batching");
    let server = Server::start(
        &[
            ("INFINI_DATA_DIR", dir.0.display().to_string()),
            ("INFINI_MAX_RUNNING", "16".into()),
        ],
        &dir.0,
    );
    let alone: Vec<Value> = PROMPTS.iter().map(|p| ask(&server, p, 24)).collect();
    let batch_steps_before = server.metric("infini_batch_size_count");
    let single_before = server.metric("infini_batch_size_bucket{le=\"1\"}");
    let within_eight_before = server.metric("infini_batch_size_bucket{le=\"8\"}");

    let together: Vec<Value> = thread::scope(|scope| {
        let handles: Vec<_> = PROMPTS
            .iter()
            .map(|p| {
                let server = &server;
                scope.spawn(move || ask(server, p, 24))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for ((prompt, alone), together) in PROMPTS.iter().zip(&alone).zip(&together) {
        assert!(!tokens(alone).is_empty(), "{prompt}: {alone}");
        assert_eq!(tokens(alone), tokens(together), "{prompt}");
        assert_eq!(
            alone["choices"][0]["message"]["content"],
            together["choices"][0]["message"]["content"]
        );
    }
    // The concurrent requests really were decoded together: some steps had several rows.
    let steps = server.metric("infini_batch_size_count") - batch_steps_before;
    let single = server.metric("infini_batch_size_bucket{le=\"1\"}") - single_before;
    assert!(
        steps > 0.0 && single < steps,
        "{steps} decode steps, {single} of one row"
    );
    let multi_rows = server.metric("infini_batch_size_sum");
    assert!(multi_rows > steps, "rows {multi_rows} over {steps} steps");
    // Some steps had more rows than the kernels take at once (8).
    let within_eight = server.metric("infini_batch_size_bucket{le=\"8\"}") - within_eight_before;
    assert!(
        within_eight < steps,
        "no step of more than 8 rows in {steps}"
    );
    // Every step, of one row or several, read its rows' memories in one attention call per layer
    // (SmolLM2-135M has 30): none above the first bucket.
    let all_steps = server.metric("infini_attention_calls_per_step_count");
    let within_one_per_layer = server.metric("infini_attention_calls_per_step_bucket{le=\"30\"}");
    assert!(all_steps >= steps, "{all_steps} steps counted");
    assert_eq!(
        within_one_per_layer, all_steps,
        "steps with more than one attention call per layer"
    );
}

/// One request's fate under overload.
enum Fate {
    Answered,
    Refused(Duration),
}

fn classify(response: &Response, elapsed: Duration, stream: bool) -> Fate {
    match response.status {
        200 if stream => {
            let data = response.sse_data();
            assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
            let finish = data
                .iter()
                .filter(|d| d.as_str() != "[DONE]")
                .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                .filter_map(|v| v["choices"][0]["finish_reason"].as_str().map(String::from))
                .next_back();
            assert!(
                matches!(finish.as_deref(), Some("stop" | "length")),
                "no finish reason: {data:?}"
            );
            Fate::Answered
        }
        200 => {
            reply_text(response);
            let finish = &response.json()["choices"][0]["finish_reason"];
            assert!(finish == "stop" || finish == "length", "{finish}");
            Fate::Answered
        }
        429 => {
            response.expect_error(429);
            assert!(
                response.header("retry-after").is_some(),
                "{:?}",
                response.headers
            );
            Fate::Refused(elapsed)
        }
        other => panic!("status {other}: {}", response.text()),
    }
}

#[test]
fn overload_gets_answers_or_prompt_429s_and_sessions_stay_intact() {
    require_model();
    let dir = TempDir::new("overload");
    // Capacity: 2 running + 2 waiting. 16 requests at once is 4× that.
    let server = Server::start(
        &[
            ("INFINI_DATA_DIR", dir.0.display().to_string()),
            ("INFINI_MAX_RUNNING", "2".into()),
            ("INFINI_MAX_WAITING", "2".into()),
        ],
        &dir.0,
    );
    let sessions: Vec<String> = (0..16)
        .map(|_| {
            let response = server.request("POST", "/v1/sessions", &[], None);
            assert_eq!(response.status, 201, "{}", response.text());
            response.json()["id"].as_str().unwrap().to_string()
        })
        .collect();
    let fates: Vec<(String, Fate)> = thread::scope(|scope| {
        let handles: Vec<_> = sessions
            .iter()
            .enumerate()
            .map(|(i, session)| {
                let server = &server;
                scope.spawn(move || {
                    let stream = i % 2 == 0;
                    let mut body = chat(json!([{"role": "user", "content": PROMPTS[i % 8]}]), 16);
                    body["session_id"] = json!(session);
                    body["stream"] = json!(stream);
                    let started = Instant::now();
                    let response = server.post("/v1/chat/completions", None, &body);
                    (
                        session.clone(),
                        classify(&response, started.elapsed(), stream),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let answered = fates
        .iter()
        .filter(|(_, f)| matches!(f, Fate::Answered))
        .count();
    let refused: Vec<Duration> = fates
        .iter()
        .filter_map(|(_, f)| match f {
            Fate::Refused(t) => Some(*t),
            Fate::Answered => None,
        })
        .collect();
    assert!(answered >= 4, "only {answered} of 16 answered");
    assert!(
        !refused.is_empty(),
        "16 requests for a capacity of 4: none refused"
    );
    let slowest = refused.iter().max().unwrap();
    assert!(*slowest < Duration::from_secs(2), "a 429 took {slowest:?}");

    // Every session is whole: answered ones hold their turn, refused ones nothing; each takes
    // one more turn.
    for (session, fate) in &fates {
        let got = server.get(&format!("/v1/sessions/{session}"), None).json();
        let (messages, version) = match fate {
            Fate::Answered => (2, 1),
            Fate::Refused(_) => (0, 0),
        };
        assert_eq!(got["message_count"], messages, "{got}");
        assert_eq!(got["version"], version, "{got}");
        let mut body = chat(json!([{"role": "user", "content": "Thanks."}]), 4);
        body["session_id"] = json!(session);
        reply_text(&server.post("/v1/chat/completions", None, &body));
        let after = server.get(&format!("/v1/sessions/{session}"), None).json();
        assert_eq!(after["message_count"], messages + 2, "{after}");
    }
    assert_eq!(server.metric("infini_requests_in_flight"), 0.0);
}
