//! Qwen3 as a text encoder: the residual stream after chosen layers (before the final norm),
//! over a right-padded sequence, as `transformers` computes `hidden_states` for FLUX.2 [klein]
//! (layers 9, 18 and 27) and Z-Image-Turbo. candle's `qwen3` returns only the final normed
//! output and has no padding mask, hence this one.
//!
//! Each layer: pre-RMSNorm attention (q/k/v projections, a per-head RMSNorm on q and k,
//! rotate-half RoPE, grouped-query attention scaled by `head_dim^-0.5`) and a SwiGLU MLP, both
//! residual. Query `i` sees key `j` when `j <= i` and `j` is not padding, so padding queries see
//! every real token and no padding.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{embedding, Embedding, RmsNorm, VarBuilder};

use crate::ops::{compute_dtype, linear, linear_no_bias, rms_norm, Linear};
use serde::Deserialize;

/// `text_encoder/config.json` of a `Qwen3ForCausalLM` (the fields an encoder needs).
#[derive(Debug, Clone, Deserialize)]
pub struct Qwen3Config {
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Layers in the model (an encoder runs only as many as it reads).
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key and value heads (grouped-query attention).
    pub num_key_value_heads: usize,
    /// Width of a head: not `hidden_size / heads` in Qwen3 (128 against 80 in the 4B model).
    pub head_dim: Option<usize>,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Whether the attention projections have biases (not in Qwen3).
    #[serde(default)]
    pub attention_bias: bool,
}

impl Qwen3Config {
    fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }
}

/// A linear layer on Easel's kernels (16-bit weights widened on the CPU), with or without
/// its bias.
fn linear_b(inputs: usize, outputs: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    if bias {
        linear(inputs, outputs, vb)
    } else {
        linear_no_bias(inputs, outputs, vb)
    }
}

/// One decoder layer.
struct Layer {
    input_norm: RmsNorm,
    post_attention_norm: RmsNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

/// The first layers of a Qwen3 model, enough for the hidden states an encoder reads.
pub struct Qwen3Encoder {
    config: Qwen3Config,
    embed_tokens: Embedding,
    layers: Vec<Layer>,
    /// What its layers compute in (f32 on the CPU).
    compute: DType,
}

impl std::fmt::Debug for Qwen3Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qwen3Encoder")
            .field("layers", &self.layers.len())
            .finish()
    }
}

