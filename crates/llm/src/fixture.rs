//! Tiny test models the project makes itself (model hubs are unreachable here): a GPT-2
//! folder with weights from a seeded PRNG and a byte-level BPE tokenizer, byte-identical on
//! every run and loadable by Hugging Face transformers as well as by this crate.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{LlmError, Result, io};
use crate::gpt2::Gpt2Config;

pub const END_OF_TEXT: &str = "<|endoftext|>";

/// Merges of the fixture's BPE, in byte-level spelling (`Ġ` is a space): enough that common
/// words become single tokens, few enough to keep the vocabulary tiny.
const MERGES: &[(&str, &str)] = &[
    ("Ġ", "t"),
    ("h", "e"),
    ("i", "n"),
    ("e", "r"),
    ("a", "n"),
    ("Ġ", "a"),
    ("o", "n"),
    ("r", "e"),
    ("Ġt", "he"),
    ("Ġ", "s"),
    ("e", "n"),
    ("a", "t"),
    ("o", "r"),
    ("Ġ", "c"),
    ("e", "s"),
    ("Ġ", "m"),
    ("i", "s"),
    ("a", "l"),
    ("Ġ", "p"),
    ("Ġ", "u"),
    ("Ġ", "1"),
    ("Ġ", "9"),
    ("%", "Ġ"),
    ("C", "P"),
    ("CP", "U"),
    ("Ġ", "CPU"),
    ("e", "m"),
    ("Ġm", "em"),
    ("u", "s"),
    ("a", "g"),
    ("ag", "e"),
];

/// The fixture's shape: small enough for fast tests, with dimensions that are multiples of
/// 32 so the Q8_0 path is exercised too.
pub fn tiny_gpt2_config() -> Gpt2Config {
    Gpt2Config {
        vocab_size: 256 + MERGES.len() + 1,
        n_positions: 128,
        n_embd: 64,
        n_layer: 2,
        n_head: 4,
        layer_norm_epsilon: 1e-5,
        activation_function: "gelu_new".to_owned(),
        bos_token_id: Some((256 + MERGES.len()) as u32),
        eos_token_id: Some((256 + MERGES.len()) as u32),
    }
}

