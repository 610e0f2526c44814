use std::arch::x86_64::*;

use super::avx2::{offset, weights};
use super::{Activations, BLOCK, BlockFormat};

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

/// One block of 32 activations quantized as `Activations::quantize_blocks` does on the plain
/// path, 16 values per instruction: the largest magnitude, each value times `127 / max` rounded
/// to nearest (ties to even, by the same add and take away of 1.5 · 2^23, no fused
/// multiply-add), so the bytes written and the (max, sum) returned equal the plain path's
/// bit for bit (tested).
///
/// # Safety
/// The CPU must have what `available()` checks.
#[allow(unsafe_code)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub unsafe fn quantize_block(block: &[f32; BLOCK], out: &mut [i8; BLOCK]) -> (f32, i32) {
    // SAFETY: `block` holds 32 floats: two unaligned loads of 16.
    let (low, high) = unsafe {
        (
            _mm512_loadu_ps(block.as_ptr()),
            _mm512_loadu_ps(block.as_ptr().add(16)),
        )
    };
    let max = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(low), _mm512_abs_ps(high)));
    let inverse = _mm512_set1_ps(if max > 0.0 { 127.0 / max } else { 0.0 });
    let rounding = _mm512_set1_ps(super::ROUNDING);
    let quantize = |v: __m512| {
        let scaled = _mm512_mul_ps(v, inverse);
        // Whole numbers already: the conversion's truncation changes nothing.
        _mm512_cvttps_epi32(_mm512_sub_ps(_mm512_add_ps(scaled, rounding), rounding))
    };
    let (low, high) = (quantize(low), quantize(high));
    let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(low, high));
    // SAFETY: `out` holds 32 bytes: two unaligned stores of 16 (each lane narrowed from
    // 32 bits, exact for values within ±127).
    unsafe {
        _mm_storeu_si128(out.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(low));
        _mm_storeu_si128(out.as_mut_ptr().add(16).cast(), _mm512_cvtepi32_epi8(high));
    }
    (max, sum)
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
    match format {
        BlockFormat::Q8_0 => {
            // SAFETY: each block's 32 signed bytes after its f16 scale.
            let q = unsafe {
                _mm512_inserti64x4(
                    _mm512_castsi256_si512(_mm256_loadu_si256(first.add(2).cast())),
                    _mm256_loadu_si256(second.add(2).cast()),
                    1,
                )
            };
            // |w| times x with w's sign: x negated where w is negative (|x| <= 127, so the
            // negation cannot overflow; where w is 0 the product is 0 either way).
            let xv = _mm512_mask_sub_epi8(xv, _mm512_movepi8_mask(q), _mm512_setzero_si512(), xv);
            (_mm512_abs_epi8(q), xv)
        }
        BlockFormat::Q5_0 => {
            // SAFETY: each block's 4 bytes of high bits after its scale, then 16 of nibbles.
            let (high, packed) = unsafe {
                let high = u64::from(std::ptr::read_unaligned(first.add(2).cast::<u32>()))
                    | u64::from(std::ptr::read_unaligned(second.add(2).cast::<u32>())) << 32;
                let low = _mm256_set_m128i(
                    _mm_loadu_si128(second.add(6).cast()),
                    _mm_loadu_si128(first.add(6).cast()),
                );
                (high, low)
            };
            // Byte i of each 32: low nibbles are values 0-15, high nibbles 16-31.
            let packed = _mm512_castsi256_si512(packed);
            let lanes = _mm512_set_epi64(7, 6, 3, 2, 5, 4, 1, 0);
            let both = _mm512_permutexvar_epi64(
                lanes,
                _mm512_inserti64x4(
                    packed,
                    _mm512_castsi512_si256(_mm512_srli_epi16(packed, 4)),
                    1,
                ),
            );
            let nibbles = _mm512_and_si512(both, _mm512_set1_epi8(0x0F));
            // The fifth bits straight from the 64 high bits, one mask bit per value.
            let weights = _mm512_mask_add_epi8(nibbles, high, nibbles, _mm512_set1_epi8(0x10));
            (weights, xv)
        }
        _ => {
            // SAFETY: whole blocks (above).
            let ((w0, _), (w1, _)) = unsafe { (weights(format, first), weights(format, second)) };
            (_mm512_inserti64x4(_mm512_castsi256_si512(w0), w1, 1), xv)
        }
    }
}

/// Two consecutive blocks' factors at once (`avx2::factors` for a pair): lanes 0 and 2 what
/// each block's integer sums are multiplied by, lanes 1 and 3 each block's offset. The two
/// blocks' f16 scale and minimum in one conversion, the two activation factors in one load:
/// building them per block, then spreading each into its half, was a third of the kernel.
///
/// # Safety
/// `block0` and `block1` point at whole blocks of `format`, `factor` at two consecutive
/// activation factors.
#[inline]
#[allow(unsafe_code)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn pair_factors(
    format: BlockFormat,
    block0: *const u8,
    block1: *const u8,
    factor: *const [f32; 2],
) -> __m128 {
    // SAFETY: each block's first four bytes, and the two factors' sixteen (see above).
    let (halves, factors) = unsafe {
        let second = std::ptr::read_unaligned(block1.cast::<i32>());
        (
            _mm_cvtph_ps(_mm_insert_epi32(_mm_loadu_si32(block0), second, 1)),
            _mm_loadu_ps(factor.cast::<f32>()),
        )
    };
    let weights = if matches!(format, BlockFormat::Q4_0 | BlockFormat::Q5_0) {
        _mm_moveldup_ps(halves)
    } else {
        halves
    };
    _mm_mul_ps(weights, factors)
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
    // Lanes 0-7 take a pair's lane 0 (the first block's factor), lanes 8-15 its lane 2.
    let spread = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
    for pair_index in 0..blocks / 2 {
        let (b, a) = (2 * pair_index, first + 2 * pair_index);
        // SAFETY: blocks `b` and `b + 1 < blocks` lie in `row`; activation blocks `a` and
        // `a + 1` in `values[a * 32..][..64]` and `factors` (both bounds asserted above).
        let (weights, xv, factors) = unsafe {
            let (block0, block1) = (w.add(b * size), w.add((b + 1) * size));
            let xv = _mm512_loadu_si512(x.add(a * BLOCK).cast());
            let (weights, xv) = pair(format, block0, block1, xv);
            (weights, xv, pair_factors(format, block0, block1, f.add(a)))
        };
        let products = _mm512_dpbusd_epi32(_mm512_setzero_si512(), weights, xv);
        let scales = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(factors));
        sums = _mm512_fmadd_ps(_mm512_cvtepi32_ps(products), scales, sums);
        offsets = _mm_add_ps(offsets, factors);
    }
    // Lanes 1 and 3 hold the pairs' offsets; `offset` reads lane 1.
    let offsets = _mm_add_ps(offsets, _mm_movehl_ps(offsets, offsets));
    let mut total = _mm512_reduce_add_ps(sums) + offset(format, offsets);
    if blocks % 2 == 1 {
        let b = blocks - 1;
        // SAFETY: the AVX2 kernel runs here (`available()` implies its features); it
        // checks its own bounds on the last block.
        total += unsafe { super::avx2::dot(format, &row[b * size..], activations, first + b, 1) };
    }
    total
}
