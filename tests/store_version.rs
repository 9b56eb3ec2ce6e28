//! The session store on its own, on SQLite and (when reachable) the local PostgreSQL: a turn
//! commits only over the version it read, so two writers (two server replicas) can never both
//! extend one session; deletes and listings are per owner; a turn writes only its new archive
//! blocks and deletes those the memory let go; fork copies the block rows, delete removes them,
//! and rows from before the block table are split into core and blocks on connect.

mod common;

use common::PgSchema;
use infini::session::{parts, HeldBlocks, MemoryParts};
use infini::store::sql::SqlStore;
use infini::store::{
    Committed, ForkOf, SessionHead, SessionRecord, SessionStore, StoreError, TurnCommit,
};
use infini::tokenizer::{ChatMessage, Transcript, TurnEnd};
use serde_json::json;

fn record(id: &str, owner: &str) -> SessionRecord {
    SessionRecord {
        head: SessionHead {
            id: id.into(),
            owner: owner.into(),
            created_at: 1,
            updated_at: 1,
            model_fingerprint: "llama-test".into(),
            version: 0,
            transcript: Transcript::new(),
            stats: json!({}),
            tokens_seen: 0,
        },
        memory: MemoryParts::default(),
    }
}

/// A core of format `version` whose header names the blocks `held` (the store reads no further),
/// tagged: version 1 names one run by its first block and length, version 2 lists runs.
fn core_of(version: u32, held: &HeldBlocks, tag: &str) -> Vec<u8> {
    let mut bytes = b"INFMEM\0\0".to_vec();
    bytes.extend(version.to_le_bytes());
    for text in ["llama-test", "{}"] {
        bytes.extend((text.len() as u64).to_le_bytes());
        bytes.extend(text.as_bytes());
    }
    bytes.extend(1u32.to_le_bytes());
    if version == 1 {
        let first = held.iter().next().unwrap_or(0);
        bytes.extend(first.to_le_bytes());
        bytes.extend(held.len().to_le_bytes());
    } else {
        bytes.extend((held.runs().len() as u64).to_le_bytes());
        for run in held.runs() {
            run.iter().for_each(|n| bytes.extend(n.to_le_bytes()));
        }
    }
    bytes.extend(tag.as_bytes());
    bytes
}

/// A core of this build's format naming blocks `first..first + held`, tagged.
fn core(first: u64, held: u64, tag: &str) -> Vec<u8> {
    core_of(
        infini::session::FORMAT_VERSION,
        &range(first..first + held),
        tag,
    )
}

fn range(blocks: std::ops::Range<u64>) -> HeldBlocks {
    HeldBlocks::of_range(blocks)
}

fn block(n: u64) -> (u64, Vec<u8>) {
    (n, format!("block {n}").into_bytes())
}

fn parts_of(core: Vec<u8>, blocks: &HeldBlocks) -> MemoryParts {
    MemoryParts {
        core,
        blocks: blocks.iter().map(|n| block(n).1).collect(),
    }
}

async fn version_guard(store: &SqlStore) {
    store.insert(&record("s1", "alice")).await.unwrap();
    store.insert(&record("s2", "alice")).await.unwrap();
    store.insert(&record("s3", "bob")).await.unwrap();
    let transcript = Transcript {
        messages: vec![
            ChatMessage::new("user", "hi"),
            ChatMessage::new("assistant", "hello"),
        ],
        fed: "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello".into(),
        // Where the turn ended, stored with the transcript (the memory map's text of a span).
        turns: vec![TurnEnd {
            tokens: 7,
            bytes: 43,
        }],
    };
    let stats = json!({"tokens_seen": 7});
    let commit = |read_version, core: &'static [u8]| TurnCommit {
        id: "s1",
        read_version,
        transcript: &transcript,
        core,
        blocks: HeldBlocks::default(),
        new_blocks: &[],
        stats: &stats,
        tokens_seen: 7,
        updated_at: 2,
    };
    // Two replicas read version 0; the first commit wins, the second is refused.
    let version = |committed: Option<Committed>| committed.map(|c| c.version);
    let first = core(0, 0, "first");
    let first: &'static [u8] = first.leak();
    assert_eq!(
        version(store.commit_turn(commit(0, first)).await.unwrap()),
        Some(1)
    );
    assert_eq!(store.commit_turn(commit(0, b"second")).await.unwrap(), None);
    assert_eq!(store.memory("s1").await.unwrap().unwrap().core, first);
    let head = store.head("s1").await.unwrap().unwrap();
    assert_eq!((head.version, head.tokens_seen), (1, 7));
    assert_eq!(head.transcript, transcript);
    assert_eq!(head.stats, stats);
    assert_eq!(
        version(store.commit_turn(commit(1, first)).await.unwrap()),
        Some(2)
    );

    let ids = |heads: Vec<SessionHead>| heads.into_iter().map(|h| h.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list("alice", None, 10).await.unwrap()),
        ["s1", "s2"]
    );
    assert_eq!(
        ids(store.list("alice", Some("s1"), 10).await.unwrap()),
        ["s2"]
    );
    assert_eq!(ids(store.list("bob", None, 1).await.unwrap()), ["s3"]);
    assert!(!store.delete("s1", "bob").await.unwrap());
    assert!(store.delete("s1", "alice").await.unwrap());
    assert!(store.head("s1").await.unwrap().is_none());
    assert_eq!(store.commit_turn(commit(2, b"late")).await.unwrap(), None);
}

