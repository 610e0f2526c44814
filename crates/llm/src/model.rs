//! A loaded model and its tokenizer, whatever the architecture: GPT-2 (safetensors), Llama
//! (safetensors, through candle-transformers) or a quantized Llama (GGUF, tokenizer taken
//! from the file's metadata).

use std::collections::HashMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::llama as candle_llama;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

use crate::error::{LlmError, Result, io};
use crate::gemma3::Gemma3;
use crate::gpt2::{Gpt2, Gpt2Config, Gpt2Weights};
use crate::llama::Llama;
use crate::lora::LoraAdapter;

/// How to load: `quantize` turns the big matrices into Q8_0 (GGUF files in formats without
/// fast kernels are requantized to Q8_0 regardless).
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub quantize: bool,
    pub lora: Option<PathBuf>,
}

struct LlamaParts {
    model: candle_llama::Llama,
    config: candle_llama::Config,
    cache: candle_llama::Cache,
}

enum Network {
    Gpt2(Box<Gpt2>),
    Llama(Box<LlamaParts>),
    QuantizedLlama(Box<Llama>),
    Gemma3(Box<Gemma3>),
}

/// The prompt format of an instruct model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatTemplate {
    /// No template: the system text, a blank line, the prompt.
    Plain,
    /// ChatML (`<|im_start|>`): SmolLM2, Qwen.
    ChatMl,
    /// Gemma's turns (`<start_of_turn>user … <start_of_turn>model`); no system role, so the
    /// system text opens the user's turn.
    Gemma,
}

