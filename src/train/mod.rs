//! Training from scratch: the ∞-former paper's synthetic sorting task (`infinity-former.md` §5.1)
//! with a small native decoder whose layers carry the long-term memory of [`crate::ltm`], against
//! the same decoder without it.
//!
//! * [`sorting_data`]: the seeded generator and its targets;
//! * [`config`]: every hyper-parameter, with the paper's and a CPU preset;
//! * [`native_model`]: the decoder, segment by segment with STM and LTM;
//! * [`optimizer`]: Adam with clip and schedule, checkpointable;
//! * [`checkpoint`]: safetensors checkpoints and the run state;
//! * [`train_loop`], [`evaluate`], [`cli`]: `infini train sorting`, `infini eval sorting`.

pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod evaluate;
pub mod native_model;
pub mod optimizer;
pub mod sorting_data;
pub mod train_loop;
