//! Where sessions live (`architecture.md`, "Sessions and storage"): the [`SessionStore`] trait,
//! its sqlx implementation for SQLite and PostgreSQL ([`sql::SqlStore`]), and the hot cache of live
//! memories in front of it ([`hot::HotSessions`]).

pub mod hot;
pub mod sql;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

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

/// A whole session: its row and the memory's bytes (empty: a fresh memory).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    pub head: SessionHead,
    pub memory: Vec<u8>,
}

/// What a committed turn writes.
#[derive(Debug, Clone)]
pub struct TurnCommit<'a> {
    pub id: &'a str,
    /// The version the turn read; the commit fails if another writer moved it.
    pub read_version: i64,
    pub transcript: &'a Transcript,
    pub memory: &'a [u8],
    pub stats: &'a serde_json::Value,
    pub tokens_seen: i64,
    pub updated_at: i64,
}

/// Session persistence. Every method is one statement, so each is atomic on its own.
pub trait SessionStore: Send + Sync {
    fn insert(&self, record: &SessionRecord) -> BoxFuture<'_, Result<(), StoreError>>;
    /// The row without memory.
    fn head<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<SessionHead>, StoreError>>;
    /// The memory bytes.
    fn memory<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>>;
    /// `owner`'s sessions in id order (ids sort by creation time), after `after`, at most `limit`.
    fn list<'a>(
        &'a self,
        owner: &'a str,
        after: Option<&'a str>,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<SessionHead>, StoreError>>;
    /// Writes a turn if `read_version` is still current; returns the new version, or None when
    /// another writer got there first (or the session was deleted).
    fn commit_turn<'a>(
        &'a self,
        commit: TurnCommit<'a>,
    ) -> BoxFuture<'a, Result<Option<i64>, StoreError>>;
    /// Deletes `owner`'s session; false when there was none.
    fn delete<'a>(&'a self, id: &'a str, owner: &'a str)
        -> BoxFuture<'a, Result<bool, StoreError>>;
}
