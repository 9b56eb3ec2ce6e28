//! What a session turn hands back to be stored: the memory after the turn, its core bytes and the
//! archive blocks the turn added (a store has the older ones already), and its statistics.

use super::{HeldBlocks, MemoryStats, SessionMemory, TurnReading};

/// A session's memory after a turn, ready to store: its core and the archive blocks the turn
/// added (the store has those the memory held before the turn).
#[derive(Debug)]
pub struct KeptMemory {
    pub memory: SessionMemory,
    pub core: Vec<u8>,
    /// The blocks held after the turn.
    pub blocks: HeldBlocks,
    /// The blocks held now that were not held when the turn began, numbered.
    pub new_blocks: Vec<(u64, Vec<u8>)>,
    pub stats: MemoryStats,
    /// What the turn read (the memory map's heat strip).
    pub reading: TurnReading,
}

impl KeptMemory {
    /// What to store of `memory`, which held the blocks `before` when the turn began.
    pub fn of(mut memory: SessionMemory, before: &HeldBlocks) -> Self {
        let reading = memory.take_reading();
        let blocks = memory.archive_blocks();
        let new_blocks = blocks
            .iter()
            .filter(|&n| !before.contains(n))
            .map(|n| (n, memory.block_bytes(n).expect("the block is held")))
            .collect();
        Self {
            core: memory.core_bytes(),
            stats: memory.stats(),
            blocks,
            new_blocks,
            reading,
            memory,
        }
    }
}
