//! The UNet's building blocks as diffusers names and computes them (`ResnetBlock2D` with its
//! time embedding, `Transformer2DModel` with `BasicTransformerBlock`s, the down, mid and up
//! blocks), written over Easel's own convolution and attention so that the UNet, the most
//! expensive network of every Stable Diffusion step, runs on them.

use std::sync::Mutex;

use candle_core::{Module, Result, Tensor, TensorId, D};
use candle_nn::{self as nn, VarBuilder};

use crate::ops::{
    attention_tokens, conv2d_strided, geglu, linear, linear_from_1x1_conv, linear_no_bias,
    Activation, Addend, Arrangement, Conv2d, GroupNorm, LayerNorm, Linear,
};

/// Epsilon of the GroupNorm in front of each transformer, fixed in diffusers.
const TRANSFORMER_NORM_EPS: f64 = 1e-6;
/// Epsilon of the transformer blocks' LayerNorms, fixed in diffusers.
const LAYER_NORM_EPS: f64 = 1e-5;
/// Token rows (over the batch's images) the feed-forward takes at once.
const FEED_FORWARD_CHUNK_ROWS: usize = 2048;

/// What every resnet of a UNet shares.
#[derive(Debug, Clone, Copy)]
pub struct ResnetShape {
    /// Width of the time embedding each resnet projects and adds.
    pub time_channels: usize,
    /// GroupNorm groups.
    pub groups: usize,
    /// GroupNorm epsilon.
    pub eps: f64,
}

/// `ResnetBlock2D`: `shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))) + proj(silu(t)))))`,
/// divided by the output scale factor.
#[derive(Debug)]
pub struct Resnet {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
    output_scale_factor: f64,
}

impl Resnet {
    /// Loads a block mapping `in_channels` to `out_channels`.
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        shape: ResnetShape,
        output_scale_factor: f64,
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
            norm1: GroupNorm::load(shape.groups, in_channels, shape.eps, vb.pp("norm1"))?,
            conv1: conv2d_strided(in_channels, out_channels, 3, 1, 1, vb.pp("conv1"))?,
            time_emb_proj: linear(shape.time_channels, out_channels, vb.pp("time_emb_proj"))?,
            norm2: GroupNorm::load(shape.groups, out_channels, shape.eps, vb.pp("norm2"))?,
            conv2: conv2d_strided(out_channels, out_channels, 3, 1, 1, vb.pp("conv2"))?,
            shortcut,
            output_scale_factor,
        })
    }

    /// Runs the block on `xs` `[B, C, H, W]` with the time embedding `time` `[B, T]`.
    pub fn forward(&self, xs: &Tensor, time: &Tensor) -> Result<Tensor> {
        let time = self.time_emb_proj.forward(&nn::ops::silu(time)?)?;
        let hidden = self.conv1.forward_plus(
            &self.norm1.forward(xs, Activation::Silu)?,
            Addend::ChannelShift(&time),
        )?;
        let shortcut = match &self.shortcut {
            Some(shortcut) => shortcut.forward(xs)?,
            None => xs.clone(),
        };
        let sum = self.conv2.forward_plus(
            &self.norm2.forward(&hidden, Activation::Silu)?,
            Addend::Residual(&shortcut),
        )?;
        if self.output_scale_factor == 1.0 {
            Ok(sum)
        } else {
            sum / self.output_scale_factor
        }
    }
}

/// Multi-head attention of `query_dim`-wide tokens to `context_dim`-wide ones (the same
/// tokens for self-attention); diffusers' `Attention` without biases on q, k and v.
#[derive(Debug)]
struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    /// The keys and values of the last context attended to (not the tokens themselves), by
    /// that tensor's id: a job's text embeddings are one tensor over all its steps, so
    /// cross-attention projects them once a job rather than once a step.
    context_keys: Mutex<Option<ContextKeys>>,
}

/// A context's keys and values, and which tensor they were projected from.
#[derive(Debug)]
struct ContextKeys {
    of: TensorId,
    k: Tensor,
    v: Tensor,
}

impl Attention {
    fn new(vb: VarBuilder, query_dim: usize, context_dim: usize, heads: usize) -> Result<Self> {
        Ok(Self {
            to_q: linear_no_bias(query_dim, query_dim, vb.pp("to_q"))?,
            to_k: linear_no_bias(context_dim, query_dim, vb.pp("to_k"))?,
            to_v: linear_no_bias(context_dim, query_dim, vb.pp("to_v"))?,
            to_out: linear(query_dim, query_dim, vb.pp("to_out.0"))?,
            heads,
            context_keys: Mutex::new(None),
        })
    }

