//! Euler and Euler ancestral, as diffusers' `EulerDiscreteScheduler` and
//! `EulerAncestralDiscreteScheduler` (no churn).

use candle_core::{Result, Tensor};

use super::schedule::{
    interp_index, karras_sigmas, leading_timesteps, linspace, round_f32, sigma_to_timestep,
    trailing_timesteps, NoiseSchedule, Spacing,
};
use super::{Prediction, Scheduler, SchedulerError};
use crate::models::config::SchedulerConfig;

/// Euler over k-diffusion sigmas; `ancestral` adds fresh noise at every step.
#[derive(Debug)]
pub struct Euler {
    timesteps: Vec<f64>,
    /// One more than `timesteps`: the last is the level after the final step.
    sigmas: Vec<f64>,
    init_noise_sigma: f64,
    prediction: Prediction,
    ancestral: bool,
}

impl Euler {
    /// The schedule for `steps` inference steps.
    pub fn new(
        schedule: NoiseSchedule,
        cfg: &SchedulerConfig,
        steps: usize,
        ancestral: bool,
    ) -> std::result::Result<Self, SchedulerError> {
        let n = steps;
        let train_steps = schedule.train_steps();
        let spacing = Spacing::parse(cfg.timestep_spacing.as_deref(), Spacing::Linspace)?;
        let mut timesteps: Vec<f64> = match spacing {
            Spacing::Linspace => linspace(0.0, (train_steps - 1) as f64, n)
                .into_iter()
                .rev()
                .map(round_f32)
                .collect(),
            Spacing::Leading => leading_timesteps(train_steps, n, schedule.steps_offset),
            Spacing::Trailing => trailing_timesteps(train_steps, n),
        };
        let train_sigmas = schedule.train_sigmas();
        let mut sigmas: Vec<f64> = match cfg.interpolation_type.as_deref() {
            None | Some("linear") => timesteps
                .iter()
                .map(|&t| interp_index(t, &train_sigmas))
                .collect(),
            Some("log_linear") => {
                let first = train_sigmas[train_sigmas.len() - 1].ln();
                let last = train_sigmas[0].ln();
                linspace(last, first, n + 1)
                    .into_iter()
                    .map(f64::exp)
                    .collect()
            }
            Some(other) => {
                return Err(SchedulerError::Unsupported(format!(
                    "interpolation_type {other}"
                )))
            }
        };
        if !ancestral && cfg.use_karras_sigmas == Some(true) {
            let sigma_min = cfg.sigma_min.unwrap_or(sigmas[sigmas.len() - 1]);
            let sigma_max = cfg.sigma_max.unwrap_or(sigmas[0]);
            sigmas = karras_sigmas(sigma_min, sigma_max, n);
            timesteps = sigmas
                .iter()
                .map(|&s| round_f32(sigma_to_timestep(s, &train_sigmas)))
                .collect();
        }
        let final_sigma = match (ancestral, cfg.final_sigmas_type.as_deref()) {
            (true, _) | (false, None | Some("zero")) => 0.0,
            (false, Some("sigma_min")) => {
                let a = schedule.alphas_cumprod[0];
                ((1.0 - a) / a).sqrt()
            }
            (false, Some(other)) => {
                return Err(SchedulerError::Unsupported(format!(
                    "final_sigmas_type {other}"
                )))
            }
        };
        sigmas.push(final_sigma);
        let sigmas: Vec<f64> = sigmas.into_iter().map(round_f32).collect();
        let max_sigma = sigmas.iter().copied().fold(0.0, f64::max);
        let init_noise_sigma = match spacing {
            Spacing::Linspace | Spacing::Trailing => max_sigma,
            Spacing::Leading => (max_sigma * max_sigma + 1.0).sqrt(),
        };
        Ok(Self {
            timesteps,
            sigmas,
            init_noise_sigma,
            prediction: schedule.prediction,
            ancestral,
        })
    }

    fn predicted_original(
        &self,
        model_output: &Tensor,
        sample: &Tensor,
        sigma: f64,
    ) -> Result<Tensor> {
        match self.prediction {
            Prediction::Epsilon => sample - (model_output * sigma)?,
            Prediction::Velocity => {
                let c_out = -sigma / (sigma * sigma + 1.0).sqrt();
                let c_skip = 1.0 / (sigma * sigma + 1.0);
                (model_output * c_out)? + (sample * c_skip)?
            }
            Prediction::Sample => Ok(model_output.clone()),
        }
    }
}

impl Scheduler for Euler {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, sample: &Tensor, step: usize) -> Result<Tensor> {
        let sigma = self.sigmas[step];
        sample / (sigma * sigma + 1.0).sqrt()
    }

    fn takes_step_noise(&self) -> bool {
        self.ancestral
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        step_noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        let sigma = self.sigmas[step];
        let sigma_next = self.sigmas[step + 1];
        let original = self.predicted_original(model_output, sample, sigma)?;
        let derivative = ((sample - original)? / sigma)?;
        if !self.ancestral {
            return sample + (derivative * (sigma_next - sigma))?;
        }
        let sigma_up = (sigma_next * sigma_next * (sigma * sigma - sigma_next * sigma_next)
            / (sigma * sigma))
            .sqrt();
        let sigma_down = (sigma_next * sigma_next - sigma_up * sigma_up).sqrt();
        let prev = (sample + (derivative * (sigma_down - sigma))?)?;
        match step_noise {
            Some(noise) => prev + (noise * sigma_up)?,
            None => candle_core::bail!("Euler ancestral needs noise at every step"),
        }
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        original + (noise * self.sigmas[step])?
    }
}
