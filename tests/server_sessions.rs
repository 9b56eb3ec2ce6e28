//! Sessions over HTTP with the real default model, on SQLite and on the PostgreSQL at
//! 127.0.0.1:5432 (each test in a schema of its own, dropped afterwards): a three-turn session
//! whose third turn needs the first while the client sends only new messages; a restart in
//! between with identical exported memory and identical greedy replies; export → delete → import;
//! 409 for a concurrent turn, 404 for another key; idle sessions leaving RAM and coming back.
//! Two replicas on one PostgreSQL: `tests/replicas.rs`.

mod common;

use std::io::Read;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use std::time::{Duration, Instant};

use common::{chat, read_events, reply_text, require_model, PgSchema, Server, TempDir};
use serde_json::{json, Value};

const ALICE: &str = "Bearer key-a";
const BOB: &str = "Bearer key-b";

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

fn turn(server: &Server, session: &str, text: &str, max_tokens: u32) -> String {
    let mut body = chat(user(text), max_tokens);
    body["session_id"] = json!(session);
    reply_text(&server.post("/v1/chat/completions", Some(ALICE), &body))
}

fn create(server: &Server) -> String {
    let response = server.request("POST", "/v1/sessions", &[("Authorization", ALICE)], None);
    assert_eq!(response.status, 201, "{}", response.text());
    response.json()["id"].as_str().unwrap().to_string()
}

