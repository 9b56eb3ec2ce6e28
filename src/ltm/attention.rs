//! Reading the long-term memory: the paper's continuous attention with a learned Gaussian density
//! (`infinity-former.md` §2), and this project's training-free Gibbs reading, where a pretrained
//! layer's own queries and keys define the density and the memory shares one softmax with the
//! short-term memory (§9.2).

use super::basis::Basis;
use tch::{nn, Kind, Tensor};

/// The learned parameters of the Gaussian reading of one layer: w_μ, w_σ ∈ R^N, each a bias-free
/// `Linear(N → 1)` shared by all heads of the layer (§2.1).
#[derive(Debug)]
pub struct GaussianReading {
    pub w_mean: Tensor,
    pub w_variance: Tensor,
    min_variance: f64,
}

/// What one Gaussian read returns: the context and the density it used, per (batch, head, query).
#[derive(Debug)]
pub struct GaussianRead {
    /// z = V_hᵀ r `[B, H, T, d]` (§2.3).
    pub context: Tensor,
    /// μ = sigmoid(w_μᵀ s) `[B, H, T]`.
    pub mean: Tensor,
    /// σ² = max(softplus(w_σᵀ s), min_variance) `[B, H, T]`.
    pub variance: Tensor,
}

impl GaussianReading {
    /// New parameters under `path` (`w_mean`, `w_variance`), initialised N(0, 0.02) as GPT-2's
    /// initialiser does for the code's new Linear layers (§5.3).
    pub fn new(path: &nn::Path, num_basis: usize, min_variance: f64) -> Self {
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        Self {
            w_mean: path.var("w_mean", &[num_basis as i64], init),
            w_variance: path.var("w_variance", &[num_basis as i64], init),
            min_variance,
        }
    }

    /// A reading with the given parameters `[N]` (e.g. loaded from a checkpoint).
    pub fn from_parameters(w_mean: Tensor, w_variance: Tensor, min_variance: f64) -> Self {
        Self {
            w_mean,
            w_variance,
            min_variance,
        }
    }

    /// Continuous attention of queries `[B, H, T, d]` over keys and values `[B, H, N, d]` derived
    /// from the coefficients (K = B W^K, V = B W^V, §1.4):
    /// s = q·Kᵀ/√d ∈ R^N, μ = sigmoid(w_μᵀ s), σ² = softplus(w_σᵀ s) clamped below,
    /// r = E_{N(μ,σ²)}\[ψ\] in closed form, z = Vᵀ r (§2.1–2.3).
    pub fn read(
        &self,
        basis: &Basis,
        queries: &Tensor,
        keys: &Tensor,
        values: &Tensor,
    ) -> GaussianRead {
        let head_dim = *queries
            .size()
            .last()
            .expect("queries have a feature dimension") as f64;
        let scores = (queries / head_dim.sqrt()).matmul(&keys.transpose(-1, -2)); // [B, H, T, N]
        let mean = scores.matmul(&self.w_mean).sigmoid();
        let variance = scores
            .matmul(&self.w_variance)
            .softplus()
            .clamp_min(self.min_variance);
        let expectation = basis.gaussian_expectation(&mean, &variance); // [B, H, T, N]
        GaussianRead {
            context: expectation.matmul(values),
            mean,
            variance,
        }
    }
}

/// The variance-only KL regulariser of §7.1, KL(N(μ, σ²) ‖ N(μ, σ_0²)) = ½(σ²/σ_0² − ln(σ²/σ_0²) − 1),
/// averaged over every (batch, head, query); the loss adds `kl_weight ×` this (summed over layers).
pub fn variance_kl(variance: &Tensor, prior_std: f64) -> Tensor {
    let ratio = variance / (prior_std * prior_std);
    ((&ratio - ratio.log() - 1.0) * 0.5).mean(variance.kind())
}

