//! Model families behind one interface. A family is one module here (its facts and the
//! `Family` / `LoadedModel` implementations) over its own model and pipeline files; the
//! engine, the residency cache, the bench, replay, the CLI and the window use only what this
//! module declares, and never ask which family a model is. Registering a family is one line
//! in `FAMILIES`.

mod flux;
mod flux2;
mod info;
mod sd;

use std::any::Any;
use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use image::RgbImage;

pub use info::{
    Capabilities, DenoiserFootprint, GuidanceKind, ModelDefaults, ModelInfo, PartWeights,
};

pub use crate::models::component::{Component, ModelWeights};
use crate::models::error::ModelError;
use crate::models::vae::VaeTiling;
use crate::models::weights::WeightCount;
use crate::pipeline::masked_area::MaskedArea;
use crate::pipeline::noise::NoiseSource;
pub use crate::pipeline::plan::Plan;
use crate::pipeline::request::{GenerateRequest, Reference, RequestError};
use crate::pipeline::result::{Denoised, Generated};
use crate::pipeline::{PipelineError, StageTimings, StepObserver};

/// Every family Easel runs, the most particular first (the first that recognizes a folder
/// opens it).
static FAMILIES: &[&dyn Family] = &[
    &FamilyOf::<crate::models::flux2::Flux2Model>::NEW,
    &FamilyOf::<crate::models::flux::FluxModel>::NEW,
    &FamilyOf::<crate::models::sd::SdModel>::NEW,
];

/// A kind of model: how to recognize its folders, read their facts and open them.
pub trait Family: Sync {
    /// Whether `dir` holds a model of this family (its configs only are read).
    fn recognizes(&self, dir: &Path) -> bool;
    /// The facts of the model in `dir`, from its configs; no weights are read.
    fn info(&self, dir: &Path) -> Result<ModelInfo, ModelError>;
    /// Opens `dir` for `device` at `dtype`; components load when asked.
    fn open(
        &self,
        dir: &Path,
        device: &Device,
        dtype: DType,
    ) -> Result<Box<dyn LoadedModel>, ModelError>;
}

/// What a family's model says about itself: enough for its `Family` (`FamilyOf`).
trait FamilyModel: ModelWeights + Sized + 'static {
    /// Whether `dir` holds a model of this family (its configs only are read).
    fn recognizes(dir: &Path) -> bool;
    /// Reads the configs in `dir`; nothing is loaded.
    fn from_configs(dir: &Path, device: &Device, dtype: DType) -> Result<Self, ModelError>;
    /// Its facts.
    fn facts(&self) -> ModelInfo;
}

/// The family whose model is `M`.
struct FamilyOf<M>(std::marker::PhantomData<fn() -> M>);

impl<M> FamilyOf<M> {
    const NEW: Self = Self(std::marker::PhantomData);
}

impl<M: FamilyModel> Family for FamilyOf<M>
where
    Loaded<M>: LoadedModel,
{
    fn recognizes(&self, dir: &Path) -> bool {
        M::recognizes(dir)
    }

    fn info(&self, dir: &Path) -> Result<ModelInfo, ModelError> {
        // Only configs are read: the CPU device is a name here, nothing is allocated on it.
        Ok(M::from_configs(dir, &Device::Cpu, DType::F32)?.facts())
    }

    fn open(
        &self,
        dir: &Path,
        device: &Device,
        dtype: DType,
    ) -> Result<Box<dyn LoadedModel>, ModelError> {
        let model = M::from_configs(dir, device, dtype)?;
        let info = model.facts();
        Ok(Box::new(Loaded { model, info }))
    }
}

/// The last part of `dir`, as the picker shows it.
fn folder_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

/// The family of the model in `dir`; Stable Diffusion (the diffusers layout) when no other
/// recognizes it, so that its errors name the missing files.
fn family_of(dir: &Path) -> Result<&'static dyn Family, ModelError> {
    if !dir.is_dir() {
        return Err(ModelError::FolderNotFound {
            path: dir.to_path_buf(),
        });
    }
    Ok(FAMILIES
        .iter()
        .copied()
        .find(|family| family.recognizes(dir))
        .unwrap_or(&FamilyOf::<crate::models::sd::SdModel>::NEW))
}

impl ModelInfo {
    /// The facts of the model in `dir` (a model folder, or a catalog model's assembled
    /// folder, whose catalog defaults then apply), without a device or weights.
    pub fn read(dir: &Path) -> Result<Self, ModelError> {
        let mut info = family_of(dir)?.info(dir)?;
        info.apply_catalog_defaults();
        Ok(info)
    }
}

