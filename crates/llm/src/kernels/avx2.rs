use std::arch::x86_64::*;

use super::blocks::{f16_at, k_scales_mins};
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

/// A block's 32 weights as bytes for `_mm256_maddubs_epi16` (unsigned nibbles or 5-bit
/// values, or |q|), and the bytes whose signs the activations take (Q8_0's q; unused for the
/// others). The K-quants take `unpack_k`.
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
        BlockFormat::Q5_0 => {
            // SAFETY: the 16 bytes of nibbles after the scale and the 4 bytes of high bits.
            let (packed, high) = unsafe {
                (
                    _mm_loadu_si128(block.add(6).cast()),
                    std::ptr::read_unaligned(block.add(2).cast::<u32>()),
                )
            };
            let both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
            let nibbles = _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
            (_mm256_or_si256(nibbles, fifth_bits(high, 0)), both)
        }
        BlockFormat::Q4_K | BlockFormat::Q5_K | BlockFormat::Q6_K => {
            unreachable!("K-quant blocks are unpacked by unpack_k")
        }
    }
}

/// 0x10 in byte `i` where bit `i + skip` of `bits` is set (the fifth bit of a 5-bit value):
/// each byte takes the byte of `bits` holding its bit, all of whose other bits a mask sets,
/// so the byte is all ones exactly when its bit is.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fifth_bits(bits: u32, skip: u32) -> __m256i {
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32((bits >> skip) as i32),
        _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        ),
    );
    let others = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
    let set = _mm256_cmpeq_epi8(_mm256_or_si256(spread, others), _mm256_set1_epi8(-1));
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
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
    let weights = if matches!(format, BlockFormat::Q4_0 | BlockFormat::Q5_0) {
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
        BlockFormat::Q5_0 => -16.0 * lane1,
        _ => 0.0,
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

/// Sub-blocks `2p` and `2p + 1` of a K-quant block (see `blocks::sub_block` for the
/// layouts) as bytes for `_mm256_maddubs_epi16` (Q6_K: |q − 32|, with the signed values for
/// the activations to take), made where they are used: kept for a whole block, the eight
/// sub-blocks went through memory and the kernel ran at 4.2 GB/s.
///
/// # Safety
/// The CPU has AVX2; `block` is one whole block of `format` (its length is checked by the
/// caller, `dot_k`).
#[inline]
#[allow(unsafe_code)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn k_pair(format: BlockFormat, block: *const u8, p: usize) -> [(__m256i, __m256i); 2] {
    let nibbles = _mm256_set1_epi8(0x0F);
    match format {
        BlockFormat::Q4_K | BlockFormat::Q5_K => {
            let skip = if format == BlockFormat::Q4_K { 16 } else { 48 };
            // SAFETY: the pair's 32 bytes of nibbles, inside the block.
            let packed = unsafe { _mm256_loadu_si256(block.add(skip + 32 * p).cast()) };
            let mut low = _mm256_and_si256(packed, nibbles);
            let mut high = _mm256_and_si256(_mm256_srli_epi16(packed, 4), nibbles);
            if format == BlockFormat::Q5_K {
                // SAFETY: the 32 bytes of fifth bits at 16, inside the block.
                let bits = unsafe { _mm256_loadu_si256(block.add(16).cast()) };
                let fifth = |j: usize| {
                    let bit = _mm256_set1_epi8((1u8 << j) as i8);
                    let set = _mm256_cmpeq_epi8(_mm256_and_si256(bits, bit), bit);
                    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
                };
                low = _mm256_or_si256(low, fifth(2 * p));
                high = _mm256_or_si256(high, fifth(2 * p + 1));
            }
            [(low, low), (high, high)]
        }
        BlockFormat::Q6_K => {
            // Sub-blocks 4h + k of half h: k = 0, 1 from the low nibbles of the half's two
            // 32-byte runs, k = 2, 3 from their high nibbles; 2 high bits each from `high`.
            let (half, k) = (p / 2, 2 * (p % 2));
            let three = _mm256_set1_epi8(3);
            // SAFETY: the half's 64 bytes of low bits and 32 of high bits, inside the block.
            let (low0, low1, high) = unsafe {
                (
                    _mm256_loadu_si256(block.add(64 * half).cast()),
                    _mm256_loadu_si256(block.add(64 * half + 32).cast()),
                    _mm256_loadu_si256(block.add(128 + 32 * half).cast()),
                )
            };
            let shift = |v: __m256i, by: i32| match by {
                0 => v,
                2 => _mm256_srli_epi16(v, 2),
                4 => _mm256_srli_epi16(v, 4),
                _ => _mm256_srli_epi16(v, 6),
            };
            let make = |k: usize| {
                let source = if k.is_multiple_of(2) { low0 } else { low1 };
                let nib = _mm256_and_si256(shift(source, if k < 2 { 0 } else { 4 }), nibbles);
                let top = _mm256_and_si256(shift(high, 2 * k as i32), three);
                let q = _mm256_sub_epi8(
                    _mm256_or_si256(nib, _mm256_slli_epi16(top, 4)),
                    _mm256_set1_epi8(32),
                );
                (_mm256_sign_epi8(q, q), q)
            };
            [make(k), make(k + 1)]
        }
        _ => unreachable!("k_pair takes the K-quants"),
    }
}

