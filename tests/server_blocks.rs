//! Incremental session storage over HTTP with the real default model and a small memory (STM 256
//! tokens, an archive of 1024 = 16 blocks of 64, which hands 8 at a time to the continuous signal), on SQLite and on the PostgreSQL at
//! 127.0.0.1:5432: long turns fill the archive and overflow it; each committed turn writes only the blocks the
//! store does not have and deletes those the archive popped (metrics and block rows agree); a
//! fork copies the rows and delete removes them. On SQLite the server also restarts: the exported
//! bytes are identical and a turn rebuilt from the stored core and blocks answers as the live
//! memory did (PostgreSQL skips the restart to keep the test short; the read path is the same).

mod common;

use common::{chat, reply_text, require_model, PgSchema, Server, TempDir};
use infini::store::sql::SqlStore;
use infini::store::SessionStore;
use serde_json::{json, Value};

const ALICE: &str = "Bearer key-a";
const BLOCK_LEN: u64 = 64;

/// About `n` × 15 tokens of numbered, distinct sentences.
fn long_text(n: usize, from: usize) -> String {
    (from..from + n)
        .map(|i| {
            format!(
                "Note {i}: the keeper counted {} gulls near rock {}.",
                i * 7 % 97,
                i % 13
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn turn(server: &Server, session: &str, text: &str, max_tokens: u32) -> String {
    let mut body = chat(json!([{"role": "user", "content": text}]), max_tokens);
    body["session_id"] = json!(session);
    reply_text(&server.post("/v1/chat/completions", Some(ALICE), &body))
}

fn session(server: &Server, id: &str) -> Value {
    server
        .get(&format!("/v1/sessions/{id}"), Some(ALICE))
        .json()
}

fn export(server: &Server, id: &str) -> Value {
    server
        .get(&format!("/v1/sessions/{id}/export"), Some(ALICE))
        .json()
}

fn counters(server: &Server) -> (u64, u64) {
    (
        server.metric("infini_store_block_writes_total") as u64,
        server.metric("infini_store_block_deletes_total") as u64,
    )
}

/// The block rows the store holds for `id`, read by a store of the test's own.
fn stored_blocks(url: &str, id: &str) -> Vec<u64> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let store = SqlStore::connect(url).await.unwrap();
            store.stored_blocks(id).await.unwrap()
        })
}

/// The archive's held blocks as the session's statistics count them.
fn held_blocks(server: &Server, id: &str) -> u64 {
    session(server, id)["memory"]["archive_tokens"]
        .as_u64()
        .unwrap()
        / BLOCK_LEN
}

fn blocks_suite(url: &str, db: &[(&str, String)], dir: &TempDir, restart: bool) {
    let mut env = vec![
        ("INFINI_DATA_DIR", dir.0.display().to_string()),
        ("INFINI_API_KEYS", "alice:key-a".to_string()),
        ("INFINI_STM_LEN", "256".to_string()),
        ("INFINI_ARCHIVE_BUDGET", "1024".to_string()),
    ];
    env.extend(db.iter().cloned());
    let server = Server::start(&env, &dir.0);
    let created = server.request("POST", "/v1/sessions", &[("Authorization", ALICE)], None);
    assert_eq!(created.status, 201, "{}", created.text());
    let a = created.json()["id"].as_str().unwrap().to_string();

    // Turn one: about 500 tokens, several blocks, all new.
    turn(&server, &a, &long_text(34, 0), 4);
    let first = stored_blocks(url, &a);
    assert!(first.len() >= 3, "blocks after turn one: {first:?}");
    assert_eq!(first.len() as u64, held_blocks(&server, &a));
    assert_eq!(counters(&server), (first.len() as u64, 0));

    // Turn two: about 150 more tokens, a block or two, no overflow: only the new blocks are
    // written, the ones of turn one are not written again.
    turn(&server, &a, &long_text(10, 34), 4);
    let second = stored_blocks(url, &a);
    assert_eq!(second.len() as u64, held_blocks(&server, &a));
    assert!(
        second.len() > first.len() && second.starts_with(&first),
        "turn two adds to turn one's blocks: {first:?} then {second:?}"
    );
    assert_eq!(counters(&server), (second.len() as u64, 0));

    // Turn three: about 600 more tokens overflow the 16-block archive; its new blocks are written
    // and the popped ones deleted.
    turn(&server, &a, &long_text(40, 44), 4);
    let third = stored_blocks(url, &a);
    assert_eq!(third.len() as u64, held_blocks(&server, &a));
    assert!(third.len() <= 16, "the archive keeps its budget: {third:?}");
    assert!(
        third[0] <= second[second.len() - 1],
        "some blocks stay: {third:?}"
    );
    assert!(third.windows(2).all(|w| w[1] == w[0] + 1), "{third:?}");
    assert!(
        third[0] > second[0],
        "popped blocks leave the store: {third:?}"
    );
    let new = third.iter().filter(|n| !second.contains(n)).count() as u64;
    let popped = second.iter().filter(|n| !third.contains(n)).count() as u64;
    assert_eq!(counters(&server), (second.len() as u64 + new, popped));
    let memory = &session(&server, &a)["memory"];
    eprintln!(
        "blocks held after each turn: {first:?}, {second:?}, {third:?}; turn three wrote {new} \
         and deleted {popped}; {} archive bytes per block, {} memory bytes in all",
        memory["archive_bytes"].as_u64().unwrap() / third.len() as u64,
        memory["total_bytes"]
    );

    // A fork copies the rows; its state is what `a` holds now. In RAM it shares `a`'s kept
    // memory until either writes: the pool keeps one more session for under 5% more bytes.
    let (pool_before, kept_before) = (
        server.metric("infini_memory_pool_bytes"),
        server.metric("infini_memory_pool_sessions"),
    );
    let fork = server.request(
        "POST",
        &format!("/v1/sessions/{a}/fork"),
        &[("Authorization", ALICE)],
        None,
    );
    assert_eq!(fork.status, 201, "{}", fork.text());
    let f = fork.json()["id"].as_str().unwrap().to_string();
    assert_eq!(stored_blocks(url, &f), third);
    let pool_after = server.metric("infini_memory_pool_bytes");
    assert_eq!(
        server.metric("infini_memory_pool_sessions"),
        kept_before + 1.0
    );
    assert!(
        pool_after >= pool_before && pool_after - pool_before < pool_before * 0.05,
        "the fork grew the pool from {pool_before} to {pool_after} bytes"
    );
    let exported = export(&server, &a);
    assert_eq!(export(&server, &f)["memory"], exported["memory"]);
    // Greedy third turn on `a`, from its live memory.
    let question = "Which rock did note 3 name? Answer briefly.";
    let live = turn(&server, &a, question, 8);
    let server = if restart {
        // After a restart the fork's memory comes back byte for byte, and its third turn, rebuilt
        // from the stored core and blocks, answers as the live memory did.
        drop(server);
        let server = Server::start(&env, &dir.0);
        assert_eq!(export(&server, &f)["memory"], exported["memory"]);
        assert_eq!(turn(&server, &f, question, 8), live);
        server
    } else {
        // Without one, the fork answers from the memory it shares with `a` (which `a`'s turn
        // has since copied away from) as `a` did.
        assert_eq!(turn(&server, &f, question, 8), live);
        server
    };
    let deleted = server.request(
        "DELETE",
        &format!("/v1/sessions/{f}"),
        &[("Authorization", ALICE)],
        None,
    );
    assert_eq!(deleted.status, 200);
    assert!(stored_blocks(url, &f).is_empty());
    assert_eq!(
        stored_blocks(url, &a).len() as u64,
        held_blocks(&server, &a)
    );
}

#[test]
fn incremental_blocks_on_sqlite() {
    require_model();
    let dir = TempDir::new("blocks-sqlite");
    let url = format!("sqlite://{}?mode=rwc", dir.0.join("infini.db").display());
    blocks_suite(&url, &[], &dir, true);
}

#[test]
fn incremental_blocks_on_postgres() {
    require_model();
    let Some(schema) = PgSchema::create() else {
        return;
    };
    let dir = TempDir::new("blocks-postgres");
    blocks_suite(
        &schema.url(),
        &[("DATABASE_URL", schema.url())],
        &dir,
        false,
    );
}