    /// `xs` `[B, L, C]` attending to `context` `[B, Lc, Cc]`, plus `residual` (`xs`'s shape).
    fn forward_plus(&self, xs: &Tensor, context: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let head_dim = xs.dim(2)? / self.heads;
        let q = self.to_q.forward(xs)?;
        let (k, v) = self.keys_and_values(xs, context)?;
        let scale = 1.0 / (head_dim as f64).sqrt();
        self.to_out
            .forward_plus(&attention_tokens(&q, &k, &v, self.heads, scale)?, residual)
    }

    /// The keys and values of `context`: projected afresh for self-attention (`context` is
    /// `xs`), kept from the last call when it attended to the same context tensor.
    fn keys_and_values(&self, xs: &Tensor, context: &Tensor) -> Result<(Tensor, Tensor)> {
        let project = || {
            Ok::<_, candle_core::Error>((self.to_k.forward(context)?, self.to_v.forward(context)?))
        };
        if context.id() == xs.id() {
            return project();
        }
        let mut kept = self
            .context_keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(keys) = kept.as_ref().filter(|keys| keys.of == context.id()) {
            return Ok((keys.k.clone(), keys.v.clone()));
        }
        let (k, v) = project()?;
        *kept = Some(ContextKeys {
            of: context.id(),
            k: k.clone(),
            v: v.clone(),
        });
        Ok((k, v))
    }
}

/// `GEGLU` then a linear layer: `net.2(a * gelu(b))` where `[a, b] = net.0.proj(x)`.
#[derive(Debug)]
struct FeedForward {
    project_in: Linear,
    project_out: Linear,
}

