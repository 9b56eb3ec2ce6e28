//! The long-term memory as a continuous signal: first fit, unbounded update with contraction τ,
//! evaluation, and the token-density histogram of the Gibbs reading
//! (`infinity-former.md` §1, §3, §9.1).
//!
//! Everything is batched over sessions: coefficients are `[B, N, e]`. Heads are folded into e
//! (the ridge fit treats every feature column independently, so `[N, H·d]` is exactly H fits).

use super::basis::Basis;
use super::config::{LtmConfig, TokenPositions};
use super::ridge::{
    fit_coefficients, midpoint_positions, padded_ridge_operator, paper_positions,
    uniform_sample_positions, update_positions,
};
use super::sticky::sample_positions;
use tch::{Device, Kind, Tensor};

/// The precomputed, read-only operators of one memory configuration and chunk length L, in the
/// working dtype and device (computed in f64 first, §7.4). Shared by every session.
#[derive(Debug)]
pub struct MemoryOperators {
    config: LtmConfig,
    basis: Basis,
    chunk_len: usize,
    /// G_L `[L, N]`: the first fit, at the configured token positions (§1.3).
    first_fit: Tensor,
    /// G_inf `[M + L, N]`: the refit after contraction (§3).
    update_fit: Tensor,
    /// S `[M, N]`: ψ at the uniform resampling points i/M (§3).
    uniform_samples: Tensor,
    /// The R quadrature midpoints of the Gibbs reading `[R]` (§9.2).
    quadrature: Tensor,
    kind: Kind,
    device: Device,
}

impl MemoryOperators {
    /// Builds G_L, G_inf and S for chunks of `chunk_len` vectors. Panics on an invalid config;
    /// call [`LtmConfig::validate`] first where the config comes from a user.
    pub fn new(config: &LtmConfig, chunk_len: usize, kind: Kind, device: Device) -> Self {
        config.validate().expect("invalid LtmConfig");
        assert!(chunk_len > 0, "chunk_len must be positive");
        let basis = Basis::new(config.num_basis, &config.widths);
        let positions = match config.positions {
            TokenPositions::Midpoints => midpoint_positions(chunk_len),
            TokenPositions::PaperUniform => paper_positions(chunk_len),
        };
        let cast = |t: Tensor| t.to_kind(kind).to_device(device);
        let first_fit = cast(padded_ridge_operator(
            &basis,
            &positions,
            config.ridge_penalty,
        ));
        let update_positions = update_positions(config.num_samples, chunk_len, config.contraction);
        let update_fit = cast(padded_ridge_operator(
            &basis,
            &update_positions,
            config.ridge_penalty,
        ));
        let uniform_samples =
            cast(basis.evaluate_at(&uniform_sample_positions(config.num_samples)));
        let quadrature = cast(Tensor::from_slice(&midpoint_positions(
            config.quadrature_points,
        )));
        Self {
            config: config.clone(),
            basis,
            chunk_len,
            first_fit,
            update_fit,
            uniform_samples,
            quadrature,
            kind,
            device,
        }
    }

    /// Another handle on the same operators: the tensors are shared (no copy), so every layer and
    /// session can own one while staying `Send` (a tch `Tensor` is not `Sync`, so `Arc` would not be).
    pub fn share(&self) -> Self {
        Self {
            config: self.config.clone(),
            basis: self.basis.clone(),
            chunk_len: self.chunk_len,
            first_fit: self.first_fit.shallow_clone(),
            update_fit: self.update_fit.shallow_clone(),
            uniform_samples: self.uniform_samples.shallow_clone(),
            quadrature: self.quadrature.shallow_clone(),
            kind: self.kind,
            device: self.device,
        }
    }

    pub fn config(&self) -> &LtmConfig {
        &self.config
    }

    pub fn basis(&self) -> &Basis {
        &self.basis
    }

    /// L, the number of vectors absorbed per update.
    pub fn chunk_len(&self) -> usize {
        self.chunk_len
    }

