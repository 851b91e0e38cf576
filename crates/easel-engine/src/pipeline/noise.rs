//! Where a pipeline's Gaussian noise comes from: a seeded generator by default, or recorded
//! draws (the parity goldens) fed back in their roles.

use std::collections::{HashMap, VecDeque};

use candle_core::{Device, Result, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// Why the pipeline draws noise; the names are those of diffusers' call sites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NoiseRole {
    /// `prepare_latents`: the initial latents, or the noise added to the image latents.
    PrepareLatents,
    /// `sample`: a VAE posterior sample (init image, then masked image).
    VaeSample,
    /// `step`: fresh noise of an ancestral sampler.
    Step,
}

impl NoiseRole {
    /// Parses the `drawn_in` name of a parity case.
    pub fn from_diffusers_name(name: &str) -> Option<Self> {
        match name {
            "prepare_latents" => Some(NoiseRole::PrepareLatents),
            "sample" => Some(NoiseRole::VaeSample),
            "step" => Some(NoiseRole::Step),
            _ => None,
        }
    }
}

/// A source of standard-normal tensors.
pub trait NoiseSource: Send {
    /// Draws a standard-normal f32 tensor of `shape` for `role`.
    fn draw(&mut self, role: NoiseRole, shape: &[usize], device: &Device) -> Result<Tensor>;
}

/// Noise from a ChaCha8 generator seeded by the request: the same seed gives the same bytes
/// on every platform.
#[derive(Debug, Clone)]
pub struct SeededNoise {
    rng: ChaCha8Rng,
}

impl SeededNoise {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }
}

impl NoiseSource for SeededNoise {
    fn draw(&mut self, _role: NoiseRole, shape: &[usize], device: &Device) -> Result<Tensor> {
        let count: usize = shape.iter().product();
        let values: Vec<f32> = (0..count)
            .map(|_| StandardNormal.sample(&mut self.rng))
            .collect();
        Tensor::from_vec(values, shape, device)
    }
}

/// Recorded draws, handed out in recorded order within each role.
#[derive(Debug, Default)]
pub struct RecordedNoise {
    queues: HashMap<NoiseRole, VecDeque<Tensor>>,
}

impl RecordedNoise {
    /// Adds the next recorded draw for `role`.
    pub fn push(&mut self, role: NoiseRole, noise: Tensor) {
        self.queues.entry(role).or_default().push_back(noise);
    }
}

impl NoiseSource for RecordedNoise {
    fn draw(&mut self, role: NoiseRole, shape: &[usize], device: &Device) -> Result<Tensor> {
        let Some(noise) = self.queues.get_mut(&role).and_then(VecDeque::pop_front) else {
            candle_core::bail!("the recording has no more noise drawn in {role:?}")
        };
        if noise.elem_count() != shape.iter().product::<usize>() {
            candle_core::bail!(
                "recorded {role:?} noise has shape {:?}, the pipeline needs {shape:?}",
                noise.dims()
            )
        }
        noise.reshape(shape)?.to_device(device)
    }
}
