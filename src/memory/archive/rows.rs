//! The archive's token rows (keys or values), exact in the model's dtype or int8: each token's
//! row of each head quantised symmetrically by its absolute maximum (one scale per token and head,
//! kept in the model's dtype), and dequantised only when read.

use crate::memory::spill::{SpillError, Storage};
use crate::memory::window::Window;
use tch::{Kind, Tensor};

/// Largest int8 code of the symmetric range −127..=127.
const INT8_MAX: f64 = 127.0;

/// Rows `[B, H, len, D]` of one kind, exact or int8.
#[derive(Debug)]
pub struct Rows {
    codes: Window,          // [B, H, len, D]: the rows themselves, or their int8 codes
    scales: Option<Window>, // [B, H, len, 1] in the model's dtype, when int8
}

/// A run of rows as stored: `codes` exact or int8, `scales` present when int8.
#[derive(Debug)]
pub struct StoredRows {
    pub codes: Tensor,
    pub scales: Option<Tensor>,
}

/// `rows` as int8 codes and per-row scales (the scales in the rows' dtype): row r is
/// approximately `codes[r] · scales[r]`, off by at most half a scale per element.
pub fn quantise(rows: &Tensor) -> StoredRows {
    let float = rows.to_kind(Kind::Float);
    // The scale is rounded to the model's dtype first, and the codes computed from it, so that
    // dequantising in that dtype reproduces the rounding the codes were made for.
    let scales = (float.abs().amax([-1].as_slice(), true) / INT8_MAX)
        .clamp_min(f64::from(f32::MIN_POSITIVE))
        .to_kind(rows.kind());
    let codes = (float / scales.to_kind(Kind::Float))
        .round()
        .clamp(-INT8_MAX, INT8_MAX)
        .to_kind(Kind::Int8);
    StoredRows {
        codes,
        scales: Some(scales),
    }
}

impl StoredRows {
    /// The rows in the dtype they were archived in.
    pub fn dequantise(self) -> Tensor {
        match self.scales {
            Some(scales) => self.codes.to_kind(scales.kind()) * scales,
            None => self.codes,
        }
    }
}

impl Rows {
    /// Empty rows, int8 or exact, allocated in `storage` in whole blocks of `block_len` tokens.
    pub fn new(int8: bool, storage: &Storage, block_len: i64) -> Self {
        let window = || Window::in_storage(storage.clone()).in_blocks(block_len);
        Self {
            codes: window(),
            scales: int8.then(window),
        }
    }

    /// Tokens held.
    pub fn len(&self) -> i64 {
        self.codes.len()
    }

    /// Whether the rows are held exact, not as int8 codes.
    pub fn is_exact(&self) -> bool {
        self.scales.is_none()
    }

    /// The held rows as they lie (a view), when they are exact, not int8 codes.
    pub fn exact(&self) -> Option<Tensor> {
        if self.is_exact() {
            self.codes.view()
        } else {
            None
        }
    }

    /// Bytes held (codes and scales).
    pub fn bytes(&self) -> usize {
        self.codes.bytes() + self.scales.as_ref().map_or(0, Window::bytes)
    }

    /// The RAM buffers held, by address, with their bytes (spare room included).
    pub fn resident_buffers(&self) -> impl Iterator<Item = (usize, usize)> {
        let codes = self.codes.resident_buffer();
        codes
            .into_iter()
            .chain(self.scales.as_ref().and_then(Window::resident_buffer))
    }

    /// The same rows over the same buffers until either writes ([`Window::share`]).
    pub fn share(&self) -> Self {
        Self {
            codes: self.codes.share(),
            scales: self.scales.as_ref().map(Window::share),
        }
    }

    /// Appends rows `[B, H, T, D]` given in the model's dtype (quantised here when int8).
    pub fn append(&mut self, rows: &Tensor) -> Result<(), SpillError> {
        match &mut self.scales {
            Some(scales) => {
                let stored = quantise(rows);
                self.codes.try_append(&stored.codes)?;
                scales.try_append(stored.scales.as_ref().expect("quantised rows have scales"))
            }
            None => self.codes.try_append(rows),
        }
    }

    /// Forgets every token after the first `len` (undoing a partial append).
    pub fn truncate(&mut self, len: i64) {
        self.codes.truncate(len);
        if let Some(scales) = &mut self.scales {
            scales.truncate(len);
        }
    }

    /// Appends rows exactly as stored (a restore).
    pub fn append_stored(&mut self, rows: &StoredRows) -> Result<(), SpillError> {
        self.codes.try_append(&rows.codes)?;
        match (&mut self.scales, &rows.scales) {
            (Some(window), Some(scales)) => window.try_append(scales),
            _ => Ok(()),
        }
    }

    /// Tokens `start..start + len`, copied out as stored.
    pub fn stored(&self, start: i64, len: i64) -> Option<StoredRows> {
        let part = |w: &Window| w.view().map(|t| t.narrow(2, start, len).copy());
        Some(StoredRows {
            codes: part(&self.codes)?,
            scales: match &self.scales {
                Some(w) => Some(part(w)?),
                None => None,
            },
        })
    }

    /// Removes blocks `blocks` (ascending, `block_len` tokens each), returned in that order in the
    /// model's dtype ([`Window::take_blocks`]).
    pub fn take_blocks(&mut self, blocks: &[i64], block_len: i64) -> Tensor {
        StoredRows {
            codes: self.codes.take_blocks(blocks, block_len),
            scales: self
                .scales
                .as_mut()
                .map(|w| w.take_blocks(blocks, block_len)),
        }
        .dequantise()
    }

    /// The blocks `chosen` `[B, H, k]` (of `block_len` tokens each), per head, in the model's dtype
    /// `[B, H, k·block_len, D]`: only these are dequantised. `None` when empty.
    pub fn gather_blocks(&self, chosen: &Tensor, block_len: i64) -> Option<Tensor> {
        Some(
            StoredRows {
                codes: self.codes.gather_blocks(chosen, block_len)?,
                scales: match &self.scales {
                    Some(w) => Some(w.gather_blocks(chosen, block_len)?),
                    None => None,
                },
            }
            .dequantise(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Each element comes back within half a scale (absmax/254 of its row), in bf16 as in f32.
    #[test]
    fn int8_rows_come_back_within_half_a_scale() {
        tch::manual_seed(21);
        for kind in [Kind::Float, Kind::BFloat16] {
            let rows = (Tensor::randn([1, 3, 40, 64], (Kind::Float, Device::Cpu))
                * Tensor::from_slice(&[0.01f32, 1.0, 30.0]).view([1, 3, 1, 1]))
            .to_kind(kind);
            let back = quantise(&rows).dequantise();
            assert_eq!(back.kind(), kind);
            let rows = rows.to_kind(Kind::Float);
            let half_scale = rows.abs().amax([-1].as_slice(), true) / 254.0;
            // bf16 adds its own rounding of the product (8 bits): up to 1/256 of the row's max.
            let slack = if kind == Kind::Float {
                1.0001
            } else {
                1.0 + 254.0 / 256.0 * 1.01
            };
            let excess = ((back.to_kind(Kind::Float) - &rows).abs() - half_scale * slack)
                .max()
                .double_value(&[]);
            assert!(
                excess <= 0.0,
                "{kind:?}: an element is off by {excess} beyond half a scale"
            );
        }
    }
}