    /// The R quadrature midpoints r_k = (k + ½)/R of the Gibbs reading, `[R]`.
    pub fn quadrature_positions(&self) -> &Tensor {
        &self.quadrature
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn device(&self) -> Device {
        self.device
    }
}

/// The long-term memory of B sessions for one layer: a fixed-size state whatever the number of
/// tokens absorbed (§3: "the memory size never grows").
#[derive(Debug)]
pub struct LongTermMemory {
    /// B `[B, N, e]`: the coefficients of X̄(t) = Bᵀψ(t); zero for a session with no memory yet.
    coefficients: Tensor,
    /// Attention mass per bin of [0, 1] since the last update `[B, D]` (sticky memories, §4).
    attention_mass: Tensor,
    /// How many original tokens each bin of [0, 1] stands for `[B, D]` (§9.1).
    token_density: Tensor,
    /// Tokens absorbed since the last reset, per session.
    absorbed: Vec<u64>,
    /// Updates since the last reset, per session.
    updates: Vec<u64>,
}

impl LongTermMemory {
    /// An empty memory for `batch` sessions whose vectors have `features` dimensions.
    pub fn new(ops: &MemoryOperators, batch: usize, features: usize) -> Self {
        let options = (ops.kind, ops.device);
        let bins = ops.config.sticky_bins as i64;
        Self {
            coefficients: Tensor::zeros(
                [batch as i64, ops.basis.len() as i64, features as i64],
                options,
            ),
            attention_mass: Tensor::zeros([batch as i64, bins], options),
            token_density: Tensor::zeros([batch as i64, bins], options),
            absorbed: vec![0; batch],
            updates: vec![0; batch],
        }
    }

    /// A memory from its saved state (the inverse of the accessors below): coefficients `[B, N, e]`,
    /// attention mass and token density `[B, D]`, and the per-session counters. `None` when the
    /// shapes do not agree with each other or with `ops` (N basis functions, D bins).
    pub fn from_state(
        ops: &MemoryOperators,
        coefficients: Tensor,
        attention_mass: Tensor,
        token_density: Tensor,
        absorbed: Vec<u64>,
        updates: Vec<u64>,
    ) -> Option<Self> {
        let batch = absorbed.len() as i64;
        let bins = ops.config.sticky_bins as i64;
        let c = coefficients.size();
        let shapes_agree = c.len() == 3
            && c[0] == batch
            && c[1] == ops.basis.len() as i64
            && attention_mass.size() == [batch, bins]
            && token_density.size() == [batch, bins]
            && updates.len() == absorbed.len();
        shapes_agree.then(|| Self {
            coefficients: coefficients.to_kind(ops.kind).to_device(ops.device),
            attention_mass: attention_mass.to_kind(ops.kind).to_device(ops.device),
            token_density: token_density.to_kind(ops.kind).to_device(ops.device),
            absorbed,
            updates,
        })
    }

    /// B, the number of sessions.
    pub fn batch(&self) -> usize {
        self.absorbed.len()
    }

    /// The coefficients `[B, N, e]`.
    pub fn coefficients(&self) -> &Tensor {
        &self.coefficients
    }

    /// Tokens each bin of [0, 1] stands for `[B, D]`.
    pub fn token_density(&self) -> &Tensor {
        &self.token_density
    }

    /// Attention mass per bin recorded since the last update `[B, D]`.
    pub fn attention_mass(&self) -> &Tensor {
        &self.attention_mass
    }

    /// Tokens absorbed per session since its last reset.
    pub fn tokens_absorbed(&self) -> &[u64] {
        &self.absorbed
    }

    /// Updates per session since its last reset.
    pub fn updates(&self) -> &[u64] {
        &self.updates
    }

    /// Bytes held by the state's tensors: fixed by (B, N, e, D), never by the tokens absorbed.
    pub fn bytes(&self) -> usize {
        [
            &self.coefficients,
            &self.attention_mass,
            &self.token_density,
        ]
        .iter()
        .map(|t| t.numel() * t.kind().elt_size_in_bytes())
        .sum()
    }

    /// X̄(t) = Bᵀψ(t): positions `[T]` (shared) or `[B, T]` → `[B, T, e]`.
    pub fn evaluate(&self, ops: &MemoryOperators, positions: &Tensor) -> Tensor {
        ops.basis.evaluate(positions).matmul(&self.coefficients)
    }

    /// Adds attention mass per bin `[B, D]` to the sticky-memory histogram (§4, §9.2).
    pub fn record_attention(&mut self, mass_per_bin: &Tensor) {
        self.attention_mass += mass_per_bin.detach().to_kind(self.attention_mass.kind());
    }

