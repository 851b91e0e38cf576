//! An opened model folder of any family Easel runs, behind the one interface the engine and
//! its residency policies use: components, loading, unloading and the bytes they hold.

use std::path::Path;
use std::time::Duration;

use candle_core::{DType, Device};

use super::component::Component;
use super::error::ModelError;
use super::flux::FluxModel;
use super::sd::SdModel;
use super::vae::VaeTiling;

/// The latent space a model denoises in (what the live preview maps to RGB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatentSpace {
    /// SD 1.x and 2.x: 4 channels.
    StableDiffusion,
    /// SDXL: 4 channels, another fit.
    StableDiffusionXl,
    /// FLUX.1: 16 channels.
    Flux,
}

/// A Stable Diffusion or FLUX folder, configs read, components loaded on demand.
#[derive(Debug)]
pub enum OpenedModel {
    /// SD 1.x, 2.x, SDXL (diffusers layout).
    Sd(Box<SdModel>),
    /// FLUX.1 schnell or dev (Black Forest Labs' files).
    Flux(Box<FluxModel>),
}

impl OpenedModel {
    /// Opens `dir` as the family its `model_index.json` names.
    pub fn open(dir: &Path, device: &Device, dtype: DType) -> Result<Self, ModelError> {
        if FluxModel::is_flux_folder(dir) {
            Ok(OpenedModel::Flux(Box::new(FluxModel::open(
                dir, device, dtype,
            )?)))
        } else {
            Ok(OpenedModel::Sd(Box::new(SdModel::open(
                dir, device, dtype,
            )?)))
        }
    }

    /// The model folder.
    pub fn dir(&self) -> &Path {
        match self {
            OpenedModel::Sd(m) => m.dir(),
            OpenedModel::Flux(m) => m.dir(),
        }
    }

    /// The latent space its denoiser works in.
    pub fn latent_space(&self) -> LatentSpace {
        match self {
            OpenedModel::Sd(m) => match m.family {
                super::sd::Family::StableDiffusion => LatentSpace::StableDiffusion,
                super::sd::Family::StableDiffusionXl => LatentSpace::StableDiffusionXl,
            },
            OpenedModel::Flux(_) => LatentSpace::Flux,
        }
    }

    /// The components every job needs, in pipeline order.
    pub fn components(&self) -> Vec<Component> {
        match self {
            OpenedModel::Sd(m) => m.components(),
            OpenedModel::Flux(m) => m.components(),
        }
    }

    /// The text encoders among `components`.
    pub fn text_encoders(&self) -> Vec<Component> {
        self.components()
            .into_iter()
            .filter(|c| matches!(c, Component::TextEncoder | Component::TextEncoder2))
            .collect()
    }

    /// The denoiser: the UNet or the transformer.
    pub fn denoiser(&self) -> Component {
        match self {
            OpenedModel::Sd(_) => Component::Unet,
            OpenedModel::Flux(_) => Component::Transformer,
        }
    }

    /// Whether `component` is in memory.
    pub fn is_loaded(&self, component: Component) -> bool {
        match self {
            OpenedModel::Sd(m) => m.is_loaded(component),
            OpenedModel::Flux(m) => m.is_loaded(component),
        }
    }

    /// Loads `component` if it is not loaded, returning how long that took.
    pub fn load(&mut self, component: Component) -> Result<Duration, ModelError> {
        match self {
            OpenedModel::Sd(m) => m.load(component),
            OpenedModel::Flux(m) => m.load(component),
        }
    }

    /// Drops `component`'s weights.
    pub fn unload(&mut self, component: Component) {
        match self {
            OpenedModel::Sd(m) => m.unload(component),
            OpenedModel::Flux(m) => m.unload(component),
        }
    }

    /// Drops every component.
    pub fn unload_all(&mut self) {
        match self {
            OpenedModel::Sd(m) => m.unload_all(),
            OpenedModel::Flux(m) => m.unload_all(),
        }
    }

    /// Bytes of `component`'s weight files, loaded or not.
    pub fn file_bytes(&self, component: Component) -> u64 {
        match self {
            OpenedModel::Sd(m) => m.file_bytes(component),
            OpenedModel::Flux(m) => m.file_bytes(component),
        }
    }

    /// Bytes of weight files behind each loaded component.
    pub fn loaded_bytes(&self) -> &[(Component, u64)] {
        match self {
            OpenedModel::Sd(m) => m.loaded_bytes(),
            OpenedModel::Flux(m) => m.loaded_bytes(),
        }
    }

    /// How the VAE tiles (Stable Diffusion's VAE; FLUX's autoencoder does not tile).
    pub fn set_vae_tiling(&mut self, tiling: VaeTiling) {
        if let OpenedModel::Sd(m) = self {
            m.set_vae_tiling(tiling);
        }
    }
}
