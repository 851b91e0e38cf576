//! The engine thread: owns the device and the loaded model, runs one job at a time, and
//! polls for cancel and new requests between steps.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use crossbeam_channel::{Receiver, Sender};

use super::downloads::Downloads;
use super::error::EngineError;
use super::memory::{
    process_rss_bytes, return_freed_heap, system_memory_bytes, HeldWeights, MemoryReport,
};
use super::messages::{Event, JobId, JobOutput, JobParameters, Request, ResidencyPolicy, Strategy};
use super::residency::{held_by, idle_wait, job_bytes, ModelCache};
use super::{EngineConfig, Fault, FaultHook, FaultPoint, WakeUp};
use crate::families::{generate, load_these, EncodedPrompt, LoadedModel};
use crate::models::component::Component;
use crate::models::vae::VaeTiling;
use crate::pipeline::noise::SeededNoise;
use crate::pipeline::request::GenerateRequest;
use crate::pipeline::result::{Denoised, Generated};
use crate::pipeline::{PipelineError, StageTimings, StepControl, StepObserver};

/// Tile side (in latents, 512 pixels) of the VAE when a job falls back to a tiled VAE.
const FALLBACK_TILE_CORE_LATENTS: usize = 64;

/// How often memory is reported while a job runs.
const MEMORY_REPORT_INTERVAL: Duration = Duration::from_secs(3);

/// Sends events and wakes the listener; remembers whether the listener is gone.
pub(super) struct Outbox {
    events: Sender<Event>,
    wake: WakeUp,
    listener_gone: std::cell::Cell<bool>,
}

impl Outbox {
    pub(super) fn new(events: Sender<Event>, wake: WakeUp) -> Self {
        Self {
            events,
            wake,
            listener_gone: std::cell::Cell::new(false),
        }
    }

    /// An outbox for another thread, to the same listener.
    pub(super) fn detached(&self) -> Outbox {
        Outbox::new(self.events.clone(), Arc::clone(&self.wake))
    }

    /// Sends `event`; false when nobody listens any more. The engine then stops at the next
    /// point where it can (see `listener_gone`), since nobody could see its results.
    pub(super) fn send(&self, event: Event) -> bool {
        let delivered = self.events.send(event).is_ok();
        if delivered {
            (self.wake)();
        } else {
            self.listener_gone.set(true);
        }
        delivered
    }

    /// Whether a send has found the event receiver dropped.
    fn listener_gone(&self) -> bool {
        self.listener_gone.get()
    }
}

/// The engine thread's state.
pub(super) struct Worker {
    pub(super) requests: Receiver<Request>,
    pub(super) outbox: Outbox,
    pub(super) device: Device,
    pub(super) dtype: DType,
    pub(super) fault_hook: Option<FaultHook>,
    /// Run a tiny step after loads (see `EngineConfig::warm_up`).
    pub(super) warm_up: bool,
    /// When loaded models are dropped.
    pub(super) residency: ResidencyPolicy,
    /// Low-memory mode: load, use and drop components one stage at a time.
    pub(super) staged: bool,
    /// When the last job ended (or the engine started).
    idle_since: Instant,
    /// Models kept loaded between jobs (the running job's model is taken out of it).
    cache: ModelCache,
    /// When memory was last reported (reports repeat every few seconds during a job).
    last_memory_report: Instant,
    pending: VecDeque<(JobId, Box<GenerateRequest>)>,
    shutting_down: bool,
    unload_after_job: bool,
    /// Downloads running beside the jobs.
    downloads: Downloads,
}

impl Worker {
    /// A worker for `device` at `dtype`, with the policies of `config`.
    pub(super) fn new(
        requests: Receiver<Request>,
        outbox: Outbox,
        device: Device,
        dtype: DType,
        config: EngineConfig,
    ) -> Self {
        Self {
            requests,
            outbox,
            device,
            dtype,
            fault_hook: config.fault_hook,
            warm_up: config.warm_up,
            residency: config.residency,
            staged: config.staged,
            idle_since: Instant::now(),
            cache: ModelCache::default(),
            last_memory_report: Instant::now(),
            pending: VecDeque::new(),
            shutting_down: false,
            unload_after_job: false,
            downloads: Downloads::default(),
        }
    }

