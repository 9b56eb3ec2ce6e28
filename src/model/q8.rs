//! The LM head as GGUF's Q8_0 stores it: groups of 32 input features share one scale d, and each
//! weight is d·q with q ∈ −127..=127 (`w = d·q`, d = max|w| / 127 over the group).
//!
//! A decode step multiplies one row of activations by the whole head, V × C = 49,152 × 576 weights
//! for SmolLM2: the largest matrix of the model, 56 MB in bf16, which libtorch read in about 7 ms
//! on two threads of the 2-core Xeon VM (12 ms on one) out of a ~25 ms step. Here the head is 1 byte a
//! weight (30 MB with the scales), read by a kernel of our own that widens each code to f32 and
//! accumulates in f32 against f32 activations: 4.5–5.5 ms on one thread, and no loss, since it
//! multiplies by exactly the weights the GGUF holds (bf16 rounds them). A batched decode step of B
//! rows reads the head once, not B times: each weight row is widened once for 8 rows at a time (up
//! to [`Q8_MAX_ROWS`] rows). Products of more rows (logits at every position, for perplexity) go
//! through libtorch on dequantised f32 tiles instead, where a GEMM's blocking pays.
//!
//! The output features are split over libtorch's own OpenMP threads (`super::parallel`): a thread
//! pool of ours had lost more to those workers, which spin after each parallel region, than it
//! gained (on the 2-core Xeon, 41.7/39.3/39.4 tok/s decode with one thread against 38.9/34.7/36.8
//! with a second of ours), while the same workers take the parts at no such cost.

use tch::{Device, Kind, Tensor};

use super::isa::Isa;
use super::parallel::by_output_features;
use super::ModelError;

/// Input features that share one scale (GGUF's Q8_0 block).
pub const Q8_GROUP: usize = 32;
/// Most rows of activations that the vector kernel takes: a decode step's batch (16 rows by
/// default, 64 at most in `make bench-batch`), its rows taken 8 at a time with each weight group
/// widened once for them. More (logits at every position, for perplexity) go through libtorch
/// tiles, where a GEMM's blocking pays.
pub const Q8_MAX_ROWS: usize = 64;
/// Output features dequantised at a time for a product of many rows: 4,096 × 576 f32 is 9 MB.
const TILE: usize = 4096;
/// Output features per part of a product of few rows handed to a thread (12 parts for SmolLM2).
const PART_ROWS: usize = 4096;

/// A `[N, K]` weight matrix in Q8_0 groups, in host memory for the kernel below.
#[derive(Debug)]
pub struct Q8Matrix {
    rows: usize,
    cols: usize,
    /// `[N·K]`, row-major.
    codes: Vec<i8>,
    /// `[N·K/32]`: the scale of each group, row-major.
    scales: Vec<f32>,
}

impl Q8Matrix {
    /// Quantises dense weights `[N, K]` per group of 32 as llama.cpp's Q8_0 does
    /// (d = max|w| / 127, q = round(w / d)). Weights that already are Q8_0 values (a GGUF Q8_0
    /// tensor dequantised: d·q with d an f16 and some |q| = 127 in each group) come back exactly,
    /// because d·127 / 127 and d·q / d are exact in f32.
    pub fn quantise(weight: &Tensor) -> Result<Self, ModelError> {
        let (n, k) = weight.size2()?;
        let group = Q8_GROUP as i64;
        if k % group != 0 {
            return Err(ModelError::Unsupported(format!(
                "Q8_0 needs input features in multiples of {Q8_GROUP}, got {k}"
            )));
        }
        let groups =
            weight
                .to_device(Device::Cpu)
                .to_kind(Kind::Float)
                .reshape([n, k / group, group]);
        let scales = groups.abs().amax(-1, true) / 127.0; // [N, K/32, 1]
        let codes = (groups / scales.clamp_min(f64::from(f32::MIN_POSITIVE)))
            .round()
            .clamp(-127.0, 127.0)
            .to_kind(Kind::Int8);
        Ok(Self {
            rows: n as usize,
            cols: k as usize,
            codes: Vec::<i8>::try_from(codes.reshape([-1]))?,
            scales: Vec::<f32>::try_from(scales.reshape([-1]))?,
        })
    }

