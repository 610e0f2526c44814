//! The GGUF block formats the kernels take, what one 32-value sub-block of each means, and the
//! plain-Rust dot product and dequantization built on that meaning: the reference the SIMD
//! kernels are tested against.

use super::{Activations, BLOCK};

/// A GGUF block format these kernels take, named as ggml names them.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockFormat {
    /// f16 scale, 32 nibbles: `d · (q − 8)`.
    Q4_0,
    /// f16 scale and minimum, 32 nibbles: `d · q + m`.
    Q4_1,
    /// f16 scale, 32 high bits, 32 nibbles: `d · (q − 16)` with 5-bit `q`.
    Q5_0,
    /// f16 scale, 32 signed bytes: `d · q`.
    Q8_0,
    /// 256 values: f16 scale and minimum, 6-bit scales and minimums per 32 values, nibbles:
    /// `d · s_j · q − dmin · m_j`.
    Q4_K,
    /// As Q4_K with a fifth bit per value (32 bytes of high bits).
    Q5_K,
    /// 256 values: 6-bit values (4 low bits, 2 high), a signed 8-bit scale per 16 values and
    /// an f16 scale: `d · s_k · (q − 32)`.
    Q6_K,
}

/// How a product quantizes its input for a weight format: as llama.cpp does (its
/// `vec_dot_type`, whose names these are), so the two engines round alike.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivationFormat {
    /// Per 32 values, an f16 scale (Q4_0, Q5_0, Q8_0).
    Q8_0,
    /// Per 32 values, an f16 scale and an f16 scaled sum (Q4_1).
    Q8_1,
    /// One f32 scale per 256 values (the K-quants).
    Q8_K,
}

/// Every format, for the tests.
#[cfg(test)]
pub const FORMATS: [BlockFormat; 7] = [
    BlockFormat::Q4_0,
    BlockFormat::Q4_1,
    BlockFormat::Q5_0,
    BlockFormat::Q8_0,
    BlockFormat::Q4_K,
    BlockFormat::Q5_K,
    BlockFormat::Q6_K,
];

impl BlockFormat {
    pub fn from_ggml(dtype: candle_core::quantized::GgmlDType) -> Option<BlockFormat> {
        use candle_core::quantized::GgmlDType;
        match dtype {
            GgmlDType::Q4_0 => Some(BlockFormat::Q4_0),
            GgmlDType::Q4_1 => Some(BlockFormat::Q4_1),
            GgmlDType::Q5_0 => Some(BlockFormat::Q5_0),
            GgmlDType::Q8_0 => Some(BlockFormat::Q8_0),
            GgmlDType::Q4K => Some(BlockFormat::Q4_K),
            GgmlDType::Q5K => Some(BlockFormat::Q5_K),
            GgmlDType::Q6K => Some(BlockFormat::Q6_K),
            _ => None,
        }
    }

    /// Bytes of one block.
    pub fn block_bytes(self) -> usize {
        match self {
            BlockFormat::Q4_0 => 18,
            BlockFormat::Q4_1 => 20,
            BlockFormat::Q5_0 => 22,
            BlockFormat::Q8_0 => 34,
            BlockFormat::Q4_K => 144,
            BlockFormat::Q5_K => 176,
            BlockFormat::Q6_K => 210,
        }
    }

    /// Values in one block: 32, or 256 for the K-quants (eight sub-blocks of 32, each meeting
    /// one block of activations).
    pub fn block_values(self) -> usize {
        match self {
            BlockFormat::Q4_K | BlockFormat::Q5_K | BlockFormat::Q6_K => 256,
            _ => BLOCK,
        }
    }

    /// How products with this format quantize their input.
    pub fn activations(self) -> ActivationFormat {
        match self {
            BlockFormat::Q4_1 => ActivationFormat::Q8_1,
            BlockFormat::Q4_K | BlockFormat::Q5_K | BlockFormat::Q6_K => ActivationFormat::Q8_K,
            _ => ActivationFormat::Q8_0,
        }
    }

    /// Whether a block holds eight sub-blocks (the K-quants).
    pub fn is_k(self) -> bool {
        self.block_values() > BLOCK
    }
}