impl FeedForward {
    fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        let inner = dim * 4;
        Ok(Self {
            project_in: linear(dim, inner * 2, vb.pp("net.0.proj"))?,
            project_out: linear(inner, dim, vb.pp("net.2"))?,
        })
    }

    /// The feed-forward of `xs` `[B, T, C]` plus `residual` (the same shape).
    fn forward_plus(&self, xs: &Tensor, residual: &Tensor) -> Result<Tensor> {
        // Long maps go through in chunks of token rows: the projection's output is 8 times
        // the input's width, and chunks keep that transient small (84 MB for one 512 px
        // level-0 pass at once, 21 MB in chunks). Rows of the flattened batch, so that each
        // chunk is a contiguous view rather than a copy.
        let dims = xs.dims().to_vec();
        let width = xs.dim(D::Minus1)?;
        let rows = xs.elem_count() / width.max(1);
        if rows <= FEED_FORWARD_CHUNK_ROWS {
            return self.forward_chunk(xs, residual);
        }
        let xs = xs.contiguous()?.reshape((rows, width))?;
        let residual = residual.contiguous()?.reshape((rows, width))?;
        let chunks = (0..rows)
            .step_by(FEED_FORWARD_CHUNK_ROWS)
            .map(|start| {
                let len = FEED_FORWARD_CHUNK_ROWS.min(rows - start);
                self.forward_chunk(&xs.narrow(0, start, len)?, &residual.narrow(0, start, len)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&chunks, 0)?.reshape(dims)
    }

    fn forward_chunk(&self, xs: &Tensor, residual: &Tensor) -> Result<Tensor> {
        // diffusers' GEGLU, with the exact (erf) GELU.
        let gated = geglu(&self.project_in.forward(xs)?)?;
        self.project_out.forward_plus(&gated, residual)
    }
}

/// `BasicTransformerBlock`: self-attention, cross-attention to the text, feed-forward, each
/// after a LayerNorm and added to its input.
#[derive(Debug)]
struct TransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl TransformerBlock {
    fn new(vb: VarBuilder, dim: usize, context_dim: usize, heads: usize) -> Result<Self> {
        Ok(Self {
            norm1: LayerNorm::load(dim, LAYER_NORM_EPS, vb.pp("norm1"))?,
            attn1: Attention::new(vb.pp("attn1"), dim, dim, heads)?,
            norm2: LayerNorm::load(dim, LAYER_NORM_EPS, vb.pp("norm2"))?,
            attn2: Attention::new(vb.pp("attn2"), dim, context_dim, heads)?,
            norm3: LayerNorm::load(dim, LAYER_NORM_EPS, vb.pp("norm3"))?,
            ff: FeedForward::new(vb.pp("ff"), dim)?,
        })
    }

    fn forward(&self, xs: &Tensor, text: &Tensor) -> Result<Tensor> {
        let normed = self.norm1.forward(xs)?;
        let xs = self.attn1.forward_plus(&normed, &normed, xs)?;
        let xs = self
            .attn2
            .forward_plus(&self.norm2.forward(&xs)?, text, &xs)?;
        self.ff.forward_plus(&self.norm3.forward(&xs)?, &xs)
    }
}

/// What every transformer of a UNet shares.
#[derive(Debug, Clone, Copy)]
pub struct TransformerShape {
    /// Width of the text embeddings attended to.
    pub context_dim: usize,
    /// GroupNorm groups in front of each transformer.
    pub groups: usize,
    /// Whether the projections are linear layers (SD 2.x, SDXL) or 1x1 convolutions.
    pub linear_projection: bool,
}

/// `Transformer2DModel`: the map normalised, projected to tokens, run through `depth`
/// transformer blocks, projected back and added to the input. The projections are linear
/// layers or 1x1 convolutions in the weights (`use_linear_projection`), the same product
/// either way: both read the map's planes and write tokens, or the reverse, in place.
#[derive(Debug)]
pub struct Transformer {
    norm: GroupNorm,
    proj_in: Linear,
    blocks: Vec<TransformerBlock>,
    proj_out: Linear,
}

impl Transformer {
    /// Loads a transformer over `channels` with `heads` heads and `depth` blocks.
    pub fn new(
        vb: VarBuilder,
        channels: usize,
        heads: usize,
        depth: usize,
        shape: TransformerShape,
    ) -> Result<Self> {
        let projection = |name: &str| -> Result<Linear> {
            if shape.linear_projection {
                linear(channels, channels, vb.pp(name))
            } else {
                linear_from_1x1_conv(channels, channels, vb.pp(name))
            }
        };
        let blocks = (0..depth)
            .map(|i| {
                TransformerBlock::new(
                    vb.pp(format!("transformer_blocks.{i}")),
                    channels,
                    shape.context_dim,
                    heads,
                )
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            norm: GroupNorm::load(shape.groups, channels, TRANSFORMER_NORM_EPS, vb.pp("norm"))?,
            proj_in: projection("proj_in")?,
            blocks,
            proj_out: projection("proj_out")?,
        })
    }

    /// Runs the transformer on `xs` `[B, C, H, W]` attending to `text` `[B, L, Ct]`.
    pub fn forward(&self, xs: &Tensor, text: &Tensor) -> Result<Tensor> {
        let (batch, channels, height, width) = xs.dims4()?;
        let planes = (batch, channels, height * width);
        let normed = self.norm.forward(xs, Activation::Identity)?;
        let mut tokens = self.proj_in.forward_arranged(
            &normed.reshape(planes)?,
            Arrangement::Planes,
            Arrangement::Tokens,
        )?;
        for block in &self.blocks {
            tokens = block.forward(&tokens, text)?;
        }
        self.proj_out
            .forward_arranged_plus(
                &tokens,
                Arrangement::Tokens,
                Arrangement::Planes,
                &xs.reshape(planes)?,
            )?
            .reshape((batch, channels, height, width))
    }
}

/// One level of the UNet's down path: resnets (each followed by a transformer when the level
/// has attention), then a stride-2 convolution except at the deepest level.
#[derive(Debug)]
pub struct DownBlock {
    resnets: Vec<Resnet>,
    attentions: Vec<Transformer>,
    downsample: Option<Conv2d>,
    downsample_padding: usize,
}

/// The shape of one level, shared by its down and up blocks.
#[derive(Debug, Clone, Copy)]
pub struct LevelShape {
    /// Channels the level works at.
    pub channels: usize,
    /// Transformer depth and heads when the level has attention.
    pub attention: Option<(usize, usize)>,
}

impl DownBlock {
    /// Loads `down_blocks.{i}` taking `in_channels`, with `layers` resnets.
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        level: LevelShape,
        layers: usize,
        resnet: ResnetShape,
        transformer: TransformerShape,
        downsample_padding: Option<usize>,
    ) -> Result<Self> {
        let (resnets, attentions) = level_layers(&vb, level, resnet, transformer, layers, |i| {
            if i == 0 {
                in_channels
            } else {
                level.channels
            }
        })?;
        let downsample = match downsample_padding {
            Some(padding) => Some(conv2d_strided(
                level.channels,
                level.channels,
                3,
                2,
                padding,
                vb.pp("downsamplers.0.conv"),
            )?),
            None => None,
        };
        Ok(Self {
            resnets,
            attentions,
            downsample,
            downsample_padding: downsample_padding.unwrap_or(1),
        })
    }

    /// Runs the level; pushes every output the up path takes as a skip onto `skips`.
    pub fn forward(
        &self,
        xs: &Tensor,
        time: &Tensor,
        text: &Tensor,
        skips: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        let mut xs = xs.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            xs = resnet.forward(&xs, time)?;
            if let Some(transformer) = self.attentions.get(i) {
                xs = transformer.forward(&xs, text)?;
            }
            skips.push(xs.clone());
        }
        if let Some(conv) = &self.downsample {
            xs = if self.downsample_padding == 0 {
                // Padded on the right and bottom only, as diffusers does without padding.
                conv.forward(&xs.pad_with_zeros(D::Minus1, 0, 1)?.pad_with_zeros(
                    D::Minus2,
                    0,
                    1,
                )?)?
            } else {
                conv.forward(&xs)?
            };
            skips.push(xs.clone());
        }
        Ok(xs)
    }
}