    /// Output rows `start..start + count` as dense f32 `[count, K]`.
    fn dequantise_rows(&self, start: usize, count: usize) -> Tensor {
        let (k, groups) = (self.cols, self.cols / Q8_GROUP);
        let codes = Tensor::from_slice(&self.codes[start * k..(start + count) * k])
            .to_kind(Kind::Float)
            .reshape([count as i64, groups as i64, Q8_GROUP as i64]);
        let scales = Tensor::from_slice(&self.scales[start * groups..(start + count) * groups])
            .reshape([count as i64, groups as i64, 1]);
        (codes * scales).reshape([count as i64, k as i64])
    }

    /// The dense weights these codes stand for, `[N, K]` f32.
    pub fn dequantise(&self) -> Tensor {
        self.dequantise_rows(0, self.rows)
    }

    /// `x [..., K]` (any float kind) → `[..., N]` f32: `x Wᵀ`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut shape = x.size();
        let k = *shape.last().expect("x has a feature dimension");
        *shape.last_mut().expect("non-empty") = self.rows as i64;
        let rows = x.reshape([-1, k]).to_kind(Kind::Float);
        let m = rows.size()[0] as usize;
        if m > Q8_MAX_ROWS {
            let tiles: Vec<Tensor> = (0..self.rows)
                .step_by(TILE)
                .map(|start| {
                    let tile = self.dequantise_rows(start, TILE.min(self.rows - start));
                    rows.linear::<&Tensor>(&tile, None)
                })
                .collect();
            return Tensor::cat(&tiles, 1).reshape(shape);
        }
        let input = Vec::<f32>::try_from(rows.contiguous().reshape([-1]))
            .expect("f32 activations copy to host memory");
        let mut output = vec![0f32; m * self.rows];
        let (isa, k, groups) = (Isa::best(), self.cols, self.cols / Q8_GROUP);
        by_output_features(&mut output, self.rows, PART_ROWS, &|first, out| {
            let count = out.len() / m;
            let codes = &self.codes[first * k..(first + count) * k];
            let scales = &self.scales[first * groups..(first + count) * groups];
            kernel::product(isa, codes, scales, (&input, k), out);
        });
        Tensor::from_slice(&output)
            .reshape(shape)
            .to_device(x.device())
    }
}

/// `y[r] = Σ_g d[r, g] · Σ_{j<32} q[r, 32g + j] · x[32g + j]` in f32, with the widest vectors the
/// CPU has (chosen at run time): each group's 32 codes are widened to f32 once for up to 8 rows of
/// a decode step's batch and multiplied with fused multiply-adds; each row is summed in the same
/// order whatever its batch.
mod kernel {
    #[cfg(target_arch = "x86_64")]
    use super::super::isa::sum_lanes;
    #[cfg(target_arch = "x86_64")]
    use super::super::isa::{with_rows, ROWS_AT_ONCE};
    use super::super::isa::{Isa, Level};
    use super::Q8_GROUP;

    /// How far ahead of the group being read its codes are requested from memory, in bytes.
    #[cfg(target_arch = "x86_64")]
    const PREFETCH: usize = 1024;

    /// Any CPU: one group at a time, in scalar code.
    fn rows_scalar(codes: &[i8], scales: &[f32], x: &[f32], y: &mut [f32]) {
        let groups = x.len() / Q8_GROUP;
        for (r, out) in y.iter_mut().enumerate() {
            *out = (0..groups)
                .map(|g| {
                    let at = (r * groups + g) * Q8_GROUP;
                    let dot: f32 = codes[at..at + Q8_GROUP]
                        .iter()
                        .zip(&x[g * Q8_GROUP..(g + 1) * Q8_GROUP])
                        .map(|(&q, &x)| f32::from(q) * x)
                        .sum();
                    dot * scales[r * groups + g]
                })
                .sum();
        }
    }

