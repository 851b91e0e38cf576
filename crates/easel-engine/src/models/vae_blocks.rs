//! The VAE's building blocks (diffusers' `ResnetBlock2D` without time embedding, the mid
//! block's single-head attention, the up and down blocks), written over `Tiles` so that one
//! code path decodes and encodes whole maps and tiled ones.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{self as nn, VarBuilder};

use crate::ops::{compute_dtype, conv2d_strided, linear, Activation, Conv2d, GroupNorm, Linear};

use super::tiles::Tiles;

/// The VAE's GroupNorm epsilon, fixed in diffusers' encoder and decoder.
pub(super) const VAE_NORM_EPS: f64 = 1e-6;

/// Attention score elements computed at once in the mid block (64 Mi f32 = 256 MB); longer
/// maps are attended in chunks of queries, so memory stays flat as images grow.
pub const ATTENTION_CHUNK_ELEMENTS: usize = 64 << 20;

/// `ResnetBlock2D` with no time embedding.
#[derive(Debug)]
pub struct Resnet {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl Resnet {
    /// Loads a block mapping `in_channels` to `out_channels`.
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        groups: usize,
        eps: f64,
    ) -> Result<Self> {
        let shortcut = if in_channels != out_channels {
            Some(conv2d_strided(
                in_channels,
                out_channels,
                1,
                1,
                0,
                vb.pp("conv_shortcut"),
            )?)
        } else {
            None
        };
        Ok(Self {
            norm1: GroupNorm::load(groups, in_channels, eps, vb.pp("norm1"))?,
            conv1: conv2d_strided(in_channels, out_channels, 3, 1, 1, vb.pp("conv1"))?,
            norm2: GroupNorm::load(groups, out_channels, eps, vb.pp("norm2"))?,
            conv2: conv2d_strided(out_channels, out_channels, 3, 1, 1, vb.pp("conv2"))?,
            shortcut,
        })
    }

    /// `shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))))))`.
    pub fn forward(&self, xs: &Tiles) -> Result<Tiles> {
        let hidden =
            xs.group_norm_then(&self.norm1, Activation::Silu, |x| self.conv1.forward(x))?;
        let hidden =
            hidden.group_norm_then(&self.norm2, Activation::Silu, |x| self.conv2.forward(x))?;
        match &self.shortcut {
            Some(shortcut) => xs.zip_map(&hidden, |x, h| shortcut.forward(x)? + h),
            None => xs.zip_map(&hidden, |x, h| x + h),
        }
    }
}

/// The mid block's single-head self-attention over every position.
#[derive(Debug)]
struct Attention {
    norm: GroupNorm,
    query: Linear,
    key: Linear,
    value: Linear,
    out: Linear,
    channels: usize,
}

/// A linear layer stored as a matrix, or as a 1x1 convolution in older checkpoints.
fn projection(channels: usize, vb: VarBuilder) -> Result<Linear> {
    if vb.contains_tensor("weight") {
        if let Ok(weight) = vb.get((channels, channels, 1, 1), "weight") {
            let bias = vb.get_with_hints_dtype(
                channels,
                "bias",
                Default::default(),
                compute_dtype(vb.device(), vb.dtype()),
            )?;
            return Ok(Linear::new(
                weight.reshape((channels, channels))?,
                Some(bias),
            ));
        }
    }
    linear(channels, channels, vb)
}

