//! The out-of-memory ladder: a job that runs out of memory is retried one strategy down
//! (full, staged, staged with a tiled VAE, staged with the quantized denoiser), after every
//! weight is dropped, and the strategy that finished it is reported.

use super::Worker;
use crate::engine::messages::{Event, JobId, JobOutput, Strategy};
use crate::families::{masked_area_of, plan, LoadedModel};
use crate::models::vae::VaeTiling;
use crate::pipeline::masked_area::MaskedArea;
use crate::pipeline::request::GenerateRequest;
use crate::pipeline::{PipelineError, StageTimings};

/// Tile side (in latents, 512 pixels) of the VAE when a job falls back to a tiled VAE.
const FALLBACK_TILE_CORE_LATENTS: usize = 64;

impl Worker {
    /// Runs `request` with the strategy the settings choose and, each time it runs out of
    /// memory, unloads everything and retries one strategy down (see `Strategy`).
    pub(super) fn run_with_model(
        &mut self,
        job: JobId,
        request: &GenerateRequest,
        model: &mut dyn LoadedModel,
    ) -> Result<JobOutput, PipelineError> {
        // An inpaint of the masked area runs on its crop and is blended back at the end.
        let masked_area = masked_area_of(model, request);
        let request = masked_area.as_ref().map_or(request, |(crop, _)| crop);
        let output = self.run_with_strategies(job, request, model)?;
        Ok(match masked_area {
            Some((_, area)) => blended(output, &area),
            None => output,
        })
    }

    /// `run_with_model` for the request the model runs.
    fn run_with_strategies(
        &mut self,
        job: JobId,
        request: &GenerateRequest,
        model: &mut dyn LoadedModel,
    ) -> Result<JobOutput, PipelineError> {
        // Checked once: the plan holds the size, mode and components every attempt runs.
        let plan = plan(model, request)?;
        let mut strategy = if self.staged {
            Strategy::Staged
        } else {
            Strategy::Full
        };
        loop {
            model.set_vae_tiling(match strategy {
                Strategy::StagedTiledVae | Strategy::StagedQuantized => {
                    VaeTiling::Cores(FALLBACK_TILE_CORE_LATENTS)
                }
                Strategy::Full | Strategy::Staged => VaeTiling::Auto,
            });
            // Each job starts from the full-precision denoiser where there is one.
            model.use_quantized_denoiser(strategy == Strategy::StagedQuantized);
            let timings = StageTimings::default();
            let attempt = match strategy {
                Strategy::Full => self.run_full(job, request, &plan, model, timings),
                Strategy::Staged | Strategy::StagedTiledVae | Strategy::StagedQuantized => {
                    self.run_staged(job, request, &plan, model, timings)
                }
            };
            let message = match attempt {
                Ok(mut output) => {
                    output.strategy = strategy;
                    return Ok(output);
                }
                Err(PipelineError::OutOfMemory(message)) => message,
                Err(other) => return Err(other),
            };
            let retrying_with = strategy.next(model.has_quantized_denoiser());
            tracing::warn!(
                job,
                strategy = strategy.describe(),
                retrying_with = retrying_with.map(Strategy::describe),
                %message,
                "out of memory"
            );
            model.unload_all();
            self.release_memory();
            self.outbox.send(Event::OutOfMemory {
                job,
                strategy,
                retrying_with,
                message: message.clone(),
            });
            self.report_model_memory(model);
            match retrying_with {
                Some(next) => strategy = next,
                None => return Err(PipelineError::OutOfMemory(message)),
            }
        }
    }
}

/// A masked-area job's output: the crop blended into the whole picture, which its parameters
/// describe.
fn blended(mut output: JobOutput, area: &MaskedArea) -> JobOutput {
    output.image = area.blend(&output.image);
    let (width, height) = area.size_px();
    output.parameters.width = width;
    output.parameters.height = height;
    output.parameters.masked_area_padding_px = Some(area.padding_px());
    output
}
