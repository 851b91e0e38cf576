//! The flow-matching Euler schedule as diffusers' `FlowMatchEulerDiscreteScheduler` computes it
//! for FLUX: sigmas from 1 down to `1/steps`, shifted by a fixed `shift` (schnell) or by the
//! image's token count (dev's dynamic shift), then a final 0. FLUX.2 shifts by an empirical `mu`
//! of the target's token count and the step count (`FlowMatchSchedule::flux2`).

use crate::models::config::SchedulerConfig;

use super::SchedulerError;

/// The sigmas of one run: `steps + 1` values from about 1 down to 0, in f32 as diffusers keeps
/// them. Step `i` moves the latents from `sigmas[i]` to `sigmas[i + 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowMatchSchedule {
    /// The noise level before each step, then the final 0.
    pub sigmas: Vec<f32>,
}

impl FlowMatchSchedule {
    /// The schedule for `steps` inference steps of an image of `image_seq_len` packed tokens
    /// (`(height / 16) * (width / 16)`).
    pub fn new(
        config: &SchedulerConfig,
        steps: usize,
        image_seq_len: usize,
    ) -> Result<Self, SchedulerError> {
        if config.use_karras_sigmas == Some(true) {
            return Err(SchedulerError::Unsupported(
                "use_karras_sigmas with flow matching".into(),
            ));
        }
        let steps = steps.max(1);
        let linear = linear_sigmas(steps);
        let mut sigmas: Vec<f32> = if config.use_dynamic_shifting == Some(true) {
            let mu = dynamic_shift_mu(config, image_seq_len);
            let exponential = match config.time_shift_type.as_deref() {
                None | Some("exponential") => true,
                Some("linear") => false,
                Some(other) => {
                    return Err(SchedulerError::Unsupported(format!(
                        "time_shift_type {other}"
                    )))
                }
            };
            linear
                .iter()
                .map(|&s| {
                    let t = f64::from(s);
                    let shifted = if exponential {
                        mu.exp() / (mu.exp() + (1.0 / t - 1.0))
                    } else {
                        mu / (mu + (1.0 / t - 1.0))
                    };
                    shifted as f32
                })
                .collect()
        } else {
            let shift = config.shift.unwrap_or(1.0);
            linear
                .iter()
                .map(|&s| {
                    let s = f64::from(s);
                    (shift * s / (1.0 + (shift - 1.0) * s)) as f32
                })
                .collect()
        };
        sigmas.push(0.0);
        Ok(Self { sigmas })
    }

    /// FLUX.2's schedule for `steps` steps of a target of `image_tokens` packed tokens
    /// (references excluded): `linspace(1, 1/steps, steps)` shifted exponentially by
    /// `empirical_mu`, then a final 0, as `Flux2KleinPipeline` builds it.
    pub fn flux2(steps: usize, image_tokens: usize) -> Self {
        let steps = steps.max(1);
        let mu = empirical_mu(image_tokens, steps);
        let mut sigmas: Vec<f32> = linear_sigmas(steps)
            .iter()
            .map(|&s| {
                let t = f64::from(s);
                (mu.exp() / (mu.exp() + (1.0 / t - 1.0))) as f32
            })
            .collect();
        sigmas.push(0.0);
        Self { sigmas }
    }

    /// Steps in the whole schedule.
    pub fn steps(&self) -> usize {
        self.sigmas.len() - 1
    }

    /// The first step an init image of `strength` starts at (diffusers' `get_timesteps`):
    /// `int(steps - steps * strength)`.
    pub fn start_step(&self, strength: f64) -> usize {
        let steps = self.steps() as f64;
        let init = (steps * strength).min(steps);
        (steps - init).max(0.0) as usize
    }

    /// The timestep the transformer is given at step `index` (diffusers passes
    /// `sigma * 1000 / 1000`, computed in f32).
    pub fn model_timestep(&self, index: usize) -> f32 {
        self.sigmas[index] * 1000.0 / 1000.0
    }
}

/// `np.linspace(1, 1/steps, steps)` as the pipelines pass it, cast to f32 by the scheduler.
fn linear_sigmas(steps: usize) -> Vec<f32> {
    (0..steps)
        .map(|i| {
            let end = 1.0 / steps as f64;
            let t = if steps == 1 {
                1.0
            } else {
                1.0 + (end - 1.0) * i as f64 / (steps - 1) as f64
            };
            t as f32
        })
        .collect()
}

/// FLUX.2's `compute_empirical_mu`: a line in the token count above 4300 tokens; below, a line
/// in the step count between the fits for 10 and 200 steps (so `mu` jumps at 4300 tokens).
pub fn empirical_mu(image_tokens: usize, steps: usize) -> f64 {
    let (a1, b1) = (8.738_095_24e-5, 1.898_333_33);
    let (a2, b2) = (0.000_169_27, 0.456_666_66);
    let n = image_tokens as f64;
    if image_tokens > 4300 {
        return a2 * n + b2;
    }
    let m200 = a2 * n + b2;
    let m10 = a1 * n + b1;
    let a = (m200 - m10) / 190.0;
    let b = m200 - 200.0 * a;
    a * steps as f64 + b
}

/// `mu` of the dynamic shift: linear in the image's token count between the config's two
/// anchors (diffusers' `calculate_shift`).
fn dynamic_shift_mu(config: &SchedulerConfig, image_seq_len: usize) -> f64 {
    let base_len = config.base_image_seq_len.unwrap_or(256) as f64;
    let max_len = config.max_image_seq_len.unwrap_or(4096) as f64;
    let base_shift = config.base_shift.unwrap_or(0.5);
    let max_shift = config.max_shift.unwrap_or(1.15);
    let slope = (max_shift - base_shift) / (max_len - base_len);
    let intercept = base_shift - slope * base_len;
    image_seq_len as f64 * slope + intercept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev_config() -> SchedulerConfig {
        SchedulerConfig {
            use_dynamic_shifting: Some(true),
            shift: Some(3.0),
            base_shift: Some(0.5),
            max_shift: Some(1.15),
            base_image_seq_len: Some(256),
            max_image_seq_len: Some(4096),
            time_shift_type: Some("exponential".into()),
            ..Default::default()
        }
    }

    #[test]
    fn schnell_sigmas_are_unshifted_and_end_at_zero() -> Result<(), SchedulerError> {
        let config = SchedulerConfig {
            use_dynamic_shifting: Some(false),
            shift: Some(1.0),
            ..Default::default()
        };
        let schedule = FlowMatchSchedule::new(&config, 4, 16)?;
        assert_eq!(schedule.sigmas, vec![1.0, 0.75, 0.5, 0.25, 0.0]);
        Ok(())
    }

    #[test]
    fn dev_sigmas_match_diffusers_for_a_64px_image() -> Result<(), SchedulerError> {
        // diffusers 0.42.1, FluxInpaintPipeline at 64x64 (16 tokens), 6 steps.
        let expected = [
            1.0,
            0.887_834_8,
            0.759_971_3,
            0.612_865_9,
            0.441_821_66,
            0.240_477_6,
            0.0,
        ];
        let schedule = FlowMatchSchedule::new(&dev_config(), 6, 16)?;
        for (ours, theirs) in schedule.sigmas.iter().zip(expected) {
            assert!((ours - theirs).abs() < 1e-6, "{ours} vs {theirs}");
        }
        // Strength 0.8 of 6 steps starts at step 1, as diffusers' begin index.
        assert_eq!(schedule.start_step(0.8), 1);
        assert_eq!(schedule.start_step(1.0), 0);
        Ok(())
    }
}
