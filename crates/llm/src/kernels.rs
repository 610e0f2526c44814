//! Matrix products straight on GGUF blocks (Q4_0, Q4_1, Q8_0): the weights stay as the file
//! has them, activations are quantized to 8 bits per 32-value block, and each output is an
//! integer dot product per block scaled once, as llama.cpp does. candle 0.11 has no fast
//! Q4_1 product (so the engine used to requantize Q4_1 files to the larger Q8_0).
//!
//! The one place with `unsafe` in the engine: the AVX2 dot products. Each is checked against
//! `dot_reference` (plain Rust on the same blocks) on random blocks in the tests below, and
//! chosen at run time only when the CPU has AVX2, FMA and F16C.

/// Values per block in every format here.
pub const BLOCK: usize = 32;

/// A GGUF block format these kernels take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockFormat {
    /// f16 scale, 32 nibbles: `d · (q − 8)`.
    Q4_0,
    /// f16 scale and minimum, 32 nibbles: `d · q + m`.
    Q4_1,
    /// f16 scale, 32 signed bytes: `d · q`.
    Q8_0,
}

impl BlockFormat {
    pub fn from_ggml(dtype: candle_core::quantized::GgmlDType) -> Option<BlockFormat> {
        use candle_core::quantized::GgmlDType;
        match dtype {
            GgmlDType::Q4_0 => Some(BlockFormat::Q4_0),
            GgmlDType::Q4_1 => Some(BlockFormat::Q4_1),
            GgmlDType::Q8_0 => Some(BlockFormat::Q8_0),
            _ => None,
        }
    }

    pub fn block_bytes(self) -> usize {
        match self {
            BlockFormat::Q4_0 => 18,
            BlockFormat::Q4_1 => 20,
            BlockFormat::Q8_0 => 34,
        }
    }
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Activations of one or more tokens, quantized per block of 32: a scale, the scale times the
/// sum of the quantized values (what a block's minimum or offset multiplies), and the values.
/// Kept between calls so the decode loop reuses its buffers.
#[derive(Debug, Default)]
pub struct Activations {
    scales: Vec<f32>,
    sums: Vec<f32>,
    values: Vec<i8>,
}

impl Activations {
    /// Quantizes `x` (a multiple of 32 values) in place of what was there.
    pub fn quantize(&mut self, x: &[f32]) {
        debug_assert!(x.len().is_multiple_of(BLOCK));
        self.scales.clear();
        self.sums.clear();
        self.values.clear();
        for block in x.chunks_exact(BLOCK) {
            let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = max / 127.0;
            let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            let mut sum = 0i32;
            for v in block {
                let q = (v * inverse).round() as i8;
                sum += i32::from(q);
                self.values.push(q);
            }
            self.scales.push(scale);
            self.sums.push(scale * sum as f32);
        }
    }

    fn blocks(&self) -> usize {
        self.scales.len()
    }
}

/// The dot product of one row of blocks with `blocks` activation blocks from `first`, in
/// plain Rust: the reference the SIMD versions are tested against.
pub fn dot_reference(
    format: BlockFormat,
    row: &[u8],
    activations: &Activations,
    first: usize,
    blocks: usize,
) -> f32 {
    let mut total = 0f32;
    for b in 0..blocks {
        let block = &row[b * format.block_bytes()..(b + 1) * format.block_bytes()];
        let a = first + b;
        let x = &activations.values[a * BLOCK..(a + 1) * BLOCK];
        let (scale, sum) = (activations.scales[a], activations.sums[a]);
        let d = f16_at(block, 0);
        match format {
            BlockFormat::Q8_0 => {
                let dot: i32 = block[2..]
                    .iter()
                    .zip(x)
                    .map(|(w, x)| i32::from(*w as i8) * i32::from(*x))
                    .sum();
                total += d * scale * dot as f32;
            }
            BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
                let nibbles = if format == BlockFormat::Q4_1 {
                    &block[4..]
                } else {
                    &block[2..]
                };
                let dot: i32 = (0..16)
                    .map(|j| {
                        i32::from(nibbles[j] & 0x0F) * i32::from(x[j])
                            + i32::from(nibbles[j] >> 4) * i32::from(x[j + 16])
                    })
                    .sum();
                total += d * scale * dot as f32;
                total += if format == BlockFormat::Q4_1 {
                    f16_at(block, 2) * sum
                } else {
                    -8.0 * d * sum
                };
            }
        }
    }
    total
}

