//! What a session's last turn read, recorded as it ran (`GET /v1/sessions/{id}/memory`): how often
//! each archive block was selected, summed over layers, KV heads and query segments (§9.7: each
//! segment reads its k best blocks per KV head), and the mean attention mass on the continuous
//! signal's points (§9.2's joint softmax), and with sticky retention each held block's stickiness.
//! Stored with the session's statistics after each turn.

use serde::{Deserialize, Serialize};

use super::HeldBlocks;
use crate::memory::LayerTurnReads;

/// The reads of one turn over every layer, with where the archive stood when the turn ended.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TurnReading {
    /// Tokens per archive block.
    pub block_len: u64,
    /// Session-wide number of the oldest archive block held after the turn.
    pub first_block: u64,
    /// Archive blocks held after the turn.
    pub blocks: u64,
    /// The held blocks' numbers as runs `[first, count]` when they are not the one run
    /// `first_block..first_block + blocks` (blocks left out of order: sticky retention).
    #[serde(default, skip_serializing_if = "HeldBlocks::is_empty")]
    pub held_runs: HeldBlocks,
    /// Selections of each held block, oldest first (in the order of [`TurnReading::held`]); empty
    /// when the turn read no block or counting is off.
    pub selected: Vec<u64>,
    /// Each held block's stickiness after the turn, summed over layers, oldest first (sticky
    /// retention: the attention mass the block received, fading; empty otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stickiness: Vec<f32>,
    /// Selections of blocks that left the archive later in the same turn.
    pub selected_then_left: u64,
    /// Blocks picked in all: Σ over layers and query segments of KV heads × k. Always
    /// `Σ selected + selected_then_left`.
    pub picks: u64,
    /// Query segments that read the archive (per layer: every layer reads the same segments).
    pub segments: u64,
    /// Mean softmax mass the turn's queries put on the signal's points, over layers, heads and
    /// queries; `None` when not measured (the signal had no points, or counting is off).
    pub signal_mass: Option<f64>,
}

impl TurnReading {
    /// The key a session's stored statistics keep the last turn's reading under.
    pub const STATS_KEY: &'static str = "last_turn";

    /// Sums every layer's reads; `held` is the session-wide numbers of the archive's blocks now,
    /// `stickiness` theirs summed over layers (empty when not kept).
    pub fn of_layers(
        layers: Vec<LayerTurnReads>,
        block_len: usize,
        held: HeldBlocks,
        stickiness: Vec<f32>,
    ) -> Self {
        let first_block = held.iter().next().unwrap_or(0);
        let mut reading = Self {
            block_len: block_len as u64,
            first_block,
            blocks: held.len(),
            held_runs: if held.runs().len() > 1 {
                held
            } else {
                HeldBlocks::default()
            },
            stickiness,
            ..Self::default()
        };
        let (mut mass, mut rows) = (0.0, 0u64);
        for layer in layers {
            let archive = layer.archive;
            if reading.selected.len() < archive.per_block.len() {
                reading.selected.resize(archive.per_block.len(), 0);
            }
            for (total, count) in reading.selected.iter_mut().zip(&archive.per_block) {
                *total += count;
            }
            reading.selected_then_left += archive.of_blocks_gone;
            reading.picks += archive.picks;
            reading.segments = reading.segments.max(archive.segments);
            if let Some((sum, n)) = layer.signal_mass {
                mass += sum;
                rows += n;
            }
        }
        reading.signal_mass = (rows > 0).then(|| mass / rows as f64);
        reading
    }

    /// The numbers of the blocks held after the turn, oldest first.
    pub fn held(&self) -> HeldBlocks {
        if self.held_runs.is_empty() {
            HeldBlocks::of_range(self.first_block..self.first_block + self.blocks)
        } else {
            self.held_runs.clone()
        }
    }
}
