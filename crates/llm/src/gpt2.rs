//! GPT-2 (and distilgpt2, sshleifer/tiny-gpt2) on candle.
//!
//! candle-transformers has no GPT-2, and its `bigcode` module lays weights out differently, so
//! the architecture is written here: learned position embeddings, Conv1D projections (weights
//! stored [in, out], turned into [out, in] at load so one `Projection` serves F32 and Q8_0),
//! the fused `c_attn` split in thirds, a KV cache, and an lm_head tied to `wte`.

use std::collections::HashMap;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{D, DType, Device, IndexOp, Module, Tensor};
use candle_nn::{Embedding, LayerNorm};
use serde::Deserialize;

use crate::error::{LlmError, Result};

/// The fields of a Hugging Face GPT-2 `config.json` that the forward pass needs.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_activation")]
    pub activation_function: String,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_activation() -> String {
    "gelu_new".to_owned()
}

/// A projection: dense with W stored [out, in] (`y = x Wᵀ + b`), dense with a Conv1D's W
/// kept as stored, [in, out] (`y = x W + b`, no transposed copy at load), or Q8_0.
#[derive(Debug, Clone)]
enum Projection {
    Dense(candle_nn::Linear),
    InOut {
        weight: Tensor,
        bias: Tensor,
    },
    Quantized {
        matmul: QMatMul,
        bias: Option<Tensor>,
    },
}

impl Projection {
    /// `weight_out_in` is [out, in]; `quantize` turns it into Q8_0 blocks when its inner
    /// dimension allows.
    fn new(weight_out_in: Tensor, bias: Option<Tensor>, quantize: bool) -> Result<Projection> {
        let inner = weight_out_in.dim(1)?;
        if quantize && inner.is_multiple_of(GgmlDType::Q8_0.block_size()) {
            let qtensor = QTensor::quantize(&weight_out_in, GgmlDType::Q8_0)?;
            return Ok(Projection::Quantized {
                matmul: QMatMul::from_qtensor(qtensor)?,
                bias,
            });
        }
        Ok(Projection::Dense(candle_nn::Linear::new(
            weight_out_in,
            bias,
        )))
    }
}

impl Module for Projection {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Projection::Dense(linear) => linear.forward(x),
            Projection::InOut { weight, bias } => x.broadcast_matmul(weight)?.broadcast_add(bias),
            Projection::Quantized { matmul, bias } => {
                let y = matmul.forward(x)?;
                match bias {
                    Some(bias) => y.broadcast_add(bias),
                    None => Ok(y),
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Block {
    ln_1: LayerNorm,
    c_attn: Projection,
    attn_proj: Projection,
    ln_2: LayerNorm,
    c_fc: Projection,
    mlp_proj: Projection,
    n_head: usize,
    exact_gelu: bool,
}

/// The weights of a GPT-2 checkpoint, by their names without a `transformer.` prefix.
pub struct Gpt2Weights(HashMap<String, Tensor>);

impl Gpt2Weights {
    /// Normalises names (`transformer.h.0…` and `h.0…` both work), converts to F32, and drops
    /// the `attn.bias` / `attn.masked_bias` buffers, which are masks, not weights.
    pub fn new(tensors: HashMap<String, Tensor>) -> Result<Gpt2Weights> {
        let mut map = HashMap::new();
        for (name, tensor) in tensors {
            let name = name
                .strip_prefix("transformer.")
                .unwrap_or(&name)
                .to_owned();
            if name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias") {
                continue;
            }
            map.insert(name, tensor.to_dtype(DType::F32)?);
        }
        Ok(Gpt2Weights(map))
    }

    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.0.get(name).ok_or_else(|| LlmError::MissingTensor {
            architecture: "GPT-2",
            name: name.to_owned(),
        })
    }

    /// Removes a tensor: consumed weights are freed as the model is built, so a quantizing
    /// load never holds every F32 matrix and every quantized one at once.
    fn take(&mut self, name: &str) -> Result<Tensor> {
        self.0.remove(name).ok_or_else(|| LlmError::MissingTensor {
            architecture: "GPT-2",
            name: name.to_owned(),
        })
    }

    pub fn tensors_mut(&mut self) -> &mut HashMap<String, Tensor> {
        &mut self.0
    }

    fn layer_norm(&self, prefix: &str, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm::new(
            self.get(&format!("{prefix}.weight"))?.clone(),
            self.get(&format!("{prefix}.bias"))?.clone(),
            eps,
        ))
    }

    /// A Conv1D (weight [in, out]) as a `Projection`.
    fn conv1d(
        &mut self,
        prefix: &str,
        expect_in: usize,
        expect_out: usize,
        quantize: bool,
    ) -> Result<Projection> {
        let weight = self.take(&format!("{prefix}.weight"))?;
        if weight.dims() != [expect_in, expect_out] {
            return Err(LlmError::BadShape {
                name: format!("{prefix}.weight"),
                found: weight.dims().to_vec(),
                expected: vec![expect_in, expect_out],
            });
        }
        let bias = self.get(&format!("{prefix}.bias"))?.clone();
        if quantize {
            return Projection::new(weight.t()?.contiguous()?, Some(bias), true);
        }
        Ok(Projection::InOut { weight, bias })
    }
}

