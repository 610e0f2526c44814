//! Matrix products straight on GGUF blocks (Q4_0, Q4_1, Q5_0, Q8_0 and the K-quants Q4_K,
//! Q5_K, Q6_K): the weights stay as the file has them, activations are quantized to 8 bits
//! per 32-value block, and each output is an integer dot product per 32 values scaled once,
//! as llama.cpp does. A K-quant block is eight such sub-blocks under one f16 scale (and
//! minimum), each with its own 6-bit scale (Q6_K: a signed 8-bit scale per 16 values), so a
//! Q4_K_M file (Q4_K, Q6_K and Q5_0 where a width is not a multiple of 256) runs on its own
//! blocks, never requantized at load. candle 0.11 has no fast Q4_1 product and multiplies
//! K-quants by whole 256-value activation blocks.
//!
//! The one place with `unsafe` in the engine: the AVX2 and AVX-512 kernels (`avx2`,
//! `avx512`). Each is checked against `dot_reference` (plain Rust on the same blocks, in
//! `blocks`) on random blocks in the tests below, and chosen at run time only when the CPU has
//! its features (`Kernels`; `N0M1_KERNELS=avx2|scalar` forces a narrower one).

mod blocks;

pub use blocks::{ActivationFormat, BlockFormat, dequantize_row, dot_reference};

/// Values per activation block, and per block (or sub-block) of weights.
pub const BLOCK: usize = 32;

/// Tokens one weight row meets per pass in a prompt's product: each block is loaded, its
/// nibbles unpacked and its scale converted once for all of them.
pub const TILE: usize = 4;

/// Activations of one or more tokens, quantized per block of 32: a scale, the scale times the
/// sum of the quantized values (what a block's minimum or offset multiplies), and the values.
/// Kept between calls so the decode loop reuses its buffers.
#[derive(Debug, Default)]
pub struct Activations {
    /// Per block: the scale, and the scale times the sum of the block's values (side by side,
    /// so the SIMD kernels load both at once).
    factors: Vec<[f32; 2]>,
    values: Vec<i8>,
}

/// `x` rounded to the nearest f16 (ties to even), as an f32: what llama.cpp's f16 buffers
/// hold. Plain arithmetic the compiler vectorises, where `half`'s conversion is a call per
/// value (it made a two-thread prompt 1.6× slower when the cache and attention rounded
/// through it); tested against `half` below.
#[inline]
pub fn round_to_f16(x: f32) -> f32 {
    /// 2^-14, f16's smallest normal; below it f16 steps are 2^-24 apart.
    const SMALLEST_NORMAL: f32 = 6.103_515_6e-5;
    const SUBNORMAL_STEP: f32 = 5.960_464_5e-8;
    let magnitude = x.abs();
    if magnitude < SMALLEST_NORMAL {
        return (x / SUBNORMAL_STEP).round_ties_even() * SUBNORMAL_STEP;
    }
    if magnitude >= 65_520.0 {
        // Past f16's largest finite value (65504) once rounded.
        return f32::INFINITY.copysign(x);
    }
    // Keep 10 of the 23 fraction bits, rounding to nearest with ties to even.
    let bits = x.to_bits();
    f32::from_bits((bits + 0x0FFF + ((bits >> 13) & 1)) & !0x1FFF)
}

/// How `quantize_blocks` rounds a block's scaled sum.
#[derive(Clone, Copy)]
enum Rounding {
    Q8_0,
    Q8_1,
}

/// 1.5 * 2^23: added to a float of magnitude below 2^22, it leaves no fraction bits, so the
/// addition rounds to an integer.
const ROUNDING: f32 = 12_582_912.0;

/// One block of `quantize_blocks` on the plain path: its values times `127 / max` rounded,
/// written to `out`; returns the largest magnitude and the sum of the rounded values.
fn quantize_block(block: &[f32; BLOCK], out: &mut [i8; BLOCK]) -> (f32, i32) {
    // Eight lanes of maxima: a comparison the compiler turns into packed maxima
    // (`f32::max`'s NaN rule keeps it scalar).
    let mut lanes = [0f32; 8];
    for chunk in block.chunks_exact(8) {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            let magnitude = v.abs();
            if magnitude > *lane {
                *lane = magnitude;
            }
        }
    }
    let max = lanes.iter().fold(0f32, |m, v| m.max(*v));
    let inverse = if max > 0.0 { 127.0 / max } else { 0.0 };
    let mut sum = 0i32;
    for (v, q) in block.iter().zip(out.iter_mut()) {
        // Round to nearest (ties to even) by adding and taking away 1.5 * 2^23, exact for
        // |v * inverse| <= 127; `f32::round` is a libm call per value without SSE4.1.
        *q = ((v * inverse + ROUNDING) - ROUNDING) as i8;
        sum += i32::from(*q);
    }
    (max, sum)
}

