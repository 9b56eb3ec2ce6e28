-- Sessions: owner (API key name), the transcript (JSON), the memory's exact bytes
-- (SessionMemory::to_bytes; empty = a fresh memory), and a version bumped by every turn.
CREATE TABLE sessions (
    id TEXT PRIMARY KEY NOT NULL,
    owner TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    model_fingerprint TEXT NOT NULL,
    version BIGINT NOT NULL,
    transcript TEXT NOT NULL,
    memory BLOB NOT NULL,
    stats TEXT NOT NULL,
    tokens_seen BIGINT NOT NULL
);
CREATE INDEX sessions_owner_id ON sessions (owner, id);
