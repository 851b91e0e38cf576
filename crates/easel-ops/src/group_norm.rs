//! GroupNorm and the SiLU that usually follows it, in two passes over the map on the CPU:
//! one (per batch and group, over the threads) for the statistics, one that writes
//! `act(x * scale + shift)` with `scale` and `shift` folded per batch and channel from the
//! statistics and the affine parameters. candle's GroupNorm takes about eight passes (an f32
//! copy, the mean, the centred copy, its square, the variance, the division, the scale, the
//! shift), and a SiLU one more.
//!
//! Other devices and dtypes take candle's own ops (`group_norm` decides).

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Storage, Tensor, D};
use rayon::prelude::*;

use super::f32_slice;

/// What follows the normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Nothing.
    Identity,
    /// `x * sigmoid(x)`.
    Silu,
}

/// A GroupNorm layer: per-channel `weight` and `bias`, `groups`, `eps`.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    /// Loads `weight` and `bias` as `candle_nn::group_norm` does (same names and initialisation).
    pub fn load(
        groups: usize,
        channels: usize,
        eps: f64,
        vb: candle_nn::VarBuilder,
    ) -> Result<Self> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            candle_core::bail!("GroupNorm: {channels} channels can't be split in {groups} groups")
        }
        let dtype = crate::weights::compute_dtype(vb.device(), vb.dtype());
        let weight =
            vb.get_with_hints_dtype(channels, "weight", candle_nn::Init::Const(1.), dtype)?;
        let bias = vb.get_with_hints_dtype(channels, "bias", candle_nn::Init::Const(0.), dtype)?;
        Ok(Self {
            weight,
            bias,
            groups,
            eps,
        })
    }

    /// The normalised `x`, then `activation`.
    pub fn forward(&self, x: &Tensor, activation: Activation) -> Result<Tensor> {
        crate::op_times::timed(
            || format!("group_norm {:?} {activation:?}", x.dims()),
            || {
                group_norm(
                    x,
                    &self.weight,
                    &self.bias,
                    self.groups,
                    self.eps,
                    activation,
                )
            },
        )
    }

    /// `x` normalised with statistics taken elsewhere (`[B, groups]` or `[B, groups, 1]`, as
    /// over the tiles of a map), then `activation`.
    pub fn forward_with(
        &self,
        x: &Tensor,
        mean: &Tensor,
        inv_std: &Tensor,
        activation: Activation,
    ) -> Result<Tensor> {
        normalize(x, mean, inv_std, &self.weight, &self.bias, activation)
    }

    /// Groups the channels are normalised in.
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// The epsilon added to each variance.
    pub fn eps(&self) -> f64 {
        self.eps
    }
}

/// GroupNorm of `x` `[B, C, ...]` over `groups` (`weight` and `bias` `[C]`), then `activation`.
pub fn group_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f64,
    activation: Activation,
) -> Result<Tensor> {
    let (mean, inv_std) = group_statistics(x, groups, eps)?;
    normalize(x, &mean, &inv_std, weight, bias, activation)
}

/// Per batch and group, the mean and `1 / sqrt(variance + eps)` of `x` `[B, C, ...]`: two
/// `[B, groups]` f32 tensors.
pub fn group_statistics(x: &Tensor, groups: usize, eps: f64) -> Result<(Tensor, Tensor)> {
    let dims = x.dims();
    if dims.len() < 2 || groups == 0 || !dims[1].is_multiple_of(groups) {
        candle_core::bail!("group_norm: {dims:?} can't be split into {groups} groups")
    }
    let batch = dims[0];
    if !(x.device().is_cpu() && x.dtype() == DType::F32) {
        // candle's two passes, in f32.
        let grouped = x.to_dtype(DType::F32)?.reshape((batch, groups, ()))?;
        let mean = grouped.mean_keepdim(D::Minus1)?;
        let centred = grouped.broadcast_sub(&mean)?;
        let variance = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let inv_std = (variance + eps)?.sqrt()?.recip()?;
        return Ok((mean.squeeze(2)?, inv_std.squeeze(2)?));
    }
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("group_norm: expected CPU storage")
    };
    let values = f32_slice("group_norm", cpu, layout)?;
    let per_group = values.len() / (batch * groups);
    let statistics: Vec<(f32, f32)> = values
        .par_chunks(per_group.max(1))
        // Two passes in f64, as exact as candle's and independent of the map's size.
        .map(|group| mean_and_inv_std(group, eps))
        .collect();
    let (mean, inv_std): (Vec<f32>, Vec<f32>) = statistics.into_iter().unzip();
    Ok((
        Tensor::from_vec(mean, (batch, groups), x.device())?,
        Tensor::from_vec(inv_std, (batch, groups), x.device())?,
    ))
}

