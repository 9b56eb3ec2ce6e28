//! The exact archive (`infinity-former.md` §9.7, tier 3): blocks of evicted tokens kept exactly, each
//! with a representative key; every query segment reads only its top-k blocks (InfLLM's way), so the
//! compute per token stays fixed while storage grows up to the budget.

mod ranking;
mod reads;
mod retention;
mod rows;
pub use reads::LayerReads;
pub use retention::{
    least_sticky, protected_blocks, Stickiness, SINK_LIKE_BLOCKS, STICKY_HALF_LIFE,
};
pub use rows::{quantise, StoredRows};

use super::spill::{SpillError, Storage};
use super::window::Window;
use reads::ReadCounts;
use rows::Rows;
use tch::{Kind, Tensor};

/// Blocks of `block_len` tokens, keys already rotated to the memory position; keys and values
/// exact or int8 (`Rows`), in RAM or spilled ([`Storage`]); representatives always exact.
#[derive(Debug)]
pub struct Archive {
    block_len: i64,
    keys: Rows,   // [B, H_kv, blocks·block_len, D]
    values: Rows, // [B, H_kv, blocks·block_len, D]
    /// `[B, H_kv, blocks, D]`: the mean key of each block, in the model's dtype.
    representatives: Window,
    /// Blocks ever pushed: the next block is number `pushed` of the session.
    pushed: u64,
    /// The session-wide numbers of the held blocks, ascending (consecutive unless blocks left out
    /// of order, [`Archive::release`]), so a store can append new blocks and forget released ones
    /// without rewriting the rest.
    numbers: Vec<u64>,
    /// How often each held block was selected since the last take; `None`: not counted.
    reads: Option<ReadCounts>,
    /// Each held block's stickiness, for sticky retention; `None`: not kept.
    stickiness: Option<Stickiness>,
}

/// One block as it is stored: keys and values `[B, H_kv, block_len, D]` (with their scales when
/// int8), representative `[B, H_kv, 1, D]`.
#[derive(Debug)]
pub struct Block {
    pub keys: StoredRows,
    pub values: StoredRows,
    pub representative: Tensor,
}

/// The blocks each of S query segments reads: keys and values `[B, H_kv, S, k·block_len, D]`.
#[derive(Debug)]
pub struct Selection {
    pub keys: Tensor,
    pub values: Tensor,
}

impl Archive {
    /// An empty archive of blocks of `block_len` tokens; keys and values int8 when `int8`, their
    /// buffers in `storage`.
    pub fn new(block_len: usize, int8: bool, storage: &Storage) -> Self {
        Self {
            block_len: block_len as i64,
            keys: Rows::new(int8, storage, block_len as i64),
            values: Rows::new(int8, storage, block_len as i64),
            representatives: Window::new(),
            pushed: 0,
            numbers: Vec::new(),
            reads: None,
            stickiness: None,
        }
    }

    /// The same archive keeping each block's stickiness ([`Archive::add_mass`]), for sticky
    /// retention.
    pub fn keeping_stickiness(self) -> Self {
        Self {
            stickiness: Some(Stickiness::default()),
            ..self
        }
    }

    /// Each held block's stickiness, oldest first, when kept.
    pub fn stickiness(&self) -> Option<&[f32]> {
        self.stickiness.as_ref().map(Stickiness::values)
    }

    /// Adds each `(block, mass)`'s attention mass to held block `block`'s stickiness (the choices
    /// of every row, KV head and segment), when kept; none to the conversation's first
    /// [`SINK_LIKE_BLOCKS`] blocks.
    pub fn add_mass(&mut self, reads: impl IntoIterator<Item = (i64, f32)>) {
        let Some(stickiness) = &mut self.stickiness else {
            return;
        };
        let numbers = &self.numbers;
        let sink_like = |block: i64| {
            numbers
                .get(block as usize)
                .is_some_and(|&n| n < SINK_LIKE_BLOCKS)
        };
        stickiness.add(reads.into_iter().filter(|&(block, _)| !sink_like(block)));
    }

    /// The same archive counting how often each block is selected ([`Archive::take_reads`]).
    pub fn counting_reads(self) -> Self {
        Self {
            reads: Some(ReadCounts::default()),
            ..self
        }
    }

    /// The selections counted since the last take (empty when not counting), and a fresh count.
    pub fn take_reads(&mut self) -> LayerReads {
        self.reads
            .as_mut()
            .map_or_else(LayerReads::default, ReadCounts::take)
    }

    /// The session-wide numbers of the held blocks, ascending (blocks are numbered from 0 as
    /// pushed).
    pub fn numbers(&self) -> &[u64] {
        &self.numbers
    }

