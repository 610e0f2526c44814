//! What the decoders on GGUF blocks (`llama`, `gemma3`) share: weight matrices on the block
//! kernels (candle's product for formats the kernels do not take), norms, rotary positions and
//! grouped-query attention over a key/value cache allocated once for the whole context, all on
//! plain f32 buffers kept between steps.

use std::io::{Read, Seek};
use std::sync::Arc;

use candle_core::quantized::{QMatMul, gguf_file};
use candle_core::{Device, Module, Result, Tensor};

use crate::kernels::{BlockFormat, BlockMatrix, round_to_f16};
use crate::team::Team;

/// A weight matrix: the file's blocks when the kernels take them, else candle's product.
pub enum Linear {
    Blocks(Arc<BlockMatrix>),
    Candle(QMatMul),
}

impl Linear {
    pub fn rows(&self) -> usize {
        match self {
            Linear::Blocks(matrix) => matrix.rows,
            Linear::Candle(matmul) => match matmul {
                QMatMul::QTensor(t) => t.shape().dims()[0],
                QMatMul::Tensor(t) | QMatMul::TensorF16(t) => t.dims()[0],
            },
        }
    }

    /// `out[t] = W · x[t]` for `tokens` rows of `x`.
    pub fn forward(
        &self,
        x: &[f32],
        tokens: usize,
        team: &mut Team,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        out.resize(tokens * self.rows(), 0.0);
        match self {
            Linear::Blocks(matrix) => team.matmul(matrix, x, tokens, out),
            Linear::Candle(matmul) => {
                let input = Tensor::from_slice(x, (tokens, x.len() / tokens), &Device::Cpu)?;
                let result = matmul.forward(&input)?.flatten_all()?.to_vec1::<f32>()?;
                out.copy_from_slice(&result);
            }
        }
        Ok(())
    }

    /// Bytes of weights held by the kernels (0 for candle's).
    pub fn block_bytes(&self) -> usize {
        match self {
            Linear::Blocks(m) => m.size(),
            Linear::Candle(_) => 0,
        }
    }
}

/// `outs[i][t] = linears[i] · x[t]`: one team product (the input quantized once, the threads
/// meeting once) when every matrix is blocks that quantize their input alike, else one
/// product after another.
pub fn forward_all<const N: usize>(
    linears: [&Linear; N],
    x: &[f32],
    tokens: usize,
    team: &mut Team,
    outs: [&mut Vec<f32>; N],
) -> Result<()> {
    let matrices = linears.map(|linear| match linear {
        Linear::Blocks(matrix) => Some(matrix),
        Linear::Candle(_) => None,
    });
    let alike = |m: &Option<&Arc<BlockMatrix>>, first: &Option<&Arc<BlockMatrix>>| match (m, first)
    {
        (Some(m), Some(first)) => m.format.activations() == first.format.activations(),
        _ => false,
    };
    if matrices.iter().all(|m| alike(m, &matrices[0])) {
        let matrices = matrices.map(|m| m.expect("checked above"));
        let mut outs = outs;
        for (out, matrix) in outs.iter_mut().zip(&matrices) {
            out.resize(tokens * matrix.rows, 0.0);
        }
        let mut slices = outs.map(|out| out.as_mut_slice());
        team.products(&matrices, x, tokens, &mut slices);
        return Ok(());
    }
    for (linear, out) in linears.into_iter().zip(outs) {
        linear.forward(x, tokens, team, out)?;
    }
    Ok(())
}

