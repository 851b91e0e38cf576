//! The FLUX.2 transformer (`Flux2Transformer2DModel`, diffusers layout): no biases anywhere,
//! one modulation per stream computed from the timestep and shared by every block, LayerNorms
//! without affine parameters, 4-axis RoPE (T, H, W, L) on interleaved pairs, double-stream
//! blocks (image and text apart, joint attention) then single-stream blocks (one fused
//! projection for q, k, v and the SwiGLU MLP). candle has nothing for FLUX.2.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::RmsNorm;
use serde::Deserialize;

use super::flux2_weights::{Flux2Linear as Linear, Flux2Weights};
use super::joint_attention::{rope_attention, split_heads};

/// `transformer/config.json` of a `Flux2Transformer2DModel`.
#[derive(Debug, Clone, Deserialize)]
pub struct Flux2TransformerConfig {
    /// Width of a head.
    pub attention_head_dim: usize,
    /// Head channels given to each RoPE axis (T, H, W, L); they sum to the head width.
    pub axes_dims_rope: Vec<usize>,
    /// Epsilon of the LayerNorms and the q/k RMSNorms.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Channels of a latent token (128).
    pub in_channels: usize,
    /// Width of the prompt embeddings (3 x the text encoder's hidden size).
    pub joint_attention_dim: usize,
    /// MLP width over the inner width.
    pub mlp_ratio: f64,
    /// Heads.
    pub num_attention_heads: usize,
    /// Double-stream blocks.
    pub num_layers: usize,
    /// Single-stream blocks.
    pub num_single_layers: usize,
    /// Channels out (`None`: `in_channels`).
    #[serde(default)]
    pub out_channels: Option<usize>,
    /// RoPE base (2000).
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// Channels of the sinusoidal timestep embedding (256).
    #[serde(default = "default_time_channels")]
    pub timestep_guidance_channels: usize,
    /// A guidance embedder (FLUX.2 [dev]); klein has none.
    #[serde(default)]
    pub guidance_embeds: bool,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    2000.0
}
fn default_time_channels() -> usize {
    256
}

impl Flux2TransformerConfig {
    fn inner(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    fn mlp(&self) -> usize {
        (self.inner() as f64 * self.mlp_ratio) as usize
    }
}

/// A SwiGLU MLP: `linear_out(silu(a) * b)`, `[a | b] = linear_in(h)`.
struct FeedForward {
    linear_in: Linear,
    linear_out: Linear,
}

impl FeedForward {
    fn new(inner: usize, mlp: usize, weights: &Flux2Weights, name: &str) -> Result<Self> {
        Ok(Self {
            linear_in: weights.linear(inner, 2 * mlp, &format!("{name}.linear_in"))?,
            linear_out: weights.linear(mlp, inner, &format!("{name}.linear_out"))?,
        })
    }

    fn forward(&self, h: &Tensor) -> Result<Tensor> {
        let projected = self.linear_in.forward(h)?;
        let half = projected.dim(D::Minus1)? / 2;
        let a = projected.narrow(D::Minus1, 0, half)?;
        let b = projected.narrow(D::Minus1, half, half)?;
        self.linear_out.forward(&(candle_nn::ops::silu(&a)? * b)?)
    }
}

/// One stream's projections in a double block.
struct StreamAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    norm_q: RmsNorm,
    norm_k: RmsNorm,
    out: Linear,
}

struct DoubleBlock {
    image: StreamAttention,
    text: StreamAttention,
    ff: FeedForward,
    ff_context: FeedForward,
}

struct SingleBlock {
    qkv_mlp: Linear,
    norm_q: RmsNorm,
    norm_k: RmsNorm,
    out: Linear,
}

/// Six modulation chunks of a double-block stream, each `[B, 1, inner]`.
struct StreamModulation {
    shift1: Tensor,
    scale1: Tensor,
    gate1: Tensor,
    shift2: Tensor,
    scale2: Tensor,
    gate2: Tensor,
}

/// cos and sin `[S, head_dim / 2]` of the interleaved rotary embedding of a job's positions.
#[derive(Debug, Clone)]
pub struct Flux2Rope {
    cos: Tensor,
    sin: Tensor,
}

/// The FLUX.2 transformer, loaded.
pub struct Flux2Transformer {
    config: Flux2TransformerConfig,
    x_embedder: Linear,
    context_embedder: Linear,
    time_linear_1: Linear,
    time_linear_2: Linear,
    modulation_image: Linear,
    modulation_text: Linear,
    modulation_single: Linear,
    double_blocks: Vec<DoubleBlock>,
    single_blocks: Vec<SingleBlock>,
    norm_out: Linear,
    proj_out: Linear,
}

