//! A FLUX.1 model folder as the hub repos ship it: diffusers configs for every part, the
//! transformer in Black Forest Labs' single file (`flux1-*.safetensors`) or a GGUF
//! quantization of it, the autoencoder in `ae.safetensors`, CLIP-L and T5 text encoders.
//! Configs are read at open; components load when a job first needs them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::flux::autoencoder::Config as AutoencoderConfig;
use candle_transformers::models::flux::model::Config as TransformerConfig;
use candle_transformers::models::flux::WithForward;
use candle_transformers::models::t5::Config as T5Config;
use serde::Deserialize;

use super::clip::ClipTextModel;
use super::component::{Component, ModelWeights};
use super::config::{read_json, ClipTextConfig, ModelIndex, SchedulerConfig, VaeConfig};
use super::error::ModelError;
use super::flux_ae::bfl_autoencoder_var_builder;
use super::flux_transformer::Flux1Transformer;
use super::flux_weights::FluxWeights;
use super::t5::T5TextModel;
use super::t5_tokenizer::T5Tokenizer;
use super::tokenizer::PromptTokenizer;
use super::vae::{Vae, VaeTiling};
use super::weights::{
    component_files, files_weights, weights_error, weights_var_builder, WeightCount,
};
use super::weights::{files_with_extension, find_gguf};

/// Pixels per latent of the FLUX autoencoder.
pub const FLUX_LATENT_SCALE: usize = 8;
/// Pixels per packed token: 2x2 latents make one transformer token.
pub const FLUX_PATCH_PX: u32 = 16;

/// `transformer/config.json` of a `FluxTransformer2DModel`.
#[derive(Debug, Clone, Deserialize)]
pub struct FluxTransformerJson {
    /// Packed latent channels (64: 16 latent channels x 2x2).
    pub in_channels: usize,
    /// Width of CLIP's pooled output.
    pub pooled_projection_dim: usize,
    /// Width of T5's hidden states.
    pub joint_attention_dim: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Width of one head.
    pub attention_head_dim: usize,
    /// Double-stream blocks.
    pub num_layers: usize,
    /// Single-stream blocks.
    pub num_single_layers: usize,
    /// Rotary embedding widths per position axis.
    pub axes_dims_rope: Vec<usize>,
    /// Whether guidance goes in through an embedder (dev) or not (schnell).
    #[serde(default)]
    pub guidance_embeds: bool,
}

impl FluxTransformerJson {
    /// candle's config for the same transformer.
    pub fn candle_config(&self) -> TransformerConfig {
        TransformerConfig {
            in_channels: self.in_channels,
            vec_in_dim: self.pooled_projection_dim,
            context_in_dim: self.joint_attention_dim,
            hidden_size: self.num_attention_heads * self.attention_head_dim,
            mlp_ratio: 4.0,
            num_heads: self.num_attention_heads,
            depth: self.num_layers,
            depth_single_blocks: self.num_single_layers,
            axes_dim: self.axes_dims_rope.clone(),
            theta: 10_000,
            qkv_bias: true,
            guidance_embed: self.guidance_embeds,
        }
    }
}

/// Which FLUX.1 model a folder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FluxVariant {
    /// Timestep-distilled: few steps, no guidance.
    Schnell,
    /// Guidance-distilled: guidance goes to the transformer's embedder.
    Dev,
}

impl FluxVariant {
    /// T5 tokens the prompt is padded to (256 for schnell, 512 for dev, as diffusers).
    pub fn max_sequence_length(self) -> usize {
        match self {
            FluxVariant::Schnell => 256,
            FluxVariant::Dev => 512,
        }
    }

    /// Steps and guidance an artist starts from.
    pub fn default_steps_and_guidance(self) -> (usize, f64) {
        match self {
            FluxVariant::Schnell => (4, 0.0),
            FluxVariant::Dev => (28, 3.5),
        }
    }
}

/// Where the transformer's weights are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransformerFile {
    /// Black Forest Labs' single safetensors file.
    Full(PathBuf),
    /// A GGUF quantization of it (candle's quantized FLUX).
    Quantized(PathBuf),
}

