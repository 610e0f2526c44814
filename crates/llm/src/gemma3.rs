//! Gemma 3 on a GGUF file's quantized weights, written here: candle-transformers 0.11's
//! quantized Gemma 3 gates its MLP with SiLU where Gemma uses GELU (tanh), so its text drifts
//! from llama.cpp's on the same file from the second token on.
//!
//! Memory is kept to what the file holds: the token embedding stays quantized (a prompt's
//! rows are dequantized as they are looked up) and also serves as the tied output head, and
//! the key/value cache is allocated once per layer for the whole context (pages are touched
//! only as positions fill), so decoding appends in place instead of concatenating.

use std::io::{Read, Seek};
use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor, gguf_file};
use candle_core::{DType, Device, Module, Result, Tensor};

use crate::attention::{Rope, attention_mask};
use candle_transformers::quantized_nn::RmsNorm;

/// Positions the cache holds at most; the file's 32,768 would reserve 1.2 GB of address
/// space for Gemma 3 270M's cache, more than a summariser's prompts ever need.
pub const MAX_CONTEXT: usize = 8192;

/// Every sixth layer attends globally, the others within the sliding window (Gemma 3's
/// pattern when the file does not say).
const DEFAULT_SLIDING_PATTERN: usize = 6;
const DEFAULT_LOCAL_ROPE_BASE: f32 = 10_000.0;
const DEFAULT_GLOBAL_ROPE_BASE: f32 = 1_000_000.0;

struct Layer {
    q: QMatMul,
    k: QMatMul,
    v: QMatMul,
    o: QMatMul,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    attn_norm: RmsNorm,
    post_attn_norm: RmsNorm,
    ffn_norm: RmsNorm,
    post_ffn_norm: RmsNorm,
    gate: QMatMul,
    up: QMatMul,
    down: QMatMul,
    /// `Some(window)` for a sliding-window layer.
    window: Option<usize>,
    /// [1, kv_heads, MAX_CONTEXT, head_dim], written in place.
    keys: Tensor,
    values: Tensor,
}

pub struct Gemma3 {
    embedding: Arc<QTensor>,
    embedding_dim: usize,
    layers: Vec<Layer>,
    norm: RmsNorm,
    output: QMatMul,
    global_rope: Rope,
    local_rope: Rope,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    /// Positions the cache holds.
    pub context_length: usize,
    device: Device,
}

impl Gemma3 {
    pub fn from_gguf<R: Read + Seek>(
        content: gguf_file::Content,
        reader: &mut R,
        device: &Device,
    ) -> Result<Gemma3> {
        let meta = |key: &str| {
            let key = format!("gemma3.{key}");
            content
                .metadata
                .get(&key)
                .ok_or_else(|| candle_core::Error::Msg(format!("no {key} in the GGUF metadata")))
        };
        let heads = meta("attention.head_count")?.to_u32()? as usize;
        let kv_heads = meta("attention.head_count_kv")?.to_u32()? as usize;
        let blocks = meta("block_count")?.to_u32()? as usize;
        let embedding_dim = meta("embedding_length")?.to_u32()? as usize;
        let head_dim = meta("attention.key_length")?.to_u32()? as usize;
        let eps = f64::from(meta("attention.layer_norm_rms_epsilon")?.to_f32()?);
        let window = meta("attention.sliding_window")?.to_u32()? as usize;
        let pattern = meta("attention.sliding_window_type")
            .and_then(|v| v.to_u32())
            .map_or(DEFAULT_SLIDING_PATTERN, |v| v as usize)
            .max(1);
        let global_base = meta("rope.freq_base")
            .and_then(|v| v.to_f32())
            .unwrap_or(DEFAULT_GLOBAL_ROPE_BASE);
        let local_base = meta("rope.local_freq_base")
            .and_then(|v| v.to_f32())
            .unwrap_or(DEFAULT_LOCAL_ROPE_BASE);
        let context_length = meta("context_length")
            .and_then(|v| v.to_u32())
            .map_or(MAX_CONTEXT, |v| (v as usize).min(MAX_CONTEXT));
        let mut tensor = |name: &str| content.tensor(reader, name, device);
        let embedding = Arc::new(tensor("token_embd.weight")?);
        let output = match tensor("output.weight") {
            Ok(head) => QMatMul::from_qtensor(head)?,
            Err(_) => QMatMul::from_arc(embedding.clone())?,
        };
        let norm = RmsNorm::from_qtensor(tensor("output_norm.weight")?, eps)?;
        let mut layers = Vec::with_capacity(blocks);
        for index in 0..blocks {
            let mut weight = |part: &str| tensor(&format!("blk.{index}.{part}.weight"));
            let matmul = |t: QTensor| QMatMul::from_qtensor(t);
            let rms = |t: QTensor| RmsNorm::from_qtensor(t, eps);
            let cache =
                || Tensor::zeros((1, kv_heads, context_length, head_dim), DType::F32, device);
            layers.push(Layer {
                q: matmul(weight("attn_q")?)?,
                k: matmul(weight("attn_k")?)?,
                v: matmul(weight("attn_v")?)?,
                o: matmul(weight("attn_output")?)?,
                q_norm: rms(weight("attn_q_norm")?)?,
                k_norm: rms(weight("attn_k_norm")?)?,
                attn_norm: rms(weight("attn_norm")?)?,
                post_attn_norm: rms(weight("post_attention_norm")?)?,
                ffn_norm: rms(weight("ffn_norm")?)?,
                post_ffn_norm: rms(weight("post_ffw_norm")?)?,
                gate: matmul(weight("ffn_gate")?)?,
                up: matmul(weight("ffn_up")?)?,
                down: matmul(weight("ffn_down")?)?,
                window: (!(index + 1).is_multiple_of(pattern)).then_some(window),
                keys: cache()?,
                values: cache()?,
            });
        }
        Ok(Gemma3 {
            global_rope: Rope::new(head_dim, global_base, context_length, device)?,
            local_rope: Rope::new(head_dim, local_base, context_length, device)?,
            embedding,
            embedding_dim,
            layers,
            norm,
            output,
            heads,
            kv_heads,
            head_dim,
            context_length,
            device: device.clone(),
        })
    }

