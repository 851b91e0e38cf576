//! The typed messages between the engine thread and whoever drives it.

use std::path::PathBuf;
use std::time::Duration;

use image::RgbImage;

use super::error::EngineError;
use super::memory::MemoryReport;
use crate::hub::{CacheRoots, DownloadProgress, Downloaded, HubError, HubToken};
use crate::pipeline::request::{GenerateRequest, Mode};
use crate::pipeline::StageTimings;
use crate::schedulers::SamplerKind;

/// Identifies one generation from request to result.
pub type JobId = u64;

/// Identifies one download from request to end.
pub type DownloadId = u64;

/// A model to fetch from the hub (see `hub::download`).
#[derive(Debug, Clone)]
pub struct DownloadRequest {
    /// A catalog id or a hub repository (`org/name`).
    pub model: String,
    /// Where to look for it and where it lands.
    pub roots: CacheRoots,
    /// Take half-precision files where the repository has them.
    pub prefer_fp16: bool,
    /// The hub's address; `None` for `HF_ENDPOINT` or huggingface.co.
    pub endpoint: Option<String>,
    /// The access token; `None` for the user's (`HF_TOKEN`, the token file).
    pub token: Option<HubToken>,
}

/// What the engine is asked to do.
#[derive(Debug)]
pub enum Request {
    /// Run a generation (queued behind any running job).
    Generate {
        /// The id the caller will see in events.
        job: JobId,
        /// What to generate.
        request: Box<GenerateRequest>,
    },
    /// Stop a queued or running job before its next step.
    Cancel(JobId),
    /// Drop every loaded model.
    Unload,
    /// From now on, drop models as `ResidencyPolicy` says.
    SetResidency(ResidencyPolicy),
    /// Fetch a model on a thread of its own, beside any job.
    Download {
        /// The id the caller will see in events.
        download: DownloadId,
        /// What to fetch.
        request: DownloadRequest,
    },
    /// Stop a download after its current chunk; what arrived is kept for a resume.
    CancelDownload(DownloadId),
    /// Cancel what runs (jobs and downloads) and end the thread.
    Shutdown,
}

/// When the engine drops loaded models by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResidencyPolicy {
    /// Keep them until asked to unload.
    KeepLoaded,
    /// Drop them after every job.
    UnloadAfterJob,
    /// Drop them after this long without a job.
    UnloadWhenIdle(Duration),
    /// Keep several models, dropping the least recently used components (of any model) so
    /// that loaded weights stay within this many bytes.
    MemoryBudget(u64),
}

impl Default for ResidencyPolicy {
    /// A shared machine's default: give memory back after 10 idle minutes.
    fn default() -> Self {
        ResidencyPolicy::UnloadWhenIdle(Duration::from_secs(600))
    }
}

/// How a job is run, from the most memory to the least. A job that runs out of memory is
/// retried one step down (see `Event::OutOfMemory`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Every component loaded together.
    Full,
    /// One stage's components at a time (low-memory mode).
    Staged,
    /// Staged, and the VAE runs tile by tile.
    StagedTiledVae,
    /// Staged with the model's quantized (GGUF) transformer: only for a FLUX folder that
    /// holds one beside its full-precision file.
    StagedQuantized,
}

impl Strategy {
    /// The next strategy down, using less memory, for a model that has (`quantized_exists`)
    /// or lacks a quantized transformer; `None` from the last.
    pub fn next(self, quantized_exists: bool) -> Option<Strategy> {
        match self {
            Strategy::Full => Some(Strategy::Staged),
            Strategy::Staged => Some(Strategy::StagedTiledVae),
            Strategy::StagedTiledVae => quantized_exists.then_some(Strategy::StagedQuantized),
            Strategy::StagedQuantized => None,
        }
    }

    /// How the window and logs name it.
    pub fn describe(self) -> &'static str {
        match self {
            Strategy::Full => "full",
            Strategy::Staged => "low-memory (staged)",
            Strategy::StagedTiledVae => "low-memory with tiled VAE",
            Strategy::StagedQuantized => "low-memory with the quantized (GGUF) transformer",
        }
    }
}