/// A loaded GPT-2 with its KV cache.
pub struct Gpt2 {
    config: Gpt2Config,
    wte: Embedding,
    wpe: Embedding,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Projection,
    cache: Vec<Option<(Tensor, Tensor)>>,
    device: Device,
}

impl Gpt2 {
    pub fn load(
        config: Gpt2Config,
        mut weights: Gpt2Weights,
        quantize: bool,
        device: &Device,
    ) -> Result<Gpt2> {
        let c = config.n_embd;
        if config.n_head == 0 || !c.is_multiple_of(config.n_head) {
            return Err(LlmError::Unsupported {
                setting: "n_head",
                value: format!("{} with n_embd {c}", config.n_head),
                supported: "n_embd must be a multiple of n_head",
            });
        }
        let exact_gelu = match config.activation_function.as_str() {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => false,
            "gelu" => true,
            other => {
                return Err(LlmError::Unsupported {
                    setting: "activation_function",
                    value: format!("{other:?}"),
                    supported: "gelu, gelu_new, gelu_pytorch_tanh or gelu_fast",
                });
            }
        };
        let wte_weight = weights.get("wte.weight")?.clone();
        if wte_weight.dims() != [config.vocab_size, c] {
            return Err(LlmError::BadShape {
                name: "wte.weight".into(),
                found: wte_weight.dims().to_vec(),
                expected: vec![config.vocab_size, c],
            });
        }
        let wte = Embedding::new(wte_weight.clone(), c);
        let wpe = Embedding::new(weights.get("wpe.weight")?.clone(), c);
        let mut blocks = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let p = format!("h.{i}");
            blocks.push(Block {
                ln_1: weights.layer_norm(&format!("{p}.ln_1"), config.layer_norm_epsilon)?,
                c_attn: weights.conv1d(&format!("{p}.attn.c_attn"), c, 3 * c, quantize)?,
                attn_proj: weights.conv1d(&format!("{p}.attn.c_proj"), c, c, quantize)?,
                ln_2: weights.layer_norm(&format!("{p}.ln_2"), config.layer_norm_epsilon)?,
                c_fc: weights.conv1d(&format!("{p}.mlp.c_fc"), c, 4 * c, quantize)?,
                mlp_proj: weights.conv1d(&format!("{p}.mlp.c_proj"), 4 * c, c, quantize)?,
                n_head: config.n_head,
                exact_gelu,
            });
        }
        let ln_f = weights.layer_norm("ln_f", config.layer_norm_epsilon)?;
        // The head is tied to the token embedding ([vocab, n_embd] is already [out, in]).
        let lm_head = Projection::new(wte_weight, None, quantize)?;
        Ok(Gpt2 {
            cache: vec![None; config.n_layer],
            config,
            wte,
            wpe,
            blocks,
            ln_f,
            lm_head,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &Gpt2Config {
        &self.config
    }

    /// Forgets the KV cache (a new prompt).
    pub fn clear_cache(&mut self) {
        self.cache.iter_mut().for_each(|entry| *entry = None);
    }

    /// Runs `ids` at positions `position..` and returns the logits of every new position,
    /// [len, vocab]. With the cache, earlier positions are not recomputed.
    pub fn forward_all(&mut self, ids: &[u32], position: usize) -> Result<Tensor> {
        let len = ids.len();
        if len == 0 {
            return Err(LlmError::EmptyPrompt);
        }
        if position + len > self.config.n_positions {
            return Err(LlmError::ContextFull {
                start: position,
                end: position + len,
                limit: self.config.n_positions,
            });
        }
        let input = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        let positions =
            Tensor::arange(position as u32, (position + len) as u32, &self.device)?.unsqueeze(0)?;
        let mut x = self
            .wte
            .forward(&input)?
            .broadcast_add(&self.wpe.forward(&positions)?)?;
        let mask = (len > 1)
            .then(|| causal_mask(len, position, &self.device))
            .transpose()?;
        for (block, cache) in self.blocks.iter().zip(self.cache.iter_mut()) {
            x = block.forward(&x, cache, mask.as_ref())?;
        }
        let x = self.ln_f.forward(&x)?;
        Ok(self.lm_head.forward(&x)?.squeeze(0)?)
    }

    /// The logits of the last position only, [vocab].
    pub fn forward(&mut self, ids: &[u32], position: usize) -> Result<Tensor> {
        let all = self.forward_all(ids, position)?;
        Ok(all.i(ids.len() - 1)?)
    }
}

/// 0 where a query may attend, −∞ where it would see the future; [len, past + len].
fn causal_mask(len: usize, past: usize, device: &Device) -> Result<Tensor> {
    let total = past + len;
    let values: Vec<f32> = (0..len)
        .flat_map(|i| (0..total).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(values, (len, total), device)?)
}

impl Block {
    fn forward(
        &self,
        x: &Tensor,
        cache: &mut Option<(Tensor, Tensor)>,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (batch, len, channels) = x.dims3()?;
        let head_dim = channels / self.n_head;
        let qkv = self.c_attn.forward(&self.ln_1.forward(x)?)?;
        let split = |i: usize| -> Result<Tensor> {
            Ok(qkv
                .narrow(2, i * channels, channels)?
                .reshape((batch, len, self.n_head, head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let (q, mut k, mut v) = (split(0)?, split(1)?, split(2)?);
        if let Some((past_k, past_v)) = cache.as_ref() {
            k = Tensor::cat(&[past_k, &k], 2)?;
            v = Tensor::cat(&[past_v, &v], 2)?;
        }
        *cache = Some((k.clone(), v.clone()));
        let scale = 1.0 / (head_dim as f64).sqrt();
        let mut attention = (q.matmul(&k.t()?.contiguous()?)? * scale)?;
        if let Some(mask) = mask {
            attention = attention.broadcast_add(mask)?;
        }
        let attention = candle_nn::ops::softmax_last_dim(&attention)?;
        let y = attention
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((batch, len, channels))?;
        let x = (x + self.attn_proj.forward(&y)?)?;
        let h = self.c_fc.forward(&self.ln_2.forward(&x)?)?;
        let h = if self.exact_gelu {
            h.gelu_erf()?
        } else {
            h.gelu()?
        };
        Ok((&x + self.mlp_proj.forward(&h)?)?)
    }
}

/// Index of the largest logit.
pub fn argmax(logits: &Tensor) -> Result<u32> {
    Ok(logits.argmax(D::Minus1)?.to_scalar::<u32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::{tiny_gpt2_config, tiny_gpt2_weights};

    const PROMPT: [u32; 11] = [280, 40, 41, 42, 43, 44, 45, 46, 10, 100, 200];
    /// From scripts/gpt2_reference.py (an independent numpy forward pass, float64) on the
    /// fixture with seed 42 and `PROMPT`.
    const REFERENCE_FIRST8: [f32; 8] = [
        -1.32521, 0.65787, -1.45279, -0.32539, -2.7304, -0.78017, 0.88457, -0.54235,
    ];
    const REFERENCE_ARGMAX: u32 = 144;

    fn fixture(quantize: bool) -> Gpt2 {
        let config = tiny_gpt2_config();
        let weights = Gpt2Weights::new(tiny_gpt2_weights(&config, 42).unwrap()).unwrap();
        Gpt2::load(config, weights, quantize, &Device::Cpu).unwrap()
    }

    #[test]
    fn logits_match_the_numpy_reference() {
        let mut model = fixture(false);
        let logits = model.forward(&PROMPT, 0).unwrap();
        let got: Vec<f32> = logits.narrow(0, 0, 8).unwrap().to_vec1().unwrap();
        for (g, r) in got.iter().zip(REFERENCE_FIRST8) {
            assert!((g - r).abs() < 1e-3, "{got:?} vs {REFERENCE_FIRST8:?}");
        }
        assert_eq!(argmax(&logits).unwrap(), REFERENCE_ARGMAX);
    }

    #[test]
    fn kv_cache_path_equals_full_recompute() {
        let mut full = fixture(false);
        let expected = full.forward_all(&PROMPT, 0).unwrap();
        let mut incremental = fixture(false);
        // Prompt in two chunks, then token by token.
        let mut rows = vec![incremental.forward_all(&PROMPT[..4], 0).unwrap()];
        rows.push(incremental.forward_all(&PROMPT[4..7], 4).unwrap());
        for (offset, id) in PROMPT[7..].iter().enumerate() {
            rows.push(incremental.forward_all(&[*id], 7 + offset).unwrap());
        }
        let got = Tensor::cat(&rows, 0).unwrap();
        let diff: f32 = (got - &expected)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(diff < 1e-4, "max difference {diff}");
        incremental.clear_cache();
        let again = incremental.forward(&PROMPT, 0).unwrap();
        assert_eq!(argmax(&again).unwrap(), REFERENCE_ARGMAX);
    }

    #[test]
    fn q8_0_stays_close_to_f32() {
        let mut dense = fixture(false);
        let mut quantized = fixture(true);
        let a = dense.forward(&PROMPT, 0).unwrap();
        let b = quantized.forward(&PROMPT, 0).unwrap();
        assert_eq!(argmax(&a).unwrap(), argmax(&b).unwrap());
        // Q8_0 quantizes activations too: allow a few percent of the logits' range.
        let range: f32 = a.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        let diff: f32 = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(
            diff < 0.06 * range,
            "max difference {diff} for logits up to {range}"
        );
    }

    #[test]
    fn context_overflow_and_bad_shapes_are_errors() {
        let mut model = fixture(false);
        assert!(model.forward(&[1; 129], 0).is_err());
        let config = tiny_gpt2_config();
        let mut weights = Gpt2Weights::new(tiny_gpt2_weights(&config, 1).unwrap()).unwrap();
        weights.tensors_mut().insert(
            "h.0.mlp.c_fc.weight".into(),
            Tensor::zeros((3, 3), DType::F32, &Device::Cpu).unwrap(),
        );
        let error = Gpt2::load(config, weights, false, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("h.0.mlp.c_fc.weight"), "{error}");
    }
}
