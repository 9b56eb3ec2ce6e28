//! One conversation's memory inside the real model: a [`LayerMemory`] per layer (the four tiers of
//! `infinity-former.md` §9.7), its statistics, and its exact serialised form.
//!
//! The bytes of a session (format version [`FORMAT_VERSION`]):
//! ```text
//! core:   magic "INFMEM\0\0" · version u32 · model fingerprint · memory layout (JSON) · layers u32
//!         · held archive blocks as runs (count u64, then each run's first block u64 and length
//!         u64; version 1: one run, its first block and length) · every layer's core (sinks, STM,
//!         staged blocks, continuous signal and points, counters; since version 2 each held
//!         block's stickiness)
//! block:  every layer's keys, values and representative key of one archive block
//! file:   magic, then the core and each held block, each as a length-prefixed byte string
//! ```
//! The archive's blocks are numbered for the whole session and never change once written, so a
//! store can save the core and only the blocks it does not have yet ([`SessionMemory::archive_blocks`]).
//! Version 1 (before sticky retention) still reads.

use serde::Serialize;

use crate::memory::codec::{Reader, Writer};
use crate::memory::{LayerMemory, LayerShape, MemoryLayout, TierStats};
use crate::model::Llama;

pub use crate::memory::SessionFormatError;
pub use held::HeldBlocks;
pub use kept::KeptMemory;
pub use parts::{CoreHeader, MemoryParts};
pub use past::Past;
pub use reading::TurnReading;

mod held;
mod kept;
pub mod parts;
mod past;
mod reading;

/// The version of the byte layout this build writes and reads.
pub const FORMAT_VERSION: u32 = 2;
const MAGIC: &[u8; 8] = b"INFMEM\0\0";

/// The identity a session memory carries: the model it was made with (see [`Llama::fingerprint`]).
pub fn model_fingerprint(model: &Llama) -> String {
    model.fingerprint().to_string()
}

/// One session's memory, every layer.
#[derive(Debug)]
pub struct SessionMemory {
    layers: Vec<LayerMemory>,
    fingerprint: String,
}

/// What a session remembers: tokens per tier (every layer holds the same) and bytes summed over
/// layers. Serialises flat: `tokens_seen`, the [`TierStats`] fields, `total_bytes`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct MemoryStats {
    /// Every token the session has taken in (prompts and replies).
    pub tokens_seen: u64,
    #[serde(flatten)]
    pub tiers: TierStats,
    pub total_bytes: usize,
}

impl SessionMemory {
    /// An empty memory laid out as `layout` says, for `model`.
    pub fn new(model: &Llama, layout: &MemoryLayout) -> Self {
        Self {
            layers: layout.new_session(model.config().num_layers as usize),
            fingerprint: model_fingerprint(model),
        }
    }

    /// The per-layer caches the model reads and extends: `generate(model, memory.caches(), …)`.
    pub fn caches(&mut self) -> &mut [LayerMemory] {
        &mut self.layers
    }

    /// Every token the session has taken in (prompts and replies).
    pub fn tokens_seen(&self) -> u64 {
        self.stats().tokens_seen
    }

    /// Tokens per tier and bytes summed over layers.
    pub fn stats(&self) -> MemoryStats {
        let per_layer: Vec<TierStats> = self.layers.iter().map(LayerMemory::stats).collect();
        let first = per_layer.first().copied().unwrap_or_default();
        let sum = |f: fn(&TierStats) -> usize| per_layer.iter().map(f).sum::<usize>();
        let tiers = TierStats {
            sink_bytes: sum(|s| s.sink_bytes),
            stm_bytes: sum(|s| s.stm_bytes),
            archive_bytes: sum(|s| s.archive_bytes),
            ltm_bytes: sum(|s| s.ltm_bytes),
            ..first
        };
        // Saturating: a memory read from a client's file may carry any counter.
        MemoryStats {
            tokens_seen: ((first.sink_tokens + first.stm_tokens + first.archive_tokens) as u64)
                .saturating_add(first.ltm_tokens)
                .saturating_add(first.dropped_tokens),
            tiers,
            total_bytes: tiers.sink_bytes + tiers.stm_bytes + tiers.archive_bytes + tiers.ltm_bytes,
        }
    }

    /// The RAM buffers of every layer, by address (a fork shares its parent's until either
    /// writes), with their bytes including spare room.
    pub fn resident_buffers(&self) -> Vec<(usize, usize)> {
        self.layers
            .iter()
            .flat_map(LayerMemory::resident_buffers)
            .collect()
    }

    /// Bytes of RAM the memory's buffers hold, spare room included.
    pub fn resident_bytes(&self) -> usize {
        self.resident_buffers().iter().map(|(_, bytes)| bytes).sum()
    }

    /// A new session's memory that starts where this one is: it shares this memory's buffers
    /// until either writes into them ([`LayerMemory::fork`]), so a fork costs no copy of the past.
    pub fn fork(&self) -> Self {
        Self {
            layers: self.layers.iter().map(LayerMemory::fork).collect(),
            fingerprint: self.fingerprint.clone(),
        }
    }

