//! Rotary position embedding (RoPE) in the Llama "rotate half" layout: feature i is paired with
//! feature i + d/2, rotated by angle p·θ_i with θ_i = base^(−2i/d).
//!
//! RoPE is relative: rotating every key and query by the same extra angle leaves q·k unchanged,
//! which is what lets the memory use window-relative positions (`infinity-former.md` §9.3) and sit
//! at one fixed position (§9.2).

use tch::{Device, Kind, Tensor};

/// Precomputed inverse frequencies θ_i for one head size.
#[derive(Debug)]
pub struct Rope {
    inverse_frequencies: Vec<f64>,
}

impl Rope {
    pub fn new(head_dim: usize, base: f64) -> Self {
        assert!(
            head_dim.is_multiple_of(2),
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
        rotate_with(
            x,
            &angles.cos().to_kind(x.kind()),
            &angles.sin().to_kind(x.kind()),
        )
    }

    /// cos and sin of every position in `0..positions`, computed once, in `kind` on `device`.
    pub fn table(&self, positions: i64, kind: Kind, device: Device) -> RopeTable {
        let inv = Tensor::from_slice(&self.inverse_frequencies);
        let angles =
            Tensor::arange(positions, (Kind::Double, Device::Cpu)).unsqueeze(-1) * inv.unsqueeze(0); // [P, d/2]
        let angles = Tensor::cat(&[&angles, &angles], -1); // [P, d]
        RopeTable {
            cos: angles.cos().to_kind(kind).to_device(device),
            sin: angles.sin().to_kind(kind).to_device(device),
            inverse_frequencies: self.inverse_frequencies.clone(),
        }
    }
}

/// Precomputed cos/sin for positions `0..len()`: rotating a step's keys and queries is then two views
/// and a handful of element-wise ops, with no trigonometry per layer.
#[derive(Debug)]
pub struct RopeTable {
    cos: Tensor, // [P, d]
    sin: Tensor, // [P, d]
    /// θ_i, for rotating rows on the host ([`RopeTable::rotate_rows`]).
    inverse_frequencies: Vec<f64>,
}

impl RopeTable {
    /// Positions covered.
    pub fn len(&self) -> i64 {
        self.cos.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rotates `x` `[..., T, d]` to the positions `start..start + T` (which must lie in the table).
    pub fn rotate(&self, x: &Tensor, start: i64) -> Tensor {
        let size = x.size();
        let t = size[size.len() - 2];
        assert!(
            start >= 0 && start + t <= self.len(),
            "positions {start}..{} outside the RoPE table of {}",
            start + t,
            self.len()
        );
        rotate_with(
            x,
            &self.cos.narrow(0, start, t),
            &self.sin.narrow(0, start, t),
        )
    }

    /// Rotates queries `[B, H, T, d]` and keys `[B, H_kv, T, d]` of the same tokens to the
    /// positions `start..start + T` in one pass over both (one set of element-wise ops, not two).
    pub fn rotate_pair(&self, queries: &Tensor, keys: &Tensor, start: i64) -> (Tensor, Tensor) {
        let h = queries.size()[1];
        let both = self.rotate(&Tensor::cat(&[queries, keys], 1), start);
        let h_kv = both.size()[1] - h;
        (both.narrow(1, 0, h), both.narrow(1, h, h_kv))
    }

    /// Rotates every token of `x` `[..., T, d]` to the one position `position` (the memory's, §9.2).
    pub fn rotate_all_to(&self, x: &Tensor, position: i64) -> Tensor {
        assert!(
            (0..self.len()).contains(&position),
            "position {position} outside the RoPE table of {}",
            self.len()
        );
        rotate_with(
            x,
            &self.cos.narrow(0, position, 1),
            &self.sin.narrow(0, position, 1),
        )
    }
}

impl RopeTable {
    /// Rotates every row of d features in `rows` (host f32, row-major) to the one position
    /// `position`, which must lie in the table: a decode step's queries or keys, rotated without a
    /// tensor. The angles are computed in f64 and applied in f32 (the table's tensors hold cos and
    /// sin in the activations' kind).
    pub fn rotate_rows(&self, rows: &mut [f32], position: i64) {
        assert!(
            (0..self.len()).contains(&position),
            "position {position} outside the RoPE table of {}",
            self.len()
        );
        let half = self.inverse_frequencies.len();
        let (cos, sin): (Vec<f32>, Vec<f32>) = self
            .inverse_frequencies
            .iter()
            .map(|theta| {
                let angle = position as f64 * theta;
                (angle.cos() as f32, angle.sin() as f32)
            })
            .unzip();
        for row in rows.chunks_exact_mut(2 * half) {
            let (first, second) = row.split_at_mut(half);
            for i in 0..half {
                let (x1, x2) = (first[i], second[i]);
                first[i] = x1 * cos[i] - x2 * sin[i];
                second[i] = x2 * cos[i] + x1 * sin[i];
            }
        }
    }
}

/// x·cos + rotate_half(x)·sin, with rotate_half(x) = (−x₂, x₁) for the halves x₁, x₂.
fn rotate_with(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let half = x.size().last().copied().expect("x has a feature dimension") / 2;
    let rotated_half = Tensor::cat(&[-x.narrow(-1, half, half), x.narrow(-1, 0, half)], -1);
    x * cos + rotated_half * sin
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotating_a_pair_equals_rotating_each() {
        let table = Rope::new(16, 10000.0).table(64, Kind::Float, Device::Cpu);
        let q = Tensor::arange(960, (Kind::Float, Device::Cpu))
            .sin()
            .reshape([2, 6, 5, 16]);
        let k = Tensor::arange(480, (Kind::Float, Device::Cpu))
            .cos()
            .reshape([2, 3, 5, 16]);
        let (rq, rk) = table.rotate_pair(&q, &k, 7);
        assert!(rq.equal(&table.rotate(&q, 7)) && rk.equal(&table.rotate(&k, 7)));
    }

    #[test]
    fn rotating_host_rows_equals_rotating_the_tensor() {
        let table = Rope::new(16, 10000.0).table(64, Kind::Float, Device::Cpu);
        let x = Tensor::arange(96, (Kind::Float, Device::Cpu))
            .sin()
            .reshape([1, 6, 1, 16]);
        let mut rows = Vec::<f32>::try_from(x.reshape([-1])).unwrap();
        table.rotate_rows(&mut rows, 37);
        let want = Vec::<f32>::try_from(table.rotate(&x, 37).reshape([-1])).unwrap();
        for (got, want) in rows.iter().zip(&want) {
            assert!((got - want).abs() < 1e-6, "{got} against {want}");
        }
    }

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

    #[test]
    fn table_rotation_equals_direct_rotation() {
        tch::manual_seed(1);
        let rope = Rope::new(16, 10000.0);
        let x = Tensor::randn([2, 3, 5, 16], (Kind::Double, Device::Cpu));
        let direct = rope.rotate(
            &x,
            &Tensor::arange_start(40, 45, (Kind::Int64, Device::Cpu)),
        );
        let table = rope.table(64, Kind::Double, Device::Cpu);
        let error = (table.rotate(&x, 40) - direct)
            .abs()
            .max()
            .double_value(&[]);
        assert!(error < 1e-12, "table and direct rotation differ by {error}");
    }
}
