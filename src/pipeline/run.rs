//! The pipelines' three phases (encode; prepare and denoise; decode) for a model of any
//! family, so that the engine runs full and staged jobs the same way for each.

use super::noise::NoiseSource;
use super::request::{GenerateRequest, RequestError};
use super::result::{Denoised, Generated};
use super::{flux, sd, PipelineError, StageTimings, StepObserver};
use crate::models::component::Component;
use crate::models::opened::OpenedModel;

/// The encoded prompt of either family.
#[derive(Debug)]
pub enum EncodedPrompt {
    /// Stable Diffusion's text conditioning.
    Sd(sd::EncodedPrompt),
    /// FLUX's T5 sequence and CLIP pooled vector.
    Flux(flux::EncodedPrompt),
}

/// Checks the request against the model before any weights load; returns the output size.
pub fn check_inputs(
    model: &OpenedModel,
    request: &GenerateRequest,
) -> Result<(u32, u32), RequestError> {
    match model {
        OpenedModel::Sd(m) => sd::check_inputs(m, request),
        OpenedModel::Flux(m) => flux::check_inputs(m, request),
    }
}

/// Loads those of `components` not yet loaded, in order, recording each load in `timings`
/// and calling `on_load(component, progress)` with 0 before and 1 after it.
pub fn load_these(
    model: &mut OpenedModel,
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

/// Steps 1 and 2: checks the request and encodes the prompt (text encoders loaded).
pub fn encode(
    model: &OpenedModel,
    request: &GenerateRequest,
    timings: &mut StageTimings,
) -> Result<EncodedPrompt, PipelineError> {
    match model {
        OpenedModel::Sd(m) => sd::encode(m, request, timings).map(EncodedPrompt::Sd),
        OpenedModel::Flux(m) => flux::encode(m, request, timings).map(EncodedPrompt::Flux),
    }
}

/// Steps 3 and 4: prepares and denoises the latents (denoiser loaded, and the VAE when the
/// request has an init image).
pub fn denoise(
    model: &OpenedModel,
    request: &GenerateRequest,
    prompt: &EncodedPrompt,
    noise: &mut dyn NoiseSource,
    observer: &mut dyn StepObserver,
    timings: StageTimings,
) -> Result<Denoised, PipelineError> {
    match (model, prompt) {
        (OpenedModel::Sd(m), EncodedPrompt::Sd(p)) => {
            sd::denoise(m, request, p, noise, observer, timings)
        }
        (OpenedModel::Flux(m), EncodedPrompt::Flux(p)) => {
            flux::denoise(m, request, p, noise, observer, timings)
        }
        _ => Err(PipelineError::Compute(
            "a prompt encoded by one model family was given to another".into(),
        )),
    }
}

/// Step 5: decodes (VAE loaded) and pastes the kept pixels back.
pub fn decode(
    model: &OpenedModel,
    request: &GenerateRequest,
    denoised: Denoised,
) -> Result<Generated, PipelineError> {
    match model {
        OpenedModel::Sd(m) => sd::decode(m, request, denoised),
        OpenedModel::Flux(m) => flux::decode(m, request, denoised),
    }
}

/// Runs one generation with every component loaded.
pub fn generate(
    model: &OpenedModel,
    request: &GenerateRequest,
    noise: &mut dyn NoiseSource,
    observer: &mut dyn StepObserver,
    mut timings: StageTimings,
) -> Result<Generated, PipelineError> {
    let prompt = encode(model, request, &mut timings)?;
    let denoised = denoise(model, request, &prompt, noise, observer, timings)?;
    decode(model, request, denoised)
}
