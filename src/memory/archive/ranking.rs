//! Ranking the archive's blocks for a query segment (`infinity-former.md` §9.7): block j scores
//! (Σ q)·r_j, r_j its representative key, and the segment reads the k best.
//!
//! This is the one part of a decode step that grows with the archive: every representative is
//! read once per step and layer. So on the CPU, when the representatives are bf16 (the activations
//! of the `int4` and `bf16` precisions, so they are stored without rounding), a kernel of ours
//! reads them as they are with the widest vectors the CPU has, widening each to f32 in a register
//! (`kernel`), instead of keeping an f32 copy twice the size; the top k are then kept in one pass
//! over the scores (`top_k`). Elsewhere (a GPU, or f32 representatives) libtorch computes the same
//! f32 scores with one matrix product.

use std::sync::Mutex;

use crate::model::isa::Isa;
use crate::model::parallel::for_each_part;
use tch::{Device, Kind, Tensor};

/// Blocks one part of the scoring reads: 256 representatives of 64 bf16 are 32 KiB, an L1 cache.
const SCORE_PART: usize = 256;

/// Scores from which the ranking is split over libtorch's threads (a 22k-token archive of 3
/// key/value heads); below, a parallel region costs about what it saves.
const PARALLEL_SCORES: usize = 1024;

/// Indices `[B, H_kv, S, k]` (int64, best first) of the `k` blocks whose representatives
/// `[B, H_kv, blocks, D]` score highest against each of the S queries `[B, H_kv, S, D]` (f32, each
/// query segment's queries summed per key/value head); k ≤ blocks.
pub fn best_blocks(representatives: &Tensor, query: &Tensor, k: i64) -> Tensor {
    let (b, h, s, _) = query.size4().expect("query sums are [B, H_kv, S, D]");
    if reads_in_place(representatives) {
        let query: Vec<f32> = Vec::try_from(query.to_kind(Kind::Float).contiguous().view([-1]))
            .expect("an f32 query converts to a vector");
        let chosen = best_blocks_on_host(representatives, &query, k);
        Tensor::from_slice(&chosen).view([b, h, s, k])
    } else {
        let scores = query
            .to_kind(Kind::Float)
            .matmul(&representatives.to_kind(Kind::Float).transpose(-1, -2)); // [B, H_kv, S, blocks]
        scores.topk(k, -1, true, true).1
    }
}

/// [`best_blocks`] with the query sums as f32 rows `[B, H_kv, S, D]` on the host, and the indices
/// returned likewise (`[B, H_kv, S, k]`, row-major). bf16 representatives in CPU memory are read in
/// place; any others through [`best_blocks`]' product.
pub fn best_blocks_on_host(representatives: &Tensor, query: &[f32], k: i64) -> Vec<i64> {
    let (b, h, blocks, d) = representatives
        .size4()
        .expect("representatives are [B, H_kv, blocks, D]");
    let segments = query.len() as i64 / (b * h * d);
    if !reads_in_place(representatives) {
        let query = Tensor::from_slice(query).view([b, h, segments, d]);
        let chosen = best_blocks(representatives, &query, k);
        return Vec::try_from(chosen.reshape([-1])).expect("int64 indices convert");
    }
    let strides = representatives.stride();
    let base = representatives.data_ptr() as *const u16;
    let (d, blocks) = (d as usize, blocks as usize);
    if blocks == 0 {
        return Vec::new();
    }
    // Each (row, head)'s representatives, `[blocks, D]` bf16 bit patterns.
    let heads: Vec<&[u16]> = (0..b)
        .flat_map(|row| (0..h).map(move |head| (row, head)))
        .map(|(row, head)| row * strides[0] + head * strides[1])
        // SAFETY: `representatives` is a live bf16 tensor (2-byte elements) whose head
        // (row, head) holds `blocks · d` contiguous elements from its offset (strides checked
        // above), and nothing writes to it while these slices live.
        .map(|offset| unsafe { std::slice::from_raw_parts(base.add(offset as usize), blocks * d) })
        .collect();
    // Every query's scores, `[B·H_kv·S, blocks]`, computed in parts of up to SCORE_PART blocks.
    let count = query.len() / d * blocks;
    let mut scores = vec![0f32; count];
    let parts: Vec<(usize, usize, Mutex<&mut [f32]>)> = scores
        .chunks_mut(blocks)
        .enumerate()
        .flat_map(|(i, row)| {
            row.chunks_mut(SCORE_PART)
                .enumerate()
                .map(move |(c, out)| (i, c * SCORE_PART, Mutex::new(out)))
        })
        .collect();
    let isa = Isa::best();
    let score_part = |part: usize| {
        let (i, first, out) = &parts[part];
        let mut out = out.lock().expect("each part is taken by one thread");
        let held = &heads[*i / segments as usize][first * d..(first + out.len()) * d];
        kernel::scores(isa, held, &query[i * d..(i + 1) * d], &mut out);
    };
    if count >= PARALLEL_SCORES {
        for_each_part(parts.len(), &score_part);
    } else {
        (0..parts.len()).for_each(score_part);
    }
    drop(parts);
    scores
        .chunks_exact(blocks)
        .flat_map(|scores| top_k(scores, k as usize))
        .map(|j| j as i64)
        .collect()
}