    /// Held block `index` (0 is the oldest held), copied out exactly as stored.
    pub fn block(&self, index: i64) -> Option<Block> {
        if !(0..self.blocks()).contains(&index) {
            return None;
        }
        let n = self.block_len;
        Some(Block {
            keys: self.keys.stored(index * n, n)?,
            values: self.values.stored(index * n, n)?,
            representative: self.representatives.view()?.narrow(2, index, 1).copy(),
        })
    }

    /// Appends blocks as stored (a restore), numbered `numbers` (ascending, one per block), with
    /// their stickiness when it is kept (unread when the stored memory has none: one saved before
    /// it existed).
    pub fn restore(
        &mut self,
        numbers: &[u64],
        blocks: &[Block],
        stickiness: Option<Vec<f32>>,
    ) -> Result<(), SpillError> {
        debug_assert_eq!(numbers.len(), blocks.len());
        for block in blocks {
            self.representatives.append(&block.representative);
            self.keys.append_stored(&block.keys)?;
            self.values.append_stored(&block.values)?;
        }
        self.numbers.extend_from_slice(numbers);
        self.pushed = numbers.last().map_or(0, |n| n + 1);
        if let Some(kept) = &mut self.stickiness {
            *kept = Stickiness::from_values(stickiness.unwrap_or_else(|| vec![0.0; blocks.len()]));
        }
        Ok(())
    }

    /// Tokens held.
    pub fn tokens(&self) -> i64 {
        self.keys.len()
    }

    /// Blocks held.
    pub fn blocks(&self) -> i64 {
        self.representatives.len()
    }

    /// Bytes of keys, values (with their scales) and representatives held.
    pub fn bytes(&self) -> usize {
        self.keys.bytes() + self.values.bytes() + self.representatives.bytes()
    }

    /// The RAM buffers of keys, values and representatives, by address, with their bytes (spare
    /// room included; spilled rows hold none).
    pub fn resident_buffers(&self) -> impl Iterator<Item = (usize, usize)> {
        self.keys
            .resident_buffers()
            .chain(self.values.resident_buffers())
            .chain(self.representatives.resident_buffer())
    }

    /// The same blocks over the same buffers until either archive writes ([`Window::share`]): a
    /// fork of a long session costs no copy of its archive. Reads are counted afresh.
    pub fn share(&self) -> Self {
        Self {
            block_len: self.block_len,
            keys: self.keys.share(),
            values: self.values.share(),
            representatives: self.representatives.share(),
            pushed: self.pushed,
            numbers: self.numbers.clone(),
            reads: self.reads.as_ref().map(|_| ReadCounts::default()),
            stickiness: self.stickiness.clone(),
        }
    }

    /// Appends one block: keys (rotated to the memory position) and values `[B, H_kv, block_len, D]`.
    /// A block that cannot be stored (a spill file that cannot be made) leaves the archive as it was.
    pub fn push(&mut self, keys: &Tensor, values: &Tensor) -> Result<(), SpillError> {
        debug_assert_eq!(keys.size()[2], self.block_len);
        let tokens = self.tokens();
        let stored = self
            .keys
            .append(keys)
            .and_then(|()| self.values.append(values));
        if let Err(e) = stored {
            self.keys.truncate(tokens);
            self.values.truncate(tokens);
            return Err(e);
        }
        self.representatives
            .append(&keys.mean_dim(2, true, keys.kind()));
        self.numbers.push(self.pushed);
        self.pushed += 1;
        if let Some(reads) = &mut self.reads {
            reads.pushed();
        }
        if let Some(stickiness) = &mut self.stickiness {
            stickiness.pushed();
        }
        Ok(())
    }

    /// Removes the oldest `blocks` blocks, returning their keys and values `[B, H_kv, blocks·block_len, D]`
    /// in the model's dtype.
    pub fn pop_oldest(&mut self, blocks: i64) -> (Tensor, Tensor) {
        let oldest: Vec<usize> = (0..blocks as usize).collect();
        self.release(&oldest)
    }

    /// Removes held blocks `leaving` (indices, ascending, 0 the oldest held; at least one),
    /// returning their keys and values in that order `[B, H_kv, blocks·block_len, D]` in the
    /// model's dtype. The blocks after the first of them move up once.
    pub fn release(&mut self, leaving: &[usize]) -> (Tensor, Tensor) {
        let blocks: Vec<i64> = leaving.iter().map(|&i| i as i64).collect();
        let _ = self.representatives.take_blocks(&blocks, 1);
        let mut index = 0;
        self.numbers.retain(|_| {
            index += 1;
            leaving.binary_search(&(index - 1)).is_err()
        });
        if let Some(reads) = &mut self.reads {
            reads.removed(leaving);
        }
        if let Some(stickiness) = &mut self.stickiness {
            stickiness.remove(leaving);
        }
        (
            self.keys.take_blocks(&blocks, self.block_len),
            self.values.take_blocks(&blocks, self.block_len),
        )
    }