impl TransformerFile {
    /// The file.
    pub fn path(&self) -> &Path {
        match self {
            TransformerFile::Full(path) | TransformerFile::Quantized(path) => path,
        }
    }
}

/// The loaded transformer: Easel's, its weights from BFL's safetensors (held at the asked
/// precision) or from a GGUF (its matrices quantized as stored).
#[derive(Debug)]
pub struct FluxTransformer(Box<Flux1Transformer>);

impl FluxTransformer {
    /// One velocity prediction for packed latents `img` at `timestep` (a sigma).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        img: &Tensor,
        img_ids: &Tensor,
        txt: &Tensor,
        txt_ids: &Tensor,
        timestep: &Tensor,
        pooled: &Tensor,
        guidance: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        self.0
            .forward(img, img_ids, txt, txt_ids, timestep, pooled, guidance)
    }
}

/// The 16-channel autoencoder: Easel's VAE with FLUX's latent shift and scale (from
/// `vae/config.json`), its weights read from BFL's `ae.safetensors`.
#[derive(Debug)]
pub struct FluxAutoencoder {
    vae: Vae,
}

impl FluxAutoencoder {
    /// The posterior of `pixels` (`[1, 3, h, w]` in -1..1): mean and standard deviation.
    pub fn encode(&self, pixels: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let posterior = self.vae.encode(pixels)?;
        Ok((posterior.mean, posterior.std))
    }

    /// Model latents from an autoencoder sample: `(z - shift) * scale`.
    pub fn to_model_latents(&self, sample: &Tensor) -> candle_core::Result<Tensor> {
        self.vae.to_model_latents(sample)
    }

    /// Pixels (`[1, 3, h, w]`, about -1..1) from model latents `[1, 16, h/8, w/8]`.
    pub fn decode(&self, latents: &Tensor) -> candle_core::Result<Tensor> {
        self.vae.decode(latents)
    }
}

/// CLIP-L with its tokenizer.
#[derive(Debug)]
pub struct ClipEncoder {
    /// 77-token CLIP tokenizer.
    pub tokenizer: PromptTokenizer,
    /// The text model (its pooled output conditions FLUX).
    pub model: ClipTextModel,
}

/// T5 with its tokenizer.
#[derive(Debug)]
pub struct T5Encoder {
    /// SentencePiece tokenizer.
    pub tokenizer: T5Tokenizer,
    /// The encoder.
    pub model: T5TextModel,
}

/// An opened FLUX folder.
#[derive(Debug)]
pub struct FluxModel {
    dir: PathBuf,
    /// Schnell or dev.
    pub variant: FluxVariant,
    /// `transformer/config.json`.
    pub transformer_json: FluxTransformerJson,
    /// `vae/config.json` (the autoencoder's sizes, scale and shift).
    pub vae_config: VaeConfig,
    /// `scheduler/scheduler_config.json`.
    pub scheduler_config: SchedulerConfig,
    clip_config: ClipTextConfig,
    t5_config: T5Config,
    transformer_file: TransformerFile,
    clip: Option<ClipEncoder>,
    t5: Option<T5Encoder>,
    transformer: Option<FluxTransformer>,
    autoencoder: Option<FluxAutoencoder>,
    device: Device,
    /// What its layers compute in (f32 on the CPU).
    dtype: DType,
    /// What the text encoders' and the full-precision transformer's weights are held in.
    held: DType,
    vae_tiling: VaeTiling,
    loaded_bytes: Vec<(Component, u64)>,
}

impl FluxModel {
    /// Whether `dir` holds a FLUX pipeline (by its `model_index.json`).
    pub fn is_flux_folder(dir: &Path) -> bool {
        read_json::<ModelIndex>(&dir.join("model_index.json"), "model index").is_ok_and(|index| {
            index.class_name.starts_with("Flux") && !index.class_name.starts_with("Flux2")
        })
    }