/// A model ready to generate.
pub struct LoadedModel {
    network: Network,
    pub tokenizer: Tokenizer,
    /// Tokens that end a generation.
    pub eos_ids: Vec<u32>,
    /// Positions the model can attend to.
    pub context_length: usize,
    /// How an instruct model wants its prompt wrapped.
    pub chat_template: ChatTemplate,
    /// What was loaded, for messages.
    pub description: String,
    device: Device,
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    serde_json::from_str(&text).map_err(|e| LlmError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    Tokenizer::from_file(path).map_err(|e| LlmError::Tokenizer {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Every `*.safetensors` file of a folder (one file or shards), merged into one map.
fn load_safetensors(dir: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(LlmError::Format {
            path: dir.to_path_buf(),
            message: "no .safetensors weights in this folder".into(),
        });
    }
    let mut tensors = HashMap::new();
    for file in files {
        tensors.extend(crate::weights::read_safetensors(&file, device)?);
    }
    Ok(tensors)
}

impl LoadedModel {
    /// Loads a folder (`config.json` + safetensors + `tokenizer.json`) or a `.gguf` file.
    pub fn load(path: &Path, options: &LoadOptions) -> Result<LoadedModel> {
        let device = Device::Cpu;
        if path.extension().is_some_and(|x| x == "gguf") {
            if options.lora.is_some() {
                return Err(LlmError::LoraOnQuantized {
                    path: path.to_path_buf(),
                });
            }
            return Self::load_gguf(path, &device);
        }
        let config_path = path.join("config.json");
        let config = read_json(&config_path)?;
        let model_type = config
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let tokenizer = load_tokenizer(&path.join("tokenizer.json"))?;
        let mut tensors = load_safetensors(path, &device)?;
        match model_type {
            "gpt2" => {
                let gpt2_config: Gpt2Config =
                    serde_json::from_value(config.clone()).map_err(|e| LlmError::Format {
                        path: config_path.clone(),
                        message: e.to_string(),
                    })?;
                let mut weights = Gpt2Weights::new(tensors)?;
                if let Some(lora) = &options.lora {
                    LoraAdapter::load(lora)?.merge_into(weights.tensors_mut(), true)?;
                }
                let eos_ids = gpt2_config.eos_token_id.into_iter().collect();
                let context_length = gpt2_config.n_positions;
                let model = Gpt2::load(gpt2_config, weights, options.quantize, &device)?;
                Ok(LoadedModel {
                    network: Network::Gpt2(Box::new(model)),
                    tokenizer,
                    eos_ids,
                    context_length,
                    chat_template: ChatTemplate::Plain,
                    description: format!(
                        "GPT-2 from {}{}",
                        path.display(),
                        if options.quantize { " (Q8_0)" } else { "" }
                    ),
                    device,
                })
            }
            "llama" | "mistral" => {
                if let Some(lora) = &options.lora {
                    LoraAdapter::load(lora)?.merge_into(&mut tensors, false)?;
                }
                let llama_config: candle_llama::LlamaConfig =
                    serde_json::from_value(config.clone()).map_err(|e| LlmError::Format {
                        path: config_path.clone(),
                        message: e.to_string(),
                    })?;
                let eos_ids = match &llama_config.eos_token_id {
                    Some(candle_llama::LlamaEosToks::Single(id)) => vec![*id],
                    Some(candle_llama::LlamaEosToks::Multiple(ids)) => ids.clone(),
                    None => Vec::new(),
                };
                let config = llama_config.into_config(false);
                let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &device);
                let model = candle_llama::Llama::load(vb, &config)?;
                let cache = candle_llama::Cache::new(true, DType::F32, &config, &device)?;
                let chat_template = if tokenizer.token_to_id("<|im_start|>").is_some() {
                    ChatTemplate::ChatMl
                } else {
                    ChatTemplate::Plain
                };
                Ok(LoadedModel {
                    context_length: config.max_position_embeddings,
                    network: Network::Llama(Box::new(LlamaParts {
                        model,
                        config,
                        cache,
                    })),
                    tokenizer,
                    eos_ids,
                    chat_template,
                    description: format!("Llama from {}", path.display()),
                    device,
                })
            }
            other => Err(LlmError::Unsupported {
                setting: "model_type",
                value: format!("{other:?} in {}", config_path.display()),
                supported: "gpt2 and llama are",
            }),
        }
    }

    fn load_gguf(path: &Path, device: &Device) -> Result<LoadedModel> {
        // Read from the file as needed, not into memory first: a copy of the whole file would
        // sit beside the weights until the load ends (it was most of the peak RSS).
        let mut file = std::io::BufReader::new(std::fs::File::open(path).map_err(io(path))?);
        let format = |message: String| LlmError::Format {
            path: path.to_path_buf(),
            message,
        };
        let content = gguf_file::Content::read(&mut file).map_err(|e| format(e.to_string()))?;
        let tokenizer =
            tokenizer_from_gguf(&content).map_err(|source| LlmError::GgufTokenizer {
                path: path.to_path_buf(),
                source,
            })?;
        let metadata_u32 = |key: &str| content.metadata.get(key).and_then(|v| v.to_u32().ok());
        let architecture = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_else(|| "llama".into());
        let mut eos_ids: Vec<u32> = metadata_u32("tokenizer.ggml.eos_token_id")
            .into_iter()
            .collect();
        let mut context_length =
            metadata_u32(&format!("{architecture}.context_length")).unwrap_or(2048) as usize;
        let template_text = content
            .metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok());
        let (network, chat_template, name) = match architecture.as_str() {
            "llama" => {
                let chat_template = if template_text.is_some_and(|t| t.contains("<|im_start|>")) {
                    ChatTemplate::ChatMl
                } else {
                    ChatTemplate::Plain
                };
                let model = read_weights(content, path, &mut file, |c, mut r| {
                    Llama::from_gguf(c, &mut r, device)
                })?;
                context_length = context_length.min(model.context_length);
                (
                    Network::QuantizedLlama(Box::new(model)),
                    chat_template,
                    "quantized Llama",
                )
            }
            "gemma3" => {
                // An instruct turn ends with <end_of_turn>, not the file's <eos>.
                eos_ids.extend(tokenizer.token_to_id("<end_of_turn>"));
                let model = read_weights(content, path, &mut file, |c, mut r| {
                    Gemma3::from_gguf(c, &mut r, device)
                })?;
                context_length = context_length.min(model.context_length);
                (
                    Network::Gemma3(Box::new(model)),
                    ChatTemplate::Gemma,
                    "quantized Gemma 3",
                )
            }
            other => {
                return Err(LlmError::Unsupported {
                    setting: "general.architecture",
                    value: format!("{other:?} in {}", path.display()),
                    supported: "GGUF files of llama (SmolLM2, TinyLlama, …) or gemma3",
                });
            }
        };
        Ok(LoadedModel {
            network,
            tokenizer,
            eos_ids,
            context_length,
            chat_template,
            description: format!("{name} from {}", path.display()),
            device: device.clone(),
        })
    }

    /// Logits of the last of `ids`, fed at `position`, [vocab].
    pub fn forward(&mut self, ids: &[u32], position: usize) -> Result<Tensor> {
        let input = || Tensor::new(ids, &self.device)?.unsqueeze(0);
        Ok(match &mut self.network {
            Network::Gpt2(model) => model.forward(ids, position)?,
            Network::Llama(parts) => parts
                .model
                .forward(&input()?, position, &mut parts.cache)?
                .squeeze(0)?,
            Network::QuantizedLlama(model) => model.forward(ids, position)?,
            Network::Gemma3(model) => model.forward(ids, position)?,
        })
    }

    /// Starts a new sequence.
    pub fn clear_cache(&mut self) -> Result<()> {
        match &mut self.network {
            Network::Gpt2(model) => model.clear_cache(),
            Network::Llama(parts) => {
                parts.cache =
                    candle_llama::Cache::new(true, DType::F32, &parts.config, &self.device)?
            }
            // Position 0 replaces the quantized model's cache.
            Network::QuantizedLlama(_) | Network::Gemma3(_) => {}
        }
        Ok(())
    }
}

/// GGUF formats with fast CPU kernels (candle's, or n0m1's `kernels` for Q4_0/Q4_1/Q8_0); others are
/// requantized to Q8_0 at load.
fn has_fast_kernels(dtype: GgmlDType) -> bool {
    matches!(
        dtype,
        GgmlDType::F32
            | GgmlDType::F16
            | GgmlDType::Q8_0
            | GgmlDType::Q4_0
            | GgmlDType::Q4_1
            | GgmlDType::Q4K
            | GgmlDType::Q6K
            | GgmlDType::Q8K
    )
}

/// What a decoder reads its weights from: the file itself, or its requantized image.
trait WeightSource: std::io::Read + std::io::Seek {}
impl<T: std::io::Read + std::io::Seek> WeightSource for T {}

/// Builds a decoder from the file, after requantizing the formats without fast kernels.
fn read_weights<T>(
    content: gguf_file::Content,
    path: &Path,
    file: &mut std::io::BufReader<std::fs::File>,
    build: impl FnOnce(gguf_file::Content, &mut dyn WeightSource) -> candle_core::Result<T>,
) -> Result<T> {
    let (content, rewritten) = requantize_slow_formats(content, path)?;
    match rewritten {
        Some(bytes) => build(content, &mut Cursor::new(bytes)),
        None => build(content, file),
    }
    .map_err(|e| LlmError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The file's tensors in formats without fast kernels requantized to Q8_0, as a new GGUF
/// image (`None`: nothing to change, read the file itself).
fn requantize_slow_formats(
    content: gguf_file::Content,
    path: &Path,
) -> Result<(gguf_file::Content, Option<Vec<u8>>)> {
    let slow = content
        .tensor_infos
        .values()
        .any(|info| !has_fast_kernels(info.ggml_dtype));
    if !slow {
        return Ok((content, None));
    }
    let bytes = std::fs::read(path).map_err(io(path))?;
    let format = |message: String| LlmError::Format {
        path: path.to_path_buf(),
        message,
    };
    let mut reader = Cursor::new(&bytes);
    let mut names: Vec<String> = content.tensor_infos.keys().cloned().collect();
    names.sort();
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(names.len());
    for name in names {
        let tensor = content
            .tensor(&mut reader, &name, &Device::Cpu)
            .map_err(|e| format(e.to_string()))?;
        let tensor = if has_fast_kernels(tensor.dtype()) {
            tensor
        } else {
            let dense = tensor.dequantize(&Device::Cpu)?;
            let inner = dense.dims().last().copied().unwrap_or(0);
            let target = if inner.is_multiple_of(GgmlDType::Q8_0.block_size()) {
                GgmlDType::Q8_0
            } else {
                GgmlDType::F32
            };
            QTensor::quantize(&dense, target)?
        };
        tensors.push((name, tensor));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut out = Cursor::new(Vec::new());
    gguf_file::write(&mut out, &metadata, &tensor_refs)?;
    let bytes = out.into_inner();
    let content =
        gguf_file::Content::read(&mut Cursor::new(&bytes)).map_err(|e| format(e.to_string()))?;
    tracing::info!(path = %path.display(), "requantized GGUF tensors without fast kernels to Q8_0");
    Ok((content, Some(bytes)))
}

/// What is wrong with the tokenizer a GGUF file describes.
#[derive(Debug, thiserror::Error)]
pub enum GgufTokenizerError {
    #[error("no {key} in the GGUF metadata: the file carries no tokenizer")]
    Missing { key: &'static str },
    #[error("GGUF metadata {key} is malformed: {problem}")]
    Malformed { key: &'static str, problem: String },
    #[error(
        "tokenizer.ggml.model {model:?} is not supported (byte-level BPE \"gpt2\" and SentencePiece \"llama\" are)"
    )]
    UnsupportedModel { model: String },
}

/// Builds the byte-level BPE tokenizer a GGUF file describes in its metadata.
pub fn tokenizer_from_gguf(
    content: &gguf_file::Content,
) -> std::result::Result<Tokenizer, GgufTokenizerError> {
    let get = |key: &'static str| {
        content
            .metadata
            .get(key)
            .ok_or(GgufTokenizerError::Missing { key })
    };
    let malformed = |key: &'static str| {
        move |e: candle_core::Error| GgufTokenizerError::Malformed {
            key,
            problem: e.to_string(),
        }
    };
    const MODEL: &str = "tokenizer.ggml.model";
    const TOKENS: &str = "tokenizer.ggml.tokens";
    const MERGES: &str = "tokenizer.ggml.merges";
    let model = get(MODEL)?.to_string().map_err(malformed(MODEL))?;
    let tokens: Vec<String> = get(TOKENS)?
        .to_vec()
        .map_err(malformed(TOKENS))?
        .iter()
        .map(|v| v.to_string().cloned().map_err(malformed(TOKENS)))
        .collect::<std::result::Result<_, _>>()?;
    let token_types: Vec<i32> = content
        .metadata
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.to_vec().ok())
        .map(|values| values.iter().map(|v| v.to_i32().unwrap_or(1)).collect())
        .unwrap_or_default();
    match model.as_str() {
        "gpt2" => {}
        "llama" => return sentencepiece_from_gguf(content, tokens, &token_types),
        _ => {
            return Err(GgufTokenizerError::UnsupportedModel {
                model: model.clone(),
            });
        }
    }
    let merges: Vec<(String, String)> = get(MERGES)?
        .to_vec()
        .map_err(malformed(MERGES))?
        .iter()
        .map(|v| {
            let text = v.to_string().map_err(malformed(MERGES))?;
            let (a, b) = text
                .split_once(' ')
                .ok_or_else(|| GgufTokenizerError::Malformed {
                    key: MERGES,
                    problem: format!("merge {text:?} is not two tokens"),
                })?;
            Ok((a.to_owned(), b.to_owned()))
        })
        .collect::<std::result::Result<_, GgufTokenizerError>>()?;
    let vocab = vocabulary(&tokens);
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| GgufTokenizerError::Malformed {
            key: MERGES,
            problem: e.to_string(),
        })?;
    let mut tokenizer = Tokenizer::new(bpe);
    // Digits one by one, then byte-level without a prefix space: what SmolLM-style ("smollm")
    // and GPT-2-style files expect. A prefix space would change every prompt's first token.
    tokenizer.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(vec![
        PreTokenizerWrapper::Digits(Digits::new(true)),
        PreTokenizerWrapper::ByteLevel(ByteLevel::default().add_prefix_space(false)),
    ]))));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    add_control_tokens(&mut tokenizer, &tokens, &token_types);
    Ok(tokenizer)
}