/// `dot_reference` on K-quant rows for `N` tokens at once (token `i`'s activation blocks
/// from `firsts[i]`; `blocks` counts 32-value blocks, eight per K-quant block). The
/// activations are `Activations::quantize_k`'s, one scale per 256 values, so a block's eight
/// sub-blocks sum in whole numbers: each sub-block's 32 products are two instructions, times
/// its 6- or 8-bit scales in a third (`madd`), and the block is scaled once per token, as
/// llama.cpp does.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C (`available()`); the lengths are checked here.
#[allow(unsafe_code)]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_k<const N: usize>(
    format: BlockFormat,
    row: &[u8],
    activations: &Activations,
    firsts: [usize; N],
    blocks: usize,
) -> [f32; N] {
    let size = format.block_bytes();
    assert!(blocks.is_multiple_of(8) && row.len() >= blocks / 8 * size);
    for first in firsts {
        assert!(activations.blocks() >= first + blocks);
    }
    let (x, f) = (activations.values.as_ptr(), activations.factors.as_ptr());
    let signed = format == BlockFormat::Q6_K;
    let mut sums = [_mm256_setzero_ps(); N];
    let mut offsets = [0f32; N];
    for (kb, block) in row.chunks_exact(size).take(blocks / 8).enumerate() {
        // Per sub-block its scale as 16-bit lanes (Q6_K: one per half) and its minimum.
        let (d, scales, mins): (f32, [__m256i; 8], [f32; 8]) = if signed {
            let scale = |i: usize| i16::from(block[192 + i] as i8);
            (
                f16_at(block, 208),
                std::array::from_fn(|j| {
                    _mm256_set_m128i(
                        _mm_set1_epi16(scale(2 * j + 1)),
                        _mm_set1_epi16(scale(2 * j)),
                    )
                }),
                [0.0; 8],
            )
        } else {
            let (scales, mins) = k_scales_mins(&block[4..16]);
            let dmin = f16_at(block, 2);
            (
                f16_at(block, 0),
                scales.map(|s| _mm256_set1_epi16(i16::from(s))),
                mins.map(|m| -dmin * f32::from(m)),
            )
        };
        let mut integer = [[_mm256_setzero_si256(); 2]; N];
        for p in 0..4 {
            // SAFETY: a whole block (`chunks_exact`), on this CPU.
            let pair = unsafe { k_pair(format, block.as_ptr(), p) };
            for (h, (weights, signs)) in pair.into_iter().enumerate() {
                let j = 2 * p + h;
                for (i, first) in firsts.iter().enumerate() {
                    let a = first + 8 * kb + j;
                    // SAFETY: activation block `a` is below `first + blocks` (asserted), so
                    // its 32 values lie inside `values`.
                    let xv = unsafe { _mm256_loadu_si256(x.add(a * BLOCK).cast()) };
                    let xv = if signed {
                        _mm256_sign_epi8(xv, signs)
                    } else {
                        xv
                    };
                    let scaled = _mm256_madd_epi16(_mm256_maddubs_epi16(weights, xv), scales[j]);
                    integer[i][h] = _mm256_add_epi32(integer[i][h], scaled);
                }
            }
        }
        for (i, first) in firsts.iter().enumerate() {
            let a = first + 8 * kb;
            // SAFETY: the factors of blocks `a .. a + 8`, below `first + blocks` (asserted).
            let factors = unsafe { std::slice::from_raw_parts(f.add(a), 8) };
            // One activation scale for the 256 values (`quantize_k`).
            let scale = factors[0][0];
            debug_assert!(factors.iter().all(|[s, _]| *s == scale), "K activations");
            let total = _mm256_cvtepi32_ps(_mm256_add_epi32(integer[i][0], integer[i][1]));
            sums[i] = _mm256_fmadd_ps(total, _mm256_set1_ps(d * scale), sums[i]);
            offsets[i] += factors
                .iter()
                .zip(mins)
                .map(|([_, sum], min)| min * sum)
                .sum::<f32>();
        }
    }
    std::array::from_fn(|i| horizontal_sum(sums[i]) + offsets[i])
}
