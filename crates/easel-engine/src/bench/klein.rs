//! A random-weight FLUX.2 [klein] 4B at its real widths and reduced depth, in the hub's
//! diffusers layout: the 3072-wide transformer with 1 double- and 2 single-stream blocks of
//! the real 5 and 20, a Qwen3 encoder 2560 wide (Qwen3-4B's heads, head width and MLP) with 3
//! layers whose hidden states are taken (the real model takes layers 9, 18 and 27 of 36;
//! `model_index.json` says so with `text_encoder_out_layers`), and the full 32-channel
//! autoencoder. The vocabulary is the benchmark's few words: the real embedding table (151,936
//! rows, 1.6 GB in f32) is a lookup whose size adds to the weights, not to a step.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::architectures::{parse, save_random};
use super::BenchError;
use crate::models::config::VaeConfig;
use crate::models::flux2::LATENT_TOKEN_CHANNELS;
use crate::models::flux2_latents::Flux2LatentNorm;
use crate::models::flux2_transformer::{Flux2Transformer, Flux2TransformerConfig};
use crate::models::flux2_weights::Flux2Weights;
use crate::models::qwen3::{Qwen3Config, Qwen3Encoder};
use crate::models::vae::Vae;

/// Every config file of the folder, `(relative path, JSON text)`.
pub(super) fn config_files() -> Vec<(&'static str, &'static str)> {
    vec![
        ("model_index.json", INDEX),
        ("scheduler/scheduler_config.json", SCHEDULER),
        ("text_encoder/config.json", QWEN3_4B_REDUCED),
        ("tokenizer/tokenizer.json", TOKENIZER),
        ("tokenizer/tokenizer_config.json", TOKENIZER_CONFIG),
        ("transformer/config.json", TRANSFORMER_REDUCED),
        ("vae/config.json", VAE),
    ]
}

/// The weights, each component through Easel's own loader over a `VarMap`.
pub(super) fn build_weights(dir: &Path, progress: &mut dyn FnMut(&str)) -> Result<(), BenchError> {
    progress("building a random Qwen3 text_encoder");
    let text: Qwen3Config = parse(&dir.join("text_encoder/config.json"))?;
    save_random(&dir.join("text_encoder/model.safetensors"), |vb| {
        Qwen3Encoder::new(&text, text.num_hidden_layers, vb).map(drop)
    })?;
    progress("building a random FLUX.2 transformer");
    let transformer: Flux2TransformerConfig = parse(&dir.join("transformer/config.json"))?;
    save_random(
        &dir.join("transformer/diffusion_pytorch_model.safetensors"),
        |vb| Flux2Transformer::new(&transformer, &Flux2Weights::Full(vb)).map(drop),
    )?;
    progress("building a random FLUX.2 autoencoder");
    let vae: VaeConfig = parse(&dir.join("vae/config.json"))?;
    let mut vars = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
    Vae::new(vb.clone(), &vae)?;
    Flux2LatentNorm::new(&vb, LATENT_TOKEN_CHANNELS, 1e-4)?;
    // Variances of 1: the map's initial zeros would divide by the epsilon alone.
    vars.set_one(
        "bn.running_var",
        Tensor::ones(LATENT_TOKEN_CHANNELS, DType::F32, &Device::Cpu)?,
    )?;
    let path = dir.join("vae/diffusion_pytorch_model.safetensors");
    vars.save(&path)?;
    Ok(())
}

const INDEX: &str = r#"{
  "_class_name": "Flux2KleinPipeline",
  "is_distilled": true,
  "text_encoder_out_layers": [1, 2, 3]
}"#;

/// `black-forest-labs/FLUX.2-klein-4B`'s scheduler.
const SCHEDULER: &str = r#"{
  "_class_name": "FlowMatchEulerDiscreteScheduler",
  "base_image_seq_len": 256,
  "base_shift": 0.5,
  "max_image_seq_len": 4096,
  "max_shift": 1.15,
  "num_train_timesteps": 1000,
  "shift": 3.0,
  "time_shift_type": "exponential",
  "use_dynamic_shifting": true
}"#;

/// Qwen3-4B's widths (hidden 2560, MLP 9728, 32 query and 8 key/value heads of 128), 3 layers.
const QWEN3_4B_REDUCED: &str = r#"{
  "architectures": ["Qwen3ForCausalLM"],
  "attention_bias": false,
  "head_dim": 128,
  "hidden_act": "silu",
  "hidden_size": 2560,
  "intermediate_size": 9728,
  "max_position_embeddings": 40960,
  "model_type": "qwen3",
  "num_attention_heads": 32,
  "num_hidden_layers": 3,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-06,
  "rope_theta": 1000000,
  "tie_word_embeddings": true,
  "vocab_size": 32
}"#;

/// A word-level tokenizer with Qwen's chat-template tokens whole: enough for the benchmark's
/// prompt.
const TOKENIZER: &str = r#"{
  "version": "1.0",
  "truncation": null,
  "padding": null,
  "added_tokens": [
    {"id": 20, "content": "<|endoftext|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 21, "content": "<|im_start|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 22, "content": "<|im_end|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 23, "content": "<think>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": false},
    {"id": 24, "content": "</think>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": false}
  ],
  "normalizer": {"type": "Lowercase"},
  "pre_tokenizer": {"type": "Whitespace"},
  "post_processor": null,
  "decoder": null,
  "model": {
    "type": "WordLevel",
    "vocab": {
      "a": 0, "painting": 1, "of": 2, "red": 3, "fox": 4, "in": 5, "the": 6, "snow": 7,
      "user": 8, "assistant": 9, "<|endoftext|>": 20
    },
    "unk_token": "<|endoftext|>"
  }
}"#;

const TOKENIZER_CONFIG: &str = r#"{
  "eos_token": "<|im_end|>",
  "pad_token": "<|endoftext|>",
  "model_max_length": 131072
}"#;

/// klein 4B's transformer (24 heads of 128, text 3 x 2560 wide, MLP ratio 3), 1 + 2 blocks.
const TRANSFORMER_REDUCED: &str = r#"{
  "_class_name": "Flux2Transformer2DModel",
  "attention_head_dim": 128,
  "axes_dims_rope": [32, 32, 32, 32],
  "eps": 1e-06,
  "guidance_embeds": false,
  "in_channels": 128,
  "joint_attention_dim": 7680,
  "mlp_ratio": 3.0,
  "num_attention_heads": 24,
  "num_layers": 1,
  "num_single_layers": 2,
  "out_channels": null,
  "patch_size": 1,
  "rope_theta": 2000,
  "timestep_guidance_channels": 256
}"#;

/// FLUX.2's autoencoder (`AutoencoderKLFlux2`).
const VAE: &str = r#"{
  "_class_name": "AutoencoderKLFlux2",
  "act_fn": "silu",
  "batch_norm_eps": 0.0001,
  "block_out_channels": [128, 256, 512, 512],
  "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
  "in_channels": 3,
  "latent_channels": 32,
  "layers_per_block": 2,
  "mid_block_add_attention": true,
  "norm_num_groups": 32,
  "out_channels": 3,
  "patch_size": [2, 2],
  "sample_size": 1024,
  "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
  "use_post_quant_conv": true,
  "use_quant_conv": true
}"#;
