//! The byte layouts of ggml's float and block-quantised types, and their conversion to f32.
//!
//! Block formats (ggml-common.h), 32 weights per block along the fastest axis:
//! * Q8_0, 34 bytes: f16 scale d, 32 × i8 q;            w = d·q
//! * Q4_0, 18 bytes: f16 scale d, 16 bytes of nibbles;  w = d·(q − 8)
//! * Q4_1, 20 bytes: f16 scale d, f16 minimum m, 16 bytes of nibbles; w = d·q + m
//!
//! In both 4-bit formats byte j holds weight j in its low nibble and weight j + 16 in its high one.

use half::{bf16, f16};
use tch::{Kind, Tensor};

use super::GgmlType;

/// Weights per block of the quantised formats.
pub const BLOCK: usize = 32;

/// Dequantises the data of one tensor; `None` for a type this module does not know. The caller
/// guarantees `bytes` holds whole blocks.
pub(super) fn to_f32(ty: GgmlType, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match ty {
        GgmlType::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        GgmlType::F16 => bytes
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        GgmlType::Bf16 => bytes
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        GgmlType::Q8_0 => blocks(bytes, 34, |block, out| {
            let d = half_at(block, 0);
            for (w, &q) in out.iter_mut().zip(&block[2..]) {
                *w = d * f32::from(q as i8);
            }
        }),
        GgmlType::Q4_0 => blocks(bytes, 18, |block, out| {
            let d = half_at(block, 0);
            for_each_nibble(&block[2..], |i, q| out[i] = d * (f32::from(q) - 8.0));
        }),
        GgmlType::Q4_1 => blocks(bytes, 20, |block, out| {
            let (d, m) = (half_at(block, 0), half_at(block, 2));
            for_each_nibble(&block[4..], |i, q| out[i] = d * f32::from(q) + m);
        }),
        GgmlType::Other(_) => return None,
    })
}

/// Runs `decode` over each block of `block_bytes`, giving it the block's 32 output slots.
fn blocks(bytes: &[u8], block_bytes: usize, decode: impl Fn(&[u8], &mut [f32])) -> Vec<f32> {
    let mut out = vec![0.0; bytes.len() / block_bytes * BLOCK];
    for (block, slots) in bytes
        .chunks_exact(block_bytes)
        .zip(out.chunks_exact_mut(BLOCK))
    {
        decode(block, slots);
    }
    out
}

/// The f16 at `offset`, as f32.
fn half_at(block: &[u8], offset: usize) -> f32 {
    f16::from_le_bytes([block[offset], block[offset + 1]]).to_f32()
}

/// Calls `f(i, q)` for the 32 nibbles of a 4-bit block in weight order.
fn for_each_nibble(nibbles: &[u8], mut f: impl FnMut(usize, u8)) {
    for (j, &byte) in nibbles.iter().enumerate() {
        f(j, byte & 0x0F);
        f(j + BLOCK / 2, byte >> 4);
    }
}

/// A Q4_1 tensor's blocks, unchanged: for a tensor of row-major shape `[.., K]`, the weight at
/// `[.., k]` is `scales[.., k / 32] · quants[.., k] + mins[.., k / 32]`.
#[derive(Debug)]
pub struct Q4_1Blocks {
    /// The per-block scales d, f32, shape `[.., K / 32]`.
    pub scales: Tensor,
    /// The per-block minimums m, f32, shape `[.., K / 32]`.
    pub mins: Tensor,
    /// The 4-bit quants q in 0..=15, uint8, shape `[.., K]` (one per byte, weight order).
    pub quants: Tensor,
}

impl Q4_1Blocks {
    /// Splits Q4_1 data of the given row-major shape (its last axis a multiple of 32).
    pub(super) fn unpack(bytes: &[u8], shape: &[i64]) -> Self {
        let block_count = bytes.len() / 20;
        let mut scales = Vec::with_capacity(block_count);
        let mut mins = Vec::with_capacity(block_count);
        let mut quants = vec![0u8; block_count * BLOCK];
        for (block, out) in bytes.chunks_exact(20).zip(quants.chunks_exact_mut(BLOCK)) {
            scales.push(half_at(block, 0));
            mins.push(half_at(block, 2));
            for_each_nibble(&block[4..], |i, q| out[i] = q);
        }
        let mut block_shape = shape.to_vec();
        if let Some(last) = block_shape.last_mut() {
            *last /= BLOCK as i64;
        }
        Self {
            scales: Tensor::from_slice(&scales).reshape(block_shape.as_slice()),
            mins: Tensor::from_slice(&mins).reshape(block_shape.as_slice()),
            quants: Tensor::from_slice(&quants).reshape(shape),
        }
    }

    /// The weights, d·q + m in f32 (equal to [`super::GgufFile::dequantize`] of the tensor).
    pub fn dequantize(&self) -> Tensor {
        let per_weight = |t: &Tensor| t.repeat_interleave_self_int(BLOCK as i64, -1, None);
        per_weight(&self.scales) * self.quants.to_kind(Kind::Float) + per_weight(&self.mins)
    }
}