impl Activations {
    /// Quantizes `x` (a multiple of 32 values) in place of what was there, per 32 values, for
    /// Q4_1 weights: what llama.cpp's Q8_1 holds (see `quantize_blocks`).
    pub fn quantize(&mut self, x: &[f32]) {
        self.quantize_blocks(x, Rounding::Q8_1);
    }

    /// Per 32 values: the scale `max |v| / 127` and `q = v · 127 / max |v|` rounded to nearest
    /// (ties to even), as llama.cpp's AVX code does, with its roundings too, so greedy text
    /// follows llama.cpp's on the same file where the next token is a near tie: the scale is
    /// kept as an f16, and the scaled sum (what Q4_1's minimum multiplies) is the f32 scale
    /// times the sum rounded to an f16 for Q8_1, the f16 scale times the sum for Q8_0 (whose
    /// users, Q4_0, Q5_0 and Q8_0, take the offset in whole numbers).
    fn quantize_blocks(&mut self, x: &[f32], rounding: Rounding) {
        self.quantize_blocks_with(Kernels::chosen(), x, rounding);
    }

    fn quantize_blocks_with(&mut self, kernels: Kernels, x: &[f32], rounding: Rounding) {
        debug_assert!(x.len().is_multiple_of(BLOCK));
        let to_f16 = round_to_f16;
        self.factors.clear();
        self.values.clear();
        self.values.resize(x.len() / BLOCK * BLOCK, 0);
        for (block, out) in x
            .chunks_exact(BLOCK)
            .zip(self.values.chunks_exact_mut(BLOCK))
        {
            let block: &[f32; BLOCK] = block.try_into().expect("32 values");
            let out: &mut [i8; BLOCK] = out.try_into().expect("32 values");
            let (max, sum) = match kernels {
                // SAFETY: `Kernels::choose` picks AVX-512 only where the CPU has its
                // features; the block and its bytes are whole arrays.
                #[cfg(target_arch = "x86_64")]
                #[allow(unsafe_code)]
                Kernels::Avx512 => unsafe { avx512::quantize_block(block, out) },
                _ => quantize_block(block, out),
            };
            let scale = max / 127.0;
            let kept = to_f16(scale);
            let scaled_sum = match rounding {
                Rounding::Q8_1 => to_f16(scale * sum as f32),
                Rounding::Q8_0 => kept * sum as f32,
            };
            self.factors.push([kept, scaled_sum]);
        }
    }

    /// Quantizes `x` (a multiple of 256 values) for K-quant weights as llama.cpp does (its
    /// Q8_K): one scale per 256 values, `-127 / m` where `m` is the value of largest magnitude,
    /// so that value becomes −127. Each 32-value block then gets the 256 values' scale, and
    /// the kernels work exactly as on per-32 blocks. A coarser rounding than `quantize`, kept
    /// for K-quants so greedy text follows llama.cpp's on the same file.
    pub fn quantize_k(&mut self, x: &[f32]) {
        const GROUP: usize = 256;
        assert!(x.len().is_multiple_of(GROUP));
        self.factors.clear();
        self.values.clear();
        for group in x.chunks_exact(GROUP) {
            let (mut largest, mut magnitude) = (0f32, 0f32);
            for v in group {
                if v.abs() > magnitude {
                    magnitude = v.abs();
                    largest = *v;
                }
            }
            if magnitude == 0.0 {
                self.values.extend([0i8; GROUP]);
                self.factors.extend([[0f32; 2]; GROUP / BLOCK]);
                continue;
            }
            let inverse = -127.0 / largest;
            let scale = 1.0 / inverse;
            for block in group.chunks_exact(BLOCK) {
                let mut sum = 0i32;
                for v in block {
                    let q = ((v * inverse + ROUNDING) - ROUNDING).min(127.0) as i8;
                    sum += i32::from(q);
                    self.values.push(q);
                }
                self.factors.push([scale, scale * sum as f32]);
            }
        }
    }

    /// Quantizes `x` as products with `format`'s blocks take it.
    pub fn quantize_for(&mut self, format: BlockFormat, x: &[f32]) {
        match format.activations() {
            ActivationFormat::Q8_K => self.quantize_k(x),
            ActivationFormat::Q8_1 => self.quantize_blocks(x, Rounding::Q8_1),
            ActivationFormat::Q8_0 => self.quantize_blocks(x, Rounding::Q8_0),
        }
    }