/// Whether the loop of [`best_blocks_on_host`] reads `representatives` where they lie: bf16 in CPU
/// memory, each head's rows one contiguous run.
fn reads_in_place(representatives: &Tensor) -> bool {
    let (size, strides) = (representatives.size(), representatives.stride());
    representatives.device() == Device::Cpu
        && representatives.kind() == Kind::BFloat16
        && size.len() == 4
        && strides[3] == 1
        && strides[2] == size[3]
}

/// Indices of the `k` largest `scores`, largest first (NaN ranks lowest, ties by index): one pass
/// that keeps the best k so far in order, so most scores cost one comparison with the k-th.
fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let key = |i: usize| {
        let s = scores[i];
        if s.is_nan() {
            f32::NEG_INFINITY
        } else {
            s
        }
    };
    let mut best: Vec<usize> = Vec::with_capacity(k + 1);
    for i in 0..scores.len() {
        if best.len() == k {
            // A later index ranks below an equal score, so only a strictly larger one enters.
            match best.last() {
                Some(&worst) if key(i).total_cmp(&key(worst)).is_gt() => best.pop(),
                _ => continue,
            };
        }
        let at = best.partition_point(|&j| key(j).total_cmp(&key(i)).is_ge());
        best.insert(at, i);
    }
    best
}

/// The scores r_j·q of bf16 representatives against one f32 query, with the widest vectors the
/// CPU has. Every instruction set sums in one order, so a session ranks its blocks alike on any
/// CPU: 16 lanes, lane l taking dimensions l, l + 16, … by fused multiply-adds, then lanes l and
/// l + 8, l and l + 4, l and l + 2, and 0 and 1 added.
mod kernel {
    use crate::model::isa::{Isa, Level};

    const LANES: usize = 16;

    /// `scores[j]` = r_j·q for the `[blocks, D]` bf16 bit patterns `held`, D = `q.len()`.
    pub(super) fn scores(isa: Isa, held: &[u16], q: &[f32], scores: &mut [f32]) {
        let d = q.len();
        assert!(
            held.len() == scores.len() * d,
            "one score per representative"
        );
        match isa.level() {
            // SAFETY: an `Isa` of this level exists only on a CPU with AVX-512F; the lengths are
            // asserted above and D is a whole number of 16-lane vectors.
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 if d.is_multiple_of(LANES) => unsafe { scores_avx512(held, q, scores) },
            // SAFETY: as above, on a CPU with AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 if d.is_multiple_of(LANES) => unsafe { scores_avx2(held, q, scores) },
            _ => scores_scalar(held, q, scores),
        }
    }

    /// A bf16 bit pattern as the f32 it is the high half of (exact).
    fn widen(bits: u16) -> f32 {
        f32::from_bits(u32::from(bits) << 16)
    }

    fn scores_scalar(held: &[u16], q: &[f32], scores: &mut [f32]) {
        for (r, score) in held.chunks_exact(q.len()).zip(scores) {
            let mut lanes = [0f32; LANES];
            for (i, (&r, &q)) in r.iter().zip(q).enumerate() {
                lanes[i % LANES] = widen(r).mul_add(q, lanes[i % LANES]);
            }
            let mut width = LANES / 2;
            while width > 0 {
                for l in 0..width {
                    lanes[l] += lanes[l + width];
                }
                width /= 2;
            }
            *score = lanes[0];
        }
    }

