//! The FLUX.2 [klein] loop as `Flux2KleinPipeline` computes it: the Qwen3 prompt (layers 9,
//! 18 and 27 over 512 padded tokens), target noise drawn in the patchified 128-channel layout,
//! each edit reference VAE-encoded (posterior mean), normalised and placed as extra tokens at
//! time coordinate 10, 20, 30..., Euler over FLUX.2's schedule with one transformer pass per
//! step (two with CFG for the base models), and decoding through the BatchNorm statistics.
//! img2img and hand-masked inpainting work as for FLUX.1: the init image's latents noised to
//! the first step, and outside the mask the re-noised original at every step.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use image::RgbImage;

use super::flow_blend::{scale_noise, KeepOutsideMask};
use super::image::{
    binarize, fit_rgb, image_to_tensor, mask_to_latent, mask_to_unit, painted_mask,
};
use super::noise::{NoiseRole, NoiseSource};
use super::plan::Plan;
use super::request::{GenerateRequest, RequestError};
use super::result::{Denoised, Generated};
use super::{PipelineError, StageTimings, StepControl, StepObserver};
use crate::models::component::Component;
use crate::models::flux2::{Flux2Autoencoder, Flux2Model, FLUX2_PATCH_PX};
use crate::models::flux2_latents::{pack, patchify, unpack, unpatchify};
use crate::models::qwen3::concat_hidden_states;
use crate::schedulers::flow_match::FlowMatchSchedule;

/// Edit references the pipeline takes.
pub const MAX_REFERENCES: usize = 4;
/// The smallest side of a reference, in pixels.
const MIN_REFERENCE_SIDE_PX: u32 = 64;
/// References above this many pixels are scaled down to it first.
const MAX_REFERENCE_PIXELS: u64 = 1024 * 1024;

/// The family's checks of a request; returns the output size (the first reference's cropped
/// size when none is given and there is no init image).
pub fn check_inputs(
    model: &Flux2Model,
    request: &GenerateRequest,
) -> Result<(u32, u32), RequestError> {
    let references: Vec<(&RgbImage, &str)> = request.edit_references().collect();
    if references.len() > MAX_REFERENCES {
        return Err(RequestError::ModelCannot(format!(
            "FLUX.2 [klein] takes 1 to {MAX_REFERENCES} edit references; the request has {}",
            references.len()
        )));
    }
    for (image, name) in &references {
        let (w, h) = image.dimensions();
        if w.min(h) < MIN_REFERENCE_SIDE_PX {
            return Err(RequestError::ModelCannot(format!(
                "the reference {name} is {w}x{h}: references need at least {MIN_REFERENCE_SIDE_PX} px a side"
            )));
        }
        if w.max(h) > 8 * w.min(h) {
            return Err(RequestError::ModelCannot(format!(
                "the reference {name} is {w}x{h}: its sides may differ at most 8 to 1"
            )));
        }
    }
    let native = match (references.first(), request.init()) {
        (Some((image, _)), None) => {
            let (w, h) = reference_size(image);
            (
                w / FLUX2_PATCH_PX * FLUX2_PATCH_PX,
                h / FLUX2_PATCH_PX * FLUX2_PATCH_PX,
            )
        }
        _ => model.native_size_px(),
    };
    request.resolved_size_multiple_of(native, FLUX2_PATCH_PX)
}

/// The prompt embeddings `[1, 512, 3 * hidden]` (and the empty prompt's, for CFG).
#[derive(Debug)]
pub struct EncodedPrompt {
    embeds: Tensor,
    negative: Option<Tensor>,
    cut_off: Option<String>,
}

/// Step 2: the Qwen3 prompt embeddings (text encoder loaded).
pub fn encode(
    model: &Flux2Model,
    request: &GenerateRequest,
    plan: &Plan,
    timings: &mut StageTimings,
) -> Result<EncodedPrompt, PipelineError> {
    let started = Instant::now();
    let encoder = model
        .text_encoder()
        .ok_or(PipelineError::NotLoaded(Component::TextEncoder))?;
    let embed = |prompt: &str| -> Result<(Tensor, Option<String>), PipelineError> {
        let tokens = encoder
            .tokenizer
            .tokenize(prompt)
            .map_err(PipelineError::Prompt)?;
        let ids = Tensor::from_vec(tokens.ids.clone(), (1, tokens.ids.len()), model.device())?;
        let states = encoder.model.hidden_states(
            &ids,
            &tokens.mask,
            &model.index.text_encoder_out_layers,
        )?;
        Ok((
            concat_hidden_states(&states)?.to_dtype(DType::F32)?,
            tokens.cut_off,
        ))
    };
    let (embeds, cut_off) = embed(&request.prompt)?;
    // The klein base models run CFG against the empty prompt; distilled ones never do.
    let negative = if plan.guided {
        Some(embed(request.negative_prompt.as_deref().unwrap_or(""))?.0)
    } else {
        None
    };
    timings.push("encode prompt", started.elapsed());
    Ok(EncodedPrompt {
        embeds,
        negative,
        cut_off,
    })
}

