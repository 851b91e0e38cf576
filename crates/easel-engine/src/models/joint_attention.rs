//! The joint attention FLUX.1 and FLUX.2 share: a stream's `[B, S, H * D]` projection split
//! into heads (RMS-normalised for q and k), the interleaved rotary embedding on q and k, and
//! Easel's attention over the whole sequence.

use candle_core::{Module, Result, Tensor};
use candle_nn::RmsNorm;

/// `x` `[B, S, heads * D]` as heads `[B, H, S, D]`, RMS-normalised when `norm` is given.
pub fn split_heads(x: &Tensor, heads: usize, norm: Option<&RmsNorm>) -> Result<Tensor> {
    let (batch, seq, width) = x.dims3()?;
    let split = x
        .reshape((batch, seq, heads, width / heads.max(1)))?
        .transpose(1, 2)?
        .contiguous()?;
    match norm {
        Some(norm) => norm.forward(&split),
        None => Ok(split),
    }
}

/// Attention over `q`, `k`, `v` `[B, H, S, D]` with the interleaved rotary embedding (`cos`
/// and `sin` `[S, D / 2]`) on q and k; `[B, S, H * D]`.
pub fn rope_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
) -> Result<Tensor> {
    let q = candle_nn::rotary_emb::rope_i(q, cos, sin)?;
    let k = candle_nn::rotary_emb::rope_i(k, cos, sin)?;
    let (batch, heads, seq, head) = q.dims4()?;
    let scale = 1.0 / (head as f64).sqrt();
    crate::ops::attention(&q, &k, v, scale)?
        .transpose(1, 2)?
        .reshape((batch, seq, heads * head))
}

/// A quantized layer's forward: f32 activations off the CPU, as candle's quantized kernels
/// want, cast back to `x`'s dtype.
pub fn quantized_forward(layer: &impl Module, x: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    if x.device().is_cpu() || dtype == candle_core::DType::F32 {
        layer.forward(&x.contiguous()?)
    } else {
        layer
            .forward(&x.to_dtype(candle_core::DType::F32)?.contiguous()?)?
            .to_dtype(dtype)
    }
}
