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
pub use config::{MemoryConfig, MemoryConfigError, Retention};
pub use layer::{LayerMemory, LayerShape, LayerTurnReads, TierStats};

use crate::ltm::MemoryOperators;
use crate::model::Llama;
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

    /// [`MemoryLayout::new`] for `model`, with `archive_budget_bytes` resolved: the token budget
    /// becomes the smaller of the two, in whole LTM chunks.
    pub fn for_model(mut config: MemoryConfig, model: &Llama) -> Result<Self, MemoryConfigError> {
        if let Some(bytes) = config.archive_budget_bytes {
            let shape = model.config();
            let per_token = archive_bytes_per_token(
                &config,
                [shape.num_layers, shape.num_kv_heads, shape.head_dim],
                model.options().precision.activation_kind(),
            );
            let chunk = config.ltm_chunk_len as u64;
            let tokens = bytes / per_token / chunk * chunk;
            if tokens < chunk {
                return Err(MemoryConfigError::OutOfRange {
                    field: "archive_budget_bytes",
                    value: bytes as usize,
                    expected: format!(
                        ">= {} (one LTM chunk of {chunk} tokens at {per_token} bytes per token)",
                        chunk * per_token
                    ),
                });
            }
            config.archive_budget = config.archive_budget.min(tokens as usize);
        }
        Self::new(
            config,
            model.config().max_position_embeddings as usize,
            model.options().device,
        )
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

/// Bytes one archived token takes in a session of `[layers, H_kv, D]` holding activations of
/// `kind`: keys and values (int8 codes and a scale per head each, or `kind`), and a
/// `block_len`-th of a representative key, in every layer (docs/MEMORY.md, "Bytes per token").
fn archive_bytes_per_token(
    config: &MemoryConfig,
    [layers, kv_heads, head_dim]: [i64; 3],
    kind: Kind,
) -> u64 {
    let element = kind.elt_size_in_bytes() as u64;
    let (kv_heads, head_dim) = (kv_heads as u64, head_dim as u64);
    let rows = if config.archive_int8 {
        2 * kv_heads * (head_dim + element)
    } else {
        2 * kv_heads * head_dim * element
    };
    let representative = kv_heads * head_dim * element / config.block_len as u64;
    layers as u64 * (rows + representative)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes per token of docs/MEMORY.md's table (SmolLM2-135M: 30 layers, 3 KV heads of 64,
    /// bf16), which `--memory-stats` measures.
    #[test]
    fn archive_bytes_per_token_match_the_measured_table() {
        let shape = [30, 3, 64];
        let bf16 = MemoryConfig::default();
        assert_eq!(
            archive_bytes_per_token(&bf16, shape, Kind::BFloat16),
            23_220
        );
        let int8 = MemoryConfig {
            archive_int8: true,
            ..MemoryConfig::default()
        };
        assert_eq!(
            archive_bytes_per_token(&int8, shape, Kind::BFloat16),
            12_060
        );
    }

    /// A byte budget becomes a token budget for the model, in whole LTM chunks, when it is the
    /// smaller; one that holds no chunk is refused, naming the field.
    #[test]
    fn a_byte_budget_resolves_into_tokens_for_the_model() {
        let model = crate::model::llama::tests::tiny(crate::model::Precision::F32);
        let c = model.config();
        let config = MemoryConfig {
            stm_len: 32,
            block_len: 16,
            ltm_chunk_len: 64,
            ..MemoryConfig::default()
        };
        let per_token = archive_bytes_per_token(
            &config,
            [c.num_layers, c.num_kv_heads, c.head_dim],
            Kind::Float,
        );
        let budget = |bytes| {
            let config = MemoryConfig {
                archive_budget_bytes: Some(bytes),
                ..config.clone()
            };
            MemoryLayout::for_model(config, &model).map(|l| l.config().archive_budget)
        };
        assert_eq!(
            budget(per_token * 150),
            Ok(128),
            "150 tokens of bytes: two chunks"
        );
        assert_eq!(
            budget(u64::MAX),
            Ok(config.archive_budget),
            "the token budget is smaller"
        );
        assert!(matches!(
            budget(per_token * 10),
            Err(MemoryConfigError::OutOfRange {
                field: "archive_budget_bytes",
                ..
            })
        ));
    }
}
