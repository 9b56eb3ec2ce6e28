//! [`SessionStore`] on sqlx's `Any` driver: one implementation for the embedded SQLite file and
//! for PostgreSQL, each with its own migrations (`migrations/sqlite`, `migrations/postgres`).
//! Statements use `$N` placeholders, which both backends accept.

use std::path::Path;

use futures_util::future::BoxFuture;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use super::blocks;
use super::{Committed, ForkOf, SessionHead, SessionRecord, SessionStore, StoreError, TurnCommit};
use crate::session::MemoryParts;

/// The SQL backend named by the database URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else {
            Err(StoreError::Scheme(
                url.split(':').next().unwrap_or(url).to_string(),
            ))
        }
    }
}

/// Sessions in SQLite or PostgreSQL.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: AnyPool,
    backend: Backend,
}

const HEAD_COLUMNS: &str =
    "id, owner, created_at, updated_at, model_fingerprint, version, transcript, stats, tokens_seen";

impl SqlStore {
    /// Connects, creating the SQLite file (and its folder) when needed, and migrates.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of(url)?;
        if backend == Backend::Sqlite {
            create_sqlite_folder(url)?;
        }
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 1 } else { 8 })
            .connect(url)
            .await?;
        match backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite").run(&pool).await?,
            Backend::Postgres => sqlx::migrate!("./migrations/postgres").run(&pool).await?,
        }
        let store = Self { pool, backend };
        store.split_whole_memories().await?;
        Ok(store)
    }

    /// Rows written before migration 0002 hold the whole memory file: each becomes core + block
    /// rows, one transaction per session.
    async fn split_whole_memories(&self) -> Result<(), StoreError> {
        let ids: Vec<String> = sqlx::query("SELECT id FROM sessions WHERE memory_format = 0")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| row.try_get("id"))
            .collect::<Result<_, _>>()?;
        for id in ids {
            let mut tx = self.pool.begin().await?;
            let row = sqlx::query(&format!(
                "SELECT memory FROM sessions WHERE id = $1 AND memory_format = 0{}",
                self.lock_clause()
            ))
            .bind(&id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else { continue };
            let whole: Vec<u8> = row.try_get("memory")?;
            let parts = MemoryParts::split(&whole).map_err(|e| blocks::unreadable(&id, e))?;
            sqlx::query("UPDATE sessions SET memory = $1, memory_format = 1 WHERE id = $2")
                .bind(parts.core.clone())
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            blocks::insert_all(&mut tx, &id, &parts).await?;
            tx.commit().await?;
            tracing::info!(session = %crate::log_text::Escaped(id), "split a whole stored memory into core and block rows");
        }
        Ok(())
    }

    /// ` FOR UPDATE` on PostgreSQL, which reads each statement of a transaction anew: locking the
    /// session's row keeps a turn's commit from landing between the row and its blocks. SQLite
    /// has one connection, so its transactions never interleave.
    fn lock_clause(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// True when the database answers (readiness).
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}

/// The folder of `sqlite://FOLDER/FILE?…`, created if missing.
fn create_sqlite_folder(url: &str) -> Result<(), StoreError> {
    let path = url
        .trim_start_matches("sqlite:")
        .trim_start_matches("//")
        .split('?')
        .next()
        .unwrap_or_default();
    match Path::new(path).parent() {
        Some(folder) if !folder.as_os_str().is_empty() && path != ":memory:" => {
            std::fs::create_dir_all(folder).map_err(|error| StoreError::DataDir {
                path: folder.display().to_string(),
                error,
            })
        }
        _ => Ok(()),
    }
}

fn head_of(row: &AnyRow) -> Result<SessionHead, StoreError> {
    let id: String = row.try_get("id")?;
    let unreadable = |error: serde_json::Error| StoreError::Transcript {
        id: id.clone(),
        error: error.to_string(),
    };
    let transcript: String = row.try_get("transcript")?;
    let stats: String = row.try_get("stats")?;
    Ok(SessionHead {
        owner: row.try_get("owner")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        model_fingerprint: row.try_get("model_fingerprint")?,
        version: row.try_get("version")?,
        transcript: serde_json::from_str(&transcript).map_err(unreadable)?,
        stats: serde_json::from_str(&stats).map_err(unreadable)?,
        tokens_seen: row.try_get("tokens_seen")?,
        id,
    })
}