    fn blocks(&self) -> usize {
        self.factors.len()
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

/// Which kernels run: the widest this CPU has, unless `N0M1_KERNELS` (`avx2` or `scalar`)
/// asks for a narrower one (to compare them, and so CI runs every path on one machine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    Avx512,
    Avx2,
    Scalar,
}

impl Kernels {
    pub fn chosen() -> Kernels {
        static CHOSEN: std::sync::OnceLock<Kernels> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| Kernels::choose(std::env::var("N0M1_KERNELS").ok().as_deref()))
    }

    /// The widest kernels the CPU has, at most `asked`.
    fn choose(asked: Option<&str>) -> Kernels {
        let ceiling = match asked {
            Some("scalar") => Kernels::Scalar,
            Some("avx2") => Kernels::Avx2,
            _ => Kernels::Avx512,
        };
        #[cfg(target_arch = "x86_64")]
        {
            if ceiling == Kernels::Avx512 && avx512::available() {
                return Kernels::Avx512;
            }
            if ceiling != Kernels::Scalar && avx2::available() {
                return Kernels::Avx2;
            }
        }
        let _ = ceiling;
        Kernels::Scalar
    }
}

fn dot(
    format: BlockFormat,
    row: &[u8],
    activations: &Activations,
    first: usize,
    blocks: usize,
) -> f32 {
    dot_with(Kernels::chosen(), format, row, activations, first, blocks)
}

fn dot_with(
    kernels: Kernels,
    format: BlockFormat,
    row: &[u8],
    activations: &Activations,
    first: usize,
    blocks: usize,
) -> f32 {
    if format.is_k() {
        return dot_k_with(kernels, format, row, activations, [first], blocks)[0];
    }
    #[cfg(target_arch = "x86_64")]
    match kernels {
        // SAFETY: `Kernels::choose` picked these only where the CPU has their features; the
        // slices' lengths are asserted inside.
        #[allow(unsafe_code)]
        Kernels::Avx512 => return unsafe { avx512::dot(format, row, activations, first, blocks) },
        // SAFETY: as above.
        #[allow(unsafe_code)]
        Kernels::Avx2 => return unsafe { avx2::dot(format, row, activations, first, blocks) },
        Kernels::Scalar => {}
    }
    let _ = kernels;
    dot_reference(format, row, activations, first, blocks)
}

/// `dot` for the `TILE` tokens whose activation blocks start at `first + i * stride`.
fn dot_tile(
    format: BlockFormat,
    row: &[u8],
    activations: &Activations,
    first: usize,
    stride: usize,
    blocks: usize,
) -> [f32; TILE] {
    dot_tile_with(
        Kernels::chosen(),
        format,
        row,
        activations,
        first,
        stride,
        blocks,
    )
}

fn dot_tile_with(
    kernels: Kernels,
    format: BlockFormat,
    row: &[u8],
    activations: &Activations,
    first: usize,
    stride: usize,
    blocks: usize,
) -> [f32; TILE] {
    if format.is_k() {
        let firsts = std::array::from_fn(|i| first + i * stride);
        return dot_k_with(kernels, format, row, activations, firsts, blocks);
    }
    #[cfg(target_arch = "x86_64")]
    match kernels {
        // SAFETY: `Kernels::choose` picked these only where the CPU has their features; the
        // slices' lengths are asserted inside.
        // The AVX2 tile on AVX-512 machines too: an AVX-512 tile (two blocks per `vpdpbusd`)
        // measured slower for prompts (SmolLM2 Q4_1, 2 threads, this project's Xeon: 273
        // against 325 tok/s), where the products of four tokens already fill the AVX2 units.
        #[allow(unsafe_code)]
        Kernels::Avx512 | Kernels::Avx2 => {
            return unsafe { avx2::dot_tile(format, row, activations, first, stride, blocks) };
        }
        Kernels::Scalar => {}
    }
    let _ = kernels;
    std::array::from_fn(|i| dot_reference(format, row, activations, first + i * stride, blocks))
}

/// The K-quant products for `N` tokens (kept apart from the 32-value formats' kernels:
/// inlined into them, they slowed those down by a third).
fn dot_k_with<const N: usize>(
    kernels: Kernels,
    format: BlockFormat,
    row: &[u8],
    activations: &Activations,
    firsts: [usize; N],
    blocks: usize,
) -> [f32; N] {
    #[cfg(target_arch = "x86_64")]
    match kernels {
        // The AVX2 kernel on AVX-512 machines too: its whole-number sums per 256 values
        // need 16-bit products scaled by `madd`, which AVX-512's `vpdpbusd` skips, and an
        // AVX-512 version scaling each pair of sub-blocks in floats was slower (4.1 against
        // 4.7 GB/s for Q4_K on one thread, this project's Xeon).
        // SAFETY: `Kernels::choose` picked these only where the CPU has their features (AVX-512
        // implies AVX2's); the slices' lengths are asserted inside.
        #[allow(unsafe_code)]
        Kernels::Avx512 | Kernels::Avx2 => {
            return unsafe { avx2::dot_k(format, row, activations, firsts, blocks) };
        }
        Kernels::Scalar => {}
    }
    let _ = kernels;
    firsts.map(|first| dot_reference(format, row, activations, first, blocks))
}

