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
        let init = nn::Init::Randn { mean: 0.0, stdev: 0.02 };
        Self {
            w_mean: path.var("w_mean", &[num_basis as i64], init),
            w_variance: path.var("w_variance", &[num_basis as i64], init),
            min_variance,
        }
    }

    /// A reading with the given parameters `[N]` (e.g. loaded from a checkpoint).
    pub fn from_parameters(w_mean: Tensor, w_variance: Tensor, min_variance: f64) -> Self {
        Self { w_mean, w_variance, min_variance }
    }

    /// Continuous attention of queries `[B, H, T, d]` over keys and values `[B, H, N, d]` derived
    /// from the coefficients (K = B W^K, V = B W^V, §1.4):
    /// s = q·Kᵀ/√d ∈ R^N, μ = sigmoid(w_μᵀ s), σ² = softplus(w_σᵀ s) clamped below,
    /// r = E_{N(μ,σ²)}[ψ] in closed form, z = Vᵀ r (§2.1–2.3).
    pub fn read(&self, basis: &Basis, queries: &Tensor, keys: &Tensor, values: &Tensor) -> GaussianRead {
        let head_dim = *queries.size().last().expect("queries have a feature dimension") as f64;
        let scores = (queries / head_dim.sqrt()).matmul(&keys.transpose(-1, -2)); // [B, H, T, N]
        let mean = scores.matmul(&self.w_mean).sigmoid();
        let variance = scores.matmul(&self.w_variance).softplus().clamp_min(self.min_variance);
        let expectation = basis.gaussian_expectation(&mean, &variance); // [B, H, T, N]
        GaussianRead { context: expectation.matmul(values), mean, variance }
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
pub fn quadrature_log_weights(token_density: &Tensor, positions: &Tensor, cap: Option<f64>) -> Tensor {
    let bins = token_density.size()[1] as f64;
    let points = positions.size()[0] as f64;
    let index = (positions * bins).floor().clamp(0.0, bins - 1.0).to_kind(Kind::Int64);
    // Tokens per unit of t in the point's bin is count·D; times the cell width 1/R.
    let weight = token_density.index_select(1, &index) * (bins / points);
    let weight = match cap {
        Some(cap) => weight.clamp_max(cap),
        None => weight,
    };
    weight.clamp_min(1e-30).log()
}

/// The result of a joint read over the short-term memory and the memory points.
#[derive(Debug)]
pub struct JointRead {
    /// Attention output `[B, H, T, d]`.
    pub context: Tensor,
    /// Softmax mass on each memory point `[B, H, T, R]` (feeds sticky memories, §9.2).
    pub memory_mass: Tensor,
}

/// One softmax over short-term keys and memory points (§9.2).
///
/// Queries `[B, H, T, d]`; short-term keys and values `[B, H, S, d]` with an optional additive mask
/// broadcastable to `[B, H, T, S]` (−∞ hides a slot); memory keys and values `[B, H, R, d]`, already
/// rotated to the memory position by the caller, and their ln w_k `[B, R]`. Logits are q·k/√d for
/// both, plus ln w_k for the memory, so with an exact signal this equals attention over every past
/// token, and with a compressed one p(t) ∝ density(t)·exp(q·k(t)/√d) by the midpoint rule.
pub fn joint_attention(
    queries: &Tensor,
    short_term: (&Tensor, &Tensor, Option<&Tensor>),
    memory: (&Tensor, &Tensor, &Tensor),
) -> JointRead {
    let (stm_keys, stm_values, stm_mask) = short_term;
    let (mem_keys, mem_values, mem_log_weights) = memory;
    let head_dim = *queries.size().last().expect("queries have a feature dimension") as f64;
    let scaled = queries / head_dim.sqrt();
    let mut stm_logits = scaled.matmul(&stm_keys.transpose(-1, -2)); // [B, H, T, S]
    if let Some(mask) = stm_mask {
        stm_logits += mask;
    }
    let mem_logits = scaled.matmul(&mem_keys.transpose(-1, -2)) + mem_log_weights.unsqueeze(1).unsqueeze(1);
    let stm_len = stm_logits.size()[3];
    let mem_len = mem_logits.size()[3];
    let probabilities = Tensor::cat(&[stm_logits, mem_logits], -1).softmax(-1, queries.kind());
    let stm_p = probabilities.narrow(-1, 0, stm_len);
    let mem_p = probabilities.narrow(-1, stm_len, mem_len);
    let context = stm_p.matmul(stm_values) + mem_p.matmul(mem_values);
    JointRead { context, memory_mass: mem_p }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn quadrature_weights_count_the_tokens_each_point_stands_for() {
        // 4 bins holding 8, 0, 2, 30 tokens; 8 points, two per bin: each stands for half its bin.
        let density = Tensor::from_slice(&[8.0f64, 0.0, 2.0, 30.0]).view([1, 4]);
        let points = Tensor::from_slice(&crate::ltm::ridge::midpoint_positions(8));
        let w: Vec<f64> = Vec::try_from(quadrature_log_weights(&density, &points, None).exp().view([-1])).unwrap();
        let expected = [4.0, 4.0, 0.0, 0.0, 1.0, 1.0, 15.0, 15.0];
        assert!(w.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-12), "{w:?}");
        let capped: Vec<f64> =
            Vec::try_from(quadrature_log_weights(&density, &points, Some(4.0)).exp().view([-1])).unwrap();
        assert_eq!(capped[6], 4.0);
        assert_eq!(Device::Cpu, density.device());
    }
}
