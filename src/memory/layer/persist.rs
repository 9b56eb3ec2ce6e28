//! One layer's memory as bytes, exactly: the fixed core (sinks, STM, staged blocks, the signal and
//! its points, counters) and, apart from it, the archive's blocks, so that a store can append new
//! blocks and drop popped ones without rewriting the rest (issue 4, item 2).

use super::LayerMemory;
use crate::ltm::{LongTermMemory, MemoryOperators};
use crate::memory::archive::{Block, StoredRows};
use crate::memory::codec::{Reader, SessionFormatError, Writer};
use crate::memory::continuous::{ContinuousTier, MemoryPoints};
use crate::memory::window::Window;
use crate::memory::MemoryConfig;
use tch::{Device, Kind, Tensor};

/// What every tensor of a layer's memory must look like: `[1, H_kv, T, D]` in the model's dtype.
#[derive(Debug, Clone, Copy)]
pub struct LayerShape {
    pub kv_heads: i64,
    pub head_dim: i64,
    pub kind: Kind,
    pub device: Device,
}

impl LayerShape {
    /// Checks a token-row tensor `[1, H_kv, T, D]` in the model's dtype, T ≤ `max_tokens`.
    fn rows(&self, t: Tensor, what: &str, max_tokens: i64) -> Result<Tensor, SessionFormatError> {
        self.rows_of(t, what, max_tokens, self.head_dim, self.kind)
    }

    /// Checks a tensor `[1, H_kv, T, width]` of `kind`, T ≤ `max_tokens`.
    fn rows_of(
        &self,
        t: Tensor,
        what: &str,
        max_tokens: i64,
        width: i64,
        kind: Kind,
    ) -> Result<Tensor, SessionFormatError> {
        let size = t.size();
        let fits = size.len() == 4
            && size[0] == 1
            && size[1] == self.kv_heads
            && size[2] <= max_tokens
            && size[3] == width
            && t.kind() == kind;
        if !fits {
            return Err(SessionFormatError::Corrupt(format!(
                "{what} has shape {size:?} of {:?}; expected [1, {}, ≤{max_tokens}, {width}] of {kind:?}",
                t.kind(),
                self.kv_heads,
            )));
        }
        Ok(t)
    }

    /// One block's keys or values as stored: rows in the model's dtype, or int8 codes and then
    /// (read by [`LayerMemory::read_block`] after the representative) their scales.
    fn block_codes(
        &self,
        r: &mut Reader,
        what: &str,
        block_len: i64,
        int8: bool,
    ) -> Result<Tensor, SessionFormatError> {
        let kind = if int8 { Kind::Int8 } else { self.kind };
        self.rows_of(r.tensor(self.device)?, what, block_len, self.head_dim, kind)
    }

    fn block_scales(
        &self,
        r: &mut Reader,
        what: &str,
        block_len: i64,
    ) -> Result<Tensor, SessionFormatError> {
        self.rows_of(r.tensor(self.device)?, what, block_len, 1, self.kind)
    }

    fn window(
        &self,
        r: &mut Reader,
        what: &str,
        max_tokens: i64,
    ) -> Result<Window, SessionFormatError> {
        let rows = r
            .optional_tensor(self.device)?
            .map(|t| self.rows(t, what, max_tokens))
            .transpose()?;
        Ok(Window::from_rows(rows))
    }
}

/// Stored stickiness: f32, one per held block.
fn stickiness_of(t: Tensor, blocks: usize) -> Result<Vec<f32>, SessionFormatError> {
    if t.kind() != Kind::Float || t.size() != [blocks as i64] {
        return Err(SessionFormatError::Corrupt(format!(
            "the archive's stickiness has shape {:?} of {:?}; expected [{blocks}] of Float",
            t.size(),
            t.kind()
        )));
    }
    Vec::<f32>::try_from(t).map_err(|e| SessionFormatError::Corrupt(e.to_string()))
}

fn write_window(w: &mut Writer, window: &Window) {
    w.optional_tensor(window.view().as_ref());
}

/// Tokens `start..start + len` of `window`, `None` when there are none.
fn part(window: &Window, start: i64, len: i64) -> Option<Tensor> {
    (len > 0).then(|| window.view().expect("held tokens").narrow(2, start, len))
}

/// `first` followed by `second` along the tokens, as one window.
fn joined(first: &Window, second: &Window) -> Window {
    let rows = match (first.view(), second.view()) {
        (Some(a), Some(b)) => Some(Tensor::cat(&[a, b], 2)),
        (a, b) => a.or(b),
    };
    Window::from_rows(rows)
}