fn session_suite(db: &[(&str, String)], dir: &TempDir) {
    let mut env = vec![
        ("INFINI_DATA_DIR", dir.0.display().to_string()),
        ("INFINI_API_KEYS", "alice:key-a,bob:key-b".to_string()),
    ];
    env.extend(db.iter().cloned());
    let server = Server::start(&env, &dir.0);

    let a = create(&server);
    let first = turn(&server, &a, "My name is Zorblax.", 12);
    assert!(!first.is_empty());
    // The second turn names the session by header.
    let mut body = chat(user("What is two plus two?"), 8);
    body["max_tokens"] = json!(8);
    let response = server.request(
        "POST",
        "/v1/chat/completions",
        &[("Authorization", ALICE), ("X-Session-Id", &a)],
        Some(&body.to_string()),
    );
    assert_eq!(response.json()["session_id"], json!(a));
    reply_text(&response);

    let got = server.get(&format!("/v1/sessions/{a}"), Some(ALICE)).json();
    assert_eq!(got["message_count"], 4, "{got}");
    assert_eq!(got["version"], 2);
    assert_eq!(got["messages"][0]["content"], "My name is Zorblax.");
    assert!(got["memory"]["tokens_seen"].as_u64().unwrap() > 30, "{got}");
    assert!(got["memory"]["total_bytes"].as_u64().unwrap() > 0, "{got}");
    assert_eq!(got["tokens_seen"], got["memory"]["tokens_seen"]);

    // Another key sees nothing.
    server
        .get(&format!("/v1/sessions/{a}"), Some(BOB))
        .expect_error(404);
    server
        .get(&format!("/v1/sessions/{a}/export"), Some(BOB))
        .expect_error(404);
    server
        .request(
            "DELETE",
            &format!("/v1/sessions/{a}"),
            &[("Authorization", BOB)],
            None,
        )
        .expect_error(404);
    let mut body = chat(user("What is my name?"), 4);
    body["session_id"] = json!(a);
    server
        .post("/v1/chat/completions", Some(BOB), &body)
        .expect_error(404);
    assert_eq!(
        server.get("/v1/sessions", Some(BOB)).json()["data"],
        json!([])
    );

    // A concurrent second turn on one session: 409.
    let c = create(&server);
    let mut body = chat(user("Count from one to fifty."), 48);
    body["session_id"] = json!(c);
    body["stream"] = json!(true);
    let mut stream = server.open_stream("/v1/chat/completions", ALICE, &body);
    let mut first_bytes = [0u8; 64];
    assert!(stream.read(&mut first_bytes).unwrap() > 0);
    let mut second = chat(user("Hello?"), 4);
    second["session_id"] = json!(c);
    let error = server
        .post("/v1/chat/completions", Some(ALICE), &second)
        .expect_error(409);
    assert_eq!(error["code"], "session_busy");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(String::from_utf8_lossy(&rest).contains("data: [DONE]"));
    // Listing pages.
    let page = server.get("/v1/sessions?limit=1", Some(ALICE)).json();
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    assert_eq!(page["has_more"], true);
    let next = server
        .get(
            &format!(
                "/v1/sessions?limit=1&after={}",
                page["last_id"].as_str().unwrap()
            ),
            Some(ALICE),
        )
        .json();
    assert_eq!(next["data"][0]["id"], json!(c));
    assert_eq!(next["has_more"], false);
    server
        .get("/v1/sessions?limit=0", Some(ALICE))
        .expect_error(400);
    // A session deleted while its turn streams: the turn cannot be stored, which the stream
    // reports as an error event, then [DONE].
    let mut stream = server.open_stream("/v1/chat/completions", ALICE, &body);
    let mut seen = read_events(&mut stream, 2);
    let deleted = server.request(
        "DELETE",
        &format!("/v1/sessions/{c}"),
        &[("Authorization", ALICE)],
        None,
    );
    assert_eq!(deleted.status, 200);
    stream.read_to_end(&mut seen).unwrap();
    let data = common::Response::parse(&seen).sse_data();
    assert_eq!(data.last().unwrap(), "[DONE]");
    let error: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(
        error["error"]["code"], "session_version_conflict",
        "{error}"
    );

    // The third turn, from the live memory; a fork of the same state is kept for after the restart.
    let b = server
        .request(
            "POST",
            &format!("/v1/sessions/{a}/fork"),
            &[("Authorization", ALICE)],
            None,
        )
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The 135M model's recall depends on the phrasing and, through rounding, on the CPU's bf16
    // kernels: after this second turn, "What is my name?" recalled on an AMX machine but not on
    // an AVX-512 one without AMX, where "Tell me my name." does. The name's first five letters
    // are the check (a reply cut at 12 tokens may end inside it).
    let third = turn(&server, &a, "Tell me my name.", 12);
    let control = create(&server);
    let unknown = turn(&server, &control, "Tell me my name.", 12);
    assert!(
        !unknown.contains("Zorbl"),
        "a fresh session cannot know: {unknown:?}"
    );
    assert!(
        third.contains("Zorbl"),
        "the third turn must recall the first: {third:?}"
    );
    let export_a = server
        .get(&format!("/v1/sessions/{a}/export"), Some(ALICE))
        .json();
    let export_b = server
        .get(&format!("/v1/sessions/{b}/export"), Some(ALICE))
        .json();
    assert_eq!(export_b["transcript"].as_array().unwrap().len(), 4);

    let status = server.stop();
    assert!(status.success(), "SIGTERM exits 0, got {status:?}");

    env.push(("INFINI_SESSION_IDLE_SECS", "1".into()));
    let server = Server::start(&env, &dir.0);
    assert_eq!(
        server
            .get(&format!("/v1/sessions/{a}/export"), Some(ALICE))
            .json(),
        export_a
    );
    assert_eq!(
        server
            .get(&format!("/v1/sessions/{b}/export"), Some(ALICE))
            .json(),
        export_b
    );
    // The fork, rebuilt from its stored memory, continues exactly as the live session did.
    assert_eq!(turn(&server, &b, "Tell me my name.", 12), third);

    // Export → delete → import.
    let export_b = server
        .get(&format!("/v1/sessions/{b}/export"), Some(ALICE))
        .json();
    let deleted = server.request(
        "DELETE",
        &format!("/v1/sessions/{b}"),
        &[("Authorization", ALICE)],
        None,
    );
    assert_eq!(deleted.json()["deleted"], true);
    server
        .get(&format!("/v1/sessions/{b}"), Some(ALICE))
        .expect_error(404);
    let imported = server.post("/v1/sessions/import", Some(ALICE), &export_b);
    assert_eq!(imported.status, 201, "{}", imported.text());
    let d = imported.json()["id"].as_str().unwrap().to_string();
    let export_d = server
        .get(&format!("/v1/sessions/{d}/export"), Some(ALICE))
        .json();
    assert_eq!(export_d["memory"], export_b["memory"]);
    assert_eq!(export_d["transcript"], export_b["transcript"]);
    let mut foreign = export_b.clone();
    foreign["model_fingerprint"] = json!("llama-0000000000000000");
    let error = server
        .post("/v1/sessions/import", Some(ALICE), &foreign)
        .expect_error(400);
    assert_eq!(error["code"], "model_mismatch");
    let mut future = export_b.clone();
    future["format_version"] = json!(99);
    server
        .post("/v1/sessions/import", Some(ALICE), &future)
        .expect_error(400);
    // A memory cut short (its core names blocks that are not there) is refused, naming the field.
    let memory = BASE64.decode(export_b["memory"].as_str().unwrap()).unwrap();
    let mut cut = export_b.clone();
    cut["memory"] = json!(BASE64.encode(&memory[..memory.len() / 2]));
    let error = server
        .post("/v1/sessions/import", Some(ALICE), &cut)
        .expect_error(400);
    assert_eq!(error["param"], "memory", "{error}");

    // Idle sessions leave RAM (1 s here) and come back from the database on their next turn.
    assert!(!turn(&server, &a, "Thank you.", 4).is_empty());
    let started = Instant::now();
    while server.metric("infini_sessions_evicted_total") < 1.0 {
        assert!(started.elapsed() < Duration::from_secs(30), "no eviction");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!turn(&server, &a, "And what is two plus two?", 4).is_empty());
    let got = server.get(&format!("/v1/sessions/{a}"), Some(ALICE)).json();
    assert_eq!(
        (got["version"].as_i64(), got["message_count"].as_i64()),
        (Some(5), Some(10))
    );
    assert!(server.stop().success());
}

#[test]
fn sessions_on_sqlite() {
    require_model();
    let dir = TempDir::new("sqlite");
    session_suite(&[], &dir);
}

#[test]
fn sessions_on_postgres() {
    require_model();
    let Some(schema) = PgSchema::create() else {
        return;
    };
    let dir = TempDir::new("postgres");
    session_suite(&[("DATABASE_URL", schema.url())], &dir);
}
