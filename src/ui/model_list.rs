//! The models the picker offers: Stable Diffusion and FLUX folders under the models
//! directory, and folders the user opened. Only their configs are read here; weights load in
//! the engine.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use easel::hub::catalog::{self, Architecture};
use easel::hub::fit::{estimate_parts, MemoryEstimate, PartBytes};
use easel::models::component::Component;
use easel::models::opened::{LatentSpace, OpenedModel};

/// A model folder the picker can offer.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEntry {
    /// Folder name, shown in the picker.
    pub name: String,
    /// The folder.
    pub path: PathBuf,
    /// The size it was trained at.
    pub native_size_px: (u32, u32),
    /// SD, SDXL or FLUX latents.
    pub latent_space: LatentSpace,
    /// Whether its UNet takes the mask as input (a dedicated inpainting model).
    pub inpainting: bool,
    /// Steps and guidance the model wants when it is picked (FLUX's distilled models), or
    /// `None` to keep what the panel has.
    pub recommended_steps_guidance: Option<(usize, f64)>,
    /// Bytes of its weight files per stage, for the will-it-fit estimate.
    pub weights: PartBytes,
}

impl ModelEntry {
    /// Reads the configs in `path`; an error says which file is wrong.
    pub fn read(path: &Path) -> Result<Self, String> {
        let model = OpenedModel::open(path, &Device::Cpu, DType::F32).map_err(|e| e.to_string())?;
        let (native_size_px, inpainting, recommended_steps_guidance) = match &model {
            OpenedModel::Sd(sd) => (
                sd.native_size_px(),
                sd.unet_shape.in_channels != sd.vae_config.latent_channels,
                None,
            ),
            OpenedModel::Flux(flux) => (
                flux.native_size_px(),
                false,
                Some(flux.variant.default_steps_and_guidance()),
            ),
        };
        let bytes_of = |components: &[Component]| -> u64 {
            components.iter().map(|c| model.file_bytes(*c)).sum()
        };
        let weights = PartBytes {
            text_bytes: bytes_of(&model.text_encoders()),
            denoiser_bytes: bytes_of(&[Component::Unet, Component::Transformer]),
            vae_bytes: bytes_of(&[Component::Vae]),
        };
        Ok(Self {
            weights,
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string()),
            path: path.to_path_buf(),
            native_size_px,
            latent_space: model.latent_space(),
            inpainting,
            recommended_steps_guidance,
        })
    }

    /// The will-it-fit estimate at `size_px` with activations of `bytes_per_weight`, from the
    /// sizes of the weight files (16-bit files running in f32 take twice what they weigh).
    pub fn memory_estimate(&self, size_px: (u32, u32), bytes_per_weight: u64) -> MemoryEstimate {
        let architecture = match self.latent_space {
            LatentSpace::StableDiffusion => Architecture::Sd15,
            LatentSpace::StableDiffusionXl => Architecture::Sdxl,
            LatentSpace::Flux => Architecture::Flux,
        };
        estimate_parts(
            self.weights,
            architecture,
            bytes_per_weight,
            size_px.0,
            size_px.1,
        )
    }

    /// Whether the model has a negative prompt and a choice of sampler (FLUX has neither).
    pub fn takes_negative_prompt_and_sampler(&self) -> bool {
        self.latent_space != LatentSpace::Flux
    }

    /// Width x height presets for this model: square, portrait and landscape at its native
    /// pixel count, in multiples of 64.
    pub fn size_presets(&self) -> Vec<(u32, u32)> {
        let side = self.native_size_px.0.max(64);
        let round = |px: f32| ((px / 64.0).round() as u32).max(1) * 64;
        let long = round(side as f32 * (4.0f32 / 3.0).sqrt());
        let short = round(side as f32 * (3.0f32 / 4.0).sqrt());
        let mut presets = vec![(side, side), (short, long), (long, short)];
        presets.dedup();
        presets
    }
}

/// Every model folder found directly under `dir`, and the catalog's downloaded models
/// (`dir/catalog/<id>`, named as the catalog names them). Ones that fail to read are skipped:
/// they are reported when picked by hand.
pub fn scan_models_dir(dir: &Path) -> Vec<ModelEntry> {
    let mut found = model_folders_in(dir);
    for mut entry in model_folders_in(&dir.join("catalog")) {
        if let Some(listed) = catalog::find(&entry.name) {
            entry.name = listed.name.to_string();
        }
        found.push(entry);
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

fn model_folders_in(dir: &Path) -> Vec<ModelEntry> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("model_index.json").is_file())
        .filter_map(|p| ModelEntry::read(&p).ok())
        .collect()
}
