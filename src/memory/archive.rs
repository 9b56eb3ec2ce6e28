//! The exact archive (`infinity-former.md` §9.7, tier 3): blocks of evicted tokens kept exactly, each
//! with a representative key; every query segment reads only its top-k blocks (InfLLM's way), so the
//! compute per token stays fixed while storage grows up to the budget.

use super::window::Window;
use tch::{Kind, Tensor};

/// Blocks of `block_len` tokens, keys already rotated to the memory position.
#[derive(Debug)]
pub struct Archive {
    block_len: i64,
    keys: Window,            // [B, H_kv, blocks·block_len, D]
    values: Window,          // [B, H_kv, blocks·block_len, D]
    representatives: Window, // [B, H_kv, blocks, D]: the mean key of each block
    /// Blocks ever pushed: the oldest held block is number `pushed − blocks` of the session, so a
    /// store can append new blocks and forget popped ones without rewriting the rest.
    pushed: u64,
}

/// One block as it is stored: keys and values `[B, H_kv, block_len, D]`, representative `[B, H_kv, 1, D]`.
#[derive(Debug)]
pub struct Block {
    pub keys: Tensor,
    pub values: Tensor,
    pub representative: Tensor,
}

/// The blocks one query segment reads: keys and values `[B, H_kv, k·block_len, D]`.
#[derive(Debug)]
pub struct Selection {
    pub keys: Tensor,
    pub values: Tensor,
}

impl Archive {
    pub fn new(block_len: usize) -> Self {
        Self {
            block_len: block_len as i64,
            keys: Window::new(),
            values: Window::new(),
            representatives: Window::new(),
            pushed: 0,
        }
    }

    /// The session-wide number of the oldest held block (blocks are numbered from 0 as pushed).
    pub fn first_block(&self) -> u64 {
        self.pushed - self.blocks() as u64
    }

    /// Held block `index` (0 is the oldest held), copied out exactly.
    pub fn block(&self, index: i64) -> Option<Block> {
        if !(0..self.blocks()).contains(&index) {
            return None;
        }
        let n = self.block_len;
        let part =
            |w: &Window, start: i64, len: i64| w.view().map(|t| t.narrow(2, start, len).copy());
        Some(Block {
            keys: part(&self.keys, index * n, n)?,
            values: part(&self.values, index * n, n)?,
            representative: part(&self.representatives, index, 1)?,
        })
    }

    /// An archive restored from its blocks, the oldest numbered `first_block`.
    pub fn restore(block_len: usize, first_block: u64, blocks: &[Block]) -> Self {
        let mut archive = Self::new(block_len);
        for block in blocks {
            archive.representatives.append(&block.representative);
            archive.keys.append(&block.keys);
            archive.values.append(&block.values);
        }
        archive.pushed = first_block + blocks.len() as u64;
        archive
    }

    /// Tokens held.
    pub fn tokens(&self) -> i64 {
        self.keys.len()
    }

    /// Blocks held.
    pub fn blocks(&self) -> i64 {
        self.representatives.len()
    }

    /// Bytes of keys, values and representatives held.
    pub fn bytes(&self) -> usize {
        self.keys.bytes() + self.values.bytes() + self.representatives.bytes()
    }

    /// Appends one block: keys (rotated to the memory position) and values `[B, H_kv, block_len, D]`.
    pub fn push(&mut self, keys: &Tensor, values: &Tensor) {
        debug_assert_eq!(keys.size()[2], self.block_len);
        self.representatives
            .append(&keys.mean_dim(2, true, keys.kind()));
        self.keys.append(keys);
        self.values.append(values);
        self.pushed += 1;
    }

    /// Removes the oldest `blocks` blocks, returning their keys and values `[B, H_kv, blocks·block_len, D]`.
    pub fn pop_oldest(&mut self, blocks: i64) -> (Tensor, Tensor) {
        let _ = self.representatives.take_front(blocks);
        (
            self.keys.take_front(blocks * self.block_len),
            self.values.take_front(blocks * self.block_len),
        )
    }

    /// The `k` blocks most relevant to a query segment, per key/value head: a block's score is the
    /// sum over the segment's queries (grouped `[B, H_kv, G·T, D]`, rotated) of q·r, r its
    /// representative key. Returns `None` when the archive is empty.
    pub fn select(&self, grouped_queries: &Tensor, k: usize) -> Option<Selection> {
        let (keys, values, reps) = (
            self.keys.view()?,
            self.values.view()?,
            self.representatives.view()?,
        );
        let blocks = self.blocks();
        let k = (k as i64).min(blocks);
        let scores = grouped_queries
            .matmul(&reps.transpose(-1, -2))
            .sum_dim_intlist(2, false, Kind::Float); // [B, H_kv, blocks]
        let (_, chosen) = scores.topk(k, -1, true, true);
        let (chosen, _) = chosen.sort(-1, false); // keep the archive's order
        let (b, h, _, d) = keys.size4().expect("keys are [B, H_kv, L, D]");
        let index = chosen
            .view([b, h, k, 1, 1])
            .expand([b, h, k, self.block_len, d], false);
        let gather = |t: &Tensor| {
            t.reshape([b, h, blocks, self.block_len, d])
                .gather(2, &index, false)
                .reshape([b, h, k * self.block_len, d])
        };
        Some(Selection {
            keys: gather(&keys),
            values: gather(&values),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn selects_the_blocks_whose_representatives_match_the_queries() {
        let options = (Kind::Float, Device::Cpu);
        let mut archive = Archive::new(4);
        // Block j's keys all point along basis vector j (of 6), value = j.
        for j in 0..6 {
            let key = Tensor::zeros([1, 1, 4, 6], options);
            let _ = key.narrow(3, j, 1).fill_(1.0);
            archive.push(&key, &Tensor::full([1, 1, 4, 6], j as f64, options));
        }
        let query = Tensor::zeros([1, 1, 2, 6], options);
        let _ = query.narrow(3, 4, 1).fill_(1.0);
        let _ = query.narrow(3, 1, 1).fill_(0.5);
        let picked = archive.select(&query, 2).unwrap();
        let values: Vec<f32> = Vec::try_from(picked.values.select(3, 0).view([-1])).unwrap();
        assert_eq!(values, vec![1.0, 1.0, 1.0, 1.0, 4.0, 4.0, 4.0, 4.0]);
        let (old_keys, _) = archive.pop_oldest(2);
        assert_eq!(old_keys.size(), vec![1, 1, 8, 6]);
        assert_eq!((archive.blocks(), archive.tokens()), (4, 16));
    }
}