/// ln w_k for the R quadrature points of the Gibbs reading (§9.2): w_k = density(r_k)/R, the number
/// of original tokens point k stands for, read from the token-density histogram `[B, D]`, optionally
/// capped (§9.6: uncapped, the bias grows as log(tokens absorbed)). Returns `[B, R]`; a point over
/// no tokens gets ln(1e-30), i.e. no weight.
pub fn quadrature_log_weights(
    token_density: &Tensor,
    positions: &Tensor,
    cap: Option<f64>,
) -> Tensor {
    let bins = token_density.size()[1] as f64;
    let points = positions.size()[0] as f64;
    let index = (positions * bins)
        .floor()
        .clamp(0.0, bins - 1.0)
        .to_kind(Kind::Int64);
    // Tokens per unit of t in the point's bin is count·D; times the cell width 1/R.
    let weight = token_density.index_select(1, &index) * (bins / points);
    let weight = match cap {
        Some(cap) => weight.clamp_max(cap),
        None => weight,
    };
    weight.clamp_min(1e-30).log()
}

/// One group of keys in a joint softmax: keys and values `[B, H, L_i, d]` and an optional additive
/// logit bias broadcastable to `[B, H, T, L_i]` (ln w_k for memory points, −∞ to hide a slot).
#[derive(Debug, Clone, Copy)]
pub struct KeyGroup<'a> {
    pub keys: &'a Tensor,
    pub values: &'a Tensor,
    pub bias: Option<&'a Tensor>,
}

/// The result of a joint read.
#[derive(Debug)]
pub struct JointRead {
    /// Attention output `[B, H, T, d]`.
    pub context: Tensor,
    /// Softmax mass on every key of each group, `[B, H, T, L_i]` in the groups' order (the mass on
    /// memory points feeds sticky memories, §9.2).
    pub probabilities: Vec<Tensor>,
    /// ln Σ exp(logit) over every key of every group, `[B, H, T, 1]`: what merges this read with a
    /// read of other keys into one softmax.
    pub log_normaliser: Tensor,
}

/// One softmax over several groups of keys: sinks, short-term memory, archive blocks and memory
/// points alike (§9.2, §9.7).
///
/// Queries `[B, H, T, d]`, already rotated; each group's keys already rotated to where they are read
/// (the memory's at the memory position). Logits are q·k/√d plus the group's bias, so with an exact
/// signal and ln w_k = 0 this is attention over every past token, and with a compressed signal it
/// is p(t) ∝ density(t)·exp(q·k(t)/√d) by the midpoint rule. Logits are formed per group and only
/// they are concatenated, so no key or value tensor is copied.
pub fn joint_attention(queries: &Tensor, groups: &[KeyGroup]) -> JointRead {
    let head_dim = *queries
        .size()
        .last()
        .expect("queries have a feature dimension") as f64;
    let scaled = queries / head_dim.sqrt();
    let logits: Vec<Tensor> = groups
        .iter()
        .map(|g| {
            let logits = scaled.matmul(&g.keys.transpose(-1, -2)); // [B, H, T, L_i]
            match g.bias {
                Some(bias) => logits + bias,
                None => logits,
            }
        })
        .collect();
    let lengths: Vec<i64> = logits
        .iter()
        .map(|l| *l.size().last().expect("logits"))
        .collect();
    let logits = Tensor::cat(&logits, -1);
    let log_normaliser = logits.logsumexp([-1].as_slice(), true);
    let probabilities = (logits - &log_normaliser)
        .exp()
        .split_with_sizes(&lengths, -1);
    let context = probabilities
        .iter()
        .zip(groups)
        .map(|(p, g)| p.matmul(g.values))
        .reduce(|a, b| a + b)
        .expect("at least one key group");
    JointRead {
        context,
        probabilities,
        log_normaliser,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quadrature_weights_count_the_tokens_each_point_stands_for() {
        // 4 bins holding 8, 0, 2, 30 tokens; 8 points, two per bin: each stands for half its bin.
        let density = Tensor::from_slice(&[8.0f64, 0.0, 2.0, 30.0]).view([1, 4]);
        let points = Tensor::from_slice(&crate::ltm::ridge::midpoint_positions(8));
        let w: Vec<f64> = Vec::try_from(
            quadrature_log_weights(&density, &points, None)
                .exp()
                .view([-1]),
        )
        .unwrap();
        let expected = [4.0, 4.0, 0.0, 0.0, 1.0, 1.0, 15.0, 15.0];
        assert!(
            w.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-12),
            "{w:?}"
        );
        let capped: Vec<f64> = Vec::try_from(
            quadrature_log_weights(&density, &points, Some(4.0))
                .exp()
                .view([-1]),
        )
        .unwrap();
        assert_eq!(capped[6], 4.0);
    }
}