    /// Serves requests until shut down or until the handle is dropped.
    pub(super) fn run(mut self) {
        if !self.outbox.send(Event::Memory(self.memory_report())) {
            return;
        }
        while !self.shutting_down && !self.outbox.listener_gone() {
            let (job, request) = match self.pending.pop_front() {
                Some(next) => next,
                None => match self.next_request() {
                    Ok(Some(request)) => match self.accept(request) {
                        Some(next) => next,
                        None => continue,
                    },
                    Ok(None) => {
                        // Idle long enough: give the memory back.
                        self.unload();
                        continue;
                    }
                    Err(_) => return,
                },
            };
            // Only a panic matters here: nothing allocates at this point.
            let _ = self.inject(FaultPoint::JobTaken(job));
            let outcome = catch_unwind(AssertUnwindSafe(|| self.run_job(job, &request)));
            log_outcome(job, &outcome);
            let event = match outcome {
                Ok(Ok(output)) => Event::Finished {
                    job,
                    output: Box::new(output),
                },
                Ok(Err(PipelineError::Cancelled)) => Event::Cancelled { job },
                Ok(Err(error)) => Event::Failed {
                    job,
                    error: EngineError::Pipeline(error),
                },
                Err(panic) => Event::Failed {
                    job,
                    error: EngineError::Panicked(panic_message(panic.as_ref())),
                },
            };
            if !self.outbox.send(event) || !self.outbox.send(Event::Memory(self.memory_report())) {
                return;
            }
            self.idle_since = Instant::now();
        }
    }

