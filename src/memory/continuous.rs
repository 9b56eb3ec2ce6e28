//! The ∞-former continuous signal as the oldest tier of a session's memory (`infinity-former.md`
//! §9.7, tier 4): chunks that leave the archive are absorbed by the unbounded update (§3, sticky
//! sampling of §4 when enabled) and read at R quadrature points with the Gibbs reading (§9.2).
//!
//! Keys arrive already rotated to the memory position. RoPE at one fixed position is a fixed linear
//! map of the features, and the ridge fit is linear per feature, so fitting rotated keys equals
//! rotating the keys of a fit of pre-RoPE keys (§9.1–9.2 fit pre-RoPE keys, then rotate K_r).

use crate::ltm::sticky::point_mass_histogram;
use crate::ltm::{quadrature_log_weights, LongTermMemory, MemoryOperators};
use std::sync::Arc;
use tch::{Kind, Tensor};

/// What the attention reads from the signal: R points per key/value head and their ln w_k.
#[derive(Debug)]
pub struct MemoryPoints {
    /// K_r `[B, H_kv, R, D]`, in the model's dtype.
    pub keys: Tensor,
    /// V_r `[B, H_kv, R, D]`.
    pub values: Tensor,
    /// ln w_k `[B, 1, 1, R]`: a logit bias broadcast over heads and queries.
    pub bias: Tensor,
}

/// One layer's continuous signal for B sessions; keys and values folded into 2·H_kv·D features.
#[derive(Debug)]
pub struct ContinuousTier {
    operators: MemoryOperators,
    memory: Option<LongTermMemory>,
    points: Option<MemoryPoints>,
    /// Every tier over the same signal holds a clone of this; while there is more than one (a
    /// fork, [`ContinuousTier::fork`]), the signal's state is copied before it changes.
    owners: Arc<()>,
}

impl ContinuousTier {
    /// A tier over shared operators (computed in f32 whatever the model's dtype: the ridge operator
    /// needs the precision, and it runs once per chunk).
    pub fn new(operators: MemoryOperators) -> Self {
        Self {
            operators,
            memory: None,
            points: None,
            owners: Arc::new(()),
        }
    }

    /// A tier restored from its saved signal and points (see [`ContinuousTier::memory`]).
    pub fn restore(
        operators: MemoryOperators,
        memory: Option<LongTermMemory>,
        points: Option<MemoryPoints>,
    ) -> Self {
        Self {
            operators,
            memory,
            points,
            owners: Arc::new(()),
        }
    }

    /// The operators this tier absorbs with.
    pub fn operators(&self) -> &MemoryOperators {
        &self.operators
    }

    /// The signal's state, once something was absorbed.
    pub fn memory(&self) -> Option<&LongTermMemory> {
        self.memory.as_ref()
    }

    /// The points to read, once something was absorbed.
    pub fn points(&self) -> Option<&MemoryPoints> {
        self.points.as_ref()
    }

    /// Tokens absorbed so far (per session; rows move together).
    pub fn tokens(&self) -> u64 {
        self.memory.as_ref().map_or(0, |m| m.tokens_absorbed()[0])
    }

    /// Updates so far.
    pub fn updates(&self) -> u64 {
        self.memory.as_ref().map_or(0, |m| m.updates()[0])
    }

    /// Bytes of the fixed-size state (coefficients and histograms) plus the cached points.
    pub fn bytes(&self) -> usize {
        let state = self.memory.as_ref().map_or(0, |m| m.bytes());
        let points = self.points.as_ref().map_or(0, |p| {
            [&p.keys, &p.values, &p.bias]
                .iter()
                .map(|t| t.numel() * t.kind().elt_size_in_bytes())
                .sum()
        });
        state + points
    }

    /// The tier's RAM as one entry, by the address of its coefficients (or points), with
    /// [`ContinuousTier::bytes`]; `None` before anything was absorbed.
    pub fn resident_buffer(&self) -> Option<(usize, usize)> {
        let anchor = match (&self.memory, &self.points) {
            (Some(memory), _) => memory.coefficients(),
            (None, Some(points)) => &points.keys,
            (None, None) => return None,
        };
        Some((anchor.data_ptr() as usize, self.bytes()))
    }

