//! One layer's session memory: the four tiers of `infinity-former.md` §9.7 behind the model's
//! [`LayerCache`] hook, all read in one joint softmax (§9.2) at window-relative positions (§9.3).
//!
//! Positions (the same numbers at token 1,000 and at token 1,000,000):
//! * sinks at 0..s (s ≤ `sinks`), rotated once, for good;
//! * the memory (selected archive blocks and signal points) at one position, s, just before the
//!   oldest STM token — only once something has been evicted;
//! * the STM's tokens right after: s + gap + i, gap = 1 once the memory exists, else 0. Before
//!   anything is evicted the layout is therefore exactly the plain KV cache's 0, 1, 2, …
//!
//! Layout: the sinks and the STM are one run of rotated keys and one of values, in token order;
//! each read writes the memory it selected (k archive blocks, R signal points) just past that run,
//! so one fused attention call reads every tier in place, and the joint softmax of §9.2 is that
//! call's softmax, with ln w_k as an additive bias on the points. The STM also keeps its pre-RoPE
//! keys: its rotated keys are re-based only when a block leaves (RoPE is relative, so one shift of
//! every position is exact).

mod persist;
mod segments;
pub use persist::LayerShape;

use super::archive::{least_sticky, protected_blocks};
use super::archive::{Archive, LayerReads};
use super::config::{MemoryConfig, Retention};
use super::continuous::{ContinuousTier, MemoryPoints};
use super::spill::{SpillError, Storage};
use super::window::Window;
use crate::ltm::{joint_attention, JointRead, KeyGroup, MemoryOperators};
use crate::model::cache::{
    attention_with_lse, grouped_attention, unread, wide_kind, HostStep, StepRows,
};
use crate::model::host_attention::{self, Past};
use crate::model::{LayerCache, ModelError};
use crate::rope::RopeTable;
use tch::{Kind, Tensor};

/// Tokens and bytes held by each tier of one layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct TierStats {
    pub sink_tokens: i64,
    pub stm_tokens: i64,
    pub archive_tokens: i64,
    pub ltm_tokens: u64,
    pub ltm_updates: u64,
    pub dropped_tokens: u64,
    pub sink_bytes: usize,
    pub stm_bytes: usize,
    pub archive_bytes: usize,
    pub ltm_bytes: usize,
}

/// One layer's memory for B sessions that move in step (same token counts).
#[derive(Debug)]
pub struct LayerMemory {
    config: MemoryConfig,
    /// The sinks, then the STM, in token order: keys rotated to their positions.
    keys: Window,
    /// The sinks' and the STM's values, in the same order.
    values: Window,
    /// The STM's keys before RoPE (the last `stm_keys.len()` of `keys`, unrotated).
    stm_keys: Window,
    archive: Archive,
    /// Evicted blocks waiting to fill one LTM chunk when the archive is off (keys rotated).
    staged_keys: Window,
    staged_values: Window,
    continuous: Option<ContinuousTier>,
    evicted: bool,
    dropped: u64,
    /// The attention mass the queries put on the signal's points since the last take, summed
    /// over (KV head, query) rows of session row 0, and the rows; counted with the archive's reads.
    signal_mass: Option<(Tensor, u64)>,
}

/// One layer's reads since the last [`LayerMemory::take_reads`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LayerTurnReads {
    pub archive: LayerReads,
    /// Σ over rows of the softmax mass on the signal's points, and the rows (none: no points were
    /// read, or counting is off).
    pub signal_mass: Option<(f64, u64)>,
}

impl LayerMemory {
    /// An empty memory; `operators` are the shared ∞-former operators when the signal tier is on.
    pub fn new(config: MemoryConfig, operators: Option<MemoryOperators>) -> Self {
        Self {
            archive: new_archive(&config),
            config,
            keys: Window::new(),
            values: Window::new(),
            stm_keys: Window::new(),
            staged_keys: Window::new(),
            staged_values: Window::new(),
            continuous: operators.map(ContinuousTier::new),
            evicted: false,
            dropped: 0,
            signal_mass: None,
        }
    }

    /// What this layer read since the last take (the memory map's heat), and a fresh count.
    pub fn take_reads(&mut self) -> LayerTurnReads {
        LayerTurnReads {
            archive: self.archive.take_reads(),
            signal_mass: self
                .signal_mass
                .take()
                .map(|(sum, rows)| (sum.double_value(&[]), rows)),
        }
    }