/// Opens the model in `dir` as its family, for `device` at `dtype`.
pub fn open(dir: &Path, device: &Device, dtype: DType) -> Result<Box<dyn LoadedModel>, ModelError> {
    family_of(dir)?.open(dir, device, dtype)
}

/// A prompt as one family encoded it, handed back to the same model's `denoise`.
pub struct EncodedPrompt(Box<dyn Any + Send>);

impl std::fmt::Debug for EncodedPrompt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EncodedPrompt")
    }
}

impl EncodedPrompt {
    /// Wraps a family's own encoded prompt.
    pub fn new<T: Any + Send>(prompt: T) -> Self {
        Self(Box::new(prompt))
    }

    /// The family's own encoded prompt, or an error when another family made it.
    pub fn get<T: Any>(&self) -> Result<&T, PipelineError> {
        self.0.downcast_ref().ok_or_else(|| {
            PipelineError::Compute(
                "a prompt encoded by one model family was given to another".into(),
            )
        })
    }
}

/// An opened model of any family: its components (loaded on demand, `ModelWeights`), the
/// pipeline phases, and what its fallbacks can change.
pub trait LoadedModel: ModelWeights {
    /// Its facts.
    fn info(&self) -> &ModelInfo;
    /// The model folder.
    fn dir(&self) -> &Path {
        &self.info().dir
    }
    /// The text encoders among `components`.
    fn text_encoders(&self) -> Vec<Component> {
        self.components()
            .into_iter()
            .filter(|c| c.is_text_encoder())
            .collect()
    }
    /// The denoiser (UNet or transformer).
    fn denoiser(&self) -> Component;

    /// Checks `request` against the model before any weights load; returns the output size.
    fn check_inputs(&self, request: &GenerateRequest) -> Result<(u32, u32), RequestError>;
    /// Step 2: encodes the prompt (text encoders loaded) of a request `plan` checked.
    fn encode(
        &self,
        request: &GenerateRequest,
        plan: &Plan,
        timings: &mut StageTimings,
    ) -> Result<EncodedPrompt, PipelineError>;
    /// Steps 3 and 4: prepares and denoises the latents (denoiser loaded, and the VAE when
    /// the request has an init image).
    fn denoise(
        &self,
        request: &GenerateRequest,
        plan: &Plan,
        prompt: &EncodedPrompt,
        noise: &mut dyn NoiseSource,
        observer: &mut dyn StepObserver,
        timings: StageTimings,
    ) -> Result<Denoised, PipelineError>;
    /// Step 5: decodes (VAE loaded) and pastes the kept pixels back.
    fn decode(
        &self,
        request: &GenerateRequest,
        denoised: Denoised,
    ) -> Result<Generated, PipelineError>;
    /// An RGB approximation of a step's latents, one pixel per latent.
    fn preview(&self, latents: &Tensor) -> candle_core::Result<RgbImage>;
    /// Step latents as diffusers records them in the parity goldens (FLUX: packed).
    fn latents_as_diffusers_records(&self, latents: &Tensor) -> candle_core::Result<Tensor> {
        Ok(latents.clone())
    }

    /// How the VAE tiles (models whose autoencoder does not tile ignore it).
    fn set_vae_tiling(&mut self, _tiling: VaeTiling) {}
    /// Whether a quantized denoiser can stand in for the full one (the last fallback).
    fn has_quantized_denoiser(&self) -> bool {
        false
    }
    /// Runs the quantized denoiser (true) or the full one (false) from the next load on.
    fn use_quantized_denoiser(&mut self, _quantized: bool) {}

    /// Seconds of each of `runs` bare denoiser forwards on the shapes of one step of
    /// `request` at `size_px` square (the denoiser is loaded first).
    fn time_denoiser_forward(
        &mut self,
        request: &GenerateRequest,
        size_px: u32,
        runs: usize,
    ) -> Result<Vec<f64>, PipelineError>;
}

/// An opened model of one family, with its facts: the families' `LoadedModel`s.
#[derive(Debug)]
struct Loaded<M> {
    model: M,
    info: ModelInfo,
}

impl<M: ModelWeights> ModelWeights for Loaded<M> {
    fn components(&self) -> Vec<Component> {
        self.model.components()
    }

    fn is_loaded(&self, component: Component) -> bool {
        self.model.is_loaded(component)
    }

    fn load(&mut self, component: Component) -> Result<Duration, ModelError> {
        self.model.load(component)
    }

    fn unload(&mut self, component: Component) {
        self.model.unload(component);
    }

