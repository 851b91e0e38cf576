//! A linear layer whose weights may be held in f16 or bf16 while the CPU computes in f32: the
//! weights are widened a block of rows at a time on the thread that multiplies them, the
//! products are written straight into the output (never read first), and the bias is added
//! after, rows over the threads. Tokens may also be read or written as planes of a map
//! (`Arrangement::Planes`, `[B, C, H * W]`): the products take any strides, so a 1x1
//! projection between a map and its tokens needs no transposed copy. Other devices and dtypes
//! use candle's `Linear`.

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

/// How a sequence's tokens lie in a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrangement {
    /// `[.., tokens, features]`: each token's features side by side (what `forward` takes).
    Tokens,
    /// `[batch, features, tokens]`: each feature's plane of tokens side by side (an NCHW map
    /// with its height and width flattened).
    Planes,
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_arranged(x, Arrangement::Tokens, Arrangement::Tokens)
    }
}

impl Linear {
    /// `x Wᵀ + b + residual`, the residual added in place over the threads (candle's `+`
    /// makes a third tensor on one thread).
    pub fn forward_plus(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let out = self.forward(x)?;
        crate::addend::add_onto(out, crate::Addend::Residual(residual))
    }

    /// The layer on `x` arranged as `from`, its output arranged as `to` (`Planes` on either
    /// side: rank 3). On the CPU the products read and write those layouts in place.
    pub fn forward_arranged(
        &self,
        x: &Tensor,
        from: Arrangement,
        to: Arrangement,
    ) -> Result<Tensor> {
        crate::op_times::timed(
            || {
                let arranged = match (from, to) {
                    (Arrangement::Tokens, Arrangement::Tokens) => "",
                    (Arrangement::Planes, Arrangement::Tokens) => " planes to tokens",
                    (Arrangement::Tokens, Arrangement::Planes) => " tokens to planes",
                    (Arrangement::Planes, Arrangement::Planes) => " planes",
                };
                format!(
                    "linear{arranged} {:?} -> {}",
                    x.dims(),
                    self.weight.dims()[0]
                )
            },
            || self.forward_untimed(x, LinearOp { from, to }),
        )
    }

    /// `forward_arranged` plus `residual` (the output's shape), added in place.
    pub fn forward_arranged_plus(
        &self,
        x: &Tensor,
        from: Arrangement,
        to: Arrangement,
        residual: &Tensor,
    ) -> Result<Tensor> {
        let out = self.forward_arranged(x, from, to)?;
        crate::addend::add_onto(out, crate::Addend::Residual(residual))
    }

    fn forward_untimed(&self, x: &Tensor, op: LinearOp) -> Result<Tensor> {
        let own_kernel = x.device().is_cpu()
            && x.dtype() == DType::F32
            && is_cpu_weights_dtype(self.weight.dtype())
            && self.bias.as_ref().is_none_or(|b| b.dtype() == DType::F32);
        if !own_kernel {
            let weight = self.weight.to_dtype(x.dtype())?;
            let layer = candle_nn::Linear::new(weight, self.bias.clone());
            // Planes and tokens are each other's transpose.
            let rearranged = |t: &Tensor| t.transpose(1, 2)?.contiguous();
            let tokens = match op.from {
                Arrangement::Tokens => x.clone(),
                Arrangement::Planes => rearranged(x)?,
            };
            let out = layer.forward(&tokens)?;
            return match op.to {
                Arrangement::Tokens => Ok(out),
                Arrangement::Planes => rearranged(&out),
            };
        }
        let x = x.contiguous()?;
        let weight = self.weight.contiguous()?;
        match &self.bias {
            Some(bias) => x.apply_op3_no_bwd(&weight, &bias.contiguous()?, &op),
            None => x.apply_op2_no_bwd(&weight, &op),
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

/// A 1x1 convolution (`[out, in, 1, 1]` weights, loaded as `conv2d` loads them) as a linear
/// layer, for `forward_arranged` on the planes of a map.
pub fn linear_from_1x1_conv(
    in_features: usize,
    out_features: usize,
    vb: VarBuilder,
) -> Result<Linear> {
    let conv = crate::conv2d::conv2d(in_features, out_features, 1, Default::default(), vb)?;
    let weight = conv.weight().reshape((out_features, in_features))?;
    Ok(Linear::new(weight, conv.bias().cloned()))
}

/// The layer's product on the CPU, its input and output arranged as these say.
struct LinearOp {
    from: Arrangement,
    to: Arrangement,
}

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
        linear_cpu(self, x, x_layout, (weight, weight_layout), None)
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
            self,
            x,
            x_layout,
            (weight, weight_layout),
            Some((bias, bias_layout)),
        )
    }
}

