//! Gemma 3 on a GGUF file's own blocks, on the same parts as `llama` (`decoder`): the block
//! kernels for every matrix whose format they take (a Q4_K_M file's Q4_K, Q6_K, Q5_0 and
//! Q8_0), plain f32 buffers kept between steps, a key/value cache allocated once per layer
//! for the whole context (pages touched only as positions fill). The token embedding stays
//! quantized (rows dequantized as they are looked up) and serves as the tied output head.
//!
//! What differs from Llama, as llama.cpp's graph has it: the embedding scaled by √dim, a
//! norm on each query and key head, norms after attention and after the MLP as well as
//! before, rotary pairs split in halves with a local and a global base, sliding-window
//! attention on five layers of six, and the MLP gated by GELU (tanh) where candle-transformers
//! 0.11's quantized Gemma 3 uses SiLU (its text drifts from llama.cpp's from the second token).

use std::io::{Read, Seek};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Result, Tensor};

use crate::decoder::{
    Embedding, Head, Heads, KvCache, Pairs, Projections, Rotary, StepBuffers, forward_all,
    rms_norm, vector,
};
use crate::team::Team;

/// Positions the cache holds at most; the file's 32,768 would reserve 1.2 GB of address
/// space for Gemma 3 270M's cache, more than a summariser's prompts ever need.
pub const MAX_CONTEXT: usize = 8192;

/// Every sixth layer attends globally, the others within the sliding window (Gemma 3's
/// pattern when the file does not say).
const DEFAULT_SLIDING_PATTERN: usize = 6;
const DEFAULT_LOCAL_ROPE_BASE: f32 = 10_000.0;
const DEFAULT_GLOBAL_ROPE_BASE: f32 = 1_000_000.0;

struct Layer {
    p: Projections,
    q_norm: Vec<f32>,
    k_norm: Vec<f32>,
    attn_norm: Vec<f32>,
    post_attn_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    post_ffn_norm: Vec<f32>,
    /// `Some(window)` for a sliding-window layer.
    window: Option<usize>,
    cache: KvCache,
}

pub struct Gemma3 {
    embedding: Embedding,
    head: Head,
    layers: Vec<Layer>,
    eps: f32,
    global_rope: Rotary,
    local_rope: Rotary,
    shape: Heads,
    dim: usize,
    vocab: usize,
    /// Positions the cache holds.
    pub context_length: usize,
    buffers: StepBuffers,
    team: Team,
    device: Device,
}

