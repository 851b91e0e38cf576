//! The Stable Diffusion UNet (`UNet2DConditionModel`) built from its `config.json`.
//!
//! The blocks are Easel's own (`unet_blocks`, over Easel's convolution and attention); the
//! timestep features come from candle-transformers. Easel adds what candle's own UNet lacks: SDXL's `text_time` addition embedding (pooled text and size/crop
//! time ids added to the timestep embedding), per-block head counts and transformer depths read
//! from the config, and the timestep embedding computed in f32 whatever the weights' dtype.

use std::path::Path;

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{self as nn, VarBuilder};
use candle_transformers::models::stable_diffusion::embeddings::{TimestepEmbedding, Timesteps};

use super::config::UnetConfig;
use super::error::ModelError;
use super::unet_blocks::{DownBlock, LevelShape, MidBlock, ResnetShape, TransformerShape, UpBlock};
use crate::ops::{compute_dtype, conv2d, Activation, Conv2d, GroupNorm};

/// One down or up block's shape, resolved from the config.
#[derive(Debug, Clone, Copy)]
struct BlockShape {
    out_channels: usize,
    /// Transformer depth when the block has cross-attention.
    cross_attention_depth: Option<usize>,
    heads: usize,
}

/// The UNet's shape, checked against what Easel can build.
#[derive(Debug, Clone)]
pub struct UnetShape {
    blocks: Vec<BlockShape>,
    mid_depth: usize,
    /// Latent channels in (4, or 9 for inpainting).
    pub in_channels: usize,
    out_channels: usize,
    /// Whether the UNet takes SDXL's pooled text and time ids.
    pub text_time: Option<TextTimeShape>,
    config: UnetConfig,
}

/// SDXL's addition embedding sizes.
#[derive(Debug, Clone, Copy)]
pub struct TextTimeShape {
    /// Width of each time id's sinusoidal embedding.
    pub time_embed_dim: usize,
    /// Width of the addition embedding's input (pooled text + 6 time-id embeddings).
    pub input_dim: usize,
}

impl UnetShape {
    /// Resolves and checks `config` (read from `path`, named in errors).
    pub fn from_config(config: &UnetConfig, path: &Path) -> std::result::Result<Self, ModelError> {
        let bad = |message: String| ModelError::BadConfig {
            what: "UNet config",
            path: path.to_path_buf(),
            message,
        };
        let unsupported = |what: String| ModelError::Unsupported {
            what,
            path: path.to_path_buf(),
        };
        let n = config.block_out_channels.len();
        if n == 0 || config.down_block_types.len() != n || config.up_block_types.len() != n {
            return Err(bad(format!(
                "block_out_channels, down_block_types and up_block_types must have the same, non-zero length (got {}, {}, {})",
                n,
                config.down_block_types.len(),
                config.up_block_types.len()
            )));
        }
        let heads = config
            .num_attention_heads
            .as_ref()
            .unwrap_or(&config.attention_head_dim)
            .expand(n)
            .ok_or_else(|| bad("attention_head_dim must have one value per block".into()))?;
        let depths = config
            .transformer_layers_per_block
            .expand(n)
            .ok_or_else(|| {
                bad("transformer_layers_per_block must have one value per block".into())
            })?;
        let mut blocks = Vec::with_capacity(n);
        for i in 0..n {
            let cross = match config.down_block_types[i].as_str() {
                "CrossAttnDownBlock2D" => true,
                "DownBlock2D" => false,
                other => return Err(unsupported(format!("UNet down block type {other}"))),
            };
            let expected_up = if cross {
                "CrossAttnUpBlock2D"
            } else {
                "UpBlock2D"
            };
            if config.up_block_types[n - 1 - i] != expected_up {
                return Err(unsupported(format!(
                    "UNet up blocks that do not mirror the down blocks ({} against {})",
                    config.up_block_types[n - 1 - i],
                    expected_up
                )));
            }
            if heads[i] == 0 || !config.block_out_channels[i].is_multiple_of(heads[i]) {
                return Err(bad(format!(
                    "block {i}: {} channels cannot be split into {} heads",
                    config.block_out_channels[i], heads[i]
                )));
            }
            blocks.push(BlockShape {
                out_channels: config.block_out_channels[i],
                cross_attention_depth: cross.then_some(depths[i]),
                heads: heads[i],
            });
        }
        match config.mid_block_type.as_deref() {
            None | Some("UNetMidBlock2DCrossAttn") => {}
            Some(other) => return Err(unsupported(format!("UNet mid block type {other}"))),
        }
        if config.time_cond_proj_dim.is_some() {
            return Err(unsupported(
                "time_cond_proj_dim (LCM-distilled UNets)".into(),
            ));
        }
        if config.class_embed_type.is_some() {
            return Err(unsupported("class embeddings".into()));
        }
        let text_time = match config.addition_embed_type.as_deref() {
            None => None,
            Some("text_time") => Some(TextTimeShape {
                time_embed_dim: config
                    .addition_time_embed_dim
                    .ok_or_else(|| bad("text_time needs addition_time_embed_dim".into()))?,
                input_dim: config
                    .projection_class_embeddings_input_dim
                    .ok_or_else(|| {
                        bad("text_time needs projection_class_embeddings_input_dim".into())
                    })?,
            }),
            Some(other) => return Err(unsupported(format!("addition_embed_type {other}"))),
        };
        Ok(Self {
            blocks,
            mid_depth: *depths.last().unwrap_or(&1),
            in_channels: config.in_channels,
            out_channels: config.out_channels,
            text_time,
            config: config.clone(),
        })
    }

