//! Samplers with diffusers-compatible timesteps and sigmas, behind one trait.
//!
//! A scheduler is built for a number of inference steps and exposes the whole schedule; a
//! pipeline that starts part-way (img2img, inpainting below strength 1) simply begins at a
//! later step index, as diffusers' `set_begin_index` does.

mod ddim;
mod dpmpp_2m;
mod euler;
pub mod flow_match;
pub mod schedule;

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::models::config::SchedulerConfig;
pub use schedule::NoiseSchedule;

/// What the diffusion model's output means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    /// The added noise.
    Epsilon,
    /// The velocity `alpha * noise - sigma * sample` (SD 2.x 768).
    Velocity,
    /// The clean sample.
    Sample,
}

/// A scheduler config Easel cannot follow.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SchedulerError {
    /// A config value with no implementation here.
    #[error("scheduler option {0} is not supported")]
    Unsupported(String),
}

/// The samplers Easel offers, by the names the command line and requests use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    /// Euler (k-diffusion's `sample_euler`, diffusers' `EulerDiscreteScheduler`).
    Euler,
    /// Euler ancestral: Euler with fresh noise at every step.
    EulerA,
    /// DDIM with eta 0.
    Ddim,
    /// DPM-Solver++ 2M.
    Dpmpp2m,
    /// DPM-Solver++ 2M with Karras sigmas.
    Dpmpp2mKarras,
}

impl SamplerKind {
    /// Every sampler, in the order a picker lists them.
    pub const ALL: [SamplerKind; 5] = [
        SamplerKind::Euler,
        SamplerKind::EulerA,
        SamplerKind::Ddim,
        SamplerKind::Dpmpp2m,
        SamplerKind::Dpmpp2mKarras,
    ];

    /// The name used on the command line and in parity cases.
    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Euler => "euler",
            SamplerKind::EulerA => "euler_a",
            SamplerKind::Ddim => "ddim",
            SamplerKind::Dpmpp2m => "dpmpp_2m",
            SamplerKind::Dpmpp2mKarras => "dpmpp_2m_karras",
        }
    }

    /// Parses a name as `name` writes it.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Builds the sampler for `steps` inference steps from a model's scheduler config.
    pub fn build(
        self,
        cfg: &SchedulerConfig,
        steps: usize,
    ) -> std::result::Result<Box<dyn Scheduler>, SchedulerError> {
        let schedule = NoiseSchedule::from_config(cfg)?;
        Ok(match self {
            SamplerKind::Euler => Box::new(euler::Euler::new(schedule, cfg, steps, false)?),
            SamplerKind::EulerA => Box::new(euler::Euler::new(schedule, cfg, steps, true)?),
            SamplerKind::Ddim => Box::new(ddim::Ddim::new(schedule, cfg, steps)?),
            SamplerKind::Dpmpp2m => Box::new(dpmpp_2m::DpmPp2m::new(schedule, cfg, steps, false)?),
            SamplerKind::Dpmpp2mKarras => {
                Box::new(dpmpp_2m::DpmPp2m::new(schedule, cfg, steps, true)?)
            }
        })
    }
}

impl std::fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One sampler instance for one run. Step indices are positions in `timesteps()`.
pub trait Scheduler: Send {
    /// The timesteps of the whole schedule, noisiest first, as passed to the model.
    fn timesteps(&self) -> &[f64];

    /// The factor pure noise is multiplied by to start a full-strength run.
    fn init_noise_sigma(&self) -> f64;

    /// Scales the latents before they go into the model at `step`.
    fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor>;

    /// Whether `step` takes fresh noise (ancestral samplers).
    fn takes_step_noise(&self) -> bool {
        false
    }

    /// Advances `sample` from `step` to `step + 1` given the model's output there.
    /// `step_noise` is required when `takes_step_noise` is true.
    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        step_noise: Option<&Tensor>,
    ) -> Result<Tensor>;

    /// Noises clean latents to the level of `step` (the start of img2img, the re-noised
    /// original of inpainting). `step == timesteps().len()` means fully denoised.
    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor>;
}

/// The step index at which an img2img run of `strength` starts, as diffusers' `get_timesteps`.
pub fn start_step(steps: usize, strength: f64) -> usize {
    let init_timestep = ((steps as f64 * strength) as usize).min(steps);
    steps - init_timestep
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scheduler config of the parity models (diffusers' SD defaults, leading spacing).
    fn sd_config() -> SchedulerConfig {
        SchedulerConfig {
            beta_start: Some(0.00085),
            beta_end: Some(0.012),
            beta_schedule: Some("scaled_linear".into()),
            timestep_spacing: Some("leading".into()),
            steps_offset: Some(1),
            ..Default::default()
        }
    }

    fn timesteps(kind: SamplerKind, steps: usize) -> Vec<f64> {
        kind.build(&sd_config(), steps)
            .expect("a supported config")
            .timesteps()
            .to_vec()
    }

    #[test]
    fn timesteps_match_what_diffusers_ran() {
        // From the parity cases' `timesteps` fields.
        assert_eq!(timesteps(SamplerKind::Euler, 4), [751.0, 501.0, 251.0, 1.0]);
        assert_eq!(
            timesteps(SamplerKind::Ddim, 5),
            [801.0, 601.0, 401.0, 201.0, 1.0]
        );
        assert_eq!(
            timesteps(SamplerKind::Dpmpp2mKarras, 6),
            [999.0, 837.0, 594.0, 249.0, 30.0, 0.0]
        );
        assert_eq!(
            timesteps(SamplerKind::Dpmpp2m, 4),
            [801.0, 601.0, 401.0, 201.0]
        );
    }

    #[test]
    fn strength_selects_the_first_step_as_diffusers() {
        assert_eq!(start_step(10, 0.6), 4);
        assert_eq!(start_step(8, 0.75), 2);
        assert_eq!(start_step(4, 1.0), 0);
        assert_eq!(start_step(4, 0.0), 4);
    }

    #[test]
    fn euler_starts_from_the_right_noise_level() {
        let euler = SamplerKind::Euler.build(&sd_config(), 4).expect("euler");
        // Leading spacing: sqrt(sigma_max^2 + 1) of sigma(751).
        let sigma = euler.init_noise_sigma();
        assert!((sigma - 4.0).abs() < 0.5, "init noise sigma {sigma}");
    }

    #[test]
    fn names_round_trip() {
        for kind in SamplerKind::ALL {
            assert_eq!(SamplerKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(SamplerKind::from_name("heun"), None);
    }

    #[test]
    fn unsupported_options_are_errors_not_guesses() {
        let config = SchedulerConfig {
            timestep_spacing: Some("sideways".into()),
            ..sd_config()
        };
        assert!(SamplerKind::Euler.build(&config, 4).is_err());
    }
}