/// GELU with the tanh approximation (Gemma's `gelu_pytorch_tanh`) as ggml computes it: from
/// a table indexed by the input's f16 bits, holding f16 results, between −10 and 10 (0 below,
/// the input above). The same table here (128 KiB, made once): the same roundings, so greedy
/// text follows llama.cpp's, and a lookup instead of a `tanh` per value.
fn gelu(x: f32) -> f32 {
    static TABLE: std::sync::OnceLock<Vec<u16>> = std::sync::OnceLock::new();
    if x <= -10.0 {
        return 0.0;
    }
    if x >= 10.0 {
        return x;
    }
    let table = TABLE.get_or_init(|| {
        const SQRT_2_OVER_PI: f32 = 0.797_884_6;
        (0..=u16::MAX)
            .map(|bits| {
                let x = half::f16::from_bits(bits).to_f32();
                let y = 0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + 0.044_715 * x * x)).tanh());
                half::f16::from_f32(y).to_bits()
            })
            .collect()
    });
    half::f16::from_bits(table[usize::from(half::f16::from_f32(x).to_bits())]).to_f32()
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
        let dim = meta("embedding_length")?.to_u32()? as usize;
        let head_dim = meta("attention.key_length")?.to_u32()? as usize;
        let eps = meta("attention.layer_norm_rms_epsilon")?.to_f32()?;
        let window = meta("attention.sliding_window")?.to_u32()? as usize;
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) || head_dim < 2 {
            candle_core::bail!("{heads} heads, {kv_heads} key heads of {head_dim} do not divide");
        }
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
        let shape = Heads {
            heads,
            kv_heads,
            head_dim,
            context: context_length,
        };
        let (embedding, vocab) = Embedding::read(&content, reader, device)?;
        let head = Head::read(&content, reader, &embedding, device)?;
        let mut layers = Vec::with_capacity(blocks);
        for index in 0..blocks {
            let name = |part: &str| format!("blk.{index}.{part}.weight");
            let p = Projections::read(&content, reader, index, device)?;
            let mut norm = |part: &str| vector(&content, reader, &name(part), device);
            layers.push(Layer {
                p,
                q_norm: norm("attn_q_norm")?,
                k_norm: norm("attn_k_norm")?,
                attn_norm: norm("attn_norm")?,
                post_attn_norm: norm("post_attention_norm")?,
                ffn_norm: norm("ffn_norm")?,
                post_ffn_norm: norm("post_ffw_norm")?,
                window: (!(index + 1).is_multiple_of(pattern)).then_some(window),
                cache: KvCache::new(shape),
            });
        }
        Ok(Gemma3 {
            embedding,
            head,
            layers,
            eps,
            global_rope: Rotary::new(head_dim, global_base, context_length, Pairs::Halves),
            local_rope: Rotary::new(head_dim, local_base, context_length, Pairs::Halves),
            shape,
            dim,
            vocab,
            context_length,
            buffers: StepBuffers::default(),
            // As many threads as the pool candle sizes from --threads (RAYON_NUM_THREADS).
            team: Team::new(rayon::current_num_threads().saturating_sub(1)),
            device: device.clone(),
        })
    }

    /// Logits of the last of `ids`, fed at `position`: [vocab].
    pub fn forward(&mut self, ids: &[u32], position: usize) -> Result<Tensor> {
        let seq = ids.len();
        if seq == 0 || position + seq > self.context_length {
            candle_core::bail!(
                "positions {position}..{} do not fit the cache of {} positions",
                position + seq,
                self.context_length
            );
        }
        let (dim, shape, eps) = (self.dim, self.shape, self.eps);
        let mut b = std::mem::take(&mut self.buffers);
        self.embedding.lookup(ids, self.vocab, dim, &mut b.x)?;
        let scale = (dim as f32).sqrt();
        for x in b.x.iter_mut() {
            *x *= scale;
        }
        let attention_scale = 1.0 / (shape.head_dim as f32).sqrt();
        // Adds `norm(projected)` to the residual stream.
        let add_normed =
            |x: &mut [f32], projected: &[f32], weight: &[f32], normed: &mut Vec<f32>| {
                rms_norm(projected, weight, eps, normed);
                for (x, p) in x.iter_mut().zip(normed.iter()) {
                    *x += p;
                }
            };
        for layer in &mut self.layers {
            rms_norm(&b.x, &layer.attn_norm, eps, &mut b.h);
            forward_all(
                [&layer.p.q, &layer.p.k, &layer.p.v],
                &b.h,
                seq,
                &mut self.team,
                [&mut b.q, &mut b.k, &mut b.v],
            )?;
            // Per head: `rms_norm` works on rows as long as its weights (head_dim).
            rms_norm(&b.q, &layer.q_norm, eps, &mut b.normed);
            std::mem::swap(&mut b.q, &mut b.normed);
            rms_norm(&b.k, &layer.k_norm, eps, &mut b.normed);
            std::mem::swap(&mut b.k, &mut b.normed);
            let rope = if layer.window.is_some() {
                &self.local_rope
            } else {
                &self.global_rope
            };
            rope.rotate(&mut b.q, shape.heads, position);
            rope.rotate(&mut b.k, shape.kv_heads, position);
            // Scaled before the product, as llama.cpp's graph scales Gemma's queries.
            for q in b.q.iter_mut() {
                *q *= attention_scale;
            }
            layer.cache.store(&b.k, &b.v, position, shape);
            layer.cache.attend(
                &b.q,
                position,
                layer.window,
                1.0,
                shape,
                &mut b.scores,
                &mut b.attended,
            );
            layer
                .p
                .o
                .forward(&b.attended, seq, &mut self.team, &mut b.projected)?;
            add_normed(&mut b.x, &b.projected, &layer.post_attn_norm, &mut b.normed);
            rms_norm(&b.x, &layer.ffn_norm, eps, &mut b.h);
            layer.p.mlp(
                &b.h,
                seq,
                gelu,
                &mut self.team,
                &mut b.gate,
                &mut b.up,
                &mut b.projected,
            )?;
            add_normed(&mut b.x, &b.projected, &layer.post_ffn_norm, &mut b.normed);
        }
        let last = &b.x[(seq - 1) * dim..];
        let logits = self
            .head
            .logits(&self.embedding, last, eps, &mut self.team, &mut b.h)?;
        self.buffers = b;
        Tensor::from_vec(logits, self.vocab, &self.device)?.to_dtype(DType::F32)
    }
}