/// Steps 3 and 4: target noise, references and init image as tokens, then the Euler loop
/// (transformer loaded, and the autoencoder when there are images to encode).
pub fn denoise(
    model: &Flux2Model,
    request: &GenerateRequest,
    plan: &Plan,
    prompt: &EncodedPrompt,
    noise: &mut dyn NoiseSource,
    observer: &mut dyn StepObserver,
    mut timings: StageTimings,
) -> Result<Denoised, PipelineError> {
    let (width, height) = plan.size_px;
    let device = model.device().clone();
    let dtype = model.dtype();
    let transformer = model
        .transformer()
        .ok_or(PipelineError::NotLoaded(Component::Transformer))?;
    let autoencoder = || {
        model
            .autoencoder()
            .ok_or(PipelineError::NotLoaded(Component::Vae))
    };

    // 3. The schedule, the target's noise, the references and the init image as tokens.
    let started = Instant::now();
    let (rows, cols) = (
        (height / FLUX2_PATCH_PX) as usize,
        (width / FLUX2_PATCH_PX) as usize,
    );
    let target_tokens = rows * cols;
    let schedule = FlowMatchSchedule::flux2(request.steps, target_tokens);
    let sigmas = &schedule.sigmas;
    let channels = crate::models::flux2::LATENT_TOKEN_CHANNELS;
    let initial_noise = pack(&noise.draw(
        NoiseRole::PrepareLatents,
        &[1, channels, rows, cols],
        &device,
    )?)?;
    let mut reference_tokens = Vec::new();
    let mut reference_ids = Vec::new();
    for (index, (image, _)) in request.edit_references().enumerate() {
        let prepared = prepare_reference(image);
        let tokens = encode_image(autoencoder()?, &prepared, &device)?;
        let (w, h) = prepared.dimensions();
        let (ref_rows, ref_cols) = ((h / FLUX2_PATCH_PX) as usize, (w / FLUX2_PATCH_PX) as usize);
        reference_ids.push(token_ids(
            ref_rows,
            ref_cols,
            10.0 * (index + 1) as f32,
            &device,
        )?);
        reference_tokens.push(tokens);
    }
    let source = request.init();
    let source_image = source.map(|s| fit_rgb(&s.image, width, height));
    let image_latents = match &source_image {
        Some(image) => Some(encode_image(autoencoder()?, image, &device)?),
        None => None,
    };
    let first_step = source.map_or(0, |s| schedule.start_step(s.strength));
    let mut latents = match &image_latents {
        Some(image_latents) => scale_noise(image_latents, &initial_noise, sigmas[first_step])?,
        None => initial_noise.clone(),
    };
    let painted_mask = painted_mask(source, plan.mode, width, height);
    // Inpainting keeps the original outside the mask, per token (one token per 16 px).
    let blend = match (&painted_mask, &image_latents) {
        (Some(mask), Some(original)) => {
            let mask_px = binarize(&mask_to_unit(mask, &device)?)?;
            let per_token = mask_to_latent(&mask_px, FLUX2_PATCH_PX as usize)?;
            Some(KeepOutsideMask::new(
                pack(&per_token.repeat((1, channels, 1, 1))?)?,
                original.clone(),
                initial_noise.clone(),
            )?)
        }
        _ => None,
    };
    let mut all_ids = vec![token_ids(rows, cols, 0.0, &device)?];
    all_ids.extend(reference_ids);
    let image_ids = Tensor::cat(&all_ids, 0)?;
    let references = if reference_tokens.is_empty() {
        None
    } else {
        Some(Tensor::cat(&reference_tokens, 1)?.to_dtype(dtype)?)
    };
    let text = prompt.embeds.to_dtype(dtype)?;
    let negative = prompt
        .negative
        .as_ref()
        .map(|n| n.to_dtype(dtype))
        .transpose()?;
    let text_len = text.dim(1)?;
    let text_ids = Tensor::from_vec(
        (0..text_len)
            .flat_map(|l| [0.0, 0.0, 0.0, l as f32])
            .collect::<Vec<f32>>(),
        (text_len, 4),
        &device,
    )?;
    let rope = transformer.rope_for(&text_ids, &image_ids, &device, dtype)?;
    timings.push("prepare latents", started.elapsed());

    // 4. Denoise: Euler along the flow; the references are the same clean tokens each step.
    let total = schedule.steps() - first_step;
    let loop_started = Instant::now();
    for (done, step) in (first_step..schedule.steps()).enumerate() {
        if observer.before_step(done, total) == StepControl::Cancel {
            return Err(PipelineError::Cancelled);
        }
        let step_started = Instant::now();
        let (sigma, sigma_next) = (sigmas[step], sigmas[step + 1]);
        let input = match &references {
            Some(references) => Tensor::cat(&[&latents.to_dtype(dtype)?, references], 1)?,
            None => latents.to_dtype(dtype)?,
        };
        let timestep = schedule.model_timestep(step);
        let velocity_of = |embeds: &Tensor| -> Result<Tensor, PipelineError> {
            Ok(transformer
                .forward_with(&input, embeds, &rope, timestep)?
                .narrow(1, 0, target_tokens)?
                .to_dtype(DType::F32)?)
        };
        let mut velocity = velocity_of(&text)?;
        if let Some(negative) = &negative {
            let unguided = velocity_of(negative)?;
            velocity = (&unguided + ((velocity - &unguided)? * request.guidance)?)?;
        }
        latents = (&latents + (velocity * f64::from(sigma_next - sigma))?)?;
        if let Some(blend) = &blend {
            latents = blend.apply(&latents, sigma_next, step + 1 == schedule.steps())?;
        }
        timings.push(format!("step {}", done + 1), step_started.elapsed());
        observer.after_step(
            done + 1,
            total,
            &unpack(&latents, rows, cols)?,
            loop_started.elapsed(),
        );
    }

    Ok(Denoised {
        latents: unpack(&latents, rows, cols)?,
        painted_mask,
        source_image,
        size_px: (width, height),
        timings,
        prompt_cut_off: prompt.cut_off.clone(),
    })
}

