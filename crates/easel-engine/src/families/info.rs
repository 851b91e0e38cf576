//! `ModelInfo`: every fact about a model that the window, the CLI, the catalog and the engine
//! need before any weights load, so that a model's defaults, sizes and abilities are decided
//! in one place (its family).

use std::path::PathBuf;

use crate::device::Precision;
use crate::hub::catalog;
pub use crate::hub::catalog::DenoiserFootprint;
pub use crate::hub::fit::PartWeights;
use crate::hub::fit::{estimate_parts, MemoryEstimate};
use crate::schedulers::SamplerKind;

/// What guidance a model takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuidanceKind {
    /// Classifier-free guidance with a negative prompt (scale above 1 turns it on).
    ClassifierFree,
    /// A guidance value the model was distilled to take as an input (FLUX.1 dev).
    Distilled,
    /// None (timestep-distilled models).
    None,
}

/// How the model runs when the user has not said.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelDefaults {
    /// Denoising steps.
    pub steps: usize,
    /// Guidance scale (see `GuidanceKind`).
    pub guidance: f64,
    /// The sampler.
    pub sampler: SamplerKind,
}

/// What a model can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// From the prompt alone.
    pub txt2img: bool,
    /// From an init image.
    pub img2img: bool,
    /// Repainting a masked region of an init image.
    pub inpaint: bool,
    /// A dedicated inpainting model (its denoiser takes the mask): it needs an init image
    /// and a mask.
    pub inpainting_model: bool,
    /// Edit references it takes beside the prompt (0: none).
    pub edit_references: usize,
    /// Whether ControlNets apply to it.
    pub controlnet: bool,
    /// Whether LoRA files apply to it.
    pub lora: bool,
}

/// The facts of one model folder, read from its configs without a device or weights.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// The folder.
    pub dir: PathBuf,
    /// What the picker shows: the folder's name, or the catalog's name for a catalog model.
    pub name: String,
    /// The family and variant, in words ("Stable Diffusion XL", "FLUX.1 [dev]").
    pub family: &'static str,
    /// The size it was trained at.
    pub native_size_px: (u32, u32),
    /// Output sides must be multiples of this (8 for Stable Diffusion, 16 for FLUX).
    pub size_multiple_px: u32,
    /// How it runs when the user has not said.
    pub defaults: ModelDefaults,
    /// A distilled model runs as its defaults say: picking it takes its steps, guidance and
    /// sampler over the user's settings.
    pub wants_its_defaults: bool,
    /// What it can do.
    pub capabilities: Capabilities,
    /// Whether it takes a negative prompt.
    pub negative_prompt: bool,
    /// Whether the user can choose its sampler.
    pub sampler_choice: bool,
    /// What its sampler is called where there is no choice ("flow-match Euler").
    pub own_sampler: &'static str,
    /// What its guidance value means.
    pub guidance: GuidanceKind,
    /// How its activations grow, for the memory estimate.
    pub footprint: DenoiserFootprint,
    /// What its weight files hold, per stage.
    pub weights: PartWeights,
}

impl ModelInfo {
    /// The will-it-fit estimate at `size_px` and `precision`.
    pub fn memory_estimate(&self, size_px: (u32, u32), precision: Precision) -> MemoryEstimate {
        estimate_parts(
            self.weights,
            self.footprint,
            precision,
            size_px.0,
            size_px.1,
        )
    }

    /// `memory_estimate` for an edit with references of `reference_sizes_px`: each adds its
    /// tokens (one per `size_multiple_px` square) to every joint attention.
    pub fn memory_estimate_with_references(
        &self,
        size_px: (u32, u32),
        reference_sizes_px: &[(u32, u32)],
        precision: Precision,
    ) -> MemoryEstimate {
        if self.capabilities.edit_references == 0 {
            return self.memory_estimate(size_px, precision);
        }
        let side = u64::from(self.size_multiple_px.max(1));
        let tokens: u64 = reference_sizes_px
            .iter()
            .map(|&(w, h)| (u64::from(w) / side) * (u64::from(h) / side))
            .sum();
        let mut footprint = self.footprint;
        footprint.joint_text_tokens += tokens;
        estimate_parts(self.weights, footprint, precision, size_px.0, size_px.1)
    }

    /// `px` rounded down to a side this model takes (never below one multiple).
    pub fn round_side(&self, px: u32) -> u32 {
        let multiple = self.size_multiple_px.max(1);
        (px / multiple).max(1) * multiple
    }

    /// Width x height presets: square, portrait and landscape at its native pixel count, in
    /// multiples of 64 (which every family takes).
    pub fn size_presets(&self) -> Vec<(u32, u32)> {
        let side = self.native_size_px.0.max(64);
        let round = |px: f32| ((px / 64.0).round() as u32).max(1) * 64;
        let long = round(side as f32 * (4.0f32 / 3.0).sqrt());
        let short = round(side as f32 * (3.0f32 / 4.0).sqrt());
        let mut presets = vec![(side, side), (short, long), (long, short)];
        presets.dedup();
        presets
    }

    /// A catalog model's assembled folder (`models/catalog/<id>`) runs with the catalog's
    /// name and defaults (SD-Turbo's one step, for one, is no fact of its configs).
    pub(super) fn apply_catalog_defaults(&mut self) {
        let in_catalog_folder = self
            .dir
            .parent()
            .and_then(|p| p.file_name())
            .is_some_and(|name| name == "catalog");
        let id = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        let Some(entry) = id
            .filter(|_| in_catalog_folder)
            .and_then(|id| catalog::find(&id))
        else {
            return;
        };
        self.name = entry.name.to_string();
        self.defaults = ModelDefaults {
            steps: entry.defaults.steps,
            guidance: entry.defaults.guidance,
            sampler: entry.defaults.sampler,
        };
        self.native_size_px = (entry.defaults.width_px, entry.defaults.height_px);
        self.wants_its_defaults = true;
    }
}
