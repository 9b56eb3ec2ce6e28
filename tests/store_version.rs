//! The session store on its own, on SQLite and (when reachable) the local PostgreSQL: a turn
//! commits only over the version it read, so two writers (two server replicas) can never both
//! extend one session; deletes and listings are per owner.

mod common;

use common::PgSchema;
use infini::store::sql::SqlStore;
use infini::store::{SessionHead, SessionRecord, SessionStore, TurnCommit};
use infini::tokenizer::{ChatMessage, Transcript};
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
        memory: Vec::new(),
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
    };
    let stats = json!({"tokens_seen": 7});
    let commit = |read_version, memory: &'static [u8]| TurnCommit {
        id: "s1",
        read_version,
        transcript: &transcript,
        memory,
        stats: &stats,
        tokens_seen: 7,
        updated_at: 2,
    };
    // Two replicas read version 0; the first commit wins, the second is refused.
    assert_eq!(
        store.commit_turn(commit(0, b"first")).await.unwrap(),
        Some(1)
    );
    assert_eq!(store.commit_turn(commit(0, b"second")).await.unwrap(), None);
    assert_eq!(store.memory("s1").await.unwrap().unwrap(), b"first");
    let head = store.head("s1").await.unwrap().unwrap();
    assert_eq!((head.version, head.tokens_seen), (1, 7));
    assert_eq!(head.transcript, transcript);
    assert_eq!(head.stats, stats);
    assert_eq!(
        store.commit_turn(commit(1, b"third")).await.unwrap(),
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
        // Migrations are idempotent: a second connect finds the schema in place.
        SqlStore::connect(&url).await.unwrap();
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn postgres_commits_only_over_the_version_read() {
    let Some(schema) = PgSchema::create() else {
        eprintln!("SKIPPED: no PostgreSQL at 127.0.0.1:5432 (database test, user postgres)");
        return;
    };
    runtime().block_on(async {
        let store = SqlStore::connect(&schema.url()).await.unwrap();
        version_guard(&store).await;
    });
}
