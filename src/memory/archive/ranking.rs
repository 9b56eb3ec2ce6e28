//! Ranking the archive's blocks for a query segment (`infinity-former.md` §9.7): block j scores
//! (Σ q)·r_j, r_j its representative key, and the segment reads the k best.
//!
//! This is the one part of a decode step that grows with the archive: every representative is
//! read once per step and layer. The read is bound by memory bandwidth, so on the CPU, when the
//! representatives are bf16 (the activations of the `int4` and `bf16` precisions, so they are
//! stored without rounding), a loop reads them as they are, widening each to f32 in a register,
//! instead of keeping an f32 copy twice the size; the top k are then picked in place. Elsewhere
//! (a GPU, or f32 representatives) libtorch computes the same f32 scores with one matrix product.

use tch::{Device, Kind, Tensor};

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
    let mut chosen = Vec::with_capacity((b * h * segments * k) as usize);
    let mut scores = Vec::with_capacity(blocks as usize);
    let mut queries = query.chunks_exact(d as usize);
    for row in 0..b {
        for head in 0..h {
            let offset = (row * strides[0] + head * strides[1]) as usize;
            // SAFETY: `representatives` is a live bf16 tensor (2-byte elements) whose head
            // (row, head) holds `blocks · d` contiguous elements from `offset` (strides checked
            // above), and nothing writes to it while this slice lives.
            let held =
                unsafe { std::slice::from_raw_parts(base.add(offset), (blocks * d) as usize) };
            for q in queries.by_ref().take(segments as usize) {
                scores.clear();
                scores.extend(held.chunks_exact(d as usize).map(|r| dot_bf16(r, q)));
                chosen.extend(top_k(&scores, k as usize).into_iter().map(|j| j as i64));
            }
        }
    }
    chosen
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

/// A bf16 bit pattern as the f32 it is the high half of (exact).
fn widen(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// r·q with r given as bf16 bit patterns ([`widen`]), summed in f32 over eight lanes so that the
/// compiler can keep them in vector registers.
fn dot_bf16(r: &[u16], q: &[f32]) -> f32 {
    const LANES: usize = 8;
    let mut sums = [0f32; LANES];
    let (r_main, r_rest) = r.split_at(r.len() / LANES * LANES);
    for (r, q) in r_main.chunks_exact(LANES).zip(q.chunks_exact(LANES)) {
        for lane in 0..LANES {
            sums[lane] += widen(r[lane]) * q[lane];
        }
    }
    let rest: f32 = r_rest
        .iter()
        .zip(&q[r_main.len()..])
        .map(|(&r, &q)| widen(r) * q)
        .sum();
    sums.iter().sum::<f32>() + rest
}

/// Indices of the `k` largest `scores`, largest first (NaN ranks lowest, ties by index).
fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let order = |a: &usize, b: &usize| {
        let key = |i: &usize| {
            let s = scores[*i];
            if s.is_nan() {
                f32::NEG_INFINITY
            } else {
                s
            }
        };
        key(b).total_cmp(&key(a)).then(a.cmp(b))
    };
    let mut indices: Vec<usize> = (0..scores.len()).collect();
    if k < indices.len() {
        indices.select_nth_unstable_by(k, order);
        indices.truncate(k);
    }
    indices.sort_unstable_by(order);
    indices
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
        let buffer =
            Tensor::randn([2, 3, 300, 64], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
        let representatives = buffer.narrow(2, 0, 257); // a window's held part
        let query = Tensor::randn([2, 3, 4, 64], (Kind::Float, Device::Cpu)); // 4 segments
        let ours = best_blocks(&representatives, &query, 8);
        let reference = query
            .matmul(&representatives.to_kind(Kind::Float).transpose(-1, -2))
            .topk(8, -1, true, true)
            .1;
        assert_eq!(ours.size(), vec![2, 3, 4, 8]);
        assert!(ours.equal(&reference), "{ours} against {reference}");
    }

    #[test]
    fn top_k_orders_best_first_and_ranks_nan_lowest() {
        let scores = [0.5, f32::NAN, 2.0, -1.0, 2.0, 1.0];
        assert_eq!(top_k(&scores, 3), vec![2, 4, 5]);
        assert_eq!(top_k(&scores, 6), vec![2, 4, 5, 0, 3, 1]);
        assert_eq!(top_k(&scores, 0), Vec::<usize>::new());
    }
}
