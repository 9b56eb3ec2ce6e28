//! The memory pool under many sessions, with the real default model: 500 sessions of one short
//! turn each under a pool budget they exceed several times over. The server's RSS stays within
//! the budget (plus 300 MB) of what it held once ready, the least recently used memories leave
//! RAM, and every session then takes a second turn whose log-probabilities are bit-identical to
//! the first session's, whether its memory was still kept or had left RAM and was rebuilt from
//! the store.

mod common;

use common::{chat, create_session, require_model, user, Server, TempDir};
use serde_json::{json, Value};

const KEY: &str = "Bearer key-a";
const SESSIONS: usize = 500;
/// Each short session keeps about 3 MB: 500 of them hold about 1.5 GB, six times the budget.
const BUDGET_BYTES: u64 = 256 << 20;
const SLACK_BYTES: u64 = 300 << 20;

/// The resident set of process `pid`, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

/// A greedy turn of `session` with its log-probabilities; the response's JSON (asserting 200).
fn turn(server: &Server, session: &str, text: &str) -> Value {
    let mut body = chat(user(text), 3);
    body["session_id"] = json!(session);
    body["logprobs"] = json!(true);
    let response = server.post("/v1/chat/completions", Some(KEY), &body);
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

#[test]
fn five_hundred_sessions_stay_within_the_pool_and_each_takes_a_second_turn_exactly() {
    require_model();
    let dir = TempDir::new("pool");
    let server = Server::start(
        &[
            ("INFINI_DATA_DIR", dir.0.display().to_string()),
            ("INFINI_API_KEYS", "alice:key-a".into()),
            ("INFINI_MEMORY_POOL_BYTES", BUDGET_BYTES.to_string()),
            ("INFINI_THREADS", "2".into()),
        ],
        &dir.0,
    );
    let ready = rss_bytes(server.pid());
    let bound = ready + BUDGET_BYTES + SLACK_BYTES;
    assert_eq!(
        server.metric("infini_memory_pool_budget_bytes"),
        BUDGET_BYTES as f64
    );

    let first_text = "Remember this for later: the harbour master's cat is called Pilchard, \
                      and it sleeps on the coiled ropes by the north pier every afternoon.";
    let sessions: Vec<String> = (0..SESSIONS)
        .map(|i| {
            let id = create_session(&server, KEY);
            turn(&server, &id, first_text);
            if i % 50 == 49 {
                let rss = rss_bytes(server.pid());
                assert!(
                    rss <= bound,
                    "after {} sessions the RSS is {rss} bytes, over {ready} once ready + the \
                     budget {BUDGET_BYTES} + {SLACK_BYTES}",
                    i + 1
                );
            }
            id
        })
        .collect();
    let pool_bytes = server.metric("infini_memory_pool_bytes");
    let kept = server.metric("infini_memory_pool_sessions");
    let evicted = server.metric("infini_memory_pool_evictions_total");
    assert!(
        pool_bytes > 0.0 && pool_bytes <= BUDGET_BYTES as f64,
        "the pool holds {pool_bytes} bytes of a {BUDGET_BYTES}-byte budget"
    );
    assert!(
        kept >= 1.0 && kept < SESSIONS as f64 && evicted >= SESSIONS as f64 - kept,
        "{kept} memories kept, {evicted} evicted of {SESSIONS}"
    );

    // Every session takes a second turn. The last ones are still in the pool, the first ones
    // left RAM; all had the same first turn, so every reply must equal the first session's.
    let second_text = "What is the cat called, and where does it sleep?";
    let reference = turn(&server, &sessions[0], second_text);
    let reference_logprobs = &reference["choices"][0]["logprobs"];
    assert!(reference_logprobs["content"]
        .as_array()
        .is_some_and(|c| !c.is_empty()));
    for (i, id) in sessions.iter().enumerate().skip(1).rev() {
        let reply = turn(&server, id, second_text);
        assert_eq!(
            &reply["choices"][0]["logprobs"], reference_logprobs,
            "session {i}'s second turn differs from session 0's"
        );
        assert_eq!(reply["usage"], reference["usage"]);
    }
    let rss = rss_bytes(server.pid());
    assert!(
        rss <= bound,
        "after the second turns the RSS is {rss} bytes, over {bound}"
    );
    let log = server.log_text();
    assert!(!log.contains("panicked"), "{log}");
}
