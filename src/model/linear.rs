//! The weight matmuls of the decoder, `y = x Wᵀ`, in three precisions (`performance.md`):
//! * f32 or bf16 dense weights through `linear`;
//! * int4 weight-only: groups of 32 input features share a scale and a zero
//!   (w = (q − 8)·scale + zero, q ∈ 0..15), multiplied by a kernel of ours (`super::q4`) against
//!   f32 activations. GGUF Q4_1 blocks (w = d·q + m over 32 weights) are the same thing with
//!   zero = m + 8·d;
//! * on the CPU, the LM head in Q8_0 (`super::q8`), whatever the precision when that loses nothing.
//!
//! Products of more than [`INT4_MAX_ROWS`] rows (prefill) use a dense copy of the int4 weights, in
//! bf16 where the CPU multiplies bf16 natively and in f32 where it does not ([`prefill_kind`]).

use tch::{Device, Kind, Tensor};

use super::q4::{Int4Groups, Q4Matrix};
use super::q8::Q8Matrix;
use super::ModelError;

/// How the model stores its weights and computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 weights and activations: the reference.
    F32,
    /// bf16 weights and activations (norms and softmax statistics in f32 inside libtorch).
    Bf16,
    /// int4 weights in groups of 32 (CPU only), a memory in bf16, and activations in bf16 or f32 by
    /// the CPU ([`Precision::compute_kind`]): the fastest on this machine.
    #[default]
    Int4,
}

impl Precision {
    /// The kind of this precision's activations where they are held: the session memory's keys
    /// and values, the token embeddings, and dense weights. The same on every CPU, so a memory
    /// saved on one machine reads the same on another.
    pub fn activation_kind(self) -> Kind {
        match self {
            Precision::F32 => Kind::Float,
            Precision::Bf16 | Precision::Int4 => Kind::BFloat16,
        }
    }

    /// The kind the matrix products, norms and feed-forward of many rows (prefill) compute in.
    /// int4: bf16 where the CPU multiplies it natively, else f32 ([`prefill_kind`]): there bf16
    /// bought no speed (libtorch widens it to f32 for every product anyway) and cost answers: a
    /// bf16 round after every norm, product and SwiGLU moved the README's first example from
    /// "The capital of France is Paris." to nonsense on an AVX2 CPU (its first token's margin,
    /// ln p(The) − ln p(L), is 0.08 in f32, −0.01 with bf16 activations, +0.04 with only the
    /// attention's inputs in bf16). The attention still reads the memory in
    /// [`Precision::activation_kind`].
    pub fn compute_kind(self) -> Kind {
        match self {
            Precision::Int4 => prefill_kind(),
            other => other.activation_kind(),
        }
    }

    /// The name the command line takes (`f32`, `bf16`, `int4`).
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Int4 => "int4",
        }
    }
}

impl Precision {
    /// The precision of a dense LM head (off the CPU; see [`Linear::lm_head`]): int4 keeps it in
    /// bf16. The GGUF stores this head (the tied embeddings) as Q8_0, and quantising it to int4
    /// cost the most fidelity of all the weights (tests/model_reference.rs states the figures).
    pub fn lm_head(self) -> Precision {
        match self {
            Precision::Int4 => Precision::Bf16,
            other => other,
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            "int4" | "q4" => Ok(Precision::Int4),
            other => Err(ModelError::BadInput(format!(
                "unknown precision `{other}` (expected f32, bf16 or int4)"
            ))),
        }
    }
}

/// A checkpoint's weight matrix `[out, in]` as stored: dense (any float kind) or int4 groups (a GGUF
/// Q4_1 tensor), so int4 weights reach the int4 kernel without a round trip through f32.
#[derive(Debug)]
pub enum Matrix {
    Dense(Tensor),
    Int4(Int4Groups),
}

impl Matrix {
    pub fn shape(&self) -> Vec<i64> {
        match self {
            Matrix::Dense(t) => t.size(),
            Matrix::Int4(g) => g.shape(),
        }
    }

    /// The dense weights, f32.
    pub fn dense(&self) -> Tensor {
        match self {
            Matrix::Dense(t) => t.to_kind(Kind::Float),
            Matrix::Int4(g) => g.dequantise(),
        }
    }

    /// Output rows `index` of the matrix.
    pub fn select_rows(&self, index: &Tensor) -> Self {
        match self {
            Matrix::Dense(t) => Matrix::Dense(t.index_select(0, index)),
            Matrix::Int4(g) => Matrix::Int4(g.select_rows(index)),
        }
    }

