//! The vector instruction sets that our matrix kernels (`q8`, `q4`) are written for, detected at
//! run time. An [`Isa`] is made only by [`Isa::available`], after the CPU's features are checked,
//! and its field is private: that is what makes a kernel's `unsafe` call for its [`Level`] sound.

/// What a kernel may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    /// Any CPU.
    Scalar,
    /// AVX2 with fused multiply-add and f16 conversions (F16C), as every AVX2 CPU has them.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512 Foundation and Byte/Word (16-bit lanes), on a CPU that has the AVX2 level too.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

/// An instruction set this CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Isa(Level);

impl Isa {
    /// Every instruction set this CPU runs, narrowest first (the scalar one always).
    pub fn available() -> Vec<Isa> {
        #[allow(unused_mut)]
        let mut levels = vec![Isa(Level::Scalar)];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                levels.push(Isa(Level::Avx2));
            }
            if levels.len() > 1
                && std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
            {
                levels.push(Isa(Level::Avx512));
            }
        }
        levels
    }

    /// The widest instruction set this CPU runs.
    pub fn best() -> Isa {
        *Self::available()
            .last()
            .expect("the scalar level runs anywhere")
    }

    /// For the start-up log: `scalar`, `avx2` or `avx512f`.
    pub fn name(self) -> &'static str {
        match self.0 {
            Level::Scalar => "scalar",
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => "avx512f",
        }
    }

    /// The level a kernel dispatches on; the CPU is known to run it.
    pub(crate) fn level(self) -> Level {
        self.0
    }
}

/// The sum of the eight lanes of `v` (the last step of our AVX2 kernels' dot products).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(crate) fn sum_lanes(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let halves = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
    _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1)))
}

/// Rows of activations whose sums one weight row's pass keeps in registers and L1 (the int4 and
/// Q8 kernels take a batch's rows this many at a time).
#[cfg(target_arch = "x86_64")]
pub(super) const ROWS_AT_ONCE: usize = 8;

/// `f::<N>(args)` for the `n` rows left (N = n up to [`ROWS_AT_ONCE`], known at compile time so
/// that each row's accumulators stay in registers).
#[cfg(target_arch = "x86_64")]
macro_rules! with_rows {
    ($n:expr, $f:ident($($arg:expr),*)) => {
        match $n {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            6 => $f::<6>($($arg),*),
            7 => $f::<7>($($arg),*),
            _ => $f::<{ $crate::model::isa::ROWS_AT_ONCE }>($($arg),*),
        }
    };
}
#[cfg(target_arch = "x86_64")]
pub(super) use with_rows;
