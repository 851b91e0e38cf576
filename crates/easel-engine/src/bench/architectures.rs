//! Random-weight models of the real SD 1.5 and SDXL architectures, and of FLUX.1 dev and
//! FLUX.2 [klein] 4B (`klein.rs`) at their real widths but reduced depth, built from their published configs and saved in the layouts
//! the hub ships, so the benchmark needs no download.
//!
//! Each component is built by Easel's own loaders over a candle `VarMap`, which creates every
//! tensor the model asks for under its real name; the map is then saved as safetensors.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};

use super::BenchError;
use crate::models::clip::ClipTextModel;
use crate::models::config::{ClipTextConfig, UnetConfig, VaeConfig};
use crate::models::flux::{FluxModel, FluxTransformerJson};
use crate::models::unet::{Unet, UnetShape};
use crate::models::vae::Vae;

/// An architecture the benchmark can build with random weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Stable Diffusion 1.5: CLIP ViT-L text encoder, 860M-parameter UNet, KL VAE.
    Sd15,
    /// SDXL base: CLIP ViT-L and OpenCLIP bigG text encoders, 2.6B-parameter UNet.
    Sdxl,
    /// FLUX.1 dev's widths (3072-wide transformer, T5-XXL's 4096-wide layers, CLIP-L, the
    /// full 16-channel autoencoder) at reduced depth: 1 double- and 2 single-stream blocks of
    /// the real 19 and 38, 2 T5 layers of 24. A step of the real model costs about
    /// 19 double + 38 single blocks' worth; this one fits in a few GB.
    FluxReduced,
    /// FLUX.2 [klein] 4B's widths (3072-wide transformer, Qwen3-4B's 2560-wide layers, the
    /// full 32-channel autoencoder) at reduced depth: 1 double- and 2 single-stream blocks of
    /// the real 5 and 20, 3 Qwen3 layers (see `klein.rs`).
    Flux2KleinReduced,
}

impl Architecture {
    /// The name given on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Sd15 => "sd15",
            Architecture::Sdxl => "sdxl",
            Architecture::FluxReduced => "flux",
            Architecture::Flux2KleinReduced => "flux2-klein",
        }
    }

    /// The architecture called `name` ("sd15", "sdxl", "flux", "flux2-klein").
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "sd15" => Some(Architecture::Sd15),
            "sdxl" => Some(Architecture::Sdxl),
            "flux" => Some(Architecture::FluxReduced),
            "flux2-klein" => Some(Architecture::Flux2KleinReduced),
            _ => None,
        }
    }

    /// Every config file of the model folder, `(relative path, JSON text)`.
    fn config_files(self) -> Vec<(&'static str, &'static str)> {
        if self == Architecture::Flux2KleinReduced {
            return super::klein::config_files();
        }
        let mut files = vec![
            ("tokenizer/tokenizer.json", BENCH_TOKENIZER),
            ("tokenizer/tokenizer_config.json", TOKENIZER_CONFIG),
            ("text_encoder/config.json", CLIP_L),
        ];
        match self {
            Architecture::Sd15 => files.extend([
                ("model_index.json", SD15_INDEX),
                ("unet/config.json", SD15_UNET),
                ("vae/config.json", SD15_VAE),
                ("scheduler/scheduler_config.json", SD15_SCHEDULER),
            ]),
            Architecture::Sdxl => files.extend([
                ("model_index.json", SDXL_INDEX),
                ("unet/config.json", SDXL_UNET),
                ("vae/config.json", SDXL_VAE),
                ("scheduler/scheduler_config.json", SDXL_SCHEDULER),
                ("text_encoder_2/config.json", OPEN_CLIP_BIG_G),
                ("tokenizer_2/tokenizer.json", BENCH_TOKENIZER),
                ("tokenizer_2/tokenizer_config.json", TOKENIZER_CONFIG),
            ]),
            Architecture::FluxReduced => files.extend([
                ("model_index.json", FLUX_INDEX),
                ("transformer/config.json", FLUX_TRANSFORMER_REDUCED),
                ("vae/config.json", FLUX_VAE),
                ("scheduler/scheduler_config.json", FLUX_DEV_SCHEDULER),
                ("text_encoder_2/config.json", T5_XXL_REDUCED),
                ("tokenizer_2/tokenizer.json", T5_BENCH_TOKENIZER),
                (
                    "tokenizer_2/tokenizer_config.json",
                    T5_BENCH_TOKENIZER_CONFIG,
                ),
            ]),
            Architecture::Flux2KleinReduced => {}
        }
        files
    }
}