    /// # Safety
    /// The CPU has AVX2 and FMA; `held` is `scores.len()` rows of `q.len()`, a multiple of 16.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn scores_avx2(held: &[u16], q: &[f32], scores: &mut [f32]) {
        use crate::model::isa::sum_lanes;
        use std::arch::x86_64::*;
        let d = q.len();
        let widen8 = |bits: __m128i| {
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(bits)))
        };
        for (r, score) in held.chunks_exact(d).zip(scores) {
            let (mut low, mut high) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for c in (0..d).step_by(LANES) {
                // SAFETY: c + 16 ≤ d, the length of both `r` and `q`.
                unsafe {
                    let bits = _mm256_loadu_si256(r.as_ptr().add(c) as *const __m256i);
                    let qs = q.as_ptr().add(c);
                    low = _mm256_fmadd_ps(
                        widen8(_mm256_castsi256_si128(bits)),
                        _mm256_loadu_ps(qs),
                        low,
                    );
                    high = _mm256_fmadd_ps(
                        widen8(_mm256_extracti128_si256::<1>(bits)),
                        _mm256_loadu_ps(qs.add(8)),
                        high,
                    );
                }
            }
            *score = sum_lanes(_mm256_add_ps(low, high));
        }
    }

    /// # Safety
    /// The CPU has AVX-512F; `held` is `scores.len()` rows of `q.len()`, a multiple of 16.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn scores_avx512(held: &[u16], q: &[f32], scores: &mut [f32]) {
        use crate::model::isa::sum_lanes;
        use std::arch::x86_64::*;
        let d = q.len();
        for (r, score) in held.chunks_exact(d).zip(scores) {
            let mut sums = _mm512_setzero_ps();
            for c in (0..d).step_by(LANES) {
                // SAFETY: c + 16 ≤ d, the length of both `r` and `q`.
                unsafe {
                    let bits = _mm256_loadu_si256(r.as_ptr().add(c) as *const __m256i);
                    let r =
                        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(bits)));
                    sums = _mm512_fmadd_ps(r, _mm512_loadu_ps(q.as_ptr().add(c)), sums);
                }
            }
            let low = _mm512_castps512_ps256(sums);
            let high = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(sums)));
            *score = sum_lanes(_mm256_add_ps(low, high));
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// Every instruction set gives bit for bit the scores of the scalar order, for a D that
        /// is a whole number of vectors and one that is not.
        #[test]
        fn every_isa_scores_alike() {
            let mut state = 7u32;
            let mut next = || {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 8) as f32 / (1 << 24) as f32 - 0.5
            };
            for d in [64, 40] {
                let blocks = 37;
                let held: Vec<u16> = (0..blocks * d)
                    .map(|_| (next().to_bits() >> 16) as u16)
                    .collect();
                let q: Vec<f32> = (0..d).map(|_| next()).collect();
                let mut expected = vec![0f32; blocks];
                scores_scalar(&held, &q, &mut expected);
                for isa in Isa::available() {
                    let mut got = vec![f32::NAN; blocks];
                    scores(isa, &held, &q, &mut got);
                    let same = got
                        .iter()
                        .zip(&expected)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{} at D = {d}: {got:?} against {expected:?}",
                        isa.name()
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The in-place bf16 loop picks exactly the blocks libtorch's f32 product picks, in the same
    /// order, for several batch rows, heads and query segments, read through a view of a larger
    /// buffer.
    #[test]
    fn the_bf16_loop_ranks_as_the_f32_product_does() {
        tch::manual_seed(3);
        // 257 blocks for 24 queries: scored in parts over the threads; 20 for 6: in one run.
        for (blocks, segments) in [(257, 4), (20, 1)] {
            let buffer =
                Tensor::randn([2, 3, 300, 64], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
            let representatives = buffer.narrow(2, 0, blocks); // a window's held part
            let query = Tensor::randn([2, 3, segments, 64], (Kind::Float, Device::Cpu));
            let ours = best_blocks(&representatives, &query, 8);
            let reference = query
                .matmul(&representatives.to_kind(Kind::Float).transpose(-1, -2))
                .topk(8, -1, true, true)
                .1;
            assert_eq!(ours.size(), vec![2, 3, segments, 8]);
            assert!(ours.equal(&reference), "{ours} against {reference}");
        }
    }

    #[test]
    fn top_k_orders_best_first_and_ranks_nan_lowest() {
        let scores = [0.5, f32::NAN, 2.0, -1.0, 2.0, 1.0];
        assert_eq!(top_k(&scores, 3), vec![2, 4, 5]);
        assert_eq!(top_k(&scores, 6), vec![2, 4, 5, 0, 3, 1]);
        assert_eq!(top_k(&scores, 0), Vec::<usize>::new());
        assert_eq!(top_k(&scores, 9), vec![2, 4, 5, 0, 3, 1]);
    }

    /// The one-pass top k is the head of a full sort (best first, ties by index), with many ties.
    #[test]
    fn top_k_is_the_head_of_a_full_sort() {
        let scores: Vec<f32> = (0..500u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as f32)
            .collect();
        let mut sorted: Vec<usize> = (0..scores.len()).collect();
        sorted.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        for k in [1, 8, 64, 500] {
            assert_eq!(top_k(&scores, k), sorted[..k], "k = {k}");
        }
    }
}
