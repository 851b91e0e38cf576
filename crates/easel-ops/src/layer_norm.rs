//! LayerNorm over the last dimension on the CPU: each row's mean and variance in two vectorised
//! passes, then `(x - mean) * inv_std * weight + bias` written in one, rows spread over the
//! threads. candle's fused layer norm takes one thread, and its unfused form (taken for an input
//! that isn't contiguous, such as a transformer's tokens read out of a map) about eight passes:
//! at SD 1.5's 512 px level 0 (8192 tokens of 320) 34 ms a call against this op's 2.
//!
//! Other devices and dtypes take candle's own layer norm (`layer_norm` decides).

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Module, Result, Shape, Tensor, D};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::f32_slice;

/// Rows a thread takes at once.
const ROWS_PER_TASK: usize = 32;
/// Lanes of the partial sums (independent accumulators vectorise).
const LANES: usize = 16;

/// A LayerNorm layer: `weight` and `bias` over the last dimension (at the compute dtype), `eps`.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Loads `weight` and `bias` as `candle_nn::layer_norm` does (same names and
    /// initialisation), at the compute dtype whatever the dtype the matrices are held in.
    pub fn load(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let dtype = crate::weights::compute_dtype(vb.device(), vb.dtype());
        let weight = vb.get_with_hints_dtype(dim, "weight", candle_nn::Init::Const(1.), dtype)?;
        let bias = vb.get_with_hints_dtype(dim, "bias", candle_nn::Init::Const(0.), dtype)?;
        Ok(Self { weight, bias, eps })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// candle's RMS norm over `dim` values with its `weight` (ones when `vb` makes new weights)
/// at the compute dtype: what it scales is f32 on the CPU whatever the weights are held in.
pub fn rms_norm(dim: usize, eps: f64, vb: VarBuilder) -> Result<candle_nn::RmsNorm> {
    let weight = vb.get_with_hints_dtype(
        dim,
        "weight",
        candle_nn::Init::Const(1.0),
        crate::weights::compute_dtype(vb.device(), vb.dtype()),
    )?;
    Ok(candle_nn::RmsNorm::new(weight, eps))
}

/// `(x - mean) / sqrt(variance + eps) * weight + bias` over `x`'s last dimension (`weight` and
/// `bias` as long as it).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    crate::op_times::timed(
        || format!("layer_norm {:?}", x.dims()),
        || layer_norm_untimed(x, weight, bias, eps),
    )
}

fn layer_norm_untimed(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let width = x.dim(D::Minus1)?;
    if weight.dims() != [width] || bias.dims() != [width] {
        candle_core::bail!(
            "layer_norm: weight {:?} and bias {:?} must be [{width}]",
            weight.dims(),
            bias.dims()
        )
    }
    let own_kernel = x.device().is_cpu()
        && [x, weight, bias].iter().all(|t| t.dtype() == DType::F32)
        && width > 0;
    if own_kernel {
        return x.contiguous()?.apply_op3_no_bwd(
            &weight.contiguous()?,
            &bias.contiguous()?,
            &LayerNormOp { eps: eps as f32 },
        );
    }
    candle_nn::ops::layer_norm(&x.contiguous()?, weight, bias, eps as f32)
}

/// LayerNorm without an affine map: `(x - mean) / sqrt(variance + eps)` over the last dimension.
pub fn layer_norm_plain(x: &Tensor, eps: f64) -> Result<Tensor> {
    let width = x.dim(D::Minus1)?;
    let ones = Tensor::ones(width, x.dtype(), x.device())?;
    let zeros = Tensor::zeros(width, x.dtype(), x.device())?;
    layer_norm(x, &ones, &zeros, eps)
}

struct LayerNormOp {
    eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "easel-layer-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice("layer_norm", x, x_layout)?;
        let weight = f32_slice("layer_norm", weight, weight_layout)?;
        let bias = f32_slice("layer_norm", bias, bias_layout)?;
        let width = weight.len();
        let mut out = crate::output::zeros(x.len());
        out.par_chunks_mut(ROWS_PER_TASK * width)
            .zip(x.par_chunks(ROWS_PER_TASK * width))
            .for_each(|(out, x)| normalize_rows(x, weight, bias, self.eps, out));
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }
}

crate::vectorized! {
    /// Each `weight.len()`-wide row of `x` normalised into `out`.
    fn normalize_rows(x: &[f32], weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) = normalize_rows_generic
}

#[inline(always)]
fn normalize_rows_generic(x: &[f32], weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) {
    let width = weight.len();
    for (row, out) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        let mean = sum(row, |v| v) / width as f32;
        let variance = sum(row, |v| (v - mean) * (v - mean)) / width as f32;
        let inv_std = 1.0 / (variance + eps).sqrt();
        for (((out, &v), &w), &b) in out.iter_mut().zip(row).zip(weight).zip(bias) {
            *out = (v - mean) * inv_std * w + b;
        }
    }
}

/// `Σ f(v)` over `row`, in `LANES` independent partial sums.
#[inline(always)]
fn sum(row: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut sums = [0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (sum, &v) in sums.iter_mut().zip(chunk) {
            *sum += f(v);
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    sums.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::largest_difference;
    use candle_core::Device;

    #[test]
    fn layer_norms_match_candles_on_odd_shapes() {
        let device = Device::Cpu;
        for (shape, transposed) in [
            ((1, 1, 7), false),
            ((2, 33, 17), false),
            ((3, 65, 320), false),
            // Tokens read out of a map: not contiguous.
            ((2, 19, 40), true),
        ] {
            let x = Tensor::randn(0.5f32, 2.0, shape, &device).expect("x");
            let x = if transposed {
                x.transpose(1, 2).expect("transposed")
            } else {
                x
            };
            let width = x.dim(D::Minus1).expect("width");
            let weight = Tensor::randn(1f32, 0.5, width, &device).expect("weight");
            let bias = Tensor::randn(0f32, 0.5, width, &device).expect("bias");
            let ours = layer_norm(&x, &weight, &bias, 1e-5).expect("ours");
            let reference = candle_nn::LayerNorm::new(weight, bias, 1e-5)
                .forward(&x)
                .expect("candle's");
            assert_eq!(ours.dims(), reference.dims());
            let difference = largest_difference(&ours, &reference);
            assert!(difference < 1e-5, "{shape:?}: {difference}");
        }
    }

    #[test]
    fn the_plain_layer_norm_has_no_affine_map() {
        let device = Device::Cpu;
        let x = Tensor::randn(0f32, 3.0, (4, 45), &device).expect("x");
        let ours = layer_norm_plain(&x, 1e-6).expect("ours");
        let reference = candle_nn::LayerNorm::new_no_bias(
            Tensor::ones(45, DType::F32, &device).expect("ones"),
            1e-6,
        )
        .forward(&x)
        .expect("candle's");
        assert!(largest_difference(&ours, &reference) < 1e-5);
    }
}