/// Reads a 2-D weight as blocks when the kernels take its format (the bytes as stored),
/// else through candle.
pub fn linear<R: Read + Seek>(
    content: &gguf_file::Content,
    reader: &mut R,
    name: &str,
    device: &Device,
) -> Result<Linear> {
    let info = content
        .tensor_infos
        .get(name)
        .ok_or_else(|| candle_core::Error::Msg(format!("no tensor {name} in the GGUF file")))?;
    let dims = info.shape.dims();
    match (BlockFormat::from_ggml(info.ggml_dtype), dims) {
        (Some(format), [rows, cols]) if cols.is_multiple_of(format.block_values()) => {
            // The blocks straight from the file, without a candle tensor in between.
            let mut bytes = vec![0u8; rows * cols / format.block_values() * format.block_bytes()];
            reader.seek(std::io::SeekFrom::Start(
                content.tensor_data_offset + info.offset,
            ))?;
            reader.read_exact(&mut bytes)?;
            BlockMatrix::new(format, *rows, *cols, bytes)
                .map(|matrix| Linear::Blocks(Arc::new(matrix)))
                .map_err(|e| candle_core::Error::Msg(format!("{name}: {e}")))
        }
        _ => Ok(Linear::Candle(QMatMul::from_qtensor(
            content.tensor(reader, name, device)?,
        )?)),
    }
}

/// A norm's weights as f32.
pub fn vector<R: Read + Seek>(
    content: &gguf_file::Content,
    reader: &mut R,
    name: &str,
    device: &Device,
) -> Result<Vec<f32>> {
    content
        .tensor(reader, name, device)?
        .dequantize(device)?
        .flatten_all()?
        .to_vec1::<f32>()
}

/// The token embedding as blocks, or dense when the file keeps it in another format.
pub enum Embedding {
    Blocks(Arc<BlockMatrix>),
    Dense(Vec<f32>),
}

impl Embedding {
    /// Reads `token_embd.weight` and its vocabulary size.
    pub fn read<R: Read + Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
    ) -> Result<(Embedding, usize)> {
        let name = "token_embd.weight";
        let info = content
            .tensor_infos
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("no {name} in the GGUF file")))?;
        let vocab = info.shape.dims()[0];
        let embedding = match linear(content, reader, name, device)? {
            Linear::Blocks(matrix) => Embedding::Blocks(matrix),
            Linear::Candle(_) => Embedding::Dense(vector(content, reader, name, device)?),
        };
        Ok((embedding, vocab))
    }

    /// The rows of `ids` into `x` (`dim` values each).
    pub fn lookup(&self, ids: &[u32], vocab: usize, dim: usize, x: &mut Vec<f32>) -> Result<()> {
        x.resize(ids.len() * dim, 0.0);
        for (id, row) in ids.iter().zip(x.chunks_exact_mut(dim)) {
            let id = *id as usize;
            if id >= vocab {
                candle_core::bail!("token id {id} is outside the vocabulary of {vocab}");
            }
            match self {
                Embedding::Blocks(matrix) => matrix.dequantize_row(id, row),
                Embedding::Dense(table) => row.copy_from_slice(&table[id * dim..(id + 1) * dim]),
            }
        }
        Ok(())
    }

    pub fn block_bytes(&self) -> usize {
        match self {
            Embedding::Blocks(m) => m.size(),
            Embedding::Dense(_) => 0,
        }
    }
}

/// A layer's seven matrices, as both GGUF decoders name them.
pub struct Projections {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

impl Projections {
    /// Layer `index`'s matrices (`blk.{index}.attn_q.weight` …).
    pub fn read<R: Read + Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
        index: usize,
        device: &Device,
    ) -> Result<Projections> {
        let mut matrix = |part: &str| {
            linear(
                content,
                reader,
                &format!("blk.{index}.{part}.weight"),
                device,
            )
        };
        Ok(Projections {
            q: matrix("attn_q")?,
            k: matrix("attn_k")?,
            v: matrix("attn_v")?,
            o: matrix("attn_output")?,
            gate: matrix("ffn_gate")?,
            up: matrix("ffn_up")?,
            down: matrix("ffn_down")?,
        })
    }

    /// The gated MLP of `seq` normed rows `h` into `out`: `down(activation(gate h) · up h)`
    /// (SiLU for Llama, GELU for Gemma), with `gate` and `up` as one team product.
    #[allow(clippy::too_many_arguments)]
    pub fn mlp(
        &self,
        h: &[f32],
        seq: usize,
        activation: impl Fn(f32) -> f32,
        team: &mut Team,
        gate: &mut Vec<f32>,
        up: &mut Vec<f32>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        forward_all([&self.gate, &self.up], h, seq, team, [gate, up])?;
        for (g, u) in gate.iter_mut().zip(up.iter()) {
            *g = activation(*g) * u;
        }
        self.down.forward(gate, seq, team, out)
    }

