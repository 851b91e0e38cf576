//! The `AutoencoderKL` VAE built from its `config.json`, with its latent distribution exposed
//! so that the posterior sample can use noise Easel chooses (seeded or recorded).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{self as nn, VarBuilder};

use crate::ops::{compute_dtype, conv2d, Activation, Conv2d, GroupNorm};

use super::config::VaeConfig;
use super::tiles::{TileLayout, Tiles};
use super::vae_blocks::{DownBlock, MidBlock, UpBlock, VAE_NORM_EPS};

fn conv3(in_channels: usize, out_channels: usize, vb: VarBuilder) -> Result<Conv2d> {
    let cfg = nn::Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    conv2d(in_channels, out_channels, 3, cfg, vb)
}

#[derive(Debug)]
struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn new(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        let channels = &cfg.block_out_channels;
        let last = *channels.last().unwrap_or(&0);
        let groups = cfg.norm_num_groups;
        let down_blocks = channels
            .iter()
            .enumerate()
            .map(|(i, &out_channels)| {
                let in_channels = if i == 0 { channels[0] } else { channels[i - 1] };
                DownBlock::new(
                    vb.pp(format!("down_blocks.{i}")),
                    in_channels,
                    out_channels,
                    cfg.layers_per_block,
                    groups,
                    i + 1 < channels.len(),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            conv_in: conv3(cfg.in_channels, channels[0], vb.pp("conv_in"))?,
            down_blocks,
            mid_block: MidBlock::new(vb.pp("mid_block"), last, groups, VAE_NORM_EPS)?,
            conv_norm_out: GroupNorm::load(groups, last, VAE_NORM_EPS, vb.pp("conv_norm_out"))?,
            conv_out: conv3(last, 2 * cfg.latent_channels, vb.pp("conv_out"))?,
        })
    }

    /// Pixels per latent.
    fn factor(&self) -> usize {
        1 << self.down_blocks.iter().filter(|b| b.downsamples()).count()
    }

    /// How far (in image pixels) a wrong value at a tile's inner edge can travel before the
    /// tiles are stitched: one pixel per 3x3 convolution at each level, two per downsample.
    fn reach_px(&self) -> usize {
        let mut reach = 1; // conv_in
        let mut scale = 1;
        for block in &self.down_blocks {
            reach += block.convolutions() * scale;
            if block.downsamples() {
                reach += 2 * scale;
                scale *= 2;
            }
        }
        reach
    }

    /// Encodes images; with `tile_core` (in latents) the full-resolution blocks run tile by
    /// tile and only the latent-sized mid block sees the whole map.
    fn forward(&self, xs: &Tensor, tile_core: Option<usize>) -> Result<Tensor> {
        let factor = self.factor();
        let tiles = match tile_core {
            Some(core) => Tiles::split(
                xs,
                TileLayout {
                    core: core * factor,
                    halo: self.reach_px() + factor,
                },
                factor,
            )?,
            None => Tiles::whole(xs.clone())?,
        };
        let mut tiles = tiles.map(|x| self.conv_in.forward(x))?;
        for block in &self.down_blocks {
            tiles = block.forward(tiles)?;
        }
        let xs = self.mid_block.forward(&tiles.stitch()?)?;
        let xs = self.conv_norm_out.forward(&xs, Activation::Silu)?;
        self.conv_out.forward(&xs)
    }
}

