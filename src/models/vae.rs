//! The `AutoencoderKL` VAE built from its `config.json`, with its latent distribution exposed
//! so that the posterior sample can use noise Easel chooses (seeded or recorded).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{self as nn, VarBuilder};
use candle_transformers::models::stable_diffusion::unet_2d_blocks::{
    DownEncoderBlock2D, DownEncoderBlock2DConfig, UNetMidBlock2D, UNetMidBlock2DConfig,
    UpDecoderBlock2D, UpDecoderBlock2DConfig,
};

use super::config::VaeConfig;

/// The VAE's GroupNorm epsilon, fixed in diffusers' encoder and decoder.
const VAE_NORM_EPS: f64 = 1e-6;

fn mid_block(vb: VarBuilder, channels: usize, groups: usize) -> Result<UNetMidBlock2D> {
    UNetMidBlock2D::new(
        vb,
        channels,
        None,
        UNetMidBlock2DConfig {
            resnet_eps: VAE_NORM_EPS,
            output_scale_factor: 1.,
            attn_num_head_channels: None,
            resnet_groups: Some(groups),
            ..Default::default()
        },
    )
}

fn conv3(in_channels: usize, out_channels: usize, vb: VarBuilder) -> Result<nn::Conv2d> {
    let cfg = nn::Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    nn::conv2d(in_channels, out_channels, 3, cfg, vb)
}

#[derive(Debug)]
struct Encoder {
    conv_in: nn::Conv2d,
    down_blocks: Vec<DownEncoderBlock2D>,
    mid_block: UNetMidBlock2D,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2d,
}

