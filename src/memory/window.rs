//! A fixed-capacity run of per-token rows `[B, H, len, D]` in one preallocated buffer: appends
//! write in place, and dropping the oldest tokens shifts the rest once. The short-term memory
//! lives in these, so a decode step allocates nothing that grows with the conversation. A window
//! may keep its buffer in a memory-mapped spill file ([`Storage`]) instead of RAM.

use super::spill::{SpillError, Storage};
use crate::model::host_attention;
use tch::Tensor;

/// Token rows of one kind (pre-RoPE keys, rotated keys or values) for every batch row and head.
#[derive(Debug)]
pub struct Window {
    buffer: Option<Tensor>, // [B, H, capacity, D]
    len: i64,
    storage: Storage,
    /// The buffer's capacity is a multiple of this (1, or an archive's block length).
    granule: i64,
}

impl Window {
    /// An empty window in RAM.
    pub fn new() -> Self {
        Self::in_storage(Storage::Ram)
    }

    /// An empty window whose buffers are allocated in `storage`.
    pub fn in_storage(storage: Storage) -> Self {
        Self {
            buffer: None,
            len: 0,
            storage,
            granule: 1,
        }
    }

    /// The same window with its capacity kept a multiple of `block_len`, so that whole blocks can
    /// be gathered from the buffer in one index ([`Window::gather_blocks`]).
    pub fn in_blocks(self, block_len: i64) -> Self {
        Self {
            granule: block_len.max(1),
            ..self
        }
    }

    /// A window holding `rows` `[B, H, T, D]` (T may be 0: an empty window); the inverse of
    /// [`Window::view`], used when a memory is read back from its serialised form.
    pub fn from_rows(rows: Option<Tensor>) -> Self {
        let len = rows.as_ref().map_or(0, |r| r.size()[2]);
        Self {
            buffer: rows.map(|r| r.contiguous()),
            len,
            storage: Storage::Ram,
            granule: 1,
        }
    }

    /// Tokens held.
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of the held tokens (not of the spare capacity).
    pub fn bytes(&self) -> usize {
        self.view()
            .map_or(0, |t| t.numel() * t.kind().elt_size_in_bytes())
    }

    /// The held tokens `[B, H, len, D]` (a view; empty before the first append).
    pub fn view(&self) -> Option<Tensor> {
        self.buffer.as_ref().map(|b| b.narrow(2, 0, self.len))
    }

    /// Appends `rows` `[B, H, T, D]` to a window in RAM (which cannot fail but for memory).
    pub fn append(&mut self, rows: &Tensor) {
        debug_assert_eq!(
            self.storage,
            Storage::Ram,
            "a spilled window uses try_append"
        );
        self.try_append(rows)
            .expect("a window in RAM allocates without a file");
    }

    /// Appends `rows` `[B, H, T, D]`, growing the buffer (by doubling) only when it is full; the
    /// grown buffer is allocated in the window's storage, so a spilled window can fail here.
    pub fn try_append(&mut self, rows: &Tensor) -> Result<(), SpillError> {
        let t = rows.size()[2];
        let buffer = self.reserve(self.len + t, rows)?;
        buffer.narrow(2, self.len, t).copy_(rows);
        self.len += t;
        Ok(())
    }

    /// Appends one token's rows (f32, `[B, H, D]` row-major) in place, in the buffer's kind, when
    /// the buffer has room for it on the CPU ([`host_attention::write_position`]); `false`,
    /// appending nothing, otherwise (the caller appends a tensor instead).
    pub fn append_row(&mut self, rows: &[f32]) -> bool {
        let written = self
            .buffer
            .as_ref()
            .is_some_and(|buffer| host_attention::write_position(buffer, self.len, rows));
        self.len += i64::from(written);
        written
    }

