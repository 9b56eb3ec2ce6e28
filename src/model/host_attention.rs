//! Softmax attention of a decode step on host memory: the few queries that share a key/value head
//! (one new token's G = H / H_kv query heads) read every held key of that head, with no mask.
//!
//! libtorch's fused attention on the CPU is built for long query blocks: for one token it costs a
//! dispatch, a flash-attention set-up and a GEMM call per block, ~50 µs a layer at short histories
//! on the 2-core VMs. Here the keys are read where the cache holds them (bf16 or f32, rows of D
//! contiguous), each once for all G queries, in parts of [`PART_LEN`] positions split over
//! libtorch's threads ([`super::parallel`]). Each part keeps its own maximum m, sum of
//! exponentials l and weighted values o; the parts are merged exactly (the flash-decoding
//! identity): `out = Σ_p e^{m_p − M} o_p / Σ_p e^{m_p − M} l_p` with `M = max_p m_p`.
//!
//! A batched decode step reads every sequence's memory in one call ([`read`]): each cache takes in
//! its row and says what its queries read ([`Read`]: its sinks and STM whole, its chosen archive
//! blocks by index), and the parts of all of them share one parallel region per layer.

use std::sync::Mutex;

use tch::{Device, Kind, Tensor};

use super::isa::{Isa, Level};
use super::parallel::for_each_part;

/// Positions per part handed to a thread: at 1,000 held tokens, 4 parts per head.
const PART_LEN: usize = 256;
/// Most queries per key/value head taken: a decode step has G (3 for SmolLM2) per sequence;
/// longer query blocks (prefill) are libtorch's fused kernel's strength.
pub const MAX_QUERIES: i64 = 16;

/// An element of the held keys and values.
trait Element: Copy + Send + Sync {
    fn to_f32(self) -> f32;
}

impl Element for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

/// bf16 as its 16 bits: the upper half of an f32.
#[derive(Clone, Copy)]
struct Bf16(u16);

impl Element for Bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits(u32::from(self.0) << 16)
    }
}

/// The bf16 nearest to `v` (ties to even), as its 16 bits: the upper half of the f32 after
/// rounding away the lower half. NaN stays NaN.
pub(crate) fn bf16_bits(v: f32) -> i16 {
    let bits = v.to_bits();
    if v.is_nan() {
        return ((bits >> 16) | 0x40) as u16 as i16;
    }
    let rounded = bits + 0x7fff + ((bits >> 16) & 1);
    (rounded >> 16) as u16 as i16
}

/// Writes `rows` (f32, `[B, H, D]` row-major) at position `at` of `held` `[B, H, L, D]`, in
/// `held`'s kind (f32, or bf16 rounded to nearest even): a decode step's new key or value appended
/// to a cache's buffer without a tensor of its own. `false`, writing nothing, where that does not
/// apply (not a contiguous CPU tensor of f32 or bf16, shapes that disagree, `at` outside).
pub fn write_position(held: &Tensor, at: i64, rows: &[f32]) -> bool {
    let Ok((b, h, l, d)) = held.size4() else {
        return false;
    };
    let fits = held.device() == Device::Cpu
        && held.is_contiguous()
        && (0..l).contains(&at)
        && rows.len() as i64 == b * h * d
        && !held.data_ptr().is_null();
    if !fits {
        return false;
    }
    let (l, d) = (l as usize, d as usize);
    let offsets = (0..rows.len() / d).map(|head| (head * l + at as usize) * d);
    match held.kind() {
        Kind::Float => {
            let base = held.data_ptr() as *mut f32;
            for (offset, row) in offsets.zip(rows.chunks_exact(d)) {
                // SAFETY: `held` is a contiguous CPU f32 tensor [B, H, L, D] (checked above), so
                // head (b, h)'s row `at` < L is the D elements from (head·L + at)·D; nothing else
                // reads or writes that row while the step appends it.
                unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), base.add(offset), d) };
            }
        }
        Kind::BFloat16 => {
            let base = held.data_ptr() as *mut i16;
            for (offset, row) in offsets.zip(rows.chunks_exact(d)) {
                // SAFETY: as above, with 2-byte bf16 elements.
                let out = unsafe { std::slice::from_raw_parts_mut(base.add(offset), d) };
                out.iter_mut()
                    .zip(row)
                    .for_each(|(o, &v)| *o = bf16_bits(v));
            }
        }
        _ => return false,
    }
    true
}

/// A head's held rows, `[L, D]` row-major, borrowed from a tensor's storage.
struct Rows<'a, E> {
    data: &'a [E],
    dim: usize,
}

/// One part's partial softmax for each of the G queries: maximum score, sum of exponentials and
/// `Σ e^{s − m} v`.
struct Partial {
    max: Vec<f32>,
    sum: Vec<f32>,
    weighted: Vec<f32>, // [G, D]
}