    /// Waits for the next request; `Ok(None)` when the idle time of `UnloadWhenIdle` ran out
    /// with models loaded.
    fn next_request(&self) -> Result<Option<Request>, crossbeam_channel::RecvError> {
        let wait = idle_wait(
            self.residency,
            !self.cache.is_empty(),
            self.idle_since,
            Instant::now(),
        );
        match wait {
            Some(left) => match self.requests.recv_timeout(left) {
                Ok(request) => Ok(Some(request)),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => Ok(None),
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    Err(crossbeam_channel::RecvError)
                }
            },
            None => self.requests.recv().map(Some),
        }
    }

    /// Handles a request that arrives while no job runs; returns a job to start.
    fn accept(&mut self, request: Request) -> Option<(JobId, Box<GenerateRequest>)> {
        match request {
            Request::Generate { job, request } => {
                self.outbox.send(Event::Queued { job });
                Some((job, request))
            }
            Request::Cancel(job) => {
                self.cancel_pending(job);
                None
            }
            Request::Unload => {
                self.unload();
                None
            }
            Request::SetResidency(policy) => {
                self.residency = policy;
                self.idle_since = Instant::now();
                None
            }
            Request::Download { download, request } => {
                self.downloads
                    .start(download, request, self.outbox.detached());
                None
            }
            Request::CancelDownload(download) => {
                self.downloads.cancel(download);
                None
            }
            Request::Shutdown => {
                self.downloads.cancel_all();
                self.shutting_down = true;
                None
            }
        }
    }

    /// Handles a request that arrives during job `running`; true when it cancels that job.
    fn accept_during(&mut self, running: JobId, request: Request) -> bool {
        match request {
            Request::Generate { job, request } => {
                self.outbox.send(Event::Queued { job });
                self.pending.push_back((job, request));
                false
            }
            Request::Cancel(job) if job == running => true,
            Request::Cancel(job) => {
                self.cancel_pending(job);
                false
            }
            Request::Unload => {
                // Honoured when the running job, which needs its model, ends.
                self.unload_after_job = true;
                false
            }
            Request::SetResidency(policy) => {
                self.residency = policy;
                false
            }
            Request::Download { download, request } => {
                self.downloads
                    .start(download, request, self.outbox.detached());
                false
            }
            Request::CancelDownload(download) => {
                self.downloads.cancel(download);
                false
            }
            Request::Shutdown => {
                self.downloads.cancel_all();
                self.shutting_down = true;
                true
            }
        }
    }

    /// Drains requests without blocking; true when the running job must stop.
    fn poll(&mut self, running: JobId) -> bool {
        let mut cancel = self.outbox.listener_gone();
        while let Ok(request) = self.requests.try_recv() {
            cancel |= self.accept_during(running, request);
        }
        cancel
    }

    fn cancel_pending(&mut self, job: JobId) {
        let before = self.pending.len();
        self.pending.retain(|(queued, _)| *queued != job);
        if self.pending.len() != before {
            self.outbox.send(Event::Cancelled { job });
        }
    }

    fn unload(&mut self) {
        self.cache.clear();
        self.release_memory();
        tracing::info!("models unloaded");
        self.outbox.send(Event::Unloaded);
        self.outbox.send(Event::Memory(self.memory_report()));
    }

    /// After dropping weights: lets the device finish with them (candle's Metal pool frees
    /// buffers only on a synchronize) and gives freed heap pages back to the OS.
    fn release_memory(&self) {
        if let Err(error) = self.device.synchronize() {
            tracing::warn!(%error, "device synchronize after unload failed");
        }
        return_freed_heap();
    }

    fn memory_report(&self) -> MemoryReport {
        MemoryReport {
            device: crate::device::describe(&self.device),
            process_rss_bytes: process_rss_bytes(),
            system_bytes: system_memory_bytes(),
            device_bytes: crate::device::device_memory_bytes(&self.device),
            weights_bytes: self.cache.held(),
        }
    }

    /// Opens the request's model, keeping it loaded when it is cached. Other models stay only
    /// under a memory budget, and then only as far as they leave room for this one.
    fn model_for(
        &mut self,
        folder: &std::path::Path,
    ) -> Result<Box<dyn LoadedModel>, PipelineError> {
        let model = match self.cache.take(folder) {
            Some(model) => model,
            None => crate::families::open(folder, &self.device, self.dtype)?,
        };
        let dropped_any = match self.residency {
            ResidencyPolicy::MemoryBudget(budget) => {
                !self.cache.fit(budget, job_bytes(model.as_ref())).is_empty()
            }
            _ => {
                let any = !self.cache.is_empty();
                self.cache.clear();
                any
            }
        };
        if dropped_any {
            self.release_memory();
        }
        Ok(model)
    }

    fn run_job(
        &mut self,
        job: JobId,
        request: &GenerateRequest,
    ) -> Result<JobOutput, PipelineError> {
        request.validate()?;
        let mut model = self.model_for(&request.model)?;
        let result = self.run_with_model(job, request, model.as_mut());
        // The model stays loaded for the next job, unless an unload or shutdown came meanwhile
        // or the policy drops it after every job.
        if self.unload_after_job || self.residency == ResidencyPolicy::UnloadAfterJob {
            self.unload_after_job = false;
            drop(model);
            self.unload();
        } else if !self.shutting_down {
            self.cache.put(model);
            if let ResidencyPolicy::MemoryBudget(budget) = self.residency {
                for (dir, component) in self.cache.fit(budget, 0) {
                    tracing::info!(
                        model = %dir.display(),
                        component = component.name(),
                        "unloaded to stay within the memory budget"
                    );
                }
                self.release_memory();
            }
        }
        result
    }

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
    fn report_model_memory(&self, model: &dyn LoadedModel) {
        let mut report = self.memory_report();
        report.weights_bytes.extend(held_by(model));
        self.outbox.send(Event::Memory(report));
    }

    /// Low-memory mode: text encoders load, encode and go; then the denoiser (UNet or
    /// transformer) runs, with the VAE beside it only to encode an init image; the denoiser
    /// goes before the VAE decodes. Peak memory is the largest stage.
    fn run_staged(
        &mut self,
        job: JobId,
        request: &GenerateRequest,
        model: &mut dyn LoadedModel,
        mut timings: StageTimings,
    ) -> Result<JobOutput, PipelineError> {
        let encoders = model.text_encoders();
        self.load(job, model, &encoders, &mut timings)?;
        self.report_model_memory(model);
        let prompt = model.encode(request, &mut timings)?;
        for &encoder in &encoders {
            model.unload(encoder);
        }
        self.release_memory();
        if self.poll(job) {
            return Err(PipelineError::Cancelled);
        }
        // The VAE joins the denoiser only when an init image must be encoded first.
        let denoiser = model.denoiser();
        let denoisers: &[Component] = if request.source.is_some() {
            &[denoiser, Component::Vae]
        } else {
            &[denoiser]
        };
        self.load(job, model, denoisers, &mut timings)?;
        self.report_model_memory(model);
        let mut denoised = self.denoise_observed(job, request, model, &prompt, timings)?;
        model.unload(denoiser);
        self.release_memory();
        self.load(job, model, &[Component::Vae], &mut denoised.timings)?;
        self.report_model_memory(model);
        self.inject(FaultPoint::BeforeDecode(job))?;
        let generated = model.decode(request, denoised)?;
        Ok(job_output(model, request, generated))
    }

    /// Runs `request` with the strategy the settings choose and, each time it runs out of
    /// memory, unloads everything and retries one strategy down (see `Strategy`).
    fn run_with_model(
        &mut self,
        job: JobId,
        request: &GenerateRequest,
        model: &mut dyn LoadedModel,
    ) -> Result<JobOutput, PipelineError> {
        model.check_inputs(request)?;
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
                Strategy::Full => self.run_full(job, request, model, timings),
                Strategy::Staged | Strategy::StagedTiledVae | Strategy::StagedQuantized => {
                    self.run_staged(job, request, model, timings)
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

    /// The denoising loop with progress, previews, cancel and the step fault point.
    fn denoise_observed(
        &mut self,
        job: JobId,
        request: &GenerateRequest,
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
        let denoised = model.denoise(request, prompt, &mut noise, &mut observer, timings);
        match (denoised, observer.injected.take()) {
            (Err(PipelineError::Cancelled), Some(injected)) => Err(injected),
            (denoised, _) => denoised,
        }
    }

    /// What the fault hook makes of `point`: an injected allocation failure, or nothing.
    fn inject(&self, point: FaultPoint) -> Result<(), PipelineError> {
        match self.fault_hook.as_ref().map(|hook| hook(point)) {
            Some(Fault::OutOfMemory) => Err(PipelineError::OutOfMemory(format!(
                "injected by a test at {point:?}"
            ))),
            Some(Fault::Proceed) | None => Ok(()),
        }
    }

    /// Every component loaded together, then encode, denoise and decode.
    fn run_full(
        &mut self,
        job: JobId,
        request: &GenerateRequest,
        model: &mut dyn LoadedModel,
        mut timings: StageTimings,
    ) -> Result<JobOutput, PipelineError> {
        let all = model.components();
        self.load(job, model, &all, &mut timings)?;
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
        let prompt = model.encode(request, &mut timings)?;
        let denoised = self.denoise_observed(job, request, model, &prompt, timings)?;
        self.inject(FaultPoint::BeforeDecode(job))?;
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
    if let Some(source) = &mut tiny.source {
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

/// One log line per job: its id, mode, and every stage's duration when it finished.
fn log_outcome(job: JobId, outcome: &std::thread::Result<Result<JobOutput, PipelineError>>) {
    match outcome {
        Ok(Ok(output)) => {
            let stages: Vec<serde_json::Value> = output
                .timings
                .stages
                .iter()
                .map(
                    |(stage, took)| serde_json::json!({"stage": stage, "secs": took.as_secs_f64()}),
                )
                .collect();
            tracing::info!(
                job,
                mode = output.parameters.mode.name(),
                total_secs = output.timings.total().as_secs_f64(),
                stages = %serde_json::Value::Array(stages),
                "job finished"
            );
        }
        Ok(Err(PipelineError::Cancelled)) => tracing::info!(job, "job cancelled"),
        Ok(Err(error)) => tracing::warn!(job, %error, "job failed"),
        Err(panic) => {
            tracing::error!(job, panic = panic_message(panic.as_ref()), "job panicked")
        }
    }
}

pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "unknown panic".to_string()
    }
}
