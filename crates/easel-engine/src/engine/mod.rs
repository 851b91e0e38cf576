//! The inference engine: one named background thread that owns the device and the models,
//! driven only by typed messages over bounded channels. No UI code in here.

pub mod block_cache;
mod downloads;
pub mod error;
pub mod memory;
pub mod messages;
mod outbox;
pub mod residency;
mod worker;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::device::{self, DeviceChoice};
use crate::models::sd::Component;
use crate::pipeline::request::GenerateRequest;
pub use error::{EngineError, EngineStopped};
pub use messages::{
    DownloadId, DownloadRequest, Event, JobId, JobOutput, JobParameters, Request, ResidencyPolicy,
    Strategy,
};

/// Called after every event; the window passes one that requests a repaint.
pub type WakeUp = Arc<dyn Fn() + Send + Sync>;

/// Where a fault hook is called, so that tests can inject failures a real run can't force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// The engine thread took `job` off its queue, outside any job's panic guard: a panic
    /// here ends the thread, as a bug in the engine itself would.
    JobTaken(JobId),
    /// Before a component loads.
    BeforeLoad(Component),
    /// Before step `step` (1-based) of `job`.
    BeforeStep {
        /// The job.
        job: JobId,
        /// The step about to run.
        step: usize,
    },
    /// Before `job`'s latents are decoded.
    BeforeDecode(JobId),
}

/// What a fault hook makes happen at its point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Nothing: the engine goes on.
    Proceed,
    /// The allocation about to happen fails, as a device out of memory would (ignored at
    /// `JobTaken`, where nothing allocates).
    OutOfMemory,
}

/// A test hook called at each `FaultPoint`; it may panic to simulate a crash in a job, or
/// return `Fault::OutOfMemory` to simulate an allocation failure.
pub type FaultHook = Arc<dyn Fn(FaultPoint) -> Fault + Send + Sync>;

/// How to start the engine.
#[derive(Clone, Default)]
pub struct EngineConfig {
    /// The device to run on.
    pub device: DeviceChoice,
    /// Weight precision; `None` picks the device's default (in low-memory mode, f16 on the
    /// CPU). One the device can't use is replaced (see `Engine::dtype_warning`).
    pub dtype: Option<candle_core::DType>,
    /// After a job loads components, run one tiny step at 64x64 first so device kernels are
    /// compiled before the real job (its duration is the `warm-up` stage).
    pub warm_up: bool,
    /// When loaded models are dropped.
    pub residency: ResidencyPolicy,
    /// Low-memory mode: text encoders are dropped after encoding and the UNet before
    /// decoding, so peak memory is one stage's weights (reloads are cheap: weights are mapped);
    /// with no `dtype` asked, weights are held in f16 on the CPU.
    pub staged: bool,
    /// Test-only failure injection.
    pub fault_hook: Option<FaultHook>,
}

/// Capacity of the request channel; a full channel means the engine is far behind.
const REQUEST_CAPACITY: usize = 64;
/// Capacity of the event channel; the engine waits when the listener falls this far behind.
const EVENT_CAPACITY: usize = 1024;

/// A handle to the engine thread. Dropping it shuts the engine down.
pub struct Engine {
    requests: Sender<Request>,
    events: Receiver<Event>,
    /// The event channel's sending side and the wake-up, for the downloads' threads.
    event_sender: Sender<Event>,
    wake: WakeUp,
    /// Downloads under way, served here rather than on the engine thread.
    downloads: Mutex<downloads::Downloads>,
    next_job: AtomicU64,
    next_download: AtomicU64,
    device_name: String,
    dtype: candle_core::DType,
    precision: device::Precision,
    dtype_warning: Option<String>,
    thread: Option<JoinHandle<()>>,
}

impl Engine {
    /// Starts the engine thread; nothing is loaded until a job needs it.
    pub fn spawn(config: EngineConfig, wake: WakeUp) -> Result<Self, EngineError> {
        let device = device::open(config.device)?;
        let asked = match config.dtype {
            None if config.staged => Some(device::low_memory_dtype(&device)),
            asked => asked,
        };
        let (dtype, dtype_warning) = device::usable_dtype(&device, asked);
        let precision = device::Precision::on(&device, config.dtype);
        let device_name = device::describe(&device);
        tracing::info!(device = %device_name, dtype = ?dtype, "engine starting");
        if let Some(warning) = &dtype_warning {
            tracing::warn!("{warning}");
        }
        let (request_tx, request_rx) = bounded(REQUEST_CAPACITY);
        let (event_tx, event_rx) = bounded(EVENT_CAPACITY);
        let outbox = outbox::Outbox::new(event_tx.clone(), Arc::clone(&wake));
        let worker = worker::Worker::new(request_rx, outbox, device, dtype, config);
        let thread = std::thread::Builder::new()
            .name("engine".to_string())
            .spawn(move || {
                // Before the first tensor op: the compute threads flush subnormal floats.
                crate::ops::denormals::init_compute_threads();
                worker.run()
            })
            .map_err(|e| EngineError::Start(e.to_string()))?;
        Ok(Self {
            requests: request_tx,
            events: event_rx,
            event_sender: event_tx,
            wake,
            downloads: Mutex::new(downloads::Downloads::default()),
            next_job: AtomicU64::new(1),
            next_download: AtomicU64::new(1),
            device_name,
            dtype,
            precision,
            dtype_warning,
            thread: Some(thread),
        })
    }

