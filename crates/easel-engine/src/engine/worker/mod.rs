//! The engine thread: owns the device and the loaded models, runs one job at a time, and
//! reads requests between steps. Its parts: `requests` (what each request does, during a job
//! or between jobs), `runner` (a job with every component loaded, or in stages), `fallback`
//! (the out-of-memory ladder).

mod fallback;
mod requests;
mod runner;

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use crossbeam_channel::Receiver;

use super::error::{panic_message, EngineError};
use super::memory::{process_rss_bytes, return_freed_heap, system_memory_bytes, MemoryReport};
use super::messages::{Event, JobId, JobOutput, Request, ResidencyPolicy};
use super::outbox::Outbox;
use super::residency::{idle_wait, job_bytes, ModelCache};
use super::{EngineConfig, Fault, FaultHook, FaultPoint};
use crate::families::LoadedModel;
use crate::pipeline::request::{Adapter, GenerateRequest};
use crate::pipeline::PipelineError;

/// How often memory is reported while a job runs.
const MEMORY_REPORT_INTERVAL: Duration = Duration::from_secs(3);

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
        }
    }

    /// Serves requests until shut down or until the handle is dropped.
    pub(super) fn run(mut self) {
        if !self.outbox.send(Event::Memory(self.memory_report())) {
            return;
        }
        while !self.shutting_down && !self.outbox.listener_gone() {
            let Some((job, request)) = self.pending.pop_front() else {
                match self.next_request() {
                    Ok(Some(request)) => {
                        self.handle(request, None);
                    }
                    // Idle long enough: give the memory back.
                    Ok(None) => self.unload(),
                    Err(_) => return,
                }
                continue;
            };
            // Only a panic matters here: nothing allocates at this point.
            let _ = self.inject(FaultPoint::JobTaken(job));
            let outcome = catch_unwind(AssertUnwindSafe(|| self.run_job(job, &request)));
            log_outcome(job, &outcome);
            // The blocks kept for the job's steps go back while nothing runs.
            super::block_cache::release_cached_blocks();
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
        crate::ops::release_buffers();
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
        adapters: &[Adapter],
    ) -> Result<Box<dyn LoadedModel>, PipelineError> {
        let model = match self.cache.take(folder, adapters) {
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
        let mut model = self.model_for(&request.model, &request.adapters)?;
        let result = self.run_with_model(job, request, model.as_mut());
        // The model stays loaded for the next job, unless an unload or shutdown came meanwhile
        // or the policy drops it after every job.
        if self.unload_after_job || self.residency == ResidencyPolicy::UnloadAfterJob {
            self.unload_after_job = false;
            drop(model);
            self.unload();
        } else if !self.shutting_down {
            self.cache.put(model, &request.adapters);
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

    /// What the fault hook makes of `point`: an injected allocation failure, or nothing.
    fn inject(&self, point: FaultPoint) -> Result<(), PipelineError> {
        match self.fault_hook.as_ref().map(|hook| hook(point)) {
            Some(Fault::OutOfMemory) => Err(PipelineError::OutOfMemory(format!(
                "injected by a test at {point:?}"
            ))),
            Some(Fault::Proceed) | None => Ok(()),
        }
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