/// The model folder for `architecture` under `cache_dir`, built with random weights first if
/// it is not there yet. `progress` hears what is being built.
pub fn ensure_random_model(
    architecture: Architecture,
    cache_dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf, BenchError> {
    let dir = cache_dir.join(format!("{}-random", architecture.name()));
    let done_marker = dir.join(".complete");
    if done_marker.is_file() {
        return Ok(dir);
    }
    for (relative, text) in architecture.config_files() {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| BenchError::io(parent, e))?;
        }
        std::fs::write(&path, text).map_err(|e| BenchError::io(&path, e))?;
    }
    let own_builder = match architecture {
        Architecture::FluxReduced => {
            Some(build_flux_weights as fn(&Path, &mut dyn FnMut(&str)) -> _)
        }
        Architecture::Flux2KleinReduced => {
            Some(super::klein::build_weights as fn(&Path, &mut dyn FnMut(&str)) -> _)
        }
        Architecture::Sd15 | Architecture::Sdxl => None,
    };
    if let Some(build) = own_builder {
        build(&dir, progress)?;
        std::fs::write(&done_marker, "").map_err(|e| BenchError::io(&done_marker, e))?;
        return Ok(dir);
    }
    let text_encoders: &[&str] = match architecture {
        Architecture::Sd15 | Architecture::FluxReduced | Architecture::Flux2KleinReduced => {
            &["text_encoder"]
        }
        Architecture::Sdxl => &["text_encoder", "text_encoder_2"],
    };
    for encoder in text_encoders {
        progress(&format!("building a random {encoder}"));
        let config: ClipTextConfig = parse(&dir.join(encoder).join("config.json"))?;
        save_random(&dir.join(encoder).join("model.safetensors"), |vb| {
            ClipTextModel::new(vb, &config).map(drop)
        })?;
    }
    progress("building a random unet");
    let unet_config_path = dir.join("unet/config.json");
    let unet_config: UnetConfig = parse(&unet_config_path)?;
    let shape = UnetShape::from_config(&unet_config, &unet_config_path)?;
    save_random(
        &dir.join("unet/diffusion_pytorch_model.safetensors"),
        |vb| Unet::new(vb, shape).map(drop),
    )?;
    progress("building a random vae");
    let vae_config: VaeConfig = parse(&dir.join("vae/config.json"))?;
    save_random(&dir.join("vae/diffusion_pytorch_model.safetensors"), |vb| {
        Vae::new(vb, &vae_config).map(drop)
    })?;
    std::fs::write(&done_marker, "").map_err(|e| BenchError::io(&done_marker, e))?;
    Ok(dir)
}

/// FLUX's weights as the hub ships them: CLIP and T5 in diffusers folders, the transformer
/// in Black Forest Labs' single file, the autoencoder in `ae.safetensors`.
fn build_flux_weights(dir: &Path, progress: &mut dyn FnMut(&str)) -> Result<(), BenchError> {
    use candle_transformers::models::flux::autoencoder::{Decoder, Encoder};
    use candle_transformers::models::flux::model::Flux;
    use candle_transformers::models::t5;

    progress("building a random text_encoder");
    let clip: ClipTextConfig = parse(&dir.join("text_encoder/config.json"))?;
    save_random(&dir.join("text_encoder/model.safetensors"), |vb| {
        ClipTextModel::new(vb, &clip).map(drop)
    })?;
    progress("building a random T5 text_encoder_2");
    let t5_config: t5::Config = parse(&dir.join("text_encoder_2/config.json"))?;
    save_random(&dir.join("text_encoder_2/model.safetensors"), |vb| {
        t5::T5EncoderModel::load(vb, &t5_config).map(drop)
    })?;
    progress("building a random transformer");
    let transformer: FluxTransformerJson = parse(&dir.join("transformer/config.json"))?;
    save_random(&dir.join("flux1-dev.safetensors"), |vb| {
        Flux::new(&transformer.candle_config(), vb).map(drop)
    })?;
    progress("building a random autoencoder");
    // The folder is complete enough now to derive candle's autoencoder config as a load does.
    let model = FluxModel::open(dir, &Device::Cpu, DType::F32)?;
    let config = model.autoencoder_config();
    save_random(&dir.join("ae.safetensors"), |vb| {
        Encoder::new(&config, vb.pp("encoder"))?;
        Decoder::new(&config, vb.pp("decoder")).map(drop)
    })
}

pub(super) fn parse<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, BenchError> {
    Ok(crate::models::config::read_json(path, "benchmark config")?)
}

/// Builds a component over an empty `VarMap` (which creates every tensor it asks for, with
/// candle's initialisers) and saves the tensors under their names to `path`.
pub(super) fn save_random(
    path: &Path,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<()>,
) -> Result<(), BenchError> {
    let vars = VarMap::new();
    build(VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu))?;
    vars.save(path)?;
    Ok(())
}