    /// Reads the configs of the FLUX model in `dir` and finds its transformer file: the
    /// full-precision single file when there is one, else a GGUF.
    pub fn open(dir: &Path, device: &Device, dtype: DType) -> Result<Self, ModelError> {
        // The text encoders and the transformer hold the asked precision: on the CPU Easel's
        // linear layers widen 16-bit weights and compute in f32.
        let held = dtype;
        let dtype = crate::ops::compute_dtype(device, dtype);
        if !dir.is_dir() {
            return Err(ModelError::FolderNotFound {
                path: dir.to_path_buf(),
            });
        }
        let transformer_path = dir.join("transformer/config.json");
        let transformer_json: FluxTransformerJson =
            read_json(&transformer_path, "FLUX transformer config")?;
        let variant = if transformer_json.guidance_embeds {
            FluxVariant::Dev
        } else {
            FluxVariant::Schnell
        };
        let vae_config: VaeConfig = read_json(&dir.join("vae/config.json"), "VAE config")?;
        let scheduler_config = read_json(
            &dir.join("scheduler/scheduler_config.json"),
            "scheduler config",
        )?;
        let clip_config = read_json(&dir.join("text_encoder/config.json"), "text encoder config")?;
        let t5_config = read_json(
            &dir.join("text_encoder_2/config.json"),
            "T5 text encoder config",
        )?;
        let transformer_file = find_transformer_file(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            variant,
            transformer_json,
            vae_config,
            scheduler_config,
            clip_config,
            t5_config,
            transformer_file,
            clip: None,
            t5: None,
            transformer: None,
            autoencoder: None,
            device: device.clone(),
            dtype,
            held,
            vae_tiling: VaeTiling::Auto,
            loaded_bytes: Vec::new(),
        })
    }

    /// The model folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype weights load at.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The transformer's weight file.
    pub fn transformer_file(&self) -> &TransformerFile {
        &self.transformer_file
    }

    /// Uses the GGUF transformer in the folder (when `quantized` and one exists) or the full
    /// one; a loaded transformer of the other kind is dropped.
    pub fn prefer_quantized(&mut self, quantized: bool) {
        let wanted = if quantized {
            find_gguf(&self.dir).map(TransformerFile::Quantized)
        } else {
            find_full_transformer(&self.dir).map(TransformerFile::Full)
        };
        if let Some(file) = wanted.filter(|file| *file != self.transformer_file) {
            self.transformer_file = file;
            self.unload(Component::Transformer);
        }
    }

    /// Whether the transformer in use is full precision and a GGUF one is there to fall back
    /// to.
    pub fn can_switch_to_quantized(&self) -> bool {
        matches!(self.transformer_file, TransformerFile::Full(_)) && find_gguf(&self.dir).is_some()
    }

    /// The native output size in pixels (the autoencoder's sample size).
    pub fn native_size_px(&self) -> (u32, u32) {
        let side = self.vae_config_sample_size();
        (side, side)
    }

    fn vae_config_sample_size(&self) -> u32 {
        // FLUX's vae/config.json says 1024 for the real model (64 for the tiny one).
        self.vae_config.sample_size.unwrap_or(1024)
    }

    /// The precision `component` holds its floating-point weights in: the asked one but for
    /// the autoencoder (f32 where its config asks for it, else the compute dtype); a GGUF
    /// transformer's blocks stay as stored.
    fn held_dtype(&self, component: Component) -> DType {
        match component {
            Component::Vae if self.vae_config.force_upcast => DType::F32,
            Component::Vae => self.dtype,
            _ => self.held,
        }
    }

    /// The weight files behind `component`.
    fn files_of(&self, component: Component) -> Result<Vec<PathBuf>, ModelError> {
        match component {
            Component::TextEncoder | Component::TextEncoder2 => {
                component_files(&self.dir.join(component.name()))
            }
            Component::Transformer => Ok(vec![self.transformer_file.path().to_path_buf()]),
            Component::Vae => {
                let path = self.dir.join("ae.safetensors");
                if path.is_file() {
                    Ok(vec![path])
                } else {
                    Err(ModelError::MissingFile {
                        what: "FLUX autoencoder",
                        path,
                    })
                }
            }
            Component::Unet => Ok(Vec::new()),
        }
    }

    /// How the autoencoder tiles from now on (now, if it is loaded, and after reloads).
    pub fn set_vae_tiling(&mut self, tiling: VaeTiling) {
        self.vae_tiling = tiling;
        if let Some(autoencoder) = &mut self.autoencoder {
            autoencoder.vae.set_tiling(tiling);
        }
    }

    /// candle's autoencoder config from `vae/config.json` (for building random weights in
    /// BFL's layout).
    pub fn autoencoder_config(&self) -> AutoencoderConfig {
        let vae = &self.vae_config;
        let ch = vae.block_out_channels.first().copied().unwrap_or(128);
        AutoencoderConfig {
            resolution: self.vae_config_sample_size() as usize,
            in_channels: vae.in_channels,
            ch,
            out_ch: vae.out_channels,
            ch_mult: vae
                .block_out_channels
                .iter()
                .map(|c| c / ch.max(1))
                .collect(),
            num_res_blocks: vae.layers_per_block,
            z_channels: vae.latent_channels,
            scale_factor: vae.scaling_factor,
            shift_factor: vae.shift_factor.unwrap_or(0.0),
        }
    }

    /// The loaded CLIP encoder.
    pub fn clip(&self) -> Option<&ClipEncoder> {
        self.clip.as_ref()
    }

    /// The loaded T5 encoder.
    pub fn t5(&self) -> Option<&T5Encoder> {
        self.t5.as_ref()
    }

    /// The loaded transformer.
    pub fn transformer(&self) -> Option<&FluxTransformer> {
        self.transformer.as_ref()
    }

    /// The loaded autoencoder.
    pub fn autoencoder(&self) -> Option<&FluxAutoencoder> {
        self.autoencoder.as_ref()
    }
}

