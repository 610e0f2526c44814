//! n0m1-llm: the model engine. `model::LoadedModel` loads GPT-2 (`gpt2`, written here on
//! candle), Llama safetensors (candle-transformers) and GGUF files: Llama-family (`llama`)
//! and Gemma 3 (`gemma3`) decoders on the file's own quantized blocks (`kernels`, products
//! split across `team`'s helper threads; `decoder` holds what the two share), with a
//! tokenizer built from the file's metadata (`tokenizer`). `generate` decodes, `resolve`
//! finds a model, `download` fetches one into the Hugging Face cache, `lora` merges an
//! adapter, `weights` reads safetensors, `fixture` writes the seeded test models, `error` is
//! the one error type. Only the model binaries link this crate, so the supervisors and
//! n0m1ctl never compile candle.

pub mod decoder;
pub mod download;
pub mod error;
pub mod fixture;
pub mod gemma3;
pub mod generate;
pub mod gpt2;
pub mod kernels;
pub mod llama;
pub mod lora;
pub mod model;
pub mod resolve;
pub mod team;
pub mod tokenizer;
pub mod weights;

pub use error::{LlmError, Result};
