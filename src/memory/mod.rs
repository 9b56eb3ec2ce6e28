//! A session's memory inside the real model (`infinity-former.md` §9.7): attention sinks, the
//! short-term window, an exact archive read by per-query block selection, and the ∞-former
//! continuous signal, each switchable, all read in one joint softmax at window-relative positions.
//! Per token the compute is fixed (sinks + STM + k blocks + R points) however long the session.

pub mod archive;
pub mod codec;
pub mod config;
pub mod continuous;
pub mod layer;
pub mod spill;
pub mod window;

pub use codec::SessionFormatError;
pub use config::{MemoryConfig, MemoryConfigError};
pub use layer::{LayerMemory, LayerShape, LayerTurnReads, TierStats};

use crate::ltm::MemoryOperators;
use tch::{Device, Kind};

/// What every session of one model shares: the layout and the ∞-former operators, built once.
#[derive(Debug)]
pub struct MemoryLayout {
    config: MemoryConfig,
    operators: Option<MemoryOperators>,
}

impl MemoryLayout {
    /// Checks `config` against the model's context and precomputes the signal's operators (f32).
    pub fn new(
        config: MemoryConfig,
        context_len: usize,
        device: Device,
    ) -> Result<Self, MemoryConfigError> {
        config.validate(context_len)?;
        config.validate_spill(device)?;
        let operators = config
            .ltm
            .as_ref()
            .map(|ltm| MemoryOperators::new(ltm, config.ltm_chunk_len, Kind::Float, device));
        Ok(Self { config, operators })
    }

    pub fn config(&self) -> &MemoryConfig {
        &self.config
    }

    /// The signal's operators, shared (no copy), when the continuous tier is on.
    pub fn shared_operators(&self) -> Option<MemoryOperators> {
        self.operators.as_ref().map(MemoryOperators::share)
    }

    /// A fresh memory for `layers` layers.
    pub fn new_session(&self, layers: usize) -> Vec<LayerMemory> {
        (0..layers)
            .map(|_| LayerMemory::new(self.config.clone(), self.shared_operators()))
            .collect()
    }
}
