//! The language model: a Llama-family decoder (`llama`); its weight matmuls (`linear`, with the
//! int4 layers' Q4_1 groups and their kernel in `q4` and the Q8_0 LM head in `q8`, written for the
//! instruction sets of `isa` and split over libtorch's threads by `parallel`); the per-layer store
//! of past keys and values that attention reads (`cache`, where the session memory of
//! `infinity-former.md` §9.7 plugs in) and a decode step's attention over it on host memory
//! (`host_attention`); and weight loading (`crate::gguf` reads a GGUF file and `from_gguf` maps it
//! onto the decoder, `hf` reads a Hugging Face folder, `checkpoint` opens either, `args` is the
//! flags every command loads the model with).

pub mod args;
pub mod cache;
pub mod checkpoint;
pub mod error;
pub mod from_gguf;
pub mod hf;
pub mod host_attention;
pub mod isa;
pub mod linear;
pub mod llama;
pub mod parallel;
pub mod q4;
pub mod q8;
pub mod weights;

pub use args::{parse_device, ModelArgs};
pub use cache::{KvCache, LayerCache};
pub use checkpoint::{Checkpoint, DEFAULT_MODEL};
pub use error::ModelError;
pub use linear::{Linear, Precision};
pub use llama::{Llama, LlamaConfig, LogitsAt, ModelOptions};
pub use weights::Weights;

/// What the model's unit tests share.
#[cfg(test)]
pub(crate) mod testing {
    use tch::{Device, Kind, Tensor};

    /// Deterministic values in −1..1 of `shape`, varied by `salt` (no draw from libtorch's global
    /// generator, which other tests running at the same time seed).
    pub fn values(shape: &[i64], salt: f64) -> Tensor {
        let n: i64 = shape.iter().product();
        (Tensor::arange(n, (Kind::Double, Device::Cpu)) * 0.61 + salt)
            .sin()
            .to_kind(Kind::Float)
            .reshape(shape)
    }
}