async fn incremental_blocks(store: &SqlStore) {
    store.insert(&record("b1", "alice")).await.unwrap();
    let turn = |read_version, core, blocks, new_blocks| {
        turn_of("b1", read_version, core, blocks, new_blocks)
    };
    // The first turn fills blocks 0..3.
    let core1 = core(0, 3, "one");
    let new1: Vec<_> = (0..3).map(block).collect();
    let committed = store
        .commit_turn(turn(0, &core1, range(0..3), &new1))
        .await
        .unwrap();
    assert_eq!(
        committed,
        Some(Committed {
            version: 1,
            blocks_written: 3,
            blocks_deleted: 0
        })
    );
    assert_eq!(store.stored_blocks("b1").await.unwrap(), [0, 1, 2]);
    assert_eq!(
        store.memory("b1").await.unwrap().unwrap(),
        parts_of(core1.clone(), &range(0..3))
    );

    // A turn over a stale version writes no block row and deletes none.
    let core2 = core(2, 3, "two");
    let new2: Vec<_> = (3..5).map(block).collect();
    assert_eq!(
        store
            .commit_turn(turn(0, &core2, range(2..5), &new2))
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.stored_blocks("b1").await.unwrap(), [0, 1, 2]);
    assert_eq!(store.memory("b1").await.unwrap().unwrap().core, core1);

    // The next turn writes only blocks 3 and 4 and deletes the popped 0 and 1.
    let committed = store
        .commit_turn(turn(1, &core2, range(2..5), &new2))
        .await
        .unwrap();
    assert_eq!(
        committed,
        Some(Committed {
            version: 2,
            blocks_written: 2,
            blocks_deleted: 2
        })
    );
    assert_eq!(store.stored_blocks("b1").await.unwrap(), [2, 3, 4]);
    let stored = store.memory("b1").await.unwrap().unwrap();
    assert_eq!(stored, parts_of(core2.clone(), &range(2..5)));
    assert_eq!(
        stored.join(),
        parts::join(&core2, [&b"block 2"[..], b"block 3", b"block 4"])
    );

    // A turn that would leave a gap (block 5 missing) is refused whole.
    let core3 = core(2, 5, "three");
    let gap = [block(6)];
    let refused = store.commit_turn(turn(2, &core3, range(2..7), &gap)).await;
    assert!(
        matches!(refused, Err(StoreError::Blocks { ref found, .. }) if *found == HeldBlocks::of_numbers(&[2, 3, 4, 6])),
        "{refused:?}"
    );
    assert_eq!(store.head("b1").await.unwrap().unwrap().version, 2);
    assert_eq!(store.stored_blocks("b1").await.unwrap(), [2, 3, 4]);

    // Fork copies the row and the blocks; another owner cannot fork.
    let fork = |owner, id| ForkOf {
        source: "b1",
        owner,
        id,
        created_at: 9,
    };
    let head = store.fork(fork("alice", "f1")).await.unwrap().unwrap();
    assert_eq!(
        (head.id.as_str(), head.version, head.created_at),
        ("f1", 0, 9)
    );
    assert_eq!(head.owner, "alice");
    assert_eq!(store.memory("f1").await.unwrap().unwrap(), stored);
    assert!(store.fork(fork("bob", "f2")).await.unwrap().is_none());
    assert!(store.head("f2").await.unwrap().is_none());

    // Delete removes the blocks with the row, and only that session's.
    assert!(store.delete("b1", "alice").await.unwrap());
    assert!(store.stored_blocks("b1").await.unwrap().is_empty());
    assert_eq!(store.stored_blocks("f1").await.unwrap(), [2, 3, 4]);

    // Import: a record with blocks writes them under the numbers its core names.
    let mut imported = record("i1", "alice");
    imported.memory = parts_of(core(7, 2, "imported"), &range(7..9));
    store.insert(&imported).await.unwrap();
    assert_eq!(store.stored_blocks("i1").await.unwrap(), [7, 8]);
    assert_eq!(store.memory("i1").await.unwrap().unwrap(), imported.memory);
    // A core of format 1 (written before sticky retention) names its blocks as one run.
    let mut older = record("i2", "alice");
    older.memory = parts_of(core_of(1, &range(3..5), "format 1"), &range(3..5));
    store.insert(&older).await.unwrap();
    assert_eq!(store.stored_blocks("i2").await.unwrap(), [3, 4]);
    assert_eq!(store.memory("i2").await.unwrap().unwrap(), older.memory);

    // Sticky retention lets blocks go out of order: the turn deletes exactly those, wherever
    // they lie, and writes the new ones.
    store.insert(&record("g1", "alice")).await.unwrap();
    let first = range(0..4);
    let new: Vec<_> = first.iter().map(block).collect();
    store
        .commit_turn(turn_of(
            "g1",
            0,
            &core_of(2, &first, "g"),
            first.clone(),
            &new,
        ))
        .await
        .unwrap()
        .unwrap();
    let held = HeldBlocks::of_numbers(&[0, 2, 4, 5]);
    let committed = store
        .commit_turn(turn_of(
            "g1",
            1,
            &core_of(2, &held, "g"),
            held.clone(),
            &[block(4), block(5)],
        ))
        .await
        .unwrap();
    assert_eq!(
        committed.map(|c| (c.blocks_written, c.blocks_deleted)),
        Some((2, 2))
    );
    assert_eq!(store.stored_blocks("g1").await.unwrap(), [0, 2, 4, 5]);
    let stored = store.memory("g1").await.unwrap().unwrap();
    assert_eq!(stored, parts_of(core_of(2, &held, "g"), &held));
}

