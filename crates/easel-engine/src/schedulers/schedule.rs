//! The discrete noise schedule shared by the Stable Diffusion samplers, computed as diffusers
//! computes it (betas and their cumulative product in f32, then numpy-style interpolation).

use super::{Prediction, SchedulerError};
use crate::models::config::SchedulerConfig;

/// Training-time noise schedule of a model, read from its scheduler config.
#[derive(Debug, Clone)]
pub struct NoiseSchedule {
    /// `alpha_bar_t` for every training timestep, as f32 values.
    pub alphas_cumprod: Vec<f64>,
    /// What the model predicts.
    pub prediction: Prediction,
    /// `steps_offset` for `leading` spacing.
    pub steps_offset: usize,
}

impl NoiseSchedule {
    /// Builds the schedule described by `cfg`.
    pub fn from_config(cfg: &SchedulerConfig) -> Result<Self, SchedulerError> {
        if cfg.rescale_betas_zero_snr == Some(true) {
            return Err(SchedulerError::Unsupported(
                "rescale_betas_zero_snr".to_string(),
            ));
        }
        let steps = cfg.num_train_timesteps.unwrap_or(1000);
        let start = cfg.beta_start.unwrap_or(0.0001) as f32;
        let end = cfg.beta_end.unwrap_or(0.02) as f32;
        let betas: Vec<f32> = match (&cfg.trained_betas, cfg.beta_schedule.as_deref()) {
            (Some(betas), _) => betas.iter().map(|&b| b as f32).collect(),
            (None, None | Some("linear")) => linspace_f32(start, end, steps),
            (None, Some("scaled_linear")) => linspace_f32(start.sqrt(), end.sqrt(), steps)
                .into_iter()
                .map(|b| b * b)
                .collect(),
            (None, Some("squaredcos_cap_v2")) => cosine_betas(steps),
            (None, Some(other)) => {
                return Err(SchedulerError::Unsupported(format!(
                    "beta_schedule {other}"
                )))
            }
        };
        let mut product = 1f32;
        let alphas_cumprod = betas
            .iter()
            .map(|beta| {
                product *= 1.0 - beta;
                f64::from(product)
            })
            .collect();
        let prediction = match cfg.prediction_type.as_deref() {
            None | Some("epsilon") => Prediction::Epsilon,
            Some("v_prediction") => Prediction::Velocity,
            Some("sample") => Prediction::Sample,
            Some(other) => {
                return Err(SchedulerError::Unsupported(format!(
                    "prediction_type {other}"
                )))
            }
        };
        Ok(Self {
            alphas_cumprod,
            prediction,
            steps_offset: cfg.steps_offset.unwrap_or(0),
        })
    }

    /// Number of training timesteps.
    pub fn train_steps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// `sqrt((1 - alpha_bar) / alpha_bar)` for every training timestep, rounded to f32.
    pub fn train_sigmas(&self) -> Vec<f64> {
        self.alphas_cumprod
            .iter()
            .map(|&a| round_f32(((1.0 - a) / a).sqrt()))
            .collect()
    }

    /// `alpha_bar` at a (possibly fractional) timestep, clamped to the schedule.
    pub fn alpha_cumprod_at(&self, timestep: f64) -> f64 {
        let index = (timestep.round().max(0.0) as usize).min(self.alphas_cumprod.len() - 1);
        self.alphas_cumprod[index]
    }
}

/// Rounds to the nearest f32, as numpy's `astype(np.float32)` does.
pub fn round_f32(x: f64) -> f64 {
    f64::from(x as f32)
}

fn linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    linspace(f64::from(start), f64::from(end), n)
        .into_iter()
        .map(|x| x as f32)
        .collect()
}

/// `np.linspace(start, end, n)`.
pub fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    match n {
        0 => vec![],
        1 => vec![start],
        _ => {
            let step = (end - start) / (n - 1) as f64;
            (0..n)
                .map(|i| {
                    if i == n - 1 {
                        end
                    } else {
                        start + step * i as f64
                    }
                })
                .collect()
        }
    }
}

fn cosine_betas(steps: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| {
        ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
            .cos()
            .powi(2)
    };
    (0..steps)
        .map(|i| {
            let t1 = i as f64 / steps as f64;
            let t2 = (i + 1) as f64 / steps as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// `np.interp(x, 0..len, ys)`.
pub fn interp_index(x: f64, ys: &[f64]) -> f64 {
    if x <= 0.0 {
        return ys[0];
    }
    let last = ys.len() - 1;
    if x >= last as f64 {
        return ys[last];
    }
    let low = x.floor() as usize;
    let frac = x - low as f64;
    ys[low] + (ys[low + 1] - ys[low]) * frac
}

/// Timestep spacings of "Common Diffusion Noise Schedules and Sample Steps are Flawed", table 2.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Spacing {
    /// Evenly from 0 to N-1.
    Linspace,
    /// Multiples of N/steps from 0, plus `steps_offset`.
    Leading,
    /// Multiples of N/steps down from N, minus one.
    Trailing,
}

impl Spacing {
    /// Parses the config value, with the scheduler class's default when absent.
    pub fn parse(value: Option<&str>, default: Spacing) -> Result<Self, SchedulerError> {
        match value {
            None => Ok(default),
            Some("linspace") => Ok(Spacing::Linspace),
            Some("leading") => Ok(Spacing::Leading),
            Some("trailing") => Ok(Spacing::Trailing),
            Some(other) => Err(SchedulerError::Unsupported(format!(
                "timestep_spacing {other}"
            ))),
        }
    }
}

/// `leading` spacing: multiples of `train_steps / n` from 0, noisiest first, plus `offset`.
pub fn leading_timesteps(train_steps: usize, n: usize, offset: usize) -> Vec<f64> {
    let ratio = train_steps / n;
    (0..n).rev().map(|i| (i * ratio + offset) as f64).collect()
}

/// `trailing` spacing: `round(arange(N, 0, -N/n)) - 1`.
pub fn trailing_timesteps(train_steps: usize, n: usize) -> Vec<f64> {
    let ratio = train_steps as f64 / n as f64;
    (0..n)
        .map(|i| train_steps as f64 - i as f64 * ratio)
        .filter(|&t| t > 0.0)
        .map(|t| t.round() - 1.0)
        .collect()
}

/// Karras et al. (2022) sigmas between `sigma_max` and `sigma_min`, rho 7.
pub fn karras_sigmas(sigma_min: f64, sigma_max: f64, steps: usize) -> Vec<f64> {
    let rho = 7.0;
    let min_inv = sigma_min.powf(1.0 / rho);
    let max_inv = sigma_max.powf(1.0 / rho);
    linspace(0.0, 1.0, steps)
        .into_iter()
        .map(|ramp| (max_inv + ramp * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// diffusers' `_sigma_to_t`: the fractional timestep whose sigma is `sigma`, interpolating in
/// log-sigma between neighbouring training timesteps.
pub fn sigma_to_timestep(sigma: f64, train_sigmas: &[f64]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    // numpy keeps log_sigmas in f32 because the sigmas are an f32 array.
    let log_sigmas: Vec<f64> = train_sigmas.iter().map(|s| round_f32(s.ln())).collect();
    let count_ge = log_sigmas
        .iter()
        .filter(|&&ls| log_sigma - ls >= 0.0)
        .count();
    // cumsum(...).argmax() is the index of the last non-negative distance (sigmas ascend).
    let low = count_ge.saturating_sub(1).min(log_sigmas.len() - 2);
    let high = low + 1;
    let (lo, hi) = (log_sigmas[low], log_sigmas[high]);
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * high as f64
}