/// Dequantizes one row of blocks into `out`.
pub fn dequantize_row(format: BlockFormat, row: &[u8], out: &mut [f32]) {
    for (block, out) in row
        .chunks_exact(format.block_bytes())
        .zip(out.chunks_exact_mut(BLOCK))
    {
        let d = f16_at(block, 0);
        match format {
            BlockFormat::Q8_0 => {
                for (o, w) in out.iter_mut().zip(&block[2..]) {
                    *o = d * f32::from(*w as i8);
                }
            }
            BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
                let (nibbles, min) = if format == BlockFormat::Q4_1 {
                    (&block[4..], f16_at(block, 2))
                } else {
                    (&block[2..], -8.0 * d)
                };
                for j in 0..16 {
                    out[j] = d * f32::from(nibbles[j] & 0x0F) + min;
                    out[j + 16] = d * f32::from(nibbles[j] >> 4) + min;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Activations, BLOCK, BlockFormat};

    /// Whether this CPU runs the AVX2 kernels.
    pub fn available() -> bool {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        })
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn horizontal_sum(v: __m256) -> f32 {
        let pair = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let pair = _mm_add_ps(pair, _mm_movehl_ps(pair, pair));
        _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)))
    }

    /// `dot_reference` with AVX2: 32 products per block in two instructions (unsigned
    /// nibbles, or |w| against sign-adjusted activations, then pairs summed to 32 bits), two
    /// blocks per turn into two accumulators so the loads of one overlap the other's math.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C (`available()`); the lengths are checked here.
    #[allow(unsafe_code)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot(
        format: BlockFormat,
        row: &[u8],
        activations: &Activations,
        first: usize,
        blocks: usize,
    ) -> f32 {
        let size = format.block_bytes();
        assert!(row.len() >= blocks * size);
        assert!(activations.blocks() >= first + blocks);
        let w = row.as_ptr();
        // SAFETY (every raw read below): block `b < blocks` of the row lies in
        // `row[b * size..(b + 1) * size]` and activation block `first + b` in
        // `values[(first + b) * 32..][..32]`, `scales[first + b]`, `sums[first + b]`; both
        // bounds were asserted above. Unaligned loads are allowed.
        let x = unsafe { activations.values.as_ptr().add(first * BLOCK) };
        let scales = &activations.scales[first..first + blocks];
        let sums = &activations.sums[first..first + blocks];
        let half = |at: *const u8| -> f32 {
            // SAFETY: `at` points at two bytes of a block (see above).
            let bits = unsafe { std::ptr::read_unaligned(at.cast::<u16>()) };
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
        };
        let low = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        // 32 products of one block, summed in 8 lanes of f32.
        let nibbles = |at: *const u8, xv: __m256i| -> __m256 {
            // SAFETY: 16 bytes of nibbles inside the block (see above).
            let packed = unsafe { _mm_loadu_si128(at.cast()) };
            let both = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), low);
            _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(both, xv), ones))
        };
        let bytes = |at: *const u8, xv: __m256i| -> __m256 {
            // SAFETY: 32 signed bytes inside the block (see above).
            let q = unsafe { _mm256_loadu_si256(at.cast()) };
            let products = _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(xv, q));
            _mm256_cvtepi32_ps(_mm256_madd_epi16(products, ones))
        };
        let (mut even, mut odd) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let (mut offset_even, mut offset_odd) = (0f32, 0f32);
        let pairs = blocks / 2;
        // SAFETY (the pointer arithmetic in each loop): `b < blocks`, see above.
        let at = |b: usize| unsafe { (w.add(b * size), x.add(b * BLOCK)) };
        let xv = |p: *const i8| unsafe { _mm256_loadu_si256(p.cast()) };
        match format {
            BlockFormat::Q8_0 => {
                for pair in 0..pairs {
                    let (b0, b1) = (2 * pair, 2 * pair + 1);
                    let ((w0, x0), (w1, x1)) = (at(b0), at(b1));
                    let p0 = bytes(unsafe { w0.add(2) }, xv(x0));
                    let p1 = bytes(unsafe { w1.add(2) }, xv(x1));
                    even = _mm256_fmadd_ps(_mm256_set1_ps(half(w0) * scales[b0]), p0, even);
                    odd = _mm256_fmadd_ps(_mm256_set1_ps(half(w1) * scales[b1]), p1, odd);
                }
                if blocks % 2 == 1 {
                    let b = blocks - 1;
                    let (w0, x0) = at(b);
                    let p0 = bytes(unsafe { w0.add(2) }, xv(x0));
                    even = _mm256_fmadd_ps(_mm256_set1_ps(half(w0) * scales[b]), p0, even);
                }
            }
            BlockFormat::Q4_1 => {
                for pair in 0..pairs {
                    let (b0, b1) = (2 * pair, 2 * pair + 1);
                    let ((w0, x0), (w1, x1)) = (at(b0), at(b1));
                    let p0 = nibbles(unsafe { w0.add(4) }, xv(x0));
                    let p1 = nibbles(unsafe { w1.add(4) }, xv(x1));
                    even = _mm256_fmadd_ps(_mm256_set1_ps(half(w0) * scales[b0]), p0, even);
                    odd = _mm256_fmadd_ps(_mm256_set1_ps(half(w1) * scales[b1]), p1, odd);
                    offset_even += half(unsafe { w0.add(2) }) * sums[b0];
                    offset_odd += half(unsafe { w1.add(2) }) * sums[b1];
                }
                if blocks % 2 == 1 {
                    let b = blocks - 1;
                    let (w0, x0) = at(b);
                    let p0 = nibbles(unsafe { w0.add(4) }, xv(x0));
                    even = _mm256_fmadd_ps(_mm256_set1_ps(half(w0) * scales[b]), p0, even);
                    offset_even += half(unsafe { w0.add(2) }) * sums[b];
                }
            }
            BlockFormat::Q4_0 => {
                for b in 0..blocks {
                    let (w0, x0) = at(b);
                    let d = half(w0);
                    let p0 = nibbles(unsafe { w0.add(2) }, xv(x0));
                    even = _mm256_fmadd_ps(_mm256_set1_ps(d * scales[b]), p0, even);
                    offset_even -= 8.0 * d * sums[b];
                }
            }
        }
        horizontal_sum(_mm256_add_ps(even, odd)) + offset_even + offset_odd
    }
}

