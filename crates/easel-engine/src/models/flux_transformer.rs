//! Easel's FLUX.1 transformer: Black Forest Labs' layout and weight names (those of
//! `flux1-dev.safetensors`, and of candle-transformers' `Flux`), on Easel's layers. Its
//! linear layers (which on the CPU widen 16-bit weights, so low-memory mode holds half),
//! attention (fused on the CPU: no score matrix is held), LayerNorm and tanh-GELU are
//! `easel_ops`'; the rotary embedding is computed once a forward in f64, as diffusers does,
//! and applied with candle's interleaved `rope_i`.
//!
//! Per block, in BFL's terms: double-stream blocks modulate, project and QK-normalise the
//! image and text streams apart, attend over both together and run each stream's MLP;
//! single-stream blocks run one fused projection into q, k, v and the MLP's input over the
//! joined sequence, and one projection out of the attention and the MLP's output together.

use std::sync::Mutex;

use candle_core::{DType, Device, Result, Tensor, TensorId, D};
use candle_nn::RmsNorm;
use candle_transformers::models::flux::model::Config;
use candle_transformers::models::flux::WithForward;

use super::flux_weights::{FluxLinear as Linear, FluxWeights};
use super::joint_attention::{rope_attention, split_heads};

/// LayerNorm's and the QK norms' epsilon in every FLUX.1 block.
const NORM_EPS: f64 = 1e-6;
/// Channels of the sinusoidal timestep and guidance embeddings.
const TIME_CHANNELS: usize = 256;

/// `out_layer(silu(in_layer(x)))`: the time, guidance and pooled-text embedders.
struct MlpEmbedder {
    in_layer: Linear,
    out_layer: Linear,
}

impl MlpEmbedder {
    fn new(inputs: usize, hidden: usize, vb: FluxWeights) -> Result<Self> {
        Ok(Self {
            in_layer: vb.pp("in_layer").linear(inputs, hidden)?,
            out_layer: vb.pp("out_layer").linear(hidden, hidden)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.out_layer
            .forward(&candle_nn::ops::silu(&self.in_layer.forward(x)?)?)
    }
}

/// RMSNorms of each head's queries and keys (weights named `scale`).
struct QkNorm {
    query: RmsNorm,
    key: RmsNorm,
}

impl QkNorm {
    fn new(head_dim: usize, vb: FluxWeights) -> Result<Self> {
        // At the compute dtype: the heads they scale are f32 on the CPU whatever the weights.
        let norm = |name: &str| -> Result<RmsNorm> {
            Ok(RmsNorm::new(
                vb.vector(head_dim, &format!("{name}.scale"))?,
                NORM_EPS,
            ))
        };
        Ok(Self {
            query: norm("query_norm")?,
            key: norm("key_norm")?,
        })
    }
}

/// Shift, scale and gate of one modulated sublayer, each `[B, 1, hidden]`.
struct Modulation {
    shift: Tensor,
    scale: Tensor,
    gate: Tensor,
}

impl Modulation {
    /// `x * (1 + scale) + shift`.
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        x.broadcast_mul(&(&self.scale + 1.0)?)?
            .broadcast_add(&self.shift)
    }

    /// `residual + gate * x`.
    fn gated_add(&self, residual: &Tensor, x: &Tensor) -> Result<Tensor> {
        residual + self.gate.broadcast_mul(x)?
    }
}

/// `count` modulations from `lin(silu(vec))`, split in thirds of shift, scale and gate.
fn modulations(lin: &Linear, silu_vec: &Tensor, count: usize) -> Result<Vec<Modulation>> {
    let projected = lin.forward(silu_vec)?.unsqueeze(1)?;
    let width = projected.dim(D::Minus1)? / (3 * count);
    let part = |i: usize| projected.narrow(D::Minus1, i * width, width);
    (0..count)
        .map(|m| {
            Ok(Modulation {
                shift: part(3 * m)?,
                scale: part(3 * m + 1)?,
                gate: part(3 * m + 2)?,
            })
        })
        .collect()
}

/// One stream of a double block.
struct Stream {
    modulation: Linear,
    qkv: Linear,
    norm: QkNorm,
    proj: Linear,
    mlp_in: Linear,
    mlp_out: Linear,
}

impl Stream {
    fn new(
        hidden: usize,
        mlp: usize,
        head_dim: usize,
        vb: &FluxWeights,
        prefix: &str,
    ) -> Result<Self> {
        Ok(Self {
            modulation: vb
                .pp(format!("{prefix}_mod.lin"))
                .linear(hidden, 6 * hidden)?,
            qkv: vb
                .pp(format!("{prefix}_attn.qkv"))
                .linear(hidden, 3 * hidden)?,
            norm: QkNorm::new(head_dim, vb.pp(format!("{prefix}_attn.norm")))?,
            proj: vb
                .pp(format!("{prefix}_attn.proj"))
                .linear(hidden, hidden)?,
            mlp_in: vb.pp(format!("{prefix}_mlp.0")).linear(hidden, mlp)?,
            mlp_out: vb.pp(format!("{prefix}_mlp.2")).linear(mlp, hidden)?,
        })
    }
}

struct DoubleBlock {
    image: Stream,
    text: Stream,
}

struct SingleBlock {
    modulation: Linear,
    /// Into `[q | k | v | mlp]`.
    linear1: Linear,
    norm: QkNorm,
    /// Out of `[attention | gelu(mlp)]`.
    linear2: Linear,
}

/// The FLUX.1 transformer, loaded.
pub struct Flux1Transformer {
    hidden: usize,
    heads: usize,
    mlp: usize,
    axes_dim: Vec<usize>,
    theta: f64,
    img_in: Linear,
    txt_in: Linear,
    time_in: MlpEmbedder,
    vector_in: MlpEmbedder,
    guidance_in: Option<MlpEmbedder>,
    double_blocks: Vec<DoubleBlock>,
    single_blocks: Vec<SingleBlock>,
    final_modulation: Linear,
    final_linear: Linear,
    /// The rotary tables of the latest position ids, kept by the ids tensors' identities: a
    /// job passes the same ids every step, so the tables are made once a job.
    rope_tables: Mutex<Option<RopeTables>>,
}

/// cos and sin `[S, head_dim / 2]` for the text and image ids tensors `of`.
struct RopeTables {
    of: (TensorId, TensorId),
    cos: Tensor,
    sin: Tensor,
}

impl std::fmt::Debug for Flux1Transformer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flux1Transformer")
            .field("hidden", &self.hidden)
            .field("double_blocks", &self.double_blocks.len())
            .field("single_blocks", &self.single_blocks.len())
            .finish_non_exhaustive()
    }
}