/// The parameters a result was made with, enough to reproduce it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobParameters {
    /// The model folder.
    pub model: PathBuf,
    /// txt2img, img2img or inpaint.
    pub mode: Mode,
    /// The prompt.
    pub prompt: String,
    /// The negative prompt, if one was given.
    pub negative_prompt: Option<String>,
    /// The sampler.
    pub sampler: SamplerKind,
    /// Steps of the full schedule.
    pub steps: usize,
    /// Guidance scale.
    pub guidance: f64,
    /// Seed.
    pub seed: u64,
    /// Output width in pixels.
    pub width: u32,
    /// Output height in pixels.
    pub height: u32,
    /// img2img / inpaint strength.
    pub strength: Option<f64>,
    /// The edit references, in order: their file names, or "pasted".
    pub references: Vec<String>,
    /// The context around the mask when only the masked area was painted (`None`: the
    /// whole image was).
    pub masked_area_padding_px: Option<u32>,
}

impl JobParameters {
    /// The parameters of `request` generated at `size_px`.
    pub fn of(request: &GenerateRequest, size_px: (u32, u32)) -> Self {
        Self {
            model: request.model.clone(),
            mode: request.mode(),
            prompt: request.prompt.clone(),
            negative_prompt: request.negative_prompt.clone(),
            sampler: request.sampler,
            steps: request.steps,
            guidance: request.guidance,
            seed: request.seed,
            width: size_px.0,
            height: size_px.1,
            strength: request.init().map(|s| s.strength),
            references: request
                .edit_references()
                .map(|(_, name)| name.to_string())
                .collect(),
            masked_area_padding_px: None,
        }
    }
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct JobOutput {
    /// The result image.
    pub image: RgbImage,
    /// What it was made with.
    pub parameters: JobParameters,
    /// Where the time went (loads, prompt, each step, decode).
    pub timings: StageTimings,
    /// Prompt text the text encoder could not take (cut at 77 tokens).
    pub prompt_cut_off: Option<String>,
    /// How the job ran (below the configured strategy after running out of memory).
    pub strategy: Strategy,
}

/// What the engine reports. Each is followed by a call of the wake-up callback.
#[derive(Debug)]
pub enum Event {
    /// The engine has taken the job and will run it when the one before it ends.
    Queued {
        /// The job.
        job: JobId,
    },
    /// A model component is loading for the job.
    Loading {
        /// The job.
        job: JobId,
        /// `text_encoder`, `text_encoder_2`, `unet`, `vae`.
        component: &'static str,
        /// 0 when it starts, 1 when it is loaded.
        progress: f32,
    },
    /// A denoising step finished.
    Step {
        /// The job.
        job: JobId,
        /// Steps done, 1-based.
        step: usize,
        /// Steps this job runs.
        of: usize,
        /// Time since the first step began.
        elapsed: Duration,
        /// A cheap RGB approximation of the latents (one pixel per latent), when it could
        /// be made.
        preview: Option<RgbImage>,
    },
    /// The job finished.
    Finished {
        /// The job.
        job: JobId,
        /// The result.
        output: Box<JobOutput>,
    },
    /// The job failed; the engine goes on.
    Failed {
        /// The job.
        job: JobId,
        /// Why.
        error: EngineError,
    },
    /// The job was cancelled; loaded models stay loaded.
    Cancelled {
        /// The job.
        job: JobId,
    },
    /// The job ran out of memory; everything was unloaded and, when `retrying_with` is set,
    /// the job starts again with that strategy (the user's inputs are untouched).
    OutOfMemory {
        /// The job.
        job: JobId,
        /// The strategy that ran out.
        strategy: Strategy,
        /// The strategy tried next, or `None` when none is left and the job fails.
        retrying_with: Option<Strategy>,
        /// What the device said.
        message: String,
    },
    /// Memory in use now.
    Memory(MemoryReport),
    /// Every model was dropped.
    Unloaded,
    /// A download moved on (at most every 100 ms, and at each file's start and end).
    DownloadProgress {
        /// The download.
        download: DownloadId,
        /// Bytes and files so far, and the rate.
        progress: DownloadProgress,
    },
    /// A download ended with the model on disk.
    DownloadFinished {
        /// The download.
        download: DownloadId,
        /// Where the model is and how it got there.
        outcome: Downloaded,
    },
    /// A download stopped: cancelled (`HubError::Cancelled`), refused, cut off, or failed.
    DownloadFailed {
        /// The download.
        download: DownloadId,
        /// Why, and what to do.
        error: HubError,
    },
}
