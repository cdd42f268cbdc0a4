use std::path::{Path, PathBuf};

/// Everything that can go wrong loading or running a model, with the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("unsupported architecture {found}; supported: Llama, Mistral, Qwen2 and Qwen3 as *ForCausalLM or *ForSequenceClassification")]
    UnsupportedArchitecture { found: String },
    #[error("{dir}: missing {what} (expected {expected})")]
    MissingFile {
        dir: PathBuf,
        what: String,
        expected: String,
    },
    #[error("{path}: missing tensor `{name}` (expected shape {expected:?})")]
    MissingTensor {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
    },
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    TensorShape {
        path: PathBuf,
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("chat template of {path}: {message}")]
    ChatTemplate { path: PathBuf, message: String },
    #[error("sequence of {found} tokens is longer than the model's context of {limit} (max_position_embeddings)")]
    TooLong { found: usize, limit: usize },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
