//! The ∞-former's long-term memory (Martins et al., ACL 2022), model-agnostic and batched over
//! sessions, following `../shared/design/infinity-former.md` §1–4, §7 and §9.
//!
//! * [`basis`]: the Gaussian RBFs ψ(t) and their closed-form Gaussian expectation (§1.2, §2.2);
//! * [`ridge`]: positions and the padded ridge operator G (§1.3, §3);
//! * [`signal`]: the memory state, first fit, unbounded update, token density (§3, §9.1);
//! * [`sticky`]: attention-mass histograms and sticky resampling (§4);
//! * [`attention`]: the learned Gaussian reading, its KL, and the Gibbs joint reading (§2, §7.1, §9.2).

pub mod attention;
pub mod basis;
pub mod config;
pub mod ridge;
pub mod signal;
pub mod sticky;

pub use attention::{
    joint_attention, quadrature_log_weights, variance_kl, GaussianRead, GaussianReading, JointRead,
    KeyGroup,
};
pub use basis::Basis;
pub use config::{LtmConfig, LtmConfigError, TokenPositions};
pub use signal::{LongTermMemory, MemoryOperators};
