//! An opened FLUX.2 [klein] folder (the hub's diffusers layout): configs read at open; the
//! Qwen3 text encoder with its tokenizer, the transformer and the autoencoder (with its
//! BatchNorm statistics) loaded on demand.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use serde::Deserialize;

use super::component::{Component, ModelWeights};
use super::config::{read_json, VaeConfig};
use super::error::ModelError;
use super::flux2_bfl::{bfl_var_builder, find_single_file};
use super::flux2_gguf::GgufTransformer;
use super::flux2_latents::Flux2LatentNorm;
use super::flux2_transformer::{Flux2Transformer, Flux2TransformerConfig};
use super::flux2_weights::Flux2Weights;
use super::qwen3::{Qwen3Config, Qwen3Encoder};
use super::qwen_prompt::QwenPromptTokenizer;
use super::vae::Vae;
use super::weights::{
    component_files, files_weights, find_gguf, weights_error, weights_var_builder, WeightCount,
};

/// The text encoder's layers whose hidden states make the prompt embeddings (diffusers'
/// `text_encoder_out_layers` default).
pub const TEXT_LAYERS: [usize; 3] = [9, 18, 27];
/// Tokens every prompt is padded (or cut) to.
pub const MAX_SEQUENCE_LENGTH: usize = 512;
/// Pixels per packed token side: 8 from the autoencoder times the 2x2 patches.
pub const FLUX2_PATCH_PX: u32 = 16;
/// Patchified latent channels.
pub const LATENT_TOKEN_CHANNELS: usize = 128;

/// `model_index.json` of a FLUX.2 pipeline.
#[derive(Debug, Clone, Deserialize)]
pub struct Flux2Index {
    /// `Flux2KleinPipeline`.
    #[serde(rename = "_class_name")]
    pub class_name: String,
    /// Distilled models run one pass per step and ignore guidance; base models run CFG.
    #[serde(default)]
    pub is_distilled: bool,
    /// The text encoder's layers whose hidden states are concatenated. diffusers takes them
    /// as a pipeline argument (always 9, 18 and 27 for the published models); a folder may
    /// state others here, as the benchmark's reduced-depth model does.
    #[serde(default = "default_text_layers")]
    pub text_encoder_out_layers: Vec<usize>,
}

fn default_text_layers() -> Vec<usize> {
    TEXT_LAYERS.to_vec()
}

/// The autoencoder's config: the usual VAE fields and the BatchNorm epsilon.
#[derive(Debug, Clone, Deserialize)]
struct Flux2VaeExtras {
    #[serde(default = "default_bn_eps")]
    batch_norm_eps: f64,
}

fn default_bn_eps() -> f64 {
    1e-4
}

/// The Qwen3 encoder and its tokenizer.
#[derive(Debug)]
pub struct Flux2TextEncoder {
    /// Template, tokens, padding.
    pub tokenizer: QwenPromptTokenizer,
    /// The first 27 layers.
    pub model: Qwen3Encoder,
}

/// The autoencoder and its latent normalisation.
#[derive(Debug)]
pub struct Flux2Autoencoder {
    /// Encoder and decoder (32 latent channels, no scale or shift).
    pub vae: Vae,
    /// The BatchNorm statistics over the 128 patchified channels.
    pub norm: Flux2LatentNorm,
}

/// An opened FLUX.2 folder.
#[derive(Debug)]
pub struct Flux2Model {
    dir: PathBuf,
    /// `model_index.json`.
    pub index: Flux2Index,
    /// The text encoder's config.
    pub text_config: Qwen3Config,
    /// The transformer's config.
    pub transformer_config: Flux2TransformerConfig,
    /// The autoencoder's config (scale 1, no shift: the BatchNorm normalises).
    pub vae_config: VaeConfig,
    batch_norm_eps: f64,
    text_encoder: Option<Flux2TextEncoder>,
    transformer: Option<Flux2Transformer>,
    autoencoder: Option<Flux2Autoencoder>,
    /// Whether the transformer comes from the folder's GGUF even when full weights are there.
    prefer_gguf: bool,
    device: Device,
    /// What its layers compute in (f32 on the CPU).
    dtype: DType,
    /// What the text encoder's and the full-precision transformer's weights are held in.
    held: DType,
    loaded_bytes: Vec<(Component, u64)>,
}

