//! [`SessionStore`] on sqlx's `Any` driver: one implementation for the embedded SQLite file and
//! for PostgreSQL, each with its own migrations (`migrations/sqlite`, `migrations/postgres`).
//! Statements use `$N` placeholders, which both backends accept.

use std::path::Path;

use futures_util::future::BoxFuture;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use super::{SessionHead, SessionRecord, SessionStore, StoreError, TurnCommit};

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
        Ok(Self { pool, backend })
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
            sqlx::query(
                "INSERT INTO sessions (id, owner, created_at, updated_at, model_fingerprint, \
                 version, transcript, memory, stats, tokens_seen) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(head.id)
            .bind(head.owner)
            .bind(head.created_at)
            .bind(head.updated_at)
            .bind(head.model_fingerprint)
            .bind(head.version)
            .bind(serde_json::to_string(&head.transcript).expect("messages serialise"))
            .bind(memory)
            .bind(head.stats.to_string())
            .bind(head.tokens_seen)
            .execute(&self.pool)
            .await?;
            Ok(())
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

    fn memory<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(async move {
            let row = sqlx::query("SELECT memory FROM sessions WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
            Ok(row.map(|row| row.try_get("memory")).transpose()?)
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
    ) -> BoxFuture<'a, Result<Option<i64>, StoreError>> {
        Box::pin(async move {
            let done = sqlx::query(
                "UPDATE sessions SET transcript = $1, memory = $2, stats = $3, tokens_seen = $4, \
                 updated_at = $5, version = version + 1 WHERE id = $6 AND version = $7",
            )
            .bind(serde_json::to_string(commit.transcript).expect("messages serialise"))
            .bind(commit.memory.to_vec())
            .bind(commit.stats.to_string())
            .bind(commit.tokens_seen)
            .bind(commit.updated_at)
            .bind(commit.id)
            .bind(commit.read_version)
            .execute(&self.pool)
            .await?;
            Ok((done.rows_affected() == 1).then_some(commit.read_version + 1))
        })
    }

    fn delete<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let done = sqlx::query("DELETE FROM sessions WHERE id = $1 AND owner = $2")
                .bind(id)
                .bind(owner)
                .execute(&self.pool)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }
}
