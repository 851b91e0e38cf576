//! T5's encoder (FLUX.1's second text encoder) on Easel's linear layers, which widen 16-bit
//! weights on the CPU: low-memory mode holds T5-XXL in f16 there (9.5 GB instead of 19).
//! As transformers computes it: RMS layer norms, self-attention without scaling (T5 folds it
//! into its weights) and with bidirectional relative position buckets (the first block's
//! table, shared by every block), a feed-forward gated or not. The scores are materialised:
//! at FLUX's 512 tokens they are small beside the weights.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{embedding, Activation, Embedding, RmsNorm, VarBuilder};
use candle_transformers::models::t5::Config;

use crate::ops::{compute_dtype, gelu_tanh, linear_no_bias, rms_norm, Linear};

/// The feed-forward: `wo(act(wi x))`, or `wo(act(wi_0 x) * wi_1 x)` when gated.
struct FeedForward {
    input: Linear,
    gate_input: Option<Linear>,
    output: Linear,
    activation: Activation,
}

impl FeedForward {
    fn new(config: &Config, vb: VarBuilder) -> Result<Self> {
        let (model, ff) = (config.d_model, config.d_ff);
        let gated = config.feed_forward_proj.gated;
        Ok(Self {
            input: linear_no_bias(model, ff, vb.pp(if gated { "wi_0" } else { "wi" }))?,
            gate_input: if gated {
                Some(linear_no_bias(model, ff, vb.pp("wi_1"))?)
            } else {
                None
            },
            output: linear_no_bias(ff, model, vb.pp("wo"))?,
            activation: config.feed_forward_proj.activation,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let projected = self.input.forward(x)?;
        let activated = match self.activation {
            Activation::NewGelu | Activation::GeluPytorchTanh => gelu_tanh(&projected)?,
            other => other.forward(&projected)?,
        };
        let hidden = match &self.gate_input {
            Some(gate) => (activated * gate.forward(x)?)?,
            None => activated,
        };
        self.output.forward(&hidden)
    }
}

struct Block {
    attention_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ff_norm: RmsNorm,
    ff: FeedForward,
}

/// The T5 encoder, loaded.
pub struct T5TextModel {
    config: Config,
    embed_tokens: Embedding,
    /// `[buckets, heads]` of the first block's relative attention bias.
    relative_attention_bias: Embedding,
    blocks: Vec<Block>,
    final_norm: RmsNorm,
    /// What its layers compute in (f32 on the CPU).
    compute: DType,
}

impl std::fmt::Debug for T5TextModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("T5TextModel")
            .field("blocks", &self.blocks.len())
            .finish_non_exhaustive()
    }
}