/// Step 5: de-normalises, unpatchifies and decodes (autoencoder loaded), then pastes the kept
/// pixels back.
pub fn decode(
    model: &Flux2Model,
    request: &GenerateRequest,
    denoised: Denoised,
) -> Result<Generated, PipelineError> {
    let autoencoder = model
        .autoencoder()
        .ok_or(PipelineError::NotLoaded(Component::Vae))?;
    let started = Instant::now();
    let latents = unpatchify(&autoencoder.norm.denormalize(&denoised.latents)?)?;
    let pixels = autoencoder.vae.decode(&latents)?;
    denoised.finish(&pixels, request, started)
}

/// Normalised patchified latents of an image, the posterior mean, packed `[1, n, 128]`.
fn encode_image(
    autoencoder: &Flux2Autoencoder,
    image: &RgbImage,
    device: &Device,
) -> Result<Tensor, PipelineError> {
    let pixels = image_to_tensor(image, device)?;
    let posterior = autoencoder.vae.encode(&pixels)?;
    Ok(pack(
        &autoencoder.norm.normalize(&patchify(&posterior.mean)?)?,
    )?)
}

/// A reference as the pipeline encodes it: above 1 MP scaled down to it (Lanczos), then
/// centre-cropped to multiples of 16.
fn prepare_reference(image: &RgbImage) -> RgbImage {
    let (w, h) = reference_size(image);
    let scaled = if (w, h) == image.dimensions() {
        image.clone()
    } else {
        image::imageops::resize(image, w, h, image::imageops::FilterType::Lanczos3)
    };
    let (cw, ch) = (
        w / FLUX2_PATCH_PX * FLUX2_PATCH_PX,
        h / FLUX2_PATCH_PX * FLUX2_PATCH_PX,
    );
    image::imageops::crop_imm(&scaled, (w - cw) / 2, (h - ch) / 2, cw, ch).to_image()
}

/// A reference's size after the 1 MP limit: `int(W*s) x int(H*s)`, `s = sqrt(1 MP / (W*H))`.
fn reference_size(image: &RgbImage) -> (u32, u32) {
    let (w, h) = image.dimensions();
    let pixels = u64::from(w) * u64::from(h);
    if pixels <= MAX_REFERENCE_PIXELS {
        return (w, h);
    }
    let s = (MAX_REFERENCE_PIXELS as f64 / pixels as f64).sqrt();
    ((f64::from(w) * s) as u32, (f64::from(h) * s) as u32)
}

/// Position ids `(t, i, j, 0)` of a `rows` x `cols` token grid, row-major.
fn token_ids(rows: usize, cols: usize, t: f32, device: &Device) -> candle_core::Result<Tensor> {
    let values: Vec<f32> = (0..rows)
        .flat_map(|i| (0..cols).flat_map(move |j| [t, i as f32, j as f32, 0.0]))
        .collect();
    Tensor::from_vec(values, (rows * cols, 4), device)
}
