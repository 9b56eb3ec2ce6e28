//! The session-memory flags shared by every command that runs the model (`infinity-former.md` §9.7):
//! each tier's size, each switchable, every flag also an `INFINI_*` environment variable.

use std::path::PathBuf;

use clap::Args;

use crate::ltm::LtmConfig;
use crate::memory::{MemoryConfig, Retention};

/// How a conversation's memory is laid out.
#[derive(Args, Debug, Clone)]
pub struct MemoryArgs {
    /// Use the plain KV cache instead of the session memory (every token exact, stops at the
    /// model's trained context).
    #[arg(long, env = "INFINI_KV_CACHE")]
    pub kv_cache: bool,
    /// Attention sinks: the first tokens of a conversation, kept for good (0: off).
    #[arg(long, env = "INFINI_SINKS", default_value_t = MemoryConfig::default().sinks)]
    pub sinks: usize,
    /// Tokens of the exact short-term window (L_stm).
    #[arg(long, env = "INFINI_STM_LEN", default_value_t = MemoryConfig::default().stm_len)]
    pub stm_len: usize,
    /// Archive blocks each query segment reads (0: archive off).
    #[arg(long, env = "INFINI_TOP_K_BLOCKS", default_value_t = MemoryConfig::default().top_k_blocks)]
    pub top_k_blocks: usize,
    /// Most tokens the exact archive keeps; the blocks that leave go to the continuous signal
    /// (0: off).
    #[arg(long, env = "INFINI_ARCHIVE_BUDGET", default_value_t = MemoryConfig::default().archive_budget)]
    pub archive_budget: usize,
    /// Which blocks leave an archive over its budget: the oldest (fifo) or those the conversation
    /// read least (sticky: attention mass received, fading with a half-life of 65,536 tokens).
    #[arg(long, env = "INFINI_ARCHIVE_RETENTION", value_enum, default_value_t = Retention::Fifo)]
    pub archive_retention: Retention,
    /// Most bytes a session's archive holds, over every layer (as well as --archive-budget tokens:
    /// the smaller wins; none by default).
    #[arg(long, env = "INFINI_ARCHIVE_BUDGET_BYTES")]
    pub archive_budget_bytes: Option<u64>,
    /// Keep the archive's keys and values as int8 (per token and head; half the bytes of bf16).
    #[arg(long, env = "INFINI_ARCHIVE_INT8")]
    pub archive_int8: bool,
    /// Keep the archive's buffers in memory-mapped (already unlinked) files in this directory, so
    /// the OS pages them out to disk under memory pressure (default: RAM). Needs the CPU.
    #[arg(long, env = "INFINI_SPILL_DIR")]
    pub spill_dir: Option<PathBuf>,
    /// Switch the ∞-former continuous signal off (what leaves the archive is then dropped).
    #[arg(long, env = "INFINI_NO_LTM")]
    pub no_ltm: bool,
    /// Do not count which archive blocks each turn reads (the memory map's heat strip).
    #[arg(long, env = "INFINI_NO_READ_COUNTS")]
    pub no_read_counts: bool,
    /// Print the memory's statistics (tokens and bytes per tier) after each reply.
    #[arg(long, env = "INFINI_MEMORY_STATS")]
    pub memory_stats: bool,
}

impl MemoryArgs {
    /// The layout these flags describe (checked against the model when the layout is built).
    pub fn config(&self) -> MemoryConfig {
        MemoryConfig {
            sinks: self.sinks,
            stm_len: self.stm_len,
            top_k_blocks: self.top_k_blocks,
            archive_budget: self.archive_budget,
            archive_retention: self.archive_retention,
            archive_budget_bytes: self.archive_budget_bytes,
            ltm: (!self.no_ltm).then(LtmConfig::default),
            archive_int8: self.archive_int8,
            spill_dir: self.spill_dir.clone(),
            count_reads: !self.no_read_counts,
            ..MemoryConfig::default()
        }
    }
}
