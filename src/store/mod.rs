//! Where sessions live (`architecture.md`, "Sessions and storage"): the [`SessionStore`] trait,
//! its sqlx implementation for SQLite and PostgreSQL ([`sql::SqlStore`]), and the hot cache of live
//! memories in front of it ([`hot::HotSessions`]).

mod blocks;
pub mod budget;
pub mod hot;
pub mod sql;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::session::{HeldBlocks, MemoryParts};
use crate::tokenizer::Transcript;

/// A store failure; the API reports it as a 500 with this message.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored transcript of session {id} is unreadable: {error}")]
    Transcript { id: String, error: String },
    #[error("cannot create the data folder {path}: {error}")]
    DataDir { path: String, error: std::io::Error },
    #[error("DATABASE_URL must start with sqlite: or postgres://, got `{0}`")]
    Scheme(String),
    #[error("stored memory of session {id} is unreadable: {error}")]
    Memory { id: String, error: String },
    #[error("session {id} would hold archive blocks {found:?} after the turn, its memory holds {expected:?} (runs of [first, count]); the turn was not stored")]
    Blocks {
        id: String,
        found: HeldBlocks,
        expected: HeldBlocks,
    },
}

/// A session's row, without its memory bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionHead {
    pub id: String,
    pub owner: String,
    /// Unix seconds.
    pub created_at: i64,
    pub updated_at: i64,
    pub model_fingerprint: String,
    /// Bumped by every committed turn; a turn commits only if the version it read is current.
    pub version: i64,
    /// The messages and the rendered text the memory holds.
    pub transcript: Transcript,
    /// The memory's statistics as JSON (`{}` before the first turn).
    pub stats: serde_json::Value,
    pub tokens_seen: i64,
}

/// A whole session: its row and the memory's core and blocks (empty core: a fresh memory).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    pub head: SessionHead,
    pub memory: MemoryParts,
}

/// What a committed turn writes: the row, the memory's core, and the archive blocks it added.
#[derive(Debug, Clone)]
pub struct TurnCommit<'a> {
    pub id: &'a str,
    /// The version the turn read; the commit fails if another writer moved it.
    pub read_version: i64,
    pub transcript: &'a Transcript,
    /// [`crate::session::SessionMemory::core_bytes`] after the turn.
    pub core: &'a [u8],
    /// The blocks the memory holds after the turn ([`crate::session::SessionMemory::archive_blocks`]);
    /// the store deletes the others and checks that it then holds exactly these.
    pub blocks: HeldBlocks,
    /// The blocks the store does not have yet (numbered), oldest first.
    pub new_blocks: &'a [(u64, Vec<u8>)],
    pub stats: &'a serde_json::Value,
    pub tokens_seen: i64,
    pub updated_at: i64,
}

/// A committed turn: the new version and how many block rows it wrote and deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    pub version: i64,
    pub blocks_written: u64,
    pub blocks_deleted: u64,
}

/// A new session copied from another's last committed turn.
#[derive(Debug, Clone, Copy)]
pub struct ForkOf<'a> {
    pub source: &'a str,
    pub owner: &'a str,
    pub id: &'a str,
    pub created_at: i64,
}

/// Session persistence. Every method is one transaction, so each is atomic on its own.
pub trait SessionStore: Send + Sync {
    /// A new session: its row and its memory's blocks.
    fn insert(&self, record: &SessionRecord) -> BoxFuture<'_, Result<(), StoreError>>;
    /// A copy of `owner`'s session `source` (row, core and blocks) as `id`, at version 0; None when
    /// `owner` has no such session.
    fn fork<'a>(
        &'a self,
        fork: ForkOf<'a>,
    ) -> BoxFuture<'a, Result<Option<SessionHead>, StoreError>>;
    /// The row without memory.
    fn head<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<SessionHead>, StoreError>>;
    /// The memory's core and blocks, read together.
    fn memory<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<MemoryParts>, StoreError>>;
    /// `owner`'s sessions in id order (ids sort by creation time), after `after`, at most `limit`.
    fn list<'a>(
        &'a self,
        owner: &'a str,
        after: Option<&'a str>,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<SessionHead>, StoreError>>;
    /// Writes a turn if `read_version` is still current: the row and core, the new blocks, and the
    /// deletion of the blocks the memory let go, all or nothing. None when another writer got
    /// there first (or the session was deleted); nothing is written then.
    fn commit_turn<'a>(
        &'a self,
        commit: TurnCommit<'a>,
    ) -> BoxFuture<'a, Result<Option<Committed>, StoreError>>;
    /// The numbers of the block rows a session has (for operators and tests).
    fn stored_blocks<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<u64>, StoreError>>;
    /// Deletes `owner`'s session and its blocks; false when there was none.
    fn delete<'a>(&'a self, id: &'a str, owner: &'a str)
        -> BoxFuture<'a, Result<bool, StoreError>>;
}
