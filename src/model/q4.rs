//! The decoder's int4 weights as GGUF's Q4_1 stores them, multiplied by a kernel of our own: groups
//! of 32 input features share a scale d and a minimum m, and each weight is `w = d·q + m` with
//! q ∈ 0..=15. Sixteen bytes hold a group's codes, byte j holding q_j in its low half and q_{j+16}
//! in its high half (GGUF's order), so one load gives two runs of 16 consecutive weights.
//!
//! The activations are held as 16-bit integers per group of 32 too ([`Activations`]: `x ≈ e·p`,
//! `e = max|x| / 32767`, so each is within 1/65534 of the group's largest, where bf16 keeps 8 bits),
//! and each group's exact f32 sum `s`. Then
//!
//! `y_r = Σ_g (d_rg · e_g · (q_rg · p_g) + m_rg · s_g)`,
//!
//! where `q · p` is a sum of integer products: `vpmaddwd` multiplies 16 pairs of 16-bit integers and
//! adds neighbours, so a group costs a few integer instructions, one conversion and one fused
//! multiply-add, against five floating-point operations per group when the codes were widened to
//! f32 (compute-bound: 4 ms a step on one core of the AVX-512 EPYC). d and m are f16, as in the
//! GGUF, and read beside the codes: 20 bytes a group, one stream per row.
//!
//! A decode step multiplies a row of activations by every matrix of every layer: 106 M weights for
//! SmolLM2-135M, 60 MB in this form, split over libtorch's threads ([`super::parallel`]). Keeping
//! the product on host memory also lets the decode step stay there between matrices
//! (`Block::forward_host` in `super::llama`).

use tch::{Kind, Tensor};

use super::isa::Isa;
use super::parallel::by_output_features;
use super::ModelError;
use crate::gguf::Q4_1Blocks;

/// Input features that share one int4 scale and zero (GGUF Q4_0/Q4_1 blocks have 32 too).
pub const INT4_GROUP: i64 = 32;

/// Input features per group (GGUF's Q4_1 block).
const GROUP: usize = INT4_GROUP as usize;
/// Bytes of codes per group.
const GROUP_BYTES: usize = GROUP / 2;
/// Output features per part of a product handed to a thread: SmolLM2's matrices make 5 to 24
/// parts (parts of 64 measured slower: 112–128 tok/s against 125–133 in alternating runs).
const PART_ROWS: usize = 128;

/// Integer codes 0..15 with a scale and a zero per group of 32 input features: the common form of
/// our own quantisation and of GGUF's Q4_1 blocks, before [`Q4Matrix`] packs it.
#[derive(Debug)]
pub struct Int4Groups {
    /// `[N, K]` int32, each in 0..=15.
    pub codes: Tensor,
    /// `[N, K/32]` f32.
    pub scales: Tensor,
    /// `[N, K/32]` f32: the weight that code 8 stands for.
    pub zeros: Tensor,
}

impl Int4Groups {
    /// Quantises dense weights `[N, K]` per group of 32 by its minimum and maximum
    /// (w ≈ min + q·(max − min)/15), the Q4_1 scheme, with the minimum and the scale rounded to
    /// f16 as GGUF stores them (and as our kernel reads them, `super::q4`).
    pub fn quantise(weight: &Tensor) -> Result<Self, ModelError> {
        let (n, k) = weight.size2()?;
        if k % INT4_GROUP != 0 {
            return Err(ModelError::Unsupported(format!(
                "int4 needs input features in multiples of {INT4_GROUP}, got {k}"
            )));
        }
        let groups = weight
            .to_kind(Kind::Float)
            .reshape([n, k / INT4_GROUP, INT4_GROUP]); // [N, K/32, 32]
        let to_f16 = |t: Tensor| t.to_kind(Kind::Half).to_kind(Kind::Float);
        let min = to_f16(groups.amin(-1, true)); // [N, K/32, 1]
        let max = groups.amax(-1, true);
        // Not below f16's smallest step, so that it stays positive when rounded.
        let scale = to_f16(((max - &min) / 15.0).clamp_min(6e-8));
        let codes = ((groups - &min) / &scale)
            .round()
            .clamp(0.0, 15.0)
            .to_kind(Kind::Int)
            .reshape([n, k]);
        let scales = scale.squeeze_dim(-1);
        let zeros = min.squeeze_dim(-1) + &scales * 8.0;
        Ok(Self {
            codes,
            scales,
            zeros,
        })
    }

