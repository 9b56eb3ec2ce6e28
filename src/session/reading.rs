//! What a session's last turn read, recorded as it ran (`GET /v1/sessions/{id}/memory`): how often
//! each archive block was selected, summed over layers, KV heads and query segments (§9.7: each
//! segment reads its k best blocks per KV head), and the mean attention mass on the continuous
//! signal's points (§9.2's joint softmax). Stored with the session's statistics after each turn.

use serde::{Deserialize, Serialize};

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
    /// Selections of each held block, oldest first (`first_block`, `first_block + 1`, …); empty
    /// when the turn read no block or counting is off.
    pub selected: Vec<u64>,
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

    /// Sums every layer's reads; `held` is the session-wide numbers of the archive's blocks now.
    pub fn of_layers(
        layers: Vec<LayerTurnReads>,
        block_len: usize,
        held: std::ops::Range<u64>,
    ) -> Self {
        let mut reading = Self {
            block_len: block_len as u64,
            first_block: held.start,
            blocks: held.end - held.start,
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
}
