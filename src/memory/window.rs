//! A run of per-token rows `[B, H, len, D]` in one buffer with spare room: appends write in
//! place, and dropping the oldest tokens shifts the rest once. The short-term memory lives in
//! these, so a decode step allocates nothing that grows with the conversation. The buffer grows by
//! a quarter when full, so the RAM a memory holds stays within a quarter (or one granule) of the
//! bytes its tokens need ([`Window::resident_bytes`]). A window may keep its buffer in a
//! memory-mapped spill file ([`Storage`]) instead of RAM. A forked memory's windows share their
//! parent's buffers ([`Window::share`]) until either writes: the writer copies first.

use std::sync::Arc;

use super::spill::{SpillError, Storage};
use crate::model::host_attention;
use tch::Tensor;

/// Tokens a buffer holds at least: a short window grows from here.
const MIN_CAPACITY: i64 = 64;

/// Token rows of one kind (pre-RoPE keys, rotated keys or values) for every batch row and head.
#[derive(Debug)]
pub struct Window {
    buffer: Option<Tensor>, // [B, H, capacity, D]
    /// Every window over `buffer` holds a clone of this; while there is more than one, the buffer
    /// is shared ([`Window::share`]) and a write copies it first (copy on write).
    owners: Arc<()>,
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
            owners: Arc::new(()),
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
            owners: Arc::new(()),
            len,
            storage: Storage::Ram,
            granule: 1,
        }
    }

    /// The same tokens over the same buffer, shared until either window writes: a write into a
    /// shared buffer copies it first, so neither window ever sees the other's later tokens.
    pub fn share(&self) -> Self {
        Self {
            buffer: self.buffer.as_ref().map(Tensor::shallow_clone),
            owners: Arc::clone(&self.owners),
            len: self.len,
            storage: self.storage.clone(),
            granule: self.granule,
        }
    }

    /// Whether another window reads this one's buffer ([`Window::share`]).
    fn is_shared(&self) -> bool {
        Arc::strong_count(&self.owners) > 1
    }

    /// The RAM address of the buffer (the same for windows that share it), with its
    /// [`Window::resident_bytes`]; `None` when the window holds no RAM.
    pub fn resident_buffer(&self) -> Option<(usize, usize)> {
        let bytes = self.resident_bytes();
        let buffer = self.buffer.as_ref().filter(|_| bytes > 0)?;
        Some((buffer.data_ptr() as usize, bytes))
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

    /// Bytes of RAM the buffer holds, spare room included (none when it lies in a spill file).
    pub fn resident_bytes(&self) -> usize {
        match (&self.buffer, &self.storage) {
            (Some(buffer), Storage::Ram) => buffer.numel() * buffer.kind().elt_size_in_bytes(),
            _ => 0,
        }
    }

    /// The whole buffer `[B, H, capacity, D]`, spare room included: for checks of its kind,
    /// device and shape but the length, which cost no view ([`Window::view`]) on a decode step.
    pub fn buffer(&self) -> Option<&Tensor> {
        self.buffer.as_ref()
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

    /// Appends `rows` `[B, H, T, D]`, growing the buffer (by a quarter) only when it is full; the
    /// grown buffer is allocated in the window's storage, so a spilled window can fail here.
    pub fn try_append(&mut self, rows: &Tensor) -> Result<(), SpillError> {
        let t = rows.size()[2];
        let buffer = self.reserve(self.len + t, rows)?;
        buffer.narrow(2, self.len, t).copy_(rows);
        self.len += t;
        Ok(())
    }

    /// Appends one token's rows (f32, `[B, H, D]` row-major) in place, in the buffer's kind, when
    /// the buffer is this window's alone and has room for it on the CPU
    /// ([`host_attention::write_position`]); `false`, appending nothing, otherwise (the caller
    /// appends a tensor instead).
    pub fn append_row(&mut self, rows: &[f32]) -> bool {
        let written = !self.is_shared()
            && self
                .buffer
                .as_ref()
                .is_some_and(|buffer| host_attention::write_position(buffer, self.len, rows));
        self.len += i64::from(written);
        written
    }

    /// The buffer (a handle to it), this window's own and with room for `needed` tokens: grown (in
    /// the window's storage, by at least a quarter, to at least [`MIN_CAPACITY`] tokens and to
    /// whole granules) when it holds fewer, copied when it is shared ([`Window::share`]); `like`
    /// gives the shape of a row and the dtype when nothing is allocated yet.
    fn reserve(&mut self, needed: i64, like: &Tensor) -> Result<Tensor, SpillError> {
        let capacity = self.buffer.as_ref().map_or(0, |b| b.size()[2]);
        if needed > capacity || self.is_shared() {
            let size = like.size();
            // Growing by a quarter copies each token about five times over the window's life (by
            // doubling, twice) and leaves at most a quarter of the buffer spare (not half).
            let new_capacity = if needed > capacity {
                round_up(
                    needed.max(capacity + capacity / 4).max(MIN_CAPACITY),
                    self.granule,
                )
            } else {
                capacity
            };
            let own = self.storage.zeros(
                &[size[0], size[1], new_capacity, size[3]],
                like.kind(),
                like.device(),
            )?;
            if let Some(old) = &self.buffer {
                own.narrow(2, 0, self.len)
                    .copy_(&old.narrow(2, 0, self.len));
            }
            self.buffer = Some(own);
            self.owners = Arc::new(());
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

    /// Removes blocks `blocks` (ascending, each `block_len` tokens: block j holds tokens
    /// j·block_len..) and returns them in that order as a new tensor `[B, H, blocks·block_len, D]`;
    /// the tokens after the first of them move up once, each by what left before it.
    pub fn take_blocks(&mut self, blocks: &[i64], block_len: i64) -> Tensor {
        let &first = blocks.first().expect("at least one block to take");
        let from = first * block_len;
        let tokens = |blocks: &mut dyn Iterator<Item = i64>| {
            let rows: Vec<i64> = blocks
                .flat_map(|b| b * block_len..(b + 1) * block_len)
                .collect();
            Tensor::from_slice(&rows)
        };
        let leaving = tokens(&mut blocks.iter().copied());
        let staying =
            tokens(&mut (first..self.len / block_len).filter(|b| blocks.binary_search(b).is_err()));
        let after = self.len - from - leaving.size()[0];
        assert!(
            after >= 0 && self.len % block_len == 0,
            "taking blocks {blocks:?} of {} tokens",
            self.len
        );
        let buffer = self.own_buffer();
        let index = |rows: &Tensor| rows.to_device(buffer.device());
        let taken = buffer.index_select(2, &index(&leaving));
        let rest = buffer.index_select(2, &index(&staying));
        buffer.narrow(2, from, after).copy_(&rest);
        self.len -= leaving.size()[0];
        taken
    }

    /// The buffer, this window's own (copied first when shared); where no spill file can be made
    /// for the copy, this window's copy lives in RAM instead.
    fn own_buffer(&mut self) -> Tensor {
        let held = self
            .buffer
            .as_ref()
            .expect("a window with tokens has a buffer")
            .shallow_clone();
        self.reserve(self.len, &held).unwrap_or_else(|_| {
            self.storage = Storage::Ram;
            self.reserve(self.len, &held)
                .expect("a window in RAM allocates without a file")
        })
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
        // A shared buffer is copied before the later tokens move up in it.
        let buffer = self.own_buffer();
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

    /// Tokens `from..from + n`, each row of every batch row and head filled with its number.
    fn rows(from: i64, n: i64) -> Tensor {
        Tensor::arange_start(from, from + n, (Kind::Float, Device::Cpu))
            .view([1, 1, n, 1])
            .expand([2, 3, n, 4], false)
    }

    #[test]
    fn shared_windows_copy_before_writing_and_never_see_each_others_tokens() {
        let mut parent = Window::new();
        parent.append(&rows(0, 40));
        let mut child = parent.share();
        assert_eq!(
            parent.resident_buffer(),
            child.resident_buffer(),
            "one buffer"
        );
        // The fork writes first: it copies; then the parent writes in place into its own.
        child.append(&rows(100, 5));
        assert_ne!(parent.resident_buffer(), child.resident_buffer());
        let before = parent.resident_buffer();
        parent.append(&rows(40, 5));
        assert_eq!(
            parent.resident_buffer(),
            before,
            "no longer shared: written in place"
        );
        assert!(parent.view().unwrap().equal(&rows(0, 45)));
        let expected = Tensor::cat(&[rows(0, 40), rows(100, 5)], 2);
        assert!(child.view().unwrap().equal(&expected));
        // Taking tokens out of a shared window leaves the other's alone; so does a host append,
        // which declines on a shared buffer.
        let mut other = parent.share();
        assert!(other.take_front(10).equal(&rows(0, 10)));
        assert!(other.view().unwrap().equal(&rows(10, 35)));
        assert!(parent.view().unwrap().equal(&rows(0, 45)));
        let third = parent.share();
        assert!(!parent.append_row(&[7.0; 2 * 3 * 4]));
        assert!(third.view().unwrap().equal(&rows(0, 45)));
    }

    #[test]
    fn buffers_grow_by_a_quarter_and_hold_at_most_that_spare() {
        let mut w = Window::new();
        for n in 0..200 {
            w.append(&rows(n, 1));
            let capacity = w.resident_bytes() / (2 * 3 * 4 * 4);
            let len = w.len() as usize;
            assert!(
                capacity >= len && capacity <= (len + len / 4).max(64),
                "{len} in {capacity}"
            );
        }
    }

    #[test]
    fn appends_and_takes_in_token_order() {
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

    #[test]
    fn blocks_taken_out_of_order_leave_the_rest_in_order() {
        let mut w = Window::new().in_blocks(4);
        w.append(&rows(0, 24)); // blocks 0..6 of 4 tokens
        let shared = w.share();
        let taken = w.take_blocks(&[1, 3, 4], 4);
        assert!(taken.equal(&Tensor::cat(&[rows(4, 4), rows(12, 8)], 2)));
        let held = w.view().unwrap();
        assert_eq!(held.size()[2], 12);
        for (at, block) in [0i64, 2, 5].into_iter().enumerate() {
            assert!(held.narrow(2, at as i64 * 4, 4).equal(&rows(block * 4, 4)));
        }
        assert!(
            shared.view().unwrap().equal(&rows(0, 24)),
            "a sharer keeps its blocks"
        );
    }
}