/// A weight matrix of `rows` rows of `cols` values, each row a run of blocks as in the file.
#[derive(Debug, Clone)]
pub struct BlockMatrix {
    pub format: BlockFormat,
    pub rows: usize,
    pub cols: usize,
    data: Vec<u8>,
}

impl BlockMatrix {
    pub fn new(
        format: BlockFormat,
        rows: usize,
        cols: usize,
        data: Vec<u8>,
    ) -> Result<BlockMatrix, String> {
        let values = format.block_values();
        if !cols.is_multiple_of(values) {
            return Err(format!(
                "{cols} columns are not whole {format:?} blocks of {values}"
            ));
        }
        let expected = rows * cols / values * format.block_bytes();
        if data.len() != expected {
            return Err(format!(
                "{} bytes for {rows}x{cols} {format:?}, expected {expected}",
                data.len()
            ));
        }
        Ok(BlockMatrix {
            format,
            rows,
            cols,
            data,
        })
    }

    fn row_bytes(&self) -> usize {
        self.cols / self.format.block_values() * self.format.block_bytes()
    }

    pub fn row(&self, r: usize) -> &[u8] {
        &self.data[r * self.row_bytes()..(r + 1) * self.row_bytes()]
    }

    /// Bytes held.
    pub fn size(&self) -> usize {
        self.data.len()
    }

    /// Row `r` as f32 values into `out` (`cols` long): an embedding lookup.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        dequantize_row(self.format, self.row(r), out);
    }

    /// `out[r - start][t] = row r · x[t]` for the rows of `rows`, from activations already
    /// quantized for `tokens` tokens: one thread's share of a product.
    pub fn rows_into(
        &self,
        rows: std::ops::Range<usize>,
        activations: &Activations,
        tokens: usize,
        out: &mut [f32],
    ) {
        let blocks = self.cols / BLOCK;
        assert_eq!(out.len(), rows.len() * tokens);
        assert!(rows.end <= self.rows && activations.blocks() >= tokens * blocks);
        for (r, ys) in rows.zip(out.chunks_exact_mut(tokens.max(1))) {
            let row = self.row(r);
            let mut tiles = ys.chunks_exact_mut(TILE);
            for (tile, ys) in (&mut tiles).enumerate() {
                let first = tile * TILE * blocks;
                ys.copy_from_slice(&dot_tile(
                    self.format,
                    row,
                    activations,
                    first,
                    blocks,
                    blocks,
                ));
            }
            let done = tokens - tokens % TILE;
            for (t, y) in (done..).zip(tiles.into_remainder()) {
                *y = dot(self.format, row, activations, t * blocks, blocks);
            }
        }
    }

    /// `out[t][r] = row r · x[t]` for the `tokens` rows of `x`, after quantizing `x` into
    /// `scratch`, on the calling thread (`team::Team` splits the same work across threads).
    pub fn matmul(&self, x: &[f32], tokens: usize, scratch: &mut Activations, out: &mut [f32]) {
        assert_eq!(x.len(), tokens * self.cols);
        assert_eq!(out.len(), tokens * self.rows);
        scratch.quantize_for(self.format, x);
        let mut by_row = vec![0f32; tokens * self.rows];
        self.rows_into(0..self.rows, scratch, tokens, &mut by_row);
        by_token(&by_row, self.rows, tokens, out);
    }
}

