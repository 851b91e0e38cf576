//! A linear layer whose weights may be held in f16 or bf16 while the CPU computes in f32: the
//! weights are widened a block of rows at a time on the thread that multiplies them, the
//! products are written straight into the output (never read first), and the bias is added
//! after, rows over the threads. Other devices and dtypes use candle's `Linear`.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Module, Result, Shape, Tensor};
use candle_nn::VarBuilder;

use crate::f32_slice;
use crate::weights::{for_each_f32_rows, is_cpu_weights_dtype};

/// `y = x Wᵀ + b` over the last dimension of `x`: weights `[out, in]`, bias `[out]`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// A layer over these weights (`bias` in the compute dtype, if any).
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// The weights, `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::op_times::timed(
            || format!("linear {:?} -> {}", x.dims(), self.weight.dims()[0]),
            || self.forward_untimed(x),
        )
    }
}

impl Linear {
    /// `x Wᵀ + b + residual`, the residual added in place over the threads (candle's `+`
    /// makes a third tensor on one thread).
    pub fn forward_plus(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let out = self.forward(x)?;
        crate::addend::add_onto(out, crate::Addend::Residual(residual))
    }

    fn forward_untimed(&self, x: &Tensor) -> Result<Tensor> {
        let own_kernel = x.device().is_cpu()
            && x.dtype() == DType::F32
            && is_cpu_weights_dtype(self.weight.dtype())
            && self.bias.as_ref().is_none_or(|b| b.dtype() == DType::F32);
        if !own_kernel {
            let weight = self.weight.to_dtype(x.dtype())?;
            return candle_nn::Linear::new(weight, self.bias.clone()).forward(x);
        }
        let x = x.contiguous()?;
        let weight = self.weight.contiguous()?;
        match &self.bias {
            Some(bias) => x.apply_op3_no_bwd(&weight, &bias.contiguous()?, &LinearOp),
            None => x.apply_op2_no_bwd(&weight, &LinearOp),
        }
    }
}

/// `candle_nn::linear`'s loader (same names, shapes and initialisation): the weights at `vb`'s
/// dtype, the bias at the compute dtype (`weights::compute_dtype`).
pub fn linear(in_features: usize, out_features: usize, vb: VarBuilder) -> Result<Linear> {
    let weight = load_weight(in_features, out_features, &vb)?;
    let bias = crate::weights::load_bias(in_features, out_features, &vb)?;
    Ok(Linear::new(weight, Some(bias)))
}

/// `linear` without a bias.
pub fn linear_no_bias(in_features: usize, out_features: usize, vb: VarBuilder) -> Result<Linear> {
    Ok(Linear::new(
        load_weight(in_features, out_features, &vb)?,
        None,
    ))
}

fn load_weight(in_features: usize, out_features: usize, vb: &VarBuilder) -> Result<Tensor> {
    vb.get_with_hints(
        (out_features, in_features),
        "weight",
        candle_nn::init::DEFAULT_KAIMING_NORMAL,
    )
}

struct LinearOp;

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "easel-linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        linear_cpu(x, x_layout, (weight, weight_layout), None)
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "easel-linear"
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
        linear_cpu(
            x,
            x_layout,
            (weight, weight_layout),
            Some((bias, bias_layout)),
        )
    }
}

/// `x · weightᵀ (+ bias)` on the CPU: the product written straight into the output (never read
/// first, so its pages are first touched by the threads that multiply), then the bias added
/// row by row over the threads.
fn linear_cpu(
    x: &CpuStorage,
    x_layout: &Layout,
    (weight, weight_layout): (&CpuStorage, &Layout),
    bias: Option<(&CpuStorage, &Layout)>,
) -> Result<(CpuStorage, Shape)> {
    let (out_features, in_features) = weight_layout.shape().dims2()?;
    let x_dims = x_layout.shape().dims();
    let bias_fits = match bias {
        Some((_, layout)) => layout.shape().dims1()? == out_features,
        None => true,
    };
    if x_dims.last() != Some(&in_features) || !bias_fits {
        candle_core::bail!(
            "linear: input {:?}, weight {:?}, bias {:?} do not fit",
            x_layout.shape(),
            weight_layout.shape(),
            bias.map(|(_, layout)| layout.shape())
        );
    }
    let x = f32_slice("linear", x, x_layout)?;
    let bias = bias
        .map(|(bias, layout)| f32_slice("linear", bias, layout))
        .transpose()?;
    let rows: usize = x_dims[..x_dims.len() - 1].iter().product();
    let len = rows * out_features;
    let mut out = if rows > 0 && in_features > 0 && out_features > 0 {
        product_into_new(x, rows, (weight, weight_layout), in_features, out_features)?
    } else {
        vec![0f32; len]
    };
    if let Some(bias) = bias {
        add_bias_rows(&mut out, bias);
    }
    let mut dims = x_dims.to_vec();
    if let Some(last) = dims.last_mut() {
        *last = out_features;
    }
    Ok((CpuStorage::F32(out), Shape::from(dims)))
}