/// The `layers` resnets of a level (resnet `i` taking `in_channels(i)`), each followed by a
/// transformer when the level has attention.
fn level_layers(
    vb: &VarBuilder,
    level: LevelShape,
    resnet: ResnetShape,
    transformer: TransformerShape,
    layers: usize,
    in_channels: impl Fn(usize) -> usize,
) -> Result<(Vec<Resnet>, Vec<Transformer>)> {
    let mut resnets = Vec::with_capacity(layers);
    let mut attentions = Vec::new();
    for i in 0..layers {
        resnets.push(Resnet::new(
            vb.pp(format!("resnets.{i}")),
            in_channels(i),
            level.channels,
            resnet,
            1.0,
        )?);
        if let Some((depth, heads)) = level.attention {
            attentions.push(Transformer::new(
                vb.pp(format!("attentions.{i}")),
                level.channels,
                heads,
                depth,
                transformer,
            )?);
        }
    }
    Ok((resnets, attentions))
}

/// `UNetMidBlock2DCrossAttn`: a resnet, then a transformer and a resnet.
#[derive(Debug)]
pub struct MidBlock {
    first: Resnet,
    attention: Transformer,
    second: Resnet,
}

impl MidBlock {
    /// Loads `mid_block` over the deepest level.
    pub fn new(
        vb: VarBuilder,
        channels: usize,
        heads: usize,
        depth: usize,
        resnet: ResnetShape,
        transformer: TransformerShape,
        output_scale_factor: f64,
    ) -> Result<Self> {
        let resnets = vb.pp("resnets");
        Ok(Self {
            first: Resnet::new(
                resnets.pp("0"),
                channels,
                channels,
                resnet,
                output_scale_factor,
            )?,
            attention: Transformer::new(
                vb.pp("attentions.0"),
                channels,
                heads,
                depth,
                transformer,
            )?,
            second: Resnet::new(
                resnets.pp("1"),
                channels,
                channels,
                resnet,
                output_scale_factor,
            )?,
        })
    }

    /// Runs the block.
    pub fn forward(&self, xs: &Tensor, time: &Tensor, text: &Tensor) -> Result<Tensor> {
        let xs = self.first.forward(xs, time)?;
        let xs = self.attention.forward(&xs, text)?;
        self.second.forward(&xs, time)
    }
}

/// One level of the UNet's up path: resnets over the input joined with a skip (each followed
/// by a transformer when the level has attention), then a nearest 2x upsample and a
/// convolution except at the top level.
#[derive(Debug)]
pub struct UpBlock {
    resnets: Vec<Resnet>,
    attentions: Vec<Transformer>,
    upsample: Option<Conv2d>,
}

