//! What can go wrong while loading or running a model, each message one a user can act on.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    BadFile { path: PathBuf, message: String },
    #[error("model configuration: {0}")]
    BadConfig(String),
    #[error("the checkpoint has no weight `{0}`")]
    MissingWeight(String),
    #[error("weight `{name}` has shape {actual:?}, the configuration expects {expected:?}")]
    WeightShape {
        name: String,
        expected: Vec<i64>,
        actual: Vec<i64>,
    },
    #[error("{needed} tokens do not fit the context of {capacity} tokens")]
    ContextFull { needed: i64, capacity: i64 },
    #[error("bad input: {0}")]
    BadInput(String),
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}