/// `x · weightᵀ` (`x` `[rows, in_features]`, every size non-zero) in a new buffer that only the
/// products write.
fn product_into_new(
    x: &[f32],
    rows: usize,
    (weight, weight_layout): (&CpuStorage, &Layout),
    in_features: usize,
    out_features: usize,
) -> Result<Vec<f32>> {
    let len = rows * out_features;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let out_at = out.as_mut_ptr() as usize;
    // `out[:, first..first + features] = x · blockᵀ` for `block` the weights of `features`
    // outputs from `first`.
    let product = |first: usize, block: &[f32], parallelism: gemm::Parallelism| {
        let features = block.len() / in_features;
        let out = out_at as *mut f32;
        // gemm takes raw pointers and strides.
        // SAFETY: `out` has capacity for `[rows, out_features]`, of which this product writes
        // (without reading: `read_dst` is false) columns `first..first + features` (no other
        // product does); `x` is `[rows, in_features]` and `block` `[features, in_features]`,
        // read transposed (row stride 1, column stride `in_features`); all row-major and in
        // bounds.
        #[allow(unsafe_code)]
        unsafe {
            gemm::gemm(
                rows,
                features,
                in_features,
                out.add(first),
                1,
                out_features as isize,
                false,
                x.as_ptr(),
                1,
                in_features as isize,
                block.as_ptr(),
                in_features as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
    };
    for_each_f32_rows("linear", weight, weight_layout, in_features, product)?;
    // SAFETY: the products above wrote every one of the `len` values: their blocks of output
    // features cover `0..out_features` (`for_each_f32_rows` hands out every row of the
    // weights) over all `rows`, and gemm writes its whole destination when it does not read it.
    #[allow(unsafe_code)]
    unsafe {
        out.set_len(len)
    };
    Ok(out)
}

/// Adds `bias` to every row of `out`, rows spread over the threads.
fn add_bias_rows(out: &mut [f32], bias: &[f32]) {
    use rayon::prelude::*;
    let rows_per_task = (1 << 16) / bias.len().max(1) + 1;
    out.par_chunks_mut(bias.len().max(1) * rows_per_task)
        .for_each(|rows| add_bias(rows, bias));
}

crate::vectorized! {
    /// `rows[i] += bias[i % bias.len()]` over whole rows.
    fn add_bias(rows: &mut [f32], bias: &[f32]) = add_bias_generic
}

#[inline(always)]
fn add_bias_generic(rows: &mut [f32], bias: &[f32]) {
    for row in rows.chunks_exact_mut(bias.len()) {
        for (value, &b) in row.iter_mut().zip(bias) {
            *value += b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::largest_difference;
    use candle_core::Device;

    #[test]
    fn linear_layers_match_candles_with_weights_held_in_each_precision() {
        let device = Device::Cpu;
        for (dims, in_features, out_features) in [
            (vec![3], 5, 7),
            (vec![2, 37], 24, 9),
            (vec![1, 2, 130], 64, 33),
        ] {
            let mut x_dims = dims.clone();
            x_dims.push(in_features);
            let x = Tensor::randn(0f32, 1.0, x_dims, &device).expect("x");
            let weight =
                Tensor::randn(0f32, 0.2, (out_features, in_features), &device).expect("weight");
            let bias = Tensor::randn(0f32, 1.0, out_features, &device).expect("bias");
            for held in [DType::F32, DType::F16, DType::BF16] {
                // The reference computes in f32 with the same rounded weights.
                let held_weight = weight.to_dtype(held).expect("held");
                let rounded = held_weight.to_dtype(DType::F32).expect("rounded");
                let reference = candle_nn::Linear::new(rounded, Some(bias.clone()))
                    .forward(&x)
                    .expect("candle's");
                let ours = Linear::new(held_weight.clone(), Some(bias.clone()))
                    .forward(&x)
                    .expect("ours");
                assert_eq!(ours.dims(), reference.dims());
                let difference = largest_difference(&ours, &reference);
                assert!(difference < 1e-5, "{dims:?} {held:?}: {difference}");
                let no_bias = Linear::new(held_weight, None).forward(&x).expect("no bias");
                let shifted = no_bias.broadcast_add(&bias).expect("shifted");
                assert!(
                    largest_difference(&shifted, &reference) < 1e-5,
                    "{held:?} without bias"
                );
            }
        }
    }
}