    /// "cpu", "cuda:0" or "metal:0".
    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    /// The precision weights load in.
    pub fn dtype(&self) -> candle_core::DType {
        self.dtype
    }

    /// The precision's name ("f32", "f16", "bf16").
    pub fn dtype_name(&self) -> String {
        format!("{:?}", self.dtype).to_lowercase()
    }

    /// Whether weights load in 16 bits (downloads then take fp16 files where there are).
    pub fn half_precision(&self) -> bool {
        self.dtype != candle_core::DType::F32
    }

    /// The precisions each residency mode holds weights in on this device, for the
    /// will-it-fit estimate.
    pub fn precision(&self) -> device::Precision {
        self.precision
    }

    /// Why the precision asked for was replaced by `dtype()`, if it was.
    pub fn dtype_warning(&self) -> Option<&str> {
        self.dtype_warning.as_deref()
    }

    /// Queues a generation and returns its id.
    pub fn generate(&self, request: GenerateRequest) -> Result<JobId, EngineStopped> {
        let job = self.next_job.fetch_add(1, Ordering::Relaxed);
        self.send(Request::Generate {
            job,
            request: Box::new(request),
        })?;
        Ok(job)
    }

    /// Cancels a queued or running job.
    pub fn cancel(&self, job: JobId) -> Result<(), EngineStopped> {
        self.send(Request::Cancel(job))
    }

    /// Starts a download beside any job and returns its id.
    pub fn download(&self, request: DownloadRequest) -> Result<DownloadId, EngineStopped> {
        let download = self.next_download.fetch_add(1, Ordering::Relaxed);
        self.send(Request::Download { download, request })?;
        Ok(download)
    }

    /// Stops a download after its current chunk (what arrived is kept).
    pub fn cancel_download(&self, download: DownloadId) -> Result<(), EngineStopped> {
        self.send(Request::CancelDownload(download))
    }

    /// Drops every loaded model (after the running job, if any).
    pub fn unload(&self) -> Result<(), EngineStopped> {
        self.send(Request::Unload)
    }

    /// Sends any request. Downloads start and stop here, on their own threads, never behind
    /// a job on the engine thread.
    pub fn send(&self, request: Request) -> Result<(), EngineStopped> {
        match request {
            Request::Download { download, request } => {
                let outbox = outbox::Outbox::new(self.event_sender.clone(), Arc::clone(&self.wake));
                self.with_downloads(|downloads| downloads.start(download, request, outbox));
                Ok(())
            }
            Request::CancelDownload(download) => {
                self.with_downloads(|downloads| downloads.cancel(download));
                Ok(())
            }
            other => self.requests.send(other).map_err(|_| EngineStopped),
        }
    }

    /// Runs `change` on the downloads; a poisoned lock (a panic while it was held) still
    /// holds a usable map of cancel flags.
    fn with_downloads(&self, change: impl FnOnce(&mut downloads::Downloads)) {
        let mut downloads = self
            .downloads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        change(&mut downloads);
    }

    /// The events, for a blocking `recv` (command line) or a per-frame `try_iter` (window).
    pub fn events(&self) -> &Receiver<Event> {
        &self.events
    }

    /// Whether the engine thread is still running.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Downloads keep their bytes and resume next time.
        self.with_downloads(|downloads| downloads.cancel_all());
        // A failed send means the thread already ended, which is what we want here.
        if self.requests.send(Request::Shutdown).is_err() {
            return;
        }
        // Let the worker finish sending while we stop listening.
        while let Some(thread) = self.thread.as_ref() {
            if thread.is_finished() {
                break;
            }
            if self
                .events
                .recv_timeout(std::time::Duration::from_millis(20))
                .is_err()
                && self.thread.as_ref().is_some_and(JoinHandle::is_finished)
            {
                break;
            }
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                eprintln!("easel: the engine thread ended with a panic");
            }
        }
    }
}
