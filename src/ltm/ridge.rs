//! The padded ridge regression that fits the coefficients B of X̄(t) = Bᵀψ(t)
//! (`infinity-former.md` §1.1, §1.3, §3).
//!
//! G = Fᵀ(F Fᵀ + λI)⁻¹ depends only on the positions, the basis and λ, so it is built once, in f64
//! (F Fᵀ is ill-conditioned with σ = 0.005 RBFs), and cast to the working dtype afterwards.

use super::basis::Basis;
use tch::{Device, Kind, Tensor};

/// The midpoint positions t_l = (l − 0.5)/L, l = 1..L, that the official code's padded grid keeps (§1.3).
pub fn midpoint_positions(len: usize) -> Vec<f64> {
    (1..=len).map(|l| (l as f64 - 0.5) / len as f64).collect()
}

/// The paper's positions t_l = l/L, l = 1..L (§1.1); an option, not the default.
pub fn paper_positions(len: usize) -> Vec<f64> {
    (1..=len).map(|l| l as f64 / len as f64).collect()
}

/// The uniform resampling points u_i = i/M, i = 1..M, at which the old signal is read before an
/// update (§3): 1 included, 0 excluded, not midpoints.
pub fn uniform_sample_positions(num_samples: usize) -> Vec<f64> {
    (1..=num_samples)
        .map(|i| i as f64 / num_samples as f64)
        .collect()
}

/// Where an update puts its M + L vectors (§3): the M old samples at τ·i/M, i = 1..M, then the
/// L new vectors at τ + (1 − τ)·l/L, l = 1..L.
pub fn update_positions(num_samples: usize, chunk_len: usize, contraction: f64) -> Vec<f64> {
    let old = (1..=num_samples).map(|i| contraction * i as f64 / num_samples as f64);
    let new =
        (1..=chunk_len).map(|l| contraction + (1.0 - contraction) * l as f64 / chunk_len as f64);
    old.chain(new).collect()
}

/// The zero-target padding points of a fit of n inner positions: n/2 on each side, spaced 1/n
/// and half a step away from [0, 1], i.e. −(j + ½)/n and 1 + (j + ½)/n for j < n/2.
///
/// For midpoint inner positions this is exactly the official grid of 2n points over [−0.5, 1.5]
/// (§1.3). For the update the code spaces its grid with δ = 1/(2L+M), which §3 calls a harmless
/// typo for 1/(2n); we use 1/(2n), which also handles odd n.
pub fn padding_positions(inner_len: usize) -> (Vec<f64>, Vec<f64>) {
    let n = inner_len as f64;
    let below = (0..inner_len / 2)
        .rev()
        .map(|j| -(j as f64 + 0.5) / n)
        .collect();
    let above = (0..inner_len / 2)
        .map(|j| 1.0 + (j as f64 + 0.5) / n)
        .collect();
    (below, above)
}

/// G ∈ R^{n×N} for the given inner positions: the rows of Fᵀ(F Fᵀ + λI)⁻¹ that belong to the
/// inner positions, where F is evaluated at the inner positions *and* the zero-target padding of
/// [`padding_positions`] (§1.3). The result is f64 on the CPU.
///
/// Dropping the padding rows is the same as fitting with targets 0 at the padding positions:
/// it pulls the signal to 0 outside [0, 1] and removes edge artefacts.
pub fn padded_ridge_operator(basis: &Basis, inner: &[f64], ridge_penalty: f64) -> Tensor {
    let (below, above) = padding_positions(inner.len());
    let all: Vec<f64> = below.iter().chain(inner).chain(&above).copied().collect();
    let design = basis.evaluate_at(&all).transpose(0, 1); // F: [N, P]
    let gram = design.matmul(&design.transpose(0, 1)) // F Fᵀ + λI: [N, N]
        + Tensor::eye(basis.len() as i64, (Kind::Double, Device::Cpu)) * ridge_penalty;
    // (F Fᵀ + λI)⁻¹ F = solve(gram, F); G = its transpose, restricted to the inner rows.
    let full = Tensor::linalg_solve(&gram, &design, true).transpose(0, 1); // [P, N]
    full.narrow(0, below.len() as i64, inner.len() as i64)
        .contiguous()
}

/// The fit Bᵀ = Xᵀ G, written as B = Gᵀ X: vectors `[..., L, e]` → coefficients `[..., N, e]`.
pub fn fit_coefficients(operator: &Tensor, vectors: &Tensor) -> Tensor {
    operator.transpose(0, 1).matmul(vectors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn midpoint_padding_is_the_official_grid_over_minus_half_to_one_and_a_half() {
        let len = 6;
        let (below, above) = padding_positions(len);
        let all: Vec<f64> = below
            .iter()
            .chain(&midpoint_positions(len))
            .chain(&above)
            .copied()
            .collect();
        // p_k = −0.5 + 1/(2L) + k/L, k = 0..2L−1
        let official: Vec<f64> = (0..2 * len)
            .map(|k| -0.5 + 0.5 / len as f64 + k as f64 / len as f64)
            .collect();
        for (a, b) in all.iter().zip(&official) {
            assert!((a - b).abs() < 1e-12, "{all:?} vs {official:?}");
        }
        assert_eq!(all.len(), official.len());
    }

    #[test]
    fn update_positions_put_old_in_zero_tau_and_new_in_tau_one() {
        let p = update_positions(4, 2, 0.5);
        assert_eq!(p, vec![0.125, 0.25, 0.375, 0.5, 0.75, 1.0]);
    }
}
