//! Two `infini serve` replicas on the PostgreSQL at 127.0.0.1:5432 (each test in a schema of its
//! own, dropped afterwards), with the real default model:
//! * a session whose turns alternate between the replicas keeps its memory: each replica reloads
//!   the version the other committed, and the replies, token counts and exported memory are those
//!   of a session that stayed on one replica;
//! * the same session's turn sent to both at once commits once: one answers 200, the other 409
//!   `session_version_conflict`, and the stored session is the winner's, which the loser continues;
//! * a replica killed with SIGKILL in the middle of a turn leaves the session at its last committed
//!   turn, and the other replica continues from there.

mod common;

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::sync::Barrier;

use common::{
    chat, create_session, read_events, reply_text, require_model, session_turn, session_view, user,
    PgSchema, Response, Server, TempDir,
};
use serde_json::{json, Value};

const KEY: &str = "Bearer key-a";

/// Two servers on one database. Fields drop in order: the servers stop before the schema goes.
struct Replicas {
    a: Server,
    b: Server,
    _schema: PgSchema,
    _dir: TempDir,
}

fn replicas(tag: &str) -> Option<Replicas> {
    require_model();
    let schema = PgSchema::create()?;
    let dir = TempDir::new(tag);
    let env = [
        ("INFINI_API_KEYS", "alice:key-a".to_string()),
        ("DATABASE_URL", schema.url()),
    ];
    // Started together: the migrations take PostgreSQL's advisory lock, so one runs them.
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| Server::start(&env, &dir.0));
        let b = scope.spawn(|| Server::start(&env, &dir.0));
        (a.join().unwrap(), b.join().unwrap())
    });
    Some(Replicas {
        a,
        b,
        _schema: schema,
        _dir: dir,
    })
}

/// A turn that must succeed; its reply body.
fn turn(server: &Server, session: &str, text: &str, max_tokens: u32) -> Value {
    let response = session_turn(server, KEY, session, text, max_tokens);
    reply_text(&response);
    response.json()
}

fn text_of(reply: &Value) -> &str {
    reply["choices"][0]["message"]["content"].as_str().unwrap()
}

/// Prompt plus generated tokens of a reply: what its turn adds to the session's memory.
fn turn_tokens(reply: &Value) -> i64 {
    let usage = &reply["usage"];
    usage["prompt_tokens"].as_i64().unwrap() + usage["completion_tokens"].as_i64().unwrap()
}

fn int(view: &Value, field: &str) -> i64 {
    view[field]
        .as_i64()
        .unwrap_or_else(|| panic!("{field} in {view}"))
}

/// Alternating A, B, A, B: each turn starts from the version the other replica committed (A holds
/// an older version in RAM and must notice), the third turn recalls what the second told, and the
/// session evolves exactly as a control session whose turns all run on A: same replies, same
/// tokens seen, byte-identical memory.
#[test]
fn turns_alternate_between_replicas_with_memory_intact() {
    let Some(r) = replicas("alternate") else {
        return;
    };
    let hopping = create_session(&r.a, KEY);
    let staying = create_session(&r.a, KEY);
    let turns = [
        ("What is two plus two?", 8),
        ("My name is Zorblax.", 12),
        ("What is my name?", 12),
        ("Thank you.", 4),
    ];
    let mut tokens_seen = 0;
    let mut replies = Vec::new();
    for (i, (text, max_tokens)) in turns.into_iter().enumerate() {
        let (on, other) = if i % 2 == 0 {
            (&r.a, &r.b)
        } else {
            (&r.b, &r.a)
        };
        let hopped = turn(on, &hopping, text, max_tokens);
        let stayed = turn(&r.a, &staying, text, max_tokens);
        assert_eq!(
            text_of(&hopped),
            text_of(&stayed),
            "turn {i}: a replica hop changed the reply"
        );
        // Both replicas read the same committed row.
        let seen_here = session_view(on, KEY, &hopping);
        let seen_there = session_view(other, KEY, &hopping);
        assert_eq!(seen_here, seen_there, "turn {i}");
        assert_eq!(int(&seen_there, "version"), i as i64 + 1, "{seen_there}");
        assert_eq!(int(&seen_there, "message_count"), 2 * (i as i64 + 1));
        // The memory took in exactly this turn's tokens on top of the last committed ones.
        let now = int(&seen_there, "tokens_seen");
        assert_eq!(
            now,
            tokens_seen + turn_tokens(&hopped),
            "turn {i}: {hopped}"
        );
        assert_eq!(seen_there["memory"]["tokens_seen"], json!(now));
        let control = session_view(&r.a, KEY, &staying);
        assert_eq!(int(&control, "tokens_seen"), now, "turn {i}");
        assert_eq!(control["memory"], seen_there["memory"], "turn {i}");
        tokens_seen = now;
        replies.push(hopped);
    }
    assert!(
        text_of(&replies[2]).contains("Zorblax"),
        "the third turn (on A) must recall the second (on B): {}",
        replies[2]
    );
    let export = |server: &Server, id: &str| {
        let response = server.get(&format!("/v1/sessions/{id}/export"), Some(KEY));
        assert_eq!(response.status, 200, "{}", response.text());
        response.json()
    };
    let (hopped, stayed) = (export(&r.a, &hopping), export(&r.b, &staying));
    assert_eq!(hopped["transcript"], stayed["transcript"]);
    assert!(
        hopped["memory"] == stayed["memory"],
        "the hopping session's memory differs from the one that stayed on A"
    );
}

