//! The playground with the real default model: the memory map (`GET /v1/sessions/{id}/memory`)
//! against the memory's own statistics, with small memory flags so that a few hundred tokens
//! reach the archive and the signal; and the page itself in Debian's Chromium
//! (`scripts/playground_browser.py`, installed by `scripts/browser_tools.sh`).

mod common;

use std::process::Command;

use common::{chat, create_session, reply_text, require_model, root, user, Server, TempDir};
use serde_json::{json, Value};

const KEY: &str = "Bearer key-a";

/// Sentences enough to push several blocks of 64 tokens past a 128-token STM, the first one a
/// fact a later question asks for.
fn long_text() -> String {
    let colours = ["red", "green", "blue", "amber", "violet", "silver"];
    let places = [
        "harbour", "library", "orchard", "market", "station", "bridge",
    ];
    let mut text = String::from("The secret password is PELICAN-42. ");
    for i in 0..48 {
        text.push_str(&format!(
            "On day {i} the {} kite drifted over the {} while a bell rang twice. ",
            colours[i % colours.len()],
            places[(i * 5) % places.len()]
        ));
    }
    text
}

/// A server with API key `key-a` and a memory small enough for a few hundred tokens to reach the
/// archive: an STM of 128 tokens, 2 blocks read per segment; `more` flags on top.
fn small_memory_server(dir: &TempDir, more: &[(&str, &str)]) -> Server {
    let mut env = vec![
        ("INFINI_DATA_DIR", dir.0.display().to_string()),
        ("INFINI_API_KEYS", "alice:key-a".to_string()),
        ("INFINI_STM_LEN", "128".to_string()),
        ("INFINI_TOP_K_BLOCKS", "2".to_string()),
    ];
    env.extend(more.iter().map(|&(k, v)| (k, v.to_string())));
    Server::start(&env, &dir.0)
}

fn turn(server: &Server, session: &str, text: &str, max_tokens: u32) -> String {
    let mut body = chat(user(text), max_tokens);
    body["session_id"] = json!(session);
    reply_text(&server.post("/v1/chat/completions", Some(KEY), &body))
}

fn memory_map(server: &Server, session: &str) -> Value {
    let response = server.get(&format!("/v1/sessions/{session}/memory"), Some(KEY));
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

/// The model's layers and KV heads, from the converted config `setup.sh` writes.
fn layers_and_kv_heads() -> (u64, u64) {
    let path = root().join("models/smollm2-hf/config.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{} is missing ({e}): run ./scripts/setup.sh",
            path.display()
        )
    });
    let config: Value = serde_json::from_str(&text).unwrap();
    (
        config["num_hidden_layers"].as_u64().unwrap(),
        config["num_key_value_heads"].as_u64().unwrap(),
    )
}

/// The spans cover `0..tokens_seen` once, in order; per tier they add up to the map's tier sizes
/// and to the session's statistics; their text joins into the transcript's.
fn check_spans(map: &Value, stats: &Value) -> Vec<Value> {
    let spans = map["spans"].as_array().unwrap().clone();
    let mut at = 0;
    for span in &spans {
        assert_eq!(
            span["start"].as_u64().unwrap(),
            at,
            "gap or overlap at {span}"
        );
        assert!(span["end"].as_u64().unwrap() > at, "empty span {span}");
        at = span["end"].as_u64().unwrap();
    }
    assert_eq!(at, map["tokens_seen"].as_u64().unwrap());
    assert_eq!(map["tokens_seen"], stats["tokens_seen"]);
    let field = |tier: &str| match tier {
        "sinks" => "sink_tokens",
        "signal" => "ltm_tokens",
        "dropped" => "dropped_tokens",
        "archive" => "archive_tokens",
        "stm" => "stm_tokens",
        other => panic!("unknown tier {other}"),
    };
    for tier in map["tiers"].as_array().unwrap() {
        let name = tier["tier"].as_str().unwrap();
        let in_spans: u64 = spans
            .iter()
            .filter(|s| s["tier"] == name)
            .map(|s| s["end"].as_u64().unwrap() - s["start"].as_u64().unwrap())
            .sum();
        assert_eq!(in_spans, tier["tokens"].as_u64().unwrap(), "tier {name}");
        assert_eq!(
            tier["tokens"],
            stats[field(name)],
            "tier {name} against {stats}"
        );
    }
    spans
}

/// Two turns (the long text, then a question about its first sentence) and the memory map after
/// them, its spans checked by [`check_spans`].
fn remember_then_ask(server: &Server, session: &str) -> (Value, Vec<Value>) {
    turn(server, session, &long_text(), 4);
    turn(server, session, "What is the secret password?", 8);
    let map = memory_map(server, session);
    let stats = server
        .get(&format!("/v1/sessions/{session}"), Some(KEY))
        .json()["memory"]
        .clone();
    let spans = check_spans(&map, &stats);
    (map, spans)
}