/// The byte-level BPE tokenizer of the fixtures: the 256 byte symbols (ids in code-point
/// order), then the merges, then `<|endoftext|>`.
pub fn tiny_tokenizer() -> Result<Tokenizer> {
    let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    alphabet.sort_unstable();
    let mut vocab: HashMap<String, u32> = alphabet
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), i as u32))
        .collect();
    for (a, b) in MERGES {
        let merged = format!("{a}{b}");
        let next = vocab.len() as u32;
        vocab.entry(merged).or_insert(next);
    }
    let merges: Vec<(String, String)> = MERGES
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(
            vocab
                .into_iter()
                .collect::<tokenizers::models::bpe::Vocab>(),
            merges,
        )
        .build()
        .map_err(|e| LlmError::Fixture(format!("cannot build its tokenizer: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    tokenizer.add_special_tokens(&[AddedToken::from(END_OF_TEXT, true)]);
    Ok(tokenizer)
}

/// Uniform values in [−scale, scale) from the PRNG: candle's CPU RNG cannot be seeded.
fn random_tensor(rng: &mut ChaCha8Rng, shape: &[usize], scale: f32) -> Result<Tensor> {
    let count: usize = shape.iter().product();
    let values: Vec<f32> = (0..count)
        .map(|_| ((rng.next_u32() as f64 / u32::MAX as f64) as f32 * 2.0 - 1.0) * scale)
        .collect();
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
}

/// The fixture's weights, named as Hugging Face's `GPT2LMHeadModel` saves them.
pub fn tiny_gpt2_weights(config: &Gpt2Config, seed: u64) -> Result<HashMap<String, Tensor>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let c = config.n_embd;
    let mut weights = HashMap::new();
    let mut put = |name: String, tensor: Tensor| {
        weights.insert(format!("transformer.{name}"), tensor);
    };
    put(
        "wte.weight".into(),
        random_tensor(&mut rng, &[config.vocab_size, c], 0.5)?,
    );
    put(
        "wpe.weight".into(),
        random_tensor(&mut rng, &[config.n_positions, c], 0.1)?,
    );
    for i in 0..config.n_layer {
        let p = format!("h.{i}");
        for ln in ["ln_1", "ln_2"] {
            put(
                format!("{p}.{ln}.weight"),
                Tensor::ones(c, candle_core::DType::F32, &Device::Cpu)?,
            );
            put(
                format!("{p}.{ln}.bias"),
                random_tensor(&mut rng, &[c], 0.02)?,
            );
        }
        for (name, inner, outer) in [
            ("attn.c_attn", c, 3 * c),
            ("attn.c_proj", c, c),
            ("mlp.c_fc", c, 4 * c),
            ("mlp.c_proj", 4 * c, c),
        ] {
            put(
                format!("{p}.{name}.weight"),
                random_tensor(&mut rng, &[inner, outer], 0.15)?,
            );
            put(
                format!("{p}.{name}.bias"),
                random_tensor(&mut rng, &[outer], 0.02)?,
            );
        }
    }
    put(
        "ln_f.weight".into(),
        Tensor::ones(c, candle_core::DType::F32, &Device::Cpu)?,
    );
    put(
        "ln_f.bias".into(),
        Tensor::zeros(c, candle_core::DType::F32, &Device::Cpu)?,
    );
    Ok(weights)
}

/// distilgpt2's shape (6 layers of 768, 12 heads, 50,257 tokens), for benchmarks with random
/// weights; it shares the fixture tokenizer, which only ever produces the first ids.
pub fn distilgpt2_config() -> Gpt2Config {
    Gpt2Config {
        vocab_size: 50257,
        n_positions: 1024,
        n_embd: 768,
        n_layer: 6,
        n_head: 12,
        layer_norm_epsilon: 1e-5,
        activation_function: "gelu_new".to_owned(),
        bos_token_id: Some(50256),
        eos_token_id: Some(50256),
    }
}

/// Writes a tiny GPT-2 folder: `config.json`, `model.safetensors`, `tokenizer.json`.
pub fn write_tiny_gpt2(dir: &Path, seed: u64) -> Result<()> {
    write_gpt2(dir, &tiny_gpt2_config(), seed)
}

/// Writes a GPT-2 folder of any shape with seeded weights.
pub fn write_gpt2(dir: &Path, config: &Gpt2Config, seed: u64) -> Result<()> {
    let config = config.clone();
    let mut json = serde_json::to_value(&config).map_err(|e| LlmError::Fixture(e.to_string()))?;
    let object = json
        .as_object_mut()
        .expect("a struct serialises to an object");
    // What transformers needs to recognise the folder.
    object.insert("model_type".into(), "gpt2".into());
    object.insert(
        "architectures".into(),
        serde_json::json!(["GPT2LMHeadModel"]),
    );
    object.insert("n_ctx".into(), config.n_positions.into());
    for dropout in ["resid_pdrop", "embd_pdrop", "attn_pdrop"] {
        object.insert(dropout.into(), 0.0.into());
    }
    let weights = tiny_gpt2_weights(&config, seed)?;
    write_folder(dir, &json, &weights)
}

/// Writes a model folder as transformers saves one: `config.json`, `model.safetensors` and
/// the fixture tokenizer's `tokenizer.json`.
fn write_folder(
    dir: &Path,
    config: &serde_json::Value,
    weights: &HashMap<String, Tensor>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let config_path = dir.join("config.json");
    let text =
        serde_json::to_string_pretty(config).map_err(|e| LlmError::Fixture(e.to_string()))?;
    std::fs::write(&config_path, text + "\n").map_err(io(&config_path))?;
    candle_core::safetensors::save(weights, dir.join("model.safetensors"))?;
    let tokenizer_path = dir.join("tokenizer.json");
    tiny_tokenizer()?
        .save(&tokenizer_path, false)
        .map_err(|e| LlmError::Tokenizer {
            path: tokenizer_path.clone(),
            message: e.to_string(),
        })?;
    Ok(())
}

/// The tiny Llama's shape (grouped-query attention: 4 heads sharing 2 key/value heads).
pub const LLAMA_HIDDEN: usize = 64;
pub const LLAMA_INTERMEDIATE: usize = 128;
pub const LLAMA_LAYERS: usize = 2;
pub const LLAMA_HEADS: usize = 4;
pub const LLAMA_KV_HEADS: usize = 2;
pub const LLAMA_CONTEXT: usize = 128;

/// Tiny Llama weights, named as Hugging Face's `LlamaForCausalLM` saves them.
pub fn tiny_llama_weights(seed: u64) -> Result<Vec<(String, Tensor)>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let vocab = tiny_gpt2_config().vocab_size;
    let (h, i) = (LLAMA_HIDDEN, LLAMA_INTERMEDIATE);
    let kv = h / LLAMA_HEADS * LLAMA_KV_HEADS;
    let mut weights = vec![(
        "model.embed_tokens.weight".to_owned(),
        random_tensor(&mut rng, &[vocab, h], 0.5)?,
    )];
    for layer in 0..LLAMA_LAYERS {
        let p = format!("model.layers.{layer}");
        for (name, shape) in [
            ("self_attn.q_proj", [h, h]),
            ("self_attn.k_proj", [kv, h]),
            ("self_attn.v_proj", [kv, h]),
            ("self_attn.o_proj", [h, h]),
            ("mlp.gate_proj", [i, h]),
            ("mlp.up_proj", [i, h]),
            ("mlp.down_proj", [h, i]),
        ] {
            weights.push((
                format!("{p}.{name}.weight"),
                random_tensor(&mut rng, &shape, 0.15)?,
            ));
        }
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            weights.push((
                format!("{p}.{norm}.weight"),
                Tensor::ones(h, candle_core::DType::F32, &Device::Cpu)?,
            ));
        }
    }
    weights.push((
        "model.norm.weight".to_owned(),
        Tensor::ones(h, candle_core::DType::F32, &Device::Cpu)?,
    ));
    weights.push((
        "lm_head.weight".to_owned(),
        random_tensor(&mut rng, &[vocab, h], 0.5)?,
    ));
    Ok(weights)
}