    /// What the memory read since the last call, over every layer (see [`TurnReading`]), and a
    /// fresh count.
    pub fn take_reading(&mut self) -> TurnReading {
        let block_len = self.layers.first().map_or(0, |l| l.config().block_len);
        let held = self.archive_blocks();
        let stickiness = LayerMemory::summed_stickiness(&self.layers);
        let layers = self
            .layers
            .iter_mut()
            .map(LayerMemory::take_reads)
            .collect();
        TurnReading::of_layers(layers, block_len, held, stickiness)
    }

    /// The session-wide numbers of the archive blocks held now (the same in every layer).
    pub fn archive_blocks(&self) -> HeldBlocks {
        self.layers.first().map_or_else(HeldBlocks::default, |l| {
            HeldBlocks::of_numbers(l.archive_numbers())
        })
    }

    /// Everything but the archive's blocks.
    pub fn core_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        CoreHeader::write(
            &mut w,
            &self.fingerprint,
            &layout_config_text(self.layers.first().map(LayerMemory::config)),
            self.layers.len() as u32,
            &self.archive_blocks(),
        );
        for layer in &self.layers {
            layer.write_core(&mut w);
        }
        w.into_bytes()
    }

    /// Archive block number `block` (one of [`SessionMemory::archive_blocks`]) of every layer;
    /// `None` when it is not held.
    pub fn block_bytes(&self, block: u64) -> Option<Vec<u8>> {
        let index = self.archive_blocks().position(block)?;
        let mut w = Writer::new();
        for layer in &self.layers {
            layer.write_block(&mut w, index as i64);
        }
        Some(w.into_bytes())
    }

    /// The whole memory as one byte string: the core, then every held block.
    pub fn to_bytes(&self) -> Vec<u8> {
        let blocks: Vec<Vec<u8>> = self
            .archive_blocks()
            .iter()
            .map(|block| self.block_bytes(block).expect("the block is held"))
            .collect();
        parts::join(&self.core_bytes(), blocks.iter().map(Vec::as_slice))
    }

    /// Reads a memory written by [`SessionMemory::to_bytes`], for `model` laid out as `layout`.
    pub fn from_bytes(
        bytes: &[u8],
        model: &Llama,
        layout: &MemoryLayout,
    ) -> Result<Self, SessionFormatError> {
        let (core, blocks) = parts::split(bytes)?;
        Self::from_parts(core, &blocks, model, layout)
    }

    /// Reads a memory from its core and its held blocks, oldest first (as a store keeps them).
    pub fn from_parts(
        core: &[u8],
        blocks: &[&[u8]],
        model: &Llama,
        layout: &MemoryLayout,
    ) -> Result<Self, SessionFormatError> {
        let mut r = Reader::new(core);
        let header = CoreHeader::read(&mut r)?;
        header.made_for(&model_fingerprint(model), &layout_text(layout))?;
        let config = layout.config();
        let cfg = model.config();
        let layers = i64::from(header.layers);
        if layers != cfg.num_layers {
            return Err(SessionFormatError::Corrupt(format!(
                "{layers} layers for a model of {}",
                cfg.num_layers
            )));
        }
        let held = header.blocks.len();
        if held != blocks.len() as u64 {
            return Err(SessionFormatError::Corrupt(format!(
                "the core names {held} archive blocks, {} were given",
                blocks.len()
            )));
        }
        let shape = LayerShape {
            kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            kind: model.options().precision.activation_kind(),
            device: model.options().device,
        };
        let block_len = config.block_len as i64;
        let mut per_layer: Vec<Vec<_>> = (0..layers).map(|_| Vec::new()).collect();
        for bytes in blocks {
            let mut br = Reader::new(bytes);
            for layer in per_layer.iter_mut() {
                layer.push(LayerMemory::read_block(
                    &mut br,
                    &shape,
                    block_len,
                    config.archive_int8,
                )?);
            }
            expect_done(&br)?;
        }
        let numbers: Vec<u64> = header.blocks.iter().collect();
        let memory = per_layer
            .iter()
            .map(|blocks| {
                LayerMemory::read_core(
                    &mut r,
                    header.version,
                    config,
                    layout.shared_operators(),
                    &shape,
                    (&numbers, blocks),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        expect_done(&r)?;
        Ok(Self {
            layers: memory,
            fingerprint: model_fingerprint(model),
        })
    }
}

fn expect_done(r: &Reader) -> Result<(), SessionFormatError> {
    if r.is_done() {
        Ok(())
    } else {
        Err(SessionFormatError::Corrupt(
            "unexpected bytes after the end of the memory".into(),
        ))
    }
}

/// The memory layout as a memory's core names it (what [`CoreHeader::layout`] is compared with).
pub fn layout_text(layout: &MemoryLayout) -> String {
    layout_config_text(Some(layout.config()))
}

/// The layout as stored and compared: its JSON.
fn layout_config_text(config: Option<&crate::memory::MemoryConfig>) -> String {
    config.map_or_else(String::new, |c| {
        serde_json::to_string(c).expect("a memory layout serialises")
    })
}

#[cfg(test)]
mod tests;
