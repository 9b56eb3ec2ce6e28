//! The language model: weight loading and the decoder (`architecture.md`, "model/").

pub mod gguf;
