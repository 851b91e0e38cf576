//! Hand-masked inpainting in a flow-matching loop (FLUX.1, FLUX.2): after each step, outside
//! the mask the latents are the original's, taken to the next step's noise level with the
//! same noise (clean after the last step); inside, what the model made.

use candle_core::{Result, Tensor};

/// diffusers' `scale_noise`: `sigma * noise + (1 - sigma) * sample`.
pub fn scale_noise(sample: &Tensor, noise: &Tensor, sigma: f32) -> Result<Tensor> {
    (noise * f64::from(sigma))? + (sample * f64::from(1.0 - sigma))?
}

/// The original latents, the noise they started from, and the mask, all in the model's
/// token layout.
#[derive(Debug)]
pub struct KeepOutsideMask {
    repaint: Tensor,
    keep: Tensor,
    original: Tensor,
    noise: Tensor,
}

impl KeepOutsideMask {
    /// `repaint` is 1 where the model repaints and 0 where the original stays, per latent
    /// value (the layout of `original` and `noise`).
    pub fn new(repaint: Tensor, original: Tensor, noise: Tensor) -> Result<Self> {
        let keep = (1.0 - &repaint)?;
        Ok(Self {
            repaint,
            keep,
            original,
            noise,
        })
    }

    /// `latents` after a step to `sigma_next`, with the original outside the mask; `last` is
    /// the final step, after which the original is clean.
    pub fn apply(&self, latents: &Tensor, sigma_next: f32, last: bool) -> Result<Tensor> {
        let original = if last {
            self.original.clone()
        } else {
            scale_noise(&self.original, &self.noise, sigma_next)?
        };
        original.mul(&self.keep)? + latents.mul(&self.repaint)?
    }
}
