//! infini: an inference server whose conversations keep an unbounded memory at constant cost per
//! token, built on the ∞-former (Martins et al., ACL 2022).

pub mod api;
pub mod cli;
pub mod config;
pub mod demo;
pub mod engine;
pub mod evaluation;
pub mod gguf;
pub mod log_text;
pub mod ltm;
pub mod memory;
pub mod model;
pub mod rope;
pub mod session;
pub mod store;
pub mod tokenizer;
pub mod train;
