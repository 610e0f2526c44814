//! n0m1-llm: the model engine. GPT-2 and Gemma 3 written on candle (`gpt2`, `gemma3`), test models the project
//! makes itself (`fixture`). Only the model binaries link this crate, so the supervisor and
//! n0m1ctl never compile candle.

pub mod attention;
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
pub mod weights;

pub use error::{LlmError, Result};