    /// The `k` blocks most relevant to a query segment, per key/value head, most relevant first:
    /// a block's score is the sum over the segment's queries (grouped `[B, H_kv, G·T, D]`,
    /// rotated) of q·r, r its representative key, computed as (Σ q)·r in f32
    /// (`ranking::best_blocks`). Only the chosen blocks are dequantised. `None` when the archive
    /// is empty.
    pub fn select(&mut self, grouped_queries: &Tensor, k: usize) -> Option<Selection> {
        let sums = grouped_queries.sum_dim_intlist(2, true, Kind::Float); // [B, H_kv, 1, D]
        let chosen = self.choose(&sums, k)?;
        self.gather(&chosen)
    }

    /// The blocks each of S query segments reads, `[B, H_kv, S, k]` int64, from the segments'
    /// query sums `[B, H_kv, S, D]` (f32; one ranking for all of them), each segment counted as
    /// one read. `None` when the archive is empty.
    pub fn choose(&mut self, query_sums: &Tensor, k: usize) -> Option<Tensor> {
        let representatives = self.representatives.view()?;
        let k = (k as i64).min(self.blocks());
        let chosen = ranking::best_blocks(&representatives, query_sums, k);
        if let Some(reads) = &mut self.reads {
            reads.count(&chosen, self.representatives.len());
        }
        Some(chosen)
    }

    /// [`Archive::choose`] for one query per row and key/value head on the host: `query_sums`
    /// `[B, H_kv, D]` (each head's G queries summed) gives the blocks `[B, H_kv, k]`, row-major,
    /// counted as read. `None` when the archive is empty.
    pub fn choose_on_host(
        &mut self,
        query_sums: &[f32],
        [b, h]: [i64; 2],
        k: usize,
    ) -> Option<Vec<i64>> {
        let representatives = self.representatives.view()?;
        let k = (k as i64).min(self.blocks());
        let chosen = ranking::best_blocks_on_host(&representatives, query_sums, k);
        if let Some(reads) = &mut self.reads {
            reads.count_on_host(&chosen, [b, h, 1, k], self.representatives.len());
        }
        Some(chosen)
    }

    /// The keys and values of the `chosen` blocks `[B, H_kv, S, k]` (S segments' choices),
    /// gathered into new tensors `[B, H_kv, S, k·block_len, D]` (dequantised when int8).
    pub fn gather(&self, chosen: &Tensor) -> Option<Selection> {
        let (b, h, s, k) = chosen.size4().ok()?;
        let flat = chosen.reshape([b, h, s * k]);
        let gather = |rows: &Rows| {
            let gathered = rows.gather_blocks(&flat, self.block_len)?;
            let d = gathered.size()[3];
            Some(gathered.view([b, h, s, k * self.block_len, d]))
        };
        Some(Selection {
            keys: gather(&self.keys)?,
            values: gather(&self.values)?,
        })
    }

    /// Whether keys and values are held exact (not int8), so that [`Archive::exact_rows`] gives
    /// them once blocks are held.
    pub fn is_exact(&self) -> bool {
        self.keys.is_exact() && self.values.is_exact()
    }

    /// Every held key and value `[B, H_kv, tokens, D]` where they lie (views), when they are
    /// exact (not int8): chosen blocks can then be read in place.
    pub fn exact_rows(&self) -> Option<(Tensor, Tensor)> {
        Some((self.keys.exact()?, self.values.exact()?))
    }

    /// Tokens per block.
    pub fn block_len(&self) -> i64 {
        self.block_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn selects_the_blocks_whose_representatives_match_the_queries() {
        let options = (Kind::Float, Device::Cpu);
        let mut archive = Archive::new(4, false, &Storage::Ram);
        // Block j's keys all point along basis vector j (of 6), value = j.
        for j in 0..6 {
            let key = Tensor::zeros([1, 1, 4, 6], options);
            let _ = key.narrow(3, j, 1).fill_(1.0);
            archive
                .push(&key, &Tensor::full([1, 1, 4, 6], j as f64, options))
                .unwrap();
        }
        let query = Tensor::zeros([1, 1, 2, 6], options);
        let _ = query.narrow(3, 4, 1).fill_(1.0);
        let _ = query.narrow(3, 1, 1).fill_(0.5);
        let picked = archive.select(&query, 2).unwrap();
        let values: Vec<f32> = Vec::try_from(picked.values.select(4, 0).view([-1])).unwrap();
        assert_eq!(values, vec![4.0, 4.0, 4.0, 4.0, 1.0, 1.0, 1.0, 1.0]); // best first
        let (old_keys, _) = archive.pop_oldest(2);
        assert_eq!(old_keys.size(), vec![1, 1, 8, 6]);
        assert_eq!((archive.blocks(), archive.tokens()), (4, 16));
    }
}