    /// The same signal and points for a forked memory, shared until either tier changes them:
    /// the signal's state is copied then ([`ContinuousTier::own`]); the points are replaced
    /// whole, never written in place.
    pub fn fork(&self) -> Self {
        Self {
            operators: self.operators.share(),
            memory: self
                .memory
                .as_ref()
                .map(|m| self.signal_copy(m, Tensor::shallow_clone)),
            points: self.points.as_ref().map(|p| MemoryPoints {
                keys: p.keys.shallow_clone(),
                values: p.values.shallow_clone(),
                bias: p.bias.shallow_clone(),
            }),
            owners: Arc::clone(&self.owners),
        }
    }

    /// Makes the signal's state this tier's own before it changes in place, when it is shared.
    fn own(&mut self) {
        if Arc::strong_count(&self.owners) > 1 {
            self.memory = self
                .memory
                .as_ref()
                .map(|m| self.signal_copy(m, Tensor::copy));
            self.owners = Arc::new(());
        }
    }

    /// `memory`'s state with each tensor passed through `tensor` (a copy, or a shared handle).
    fn signal_copy(
        &self,
        memory: &LongTermMemory,
        tensor: fn(&Tensor) -> Tensor,
    ) -> LongTermMemory {
        LongTermMemory::from_state(
            &self.operators,
            tensor(memory.coefficients()),
            tensor(memory.attention_mass()),
            tensor(memory.token_density()),
            memory.tokens_absorbed().to_vec(),
            memory.updates().to_vec(),
        )
        .expect("a signal's own state has the operators' shapes")
    }

    /// Absorbs one chunk: keys (rotated to the memory position) and values `[B, H_kv, C, D]`.
    pub fn absorb(&mut self, keys: &Tensor, values: &Tensor) {
        self.own();
        let (b, h, c, d) = keys.size4().expect("keys are [B, H_kv, C, D]");
        let fold = |t: &Tensor| t.permute([0, 2, 1, 3]).reshape([b, c, h * d]);
        let chunk = Tensor::cat(&[fold(keys), fold(values)], 2).to_kind(self.operators.kind());
        let ops = &self.operators;
        let memory = self
            .memory
            .get_or_insert_with(|| LongTermMemory::new(ops, b as usize, (2 * h * d) as usize));
        memory.absorb(ops, &chunk);
        let r = ops.quadrature_positions();
        let points = memory.evaluate(ops, r); // [B, R, 2·H_kv·D]
        let unfold = |t: Tensor| {
            t.reshape([b, -1, h, d])
                .permute([0, 2, 1, 3])
                .to_kind(keys.kind())
                .contiguous()
        };
        let cap = ops.config().max_density_weight;
        self.points = Some(MemoryPoints {
            keys: unfold(points.narrow(2, 0, h * d)),
            values: unfold(points.narrow(2, h * d, h * d)),
            bias: quadrature_log_weights(memory.token_density(), r, cap)
                .to_kind(keys.kind())
                .view([b, 1, 1, -1]),
        });
    }

    /// Records the softmax mass `[B, ..., R]` that landed on the points, for sticky memories (§4, §9.2).
    pub fn record_attention(&mut self, mass: &Tensor) {
        if !self.wants_attention() {
            return;
        }
        self.own();
        let ops = &self.operators;
        if let Some(memory) = self.memory.as_mut() {
            let bins = ops.config().sticky_bins;
            memory.record_attention(&point_mass_histogram(
                &mass.to_kind(Kind::Float),
                ops.quadrature_positions(),
                bins,
            ));
        }
    }

    /// Whether attention mass must be recorded (sticky memories on).
    pub fn wants_attention(&self) -> bool {
        self.operators.config().sticky && self.memory.is_some()
    }
}