/// A word-level tokenizer with CLIP's special-token ids: enough for benchmark prompts (each
/// word is one token), a fraction of the size of CLIP's real vocabulary.
const BENCH_TOKENIZER: &str = r#"{
  "version": "1.0",
  "truncation": null,
  "padding": null,
  "added_tokens": [],
  "normalizer": {"type": "Lowercase"},
  "pre_tokenizer": {"type": "Whitespace"},
  "post_processor": null,
  "decoder": null,
  "model": {
    "type": "WordLevel",
    "vocab": {
      "a": 320, "photo": 1125, "of": 539, "cat": 2368, "on": 525, "the": 518,
      "moon": 3293, "painting": 3086, "red": 736, "fox": 3240, "in": 530, "snow": 2583,
      "<|startoftext|>": 49406, "<|endoftext|>": 49407
    },
    "unk_token": "<|endoftext|>"
  }
}"#;

const TOKENIZER_CONFIG: &str = r#"{
  "bos_token": "<|startoftext|>",
  "eos_token": "<|endoftext|>",
  "pad_token": "<|endoftext|>",
  "model_max_length": 77
}"#;

/// `openai/clip-vit-large-patch14`'s text model, as SD 1.5 and SDXL ship it.
const CLIP_L: &str = r#"{
  "architectures": ["CLIPTextModel"],
  "hidden_act": "quick_gelu",
  "hidden_size": 768,
  "intermediate_size": 3072,
  "layer_norm_eps": 1e-05,
  "max_position_embeddings": 77,
  "num_attention_heads": 12,
  "num_hidden_layers": 12,
  "projection_dim": 768,
  "eos_token_id": 49407,
  "vocab_size": 49408
}"#;

/// SDXL's second text encoder (OpenCLIP ViT-bigG/14).
const OPEN_CLIP_BIG_G: &str = r#"{
  "architectures": ["CLIPTextModelWithProjection"],
  "hidden_act": "gelu",
  "hidden_size": 1280,
  "intermediate_size": 5120,
  "layer_norm_eps": 1e-05,
  "max_position_embeddings": 77,
  "num_attention_heads": 20,
  "num_hidden_layers": 32,
  "projection_dim": 1280,
  "eos_token_id": 49407,
  "vocab_size": 49408
}"#;

const SD15_INDEX: &str = r#"{"_class_name": "StableDiffusionPipeline"}"#;

/// `stable-diffusion-v1-5/stable-diffusion-v1-5`'s `unet/config.json`.
const SD15_UNET: &str = r#"{
  "_class_name": "UNet2DConditionModel",
  "act_fn": "silu",
  "attention_head_dim": 8,
  "block_out_channels": [320, 640, 1280, 1280],
  "center_input_sample": false,
  "cross_attention_dim": 768,
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "downsample_padding": 1,
  "flip_sin_to_cos": true,
  "freq_shift": 0,
  "in_channels": 4,
  "layers_per_block": 2,
  "mid_block_scale_factor": 1,
  "norm_eps": 1e-05,
  "norm_num_groups": 32,
  "out_channels": 4,
  "sample_size": 64,
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
}"#;

/// `stable-diffusion-v1-5/stable-diffusion-v1-5`'s `vae/config.json`.
const SD15_VAE: &str = r#"{
  "_class_name": "AutoencoderKL",
  "act_fn": "silu",
  "block_out_channels": [128, 256, 512, 512],
  "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
  "in_channels": 3,
  "latent_channels": 4,
  "layers_per_block": 2,
  "norm_num_groups": 32,
  "out_channels": 3,
  "sample_size": 512,
  "scaling_factor": 0.18215,
  "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
}"#;

const SD15_SCHEDULER: &str = r#"{
  "_class_name": "PNDMScheduler",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "num_train_timesteps": 1000,
  "set_alpha_to_one": false,
  "skip_prk_steps": true,
  "steps_offset": 1
}"#;

const SDXL_INDEX: &str =
    r#"{"_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": true}"#;

/// `stabilityai/stable-diffusion-xl-base-1.0`'s `unet/config.json`.
const SDXL_UNET: &str = r#"{
  "_class_name": "UNet2DConditionModel",
  "act_fn": "silu",
  "addition_embed_type": "text_time",
  "addition_embed_type_num_heads": 64,
  "addition_time_embed_dim": 256,
  "attention_head_dim": [5, 10, 20],
  "block_out_channels": [320, 640, 1280],
  "center_input_sample": false,
  "cross_attention_dim": 2048,
  "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
  "downsample_padding": 1,
  "flip_sin_to_cos": true,
  "freq_shift": 0,
  "in_channels": 4,
  "layers_per_block": 2,
  "mid_block_type": "UNetMidBlock2DCrossAttn",
  "norm_eps": 1e-05,
  "norm_num_groups": 32,
  "out_channels": 4,
  "projection_class_embeddings_input_dim": 2816,
  "sample_size": 128,
  "transformer_layers_per_block": [1, 2, 10],
  "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
  "use_linear_projection": true
}"#;