impl LayerMemory {
    /// Serialises everything but the archive's blocks (see [`LayerMemory::write_block`]).
    pub(crate) fn write_core(&self, w: &mut Writer) {
        // The format keeps the tiers apart: sink keys and values, then the STM's pre-RoPE keys,
        // rotated keys and values.
        let (sinks, stm) = (self.sinks_held(), self.stm_keys.len());
        w.optional_tensor(part(&self.keys, 0, sinks).as_ref());
        w.optional_tensor(part(&self.values, 0, sinks).as_ref());
        write_window(w, &self.stm_keys);
        w.optional_tensor(part(&self.keys, sinks, stm).as_ref());
        w.optional_tensor(part(&self.values, sinks, stm).as_ref());
        for window in [&self.staged_keys, &self.staged_values] {
            write_window(w, window);
        }
        w.bool(self.evicted);
        w.u64(self.dropped);
        let memory = self.continuous.as_ref().and_then(|c| c.memory());
        w.bool(memory.is_some());
        if let Some(m) = memory {
            w.tensor(m.coefficients());
            w.tensor(m.attention_mass());
            w.tensor(m.token_density());
            w.u64(m.tokens_absorbed()[0]);
            w.u64(m.updates()[0]);
        }
        let points = self.continuous.as_ref().and_then(|c| c.points());
        w.bool(points.is_some());
        if let Some(p) = points {
            w.tensor(&p.keys);
            w.tensor(&p.values);
            w.tensor(&p.bias);
        }
        // Since format 2: each held block's stickiness (f32, oldest first), when kept.
        let stickiness = self.archive.stickiness().map(Tensor::from_slice);
        w.optional_tensor(stickiness.as_ref());
    }

    /// Held archive block `index` (0 the oldest held), exactly as stored: keys, values and the
    /// representative, then, when the archive is int8, the keys' and the values' scales.
    pub(crate) fn write_block(&self, w: &mut Writer, index: i64) {
        let block = self.archive.block(index).expect("the block is held");
        w.tensor(&block.keys.codes);
        w.tensor(&block.values.codes);
        w.tensor(&block.representative);
        for scales in [&block.keys.scales, &block.values.scales]
            .into_iter()
            .flatten()
        {
            w.tensor(scales);
        }
    }