fn dot(
    format: BlockFormat,
    row: &[u8],
    activations: &Activations,
    first: usize,
    blocks: usize,
) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: `available()` checked the CPU features; the slices' lengths are asserted
        // inside.
        #[allow(unsafe_code)]
        return unsafe { avx2::dot(format, row, activations, first, blocks) };
    }
    dot_reference(format, row, activations, first, blocks)
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
        if !cols.is_multiple_of(BLOCK) {
            return Err(format!("{cols} columns are not whole blocks of {BLOCK}"));
        }
        let expected = rows * cols / BLOCK * format.block_bytes();
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
        self.cols / BLOCK * self.format.block_bytes()
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
            for (t, y) in ys.iter_mut().enumerate() {
                *y = dot(self.format, row, activations, t * blocks, blocks);
            }
        }
    }

    /// `out[t][r] = row r · x[t]` for the `tokens` rows of `x`, after quantizing `x` into
    /// `scratch`, on the calling thread (`team::Team` splits the same work across threads).
    pub fn matmul(&self, x: &[f32], tokens: usize, scratch: &mut Activations, out: &mut [f32]) {
        assert_eq!(x.len(), tokens * self.cols);
        assert_eq!(out.len(), tokens * self.rows);
        scratch.quantize(x);
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

    /// Random blocks of `format` with scales in a realistic range.
    fn random_row(
        format: BlockFormat,
        blocks: usize,
        rng: &mut rand_chacha::ChaCha8Rng,
    ) -> Vec<u8> {
        let mut row = vec![0u8; blocks * format.block_bytes()];
        rng.fill_bytes(&mut row);
        for block in row.chunks_exact_mut(format.block_bytes()) {
            let scale = (rng.next_u32() % 1000) as f32 / 1000.0 * 0.05 + 0.001;
            block[..2].copy_from_slice(&half::f16::from_f32(scale).to_le_bytes());
            if format == BlockFormat::Q4_1 {
                let min = ((rng.next_u32() % 2000) as f32 / 1000.0 - 1.0) * 0.2;
                block[2..4].copy_from_slice(&half::f16::from_f32(min).to_le_bytes());
            }
        }
        row
    }

    fn random_values(n: usize, rng: &mut rand_chacha::ChaCha8Rng) -> Vec<f32> {
        (0..n)
            .map(|_| ((rng.next_u32() % 20001) as f32 / 10000.0 - 1.0) * 3.0)
            .collect()
    }

    #[test]
    fn simd_dot_products_equal_the_reference_on_random_blocks() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for format in [BlockFormat::Q4_0, BlockFormat::Q4_1, BlockFormat::Q8_0] {
            for blocks in [1, 2, 18, 48] {
                let row = random_row(format, blocks, &mut rng);
                let x = random_values(blocks * BLOCK, &mut rng);
                let mut activations = Activations::default();
                activations.quantize(&x);
                let reference = dot_reference(format, &row, &activations, 0, blocks);
                let fast = dot(format, &row, &activations, 0, blocks);
                assert!(
                    (fast - reference).abs() <= 1e-4 * reference.abs().max(1.0),
                    "{format:?} x{blocks}: {fast} against {reference}"
                );
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
        #[cfg(target_arch = "x86_64")]
        eprintln!("AVX2 kernels used: {}", avx2::available());
    }

    #[test]
    fn a_matrix_product_per_token_equals_row_by_row_dots() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for format in [BlockFormat::Q4_0, BlockFormat::Q4_1, BlockFormat::Q8_0] {
            let (rows, cols, tokens) = (70, 96, 3);
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
                single.quantize(&x[t * cols..(t + 1) * cols]);
                let mut one = vec![0f32; rows];
                matrix.matmul(&x[t * cols..(t + 1) * cols], 1, &mut scratch, &mut one);
                for r in 0..rows {
                    let expected = dot_reference(format, matrix.row(r), &single, 0, cols / BLOCK);
                    assert!((out[t * rows + r] - expected).abs() <= 1e-4 * expected.abs().max(1.0));
                    assert!((one[r] - expected).abs() <= 1e-4 * expected.abs().max(1.0));
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
    #[test]
    #[ignore]
    fn probe() {
        let (rows, cols) = (49152usize, 576usize);
        for format in [BlockFormat::Q4_1, BlockFormat::Q8_0] {
            let mut data = vec![0x37u8; rows * cols / BLOCK * format.block_bytes()];
            for block in data.chunks_exact_mut(format.block_bytes()) {
                block[..2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
                block[2..4].copy_from_slice(&half::f16::from_f32(-0.02).to_le_bytes());
            }
            let m = BlockMatrix::new(format, rows, cols, data).unwrap();
            let x = vec![0.5f32; cols];
            let mut a = Activations::default();
            a.quantize(&x);
            let t = std::time::Instant::now();
            let mut s = 0f32;
            for _ in 0..10 {
                for r in 0..rows {
                    s += dot(format, m.row(r), &a, 0, cols / BLOCK);
                }
            }
            let secs = t.elapsed().as_secs_f64();
            eprintln!(
                "{format:?}: {:.2} GB/s single thread ({s})",
                (m.size() * 10) as f64 / secs / 1e9
            );
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