pub(super) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Sub-block `j`'s 6-bit scale and minimum from a Q4_K or Q5_K block's 12 packed bytes
/// (ggml's `get_scale_min_k4`): the first four of each in the low 6 bits of bytes 0–7, the
/// last four split between the nibbles of bytes 8–11 and the top 2 bits of bytes 0–7.
pub(super) fn k_scale_min(scales: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

/// All eight sub-blocks' 6-bit scales and minimums of a Q4_K or Q5_K block at once, in 32-bit
/// words (ggml's way in its dot products): the same as `k_scale_min` for each `j`, for the
/// SIMD kernels, which unpack a block per token in a decode step.
pub(super) fn k_scales_mins(packed: &[u8]) -> ([u8; 8], [u8; 8]) {
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let word = |i: usize| {
        u32::from_le_bytes([
            packed[4 * i],
            packed[4 * i + 1],
            packed[4 * i + 2],
            packed[4 * i + 3],
        ])
    };
    let (w0, w1, w2) = (word(0), word(1), word(2));
    let scales_high = (w2 & LOW4) | (((w0 >> 6) & LOW2) << 4);
    let mins_high = ((w2 >> 4) & LOW4) | (((w1 >> 6) & LOW2) << 4);
    let join = |low: u32, high: u32| {
        let mut out = [0u8; 8];
        out[..4].copy_from_slice(&low.to_le_bytes());
        out[4..].copy_from_slice(&high.to_le_bytes());
        out
    };
    (join(w0 & LOW6, scales_high), join(w1 & LOW6, mins_high))
}

/// One 32-value sub-block: value `l` is `scales[l / 16] · q[l] + min`.
pub(super) struct SubBlock {
    pub q: [i32; BLOCK],
    pub scales: [f32; 2],
    pub min: f32,
}

/// Sub-block `j` (0 for the 32-value formats, 0–7 for the K-quants) of `block`.
pub(super) fn sub_block(format: BlockFormat, block: &[u8], j: usize) -> SubBlock {
    let mut q = [0i32; BLOCK];
    let d = f16_at(block, 0);
    let (scale, min) = match format {
        BlockFormat::Q8_0 => {
            for (q, w) in q.iter_mut().zip(&block[2..34]) {
                *q = i32::from(*w as i8);
            }
            (d, 0.0)
        }
        BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
            let nibbles = &block[if format == BlockFormat::Q4_1 { 4 } else { 2 }..][..16];
            for (l, n) in nibbles.iter().enumerate() {
                q[l] = i32::from(n & 0x0F);
                q[l + 16] = i32::from(n >> 4);
            }
            if format == BlockFormat::Q4_1 {
                (d, f16_at(block, 2))
            } else {
                (d, -8.0 * d)
            }
        }
        BlockFormat::Q5_0 => {
            let high = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
            for (l, n) in block[6..22].iter().enumerate() {
                q[l] = i32::from(n & 0x0F) | (((high >> l) & 1) << 4) as i32;
                q[l + 16] = i32::from(n >> 4) | (((high >> (l + 16)) & 1) << 4) as i32;
            }
            (d, -16.0 * d)
        }
        BlockFormat::Q4_K | BlockFormat::Q5_K => {
            let (sc, m) = k_scale_min(&block[4..16], j);
            let nibbles = if format == BlockFormat::Q4_K {
                &block[16..144]
            } else {
                &block[48..176]
            };
            let bytes = &nibbles[32 * (j / 2)..][..32];
            for (l, n) in bytes.iter().enumerate() {
                q[l] = i32::from(if j.is_multiple_of(2) {
                    n & 0x0F
                } else {
                    n >> 4
                });
                if format == BlockFormat::Q5_K {
                    q[l] |= i32::from((block[16 + l] >> j) & 1) << 4;
                }
            }
            (d * f32::from(sc), -f16_at(block, 2) * f32::from(m))
        }
        BlockFormat::Q6_K => {
            let d = f16_at(block, 208);
            let (half, k) = (j / 4, j % 4);
            let low = &block[64 * half + 32 * (k % 2)..][..32];
            let high = &block[128 + 32 * half..][..32];
            for l in 0..BLOCK {
                let nibble = if k < 2 { low[l] & 0x0F } else { low[l] >> 4 };
                let top = (high[l] >> (2 * k)) & 3;
                q[l] = i32::from(nibble | (top << 4)) - 32;
            }
            let scale = |i: usize| d * f32::from(block[192 + i] as i8);
            return SubBlock {
                q,
                scales: [scale(2 * j), scale(2 * j + 1)],
                min: 0.0,
            };
        }
    };
    SubBlock {
        q,
        scales: [scale, scale],
        min,
    }
}

/// The dot product of one row of blocks with `blocks` activation blocks from `first`
/// (`blocks` counts 32-value blocks: eight per K-quant block), in plain Rust: the reference
/// the SIMD versions are tested against.
pub fn dot_reference(
    format: BlockFormat,
    row: &[u8],
    activations: &Activations,
    first: usize,
    blocks: usize,
) -> f32 {
    let per_block = format.block_values() / BLOCK;
    let mut total = 0f32;
    for b in 0..blocks {
        let block = &row[b / per_block * format.block_bytes()..][..format.block_bytes()];
        let sub = sub_block(format, block, b % per_block);
        let a = first + b;
        let x = &activations.values[a * BLOCK..(a + 1) * BLOCK];
        let [scale, sum] = activations.factors[a];
        for (half, q) in sub.q.chunks_exact(16).enumerate() {
            let dot: i32 = q
                .iter()
                .zip(&x[16 * half..16 * half + 16])
                .map(|(q, x)| q * i32::from(*x))
                .sum();
            total += sub.scales[half] * scale * dot as f32;
        }
        total += sub.min * sum;
    }
    total
}

/// Dequantizes one row of blocks into `out`.
pub fn dequantize_row(format: BlockFormat, row: &[u8], out: &mut [f32]) {
    let per_block = format.block_values() / BLOCK;
    for (b, out) in out.chunks_exact_mut(BLOCK).enumerate() {
        let block = &row[b / per_block * format.block_bytes()..][..format.block_bytes()];
        let sub = sub_block(format, block, b % per_block);
        for (l, (o, q)) in out.iter_mut().zip(sub.q).enumerate() {
            *o = sub.scales[l / 16] * q as f32 + sub.min;
        }
    }
}
