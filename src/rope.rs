//! Rotary position embedding (RoPE) in the Llama "rotate half" layout: feature i is paired with
//! feature i + d/2, rotated by angle p·θ_i with θ_i = base^(−2i/d).
//!
//! RoPE is relative: rotating every key and query by the same extra angle leaves q·k unchanged,
//! which is what lets the memory use window-relative positions (`infinity-former.md` §9.3) and sit
//! at one fixed position (§9.2).

use tch::{Kind, Tensor};

/// Precomputed inverse frequencies θ_i for one head size.
#[derive(Debug)]
pub struct Rope {
    inverse_frequencies: Vec<f64>,
}

impl Rope {
    pub fn new(head_dim: usize, base: f64) -> Self {
        assert!(
            head_dim % 2 == 0,
            "RoPE needs an even head size, got {head_dim}"
        );
        let half = head_dim / 2;
        let inverse_frequencies = (0..half)
            .map(|i| base.powf(-(2.0 * i as f64) / head_dim as f64))
            .collect();
        Self {
            inverse_frequencies,
        }
    }

    /// Rotates `x` `[..., T, d]` by the positions `[T]` (any float kind; angles in f64).
    pub fn rotate(&self, x: &Tensor, positions: &Tensor) -> Tensor {
        let device = x.device();
        let inv = Tensor::from_slice(&self.inverse_frequencies).to_device(device);
        let angles = positions
            .to_kind(Kind::Double)
            .to_device(device)
            .unsqueeze(-1)
            * inv.unsqueeze(0); // [T, d/2]
        let angles = Tensor::cat(&[&angles, &angles], -1);
        let (cos, sin) = (
            angles.cos().to_kind(x.kind()),
            angles.sin().to_kind(x.kind()),
        );
        let half = x.size().last().copied().expect("x has a feature dimension") / 2;
        let rotated_half = Tensor::cat(&[-x.narrow(-1, half, half), x.narrow(-1, 0, half)], -1);
        x * cos + rotated_half * sin
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn scores_depend_only_on_relative_position() {
        tch::manual_seed(0);
        let rope = Rope::new(8, 10000.0);
        let q = Tensor::randn([1, 8], (Kind::Double, Device::Cpu));
        let k = Tensor::randn([1, 8], (Kind::Double, Device::Cpu));
        let score = |pq: f64, pk: f64| {
            let rq = rope.rotate(&q, &Tensor::from_slice(&[pq]));
            let rk = rope.rotate(&k, &Tensor::from_slice(&[pk]));
            (rq * rk).sum(Kind::Double).double_value(&[])
        };
        let near = score(1_005.0, 1_000.0);
        let far = score(1_000_005.0, 1_000_000.0);
        assert!((near - far).abs() < 1e-6, "{near} vs {far}");
        assert!(
            (near - score(1_006.0, 1_000.0)).abs() > 1e-6,
            "a different distance must change the score"
        );
    }
}