/// Where the transformer's weights are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransformerSource {
    /// The diffusers `transformer/` folder (one file or shards).
    Folder(Vec<PathBuf>),
    /// Black Forest Labs' single file at the folder's top.
    SingleFile(PathBuf),
    /// A GGUF quantization at the folder's top.
    Gguf(PathBuf),
}

impl TransformerSource {
    /// The files read.
    pub fn files(&self) -> Vec<PathBuf> {
        match self {
            TransformerSource::Folder(files) => files.clone(),
            TransformerSource::SingleFile(file) | TransformerSource::Gguf(file) => {
                vec![file.clone()]
            }
        }
    }
}

impl Flux2Model {
    /// Whether `dir` holds a FLUX.2 pipeline (by its `model_index.json`).
    pub fn is_flux2_folder(dir: &Path) -> bool {
        read_json::<Flux2Index>(&dir.join("model_index.json"), "model index")
            .is_ok_and(|index| index.class_name.starts_with("Flux2"))
    }

    /// Reads the configs in `dir` (nothing is loaded yet).
    pub fn open(dir: &Path, device: &Device, dtype: DType) -> Result<Self, ModelError> {
        // The text encoder and the transformer hold the asked precision; on the CPU Easel's
        // linear layers widen 16-bit weights and compute in f32.
        let held = dtype;
        let dtype = crate::ops::compute_dtype(device, dtype);
        if !dir.is_dir() {
            return Err(ModelError::FolderNotFound {
                path: dir.to_path_buf(),
            });
        }
        let index: Flux2Index = read_json(&dir.join("model_index.json"), "model index")?;
        let text_config: Qwen3Config = read_json(
            &dir.join("text_encoder/config.json"),
            "Qwen3 text encoder config",
        )?;
        let transformer_config: Flux2TransformerConfig = read_json(
            &dir.join("transformer/config.json"),
            "FLUX.2 transformer config",
        )?;
        check_text_layers(dir, &index, &text_config, &transformer_config)?;
        let vae_path = dir.join("vae/config.json");
        let mut vae_config: VaeConfig = read_json(&vae_path, "VAE config")?;
        vae_config.scaling_factor = 1.0;
        vae_config.shift_factor = None;
        let extras: Flux2VaeExtras = read_json(&vae_path, "VAE config")?;
        Ok(Self {
            dir: dir.to_path_buf(),
            index,
            text_config,
            transformer_config,
            vae_config,
            batch_norm_eps: extras.batch_norm_eps,
            text_encoder: None,
            transformer: None,
            autoencoder: None,
            prefer_gguf: false,
            device: device.clone(),
            dtype,
            held,
            loaded_bytes: Vec::new(),
        })
    }

    /// The model folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The device it runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The precision the transformer and encoder run in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The native output size (1024 x 1024).
    pub fn native_size_px(&self) -> (u32, u32) {
        let side = self.vae_config.sample_size.unwrap_or(1024);
        (side, side)
    }

    /// The text encoder, when loaded.
    pub fn text_encoder(&self) -> Option<&Flux2TextEncoder> {
        self.text_encoder.as_ref()
    }

    /// The transformer, when loaded.
    pub fn transformer(&self) -> Option<&Flux2Transformer> {
        self.transformer.as_ref()
    }

    /// The autoencoder, when loaded.
    pub fn autoencoder(&self) -> Option<&Flux2Autoencoder> {
        self.autoencoder.as_ref()
    }

    /// The precision `component` holds its floating-point weights in: the autoencoder f32
    /// (its BatchNorm statistics and decoder want it), the text encoder and the
    /// full-precision transformer the asked one (Easel's linear layers widen 16-bit weights
    /// on the CPU; a GGUF transformer's blocks stay as stored).
    fn held_dtype(&self, component: Component) -> DType {
        match component {
            Component::Vae => DType::F32,
            _ => self.held,
        }
    }

