//! The Stable Diffusion pipeline (SD 1.x, 2.x, SDXL; txt2img, img2img, inpaint), read top to
//! bottom as diffusers' `__call__`: check inputs, encode the prompt, prepare latents, denoise,
//! decode.

use std::time::Instant;

use candle_core::{Device, Tensor};

use super::image::{
    binarize, fit_rgb, image_to_tensor, mask_to_latent, mask_to_unit, painted_mask,
};
use super::noise::{NoiseRole, NoiseSource};
use super::plan::Plan;
use super::request::{GenerateRequest, Mode, RequestError};
use super::result::{Denoised, Generated};
use super::{PipelineError, StageTimings, StepControl, StepObserver};
use crate::models::sd::{Component, Family, SdModel};
use crate::models::unet::TextTimeConditioning;
use crate::schedulers::start_step;

/// The prompt as the UNet sees it.
#[derive(Debug)]
struct Conditioning {
    /// `[batch, tokens, width]`: `[uncond, cond]` with guidance, `[cond]` without.
    text: Tensor,
    text_time: Option<TextTimeConditioning>,
    cut_off: Option<String>,
}

/// Checks the request against the model, before any weights load.
pub fn check_inputs(
    model: &SdModel,
    request: &GenerateRequest,
) -> Result<(u32, u32), RequestError> {
    let size = request.resolved_size(model.native_size_px())?;
    let unet_channels = model.unet_shape.in_channels;
    let latent_channels = model.vae_config.latent_channels;
    match (request.mode(), unet_channels) {
        (_, c) if c == latent_channels => {}
        (Mode::Inpaint, c) if c == 2 * latent_channels + 1 => {}
        (mode, c) if c == 2 * latent_channels + 1 => {
            return Err(RequestError::ModelCannot(format!(
                "this is an inpainting model ({c}-channel UNet): it needs an init image and a mask, not {}",
                mode.name()
            )))
        }
        (_, c) => {
            return Err(RequestError::ModelCannot(format!(
                "a {c}-channel UNet with {latent_channels}-channel latents is not a Stable Diffusion layout Easel knows"
            )))
        }
    }
    Ok(size)
}

/// The encoded prompt, ready for `denoise`; the text encoders can be dropped once it is made.
#[derive(Debug)]
pub struct EncodedPrompt(Conditioning);

/// Step 2: encodes the prompt (text encoders loaded) for the request `plan` checked (step 1).
pub fn encode(
    model: &SdModel,
    request: &GenerateRequest,
    plan: &Plan,
    timings: &mut StageTimings,
) -> Result<EncodedPrompt, PipelineError> {
    let started = Instant::now();
    let cond = encode_prompt(model, request, plan.guided, plan.size_px, model.device())?;
    timings.push("encode prompt", started.elapsed());
    Ok(EncodedPrompt(cond))
}

