//! Where the model comes from (`architecture.md`, the model layer): the default GGUF file, any GGUF
//! of the Llama family, or a Hugging Face folder. One type opens either and hands out the decoder
//! and its tokenizer, so callers (CLI, server, tests, benchmarks) need not care which it is.

use std::path::{Path, PathBuf};

use super::hf::HfFolder;
use super::{from_gguf, Llama, ModelError, ModelOptions};
use crate::gguf::GgufFile;
use crate::tokenizer::{Tokenizer, TokenizerError};

/// The default model, relative to the repository root (`scripts/setup.sh` fetches it).
pub const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// An opened checkpoint: a GGUF file or a Hugging Face model folder.
#[derive(Debug)]
pub enum Checkpoint {
    Gguf(Box<GgufFile>),
    Hf(HfFolder),
}

impl Checkpoint {
    /// A folder is read as a Hugging Face model folder, a file as GGUF.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref();
        if path.is_dir() {
            Ok(Checkpoint::Hf(HfFolder::open(path)?))
        } else {
            Ok(Checkpoint::Gguf(Box::new(GgufFile::open(path)?)))
        }
    }

    pub fn path(&self) -> PathBuf {
        match self {
            Checkpoint::Gguf(file) => file.path().to_path_buf(),
            Checkpoint::Hf(folder) => folder.dir.clone(),
        }
    }

    /// The decoder, on the device and in the precision of `options`.
    pub fn load(&self, options: ModelOptions) -> Result<Llama, ModelError> {
        match self {
            Checkpoint::Gguf(file) => from_gguf::load(file, options),
            Checkpoint::Hf(folder) => folder.load(options),
        }
    }

    /// The tokenizer (with its chat template) stored with the weights.
    pub fn tokenizer(&self) -> Result<Tokenizer, TokenizerError> {
        match self {
            Checkpoint::Gguf(file) => Tokenizer::from_gguf(file),
            Checkpoint::Hf(folder) => Tokenizer::from_hf_dir(&folder.dir),
        }
    }
}