/// `[row][token]` results (what `rows_into` writes) into `[token][row]`.
pub fn by_token(by_row: &[f32], rows: usize, tokens: usize, out: &mut [f32]) {
    if tokens == 1 {
        out.copy_from_slice(by_row);
        return;
    }
    for r in 0..rows {
        for t in 0..tokens {
            out[t * rows + r] = by_row[r * tokens + t];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::{RngCore, SeedableRng};

    /// Random blocks of `format` (`blocks` 32-value blocks) with scales in a realistic range.
    pub(super) fn random_row(
        format: BlockFormat,
        blocks: usize,
        rng: &mut rand_chacha::ChaCha8Rng,
    ) -> Vec<u8> {
        let per_block = format.block_values() / BLOCK;
        assert!(blocks.is_multiple_of(per_block));
        let mut row = vec![0u8; blocks / per_block * format.block_bytes()];
        rng.fill_bytes(&mut row);
        let half = |rng: &mut rand_chacha::ChaCha8Rng, low: f32, high: f32| {
            let value = low + (rng.next_u32() % 1000) as f32 / 1000.0 * (high - low);
            half::f16::from_f32(value).to_le_bytes()
        };
        for block in row.chunks_exact_mut(format.block_bytes()) {
            match format {
                BlockFormat::Q6_K => block[208..].copy_from_slice(&half(rng, 0.0005, 0.002)),
                BlockFormat::Q4_K | BlockFormat::Q5_K => {
                    block[..2].copy_from_slice(&half(rng, 0.0005, 0.003));
                    block[2..4].copy_from_slice(&half(rng, 0.0, 0.003));
                }
                _ => block[..2].copy_from_slice(&half(rng, 0.001, 0.051)),
            }
            if format == BlockFormat::Q4_1 {
                block[2..4].copy_from_slice(&half(rng, -0.2, 0.2));
            }
        }
        row
    }

    /// Block counts to try: odd ones for the 32-value formats, whole K-quant blocks for those.
    fn block_counts(format: BlockFormat) -> &'static [usize] {
        if format.is_k() {
            &[8, 16, 24, 40]
        } else {
            &[1, 2, 3, 18, 48, 49]
        }
    }

    pub(super) fn random_values(n: usize, rng: &mut rand_chacha::ChaCha8Rng) -> Vec<f32> {
        (0..n)
            .map(|_| ((rng.next_u32() % 20001) as f32 / 10000.0 - 1.0) * 3.0)
            .collect()
    }

    #[test]
    fn activations_round_each_value_to_the_nearest_step_of_its_blocks_scale() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mut x = random_values(4 * BLOCK, &mut rng);
        x[BLOCK..2 * BLOCK].fill(0.0); // an all-zero block: scale 0, values 0
        x[2 * BLOCK + 3] = -7.5; // the block's largest magnitude is negative
        let mut activations = Activations::default();
        activations.quantize(&x);
        for (b, block) in x.chunks_exact(BLOCK).enumerate() {
            let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let [scale, sum] = activations.factors[b];
            assert_eq!(
                scale,
                half::f16::from_f32(max / 127.0).to_f32(),
                "block {b}"
            );
            let values = &activations.values[b * BLOCK..(b + 1) * BLOCK];
            for (v, q) in block.iter().zip(values) {
                assert!(
                    // Half a step, and the scale's f16 rounding (2^-11) times 127 steps.
                    (f32::from(*q) * scale - v).abs() <= 0.57 * scale,
                    "{v} -> {q}"
                );
            }
            let total: i32 = values.iter().map(|q| i32::from(*q)).sum();
            let exact = max / 127.0 * total as f32;
            assert_eq!(sum, half::f16::from_f32(exact).to_f32(), "block {b}");
        }
        assert_eq!(activations.values[2 * BLOCK + 3], -127);
    }

    #[test]
    fn k_activations_share_one_scale_per_256_values_and_its_largest_becomes_minus_127() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
        let mut x = random_values(3 * 256, &mut rng);
        x[256..512].fill(0.0); // an all-zero group: scale 0, values 0
        x[17] = 9.0; // the first group's largest value, positive
        x[600] = -9.5; // the third's, negative
        let mut activations = Activations::default();
        activations.quantize_k(&x);
        assert_eq!(activations.blocks(), 3 * 8);
        for (g, group) in x.chunks_exact(256).enumerate() {
            let scale = activations.factors[8 * g][0];
            for b in 0..8 {
                let [s, sum] = activations.factors[8 * g + b];
                assert_eq!(s, scale, "one scale per group");
                let values = &activations.values[(8 * g + b) * BLOCK..][..BLOCK];
                let total: i32 = values.iter().map(|q| i32::from(*q)).sum();
                assert_eq!(sum, scale * total as f32);
                for (v, q) in group[b * BLOCK..][..BLOCK].iter().zip(values) {
                    assert!((f32::from(*q) * scale - v).abs() <= 0.5001 * scale.abs());
                }
            }
        }
        assert_eq!(activations.values[17], -127);
        assert_eq!(activations.values[600], -127);
        assert!(activations.values[256..512].iter().all(|q| *q == 0));
        assert_eq!(activations.factors[8], [0.0, 0.0]);
    }

    #[test]
    fn k_scales_and_minimums_unpack_alike_one_by_one_and_all_at_once() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
        for _ in 0..1000 {
            let mut packed = [0u8; 12];
            rng.fill_bytes(&mut packed);
            let (scales, mins) = blocks::k_scales_mins(&packed);
            for j in 0..8 {
                assert_eq!(
                    (scales[j], mins[j]),
                    blocks::k_scale_min(&packed, j),
                    "{packed:?} {j}"
                );
            }
        }
    }

    #[test]
    fn rounding_to_f16_equals_halfs_conversion() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let special = [
            0.0f32, -0.0, 1.0, 65504.0, 65519.0, 65520.0, 1e-8, 6.1e-5, 6.2e-5, 2.98e-8, -3e-6,
        ];
        let random = (0..200_000).map(|_| {
            // Every exponent from tiny to huge, any fraction and sign.
            let bits = rng.next_u32();
            let exponent = 90 + (bits >> 24) % 60;
            f32::from_bits((bits & 0x8000_0000) | (exponent << 23) | (bits & 0x007F_FFFF))
        });
        for x in special.into_iter().chain(random) {
            let expected = half::f16::from_f32(x).to_f32();
            assert_eq!(round_to_f16(x).to_bits(), expected.to_bits(), "{x:e}");
        }
    }

    /// Every kernel this CPU can run: the widest, and each narrower one forced.
    fn kernels_here() -> Vec<Kernels> {
        let mut all: Vec<Kernels> = [None, Some("avx2"), Some("scalar")]
            .into_iter()
            .map(Kernels::choose)
            .collect();
        all.dedup();
        all
    }

    #[test]
    fn simd_activation_quantization_equals_the_plain_path_bit_for_bit() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
        let mut x = random_values(64 * BLOCK, &mut rng);
        // Blocks of other magnitudes: tiny, huge, one all zero, and one whose largest
        // magnitude is 127, so values like 2.5 land exactly halfway (ties to even).
        for (i, v) in x[..BLOCK].iter_mut().enumerate() {
            *v *= 1e-6 * (i as f32 + 1.0);
        }
        for v in &mut x[BLOCK..2 * BLOCK] {
            *v *= 1e4;
        }
        x[2 * BLOCK..3 * BLOCK].fill(0.0);
        for (i, v) in x[3 * BLOCK..4 * BLOCK].iter_mut().enumerate() {
            *v = if i == 0 { -127.0 } else { i as f32 - 15.5 };
        }
        for rounding in [Rounding::Q8_0, Rounding::Q8_1] {
            let mut plain = Activations::default();
            plain.quantize_blocks_with(Kernels::Scalar, &x, rounding);
            for kernels in kernels_here() {
                let mut fast = Activations::default();
                fast.quantize_blocks_with(kernels, &x, rounding);
                assert_eq!(fast.values, plain.values, "{kernels:?}");
                let bits = |a: &Activations| -> Vec<[u32; 2]> {
                    a.factors
                        .iter()
                        .map(|[s, t]| [s.to_bits(), t.to_bits()])
                        .collect()
                };
                assert_eq!(bits(&fast), bits(&plain), "{kernels:?}");
            }
        }
        // The halfway values rounded to even: 2.5 -> 2, 3.5 -> 4, -0.5 -> 0.
        let plain = {
            let mut a = Activations::default();
            a.quantize_blocks_with(Kernels::Scalar, &x[3 * BLOCK..4 * BLOCK], Rounding::Q8_0);
            a
        };
        assert_eq!(plain.values[0], -127);
        assert_eq!(&plain.values[15..19], &[0, 0, 2, 2]);
        assert_eq!(plain.values[19], 4);
    }

    #[test]
    fn a_narrower_kernel_can_be_forced_and_scalar_always_can() {
        assert_eq!(Kernels::choose(Some("scalar")), Kernels::Scalar);
        let widest = Kernels::choose(None);
        let avx2 = Kernels::choose(Some("avx2"));
        assert_ne!(avx2, Kernels::Avx512, "avx2 is a ceiling");
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(widest == Kernels::Avx512, avx512::available());
            assert_eq!(avx2 == Kernels::Avx2, avx2::available());
        }
        eprintln!("kernels here: {:?}", kernels_here());
    }

    #[test]
    fn simd_dot_products_equal_the_reference_on_random_blocks() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for kernels in kernels_here() {
            for format in blocks::FORMATS {
                for &blocks in block_counts(format) {
                    let row = random_row(format, blocks, &mut rng);
                    let x = random_values(blocks * BLOCK, &mut rng);
                    let mut activations = Activations::default();
                    activations.quantize_for(format, &x);
                    let reference = dot_reference(format, &row, &activations, 0, blocks);
                    let fast = dot_with(kernels, format, &row, &activations, 0, blocks);
                    assert!(
                        (fast - reference).abs() <= 1e-4 * reference.abs().max(1.0),
                        "{kernels:?} {format:?} x{blocks}: {fast} against {reference}"
                    );
                    // The tile kernel on TILE tokens (strided further apart than a row).
                    // (A whole 256-value group apart for the K-quants' activations.)
                    let pad = format.block_values() / BLOCK;
                    let tokens = random_values((TILE * (blocks + pad)) * BLOCK, &mut rng);
                    let mut tiled = Activations::default();
                    tiled.quantize_for(format, &tokens);
                    let tile =
                        dot_tile_with(kernels, format, &row, &tiled, pad, blocks + pad, blocks);
                    for (i, fast) in tile.iter().enumerate() {
                        let first = pad + i * (blocks + pad);
                        let reference = dot_reference(format, &row, &tiled, first, blocks);
                        assert!(
                            (fast - reference).abs() <= 1e-4 * reference.abs().max(1.0),
                            "{kernels:?} {format:?} x{blocks} tile {i}: {fast} against {reference}"
                        );
                    }
                    // Both are the float product up to the activations' 8-bit rounding.
                    let mut dense = vec![0f32; blocks * BLOCK];
                    dequantize_row(format, &row, &mut dense);
                    let exact: f32 = dense.iter().zip(&x).map(|(w, x)| w * x).sum();
                    let bound: f32 = dense.iter().map(|w| w.abs()).sum::<f32>() * 3.0 / 127.0;
                    assert!(
                        (reference - exact).abs() <= bound,
                        "{format:?} x{blocks}: {reference} against {exact} (bound {bound})"
                    );
                }
            }
        }
    }

    /// The blocks mean what ggml means by them: every format's dequantized row equals
    /// candle's (its own port of ggml's `dequantize_row_*`) on the same random bytes.
    #[test]
    fn blocks_dequantize_as_ggml_does() {
        use candle_core::quantized::{GgmlDType, ggml_file::qtensor_from_ggml};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for format in blocks::FORMATS {
            let dtype = [
                GgmlDType::Q4_0,
                GgmlDType::Q4_1,
                GgmlDType::Q5_0,
                GgmlDType::Q8_0,
                GgmlDType::Q4K,
                GgmlDType::Q5K,
                GgmlDType::Q6K,
            ]
            .into_iter()
            .find(|d| BlockFormat::from_ggml(*d) == Some(format))
            .unwrap();
            let blocks = 16;
            let row = random_row(format, blocks, &mut rng);
            let expected =
                qtensor_from_ggml(dtype, &row, vec![blocks * BLOCK], &candle_core::Device::Cpu)
                    .unwrap()
                    .dequantize(&candle_core::Device::Cpu)
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
            let mut ours = vec![0f32; blocks * BLOCK];
            dequantize_row(format, &row, &mut ours);
            for (i, (a, b)) in ours.iter().zip(&expected).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-6 * b.abs().max(1e-3),
                    "{format:?} value {i}: {a} against ggml's {b}"
                );
            }
        }
    }

    /// Q8_0 weights at the ends of their range (-128, 127, 0) against activations at theirs:
    /// the sign trick of the AVX kernels must hold there too.
    #[test]
    fn extreme_q8_weights_and_activations_agree_with_the_reference() {
        let blocks = 4;
        let mut row = Vec::new();
        for b in 0..blocks {
            row.extend(half::f16::from_f32(0.5).to_le_bytes());
            row.extend((0..BLOCK).map(|j| [0x80u8, 0x7F, 0x00, 0xFF][(j + b) % 4]));
        }
        let x: Vec<f32> = (0..blocks * BLOCK)
            .map(|i| if i % 3 == 0 { -1.0 } else { 1.0 })
            .collect();
        let mut activations = Activations::default();
        activations.quantize(&x);
        let reference = dot_reference(BlockFormat::Q8_0, &row, &activations, 0, blocks);
        for kernels in kernels_here() {
            let fast = dot_with(kernels, BlockFormat::Q8_0, &row, &activations, 0, blocks);
            assert!(
                (fast - reference).abs() <= 1e-4 * reference.abs().max(1.0),
                "{kernels:?}: {fast} against {reference}"
            );
        }
    }

    #[test]
    fn a_matrix_product_per_token_equals_row_by_row_dots() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for format in blocks::FORMATS {
            // 3 tokens: single dots only; 4: one tile; 9: two tiles and one single.
            for tokens in [3, 4, 9] {
                let (rows, cols) = (70, if format.is_k() { 512 } else { 96 });
                let data: Vec<u8> = (0..rows)
                    .flat_map(|_| random_row(format, cols / BLOCK, &mut rng))
                    .collect();
                let matrix = BlockMatrix::new(format, rows, cols, data).unwrap();
                let x = random_values(tokens * cols, &mut rng);
                let mut scratch = Activations::default();
                let mut out = vec![0f32; tokens * rows];
                matrix.matmul(&x, tokens, &mut scratch, &mut out);
                for t in 0..tokens {
                    let mut single = Activations::default();
                    single.quantize_for(format, &x[t * cols..(t + 1) * cols]);
                    let mut one = vec![0f32; rows];
                    matrix.matmul(&x[t * cols..(t + 1) * cols], 1, &mut scratch, &mut one);
                    for r in 0..rows {
                        let expected =
                            dot_reference(format, matrix.row(r), &single, 0, cols / BLOCK);
                        assert!(
                            (out[t * rows + r] - expected).abs() <= 1e-4 * expected.abs().max(1.0)
                        );
                        assert!((one[r] - expected).abs() <= 1e-4 * expected.abs().max(1.0));
                    }
                }
            }
        }
        assert!(BlockMatrix::new(BlockFormat::Q4_1, 2, 32, vec![0; 39]).is_err());
        assert!(BlockMatrix::new(BlockFormat::Q4_1, 2, 33, vec![0; 40]).is_err());
    }
}

