//! Every hyper-parameter of the sorting experiment in one typed value, with the paper's preset
//! (`infinity-former.md` §5.1) and a scaled-down preset that trains on a 2-core CPU.

use crate::ltm::{LtmConfig, TokenPositions};
use serde::{Deserialize, Serialize};

/// The decoder, its memories, the optimisation and the data of one sorting run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SortingConfig {
    /// Decoder layers.
    pub layers: usize,
    /// Model width e (= d_model; the LTM works in the same width, as in the sorting code).
    pub d_model: usize,
    /// Attention heads; d_model must be a multiple, and the head size even (RoPE).
    pub heads: usize,
    /// Hidden width of the feed-forward block.
    pub d_inner: usize,
    /// Dropout on the attention and feed-forward outputs while training (0.1 in the paper).
    pub dropout: f64,
    /// Tokens per segment (tgt_len); the short-term memory holds the previous segment, and a
    /// segment leaving it is one LTM chunk of this length (§1.4: mem_len = augment_len = tgt_len).
    pub segment_len: usize,
    /// Whether the ∞-former's long-term memory is on; off, the same decoder is the baseline.
    pub use_ltm: bool,
    /// N, the number of RBFs of the memory signal (§1.2).
    pub num_basis: usize,
    /// M, the points resampled from the old signal per update (§3).
    pub num_samples: usize,
    /// τ, the contraction factor of the update (§3).
    pub contraction: f64,
    /// λ, the ridge penalty (§1.3).
    pub ridge_penalty: f64,
    /// The RBF widths (§1.2).
    pub widths: Vec<f64>,
    /// Lower clamp of σ² (§2.1).
    pub min_variance: f64,
    /// Weight of the variance KL (§7.1).
    pub kl_weight: f64,
    /// σ_0 of the KL prior (§7.1).
    pub kl_prior_std: f64,
    /// Sequence lengths (symbols before the separator) trained on; each batch draws one.
    pub train_lengths: Vec<usize>,
    /// Sequences per optimiser step.
    pub batch_size: usize,
    /// Optimiser steps in total.
    pub steps: usize,
    /// Peak learning rate of Adam.
    pub learning_rate: f64,
    /// Linear warm-up steps before the cosine decay to 0.
    pub warmup_steps: usize,
    /// Global gradient-norm clip.
    pub grad_clip: f64,
    /// Seed of the parameters and of the data.
    pub seed: u64,
}

impl SortingConfig {
    /// The released sorting script's settings (§5.1), at its 8,000-token length; a GPU preset.
    pub fn paper() -> Self {
        let ltm = LtmConfig::sorting();
        Self {
            layers: 3,
            d_model: 300,
            heads: 6,
            d_inner: 300,
            dropout: 0.1,
            segment_len: 1024,
            use_ltm: true,
            num_basis: ltm.num_basis,
            num_samples: ltm.num_samples,
            contraction: ltm.contraction,
            ridge_penalty: ltm.ridge_penalty,
            widths: ltm.widths,
            min_variance: ltm.min_variance,
            kl_weight: ltm.kl_weight,
            kl_prior_std: ltm.kl_prior_std,
            train_lengths: vec![8000],
            batch_size: 8,
            steps: 20_000,
            learning_rate: 2e-4,
            warmup_steps: 0,
            grad_clip: 0.25,
            seed: 1111,
        }
    }

    /// A scaled-down run for this 2-core CPU: the same mechanisms, d_model 64, 2 layers, a
    /// 64-token short-term memory, 64 RBFs, trained on a mix of 64-, 256- and 512-token
    /// sequences (the longest eight times the STM).
    pub fn cpu() -> Self {
        Self {
            layers: 2,
            d_model: 64,
            heads: 4,
            d_inner: 128,
            dropout: 0.0,
            segment_len: 64,
            num_basis: 64,
            num_samples: 64,
            train_lengths: vec![64, 256, 512],
            batch_size: 16,
            steps: 1500,
            learning_rate: 1.5e-3,
            warmup_steps: 100,
            grad_clip: 1.0,
            seed: 1111,
            ..Self::paper()
        }
    }

    /// The memory's configuration for the `ltm` module (sorting column of §7.4, sizes from here).
    pub fn ltm(&self) -> LtmConfig {
        LtmConfig {
            num_basis: self.num_basis,
            widths: self.widths.clone(),
            ridge_penalty: self.ridge_penalty,
            contraction: self.contraction,
            num_samples: self.num_samples,
            sticky: false,
            min_variance: self.min_variance,
            kl_prior_std: self.kl_prior_std,
            kl_weight: self.kl_weight,
            positions: TokenPositions::Midpoints,
            reset_after_tokens: None,
            ..LtmConfig::sorting()
        }
    }

    /// Head size d = d_model / heads.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.heads
    }

    /// Checks every field; the message names the flag and what it must be.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("--layers", self.layers),
            ("--d-model", self.d_model),
            ("--heads", self.heads),
            ("--d-inner", self.d_inner),
            ("--segment-len", self.segment_len),
            ("--batch-size", self.batch_size),
            ("--steps", self.steps),
        ];
        if let Some((flag, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{flag} must be at least 1"));
        }
        if !self.d_model.is_multiple_of(self.heads) || !self.head_dim().is_multiple_of(2) {
            return Err(format!(
                "--d-model {} must be a multiple of --heads {} with an even head size (RoPE)",
                self.d_model, self.heads
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("--dropout {} must be in [0, 1)", self.dropout));
        }
        if self.train_lengths.is_empty() || self.train_lengths.contains(&0) {
            return Err(format!(
                "--train-lengths {:?} must list positive lengths",
                self.train_lengths
            ));
        }
        if !(self.learning_rate > 0.0 && self.grad_clip > 0.0) {
            return Err("--lr and --grad-clip must be positive".into());
        }
        if self.use_ltm {
            self.ltm()
                .validate()
                .map_err(|e| format!("long-term memory: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_the_paper_preset_matches_section_5_1() {
        let paper = SortingConfig::paper();
        assert_eq!(
            (paper.layers, paper.d_model, paper.heads, paper.d_inner),
            (3, 300, 6, 300)
        );
        assert_eq!(
            (paper.segment_len, paper.num_basis, paper.num_samples),
            (1024, 512, 512)
        );
        assert_eq!(
            (paper.contraction, paper.ridge_penalty, paper.learning_rate),
            (0.75, 1.0, 2e-4)
        );
        assert_eq!(
            (paper.batch_size, paper.steps, paper.grad_clip, paper.seed),
            (8, 20_000, 0.25, 1111)
        );
        assert_eq!(paper.validate(), Ok(()));
        assert_eq!(SortingConfig::cpu().validate(), Ok(()));
    }

    #[test]
    fn bad_values_name_their_flag() {
        let c = SortingConfig {
            heads: 5,
            ..SortingConfig::cpu()
        };
        assert!(c.validate().unwrap_err().contains("--heads"));
        let c = SortingConfig {
            num_basis: 63,
            ..SortingConfig::cpu()
        };
        assert!(c.validate().unwrap_err().contains("num_basis"));
        let c = SortingConfig {
            train_lengths: vec![],
            ..SortingConfig::cpu()
        };
        assert!(c.validate().unwrap_err().contains("--train-lengths"));
    }
}
