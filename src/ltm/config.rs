//! Every constant of the ∞-former's long-term memory in one documented value.
//!
//! Defaults are the GPT-2 column of `infinity-former.md` §7.4 (the constants of the released GPT-2
//! fine-tuning and dialogue code), plus the knobs of this project's Gibbs reading (§9.2).

use serde::{Deserialize, Serialize};

/// Where the L vectors of one memory input sit on [0, 1] for the first fit (§1.3, §7.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenPositions {
    /// The official code's midpoints t_l = (l − 0.5)/L, with zero-valued padding outside [0, 1].
    Midpoints,
    /// The paper's t_l = l/L (offered for comparison only; the reported results use midpoints).
    PaperUniform,
}

/// Configuration of one long-term memory (one per layer of a model, shared by all its sessions).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LtmConfig {
    /// N, the number of Gaussian RBFs (`long_term_attention_basis`): N/2 centres × the widths below
    /// (§1.2). 512 in every released script. Must be a multiple of the number of widths.
    pub num_basis: usize,
    /// The RBF standard deviations s; every centre is used with each of them, widths alternating
    /// (§1.2). {0.005, 0.01} for GPT-2 and dialogue, {0.01, 0.05} for sorting.
    pub widths: Vec<f64>,
    /// λ, the ridge penalty of the fit Bᵀ = Xᵀ G (§1.1, §1.3). 0.5 for GPT-2, 1.0 for sorting.
    pub ridge_penalty: f64,
    /// τ, the contraction factor of the unbounded update: the old signal is squeezed into [0, τ]
    /// and the new chunk placed in [τ, 1] (§3). 0.5 for GPT-2, 0.75 for sorting.
    pub contraction: f64,
    /// M (`nb_samples`), how many points of the old signal are resampled at each update (§3).
    pub num_samples: usize,
    /// Sticky memories: resample the old signal where attention went, not uniformly (§4).
    pub sticky: bool,
    /// D, the number of equal bins of the attention-mass histogram for sticky memories (§4).
    pub sticky_bins: usize,
    /// Place sticky samples uniformly inside their bin (recommended, §4 and §9.6) instead of at
    /// the bin's left edge, as the released code does.
    pub sticky_jitter: bool,
    /// Lower clamp of σ² in the learned Gaussian reading (§2.1): 1e-4 for GPT-2, 1e-6 for sorting.
    pub min_variance: f64,
    /// σ_0 of the variance-only KL regulariser (§7.1).
    pub kl_prior_std: f64,
    /// Weight of the KL term in the loss (§7.1): 1e-6 for sorting and GPT-2.
    pub kl_weight: f64,
    /// R, the quadrature points of the Gibbs reading, midpoints of [0, 1] (§9.2).
    pub quadrature_points: usize,
    /// Upper cap of the Gibbs reading's density weight w_k (tokens one point stands for); `None`
    /// leaves it uncapped, which §9.6 measured to drown the short-term memory.
    pub max_density_weight: Option<f64>,
    /// Token positions of the first fit.
    pub positions: TokenPositions,
    /// Wipe the memory once this many tokens were absorbed (the GPT-2 code's 2048); `None` never.
    pub reset_after_tokens: Option<usize>,
}

impl Default for LtmConfig {
    fn default() -> Self {
        Self {
            num_basis: 512,
            widths: vec![0.005, 0.01],
            ridge_penalty: 0.5,
            contraction: 0.5,
            num_samples: 512,
            sticky: false,
            sticky_bins: 128,
            sticky_jitter: true,
            min_variance: 1e-4,
            kl_prior_std: 0.05,
            kl_weight: 1e-6,
            quadrature_points: 256,
            max_density_weight: Some(4.0),
            positions: TokenPositions::Midpoints,
            reset_after_tokens: None,
        }
    }
}

/// A configuration value that cannot describe a memory.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LtmConfigError {
    #[error("ltm.num_basis = {num_basis} must be a positive multiple of the {widths} widths, with at least two centres")]
    BasisNotDivisible { num_basis: usize, widths: usize },
    #[error("ltm.widths must be non-empty and every width positive, got {0:?}")]
    BadWidths(Vec<f64>),
    #[error("ltm.{field} = {value} is out of range: {expected}")]
    OutOfRange {
        field: &'static str,
        value: f64,
        expected: &'static str,
    },
}

impl LtmConfig {
    /// The sorting column of §7.4 (Transformer-XL on the synthetic task of §5.1).
    pub fn sorting() -> Self {
        Self {
            widths: vec![0.01, 0.05],
            ridge_penalty: 1.0,
            contraction: 0.75,
            min_variance: 1e-6,
            ..Self::default()
        }
    }

    /// Checks every field; the error names the field and the allowed range.
    pub fn validate(&self) -> Result<(), LtmConfigError> {
        let widths = self.widths.len();
        if widths == 0 || self.widths.iter().any(|w| !(w.is_finite() && *w > 0.0)) {
            return Err(LtmConfigError::BadWidths(self.widths.clone()));
        }
        if !self.num_basis.is_multiple_of(widths) || self.num_basis / widths < 2 {
            return Err(LtmConfigError::BasisNotDivisible {
                num_basis: self.num_basis,
                widths,
            });
        }
        let checks: [(&'static str, f64, bool, &'static str); 7] = [
            (
                "ridge_penalty",
                self.ridge_penalty,
                self.ridge_penalty >= 0.0,
                ">= 0",
            ),
            (
                "contraction",
                self.contraction,
                self.contraction > 0.0 && self.contraction < 1.0,
                "strictly between 0 and 1",
            ),
            (
                "num_samples",
                self.num_samples as f64,
                self.num_samples > 0,
                ">= 1",
            ),
            (
                "sticky_bins",
                self.sticky_bins as f64,
                self.sticky_bins > 0,
                ">= 1",
            ),
            (
                "min_variance",
                self.min_variance,
                self.min_variance > 0.0,
                "> 0",
            ),
            (
                "kl_prior_std",
                self.kl_prior_std,
                self.kl_prior_std > 0.0,
                "> 0",
            ),
            (
                "quadrature_points",
                self.quadrature_points as f64,
                self.quadrature_points > 0,
                ">= 1",
            ),
        ];
        for (field, value, ok, expected) in checks {
            if !ok {
                return Err(LtmConfigError::OutOfRange {
                    field,
                    value,
                    expected,
                });
            }
        }
        if let Some(cap) = self.max_density_weight {
            if cap.is_nan() || cap <= 0.0 {
                return Err(LtmConfigError::OutOfRange {
                    field: "max_density_weight",
                    value: cap,
                    expected: "> 0",
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_gpt2_column_and_valid() {
        let c = LtmConfig::default();
        assert_eq!((c.num_basis, c.num_samples, c.sticky_bins), (512, 512, 128));
        assert_eq!((c.ridge_penalty, c.contraction), (0.5, 0.5));
        assert_eq!(c.widths, vec![0.005, 0.01]);
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(LtmConfig::sorting().validate(), Ok(()));
    }

    #[test]
    fn invalid_fields_are_named() {
        let c = LtmConfig {
            num_basis: 511,
            ..LtmConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(LtmConfigError::BasisNotDivisible { .. })
        ));
        let c = LtmConfig {
            contraction: 1.0,
            ..LtmConfig::default()
        };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("ltm.contraction"), "{err}");
    }
}