impl Flux1Transformer {
    /// Builds the transformer of `config` from `vb` (BFL's names), full or quantized.
    pub fn new(config: &Config, vb: FluxWeights) -> Result<Self> {
        let hidden = config.hidden_size;
        let heads = config.num_heads;
        if heads == 0 || !hidden.is_multiple_of(heads) {
            candle_core::bail!("FLUX transformer: {hidden} channels in {heads} heads")
        }
        let head_dim = hidden / heads;
        if config.axes_dim.iter().sum::<usize>() != head_dim {
            candle_core::bail!(
                "FLUX transformer: rotary axes {:?} do not add up to the head width {head_dim}",
                config.axes_dim
            )
        }
        let mlp = (hidden as f64 * config.mlp_ratio) as usize;
        let double_blocks = (0..config.depth)
            .map(|i| {
                let vb = vb.pp(format!("double_blocks.{i}"));
                Ok(DoubleBlock {
                    image: Stream::new(hidden, mlp, head_dim, &vb, "img")?,
                    text: Stream::new(hidden, mlp, head_dim, &vb, "txt")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let single_blocks = (0..config.depth_single_blocks)
            .map(|i| {
                let vb = vb.pp(format!("single_blocks.{i}"));
                Ok(SingleBlock {
                    modulation: vb.pp("modulation.lin").linear(hidden, 3 * hidden)?,
                    linear1: vb.pp("linear1").linear(hidden, 3 * hidden + mlp)?,
                    norm: QkNorm::new(head_dim, vb.pp("norm"))?,
                    linear2: vb.pp("linear2").linear(hidden + mlp, hidden)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let guidance_in = if config.guidance_embed {
            Some(MlpEmbedder::new(
                TIME_CHANNELS,
                hidden,
                vb.pp("guidance_in"),
            )?)
        } else {
            None
        };
        Ok(Self {
            hidden,
            heads,
            mlp,
            axes_dim: config.axes_dim.clone(),
            theta: config.theta as f64,
            img_in: vb.pp("img_in").linear(config.in_channels, hidden)?,
            txt_in: vb.pp("txt_in").linear(config.context_in_dim, hidden)?,
            time_in: MlpEmbedder::new(TIME_CHANNELS, hidden, vb.pp("time_in"))?,
            vector_in: MlpEmbedder::new(config.vec_in_dim, hidden, vb.pp("vector_in"))?,
            guidance_in,
            double_blocks,
            single_blocks,
            final_modulation: vb
                .pp("final_layer.adaLN_modulation.1")
                .linear(hidden, 2 * hidden)?,
            final_linear: vb
                .pp("final_layer.linear")
                .linear(hidden, config.in_channels)?,
            rope_tables: Mutex::new(None),
        })
    }

    /// The rotary tables of `[text ids; image ids]`: the kept ones when these are the ids
    /// tensors they were made for.
    fn rope_for(
        &self,
        txt_ids: &Tensor,
        img_ids: &Tensor,
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let of = (txt_ids.id(), img_ids.id());
        let mut kept = self
            .rope_tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(tables) = kept
            .as_ref()
            .filter(|tables| tables.of == of && tables.cos.dtype() == dtype)
        {
            return Ok((tables.cos.clone(), tables.sin.clone()));
        }
        let (cos, sin) = self.rope(&Tensor::cat(&[txt_ids, img_ids], 1)?, dtype, device)?;
        *kept = Some(RopeTables {
            of,
            cos: cos.clone(),
            sin: sin.clone(),
        });
        Ok((cos, sin))
    }

    /// cos and sin `[S, head_dim / 2]` of each interleaved pair for the position ids
    /// `[B, S, axes]` (the first sample's: every sample of a job has the same), the angles
    /// in f64 as diffusers computes them.
    fn rope(&self, ids: &Tensor, dtype: DType, device: &Device) -> Result<(Tensor, Tensor)> {
        let ids: Vec<Vec<f32>> = ids.get(0)?.to_dtype(DType::F32)?.to_vec2()?;
        let half = self.hidden / self.heads / 2;
        let mut cos = Vec::with_capacity(ids.len() * half);
        let mut sin = Vec::with_capacity(ids.len() * half);
        for position in &ids {
            for (axis, &dim) in self.axes_dim.iter().enumerate() {
                let id = f64::from(position.get(axis).copied().unwrap_or(0.0));
                for i in 0..dim / 2 {
                    let angle = id * self.theta.powf(-2.0 * i as f64 / dim as f64);
                    cos.push(angle.cos() as f32);
                    sin.push(angle.sin() as f32);
                }
            }
        }
        let table = |values: Vec<f32>| -> Result<Tensor> {
            Tensor::from_vec(values, (ids.len(), half), &Device::Cpu)?
                .to_dtype(dtype)?
                .to_device(device)
        };
        Ok((table(cos)?, table(sin)?))
    }

    /// q, k and v of one stream's `[q | k | v]` projection, as normalised heads.
    fn split_qkv(&self, qkv: &Tensor, norm: &QkNorm) -> Result<(Tensor, Tensor, Tensor)> {
        let part = |i: usize| qkv.narrow(D::Minus1, i * self.hidden, self.hidden);
        Ok((
            split_heads(&part(0)?, self.heads, Some(&norm.query))?,
            split_heads(&part(1)?, self.heads, Some(&norm.key))?,
            split_heads(&part(2)?, self.heads, None)?,
        ))
    }

    fn double_block(
        &self,
        block: &DoubleBlock,
        img: &Tensor,
        txt: &Tensor,
        silu_vec: &Tensor,
        rope: &(Tensor, Tensor),
    ) -> Result<(Tensor, Tensor)> {
        let image_mods = modulations(&block.image.modulation, silu_vec, 2)?;
        let text_mods = modulations(&block.text.modulation, silu_vec, 2)?;
        let project = |stream: &Stream, x: &Tensor, modulation: &Modulation| {
            let normed = modulation.apply(&crate::ops::layer_norm_plain(x, NORM_EPS)?)?;
            self.split_qkv(&stream.qkv.forward(&normed)?, &stream.norm)
        };
        let (qi, ki, vi) = project(&block.image, img, &image_mods[0])?;
        let (qt, kt, vt) = project(&block.text, txt, &text_mods[0])?;
        let q = Tensor::cat(&[&qt, &qi], 2)?;
        let k = Tensor::cat(&[&kt, &ki], 2)?;
        let v = Tensor::cat(&[&vt, &vi], 2)?;
        let attended = rope_attention(&q, &k, &v, &rope.0, &rope.1)?;
        let text_len = txt.dim(1)?;
        let finish = |stream: &Stream, x: &Tensor, attended: Tensor, mods: &[Modulation]| {
            let x = mods[0].gated_add(x, &stream.proj.forward(&attended)?)?;
            let normed = mods[1].apply(&crate::ops::layer_norm_plain(&x, NORM_EPS)?)?;
            let hidden = crate::ops::gelu_tanh(&stream.mlp_in.forward(&normed)?)?;
            mods[1].gated_add(&x, &stream.mlp_out.forward(&hidden)?)
        };
        let img = finish(
            &block.image,
            img,
            attended.narrow(1, text_len, img.dim(1)?)?,
            &image_mods,
        )?;
        let txt = finish(
            &block.text,
            txt,
            attended.narrow(1, 0, text_len)?,
            &text_mods,
        )?;
        Ok((img, txt))
    }

    fn single_block(
        &self,
        block: &SingleBlock,
        x: &Tensor,
        silu_vec: &Tensor,
        rope: &(Tensor, Tensor),
    ) -> Result<Tensor> {
        let mods = modulations(&block.modulation, silu_vec, 1)?;
        let modulation = &mods[0];
        let normed = modulation.apply(&crate::ops::layer_norm_plain(x, NORM_EPS)?)?;
        let projected = block.linear1.forward(&normed)?;
        let qkv = projected.narrow(D::Minus1, 0, 3 * self.hidden)?;
        let (q, k, v) = self.split_qkv(&qkv, &block.norm)?;
        let mlp = projected.narrow(D::Minus1, 3 * self.hidden, self.mlp)?;
        let attended = rope_attention(&q, &k, &v, &rope.0, &rope.1)?;
        let joined = Tensor::cat(&[&attended, &crate::ops::gelu_tanh(&mlp)?], D::Minus1)?;
        modulation.gated_add(x, &block.linear2.forward(&joined)?)
    }
}

/// The sinusoidal embedding `[cos(t f) | sin(t f)]` `[B, 256]` of `t` `[B]` scaled by 1000,
/// its angles in f32 as diffusers computes them.
fn timestep_embedding(t: &Tensor, dtype: DType) -> Result<Tensor> {
    let half = TIME_CHANNELS / 2;
    let t: Vec<f32> = t.to_dtype(DType::F32)?.to_vec1()?;
    let freqs: Vec<f32> = (0..half)
        .map(|j| (-(10000f64.ln()) * j as f64 / half as f64).exp() as f32)
        .collect();
    let mut values = Vec::with_capacity(t.len() * TIME_CHANNELS);
    for &t in &t {
        let t = t * 1000.0;
        values.extend(freqs.iter().map(|&f| (t * f).cos()));
        values.extend(freqs.iter().map(|&f| (t * f).sin()));
    }
    Tensor::from_vec(values, (t.len(), TIME_CHANNELS), &Device::Cpu)?.to_dtype(dtype)
}

impl WithForward for Flux1Transformer {
    fn forward(
        &self,
        img: &Tensor,
        img_ids: &Tensor,
        txt: &Tensor,
        txt_ids: &Tensor,
        timesteps: &Tensor,
        y: &Tensor,
        guidance: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (device, dtype) = (img.device(), img.dtype());
        let rope = self.rope_for(txt_ids, img_ids, dtype, device)?;
        let embed = |t: &Tensor| timestep_embedding(t, dtype)?.to_device(device);
        let mut vec = self.time_in.forward(&embed(timesteps)?)?;
        if let (Some(guidance_in), Some(guidance)) = (&self.guidance_in, guidance) {
            vec = (vec + guidance_in.forward(&embed(guidance)?)?)?;
        }
        let vec = (vec + self.vector_in.forward(y)?)?;
        let silu_vec = candle_nn::ops::silu(&vec)?;

        let mut img = self.img_in.forward(img)?;
        let mut txt = self.txt_in.forward(txt)?;
        for block in &self.double_blocks {
            (img, txt) = self.double_block(block, &img, &txt, &silu_vec, &rope)?;
        }
        let text_len = txt.dim(1)?;
        let mut joined = Tensor::cat(&[&txt, &img], 1)?;
        for block in &self.single_blocks {
            joined = self.single_block(block, &joined, &silu_vec, &rope)?;
        }
        let img = joined.narrow(1, text_len, joined.dim(1)? - text_len)?;
        let projected = self.final_modulation.forward(&silu_vec)?.unsqueeze(1)?;
        let shift = projected.narrow(D::Minus1, 0, self.hidden)?;
        let scale = projected.narrow(D::Minus1, self.hidden, self.hidden)?;
        let normed = crate::ops::layer_norm_plain(&img.contiguous()?, NORM_EPS)?
            .broadcast_mul(&(scale + 1.0)?)?
            .broadcast_add(&shift)?;
        self.final_linear.forward(&normed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    fn tiny() -> Flux1Transformer {
        let config = Config {
            in_channels: 8,
            vec_in_dim: 6,
            context_in_dim: 10,
            hidden_size: 32,
            mlp_ratio: 2.0,
            num_heads: 2,
            depth: 1,
            depth_single_blocks: 1,
            axes_dim: vec![4, 6, 6],
            theta: 10_000,
            qkv_bias: true,
            guidance_embed: true,
        };
        let vars = VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
        Flux1Transformer::new(&config, FluxWeights::Full(vb)).expect("tiny transformer")
    }

    /// Position ids `[1, n, 3]` of an `n`-token row.
    fn ids(n: usize, row: f32) -> Tensor {
        let values: Vec<f32> = (0..n).flat_map(|i| [0.0, row, i as f32]).collect();
        Tensor::from_vec(values, (1, n, 3), &Device::Cpu).expect("ids")
    }

    #[test]
    fn the_rotary_tables_are_made_once_for_a_jobs_ids_and_afresh_for_new_ones() {
        let model = tiny();
        let dev = Device::Cpu;
        let run = |img_ids: &Tensor, txt_ids: &Tensor| {
            let n = img_ids.dim(1).expect("n");
            let img = Tensor::ones((1, n, 8), DType::F32, &dev).expect("img");
            let txt = Tensor::ones((1, 3, 10), DType::F32, &dev).expect("txt");
            let t = Tensor::new(&[0.5f32], &dev).expect("t");
            let y = Tensor::ones((1, 6), DType::F32, &dev).expect("y");
            model
                .forward(&img, img_ids, &txt, txt_ids, &t, &y, Some(&t))
                .expect("forward")
        };
        let (img_ids, txt_ids) = (
            ids(4, 1.0),
            Tensor::zeros((1, 3, 3), DType::F32, &dev).expect("ids"),
        );
        let first = run(&img_ids, &txt_ids);
        let kept = |model: &Flux1Transformer| {
            model
                .rope_tables
                .lock()
                .expect("lock")
                .as_ref()
                .map(|tables| tables.of)
        };
        assert_eq!(kept(&model), Some((txt_ids.id(), img_ids.id())));
        let again = run(&img_ids, &txt_ids);
        let same: f32 = (&first - &again)
            .and_then(|d| d.abs()?.max_all()?.to_scalar())
            .expect("difference");
        assert_eq!(same, 0.0);
        // Other ids (another row, another length) get their own tables.
        let other_ids = ids(6, 2.0);
        let other = run(&other_ids, &txt_ids);
        assert_eq!(other.dims(), [1, 6, 8]);
        assert_eq!(kept(&model), Some((txt_ids.id(), other_ids.id())));
        // Equal ids in a new tensor give the same velocities as the kept tables did.
        let fresh = run(&ids(4, 1.0), &txt_ids);
        let difference: f32 = (&first - &fresh)
            .and_then(|d| d.abs()?.max_all()?.to_scalar())
            .expect("difference");
        assert!(difference < 1e-6, "{difference}");
    }
}