    /// The layout this memory follows.
    pub fn config(&self) -> &MemoryConfig {
        &self.config
    }

    /// Sinks held: the first tokens of `keys`, the rest being the STM.
    fn sinks_held(&self) -> i64 {
        self.keys.len() - self.stm_keys.len()
    }

    /// Tokens and bytes per tier.
    pub fn stats(&self) -> TierStats {
        let (sinks, stm) = (self.sinks_held(), self.stm_keys.len());
        // Bytes of one token's rotated key and value (every token of the run has the same).
        let pair = if self.keys.is_empty() {
            0
        } else {
            (self.keys.bytes() + self.values.bytes()) / self.keys.len() as usize
        };
        TierStats {
            sink_tokens: sinks,
            stm_tokens: stm,
            archive_tokens: self.archive.tokens() + self.staged_keys.len(),
            ltm_tokens: self.continuous.as_ref().map_or(0, |c| c.tokens()),
            ltm_updates: self.continuous.as_ref().map_or(0, |c| c.updates()),
            dropped_tokens: self.dropped,
            sink_bytes: pair * sinks as usize,
            stm_bytes: self.stm_keys.bytes() + pair * stm as usize,
            archive_bytes: self.archive.bytes()
                + self.staged_keys.bytes()
                + self.staged_values.bytes(),
            ltm_bytes: self.continuous.as_ref().map_or(0, |c| c.bytes()),
        }
    }

    /// The RAM buffers of every tier, by address, with their bytes including spare room (what
    /// [`LayerMemory::stats`] counts is the tokens' bytes alone). Forks share addresses.
    pub fn resident_buffers(&self) -> Vec<(usize, usize)> {
        let windows = [
            &self.keys,
            &self.values,
            &self.stm_keys,
            &self.staged_keys,
            &self.staged_values,
        ];
        let signal = self
            .continuous
            .as_ref()
            .and_then(ContinuousTier::resident_buffer);
        windows
            .into_iter()
            .filter_map(Window::resident_buffer)
            .chain(self.archive.resident_buffers())
            .chain(signal)
            .collect()
    }

    /// A memory that starts where this one is and then goes its own way: every tier's buffers
    /// shared until either memory writes into them (copy on write, [`Window::share`]), the
    /// signal's small state copied. Reads are counted afresh.
    pub fn fork(&self) -> Self {
        Self {
            config: self.config.clone(),
            keys: self.keys.share(),
            values: self.values.share(),
            stm_keys: self.stm_keys.share(),
            archive: self.archive.share(),
            staged_keys: self.staged_keys.share(),
            staged_values: self.staged_values.share(),
            continuous: self.continuous.as_ref().map(ContinuousTier::fork),
            evicted: self.evicted,
            dropped: self.dropped,
            signal_mass: None,
        }
    }