    /// Stacks matrices along the output axis (fused q/k/v and gate/up): int4 stays int4 when every
    /// part is int4, anything else becomes dense f32.
    pub fn cat_rows(parts: &[Matrix]) -> Self {
        let groups: Vec<&Int4Groups> = parts
            .iter()
            .filter_map(|m| match m {
                Matrix::Int4(g) => Some(g),
                Matrix::Dense(_) => None,
            })
            .collect();
        if groups.len() == parts.len() {
            let cat = |field: fn(&Int4Groups) -> &Tensor| {
                Tensor::cat(&groups.iter().map(|g| field(g)).collect::<Vec<_>>(), 0)
            };
            Matrix::Int4(Int4Groups {
                codes: cat(|g| &g.codes),
                scales: cat(|g| &g.scales),
                zeros: cat(|g| &g.zeros),
            })
        } else {
            Matrix::Dense(Tensor::cat(
                &parts.iter().map(Matrix::dense).collect::<Vec<_>>(),
                0,
            ))
        }
    }
}

/// One weight matrix `[out, in]` ready to multiply.
#[derive(Debug)]
pub enum Linear {
    Dense(Tensor),
    /// Q8_0 groups multiplied by our own kernel (the LM head on the CPU, see [`Linear::lm_head`]).
    Q8(Q8Matrix),
    Int4 {
        /// The Q4_1 groups for our own kernel: products of up to [`INT4_MAX_ROWS`] rows (decode).
        matrix: Q4Matrix,
        /// The same weights dequantised `[N, K]`, in [`prefill_kind`], for products of more rows
        /// (prefill), where a GEMM's blocking pays.
        dense: Tensor,
    },
}

/// Whether this CPU multiplies bf16 natively (AVX512-BF16, which every CPU with AMX has as well).
/// Without it libtorch widens bf16 to f32 in software for every product: on a 2-core AVX2 EPYC,
/// prefill ran at 78 tok/s through dense bf16 against 393 through f32 (issue #16's table).
pub fn cpu_has_native_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The kind of the dense copy of int4 weights that products of many rows (prefill) use: bf16 where
/// the CPU multiplies it natively, else f32 (twice the bytes, 424 MB instead of 212 MB for
/// SmolLM2-135M's layers; docs/OPERATIONS.md).
pub fn prefill_kind() -> Kind {
    if cpu_has_native_bf16() {
        Kind::BFloat16
    } else {
        Kind::Float
    }
}

/// Most rows for which the int4 kernel beats a dense bf16 product. Measured with libtorch's int4
/// kernel (2-core EPYC, one thread, 1536×576): int4 0.07 ms vs bf16 0.21 ms at 2 rows, equal at 8,
/// and at 512 rows (prefill) 11.8 ms vs 1.2 ms: an int4 kernel streams fewer bytes but has no GEMM
/// blocking. Ours (`super::q4`) reads each weight row once for all rows of a product, likewise.
///
/// A decode step on host memory multiplies every row in our kernel whatever their number (see
/// `super::llama`): a row's logits then do not depend on its batch. The dense bf16 copy on a CPU
/// with native bf16 (AVX-512 EPYC, `make bench-batch`) was no faster for a whole step at 8 or 16
/// rows (23 against 26–31 ms at 8, 58–62 against 54–77 ms at 16) and faster only at 64 (133–162
/// against 183–191 ms), at the price of bf16 activations that move a row's logits with its batch.
pub const INT4_MAX_ROWS: i64 = 8;

impl Linear {
    /// Dense f32 weights `[out, in]` in `precision` on `device` (int4: CPU only).
    pub fn new(weight: &Tensor, precision: Precision, device: Device) -> Result<Self, ModelError> {
        match precision {
            Precision::F32 | Precision::Bf16 => Ok(Linear::Dense(
                weight
                    .to_device(device)
                    .to_kind(precision.activation_kind()),
            )),
            Precision::Int4 => Self::from_int4(&Int4Groups::quantise(weight)?, device),
        }
    }

    /// A checkpoint matrix in `precision` on `device`: int4 groups go to the int4 kernel as they
    /// are when the precision is int4, and are dequantised for f32/bf16.
    pub fn from_matrix(
        matrix: &Matrix,
        precision: Precision,
        device: Device,
    ) -> Result<Self, ModelError> {
        match (matrix, precision) {
            (Matrix::Int4(groups), Precision::Int4) => Self::from_int4(groups, device),
            (Matrix::Dense(weight), _) => Self::new(weight, precision, device),
            (Matrix::Int4(groups), _) => Self::new(&groups.dequantise(), precision, device),
        }
    }