/// `activation((x - mean) * inv_std * weight + bias)` for `x` `[B, C, ...]`, with `mean` and
/// `inv_std` `[B, groups]` (from `group_statistics`, or computed over several tiles) and
/// `weight` and `bias` `[C]`.
pub fn normalize(
    x: &Tensor,
    mean: &Tensor,
    inv_std: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    activation: Activation,
) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let (batch, channels) = (dims[0], dims[1]);
    let groups = mean.elem_count() / batch.max(1);
    if groups == 0 || !channels.is_multiple_of(groups) {
        candle_core::bail!("group_norm: {channels} channels and {groups} groups")
    }
    // Per batch and channel: x * scale + shift.
    let mean = mean.to_dtype(DType::F32)?.reshape((batch, groups, 1))?;
    let inv_std = inv_std.to_dtype(DType::F32)?.reshape((batch, groups, 1))?;
    let weight = weight
        .to_dtype(DType::F32)?
        .reshape((1, groups, channels / groups))?;
    let bias = bias
        .to_dtype(DType::F32)?
        .reshape((1, groups, channels / groups))?;
    let scale = inv_std.broadcast_mul(&weight)?;
    let shift = bias.broadcast_sub(&mean.broadcast_mul(&scale)?)?;
    let (scale, shift) = (
        scale.reshape((batch, channels))?,
        shift.reshape((batch, channels))?,
    );
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        let op = AffineOp {
            scale: scale.flatten_all()?.to_vec1()?,
            shift: shift.flatten_all()?.to_vec1()?,
            activation,
        };
        return x.contiguous()?.apply_op1_no_bwd(&op);
    }
    let mut broadcast = vec![batch, channels];
    broadcast.resize(dims.len(), 1);
    let out = x
        .to_dtype(DType::F32)?
        .broadcast_mul(&scale.reshape(broadcast.as_slice())?)?
        .broadcast_add(&shift.reshape(broadcast.as_slice())?)?;
    let out = match activation {
        Activation::Identity => out,
        Activation::Silu => candle_nn::ops::silu(&out)?,
    };
    out.to_dtype(x.dtype())
}

/// The per-channel affine map and activation of `normalize`, one pass on the CPU.
struct AffineOp {
    /// Per batch and channel.
    scale: Vec<f32>,
    shift: Vec<f32>,
    activation: Activation,
}