    /// Moves the oldest `blocks` blocks of the STM into the archive (or towards the signal), one
    /// block at a time, re-basing the rotated STM once, and keeps the archive within its budget.
    fn evict_blocks(&mut self, blocks: i64, rope: &RopeTable) -> Result<(), SpillError> {
        let n = self.config.block_len as i64;
        let sinks = self.sinks_held();
        let keys = self.stm_keys.take_front(n * blocks);
        let values = self.values.take(sinks, n * blocks);
        // (Sinks and STM are counted apart until `keys` is cut below: the memory sits at `sinks`.)
        let keys = rope.rotate_all_to(&keys, sinks);
        self.evicted = true;
        // The rest of the STM moves up by n·blocks positions: rotate it again from pre-RoPE keys,
        // from just past the memory's position.
        self.keys.truncate(sinks);
        if let Some(rest) = self.stm_keys.view() {
            self.keys.append(&rope.rotate(&rest, sinks + 1));
        }
        for block in 0..blocks {
            let (keys, values) = (keys.narrow(2, block * n, n), values.narrow(2, block * n, n));
            if let Err(e) = self.archive_block(&keys, &values) {
                // The blocks not archived are lost; they count as dropped, so the tallies still add up.
                self.dropped += ((blocks - block) * n) as u64;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Takes one evicted block (keys rotated to the memory position) into the archive, or stages
    /// it for the signal when the archive is off.
    fn archive_block(&mut self, keys: &Tensor, values: &Tensor) -> Result<(), SpillError> {
        let chunk_blocks = (self.config.ltm_chunk_len / self.config.block_len) as i64;
        if self.config.archive_enabled() {
            self.archive.push(keys, values)?;
            // Sticky retention decides over every layer once the forward pass is done
            // (`LayerMemory::retain_sticky`).
            let fifo = self.config.archive_retention == Retention::Fifo;
            while fifo && self.archive.tokens() > self.config.archive_budget as i64 {
                let (keys, values) = self
                    .archive
                    .pop_oldest(chunk_blocks.min(self.archive.blocks()));
                self.absorb_or_drop(&keys, &values);
            }
        } else {
            self.staged_keys.append(keys);
            self.staged_values.append(values);
            if self.staged_keys.len() >= self.config.ltm_chunk_len as i64 {
                let chunk = self.config.ltm_chunk_len as i64;
                let (keys, values) = (
                    self.staged_keys.take_front(chunk),
                    self.staged_values.take_front(chunk),
                );
                self.absorb_or_drop(&keys, &values);
            }
        }
        Ok(())
    }

    /// Sticky retention over one session's `layers` (all moving in step, [`Retention::Sticky`]):
    /// when the archive is over its budget, the blocks least sticky summed over the layers leave
    /// every layer (so every layer keeps the same blocks), a whole LTM chunk at a time as `fifo`
    /// lets them go, for the signal (or dropped without one). The signal's time axis is then the
    /// order in which blocks left the archive, each chunk's blocks in the conversation's order:
    /// with `fifo` the two coincide. Runs after each forward pass ([`LayerCache::after_forward`]),
    /// so within one pass the archive may exceed its budget by the blocks the pass evicted.
    fn retain_sticky(layers: &mut [&mut LayerMemory]) {
        let Some(first) = layers.first() else {
            return;
        };
        let config = &first.config;
        if config.archive_retention != Retention::Sticky || !config.archive_enabled() {
            return;
        }
        let block_len = config.block_len as i64;
        let chunk_blocks = config.ltm_chunk_len / config.block_len;
        let over = first.archive.tokens() - config.archive_budget as i64;
        if over <= 0 {
            return;
        }
        let chunk_tokens = chunk_blocks as i64 * block_len;
        let count = ((over + chunk_tokens - 1) / chunk_tokens) as usize * chunk_blocks;
        let held = first.archive.blocks() as usize;
        let protected = protected_blocks(config.archive_budget / config.block_len)
            .min(held.saturating_sub(count));
        let stickiness = Self::summed_stickiness(layers.iter().map(|layer| &**layer));
        let leaving = least_sticky(&stickiness, count, protected);
        for layer in layers.iter_mut() {
            let (keys, values) = layer.archive.release(&leaving);
            for chunk in 0..leaving.len() as i64 / chunk_blocks as i64 {
                let (at, n) = (chunk * chunk_tokens, chunk_tokens);
                layer.absorb_or_drop(&keys.narrow(2, at, n), &values.narrow(2, at, n));
            }
        }
    }

    fn absorb_or_drop(&mut self, keys: &Tensor, values: &Tensor) {
        match self.continuous.as_mut() {
            Some(tier) if keys.size()[2] == self.config.ltm_chunk_len as i64 => {
                tier.absorb(keys, values)
            }
            _ => self.dropped += keys.size()[2] as u64,
        }
    }
}

/// An empty archive laid out as `config` says (int8 or exact, in RAM or spilled).
fn new_archive(config: &MemoryConfig) -> Archive {
    let storage = Storage::new(config.spill_dir.as_deref());
    let mut archive = Archive::new(config.block_len, config.archive_int8, &storage);
    if config.count_reads {
        archive = archive.counting_reads();
    }
    if config.archive_retention == Retention::Sticky {
        archive = archive.keeping_stickiness();
    }
    archive
}

/// The held run (sinks and STM, the T new tokens last) read by the new tokens' queries
/// `[B, H_kv, G, T, D]`, as a context and log-sum-exp per query (`[B, H_kv, G, T, D]` and
/// `[B, H_kv, G, T, 1]`, merged kind): the tokens held before these (all visible) in one fused call
/// over the grouped queries, and the new tokens over themselves causally in another (a square
/// causal call, which skips the hidden half), merged ([`merge_reads`]). No mask is formed.
fn read_held(queries: &Tensor, keys: &Tensor, values: &Tensor) -> (Tensor, Tensor) {
    let (b, h_kv, group, t, d) = queries.size5().expect("queries are [B, H_kv, G, T, D]");
    let before = keys.size()[2] - t;
    let wide = wide_kind(queries.kind());
    let as_grouped = |(context, lse): (Tensor, Tensor)| {
        (
            context.to_kind(wide).reshape([b, h_kv, group, t, d]),
            lse.to_kind(wide).reshape([b, h_kv, group, t, 1]),
        )
    };
    // Every query head its key/value head's new rows (T rows: small next to the scores).
    let per_head = |rows: &Tensor| {
        rows.narrow(2, before, t)
            .unsqueeze(2)
            .expand([b, h_kv, group, t, d], false)
            .reshape([b, h_kv * group, t, d])
    };
    let new = as_grouped(attention_with_lse(
        &queries.reshape([b, h_kv * group, t, d]),
        &per_head(keys),
        &per_head(values),
        true,
    ));
    if before == 0 {
        return new;
    }
    let old = as_grouped(attention_with_lse(
        &queries.reshape([b, h_kv, group * t, d]),
        &keys.narrow(2, 0, before),
        &values.narrow(2, 0, before),
        false,
    ));
    merge_reads(old, new).0
}

/// Two reads of disjoint groups of keys by the same queries, each a context normalised over its
/// own keys with its log-sum-exp, as the one softmax over both groups (§9.2): the contexts weighted
/// by exp(lse_i − lse), lse = ln(e^lse₁ + e^lse₂). Returns the merged read and the second read's
/// share of each query's mass.
fn merge_reads(
    (first, first_lse): (Tensor, Tensor),
    (second, second_lse): (Tensor, Tensor),
) -> ((Tensor, Tensor), Tensor) {
    let total = first_lse.logaddexp(&second_lse);
    let share = (second_lse - &total).exp();
    let context = first * (first_lse - &total).exp() + second * &share;
    ((context, total), share)
}

impl LayerCache for LayerMemory {
    fn len(&self) -> i64 {
        self.keys.len()
    }

    /// The new tokens join their tiers (§9.7, `LayerMemory::take_in`); then their queries read
    /// every tier in one softmax each (`LayerMemory::read_tiers`; before anything has left the
    /// STM, exactly the plain KV cache's read); then the STM's overflow leaves for the archive
    /// (`LayerMemory::evict_overflow`).
    fn attend(
        &mut self,
        queries: &Tensor,
        keys: &Tensor,
        values: &Tensor,
        rope: &RopeTable,
    ) -> Result<Tensor, ModelError> {
        let (b, h, t, d) = queries.size4()?;
        let h_kv = keys.size()[1];
        let start = self.keys.len() + i64::from(self.evicted);
        if start + t > rope.len() {
            return Err(ModelError::ContextFull {
                needed: start + t,
                capacity: rope.len(),
            });
        }
        let (queries, rotated_keys) = rope.rotate_pair(queries, keys, start);
        self.take_in(keys, &rotated_keys, values);
        let held = (
            self.keys.view().expect("tokens are held"),
            self.values.view().expect("tokens are held"),
        );
        let context = if self.archive.blocks() == 0 && self.points().is_none() {
            grouped_attention(&queries, &held.0, &held.1)
        } else {
            let grouped = queries.reshape([b, h_kv, h / h_kv, t, d]);
            self.read_tiers(&grouped, (&held.0, &held.1))
                .reshape([b, h, t, d])
        };
        self.evict_overflow(rope)?;
        Ok(context)
    }

    /// [`LayerMemory::attend`] for one new token per row on host memory, its first half: the
    /// token joins its tier and each key/value head's queries (summed) rank the archive's blocks
    /// on the host; the read returned covers sinks, STM and the chosen blocks where they lie, in
    /// one softmax of ours ([`host_attention::read`]), which with sticky retention also weighs
    /// each chosen block (its mass goes to its stickiness in [`LayerCache::after_read`]).
    /// Declined, with nothing changed, where the joint read needs tensors: the signal's points
    /// (their ln w_k bias), an int8 archive, a GPU, or nothing held yet.
    fn take_in_rows(
        &mut self,
        step: &HostStep,
        rope: &RopeTable,
    ) -> Option<Result<host_attention::Read, ModelError>> {
        let (keys, values) = (self.keys.buffer()?, self.values.buffer()?);
        let points = self.points().is_some();
        let exact = self.archive.blocks() == 0 || self.archive.is_exact();
        if !step.fits(keys) || !step.fits(values) || points || !exact {
            return None;
        }
        let start = self.keys.len() + i64::from(self.evicted);
        if start >= rope.len() {
            return Some(Err(ModelError::ContextFull {
                needed: start + 1,
                capacity: rope.len(),
            }));
        }
        let rows = step.rows(rope, start);
        self.take_in_row(step, &rows);
        let [b, h, h_kv, d] = step.shape;
        let group = (h / h_kv) as usize;
        let query_sums: Vec<f32> = rows
            .queries
            .chunks_exact(group * d as usize)
            .flat_map(|queries| {
                let mut sum = vec![0f32; d as usize];
                for q in queries.chunks_exact(d as usize) {
                    sum.iter_mut().zip(q).for_each(|(s, q)| *s += q);
                }
                sum
            })
            .collect();
        let chosen = self
            .archive
            .choose_on_host(&query_sums, [b, h_kv], self.config.top_k_blocks);
        let pasts = self.pasts(chosen, self.archive.stickiness().is_some());
        Some(
            pasts
                .ok_or_else(|| unread(step))
                .map(|pasts| host_attention::Read {
                    queries: rows.queries,
                    shape: [b, h_kv, group as i64, d],
                    pasts,
                }),
        )
    }

    /// The second half of a host step: the chosen blocks' mass joins their stickiness (sticky
    /// retention; the same shares of the softmax as [`LayerMemory::read_tiers`] adds), then the
    /// STM's overflow leaves for the archive.
    fn after_read(
        &mut self,
        read: &host_attention::Output,
        rope: &RopeTable,
    ) -> Result<(), ModelError> {
        self.archive.add_mass(read.block_mass.iter().copied());
        self.evict_overflow(rope)
    }

    /// Sticky retention over the session's layers ([`LayerMemory::retain_sticky`]).
    fn after_forward(layers: &mut [&mut Self]) -> Result<(), ModelError> {
        Self::retain_sticky(layers);
        Ok(())
    }
}

impl LayerMemory {
    /// Takes in T new keys (pre-RoPE, and `rotated` to their window positions) and values: the
    /// first ones become sinks until there are `sinks`, the rest the STM; both in token order in
    /// one run, so that the causal mask over that run covers them all.
    fn take_in(&mut self, keys: &Tensor, rotated: &Tensor, values: &Tensor) {
        let t = keys.size()[2];
        let to_sinks = (self.config.sinks as i64 - self.sinks_held()).clamp(0, t);
        self.keys.append(rotated);
        self.values.append(values);
        if t > to_sinks {
            self.stm_keys
                .append(&keys.narrow(2, to_sinks, t - to_sinks));
        }
    }

    /// [`LayerMemory::take_in`] for one new token per row given as host rows: written in place
    /// where the windows have room ([`Window::append_row`]), else appended as tensors.
    fn take_in_row(&mut self, step: &HostStep, rows: &StepRows) {
        let to_stm = self.sinks_held() >= self.config.sinks as i64;
        let windows = [
            (&mut self.keys, &rows.keys),
            (&mut self.values, &rows.values),
        ];
        let stm = to_stm.then_some((&mut self.stm_keys, &rows.raw_keys));
        for (window, rows) in windows.into_iter().chain(stm) {
            if !window.append_row(rows) {
                window.append(&step.to_tensor(rows));
            }
        }
    }

    /// The signal's points, once something was absorbed.
    fn points(&self) -> Option<&MemoryPoints> {
        self.continuous.as_ref().and_then(ContinuousTier::points)
    }

    /// The new tokens' queries `[B, H_kv, G, T, D]` (rotated) read every tier in one softmax per
    /// query (§9.2, §9.7): the `held` sinks and STM (the new tokens causally), the top-k archive
    /// blocks of the query's segment (each run of `block_len` new tokens ranks the blocks by its
    /// own queries) and the signal's points with their ln w_k. The softmax is computed split by key
    /// groups and merged exactly by log-sum-exp: the held run in one fused call for all T queries,
    /// read where it lies; the blocks and points of every segment of one length in one batched
    /// call ([`LayerMemory::read_memory`]), with one ranking for all segments. With sticky memories
    /// or read counts, the mass on the points is recorded. Returns `[B, H_kv, G, T, D]`.
    fn read_tiers(&mut self, queries: &Tensor, (keys, values): (&Tensor, &Tensor)) -> Tensor {
        let (b, h_kv, group, t, d) = queries.size5().expect("queries are [B, H_kv, G, T, D]");
        let segment = if self.archive.blocks() > 0 {
            self.config.block_len as i64
        } else {
            t
        };
        let cuts = segments::cut(t, segment);
        // Each run of segments' queries `[B, H_kv, S, G·n, D]`, laid out once for the ranking and
        // the read.
        let gathered: Vec<Tensor> = cuts.iter().map(|cut| cut.gather(queries)).collect();
        let sums: Vec<Tensor> = gathered
            .iter()
            .map(|rows| rows.sum_dim_intlist(3, false, Kind::Float))
            .collect();
        let chosen = self
            .archive
            .choose(&Tensor::cat(&sums, 2), self.config.top_k_blocks); // [B, H_kv, S, k]
        let keeps_stickiness = self.archive.stickiness().is_some();
        if t == 1 && self.points().is_none() && !keeps_stickiness {
            let single = queries.reshape([b, h_kv, group, d]);
            if let Some(context) = self.read_on_host(&single, chosen.as_ref()) {
                return context.reshape([b, h_kv, group, 1, d]);
            }
        }
        let (mut contexts, mut lses, mut point_masses) = (vec![], vec![], vec![]);
        let mut block_masses = vec![];
        let mut segments_done = 0;
        for (cut, rows) in cuts.iter().zip(&gathered) {
            let chosen = chosen
                .as_ref()
                .map(|c| c.narrow(2, segments_done, cut.count));
            segments_done += cut.count;
            let read = self.read_memory(rows, chosen.as_ref());
            if let (true, Some(chosen)) = (keeps_stickiness, &chosen) {
                // Each query's mass on each chosen block, within the memory's softmax:
                // [B, H_kv, S, G·n, k].
                let on_blocks = read.probabilities.first().expect("the blocks' group");
                let k = chosen.size()[3];
                let size = on_blocks.size();
                block_masses.push(
                    on_blocks
                        .view([size[0], size[1], size[2], size[3], k, -1])
                        .sum_dim_intlist(-1, false, Kind::Float),
                );
            }
            contexts.push(cut.scatter(&read.context, group));
            lses.push(cut.scatter(&read.log_normaliser, group));
            if self.points().is_some() {
                let on_points = read.probabilities.last().expect("the points' group");
                point_masses.push(cut.scatter(on_points, group));
            }
        }
        let memory = (Tensor::cat(&contexts, 3), Tensor::cat(&lses, 3));
        let ((context, _), memory_weight) = merge_reads(read_held(queries, keys, values), memory);
        if let Some(chosen) = chosen.as_ref().filter(|_| !block_masses.is_empty()) {
            // The blocks' share of each query's whole softmax, summed over the segment's queries:
            // [B, H_kv, S, k], as `chosen`.
            let masses: Vec<Tensor> = cuts
                .iter()
                .zip(&block_masses)
                .map(|(cut, masses)| {
                    (masses * cut.gather(&memory_weight)).sum_dim_intlist(3, false, Kind::Float)
                })
                .collect();
            self.add_block_mass(chosen, &Tensor::cat(&masses, 2));
        }
        if !point_masses.is_empty() && self.records_point_mass() {
            // The points' share of each query's whole softmax: [B, H_kv, G·T, R].
            let masses =
                (Tensor::cat(&point_masses, 3) * memory_weight).reshape([b, h_kv, group * t, -1]);
            if self.config.count_reads {
                self.count_signal_mass(&masses);
            }
            if let Some(tier) = self.continuous.as_mut() {
                tier.record_attention(&masses);
            }
        }
        context.to_kind(queries.kind())
    }

    /// Whether the softmax mass on the signal's points is wanted: by sticky memories (§4) or by
    /// the memory map's read counts.
    fn records_point_mass(&self) -> bool {
        self.config.count_reads
            || self
                .continuous
                .as_ref()
                .is_some_and(ContinuousTier::wants_attention)
    }

    /// Query segments of one length `[B, H_kv, S, G·n, D]` (rotated) read, each its `chosen`
    /// archive blocks `[B, H_kv, S, k]` and all of them the signal's points with their ln w_k, in
    /// one softmax over those keys, computed in f32 (f64 for f64 queries): the blocks' group
    /// first, the points' last. At least one of the two exists where this is called.
    fn read_memory(&self, queries: &Tensor, chosen: Option<&Tensor>) -> JointRead {
        let wide = wide_kind(queries.kind());
        let selected = chosen.and_then(|chosen| self.archive.gather(chosen));
        let blocks = selected.map(|s| [s.keys, s.values].map(|rows| rows.to_kind(wide))); // [B, H_kv, S, k·n, D]
        let points = self
            .points()
            .map(|p| [&p.keys, &p.values, &p.bias].map(|rows| rows.unsqueeze(2).to_kind(wide))); // keys, values [B, H_kv, 1, R, D]; ln w_k [B, 1, 1, 1, R]
        let mut groups = vec![];
        if let Some([keys, values]) = &blocks {
            groups.push(KeyGroup {
                keys,
                values,
                bias: None,
            });
        }
        if let Some([keys, values, bias]) = &points {
            groups.push(KeyGroup {
                keys,
                values,
                bias: Some(bias),
            });
        }
        joint_attention(&queries.to_kind(wide), &groups)
    }

    /// A decode step's read with nothing masked or biased (no points): sinks, STM and the chosen
    /// archive blocks, where they lie, in one softmax of ours on host memory
    /// ([`host_attention::decode`]), instead of gathering the blocks and copying them after the
    /// window. `chosen`: the blocks `[B, H_kv, 1, k]`. `None` where that does not apply (a GPU,
    /// an int8 archive, f64).
    fn read_on_host(&self, q: &Tensor, chosen: Option<&Tensor>) -> Option<Tensor> {
        let chosen = match chosen {
            Some(chosen) => Some(Vec::<i64>::try_from(chosen.reshape([-1])).ok()?),
            None => None,
        };
        host_attention::decode(q, self.pasts(chosen, false)?)
    }

    /// What a decode step reads where it lies: the sinks and the STM whole, and the `chosen`
    /// archive blocks (`[B, H_kv, k]`, row-major), each weighed if `weigh`. `None` when nothing
    /// is held or the archive is not exact.
    fn pasts(&self, chosen: Option<Vec<i64>>, weigh: bool) -> Option<Vec<Past>> {
        let (keys, values) = (self.keys.view()?, self.values.view()?);
        let mut pasts = vec![Past::Whole { keys, values }];
        if let Some(chosen) = chosen {
            let (keys, values) = self.archive.exact_rows()?;
            pasts.push(Past::Blocks {
                keys,
                values,
                chosen,
                block_len: self.archive.block_len(),
                weigh,
            });
        }
        Some(pasts)
    }

    /// Adds the mass `masses` `[B, H_kv, S, k]` that S segments' queries put on their `chosen`
    /// blocks (the same shape) to those blocks' stickiness.
    fn add_block_mass(&mut self, chosen: &Tensor, masses: &Tensor) {
        let host = |t: &Tensor, kind| t.to_device(tch::Device::Cpu).to_kind(kind).reshape([-1]);
        let chosen = Vec::<i64>::try_from(host(chosen, Kind::Int64));
        let masses = Vec::<f32>::try_from(host(masses, Kind::Float));
        if let (Ok(chosen), Ok(masses)) = (chosen, masses) {
            self.archive.add_mass(chosen.into_iter().zip(masses));
        }
    }

    /// Adds the mass `[B, H_kv, rows, R]` that session row 0's queries put on the points.
    fn count_signal_mass(&mut self, masses: &Tensor) {
        let (_, h_kv, rows, _) = masses.size4().expect("masses are [B, H_kv, rows, R]");
        let sum = masses.select(0, 0).sum(Kind::Float);
        let added = (h_kv * rows) as u64;
        self.signal_mass = Some(match self.signal_mass.take() {
            Some((before, n)) => (before + sum, n + added),
            None => (sum, added),
        });
    }

    /// Moves whole blocks out of an STM longer than `stm_len` into the archive (§9.7).
    fn evict_overflow(&mut self, rope: &RopeTable) -> Result<(), ModelError> {
        let over = self.stm_keys.len() - self.config.stm_len as i64;
        if over > 0 {
            let block = self.config.block_len as i64;
            self.evict_blocks((over + block - 1) / block, rope)
                .map_err(|e| ModelError::Io {
                    path: e.path,
                    source: e.source,
                })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