    pub fn block_bytes(&self) -> usize {
        [
            &self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down,
        ]
        .into_iter()
        .map(Linear::block_bytes)
        .sum()
    }
}

/// The final norm and the output head: the file's own head, or the embedding's blocks when
/// the file ties them (`output` is `None`).
pub struct Head {
    norm: Vec<f32>,
    output: Option<Linear>,
}

impl Head {
    pub fn read<R: Read + Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
        embedding: &Embedding,
        device: &Device,
    ) -> Result<Head> {
        let output = if content.tensor_infos.contains_key("output.weight") {
            Some(linear(content, reader, "output.weight", device)?)
        } else if matches!(embedding, Embedding::Dense(_)) {
            Some(linear(content, reader, "token_embd.weight", device)?)
        } else {
            None
        };
        Ok(Head {
            norm: vector(content, reader, "output_norm.weight", device)?,
            output,
        })
    }

    /// The logits of `last` (one token's row), normed into `scratch` first.
    pub fn logits(
        &self,
        embedding: &Embedding,
        last: &[f32],
        eps: f32,
        team: &mut Team,
        scratch: &mut Vec<f32>,
    ) -> Result<Vec<f32>> {
        rms_norm(last, &self.norm, eps, scratch);
        let mut logits = Vec::new();
        match (&self.output, embedding) {
            (Some(output), _) => output.forward(scratch, 1, team, &mut logits)?,
            (None, Embedding::Blocks(matrix)) => {
                logits.resize(matrix.rows, 0.0);
                team.matmul(matrix, scratch, 1, &mut logits);
            }
            (None, Embedding::Dense(_)) => unreachable!("a dense embedding gets its own head"),
        }
        Ok(logits)
    }

    pub fn block_bytes(&self) -> usize {
        self.output.as_ref().map_or(0, Linear::block_bytes)
    }
}

/// The buffers of one step, kept between steps so a decode step reuses them.
#[derive(Default)]
pub struct StepBuffers {
    pub x: Vec<f32>,
    pub h: Vec<f32>,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    /// Gemma's per-head and after-block norms.
    pub normed: Vec<f32>,
    pub attended: Vec<f32>,
    pub projected: Vec<f32>,
    pub gate: Vec<f32>,
    pub up: Vec<f32>,
    pub scores: Vec<f32>,
}

/// `a · b` in eight independent sums: the plain `zip().sum()` is one chain of dependent
/// additions (the compiler may not reorder float sums), which made attention's query-key
/// products latency-bound on the main thread; eight lanes vectorise and overlap.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut lanes = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for ((lane, x), y) in lanes.iter_mut().zip(x).zip(y) {
            *lane += x * y;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `x · w / rms(x)` for each `w.len()`-long row of `x`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut Vec<f32>) {
    out.resize(x.len(), 0.0);
    let dim = weight.len();
    for (row, out) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let mean = row.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for ((o, v), w) in out.iter_mut().zip(row).zip(weight) {
            *o = v * scale * w;
        }
    }
}

/// How a head's values pair up for rotation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Pairs {
    /// (2i, 2i + 1): GGUF's Llama layout, whose converter permuted the query and key rows.
    Interleaved,
    /// (i, i + head_dim / 2): the "neox" layout (Gemma).
    Halves,
}

/// Rotary position tables: cos and sin of each position's angle per pair.
pub struct Rotary {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
    pairs: Pairs,
}

