//! DPM-Solver++ 2M (midpoint), as diffusers' `DPMSolverMultistepScheduler` with its defaults.

use candle_core::{Result, Tensor};

use super::schedule::{
    interp_index, karras_sigmas, linspace, round_f32, sigma_to_timestep, trailing_timesteps,
    NoiseSchedule, Spacing,
};
use super::{Prediction, Scheduler, SchedulerError};
use crate::models::config::SchedulerConfig;

/// Second-order multistep DPM-Solver++ in data-prediction form.
#[derive(Debug)]
pub struct DpmPp2m {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    prediction: Prediction,
    /// First order on the last step (short runs, or a zero final sigma).
    first_order_final: bool,
    /// The previous step's predicted clean sample.
    previous_original: Option<Tensor>,
}

/// `(alpha_t, sigma_t)` of the variance-preserving process at k-diffusion level `sigma`.
fn alpha_sigma(sigma: f64) -> (f64, f64) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// Half log-SNR `lambda = ln(alpha) - ln(sigma)`.
fn lambda(sigma: f64) -> f64 {
    let (a, s) = alpha_sigma(sigma);
    a.ln() - s.ln()
}

impl DpmPp2m {
    /// The schedule for `steps` inference steps; `karras` spaces sigmas as Karras et al.
    pub fn new(
        schedule: NoiseSchedule,
        cfg: &SchedulerConfig,
        steps: usize,
        karras: bool,
    ) -> std::result::Result<Self, SchedulerError> {
        let n = steps;
        let train_steps = schedule.train_steps();
        let spacing = Spacing::parse(cfg.timestep_spacing.as_deref(), Spacing::Linspace)?;
        let mut timesteps: Vec<f64> = match spacing {
            Spacing::Linspace => linspace(0.0, (train_steps - 1) as f64, n + 1)
                .into_iter()
                .map(f64::round)
                .rev()
                .take(n)
                .collect(),
            Spacing::Leading => {
                let ratio = train_steps / (n + 1);
                (1..=n)
                    .rev()
                    .map(|i| (i * ratio + schedule.steps_offset) as f64)
                    .collect()
            }
            Spacing::Trailing => trailing_timesteps(train_steps, n),
        };
        let train_sigmas = schedule.train_sigmas();
        let mut sigmas: Vec<f64> = if karras || cfg.use_karras_sigmas == Some(true) {
            let sigma_min = cfg.sigma_min.unwrap_or(train_sigmas[0]);
            let sigma_max = cfg
                .sigma_max
                .unwrap_or(train_sigmas[train_sigmas.len() - 1]);
            let sigmas = karras_sigmas(sigma_min, sigma_max, n);
            timesteps = sigmas
                .iter()
                .map(|&s| sigma_to_timestep(s, &train_sigmas).round())
                .collect();
            sigmas
        } else {
            timesteps
                .iter()
                .map(|&t| interp_index(t, &train_sigmas))
                .collect()
        };
        let zero_final = match cfg.final_sigmas_type.as_deref() {
            None | Some("zero") => true,
            Some("sigma_min") => false,
            Some(other) => {
                return Err(SchedulerError::Unsupported(format!(
                    "final_sigmas_type {other}"
                )))
            }
        };
        sigmas.push(if zero_final { 0.0 } else { train_sigmas[0] });
        let sigmas = sigmas.into_iter().map(round_f32).collect();
        let first_order_final = cfg.euler_at_final.unwrap_or(false)
            || (cfg.lower_order_final.unwrap_or(true) && n < 15)
            || zero_final;
        Ok(Self {
            timesteps,
            sigmas,
            prediction: schedule.prediction,
            first_order_final,
            previous_original: None,
        })
    }
}

impl Scheduler for DpmPp2m {
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
        let sigma = self.sigmas[step];
        let sigma_next = self.sigmas[step + 1];
        let (alpha_s, sigma_s) = alpha_sigma(sigma);
        let original = match self.prediction {
            Prediction::Epsilon => ((sample - (model_output * sigma_s)?)? / alpha_s)?,
            Prediction::Velocity => ((sample * alpha_s)? - (model_output * sigma_s)?)?,
            Prediction::Sample => model_output.clone(),
        };
        let last = step + 1 == self.timesteps.len();
        let previous = self.previous_original.replace(original.clone());
        if sigma_next == 0.0 {
            return Ok(original);
        }
        let (alpha_t, sigma_t) = alpha_sigma(sigma_next);
        let h = lambda(sigma_next) - lambda(sigma);
        let decay = alpha_t * ((-h).exp() - 1.0);
        let base = (sample * (sigma_t / sigma_s))?;
        match previous {
            Some(previous) if step > 0 && !(last && self.first_order_final) => {
                let h_prev = lambda(sigma) - lambda(self.sigmas[step - 1]);
                let r = h_prev / h;
                let d1 = ((&original - previous)? / r)?;
                (base - (original * decay)?)? - (d1 * (0.5 * decay))?
            }
            _ => base - (original * decay)?,
        }
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, step: usize) -> Result<Tensor> {
        let (alpha, sigma) = alpha_sigma(self.sigmas[step]);
        (original * alpha)? + (noise * sigma)?
    }
}