impl Encoder {
    fn new(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        let channels = &cfg.block_out_channels;
        let last = *channels.last().unwrap_or(&0);
        let down_blocks = channels
            .iter()
            .enumerate()
            .map(|(i, &out_channels)| {
                let in_channels = if i == 0 { channels[0] } else { channels[i - 1] };
                DownEncoderBlock2D::new(
                    vb.pp(format!("down_blocks.{i}")),
                    in_channels,
                    out_channels,
                    DownEncoderBlock2DConfig {
                        num_layers: cfg.layers_per_block,
                        resnet_eps: VAE_NORM_EPS,
                        resnet_groups: cfg.norm_num_groups,
                        add_downsample: i + 1 < channels.len(),
                        downsample_padding: 0,
                        ..Default::default()
                    },
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            conv_in: conv3(cfg.in_channels, channels[0], vb.pp("conv_in"))?,
            down_blocks,
            mid_block: mid_block(vb.pp("mid_block"), last, cfg.norm_num_groups)?,
            conv_norm_out: nn::group_norm(
                cfg.norm_num_groups,
                last,
                VAE_NORM_EPS,
                vb.pp("conv_norm_out"),
            )?,
            conv_out: conv3(last, 2 * cfg.latent_channels, vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = self.conv_in.forward(xs)?;
        for block in &self.down_blocks {
            xs = block.forward(&xs)?;
        }
        let xs = self.mid_block.forward(&xs, None)?;
        let xs = nn::ops::silu(&self.conv_norm_out.forward(&xs)?)?;
        self.conv_out.forward(&xs)
    }
}

#[derive(Debug)]
struct Decoder {
    conv_in: nn::Conv2d,
    mid_block: UNetMidBlock2D,
    up_blocks: Vec<UpDecoderBlock2D>,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2d,
}

impl Decoder {
    fn new(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        let reversed: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let last = reversed[0];
        let up_blocks = reversed
            .iter()
            .enumerate()
            .map(|(i, &out_channels)| {
                let in_channels = if i == 0 { reversed[0] } else { reversed[i - 1] };
                UpDecoderBlock2D::new(
                    vb.pp(format!("up_blocks.{i}")),
                    in_channels,
                    out_channels,
                    UpDecoderBlock2DConfig {
                        num_layers: cfg.layers_per_block + 1,
                        resnet_eps: VAE_NORM_EPS,
                        resnet_groups: cfg.norm_num_groups,
                        add_upsample: i + 1 < reversed.len(),
                        ..Default::default()
                    },
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let first = cfg.block_out_channels[0];
        Ok(Self {
            conv_in: conv3(cfg.latent_channels, last, vb.pp("conv_in"))?,
            mid_block: mid_block(vb.pp("mid_block"), last, cfg.norm_num_groups)?,
            up_blocks,
            conv_norm_out: nn::group_norm(
                cfg.norm_num_groups,
                first,
                VAE_NORM_EPS,
                vb.pp("conv_norm_out"),
            )?,
            conv_out: conv3(first, cfg.out_channels, vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = self.mid_block.forward(&self.conv_in.forward(xs)?, None)?;
        for block in &self.up_blocks {
            xs = block.forward(&xs)?;
        }
        let xs = nn::ops::silu(&self.conv_norm_out.forward(&xs)?)?;
        self.conv_out.forward(&xs)
    }
}

/// The encoder's diagonal Gaussian over latents (unscaled).
#[derive(Debug, Clone)]
pub struct LatentDistribution {
    /// Mean, `[batch, latent_channels, h/8, w/8]`.
    pub mean: Tensor,
    /// Standard deviation, same shape.
    pub std: Tensor,
}

impl LatentDistribution {
    /// `mean + std * noise`, with `noise` standard normal of the same shape.
    pub fn sample(&self, noise: &Tensor) -> Result<Tensor> {
        &self.mean + (&self.std * noise.to_dtype(self.std.dtype())?)?
    }
}

/// A loaded VAE.
#[derive(Debug)]
pub struct Vae {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<nn::Conv2d>,
    post_quant_conv: Option<nn::Conv2d>,
    config: VaeConfig,
    dtype: DType,
}

impl Vae {
    /// Builds the VAE from `vb` according to `config`.
    pub fn new(vb: VarBuilder, config: &VaeConfig) -> Result<Self> {
        if config.block_out_channels.is_empty() {
            candle_core::bail!("block_out_channels is empty");
        }
        let latent = config.latent_channels;
        let conv1 = nn::Conv2dConfig::default();
        let quant_conv = if config.use_quant_conv {
            Some(nn::conv2d(
                2 * latent,
                2 * latent,
                1,
                conv1,
                vb.pp("quant_conv"),
            )?)
        } else {
            None
        };
        let post_quant_conv = if config.use_post_quant_conv {
            Some(nn::conv2d(
                latent,
                latent,
                1,
                conv1,
                vb.pp("post_quant_conv"),
            )?)
        } else {
            None
        };
        Ok(Self {
            encoder: Encoder::new(vb.pp("encoder"), config)?,
            decoder: Decoder::new(vb.pp("decoder"), config)?,
            quant_conv,
            post_quant_conv,
            config: config.clone(),
            dtype: vb.dtype(),
        })
    }

    /// The config the VAE was built from.
    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// How many pixels one latent covers along each side.
    pub fn scale_factor(&self) -> usize {
        1 << self.config.block_out_channels.len().saturating_sub(1)
    }

    /// Encodes images in -1..1 `[batch, 3, h, w]` to the latent distribution (unscaled, f32).
    pub fn encode(&self, images: &Tensor) -> Result<LatentDistribution> {
        let moments = self.encoder.forward(&images.to_dtype(self.dtype)?)?;
        let moments = match &self.quant_conv {
            Some(conv) => conv.forward(&moments)?,
            None => moments,
        };
        let moments = moments.to_dtype(DType::F32)?;
        let mean = moments.narrow(1, 0, self.config.latent_channels)?;
        let logvar = moments
            .narrow(1, self.config.latent_channels, self.config.latent_channels)?
            .clamp(-30f32, 20f32)?;
        let std = (logvar * 0.5)?.exp()?;
        Ok(LatentDistribution { mean, std })
    }

    /// Maps a posterior sample to the diffusion model's latent space (shift, then scale).
    pub fn to_model_latents(&self, sample: &Tensor) -> Result<Tensor> {
        let shifted = match self.config.shift_factor {
            Some(shift) => (sample - shift)?,
            None => sample.clone(),
        };
        shifted * self.config.scaling_factor
    }

    /// Decodes model latents to images in -1..1 `[batch, 3, h, w]` (f32).
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let xs = (latents / self.config.scaling_factor)?;
        let xs = match self.config.shift_factor {
            Some(shift) => (xs + shift)?,
            None => xs,
        };
        let xs = xs.to_dtype(self.dtype)?;
        let xs = match &self.post_quant_conv {
            Some(conv) => conv.forward(&xs)?,
            None => xs,
        };
        self.decoder.forward(&xs)?.to_dtype(DType::F32)
    }
}