impl CustomOp1 for AffineOp {
    fn name(&self) -> &'static str {
        "easel-group-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let input = f32_slice("group_norm", storage, layout)?;
        let planes = self.scale.len();
        let plane = input.len() / planes.max(1);
        let mut out = crate::output::zeros(input.len());
        out.par_chunks_mut(plane.max(1))
            .zip(input.par_chunks(plane.max(1)))
            .enumerate()
            .for_each(|(index, (out, input))| {
                let (scale, shift) = (self.scale[index], self.shift[index]);
                affine(input, out, scale, shift, self.activation);
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

crate::vectorized! {
    /// `out = act(input * scale + shift)`, one vectorised loop.
    fn affine(input: &[f32], out: &mut [f32], scale: f32, shift: f32, activation: Activation) =
        affine_generic
}

#[inline(always)]
fn affine_generic(input: &[f32], out: &mut [f32], scale: f32, shift: f32, activation: Activation) {
    match activation {
        Activation::Identity => {
            for (o, &v) in out.iter_mut().zip(input) {
                *o = v * scale + shift;
            }
        }
        Activation::Silu => {
            for (o, &v) in out.iter_mut().zip(input) {
                let y = v * scale + shift;
                *o = y / (1.0 + crate::exp::exp(-y));
            }
        }
    }
}

/// f64 accumulators per sum: independent partial sums vectorise.
const LANES: usize = 8;

crate::vectorized! {
    /// Mean and `1 / sqrt(variance + eps)` of `group`, in two passes.
    fn mean_and_inv_std(group: &[f32], eps: f64) -> (f32, f32) = mean_and_inv_std_generic
}

#[inline(always)]
fn mean_and_inv_std_generic(group: &[f32], eps: f64) -> (f32, f32) {
    let count = group.len().max(1) as f64;
    let mean = lane_sum(group, f64::from) / count;
    let variance = lane_sum(group, |v| (f64::from(v) - mean).powi(2)) / count;
    (mean as f32, (1.0 / (variance + eps).sqrt()) as f32)
}

/// The sum of `term` over `values`, kept in `LANES` partial sums.
#[inline(always)]
fn lane_sum(values: &[f32], term: impl Fn(f32) -> f64) -> f64 {
    let mut sums = [0f64; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (sum, &value) in sums.iter_mut().zip(chunk) {
            *sum += term(value);
        }
    }
    sums.iter().sum::<f64>() + chunks.remainder().iter().map(|&v| term(v)).sum::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::Module;

    fn close(a: &Tensor, b: &Tensor) -> f32 {
        let diff = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
        let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        let diff: f32 = diff.max(0).unwrap().to_scalar().unwrap();
        let scale: f32 = scale.to_scalar().unwrap();
        diff / scale.max(1.0)
    }

    #[test]
    fn group_norm_and_silu_match_candle_on_odd_shapes() {
        let device = Device::Cpu;
        for (batch, channels, groups, height, width) in
            [(2, 12, 3, 5, 7), (1, 32, 32, 9, 1), (3, 64, 8, 13, 11)]
        {
            let x = (Tensor::randn(0f32, 3.0, (batch, channels, height, width), &device).unwrap()
                + 1.5)
                .unwrap();
            let weight = Tensor::randn(1f32, 0.5, channels, &device).unwrap();
            let bias = Tensor::randn(0f32, 0.5, channels, &device).unwrap();
            let reference =
                candle_nn::GroupNorm::new(weight.clone(), bias.clone(), channels, groups, 1e-5)
                    .unwrap()
                    .forward(&x)
                    .unwrap();
            let ours = group_norm(&x, &weight, &bias, groups, 1e-5, Activation::Identity).unwrap();
            assert!(
                close(&ours, &reference) < 1e-5,
                "{batch} {channels} {groups}"
            );
            let silu = group_norm(&x, &weight, &bias, groups, 1e-5, Activation::Silu).unwrap();
            let reference_silu = candle_nn::ops::silu(&reference).unwrap();
            assert!(
                close(&silu, &reference_silu) < 1e-5,
                "silu {batch} {channels}"
            );
            // Tokens `[B, C, L]` normalise the same as maps.
            let flat = x.flatten_from(2).unwrap();
            let ours_flat =
                group_norm(&flat, &weight, &bias, groups, 1e-5, Activation::Identity).unwrap();
            assert!(close(&ours_flat, &reference.flatten_from(2).unwrap()) < 1e-5);
        }
    }

    #[test]
    fn other_dtypes_take_candles_ops_with_the_same_result() {
        let device = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (1, 8, 4, 4), &device).unwrap();
        let weight = Tensor::randn(1f32, 0.5, 8, &device).unwrap();
        let bias = Tensor::randn(0f32, 0.5, 8, &device).unwrap();
        let ours = group_norm(&x, &weight, &bias, 4, 1e-6, Activation::Silu).unwrap();
        let f64_path = group_norm(
            &x.to_dtype(DType::F64).unwrap(),
            &weight,
            &bias,
            4,
            1e-6,
            Activation::Silu,
        )
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
        assert!(close(&ours, &f64_path) < 1e-5);
    }
}
