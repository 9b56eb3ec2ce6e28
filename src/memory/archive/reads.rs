//! How often each archive block was read since the last [`ReadCounts::take`]: the memory map's
//! heat strip (`GET /v1/sessions/{id}/memory`). Counting is one `scatter_add_` on the tensor of
//! chosen indices where they already are (no copy to the host, so a GPU step does not wait), and
//! only while the archive holds blocks.

use tch::{Kind, Tensor};

/// Per-block read counts, aligned with the archive's held blocks.
#[derive(Debug, Default)]
pub struct ReadCounts {
    /// `[B, blocks]` int64 on the archive's device: reads of each held block (oldest first);
    /// `None` until the first read since the last take.
    per_block: Option<Tensor>,
    /// `[B]` reads of blocks that have since left the archive.
    of_blocks_gone: Option<Tensor>,
    /// Blocks picked per session row: Σ over the reads of KV heads × k.
    picks: u64,
    /// Query segments that read the archive.
    segments: u64,
}

/// The counts of one layer since the last take, for session row 0 (a session's memory is one row).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerReads {
    /// Reads of each held block, oldest first (empty when nothing was read).
    pub per_block: Vec<u64>,
    /// Reads of blocks that left the archive after being read.
    pub of_blocks_gone: u64,
    pub picks: u64,
    pub segments: u64,
}

impl ReadCounts {
    /// Counts one segment's choice `[B, H_kv, k]` among `blocks` held blocks.
    pub fn count(&mut self, chosen: &Tensor, blocks: i64) {
        let (b, h, k) = chosen.size3().expect("chosen blocks are [B, H_kv, k]");
        let chosen = chosen.reshape([b, h * k]);
        let counts = self
            .per_block
            .get_or_insert_with(|| Tensor::zeros([b, blocks], (Kind::Int64, chosen.device())));
        let _ = counts.scatter_add_(1, &chosen, &Tensor::ones_like(&chosen));
        self.picks += (h * k) as u64;
        self.segments += 1;
    }

    /// One block joined the archive (it has not been read yet).
    pub fn pushed(&mut self) {
        if let Some(counts) = &self.per_block {
            let fresh = Tensor::zeros([counts.size()[0], 1], (Kind::Int64, counts.device()));
            self.per_block = Some(Tensor::cat(&[counts, &fresh], 1));
        }
    }

    /// The oldest `blocks` blocks left the archive: their reads move to `of_blocks_gone`.
    pub fn popped(&mut self, blocks: i64) {
        let Some(counts) = self.per_block.take() else {
            return;
        };
        let held = counts.size()[1];
        let gone = counts
            .narrow(1, 0, blocks)
            .sum_dim_intlist(1, false, Kind::Int64);
        self.of_blocks_gone = Some(match self.of_blocks_gone.take() {
            Some(before) => before + gone,
            None => gone,
        });
        self.per_block = Some(counts.narrow(1, blocks, held - blocks));
    }

    /// The counts since the last take, and a fresh start.
    pub fn take(&mut self) -> LayerReads {
        let first_row = |t: Option<Tensor>| -> Vec<u64> {
            t.map_or_else(Vec::new, |t| {
                Vec::<i64>::try_from(t.select(0, 0).to_device(tch::Device::Cpu))
                    .expect("int64 counts convert")
                    .into_iter()
                    .map(|c| c as u64)
                    .collect()
            })
        };
        let counts = std::mem::take(self);
        LayerReads {
            per_block: first_row(counts.per_block),
            of_blocks_gone: first_row(counts.of_blocks_gone.map(|t| t.unsqueeze(1)))
                .first()
                .copied()
                .unwrap_or(0),
            picks: counts.picks,
            segments: counts.segments,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_the_blocks_as_they_join_and_leave() {
        let mut reads = ReadCounts::default();
        let chosen = |v: &[i64]| Tensor::from_slice(v).view([1, 2, v.len() as i64 / 2]);
        reads.count(&chosen(&[0, 2, 2, 1]), 3); // two heads, k = 2
        reads.pushed();
        reads.count(&chosen(&[3, 0, 3, 2]), 4);
        reads.popped(1); // block 0 (read twice) leaves
        let taken = reads.take();
        assert_eq!(taken.per_block, vec![1, 3, 2]);
        assert_eq!(taken.of_blocks_gone, 2);
        assert_eq!((taken.picks, taken.segments), (8, 2));
        assert_eq!(
            taken.per_block.iter().sum::<u64>() + taken.of_blocks_gone,
            taken.picks
        );
        assert_eq!(reads.take(), LayerReads::default(), "a take starts afresh");
    }
}
