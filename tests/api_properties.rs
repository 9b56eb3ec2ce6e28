//! Property tests of what the API takes from a client (issue 20), through the real router and the
//! real model in-process: random JSON, near-valid requests with one field replaced by a random
//! value, and random bytes sent to both completion routes; random and mutated session exports
//! (bytes flipped or cut, with and without a checksum to match, fields replaced) sent to import.
//! None may get a 5xx or panic, and an import that is accepted makes a session whose next turn is
//! not a 5xx either. `PROPTEST_CASES` sets the cases per property (default 32; `make fuzz` runs
//! 1,000).

mod common;

use std::sync::Arc;
use std::sync::OnceLock;

use axum::body::{to_bytes, Body};
use axum::http::Request;
use axum::Router;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use common::{in_process_router, require_model, root, TempDir};
use infini::api::validate::Limits;
use infini::engine::scheduler::BatchLimits;
use infini::engine::worker::{Engine, EngineOptions};
use infini::memory::MemoryConfig;
use infini::model::ModelArgs;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tch::Device;
use tower::ServiceExt;

/// The server in-process, and a real export to mutate.
struct App {
    runtime: tokio::runtime::Runtime,
    router: Router,
    export: Value,
    _dir: TempDir,
}

fn app() -> &'static App {
    static APP: OnceLock<App> = OnceLock::new();
    APP.get_or_init(|| {
        require_model();
        let dir = TempDir::new("properties");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let router = runtime.block_on(async {
            let (engine, loaded) = Engine::start(EngineOptions {
                load: ModelArgs {
                    model: root().join(infini::model::DEFAULT_MODEL),
                    precision: None,
                    device: Device::Cpu,
                    threads: 1,
                },
                memory: MemoryConfig::default(),
                batch: BatchLimits::new(4, 512).unwrap(),
                max_waiting: 64,
            });
            loaded.await.unwrap().unwrap();
            let limits = Limits {
                max_tokens: 2,
                max_prompt_tokens: 96,
            };
            in_process_router(Arc::new(engine), &dir, limits, 64 << 20).await
        });
        let mut app = App {
            runtime,
            router,
            export: Value::Null,
            _dir: dir,
        };
        let (status, created) = app.send("POST", "/v1/sessions", b"{}".to_vec());
        assert_eq!(status, 201);
        let id = created["id"].as_str().unwrap().to_string();
        let turn = json!({"session_id": id, "max_tokens": 2, "temperature": 0,
                          "messages": [{"role": "user", "content": "My name is Ada."}]});
        assert_eq!(app.send_json("/v1/chat/completions", &turn).0, 200);
        let (status, export) = app.send("GET", &format!("/v1/sessions/{id}/export"), Vec::new());
        assert_eq!(status, 200);
        app.export = export;
        app
    })
}

impl App {
    /// One request through the router; the status and the body (JSON, or the text as a string).
    fn send(&self, method: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
        self.runtime.block_on(async {
            let request = Request::builder()
                .method(method)
                .uri(path)
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap();
            let response = self.router.clone().oneshot(request).await.unwrap();
            let status = response.status().as_u16();
            let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
            let body = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
            (status, body)
        })
    }

    fn send_json(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send("POST", path, body.to_string().into_bytes())
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(32)
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    })
}

/// Any JSON value, its object keys often the fields the routes know.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop_oneof![Just(-1.0), Just(0.0), Just(2.5), Just(1e300), any::<f64>()]
            .prop_map(|f| json!(f)),
        prop_oneof![
            Just(String::new()),
            Just("user".to_string()),
            Just("\n\u{0}\u{1b}[31m".to_string()),
            ".{0,40}"
        ]
        .prop_map(Value::from),
    ];
    let key = prop_oneof![
        Just("messages"),
        Just("prompt"),
        Just("role"),
        Just("content"),
        Just("max_tokens"),
        Just("stream"),
        Just("stop"),
        Just("session_id"),
        Just("temperature"),
        Just("logprobs"),
        Just("top_logprobs"),
        Just("n"),
        Just("x"),
    ]
    .prop_map(str::to_string);
    leaf.prop_recursive(4, 32, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn valid_chat() -> Value {
    json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0})
}

fn valid_completion() -> Value {
    json!({"prompt": "Once upon a time", "max_tokens": 2, "temperature": 0})
}

const CHAT_FIELDS: &[&str] = &[
    "messages",
    "model",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "stop",
    "stream",
    "stream_options",
    "seed",
    "logprobs",
    "top_logprobs",
    "session_id",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
];
const COMPLETION_FIELDS: &[&str] = &[
    "prompt",
    "model",
    "temperature",
    "max_tokens",
    "stop",
    "stream",
    "logprobs",
    "echo",
    "best_of",
    "suffix",
    "n",
    "seed",
];

/// A valid request with `field` set to `value` (or removed, for null).
fn with_field(mut body: Value, field: &str, value: Value) -> Value {
    body[field] = value;
    body
}