/// What a decode step's queries read: held keys and values `[B, H_kv, L, D]` (a view whose rows of
/// D are contiguous, as the caches' buffers are), whole or by blocks. The tensors are handles on
/// the caches' buffers (shallow clones), so a read can be prepared by one cache and run with other
/// caches' reads ([`read`]).
pub enum Past {
    /// Every row.
    Whole { keys: Tensor, values: Tensor },
    /// For batch row b and head h, the blocks `chosen[b, h, ..]` of `block_len` rows each (the
    /// archive's top-k, read where they lie instead of gathered into a copy).
    Blocks {
        keys: Tensor,
        values: Tensor,
        /// `[B, H_kv, k]`, row-major.
        chosen: Vec<i64>,
        block_len: i64,
        /// Whether the read reports the share of the softmax each chosen block received
        /// ([`Output::block_mass`]): each block is then read as a run of its own.
        weigh: bool,
    },
}

impl Past {
    fn keys_and_values(&self) -> [&Tensor; 2] {
        match self {
            Past::Whole { keys, values } | Past::Blocks { keys, values, .. } => [keys, values],
        }
    }
}

/// What one [`Read`] gives.
pub struct Output {
    /// `[B, H_kv, G, D]` f32 rows.
    pub context: Vec<f32>,
    /// For a weighed [`Past::Blocks`]: `(block, mass)` for each chosen block of each batch row
    /// and head, `mass` being the share of that head's softmax its rows received, summed over the
    /// head's G queries (the archive's stickiness, `memory::archive::retention`; a block longer
    /// than [`PART_LEN`] comes in several pairs, whose masses add); empty otherwise.
    pub block_mass: BlockMass,
}

/// `(block, mass)` pairs: each weighed archive block with the softmax mass its rows received.
pub type BlockMass = Vec<(i64, f32)>;

/// One decode step's read on host memory: `queries` `[B, H_kv, G, D]` as f32 rows (rotated, not
/// yet scaled by 1/√D) against everything in `pasts`, all visible, in one softmax.
pub struct Read {
    pub queries: Vec<f32>,
    /// B, H_kv, G, D.
    pub shape: [i64; 4],
    pub pasts: Vec<Past>,
}

impl Read {
    /// The kind of the held rows, where every past is on the CPU in that one kind with this
    /// read's B, H_kv and D, and the shapes are ones the kernel takes (D a multiple of 8, at most
    /// [`MAX_QUERIES`] queries per head).
    fn held_kind(&self) -> Option<Kind> {
        let [b, h_kv, g, d] = self.shape;
        let kind = self.pasts.first()?.keys_and_values()[0].kind();
        let mut agree = self.queries.len() as i64 == b * h_kv * g * d
            && d % 8 == 0
            && g <= MAX_QUERIES
            && matches!(kind, Kind::Float | Kind::BFloat16);
        for t in self.pasts.iter().flat_map(Past::keys_and_values) {
            let size = t.size();
            agree &= t.device() == Device::Cpu
                && t.kind() == kind
                && size.len() == 4
                && size[..2] == [b, h_kv]
                && size[3] == d;
        }
        agree.then_some(kind)
    }
}

/// `queries` `[B, H_kv, G, D]` against everything in `pasts`, all visible, in one softmax:
/// `[B, H_kv, G, D]` in the queries' kind. `None` where this does not apply (see [`read`]; also
/// queries not on the CPU), for the caller's fallback.
pub fn decode(queries: &Tensor, pasts: Vec<Past>) -> Option<Tensor> {
    let (b, h_kv, g, d) = queries.size4().ok()?;
    if queries.device() != Device::Cpu {
        return None;
    }
    let q = Vec::<f32>::try_from(queries.to_kind(Kind::Float).contiguous().reshape([-1])).ok()?;
    let [out] = <[Output; 1]>::try_from(read(&[Read {
        queries: q,
        shape: [b, h_kv, g, d],
        pasts,
    }])?)
    .ok()?;
    Some(
        Tensor::from_slice(&out.context)
            .reshape([b, h_kv, g, d])
            .to_kind(queries.kind()),
    )
}