impl Qwen3Encoder {
    /// Builds the embeddings and the first `layers` layers from `vb` (the checkpoint's root:
    /// `model.embed_tokens`, `model.layers.N.*`); the rest of the model is never read.
    pub fn new(config: &Qwen3Config, layers: usize, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("model");
        let (hidden, heads, kv_heads) = (
            config.hidden_size,
            config.num_attention_heads,
            config.num_key_value_heads,
        );
        let head_dim = config.head_dim();
        let eps = config.rms_norm_eps;
        let bias = config.attention_bias;
        let embed_tokens = embedding(config.vocab_size, hidden, vb.pp("embed_tokens"))?;
        let layers = (0..layers.min(config.num_hidden_layers))
            .map(|index| {
                let vb = vb.pp(format!("layers.{index}"));
                let attn = vb.pp("self_attn");
                let mlp = vb.pp("mlp");
                Ok(Layer {
                    input_norm: rms_norm(hidden, eps, vb.pp("input_layernorm"))?,
                    post_attention_norm: rms_norm(hidden, eps, vb.pp("post_attention_layernorm"))?,
                    q_proj: linear_b(hidden, heads * head_dim, bias, attn.pp("q_proj"))?,
                    k_proj: linear_b(hidden, kv_heads * head_dim, bias, attn.pp("k_proj"))?,
                    v_proj: linear_b(hidden, kv_heads * head_dim, bias, attn.pp("v_proj"))?,
                    o_proj: linear_b(heads * head_dim, hidden, bias, attn.pp("o_proj"))?,
                    q_norm: rms_norm(head_dim, eps, attn.pp("q_norm"))?,
                    k_norm: rms_norm(head_dim, eps, attn.pp("k_norm"))?,
                    gate_proj: linear_b(
                        hidden,
                        config.intermediate_size,
                        false,
                        mlp.pp("gate_proj"),
                    )?,
                    up_proj: linear_b(hidden, config.intermediate_size, false, mlp.pp("up_proj"))?,
                    down_proj: linear_b(
                        config.intermediate_size,
                        hidden,
                        false,
                        mlp.pp("down_proj"),
                    )?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config: config.clone(),
            embed_tokens,
            layers,
            compute: compute_dtype(vb.device(), vb.dtype()),
        })
    }

    /// Layers built.
    pub fn layer_count(&self) -> usize {
        self.layers.len()
    }

    /// The residual stream after each of `wanted` layers (0: the embeddings), for `ids`
    /// `[1, S]` (u32) whose real tokens are marked 1 in `attention_mask` (`S` values).
    pub fn hidden_states(
        &self,
        ids: &Tensor,
        attention_mask: &[u32],
        wanted: &[usize],
    ) -> Result<Vec<Tensor>> {
        let deepest = wanted.iter().copied().max().unwrap_or(0);
        if deepest > self.layers.len() {
            candle_core::bail!(
                "hidden state {deepest} asked of a Qwen3 encoder built with {} layers",
                self.layers.len()
            );
        }
        let (_, seq_len) = ids.dims2()?;
        let device = ids.device();
        let mut h = self.embed_tokens.forward(ids)?.to_dtype(self.compute)?;
        let dtype = h.dtype();
        let (cos, sin) = self.rope(seq_len, device, dtype)?;
        let mask = attention_bias(attention_mask, seq_len, device)?.to_dtype(dtype)?;
        let mut states: Vec<(usize, Tensor)> = Vec::new();
        if wanted.contains(&0) {
            states.push((0, h.clone()));
        }
        for (index, layer) in self.layers.iter().take(deepest).enumerate() {
            h = self.layer_forward(layer, &h, &cos, &sin, &mask)?;
            if wanted.contains(&(index + 1)) {
                states.push((index + 1, h.clone()));
            }
        }
        wanted
            .iter()
            .map(|k| {
                states
                    .iter()
                    .find(|(at, _)| at == k)
                    .map(|(_, t)| t.clone())
                    .ok_or_else(|| candle_core::Error::Msg(format!("no hidden state {k}")))
            })
            .collect()
    }

    /// cos and sin `[S, head_dim / 2]` of rotate-half RoPE at positions 0..S.
    fn rope(&self, seq_len: usize, device: &Device, dtype: DType) -> Result<(Tensor, Tensor)> {
        let head_dim = self.config.head_dim();
        let inv_freq: Vec<f32> = (0..head_dim / 2)
            .map(|i| {
                1.0 / self
                    .config
                    .rope_theta
                    .powf(2.0 * i as f64 / head_dim as f64) as f32
            })
            .collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, head_dim / 2), device)?;
        let positions = Tensor::arange(0u32, seq_len as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((seq_len, 1))?;
        let freqs = positions.matmul(&inv_freq)?;
        Ok((freqs.cos()?.to_dtype(dtype)?, freqs.sin()?.to_dtype(dtype)?))
    }

    fn layer_forward(
        &self,
        layer: &Layer,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
    ) -> Result<Tensor> {
        let (batch, seq_len, _) = x.dims3()?;
        let heads = self.config.num_attention_heads;
        let kv_heads = self.config.num_key_value_heads;
        let head_dim = self.config.head_dim();
        let normed = layer.input_norm.forward(x)?;
        let split = |t: Tensor, n: usize| -> Result<Tensor> {
            t.reshape((batch, seq_len, n, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(layer.q_proj.forward(&normed)?, heads)?;
        let k = split(layer.k_proj.forward(&normed)?, kv_heads)?;
        let v = split(layer.v_proj.forward(&normed)?, kv_heads)?;
        let q = layer.q_norm.forward(&q)?;
        let k = layer.k_norm.forward(&k)?;
        let q = candle_nn::rotary_emb::rope(&q, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&k, cos, sin)?;
        // Query head j reads key/value head j / (heads / kv_heads).
        let repeat = heads / kv_heads.max(1);
        let expand = |t: Tensor| -> Result<Tensor> {
            t.unsqueeze(2)?
                .expand((batch, kv_heads, repeat, seq_len, head_dim))?
                .reshape((batch, heads, seq_len, head_dim))
        };
        let (k, v) = (expand(k)?, expand(v)?);
        let scale = 1.0 / (head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(mask)?;
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let attended =
            weights
                .matmul(&v)?
                .transpose(1, 2)?
                .reshape((batch, seq_len, heads * head_dim))?;
        let h = (x + layer.o_proj.forward(&attended)?)?;
        let normed = layer.post_attention_norm.forward(&h)?;
        let gate = candle_nn::ops::silu(&layer.gate_proj.forward(&normed)?)?;
        let mlp = layer
            .down_proj
            .forward(&(gate * layer.up_proj.forward(&normed)?)?)?;
        h + mlp
    }
}

/// The additive attention mask `[S, S]`: 0 where query `i` may see key `j` (`j <= i` and `j`
/// a real token), minus infinity elsewhere.
fn attention_bias(real: &[u32], seq_len: usize, device: &Device) -> Result<Tensor> {
    let values: Vec<f32> = (0..seq_len)
        .flat_map(|i| {
            (0..seq_len).map(move |j| {
                let visible = j <= i && real.get(j).copied().unwrap_or(0) != 0;
                if visible {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Tensor::from_vec(values, (seq_len, seq_len), device)
}

/// `[h_a | h_b | ...]` of hidden states on their last dimension: FLUX.2's prompt embeddings.
pub fn concat_hidden_states(states: &[Tensor]) -> Result<Tensor> {
    Tensor::cat(states, D::Minus1)
}