    /// The embedding rows of `ids`, dequantized one row at a time: [seq, dim].
    fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let dtype = self.embedding.dtype();
        let row_bytes = self.embedding_dim / dtype.block_size() * dtype.type_size();
        let data = self.embedding.data()?;
        let rows = ids
            .iter()
            .map(|&id| {
                let start = id as usize * row_bytes;
                let bytes = data.get(start..start + row_bytes).ok_or_else(|| {
                    candle_core::Error::Msg(format!("token id {id} is outside the vocabulary"))
                })?;
                candle_core::quantized::ggml_file::qtensor_from_ggml(
                    dtype,
                    bytes,
                    vec![self.embedding_dim],
                    &self.device,
                )?
                .dequantize(&self.device)
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::stack(&rows, 0)
    }

    /// Logits of the last of `ids`, fed at `position`: [vocab].
    pub fn forward(&mut self, ids: &[u32], position: usize) -> Result<Tensor> {
        let seq = ids.len();
        if position + seq > self.context_length {
            candle_core::bail!(
                "positions {position}..{} exceed the cache of {} positions",
                position + seq,
                self.context_length
            );
        }
        let scale = (self.embedding_dim as f64).sqrt();
        let mut x = (self.embed(ids)? * scale)?.unsqueeze(0)?;
        let attention_scale = 1.0 / (self.head_dim as f64).sqrt();
        let repeats = self.heads / self.kv_heads;
        for index in 0..self.layers.len() {
            let mask = attention_mask(self.layers[index].window, position, seq, &self.device)?;
            let layer = &self.layers[index];
            let rope = if layer.window.is_some() {
                &self.local_rope
            } else {
                &self.global_rope
            };
            let residual = x.clone();
            let h = layer.attn_norm.forward(&x)?;
            let split = |t: Tensor, heads: usize| -> Result<Tensor> {
                t.reshape((1, seq, heads, self.head_dim))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let q = layer
                .q_norm
                .forward(&split(layer.q.forward(&h)?, self.heads)?)?;
            let k = layer
                .k_norm
                .forward(&split(layer.k.forward(&h)?, self.kv_heads)?)?;
            let v = split(layer.v.forward(&h)?, self.kv_heads)?;
            let q = rope.apply(&q, position)?;
            let k = rope.apply(&k, position)?;
            layer.keys.slice_set(&k, 2, position)?;
            layer.values.slice_set(&v, 2, position)?;
            let keys = layer.keys.narrow(2, 0, position + seq)?;
            let values = layer.values.narrow(2, 0, position + seq)?;
            // Grouped-query attention: the query heads of one key head share its cache.
            let q = q.reshape((1, self.kv_heads, repeats * seq, self.head_dim))?;
            let scores = (q.matmul(&keys.transpose(2, 3)?)? * attention_scale)?
                .reshape((1, self.heads, seq, position + seq))?
                .broadcast_add(&mask)?;
            let weights = candle_nn::ops::softmax_last_dim(&scores)?.reshape((
                1,
                self.kv_heads,
                repeats * seq,
                position + seq,
            ))?;
            let attended = weights
                .matmul(&values.contiguous()?)?
                .reshape((1, self.heads, seq, self.head_dim))?
                .transpose(1, 2)?
                .reshape((1, seq, self.heads * self.head_dim))?;
            let attended = layer.post_attn_norm.forward(&layer.o.forward(&attended)?)?;
            let x_mid = (attended + residual)?;
            let h = layer.ffn_norm.forward(&x_mid)?;
            let gated = (layer.gate.forward(&h)?.gelu()? * layer.up.forward(&h)?)?;
            let out = layer.post_ffn_norm.forward(&layer.down.forward(&gated)?)?;
            x = (out + x_mid)?;
        }
        let last = x.narrow(1, seq - 1, 1)?;
        let last = self.norm.forward(&last)?;
        self.output
            .forward(&last)?
            .squeeze(0)?
            .squeeze(0)?
            .to_dtype(DType::F32)
    }
}