    /// Each held archive block's stickiness summed over one session's `layers` (which hold the
    /// same blocks), oldest first; empty when stickiness is not kept (`fifo` retention).
    pub(crate) fn summed_stickiness<'a>(
        layers: impl IntoIterator<Item = &'a LayerMemory>,
    ) -> Vec<f32> {
        let mut sum: Vec<f32> = vec![];
        for layer in layers {
            let stickiness = layer.archive.stickiness().unwrap_or_default();
            sum.resize(stickiness.len(), 0.0);
            sum.iter_mut()
                .zip(stickiness)
                .for_each(|(sum, s)| *sum += s);
        }
        sum
    }

    /// The session-wide numbers of the held archive blocks, ascending.
    pub(crate) fn archive_numbers(&self) -> &[u64] {
        self.archive.numbers()
    }

    /// Adds `mass` to the stickiness of held block number `number` (if held), as if the queries
    /// had used it: for tests of retention with a model whose reads are all alike.
    #[cfg(test)]
    pub(crate) fn use_block(&mut self, number: u64, mass: f32) {
        if let Some(index) = self.archive.numbers().iter().position(|&n| n == number) {
            self.archive.add_mass([(index as i64, mass)]);
        }
    }

    /// Reads one block written by [`LayerMemory::write_block`] (int8 when `int8`).
    pub(crate) fn read_block(
        r: &mut Reader,
        shape: &LayerShape,
        block_len: i64,
        int8: bool,
    ) -> Result<Block, SessionFormatError> {
        let keys = shape.block_codes(r, "an archive block's keys", block_len, int8)?;
        let values = shape.block_codes(r, "an archive block's values", block_len, int8)?;
        let representative = shape.rows(
            r.tensor(shape.device)?,
            "an archive block's representative key",
            1,
        )?;
        let (key_scales, value_scales) = if int8 {
            (
                Some(shape.block_scales(r, "an archive block's key scales", block_len)?),
                Some(shape.block_scales(r, "an archive block's value scales", block_len)?),
            )
        } else {
            (None, None)
        };
        let full = |t: &Option<Tensor>| t.as_ref().is_none_or(|t| t.size()[2] == block_len);
        if keys.size()[2] != block_len
            || values.size()[2] != block_len
            || !full(&key_scales)
            || !full(&value_scales)
        {
            return Err(SessionFormatError::Corrupt(format!(
                "an archive block holds {} tokens, expected {block_len}",
                keys.size()[2]
            )));
        }
        Ok(Block {
            keys: StoredRows {
                codes: keys,
                scales: key_scales,
            },
            values: StoredRows {
                codes: values,
                scales: value_scales,
            },
            representative,
        })
    }

    /// The inverse of [`LayerMemory::write_core`] of format `version`, with the archive's blocks
    /// (numbered `numbers`) read separately.
    pub(crate) fn read_core(
        r: &mut Reader,
        version: u32,
        config: &MemoryConfig,
        operators: Option<MemoryOperators>,
        shape: &LayerShape,
        (numbers, blocks): (&[u64], &[Block]),
    ) -> Result<Self, SessionFormatError> {
        let (sinks, stm, chunk) = (
            config.sinks as i64,
            config.stm_len as i64,
            config.ltm_chunk_len as i64,
        );
        let sink_keys = shape.window(r, "the sink keys", sinks)?;
        let sink_values = shape.window(r, "the sink values", sinks)?;
        let stm_keys = shape.window(r, "the STM keys", stm)?;
        let stm_rotated = shape.window(r, "the rotated STM keys", stm)?;
        let stm_values = shape.window(r, "the STM values", stm)?;
        let staged_keys = shape.window(r, "the staged keys", chunk)?;
        let staged_values = shape.window(r, "the staged values", chunk)?;
        let lengths_agree = sink_keys.len() == sink_values.len()
            && stm_keys.len() == stm_rotated.len()
            && stm_keys.len() == stm_values.len()
            && staged_keys.len() == staged_values.len();
        if !lengths_agree {
            return Err(SessionFormatError::Corrupt(
                "keys and values of one tier hold different numbers of tokens".into(),
            ));
        }
        if !stm_keys.is_empty() && sink_keys.len() < sinks {
            return Err(SessionFormatError::Corrupt(format!(
                "the STM holds tokens while only {} of {sinks} sinks are held",
                sink_keys.len()
            )));
        }
        let evicted = r.bool()?;
        let dropped = r.u64()?;
        let memory = if r.bool()? {
            let ops = operators.as_ref().ok_or_else(|| {
                SessionFormatError::Corrupt("a continuous signal, but the layout has none".into())
            })?;
            let coefficients = r.tensor(ops.device())?;
            let attention_mass = r.tensor(ops.device())?;
            let token_density = r.tensor(ops.device())?;
            let (absorbed, updates) = (r.u64()?, r.u64()?);
            let memory = LongTermMemory::from_state(
                ops,
                coefficients,
                attention_mass,
                token_density,
                vec![absorbed],
                vec![updates],
            )
            .ok_or_else(|| {
                SessionFormatError::Corrupt(
                    "the continuous signal's shapes do not match the layout".into(),
                )
            })?;
            Some(memory)
        } else {
            None
        };
        let points = if r.bool()? {
            let read = |r: &mut Reader| r.tensor(shape.device);
            let (keys, values, bias) = (read(r)?, read(r)?, read(r)?);
            let r_points = operators
                .as_ref()
                .map_or(0, |o| o.config().quadrature_points as i64);
            let keys = shape.rows(keys, "the signal's points", r_points)?;
            let values = shape.rows(values, "the signal's point values", r_points)?;
            if keys.size()[2] != r_points || bias.size() != [1, 1, 1, r_points] {
                return Err(SessionFormatError::Corrupt(format!(
                    "the signal holds {} points, the layout reads {r_points}",
                    keys.size()[2]
                )));
            }
            Some(MemoryPoints { keys, values, bias })
        } else {
            None
        };
        let stickiness = if version >= 2 {
            r.optional_tensor(Device::Cpu)?
                .map(|t| stickiness_of(t, blocks.len()))
                .transpose()?
        } else {
            None
        };
        let continuous = operators.map(|ops| ContinuousTier::restore(ops, memory, points));
        let mut archive = super::new_archive(config);
        archive
            .restore(numbers, blocks, stickiness)
            .map_err(|e| SessionFormatError::Spill(e.to_string()))?;
        Ok(Self {
            archive,
            config: config.clone(),
            keys: joined(&sink_keys, &stm_rotated),
            values: joined(&sink_values, &stm_values),
            stm_keys,
            staged_keys,
            staged_values,
            continuous,
            evicted,
            dropped,
            signal_mass: None,
        })
    }
}
