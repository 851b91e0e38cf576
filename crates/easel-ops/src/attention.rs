//! Attention without its score matrix: `softmax(q kᵀ · scale) v` computed a block of query
//! rows at a time, on the CPU in f32. Each block's scores (`rows x keys`) live in a small
//! reused buffer, the softmax uses a vectorisable `exp`, and both products are `gemm` calls,
//! with the blocks of every head spread over the threads. The materialised form holds
//! `heads x queries x keys` scores and again as many probabilities (two 3 GB matrices for
//! FLUX.2 at 512x512 with four references).
//!
//! On Metal, candle's fused kernel runs it (heads zero-padded to a width it takes); other
//! devices and dtypes take the materialised form through candle.

use std::cell::RefCell;

use super::f32_slice;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Query rows per block.
const BLOCK_ROWS: usize = 64;

thread_local! {
    /// One block's scores, kept between calls so that no step pays for fresh pages.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Frees this thread's score buffer.
pub(crate) fn release_scores() {
    SCORES.with(|scores| *scores.borrow_mut() = Vec::new());
}

/// `softmax(q kᵀ · scale) v` for `q` `[B, H, Lq, D]`, `k` and `v` `[B, H, Lk, D]`: `[B, H, Lq, D]`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let own_kernel = q.device().is_cpu()
        && [q, k, v]
            .iter()
            .all(|t| t.dtype() == DType::F32 && t.rank() == 4);
    if own_kernel {
        return q.contiguous()?.apply_op3_no_bwd(
            &k.contiguous()?,
            &v.contiguous()?,
            &AttentionOp { scale },
        );
    }
    if q.device().is_metal() {
        return metal_attention(q, k, v, scale);
    }
    let scores = (q.matmul(&k.t()?)? * scale)?;
    candle_nn::ops::softmax_last_dim(&scores)?.matmul(v)
}

/// Head widths candle's fused Metal attention (`candle_nn::ops::sdpa`) takes.
const METAL_HEAD_DIMS: [usize; 7] = [32, 64, 72, 80, 96, 128, 256];

/// The fused kernel's head width for heads of `width`: the smallest it takes that holds them.
fn metal_head_dim(width: usize) -> Option<usize> {
    METAL_HEAD_DIMS.iter().copied().find(|&dim| dim >= width)
}

/// On Metal, candle's fused attention, the heads zero-padded to a width it takes (exact: the
/// zeros add nothing to `q kᵀ`, and the output's padding columns are cut off); wider heads
/// take the materialised form.
fn metal_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let width = q.dim(candle_core::D::Minus1)?;
    let Some(padded) = metal_head_dim(width) else {
        let scores = (q.matmul(&k.t()?)? * scale)?;
        return candle_nn::ops::softmax_last_dim(&scores)?.matmul(v);
    };
    let [q, k, v] = [q, k, v].map(|t| pad_heads(t, padded));
    let out = candle_nn::ops::sdpa(&q?, &k?, &v?, None, false, scale as f32, 1.0)?;
    out.narrow(candle_core::D::Minus1, 0, width)
}

/// `t` `[.., width]` with zero columns up to `padded`, contiguous.
fn pad_heads(t: &Tensor, padded: usize) -> Result<Tensor> {
    let width = t.dim(candle_core::D::Minus1)?;
    if width == padded {
        return t.contiguous();
    }
    t.pad_with_zeros(candle_core::D::Minus1, 0, padded - width)?
        .contiguous()
}

struct AttentionOp {
    scale: f64,
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "easel-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_layout: &Layout,
        k: &CpuStorage,
        k_layout: &Layout,
        v: &CpuStorage,
        v_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (batch, heads, queries, width) = q_layout.shape().dims4()?;
        let (kb, kh, keys, kd) = k_layout.shape().dims4()?;
        if (kb, kh, kd) != (batch, heads, width) || v_layout.shape().dims4()? != (kb, kh, keys, kd)
        {
            candle_core::bail!(
                "attention: q {:?}, k {:?}, v {:?} do not fit",
                q_layout.shape(),
                k_layout.shape(),
                v_layout.shape()
            );
        }
        let q = f32_slice("attention", q, q_layout)?;
        let k = f32_slice("attention", k, k_layout)?;
        let v = f32_slice("attention", v, v_layout)?;
        let scale = self.scale as f32;
        let mut out = vec![0f32; batch * heads * queries * width];
        if width > 0 && queries > 0 {
            out.par_chunks_mut(queries * width)
                .enumerate()
                .for_each(|(head, head_out)| {
                    let head_q = &q[head * queries * width..(head + 1) * queries * width];
                    let head_k = &k[head * keys * width..(head + 1) * keys * width];
                    let head_v = &v[head * keys * width..(head + 1) * keys * width];
                    head_out
                        .par_chunks_mut(BLOCK_ROWS * width)
                        .enumerate()
                        .for_each(|(block, rows_out)| {
                            let first = block * BLOCK_ROWS * width;
                            let rows_q = &head_q[first..first + rows_out.len()];
                            attend_block(rows_q, head_k, head_v, width, scale, rows_out);
                        });
                });
        }
        Ok((
            CpuStorage::F32(out),
            Shape::from((batch, heads, queries, width)),
        ))
    }
}

