//! The knobs of a session's four-tier memory (`infinity-former.md` §9.7), every tier switchable.

use crate::ltm::LtmConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// How one session's memory is laid out, per layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryConfig {
    /// Attention sinks: the first tokens of a session, kept exact for good (StreamingLLM; §9.6:
    /// perplexity past the window falls from 29.1 to 15.6). 0 switches the tier off.
    pub sinks: usize,
    /// L_stm: the most recent tokens, exact (§9.1). Never more than the model's trained context.
    /// 512 by default: a step then reads the same 4 + 512 + 8·64 = 1,028 keys from the 600th token
    /// on, so its cost stays within a few percent from 1k to 32k tokens (`docs/MEMORY.md`); 1,024
    /// reads 1,540 keys once the archive fills, 21% more per token than at 1k, for 2.5–3% lower
    /// perplexity and the same pass keys (`docs/EVALUATION.md`).
    pub stm_len: usize,
    /// Tokens per archive block; the STM evicts whole blocks (§9.7: 64).
    pub block_len: usize,
    /// Blocks each query segment reads from the archive, chosen by the relevance of each block's
    /// representative key to the segment's queries (§9.7: 8). 0 switches the archive off.
    pub top_k_blocks: usize,
    /// Most tokens the exact archive holds; the blocks `archive_retention` lets go go to the
    /// continuous signal (or are dropped when it is off). Rounded down to whole LTM chunks.
    pub archive_budget: usize,
    /// Which blocks leave an archive over its budget: the oldest (`fifo`) or the least read
    /// (`sticky`, [`Retention::Sticky`]). Written to a session's layout only when sticky, so
    /// layouts saved before it existed still match.
    #[serde(default, skip_serializing_if = "Retention::is_fifo")]
    pub archive_retention: Retention,
    /// Most bytes a session's archive holds (keys, values, scales and representatives over every
    /// layer), as well as `archive_budget` tokens: the smaller wins. Resolved into
    /// `archive_budget` for a model ([`crate::memory::MemoryLayout::for_model`]), so it is no
    /// part of a session's stored layout.
    #[serde(skip)]
    pub archive_budget_bytes: Option<u64>,
    /// The ∞-former continuous signal (§1–4, read by the Gibbs reading of §9.2); `None` switches
    /// the tier off. Its chunk length is `ltm_chunk_len`.
    pub ltm: Option<LtmConfig>,
    /// Tokens absorbed into the signal per update (C of §9.1, 512).
    pub ltm_chunk_len: usize,
    /// Keep the archive's keys and values as int8 (per token and head, absmax scale): half the
    /// bytes of bf16, dequantised only for the k blocks a segment reads. Written to a session's
    /// layout only when on, so layouts saved before it existed still match.
    #[serde(default, skip_serializing_if = "is_false")]
    pub archive_int8: bool,
    /// A directory for the archive's buffers as memory-mapped, already unlinked files (the OS
    /// pages them out instead of holding them in RAM); `None` keeps them in RAM. Where the bytes
    /// live changes no number, so it is no part of a session's stored layout.
    #[serde(skip)]
    pub spill_dir: Option<PathBuf>,
    /// Count how often each archive block is selected during a turn (the memory map's heat
    /// strip, `GET /v1/sessions/{id}/memory`). It changes no number of the memory, so it is no
    /// part of a session's stored layout.
    #[serde(skip, default = "counting_reads")]
    pub count_reads: bool,
}

/// Which archive blocks leave when the archive is over its budget (issue 19), a chunk at a time:
/// * `Fifo`: the oldest; the signal's time axis is the conversation's.
/// * `Sticky`: the blocks the conversation read least, by their stickiness: the attention mass
///   their keys received when selected, over layers, KV heads, query heads and queries, fading by
///   half per [`crate::memory::archive::STICKY_HALF_LIFE`] blocks that join the archive (the
///   archive-level analogue of §4's sticky histogram). The newest blocks are not judged until
///   they had a chance to be read ([`crate::memory::archive::protected_blocks`]); equally sticky
///   blocks leave oldest first, so an archive nothing reads loses its blocks as `Fifo` does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Retention {
    #[default]
    Fifo,
    Sticky,
}