/// A turn of session `id` over `read_version` that leaves its memory holding `blocks`.
fn turn_of<'a>(
    id: &'a str,
    read_version: i64,
    core: &'a [u8],
    blocks: HeldBlocks,
    new_blocks: &'a [(u64, Vec<u8>)],
) -> TurnCommit<'a> {
    static EMPTY: std::sync::OnceLock<(Transcript, serde_json::Value)> = std::sync::OnceLock::new();
    let (transcript, stats) = EMPTY.get_or_init(|| (Transcript::new(), json!({})));
    TurnCommit {
        id,
        read_version,
        transcript,
        core,
        blocks,
        new_blocks,
        stats,
        tokens_seen: 0,
        updated_at: 4,
    }
}

/// A row as written before migration 0002 (the whole memory file, no block rows) is split on
/// connect.
async fn whole_memories_are_split(store: &SqlStore, url: &str) {
    let whole = parts_of(core(4, 2, "old"), &range(4..6));
    store.insert(&record("old", "alice")).await.unwrap();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    sqlx::query("UPDATE sessions SET memory = $1, memory_format = 0 WHERE id = 'old'")
        .bind(whole.join())
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let reopened = SqlStore::connect(url).await.unwrap();
    assert_eq!(reopened.stored_blocks("old").await.unwrap(), [4, 5]);
    assert_eq!(reopened.memory("old").await.unwrap().unwrap(), whole);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn sqlite_commits_only_over_the_version_read() {
    let dir = std::env::temp_dir().join(format!("infini-store-{}", std::process::id()));
    let url = format!("sqlite://{}/sessions.db?mode=rwc", dir.display());
    runtime().block_on(async {
        let store = SqlStore::connect(&url).await.unwrap();
        version_guard(&store).await;
        incremental_blocks(&store).await;
        whole_memories_are_split(&store, &url).await;
        // Migrations are idempotent: a second connect finds the schema in place.
        SqlStore::connect(&url).await.unwrap();
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn postgres_commits_only_over_the_version_read() {
    let Some(schema) = PgSchema::create() else {
        return;
    };
    runtime().block_on(async {
        let store = SqlStore::connect(&schema.url()).await.unwrap();
        version_guard(&store).await;
        incremental_blocks(&store).await;
        whole_memories_are_split(&store, &schema.url()).await;
    });
}