#[test]
fn the_memory_map_places_every_token_once_and_counts_what_the_turn_read() {
    require_model();
    let (layers, kv_heads) = layers_and_kv_heads();
    let dir = TempDir::new("memory-map");
    let server = small_memory_server(&dir, &[]);
    // The page and its two files, from this server only (the policy says so to the browser).
    for (path, kind) in [
        ("/", "text/html"),
        ("/playground", "text/html"),
        ("/playground/app.js", "text/javascript"),
        ("/playground/app.css", "text/css"),
    ] {
        let response = server.get(path, None);
        assert_eq!(response.status, 200, "{path}");
        assert!(
            response.header("content-type").unwrap().starts_with(kind),
            "{path}"
        );
        let policy = response.header("content-security-policy").unwrap();
        assert!(policy.contains("default-src 'none'") && policy.contains("connect-src 'self'"));
    }
    assert!(server.get("/", None).text().contains("/playground/app.js"));

    let session = create_session(&server, KEY);
    let empty = memory_map(&server, &session);
    assert_eq!(empty["tokens_seen"], 0);
    assert_eq!(empty["spans"], json!([]));
    assert_eq!(empty["last_turn"], Value::Null);

    // The question reads an archive of several blocks from its first segment on, so every
    // segment of every layer picks k = 2 blocks per KV head.
    let (map, spans) = remember_then_ask(&server, &session);
    let joined: String = spans.iter().map(|s| s["text"].as_str().unwrap()).collect();
    assert!(
        joined.contains("The secret password is PELICAN-42."),
        "{joined}"
    );
    assert!(joined.contains("What is the secret password?"), "{joined}");

    let blocks: Vec<&Value> = spans.iter().filter(|s| s["tier"] == "archive").collect();
    assert!(blocks.len() >= 6, "the archive holds blocks: {map}");
    for (i, block) in blocks.iter().enumerate() {
        assert_eq!(
            block["end"].as_u64().unwrap() - block["start"].as_u64().unwrap(),
            64
        );
        assert_eq!(
            block["block"].as_u64().unwrap(),
            i as u64,
            "numbered from 0 in order"
        );
    }
    let early = blocks
        .iter()
        .find(|b| b["text"].as_str().unwrap().contains("PELICAN"))
        .expect("an archive block holds the password's sentence");
    assert!(early["start"].as_u64().unwrap() < 64);

    let last = &map["last_turn"];
    let picks = last["picks"].as_u64().unwrap();
    let selected: u64 = blocks.iter().map(|b| b["selected"].as_u64().unwrap()).sum();
    assert_eq!(
        last["selected_then_left"], 0,
        "nothing left the archive: {last}"
    );
    assert_eq!(selected, picks, "the counts add up to the picks: {last}");
    let segments = last["segments"].as_u64().unwrap();
    assert!(
        segments >= 2,
        "the question's prompt and reply read the archive: {last}"
    );
    assert_eq!(picks, layers * kv_heads * 2 * segments, "{last}");
    assert_eq!(last["signal_mass"], Value::Null, "no signal yet: {last}");

    // Another key's session is not there for this one.
    server
        .get(
            &format!("/v1/sessions/{session}/memory"),
            Some("Bearer nope"),
        )
        .expect_error(401);
    server
        .get("/v1/sessions/sess_absent/memory", Some(KEY))
        .expect_error(404);
}

#[test]
fn past_the_archive_budget_the_map_shows_the_signal_and_the_mass_it_drew() {
    require_model();
    let dir = TempDir::new("memory-map-signal");
    let server = small_memory_server(
        &dir,
        &[
            ("INFINI_ARCHIVE_BUDGET", "512"),
            ("INFINI_NO_PLAYGROUND", "true"),
        ],
    );
    server.get("/", None).expect_error(404);
    server.get("/playground", None).expect_error(404);
    let session = create_session(&server, KEY);
    let (map, spans) = remember_then_ask(&server, &session);
    assert_eq!(spans[0]["tier"], "sinks");
    assert_eq!(spans[1]["tier"], "signal", "{map}");
    assert!(
        spans[1]["text"].as_str().unwrap().contains("PELICAN"),
        "{}",
        spans[1]
    );
    let last = &map["last_turn"];
    let selected: u64 = spans.iter().filter_map(|s| s["selected"].as_u64()).sum();
    assert_eq!(
        selected + last["selected_then_left"].as_u64().unwrap(),
        last["picks"].as_u64().unwrap()
    );
    let mass = last["signal_mass"]
        .as_f64()
        .expect("the signal's mass is measured");
    assert!(mass > 0.0 && mass < 1.0, "{last}");
}

/// The page in Debian's Chromium against the real server with API keys on and small memory flags:
/// a session, a streamed reply, text pushed into the archive, the heat strip after a question
/// about it, a fork, an export, and no request anywhere but the server
/// (`scripts/playground_browser.py`; screenshots under `target/playground/`).
#[test]
fn the_page_works_in_a_real_browser() {
    require_model();
    let python = root().join(".venv/bin/python");
    for (path, what) in [
        ("/usr/bin/chromium", "Debian's chromium"),
        ("/usr/bin/chromedriver", "Debian's chromium-driver"),
    ] {
        assert!(
            std::path::Path::new(path).is_file(),
            "{what} is missing ({path}): run ./scripts/browser_tools.sh (make test does)"
        );
    }
    let selenium = Command::new(&python)
        .args(["-c", "import selenium"])
        .status()
        .expect("the venv's python runs");
    assert!(
        selenium.success(),
        "selenium is missing from .venv: run ./scripts/browser_tools.sh (make test does)"
    );
    let dir = TempDir::new("playground");
    let server = small_memory_server(&dir, &[]);
    let shots = root().join("target/playground");
    let output = Command::new(&python)
        .arg(root().join("scripts/playground_browser.py"))
        .args(["--url", &format!("http://{}", server.addr)])
        .args(["--key", "key-a"])
        .arg("--screenshots")
        .arg(&shots)
        .output()
        .expect("the browser script runs");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "the browser test failed ({}):\n{printed}\nserver log:\n{}",
        output.status,
        server.log_text()
    );
    println!("{printed}");
}