/// Steps 3 and 4: prepares the latents and denoises them (UNet and VAE loaded).
pub fn denoise(
    model: &SdModel,
    request: &GenerateRequest,
    plan: &Plan,
    prompt: &EncodedPrompt,
    noise: &mut dyn NoiseSource,
    observer: &mut dyn StepObserver,
    mut timings: StageTimings,
) -> Result<Denoised, PipelineError> {
    let (width, height) = plan.size_px;
    let cond = &prompt.0;
    let device = model.device().clone();
    let unet = model
        .unet()
        .ok_or(PipelineError::NotLoaded(Component::Unet))?;
    // Only an init image needs the VAE before decoding (staged runs load it only then).
    let vae = || model.vae().ok_or(PipelineError::NotLoaded(Component::Vae));
    let guided = plan.guided;
    let mode = plan.mode;

    // 3. Prepare the schedule and the latents.
    let started = Instant::now();
    let mut scheduler = request
        .sampler
        .build(&model.scheduler_config, request.steps)?;
    let timesteps = scheduler.timesteps().to_vec();
    let strength = request.init().map_or(1.0, |s| s.strength);
    let first_step = match mode {
        Mode::TextToImage => 0,
        _ => start_step(timesteps.len(), strength),
    };
    let latent_scale = model.latent_scale();
    let latent_shape = [
        1,
        model.vae_config.latent_channels,
        height as usize / latent_scale,
        width as usize / latent_scale,
    ];
    let nine_channel = model.unet_shape.in_channels != model.vae_config.latent_channels;
    let source = request.init();
    let source_image = source.map(|s| fit_rgb(&s.image, width, height));
    let source_tensor = source_image
        .as_ref()
        .map(|img| image_to_tensor(img, &device))
        .transpose()?;
    let full_strength = strength >= 1.0;
    let needs_image_latents = match mode {
        Mode::TextToImage => false,
        Mode::ImageToImage => true,
        Mode::Inpaint => !nine_channel || !full_strength,
    };
    let image_latents = match (&source_tensor, needs_image_latents) {
        (Some(pixels), true) => {
            let vae = vae()?;
            let dist = vae.encode(pixels)?;
            let sample_noise = noise.draw(NoiseRole::VaeSample, dist.mean.dims(), &device)?;
            Some(vae.to_model_latents(&dist.sample(&sample_noise)?)?)
        }
        _ => None,
    };
    let initial_noise = noise.draw(NoiseRole::PrepareLatents, &latent_shape, &device)?;
    let mut latents = match (&image_latents, mode) {
        (Some(image_latents), Mode::ImageToImage) => {
            scheduler.add_noise(image_latents, &initial_noise, first_step)?
        }
        (Some(image_latents), Mode::Inpaint) if !full_strength => {
            scheduler.add_noise(image_latents, &initial_noise, first_step)?
        }
        _ => (&initial_noise * scheduler.init_noise_sigma())?,
    };
    let painted_mask = painted_mask(source, mode, width, height);
    let inpaint = match (&painted_mask, &source_tensor) {
        (Some(mask), Some(pixels)) => {
            let mask_px = binarize(&mask_to_unit(mask, &device)?)?;
            let mask_latent = mask_to_latent(&mask_px, latent_scale)?;
            let masked_latents = if nine_channel {
                let keep = (1.0 - &mask_px)?;
                let masked_pixels = pixels.broadcast_mul(&keep)?;
                let vae = vae()?;
                let dist = vae.encode(&masked_pixels)?;
                let sample_noise = noise.draw(NoiseRole::VaeSample, dist.mean.dims(), &device)?;
                Some(vae.to_model_latents(&dist.sample(&sample_noise)?)?)
            } else {
                None
            };
            Some((mask_latent, masked_latents))
        }
        _ => None,
    };
    // What the loop needs from the mask, made once: the 9-channel UNet's extra input
    // (mask and masked-image latents for each batch row), or the blend weights of 4-channel
    // inpainting.
    let batch_rows = if guided { 2 } else { 1 };
    let unet_extra_channels = match &inpaint {
        Some((mask_latent, Some(masked_latents))) => {
            Some(Tensor::cat(&[mask_latent, masked_latents], 1)?.repeat((batch_rows, 1, 1, 1))?)
        }
        _ => None,
    };
    let blend_masks = match &inpaint {
        Some((mask_latent, None)) => Some((mask_latent.clone(), (1.0 - mask_latent)?)),
        _ => None,
    };
    timings.push("prepare latents", started.elapsed());

    // 4. Denoise.
    let total = timesteps.len() - first_step;
    let loop_started = Instant::now();
    for (done, step) in (first_step..timesteps.len()).enumerate() {
        if observer.before_step(done, total) == StepControl::Cancel {
            return Err(PipelineError::Cancelled);
        }
        let step_started = Instant::now();
        let t = timesteps[step];
        let batch = if guided {
            Tensor::cat(&[&latents, &latents], 0)?
        } else {
            latents.clone()
        };
        let mut model_input = scheduler.scale_model_input(&batch, step)?;
        if let Some(extra) = &unet_extra_channels {
            model_input = Tensor::cat(&[&model_input, extra], 1)?;
        }
        let prediction = unet.forward(&model_input, t, &cond.text, cond.text_time.as_ref())?;
        let prediction = if guided {
            let uncond = prediction.get(0)?.unsqueeze(0)?;
            let text = prediction.get(1)?.unsqueeze(0)?;
            (&uncond + ((text - &uncond)? * request.guidance)?)?
        } else {
            prediction
        };
        let step_noise = if scheduler.takes_step_noise() {
            Some(noise.draw(NoiseRole::Step, &latent_shape, &device)?)
        } else {
            None
        };
        latents = scheduler.step(&prediction, step, &latents, step_noise.as_ref())?;
        if let (Some((repaint, keep)), Some(image_latents)) = (&blend_masks, &image_latents) {
            // A 4-channel model inpaints by keeping the original, re-noised to the next
            // step's level, outside the mask.
            let original = if step + 1 < timesteps.len() {
                scheduler.add_noise(image_latents, &initial_noise, step + 1)?
            } else {
                image_latents.clone()
            };
            latents = (original.broadcast_mul(keep)? + latents.broadcast_mul(repaint)?)?;
        }
        timings.push(format!("step {}", done + 1), step_started.elapsed());
        observer.after_step(done + 1, total, &latents, loop_started.elapsed());
    }

    Ok(Denoised {
        latents,
        painted_mask,
        source_image,
        size_px: (width, height),
        timings,
        prompt_cut_off: cond.cut_off.clone(),
    })
}