fn assert_not_5xx(what: &str, status: u16, body: &Value) {
    assert!((200..500).contains(&status), "{what}: {status} {body}");
    if status >= 400 {
        let error = &body["error"];
        assert!(
            error["message"].is_string() && error["type"].is_string(),
            "{what}: {status} not in OpenAI's error shape: {body}"
        );
    }
}

#[test]
fn random_json_to_both_completion_routes_is_never_a_5xx() {
    let app = app();
    runner()
        .run(&(any_json(), any::<bool>()), |(value, chat)| {
            let path = if chat {
                "/v1/chat/completions"
            } else {
                "/v1/completions"
            };
            let (status, body) = app.send_json(path, &value);
            assert_not_5xx(&format!("{path} {value}"), status, &body);
            Ok(())
        })
        .unwrap();
}

#[test]
fn near_valid_requests_with_one_field_replaced_are_never_a_5xx() {
    let app = app();
    let strategy = (
        any_json(),
        any::<bool>(),
        any::<prop::sample::Index>(),
        any::<bool>(),
    );
    runner()
        .run(&strategy, |(value, chat, field, stream)| {
            let (path, base, fields) = if chat {
                ("/v1/chat/completions", valid_chat(), CHAT_FIELDS)
            } else {
                ("/v1/completions", valid_completion(), COMPLETION_FIELDS)
            };
            let mut body = with_field(base, fields[field.index(fields.len())], value);
            if stream && body.get("stream").is_none() {
                body["stream"] = json!(true);
            }
            let (status, reply) = app.send_json(path, &body);
            assert_not_5xx(&format!("{path} {body}"), status, &reply);
            Ok(())
        })
        .unwrap();
}

#[test]
fn random_bytes_as_a_body_are_never_a_5xx() {
    let app = app();
    runner()
        .run(
            &(prop::collection::vec(any::<u8>(), 0..200), any::<bool>()),
            |(bytes, chat)| {
                let path = if chat {
                    "/v1/chat/completions"
                } else {
                    "/v1/sessions/import"
                };
                let (status, body) = app.send("POST", path, bytes);
                assert_not_5xx(path, status, &body);
                Ok(())
            },
        )
        .unwrap();
}

/// How an export is damaged.
#[derive(Debug, Clone)]
enum Mutation {
    /// XOR a byte of the memory; `resum`: recompute the checksum (a deliberate attacker).
    Flip {
        at: prop::sample::Index,
        mask: u8,
        resum: bool,
    },
    /// Cut the memory at a point.
    Cut {
        at: prop::sample::Index,
        resum: bool,
    },
    /// Replace a field of the file with a random value.
    Field {
        field: prop::sample::Index,
        value: Value,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<prop::sample::Index>(), 1..=255u8, any::<bool>())
            .prop_map(|(at, mask, resum)| Mutation::Flip { at, mask, resum }),
        (any::<prop::sample::Index>(), any::<bool>())
            .prop_map(|(at, resum)| Mutation::Cut { at, resum }),
        (any::<prop::sample::Index>(), any_json())
            .prop_map(|(field, value)| Mutation::Field { field, value }),
    ]
}

const EXPORT_FIELDS: &[&str] = &[
    "format",
    "format_version",
    "model_fingerprint",
    "created_at",
    "transcript",
    "fed",
    "memory",
    "memory_sha256",
    "tokens_seen",
    "stats",
];

fn mutate(export: &Value, mutation: &Mutation) -> Value {
    let mut file = export.clone();
    let Some(mut memory) = export["memory"]
        .as_str()
        .and_then(|m| BASE64.decode(m).ok())
    else {
        return file; // an earlier mutation replaced the memory with something else
    };
    let resum = match mutation {
        Mutation::Flip { at, mask, resum } => {
            let i = at.index(memory.len());
            memory[i] ^= mask;
            *resum
        }
        Mutation::Cut { at, resum } => {
            memory.truncate(at.index(memory.len()));
            *resum
        }
        Mutation::Field { field, value } => {
            file[EXPORT_FIELDS[field.index(EXPORT_FIELDS.len())]] = value.clone();
            return file;
        }
    };
    file["memory"] = json!(BASE64.encode(&memory));
    if resum {
        let sum: String = Sha256::digest(&memory)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        file["memory_sha256"] = json!(sum);
    }
    file
}

#[test]
fn mutated_exports_are_refused_or_give_a_session_that_works() {
    let app = app();
    runner()
        .run(&prop::collection::vec(mutation(), 1..3), |mutations| {
            let file = mutations
                .iter()
                .fold(app.export.clone(), |file, m| mutate(&file, m));
            let (status, body) = app.send_json("/v1/sessions/import", &file);
            assert_not_5xx(&format!("import after {mutations:?}"), status, &body);
            if status == 201 {
                let id = body["id"].as_str().unwrap();
                let turn = json!({"session_id": id, "max_tokens": 2, "temperature": 0,
                                  "messages": [{"role": "user", "content": "And now?"}]});
                let (status, reply) = app.send_json("/v1/chat/completions", &turn);
                assert_not_5xx(&format!("a turn after {mutations:?}"), status, &reply);
            }
            Ok(())
        })
        .unwrap();
}
