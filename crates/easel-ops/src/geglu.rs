//! GEGLU, the gate of the feed-forward in every Stable Diffusion transformer block:
//! `a * gelu(b)` where `[a, b]` are the two halves of the last dimension, with the exact (erf)
//! GELU diffusers uses. One pass on the CPU that writes only the output, with an `erf` that
//! vectorises; candle's form makes a contiguous copy of `b`, calls the C library's `erf` once
//! per element, and multiplies in a third pass.
//!
//! Other devices and dtypes take candle's ops.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::f32_slice;
use crate::exp::exp;

/// `a * gelu_erf(b)` for `[a, b]` the halves of `x`'s last dimension.
pub fn geglu(x: &Tensor) -> Result<Tensor> {
    crate::op_times::timed(|| format!("geglu {:?}", x.dims()), || geglu_untimed(x))
}

fn geglu_untimed(x: &Tensor) -> Result<Tensor> {
    let width = x.dim(D::Minus1)?;
    if !width.is_multiple_of(2) {
        candle_core::bail!("geglu: the last dimension ({width}) must be even")
    }
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return x.contiguous()?.apply_op1_no_bwd(&GegluOp);
    }
    let halves = x.chunk(2, D::Minus1)?;
    &halves[0] * halves[1].gelu_erf()?
}

struct GegluOp;

impl CustomOp1 for GegluOp {
    fn name(&self) -> &'static str {
        "easel-geglu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let input = f32_slice("geglu", storage, layout)?;
        let mut dims = layout.shape().dims().to_vec();
        let width = dims.last().copied().unwrap_or(0);
        let half = width / 2;
        if let Some(last) = dims.last_mut() {
            *last = half;
        }
        let mut out = crate::output::zeros(input.len() / 2);
        // Rows of several at a time, so that each task is worth a thread.
        let rows_per_task = (16_384 / half.max(1)).max(1);
        out.par_chunks_mut(half.max(1) * rows_per_task)
            .zip(input.par_chunks(width.max(1) * rows_per_task))
            .for_each(|(out, input)| gate_rows(input, out, half));
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

crate::vectorized! {
    /// `out` row by row: the first half of each `input` row times the GELU of its second.
    fn gate_rows(input: &[f32], out: &mut [f32], half: usize) = gate_rows_generic
}

#[inline(always)]
fn gate_rows_generic(input: &[f32], out: &mut [f32], half: usize) {
    for (out, row) in out.chunks_mut(half).zip(input.chunks(2 * half)) {
        let (a, b) = row.split_at(half);
        for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
            *o = a * gelu(b);
        }
    }
}

/// `x * (1 + erf(x / sqrt 2)) / 2`.
#[inline(always)]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `erf(x)` within 1.5e-7 (Abramowitz and Stegun 7.1.26), in operations every SIMD width has.
#[inline(always)]
fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152_1,
        1.061_405_4,
    ];
    let magnitude = x.abs();
    let t = 1.0 / (1.0 + P * magnitude);
    let polynomial = ((((A[4] * t + A[3]) * t + A[2]) * t + A[1]) * t + A[0]) * t;
    let value = 1.0 - polynomial * exp(-magnitude * magnitude);
    value.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn geglu_matches_candles_exact_gelu_form() {
        let device = Device::Cpu;
        for dims in [(2usize, 7usize, 10usize), (1, 300, 2560), (3, 1, 6)] {
            let x = (Tensor::randn(0f32, 2.0, dims, &device).unwrap() * 2.0).unwrap();
            let halves = x.chunk(2, D::Minus1).unwrap();
            let reference = (&halves[0] * halves[1].gelu_erf().unwrap()).unwrap();
            let ours = geglu(&x).unwrap();
            assert_eq!(ours.dims(), reference.dims());
            let diff: f32 = (ours - &reference)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(diff < 2e-5, "{dims:?}: {diff}");
        }
    }

    #[test]
    fn erf_is_within_the_approximations_bound() {
        for i in -240..=240 {
            let x = i as f32 / 80.0;
            let exact = series_erf(f64::from(x));
            assert!((f64::from(erf(x)) - exact).abs() < 3e-7, "{x}");
        }
        // Past 3, erf is 1 to within 2.3e-5 and the approximation must not leave that.
        for i in 240..=800 {
            let x = i as f32 / 80.0;
            assert!((1.0 - erf(x)) < 2.3e-5 && erf(-x) == -erf(x), "{x}");
        }
    }

    /// erf by its Taylor series, exact to about 1e-13 in f64 for |x| <= 3.
    fn series_erf(x: f64) -> f64 {
        // erf(x) = 2/sqrt(pi) * sum over n of (-1)^n x^(2n+1) / (n! (2n+1))
        let mut sum = 0.0;
        let mut term = x;
        for n in 0..200 {
            sum += term / (2 * n + 1) as f64;
            term *= -x * x / (n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }
}