/// Every read in one parallel region: the runs of all reads' heads are split over the threads
/// together and each head's parts merged exactly, so a read gives the same bits as when it is run
/// alone, and a step of B sequences costs one region per layer instead of B. Each read's result is
/// its [`Output`]. `None` where this does not apply: held rows not on the CPU, of a
/// kind other than f32 or bf16 or of different kinds across the reads, not contiguous, or with
/// shapes that disagree (within a read, or G and D across reads); a block out of range; D not a
/// multiple of 8; more than [`MAX_QUERIES`] queries; nothing to read.
pub fn read(reads: &[Read]) -> Option<Vec<Output>> {
    let [_, _, g, d] = reads.first()?.shape;
    let kind = reads.first()?.held_kind()?;
    let mut heads = 0;
    for read in reads {
        let [b, h_kv, g_read, d_read] = read.shape;
        if read.held_kind()? != kind || [g_read, d_read] != [g, d] {
            return None;
        }
        heads += (b * h_kv) as usize;
    }
    let scale = 1.0 / (d as f32).sqrt();
    let q: Vec<f32> = reads
        .iter()
        .flat_map(|read| read.queries.iter().map(|q| q * scale))
        .collect();
    let shape = (heads, g as usize);
    let (out, block_mass) = match kind {
        Kind::Float => attend(&q, &runs::<f32>(reads)?, shape)?,
        _ => attend(&q, &runs::<Bf16>(reads)?, shape)?,
    };
    let (mut rest, mut heads_after) = (out.as_slice(), block_mass.into_iter());
    Some(
        reads
            .iter()
            .map(|read| {
                let (mine, after) = rest.split_at(read.queries.len());
                rest = after;
                let [b, h_kv, ..] = read.shape;
                Output {
                    context: mine.to_vec(),
                    block_mass: heads_after
                        .by_ref()
                        .take((b * h_kv) as usize)
                        .flatten()
                        .collect(),
                }
            })
            .collect(),
    )
}

/// A run of rows that one key/value head reads: keys and values `[len, D]`, and the archive block
/// they belong to where the read weighs its blocks.
struct Run<'a, E> {
    head: usize,
    keys: Rows<'a, E>,
    values: Rows<'a, E>,
    block: Option<i64>,
}

/// The rows of `t` `[B, H_kv, L, D]` for head `head` (b·H_kv + h), `start..start + len`, as a
/// slice of its storage.
fn rows<'a, E: Element>(t: &'a Tensor, head: usize, start: i64, len: i64) -> Option<Rows<'a, E>> {
    let (_, h_kv, l, d) = t.size4().ok()?;
    let stride = t.stride();
    let contiguous_rows = stride[3] == 1 && (stride[2] == d || l <= 1);
    if !contiguous_rows || start < 0 || len < 0 || start + len > l || t.data_ptr().is_null() {
        return None;
    }
    let (batch, h) = (head as i64 / h_kv, head as i64 % h_kv);
    let offset = (batch * stride[0] + h * stride[1] + start * d) as usize;
    // SAFETY: `t` is a valid CPU tensor of `E`'s kind (the caller matched its kind), whose element
    // (batch, h, i, j) lies at batch·s₀ + h·s₁ + i·D + j for i < L, j < D (the strides checked
    // above): the `len·D` elements from row `start` (start + len ≤ L) are within its storage.
    // The borrow of `t` keeps the storage alive, and nothing writes to it while a step reads: the
    // rows read are ones each cache took in before the read, a cache writes only buffers of its
    // own (a buffer that forks share is copied before either writes, `Window::share`), and the
    // caches of a batch move blocks to their archives (`LayerCache::after_read`) only after it.
    let data = unsafe {
        std::slice::from_raw_parts((t.data_ptr() as *const E).add(offset), (len * d) as usize)
    };
    Some(Rows {
        data,
        dim: d as usize,
    })
}

/// Every run that the reads' pasts make, in parts of at most [`PART_LEN`] rows; the heads of the
/// reads are numbered one after another.
fn runs<'a, E: Element>(reads: &'a [Read]) -> Option<Vec<Run<'a, E>>> {
    let mut runs = vec![];
    let mut first_head = 0;
    for read in reads {
        let [b, h_kv, ..] = read.shape;
        let heads = (b * h_kv) as usize;
        let mut push = |[keys, values]: [&'a Tensor; 2],
                        head: usize,
                        (start, len): (i64, i64),
                        block: Option<i64>| {
            for at in (start..start + len).step_by(PART_LEN) {
                let n = (start + len - at).min(PART_LEN as i64);
                runs.push(Run {
                    head: first_head + head,
                    keys: rows(keys, head, at, n)?,
                    values: rows(values, head, at, n)?,
                    block,
                });
            }
            Some(())
        };
        for past in &read.pasts {
            match past {
                Past::Whole { keys, values } => {
                    let l = keys.size()[2];
                    (0..heads).try_for_each(|head| push([keys, values], head, (0, l), None))?;
                }
                Past::Blocks {
                    keys,
                    values,
                    chosen,
                    block_len,
                    weigh,
                } => {
                    if chosen.is_empty() || !chosen.len().is_multiple_of(heads) {
                        return None;
                    }
                    let k = chosen.len() / heads;
                    for (head, blocks) in chosen.chunks_exact(k).enumerate() {
                        if *weigh {
                            for &block in blocks {
                                let rows = (block * block_len, *block_len);
                                push([keys, values], head, rows, Some(block))?;
                            }
                        } else {
                            for (first, count) in spans(blocks) {
                                let rows = (first * block_len, count * block_len);
                                push([keys, values], head, rows, None)?;
                            }
                        }
                    }
                }
            }
        }
        first_head += heads;
    }
    (!runs.is_empty()).then_some(runs)
}

