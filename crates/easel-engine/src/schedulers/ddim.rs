//! DDIM with eta 0, as diffusers' `DDIMScheduler`.

use candle_core::{Result, Tensor};

use super::schedule::{leading_timesteps, linspace, trailing_timesteps, NoiseSchedule, Spacing};
use super::{Prediction, Scheduler, SchedulerError};
use crate::models::config::SchedulerConfig;

/// Deterministic DDIM.
#[derive(Debug)]
pub struct Ddim {
    timesteps: Vec<f64>,
    schedule: NoiseSchedule,
    /// Training timesteps between two inference steps.
    step_ratio: usize,
    final_alpha_cumprod: f64,
    clip_range: Option<f64>,
}

impl Ddim {
    /// The schedule for `steps` inference steps.
    pub fn new(
        schedule: NoiseSchedule,
        cfg: &SchedulerConfig,
        steps: usize,
    ) -> std::result::Result<Self, SchedulerError> {
        let n = steps;
        let train_steps = schedule.train_steps();
        let step_ratio = train_steps / n;
        let spacing = Spacing::parse(cfg.timestep_spacing.as_deref(), Spacing::Leading)?;
        let timesteps: Vec<f64> = match spacing {
            Spacing::Linspace => linspace(0.0, (train_steps - 1) as f64, n)
                .into_iter()
                .rev()
                .map(f64::round)
                .collect(),
            Spacing::Leading => leading_timesteps(train_steps, n, schedule.steps_offset),
            Spacing::Trailing => trailing_timesteps(train_steps, n),
        };
        let final_alpha_cumprod = if cfg.set_alpha_to_one.unwrap_or(true) {
            1.0
        } else {
            schedule.alphas_cumprod[0]
        };
        let clip_range = cfg
            .clip_sample
            .unwrap_or(true)
            .then(|| cfg.clip_sample_range.unwrap_or(1.0));
        Ok(Self {
            timesteps,
            schedule,
            step_ratio,
            final_alpha_cumprod,
            clip_range,
        })
    }
}

impl Scheduler for Ddim {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn scale_model_input(&self, sample: &Tensor, _step: usize) -> Result<Tensor> {
        Ok(sample.clone())
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        _step_noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        let t = self.timesteps[step];
        let prev_t = t - self.step_ratio as f64;
        let alpha = self.schedule.alpha_cumprod_at(t);
        let alpha_prev = if prev_t >= 0.0 {
            self.schedule.alpha_cumprod_at(prev_t)
        } else {
            self.final_alpha_cumprod
        };
        let beta = 1.0 - alpha;
        let (original, epsilon) = match self.schedule.prediction {
            Prediction::Epsilon => {
                let original = ((sample - (model_output * beta.sqrt())?)? / alpha.sqrt())?;
                (original, model_output.clone())
            }
            Prediction::Velocity => {
                let original = ((sample * alpha.sqrt())? - (model_output * beta.sqrt())?)?;
                let epsilon = ((model_output * alpha.sqrt())? + (sample * beta.sqrt())?)?;
                (original, epsilon)
            }
            Prediction::Sample => {
                let epsilon = ((sample - (model_output * alpha.sqrt())?)? / beta.sqrt())?;
                (model_output.clone(), epsilon)
            }
        };
        let original = match self.clip_range {
            Some(range) => original.clamp(-range, range)?,
            None => original,
        };
        (original * alpha_prev.sqrt())? + (epsilon * (1.0 - alpha_prev).sqrt())?
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        let Some(&t) = self.timesteps.get(step) else {
            return Ok(original.clone());
        };
        let alpha = self.schedule.alpha_cumprod_at(t);
        (original * alpha.sqrt())? + (noise * (1.0 - alpha).sqrt())?
    }
}