impl ModelWeights for FluxModel {
    /// The components every job needs, in pipeline order.
    fn components(&self) -> Vec<Component> {
        vec![
            Component::TextEncoder,
            Component::TextEncoder2,
            Component::Transformer,
            Component::Vae,
        ]
    }

    /// Whether `component` is in memory.
    fn is_loaded(&self, component: Component) -> bool {
        match component {
            Component::TextEncoder => self.clip.is_some(),
            Component::TextEncoder2 => self.t5.is_some(),
            Component::Transformer => self.transformer.is_some(),
            Component::Vae => self.autoencoder.is_some(),
            Component::Unet => false,
        }
    }

    /// Loads `component` if it is not loaded, returning how long that took.
    fn load(&mut self, component: Component) -> Result<Duration, ModelError> {
        if self.is_loaded(component) {
            return Ok(Duration::ZERO);
        }
        let started = Instant::now();
        let files = self.files_of(component)?;
        match component {
            Component::TextEncoder => {
                let tokenizer = PromptTokenizer::load(&self.dir.join("tokenizer"))?;
                let held = self.held_dtype(Component::TextEncoder);
                let vb = weights_var_builder(&files, held, &self.device)?;
                let config = self.dir.join("text_encoder/config.json");
                let model = ClipTextModel::new(vb, &self.clip_config)
                    .map_err(|e| weights_error(&files, &config, e))?;
                self.clip = Some(ClipEncoder { tokenizer, model });
            }
            Component::TextEncoder2 => {
                let tokenizer = T5Tokenizer::load(&self.dir.join("tokenizer_2"))?;
                let held = self.held_dtype(Component::TextEncoder2);
                let vb = weights_var_builder(&files, held, &self.device)?;
                let config = self.dir.join("text_encoder_2/config.json");
                let model = T5TextModel::new(&self.t5_config, vb)
                    .map_err(|e| weights_error(&files, &config, e))?;
                self.t5 = Some(T5Encoder { tokenizer, model });
            }
            Component::Transformer => {
                let config = self.transformer_json.candle_config();
                let config_path = self.dir.join("transformer/config.json");
                let weights = match &self.transformer_file {
                    TransformerFile::Full(_) => {
                        let held = self.held_dtype(Component::Transformer);
                        FluxWeights::Full(weights_var_builder(&files, held, &self.device)?)
                    }
                    TransformerFile::Quantized(path) => {
                        super::gguf_check::check_gguf(path)?;
                        let vb = candle_transformers::quantized_var_builder::VarBuilder::from_gguf(
                            path,
                            &self.device,
                        )
                        .map_err(|e| ModelError::BadWeights {
                            path: path.clone(),
                            message: e.to_string(),
                        })?;
                        FluxWeights::Quantized {
                            vb,
                            dtype: self.dtype,
                        }
                    }
                };
                let transformer = FluxTransformer(Box::new(
                    Flux1Transformer::new(&config, weights)
                        .map_err(|e| weights_error(&files, &config_path, e))?,
                ));
                self.transformer = Some(transformer);
            }
            Component::Vae => {
                let vb = bfl_autoencoder_var_builder(
                    &files[0],
                    self.vae_config.block_out_channels.len(),
                    self.held_dtype(Component::Vae),
                    &self.device,
                )?;
                let config_path = self.dir.join("vae/config.json");
                let mut vae = Vae::new(vb, &self.vae_config)
                    .map_err(|e| weights_error(&files, &config_path, e))?;
                vae.set_tiling(self.vae_tiling);
                self.autoencoder = Some(FluxAutoencoder { vae });
            }
            Component::Unet => return Ok(Duration::ZERO),
        }
        let bytes =
            files_weights(&files).held_bytes(self.held_dtype(component).size_in_bytes() as u64);
        self.loaded_bytes.retain(|(c, _)| *c != component);
        self.loaded_bytes.push((component, bytes));
        Ok(started.elapsed())
    }

