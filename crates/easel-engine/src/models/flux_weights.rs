//! Where the FLUX.1 transformer's layers come from: full-precision tensors through a
//! `VarBuilder` (BFL's single file), or a GGUF quantization (candle's quantized `VarBuilder`,
//! the same names), whose matrices stay quantized and multiply as they are.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::quantized_nn;
use candle_transformers::quantized_var_builder::VarBuilder as QuantizedVarBuilder;

use super::joint_attention::quantized_forward;
use crate::ops::{compute_dtype, linear, Linear};

/// The transformer's weights, asked for by BFL's names.
#[derive(Clone)]
pub enum FluxWeights<'a> {
    /// Full-precision tensors in the dtype they are held in (16-bit weights on the CPU are
    /// widened by Easel's linear layers as they multiply).
    Full(VarBuilder<'a>),
    /// A GGUF file; its unquantized tensors (biases, norms) are converted to `dtype`.
    Quantized {
        /// The file's tensors.
        vb: QuantizedVarBuilder,
        /// What the layers compute in.
        dtype: DType,
    },
}

impl FluxWeights<'_> {
    /// The weights under `prefix`.
    pub fn pp(&self, prefix: impl ToString) -> Self {
        match self {
            FluxWeights::Full(vb) => FluxWeights::Full(vb.pp(prefix)),
            FluxWeights::Quantized { vb, dtype } => FluxWeights::Quantized {
                vb: vb.pp(prefix),
                dtype: *dtype,
            },
        }
    }

    /// The linear layer here (`weight` `[outputs, inputs]` and `bias`).
    pub fn linear(&self, inputs: usize, outputs: usize) -> Result<FluxLinear> {
        match self {
            FluxWeights::Full(vb) => Ok(FluxLinear::Full(linear(inputs, outputs, vb.clone())?)),
            FluxWeights::Quantized { vb, .. } => Ok(FluxLinear::Quantized(quantized_nn::linear(
                inputs,
                outputs,
                vb.clone(),
            )?)),
        }
    }

    /// The `[dim]` tensor `name` at the compute dtype (f32 on the CPU, whatever the weights
    /// are held in).
    pub fn vector(&self, dim: usize, name: &str) -> Result<Tensor> {
        match self {
            FluxWeights::Full(vb) => vb.get_with_hints_dtype(
                dim,
                name,
                candle_nn::Init::Const(1.0),
                compute_dtype(vb.device(), vb.dtype()),
            ),
            FluxWeights::Quantized { vb, dtype } => {
                vb.get(dim, name)?.dequantize(vb.device())?.to_dtype(*dtype)
            }
        }
    }
}

/// A linear layer, full precision or quantized.
#[derive(Debug, Clone)]
pub enum FluxLinear {
    /// Easel's linear layer.
    Full(Linear),
    /// `x W^T + b` with `W` in GGUF blocks (f32 activations off the CPU, as candle's
    /// kernels want).
    Quantized(quantized_nn::Linear),
}

impl FluxLinear {
    /// `x W^T + b`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            FluxLinear::Full(linear) => linear.forward(x),
            FluxLinear::Quantized(linear) => quantized_forward(linear, x),
        }
    }
}
