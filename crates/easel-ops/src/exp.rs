//! `e^x` and `2^x` in operations every SIMD width has, so that the loops calling them
//! vectorise: the softmax's exponentials, GELU's and SiLU's.

/// 1.5 * 2^23: adding and subtracting it rounds to the nearest integer.
const ROUND: f32 = 12_582_912.0;
/// The bits of `ROUND + n` are `ROUND`'s plus `n`.
const ROUND_BITS: u32 = 0x4B40_0000;

/// `2^n` for `rounded` = `ROUND + n`, built from its bits: a float-to-integer cast would
/// saturate, lane by lane.
#[inline(always)]
fn two_to_the(rounded: f32) -> f32 {
    f32::from_bits(rounded.to_bits().wrapping_sub(ROUND_BITS - 127) << 23)
}

/// `e^x` to about 2 ulp, in operations every SIMD width has (so loops over it vectorise):
/// `x = n ln 2 + r` with `|r| <= ln 2 / 2`, `e^r` by its degree-6 Taylor-like polynomial
/// (Cephes' `expf` coefficients, fused multiply-adds: the CPUs the vectorised variants are
/// compiled for all have them), `2^n` built in the exponent bits from the integer rounding left
/// in the mantissa. Below -87.3 it stays at e^-87.3 (about 1e-38), which a softmax cannot tell
/// from 0.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.3);
    let rounded = x.mul_add(LOG2_E, ROUND);
    let n = rounded - ROUND;
    let r = (-n).mul_add(LN2_LOW, (-n).mul_add(LN2_HIGH, x));
    let r2 = r * r;
    let p = 1.987_569_1e-4f32
        .mul_add(r, 1.398_199_9e-3)
        .mul_add(r, 8.333_452e-3)
        .mul_add(r, 4.166_579_6e-2)
        .mul_add(r, 1.666_666_5e-1)
        .mul_add(r, 0.5);
    let e_r = p.mul_add(r2, r) + 1.0;
    e_r * two_to_the(rounded)
}

/// `2^x` to about 2 ulp, cheaper than `exp` where the caller can take its values in base 2 (a
/// softmax whose scores were scaled by `log2 e`): `x = n + f` with `n` the nearest integer,
/// `2^f` for `|f| <= 1/2` by a degree-5 polynomial fitted for relative error (fused
/// multiply-adds), `2^n` built in the exponent bits. Below -126 it stays at 2^-126 (about
/// 1e-38), which a softmax cannot tell from 0; the caller keeps `x` at most 0 or so (its
/// softmax subtracts the maximum), where nothing overflows.
#[inline(always)]
pub(crate) fn exp2(x: f32) -> f32 {
    let x = x.max(-126.0);
    let rounded = x + ROUND;
    let n = rounded - ROUND;
    let f = x - n;
    let p = 1.327_630_4e-3f32
        .mul_add(f, 9.675_491e-3)
        .mul_add(f, 5.550_713_5e-2)
        .mul_add(f, 2.402_212e-1)
        .mul_add(f, 6.931_469_4e-1)
        .mul_add(f, 1.000_000_1);
    p * two_to_the(rounded)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest relative difference between `fast` and `reference` over 200,000 points
    /// evenly spread from `from` to `to`.
    fn worst_relative(fast: fn(f32) -> f32, reference: fn(f32) -> f32, from: f32, to: f32) -> f32 {
        (0..200_000)
            .map(|i| from + i as f32 * (to - from) / 200_000.0)
            .map(|x| (fast(x) - reference(x)).abs() / reference(x))
            .fold(0f32, f32::max)
    }

    #[test]
    fn the_fast_exp_is_within_a_few_ulp_of_the_standard_one() {
        let worst = worst_relative(exp, f32::exp, -87.0, 20.0);
        assert!(worst < 5e-7, "{worst}");
        assert!(exp(-200.0) < 2e-38);
    }

    #[test]
    fn the_fast_exp2_is_within_a_few_ulp_of_the_standard_one() {
        let worst = worst_relative(exp2, f32::exp2, -125.0, 8.0);
        assert!(worst < 5e-7, "{worst}");
        assert!((exp2(0.0) - 1.0).abs() < 2e-7);
        assert!(exp2(-1000.0) <= 1.2e-38 && exp2(f32::NEG_INFINITY) <= 1.2e-38);
    }
}
