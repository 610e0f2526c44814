//! Errors of the model engine; each names the file, tensor or model involved and what to do.
//! Callers match on them: a missing model is not a broken file, and a full context is neither.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error(
        "model {model:?} not found; looked in:\n{tried}\nget a small model that runs here with `n0m1ctl model fetch smollm2` (it becomes `--model default`), or provide one as a .gguf file or a folder with config.json, model.safetensors and tokenizer.json, or in the Hugging Face cache (`n0m1ctl model pull {model}` where a model hub is reachable)"
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
    #[error("{path}: {source}")]
    GgufTokenizer {
        path: PathBuf,
        #[source]
        source: crate::tokenizer::GgufTokenizerError,
    },
    #[error("LoRA adapter {path}: {message}")]
    Lora { path: PathBuf, message: String },
    #[error(
        "{architecture} weights lack tensor {name:?}: the checkpoint is incomplete or of another architecture"
    )]
    MissingTensor {
        architecture: &'static str,
        name: String,
    },
    #[error(
        "tensor {name} has shape {found:?}, expected {expected:?}: the weights do not match config.json"
    )]
    BadShape {
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{setting} is {value}, which n0m1 cannot run ({supported})")]
    Unsupported {
        setting: &'static str,
        value: String,
        supported: &'static str,
    },
    #[error(
        "positions {start}..{end} exceed the model's context of {limit} tokens: shorten the prompt or lower --max_new_tokens"
    )]
    ContextFull {
        start: usize,
        end: usize,
        limit: usize,
    },
    #[error("the prompt encodes to no tokens")]
    EmptyPrompt,
    #[error("cannot {action}: {message}")]
    Text {
        action: &'static str,
        message: String,
    },
    #[error(
        "{path}: a LoRA adapter cannot be merged into a quantized GGUF model; use a safetensors folder"
    )]
    LoraOnQuantized { path: PathBuf },
    #[error("cannot write the fixture model: {0}")]
    Fixture(String),
    #[error(transparent)]
    Download(#[from] crate::download::DownloadError),
    #[error("model computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, LlmError>;

pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> LlmError + '_ {
    move |source| LlmError::Io {
        path: path.to_path_buf(),
        source,
    }
}
