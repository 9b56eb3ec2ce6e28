//! The Gaussian radial basis ψ(t) ∈ R^N of the continuous signal X̄(t) = Bᵀψ(t)
//! (`infinity-former.md` §1.2), and its closed-form expectation under a Gaussian density (§2.2).

use std::f64::consts::PI;
use tch::{Device, Kind, Tensor};

/// N normalised Gaussian densities ψ_j(t) = N(t; c_j, s_j²).
///
/// N/2 centres c = linspace(0, 1, N/2), each used with every width; the widths alternate
/// ((c_0, s_a), (c_0, s_b), (c_1, s_a), …) as the official code's "ij" meshgrid orders them, so
/// checkpoints of that code line up.
#[derive(Clone, Debug, PartialEq)]
pub struct Basis {
    centres: Vec<f64>,
    widths: Vec<f64>,
}

impl Basis {
    /// The basis of §1.2 with `num_basis` functions over the given widths (standard deviations).
    ///
    /// `num_basis` must be a multiple of `widths.len()` with at least two centres;
    /// [`crate::ltm::LtmConfig::validate`] checks this for configured memories.
    pub fn new(num_basis: usize, widths: &[f64]) -> Self {
        assert!(
            !widths.is_empty()
                && num_basis.is_multiple_of(widths.len())
                && num_basis / widths.len() >= 2
        );
        let count = num_basis / widths.len();
        let mut centres = Vec::with_capacity(num_basis);
        let mut per_function_widths = Vec::with_capacity(num_basis);
        for i in 0..count {
            let centre = i as f64 / (count - 1) as f64;
            for &width in widths {
                centres.push(centre);
                per_function_widths.push(width);
            }
        }
        Self {
            centres,
            widths: per_function_widths,
        }
    }

    /// N, the number of basis functions.
    pub fn len(&self) -> usize {
        self.centres.len()
    }

    /// Always false: a basis has at least two functions.
    pub fn is_empty(&self) -> bool {
        self.centres.is_empty()
    }

    /// The centre c_j of every function, as a tensor `[N]`.
    pub fn centres(&self, kind: Kind, device: Device) -> Tensor {
        Tensor::from_slice(&self.centres)
            .to_kind(kind)
            .to_device(device)
    }

    /// The width s_j (a standard deviation) of every function, as a tensor `[N]`.
    pub fn widths(&self, kind: Kind, device: Device) -> Tensor {
        Tensor::from_slice(&self.widths)
            .to_kind(kind)
            .to_device(device)
    }

    /// ψ(t): positions `[..., T]` → `[..., T, N]`, in the positions' dtype and device.
    pub fn evaluate(&self, positions: &Tensor) -> Tensor {
        let (kind, device) = (positions.kind(), positions.device());
        let centres = self.centres(kind, device);
        let widths = self.widths(kind, device);
        let z = (positions.unsqueeze(-1) - centres) / &widths;
        (z.square() * -0.5).exp() / (widths * (2.0 * PI).sqrt())
    }

    /// ψ(t) at positions given on the host, in f64 on the CPU: `[T, N]`.
    pub fn evaluate_at(&self, positions: &[f64]) -> Tensor {
        self.evaluate(&Tensor::from_slice(positions))
    }

    /// r_j = E_{t∼N(μ, σ²)}[ψ_j(t)] = N(μ; c_j, σ² + s_j²), in closed form (§2.2).
    ///
    /// `mean` and `variance` are `[...]`; the result is `[..., N]`. The density is over the whole
    /// real line (not truncated to [0, 1]), as in the official code. Plain autograd through this
    /// expression is the exact gradient the code's custom backward computes.
    pub fn gaussian_expectation(&self, mean: &Tensor, variance: &Tensor) -> Tensor {
        let (kind, device) = (mean.kind(), mean.device());
        let centres = self.centres(kind, device);
        let total_variance = variance.unsqueeze(-1) + self.widths(kind, device).square();
        let diff = mean.unsqueeze(-1) - centres;
        (diff.square() / (&total_variance * -2.0)).exp() / (total_variance * (2.0 * PI)).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centres_and_widths_alternate_as_the_official_meshgrid() {
        let basis = Basis::new(8, &[0.01, 0.05]);
        let centres: Vec<f64> = Vec::try_from(basis.centres(Kind::Double, Device::Cpu)).unwrap();
        let widths: Vec<f64> = Vec::try_from(basis.widths(Kind::Double, Device::Cpu)).unwrap();
        let third = 1.0 / 3.0;
        assert_eq!(
            centres,
            vec![0.0, 0.0, third, third, 2.0 * third, 2.0 * third, 1.0, 1.0]
        );
        assert_eq!(widths, vec![0.01, 0.05, 0.01, 0.05, 0.01, 0.05, 0.01, 0.05]);
    }

    #[test]
    fn each_function_is_a_normalised_density() {
        let basis = Basis::new(8, &[0.01, 0.05]);
        // Riemann sum over a wide fine grid: every ψ_j integrates to 1 within 1e-6.
        let step = 1e-4;
        let grid = Tensor::arange_start_step(-1.0, 2.0, step, (Kind::Double, Device::Cpu));
        let integrals = basis
            .evaluate(&grid)
            .sum_dim_intlist(0, false, Kind::Double)
            * step;
        let max_err = (integrals - 1.0).abs().max().double_value(&[]);
        assert!(max_err < 1e-6, "max |∫ψ − 1| = {max_err}");
    }
}