impl SessionStore for SqlStore {
    fn insert(&self, record: &SessionRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        let head = record.head.clone();
        let memory = record.memory.clone();
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            sqlx::query(
                "INSERT INTO sessions (id, owner, created_at, updated_at, model_fingerprint, \
                 version, transcript, memory, memory_format, stats, tokens_seen) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, $9, $10)",
            )
            .bind(&head.id)
            .bind(head.owner)
            .bind(head.created_at)
            .bind(head.updated_at)
            .bind(head.model_fingerprint)
            .bind(head.version)
            .bind(serde_json::to_string(&head.transcript).expect("messages serialise"))
            .bind(memory.core.clone())
            .bind(head.stats.to_string())
            .bind(head.tokens_seen)
            .execute(&mut *tx)
            .await?;
            blocks::insert_all(&mut tx, &head.id, &memory).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn fork<'a>(
        &'a self,
        fork: ForkOf<'a>,
    ) -> BoxFuture<'a, Result<Option<SessionHead>, StoreError>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            let source = sqlx::query(&format!(
                "SELECT id FROM sessions WHERE id = $1 AND owner = $2{}",
                self.lock_clause()
            ))
            .bind(fork.source)
            .bind(fork.owner)
            .fetch_optional(&mut *tx)
            .await?;
            if source.is_none() {
                return Ok(None);
            }
            sqlx::query(
                "INSERT INTO sessions (id, owner, created_at, updated_at, model_fingerprint, \
                 version, transcript, memory, memory_format, stats, tokens_seen) \
                 SELECT $1, owner, $2, $2, model_fingerprint, 0, transcript, memory, \
                 memory_format, stats, tokens_seen FROM sessions WHERE id = $3",
            )
            .bind(fork.id)
            .bind(fork.created_at)
            .bind(fork.source)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO session_blocks (session_id, block, bytes) \
                 SELECT $1, block, bytes FROM session_blocks WHERE session_id = $2",
            )
            .bind(fork.id)
            .bind(fork.source)
            .execute(&mut *tx)
            .await?;
            let sql = format!("SELECT {HEAD_COLUMNS} FROM sessions WHERE id = $1");
            let row = sqlx::query(&sql).bind(fork.id).fetch_one(&mut *tx).await?;
            tx.commit().await?;
            head_of(&row).map(Some)
        })
    }

    fn head<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<SessionHead>, StoreError>> {
        Box::pin(async move {
            let sql = format!("SELECT {HEAD_COLUMNS} FROM sessions WHERE id = $1");
            let row = sqlx::query(&sql)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map(head_of).transpose()
        })
    }

    fn memory<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<MemoryParts>, StoreError>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            let row = sqlx::query(&format!(
                "SELECT memory FROM sessions WHERE id = $1{}",
                self.lock_clause()
            ))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else {
                return Ok(None);
            };
            let core: Vec<u8> = row.try_get("memory")?;
            let (numbers, blocks) = blocks::read_all(&mut tx, id).await?;
            tx.commit().await?;
            let parts = MemoryParts { core, blocks };
            blocks::check_held(id, &parts, &numbers)?;
            Ok(Some(parts))
        })
    }

    fn list<'a>(
        &'a self,
        owner: &'a str,
        after: Option<&'a str>,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<SessionHead>, StoreError>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT {HEAD_COLUMNS} FROM sessions WHERE owner = $1 AND id > $2 \
                 ORDER BY id LIMIT $3"
            );
            let rows = sqlx::query(&sql)
                .bind(owner)
                .bind(after.unwrap_or(""))
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
            rows.iter().map(head_of).collect()
        })
    }

    fn commit_turn<'a>(
        &'a self,
        commit: TurnCommit<'a>,
    ) -> BoxFuture<'a, Result<Option<Committed>, StoreError>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            let done = sqlx::query(
                "UPDATE sessions SET transcript = $1, memory = $2, memory_format = 1, stats = $3, \
                 tokens_seen = $4, updated_at = $5, version = version + 1 \
                 WHERE id = $6 AND version = $7",
            )
            .bind(serde_json::to_string(commit.transcript).expect("messages serialise"))
            .bind(commit.core.to_vec())
            .bind(commit.stats.to_string())
            .bind(commit.tokens_seen)
            .bind(commit.updated_at)
            .bind(commit.id)
            .bind(commit.read_version)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() != 1 {
                // Dropping the transaction rolls it back; nothing was written.
                return Ok(None);
            }
            let (blocks_written, blocks_deleted) =
                blocks::advance(&mut tx, commit.id, commit.new_blocks, &commit.blocks).await?;
            tx.commit().await?;
            Ok(Some(Committed {
                version: commit.read_version + 1,
                blocks_written,
                blocks_deleted,
            }))
        })
    }

    fn stored_blocks<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<u64>, StoreError>> {
        Box::pin(async move {
            let mut conn = self.pool.acquire().await?;
            blocks::numbers(&mut conn, id).await
        })
    }

    fn delete<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            let done = sqlx::query("DELETE FROM sessions WHERE id = $1 AND owner = $2")
                .bind(id)
                .bind(owner)
                .execute(&mut *tx)
                .await?;
            if done.rows_affected() != 1 {
                return Ok(false);
            }
            sqlx::query("DELETE FROM session_blocks WHERE session_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(true)
        })
    }
}
