//! How often each archive block was read since the last [`ReadCounts::take`]: the memory map's
//! heat strip (`GET /v1/sessions/{id}/memory`). Counting happens where the chosen indices already
//! are, so it costs a decode step nothing measurable: indices in host memory (the CPU's ranking
//! loop writes them there) are tallied in a plain vector without a libtorch call; indices on a GPU
//! are added with one `scatter_add_` there, with no copy to the host for the step to wait on.

use tch::{Device, Kind, Tensor};

/// Per-block read counts `[B, blocks]`, aligned with the archive's held blocks (oldest first).
#[derive(Debug)]
enum Tally {
    /// Row-major counts in host memory, and the rows.
    Host { counts: Vec<u64>, rows: usize },
    /// int64 counts on the device.
    Device(Tensor),
}

impl Tally {
    /// Zero counts for `rows` × `blocks`, where `chosen` lives.
    fn zeros(rows: i64, blocks: i64, device: Device) -> Self {
        match device {
            Device::Cpu => Self::Host {
                counts: vec![0; (rows * blocks) as usize],
                rows: rows as usize,
            },
            device => Self::Device(Tensor::zeros([rows, blocks], (Kind::Int64, device))),
        }
    }

    /// Adds one read of every index in `chosen` `[B, H_kv, k]` to its row.
    fn add(&mut self, chosen: &Tensor) {
        let (b, h, k) = chosen.size3().expect("chosen blocks are [B, H_kv, k]");
        match self {
            Self::Host { .. } => {
                let indices = Vec::<i64>::try_from(chosen.reshape([-1]).to_device(Device::Cpu))
                    .expect("int64 indices convert");
                self.add_indices(&indices, [b, h, k]);
            }
            Self::Device(counts) => {
                let chosen = chosen.reshape([b, h * k]);
                let _ = counts.scatter_add_(1, &chosen, &Tensor::ones_like(&chosen));
            }
        }
    }

    /// [`Tally::add`] with the chosen blocks `[B, H_kv, k]` as host indices.
    fn add_indices(&mut self, chosen: &[i64], [b, h, k]: [i64; 3]) {
        match self {
            Self::Host { counts, rows } => {
                let blocks = counts.len() / *rows;
                for (row, picked) in chosen.chunks_exact((h * k) as usize).enumerate() {
                    for &index in picked {
                        counts[row * blocks + index as usize] += 1;
                    }
                }
            }
            Self::Device(_) => {
                let chosen = Tensor::from_slice(chosen).view([b, h, k]);
                self.add(&chosen.to_device(self.device()));
            }
        }
    }

    fn device(&self) -> Device {
        match self {
            Self::Host { .. } => Device::Cpu,
            Self::Device(counts) => counts.device(),
        }
    }

    /// The same counts with an unread block after the others.
    fn with_new_block(self) -> Self {
        match self {
            Self::Host { counts, rows } => {
                let blocks = counts.len() / rows;
                let mut grown = Vec::with_capacity(rows * (blocks + 1));
                for row in 0..rows {
                    grown.extend_from_slice(&counts[row * blocks..(row + 1) * blocks]);
                    grown.push(0);
                }
                Self::Host {
                    counts: grown,
                    rows,
                }
            }
            Self::Device(counts) => {
                let fresh = Tensor::zeros([counts.size()[0], 1], (Kind::Int64, counts.device()));
                Self::Device(Tensor::cat(&[counts, fresh], 1))
            }
        }
    }

    /// The counts without blocks `leaving` (ascending), and the reads of those blocks per row.
    fn without(self, leaving: &[usize]) -> (Vec<u64>, Self) {
        match self {
            Self::Host { counts, rows } => {
                let blocks = counts.len() / rows;
                let mut gone = vec![0; rows];
                let mut kept = Vec::with_capacity(rows * (blocks - leaving.len()));
                for (row, gone) in gone.iter_mut().enumerate() {
                    let counts = &counts[row * blocks..(row + 1) * blocks];
                    for (block, &count) in counts.iter().enumerate() {
                        if leaving.binary_search(&block).is_ok() {
                            *gone += count;
                        } else {
                            kept.push(count);
                        }
                    }
                }
                (gone, Self::Host { counts: kept, rows })
            }
            Self::Device(counts) => {
                let blocks = counts.size()[1] as usize;
                let indices = |wanted: bool| {
                    let picked: Vec<i64> = (0..blocks)
                        .filter(|b| leaving.binary_search(b).is_ok() == wanted)
                        .map(|b| b as i64)
                        .collect();
                    Tensor::from_slice(&picked).to_device(counts.device())
                };
                let gone =
                    counts
                        .index_select(1, &indices(true))
                        .sum_dim_intlist(1, false, Kind::Int64);
                let kept = counts.index_select(1, &indices(false));
                (row_values(&gone), Self::Device(kept))
            }
        }
    }

