//! A loaded model and its tokenizer, whatever the architecture: GPT-2 (safetensors), Llama
//! (safetensors, through candle-transformers) or a quantized Llama (GGUF, tokenizer taken
//! from the file's metadata).

use std::collections::HashMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::llama as candle_llama;
use tokenizers::Tokenizer;

use crate::error::{LlmError, Result, io};
use crate::gemma3::Gemma3;
use crate::gpt2::{Gpt2, Gpt2Config, Gpt2Weights};
use crate::llama::Llama;
use crate::lora::LoraAdapter;
use crate::tokenizer::tokenizer_from_gguf;

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

/// GGUF formats with fast CPU kernels (n0m1's `kernels`, or candle's for the rest); others are
/// requantized to Q8_0 at load (which reads the whole file into memory: a Q4_K_M file's Q5_0
/// tensors once tripled Gemma 3 270M's peak RSS, to 903 MiB, before `kernels` took Q5_0).
fn has_fast_kernels(dtype: GgmlDType) -> bool {
    crate::kernels::BlockFormat::from_ggml(dtype).is_some()
        || matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::Q8K)
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::Value;

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