impl Rotary {
    pub fn new(head_dim: usize, base: f32, positions: usize, pairs: Pairs) -> Rotary {
        let half = head_dim / 2;
        let (mut cos, mut sin) = (
            Vec::with_capacity(positions * half),
            Vec::with_capacity(positions * half),
        );
        for position in 0..positions {
            for i in 0..half {
                let angle = position as f32 / base.powf((2 * i) as f32 / head_dim as f32);
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Rotary {
            cos,
            sin,
            half,
            pairs,
        }
    }

    /// Rotates each head of each token row of `x` in place, the first row at `position`.
    pub fn rotate(&self, x: &mut [f32], heads: usize, position: usize) {
        let (half, head_dim) = (self.half, 2 * self.half);
        for (t, row) in x.chunks_exact_mut(heads * head_dim).enumerate() {
            let at = (position + t) * half;
            let (cos, sin) = (&self.cos[at..at + half], &self.sin[at..at + half]);
            for head in row.chunks_exact_mut(head_dim) {
                for i in 0..half {
                    let (first, second) = match self.pairs {
                        Pairs::Interleaved => (2 * i, 2 * i + 1),
                        Pairs::Halves => (i, i + half),
                    };
                    let (a, b) = (head[first], head[second]);
                    head[first] = a * cos[i] - b * sin[i];
                    head[second] = a * sin[i] + b * cos[i];
                }
            }
        }
    }
}

/// The attention heads' shape.
#[derive(Clone, Copy)]
pub struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Positions the cache holds.
    pub context: usize,
}

/// A layer's keys and values, [kv_heads][context][head_dim] each, written as positions fill
/// (allocated zeroed, so the pages of positions never reached are never touched).
pub struct KvCache {
    keys: Vec<f32>,
    values: Vec<f32>,
}

impl KvCache {
    pub fn new(shape: Heads) -> KvCache {
        let size = shape.kv_heads * shape.context * shape.head_dim;
        KvCache {
            keys: vec![0f32; size],
            values: vec![0f32; size],
        }
    }

    /// Stores the `seq` tokens' keys and values (rows of `kv_heads * head_dim`) at `position`.
    pub fn store(&mut self, k: &[f32], v: &[f32], position: usize, shape: Heads) {
        let (head_dim, width) = (shape.head_dim, shape.kv_heads * shape.head_dim);
        for t in 0..k.len() / width {
            for g in 0..shape.kv_heads {
                let at = (g * shape.context + position + t) * head_dim;
                let from = t * width + g * head_dim;
                // llama.cpp keeps its cache in f16: the same rounding here, so greedy text
                // follows its text on the same file where the next token is a near tie.
                let rounded = |v: &f32| round_to_f16(*v);
                for (c, v) in self.keys[at..at + head_dim]
                    .iter_mut()
                    .zip(&k[from..from + head_dim])
                {
                    *c = rounded(v);
                }
                for (c, v) in self.values[at..at + head_dim]
                    .iter_mut()
                    .zip(&v[from..from + head_dim])
                {
                    *c = rounded(v);
                }
            }
        }
    }

