//! What the denoising phase hands to decoding, and what a finished generation gives: the same
//! for every model family, so that decoding differs only in the autoencoder it runs.

use std::time::Instant;

use candle_core::{DType, Tensor};
use image::{GrayImage, RgbImage};

use super::colour_match::match_colours;
use super::image::{decoded_to_unit_hwc, paste_back, unit_hwc_to_image};
use super::request::GenerateRequest;
use super::{PipelineError, StageTimings};

/// Denoised latents and what decoding needs; the denoiser can be dropped once they are made.
#[derive(Debug)]
pub struct Denoised {
    /// Latents `[1, channels, h/8, w/8]` in the model's latent space (unpacked for FLUX).
    pub(crate) latents: Tensor,
    /// Inpainting: the mask as painted (feathered), for paste-back.
    pub(crate) painted_mask: Option<GrayImage>,
    /// The init image at the output size, for paste-back.
    pub(crate) source_image: Option<RgbImage>,
    /// The width and height being generated.
    pub(crate) size_px: (u32, u32),
    /// The job's stages so far (a staged run adds its VAE load).
    pub timings: StageTimings,
    /// Prompt text cut off at the text encoder's token limit.
    pub(crate) prompt_cut_off: Option<String>,
}

impl Denoised {
    /// The result from the autoencoder's `pixels` (`[1, 3, h, w]`, about -1..1), decoding
    /// having begun at `started`: for an inpaint whose `request` asks for them, the repaint's
    /// colours matched to its surroundings, then the original pasted back outside the mask.
    pub fn finish(
        self,
        pixels: &Tensor,
        request: &GenerateRequest,
        started: Instant,
    ) -> Result<Generated, PipelineError> {
        let Denoised {
            painted_mask,
            source_image,
            size_px,
            mut timings,
            prompt_cut_off,
            ..
        } = self;
        let decoded = decoded_to_unit_hwc(&pixels.to_dtype(DType::F32)?)?;
        let raw = unit_hwc_to_image(&decoded)?;
        let image = match (&painted_mask, &source_image, request.paste_back) {
            (Some(mask), Some(original), true) => {
                let repainted = if request.inpaint.match_colours {
                    match_colours(&raw, original, mask)
                } else {
                    raw
                };
                paste_back(original, &repainted, mask)
            }
            _ => raw,
        };
        timings.push("decode", started.elapsed());
        Ok(Generated {
            image,
            decoded,
            size_px,
            timings,
            prompt_cut_off,
        })
    }
}

/// What a finished generation gives.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The result, with paste-back applied when asked.
    pub image: RgbImage,
    /// The raw decode, `[h, w, 3]` f32 in 0..1, before any paste-back.
    pub decoded: Tensor,
    /// The width and height that were generated.
    pub size_px: (u32, u32),
    /// Where time went.
    pub timings: StageTimings,
    /// Prompt text cut off at the text encoder's token limit.
    pub prompt_cut_off: Option<String>,
}