    /// The latent side the model was trained at, when the config states it.
    pub fn sample_size(&self) -> Option<usize> {
        self.config.sample_size
    }

    /// Width of the text embeddings the UNet attends to.
    pub fn cross_attention_dim(&self) -> usize {
        self.config.cross_attention_dim
    }

    /// How many times the UNet halves the latent size.
    pub fn downsample_count(&self) -> usize {
        self.blocks.len().saturating_sub(1)
    }

    /// The first level with attention, as `(level, heads)` (level 0 is full latent
    /// resolution); `None` for a UNet without attention.
    pub fn first_attention_level(&self) -> Option<(usize, usize)> {
        self.blocks
            .iter()
            .enumerate()
            .find(|(_, block)| block.cross_attention_depth.is_some())
            .map(|(level, block)| (level, block.heads))
    }
}

/// SDXL's extra conditioning for one forward pass.
#[derive(Debug, Clone)]
pub struct TextTimeConditioning {
    /// Pooled, projected text embeddings `[batch, width]`.
    pub pooled_text: Tensor,
    /// `[batch, 6]`: original height, width, crop top, left, target height, width.
    pub time_ids: Tensor,
}

/// The addition embedding of SDXL UNets.
#[derive(Debug)]
struct TextTimeEmbedding {
    time_proj: Timesteps,
    embedding: TimestepEmbedding,
}

/// A loaded UNet.
#[derive(Debug)]
pub struct Unet {
    conv_in: Conv2d,
    time_proj: Timesteps,
    time_embedding: TimestepEmbedding,
    text_time: Option<TextTimeEmbedding>,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    shape: UnetShape,
    dtype: DType,
}

impl Unet {
    /// Builds the UNet of `shape` from the weights in `vb`.
    pub fn new(vb: VarBuilder, shape: UnetShape) -> Result<Self> {
        let cfg = &shape.config;
        let n = shape.blocks.len();
        let levels: Vec<LevelShape> = shape
            .blocks
            .iter()
            .map(|block| LevelShape {
                channels: block.out_channels,
                attention: block
                    .cross_attention_depth
                    .map(|depth| (depth, block.heads)),
            })
            .collect();
        let first_channels = levels[0].channels;
        let last = shape.blocks[n - 1];
        let time_embed_dim = first_channels * 4;
        let conv3 = nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let conv_in = conv2d(
            shape.in_channels,
            first_channels,
            3,
            conv3,
            vb.pp("conv_in"),
        )?;
        let time_proj = Timesteps::new(first_channels, cfg.flip_sin_to_cos, cfg.freq_shift);
        // candle-transformers' embedding layers compute at their weights' dtype: they are held
        // at the compute dtype (a few million weights).
        let dtype = compute_dtype(vb.device(), vb.dtype());
        let time_embedding = TimestepEmbedding::new(
            vb.pp("time_embedding").set_dtype(dtype),
            first_channels,
            time_embed_dim,
        )?;
        let text_time = match shape.text_time {
            Some(tt) => Some(TextTimeEmbedding {
                time_proj: Timesteps::new(tt.time_embed_dim, cfg.flip_sin_to_cos, cfg.freq_shift),
                embedding: TimestepEmbedding::new(
                    vb.pp("add_embedding").set_dtype(dtype),
                    tt.input_dim,
                    time_embed_dim,
                )?,
            }),
            None => None,
        };
        let resnet = ResnetShape {
            time_channels: time_embed_dim,
            groups: cfg.norm_num_groups,
            eps: cfg.norm_eps,
        };
        let transformer = TransformerShape {
            context_dim: cfg.cross_attention_dim,
            groups: cfg.norm_num_groups,
            linear_projection: cfg.use_linear_projection,
        };

        let mut down_blocks = Vec::with_capacity(n);
        for (i, level) in levels.iter().enumerate() {
            let in_channels = if i == 0 {
                first_channels
            } else {
                levels[i - 1].channels
            };
            down_blocks.push(DownBlock::new(
                vb.pp(format!("down_blocks.{i}")),
                in_channels,
                *level,
                cfg.layers_per_block,
                resnet,
                transformer,
                (i + 1 < n).then_some(cfg.downsample_padding),
            )?);
        }

        let mid_block = MidBlock::new(
            vb.pp("mid_block"),
            last.out_channels,
            last.heads,
            shape.mid_depth,
            resnet,
            transformer,
            cfg.mid_block_scale_factor,
        )?;

        // Up block i is level n-1-i: it takes the level below's output and, for its last
        // resnet, the skip of the level above's input (the first level's for the top one).
        let mut up_blocks = Vec::with_capacity(n);
        for i in 0..n {
            let level = n - 1 - i;
            let from_below = if i == 0 {
                last.out_channels
            } else {
                levels[level + 1].channels
            };
            let last_skip_channels = levels[level.saturating_sub(1)].channels;
            up_blocks.push(UpBlock::new(
                vb.pp(format!("up_blocks.{i}")),
                from_below,
                last_skip_channels,
                levels[level],
                cfg.layers_per_block + 1,
                resnet,
                transformer,
                i + 1 < n,
            )?);
        }
        let conv_norm_out = GroupNorm::load(
            cfg.norm_num_groups,
            first_channels,
            cfg.norm_eps,
            vb.pp("conv_norm_out"),
        )?;
        let conv_out = conv2d(
            first_channels,
            shape.out_channels,
            3,
            conv3,
            vb.pp("conv_out"),
        )?;
        Ok(Self {
            conv_in,
            time_proj,
            time_embedding,
            text_time,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
            dtype,
            shape,
        })
    }

