//! The model thread's per-token rules (`architecture.md`, "Engine"): sampling and stopping.

pub mod sampler;
pub mod stop;