    /// The weight files of `component`; the transformer's are those of `transformer_source`.
    fn files_of(&self, component: Component) -> Result<Vec<PathBuf>, ModelError> {
        match component {
            Component::Transformer => self.transformer_source().map(|source| source.files()),
            _ => component_files(&self.dir.join(component.name())),
        }
    }

    /// Where the transformer comes from: the folder's GGUF when it is preferred (the
    /// out-of-memory ladder's last rung), else the diffusers folder, else BFL's single file,
    /// else a GGUF (a folder shipped with the quantized transformer only).
    pub fn transformer_source(&self) -> Result<TransformerSource, ModelError> {
        let gguf = find_gguf(&self.dir);
        if let (true, Some(file)) = (self.prefer_gguf, &gguf) {
            return Ok(TransformerSource::Gguf(file.clone()));
        }
        match component_files(&self.dir.join("transformer")) {
            Ok(files) => Ok(TransformerSource::Folder(files)),
            Err(missing) => find_single_file(&self.dir)
                .map(TransformerSource::SingleFile)
                .or(gguf.map(TransformerSource::Gguf))
                .ok_or(missing),
        }
    }

    /// Whether the transformer comes from the BFL single file.
    pub fn transformer_from_single_file(&self) -> bool {
        matches!(
            self.transformer_source(),
            Ok(TransformerSource::SingleFile(_))
        )
    }

    /// Reads the transformer from the GGUF (when `quantized` and the folder has one) or from
    /// the full weights; a loaded transformer of the other kind is dropped.
    pub fn prefer_quantized(&mut self, quantized: bool) {
        let before = self.transformer_source().ok();
        self.prefer_gguf = quantized;
        if self.transformer_source().ok() != before {
            self.unload(Component::Transformer);
        }
    }

    /// Whether the transformer in use is full precision and a GGUF is there to fall back to.
    pub fn can_switch_to_quantized(&self) -> bool {
        !matches!(self.transformer_source(), Ok(TransformerSource::Gguf(_)))
            && find_gguf(&self.dir).is_some()
    }
}

/// The text layers exist in the encoder and, concatenated, are as wide as the transformer's
/// text input.
fn check_text_layers(
    dir: &Path,
    index: &Flux2Index,
    text: &Qwen3Config,
    transformer: &Flux2TransformerConfig,
) -> Result<(), ModelError> {
    let layers = &index.text_encoder_out_layers;
    let bad = |message: String| ModelError::BadConfig {
        what: "FLUX.2 model index",
        path: dir.join("model_index.json"),
        message,
    };
    if layers.is_empty() || layers.iter().any(|&l| l == 0 || l > text.num_hidden_layers) {
        return Err(bad(format!(
            "text_encoder_out_layers {layers:?} must name layers 1 to {} of the text encoder",
            text.num_hidden_layers
        )));
    }
    if layers.len() * text.hidden_size != transformer.joint_attention_dim {
        return Err(bad(format!(
            "{} text layers of {} values make {}, but the transformer takes {} \
             (transformer/config.json's joint_attention_dim)",
            layers.len(),
            text.hidden_size,
            layers.len() * text.hidden_size,
            transformer.joint_attention_dim
        )));
    }
    Ok(())
}

impl ModelWeights for Flux2Model {
    fn components(&self) -> Vec<Component> {
        vec![
            Component::TextEncoder,
            Component::Transformer,
            Component::Vae,
        ]
    }

    fn is_loaded(&self, component: Component) -> bool {
        match component {
            Component::TextEncoder => self.text_encoder.is_some(),
            Component::Transformer => self.transformer.is_some(),
            Component::Vae => self.autoencoder.is_some(),
            Component::TextEncoder2 | Component::Unet => false,
        }
    }

