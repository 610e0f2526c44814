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

/// Tokens one weight row meets per pass in a prompt's product: each block is loaded, its
/// nibbles unpacked and its scale converted once for all of them.
pub const TILE: usize = 4;

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
    /// Per block: the scale, and the scale times the sum of the block's values (side by side,
    /// so the SIMD kernels load both at once).
    factors: Vec<[f32; 2]>,
    values: Vec<i8>,
}

/// 1.5 * 2^23: added to a float of magnitude below 2^22, it leaves no fraction bits, so the
/// addition rounds to an integer.
const ROUNDING: f32 = 12_582_912.0;

impl Activations {
    /// Quantizes `x` (a multiple of 32 values) in place of what was there.
    pub fn quantize(&mut self, x: &[f32]) {
        debug_assert!(x.len().is_multiple_of(BLOCK));
        self.factors.clear();
        self.values.clear();
        for block in x.chunks_exact(BLOCK) {
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
            let scale = max / 127.0;
            let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            let mut sum = 0i32;
            for v in block {
                // Round to nearest (ties to even) by adding and taking away 1.5 * 2^23,
                // exact for |v * inverse| <= 127; `f32::round` is a libm call per value
                // without SSE4.1.
                let q = ((v * inverse + ROUNDING) - ROUNDING) as i8;
                sum += i32::from(q);
                self.values.push(q);
            }
            self.factors.push([scale, scale * sum as f32]);
        }
    }

