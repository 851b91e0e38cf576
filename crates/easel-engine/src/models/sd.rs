//! A Stable Diffusion model folder (diffusers layout): its configs read at open, its
//! components (text encoders, UNet, VAE) loaded when a job first needs them and kept.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{DType, Device};

use super::clip::ClipTextModel;
pub use super::component::{Component, ModelWeights};
use super::config::{
    read_json, ClipTextConfig, ModelIndex, SchedulerConfig, UnetConfig, VaeConfig,
};
use super::error::ModelError;
use super::tokenizer::PromptTokenizer;
use super::unet::{Unet, UnetShape};
use super::vae::{Vae, VaeTiling};
use super::weights::{
    component_files, files_weights, held_bytes, weights_error, weights_var_builder, WeightCount,
};

/// Which Stable Diffusion family a folder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// SD 1.x and 2.x: one CLIP text encoder.
    StableDiffusion,
    /// SDXL: two text encoders, pooled text and size conditioning.
    StableDiffusionXl,
}

/// One text encoder with its tokenizer.
#[derive(Debug)]
pub struct TextEncoder {
    /// The tokenizer of the same index.
    pub tokenizer: PromptTokenizer,
    /// The CLIP model.
    pub model: ClipTextModel,
}

#[derive(Debug)]
struct TextEncoderSlot {
    component: Component,
    dir: PathBuf,
    tokenizer_dir: PathBuf,
    config: ClipTextConfig,
    loaded: Option<TextEncoder>,
}

/// An opened model folder.
#[derive(Debug)]
pub struct SdModel {
    dir: PathBuf,
    /// SD or SDXL.
    pub family: Family,
    /// `model_index.json`.
    pub index: ModelIndex,
    /// The UNet's resolved shape.
    pub unet_shape: UnetShape,
    /// `vae/config.json`.
    pub vae_config: VaeConfig,
    /// `scheduler/scheduler_config.json`.
    pub scheduler_config: SchedulerConfig,
    text_encoders: Vec<TextEncoderSlot>,
    unet: Option<Unet>,
    vae: Option<Vae>,
    device: Device,
    dtype: DType,
    /// Bytes of weights per loaded component, at the dtype each is held in.
    loaded_bytes: Vec<(Component, u64)>,
    /// How the VAE tiles, kept across its reloads.
    vae_tiling: VaeTiling,
}

impl SdModel {
    /// The precision `component` holds its weights in: the run's, the VAE f32 where its
    /// config asks for it (`force_upcast`).
    fn held_dtype(&self, component: Component) -> DType {
        match component {
            Component::Vae if self.vae_config.force_upcast => DType::F32,
            _ => self.dtype,
        }
    }