/// `blocks` (one head's choice) as runs of consecutive blocks `(first, count)`, in block order: the
/// softmax does not depend on the order in which blocks are read, and blocks that lie side by
/// side (at a few thousand tokens the top k are often most of the archive) are then read as one
/// run, in parts as long as a whole window's.
fn spans(blocks: &[i64]) -> Vec<(i64, i64)> {
    let mut sorted = blocks.to_vec();
    sorted.sort_unstable();
    let mut spans: Vec<(i64, i64)> = vec![];
    for block in sorted {
        match spans.last_mut() {
            Some((first, count)) if *first + *count == block => *count += 1,
            _ => spans.push((block, 1)),
        }
    }
    spans
}

/// Every run's partial softmax over the threads, then merged per head: the context rows, and for
/// each head its weighed runs' `(block, mass)` ([`Output::block_mass`]).
fn attend<E: Element>(
    q: &[f32],
    runs: &[Run<E>],
    (heads, g): (usize, usize),
) -> Option<(Vec<f32>, Vec<BlockMass>)> {
    let d = q.len() / (heads * g);
    let partials: Vec<Mutex<Option<Partial>>> = runs.iter().map(|_| Mutex::new(None)).collect();
    let isa = Isa::best();
    for_each_part(runs.len(), &|part| {
        let run = &runs[part];
        let queries = &q[run.head * g * d..(run.head + 1) * g * d];
        let partial = kernel::part(isa, queries, &run.keys, &run.values);
        *partials[part].lock().expect("each part is written once") = Some(partial);
    });
    let mut parts_of_head: Vec<Vec<(Option<i64>, Partial)>> = (0..heads).map(|_| vec![]).collect();
    for (run, partial) in runs.iter().zip(partials) {
        let partial = partial.into_inner().ok()??;
        parts_of_head[run.head].push((run.block, partial));
    }
    let mut out = vec![0f32; heads * g * d];
    let mut block_mass = vec![];
    for (parts, out) in parts_of_head.iter().zip(out.chunks_exact_mut(g * d)) {
        let mut masses: Vec<(i64, f32)> = parts
            .iter()
            .filter_map(|(block, _)| block.map(|block| (block, 0.0)))
            .collect();
        for (query, out) in out.chunks_exact_mut(d).enumerate() {
            let top = parts
                .iter()
                .map(|(_, p)| p.max[query])
                .fold(f32::NEG_INFINITY, f32::max);
            let mut total = 0f32;
            for (_, p) in parts {
                let weight = (p.max[query] - top).exp();
                total += weight * p.sum[query];
                let weighted = &p.weighted[query * d..(query + 1) * d];
                out.iter_mut()
                    .zip(weighted)
                    .for_each(|(o, w)| *o += weight * w);
            }
            if total > 0.0 {
                out.iter_mut().for_each(|o| *o /= total);
                // Each weighed run's share: its e^{m − M} l over the whole Σ e^{m − M} l.
                let weighed = parts.iter().filter(|(block, _)| block.is_some());
                for ((_, mass), (_, p)) in masses.iter_mut().zip(weighed) {
                    *mass += (p.max[query] - top).exp() * p.sum[query] / total;
                }
            }
        }
        block_mass.push(masses);
    }
    Some((out, block_mass))
}

/// One part's scores, softmax statistics and weighted values, compiled for each instruction set.
mod kernel {
    #[cfg(target_arch = "x86_64")]
    use super::super::isa::sum_lanes;
    use super::{Element, Isa, Level, Partial, Rows};
    use std::cell::RefCell;

    thread_local! {
        /// Each thread's tile and scores, kept from part to part: a step has hundreds of parts.
        static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    }

    /// Rows widened and scored together: eight sums reduce to one vector of eight scores.
    const TILE: usize = 8;
    /// Bytes a prefetch brings in.
    const CACHE_LINE: usize = 64;
    /// How far ahead the scores' loop asks for key rows: one tile, 8 rows of 64 bf16, 1 KB, as
    /// far ahead as the int4 kernel asks for its weights.
    const PREFETCH_ROWS: usize = TILE;

