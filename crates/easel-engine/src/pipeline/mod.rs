//! Diffusion pipelines: requests, noise, the denoising loops and what they report.

pub mod colour_match;
pub mod flow_blend;
pub mod flux;
pub mod flux2;
pub mod image;
pub mod masked_area;
pub mod noise;
pub mod outpaint;
pub mod plan;
pub mod preview;
pub mod request;
pub mod result;
pub mod sd;

use std::time::Duration;

use candle_core::Tensor;

use crate::models::error::ModelError;
use crate::models::sd::Component;
use crate::schedulers::SchedulerError;
use request::RequestError;

/// Named durations of a job's stages, in the order they ran.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageTimings {
    /// `(stage, duration)`: "load unet", "encode prompt", "step 3", "decode", ...
    pub stages: Vec<(String, Duration)>,
}

impl StageTimings {
    /// Records one stage.
    pub fn push(&mut self, stage: impl Into<String>, took: Duration) {
        self.stages.push((stage.into(), took));
    }

    /// The sum of all stages.
    pub fn total(&self) -> Duration {
        self.stages.iter().map(|(_, d)| *d).sum()
    }
}

/// Whether the denoising loop goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepControl {
    /// Run the next step.
    Continue,
    /// Stop now; the job ends as cancelled.
    Cancel,
}

/// Watches the denoising loop: progress, previews, cancel.
pub trait StepObserver {
    /// Called before step `done + 1` of `total`; returning `Cancel` stops the job.
    fn before_step(&mut self, done: usize, total: usize) -> StepControl;
    /// Called after step `done` of `total` with the latents and time since the loop began.
    fn after_step(&mut self, done: usize, total: usize, latents: &Tensor, elapsed: Duration);
}

/// Why a generation did not finish.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PipelineError {
    /// The request can't run; nothing was done.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The model's files could not be used.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The model's scheduler config asks for something unsupported.
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    /// The prompt could not be tokenized.
    #[error("{0}")]
    Prompt(String),
    /// A component was used before it was loaded (a bug in the caller).
    #[error("the {} is not loaded", .0.name())]
    NotLoaded(Component),
    /// A tensor operation failed (device error, bad shapes).
    #[error("computation failed: {0}")]
    Compute(String),
    /// The device could not allocate memory (the engine retries with less, see `Strategy`).
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// The job was cancelled between steps.
    #[error("cancelled")]
    Cancelled,
}

impl From<candle_core::Error> for PipelineError {
    fn from(error: candle_core::Error) -> Self {
        let message = error.to_string();
        if is_out_of_memory(&message) {
            PipelineError::OutOfMemory(message)
        } else {
            PipelineError::Compute(message)
        }
    }
}

/// Whether a device error is an allocation failure: CUDA's `CUDA_ERROR_OUT_OF_MEMORY`
/// ("out of memory"), cuBLAS's alloc failure, or Metal failing to create a buffer. (On the
/// CPU a failed allocation aborts the process; nothing can catch it there.)
fn is_out_of_memory(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    [
        "out of memory",
        "out_of_memory",
        "alloc_failed",
        "failed to create metal resource",
    ]
    .iter()
    .any(|sign| message.contains(sign))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_allocation_failures_are_out_of_memory_and_others_are_not() {
        for message in [
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")",
            "cublas error CUBLAS_STATUS_ALLOC_FAILED",
            "Metal error: Failed to create metal resource: Buffer",
        ] {
            let error = PipelineError::from(candle_core::Error::Msg(message.to_string()));
            assert!(
                matches!(error, PipelineError::OutOfMemory(_)),
                "{message}: {error:?}"
            );
        }
        let shapes = PipelineError::from(candle_core::Error::Msg("shape mismatch".into()));
        assert!(matches!(shapes, PipelineError::Compute(_)));
    }
}