/// Each piece's id is its place in the GGUF list.
fn vocabulary(tokens: &[String]) -> tokenizers::models::bpe::Vocab {
    tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect()
}

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;

/// Control tokens (type 3) are special: never split, skipped when decoding.
fn add_control_tokens(tokenizer: &mut Tokenizer, tokens: &[String], token_types: &[i32]) {
    let special: Vec<AddedToken> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| token_types.get(*i) == Some(&TOKEN_CONTROL))
        .map(|(_, t)| AddedToken::from(t.clone(), true))
        .collect();
    tokenizer.add_special_tokens(&special);
}

/// The merges of a SentencePiece BPE vocabulary, which GGUF stores as pieces and scores
/// only: every split of a normal piece into two pieces of the vocabulary is a merge, ranked
/// by the merged piece's score (highest first), as SentencePiece merges the best-scoring
/// adjacent pair first.
pub fn merges_from_scores(
    tokens: &[String],
    scores: &[f32],
    token_types: &[i32],
) -> Vec<(String, String)> {
    let ids: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut ranked: Vec<(f32, usize, usize, String, String)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        if token_types.get(id).is_some_and(|t| *t != TOKEN_NORMAL) {
            continue;
        }
        let score = scores.get(id).copied().unwrap_or(0.0);
        for (split, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(split);
            if let (Some(&l), Some(&r)) = (ids.get(left), ids.get(right)) {
                ranked.push((score, id, l.max(r), left.to_owned(), right.to_owned()));
            }
        }
    }
    // Best score first; ties by the merged piece's id, then by the later of the two parts.
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    ranked.into_iter().map(|(_, _, _, l, r)| (l, r)).collect()
}