    /// GGUF Q4_1 blocks (w = d·q + m per 32 weights) as they are: scale d and zero m + 8·d, the
    /// weight that code 8 stands for. No re-quantisation.
    pub fn from_q4_1(blocks: &Q4_1Blocks) -> Self {
        Self {
            codes: blocks.quants.to_kind(Kind::Int),
            scales: blocks.scales.shallow_clone(),
            zeros: &blocks.mins + &blocks.scales * 8.0,
        }
    }

    /// `[N, K]`.
    pub fn shape(&self) -> Vec<i64> {
        self.codes.size()
    }

    /// Output rows `index` (a row permutation or selection): groups run along the input axis, so
    /// each row keeps its own codes, scales and zeros.
    pub fn select_rows(&self, index: &Tensor) -> Self {
        Self {
            codes: self.codes.index_select(0, index),
            scales: self.scales.index_select(0, index),
            zeros: self.zeros.index_select(0, index),
        }
    }

    /// The dense weights these codes stand for, `[N, K]` f32.
    pub fn dequantise(&self) -> Tensor {
        let (n, k) = self.codes.size2().expect("codes are [N, K]");
        let codes = self
            .codes
            .to_kind(Kind::Float)
            .reshape([n, k / INT4_GROUP, INT4_GROUP]);
        ((codes - 8.0) * self.scales.unsqueeze(-1) + self.zeros.unsqueeze(-1)).reshape([n, k])
    }
}

/// A `[N, K]` weight matrix in Q4_1 groups, in host memory.
#[derive(Debug)]
pub struct Q4Matrix {
    rows: usize,
    cols: usize,
    /// `[N·K/2]`: each group's 16 bytes, row-major.
    codes: Vec<u8>,
    /// `[N·G]`: d and m of each group (m: the weight that code 0 stands for) as f16 bits, GGUF's
    /// own kind for them, row-major (G = K/32): read with the codes, in the same order.
    scales_mins: Vec<[u16; 2]>,
}

/// Rows of activations `[M, K]` in the kernel's form: 16-bit integers per group of 32 with a scale,
/// and each group's sum.
pub struct Activations {
    cols: usize,
    /// `[M·K]`: p, with x ≈ e·p.
    codes: Vec<i16>,
    /// `[M·G]`: e of each group and its exact f32 sum s.
    scales_sums: Vec<[f32; 2]>,
}

impl Activations {
    /// `x` `[M, K]` row-major, K a multiple of 32.
    pub fn new(x: &[f32], cols: usize) -> Self {
        assert!(
            cols.is_multiple_of(GROUP) && x.len().is_multiple_of(cols),
            "x is [M, {cols}]"
        );
        let groups = x.len() / GROUP;
        let (mut codes, mut scales_sums) =
            (Vec::with_capacity(x.len()), Vec::with_capacity(groups));
        for group in x.chunks_exact(GROUP) {
            let largest = group.iter().fold(0f32, |a, v| a.max(v.abs()));
            let scale = largest / f32::from(i16::MAX);
            let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            // Round half to even by the f32 trick (adding and taking away 1.5·2²³ leaves the
            // nearest integer for |v| < 2²²): no libm call, so the loop vectorises.
            const ROUND: f32 = 12_582_912.0;
            codes.extend(group.iter().map(|v| ((v * inverse + ROUND) - ROUND) as i16));
            scales_sums.push([scale, group.iter().sum()]);
        }
        Self {
            cols,
            codes,
            scales_sums,
        }
    }

    fn rows(&self) -> usize {
        self.codes.len() / self.cols
    }
}

