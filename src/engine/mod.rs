//! The model's side of serving (`architecture.md`, "Engine"): the generation loop (prefill, then
//! decode with the cache), the per-token rules, sampling and stopping, and the model thread that
//! the server submits turns to.

pub mod batch;
pub mod channel;
pub mod decode;
pub mod generate;
mod heap;
pub mod sampler;
pub mod scheduler;
pub mod sequence;
pub mod stats;
pub mod stop;
pub mod worker;