/// One block of query rows (`rows_q`, `[rows, width]`) against every key: its output rows.
fn attend_block(
    rows_q: &[f32],
    k: &[f32],
    v: &[f32],
    width: usize,
    scale: f32,
    rows_out: &mut [f32],
) {
    let rows = rows_q.len() / width;
    let keys = k.len() / width;
    SCORES.with(|scores| {
        let mut scores = scores.borrow_mut();
        if scores.len() < rows * keys {
            scores.resize(rows * keys, 0.0);
        }
        let scores = &mut scores[..rows * keys];
        // The one unsafe call: gemm takes raw pointers and strides.
        // SAFETY: `scores` is `[rows, keys]`, `rows_q` `[rows, width]`, `k` `[keys, width]`
        // read transposed (row stride 1, column stride `width`), `v` `[keys, width]` and
        // `rows_out` `[rows, width]`, all row-major and in bounds.
        #[allow(unsafe_code)]
        unsafe {
            gemm::gemm(
                rows,
                keys,
                width,
                scores.as_mut_ptr(),
                1,
                keys as isize,
                false,
                rows_q.as_ptr(),
                1,
                width as isize,
                k.as_ptr(),
                width as isize,
                1,
                0.0,
                scale,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        let mut inverse_sums = [0f32; BLOCK_ROWS];
        let inverse_sums = &mut inverse_sums[..rows];
        exp_rows(scores, keys, inverse_sums);
        #[allow(unsafe_code)]
        // SAFETY: as above.
        unsafe {
            gemm::gemm(
                rows,
                width,
                keys,
                rows_out.as_mut_ptr(),
                1,
                width as isize,
                false,
                scores.as_ptr(),
                1,
                keys as isize,
                v.as_ptr(),
                1,
                width as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        scale_rows(rows_out, width, inverse_sums);
    });
}

crate::vectorized! {
    /// Every `keys`-long row of `scores` replaced by `exp(x - max)`, and `1 / sum` of each
    /// row in `inverse_sums`: the softmax without its division, which is applied to the
    /// product's rows instead (`width` values a row rather than `keys`).
    fn exp_rows(scores: &mut [f32], keys: usize, inverse_sums: &mut [f32]) = exp_rows_generic
}

#[inline(always)]
fn exp_rows_generic(scores: &mut [f32], keys: usize, inverse_sums: &mut [f32]) {
    for (row, inverse) in scores.chunks_mut(keys).zip(inverse_sums) {
        *inverse = 1.0 / exp_in_place(row);
    }
}

crate::vectorized! {
    /// Each `width`-long row of `rows` multiplied by its factor.
    fn scale_rows(rows: &mut [f32], width: usize, factors: &[f32]) = scale_rows_generic
}

#[inline(always)]
fn scale_rows_generic(rows: &mut [f32], width: usize, factors: &[f32]) {
    for (row, &factor) in rows.chunks_mut(width).zip(factors) {
        for value in row {
            *value *= factor;
        }
    }
}

/// Lanes of the partial maxima and sums: reductions kept in this many independent
/// accumulators vectorise (a single running sum must be added in order).
const LANES: usize = 16;

/// `row` replaced by `exp(x - max)` in two vectorised passes (the maximum; the exponentials
/// with their sum), returning the sum.
#[inline(always)]
fn exp_in_place(row: &mut [f32]) -> f32 {
    let mut maxima = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (max, &value) in maxima.iter_mut().zip(chunk) {
            *max = if value > *max { value } else { *max };
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&maxima)
        .fold(
            f32::NEG_INFINITY,
            |max, &value| if value > max { value } else { max },
        );
    let mut sums = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (sum, value) in sums.iter_mut().zip(chunk) {
            *value = exp(*value - max);
            *sum += *value;
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for value in chunks.into_remainder() {
        *value = exp(*value - max);
        sum += *value;
    }
    sum
}

/// `e^x` to about 2 ulp, in operations every SIMD width has (so loops over it vectorise):
/// `x = n ln 2 + r` with `|r| <= ln 2 / 2`, `e^r` by its degree-6 Taylor-like polynomial
/// (Cephes' `expf` coefficients), `2^n` built in the exponent bits from the integer
/// rounding left in the mantissa. Below -87.3 it stays at
/// e^-87.3 (about 1e-38), which a softmax cannot tell from 0.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    // The bits of `ROUND + n` are `ROUND`'s plus `n`.
    const ROUND_BITS: u32 = 0x4B40_0000;
    let x = x.clamp(-87.3, 88.3);
    let rounded = x * LOG2_E + ROUND;
    let n = rounded - ROUND;
    let r = x - n * LN2_HIGH - n * LN2_LOW;
    let r2 = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e_r = p * r2 + r + 1.0;
    // 2^n from the rounded sum's bits: a float-to-integer cast would saturate, lane by lane.
    let two_n = f32::from_bits(rounded.to_bits().wrapping_sub(ROUND_BITS - 127) << 23);
    e_r * two_n
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_fast_exp_is_within_a_few_ulp_of_the_standard_one() {
        let mut worst = 0f32;
        for i in 0..200_000 {
            let x = -87.0 + i as f32 * (87.0 + 20.0) / 200_000.0;
            let relative = (exp(x) - x.exp()).abs() / x.exp();
            worst = worst.max(relative);
        }
        assert!(worst < 5e-7, "{worst}");
        assert!(exp(-200.0) < 2e-38);
    }

    #[test]
    fn heads_zero_padded_for_the_metal_kernel_give_the_same_attention() {
        // What the Metal path computes, checked here with the CPU kernel: SD 1.5's 40-wide
        // heads padded to 64, the scale of the true width kept.
        assert_eq!(metal_head_dim(40), Some(64));
        assert_eq!(metal_head_dim(64), Some(64));
        assert_eq!(metal_head_dim(160), Some(256));
        assert_eq!(metal_head_dim(300), None);
        let device = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (1, 2, 37, 40), &device).expect("q");
        let k = Tensor::randn(0f32, 1.0, (1, 2, 23, 40), &device).expect("k");
        let v = Tensor::randn(0f32, 1.0, (1, 2, 23, 40), &device).expect("v");
        let scale = 1.0 / 40f64.sqrt();
        let plain = attention(&q, &k, &v, scale).expect("plain");
        let [pq, pk, pv] = [&q, &k, &v].map(|t| pad_heads(t, 64).expect("pad"));
        let padded = attention(&pq, &pk, &pv, scale)
            .and_then(|out| out.narrow(candle_core::D::Minus1, 0, 40))
            .expect("padded");
        let difference = (plain - padded)
            .and_then(|d| d.abs())
            .and_then(|d| d.max_all())
            .and_then(|d| d.to_scalar::<f32>())
            .expect("difference");
        assert!(difference < 1e-6, "{difference}");
    }

    #[test]
    fn attention_matches_the_materialised_form_on_odd_shapes() {
        let device = Device::Cpu;
        for (batch, heads, queries, keys, width) in [
            (1, 1, 5, 7, 3),
            (2, 3, 37, 53, 24),
            (1, 2, 130, 129, 64),
            (1, 1, 1, 300, 8),
        ] {
            let q = Tensor::randn(0f32, 1.0, (batch, heads, queries, width), &device).expect("q");
            let k = Tensor::randn(0f32, 1.0, (batch, heads, keys, width), &device).expect("k");
            let v = Tensor::randn(0f32, 1.0, (batch, heads, keys, width), &device).expect("v");
            let scale = 1.0 / (width as f64).sqrt();
            let ours = attention(&q, &k, &v, scale).expect("ours");
            let reference = (q.matmul(&k.t().expect("t")).expect("scores") * scale)
                .and_then(|s| candle_nn::ops::softmax_last_dim(&s))
                .and_then(|p| p.matmul(&v))
                .expect("reference");
            let difference = (ours - reference)
                .and_then(|d| d.abs())
                .and_then(|d| d.max_all())
                .and_then(|d| d.to_scalar::<f32>())
                .expect("difference");
            assert!(
                difference < 1e-5,
                "{batch}x{heads}x{queries}x{keys}x{width}: {difference}"
            );
        }
    }
}
