//! The language model: a Llama-family decoder (`llama`), its weight matmuls (`linear`, and `q8` for the LM head's kernel), the
//! per-layer store of past keys and values that attention reads (`cache`, where the session memory
//! of `infinity-former.md` §9.7 plugs in), and weight loading (`crate::gguf` reads a GGUF file and
//! `from_gguf` maps it onto the decoder, `hf` reads a Hugging Face folder, `checkpoint` opens
//! either, `args` is the flags every command loads the model with).

pub mod args;
pub mod cache;
pub mod checkpoint;
pub mod error;
pub mod from_gguf;
pub mod hf;
pub mod linear;
pub mod llama;
pub mod q8;
pub mod weights;

pub use args::{parse_device, ModelArgs};
pub use cache::{KvCache, LayerCache};
pub use checkpoint::{Checkpoint, DEFAULT_MODEL};
pub use error::ModelError;
pub use linear::{Linear, Precision};
pub use llama::{Llama, LlamaConfig, LogitsAt, ModelOptions};
pub use weights::Weights;