impl Q4Matrix {
    /// Packs int4 groups (codes 0..=15, scale d, and the weight that code 8 stands for, m + 8·d).
    pub fn new(groups: &Int4Groups) -> Result<Self, ModelError> {
        let (n, k) = groups.codes.size2()?;
        let codes = Vec::<i32>::try_from(groups.codes.to_kind(Kind::Int).reshape([-1]))?;
        if let Some(bad) = codes.iter().find(|q| !(0..=15).contains(*q)) {
            return Err(ModelError::BadConfig(format!(
                "int4 code {bad} outside 0..=15"
            )));
        }
        let packed = codes
            .chunks_exact(GROUP)
            .flat_map(|group| {
                let (low, high) = group.split_at(GROUP_BYTES);
                low.iter()
                    .zip(high)
                    .map(|(&lo, &hi)| (lo | (hi << 4)) as u8)
                    .collect::<Vec<_>>()
            })
            .collect();
        let scales = groups.scales.to_kind(Kind::Float);
        let mins = &groups.zeros.to_kind(Kind::Float) - &scales * 8.0; // [N, G]
        let bits = Tensor::stack(&[scales, mins], -1) // [N, G, 2]
            .to_kind(Kind::Half)
            .view_dtype(Kind::Int16)
            .reshape([-1]);
        let bits = Vec::<i16>::try_from(bits)?;
        Ok(Self {
            rows: n as usize,
            cols: k as usize,
            codes: packed,
            scales_mins: bits
                .chunks_exact(2)
                .map(|dm| [dm[0] as u16, dm[1] as u16])
                .collect(),
        })
    }

    /// Output features N.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features K.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `x` `[M, K]` row-major → `x Wᵀ` `[M, N]`, with the widest vectors the CPU has, the output
    /// features split over libtorch's threads ([`super::parallel`]).
    pub fn multiply(&self, x: &[f32]) -> Vec<f32> {
        let x = Activations::new(x, self.cols);
        let mut y = vec![0f32; x.rows() * self.rows];
        let isa = Isa::best();
        by_output_features(&mut y, self.rows, PART_ROWS, &|first, out| {
            kernel::rows(isa, self, first, &x, out)
        });
        y
    }

    /// `x [..., K]` (any float kind, on the CPU) → `[..., N]` in the kind of `x`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut shape = x.size();
        *shape.last_mut().expect("x has a feature dimension") = self.rows as i64;
        let input = Vec::<f32>::try_from(x.to_kind(Kind::Float).contiguous().reshape([-1]))
            .expect("f32 activations copy to host memory");
        Tensor::from_slice(&self.multiply(&input))
            .reshape(shape)
            .to_kind(x.kind())
    }
}

/// The kernel's code path on this CPU, for the start-up log: `avx512f` (with BW), `avx2` or
/// `scalar`.
pub fn kernel_name() -> &'static str {
    Isa::best().name()
}

/// The kernel for each [`Isa`]: for weight rows `first..first + C`, C = `out.len() / M` (each read
/// from memory once), and every row i of activations, `out[i, r − first] = y_ir` of the module's
/// sum.
mod kernel {
    use half::f16;

    #[cfg(target_arch = "x86_64")]
    use super::super::isa::sum_lanes;
    #[cfg(target_arch = "x86_64")]
    use super::super::isa::{with_rows, ROWS_AT_ONCE};
    use super::super::isa::{Isa, Level};
    use super::{Activations, Q4Matrix, GROUP, GROUP_BYTES};

    /// How far ahead of the group being read its codes are requested from memory, in bytes (and
    /// as many groups ahead for the scales).
    #[cfg(target_arch = "x86_64")]
    const PREFETCH_CODES: usize = 1024;

    pub(super) fn rows(isa: Isa, w: &Q4Matrix, first: usize, x: &Activations, out: &mut [f32]) {
        match isa.level() {
            Level::Scalar => rows_with(w, first, x, out, dot_scalar),
            // SAFETY: an `Isa` of this level exists only on a CPU with AVX2 and FMA, which every
            // AVX-512 CPU has too.
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => unsafe { rows_avx2(w, first, x, out) },
            // SAFETY: an `Isa` of this level exists only on a CPU with AVX-512 F and BW.
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => unsafe { rows_avx512(w, first, x, out) },
        }
    }

