//! The `session_blocks` table: one row per archive block of a session's memory, keyed by the
//! session-wide block number ([`crate::session::SessionMemory::archive_blocks`]). Blocks never
//! change once written, so a turn inserts only the new ones and deletes those the memory let go.
//! Every function runs on the connection of the caller's transaction.

use sqlx::{AnyConnection, Row};

use super::StoreError;
use crate::session::{HeldBlocks, MemoryParts, SessionFormatError};

/// A stored memory that cannot be read as core and blocks.
pub fn unreadable(id: &str, error: SessionFormatError) -> StoreError {
    StoreError::Memory {
        id: id.to_string(),
        error: error.to_string(),
    }
}

/// Writes every block of `parts` for session `id` (a new session, an import, an upgrade).
pub async fn insert_all(
    conn: &mut AnyConnection,
    id: &str,
    parts: &MemoryParts,
) -> Result<(), StoreError> {
    let numbers = parts.block_numbers().map_err(|e| unreadable(id, e))?;
    for (number, bytes) in numbers.iter().zip(&parts.blocks) {
        insert(conn, id, number, bytes).await?;
    }
    Ok(())
}

/// Inserts one block unless the session already has it; true when a row was written.
async fn insert(
    conn: &mut AnyConnection,
    id: &str,
    number: u64,
    bytes: &[u8],
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO session_blocks (session_id, block, bytes) VALUES ($1, $2, $3) \
         ON CONFLICT (session_id, block) DO NOTHING",
    )
    .bind(id)
    .bind(number as i64)
    .bind(bytes.to_vec())
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A turn's block changes: inserts `new` (skipping any already stored), deletes the blocks not
/// in `held` (the oldest, or with sticky retention any that left), and checks that the session
/// then has exactly `held`. Returns (written, deleted).
pub async fn advance(
    conn: &mut AnyConnection,
    id: &str,
    new: &[(u64, Vec<u8>)],
    held: &HeldBlocks,
) -> Result<(u64, u64), StoreError> {
    let mut written = 0;
    for (number, bytes) in new {
        written += u64::from(insert(conn, id, *number, bytes).await?);
    }
    // The oldest blocks in one statement (all that leave with fifo retention), then any other
    // block that left (sticky retention).
    let first = held.iter().next().unwrap_or(u64::MAX).min(i64::MAX as u64);
    let mut deleted = delete(conn, id, "<", first).await?;
    for number in numbers(conn, id).await? {
        if !held.contains(number) {
            deleted += delete(conn, id, "=", number).await?;
        }
    }
    let stored = numbers(conn, id).await?;
    expect_exactly(id, &stored, held)?;
    Ok((written, deleted))
}

/// Deletes the session's blocks whose number is `comparison` (`<` or `=`) `block`; how many.
async fn delete(
    conn: &mut AnyConnection,
    id: &str,
    comparison: &'static str,
    block: u64,
) -> Result<u64, StoreError> {
    let sql = format!("DELETE FROM session_blocks WHERE session_id = $1 AND block {comparison} $2");
    Ok(sqlx::query(&sql)
        .bind(id)
        .bind(block as i64)
        .execute(conn)
        .await?
        .rows_affected())
}

/// The session's block numbers, ascending.
pub async fn numbers(conn: &mut AnyConnection, id: &str) -> Result<Vec<u64>, StoreError> {
    let rows = sqlx::query("SELECT block FROM session_blocks WHERE session_id = $1 ORDER BY block")
        .bind(id)
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|row| Ok(row.try_get::<i64, _>("block")? as u64))
        .collect()
}

/// The session's blocks in order, with their numbers.
pub async fn read_all(
    conn: &mut AnyConnection,
    id: &str,
) -> Result<(Vec<u64>, Vec<Vec<u8>>), StoreError> {
    let rows =
        sqlx::query("SELECT block, bytes FROM session_blocks WHERE session_id = $1 ORDER BY block")
            .bind(id)
            .fetch_all(conn)
            .await?;
    let mut numbers = Vec::with_capacity(rows.len());
    let mut blocks = Vec::with_capacity(rows.len());
    for row in &rows {
        numbers.push(row.try_get::<i64, _>("block")? as u64);
        blocks.push(row.try_get("bytes")?);
    }
    Ok((numbers, blocks))
}

/// Checks that the stored block numbers are exactly those the core names.
pub fn check_held(id: &str, parts: &MemoryParts, stored: &[u64]) -> Result<(), StoreError> {
    let named = parts.block_numbers().map_err(|e| unreadable(id, e))?;
    expect_exactly(id, stored, &named)
}

fn expect_exactly(id: &str, stored: &[u64], held: &HeldBlocks) -> Result<(), StoreError> {
    let found = HeldBlocks::of_numbers(stored);
    if found == *held {
        Ok(())
    } else {
        Err(StoreError::Blocks {
            id: id.to_string(),
            found,
            expected: held.clone(),
        })
    }
}