    /// The resolved shape this UNet was built with.
    pub fn shape(&self) -> &UnetShape {
        &self.shape
    }

    /// Predicts noise (or velocity) for `latents` `[batch, in_channels, h, w]` at `timestep`,
    /// attending to `text` `[batch, tokens, cross_attention_dim]`.
    pub fn forward(
        &self,
        latents: &Tensor,
        timestep: f64,
        text: &Tensor,
        text_time: Option<&TextTimeConditioning>,
    ) -> Result<Tensor> {
        let (batch, _, height, width) = latents.dims4()?;
        let device = latents.device();
        let xs = latents.to_dtype(self.dtype)?;
        let text = text.to_dtype(self.dtype)?;
        let xs = if self.shape.config.center_input_sample {
            ((xs * 2.0)? - 1.0)?
        } else {
            xs
        };

        // 1. time: sinusoidal features in f32, then the learned MLP in the weights' dtype.
        let steps = (Tensor::ones(batch, DType::F32, device)? * timestep)?;
        let features = self.time_proj.forward(&steps)?.to_dtype(self.dtype)?;
        let mut emb = self.time_embedding.forward(&features)?;
        match (&self.text_time, text_time) {
            (Some(embedding), Some(cond)) => {
                let ids = cond.time_ids.to_dtype(DType::F32)?.flatten_all()?;
                let id_features = embedding
                    .time_proj
                    .forward(&ids)?
                    .reshape((batch, ()))?
                    .to_dtype(self.dtype)?;
                let input =
                    Tensor::cat(&[&cond.pooled_text.to_dtype(self.dtype)?, &id_features], 1)?;
                emb = (emb + embedding.embedding.forward(&input)?)?;
            }
            (Some(_), None) => {
                candle_core::bail!("this UNet needs pooled text embeddings and time ids (SDXL)")
            }
            (None, _) => {}
        }

        // 2. down
        let xs = self.conv_in.forward(&xs)?;
        let mut skips = vec![xs.clone()];
        let mut xs = xs;
        for block in &self.down_blocks {
            xs = block.forward(&xs, &emb, &text, &mut skips)?;
        }

        // 3. mid
        xs = self.mid_block.forward(&xs, &emb, &text)?;

        // 4. up, forwarding the skip sizes when the latent size is not a multiple of the
        // overall down-sampling factor.
        let factor = 1usize << self.shape.downsample_count();
        let forward_sizes = height % factor != 0 || width % factor != 0;
        let n = self.up_blocks.len();
        for (i, block) in self.up_blocks.iter().enumerate() {
            let upsample_size = match skips.len().checked_sub(block.skip_count() + 1) {
                Some(next) if forward_sizes && i + 1 < n => {
                    let (_, _, h, w) = skips[next].dims4()?;
                    Some((h, w))
                }
                _ => None,
            };
            xs = block.forward(&xs, &emb, &text, &mut skips, upsample_size)?;
        }

        // 5. out
        let xs = self.conv_norm_out.forward(&xs, Activation::Silu)?;
        self.conv_out.forward(&xs)?.to_dtype(DType::F32)
    }
}
