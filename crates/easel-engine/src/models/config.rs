//! The diffusers and transformers config files of a model folder, read as they are written.
//!
//! Only the fields Easel uses are declared; the rest of each file is ignored. Defaults are
//! those of the Python classes, so a config that leaves a field out means what it means there.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::error::ModelError;

/// Reads and parses one JSON file, naming it in any error.
pub fn read_json<T: DeserializeOwned>(path: &Path, what: &'static str) -> Result<T, ModelError> {
    if !path.is_file() {
        return Err(ModelError::MissingFile {
            what,
            path: path.to_path_buf(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let bad = |message: String| ModelError::BadConfig {
        what,
        path: path.to_path_buf(),
        message,
    };
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if let Some(problem) = super::config_ranges::first_out_of_range(&value) {
        return Err(bad(problem));
    }
    serde_json::from_value(value).map_err(|e| bad(e.to_string()))
}

/// A value that diffusers accepts either once for all blocks or once per block.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PerBlock {
    /// The same value for every block.
    One(usize),
    /// One value per block.
    Each(Vec<usize>),
}

impl PerBlock {
    /// The value for each of `n` blocks, or `None` when a list has the wrong length.
    pub fn expand(&self, n: usize) -> Option<Vec<usize>> {
        match self {
            PerBlock::One(v) => Some(vec![*v; n]),
            PerBlock::Each(vs) if vs.len() == n => Some(vs.clone()),
            PerBlock::Each(_) => None,
        }
    }
}

fn one_per_block() -> PerBlock {
    PerBlock::One(1)
}
fn four() -> usize {
    4
}
fn three() -> usize {
    3
}
fn thirty_two() -> usize {
    32
}
fn yes() -> bool {
    true
}
fn one_f64() -> f64 {
    1.0
}
fn eps_unet() -> f64 {
    1e-5
}
fn sd_vae_scaling() -> f64 {
    0.18215
}

/// `unet/config.json` of a `UNet2DConditionModel`.
#[derive(Debug, Clone, Deserialize)]
pub struct UnetConfig {
    /// Latent channels in (4, or 9 for inpainting UNets).
    #[serde(default = "four")]
    pub in_channels: usize,
    /// Channels out (the predicted noise, velocity or sample).
    #[serde(default = "four")]
    pub out_channels: usize,
    /// Channels of each down block.
    pub block_out_channels: Vec<usize>,
    /// Down block class names (`CrossAttnDownBlock2D`, `DownBlock2D`).
    pub down_block_types: Vec<String>,
    /// Up block class names.
    pub up_block_types: Vec<String>,
    /// The mid block class name.
    #[serde(default)]
    pub mid_block_type: Option<String>,
    /// ResNet layers per down block.
    pub layers_per_block: usize,
    /// Number of attention heads (diffusers' historical name for it).
    pub attention_head_dim: PerBlock,
    /// Number of attention heads where the config states it under its right name.
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    /// Transformer blocks per cross-attention block.
    #[serde(default = "one_per_block")]
    pub transformer_layers_per_block: PerBlock,
    /// Width of the text embeddings the UNet attends to.
    pub cross_attention_dim: usize,
    /// Linear rather than 1x1-conv projections in the transformers (SD 2.x, SDXL).
    #[serde(default)]
    pub use_linear_projection: bool,
    /// GroupNorm groups.
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    /// GroupNorm epsilon.
    #[serde(default = "eps_unet")]
    pub norm_eps: f64,
    /// Timestep embedding layout.
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    /// Timestep embedding frequency shift.
    #[serde(default)]
    pub freq_shift: f64,
    /// Padding of the strided down-sampling convolutions.
    #[serde(default = "one_usize")]
    pub downsample_padding: usize,
    /// Output scale of the mid block.
    #[serde(default = "one_f64")]
    pub mid_block_scale_factor: f64,
    /// Whether the input is mapped from 0..1 to -1..1 first.
    #[serde(default)]
    pub center_input_sample: bool,
    /// `text_time` for SDXL's pooled-text and size conditioning.
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    /// Width of each size/crop time id's sinusoidal embedding (SDXL: 256).
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    /// Input width of the addition embedding (pooled text + 6 time ids).
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    /// Guidance-embedding input of LCM-distilled UNets (unsupported).
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    /// Class embedding type (unsupported).
    #[serde(default)]
    pub class_embed_type: Option<String>,
    /// The latent size the model was trained at.
    #[serde(default)]
    pub sample_size: Option<usize>,
}

fn one_usize() -> usize {
    1
}

/// `vae/config.json` of an `AutoencoderKL`.
#[derive(Debug, Clone, Deserialize)]
pub struct VaeConfig {
    /// Image channels in.
    #[serde(default = "three")]
    pub in_channels: usize,
    /// Image channels out.
    #[serde(default = "three")]
    pub out_channels: usize,
    /// Channels of each encoder block (the decoder uses them reversed).
    pub block_out_channels: Vec<usize>,
    /// ResNet layers per encoder block (the decoder has one more).
    #[serde(default = "one_usize")]
    pub layers_per_block: usize,
    /// Latent channels (4 for SD, 16 for FLUX).
    #[serde(default = "four")]
    pub latent_channels: usize,
    /// GroupNorm groups.
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    /// Latents are multiplied by this after encoding (0.18215 SD, 0.13025 SDXL).
    #[serde(default = "sd_vae_scaling")]
    pub scaling_factor: f64,
    /// Latents are shifted by this before scaling (FLUX, SD3).
    #[serde(default)]
    pub shift_factor: Option<f64>,
    /// Whether a 1x1 conv follows the encoder.
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    /// Whether a 1x1 conv precedes the decoder.
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    /// Whether the VAE must run in f32 (half precision overflows in it).
    #[serde(default = "yes")]
    pub force_upcast: bool,
    /// The image side the model was trained at (FLUX: 1024).
    #[serde(default)]
    pub sample_size: Option<u32>,
}

/// `text_encoder*/config.json` of a CLIP text model.
#[derive(Debug, Clone, Deserialize)]
pub struct ClipTextConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Sequence length (77).
    #[serde(default = "seventy_seven")]
    pub max_position_embeddings: usize,
    /// `quick_gelu` (OpenAI CLIP) or `gelu` (OpenCLIP).
    #[serde(default = "quick_gelu")]
    pub hidden_act: String,
    /// LayerNorm epsilon.
    #[serde(default = "eps_unet")]
    pub layer_norm_eps: f64,
    /// Width of the pooled projection (with-projection models).
    #[serde(default)]
    pub projection_dim: Option<usize>,
    /// The end-of-text token whose hidden state is the pooled output.
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    /// The transformers class, e.g. `CLIPTextModelWithProjection`.
    #[serde(default)]
    pub architectures: Vec<String>,
}

impl ClipTextConfig {
    /// Whether the weights include `text_projection` (SDXL's second encoder).
    pub fn has_projection(&self) -> bool {
        self.architectures
            .iter()
            .any(|a| a == "CLIPTextModelWithProjection")
    }
}

fn seventy_seven() -> usize {
    77
}
fn quick_gelu() -> String {
    "quick_gelu".to_string()
}

/// `scheduler/scheduler_config.json`. Fields a scheduler class defaults differently are
/// options, resolved by each scheduler.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct SchedulerConfig {
    /// The scheduler class the model ships with.
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    /// Training timesteps (1000).
    #[serde(default)]
    pub num_train_timesteps: Option<usize>,
    /// First beta.
    #[serde(default)]
    pub beta_start: Option<f64>,
    /// Last beta.
    #[serde(default)]
    pub beta_end: Option<f64>,
    /// `linear`, `scaled_linear` or `squaredcos_cap_v2`.
    #[serde(default)]
    pub beta_schedule: Option<String>,
    /// Explicit betas, overriding the schedule.
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
    /// `epsilon`, `v_prediction` or `sample`.
    #[serde(default)]
    pub prediction_type: Option<String>,
    /// `leading`, `trailing` or `linspace`.
    #[serde(default)]
    pub timestep_spacing: Option<String>,
    /// Added to `leading` timesteps.
    #[serde(default)]
    pub steps_offset: Option<usize>,
    /// DDIM: whether the final alpha is 1.
    #[serde(default)]
    pub set_alpha_to_one: Option<bool>,
    /// DDIM: clamp the predicted sample.
    #[serde(default)]
    pub clip_sample: Option<bool>,
    /// DDIM: the clamp range.
    #[serde(default)]
    pub clip_sample_range: Option<f64>,
    /// Rescale betas to zero terminal SNR.
    #[serde(default)]
    pub rescale_betas_zero_snr: Option<bool>,
    /// Karras sigmas (Euler, DPM++).
    #[serde(default)]
    pub use_karras_sigmas: Option<bool>,
    /// `zero` or `sigma_min`.
    #[serde(default)]
    pub final_sigmas_type: Option<String>,
    /// Euler: `linear` or `log_linear` sigma interpolation.
    #[serde(default)]
    pub interpolation_type: Option<String>,
    /// Karras range override.
    #[serde(default)]
    pub sigma_min: Option<f64>,
    /// Karras range override.
    #[serde(default)]
    pub sigma_max: Option<f64>,
    /// DPM++: use first order on the last steps of short runs.
    #[serde(default)]
    pub lower_order_final: Option<bool>,
    /// DPM++: first order on the very last step.
    #[serde(default)]
    pub euler_at_final: Option<bool>,
    /// Flow matching: shift the sigmas by the image's size (FLUX dev) rather than by `shift`.
    #[serde(default)]
    pub use_dynamic_shifting: Option<bool>,
    /// Flow matching: the fixed shift (1 leaves the sigmas as they are).
    #[serde(default)]
    pub shift: Option<f64>,
    /// Flow matching: the dynamic shift at `base_image_seq_len` tokens.
    #[serde(default)]
    pub base_shift: Option<f64>,
    /// Flow matching: the dynamic shift at `max_image_seq_len` tokens.
    #[serde(default)]
    pub max_shift: Option<f64>,
    /// Flow matching: image tokens where `base_shift` applies.
    #[serde(default)]
    pub base_image_seq_len: Option<usize>,
    /// Flow matching: image tokens where `max_shift` applies.
    #[serde(default)]
    pub max_image_seq_len: Option<usize>,
    /// Flow matching: `exponential` or `linear` time shift.
    #[serde(default)]
    pub time_shift_type: Option<String>,
}

/// `model_index.json`: which pipeline the folder is and pipeline-wide options.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelIndex {
    /// The diffusers pipeline class.
    #[serde(rename = "_class_name")]
    pub class_name: String,
    /// SDXL: an absent negative prompt gives zero embeddings rather than encoding "".
    #[serde(default)]
    pub force_zeros_for_empty_prompt: Option<bool>,
}

/// A special token as `tokenizer_config.json` writes it: a string or an object.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SpecialToken {
    /// `"<|endoftext|>"`
    Text(String),
    /// `{"content": "<|endoftext|>", ...}`
    Object {
        /// The token text.
        content: String,
    },
}

impl SpecialToken {
    /// The token's text.
    pub fn text(&self) -> &str {
        match self {
            SpecialToken::Text(t) => t,
            SpecialToken::Object { content } => content,
        }
    }
}

/// `tokenizer*/tokenizer_config.json`: the special tokens and length.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct TokenizerConfig {
    /// Start of text.
    #[serde(default)]
    pub bos_token: Option<SpecialToken>,
    /// End of text.
    #[serde(default)]
    pub eos_token: Option<SpecialToken>,
    /// Padding (SD 1.x: end of text; SD 2.x and SDXL's second tokenizer: `!`).
    #[serde(default)]
    pub pad_token: Option<SpecialToken>,
    /// Maximum tokens (77).
    #[serde(default)]
    pub model_max_length: Option<f64>,
}