    /// One weight row against one row of activations.
    struct Row<'a> {
        codes: &'a [u8],
        /// d and m of each group, f16 bits.
        scales_mins: &'a [[u16; 2]],
        x_codes: &'a [i16],
        /// e and s of each group.
        x_scales_sums: &'a [[f32; 2]],
    }

    /// The loops around `dot`. Inlined into each `target_feature` caller, so that `dot` is
    /// compiled with that caller's features.
    #[inline(always)]
    fn rows_with(
        w: &Q4Matrix,
        first: usize,
        x: &Activations,
        out: &mut [f32],
        dot: impl Fn(Row) -> f32,
    ) {
        let (k, groups) = (w.cols, w.cols / GROUP);
        let m = x.rows();
        let count = out.len() / m;
        let rows = w.codes[first * groups * GROUP_BYTES..]
            .chunks_exact(groups * GROUP_BYTES)
            .zip(w.scales_mins[first * groups..].chunks_exact(groups))
            .take(count);
        for (r, (codes, scales_mins)) in rows.enumerate() {
            let x_rows = x
                .codes
                .chunks_exact(k)
                .zip(x.scales_sums.chunks_exact(groups));
            for (i, (x_codes, x_scales_sums)) in x_rows.enumerate() {
                out[i * count + r] = dot(Row {
                    codes,
                    scales_mins,
                    x_codes,
                    x_scales_sums,
                });
            }
        }
    }

    fn dot_scalar(row: Row) -> f32 {
        row.codes
            .chunks_exact(GROUP_BYTES)
            .zip(row.x_codes.chunks_exact(GROUP))
            .zip(row.scales_mins.iter().zip(row.x_scales_sums))
            .map(|((codes, p), ([d, m], [e, s]))| {
                let (low, high) = p.split_at(GROUP_BYTES);
                let dot: i32 = codes
                    .iter()
                    .zip(low.iter().zip(high))
                    .map(|(&q, (&lo, &hi))| {
                        i32::from(q & 15) * i32::from(lo) + i32::from(q >> 4) * i32::from(hi)
                    })
                    .sum();
                let (d, m) = (f16::from_bits(*d).to_f32(), f16::from_bits(*m).to_f32());
                dot as f32 * (d * e) + m * s
            })
            .sum()
    }

    /// The sizes a vector kernel's pass works with, (K, groups G, rows of activations M, weight
    /// rows C) for weight rows `first..first + C` against `x` into `out` `[M, C]`, asserted to lie
    /// within `w`, `x` and `out` (what makes the kernels' unchecked loads sound).
    #[cfg(target_arch = "x86_64")]
    fn checked_shape(
        w: &Q4Matrix,
        first: usize,
        x: &Activations,
        out: &[f32],
    ) -> (usize, usize, usize, usize) {
        let (k, groups) = (w.cols, w.cols / GROUP);
        let m = x.rows();
        let count = out.len() / m;
        assert!(out.len() == m * count && x.codes.len() == m * k);
        assert!(x.scales_sums.len() == m * groups);
        assert!(w.codes.len() >= (first + count) * groups * GROUP_BYTES);
        assert!(w.scales_mins.len() >= (first + count) * groups);
        (k, groups, m, count)
    }

    /// Group g of a weight row (`codes` and `scales_mins` at the row's start) as 16 16-bit lanes,
    /// `q_j | q_{j+16} << 4` (j < 16), asking early (every other group, as a line holds three)
    /// for the codes and scales that come after: the rows follow one another in memory. Inlined
    /// into each kernel, whose target features it takes.
    ///
    /// # Safety
    /// Group g lies within the matrix, and the caller has AVX2 enabled.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn group_words(
        codes: *const u8,
        scales_mins: *const [u16; 2],
        g: usize,
    ) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        // SAFETY (of the loads and intrinsics): as the caller promises; prefetches never fault.
        unsafe {
            if g.is_multiple_of(2) {
                let ahead = codes.wrapping_add(g * GROUP_BYTES + PREFETCH_CODES);
                _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                let ahead = scales_mins.wrapping_add(g + PREFETCH_CODES / GROUP_BYTES);
                _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
            }
            _mm256_cvtepu8_epi16(_mm_loadu_si128(codes.add(g * GROUP_BYTES).cast()))
        }
    }

    /// AVX2: each weight row's groups unpacked once (codes to 16-bit nibbles, d and m to f32)
    /// for up to [`ROWS_AT_ONCE`] rows of activations at a time, each row summed exactly as alone:
    /// the same operations in the same order, so a row's result does not depend on its batch.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn rows_avx2(w: &Q4Matrix, first: usize, x: &Activations, out: &mut [f32]) {
        use std::arch::x86_64::*;
        let (k, groups, m, count) = checked_shape(w, first, x, out);
        // SAFETY: for weight row r < count, group g < groups and activation row i < m, the loads
        // read w.codes[((first + r)·groups + g)·16 ..][..16], w.scales_mins[(first + r)·groups
        // + g], x.codes[i·k + 32g ..][..32] and x.scales_sums[i·groups + g], and the stores write
        // out[i·count + r]: within the lengths `checked_shape` asserts. AVX2, FMA and F16C are
        // enabled on this function.
        unsafe {
            let nibble = _mm256_set1_epi16(15);
            for r in 0..count {
                let row = (first + r) * groups;
                let codes = w.codes.as_ptr().add(row * GROUP_BYTES);
                let scales_mins = w.scales_mins.as_ptr().add(row);
                let unpack = |g: usize| -> Unpacked {
                    let words = group_words(codes, scales_mins, g);
                    let dm = scales_mins.add(g).cast::<i32>().read_unaligned();
                    (
                        _mm256_and_si256(words, nibble),
                        _mm256_srli_epi16::<4>(words),
                        _mm_cvtph_ps(_mm_cvtsi32_si128(dm)),
                    )
                };
                // Row i's group g against the unpacked one: q · p as 8 partial sums, and
                // [d·e, m·s, 0, 0].
                let against = |(low, high, dm): Unpacked, i: usize, g: usize| {
                    let p = x.codes.as_ptr().add(i * k + g * GROUP);
                    let low = _mm256_madd_epi16(low, _mm256_loadu_si256(p.cast()));
                    let high = _mm256_madd_epi16(high, _mm256_loadu_si256(p.add(16).cast()));
                    let dot = _mm256_cvtepi32_ps(_mm256_add_epi32(low, high));
                    let es = x.scales_sums.as_ptr().add(i * groups + g).cast();
                    (dot, _mm_mul_ps(dm, _mm_castpd_ps(_mm_load_sd(es))))
                };
                for rows in (0..m).step_by(ROWS_AT_ONCE) {
                    let sums = (&unpack, &against, rows);
                    let out =
                        |j: usize, sum: f32| *out.get_unchecked_mut((rows + j) * count + r) = sum;
                    with_rows!(m - rows, sum_groups(groups, sums, out))
                }
            }
        }
    }

    /// One weight row's groups against N rows of activations from `first` on (N known at compile
    /// time, so each row's accumulators stay in registers): `unpack(g)` and `against(unpacked, i,
    /// g)` as in [`rows_avx2`]; `out(j, y)` takes row `first + j`'s result.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn sum_groups<const N: usize>(
        groups: usize,
        (unpack, against, first): (
            &impl Fn(usize) -> Unpacked,
            &impl Fn(Unpacked, usize, usize) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m128),
            usize,
        ),
        mut out: impl FnMut(usize, f32),
    ) {
        use std::arch::x86_64::*;
        // SAFETY (of the intrinsics): the caller, `rows_avx2`, has AVX2, FMA and F16C enabled and
        // this function is inlined into it.
        unsafe {
            // Per row: two accumulators (even and odd groups) keep two multiply-adds in flight;
            // lane 1 of `offsets` gathers Σ m·s.
            let mut even = [_mm256_setzero_ps(); N];
            let mut odd = [_mm256_setzero_ps(); N];
            let mut offsets = [_mm_setzero_ps(); N];
            let mut g = 0;
            while g < groups {
                let unpacked = unpack(g);
                for j in 0..N {
                    let (dot, scales) = against(unpacked, first + j, g);
                    even[j] = _mm256_fmadd_ps(dot, _mm256_broadcastss_ps(scales), even[j]);
                    offsets[j] = _mm_add_ps(offsets[j], scales);
                }
                if g + 1 < groups {
                    let unpacked = unpack(g + 1);
                    for j in 0..N {
                        let (dot, scales) = against(unpacked, first + j, g + 1);
                        odd[j] = _mm256_fmadd_ps(dot, _mm256_broadcastss_ps(scales), odd[j]);
                        offsets[j] = _mm_add_ps(offsets[j], scales);
                    }
                }
                g += 2;
            }
            for j in 0..N {
                let sum = sum_lanes(_mm256_add_ps(even[j], odd[j]));
                out(
                    j,
                    sum + _mm_cvtss_f32(_mm_shuffle_ps(offsets[j], offsets[j], 1)),
                );
            }
        }
    }

    /// Groups whose d, m, e and s one AVX-512 vector holds.
    #[cfg(target_arch = "x86_64")]
    const LANES: usize = 16;

    /// AVX-512: a group of 32 weights is one vector of 16-bit lanes, so one `vpmaddwd` takes all
    /// 32 products of a row (AVX2 takes two and an add). Before a weight row's groups are read,
    /// d·e of every group is formed for each row of activations (16 groups per vector) and Σ m·s
    /// starts that row's accumulator, so the loop over groups does only what depends on both:
    /// per group and row, one load, one multiply-add of 16-bit lanes, one conversion and one fused
    /// multiply-add with d·e broadcast from memory. Each row is summed exactly as alone.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn rows_avx512(w: &Q4Matrix, first: usize, x: &Activations, out: &mut [f32]) {
        use std::arch::x86_64::*;
        let (k, groups, m, count) = checked_shape(w, first, x, out);
        // d·e of every group for each of up to ROWS_AT_ONCE rows, in whole vectors of 16 groups.
        let padded = groups.div_ceil(LANES) * LANES;
        let mut de = vec![0f32; ROWS_AT_ONCE * padded];
        // SAFETY: for weight row r < count, group g < groups and activation row i < m, the loads
        // read w.codes[((first + r)·groups + g)·16 ..][..16], w.scales_mins[(first + r)·groups
        // ..][..groups] and x.scales_sums[i·groups ..][..groups] (both masked past the row's
        // last group), x.codes[i·k + 32g ..][..32] and de[j·padded + g] (j < ROWS_AT_ONCE); the
        // stores write de[j·padded ..][..padded] and out[i·count + r]: within the lengths
        // `checked_shape` asserts or allocated above. AVX-512 F and BW are enabled on this
        // function.
        unsafe {
            let nibble = _mm256_set1_epi16(15);
            let (even_lanes, odd_lanes) = (
                _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0),
                _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1),
            );
            // Lanes 0..n of a vector (n ≤ 16).
            let first_lanes = |n: usize| -> __mmask16 { ((1u32 << n) - 1) as u16 };
            // e and s of activation row i's 16 groups from `at` on (zeros past its last group).
            let es = |i: usize, at: usize| {
                let pairs = x.scales_sums.as_ptr().add(i * groups + at).cast::<f32>();
                let valid = 2 * (groups - at).min(LANES);
                let low = _mm512_maskz_loadu_ps(first_lanes(valid.min(LANES)), pairs);
                let high = _mm512_maskz_loadu_ps(
                    first_lanes(valid.saturating_sub(LANES)),
                    pairs.wrapping_add(LANES),
                );
                (
                    _mm512_permutex2var_ps(low, even_lanes, high),
                    _mm512_permutex2var_ps(low, odd_lanes, high),
                )
            };
            for rows in (0..m).step_by(ROWS_AT_ONCE) {
                for r in 0..count {
                    let row = (first + r) * groups;
                    let codes = w.codes.as_ptr().add(row * GROUP_BYTES);
                    let scales_mins = w.scales_mins.as_ptr().add(row);
                    // d and m of 16 groups from `at` on (zeros past the row's last group).
                    let dm = |at: usize| {
                        let mask = first_lanes((groups - at).min(LANES));
                        let pairs = _mm512_maskz_loadu_epi32(mask, scales_mins.add(at).cast());
                        let d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(pairs));
                        let m =
                            _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(pairs)));
                        (d, m)
                    };
                    let unpack = |g: usize| {
                        let words = group_words(codes, scales_mins, g);
                        let low = _mm256_and_si256(words, nibble);
                        let high = _mm256_srli_epi16::<4>(words);
                        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(low), high)
                    };
                    let n = (m - rows).min(ROWS_AT_ONCE);
                    let mut offsets = [_mm512_setzero_ps(); ROWS_AT_ONCE];
                    for at in (0..padded).step_by(LANES) {
                        let (d, mins) = dm(at);
                        for (j, offset) in offsets.iter_mut().enumerate().take(n) {
                            let (e, s) = es(rows + j, at);
                            _mm512_storeu_ps(
                                de.as_mut_ptr().add(j * padded + at),
                                _mm512_mul_ps(d, e),
                            );
                            *offset = _mm512_fmadd_ps(mins, s, *offset);
                        }
                    }
                    let against = |unpacked: __m512i, j: usize, g: usize, sum: __m512| {
                        let p = x.codes.as_ptr().add((rows + j) * k + g * GROUP);
                        let dot = _mm512_madd_epi16(unpacked, _mm512_loadu_si512(p.cast()));
                        let scale = _mm512_set1_ps(*de.get_unchecked(j * padded + g));
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, sum)
                    };
                    let sums = (&unpack, &against, offsets);
                    let out =
                        |j: usize, sum: f32| *out.get_unchecked_mut((rows + j) * count + r) = sum;
                    with_rows!(n, sum_groups_512(groups, sums, out))
                }
            }
        }
    }

    /// One weight row's groups against N rows of activations (N known at compile time, so each
    /// row's accumulators stay in registers), each row's sum starting at its Σ m·s lanes:
    /// `unpack(g)` and `against(unpacked, j, g, sum)` as in [`rows_avx512`]; `out(j, y)` takes row
    /// j's result.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn sum_groups_512<const N: usize>(
        groups: usize,
        (unpack, against, offsets): (
            &impl Fn(usize) -> std::arch::x86_64::__m512i,
            &impl Fn(
                std::arch::x86_64::__m512i,
                usize,
                usize,
                std::arch::x86_64::__m512,
            ) -> std::arch::x86_64::__m512,
            [std::arch::x86_64::__m512; ROWS_AT_ONCE],
        ),
        mut out: impl FnMut(usize, f32),
    ) {
        use std::arch::x86_64::*;
        // SAFETY (of the intrinsics): the caller, `rows_avx512`, has AVX-512 F and BW enabled and
        // this function is inlined into it.
        unsafe {
            // Two accumulators per row (even and odd groups) keep two multiply-adds in flight.
            let mut even: [__m512; N] = std::array::from_fn(|j| offsets[j]);
            let mut odd = [_mm512_setzero_ps(); N];
            let mut g = 0;
            while g < groups {
                let unpacked = unpack(g);
                for (j, sum) in even.iter_mut().enumerate() {
                    *sum = against(unpacked, j, g, *sum);
                }
                if g + 1 < groups {
                    let unpacked = unpack(g + 1);
                    for (j, sum) in odd.iter_mut().enumerate() {
                        *sum = against(unpacked, j, g + 1, *sum);
                    }
                }
                g += 2;
            }
            for j in 0..N {
                out(j, _mm512_reduce_add_ps(_mm512_add_ps(even[j], odd[j])));
            }
        }
    }

    /// A group of one weight row unpacked: its low and high nibbles as 16-bit lanes, and [d, m].
    #[cfg(target_arch = "x86_64")]
    type Unpacked = (
        std::arch::x86_64::__m256i,
        std::arch::x86_64::__m256i,
        std::arch::x86_64::__m128,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::values;

    #[test]
    fn quantisation_error_is_within_half_a_step() {
        let w = values(&[64, 128], 0.9) * 0.05;
        let groups = Int4Groups::quantise(&w).unwrap();
        let error = (groups.dequantise() - &w).abs().reshape([64, 4, 32]);
        // Half a step, and the f16 rounding of the minimum (at most 2⁻¹¹ of it) and of the scale
        // (15 steps of at most 2⁻¹¹ each at the top of the range).
        let min = w.reshape([64, 4, 32]).amin(-1, true);
        let half_step =
            groups.scales.unsqueeze(-1) * (0.5 + 15.0 / 2048.0) + min.abs() / 2048.0 + 1e-7;
        assert!(
            bool::try_from(error.le_tensor(&half_step).all()).unwrap(),
            "rounding error above half a step"
        );
        let max = groups.codes.max().int64_value(&[]);
        let min = groups.codes.min().int64_value(&[]);
        assert!(
            (0..=15).contains(&min) && (0..=15).contains(&max) && max == 15 && min == 0,
            "codes {min}..{max}"
        );
    }

    #[test]
    fn activations_are_within_half_a_step_of_x() {
        let x: Vec<f32> = Vec::try_from(values(&[2, 64], 0.3).reshape([-1])).unwrap();
        let mut with_zeros = x.clone();
        with_zeros[32..64].fill(0.0); // a group of zeros: scale 0, codes 0
        let a = Activations::new(&with_zeros, 64);
        for (j, (&v, &p)) in with_zeros.iter().zip(&a.codes).enumerate() {
            let e = a.scales_sums[j / 32][0];
            assert!(
                (e * f32::from(p) - v).abs() <= e * 0.5 + 1e-9,
                "{j}: {v} as {p}·{e}"
            );
        }
        assert_eq!(a.scales_sums[1], [0.0, 0.0]);
        let sum: f32 = with_zeros[64..96].iter().sum();
        assert_eq!(a.scales_sums[2][1], sum);
    }

    #[test]
    fn every_kernel_equals_the_dequantised_product() {
        // Three groups (odd: the vector paths pair groups) and 19 (more than the 16 of an
        // AVX-512 vector), 7 output rows, 1, 5 and 11 rows of x (more than one pass of 8); every
        // instruction set this CPU runs, on rows 2..7 of the matrix. 16-bit activations against
        // f32: 1e-4 of the outputs' scale; the paths among themselves: 1e-5.
        for (cols, m) in [(96, 1usize), (96, 5), (608, 1), (608, 11)] {
            let groups = Int4Groups::quantise(&(values(&[7, cols], 0.5) * 0.1)).unwrap();
            let q4 = Q4Matrix::new(&groups).unwrap();
            let dense = groups.dequantise();
            let x = values(&[m as i64, cols], 2.0 + m as f64);
            let expected: Vec<f32> =
                Vec::try_from(x.linear::<&Tensor>(&dense, None).reshape([-1])).unwrap();
            let scale = expected.iter().fold(0f32, |a, v| a.max(v.abs()));
            let input = Activations::new(
                &Vec::<f32>::try_from(x.reshape([-1])).unwrap(),
                cols as usize,
            );
            let wanted: Vec<f32> = (0..m)
                .flat_map(|i| expected[i * 7 + 2..i * 7 + 7].to_vec())
                .collect();
            let isas = Isa::available();
            let mut scalar = vec![0f32; m * 5];
            kernel::rows(isas[0], &q4, 2, &input, &mut scalar);
            for isa in &isas {
                let mut y = vec![0f32; m * 5];
                kernel::rows(*isa, &q4, 2, &input, &mut y);
                for ((got, want), exact) in y.iter().zip(&wanted).zip(&scalar) {
                    assert!(
                        (got - want).abs() <= 1e-4 * scale,
                        "{}: {got} against {want}",
                        isa.name()
                    );
                    assert!((got - exact).abs() <= 1e-5 * scale, "{}", isa.name());
                }
            }
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                assert!(isas.len() >= 2, "no vector kernel was checked");
            }
        }
    }

    #[test]
    fn multiply_splits_into_parts_and_forward_keeps_shape_and_kind() {
        // 300 output features: three parts of PART_ROWS, the last one short.
        let groups = Int4Groups::quantise(&(values(&[300, 64], 0.1) * 0.1)).unwrap();
        let q4 = Q4Matrix::new(&groups).unwrap();
        let x = values(&[2, 3, 64], 0.7);
        let expected = x.linear::<&Tensor>(&groups.dequantise(), None);
        let y = q4.forward(&x);
        assert_eq!(y.size(), vec![2, 3, 300]);
        let error = (&y - &expected).abs().max().double_value(&[]);
        assert!(
            error <= 1e-4 * expected.abs().max().double_value(&[]),
            "{error}"
        );
        let y = q4.forward(&x.to_kind(Kind::BFloat16));
        assert_eq!(y.kind(), Kind::BFloat16);
    }

    #[test]
    fn codes_out_of_range_are_refused() {
        let groups = Int4Groups::quantise(&values(&[4, 64], 0.1)).unwrap();
        let bad = Int4Groups {
            codes: groups.codes.shallow_clone() + 16,
            scales: groups.scales.shallow_clone(),
            zeros: groups.zeros.shallow_clone(),
        };
        let error = Q4Matrix::new(&bad).unwrap_err().to_string();
        assert!(error.contains("outside 0..=15"), "{error}");
    }
}