impl Retention {
    fn is_fifo(&self) -> bool {
        *self == Retention::Fifo
    }
}

fn is_false(value: &bool) -> bool {
    !value
}

fn counting_reads() -> bool {
    true
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            sinks: 4,
            stm_len: 512,
            block_len: 64,
            top_k_blocks: 8,
            archive_budget: 131_072,
            archive_retention: Retention::Fifo,
            archive_budget_bytes: None,
            ltm: Some(LtmConfig::default()),
            ltm_chunk_len: 512,
            archive_int8: false,
            spill_dir: None,
            count_reads: true,
        }
    }
}

/// A memory layout that cannot work, naming the field.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MemoryConfigError {
    #[error("memory.{field} = {value}: {expected}")]
    OutOfRange {
        field: &'static str,
        value: usize,
        expected: String,
    },
    #[error("memory.spill_dir = {dir}: {reason}")]
    SpillDir { dir: String, reason: String },
    #[error("memory.ltm: {0}")]
    Ltm(#[from] crate::ltm::LtmConfigError),
}

impl MemoryConfig {
    /// The plain sliding window (STM only): every other tier off.
    pub fn stm_only(stm_len: usize) -> Self {
        Self {
            sinks: 0,
            stm_len,
            top_k_blocks: 0,
            archive_budget: 0,
            ltm: None,
            ..Self::default()
        }
    }

    /// Whether the exact archive is on.
    pub fn archive_enabled(&self) -> bool {
        self.top_k_blocks > 0 && self.archive_budget > 0
    }

    /// Checks the spill directory (when one is set): an existing directory, and a model on the CPU
    /// (a mapped file is host memory).
    pub fn validate_spill(&self, device: tch::Device) -> Result<(), MemoryConfigError> {
        let Some(dir) = &self.spill_dir else {
            return Ok(());
        };
        let error = |reason: &str| {
            Err(MemoryConfigError::SpillDir {
                dir: dir.display().to_string(),
                reason: reason.into(),
            })
        };
        if device != tch::Device::Cpu {
            return error("spilling the archive to disk needs the model on the CPU");
        }
        if !dir.is_dir() {
            return error("not an existing directory");
        }
        Ok(())
    }

    /// Checks the layout against the model's trained context.
    pub fn validate(&self, context_len: usize) -> Result<(), MemoryConfigError> {
        let out = |field, value, expected: String| {
            Err(MemoryConfigError::OutOfRange {
                field,
                value,
                expected,
            })
        };
        if self.block_len == 0 {
            return out("block_len", self.block_len, ">= 1".into());
        }
        if self.stm_len < self.block_len {
            return out(
                "stm_len",
                self.stm_len,
                format!(">= block_len ({})", self.block_len),
            );
        }
        if self.sinks + self.stm_len + self.block_len + 1 > context_len {
            return out(
                "stm_len",
                self.stm_len,
                format!("sinks + stm_len + block_len + 1 must fit the model's context of {context_len} tokens"),
            );
        }
        if self.ltm_chunk_len == 0 || !self.ltm_chunk_len.is_multiple_of(self.block_len) {
            return out(
                "ltm_chunk_len",
                self.ltm_chunk_len,
                format!("a positive multiple of block_len ({})", self.block_len),
            );
        }
        if self.archive_enabled() && self.archive_budget < self.ltm_chunk_len {
            return out(
                "archive_budget",
                self.archive_budget,
                format!(">= ltm_chunk_len ({}) or 0 (off)", self.ltm_chunk_len),
            );
        }
        if let Some(ltm) = &self.ltm {
            ltm.validate()?;
        }
        Ok(())
    }
}
