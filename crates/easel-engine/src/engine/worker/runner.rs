//! Running one job: every component loaded together, or in stages (low-memory mode), with
//! progress, previews, cancel between steps and memory reports.

use std::time::{Duration, Instant};

use candle_core::Tensor;

use super::{Worker, MEMORY_REPORT_INTERVAL};
use crate::engine::memory::HeldWeights;
use crate::engine::messages::{Event, JobId, JobOutput, JobParameters, Strategy};
use crate::engine::residency::held_by;
use crate::engine::FaultPoint;
use crate::families::{generate, load_these, EncodedPrompt, LoadedModel, Plan};
use crate::models::component::Component;
use crate::pipeline::noise::SeededNoise;
use crate::pipeline::request::GenerateRequest;
use crate::pipeline::result::{Denoised, Generated};
use crate::pipeline::{PipelineError, StageTimings, StepControl, StepObserver};

impl Worker {
    /// Loads `components` for `job`, reporting progress (and calling the fault hook).
    fn load(
        &mut self,
        job: JobId,
        model: &mut dyn LoadedModel,
        components: &[Component],
        timings: &mut StageTimings,
    ) -> Result<(), PipelineError> {
        for &component in components {
            if !model.is_loaded(component) {
                self.inject(FaultPoint::BeforeLoad(component))?;
            }
        }
        let mut on_load = |component: Component, progress: f32| {
            if progress == 1.0 {
                tracing::info!(job, component = component.name(), "component loaded");
            }
            self.outbox.send(Event::Loading {
                job,
                component: component.name(),
                progress,
            });
        };
        load_these(model, components, timings, &mut on_load)
    }

    /// Reports memory with the weights `model` holds now.
    pub(super) fn report_model_memory(&self, model: &dyn LoadedModel) {
        let mut report = self.memory_report();
        report.weights_bytes.extend(held_by(model));
        self.outbox.send(Event::Memory(report));
    }

    /// Low-memory mode: text encoders load, encode and go; then the denoiser (UNet or
    /// transformer) runs, with the VAE beside it only to encode an init image; the denoiser
    /// goes before the VAE decodes. Peak memory is the largest stage.
    pub(super) fn run_staged(
        &mut self,
        job: JobId,
        request: &GenerateRequest,
        plan: &Plan,
        model: &mut dyn LoadedModel,
        mut timings: StageTimings,
    ) -> Result<JobOutput, PipelineError> {
        let encoders = plan.text_encoders();
        self.load(job, model, &encoders, &mut timings)?;
        self.report_model_memory(model);
        let prompt = model.encode(request, plan, &mut timings)?;
        for &encoder in &encoders {
            model.unload(encoder);
        }
        self.release_memory();
        if self.poll(job) {
            return Err(PipelineError::Cancelled);
        }
        // The VAE joins the denoiser only when an init image must be encoded first.
        self.load(job, model, &plan.denoising_stage(), &mut timings)?;
        self.report_model_memory(model);
        let mut denoised = self.denoise_observed(job, request, plan, model, &prompt, timings)?;
        model.unload(plan.denoiser);
        self.release_memory();
        self.load(job, model, &[Component::Vae], &mut denoised.timings)?;
        self.report_model_memory(model);
        self.inject(FaultPoint::BeforeDecode(job))?;
        let generated = model.decode(request, denoised)?;
        Ok(job_output(model, request, generated))
    }

    /// The denoising loop with progress, previews, cancel and the step fault point.
    fn denoise_observed(
        &mut self,
        job: JobId,
        request: &GenerateRequest,
        plan: &Plan,
        model: &dyn LoadedModel,
        prompt: &EncodedPrompt,
        timings: StageTimings,
    ) -> Result<Denoised, PipelineError> {
        let mut noise = SeededNoise::new(request.seed);
        let mut observer = JobObserver {
            worker: self,
            job,
            model,
            injected: None,
            held: held_by(model),
        };
        let denoised = model.denoise(request, plan, prompt, &mut noise, &mut observer, timings);
        match (denoised, observer.injected.take()) {
            (Err(PipelineError::Cancelled), Some(injected)) => Err(injected),
            (denoised, _) => denoised,
        }
    }