    /// AVX-512: each weight row's groups widened to f32 once for up to [`ROWS_AT_ONCE`] rows of
    /// activations at a time (the weight row then stays in L1 for the next rows), each row summed
    /// exactly as alone (two accumulators, even and odd groups, keep the adder busy): so a row's
    /// result does not depend on its batch. `out` is `[m, count]`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn product_avx512(codes: &[i8], scales: &[f32], (x, k): (&[f32], usize), out: &mut [f32]) {
        let (groups, m) = (k / Q8_GROUP, x.len() / k);
        let count = out.len() / m;
        assert!(x.len() == m * k && out.len() == m * count);
        assert!(codes.len() >= count * k && scales.len() >= count * groups);
        for r in 0..count {
            for rows in (0..m).step_by(ROWS_AT_ONCE) {
                let at = Rows {
                    r,
                    rows,
                    groups,
                    k,
                    count,
                };
                // SAFETY: `at` lies within the lengths asserted above (r < count, rows + n ≤ m),
                // and AVX-512F is enabled on this function.
                unsafe { with_rows!(m - rows, sum_rows_512(codes, scales, x, at, out)) }
            }
        }
    }

    /// Where a pass of [`product_avx512`] works: weight row r against activation rows
    /// `rows..rows + N`, for K = `k` inputs in `groups` groups and `count` weight rows in `out`.
    #[cfg(target_arch = "x86_64")]
    #[derive(Clone, Copy)]
    struct Rows {
        r: usize,
        rows: usize,
        groups: usize,
        k: usize,
        count: usize,
    }

    /// Weight row r against N rows of activations (N known at compile time, so that each row's
    /// accumulators stay in registers).
    ///
    /// # Safety
    /// `codes` holds weight row r's `groups` groups and `scales` their scales, `x` rows
    /// `rows..rows + N` of `k`, `out` `[.., count]` those rows; the caller has AVX-512F enabled.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn sum_rows_512<const N: usize>(
        codes: &[i8],
        scales: &[f32],
        x: &[f32],
        Rows {
            r,
            rows,
            groups,
            k,
            count,
        }: Rows,
        out: &mut [f32],
    ) {
        use std::arch::x86_64::*;
        // SAFETY: every load reads codes[(r·groups + g)·32 ..][..32], scales[r·groups + g] and
        // x[(rows + j)·k + g·32 ..][..32] for g < groups, j < N, and the store writes
        // out[(rows + j)·count + r]: within the lengths the caller promises.
        unsafe {
            // Group g of the weight row widened to f32 (two vectors of 16) with its scale.
            let widen = |g: usize| {
                let q = codes.as_ptr().add((r * groups + g) * Q8_GROUP);
                _mm_prefetch::<_MM_HINT_T0>(q.wrapping_add(PREFETCH).cast());
                let low = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q.cast())));
                let high =
                    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q.add(16).cast())));
                (
                    low,
                    high,
                    _mm512_set1_ps(*scales.get_unchecked(r * groups + g)),
                )
            };
            // Row j's sum after group g (widened): sum + d · (low · x_low + high · x_high).
            let add = |(low, high, d): (__m512, __m512, __m512), j: usize, g: usize, sum| {
                let xs = x.as_ptr().add((rows + j) * k + g * Q8_GROUP);
                let dot = _mm512_fmadd_ps(
                    high,
                    _mm512_loadu_ps(xs.add(16)),
                    _mm512_mul_ps(low, _mm512_loadu_ps(xs)),
                );
                _mm512_fmadd_ps(dot, d, sum)
            };
            let (mut even, mut odd) = ([_mm512_setzero_ps(); N], [_mm512_setzero_ps(); N]);
            let mut g = 0;
            while g + 1 < groups {
                let group = widen(g);
                for (j, sum) in even.iter_mut().enumerate() {
                    *sum = add(group, j, g, *sum);
                }
                let group = widen(g + 1);
                for (j, sum) in odd.iter_mut().enumerate() {
                    *sum = add(group, j, g + 1, *sum);
                }
                g += 2;
            }
            if g < groups {
                let group = widen(g);
                for (j, sum) in even.iter_mut().enumerate() {
                    *sum = add(group, j, g, *sum);
                }
            }
            for j in 0..N {
                *out.get_unchecked_mut((rows + j) * count + r) =
                    _mm512_reduce_add_ps(_mm512_add_ps(even[j], odd[j]));
            }
        }
    }

    /// AVX2: each weight row's groups widened to f32 once and multiplied with up to
    /// [`ROWS_AT_ONCE`] activation rows of `x` (`[m, k]`, a decode step's batch) at a time, so
    /// that widening, most of the work for one row, is not repeated per row; `out` is
    /// `[m, count]`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn product_avx2(codes: &[i8], scales: &[f32], (x, k): (&[f32], usize), out: &mut [f32]) {
        use std::arch::x86_64::*;
        let (groups, m) = (k / Q8_GROUP, x.len() / k);
        let count = out.len() / m;
        assert!(x.len() == m * k && out.len() == m * count);
        assert!(codes.len() >= count * k && scales.len() >= count * groups);
        // SAFETY: every load below reads codes[(r·groups + g)·32 ..][..32], scales[r·groups + g]
        // and x[i·k + g·32 ..][..32] for r < count, g < groups, i < m, and writes out[i·count + r]:
        // within the lengths asserted above.
        unsafe {
            for r in 0..count {
                for rows in (0..m).step_by(ROWS_AT_ONCE) {
                    let n = (m - rows).min(ROWS_AT_ONCE);
                    let mut totals = [_mm256_setzero_ps(); ROWS_AT_ONCE];
                    for g in 0..groups {
                        let q = codes.as_ptr().add((r * groups + g) * Q8_GROUP);
                        _mm_prefetch::<_MM_HINT_T0>(q.wrapping_add(PREFETCH).cast());
                        let weights: [__m256; 4] = std::array::from_fn(|part| {
                            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                                q.add(8 * part).cast(),
                            )))
                        });
                        let d = _mm256_set1_ps(*scales.get_unchecked(r * groups + g));
                        for (j, total) in totals.iter_mut().enumerate().take(n) {
                            let xs = x.as_ptr().add((rows + j) * k + g * Q8_GROUP);
                            let mut dot = _mm256_mul_ps(weights[0], _mm256_loadu_ps(xs));
                            for (part, w) in weights.iter().enumerate().skip(1) {
                                dot = _mm256_fmadd_ps(*w, _mm256_loadu_ps(xs.add(8 * part)), dot);
                            }
                            *total = _mm256_fmadd_ps(dot, d, *total);
                        }
                    }
                    for (j, total) in totals.iter().enumerate().take(n) {
                        *out.get_unchecked_mut((rows + j) * count + r) = sum_lanes(*total);
                    }
                }
            }
        }
    }

    /// `out[i·count + r]` = weight row r · activation row i, for the m rows of `x` (`[m, k]`) and
    /// the `count` weight rows of `codes` and `scales`, with `isa`'s vectors (AVX2 widens each
    /// group once for every row; the others take one row at a time).
    pub(super) fn product(
        isa: Isa,
        codes: &[i8],
        scales: &[f32],
        (x, k): (&[f32], usize),
        out: &mut [f32],
    ) {
        match isa.level() {
            // SAFETY: an `Isa` of this level exists only on a CPU with AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => unsafe { product_avx2(codes, scales, (x, k), out) },
            Level::Scalar => {
                let count = out.len() / (x.len() / k);
                for (x, y) in x.chunks_exact(k).zip(out.chunks_exact_mut(count)) {
                    rows_scalar(codes, scales, x, y);
                }
            }
            // SAFETY: an `Isa` of this level exists only on a CPU with AVX-512F.
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => unsafe { product_avx512(codes, scales, (x, k), out) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::values;

    #[test]
    fn gguf_q8_0_values_quantise_back_exactly() {
        // Q8_0 as llama.cpp writes it: an f16 scale per group and codes with max |q| = 127.
        let (n, k) = (24i64, 96i64);
        let scales = (values(&[n, k / 32, 1], 0.3).abs() * 0.01 + 1e-4)
            .to_kind(Kind::Half)
            .to_kind(Kind::Float);
        let mut codes = (values(&[n, k / 32, 32], 1.1) * 127.0).round();
        let _ = codes.narrow(-1, 5, 1).fill_(127.0);
        let dense = (codes.shallow_clone() * &scales).reshape([n, k]);
        let q8 = Q8Matrix::quantise(&dense).unwrap();
        assert!(
            q8.dequantise().equal(&dense),
            "re-quantised Q8_0 weights changed"
        );
        codes = codes.reshape([n, k]).to_kind(Kind::Int8);
        let back = Tensor::from_slice(&q8.codes).reshape([n, k]);
        assert!(back.equal(&codes), "codes differ");
    }

    #[test]
    fn every_vector_kernel_equals_the_scalar_loop() {
        // Three groups (an odd count: the AVX-512 path pairs groups), five weight rows and three
        // rows of activations; every path this CPU runs (an AVX-512 machine checks its AVX2 path
        // too).
        let weight = values(&[5, 96], 0.5);
        let q8 = Q8Matrix::quantise(&weight).unwrap();
        let x: Vec<f32> = (0..3 * 96)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0)
            .collect();
        let paths: Vec<(&str, Vec<f32>)> = Isa::available()
            .into_iter()
            .map(|isa| {
                let mut y = vec![0f32; 3 * 5];
                kernel::product(isa, &q8.codes, &q8.scales, (&x, 96), &mut y);
                (isa.name(), y)
            })
            .collect();
        let (_, scalar) = &paths[0];
        for (name, y) in &paths[1..] {
            for (a, b) in y.iter().zip(scalar) {
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                    "{name}: {a} against scalar {b}"
                );
            }
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            assert!(paths.len() >= 2, "no vector path was checked");
        }
    }

    /// A decode step's rows go through the kernel 8 at a time; each row's logits are bit for bit
    /// the same whatever the batch (alone, or row 13 of 19), on every path this CPU runs.
    #[test]
    fn a_rows_product_does_not_depend_on_its_batch() {
        let (n, k, m) = (37usize, 96usize, 19usize);
        let q8 = Q8Matrix::quantise(&values(&[n as i64, k as i64], 0.4)).unwrap();
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 11 % 17) as f32 - 8.0) / 7.0)
            .collect();
        for isa in Isa::available() {
            let mut together = vec![0f32; m * n];
            kernel::product(isa, &q8.codes, &q8.scales, (&x, k), &mut together);
            for (row, want) in x.chunks_exact(k).zip(together.chunks_exact(n)) {
                let mut alone = vec![0f32; n];
                kernel::product(isa, &q8.codes, &q8.scales, (row, k), &mut alone);
                assert_eq!(alone, want, "{}", isa.name());
            }
        }
    }

    #[test]
    fn products_equal_the_dense_product_for_few_and_many_rows() {
        // f32 accumulation in another order than libtorch's: 1e-5 of the outputs' scale.
        let weight = values(&[4100, 64], 0.2) * 0.05;
        let q8 = Q8Matrix::quantise(&weight).unwrap();
        let dense = q8.dequantise();
        // Rounding: within half a step (d/2) of each weight.
        let half_step = Tensor::from_slice(&q8.scales).reshape([4100, 2, 1]) * 0.5 + 1e-9;
        let error = (&dense - &weight).abs().reshape([4100, 2, 32]);
        assert!(
            bool::try_from(error.le_tensor(&half_step).all()).unwrap(),
            "rounding error above half a step"
        );
        let shapes = [
            vec![1i64, 64],
            vec![2, 3, 64],
            vec![3, 5, 64],
            vec![8, 64],
            vec![19, 64],
            vec![70, 64],
        ];
        for shape in shapes {
            let x = values(&shape, 2.0);
            let expected = x.linear::<&Tensor>(&dense, None);
            let got = q8.forward(&x);
            assert_eq!(got.size(), expected.size());
            let error = (&got - &expected).abs().max().double_value(&[]);
            let scale = expected.abs().max().double_value(&[]);
            assert!(
                error < 1e-5 * scale,
                "{shape:?}: off by {error} (outputs up to {scale})"
            );
        }
    }
}