/// A SentencePiece BPE tokenizer (`tokenizer.ggml.model` "llama": Gemma, Llama 2) from the
/// pieces and scores of a GGUF file: spaces become `▁`, unknown characters fall back to
/// `<0xNN>` byte pieces, and decoding reverses both.
fn sentencepiece_from_gguf(
    content: &gguf_file::Content,
    tokens: Vec<String>,
    token_types: &[i32],
) -> std::result::Result<Tokenizer, GgufTokenizerError> {
    use tokenizers::decoders::byte_fallback::ByteFallback;
    use tokenizers::decoders::fuse::Fuse;
    use tokenizers::decoders::sequence::Sequence as Decoders;
    use tokenizers::decoders::strip::Strip;
    use tokenizers::normalizers::{Prepend, Replace, Sequence as Normalizers};
    use tokenizers::{DecoderWrapper, NormalizerWrapper};
    const SCORES: &str = "tokenizer.ggml.scores";
    let malformed = |key: &'static str| {
        move |e: candle_core::Error| GgufTokenizerError::Malformed {
            key,
            problem: e.to_string(),
        }
    };
    let scores: Vec<f32> = content
        .metadata
        .get(SCORES)
        .ok_or(GgufTokenizerError::Missing { key: SCORES })?
        .to_vec()
        .map_err(malformed(SCORES))?
        .iter()
        .map(|v| v.to_f32().map_err(malformed(SCORES)))
        .collect::<std::result::Result<_, _>>()?;
    let flag = |key: &str| {
        content
            .metadata
            .get(key)
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false)
    };
    let space_prefix = flag("tokenizer.ggml.add_space_prefix");
    let merges = merges_from_scores(&tokens, &scores, token_types);
    let unknown = content
        .metadata
        .get("tokenizer.ggml.unknown_token_id")
        .and_then(|v| v.to_u32().ok())
        .and_then(|id| tokens.get(id as usize).cloned())
        .unwrap_or_else(|| "<unk>".into());
    let vocab = vocabulary(&tokens);
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .unk_token(unknown)
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(|e| GgufTokenizerError::Malformed {
            key: SCORES,
            problem: e.to_string(),
        })?;
    let mut tokenizer = Tokenizer::new(bpe);
    let spaces = Replace::new(" ", "▁").map_err(|e| GgufTokenizerError::Malformed {
        key: SCORES,
        problem: e.to_string(),
    })?;
    let mut normalizers = Vec::new();
    if space_prefix {
        normalizers.push(NormalizerWrapper::Prepend(Prepend::new("▁".into())));
    }
    normalizers.push(NormalizerWrapper::Replace(spaces));
    tokenizer.with_normalizer(Some(Normalizers::new(normalizers)));
    let unspace = Replace::new("▁", " ").map_err(|e| GgufTokenizerError::Malformed {
        key: SCORES,
        problem: e.to_string(),
    })?;
    let mut decoders = vec![
        DecoderWrapper::Replace(unspace),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    if space_prefix {
        decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    }
    tokenizer.with_decoder(Some(Decoders::new(decoders)));
    add_control_tokens(&mut tokenizer, &tokens, token_types);
    // User-defined pieces (Gemma's <start_of_turn>, …) are matched whole too.
    let user: Vec<AddedToken> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| token_types.get(*i) == Some(&TOKEN_USER_DEFINED))
        .map(|(_, t)| AddedToken::from(t.clone(), false))
        .collect();
    tokenizer.add_tokens(&user);
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::Value;

    /// A GGUF file's metadata alone, read back as the loader reads it.
    fn metadata_only(metadata: Vec<(&str, Value)>) -> gguf_file::Content {
        let refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
        let mut out = Cursor::new(Vec::new());
        gguf_file::write(&mut out, &refs, &[]).unwrap();
        gguf_file::Content::read(&mut Cursor::new(out.into_inner())).unwrap()
    }

    #[test]
    fn a_sentencepiece_vocabulary_merges_by_score_and_falls_back_to_bytes() {
        let pieces = [
            ("<unk>", 2, 0.0),
            ("<bos>", 3, 0.0),
            ("<0xC3>", 6, 0.0),
            ("<0xA9>", 6, 0.0),
            ("▁", 1, -1.0),
            ("a", 1, -2.0),
            ("b", 1, -3.0),
            ("c", 1, -4.0),
            ("ab", 1, -5.0),
            ("▁a", 1, -6.0),
            ("▁ab", 1, -7.0),
            ("<start_of_turn>", 4, 0.0),
        ];
        let strings = |f: fn(&(&str, i32, f32)) -> Value| pieces.iter().map(f).collect();
        let content = metadata_only(vec![
            ("tokenizer.ggml.model", Value::String("llama".into())),
            (
                "tokenizer.ggml.tokens",
                Value::Array(strings(|p| Value::String(p.0.into()))),
            ),
            (
                "tokenizer.ggml.token_type",
                Value::Array(strings(|p| Value::I32(p.1))),
            ),
            (
                "tokenizer.ggml.scores",
                Value::Array(strings(|p| Value::F32(p.2))),
            ),
            ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
            ("tokenizer.ggml.add_space_prefix", Value::Bool(false)),
        ]);
        let tokenizer = tokenizer_from_gguf(&content).unwrap();
        let text = "<bos>ab ab c é<start_of_turn>";
        let encoding = tokenizer.encode(text, true).unwrap();
        assert_eq!(
            encoding.get_tokens(),
            [
                "<bos>",
                "ab",
                "▁ab",
                "▁",
                "c",
                "▁",
                "<0xC3>",
                "<0xA9>",
                "<start_of_turn>"
            ]
        );
        assert_eq!(
            tokenizer.decode(encoding.get_ids(), true).unwrap(),
            "ab ab c é<start_of_turn>",
            "control pieces are skipped, user-defined ones kept, bytes joined"
        );
        // "ab" (score -5) merges before "▁a" (-6): the better-scored piece first.
        let types: Vec<i32> = pieces.iter().map(|p| p.1).collect();
        let scores: Vec<f32> = pieces.iter().map(|p| p.2).collect();
        let tokens: Vec<String> = pieces.iter().map(|p| p.0.to_owned()).collect();
        let merges = merges_from_scores(&tokens, &scores, &types);
        assert_eq!(
            merges,
            [
                ("a".to_owned(), "b".to_owned()),
                ("▁".to_owned(), "a".to_owned()),
                ("▁".to_owned(), "ab".to_owned()),
                ("▁a".to_owned(), "b".to_owned()),
            ]
        );
    }

    #[test]
    fn a_gguf_of_an_unknown_architecture_is_refused_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("mamba.gguf");
        crate::fixture::write_tiny_llama_gguf(&path, 1).unwrap();
        let content = gguf_file::Content::read(&mut std::fs::File::open(&path).unwrap()).unwrap();
        let mut metadata: Vec<(String, Value)> = content.metadata.into_iter().collect();
        for (key, value) in &mut metadata {
            if key == "general.architecture" {
                *value = Value::String("mamba".into());
            }
        }
        if !metadata.iter().any(|(k, _)| k == "general.architecture") {
            metadata.push(("general.architecture".into(), Value::String("mamba".into())));
        }
        let refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut out = std::fs::File::create(&path).unwrap();
        gguf_file::write(&mut out, &refs, &[]).unwrap();
        drop(out);
        let error = LoadedModel::load(&path, &LoadOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("mamba") && error.contains("gemma3"),
            "{error}"
        );
    }
}
