//! Sticky memories (`infinity-former.md` §4): a D-bin histogram of attention mass over [0, 1],
//! and M resampling points drawn from it, so that regions that were attended take up more of
//! [0, τ] after the next update.

use std::f64::consts::SQRT_2;
use tch::{Kind, Tensor};

/// Attention mass per bin of the learned Gaussian reading (§4).
///
/// `mean` and `variance` are `[B, ...]` (every head and query of the last forward call); the mass
/// of bin j is Σ Φ((b_{j+1} − μ)/σ) − Φ((b_j − μ)/σ) over everything but the batch dimension.
/// The bin edges are linspace(0, 1, D + 1) with the outer two widened by 1e-6, as in the code;
/// mass outside [0, 1] is lost. No gradient flows.
pub fn gaussian_mass_histogram(mean: &Tensor, variance: &Tensor, bins: usize) -> Tensor {
    let (kind, device) = (mean.kind(), mean.device());
    let batch = mean.size()[0];
    let mut edges: Vec<f64> = (0..=bins).map(|j| j as f64 / bins as f64).collect();
    edges[0] = -1e-6;
    edges[bins] = 1.0 + 1e-6;
    let edges = Tensor::from_slice(&edges).to_kind(kind).to_device(device);
    let mean = mean.detach().reshape([batch, -1, 1]);
    let std = variance.detach().sqrt().reshape([batch, -1, 1]);
    let cdf = ((edges - mean) / (std * SQRT_2)).erf() * 0.5 + 0.5; // [B, Q, D + 1]
    let mass = cdf.slice(2, 1, bins as i64 + 1, 1) - cdf.slice(2, 0, bins as i64, 1);
    mass.sum_dim_intlist(1, false, kind).clamp_min(0.0)
}

/// Attention mass per bin of the Gibbs reading (§9.2): the softmax mass `[B, ..., R]` that landed
/// on each quadrature point, summed over heads and queries and binned by the point's position `[R]`.
pub fn point_mass_histogram(mass: &Tensor, positions: &Tensor, bins: usize) -> Tensor {
    let batch = mass.size()[0];
    let points = *mass.size().last().expect("mass has a point dimension");
    let per_point =
        mass.detach()
            .reshape([batch, -1, points])
            .sum_dim_intlist(1, false, mass.kind());
    let index = (positions * bins as f64)
        .floor()
        .clamp(0.0, bins as f64 - 1.0)
        .to_kind(Kind::Int64);
    let index = index
        .to_device(mass.device())
        .unsqueeze(0)
        .expand([batch, points], false);
    Tensor::zeros([batch, bins as i64], (mass.kind(), mass.device()))
        .scatter_add(1, &index, &per_point)
}

/// M resampling points per session `[B, M]`, sorted, drawn i.i.d. with replacement from the
/// histogram `[B, D]` (every row must have positive mass; §4).
///
/// With `jitter` each point is uniform inside its bin, (j + U)/D, as §4 and §9.6 recommend; without
/// it every point sits at its bin's left edge j/D, as the released code does. Uses torch's global
/// generator (`tch::manual_seed` makes it reproducible).
pub fn sample_positions(histogram: &Tensor, num_samples: usize, jitter: bool) -> Tensor {
    let bins = histogram.size()[1] as f64;
    let probabilities = histogram.to_kind(Kind::Double).clamp_min(0.0);
    let drawn = probabilities
        .multinomial(num_samples as i64, true)
        .to_kind(histogram.kind());
    let offset = if jitter {
        drawn.rand_like()
    } else {
        drawn.zeros_like()
    };
    let (sorted, _) = ((drawn + offset) / bins).sort(-1, false);
    sorted
}
