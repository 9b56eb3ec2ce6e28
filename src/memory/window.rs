//! A fixed-capacity run of per-token rows `[B, H, len, D]` in one preallocated buffer: appends
//! write in place, and dropping the oldest tokens shifts the rest once. The short-term memory
//! lives in these, so a decode step allocates nothing that grows with the conversation. A window
//! may keep its buffer in a memory-mapped spill file ([`Storage`]) instead of RAM.

use super::spill::{SpillError, Storage};
use tch::Tensor;

/// Token rows of one kind (pre-RoPE keys, rotated keys or values) for every batch row and head.
#[derive(Debug)]
pub struct Window {
    buffer: Option<Tensor>, // [B, H, capacity, D]
    len: i64,
    storage: Storage,
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
        }
    }

    /// A window holding `rows` `[B, H, T, D]` (T may be 0: an empty window); the inverse of
    /// [`Window::view`], used when a memory is read back from its serialised form.
    pub fn from_rows(rows: Option<Tensor>) -> Self {
        let len = rows.as_ref().map_or(0, |r| r.size()[2]);
        Self {
            buffer: rows,
            len,
            storage: Storage::Ram,
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
        let needed = self.len + t;
        let capacity = self.buffer.as_ref().map_or(0, |b| b.size()[2]);
        if needed > capacity {
            let size = rows.size();
            let grown_capacity = needed.max(2 * capacity).max(64);
            let grown = self.storage.zeros(
                &[size[0], size[1], grown_capacity, size[3]],
                rows.kind(),
                rows.device(),
            )?;
            if let Some(old) = &self.buffer {
                grown
                    .narrow(2, 0, self.len)
                    .copy_(&old.narrow(2, 0, self.len));
            }
            self.buffer = Some(grown);
        }
        let buffer = self.buffer.as_ref().expect("allocated above");
        buffer.narrow(2, self.len, t).copy_(rows);
        self.len = needed;
        Ok(())
    }

    /// Forgets every token after the first `len` (undoing a partial append).
    pub fn truncate(&mut self, len: i64) {
        self.len = self.len.min(len);
    }

    /// Removes the oldest `n` tokens and returns them as a new tensor `[B, H, n, D]`.
    pub fn take_front(&mut self, n: i64) -> Tensor {
        assert!(n <= self.len, "taking {n} of {} tokens", self.len);
        let buffer = self
            .buffer
            .as_ref()
            .expect("a window with tokens has a buffer");
        let taken = buffer.narrow(2, 0, n).copy();
        let rest = buffer.narrow(2, n, self.len - n).copy();
        buffer.narrow(2, 0, self.len - n).copy_(&rest);
        self.len -= n;
        taken
    }

    /// Replaces every held token with `rows` of the same shape (a re-rotation).
    pub fn overwrite(&mut self, rows: &Tensor) {
        let buffer = self.buffer.as_ref().expect("overwrite needs held tokens");
        buffer.narrow(2, 0, self.len).copy_(rows);
    }
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
    }
}