impl Attention {
    fn new(vb: VarBuilder, channels: usize, groups: usize, eps: f64) -> Result<Self> {
        // Newer checkpoints name the projections to_q/to_k/to_v/to_out.0, older ones
        // query/key/value/proj_attn.
        let names = if vb.contains_tensor("query.weight") {
            ["query", "key", "value", "proj_attn"]
        } else {
            ["to_q", "to_k", "to_v", "to_out.0"]
        };
        Ok(Self {
            norm: GroupNorm::load(groups, channels, eps, vb.pp("group_norm"))?,
            query: projection(channels, vb.pp(names[0]))?,
            key: projection(channels, vb.pp(names[1]))?,
            value: projection(channels, vb.pp(names[2]))?,
            out: projection(channels, vb.pp(names[3]))?,
            channels,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (batch, channels, height, width) = xs.dims4()?;
        let tokens = height * width;
        let in_dtype = xs.dtype();
        let normed = self
            .norm
            .forward(xs, Activation::Identity)?
            .reshape((batch, channels, tokens))?
            .transpose(1, 2)?;
        let as_head = |x: Tensor| x.to_dtype(DType::F32)?.unsqueeze(1);
        let query = as_head(self.query.forward(&normed)?)?;
        let key = as_head(self.key.forward(&normed)?)?;
        let value = as_head(self.value.forward(&normed)?)?;
        let scale = 1.0 / (self.channels as f64).sqrt();
        let attended = if query.device().is_cpu() {
            // Easel's attention holds one block of scores at a time.
            crate::ops::attention(&query, &key, &value, scale)?.squeeze(1)?
        } else {
            // Elsewhere the scores are materialised, a chunk of queries at a time.
            let key_t = key.squeeze(1)?.t()?.contiguous()?;
            let (query, value) = (query.squeeze(1)?, value.squeeze(1)?);
            let chunk = (ATTENTION_CHUNK_ELEMENTS / tokens.max(1)).max(1);
            let mut chunks = Vec::with_capacity(tokens.div_ceil(chunk));
            for start in (0..tokens).step_by(chunk) {
                let len = chunk.min(tokens - start);
                let scores = (query.narrow(1, start, len)?.matmul(&key_t)? * scale)?;
                chunks.push(nn::ops::softmax_last_dim(&scores)?.matmul(&value)?);
            }
            Tensor::cat(&chunks, 1)?
        };
        let attended = attended.to_dtype(in_dtype)?;
        let projected = self
            .out
            .forward(&attended)?
            .transpose(1, 2)?
            .reshape((batch, channels, height, width))?;
        projected + xs
    }
}

/// `UNetMidBlock2D` of a VAE: resnet, attention, resnet, on the whole (latent-sized) map.
#[derive(Debug)]
pub struct MidBlock {
    first: Resnet,
    attention: Attention,
    second: Resnet,
}

impl MidBlock {
    /// Loads the mid block over `channels`.
    pub fn new(vb: VarBuilder, channels: usize, groups: usize, eps: f64) -> Result<Self> {
        let resnets = vb.pp("resnets");
        Ok(Self {
            first: Resnet::new(resnets.pp("0"), channels, channels, groups, eps)?,
            attention: Attention::new(vb.pp("attentions.0"), channels, groups, eps)?,
            second: Resnet::new(resnets.pp("1"), channels, channels, groups, eps)?,
        })
    }

    /// Runs the block on a whole map.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = self.first.forward(&Tiles::whole(xs.clone())?)?.stitch()?;
        let xs = self.attention.forward(&xs)?;
        self.second.forward(&Tiles::whole(xs)?)?.stitch()
    }
}

/// The `resnets.{i}` of an up or down block: the first maps `in_channels` to
/// `out_channels`, the rest keep `out_channels`.
fn resnet_stack(
    vb: &VarBuilder,
    in_channels: usize,
    out_channels: usize,
    layers: usize,
    groups: usize,
) -> Result<Vec<Resnet>> {
    (0..layers)
        .map(|i| {
            let from = if i == 0 { in_channels } else { out_channels };
            Resnet::new(
                vb.pp(format!("resnets.{i}")),
                from,
                out_channels,
                groups,
                VAE_NORM_EPS,
            )
        })
        .collect()
}

/// `UpDecoderBlock2D`: resnets, then (except in the last block) a nearest 2x upsample and a
/// convolution.
#[derive(Debug)]
pub struct UpBlock {
    resnets: Vec<Resnet>,
    upsample: Option<Conv2d>,
}

impl UpBlock {
    /// Loads a block of `layers` resnets.
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        layers: usize,
        groups: usize,
        upsample: bool,
    ) -> Result<Self> {
        let resnets = resnet_stack(&vb, in_channels, out_channels, layers, groups)?;
        let upsample = if upsample {
            Some(conv2d_strided(
                out_channels,
                out_channels,
                3,
                1,
                1,
                vb.pp("upsamplers.0.conv"),
            )?)
        } else {
            None
        };
        Ok(Self { resnets, upsample })
    }

    /// Runs the block on every tile.
    pub fn forward(&self, xs: Tiles) -> Result<Tiles> {
        let mut xs = xs;
        for resnet in &self.resnets {
            xs = resnet.forward(&xs)?;
        }
        match &self.upsample {
            Some(conv) => xs.rescaled(2, 1, |x| {
                let (_, _, h, w) = x.dims4()?;
                conv.forward(&x.upsample_nearest2d(2 * h, 2 * w)?)
            }),
            None => Ok(xs),
        }
    }

    /// Whether the block doubles the map's size.
    pub fn upsamples(&self) -> bool {
        self.upsample.is_some()
    }

    /// 3x3 convolutions the block runs before any upsample.
    pub fn convolutions(&self) -> usize {
        2 * self.resnets.len()
    }
}

/// `DownEncoderBlock2D`: resnets, then (except in the last block) a stride-2 convolution
/// padded on the right and bottom only.
#[derive(Debug)]
pub struct DownBlock {
    resnets: Vec<Resnet>,
    downsample: Option<Conv2d>,
}

impl DownBlock {
    /// Loads a block of `layers` resnets.
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        layers: usize,
        groups: usize,
        downsample: bool,
    ) -> Result<Self> {
        let resnets = resnet_stack(&vb, in_channels, out_channels, layers, groups)?;
        let downsample = if downsample {
            Some(conv2d_strided(
                out_channels,
                out_channels,
                3,
                2,
                0,
                vb.pp("downsamplers.0.conv"),
            )?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            downsample,
        })
    }

    /// Runs the block on every tile.
    pub fn forward(&self, xs: Tiles) -> Result<Tiles> {
        let mut xs = xs;
        for resnet in &self.resnets {
            xs = resnet.forward(&xs)?;
        }
        match &self.downsample {
            Some(conv) => xs.rescaled(1, 2, |x| {
                conv.forward(
                    &x.pad_with_zeros(D::Minus1, 0, 1)?
                        .pad_with_zeros(D::Minus2, 0, 1)?,
                )
            }),
            None => Ok(xs),
        }
    }

    /// Whether the block halves the map's size.
    pub fn downsamples(&self) -> bool {
        self.downsample.is_some()
    }

    /// 3x3 convolutions the block runs before any downsample.
    pub fn convolutions(&self) -> usize {
        2 * self.resnets.len()
    }
}
