//! One session's memory, all layers, and its exact byte form.
//!
//! INTERIM (server branch): issue #4's `SessionMemory` replaces this file on merge; the API here
//! is the one it promises. Until then the bytes hold the tokens the memory absorbed, and
//! [`SessionMemory::from_bytes`] rebuilds the memory by running them through the model again
//! (exact under the deterministic CPU kernels, but a cost that grows with the session).

use serde::Serialize;

use crate::memory::{LayerMemory, MemoryLayout, TierStats};
use crate::model::{Llama, LogitsAt, ModelError};

const MAGIC: &[u8; 4] = b"INFS";
const FORMAT_VERSION: u32 = 0;

/// Why stored memory bytes cannot be used with this model.
#[derive(Debug, thiserror::Error)]
pub enum SessionFormatError {
    #[error("session memory is not in infini's format (bad header)")]
    BadHeader,
    #[error("session memory format version {found} is not the supported version {FORMAT_VERSION}")]
    Version { found: u32 },
    #[error("session memory was made by model {found}, this server runs model {expected}")]
    Model { found: String, expected: String },
    #[error("session memory is truncated")]
    Truncated,
    #[error("rebuilding the session memory failed: {0}")]
    Rebuild(#[from] ModelError),
}

/// Tokens and bytes held, summed over layers.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct MemoryStats {
    pub tokens_seen: u64,
    pub ltm_updates: u64,
    pub sink_bytes: usize,
    pub stm_bytes: usize,
    pub archive_bytes: usize,
    pub ltm_bytes: usize,
    pub total_bytes: usize,
}

/// One session's memory: a [`LayerMemory`] per layer.
#[derive(Debug)]
pub struct SessionMemory {
    layers: Vec<LayerMemory>,
    fingerprint: String,
    /// INTERIM: the tokens absorbed, the byte form until issue #4's exact serialisation lands.
    absorbed: Vec<u32>,
}

impl SessionMemory {
    pub fn new(model: &Llama, layout: &MemoryLayout) -> Self {
        Self {
            layers: layout.new_session(model.config().num_layers as usize),
            fingerprint: model_fingerprint(model),
            absorbed: Vec::new(),
        }
    }

    /// The per-layer caches to pass to `generate(model, mem.caches(), …)`.
    pub fn caches(&mut self) -> &mut [LayerMemory] {
        &mut self.layers
    }

    /// INTERIM: tells the memory which tokens it just absorbed (the real one counts them itself).
    pub fn record(&mut self, tokens: &[u32]) {
        self.absorbed.extend_from_slice(tokens);
    }

    pub fn tokens_seen(&self) -> u64 {
        self.absorbed.len() as u64
    }

    pub fn stats(&self) -> MemoryStats {
        let mut stats = MemoryStats {
            tokens_seen: self.tokens_seen(),
            ..MemoryStats::default()
        };
        for layer in &self.layers {
            let TierStats {
                ltm_updates,
                sink_bytes,
                stm_bytes,
                archive_bytes,
                ltm_bytes,
                ..
            } = layer.stats();
            stats.ltm_updates = stats.ltm_updates.max(ltm_updates);
            stats.sink_bytes += sink_bytes;
            stats.stm_bytes += stm_bytes;
            stats.archive_bytes += archive_bytes;
            stats.ltm_bytes += ltm_bytes;
        }
        stats.total_bytes =
            stats.sink_bytes + stats.stm_bytes + stats.archive_bytes + stats.ltm_bytes;
        stats
    }

    /// Magic, format version, fingerprint, then the absorbed tokens (little-endian u32).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.fingerprint.len() + 4 * self.absorbed.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.fingerprint.len() as u32).to_le_bytes());
        out.extend_from_slice(self.fingerprint.as_bytes());
        for token in &self.absorbed {
            out.extend_from_slice(&token.to_le_bytes());
        }
        out
    }

    pub fn from_bytes(
        bytes: &[u8],
        model: &Llama,
        layout: &MemoryLayout,
    ) -> Result<Self, SessionFormatError> {
        let word = |at: usize| -> Result<u32, SessionFormatError> {
            let slice = bytes.get(at..at + 4).ok_or(SessionFormatError::Truncated)?;
            Ok(u32::from_le_bytes(slice.try_into().expect("4 bytes")))
        };
        if bytes.get(..4) != Some(MAGIC.as_slice()) {
            return Err(SessionFormatError::BadHeader);
        }
        let found = word(4)?;
        if found != FORMAT_VERSION {
            return Err(SessionFormatError::Version { found });
        }
        let length = word(8)? as usize;
        let name = bytes
            .get(12..12 + length)
            .ok_or(SessionFormatError::Truncated)?;
        let expected = model_fingerprint(model);
        if name != expected.as_bytes() {
            return Err(SessionFormatError::Model {
                found: String::from_utf8_lossy(name).into_owned(),
                expected,
            });
        }
        let body = &bytes[12 + length..];
        if body.len() % 4 != 0 {
            return Err(SessionFormatError::Truncated);
        }
        let tokens: Vec<u32> = body
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        let mut memory = Self::new(model, layout);
        for part in tokens.chunks(512) {
            let ids: Vec<i64> = part.iter().map(|&t| i64::from(t)).collect();
            let row = tch::Tensor::from_slice(&ids).unsqueeze(0);
            let _ = model.forward(&row, memory.caches(), LogitsAt::Last)?;
        }
        memory.absorbed = tokens;
        Ok(memory)
    }
}

/// Names the model a memory belongs to: its architecture numbers and precision (INTERIM: issue #4
/// hashes the weights too).
pub fn model_fingerprint(model: &Llama) -> String {
    let text = format!("{:?}/{:?}", model.config(), model.options().precision);
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("llama-{hash:016x}")
}
