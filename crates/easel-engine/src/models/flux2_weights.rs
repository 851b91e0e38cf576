//! Where the FLUX.2 transformer's layers come from: full-precision tensors (the diffusers
//! folder, or BFL's single file, through a `VarBuilder`) or a GGUF quantization, whose
//! quantized matrices stay quantized and multiply as they are.

use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{RmsNorm, VarBuilder};

use crate::ops::{linear_no_bias, rms_norm, Linear};

use super::flux2_gguf::GgufTransformer;
use super::joint_attention::quantized_forward;

/// The transformer's weights, asked for by their diffusers names.
pub enum Flux2Weights<'a> {
    /// Full-precision tensors in the dtype they are held in (16-bit weights on the CPU are
    /// widened by Easel's linear layers as they multiply).
    Full(VarBuilder<'a>),
    /// A GGUF file; its unquantized tensors are converted to `dtype`.
    Gguf {
        /// The opened file.
        file: &'a GgufTransformer,
        /// The job's dtype.
        dtype: DType,
    },
}

impl Flux2Weights<'_> {
    /// The bias-free linear layer `name` (a `[out_dim, in_dim]` weight).
    pub fn linear(&self, in_dim: usize, out_dim: usize, name: &str) -> Result<Flux2Linear> {
        match self {
            Flux2Weights::Full(vb) => Ok(Flux2Linear::Full(linear_no_bias(
                in_dim,
                out_dim,
                vb.pp(name),
            )?)),
            Flux2Weights::Gguf { file, dtype } => {
                let weight = file.tensor(&format!("{name}.weight"))?;
                if weight.shape().dims() != [out_dim, in_dim] {
                    candle_core::bail!(
                        "{name}.weight in {} is {:?}, the config asks for [{out_dim}, {in_dim}]",
                        file.path().display(),
                        weight.shape().dims()
                    );
                }
                if is_float(weight.dtype()) {
                    let weight = weight.dequantize(&weight.device())?.to_dtype(*dtype)?;
                    return Ok(Flux2Linear::Full(Linear::new(weight, None)));
                }
                Ok(Flux2Linear::Quantized(QMatMul::from_qtensor(weight)?))
            }
        }
    }

    /// The RMS norm `name` over `dim` values.
    pub fn rms_norm(&self, dim: usize, eps: f64, name: &str) -> Result<RmsNorm> {
        match self {
            Flux2Weights::Full(vb) => rms_norm(dim, eps, vb.pp(name)),
            Flux2Weights::Gguf { file, dtype } => {
                let weight = file.tensor(&format!("{name}.weight"))?;
                let weight = weight.dequantize(&weight.device())?.to_dtype(*dtype)?;
                if weight.dims() != [dim] {
                    candle_core::bail!(
                        "{name}.weight in {} is {:?}, the config asks for [{dim}]",
                        file.path().display(),
                        weight.dims()
                    );
                }
                Ok(RmsNorm::new(weight, eps))
            }
        }
    }
}

fn is_float(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

/// A bias-free linear layer, full precision or quantized.
#[derive(Debug, Clone)]
pub enum Flux2Linear {
    /// `x W^T` in the job's dtype.
    Full(Linear),
    /// `x W^T` with `W` in GGUF blocks (f32 activations on GPUs, as candle's kernels want).
    Quantized(QMatMul),
}

impl Module for Flux2Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Flux2Linear::Full(linear) => linear.forward(xs),
            Flux2Linear::Quantized(matmul) => quantized_forward(matmul, xs),
        }
    }
}