impl T5TextModel {
    /// Builds the encoder of `config` from `vb` (transformers' names: `shared` or
    /// `encoder.embed_tokens`, `encoder.block.N.layer.{0,1}.*`, `encoder.final_layer_norm`).
    pub fn new(config: &Config, vb: VarBuilder) -> Result<Self> {
        let (model, inner) = (config.d_model, config.num_heads * config.d_kv);
        let eps = config.layer_norm_epsilon;
        let shared = if vb.contains_tensor("shared.weight") {
            vb.pp("shared")
        } else {
            vb.pp("encoder.embed_tokens")
        };
        let encoder = vb.pp("encoder");
        let blocks = (0..config.num_layers)
            .map(|i| {
                let layer = encoder.pp(format!("block.{i}.layer"));
                let attention = layer.pp("0.SelfAttention");
                Ok(Block {
                    attention_norm: rms_norm(model, eps, layer.pp("0.layer_norm"))?,
                    q: linear_no_bias(model, inner, attention.pp("q"))?,
                    k: linear_no_bias(model, inner, attention.pp("k"))?,
                    v: linear_no_bias(model, inner, attention.pp("v"))?,
                    o: linear_no_bias(inner, model, attention.pp("o"))?,
                    ff_norm: rms_norm(model, eps, layer.pp("1.layer_norm"))?,
                    ff: FeedForward::new(config, layer.pp("1.DenseReluDense"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config: config.clone(),
            embed_tokens: embedding(config.vocab_size, model, shared)?,
            relative_attention_bias: embedding(
                config.relative_attention_num_buckets,
                config.num_heads,
                encoder.pp("block.0.layer.0.SelfAttention.relative_attention_bias"),
            )?,
            blocks,
            final_norm: rms_norm(model, eps, encoder.pp("final_layer_norm"))?,
            compute: compute_dtype(vb.device(), vb.dtype()),
        })
    }

    /// The last hidden states `[B, S, d_model]` of token ids `[B, S]` (u32).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (batch, seq_len) = ids.dims2()?;
        let (heads, d_kv) = (self.config.num_heads, self.config.d_kv);
        let mut h = self.embed_tokens.forward(ids)?.to_dtype(self.compute)?;
        let bias = self.position_bias(seq_len, ids.device())?;
        let split = |t: Tensor| -> Result<Tensor> {
            t.reshape((batch, seq_len, heads, d_kv))?
                .transpose(1, 2)?
                .contiguous()
        };
        for block in &self.blocks {
            let normed = block.attention_norm.forward(&h)?;
            let q = split(block.q.forward(&normed)?)?;
            let k = split(block.k.forward(&normed)?)?;
            let v = split(block.v.forward(&normed)?)?;
            let scores = q.matmul(&k.t()?)?.broadcast_add(&bias)?;
            let attended = candle_nn::ops::softmax_last_dim(&scores)?
                .matmul(&v)?
                .transpose(1, 2)?
                .reshape((batch, seq_len, heads * d_kv))?;
            h = (h + block.o.forward(&attended)?)?;
            let normed = block.ff_norm.forward(&h)?;
            h = (&h + block.ff.forward(&normed)?)?;
        }
        self.final_norm.forward(&h)
    }

    /// The relative position bias `[1, H, S, S]` of `seq_len` tokens.
    fn position_bias(&self, seq_len: usize, device: &Device) -> Result<Tensor> {
        let buckets: Vec<u32> = (0..seq_len)
            .flat_map(|query| {
                (0..seq_len).map(move |key| {
                    relative_bucket(
                        key as i64 - query as i64,
                        self.config.relative_attention_num_buckets,
                        self.config.relative_attention_max_distance,
                    )
                })
            })
            .collect();
        let buckets = Tensor::from_vec(buckets, (seq_len, seq_len), device)?;
        self.relative_attention_bias
            .forward(&buckets)?
            .to_dtype(self.compute)?
            .permute((2, 0, 1))?
            .unsqueeze(0)?
            .contiguous()
    }
}

/// transformers' bidirectional bucket of the relative position `key - query`: half the
/// buckets for keys after the query; within each half, exact buckets for distances below a
/// quarter of the buckets, then logarithmic ones up to `max_distance`.
fn relative_bucket(relative: i64, buckets: usize, max_distance: usize) -> u32 {
    let half = (buckets / 2) as u32;
    let offset = if relative > 0 { half } else { 0 };
    let distance = relative.unsigned_abs() as u32;
    let max_exact = half / 2;
    if distance < max_exact {
        return offset + distance;
    }
    let log_ratio =
        (distance as f32 / max_exact as f32).ln() / (max_distance as f32 / max_exact as f32).ln();
    let large = max_exact + (log_ratio * (half - max_exact) as f32) as u32;
    offset + large.min(half - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_transformers_bidirectional_scheme() {
        // 32 buckets, max distance 128: 16 a side, exact below 8, then logarithmic.
        let bucket = |relative| relative_bucket(relative, 32, 128);
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(-3), 3);
        assert_eq!(bucket(3), 19);
        assert_eq!(bucket(-7), 7);
        // 8 + floor(ln(16 / 8) / ln(128 / 8) * 8) = 8 + 2.
        assert_eq!(bucket(-16), 10);
        assert_eq!(bucket(16), 26);
        // Far beyond the maximum distance: the last bucket of each half.
        assert_eq!(bucket(-1000), 15);
        assert_eq!(bucket(1000), 31);
    }
}
