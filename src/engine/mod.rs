//! The model's side of serving (`architecture.md`, "Engine"): the generation loop (prefill, then
//! decode with the cache), and the per-token rules, sampling and stopping.

pub mod generate;
pub mod sampler;
pub mod stop;