    /// Absorbs one chunk of L new vectors per session, `[B, L, e]` (§1.4, §3).
    ///
    /// The old coefficients are detached (B_past ← B.detach(), §3), so no gradient reaches an
    /// earlier fit; the chunk keeps whatever graph it has, so that a trained model's gate on the
    /// memory input learns through the fit (§1.4). Pass a detached chunk to store plain data.
    ///
    /// A session with no memory yet gets the first fit B = G_Lᵀ X (§1.3). Every other session gets
    /// the unbounded update: its old signal is read at M points (uniform i/M, or sampled from the
    /// attention histogram with sticky memories, §4), those samples are contracted into [0, τ], the
    /// new vectors placed in [τ, 1], and B refitted with G_inf. `reset_after_tokens` wipes a
    /// session first once it has absorbed that many tokens (the GPT-2 code's 2048).
    pub fn absorb(&mut self, ops: &MemoryOperators, chunk: &Tensor) {
        let (batch, len, features) = chunk.size3().expect("chunk must be [B, L, e]");
        assert_eq!(
            batch as usize,
            self.batch(),
            "chunk batch differs from the memory's"
        );
        assert_eq!(
            len as usize, ops.chunk_len,
            "chunk length differs from the operators'"
        );
        assert_eq!(
            features,
            self.coefficients.size()[2],
            "chunk features differ from the memory's"
        );
        let chunk = chunk.to_kind(ops.kind);
        if let Some(limit) = ops.config.reset_after_tokens {
            for row in 0..self.batch() {
                if self.absorbed[row] >= limit as u64 {
                    self.reset_row(row);
                }
            }
        }
        let fresh: Vec<bool> = self.absorbed.iter().map(|&a| a == 0).collect();
        let positions = self.resample_positions(ops);
        let first = fresh
            .iter()
            .any(|&f| f)
            .then(|| fit_coefficients(&ops.first_fit, &chunk));
        let updated = fresh
            .iter()
            .any(|&f| !f)
            .then(|| self.contract_and_refit(ops, &chunk, positions.as_ref()));
        self.token_density = self.next_density(ops, &fresh, positions.as_ref());
        self.coefficients = match (first, updated) {
            (Some(first), Some(updated)) => {
                let mask = Tensor::from_slice(&fresh)
                    .to_device(ops.device)
                    .view([-1, 1, 1]);
                first.where_self(&mask, &updated)
            }
            (Some(only), None) | (None, Some(only)) => only,
            (None, None) => unreachable!("a chunk has at least one session"),
        };
        let _ = self.attention_mass.zero_();
        for row in 0..self.batch() {
            self.absorbed[row] += len as u64;
            self.updates[row] += 1;
        }
    }

    /// The unbounded update of §3 for every session: evaluate the old signal at M locations
    /// (X_past = B_pastᵀ Sᵀ, S[i,:] = ψ(u_i): u_i = i/M, or with sticky memories the sampled
    /// `positions` `[B, M]` of §4), contract those samples into [0, τ] and place the chunk's L
    /// vectors in [τ, 1], then refit by ridge regression, Bᵀ = [X_past, X_new] G_inf (G_inf holds
    /// the M + L contracted positions with the padding of §1.3). B_past ← B.detach() first, so no
    /// gradient reaches an earlier fit.
    fn contract_and_refit(
        &self,
        ops: &MemoryOperators,
        chunk: &Tensor,
        positions: Option<&Tensor>,
    ) -> Tensor {
        let sample_basis = match positions {
            Some(p) => ops.basis.evaluate(p), // [B, M, N]
            None => ops.uniform_samples.shallow_clone(),
        };
        let past = sample_basis.matmul(&self.coefficients.detach()); // [B, M, e]
        fit_coefficients(
            &ops.update_fit,
            &Tensor::cat(&[past, chunk.shallow_clone()], 1),
        )
    }

    /// With sticky memories, the sorted resampling points `[B, M]` drawn from each session's
    /// attention histogram; sessions with no recorded mass use the uniform points i/M (§3, §4).
    fn resample_positions(&self, ops: &MemoryOperators) -> Option<Tensor> {
        if !ops.config.sticky {
            return None;
        }
        let mass = self
            .attention_mass
            .sum_dim_intlist(-1, true, self.attention_mass.kind()); // [B, 1]
        let has_mass = mass.gt(0.0);
        // Rows without mass get a flat histogram so the draw is defined; `where` discards it.
        let histogram = self
            .attention_mass
            .where_self(&has_mass, &self.attention_mass.ones_like());
        let sampled =
            sample_positions(&histogram, ops.config.num_samples, ops.config.sticky_jitter);
        let uniform = Tensor::from_slice(&uniform_sample_positions(ops.config.num_samples))
            .to_kind(ops.kind)
            .to_device(ops.device);
        Some(sampled.where_self(&has_mass, &uniform.unsqueeze(0)))
    }

