//! A request checked once, against the model it runs on, into what every phase and the staged
//! runner take: the output size, the mode, whether classifier-free guidance runs, and the
//! components and adapters the job needs. Made by `families::plan`.

use crate::models::component::Component;

use super::request::{Adapter, Mode};

/// What a checked request will run.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Output width and height in pixels (multiples of the model's size multiple).
    pub size_px: (u32, u32),
    /// txt2img, img2img or inpaint.
    pub mode: Mode,
    /// Whether classifier-free guidance runs (a batch of two per step).
    pub guided: bool,
    /// Every component the job loads, in pipeline order.
    pub components: Vec<Component>,
    /// The denoiser among them.
    pub denoiser: Component,
    /// The adapters applied to the model for this job (part of its cache key).
    pub adapters: Vec<Adapter>,
    /// Edit references handed to the model.
    pub edit_references: usize,
}

impl Plan {
    /// The text encoders, the first stage of a staged run.
    pub fn text_encoders(&self) -> Vec<Component> {
        self.components
            .iter()
            .copied()
            .filter(|c| c.is_text_encoder())
            .collect()
    }

    /// The second stage of a staged run: the denoiser, with the VAE beside it only when an
    /// init image or edit references must be encoded first.
    pub fn denoising_stage(&self) -> Vec<Component> {
        if self.mode == Mode::TextToImage && self.edit_references == 0 {
            vec![self.denoiser]
        } else {
            vec![self.denoiser, Component::Vae]
        }
    }
}