    /// Grouped-query attention of the `seq` queries in `q` (rows of `heads * head_dim`) at
    /// `position` over the cache into `out` (same shape): each sees the positions up to its
    /// own, and within `window` of it for a sliding-window layer. Per key head, its query heads
    /// together, so each cached row is loaded once for all of them.
    #[allow(clippy::too_many_arguments)]
    pub fn attend(
        &self,
        q: &[f32],
        position: usize,
        window: Option<usize>,
        scale: f32,
        shape: Heads,
        scores: &mut Vec<f32>,
        out: &mut Vec<f32>,
    ) {
        let (head_dim, context) = (shape.head_dim, shape.context);
        let repeats = shape.heads / shape.kv_heads;
        let width = shape.heads * head_dim;
        let group = repeats * head_dim;
        let seq = q.len() / width;
        let to_f16 = round_to_f16;
        let mut rounded = Vec::with_capacity(group);
        out.clear();
        out.resize(seq * width, 0.0);
        for t in 0..seq {
            let query_at = position + t;
            let start = window.map_or(0, |w| (query_at + 1).saturating_sub(w));
            let visible = query_at + 1 - start;
            for g in 0..shape.kv_heads {
                // Queries and weights rounded to f16 as well as the cache: llama.cpp multiplies
                // its f16 cache by f16 copies of them.
                rounded.clear();
                rounded.extend(
                    q[t * width + g * group..][..group]
                        .iter()
                        .map(|v| to_f16(*v)),
                );
                let queries = &rounded[..];
                let base = (g * context + start) * head_dim;
                let keys = &self.keys[base..][..visible * head_dim];
                let values = &self.values[base..][..visible * head_dim];
                // [repeats][visible]
                scores.clear();
                scores.resize(repeats * visible, 0.0);
                for (p, k) in keys.chunks_exact(head_dim).enumerate() {
                    for (r, q) in queries.chunks_exact(head_dim).enumerate() {
                        scores[r * visible + p] = dot(q, k) * scale;
                    }
                }
                for scores in scores.chunks_exact_mut(visible) {
                    let max = scores.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
                    let mut total = 0.0;
                    for s in scores.iter_mut() {
                        *s = (*s - max).exp();
                        total += *s;
                    }
                    let inverse = 1.0 / total;
                    for s in scores.iter_mut() {
                        *s = to_f16(*s * inverse);
                    }
                }
                let out = &mut out[t * width + g * group..][..group];
                for (p, v) in values.chunks_exact(head_dim).enumerate() {
                    for (r, out) in out.chunks_exact_mut(head_dim).enumerate() {
                        let weight = scores[r * visible + p];
                        for (o, v) in out.iter_mut().zip(v) {
                            *o += weight * v;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eight_lane_dot_equals_the_plain_sum() {
        for len in [0, 1, 7, 8, 9, 64, 67] {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos() - 0.5).collect();
            let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!(
                (dot(&a, &b) - plain).abs() <= 1e-5 * (1.0 + plain.abs()),
                "{len} values"
            );
        }
    }

    /// One head of width 2 whose values are the positions themselves and whose keys are all
    /// equal: every visible position gets the same weight, so the output is the mean of the
    /// visible positions, which shows exactly which ones were visible.
    #[test]
    fn sliding_layers_see_only_the_window_and_nobody_sees_the_future() {
        let shape = Heads {
            heads: 1,
            kv_heads: 1,
            head_dim: 2,
            context: 8,
        };
        let mut cache = KvCache::new(shape);
        let keys = vec![1.0; 10];
        let values: Vec<f32> = (0..5).flat_map(|p| [p as f32, 0.0]).collect();
        cache.store(&keys, &values, 0, shape);
        let mean_seen = |window: Option<usize>, position: usize, seq: usize| {
            let (mut scores, mut out) = (Vec::new(), Vec::new());
            let q: Vec<f32> = vec![1.0; 2 * seq];
            cache.attend(&q, position, window, 1.0, shape, &mut scores, &mut out);
            out.chunks_exact(2).map(|o| o[0]).collect::<Vec<f32>>()
        };
        // Three new tokens after two cached ones, a window of 2: positions 2, 3, 4 see
        // {1, 2}, {2, 3}, {3, 4}.
        assert_eq!(mean_seen(Some(2), 2, 3), [1.5, 2.5, 3.5]);
        // A global layer sees every earlier position: 0 sees {0}, 1 sees {0, 1}.
        assert_eq!(mean_seen(None, 0, 2), [0.0, 0.5]);
    }

    #[test]
    fn both_rotary_layouts_rotate_the_same_pairs_by_the_same_angles() {
        let (head_dim, position) = (4, 3);
        let interleaved = Rotary::new(head_dim, 10_000.0, 8, Pairs::Interleaved);
        let halves = Rotary::new(head_dim, 10_000.0, 8, Pairs::Halves);
        // Pair (a, b) = (1, 2) and (3, 4) in each layout.
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        interleaved.rotate(&mut x, 1, position);
        let mut y = vec![1.0, 3.0, 2.0, 4.0];
        halves.rotate(&mut y, 1, position);
        for (a, b) in [(x[0], y[0]), (x[1], y[2]), (x[2], y[1]), (x[3], y[3])] {
            assert!((a - b).abs() < 1e-6, "{a} against {b}");
        }
        let angle = position as f32;
        assert!((x[0] - (angle.cos() - 2.0 * angle.sin())).abs() < 1e-5);
    }
}
