//! The language model: a Llama-family decoder (`llama`), its weight matmuls (`linear`), the
//! per-layer store of past keys and values that attention reads (`cache`, where the session memory
//! of `infinity-former.md` §9.7 plugs in), and weight loading (`gguf` for a GGUF file, `hf` for a
//! Hugging Face folder).

pub mod cache;
pub mod error;
pub mod gguf;
pub mod hf;
pub mod linear;
pub mod llama;
pub mod weights;

pub use cache::{KvCache, LayerCache};
pub use error::ModelError;
pub use linear::{Linear, Precision};
pub use llama::{Llama, LlamaConfig, LogitsAt, ModelOptions};
pub use weights::Weights;