    pub(super) fn part<E: Element>(
        isa: Isa,
        queries: &[f32],
        keys: &Rows<E>,
        values: &Rows<E>,
    ) -> Partial {
        match isa.level() {
            // SAFETY: an `Isa` of this level exists only on a CPU with AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 | Level::Avx512 => unsafe { part_avx2(queries, keys, values) },
            Level::Scalar => part_scalar(queries, keys, values),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn part_avx2<E: Element>(queries: &[f32], keys: &Rows<E>, values: &Rows<E>) -> Partial {
        use std::arch::x86_64::*;
        let dots = |tile: &[f32], q: &[f32]| {
            let d = q.len();
            assert!(tile.len() == TILE * d && d.is_multiple_of(8));
            // SAFETY: eight floats from i < d of `q` and of each of the TILE rows of `tile`, as
            // asserted. AVX2 and FMA are enabled on this function.
            unsafe {
                let mut sums = [_mm256_setzero_ps(); TILE];
                for i in (0..d).step_by(8) {
                    let q = _mm256_loadu_ps(q.as_ptr().add(i));
                    for (row, sum) in sums.iter_mut().enumerate() {
                        let k = _mm256_loadu_ps(tile.as_ptr().add(row * d + i));
                        *sum = _mm256_fmadd_ps(k, q, *sum);
                    }
                }
                // Lane sums of the eight rows at once: pairs, then quads within each 128-bit
                // half, then the two halves added.
                let [a, b, c, d, e, f, g, h] = sums;
                let low = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
                let high = _mm256_hadd_ps(_mm256_hadd_ps(e, f), _mm256_hadd_ps(g, h));
                let total = _mm256_add_ps(
                    _mm256_permute2f128_ps::<0x20>(low, high),
                    _mm256_permute2f128_ps::<0x31>(low, high),
                );
                let mut out = [0f32; TILE];
                _mm256_storeu_ps(out.as_mut_ptr(), total);
                out
            }
        };
        let accumulate = |weights: &[f32; TILE], tile: &[f32], out: &mut [f32]| {
            let d = out.len();
            assert!(tile.len() == TILE * d && d.is_multiple_of(8));
            // SAFETY: eight floats from i < d of `out` and of each of the TILE rows of `tile`, as
            // asserted. AVX2 and FMA are enabled on this function.
            unsafe {
                for i in (0..d).step_by(8) {
                    let mut sum = _mm256_loadu_ps(out.as_ptr().add(i));
                    for (row, &w) in weights.iter().enumerate() {
                        let v = _mm256_loadu_ps(tile.as_ptr().add(row * d + i));
                        sum = _mm256_fmadd_ps(_mm256_set1_ps(w), v, sum);
                    }
                    _mm256_storeu_ps(out.as_mut_ptr().add(i), sum);
                }
            }
        };
        // A closure in this function has its features: the call needs no `unsafe`.
        let exp_sum = |scores: &mut [f32], top: f32| exp_sum_avx2(scores, top);
        // A hint: it reads nothing and faults on no address.
        let prefetch = |at: *const u8| _mm_prefetch::<_MM_HINT_T0>(at.cast());
        part_with(
            queries,
            (keys, values),
            Vector {
                dots,
                accumulate,
                exp_sum,
                prefetch,
            },
        )
    }

    /// In place: s ← e^{s − top}, returning Σ, for `isa` (the tests compare the two).
    #[cfg(test)]
    pub(super) fn exp_sum(isa: Isa, scores: &mut [f32], top: f32) -> f32 {
        match isa.level() {
            // SAFETY: an `Isa` of this level exists only on a CPU with AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 | Level::Avx512 => unsafe { exp_sum_avx2(scores, top) },
            Level::Scalar => exp_sum_scalar(scores, top),
        }
    }

    /// [`exp_sum_scalar`] eight at a time, with Cephes' expf ([`exp`]).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn exp_sum_avx2(scores: &mut [f32], top: f32) -> f32 {
        use std::arch::x86_64::*;
        let whole = scores.len() / 8 * 8;
        // SAFETY: eight floats from i < whole ≤ len. AVX2 and FMA are enabled here.
        let vector_sum = unsafe {
            let top = _mm256_set1_ps(top);
            let mut sum = _mm256_setzero_ps();
            for i in (0..whole).step_by(8) {
                let at = scores.as_mut_ptr().add(i);
                let e = exp(_mm256_sub_ps(_mm256_loadu_ps(at), top));
                _mm256_storeu_ps(at, e);
                sum = _mm256_add_ps(sum, e);
            }
            sum_lanes(sum)
        };
        vector_sum + exp_sum_scalar(&mut scores[whole..], top)
    }

    /// e^x for x ≤ 0 (softmax weights), eight at a time: x = n·ln 2 + r with |r| ≤ ln 2 / 2,
    /// e^r by Cephes' polynomial, 2^n put into the exponent bits. Below −87 the result is 0.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn exp(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        // r = x − n·ln 2, with ln 2 in two parts so that n·(first part) is exact.
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_65,
            0.5,
        ] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let e_r = _mm256_add_ps(
            _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r),
            _mm256_set1_ps(1.0),
        );
        let two_n = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        _mm256_mul_ps(e_r, _mm256_castsi256_ps(two_n))
    }

    /// In place: s ← e^{s − top}, returning Σ.
    fn exp_sum_scalar(scores: &mut [f32], top: f32) -> f32 {
        scores
            .iter_mut()
            .map(|s| {
                *s = (*s - top).exp();
                *s
            })
            .sum()
    }

    /// Any CPU.
    fn part_scalar<E: Element>(queries: &[f32], keys: &Rows<E>, values: &Rows<E>) -> Partial {
        let dots = |tile: &[f32], q: &[f32]| {
            let mut out = [0f32; TILE];
            for (out, row) in out.iter_mut().zip(tile.chunks_exact(q.len())) {
                *out = row.iter().zip(q).map(|(k, q)| k * q).sum();
            }
            out
        };
        let accumulate = |weights: &[f32; TILE], tile: &[f32], out: &mut [f32]| {
            for (&w, row) in weights.iter().zip(tile.chunks_exact(out.len())) {
                out.iter_mut().zip(row).for_each(|(o, v)| *o += w * v);
            }
        };
        let vector = Vector {
            dots,
            accumulate,
            exp_sum: exp_sum_scalar,
            prefetch: |_| {},
        };
        part_with(queries, (keys, values), vector)
    }

    /// The vector operations of one instruction set, over tiles of [`TILE`] rows widened to f32
    /// (`[TILE, D]`).
    struct Vector<Dots, Accumulate, ExpSum, Prefetch> {
        /// The tile's rows · one query: TILE scores.
        dots: Dots,
        /// `out` `[D]` += Σ_r weights[r] · tile[r].
        accumulate: Accumulate,
        /// In place: s ← e^{s − top}, returning Σ.
        exp_sum: ExpSum,
        /// A cache hint for the address given.
        prefetch: Prefetch,
    }

    /// The part's keys, then its values, in tiles of [`TILE`] rows, each widened to f32 once for
    /// all G queries (the last tile padded with zero rows, whose weights are 0).
    ///
    /// The part's rows are read from RAM (a step reads each held key and value once), so the
    /// scores' loop asks for key rows [`PREFETCH_ROWS`] ahead and for the value rows of the same
    /// positions: the values' loop then finds them in cache.
    #[inline(always)]
    fn part_with<E: Element>(
        queries: &[f32],
        (keys, values): (&Rows<E>, &Rows<E>),
        vector: Vector<
            impl Fn(&[f32], &[f32]) -> [f32; TILE],
            impl Fn(&[f32; TILE], &[f32], &mut [f32]),
            impl Fn(&mut [f32], f32) -> f32,
            impl Fn(*const u8),
        >,
    ) -> Partial {
        let d = keys.dim;
        let g = queries.len() / d;
        let len = keys.data.len() / d;
        let row_bytes = d * std::mem::size_of::<E>();
        let prefetch_rows = |rows: &[E], at: usize, count: usize| {
            let start = rows.as_ptr().cast::<u8>().wrapping_add(at * row_bytes);
            (0..count * row_bytes)
                .step_by(CACHE_LINE)
                .for_each(|byte| (vector.prefetch)(start.wrapping_add(byte)));
        };
        SCRATCH.with_borrow_mut(|(tile, scores)| {
            tile.resize(TILE * d, 0.0);
            scores.resize(g * len, 0.0); // [G, len]
            let widen = |tile: &mut [f32], rows: &[E]| {
                let (held, padding) = tile.split_at_mut(rows.len());
                held.iter_mut().zip(rows).for_each(|(t, x)| *t = x.to_f32());
                padding.fill(0.0);
            };
            for (at, rows) in keys.data.chunks(TILE * d).enumerate() {
                let first = at * TILE;
                prefetch_rows(keys.data, first + PREFETCH_ROWS, TILE);
                prefetch_rows(values.data, first, TILE);
                widen(tile, rows);
                let n = rows.len() / d;
                for (query, q) in queries.chunks_exact(d).enumerate() {
                    let dots = (vector.dots)(tile, q);
                    scores[query * len + first..][..n].copy_from_slice(&dots[..n]);
                }
            }
            let mut partial = Partial {
                max: vec![0f32; g],
                sum: vec![0f32; g],
                weighted: vec![0f32; g * d],
            };
            for (query, scores) in scores.chunks_exact_mut(len).enumerate() {
                let top = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                partial.max[query] = top;
                partial.sum[query] = (vector.exp_sum)(scores, top);
            }
            for (at, rows) in values.data.chunks(TILE * d).enumerate() {
                let (first, n) = (at * TILE, rows.len() / d);
                widen(tile, rows);
                for (query, weighted) in partial.weighted.chunks_exact_mut(d).enumerate() {
                    let mut weights = [0f32; TILE];
                    weights[..n].copy_from_slice(&scores[query * len + first..][..n]);
                    (vector.accumulate)(&weights, tile, weighted);
                }
            }
            partial
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::values;

    /// libtorch's attention in f32 over `keys`/`values` `[B, H_kv, L, D]`, all visible.
    fn reference(q: &Tensor, keys: &Tensor, values: &Tensor) -> Tensor {
        Tensor::scaled_dot_product_attention(
            &q.to_kind(Kind::Float),
            &keys.to_kind(Kind::Float),
            &values.to_kind(Kind::Float),
            None::<Tensor>,
            0.0,
            false,
            None,
            false,
        )
    }

    #[test]
    fn equals_libtorch_attention_in_f32_and_bf16_across_parts() {
        // 600 held positions (three parts, the last short) in a buffer of 700, as the caches
        // narrow theirs; two batch rows, two heads, three queries each.
        let q = values(&[2, 2, 3, 64], 0.1);
        for kind in [Kind::Float, Kind::BFloat16] {
            let k = values(&[2, 2, 700, 64], 0.2)
                .to_kind(kind)
                .narrow(2, 0, 600);
            let v = values(&[2, 2, 700, 64], 0.3)
                .to_kind(kind)
                .narrow(2, 0, 600);
            let q = q.to_kind(kind);
            let whole = Past::Whole {
                keys: k.shallow_clone(),
                values: v.shallow_clone(),
            };
            let got = decode(&q, vec![whole]).expect("applies on the CPU");
            let error = (got.to_kind(Kind::Float) - reference(&q, &k, &v))
                .abs()
                .max()
                .double_value(&[]);
            let tolerance = if kind == Kind::Float { 1e-5 } else { 1e-2 };
            assert!(error < tolerance, "{kind:?}: off by {error}");
        }
    }

    /// Blocks read where they lie equal the same blocks gathered after the window into one
    /// softmax; weighed, each block's reported mass is the softmax probability its rows received,
    /// summed over the head's queries.
    #[test]
    fn blocks_read_in_place_equal_the_gathered_copy_and_weigh_each_block() {
        // A window of 70 rows and, per head, blocks 3 and 0 (then 1 and 2) of an archive of four
        // blocks of 8: one softmax over the window and the chosen blocks.
        let q = values(&[1, 2, 3, 16], 0.4);
        let window_keys = values(&[1, 2, 70, 16], 0.5);
        let window_values = values(&[1, 2, 70, 16], 0.6);
        let archive_keys = values(&[1, 2, 32, 16], 0.7);
        let archive_values = values(&[1, 2, 32, 16], 0.8);
        let chosen = [3i64, 0, 1, 2]; // [B = 1, H_kv = 2, k = 2]
        let pasts = |chosen: &[i64], weigh| {
            vec![
                Past::Whole {
                    keys: window_keys.shallow_clone(),
                    values: window_values.shallow_clone(),
                },
                Past::Blocks {
                    keys: archive_keys.shallow_clone(),
                    values: archive_values.shallow_clone(),
                    chosen: chosen.to_vec(),
                    block_len: 8,
                    weigh,
                },
            ]
        };
        let gather = |rows: &Tensor, head: i64, blocks: [i64; 2]| {
            let picked: Vec<Tensor> = blocks
                .iter()
                .map(|&j| rows.narrow(1, head, 1).narrow(2, 8 * j, 8))
                .collect();
            Tensor::cat(&picked, 2)
        };
        let to_vec = |t: Tensor| Vec::<f32>::try_from(t.reshape([-1])).unwrap();
        let read_of = |weigh| {
            let [out] = <[Output; 1]>::try_from(
                read(&[Read {
                    queries: to_vec(q.shallow_clone()),
                    shape: [1, 2, 3, 16],
                    pasts: pasts(&chosen, weigh),
                }])
                .expect("applies on the CPU"),
            )
            .ok()
            .expect("one read, one output");
            out
        };
        let (plain, weighed) = (read_of(false), read_of(true));
        assert!(plain.block_mass.is_empty());
        let mut masses = weighed.block_mass.iter();
        for (head, blocks) in [(0i64, [3i64, 0]), (1, [1, 2])] {
            let keys = Tensor::cat(
                &[
                    window_keys.narrow(1, head, 1),
                    gather(&archive_keys, head, blocks),
                ],
                2,
            );
            let values = Tensor::cat(
                &[
                    window_values.narrow(1, head, 1),
                    gather(&archive_values, head, blocks),
                ],
                2,
            );
            let q_head = q.narrow(1, head, 1);
            let want = reference(&q_head, &keys, &values);
            for out in [&plain, &weighed] {
                let got = Tensor::from_slice(&out.context).view([1, 2, 3, 16]);
                let error = (got.narrow(1, head, 1) - &want)
                    .abs()
                    .max()
                    .double_value(&[]);
                assert!(error < 1e-5, "head {head}: off by {error}");
            }
            // [3 queries, 70 + 16 keys]: each chosen block's 8 columns after the window's 70.
            let p = (q_head.matmul(&keys.transpose(2, 3)) / 4.0)
                .softmax(-1, Kind::Float)
                .view([3, 86]);
            for (slot, &block) in blocks.iter().enumerate() {
                let want = p.narrow(1, 70 + 8 * slot as i64, 8).sum(Kind::Float);
                let &(got_block, got) = masses.next().expect("a mass per chosen block");
                assert_eq!(got_block, block);
                let error = (f64::from(got) - want.double_value(&[])).abs();
                assert!(error < 1e-6, "head {head}, block {block}: off by {error}");
            }
        }
        assert!(masses.next().is_none());
        // A block beyond the archive is declined, not read.
        assert!(decode(&q, pasts(&[4, 0, 1, 2], false)).is_none());
    }

    /// Every instruction set's kernel on one part whose length is not a whole number of tiles
    /// (13 = 8 + 5 rows): the same softmax statistics and weighted values as a plain f64 loop.
    #[test]
    fn each_kernel_equals_a_plain_softmax_on_a_part_with_a_short_tile() {
        let (g, len, d) = (3, 13, 16);
        let to_vec = |t: Tensor| Vec::<f32>::try_from(t.reshape([-1])).unwrap();
        let q = to_vec(values(&[g, d], 0.7));
        let keys = to_vec(values(&[len, d], 0.8));
        let values_f32 = to_vec(values(&[len, d], 0.9));
        let rows = |data| Rows {
            data,
            dim: d as usize,
        };
        let (g, d) = (g as usize, d as usize);
        for isa in Isa::available() {
            let got = kernel::part(isa, &q, &rows(&keys), &rows(&values_f32));
            for query in 0..g {
                let q = &q[query * d..][..d];
                let scores: Vec<f64> = keys
                    .chunks_exact(d)
                    .map(|k| k.iter().zip(q).map(|(&k, &q)| f64::from(k * q)).sum())
                    .collect();
                let top = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - top).exp()).collect();
                let name = isa.name();
                assert!(
                    (f64::from(got.max[query]) - top).abs() < 1e-5,
                    "{name}: max"
                );
                let sum: f64 = weights.iter().sum();
                assert!(
                    (f64::from(got.sum[query]) - sum).abs() < 1e-5 * sum,
                    "{name}: sum"
                );
                for j in 0..d {
                    let want: f64 = weights
                        .iter()
                        .zip(values_f32.chunks_exact(d))
                        .map(|(w, v)| w * f64::from(v[j]))
                        .sum();
                    let got = f64::from(got.weighted[query * d + j]);
                    assert!((got - want).abs() < 1e-5, "{name}: {got} against {want}");
                }
            }
        }
    }

    #[test]
    fn every_exponential_is_within_a_few_ulps_of_libm() {
        // Softmax weights e^{s − top} from 1 down to below f32's smallest normal.
        for isa in Isa::available() {
            let mut scores: Vec<f32> = (0..4003).map(|i| 3.0 - i as f32 * 0.0219).collect();
            let want: Vec<f32> = scores.iter().map(|s| (s - 3.0).exp()).collect();
            let total = kernel::exp_sum(isa, &mut scores, 3.0);
            for (got, want) in scores.iter().zip(&want) {
                assert!(
                    (got - want).abs() <= 4e-7 * want + 1e-37,
                    "{}: {got} against {want}",
                    isa.name()
                );
            }
            let sum: f32 = want.iter().sum();
            assert!((total - sum).abs() <= 1e-5 * sum, "{}", isa.name());
        }
    }

    /// Writing a position in place equals copying a tensor there, in f32 and in bf16 (rounded as
    /// libtorch rounds), and touches no other position; a view that is not contiguous declines.
    #[test]
    fn writing_a_position_equals_copying_a_tensor_there() {
        let rows = values(&[2, 3, 1, 8], 0.3);
        let host = Vec::<f32>::try_from(rows.reshape([-1])).unwrap();
        for kind in [Kind::Float, Kind::BFloat16] {
            let held = values(&[2, 3, 5, 8], 0.1).to_kind(kind);
            let want = held.copy();
            want.narrow(2, 3, 1).copy_(&rows.to_kind(kind));
            assert!(write_position(&held, 3, &host), "{kind:?}");
            assert!(held.equal(&want), "{kind:?}");
            assert!(!write_position(&held, 5, &host), "{kind:?}: past the end");
        }
        let strided = values(&[2, 3, 8, 5], 0.1).transpose(2, 3);
        assert!(!write_position(&strided, 0, &host));
    }

    #[test]
    fn chosen_blocks_side_by_side_make_one_span() {
        assert_eq!(spans(&[5, 2, 3, 9, 4]), vec![(2, 4), (9, 1)]);
        assert_eq!(spans(&[7]), vec![(7, 1)]);
        assert_eq!(spans(&[]), vec![]);
    }

    #[test]
    fn declines_what_it_does_not_cover() {
        let q = values(&[1, 1, 2, 8], 0.1);
        let half = values(&[1, 1, 5, 8], 0.2).to_kind(Kind::Half);
        let whole = |t: &Tensor| Past::Whole {
            keys: t.shallow_clone(),
            values: t.shallow_clone(),
        };
        assert!(decode(&q, vec![whole(&half)]).is_none());
        // Rows of a head not contiguous: a transposed view.
        let strided = values(&[1, 1, 8, 5], 0.2).transpose(2, 3);
        assert!(decode(&q, vec![whole(&strided)]).is_none());
        assert!(decode(&q, vec![]).is_none());
    }
}
