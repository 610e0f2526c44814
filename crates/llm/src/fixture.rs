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
        .map_err(|e| LlmError::Invalid(format!("cannot build the fixture tokenizer: {e}")))?;
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

/// Writes a tiny GPT-2 folder: `config.json`, `model.safetensors`, `tokenizer.json`.
pub fn write_tiny_gpt2(dir: &Path, seed: u64) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let config = tiny_gpt2_config();
    let mut json = serde_json::to_value(&config).map_err(|e| LlmError::Invalid(e.to_string()))?;
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
    let config_path = dir.join("config.json");
    let text = serde_json::to_string_pretty(&json).map_err(|e| LlmError::Invalid(e.to_string()))?;
    std::fs::write(&config_path, text + "\n").map_err(io(&config_path))?;

    let weights = tiny_gpt2_weights(&config, seed)?;
    let model_path = dir.join("model.safetensors");
    candle_core::safetensors::save(&weights, &model_path)?;

    let tokenizer_path = dir.join("tokenizer.json");
    tiny_tokenizer()?
        .save(&tokenizer_path, false)
        .map_err(|e| LlmError::Tokenizer {
            path: tokenizer_path.clone(),
            message: e.to_string(),
        })?;
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