/// Step 5: decodes the latents and pastes the kept pixels back (VAE loaded).
pub fn decode(
    model: &SdModel,
    request: &GenerateRequest,
    denoised: Denoised,
) -> Result<Generated, PipelineError> {
    let vae = model
        .vae()
        .ok_or(PipelineError::NotLoaded(Component::Vae))?;
    let started = Instant::now();
    let pixels = vae.decode(&denoised.latents)?;
    denoised.finish(&pixels, request, started)
}

/// Encodes prompt and negative prompt as the model's family does.
fn encode_prompt(
    model: &SdModel,
    request: &GenerateRequest,
    guided: bool,
    (width, height): (u32, u32),
    device: &Device,
) -> Result<Conditioning, PipelineError> {
    let encoders = model.text_encoders();
    let mut cut_off = None;
    // One forward per encoder over [negative?, prompt]; SDXL joins the two encoders' widths.
    let mut texts = vec![request.prompt.as_str()];
    let zero_negative = model.family == Family::StableDiffusionXl
        && request.negative_prompt.is_none()
        && model.index.force_zeros_for_empty_prompt.unwrap_or(false);
    let negative = request.negative_prompt.as_deref().unwrap_or("");
    if guided && !zero_negative {
        texts.insert(0, negative);
    }
    let mut hidden = Vec::new();
    let mut pooled = None;
    for (index, encoder) in encoders.iter().enumerate() {
        let component = if index == 0 {
            Component::TextEncoder
        } else {
            Component::TextEncoder2
        };
        let encoder = encoder.ok_or(PipelineError::NotLoaded(component))?;
        let mut ids = Vec::with_capacity(texts.len());
        for (position, text) in texts.iter().enumerate() {
            let tokens = encoder
                .tokenizer
                .tokenize(text)
                .map_err(PipelineError::Prompt)?;
            let is_prompt = position + 1 == texts.len();
            if is_prompt && cut_off.is_none() {
                cut_off = tokens.cut_off.clone();
            }
            ids.push(tokens.ids);
        }
        let out = encoder.model.forward(&ids, device)?;
        match model.family {
            Family::StableDiffusion => hidden.push(out.last_hidden_state),
            Family::StableDiffusionXl => {
                hidden.push(out.penultimate_hidden_state);
                pooled = Some(out.pooled);
            }
        }
    }
    let mut text = Tensor::cat(&hidden, 2)?.to_dtype(candle_core::DType::F32)?;
    let mut pooled = pooled
        .map(|p| p.to_dtype(candle_core::DType::F32))
        .transpose()?;
    if guided && zero_negative {
        text = Tensor::cat(&[&text.zeros_like()?, &text], 0)?;
        pooled = pooled
            .map(|p| Tensor::cat(&[&p.zeros_like()?, &p], 0))
            .transpose()?;
    }
    let text_time = match (model.unet_shape.text_time, pooled) {
        (Some(_), Some(pooled_text)) => {
            let (h, w) = (height as f32, width as f32);
            let batch = pooled_text.dim(0)?;
            let ids: Vec<f32> = (0..batch).flat_map(|_| [h, w, 0.0, 0.0, h, w]).collect();
            Some(TextTimeConditioning {
                pooled_text,
                time_ids: Tensor::from_vec(ids, (batch, 6), device)?,
            })
        }
        (Some(_), None) => return Err(PipelineError::Request(RequestError::ModelCannot(
            "this UNet needs pooled text embeddings, which only SDXL's second text encoder gives"
                .into(),
        ))),
        (None, _) => None,
    };
    Ok(Conditioning {
        text,
        text_time,
        cut_off,
    })
}
