//! A session memory's stored form without the model: its core and its archive blocks, split from
//! and joined into the one-file form of [`super::SessionMemory::to_bytes`]. A store keeps the parts
//! (the core in the session's row, one row per block) and needs only these byte-level functions.

use super::{HeldBlocks, FORMAT_VERSION, MAGIC};
use crate::memory::codec::{Reader, Writer};
use crate::memory::SessionFormatError;

/// What a core says before its layers: identity, layout and the blocks it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreHeader {
    /// The format the core was written in (1 to [`FORMAT_VERSION`]).
    pub version: u32,
    pub fingerprint: String,
    /// The memory layout as JSON.
    pub layout: String,
    pub layers: u32,
    /// The session-wide numbers of the archive blocks the memory holds.
    pub blocks: HeldBlocks,
}

impl CoreHeader {
    /// Reads the header at the start of a core, leaving `r` at the first layer.
    pub fn read(r: &mut Reader<'_>) -> Result<Self, SessionFormatError> {
        read_magic(r)?;
        let version = r.u32()?;
        if !(1..=FORMAT_VERSION).contains(&version) {
            return Err(SessionFormatError::Version {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let fingerprint = r.str()?.to_string();
        let layout = r.str()?.to_string();
        let layers = r.u32()?;
        let blocks = if version == 1 {
            // One run: the oldest held block and how many.
            let (first, held) = (r.u64()?, r.u64()?);
            let end = first.checked_add(held).ok_or_else(|| {
                SessionFormatError::Corrupt(format!("{held} blocks from {first}"))
            })?;
            HeldBlocks::of_range(first..end)
        } else {
            // Runs of held blocks: how many, then each run's first block and length. Read one
            // at a time: a corrupt count ends with the bytes, not with an allocation.
            let count = r.u64()?;
            let mut runs = Vec::new();
            for _ in 0..count {
                runs.push([r.u64()?, r.u64()?]);
            }
            HeldBlocks::of_runs(runs).ok_or_else(|| {
                SessionFormatError::Corrupt(
                    "the held archive blocks are not ascending runs apart from each other".into(),
                )
            })?
        };
        Ok(Self {
            version,
            fingerprint,
            layout,
            layers,
            blocks,
        })
    }

    /// Writes the header as [`CoreHeader::read`] reads it, in this build's format.
    pub fn write(
        w: &mut Writer,
        fingerprint: &str,
        layout: &str,
        layers: u32,
        blocks: &HeldBlocks,
    ) {
        w.u64(u64::from_le_bytes(*MAGIC));
        w.u32(FORMAT_VERSION);
        w.str(fingerprint);
        w.str(layout);
        w.u32(layers);
        w.u64(blocks.runs().len() as u64);
        for &[start, count] in blocks.runs() {
            w.u64(start);
            w.u64(count);
        }
    }

    /// The header of `core`.
    pub fn of(core: &[u8]) -> Result<Self, SessionFormatError> {
        Self::read(&mut Reader::new(core))
    }

    /// Whether the memory was made for the model `fingerprint` and the memory layout `layout`
    /// (as [`super::layout_text`] writes it); otherwise which one differs, naming both.
    pub fn made_for(&self, fingerprint: &str, layout: &str) -> Result<(), SessionFormatError> {
        if self.fingerprint != fingerprint {
            return Err(SessionFormatError::OtherModel {
                found: self.fingerprint.clone(),
                expected: fingerprint.to_string(),
            });
        }
        if self.layout != layout {
            return Err(SessionFormatError::OtherLayout {
                found: self.layout.clone(),
                expected: layout.to_string(),
            });
        }
        Ok(())
    }
}

/// A memory as a store keeps it: the core and the held blocks, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryParts {
    /// Empty: a fresh memory (nothing taken in yet, no blocks).
    pub core: Vec<u8>,
    pub blocks: Vec<Vec<u8>>,
}

impl MemoryParts {
    /// Splits the one-file form; the core's header must name as many blocks as follow it.
    pub fn split(bytes: &[u8]) -> Result<Self, SessionFormatError> {
        if bytes.is_empty() {
            return Ok(Self::default());
        }
        let (core, blocks) = split(bytes)?;
        let named = CoreHeader::of(core)?.blocks;
        if named.len() != blocks.len() as u64 {
            return Err(SessionFormatError::Corrupt(format!(
                "the core names {} archive blocks, {} follow it",
                named.len(),
                blocks.len()
            )));
        }
        Ok(Self {
            core: core.to_vec(),
            blocks: blocks.into_iter().map(<[u8]>::to_vec).collect(),
        })
    }

    /// The one-file form (empty for a fresh memory).
    pub fn join(&self) -> Vec<u8> {
        join(&self.core, self.blocks.iter().map(Vec::as_slice))
    }

    /// The numbers of the held blocks, as the core names them (empty for a fresh memory).
    pub fn block_numbers(&self) -> Result<HeldBlocks, SessionFormatError> {
        if self.core.is_empty() {
            return Ok(HeldBlocks::default());
        }
        CoreHeader::of(&self.core).map(|header| header.blocks)
    }
}

/// The one-file form of a core and its blocks: magic, then each as a length-prefixed byte string.
pub fn join<'a>(core: &[u8], blocks: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    if core.is_empty() {
        return Vec::new();
    }
    let mut w = Writer::new();
    w.u64(u64::from_le_bytes(*MAGIC));
    w.bytes(core);
    for block in blocks {
        w.bytes(block);
    }
    w.into_bytes()
}

/// The core and the blocks of the one-file form, borrowed.
pub fn split(bytes: &[u8]) -> Result<(&[u8], Vec<&[u8]>), SessionFormatError> {
    let mut r = Reader::new(bytes);
    read_magic(&mut r)?;
    let core = r.bytes()?;
    let mut blocks = Vec::new();
    while !r.is_done() {
        blocks.push(r.bytes()?);
    }
    Ok((core, blocks))
}

pub(super) fn read_magic(r: &mut Reader<'_>) -> Result<(), SessionFormatError> {
    if r.u64().ok() == Some(u64::from_le_bytes(*MAGIC)) {
        Ok(())
    } else {
        Err(SessionFormatError::NotAMemory)
    }
}