    /// Reads the configs of the model in `dir` (nothing is loaded yet).
    pub fn open(dir: &Path, device: &Device, dtype: DType) -> Result<Self, ModelError> {
        if !dir.is_dir() {
            return Err(ModelError::FolderNotFound {
                path: dir.to_path_buf(),
            });
        }
        let index: ModelIndex = read_json(&dir.join("model_index.json"), "model index")?;
        let family = match index.class_name.as_str() {
            "StableDiffusionPipeline"
            | "StableDiffusionImg2ImgPipeline"
            | "StableDiffusionInpaintPipeline" => Family::StableDiffusion,
            "StableDiffusionXLPipeline"
            | "StableDiffusionXLImg2ImgPipeline"
            | "StableDiffusionXLInpaintPipeline" => Family::StableDiffusionXl,
            other => {
                return Err(ModelError::Unsupported {
                    what: format!("the pipeline {other}"),
                    path: dir.join("model_index.json"),
                })
            }
        };
        let unet_path = dir.join("unet/config.json");
        let unet_config: UnetConfig = read_json(&unet_path, "UNet config")?;
        let unet_shape = UnetShape::from_config(&unet_config, &unet_path)?;
        let vae_config: VaeConfig = read_json(&dir.join("vae/config.json"), "VAE config")?;
        let scheduler_config: SchedulerConfig = read_json(
            &dir.join("scheduler/scheduler_config.json"),
            "scheduler config",
        )?;
        let mut text_encoders = vec![Self::slot(dir, Component::TextEncoder, "tokenizer")?];
        if family == Family::StableDiffusionXl {
            text_encoders.push(Self::slot(dir, Component::TextEncoder2, "tokenizer_2")?);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            family,
            index,
            unet_shape,
            vae_config,
            scheduler_config,
            text_encoders,
            unet: None,
            vae: None,
            device: device.clone(),
            dtype,
            loaded_bytes: Vec::new(),
            vae_tiling: VaeTiling::Auto,
        })
    }

    fn slot(
        dir: &Path,
        component: Component,
        tokenizer: &str,
    ) -> Result<TextEncoderSlot, ModelError> {
        let encoder_dir = dir.join(component.name());
        let config = read_json(&encoder_dir.join("config.json"), "text encoder config")?;
        Ok(TextEncoderSlot {
            component,
            dir: encoder_dir,
            tokenizer_dir: dir.join(tokenizer),
            config,
            loaded: None,
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

    /// Pixels per latent along each side (the VAE halves the size in all but its last block).
    pub fn latent_scale(&self) -> usize {
        1 << self.vae_config.block_out_channels.len().saturating_sub(1)
    }

    /// The native output size in pixels (the UNet's sample size times the VAE's scale).
    pub fn native_size_px(&self) -> (u32, u32) {
        let side = (self.unet_shape.sample_size().unwrap_or(64) * self.latent_scale()) as u32;
        (side, side)
    }

    /// How the VAE tiles from now on (now, if it is loaded, and after reloads).
    pub fn set_vae_tiling(&mut self, tiling: VaeTiling) {
        self.vae_tiling = tiling;
        if let Some(vae) = &mut self.vae {
            vae.set_tiling(tiling);
        }
    }

    /// The loaded text encoders, in order (empty entries are not loaded).
    pub fn text_encoders(&self) -> Vec<Option<&TextEncoder>> {
        self.text_encoders
            .iter()
            .map(|s| s.loaded.as_ref())
            .collect()
    }

    /// The loaded UNet.
    pub fn unet(&self) -> Option<&Unet> {
        self.unet.as_ref()
    }

    /// The loaded VAE.
    pub fn vae(&self) -> Option<&Vae> {
        self.vae.as_ref()
    }
}

impl ModelWeights for SdModel {
    /// The components every job of this model needs.
    fn components(&self) -> Vec<Component> {
        let mut all: Vec<Component> = self.text_encoders.iter().map(|s| s.component).collect();
        all.extend([Component::Unet, Component::Vae]);
        all
    }

    /// Whether `component` is in memory.
    fn is_loaded(&self, component: Component) -> bool {
        match component {
            Component::Unet => self.unet.is_some(),
            Component::Vae => self.vae.is_some(),
            text => self
                .text_encoders
                .iter()
                .any(|s| s.component == text && s.loaded.is_some()),
        }
    }

    /// Loads `component` if it is not loaded, returning how long that took (zero when it was).
    fn load(&mut self, component: Component) -> Result<Duration, ModelError> {
        if self.is_loaded(component) {
            return Ok(Duration::ZERO);
        }
        let started = Instant::now();
        let dtype = self.dtype;
        let bytes = match component {
            Component::Unet => {
                let dir = self.dir.join("unet");
                let files = component_files(&dir)?;
                let vb = weights_var_builder(&files, dtype, &self.device)?;
                let unet = Unet::new(vb, self.unet_shape.clone())
                    .map_err(|e| weights_error(&files, &dir.join("config.json"), e))?;
                self.unet = Some(unet);
                held_bytes(&files, dtype)
            }
            Component::Vae => {
                let dir = self.dir.join("vae");
                let files = component_files(&dir)?;
                let vae_dtype = self.held_dtype(Component::Vae);
                let vb = weights_var_builder(&files, vae_dtype, &self.device)?;
                let mut vae = Vae::new(vb, &self.vae_config)
                    .map_err(|e| weights_error(&files, &dir.join("config.json"), e))?;
                vae.set_tiling(self.vae_tiling);
                self.vae = Some(vae);
                held_bytes(&files, vae_dtype)
            }
            text => {
                let device = self.device.clone();
                let Some(slot) = self.text_encoders.iter_mut().find(|s| s.component == text) else {
                    return Ok(Duration::ZERO);
                };
                let tokenizer = PromptTokenizer::load(&slot.tokenizer_dir)?;
                let files = component_files(&slot.dir)?;
                // Held at the asked dtype like the UNet (on the CPU its layers widen f16
                // matrices to compute in f32).
                let text_dtype = dtype;
                let vb = weights_var_builder(&files, text_dtype, &device)?;
                let model = ClipTextModel::new(vb, &slot.config)
                    .map_err(|e| weights_error(&files, &slot.dir.join("config.json"), e))?;
                slot.loaded = Some(TextEncoder { tokenizer, model });
                held_bytes(&files, text_dtype)
            }
        };
        self.loaded_bytes.retain(|(c, _)| *c != component);
        self.loaded_bytes.push((component, bytes));
        Ok(started.elapsed())
    }

    /// Drops `component`'s weights.
    fn unload(&mut self, component: Component) {
        match component {
            Component::Unet => self.unet = None,
            Component::Vae => self.vae = None,
            text => {
                for slot in self
                    .text_encoders
                    .iter_mut()
                    .filter(|s| s.component == text)
                {
                    slot.loaded = None;
                }
            }
        }
        self.loaded_bytes.retain(|(c, _)| *c != component);
    }

    /// Drops every component.
    fn unload_all(&mut self) {
        for component in self.components() {
            self.unload(component);
        }
    }

    /// Bytes of `component`'s weight files, loaded or not (0 when they can't be found).
    fn file_weights(&self, component: Component) -> WeightCount {
        component_files(&self.dir.join(component.name()))
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
