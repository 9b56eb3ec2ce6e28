//! `infini serve` against a hostile client (issue 20): imports that lie (another memory layout, a
//! flipped byte, a forged header, an unknown role, wrong counters) are refused before anything is
//! stored, and a session stored under another layout answers 422, never 500; nothing a client
//! sends starts a log line of its own; a kept-alive connection survives 1,000 requests that
//! alternate bad and good keys; bodies that are not JSON, or more than one JSON value, or too
//! large, and conflicting or unsupported parameters get 4xx errors in OpenAI's shape; a client that
//! leaves before its first token stops its turn (queued or in its prompt) and the gauges return
//! to 0.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use common::{
    chat, create_session, read_events, require_model, session_turn, user, Response, Server, TempDir,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const KEY: &str = "Bearer hostile-test-key";

fn start(dir: &TempDir, extra: &[(&str, &str)]) -> Server {
    let mut env = vec![
        ("INFINI_DATA_DIR", dir.0.display().to_string()),
        ("INFINI_API_KEYS", "tester:hostile-test-key".to_string()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    Server::start(&env, &dir.0)
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `file` with its memory replaced by `memory` and a matching checksum (what a deliberate
/// attacker, not a damaged download, would send).
fn with_memory(file: &Value, memory: &[u8]) -> Value {
    let mut file = file.clone();
    file["memory"] = json!(BASE64.encode(memory));
    file["memory_sha256"] = json!(sha256_hex(memory));
    file
}

/// The memory of an export with its core's layout text replaced by `layout`.
fn with_layout(memory: &[u8], layout: &str) -> Vec<u8> {
    // One-file form: magic, then the core as a length-prefixed string, then the blocks.
    let core_len = u64::from_le_bytes(memory[8..16].try_into().unwrap()) as usize;
    let (core, rest) = (&memory[16..16 + core_len], &memory[16 + core_len..]);
    // Core: magic, version u32, fingerprint (u64 length + bytes), layout (u64 length + bytes), …
    let fingerprint_len = u64::from_le_bytes(core[12..20].try_into().unwrap()) as usize;
    let layout_at = 20 + fingerprint_len;
    let layout_len =
        u64::from_le_bytes(core[layout_at..layout_at + 8].try_into().unwrap()) as usize;
    let mut new_core = core[..layout_at].to_vec();
    new_core.extend_from_slice(&(layout.len() as u64).to_le_bytes());
    new_core.extend_from_slice(layout.as_bytes());
    new_core.extend_from_slice(&core[layout_at + 8 + layout_len..]);
    let mut out = memory[..8].to_vec();
    out.extend_from_slice(&(new_core.len() as u64).to_le_bytes());
    out.extend_from_slice(&new_core);
    out.extend_from_slice(rest);
    out
}

fn sessions_of(server: &Server) -> usize {
    let list = server.get("/v1/sessions?limit=100", Some(KEY));
    assert_eq!(list.status, 200, "{}", list.text());
    list.json()["data"].as_array().unwrap().len()
}

#[test]
fn imports_are_checked_before_anything_is_stored_and_no_session_answers_5xx() {
    require_model();
    let dir = TempDir::new("hostile-import");
    let server = start(&dir, &[("INFINI_MAX_TOKENS", "16")]);
    let id = create_session(&server, KEY);
    assert_eq!(
        session_turn(&server, KEY, &id, "My name is Ada.", 8).status,
        200
    );
    assert_eq!(
        session_turn(&server, KEY, &id, "What is my name?", 8).status,
        200
    );
    let export = server
        .get(&format!("/v1/sessions/{id}/export"), Some(KEY))
        .json();
    assert_eq!(export["format_version"], 2);
    let memory = BASE64.decode(export["memory"].as_str().unwrap()).unwrap();
    assert_eq!(export["memory_sha256"], json!(sha256_hex(&memory)));
    let stored = sessions_of(&server);
    let import = |file: &Value| server.post("/v1/sessions/import", Some(KEY), file);

    // Damaged in transit: a flipped byte no longer matches the checksum.
    let mut flipped = memory.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    let mut damaged = export.clone();
    damaged["memory"] = json!(BASE64.encode(&flipped));
    let error = import(&damaged).expect_error(400);
    assert_eq!(error["code"], "checksum_mismatch", "{error}");

    // A forged header (with a checksum to match) carrying a line break for the log.
    let forged = with_memory(
        &export,
        &with_layout(&memory, "{\"x\":1}\nFORGED-LOG-LINE injected"),
    );
    let error = import(&forged).expect_error(400);
    assert_eq!(error["code"], "memory_layout_mismatch", "{error}");

    // Deliberate flips with a matching checksum: refused, or accepted and then usable.
    let mut accepted = 0;
    for at in [20, 60, memory.len() / 3, memory.len() / 2, memory.len() - 3] {
        let mut bytes = memory.clone();
        bytes[at] ^= 0x7f;
        let response = import(&with_memory(&export, &bytes));
        match response.status {
            400 => {
                let body = response.json();
                assert!(body["error"]["param"].is_string(), "{body}");
            }
            201 => {
                accepted += 1;
                let new_id = response.json()["id"].as_str().unwrap().to_string();
                let turn = session_turn(&server, KEY, &new_id, "Hello again.", 4);
                assert!(turn.status < 500, "byte {at}: {}", turn.text());
            }
            other => panic!("byte {at}: {other} {}", response.text()),
        }
    }

    // The transcript and the counters must describe the memory.
    let mut role = export.clone();
    role["transcript"][0]["role"] = json!("wizard");
    assert_eq!(
        import(&role).expect_error(400)["param"],
        "transcript[0].role"
    );
    let mut text = export.clone();
    text["transcript"][1]["content"] = json!("Something else entirely.");
    assert_eq!(
        import(&text).expect_error(400)["code"],
        "transcript_mismatch"
    );
    let mut negative = export.clone();
    negative["tokens_seen"] = json!(-5);
    assert_eq!(import(&negative).expect_error(400)["param"], "tokens_seen");
    let mut more = export.clone();
    more["tokens_seen"] = json!(export["tokens_seen"].as_i64().unwrap() + 1);
    assert_eq!(import(&more).expect_error(400)["param"], "tokens_seen");

    // Nothing refused was stored.
    let before_v1 = sessions_of(&server);
    assert_eq!(before_v1, stored + accepted);
    // A version-1 file (no checksum) still loads and continues.
    let mut v1 = export.clone();
    v1["format_version"] = json!(1);
    v1.as_object_mut().unwrap().remove("memory_sha256");
    let imported = import(&v1);
    assert_eq!(imported.status, 201, "{}", imported.text());
    let v1_id = imported.json()["id"].as_str().unwrap().to_string();
    assert_eq!(session_turn(&server, KEY, &v1_id, "Thanks.", 4).status, 200);
    assert_eq!(sessions_of(&server), before_v1 + 1);
    let log = server.log_text();
    drop(server);

    // Another server, another memory layout: the import is refused naming both layouts, and
    // nothing is stored.
    let other_dir = TempDir::new("hostile-import-256");
    let other = start(&other_dir, &[("INFINI_STM_LEN", "256")]);
    let error = other
        .post("/v1/sessions/import", Some(KEY), &export)
        .expect_error(400);
    assert_eq!(error["code"], "memory_layout_mismatch", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("\"stm_len\":512") && message.contains("\"stm_len\":256"),
        "{message}"
    );
    assert_eq!(sessions_of(&other), 0);
    let other_log = other.log_text();
    drop(other);

    for text in [&log, &other_log] {
        assert!(
            !text.lines().any(|line| line.starts_with("FORGED")),
            "a client started a log line:\n{text}"
        );
    }
}

#[test]
fn a_session_stored_under_another_layout_answers_422_not_500() {
    require_model();
    let dir = TempDir::new("hostile-layout");
    let server = start(&dir, &[]);
    let id = create_session(&server, KEY);
    assert_eq!(
        session_turn(&server, KEY, &id, "Hello there.", 4).status,
        200
    );
    assert!(server.stop().success());

    // The same database, read by a server with a shorter STM.
    let server = start(&dir, &[("INFINI_STM_LEN", "256")]);
    for stream in [false, true] {
        let mut body = chat(user("Are you there?"), 4);
        body["session_id"] = json!(id);
        body["stream"] = json!(stream);
        let error = server
            .post("/v1/chat/completions", Some(KEY), &body)
            .expect_error(422);
        assert_eq!(error["code"], "session_unreadable", "{error}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains("memory layout") && message.contains("delete it"),
            "{message}"
        );
    }
    // What the message offers works: export, then delete.
    let export = server.get(&format!("/v1/sessions/{id}/export"), Some(KEY));
    assert_eq!(export.status, 200, "{}", export.text());
    let deleted = server.request(
        "DELETE",
        &format!("/v1/sessions/{id}"),
        &[("Authorization", KEY)],
        None,
    );
    assert_eq!(deleted.status, 200);
}

/// One response read off a kept-alive connection (by `Content-Length`).
fn read_response(reader: &mut BufReader<TcpStream>) -> Response {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = reader.read_until(b'\n', &mut line).unwrap();
        assert!(n > 0, "the server closed the connection");
        head.extend_from_slice(&line);
        if line == b"\r\n" {
            break;
        }
    }
    let mut response = Response::parse(&head);
    let length: usize = response
        .header("content-length")
        .expect("a Content-Length")
        .parse()
        .unwrap();
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    response.body = body;
    response
}

#[test]
fn a_kept_alive_connection_survives_1000_requests_alternating_bad_and_good_keys() {
    require_model();
    let dir = TempDir::new("hostile-keepalive");
    let server = start(&dir, &[]);
    let stream = TcpStream::connect(&server.addr).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let body = chat(user("hello"), 4).to_string();
    for i in 0..1000 {
        let good = i % 2 == 1;
        if good {
            write!(
                writer,
                "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: {KEY}\r\n\r\n"
            )
            .unwrap();
        } else {
            // The head first and the body a moment later, so the 401 is ready before the body
            // has arrived (what made hyper drop the connection silently).
            write!(
                writer,
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong-{i}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .unwrap();
            writer.flush().unwrap();
            if i % 50 == 0 {
                std::thread::sleep(Duration::from_millis(20));
            }
            writer.write_all(body.as_bytes()).unwrap();
        }
        let response = read_response(&mut reader);
        assert_eq!(
            response.status,
            if good { 200 } else { 401 },
            "request {i}: {}",
            response.text()
        );
        assert_ne!(response.header("connection"), Some("close"), "request {i}");
    }
}

#[test]
fn bodies_and_parameters_a_client_gets_wrong_are_4xx_in_openai_shape() {
    require_model();
    let dir = TempDir::new("hostile-bodies");
    let server = start(&dir, &[("INFINI_MAX_TOKENS", "8")]);
    let body = chat(user("hi"), 2).to_string();
    let raw = |content_type: Option<&str>, body: &str| {
        let mut head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Authorization: {KEY}\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(content_type) = content_type {
            head.push_str(&format!("Content-Type: {content_type}\r\n"));
        }
        head.push_str("\r\n");
        server.raw_request(format!("{head}{body}").as_bytes())
    };
    assert_eq!(raw(Some("application/json"), &body).status, 200);
    assert_eq!(
        raw(Some("application/json; charset=utf-8"), &body).status,
        200
    );
    let error = raw(Some("text/plain"), &body).expect_error(415);
    assert_eq!(error["code"], "unsupported_media_type");
    raw(None, &body).expect_error(415);
    let error = raw(Some("application/json"), &format!("{body}}}}}}}")).expect_error(400);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("nothing after it"),
        "{error}"
    );

    // 5 MB to a route whose limit is 4 MiB: 413 in OpenAI's shape.
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(5 << 20));
    let response = server.post(
        "/v1/sessions",
        Some(KEY),
        &serde_json::from_str(&big).unwrap(),
    );
    let error = response.expect_error(413);
    assert_eq!(error["code"], "request_too_large");
    // A bodiless session create (curl -X POST) is still fine.
    assert_eq!(
        server
            .request("POST", "/v1/sessions", &[("Authorization", KEY)], None)
            .status,
        201
    );

    // Two different session ids.
    let id = create_session(&server, KEY);
    let mut conflicting = chat(user("hi"), 2);
    conflicting["session_id"] = json!(id);
    let response = server.request(
        "POST",
        "/v1/chat/completions",
        &[("Authorization", KEY), ("X-Session-Id", "sess_other")],
        Some(&conflicting.to_string()),
    );
    let error = response.expect_error(400);
    assert_eq!(error["code"], "conflicting_session_ids");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains(&id) && message.contains("sess_other"),
        "{message}"
    );

    // Completions' unsupported parameters are refused, not ignored.
    for (field, value) in [
        ("echo", json!(true)),
        ("best_of", json!(2)),
        ("suffix", json!("end")),
    ] {
        let mut request = json!({"prompt": "Once upon a time", "max_tokens": 2});
        request[field] = value;
        let error = server
            .post("/v1/completions", Some(KEY), &request)
            .expect_error(400);
        assert_eq!(error["code"], "unsupported_parameter");
        assert_eq!(error["param"], field);
    }
    let ok = json!({"prompt": "Once upon a time", "max_tokens": 2, "echo": false, "best_of": 1});
    assert_eq!(server.post("/v1/completions", Some(KEY), &ok).status, 200);
}

/// A chat request whose prompt is about `words` tokens long.
fn long_chat(words: usize, stream: bool) -> Value {
    let text: String = (0..words).map(|i| format!("w{} ", i % 97)).collect();
    let mut body = chat(user(&text), 4);
    body["stream"] = json!(stream);
    body
}

fn wait_idle(server: &Server) {
    let started = Instant::now();
    while server.metric("infini_requests_in_flight") > 0.0
        || server.metric("infini_requests_running") > 0.0
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "still busy after 60 s; log:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_client_that_leaves_before_its_first_token_stops_its_turn() {
    require_model();
    let dir = TempDir::new("hostile-cancel");
    let server = start(
        &dir,
        &[
            ("INFINI_MAX_RUNNING", "1"),
            ("INFINI_MAX_TOKENS", "200"),
            ("INFINI_MAX_PROMPT_TOKENS", "8192"),
        ],
    );
    // In its prompt: a ~5,800-token prompt, left right after the response began.
    let mut stream = server.open_stream("/v1/chat/completions", KEY, &long_chat(2000, true));
    read_events(&mut stream, 1);
    drop(stream);
    wait_idle(&server);
    let prefilled = server.metric("infini_prefill_tokens_total");
    assert!(
        prefilled <= 2048.0,
        "{prefilled} prompt tokens were read after the client left"
    );
    assert_eq!(server.metric("infini_generations_cancelled_total"), 1.0);

    // Queued: one turn counts (and runs on), a long one waits behind it and is left.
    let counting = json!({"prompt": "1, 2, 3, 4, 5,", "max_tokens": 200, "temperature": 0,
                          "stream": true});
    let mut first = server.open_stream("/v1/completions", KEY, &counting);
    read_events(&mut first, 2);
    let mut queued = server.open_stream("/v1/chat/completions", KEY, &long_chat(2000, true));
    read_events(&mut queued, 1);
    drop(queued);
    let mut rest = Vec::new();
    first.read_to_end(&mut rest).unwrap();
    assert!(String::from_utf8_lossy(&rest).contains("[DONE]"));
    wait_idle(&server);
    let read_after = server.metric("infini_prefill_tokens_total") - prefilled;
    assert!(
        read_after < 100.0,
        "the left turn's prompt was read ({read_after} tokens)"
    );
    assert_eq!(server.metric("infini_generations_cancelled_total"), 2.0);
    // The server still answers.
    let ok = server.post("/v1/chat/completions", Some(KEY), &chat(user("hi"), 2));
    assert_eq!(ok.status, 200, "{}", ok.text());
}