    /// Session row 0's counts.
    fn first_row(&self) -> Vec<u64> {
        match self {
            Self::Host { counts, rows } => counts[..counts.len() / rows].to_vec(),
            Self::Device(counts) => row_values(&counts.select(0, 0)),
        }
    }
}

/// An int64 vector tensor's values, copied to the host.
fn row_values(values: &Tensor) -> Vec<u64> {
    Vec::<i64>::try_from(values.to_device(Device::Cpu))
        .expect("int64 counts convert")
        .into_iter()
        .map(|c| c as u64)
        .collect()
}

/// Per-block read counts since the last take.
#[derive(Debug, Default)]
pub struct ReadCounts {
    /// `None` until the first read since the last take.
    per_block: Option<Tally>,
    /// Reads of session row 0's blocks that have since left the archive.
    of_blocks_gone: u64,
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
    /// Counts S segments' choices `[B, H_kv, S, k]` among `blocks` held blocks.
    pub fn count(&mut self, chosen: &Tensor, blocks: i64) {
        let (b, h, s, k) = chosen.size4().expect("chosen blocks are [B, H_kv, S, k]");
        self.counted([b, h, s, k], blocks, chosen.device())
            .add(&chosen.reshape([b, h * s, k]));
    }

    /// [`ReadCounts::count`] with the choices as host indices `[B, H_kv, S, k]`, row-major.
    pub fn count_on_host(&mut self, chosen: &[i64], [b, h, s, k]: [i64; 4], blocks: i64) {
        self.counted([b, h, s, k], blocks, Device::Cpu)
            .add_indices(chosen, [b, h * s, k]);
    }

    /// Counts S segments of `[B, H_kv, k]` picks each, and the tally (made on `device` for
    /// `blocks` blocks if there is none yet) that takes them.
    fn counted(&mut self, [b, h, s, k]: [i64; 4], blocks: i64, device: Device) -> &mut Tally {
        self.picks += (h * s * k) as u64;
        self.segments += s as u64;
        self.per_block
            .get_or_insert_with(|| Tally::zeros(b, blocks, device))
    }

    /// One block joined the archive (it has not been read yet).
    pub fn pushed(&mut self) {
        self.per_block = self.per_block.take().map(Tally::with_new_block);
    }

    /// Held blocks `leaving` (ascending) left the archive: their reads move to `of_blocks_gone`.
    pub fn removed(&mut self, leaving: &[usize]) {
        if let Some(tally) = self.per_block.take() {
            let (gone, kept) = tally.without(leaving);
            self.of_blocks_gone += gone.first().copied().unwrap_or(0);
            self.per_block = Some(kept);
        }
    }

    /// The counts since the last take, and a fresh start.
    pub fn take(&mut self) -> LayerReads {
        let counts = std::mem::take(self);
        LayerReads {
            per_block: counts
                .per_block
                .as_ref()
                .map_or_else(Vec::new, Tally::first_row),
            of_blocks_gone: counts.of_blocks_gone,
            picks: counts.picks,
            segments: counts.segments,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same reads, pushes and pops tallied in host memory and as a tensor (the GPU's way,
    /// here on the CPU) give the same counts.
    #[test]
    fn counts_follow_the_blocks_as_they_join_and_leave() {
        let chosen = |v: &[i64]| Tensor::from_slice(v).view([1, 2, 1, v.len() as i64 / 2]);
        let on_device = || ReadCounts {
            per_block: Some(Tally::Device(Tensor::zeros(
                [1, 3],
                (Kind::Int64, Device::Cpu),
            ))),
            ..ReadCounts::default()
        };
        for mut reads in [ReadCounts::default(), on_device()] {
            reads.count(&chosen(&[0, 2, 2, 1]), 3); // two heads, k = 2
            reads.pushed();
            reads.count(&chosen(&[3, 0, 3, 2]), 4);
            reads.removed(&[0]); // block 0 (read twice) leaves
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
        // Host indices (a decode step on host memory) count as the tensor does, and two segments
        // of one pick per head (a prefill's segments ranked together) as two segments.
        let (mut by_tensor, mut by_indices) = (ReadCounts::default(), ReadCounts::default());
        by_tensor.count(&chosen(&[0, 2, 2, 1]).view([1, 2, 2, 1]), 3);
        by_indices.count_on_host(&[0, 2, 2, 1], [1, 2, 2, 1], 3);
        let taken = by_tensor.take();
        assert_eq!(
            (taken.per_block.clone(), taken.picks, taken.segments),
            (vec![1, 1, 2], 4, 2)
        );
        assert_eq!(by_indices.take(), taken);
    }
}
