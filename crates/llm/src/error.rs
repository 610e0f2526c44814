//! Errors of the model engine; each names the file or model involved and what to do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error(
        "model {model:?} not found; looked in:\n{tried}\nprovide it as a folder with config.json, model.safetensors and tokenizer.json, a .gguf file, or place it in the Hugging Face cache (`n0m1ctl model pull {model}` when online)"
    )]
    NotFound { model: String, tried: String },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("LoRA adapter {path}: {message}")]
    Lora { path: PathBuf, message: String },
    #[error("model computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, LlmError>;

pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> LlmError + '_ {
    move |source| LlmError::Io {
        path: path.to_path_buf(),
        source,
    }
}