impl UpBlock {
    /// Loads `up_blocks.{i}`: `from_below` channels arrive from the level below, the skips
    /// carry `skip_channels` (the first `layers - 1`: the level's own; the last: the level
    /// above's input).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vb: VarBuilder,
        from_below: usize,
        last_skip_channels: usize,
        level: LevelShape,
        layers: usize,
        resnet: ResnetShape,
        transformer: TransformerShape,
        upsample: bool,
    ) -> Result<Self> {
        // The last resnet's skip is the level above's input; the others are the level's own.
        let (resnets, attentions) = level_layers(&vb, level, resnet, transformer, layers, |i| {
            let from = if i == 0 { from_below } else { level.channels };
            let skip = if i + 1 == layers {
                last_skip_channels
            } else {
                level.channels
            };
            from + skip
        })?;
        let upsample = if upsample {
            Some(conv2d_strided(
                level.channels,
                level.channels,
                3,
                1,
                1,
                vb.pp("upsamplers.0.conv"),
            )?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            upsample,
        })
    }

    /// How many skips the level takes.
    pub fn skip_count(&self) -> usize {
        self.resnets.len()
    }

    /// Runs the level, taking its skips from the end of `skips`; `upsample_size` is the size
    /// to upsample to when it is not twice the input's.
    pub fn forward(
        &self,
        xs: &Tensor,
        time: &Tensor,
        text: &Tensor,
        skips: &mut Vec<Tensor>,
        upsample_size: Option<(usize, usize)>,
    ) -> Result<Tensor> {
        let mut xs = xs.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            let Some(skip) = skips.pop() else {
                candle_core::bail!("the UNet's up path ran out of skip connections");
            };
            xs = resnet.forward(&Tensor::cat(&[&xs, &skip], 1)?, time)?;
            if let Some(transformer) = self.attentions.get(i) {
                xs = transformer.forward(&xs, text)?;
            }
        }
        if let Some(conv) = &self.upsample {
            let (_, _, height, width) = xs.dims4()?;
            let (to_h, to_w) = upsample_size.unwrap_or((2 * height, 2 * width));
            xs = conv.forward(&xs.upsample_nearest2d(to_h, to_w)?)?;
        }
        Ok(xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    /// The largest absolute difference between `a` and `b`.
    fn largest_difference(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs())
            .and_then(|d| d.flatten_all())
            .and_then(|d| d.max(0))
            .and_then(|d| d.to_scalar::<f32>())
            .expect("difference")
    }

    #[test]
    fn the_feed_forward_in_row_chunks_equals_it_in_one_pass() {
        let device = Device::Cpu;
        let vars = VarMap::new();
        let ff = FeedForward::new(VarBuilder::from_varmap(&vars, DType::F32, &device), 8)
            .expect("feed-forward");
        // More rows than one chunk, and a partial last chunk.
        let tokens = FEED_FORWARD_CHUNK_ROWS + 37;
        let xs = Tensor::randn(0f32, 1.0, (2, tokens, 8), &device).expect("xs");
        let residual = Tensor::randn(0f32, 1.0, (2, tokens, 8), &device).expect("residual");
        let chunked = ff.forward_plus(&xs, &residual).expect("chunked");
        let whole = ff.forward_chunk(&xs, &residual).expect("whole");
        assert_eq!(chunked.dims(), &[2, tokens, 8]);
        let difference = largest_difference(&chunked, &whole);
        assert!(difference < 1e-5, "{difference}");
    }

    #[test]
    fn cross_attention_projects_a_context_once_and_a_new_context_afresh() {
        let device = Device::Cpu;
        let vars = VarMap::new();
        let attention =
            Attention::new(VarBuilder::from_varmap(&vars, DType::F32, &device), 8, 6, 2)
                .expect("attention");
        let xs = Tensor::randn(0f32, 1.0, (2, 5, 8), &device).expect("xs");
        let text = Tensor::randn(0f32, 1.0, (2, 3, 6), &device).expect("text");
        let other_text = Tensor::randn(0f32, 1.0, (2, 3, 6), &device).expect("other text");
        let fresh = |context: &Tensor| {
            let (q, k, v) = (
                attention.to_q.forward(&xs).expect("q"),
                attention.to_k.forward(context).expect("k"),
                attention.to_v.forward(context).expect("v"),
            );
            attention_tokens(&q, &k, &v, 2, 0.5)
                .and_then(|a| attention.to_out.forward(&a))
                .and_then(|a| a + &xs)
                .expect("fresh")
        };
        let first = attention.forward_plus(&xs, &text, &xs).expect("first");
        let kept = attention
            .context_keys
            .lock()
            .expect("lock")
            .as_ref()
            .map(|keys| keys.of);
        assert_eq!(kept, Some(text.id()));
        let again = attention.forward_plus(&xs, &text, &xs).expect("again");
        assert!(largest_difference(&first, &fresh(&text)) < 1e-5);
        assert!(largest_difference(&again, &first) == 0.0);
        // Another context tensor is projected, not taken for the kept one.
        let other = attention
            .forward_plus(&xs, &other_text, &xs)
            .expect("other");
        assert!(largest_difference(&other, &fresh(&other_text)) < 1e-5);
        assert!(largest_difference(&other, &first) > 1e-3);
        // Self-attention keeps nothing.
        let self_attention = Attention::new(
            VarBuilder::from_varmap(&vars, DType::F32, &device).pp("self"),
            8,
            8,
            2,
        )
        .expect("self-attention");
        let normed = xs.clone();
        let _ = self_attention
            .forward_plus(&normed, &normed, &xs)
            .expect("self");
        assert!(self_attention.context_keys.lock().expect("lock").is_none());
    }
}