/// `x · weightᵀ (+ bias)` on the CPU: the product written straight into the output (never read
/// first, so its pages are first touched by the threads that multiply), then the bias added
/// over the threads.
fn linear_cpu(
    op: &LinearOp,
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
    let shape = ProductShape::of(op, x_dims, in_features, out_features);
    let (Some(shape), true) = (shape, bias_fits) else {
        candle_core::bail!(
            "linear: input {:?} ({:?} to {:?}), weight {:?}, bias {:?} do not fit",
            x_layout.shape(),
            op.from,
            op.to,
            weight_layout.shape(),
            bias.map(|(_, layout)| layout.shape())
        );
    };
    let x = f32_slice("linear", x, x_layout)?;
    let bias = bias
        .map(|(bias, layout)| f32_slice("linear", bias, layout))
        .transpose()?;
    let len = shape.batches * shape.rows * out_features;
    let mut out = if len > 0 && in_features > 0 {
        product_into_new(x, &shape, (weight, weight_layout))?
    } else {
        crate::output::zeros(len)
    };
    if let Some(bias) = bias {
        match op.to {
            Arrangement::Tokens => add_bias_rows(&mut out, bias),
            Arrangement::Planes => add_bias_planes(&mut out, shape.rows, bias),
        }
    }
    Ok((CpuStorage::F32(out), Shape::from(shape.out_dims)))
}

/// One product's sizes and strides (in floats): `batches` sequences of `rows` tokens, each
/// `x` row `in_features` long and each output row `out_features`.
struct ProductShape {
    batches: usize,
    rows: usize,
    in_features: usize,
    out_features: usize,
    /// Between rows, features and sequences of the input.
    x_strides: [usize; 3],
    /// The same of the output.
    out_strides: [usize; 3],
    out_dims: Vec<usize>,
}

impl ProductShape {
    /// The product of `x` (`x_dims`) arranged as `op` says, or `None` where it does not fit.
    fn of(
        op: &LinearOp,
        x_dims: &[usize],
        in_features: usize,
        out_features: usize,
    ) -> Option<Self> {
        let (batches, rows) = match op.from {
            Arrangement::Tokens if x_dims.last() == Some(&in_features) => {
                let rows: usize = x_dims[..x_dims.len() - 1].iter().product();
                match op.to {
                    // One sequence of every row: a single product over them all.
                    Arrangement::Tokens => (1, rows),
                    Arrangement::Planes if x_dims.len() == 3 => (x_dims[0], x_dims[1]),
                    Arrangement::Planes => return None,
                }
            }
            Arrangement::Planes if x_dims.len() == 3 && x_dims[1] == in_features => {
                (x_dims[0], x_dims[2])
            }
            _ => return None,
        };
        let strides = |arrangement, features| match arrangement {
            Arrangement::Tokens => [features, 1, rows * features],
            Arrangement::Planes => [1, rows, rows * features],
        };
        let out_dims = match op.to {
            Arrangement::Tokens if op.from == Arrangement::Tokens => {
                let mut dims = x_dims.to_vec();
                *dims.last_mut()? = out_features;
                dims
            }
            Arrangement::Tokens => vec![batches, rows, out_features],
            Arrangement::Planes => vec![batches, out_features, rows],
        };
        Some(Self {
            batches,
            rows,
            in_features,
            out_features,
            x_strides: strides(op.from, in_features),
            out_strides: strides(op.to, out_features),
            out_dims,
        })
    }
}