#[derive(Debug)]
struct Decoder {
    conv_in: Conv2d,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        let reversed: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let last = reversed[0];
        let groups = cfg.norm_num_groups;
        let up_blocks = reversed
            .iter()
            .enumerate()
            .map(|(i, &out_channels)| {
                let in_channels = if i == 0 { reversed[0] } else { reversed[i - 1] };
                UpBlock::new(
                    vb.pp(format!("up_blocks.{i}")),
                    in_channels,
                    out_channels,
                    cfg.layers_per_block + 1,
                    groups,
                    i + 1 < reversed.len(),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let first = cfg.block_out_channels[0];
        Ok(Self {
            conv_in: conv3(cfg.latent_channels, last, vb.pp("conv_in"))?,
            mid_block: MidBlock::new(vb.pp("mid_block"), last, groups, VAE_NORM_EPS)?,
            up_blocks,
            conv_norm_out: GroupNorm::load(groups, first, VAE_NORM_EPS, vb.pp("conv_norm_out"))?,
            conv_out: conv3(first, cfg.out_channels, vb.pp("conv_out"))?,
        })
    }

    /// How far (in latents) a wrong value at a tile's inner edge can travel through the up
    /// blocks and the output convolution: one pixel of each level per 3x3 convolution.
    fn reach_latents(&self) -> usize {
        let mut reach = 0.0;
        let mut scale = 1.0;
        for block in &self.up_blocks {
            reach += block.convolutions() as f64 / scale;
            if block.upsamples() {
                scale *= 2.0;
                reach += 1.0 / scale;
            }
        }
        reach += 1.0 / scale; // conv_out
        reach.ceil() as usize
    }

    /// Decodes latents; with `tile_core` (in latents) the latent-sized mid block sees the
    /// whole map and the up blocks run tile by tile.
    fn forward(&self, xs: &Tensor, tile_core: Option<usize>) -> Result<Tensor> {
        let xs = self.mid_block.forward(&self.conv_in.forward(xs)?)?;
        let mut tiles = match tile_core {
            Some(core) => Tiles::split(
                &xs,
                TileLayout {
                    core,
                    halo: self.reach_latents() + 1,
                },
                1,
            )?,
            None => Tiles::whole(xs)?,
        };
        for block in &self.up_blocks {
            tiles = block.forward(tiles)?;
        }
        tiles
            .group_norm_then(&self.conv_norm_out, Activation::Silu, |x| {
                self.conv_out.forward(x)
            })?
            .stitch()
    }
}

/// Whether the VAE runs an image tile by tile. Tiled results equal untiled ones up to float
/// rounding (see `tiles`); tiling bounds the memory of the full-resolution layers at the
/// cost of recomputing each tile's halo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VaeTiling {
    /// Tile images above `AUTO_TILE_ABOVE_LATENTS` latents in area.
    #[default]
    Auto,
    /// Never tile.
    Off,
    /// Always tile, with cores of this many latents on a side.
    Cores(usize),
}

/// Latent area above which `VaeTiling::Auto` tiles: 2 megapixels of image (e.g. above
/// 1448x1448), where an untiled decode's convolution buffers pass several gigabytes.
pub const AUTO_TILE_ABOVE_LATENTS: usize = (2 << 20) / 64;
/// Core side of automatic tiles in latents (768 pixels): large enough that the halo
/// recomputed around each tile costs well under the tile itself.
pub const AUTO_TILE_CORE_LATENTS: usize = 96;

impl VaeTiling {
    /// The tile core for a map of `h` x `w` latents, or `None` to run it whole.
    fn core_latents(self, h: usize, w: usize) -> Option<usize> {
        match self {
            VaeTiling::Off => None,
            VaeTiling::Cores(core) => Some(core.max(1)),
            VaeTiling::Auto if h * w > AUTO_TILE_ABOVE_LATENTS => Some(AUTO_TILE_CORE_LATENTS),
            VaeTiling::Auto => None,
        }
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
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    config: VaeConfig,
    dtype: DType,
    tiling: VaeTiling,
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
            Some(conv2d(
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
            Some(conv2d(latent, latent, 1, conv1, vb.pp("post_quant_conv"))?)
        } else {
            None
        };
        Ok(Self {
            encoder: Encoder::new(vb.pp("encoder"), config)?,
            decoder: Decoder::new(vb.pp("decoder"), config)?,
            quant_conv,
            post_quant_conv,
            config: config.clone(),
            dtype: compute_dtype(vb.device(), vb.dtype()),
            tiling: VaeTiling::Auto,
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

    /// How `encode` and `decode` tile (`Auto` unless set).
    pub fn set_tiling(&mut self, tiling: VaeTiling) {
        self.tiling = tiling;
    }

    /// Encodes images in -1..1 `[batch, 3, h, w]` to the latent distribution (unscaled, f32),
    /// tiled as `set_tiling` says.
    pub fn encode(&self, images: &Tensor) -> Result<LatentDistribution> {
        self.encode_with(images, self.tiling)
    }

    /// `encode` with the tiling chosen.
    pub fn encode_with(&self, images: &Tensor, tiling: VaeTiling) -> Result<LatentDistribution> {
        let (_, _, h, w) = images.dims4()?;
        let factor = self.scale_factor();
        let tile_core = tiling.core_latents(h / factor, w / factor);
        let moments = self
            .encoder
            .forward(&images.to_dtype(self.dtype)?, tile_core)?;
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

    /// Decodes model latents to images in -1..1 `[batch, 3, h, w]` (f32), tiled as
    /// `set_tiling` says.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        self.decode_with(latents, self.tiling)
    }

    /// `decode` with the tiling chosen.
    pub fn decode_with(&self, latents: &Tensor, tiling: VaeTiling) -> Result<Tensor> {
        let (_, _, h, w) = latents.dims4()?;
        let tile_core = tiling.core_latents(h, w);
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
        self.decoder.forward(&xs, tile_core)?.to_dtype(DType::F32)
    }
}