/// The same session's first turn sent to both replicas at the same moment: both read version 0 and
/// generate, one commits version 1, the other's commit finds the version moved and answers 409
/// without storing anything; the losing replica then continues from the winner's turn.
#[test]
fn one_turn_sent_to_both_replicas_commits_once() {
    let Some(r) = replicas("conflict") else {
        return;
    };
    let s = create_session(&r.a, KEY);
    // 32 generated tokens take far longer than reading the session's row, so the turns overlap.
    let barrier = Barrier::new(2);
    let send = |server: &Server| {
        barrier.wait();
        session_turn(server, KEY, &s, "Count from one to twenty.", 32)
    };
    let (from_a, from_b): (Response, Response) = std::thread::scope(|scope| {
        let a = scope.spawn(|| send(&r.a));
        let b = scope.spawn(|| send(&r.b));
        (a.join().unwrap(), b.join().unwrap())
    });
    let (winner, loser, losing_server) = match (from_a.status, from_b.status) {
        (200, 409) => (from_a, from_b, &r.b),
        (409, 200) => (from_b, from_a, &r.a),
        statuses => panic!(
            "want one 200 and one 409, got {statuses:?}: {} / {}",
            from_a.text(),
            from_b.text()
        ),
    };
    let error = loser.expect_error(409);
    assert_eq!(error["code"], "session_version_conflict", "{error}");
    assert_eq!(losing_server.metric("infini_turn_conflicts_total"), 1.0);

    let winner = winner.json();
    let after = session_view(&r.a, KEY, &s);
    assert_eq!(int(&after, "version"), 1, "{after}");
    assert_eq!(int(&after, "message_count"), 2);
    assert_eq!(after["messages"][1]["content"], json!(text_of(&winner)));
    assert_eq!(
        int(&after, "tokens_seen"),
        turn_tokens(&winner),
        "only the winner's turn is in the memory"
    );
    assert_eq!(after, session_view(&r.b, KEY, &s));

    // The losing replica continues from the winner's turn.
    let told = turn(losing_server, &s, "My name is Zorblax.", 12);
    let recalled = turn(losing_server, &s, "What is my name?", 24);
    assert!(text_of(&recalled).contains("Zorblax"), "{recalled}");
    let done = session_view(&r.b, KEY, &s);
    assert_eq!(int(&done, "version"), 3);
    assert_eq!(
        int(&done, "tokens_seen"),
        int(&after, "tokens_seen") + turn_tokens(&told) + turn_tokens(&recalled)
    );
}

/// SIGKILL of the replica running a turn (after its first streamed tokens): nothing of that turn
/// is stored, the session stays at its last committed turn, and the other replica, which holds an
/// older version in RAM, continues it from the database.
#[test]
fn replica_killed_mid_turn_leaves_the_last_committed_turn() {
    let Some(mut r) = replicas("kill") else {
        return;
    };
    let s = create_session(&r.b, KEY);
    turn(&r.b, &s, "What is two plus two?", 8);
    turn(&r.a, &s, "My name is Zorblax.", 12);
    let committed = session_view(&r.b, KEY, &s);
    assert_eq!(int(&committed, "version"), 2);

    let mut body = chat(user("Write a long story about a dragon."), 400);
    body["session_id"] = json!(s);
    body["stream"] = json!(true);
    let mut stream = r.a.open_stream("/v1/chat/completions", KEY, &body);
    let mut seen = read_events(&mut stream, 3);
    let status = r.a.kill();
    assert_eq!(status.signal(), Some(9), "{status:?}");
    let _ = stream.read_to_end(&mut seen); // the connection ends (or resets) with the process
    let seen = String::from_utf8_lossy(&seen);
    assert!(
        !seen.contains("[DONE]"),
        "the turn ended before the kill: {seen}"
    );

    let after = session_view(&r.b, KEY, &s);
    assert_eq!(after, committed, "the killed turn must leave no trace");

    let next = turn(&r.b, &s, "What is my name?", 12);
    assert!(text_of(&next).contains("Zorblax"), "{next}");
    let done = session_view(&r.b, KEY, &s);
    assert_eq!(int(&done, "version"), 3);
    assert_eq!(int(&done, "message_count"), 6);
    assert_eq!(done["messages"][4]["content"], "What is my name?");
    assert_eq!(
        int(&done, "tokens_seen"),
        int(&committed, "tokens_seen") + turn_tokens(&next)
    );
}