    fn load(&mut self, component: Component) -> Result<Duration, ModelError> {
        if self.is_loaded(component) {
            return Ok(Duration::ZERO);
        }
        let started = Instant::now();
        let files = self.files_of(component)?;
        let config_path = self.dir.join(component.name()).join("config.json");
        match component {
            Component::TextEncoder => {
                let tokenizer =
                    QwenPromptTokenizer::load(&self.dir.join("tokenizer"), MAX_SEQUENCE_LENGTH)?;
                let held = self.held_dtype(Component::TextEncoder);
                let vb = weights_var_builder(&files, held, &self.device)?;
                let layers = self
                    .index
                    .text_encoder_out_layers
                    .iter()
                    .copied()
                    .max()
                    .unwrap_or(0);
                let model = Qwen3Encoder::new(&self.text_config, layers, vb)
                    .map_err(|e| weights_error(&files, &config_path, e))?;
                self.text_encoder = Some(Flux2TextEncoder { tokenizer, model });
            }
            Component::Transformer => {
                let inner = self.transformer_config.num_attention_heads
                    * self.transformer_config.attention_head_dim;
                let config = &self.transformer_config;
                let built = match self.transformer_source()? {
                    TransformerSource::Folder(files) => {
                        let held = self.held_dtype(Component::Transformer);
                        let vb = weights_var_builder(&files, held, &self.device)?;
                        Flux2Transformer::new(config, &Flux2Weights::Full(vb))
                    }
                    TransformerSource::SingleFile(file) => {
                        let held = self.held_dtype(Component::Transformer);
                        let vb = bfl_var_builder(&file, inner, held, &self.device)?;
                        Flux2Transformer::new(config, &Flux2Weights::Full(vb))
                    }
                    TransformerSource::Gguf(file) => {
                        let file = GgufTransformer::open(&file, inner, &self.device)?;
                        let weights = Flux2Weights::Gguf {
                            file: &file,
                            dtype: self.dtype,
                        };
                        Flux2Transformer::new(config, &weights)
                    }
                };
                let model = built.map_err(|e| weights_error(&files, &config_path, e))?;
                self.transformer = Some(model);
            }
            Component::Vae => {
                let vb =
                    weights_var_builder(&files, self.held_dtype(Component::Vae), &self.device)?;
                let vae = Vae::new(vb.clone(), &self.vae_config)
                    .map_err(|e| weights_error(&files, &config_path, e))?;
                let norm = Flux2LatentNorm::new(&vb, LATENT_TOKEN_CHANNELS, self.batch_norm_eps)
                    .map_err(|e| weights_error(&files, &config_path, e))?;
                self.autoencoder = Some(Flux2Autoencoder { vae, norm });
            }
            Component::TextEncoder2 | Component::Unet => {
                return Err(ModelError::Unsupported {
                    what: format!("a FLUX.2 {} component", component.name()),
                    path: self.dir.clone(),
                })
            }
        }
        let bytes =
            files_weights(&files).held_bytes(self.held_dtype(component).size_in_bytes() as u64);
        self.loaded_bytes.push((component, bytes));
        Ok(started.elapsed())
    }

    fn unload(&mut self, component: Component) {
        match component {
            Component::TextEncoder => self.text_encoder = None,
            Component::Transformer => self.transformer = None,
            Component::Vae => self.autoencoder = None,
            Component::TextEncoder2 | Component::Unet => {}
        }
        self.loaded_bytes.retain(|(c, _)| *c != component);
    }

    fn unload_all(&mut self) {
        for component in self.components() {
            self.unload(component);
        }
    }

    fn file_weights(&self, component: Component) -> WeightCount {
        self.files_of(component)
            .map(|files| files_weights(&files))
            .unwrap_or_default()
    }

    fn held_bytes(&self, component: Component) -> u64 {
        self.file_weights(component)
            .held_bytes(self.held_dtype(component).size_in_bytes() as u64)
    }

    fn loaded_bytes(&self) -> &[(Component, u64)] {
        &self.loaded_bytes
    }
}