    fn blocks(&self) -> usize {
        self.factors.len()
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
        let [scale, sum] = activations.factors[a];
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

    use super::{Activations, BLOCK, BlockFormat, TILE};

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
    pub(super) fn horizontal_sum(v: __m256) -> f32 {
        let pair = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let pair = _mm_add_ps(pair, _mm_movehl_ps(pair, pair));
        _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)))
    }

    /// A block's 32 weights as bytes for `_mm256_maddubs_epi16` (unsigned nibbles, or |q|),
    /// and the bytes whose signs the activations take (Q8_0's q; unused for nibbles).
    ///
    /// # Safety
    /// `block` points at a whole block of `format`.
    #[inline]
    #[allow(unsafe_code)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn weights(format: BlockFormat, block: *const u8) -> (__m256i, __m256i) {
        match format {
            BlockFormat::Q8_0 => {
                // SAFETY: the 32 signed bytes after the f16 scale, inside the block.
                let q = unsafe { _mm256_loadu_si256(block.add(2).cast()) };
                (_mm256_sign_epi8(q, q), q)
            }
            BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
                let skip = if format == BlockFormat::Q4_1 { 4 } else { 2 };
                // SAFETY: the 16 bytes of nibbles after the scale (and minimum).
                let packed = unsafe { _mm_loadu_si128(block.add(skip).cast()) };
                let both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
                (_mm256_and_si256(both, _mm256_set1_epi8(0x0F)), both)
            }
        }
    }

    /// Lane 0: what the block's integer dot product is multiplied by (the weights' scale
    /// times the activations'); lane 1: the block's offset (Q4_1's minimum times the scaled
    /// sum of the activations; Q4_0's scale times it, to be multiplied by −8; unused for
    /// Q8_0). One load and one conversion for the block's f16 scale and minimum, into a
    /// fresh register: converting them one by one had the compiler merge each into a live
    /// accumulator, which chained every block behind the previous one.
    ///
    /// # Safety
    /// `block` points at a whole block of `format` (at least 18 bytes), `factor` at one of
    /// the activations' factors.
    #[inline]
    #[allow(unsafe_code)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn factors(
        format: BlockFormat,
        block: *const u8,
        factor: *const [f32; 2],
    ) -> __m128 {
        // SAFETY: the block's first four bytes (its scale, then its minimum or its first
        // values) and the factor's eight, both inside their slices (see above).
        let (halves, [scale, sum]) = unsafe {
            (
                _mm_cvtph_ps(_mm_loadu_si32(block)),
                std::ptr::read_unaligned(factor),
            )
        };
        let factor = _mm_setr_ps(scale, sum, 0.0, 0.0);
        let weights = if format == BlockFormat::Q4_0 {
            _mm_moveldup_ps(halves)
        } else {
            halves
        };
        _mm_mul_ps(weights, factor)
    }

    /// The 32 products of a block's weights and activation bytes `xv`, summed in 8 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn products(format: BlockFormat, weights: __m256i, signs: __m256i, xv: __m256i) -> __m256 {
        let xv = if format == BlockFormat::Q8_0 {
            _mm256_sign_epi8(xv, signs)
        } else {
            xv
        };
        let pairs = _mm256_maddubs_epi16(weights, xv);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }

    /// The offsets summed in lane 1 of `offsets`, as the format adds them.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn offset(format: BlockFormat, offsets: __m128) -> f32 {
        let lane1 = _mm_cvtss_f32(_mm_movehdup_ps(offsets));
        match format {
            BlockFormat::Q4_1 => lane1,
            BlockFormat::Q4_0 => -8.0 * lane1,
            BlockFormat::Q8_0 => 0.0,
        }
    }

    /// `dot_reference` with AVX2: 32 products per block in two instructions (unsigned
    /// nibbles, or |w| against sign-adjusted activations, then pairs summed to 32 bits),
    /// blocks alternating between two accumulators so one block's loads overlap the other's
    /// arithmetic.
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
        let (w, x, f) = (
            row.as_ptr(),
            activations.values.as_ptr(),
            activations.factors.as_ptr(),
        );
        let mut sums = [_mm256_setzero_ps(); 2];
        let mut offsets = [_mm_setzero_ps(); 2];
        let mut step = |b: usize, lane: usize| {
            let a = first + b;
            // SAFETY: block `b < blocks` lies in `row[b * size..(b + 1) * size]`; activation
            // block `a` in `values[a * 32..][..32]` and `factors[a]`; both bounds asserted above.
            let (block, xv, factors) = unsafe {
                let block = w.add(b * size);
                (
                    block,
                    _mm256_loadu_si256(x.add(a * BLOCK).cast()),
                    factors(format, block, f.add(a)),
                )
            };
            // SAFETY: `block` is a whole block (above).
            let (weights, signs) = unsafe { weights(format, block) };
            let products = products(format, weights, signs, xv);
            sums[lane] = _mm256_fmadd_ps(_mm256_broadcastss_ps(factors), products, sums[lane]);
            offsets[lane] = _mm_add_ps(offsets[lane], factors);
        };
        for pair in 0..blocks / 2 {
            step(2 * pair, 0);
            step(2 * pair + 1, 1);
        }
        if blocks % 2 == 1 {
            step(blocks - 1, 0);
        }
        horizontal_sum(_mm256_add_ps(sums[0], sums[1]))
            + offset(format, _mm_add_ps(offsets[0], offsets[1]))
    }

    /// `dot` for `TILE` tokens at once: token `i`'s activation blocks start at
    /// `first + i * stride`. Each weight block is loaded and unpacked once, then meets the
    /// `TILE` tokens' blocks, each into its own accumulator.
    ///
    /// # Safety
    /// As `dot`; the lengths are checked here.
    #[allow(unsafe_code)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_tile(
        format: BlockFormat,
        row: &[u8],
        activations: &Activations,
        first: usize,
        stride: usize,
        blocks: usize,
    ) -> [f32; TILE] {
        let size = format.block_bytes();
        assert!(row.len() >= blocks * size);
        assert!(activations.blocks() >= first + (TILE - 1) * stride + blocks);
        let (w, x, f) = (
            row.as_ptr(),
            activations.values.as_ptr(),
            activations.factors.as_ptr(),
        );
        let mut sums = [_mm256_setzero_ps(); TILE];
        let mut offsets = [_mm_setzero_ps(); TILE];
        for b in 0..blocks {
            // SAFETY: block `b < blocks` lies in `row[b * size..(b + 1) * size]` (asserted).
            let block = unsafe { w.add(b * size) };
            // SAFETY: a whole block.
            let (weights, signs) = unsafe { weights(format, block) };
            for i in 0..TILE {
                let a = first + i * stride + b;
                // SAFETY: activation block `a` is within `values[a * 32..][..32]` and
                // `factors`: `a` is below `first + (TILE - 1) * stride + blocks` (asserted).
                let (xv, factors) = unsafe {
                    (
                        _mm256_loadu_si256(x.add(a * BLOCK).cast()),
                        factors(format, block, f.add(a)),
                    )
                };
                let products = products(format, weights, signs, xv);
                sums[i] = _mm256_fmadd_ps(_mm256_broadcastss_ps(factors), products, sums[i]);
                offsets[i] = _mm_add_ps(offsets[i], factors);
            }
        }
        std::array::from_fn(|i| horizontal_sum(sums[i]) + offset(format, offsets[i]))
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::avx2::{factors, offset, weights};
    use super::{Activations, BLOCK, BlockFormat, TILE};

    /// Whether this CPU runs the AVX-512 kernels: 512-bit integer dot products of unsigned
    /// and signed bytes (VNNI), on top of what the AVX2 helpers they share need.
    pub fn available() -> bool {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            super::avx2::available()
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
        })
    }

    /// Two blocks' weights side by side (block `b` in the low half), as unsigned bytes for
    /// `vpdpbusd`, and the activations' bytes made to carry Q8_0's signs.
    ///
    /// # Safety
    /// `first` and `second` point at whole blocks of `format`.
    #[inline]
    #[allow(unsafe_code)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    unsafe fn pair(
        format: BlockFormat,
        first: *const u8,
        second: *const u8,
        xv: __m512i,
    ) -> (__m512i, __m512i) {
        // SAFETY: whole blocks (above).
        let ((w0, s0), (w1, s1)) = unsafe { (weights(format, first), weights(format, second)) };
        let weights = _mm512_inserti64x4(_mm512_castsi256_si512(w0), w1, 1);
        let xv = if format == BlockFormat::Q8_0 {
            // |w| times x with w's sign: x negated where w is negative (|x| <= 127, so the
            // negation cannot overflow; where w is 0 the product is 0 either way).
            let signs = _mm512_inserti64x4(_mm512_castsi256_si512(s0), s1, 1);
            _mm512_mask_sub_epi8(xv, _mm512_movepi8_mask(signs), _mm512_setzero_si512(), xv)
        } else {
            xv
        };
        (weights, xv)
    }

    /// Lanes 0-7 `low`'s lane 0, lanes 8-15 `high`'s.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    fn scales(low: __m128, high: __m128) -> __m512 {
        let low = _mm512_castps_pd(_mm512_broadcastss_ps(low));
        let high = _mm256_castps_pd(_mm256_broadcastss_ps(high));
        _mm512_castpd_ps(_mm512_insertf64x4(low, high, 1))
    }

    /// `dot_reference` with AVX-512 VNNI: two blocks per step, their 64 products in one
    /// `vpdpbusd`, each block's sums scaled by its own factor.
    ///
    /// # Safety
    /// The CPU must have what `available()` checks; the lengths are checked here.
    #[allow(unsafe_code)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
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
        let (w, x, f) = (
            row.as_ptr(),
            activations.values.as_ptr(),
            activations.factors.as_ptr(),
        );
        let mut sums = _mm512_setzero_ps();
        let mut offsets = _mm_setzero_ps();
        for pair_index in 0..blocks / 2 {
            let (b, a) = (2 * pair_index, first + 2 * pair_index);
            // SAFETY: blocks `b` and `b + 1 < blocks` lie in `row`; activation blocks `a` and
            // `a + 1` in `values[a * 32..][..64]` and `factors` (both bounds asserted above).
            let (weights, xv, low, high) = unsafe {
                let (block0, block1) = (w.add(b * size), w.add((b + 1) * size));
                let xv = _mm512_loadu_si512(x.add(a * BLOCK).cast());
                let (weights, xv) = pair(format, block0, block1, xv);
                (
                    weights,
                    xv,
                    factors(format, block0, f.add(a)),
                    factors(format, block1, f.add(a + 1)),
                )
            };
            let products = _mm512_dpbusd_epi32(_mm512_setzero_si512(), weights, xv);
            sums = _mm512_fmadd_ps(_mm512_cvtepi32_ps(products), scales(low, high), sums);
            offsets = _mm_add_ps(offsets, _mm_add_ps(low, high));
        }
        let mut total = _mm512_reduce_add_ps(sums) + offset(format, offsets);
        if blocks % 2 == 1 {
            let b = blocks - 1;
            // SAFETY: the AVX2 kernel runs here (`available()` implies its features); it
            // checks its own bounds on the last block.
            total +=
                unsafe { super::avx2::dot(format, &row[b * size..], activations, first + b, 1) };
        }
        total
    }

    /// `dot` for `TILE` tokens at once (token `i`'s blocks from `first + i * stride`): each
    /// pair of weight blocks is loaded and unpacked once for the `TILE` tokens.
    ///
    /// # Safety
    /// As `dot`; the lengths are checked here.
    #[allow(unsafe_code)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn dot_tile(
        format: BlockFormat,
        row: &[u8],
        activations: &Activations,
        first: usize,
        stride: usize,
        blocks: usize,
    ) -> [f32; TILE] {
        let size = format.block_bytes();
        assert!(row.len() >= blocks * size);
        assert!(activations.blocks() >= first + (TILE - 1) * stride + blocks);
        let (w, x, f) = (
            row.as_ptr(),
            activations.values.as_ptr(),
            activations.factors.as_ptr(),
        );
        let mut sums = [_mm512_setzero_ps(); TILE];
        let mut offsets = [_mm_setzero_ps(); TILE];
        for pair_index in 0..blocks / 2 {
            let b = 2 * pair_index;
            // SAFETY: blocks `b` and `b + 1 < blocks` lie in `row` (asserted).
            let (block0, block1) = unsafe { (w.add(b * size), w.add((b + 1) * size)) };
            for i in 0..TILE {
                let a = first + i * stride + b;
                // SAFETY: activation blocks `a` and `a + 1` are below
                // `first + (TILE - 1) * stride + blocks` (asserted), so within `values` and
                // `factors`; the weight blocks are whole (above).
                let (weights, xv, low, high) = unsafe {
                    let xv = _mm512_loadu_si512(x.add(a * BLOCK).cast());
                    let (weights, xv) = pair(format, block0, block1, xv);
                    (
                        weights,
                        xv,
                        factors(format, block0, f.add(a)),
                        factors(format, block1, f.add(a + 1)),
                    )
                };
                let products = _mm512_dpbusd_epi32(_mm512_setzero_si512(), weights, xv);
                sums[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(products), scales(low, high), sums[i]);
                offsets[i] = _mm_add_ps(offsets[i], _mm_add_ps(low, high));
            }
        }
        let mut totals: [f32; TILE] =
            std::array::from_fn(|i| _mm512_reduce_add_ps(sums[i]) + offset(format, offsets[i]));
        if blocks % 2 == 1 {
            let b = blocks - 1;
            // SAFETY: as in `dot`.
            let last = unsafe {
                super::avx2::dot_tile(format, &row[b * size..], activations, first + b, stride, 1)
            };
            for (total, last) in totals.iter_mut().zip(last) {
                *total += last;
            }
        }
        totals
    }
}

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
    #[cfg(target_arch = "x86_64")]
    match kernels {
        // SAFETY: `Kernels::choose` picked these only where the CPU has their features; the
        // slices' lengths are asserted inside.
        #[allow(unsafe_code)]
        Kernels::Avx512 => {
            return unsafe { avx512::dot_tile(format, row, activations, first, stride, blocks) };
        }
        // SAFETY: as above.
        #[allow(unsafe_code)]
        Kernels::Avx2 => {
            return unsafe { avx2::dot_tile(format, row, activations, first, stride, blocks) };
        }
        Kernels::Scalar => {}
    }
    let _ = kernels;
    std::array::from_fn(|i| dot_reference(format, row, activations, first + i * stride, blocks))
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
            assert_eq!(scale, max / 127.0, "block {b}");
            let values = &activations.values[b * BLOCK..(b + 1) * BLOCK];
            for (v, q) in block.iter().zip(values) {
                assert!(
                    (f32::from(*q) * scale - v).abs() <= 0.5001 * scale,
                    "{v} -> {q}"
                );
            }
            let total: i32 = values.iter().map(|q| i32::from(*q)).sum();
            assert_eq!(sum, scale * total as f32, "block {b}");
        }
        assert_eq!(activations.values[2 * BLOCK + 3], -127);
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
            for format in [BlockFormat::Q4_0, BlockFormat::Q4_1, BlockFormat::Q8_0] {
                for blocks in [1, 2, 3, 18, 48, 49] {
                    let row = random_row(format, blocks, &mut rng);
                    let x = random_values(blocks * BLOCK, &mut rng);
                    let mut activations = Activations::default();
                    activations.quantize(&x);
                    let reference = dot_reference(format, &row, &activations, 0, blocks);
                    let fast = dot_with(kernels, format, &row, &activations, 0, blocks);
                    assert!(
                        (fast - reference).abs() <= 1e-4 * reference.abs().max(1.0),
                        "{kernels:?} {format:?} x{blocks}: {fast} against {reference}"
                    );
                    // The tile kernel on TILE tokens (strided further apart than a row).
                    let tokens = random_values((TILE * (blocks + 1)) * BLOCK, &mut rng);
                    let mut tiled = Activations::default();
                    tiled.quantize(&tokens);
                    let tile = dot_tile_with(kernels, format, &row, &tiled, 1, blocks + 1, blocks);
                    for (i, fast) in tile.iter().enumerate() {
                        let first = 1 + i * (blocks + 1);
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
        for format in [BlockFormat::Q4_0, BlockFormat::Q4_1, BlockFormat::Q8_0] {
            // 3 tokens: single dots only; 4: one tile; 9: two tiles and one single.
            for tokens in [3, 4, 9] {
                let (rows, cols) = (70, 96);
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