impl std::fmt::Debug for Flux2Transformer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flux2Transformer")
            .field("double_blocks", &self.double_blocks.len())
            .field("single_blocks", &self.single_blocks.len())
            .finish()
    }
}

impl Flux2Transformer {
    /// Builds the transformer from diffusers-named weights.
    pub fn new(config: &Flux2TransformerConfig, weights: &Flux2Weights) -> Result<Self> {
        if config.guidance_embeds {
            candle_core::bail!("FLUX.2 [dev]'s guidance embedder is not supported yet");
        }
        let inner = config.inner();
        let mlp = config.mlp();
        let head = config.attention_head_dim;
        let eps = config.eps;
        let out_channels = config.out_channels.unwrap_or(config.in_channels);
        let square = |name: String| weights.linear(inner, inner, &name);
        let stream = |attn: &str, names: [&str; 6]| -> Result<StreamAttention> {
            Ok(StreamAttention {
                q: square(format!("{attn}.{}", names[0]))?,
                k: square(format!("{attn}.{}", names[1]))?,
                v: square(format!("{attn}.{}", names[2]))?,
                norm_q: weights.rms_norm(head, eps, &format!("{attn}.{}", names[3]))?,
                norm_k: weights.rms_norm(head, eps, &format!("{attn}.{}", names[4]))?,
                out: square(format!("{attn}.{}", names[5]))?,
            })
        };
        let double_blocks = (0..config.num_layers)
            .map(|i| {
                let block = format!("transformer_blocks.{i}");
                let attn = format!("{block}.attn");
                Ok(DoubleBlock {
                    image: stream(
                        &attn,
                        ["to_q", "to_k", "to_v", "norm_q", "norm_k", "to_out.0"],
                    )?,
                    text: stream(
                        &attn,
                        [
                            "add_q_proj",
                            "add_k_proj",
                            "add_v_proj",
                            "norm_added_q",
                            "norm_added_k",
                            "to_add_out",
                        ],
                    )?,
                    ff: FeedForward::new(inner, mlp, weights, &format!("{block}.ff"))?,
                    ff_context: FeedForward::new(
                        inner,
                        mlp,
                        weights,
                        &format!("{block}.ff_context"),
                    )?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let single_blocks = (0..config.num_single_layers)
            .map(|i| {
                let attn = format!("single_transformer_blocks.{i}.attn");
                Ok(SingleBlock {
                    qkv_mlp: weights.linear(
                        inner,
                        3 * inner + 2 * mlp,
                        &format!("{attn}.to_qkv_mlp_proj"),
                    )?,
                    norm_q: weights.rms_norm(head, eps, &format!("{attn}.norm_q"))?,
                    norm_k: weights.rms_norm(head, eps, &format!("{attn}.norm_k"))?,
                    out: weights.linear(inner + mlp, inner, &format!("{attn}.to_out"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let time = "time_guidance_embed.timestep_embedder";
        Ok(Self {
            config: config.clone(),
            x_embedder: weights.linear(config.in_channels, inner, "x_embedder")?,
            context_embedder: weights.linear(
                config.joint_attention_dim,
                inner,
                "context_embedder",
            )?,
            time_linear_1: weights.linear(
                config.timestep_guidance_channels,
                inner,
                &format!("{time}.linear_1"),
            )?,
            time_linear_2: weights.linear(inner, inner, &format!("{time}.linear_2"))?,
            modulation_image: weights.linear(
                inner,
                6 * inner,
                "double_stream_modulation_img.linear",
            )?,
            modulation_text: weights.linear(
                inner,
                6 * inner,
                "double_stream_modulation_txt.linear",
            )?,
            modulation_single: weights.linear(
                inner,
                3 * inner,
                "single_stream_modulation.linear",
            )?,
            double_blocks,
            single_blocks,
            norm_out: weights.linear(inner, 2 * inner, "norm_out.linear")?,
            proj_out: weights.linear(inner, out_channels, "proj_out")?,
        })
    }

    /// The velocity of every image token `[B, N, out]` for `image` tokens `[B, N, in]` with
    /// position ids `image_ids` `[N, 4]`, prompt embeddings `text` `[B, L, joint]` with
    /// `text_ids` `[L, 4]`, at noise level `sigma` (the model scales it by 1000).
    pub fn forward(
        &self,
        image: &Tensor,
        image_ids: &Tensor,
        text: &Tensor,
        text_ids: &Tensor,
        sigma: f32,
    ) -> Result<Tensor> {
        let rope = self.rope_for(text_ids, image_ids, image.device(), image.dtype())?;
        self.forward_with(image, text, &rope, sigma)
    }

    /// The rotary embedding of `[text ids; image ids]`, on `device`: made once per job and
    /// given to every step's `forward_with`.
    pub fn rope_for(
        &self,
        text_ids: &Tensor,
        image_ids: &Tensor,
        device: &Device,
        dtype: DType,
    ) -> Result<Flux2Rope> {
        let ids = Tensor::cat(&[text_ids, image_ids], 0)?;
        let (cos, sin) = self.rope(&ids, dtype)?;
        Ok(Flux2Rope {
            cos: cos.to_device(device)?,
            sin: sin.to_device(device)?,
        })
    }

    /// `forward` with the positions' rotary embedding made beforehand (`rope_for`).
    pub fn forward_with(
        &self,
        image: &Tensor,
        text: &Tensor,
        rope: &Flux2Rope,
        sigma: f32,
    ) -> Result<Tensor> {
        let device = image.device();
        let dtype = image.dtype();
        let batch = image.dim(0)?;
        let temb = self.time_embedding(sigma, batch, device, dtype)?;
        let silu_temb = candle_nn::ops::silu(&temb)?;
        let image_mods = modulation(&self.modulation_image.forward(&silu_temb)?, 6)?;
        let text_mods = modulation(&self.modulation_text.forward(&silu_temb)?, 6)?;
        let single_mods = modulation(&self.modulation_single.forward(&silu_temb)?, 3)?;
        let image_mods = stream_modulation(image_mods);
        let text_mods = stream_modulation(text_mods);
        let (cos, sin) = (&rope.cos, &rope.sin);

        let mut img = self.x_embedder.forward(image)?;
        let mut txt = self.context_embedder.forward(text)?;
        for block in &self.double_blocks {
            (img, txt) = self.double_block(block, &img, &txt, &image_mods, &text_mods, cos, sin)?;
        }
        let text_len = txt.dim(1)?;
        let mut h = Tensor::cat(&[&txt, &img], 1)?;
        for block in &self.single_blocks {
            h = self.single_block(block, &h, &single_mods, cos, sin)?;
        }
        let img = h.narrow(1, text_len, h.dim(1)? - text_len)?;
        let out_mods = modulation(&self.norm_out.forward(&silu_temb)?, 2)?;
        let (scale, shift) = (&out_mods[0], &out_mods[1]);
        let normed = modulate(&layer_norm(&img, self.config.eps)?, shift, scale)?;
        self.proj_out.forward(&normed)
    }

    /// `linear_2(silu(linear_1([cos(t f) | sin(t f)])))` with `t = 1000 sigma`.
    fn time_embedding(
        &self,
        sigma: f32,
        batch: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<Tensor> {
        let half = self.config.timestep_guidance_channels / 2;
        let t = f64::from(sigma) * 1000.0;
        let mut values: Vec<f32> = Vec::with_capacity(2 * half);
        let freqs: Vec<f64> = (0..half)
            .map(|j| (-(10000f64.ln()) * j as f64 / half as f64).exp())
            .collect();
        // diffusers computes the angles in f32: t and the frequencies are f32 there.
        let angle = |f: f64| (t as f32) * (f as f32);
        values.extend(freqs.iter().map(|&f| angle(f).cos()));
        values.extend(freqs.iter().map(|&f| angle(f).sin()));
        let embedding = Tensor::from_vec(values, (1, 2 * half), device)?
            .to_dtype(dtype)?
            .repeat((batch, 1))?;
        let hidden = candle_nn::ops::silu(&self.time_linear_1.forward(&embedding)?)?;
        self.time_linear_2.forward(&hidden)
    }

    /// cos and sin `[S, head_dim / 2]` of each interleaved pair, over the 4 axes.
    fn rope(&self, ids: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
        let ids: Vec<Vec<f32>> = ids.to_dtype(DType::F32)?.to_vec2()?;
        let theta = self.config.rope_theta;
        let mut cos = Vec::new();
        let mut sin = Vec::new();
        for position in &ids {
            for (axis, &dim) in self.config.axes_dims_rope.iter().enumerate() {
                let id = f64::from(position.get(axis).copied().unwrap_or(0.0));
                for i in 0..dim / 2 {
                    let angle = id * theta.powf(-2.0 * i as f64 / dim as f64);
                    cos.push(angle.cos() as f32);
                    sin.push(angle.sin() as f32);
                }
            }
        }
        // Made on the CPU (angles in f64, as diffusers computes them); `rope_for` moves them
        // where the attention runs.
        let half = self.config.attention_head_dim / 2;
        let cos = Tensor::from_vec(cos, (ids.len(), half), &Device::Cpu)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (ids.len(), half), &Device::Cpu)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }

    /// `[B, S, inner]` as heads `[B, H, S, D]`, RMSNorm'd when `norm` is given.
    fn heads(&self, x: &Tensor, norm: Option<&RmsNorm>) -> Result<Tensor> {
        split_heads(x, self.config.num_attention_heads, norm)
    }

    #[allow(clippy::too_many_arguments)]
    fn double_block(
        &self,
        block: &DoubleBlock,
        img: &Tensor,
        txt: &Tensor,
        image_mods: &StreamModulation,
        text_mods: &StreamModulation,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let eps = self.config.eps;
        let n_img = modulate(
            &layer_norm(img, eps)?,
            &image_mods.shift1,
            &image_mods.scale1,
        )?;
        let n_txt = modulate(&layer_norm(txt, eps)?, &text_mods.shift1, &text_mods.scale1)?;
        let project = |stream: &StreamAttention, n: &Tensor| -> Result<(Tensor, Tensor, Tensor)> {
            Ok((
                self.heads(&stream.q.forward(n)?, Some(&stream.norm_q))?,
                self.heads(&stream.k.forward(n)?, Some(&stream.norm_k))?,
                self.heads(&stream.v.forward(n)?, None)?,
            ))
        };
        let (qi, ki, vi) = project(&block.image, &n_img)?;
        let (qt, kt, vt) = project(&block.text, &n_txt)?;
        let q = Tensor::cat(&[&qt, &qi], 2)?;
        let k = Tensor::cat(&[&kt, &ki], 2)?;
        let v = Tensor::cat(&[&vt, &vi], 2)?;
        let attended = rope_attention(&q, &k, &v, cos, sin)?;
        let text_len = txt.dim(1)?;
        let attn_txt = attended.narrow(1, 0, text_len)?;
        let attn_img = attended.narrow(1, text_len, img.dim(1)?)?;

        let img = (img
            + image_mods
                .gate1
                .broadcast_mul(&block.image.out.forward(&attn_img)?)?)?;
        let ff_in = modulate(
            &layer_norm(&img, eps)?,
            &image_mods.shift2,
            &image_mods.scale2,
        )?;
        let img = (&img + image_mods.gate2.broadcast_mul(&block.ff.forward(&ff_in)?)?)?;

        let txt = (txt
            + text_mods
                .gate1
                .broadcast_mul(&block.text.out.forward(&attn_txt)?)?)?;
        let ff_in = modulate(
            &layer_norm(&txt, eps)?,
            &text_mods.shift2,
            &text_mods.scale2,
        )?;
        let txt = (&txt
            + text_mods
                .gate2
                .broadcast_mul(&block.ff_context.forward(&ff_in)?)?)?;
        Ok((img, txt))
    }

    fn single_block(
        &self,
        block: &SingleBlock,
        h: &Tensor,
        mods: &[Tensor],
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<Tensor> {
        let (shift, scale, gate) = (&mods[0], &mods[1], &mods[2]);
        let inner = self.config.inner();
        let mlp = self.config.mlp();
        let n = modulate(&layer_norm(h, self.config.eps)?, shift, scale)?;
        let projected = block.qkv_mlp.forward(&n)?;
        let part = |start: usize, len: usize| projected.narrow(D::Minus1, start, len);
        let q = self.heads(&part(0, inner)?, Some(&block.norm_q))?;
        let k = self.heads(&part(inner, inner)?, Some(&block.norm_k))?;
        let v = self.heads(&part(2 * inner, inner)?, None)?;
        let a = part(3 * inner, mlp)?;
        let b = part(3 * inner + mlp, mlp)?;
        let attended = rope_attention(&q, &k, &v, cos, sin)?;
        let mlp_out = (candle_nn::ops::silu(&a)? * b)?;
        let out = block
            .out
            .forward(&Tensor::cat(&[&attended, &mlp_out], D::Minus1)?)?;
        h + gate.broadcast_mul(&out)?
    }
}

/// `chunks` equal parts of a modulation `[B, chunks * inner]`, each `[B, 1, inner]`.
fn modulation(projected: &Tensor, chunks: usize) -> Result<Vec<Tensor>> {
    let width = projected.dim(D::Minus1)? / chunks;
    (0..chunks)
        .map(|i| projected.narrow(D::Minus1, i * width, width)?.unsqueeze(1))
        .collect()
}

fn stream_modulation(mut parts: Vec<Tensor>) -> StreamModulation {
    let mut take = || parts.remove(0);
    StreamModulation {
        shift1: take(),
        scale1: take(),
        gate1: take(),
        shift2: take(),
        scale2: take(),
        gate2: take(),
    }
}

/// `x * (1 + scale) + shift`.
fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    x.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)
}

/// LayerNorm over the last dimension without affine parameters.
fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    crate::ops::layer_norm_plain(x, eps)
}