    /// The token-density histogram after absorbing L tokens (§9.1, §9.6).
    ///
    /// Fresh sessions spread the L tokens over [0, 1]. Others carry the token-count CDF through the
    /// warp of the update: the old point u_i moves to τ·i/M, so the new CDF at τ·i/M is the old CDF
    /// at u_i (a plain contraction when u_i = i/M); the L new tokens are spread over [τ, 1].
    fn next_density(
        &self,
        ops: &MemoryOperators,
        fresh: &[bool],
        positions: Option<&Tensor>,
    ) -> Tensor {
        let (kind, device) = (ops.kind, ops.device);
        let bins = ops.config.sticky_bins as i64;
        let samples = ops.config.num_samples as i64;
        let tau = ops.config.contraction;
        let new_tokens = ops.chunk_len as f64;
        let batch = self.batch() as i64;
        let old = &self.token_density; // [B, D]
        let total = old.sum_dim_intlist(-1, true, kind); // [B, 1]

        // Old CDF at the resampling points u_i, by linear interpolation inside each bin.
        let u = match positions {
            Some(p) => p.shallow_clone(),
            None => Tensor::from_slice(&uniform_sample_positions(samples as usize))
                .to_kind(kind)
                .to_device(device)
                .expand([batch, samples], false),
        };
        let cdf_old_at = |points: &Tensor| -> Tensor {
            let scaled = points * bins as f64;
            let index = scaled
                .floor()
                .clamp(0.0, (bins - 1) as f64)
                .to_kind(Kind::Int64);
            let before = old.cumsum(-1, kind) - old; // tokens strictly left of each bin
            let within = (scaled - index.to_kind(kind)).clamp(0.0, 1.0);
            before.gather(-1, &index, false) + old.gather(-1, &index, false) * within
        };
        // Knots of the new CDF on [0, τ]: (0, 0), (τ·i/M, F_old(u_i)), with F(τ) = total so no
        // token is lost when the last sticky sample sits left of 1.
        let knots = Tensor::cat(
            &[Tensor::zeros([batch, 1], (kind, device)), cdf_old_at(&u)],
            1,
        );
        let knots = knots.slice(1, 0, samples, 1).contiguous();
        let knots = Tensor::cat(&[knots, total.shallow_clone()], 1); // [B, M + 1]

        // New CDF at the bin edges k/D.
        let edges = Tensor::linspace(0.0, 1.0, bins + 1, (kind, device)).unsqueeze(0); // [1, D+1]
        let inside = (&edges / tau).clamp(0.0, 1.0) * samples as f64; // knot coordinate
        let lower = inside.floor().clamp(0.0, (samples - 1) as f64);
        let frac = &inside - &lower;
        let lower = lower.to_kind(Kind::Int64).expand([batch, bins + 1], false);
        let left = knots.gather(-1, &lower, false);
        let right = knots.gather(-1, &(&lower + 1), false);
        let contracted = &left + (right - &left) * frac;
        let spread = (&edges - tau).clamp_min(0.0) / (1.0 - tau) * new_tokens;
        let cdf_update = contracted + spread;
        let cdf_fresh = (&edges * new_tokens).expand([batch, bins + 1], false);
        let mask = Tensor::from_slice(fresh).to_device(device).view([-1, 1]);
        let cdf = cdf_fresh.where_self(&mask, &cdf_update);
        cdf.slice(1, 1, bins + 1, 1) - cdf.slice(1, 0, bins, 1)
    }

    /// Wipes one session's memory (a new document, or `reset_after_tokens`).
    pub fn reset_row(&mut self, row: usize) {
        let _ = self.coefficients.get(row as i64).zero_();
        let _ = self.attention_mass.get(row as i64).zero_();
        let _ = self.token_density.get(row as i64).zero_();
        self.absorbed[row] = 0;
        self.updates[row] = 0;
    }
}