#[cfg(test)]
mod speed_probe {
    use super::*;
    use rand_core::SeedableRng;
    /// Activation quantization (Q8_1, 576 values as SmolLM2's hidden state), each kernel
    /// set interleaved: values per second.
    #[test]
    #[ignore]
    fn quantization() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let x = tests::random_values(576, &mut rng);
        let kernels: Vec<Kernels> = [None, Some("avx2")]
            .into_iter()
            .map(Kernels::choose)
            .collect();
        let mut rates = vec![Vec::new(); kernels.len()];
        let mut a = Activations::default();
        for _ in 0..9 {
            for (k, kernel) in kernels.iter().enumerate() {
                let t = std::time::Instant::now();
                for _ in 0..20_000 {
                    a.quantize_blocks_with(*kernel, std::hint::black_box(&x), Rounding::Q8_1);
                }
                rates[k].push(20_000.0 * x.len() as f64 / t.elapsed().as_secs_f64() / 1e9);
            }
        }
        for (kernel, mut rate) in kernels.iter().zip(rates) {
            rate.sort_by(f64::total_cmp);
            eprintln!(
                "quantize Q8_1 {kernel:?}: median {:.2} G values/s, min {:.2}, max {:.2} (9 runs, interleaved)",
                rate[4], rate[0], rate[8]
            );
        }
    }

    #[test]
    #[ignore]
    fn probe() {
        let (rows, cols) = (65536usize, 1024usize);
        for format in blocks::FORMATS {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
            let data: Vec<u8> = (0..rows)
                .flat_map(|_| tests::random_row(format, cols / BLOCK, &mut rng))
                .collect();
            let m = BlockMatrix::new(format, rows, cols, data).unwrap();
            let x = vec![0.5f32; cols];
            let mut a = Activations::default();
            a.quantize(&x);
            // The kernels here, interleaved (A, B, A, B …) so the VM's drift favours none.
            let kernels: Vec<Kernels> = [None, Some("avx2")]
                .into_iter()
                .map(Kernels::choose)
                .collect();
            let mut rates = vec![Vec::new(); kernels.len()];
            for _ in 0..5 {
                for (k, kernel) in kernels.iter().enumerate() {
                    let t = std::time::Instant::now();
                    let mut s = 0f32;
                    for _ in 0..4 {
                        for r in 0..rows {
                            s += dot_with(*kernel, format, m.row(r), &a, 0, cols / BLOCK);
                        }
                    }
                    let secs = t.elapsed().as_secs_f64();
                    std::hint::black_box(s);
                    rates[k].push((m.size() * 4) as f64 / secs / 1e9);
                }
            }
            for (kernel, mut rate) in kernels.iter().zip(rates) {
                rate.sort_by(f64::total_cmp);
                eprintln!(
                    "{format:?} {kernel:?}: median {:.2} GB/s, min {:.2}, max {:.2} single thread (5 runs, interleaved)",
                    rate[2], rate[0], rate[4]
                );
            }
            let t = std::time::Instant::now();
            let mut sum = 0u64;
            for _ in 0..10 {
                sum += m
                    .data
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                    .fold(0u64, |a, b| a.wrapping_add(b));
            }
            eprintln!(
                "plain read: {:.2} GB/s ({sum})",
                (m.size() * 10) as f64 / t.elapsed().as_secs_f64() / 1e9
            );
        }
    }
}