/// `stabilityai/stable-diffusion-xl-base-1.0`'s `vae/config.json`.
const SDXL_VAE: &str = r#"{
  "_class_name": "AutoencoderKL",
  "act_fn": "silu",
  "block_out_channels": [128, 256, 512, 512],
  "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
  "force_upcast": true,
  "in_channels": 3,
  "latent_channels": 4,
  "layers_per_block": 2,
  "norm_num_groups": 32,
  "out_channels": 3,
  "sample_size": 1024,
  "scaling_factor": 0.13025,
  "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
}"#;

const SDXL_SCHEDULER: &str = r#"{
  "_class_name": "EulerDiscreteScheduler",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "interpolation_type": "linear",
  "num_train_timesteps": 1000,
  "prediction_type": "epsilon",
  "sample_max_value": 1.0,
  "set_alpha_to_one": false,
  "skip_prk_steps": true,
  "steps_offset": 1,
  "timestep_spacing": "leading",
  "use_karras_sigmas": false
}"#;

const FLUX_INDEX: &str = r#"{"_class_name": "FluxPipeline"}"#;

/// `black-forest-labs/FLUX.1-dev`'s `transformer/config.json` with 1 double- and 2
/// single-stream blocks (the real model has 19 and 38).
const FLUX_TRANSFORMER_REDUCED: &str = r#"{
  "_class_name": "FluxTransformer2DModel",
  "attention_head_dim": 128,
  "axes_dims_rope": [16, 56, 56],
  "guidance_embeds": true,
  "in_channels": 64,
  "joint_attention_dim": 4096,
  "num_attention_heads": 24,
  "num_layers": 1,
  "num_single_layers": 2,
  "patch_size": 1,
  "pooled_projection_dim": 768
}"#;

/// `black-forest-labs/FLUX.1-dev`'s `vae/config.json`.
const FLUX_VAE: &str = r#"{
  "_class_name": "AutoencoderKL",
  "block_out_channels": [128, 256, 512, 512],
  "in_channels": 3,
  "latent_channels": 16,
  "layers_per_block": 2,
  "norm_num_groups": 32,
  "out_channels": 3,
  "sample_size": 1024,
  "scaling_factor": 0.3611,
  "shift_factor": 0.1159,
  "use_post_quant_conv": false,
  "use_quant_conv": false,
  "force_upcast": true
}"#;

/// `black-forest-labs/FLUX.1-dev`'s scheduler: dynamic shift by image size.
const FLUX_DEV_SCHEDULER: &str = r#"{
  "_class_name": "FlowMatchEulerDiscreteScheduler",
  "base_image_seq_len": 256,
  "base_shift": 0.5,
  "max_image_seq_len": 4096,
  "max_shift": 1.15,
  "num_train_timesteps": 1000,
  "shift": 3.0,
  "use_dynamic_shifting": true
}"#;

/// T5 v1.1 XXL's encoder as FLUX ships it, with 2 of its 24 layers.
const T5_XXL_REDUCED: &str = r#"{
  "architectures": ["T5EncoderModel"],
  "d_ff": 10240,
  "d_kv": 64,
  "d_model": 4096,
  "decoder_start_token_id": 0,
  "dropout_rate": 0.1,
  "eos_token_id": 1,
  "feed_forward_proj": "gated-gelu",
  "initializer_factor": 1.0,
  "is_encoder_decoder": true,
  "layer_norm_epsilon": 1e-06,
  "num_heads": 64,
  "num_layers": 2,
  "pad_token_id": 0,
  "relative_attention_max_distance": 128,
  "relative_attention_num_buckets": 32,
  "tie_word_embeddings": false,
  "vocab_size": 32128
}"#;

/// A word-level tokenizer standing in for T5's SentencePiece one, with T5's special-token
/// ids (`<pad>` 0, `</s>` 1, `<unk>` 2) and ids inside its vocabulary.
const T5_BENCH_TOKENIZER: &str = r#"{
  "version": "1.0",
  "truncation": null,
  "padding": null,
  "added_tokens": [],
  "normalizer": {"type": "Lowercase"},
  "pre_tokenizer": {"type": "Whitespace"},
  "post_processor": null,
  "decoder": null,
  "model": {
    "type": "WordLevel",
    "vocab": {
      "<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "photo": 1202, "of": 13, "cat": 1712,
      "on": 30, "the": 8, "moon": 8114, "painting": 1825, "red": 1131, "fox": 4419, "in": 16,
      "snow": 4716
    },
    "unk_token": "<unk>"
  }
}"#;

const T5_BENCH_TOKENIZER_CONFIG: &str = r#"{
  "eos_token": "</s>",
  "pad_token": "<pad>",
  "model_max_length": 512
}"#;