    fn unload_all(&mut self) {
        self.model.unload_all();
    }

    fn file_weights(&self, component: Component) -> WeightCount {
        self.model.file_weights(component)
    }

    fn held_bytes(&self, component: Component) -> u64 {
        self.model.held_bytes(component)
    }

    fn loaded_bytes(&self) -> &[(Component, u64)] {
        self.model.loaded_bytes()
    }
}

/// Loads those of `components` not yet loaded, in order, recording each load in `timings`
/// and calling `on_load(component, progress)` with 0 before and 1 after it.
pub fn load_these(
    model: &mut dyn LoadedModel,
    components: &[Component],
    timings: &mut StageTimings,
    on_load: &mut dyn FnMut(Component, f32),
) -> Result<(), PipelineError> {
    for &component in components {
        if !model.is_loaded(component) {
            on_load(component, 0.0);
            let took = model.load(component)?;
            timings.push(format!("load {}", component.name()), took);
            on_load(component, 1.0);
        }
    }
    Ok(())
}

/// A masked-area inpaint of `request` on `model`: the crop's request and what blends its
/// result back; `None` when the request runs as it is (see `pipeline::masked_area`).
pub fn masked_area_of(
    model: &dyn LoadedModel,
    request: &GenerateRequest,
) -> Option<(GenerateRequest, MaskedArea)> {
    let info = model.info();
    MaskedArea::prepare(request, info.native_size_px, info.size_multiple_px)
}

/// The plan of what the engine thread will run for `request`: the crop's, for a masked-area
/// inpaint. What a client checks before it sends a job.
pub fn plan_as_run(
    model: &dyn LoadedModel,
    request: &GenerateRequest,
) -> Result<Plan, RequestError> {
    match masked_area_of(model, request) {
        Some((crop, _)) => plan(model, &crop),
        None => plan(model, request),
    }
}

/// Step 1: checks `request` once against `model` (before any weights load) into the plan
/// the phases run: the request's own checks, the family's (sizes, what its denoiser takes),
/// and what the model can take (edit references, control images, LoRA).
pub fn plan(model: &dyn LoadedModel, request: &GenerateRequest) -> Result<Plan, RequestError> {
    request.validate()?;
    let info = model.info();
    let size_px = model.check_inputs(request)?;
    let cannot = |what: String| Err(RequestError::ModelCannot(what));
    let edit_references = request.edit_references().count();
    let taken = info.capabilities.edit_references;
    if edit_references > taken {
        let takes = match taken {
            0 => "no edit references".to_string(),
            n => format!("at most {n} edit references"),
        };
        return cannot(format!(
            "{} ({}) takes {takes}; the request has {edit_references}: remove them, or pick a model that edits with references",
            info.name, info.family
        ));
    }
    let controls = request
        .references
        .iter()
        .filter(|r| matches!(r, Reference::Control { .. }))
        .count();
    if controls > 0 && !info.capabilities.controlnet {
        return cannot(format!(
            "{} ({}) takes no ControlNet yet; remove the control images",
            info.name, info.family
        ));
    }
    if !request.adapters.is_empty() && !info.capabilities.lora {
        return cannot(format!(
            "{} ({}) takes no LoRA yet; remove --lora",
            info.name, info.family
        ));
    }
    Ok(Plan {
        size_px,
        mode: request.mode(),
        guided: info.guidance == GuidanceKind::ClassifierFree && request.guidance > 1.0,
        components: model.components(),
        denoiser: model.denoiser(),
        adapters: request.adapters.clone(),
        edit_references,
    })
}

/// Runs one generation with every component loaded.
pub fn generate(
    model: &dyn LoadedModel,
    request: &GenerateRequest,
    noise: &mut dyn NoiseSource,
    observer: &mut dyn StepObserver,
    mut timings: StageTimings,
) -> Result<Generated, PipelineError> {
    let plan = plan(model, request)?;
    let prompt = model.encode(request, &plan, &mut timings)?;
    let denoised = model.denoise(request, &plan, &prompt, noise, observer, timings)?;
    model.decode(request, denoised)
}

/// Seconds of each of `runs` calls of `forward`, each waited for by reading a value back from
/// the device.
fn time_forwards(
    runs: usize,
    mut forward: impl FnMut() -> candle_core::Result<Tensor>,
) -> Result<Vec<f64>, PipelineError> {
    let mut secs = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        forward()?
            .flatten_all()?
            .get(0)?
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()?;
        secs.push(started.elapsed().as_secs_f64());
    }
    Ok(secs)
}