/// `x · weightᵀ` (every size non-zero) in a new buffer that only the products write.
fn product_into_new(
    x: &[f32],
    shape: &ProductShape,
    (weight, weight_layout): (&CpuStorage, &Layout),
) -> Result<Vec<f32>> {
    let len = shape.batches * shape.rows * shape.out_features;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let out_at = out.as_mut_ptr() as usize;
    let [x_row, x_feature, x_batch] = shape.x_strides;
    let [out_row, out_feature, out_batch] = shape.out_strides;
    // Features `first..` of every row, `block` their weights' rows.
    let product = |first: usize, block: &[f32], parallelism: gemm::Parallelism| {
        let features = block.len() / shape.in_features;
        for batch in 0..shape.batches {
            // gemm takes raw pointers and strides.
            // SAFETY: `out` has room for `len` values, sequence `batch`'s features
            // `first..first + features` of every row lie inside it at these strides, and the
            // callers give each product its own features; `x` holds every sequence's rows at its
            // strides; `block` is `features` rows of `in_features` weights.
            #[allow(unsafe_code)]
            unsafe {
                gemm::gemm(
                    shape.rows,
                    features,
                    shape.in_features,
                    (out_at as *mut f32).add(batch * out_batch + first * out_feature),
                    out_feature as isize,
                    out_row as isize,
                    false,
                    x.as_ptr().add(batch * x_batch),
                    x_feature as isize,
                    x_row as isize,
                    block.as_ptr(),
                    shape.in_features as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
        }
    };
    let input_rows = shape.batches * shape.rows;
    for_each_f32_rows(
        "linear",
        weight,
        weight_layout,
        shape.in_features,
        input_rows,
        product,
    )?;
    // SAFETY: the products above wrote every one of the `len` values.
    #[allow(unsafe_code)]
    unsafe {
        out.set_len(len)
    };
    Ok(out)
}

/// Adds `bias[f]` to every value of each feature's plane of `rows` values, planes over the
/// threads.
fn add_bias_planes(out: &mut [f32], rows: usize, bias: &[f32]) {
    use rayon::prelude::*;
    out.par_chunks_mut(rows.max(1))
        .enumerate()
        .for_each(|(plane, values)| crate::conv2d::add_to_all(values, bias[plane % bias.len()]));
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
            // A few rows: the weights' rows split over the threads, in uneven blocks.
            (vec![2], 300, 1031),
            // Over a million weights: 16-bit ones are widened block by block, for a few rows
            // and for many.
            (vec![1, 5], 1030, 1020),
            (vec![1, 12], 1030, 1020),
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

    #[test]
    fn tokens_read_and_written_as_planes_match_transposed_copies() {
        let device = Device::Cpu;
        let (batch, tokens, in_features, out_features) = (2, 37, 24, 9);
        let planes = Tensor::randn(0f32, 1.0, (batch, in_features, tokens), &device).expect("x");
        let weight =
            Tensor::randn(0f32, 0.2, (out_features, in_features), &device).expect("weight");
        let bias = Tensor::randn(0f32, 1.0, out_features, &device).expect("bias");
        let transposed = |t: &Tensor| t.transpose(1, 2).and_then(|t| t.contiguous()).expect("t");
        for held in [DType::F32, DType::F16] {
            let held_weight = weight.to_dtype(held).expect("held");
            let rounded = held_weight.to_dtype(DType::F32).expect("rounded");
            let reference = candle_nn::Linear::new(rounded, Some(bias.clone()))
                .forward(&transposed(&planes))
                .expect("candle's");
            let layer = Linear::new(held_weight, Some(bias.clone()));
            let tokens_in = transposed(&planes);
            for (x, from, to, expected) in [
                (
                    &planes,
                    Arrangement::Planes,
                    Arrangement::Tokens,
                    reference.clone(),
                ),
                (
                    &planes,
                    Arrangement::Planes,
                    Arrangement::Planes,
                    transposed(&reference),
                ),
                (
                    &tokens_in,
                    Arrangement::Tokens,
                    Arrangement::Planes,
                    transposed(&reference),
                ),
            ] {
                let ours = layer.forward_arranged(x, from, to).expect("ours");
                assert_eq!(ours.dims(), expected.dims(), "{held:?} {from:?} to {to:?}");
                let difference = largest_difference(&ours, &expected);
                assert!(
                    difference < 1e-5,
                    "{held:?} {from:?} to {to:?}: {difference}"
                );
            }
        }
        // Planes whose channels are not the layer's input are refused.
        let wrong =
            Tensor::zeros((batch, in_features + 1, tokens), DType::F32, &device).expect("w");
        let layer = Linear::new(weight, Some(bias));
        assert!(layer
            .forward_arranged(&wrong, Arrangement::Planes, Arrangement::Tokens)
            .is_err());
    }
}