    /// The buffer (a handle to it), grown (in the window's storage, to at least double, and to
    /// whole granules) when it holds fewer than `needed` tokens; `like` gives the shape of a row
    /// and the dtype when nothing is allocated yet.
    fn reserve(&mut self, needed: i64, like: &Tensor) -> Result<Tensor, SpillError> {
        let capacity = self.buffer.as_ref().map_or(0, |b| b.size()[2]);
        if needed > capacity {
            let size = like.size();
            let grown_capacity = needed.max(2 * capacity).max(64);
            let grown_capacity = round_up(grown_capacity, self.granule);
            let grown = self.storage.zeros(
                &[size[0], size[1], grown_capacity, size[3]],
                like.kind(),
                like.device(),
            )?;
            if let Some(old) = &self.buffer {
                grown
                    .narrow(2, 0, self.len)
                    .copy_(&old.narrow(2, 0, self.len));
            }
            self.buffer = Some(grown);
        }
        Ok(self
            .buffer
            .as_ref()
            .expect("allocated above")
            .shallow_clone())
    }

    /// Blocks `chosen` `[B, H, k]` of `block_len` tokens (block j holds tokens j·block_len..), per
    /// batch row and head, as `[B, H, k·block_len, D]`: one index over the whole buffer, viewed
    /// as rows of one block each. `None` when nothing is held; the window must be [`Window::in_blocks`].
    pub fn gather_blocks(&self, chosen: &Tensor, block_len: i64) -> Option<Tensor> {
        let buffer = self.buffer.as_ref()?;
        let (b, h, capacity, d) = buffer.size4().expect("rows are [B, H, L, D]");
        assert_eq!(
            capacity % block_len,
            0,
            "a window gathered by blocks of {block_len} has a capacity of {capacity}"
        );
        let per_head = capacity / block_len;
        let k = chosen.size()[2];
        let first: Vec<i64> = (0..b * h).map(|row| row * per_head).collect();
        let first = Tensor::from_slice(&first)
            .to_device(chosen.device())
            .view([b, h, 1]);
        let index = (chosen + first).view([-1]);
        Some(
            buffer
                .view([b * h * per_head, block_len * d])
                .index_select(0, &index)
                .view([b, h, k * block_len, d]),
        )
    }

    /// Forgets every token after the first `len` (undoing a partial append).
    pub fn truncate(&mut self, len: i64) {
        self.len = self.len.min(len);
    }

    /// Removes the oldest `n` tokens and returns them as a new tensor `[B, H, n, D]`.
    pub fn take_front(&mut self, n: i64) -> Tensor {
        self.take(0, n)
    }

    /// Removes tokens `start..start + n` and returns them as a new tensor `[B, H, n, D]`; the
    /// later tokens move up once.
    pub fn take(&mut self, start: i64, n: i64) -> Tensor {
        assert!(
            start + n <= self.len,
            "taking {start}..{} of {} tokens",
            start + n,
            self.len
        );
        let buffer = self
            .buffer
            .as_ref()
            .expect("a window with tokens has a buffer");
        let taken = buffer.narrow(2, start, n).copy();
        let after = self.len - start - n;
        let rest = buffer.narrow(2, start + n, after).copy();
        buffer.narrow(2, start, after).copy_(&rest);
        self.len -= n;
        taken
    }
}

/// `n` rounded up to a multiple of `step` (both positive).
fn round_up(n: i64, step: i64) -> i64 {
    (n + step - 1) / step * step
}

impl Default for Window {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn appends_and_takes_in_token_order() {
        let rows = |from: i64, n: i64| {
            Tensor::arange_start(from, from + n, (Kind::Float, Device::Cpu))
                .view([1, 1, n, 1])
                .expand([2, 3, n, 4], false)
        };
        let mut w = Window::new();
        w.append(&rows(0, 50));
        w.append(&rows(50, 30)); // grows past the first 64 slots
        assert_eq!(w.len(), 80);
        let front = w.take_front(20);
        assert!(front.equal(&rows(0, 20)));
        assert!(w.view().unwrap().equal(&rows(20, 60)));
        w.append(&rows(80, 5));
        assert!(w.view().unwrap().equal(&rows(20, 65)));
        let middle = w.take(10, 5); // tokens 30..35
        assert!(middle.equal(&rows(30, 5)));
        let held = w.view().unwrap();
        assert!(held.narrow(2, 0, 10).equal(&rows(20, 10)));
        assert!(held.narrow(2, 10, 50).equal(&rows(35, 50)));
    }
}
