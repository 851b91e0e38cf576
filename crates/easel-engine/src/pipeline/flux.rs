//! The FLUX.1 pipeline (schnell and dev; txt2img, img2img, inpaint), read top to bottom as
//! diffusers' `FluxPipeline`, `FluxImg2ImgPipeline` and `FluxInpaintPipeline`: check inputs,
//! encode the prompt (CLIP pooled, T5 sequence), prepare packed latents, denoise over the
//! flow-matching schedule, decode. Three phases, so that staged mode can run them apart.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};

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
use crate::models::flux::{FluxModel, FLUX_LATENT_SCALE, FLUX_PATCH_PX};
use crate::schedulers::flow_match::FlowMatchSchedule;

/// The longest T5 sequence FLUX takes (diffusers refuses more).
pub const MAX_SEQUENCE_LENGTH: usize = 512;

/// Checks the request against the model before any weights load; returns the size.
pub fn check_inputs(
    model: &FluxModel,
    request: &GenerateRequest,
) -> Result<(u32, u32), RequestError> {
    let size = request.resolved_size_multiple_of(model.native_size_px(), FLUX_PATCH_PX)?;
    let length = sequence_length(model, request);
    if length == 0 || length > MAX_SEQUENCE_LENGTH {
        return Err(RequestError::ModelCannot(format!(
            "max_sequence_length {length} is not possible for FLUX: use 1 to {MAX_SEQUENCE_LENGTH}"
        )));
    }
    Ok(size)
}

fn sequence_length(model: &FluxModel, request: &GenerateRequest) -> usize {
    request
        .max_sequence_length
        .unwrap_or_else(|| model.variant.max_sequence_length())
}

/// The prompt as the transformer sees it; the text encoders can be dropped once it is made.
#[derive(Debug)]
pub struct EncodedPrompt {
    /// T5's last hidden state, `[1, max_sequence_length, width]`.
    t5: Tensor,
    /// CLIP's pooled output, `[1, width]`.
    pooled: Tensor,
    cut_off: Option<String>,
}

/// Step 2: encodes the prompt (CLIP and T5 loaded) of a request its plan checked (step 1).
pub fn encode(
    model: &FluxModel,
    request: &GenerateRequest,
    timings: &mut StageTimings,
) -> Result<EncodedPrompt, PipelineError> {
    let device = model.device();

    // 2. Encode the prompt: CLIP's pooled output and T5's sequence. FLUX has no negative
    // prompt (its guidance is distilled into the transformer).
    let started = Instant::now();
    let clip = model
        .clip()
        .ok_or(PipelineError::NotLoaded(Component::TextEncoder))?;
    let clip_tokens = clip
        .tokenizer
        .tokenize(&request.prompt)
        .map_err(PipelineError::Prompt)?;
    let pooled = clip
        .model
        .forward(&[clip_tokens.ids], device)?
        .pooled
        .to_dtype(DType::F32)?;
    let t5 = model
        .t5()
        .ok_or(PipelineError::NotLoaded(Component::TextEncoder2))?;
    let t5_tokens = t5
        .tokenizer
        .tokenize(&request.prompt, sequence_length(model, request))
        .map_err(PipelineError::Prompt)?;
    let ids = Tensor::new(t5_tokens.ids.as_slice(), device)?.unsqueeze(0)?;
    let hidden = t5.model.forward(&ids)?.to_dtype(DType::F32)?;
    timings.push("encode prompt", started.elapsed());
    Ok(EncodedPrompt {
        t5: hidden,
        pooled,
        // T5 carries the prompt's detail; CLIP's 77 tokens only make the pooled summary.
        cut_off: t5_tokens.cut_off,
    })
}

