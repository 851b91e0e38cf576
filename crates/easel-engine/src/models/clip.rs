//! CLIP text encoder built from its own `config.json`, as transformers' `CLIPTextModel` and
//! `CLIPTextModelWithProjection` compute it: final and penultimate hidden states, and the pooled
//! (optionally projected) output at the first end-of-text token.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{embedding, Embedding, VarBuilder};

use crate::ops::{compute_dtype, linear, linear_no_bias, LayerNorm, Linear};

use super::config::ClipTextConfig;

/// CLIP's two activations.
#[derive(Debug, Clone, Copy)]
enum Activation {
    QuickGelu,
    Gelu,
}

impl Activation {
    fn forward(self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Activation::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702f64)?)?,
            Activation::Gelu => xs.gelu_erf(),
        }
    }
}

#[derive(Debug)]
struct SelfAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    fn new(vb: VarBuilder, cfg: &ClipTextConfig) -> Result<Self> {
        let width = cfg.hidden_size;
        Ok(Self {
            q_proj: linear(width, width, vb.pp("q_proj"))?,
            k_proj: linear(width, width, vb.pp("k_proj"))?,
            v_proj: linear(width, width, vb.pp("v_proj"))?,
            out_proj: linear(width, width, vb.pp("out_proj"))?,
            num_heads: cfg.num_attention_heads,
            head_dim: width / cfg.num_attention_heads,
        })
    }

    fn forward(&self, xs: &Tensor, causal_mask: &Tensor) -> Result<Tensor> {
        let (batch, seq_len, width) = xs.dims3()?;
        let heads = |t: Tensor| -> Result<Tensor> {
            t.reshape((batch, seq_len, self.num_heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let scale = (self.head_dim as f64).powf(-0.5);
        let q = heads((self.q_proj.forward(xs)? * scale)?)?;
        let k = heads(self.k_proj.forward(xs)?)?;
        let v = heads(self.v_proj.forward(xs)?)?;
        let dtype = q.dtype();
        let scores = q
            .to_dtype(DType::F32)?
            .matmul(&k.to_dtype(DType::F32)?.t()?)?
            .broadcast_add(causal_mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
        let out = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((batch, seq_len, width))?;
        self.out_proj.forward(&out)
    }
}

#[derive(Debug)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: SelfAttention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    activation: Activation,
}

impl EncoderLayer {
    fn new(vb: VarBuilder, cfg: &ClipTextConfig, activation: Activation) -> Result<Self> {
        let (width, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        Ok(Self {
            layer_norm1: LayerNorm::load(width, eps, vb.pp("layer_norm1"))?,
            self_attn: SelfAttention::new(vb.pp("self_attn"), cfg)?,
            layer_norm2: LayerNorm::load(width, eps, vb.pp("layer_norm2"))?,
            fc1: linear(cfg.hidden_size, cfg.intermediate_size, vb.pp("mlp.fc1"))?,
            fc2: linear(cfg.intermediate_size, cfg.hidden_size, vb.pp("mlp.fc2"))?,
            activation,
        })
    }

    fn forward(&self, xs: &Tensor, causal_mask: &Tensor) -> Result<Tensor> {
        let attended = self
            .self_attn
            .forward(&self.layer_norm1.forward(xs)?, causal_mask)?;
        let xs = (xs + attended)?;
        let hidden = self.fc1.forward(&self.layer_norm2.forward(&xs)?)?;
        let hidden = self.fc2.forward(&self.activation.forward(&hidden)?)?;
        xs + hidden
    }
}

/// What one forward pass of the text encoder gives.
#[derive(Debug)]
pub struct ClipOutput {
    /// Final hidden states after the final LayerNorm, `[batch, seq, hidden]` (SD 1.x, 2.x).
    pub last_hidden_state: Tensor,
    /// Output of the second-to-last layer, without the final LayerNorm (SDXL).
    pub penultimate_hidden_state: Tensor,
    /// The final hidden state at the first end-of-text token, projected when the model has a
    /// projection, `[batch, width]`.
    pub pooled: Tensor,
}

/// A CLIP text encoder.
#[derive(Debug)]
pub struct ClipTextModel {
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    text_projection: Option<Linear>,
    eos_token_id: u32,
    max_positions: usize,
    /// The dtype the layers compute in (f32 on the CPU, where the matrices and embeddings may
    /// be held in f16).
    compute: DType,
}

impl ClipTextModel {
    /// Builds the model from `vb`, accepting keys with or without the `text_model.` prefix.
    pub fn new(vb: VarBuilder, cfg: &ClipTextConfig) -> Result<Self> {
        let activation = match cfg.hidden_act.as_str() {
            "quick_gelu" => Activation::QuickGelu,
            "gelu" => Activation::Gelu,
            other => candle_core::bail!("unsupported CLIP activation {other:?}"),
        };
        let text_vb = if vb.contains_tensor("text_model.embeddings.token_embedding.weight") {
            vb.pp("text_model")
        } else {
            vb.clone()
        };
        let emb_vb = text_vb.pp("embeddings");
        let token_embedding = embedding(
            cfg.vocab_size,
            cfg.hidden_size,
            emb_vb.pp("token_embedding"),
        )?;
        let position_embedding = embedding(
            cfg.max_position_embeddings,
            cfg.hidden_size,
            emb_vb.pp("position_embedding"),
        )?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::new(text_vb.pp(format!("encoder.layers.{i}")), cfg, activation))
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm = LayerNorm::load(
            cfg.hidden_size,
            cfg.layer_norm_eps,
            text_vb.pp("final_layer_norm"),
        )?;
        let text_projection = if cfg.has_projection() {
            let width = cfg.projection_dim.unwrap_or(cfg.hidden_size);
            Some(linear_no_bias(
                cfg.hidden_size,
                width,
                vb.pp("text_projection"),
            )?)
        } else {
            None
        };
        Ok(Self {
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
            text_projection,
            eos_token_id: cfg.eos_token_id.unwrap_or(49407),
            max_positions: cfg.max_position_embeddings,
            compute: compute_dtype(vb.device(), vb.dtype()),
        })
    }

    /// Encodes one batch of token ids (each row padded to the same length).
    pub fn forward(&self, token_ids: &[Vec<u32>], device: &Device) -> Result<ClipOutput> {
        let batch = token_ids.len();
        let seq_len = token_ids.first().map_or(0, Vec::len);
        if seq_len == 0 || seq_len > self.max_positions {
            candle_core::bail!(
                "CLIP takes 1 to {} tokens, got {seq_len}",
                self.max_positions
            );
        }
        let flat: Vec<u32> = token_ids.iter().flatten().copied().collect();
        let ids = Tensor::from_vec(flat, (batch, seq_len), device)?;
        let positions = Tensor::arange(0u32, seq_len as u32, device)?.unsqueeze(0)?;
        let mut xs = self
            .token_embedding
            .forward(&ids)?
            .to_dtype(self.compute)?
            .broadcast_add(
                &self
                    .position_embedding
                    .forward(&positions)?
                    .to_dtype(self.compute)?,
            )?;
        let causal_mask = causal_mask(seq_len, device)?;
        let mut penultimate = xs.clone();
        let last_index = self.layers.len().saturating_sub(1);
        for (index, layer) in self.layers.iter().enumerate() {
            if index == last_index {
                penultimate = xs.clone();
            }
            xs = layer.forward(&xs, &causal_mask)?;
        }
        let last_hidden_state = self.final_layer_norm.forward(&xs)?;
        let pooled_rows = token_ids
            .iter()
            .enumerate()
            .map(|(row, ids)| {
                let eos = ids
                    .iter()
                    .position(|&t| t == self.eos_token_id)
                    .unwrap_or(seq_len - 1);
                last_hidden_state.get(row)?.get(eos)
            })
            .collect::<Result<Vec<_>>>()?;
        let pooled = Tensor::stack(&pooled_rows, 0)?;
        let pooled = match &self.text_projection {
            Some(projection) => projection.forward(&pooled)?,
            None => pooled,
        };
        Ok(ClipOutput {
            last_hidden_state,
            penultimate_hidden_state: penultimate,
            pooled,
        })
    }
}

fn causal_mask(seq_len: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..seq_len)
        .flat_map(|i| (0..seq_len).map(move |j| if j > i { f32::MIN } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (seq_len, seq_len), device)?
        .unsqueeze(0)?
        .unsqueeze(0)
}