    /// The LM head `[V, C]`. On the CPU it is Q8_0 ([`Q8Matrix`]: half the bytes of bf16, read by
    /// our own kernel) whenever that loses nothing against the precision's own head: below f32
    /// always (Q8_0 is as close to the weights as bf16 is, and for a GGUF's Q8_0 embeddings
    /// closer), and in f32 when the weights are Q8_0 values already (they quantise back exactly).
    /// Otherwise, and on other devices, dense in [`Precision::lm_head`].
    pub fn lm_head(
        weight: &Tensor,
        precision: Precision,
        device: Device,
    ) -> Result<Self, ModelError> {
        if device == Device::Cpu {
            let q8 = Q8Matrix::quantise(weight)?;
            if precision != Precision::F32 || q8.dequantise().equal(&weight.to_kind(Kind::Float)) {
                return Ok(Linear::Q8(q8));
            }
        }
        Self::new(weight, precision.lm_head(), device)
    }

    /// The kind of activations this matrix multiplies at full fidelity: the dense weights' kind,
    /// f32 for our kernels (int4 and Q8_0).
    pub fn input_kind(&self) -> Kind {
        match self {
            Linear::Dense(weight) => weight.kind(),
            Linear::Q8(_) | Linear::Int4 { .. } => Kind::Float,
        }
    }

    /// How this matrix is multiplied, for the start-up log (`infini serve` prints it).
    pub fn describe(&self) -> String {
        match self {
            Linear::Dense(weight) => format!("dense {:?}", weight.kind()),
            Linear::Q8(_) => format!("Q8_0 ({} kernel)", super::isa::Isa::best().name()),
            Linear::Int4 { dense, .. } => format!(
                "Q4_1 ({} kernel) for decode steps and up to {INT4_MAX_ROWS} rows, dense {:?} beyond",
                super::q4::kernel_name(),
                dense.kind()
            ),
        }
    }

    /// Int4 groups for our kernel ([`Q4Matrix`]), with the dense copy for prefill.
    pub fn from_int4(groups: &Int4Groups, device: Device) -> Result<Self, ModelError> {
        if device != Device::Cpu {
            return Err(ModelError::Unsupported(format!(
                "int4 weights run on the CPU only (a kernel of ours on host memory); device is {device:?}: use f32 or bf16"
            )));
        }
        Ok(Linear::Int4 {
            matrix: Q4Matrix::new(groups)?,
            dense: groups.dequantise().to_kind(prefill_kind()),
        })
    }

    /// The int4 weights in host memory, for a decode step that multiplies there
    /// (`super::llama`'s host path); `None` for the matrices libtorch multiplies.
    pub fn on_host(&self) -> Option<&Q4Matrix> {
        match self {
            Linear::Int4 { matrix, .. } => Some(matrix),
            Linear::Dense(_) | Linear::Q8(_) => None,
        }
    }

    /// `x [..., in]` → `[..., out]`, in the kind of `x` (f32 for Q8_0).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            Linear::Dense(weight) => x.linear::<&Tensor>(weight, None),
            Linear::Q8(matrix) => matrix.forward(x),
            Linear::Int4 { matrix, dense } => {
                let k = *x.size().last().expect("x has a feature dimension");
                if x.numel() as i64 > INT4_MAX_ROWS * k {
                    return x
                        .to_kind(dense.kind())
                        .linear::<&Tensor>(dense, None)
                        .to_kind(x.kind());
                }
                matrix.forward(x)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_weight(n: i64, k: i64) -> Tensor {
        tch::manual_seed(7);
        Tensor::randn([n, k], (Kind::Float, Device::Cpu)) * 0.05
    }

    #[test]
    fn int4_matmul_equals_the_dequantised_product() {
        // Tolerance: bf16 activations and bf16 scales, about 3e-3 relative (performance.md measured
        // 3e-3 against the d·q + m dequantisation); we allow 1e-2 of the output's scale.
        // Both paths: the int4 kernel (≤ INT4_MAX_ROWS rows) and the dense bf16 copy (more rows).
        let w = random_weight(96, 256);
        let groups = Int4Groups::quantise(&w).unwrap();
        let linear = Linear::from_int4(&groups, Device::Cpu).unwrap();
        for shape in [[1i64, 2, 256], [3, 5, 256]] {
            let x = Tensor::randn(shape, (Kind::Float, Device::Cpu));
            let expected = x.linear::<&Tensor>(&groups.dequantise(), None);
            let got = linear
                .forward(&x.to_kind(Kind::BFloat16))
                .to_kind(Kind::Float);
            assert_eq!(got.size(), vec![shape[0], shape[1], 96]);
            let error = (got - &expected).abs().max().double_value(&[]);
            let scale = expected.abs().max().double_value(&[]);
            assert!(
                error < 1e-2 * scale,
                "int4 product of {shape:?} off by {error} (outputs up to {scale})"
            );
        }
    }

    #[test]
    fn precision_parses_and_rejects() {
        assert_eq!("BF16".parse::<Precision>().unwrap(), Precision::Bf16);
        assert!("fp8".parse::<Precision>().is_err());
    }
}