/// Steps 3 and 4: prepares the latents and denoises them (transformer loaded, and the
/// autoencoder when there is an init image).
pub fn denoise(
    model: &FluxModel,
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
    let mode = plan.mode;

    // 3. Prepare the schedule and the latents.
    let started = Instant::now();
    let latent_h = height as usize / FLUX_LATENT_SCALE;
    let latent_w = width as usize / FLUX_LATENT_SCALE;
    let image_seq_len = (latent_h / 2) * (latent_w / 2);
    let schedule = FlowMatchSchedule::new(&model.scheduler_config, request.steps, image_seq_len)?;
    let sigmas = &schedule.sigmas;
    let source = request.init();
    let first_step = match source {
        None => 0,
        Some(source) => schedule.start_step(source.strength),
    };
    let latent_shape = [1, model.vae_config.latent_channels, latent_h, latent_w];
    let source_image = source.map(|s| fit_rgb(&s.image, width, height));
    let image_latents = match &source_image {
        Some(image) => {
            let autoencoder = model
                .autoencoder()
                .ok_or(PipelineError::NotLoaded(Component::Vae))?;
            let pixels = image_to_tensor(image, &device)?;
            let (mean, std) = autoencoder.encode(&pixels)?;
            let sample_noise = noise.draw(NoiseRole::VaeSample, mean.dims(), &device)?;
            let sample = (mean + std.mul(&sample_noise)?)?;
            Some(pack(&autoencoder.to_model_latents(&sample)?)?)
        }
        None => None,
    };
    let initial_noise = pack(&noise.draw(NoiseRole::PrepareLatents, &latent_shape, &device)?)?;
    let mut latents = match &image_latents {
        // diffusers' `scale_noise`: sigma * noise + (1 - sigma) * image latents.
        Some(image_latents) => scale_noise(image_latents, &initial_noise, sigmas[first_step])?,
        None => initial_noise.clone(),
    };
    let painted_mask = painted_mask(source, mode, width, height);
    // Inpainting keeps the original outside the mask: its weights in packed token space.
    let blend = match (&painted_mask, &image_latents) {
        (Some(mask), Some(original)) => {
            let mask_px = binarize(&mask_to_unit(mask, &device)?)?;
            let mask_latent = mask_to_latent(&mask_px, FLUX_LATENT_SCALE)?.repeat((
                1,
                model.vae_config.latent_channels,
                1,
                1,
            ))?;
            Some(KeepOutsideMask::new(
                pack(&mask_latent)?,
                original.clone(),
                initial_noise.clone(),
            )?)
        }
        _ => None,
    };
    let img_ids = image_ids(latent_h / 2, latent_w / 2, &device)?.to_dtype(dtype)?;
    let txt = prompt.t5.to_dtype(dtype)?;
    let txt_ids = Tensor::zeros((1, txt.dim(1)?, 3), dtype, &device)?;
    let pooled = prompt.pooled.to_dtype(dtype)?;
    let guidance = if model.transformer_json.guidance_embeds {
        Some(Tensor::full(request.guidance as f32, 1, &device)?.to_dtype(dtype)?)
    } else {
        None
    };
    timings.push("prepare latents", started.elapsed());

    // 4. Denoise: Euler steps along the flow from sigma to the next sigma.
    let total = schedule.steps() - first_step;
    let loop_started = Instant::now();
    for (done, step) in (first_step..schedule.steps()).enumerate() {
        if observer.before_step(done, total) == StepControl::Cancel {
            return Err(PipelineError::Cancelled);
        }
        let step_started = Instant::now();
        let (sigma, sigma_next) = (sigmas[step], sigmas[step + 1]);
        let timestep = Tensor::full(schedule.model_timestep(step), 1, &device)?.to_dtype(dtype)?;
        let velocity = transformer
            .forward(
                &latents.to_dtype(dtype)?,
                &img_ids,
                &txt,
                &txt_ids,
                &timestep,
                &pooled,
                guidance.as_ref(),
            )?
            .to_dtype(DType::F32)?;
        latents = (&latents + (velocity * f64::from(sigma_next - sigma))?)?;
        if let Some(blend) = &blend {
            latents = blend.apply(&latents, sigma_next, step + 1 == schedule.steps())?;
        }
        timings.push(format!("step {}", done + 1), step_started.elapsed());
        let unpacked = unpack(&latents, latent_h, latent_w)?;
        observer.after_step(done + 1, total, &unpacked, loop_started.elapsed());
    }

    Ok(Denoised {
        latents: unpack(&latents, latent_h, latent_w)?,
        painted_mask,
        source_image,
        size_px: (width, height),
        timings,
        prompt_cut_off: prompt.cut_off.clone(),
    })
}

/// Step 5: decodes the latents and pastes the kept pixels back (autoencoder loaded).
pub fn decode(
    model: &FluxModel,
    request: &GenerateRequest,
    denoised: Denoised,
) -> Result<Generated, PipelineError> {
    let autoencoder = model
        .autoencoder()
        .ok_or(PipelineError::NotLoaded(Component::Vae))?;
    let started = Instant::now();
    let pixels = autoencoder.decode(&denoised.latents)?;
    denoised.finish(&pixels, request, started)
}

/// `[1, c, h, w]` latents as `[1, h/2 * w/2, c * 4]` tokens, channel order (c, ph, pw) as
/// diffusers' `_pack_latents` and candle's `State::new`.
pub fn pack(latents: &Tensor) -> candle_core::Result<Tensor> {
    let (batch, channels, h, w) = latents.dims4()?;
    latents
        .reshape((batch, channels, h / 2, 2, w / 2, 2))?
        .permute((0, 2, 4, 1, 3, 5))?
        .reshape((batch, (h / 2) * (w / 2), channels * 4))
}

/// The inverse of `pack` for latents of `latent_h` x `latent_w`.
pub fn unpack(tokens: &Tensor, latent_h: usize, latent_w: usize) -> candle_core::Result<Tensor> {
    let (batch, _, packed_channels) = tokens.dims3()?;
    let channels = packed_channels / 4;
    tokens
        .reshape((batch, latent_h / 2, latent_w / 2, channels, 2, 2))?
        .permute((0, 3, 1, 4, 2, 5))?
        .reshape((batch, channels, latent_h, latent_w))
}

/// Position ids of the image tokens: `(0, row, column)` for each, `[1, rows * cols, 3]`.
fn image_ids(rows: usize, cols: usize, device: &Device) -> candle_core::Result<Tensor> {
    let ids: Vec<f32> = (0..rows)
        .flat_map(|r| (0..cols).flat_map(move |c| [0.0, r as f32, c as f32]))
        .collect();
    Tensor::from_vec(ids, (1, rows * cols, 3), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_and_unpack_are_inverse_on_non_square_latents() -> candle_core::Result<()> {
        let device = Device::Cpu;
        let latents =
            Tensor::arange(0f32, (16 * 6 * 10) as f32, &device)?.reshape((1, 16, 6, 10))?;
        let tokens = pack(&latents)?;
        assert_eq!(tokens.dims(), &[1, 15, 64]);
        // Token 1 is rows 0..2, columns 2..4; its first four values are channel 0's 2x2 patch.
        let first: Vec<f32> = tokens.get(0)?.get(1)?.narrow(0, 0, 4)?.to_vec1()?;
        assert_eq!(first, vec![2.0, 3.0, 12.0, 13.0]);
        let back = unpack(&tokens, 6, 10)?;
        let diff = (back - &latents)?.abs()?.sum_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        Ok(())
    }
}