    /// Every component loaded together, then encode, denoise and decode.
    pub(super) fn run_full(
        &mut self,
        job: JobId,
        request: &GenerateRequest,
        plan: &Plan,
        model: &mut dyn LoadedModel,
        mut timings: StageTimings,
    ) -> Result<JobOutput, PipelineError> {
        self.load(job, model, &plan.components, &mut timings)?;
        let loaded_now = !timings.stages.is_empty();
        if self.warm_up && loaded_now {
            let started = std::time::Instant::now();
            generate(
                model,
                &warm_up_request(request),
                &mut SeededNoise::new(0),
                &mut Unobserved,
                StageTimings::default(),
            )?;
            let took = started.elapsed();
            tracing::info!(job, secs = took.as_secs_f64(), "warm-up");
            timings.push("warm-up", took);
        }
        if self.poll(job) {
            return Err(PipelineError::Cancelled);
        }
        self.report_model_memory(model);
        let prompt = model.encode(request, plan, &mut timings)?;
        let denoised = self.denoise_observed(job, request, plan, model, &prompt, timings)?;
        self.inject(FaultPoint::BeforeDecode(job))?;
        // The blocks kept for the steps' sizes go back before the decode asks for its own.
        crate::engine::block_cache::release_cached_blocks();
        let generated = model.decode(request, denoised)?;
        Ok(job_output(model, request, generated))
    }
}

/// What a finished job reports. A model without a sampler choice runs its own sampler, and
/// one without a negative prompt ignores it, whatever the request says: the parameters say
/// what ran.
fn job_output(
    model: &dyn LoadedModel,
    request: &GenerateRequest,
    generated: Generated,
) -> JobOutput {
    let info = model.info();
    let mut parameters = JobParameters::of(request, generated.size_px);
    if !info.sampler_choice {
        parameters.sampler = info.defaults.sampler;
    }
    if !info.negative_prompt {
        parameters.negative_prompt = None;
    }
    JobOutput {
        image: generated.image,
        parameters,
        timings: generated.timings,
        prompt_cut_off: generated.prompt_cut_off,
        strategy: Strategy::Full,
    }
}

/// The job's request cut to one step at 64x64 (the whole schedule, so any strength runs).
fn warm_up_request(request: &GenerateRequest) -> GenerateRequest {
    let mut tiny = request.clone();
    tiny.steps = 1;
    tiny.width = Some(64);
    tiny.height = Some(64);
    if let Some(source) = tiny.init_mut() {
        source.strength = 1.0;
    }
    tiny
}

/// Watches nothing: the warm-up step reports no progress.
struct Unobserved;

impl StepObserver for Unobserved {
    fn before_step(&mut self, _done: usize, _total: usize) -> StepControl {
        StepControl::Continue
    }

    fn after_step(&mut self, _done: usize, _total: usize, _latents: &Tensor, _elapsed: Duration) {}
}

/// Reports steps and checks for cancel between them.
struct JobObserver<'a> {
    worker: &'a mut Worker,
    job: JobId,
    /// The running model, whose family maps latents to a preview.
    model: &'a dyn LoadedModel,
    /// A failure the fault hook injected before a step (the loop stops as if cancelled).
    injected: Option<PipelineError>,
    /// The running model's weights, for the reports sent during the loop.
    held: Vec<HeldWeights>,
}

impl StepObserver for JobObserver<'_> {
    fn before_step(&mut self, done: usize, _total: usize) -> StepControl {
        let point = FaultPoint::BeforeStep {
            job: self.job,
            step: done + 1,
        };
        if let Err(injected) = self.worker.inject(point) {
            self.injected = Some(injected);
            return StepControl::Cancel;
        }
        if self.worker.poll(self.job) {
            StepControl::Cancel
        } else {
            StepControl::Continue
        }
    }

    fn after_step(&mut self, done: usize, total: usize, latents: &Tensor, elapsed: Duration) {
        // Activations grow and shrink during a job: report memory every few seconds.
        if self.worker.last_memory_report.elapsed() >= MEMORY_REPORT_INTERVAL {
            self.worker.last_memory_report = Instant::now();
            let mut report = self.worker.memory_report();
            report.weights_bytes.extend(self.held.iter().cloned());
            self.worker.outbox.send(Event::Memory(report));
        }
        // A preview that fails to compute is only a missing preview, never a failed job.
        let preview = self.model.preview(latents).ok();
        self.worker.outbox.send(Event::Step {
            job: self.job,
            step: done,
            of: total,
            elapsed,
            preview,
        });
    }
}
