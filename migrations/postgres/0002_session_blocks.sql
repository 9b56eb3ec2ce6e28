-- Incremental memory storage: a session's row keeps the memory's core (SessionMemory::core_bytes;
-- empty = a fresh memory) and each archive block is a row of its own, keyed by the session-wide
-- block number. Blocks never change once written, so a turn inserts only the new ones and deletes
-- those the memory let go. memory_format says what the row's memory holds: 0 = the whole
-- SessionMemory::to_bytes file (rows written before this migration; the store splits them into
-- core and blocks when it connects), 1 = the core only.
ALTER TABLE sessions ADD COLUMN memory_format BIGINT NOT NULL DEFAULT 0;
CREATE TABLE session_blocks (
    session_id TEXT NOT NULL,
    block BIGINT NOT NULL,
    bytes BYTEA NOT NULL,
    PRIMARY KEY (session_id, block)
);