/// Writes a tiny Llama folder: `config.json`, `model.safetensors`, `tokenizer.json`.
pub fn write_tiny_llama(dir: &Path, seed: u64) -> Result<()> {
    let eos = tiny_gpt2_config().eos_token_id;
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": LLAMA_HIDDEN,
        "intermediate_size": LLAMA_INTERMEDIATE,
        "num_hidden_layers": LLAMA_LAYERS,
        "num_attention_heads": LLAMA_HEADS,
        "num_key_value_heads": LLAMA_KV_HEADS,
        "vocab_size": tiny_gpt2_config().vocab_size,
        "max_position_embeddings": LLAMA_CONTEXT,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "tie_word_embeddings": false,
        "hidden_act": "silu",
    });
    let weights: HashMap<String, Tensor> = tiny_llama_weights(seed)?.into_iter().collect();
    write_folder(dir, &config, &weights)
}

/// Writes the tiny Llama as a GGUF file, its matrices in Q4_1 (a format without fast
/// kernels, so loading exercises the requantization to Q8_0) and its tokenizer in the
/// metadata, as llama.cpp's converters write them.
pub fn write_tiny_llama_gguf(path: &Path, seed: u64) -> Result<()> {
    use candle_core::quantized::{GgmlDType, QTensor, gguf_file::Value};
    let rename = |name: &str| -> String {
        let name = name.strip_suffix(".weight").unwrap_or(name);
        let gguf = match name {
            "model.embed_tokens" => "token_embd".to_owned(),
            "model.norm" => "output_norm".to_owned(),
            "lm_head" => "output".to_owned(),
            other => {
                let rest = other.strip_prefix("model.layers.").unwrap_or(other);
                let (layer, module) = rest.split_once('.').unwrap_or((rest, ""));
                let short = match module {
                    "self_attn.q_proj" => "attn_q",
                    "self_attn.k_proj" => "attn_k",
                    "self_attn.v_proj" => "attn_v",
                    "self_attn.o_proj" => "attn_output",
                    "mlp.gate_proj" => "ffn_gate",
                    "mlp.up_proj" => "ffn_up",
                    "mlp.down_proj" => "ffn_down",
                    "input_layernorm" => "attn_norm",
                    "post_attention_layernorm" => "ffn_norm",
                    other => other,
                };
                format!("blk.{layer}.{short}")
            }
        };
        format!("{gguf}.weight")
    };
    let mut tensors = Vec::new();
    for (name, tensor) in tiny_llama_weights(seed)? {
        let dtype = if tensor.rank() == 2 {
            GgmlDType::Q4_1
        } else {
            GgmlDType::F32
        };
        tensors.push((rename(&name), QTensor::quantize(&tensor, dtype)?));
    }
    let tokenizer = tiny_tokenizer()?;
    let mut vocab: Vec<(String, u32)> = tokenizer.get_vocab(true).into_iter().collect();
    vocab.sort_by_key(|(_, id)| *id);
    let eos = tiny_gpt2_config()
        .eos_token_id
        .expect("the fixture has an eos token");
    let tokens = Value::Array(
        vocab
            .iter()
            .map(|(t, _)| Value::String(t.clone()))
            .collect(),
    );
    let types = Value::Array(
        vocab
            .iter()
            .map(|(_, id)| Value::I32(if *id == eos { 3 } else { 1 }))
            .collect(),
    );
    let merges = Value::Array(
        MERGES
            .iter()
            .map(|(a, b)| Value::String(format!("{a} {b}")))
            .collect(),
    );
    let u32v = |v: usize| Value::U32(v as u32);
    let metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        (
            "general.name",
            Value::String("n0m1 tiny llama fixture".into()),
        ),
        ("llama.context_length", u32v(LLAMA_CONTEXT)),
        ("llama.embedding_length", u32v(LLAMA_HIDDEN)),
        ("llama.block_count", u32v(LLAMA_LAYERS)),
        ("llama.feed_forward_length", u32v(LLAMA_INTERMEDIATE)),
        ("llama.attention.head_count", u32v(LLAMA_HEADS)),
        ("llama.attention.head_count_kv", u32v(LLAMA_KV_HEADS)),
        (
            "llama.rope.dimension_count",
            u32v(LLAMA_HIDDEN / LLAMA_HEADS),
        ),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("smollm".into())),
        ("tokenizer.ggml.tokens", tokens),
        ("tokenizer.ggml.token_type", types),
        ("tokenizer.ggml.merges", merges),
        ("tokenizer.ggml.bos_token_id", Value::U32(eos)),
        ("tokenizer.ggml.eos_token_id", Value::U32(eos)),
    ];
    let metadata_refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut file = std::fs::File::create(path).map_err(io(path))?;
    candle_core::quantized::gguf_file::write(&mut file, &metadata_refs, &tensor_refs)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixture_is_byte_identical_on_every_run() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        write_tiny_gpt2(&a, 7).unwrap();
        write_tiny_gpt2(&b, 7).unwrap();
        for file in ["config.json", "model.safetensors", "tokenizer.json"] {
            assert_eq!(
                std::fs::read(a.join(file)).unwrap(),
                std::fs::read(b.join(file)).unwrap(),
                "{file}"
            );
        }
        let c = tmp.path().join("c");
        write_tiny_gpt2(&c, 8).unwrap();
        assert_ne!(
            std::fs::read(a.join("model.safetensors")).unwrap(),
            std::fs::read(c.join("model.safetensors")).unwrap()
        );
    }

    #[test]
    fn the_tokenizer_round_trips_and_merges() {
        let tokenizer = tiny_tokenizer().unwrap();
        let text = "the CPU usage is 95% <|endoftext|>";
        let encoding = tokenizer.encode(text, false).unwrap();
        let ids = encoding.get_ids();
        assert!(
            ids.len() < text.len(),
            "merges shorten the sequence: {ids:?}"
        );
        assert_eq!(
            *ids.last().unwrap(),
            tiny_gpt2_config().eos_token_id.unwrap()
        );
        assert_eq!(tokenizer.decode(ids, false).unwrap(), text);
        assert_eq!(
            tokenizer.get_vocab_size(true),
            tiny_gpt2_config().vocab_size
        );
    }
}