    /// Drops `component`'s weights.
    fn unload(&mut self, component: Component) {
        match component {
            Component::TextEncoder => self.clip = None,
            Component::TextEncoder2 => self.t5 = None,
            Component::Transformer => self.transformer = None,
            Component::Vae => self.autoencoder = None,
            Component::Unet => {}
        }
        self.loaded_bytes.retain(|(c, _)| *c != component);
    }

    /// Drops every component.
    fn unload_all(&mut self) {
        for component in self.components() {
            self.unload(component);
        }
    }

    /// What `component`'s weight files hold, loaded or not (nothing when they can't be
    /// found).
    fn file_weights(&self, component: Component) -> WeightCount {
        self.files_of(component)
            .map(|files| files_weights(&files))
            .unwrap_or_default()
    }

    fn held_bytes(&self, component: Component) -> u64 {
        self.file_weights(component)
            .held_bytes(self.held_dtype(component).size_in_bytes() as u64)
    }

    /// Bytes of weight files behind each loaded component.
    fn loaded_bytes(&self) -> &[(Component, u64)] {
        &self.loaded_bytes
    }
}

/// The transformer file of a folder: the full single file when there is one, else a GGUF.
fn find_transformer_file(dir: &Path) -> Result<TransformerFile, ModelError> {
    if let Some(path) = find_full_transformer(dir) {
        return Ok(TransformerFile::Full(path));
    }
    if let Some(path) = find_gguf(dir) {
        return Ok(TransformerFile::Quantized(path));
    }
    Err(ModelError::MissingFile {
        what: "FLUX transformer (Black Forest Labs' flux1-*.safetensors, or a .gguf)",
        path: dir.join("flux1-dev.safetensors"),
    })
}

/// A `*.safetensors` at the folder's top other than the autoencoder, `flux1-*` first.
fn find_full_transformer(dir: &Path) -> Option<PathBuf> {
    let mut candidates = files_with_extension(dir, "safetensors");
    candidates.retain(|p| p.file_name().is_some_and(|n| n != "ae.safetensors"));
    candidates.sort_by_key(|p| {
        let flux = p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("flux1-"));
        (!flux, p.clone())
    });
    candidates.into_iter().next()
}
