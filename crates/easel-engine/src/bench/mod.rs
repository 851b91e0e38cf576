//! `easel bench`: load times, step and decode times, and memory of each residency mode,
//! measured through the engine exactly as the window and the command line use it.
//!
//! For each mode (full, staged) a fresh engine runs the same job twice: once with the weight
//! files dropped from the page cache (cold load), once after an unload (warm load). Peak RSS
//! is the kernel's high-water mark, reset before each mode. The bare denoiser forward (UNet or
//! FLUX transformer) at the same shapes is timed last, outside the engine, to show what
//! Easel's loop adds to a step.

pub mod architectures;
mod klein;
mod page_cache;
mod references;
mod report;

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::DType;

use crate::device::{self, DeviceChoice};
use crate::engine::memory::{
    peak_rss_bytes, process_anon_rss_bytes, process_rss_bytes, reset_peak_rss,
};
use crate::engine::{Engine, EngineConfig, EngineError, Event, JobOutput, ResidencyPolicy};
use crate::families::{GuidanceKind, ModelInfo};
use crate::models::error::ModelError;
use crate::pipeline::request::{GenerateRequest, InpaintOptions};
use crate::schedulers::SamplerKind;
pub use architectures::Architecture;
pub use references::DEFAULT_COUNTS as DEFAULT_REFERENCE_COUNTS;
pub use report::{BenchReport, ForwardReport, Machine, ModeReport, Modes, ReferenceRun};

/// The model a benchmark runs.
#[derive(Debug, Clone, PartialEq)]
pub enum BenchModel {
    /// A random-weight model of a published architecture, built once into the cache.
    Architecture(Architecture),
    /// A model folder (diffusers layout) as it is.
    Folder(PathBuf),
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The model.
    pub model: BenchModel,
    /// Output side in pixels (square), a multiple of 8.
    pub size_px: u32,
    /// Denoising steps per job (at least 1).
    pub steps: usize,
    /// The device to run on.
    pub device: DeviceChoice,
    /// Weight precision; `None` is the device's default.
    pub dtype: Option<DType>,
    /// Where random-weight models are kept between runs.
    pub cache_dir: PathBuf,
    /// Edit-reference counts to run one job each with (models that edit with references);
    /// `None` runs `DEFAULT_REFERENCE_COUNTS` for those models and nothing for the others.
    pub reference_counts: Option<Vec<usize>>,
}

/// Why the benchmark could not finish.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A file or folder could not be written or read.
    #[error("{path}: {message}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the OS said.
        message: String,
    },
    /// A model file was unusable.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A tensor operation failed.
    #[error("computation failed: {0}")]
    Compute(#[from] candle_core::Error),
    /// The engine could not start or a job failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The engine thread ended before the benchmark did.
    #[error("the engine stopped during the benchmark")]
    EngineStopped,
    /// A job was cancelled (nothing in the benchmark cancels, so something else did).
    #[error("the benchmark job was cancelled")]
    Cancelled,
    /// The options can't be run.
    #[error("{0}")]
    Options(String),
}

impl BenchError {
    fn io(path: &Path, error: std::io::Error) -> Self {
        BenchError::Io {
            path: path.to_path_buf(),
            message: error.to_string(),
        }
    }
}

/// The prompt every benchmark job draws (every word is in the benchmark tokenizer).
const BENCH_PROMPT: &str = "a painting of a red fox in the snow";
/// Guidance above 1, so that steps run the UNet on a batch of two as real jobs do.
const BENCH_GUIDANCE: f64 = 7.5;

/// Runs the benchmark; `progress` hears each phase as it starts.
pub fn run(
    options: &BenchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<BenchReport, BenchError> {
    check_options(options)?;
    // Idle memory is measured first, before the model is built or any job runs.
    let full_engine = spawn(options, false)?;
    let idle_rss_bytes = process_rss_bytes();
    let idle_anon_rss_bytes = process_anon_rss_bytes();
    let (folder, random_weights, model_name) = model_folder(options, progress)?;
    let info = ModelInfo::read(&folder)?;
    let reference_counts = match &options.reference_counts {
        Some(counts) => counts.clone(),
        None if info.capabilities.edit_references > 0 => DEFAULT_REFERENCE_COUNTS.to_vec(),
        None => Vec::new(),
    };
    if let Some(&too_many) = reference_counts
        .iter()
        .find(|&&count| count > info.capabilities.edit_references)
    {
        return Err(BenchError::Options(format!(
            "{} edits with at most {} references; --references asked for {too_many}",
            info.family, info.capabilities.edit_references
        )));
    }
    let request = bench_request(&info, options);
    let weight_files = page_cache::weight_files(&folder);
    let mut cold_loads_from_disk = true;

    // What the window and `easel models` would have said before the run.
    let estimate =
        info.memory_estimate((options.size_px, options.size_px), full_engine.precision());
    progress("full mode: cold job");
    let mut full = measure_mode(
        full_engine,
        &request,
        &weight_files,
        &mut cold_loads_from_disk,
        progress,
    )?;
    progress("staged mode: cold job");
    let mut staged = measure_mode(
        spawn(options, true)?,
        &request,
        &weight_files,
        &mut cold_loads_from_disk,
        progress,
    )?;
    full.estimated_peak_bytes = Some(estimate.full_bytes);
    staged.estimated_peak_bytes = Some(estimate.staged_bytes);

    // Both engines have unloaded and ended: what the process keeps now is not weights.
    let after_unload_anon_rss_bytes = process_anon_rss_bytes();
    let reference_runs = if reference_counts.is_empty() {
        Vec::new()
    } else {
        references::measure(
            options,
            &request,
            &reference_counts,
            info.footprint.joint_text_tokens as usize,
            info.size_multiple_px,
            progress,
        )?
    };
    progress("bare denoiser forward");
    let (device_name, dtype, mut forward_secs) = bare_denoiser_forward(options, &request)?;
    let denoiser_forward_secs_median = median(&mut forward_secs);
    let loop_overhead_percent =
        100.0 * (full.step_secs_median / denoiser_forward_secs_median - 1.0);
    Ok(BenchReport {
        model: model_name,
        random_weights,
        size_px: options.size_px,
        steps: options.steps,
        guidance: request.guidance,
        device: device_name,
        dtype: format!("{dtype:?}").to_lowercase(),
        machine: Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            total_memory_bytes: crate::engine::memory::system_memory_bytes().map(|(t, _)| t),
            os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
        },
        idle_rss_bytes,
        after_unload_rss_bytes: full
            .after_unload_rss_bytes
            .max(staged.after_unload_rss_bytes),
        idle_anon_rss_bytes,
        after_unload_anon_rss_bytes,
        modes: Modes { full, staged },
        denoiser_forward_secs_median,
        loop_overhead_percent,
        cold_loads_from_disk,
        reference_runs,
    })
}

/// The bare denoiser forward alone (no engine, no jobs): `max(steps, 3)` forwards on a step's
/// shapes, for profiling (with `EASEL_OP_TIMES=1` the per-op table follows on stderr).
pub fn forward_only(
    options: &BenchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<ForwardReport, BenchError> {
    check_options(options)?;
    let (folder, _, model) = model_folder(options, progress)?;
    let info = ModelInfo::read(&folder)?;
    let request = bench_request(&info, options);
    progress("bare denoiser forward");
    let (device, dtype, forward_secs) = bare_denoiser_forward(options, &request)?;
    Ok(ForwardReport {
        model,
        size_px: options.size_px,
        device,
        dtype: format!("{dtype:?}").to_lowercase(),
        forward_secs,
    })
}

/// Rejects sizes and step counts the benchmark can't run.
fn check_options(options: &BenchOptions) -> Result<(), BenchError> {
    if options.steps == 0 || options.size_px < 64 || !options.size_px.is_multiple_of(8) {
        return Err(BenchError::Options(format!(
            "--size must be a multiple of 8 from 64 (got {}) and --steps at least 1 (got {})",
            options.size_px, options.steps
        )));
    }
    Ok(())
}

/// The model's folder (a random-weight one built into the cache when missing), whether its
/// weights are random, and its name.
fn model_folder(
    options: &BenchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<(PathBuf, bool, String), BenchError> {
    Ok(match &options.model {
        BenchModel::Architecture(architecture) => (
            architectures::ensure_random_model(*architecture, &options.cache_dir, progress)?,
            true,
            architecture.name().to_string(),
        ),
        BenchModel::Folder(dir) => (dir.clone(), false, dir.display().to_string()),
    })
}

fn spawn(options: &BenchOptions, staged: bool) -> Result<Engine, BenchError> {
    let engine = Engine::spawn(
        EngineConfig {
            device: options.device,
            dtype: options.dtype,
            warm_up: false,
            residency: ResidencyPolicy::KeepLoaded,
            staged,
            fault_hook: None,
        },
        std::sync::Arc::new(|| {}),
    )?;
    // The engine's first event is its start-up memory report.
    wait_for(&engine, |event| matches!(event, Event::Memory(_)))?;
    Ok(engine)
}

fn bench_request(info: &ModelInfo, options: &BenchOptions) -> GenerateRequest {
    // Guided models are guided with an empty negative prompt (a CFG batch of two); the
    // others (FLUX dev's distilled guidance) take their own guidance value.
    let guided = info.guidance == GuidanceKind::ClassifierFree;
    GenerateRequest {
        model: info.dir.clone(),
        prompt: BENCH_PROMPT.to_string(),
        negative_prompt: guided.then(String::new),
        sampler: SamplerKind::Euler,
        steps: options.steps,
        guidance: if guided {
            BENCH_GUIDANCE
        } else {
            info.defaults.guidance
        },
        seed: 1,
        width: Some(options.size_px),
        height: Some(options.size_px),
        references: Vec::new(),
        adapters: Vec::new(),
        paste_back: true,
        inpaint: InpaintOptions::default(),
        max_sequence_length: None,
    }
}

/// A cold job, an unload, a warm job and an unload on `engine`.
fn measure_mode(
    engine: Engine,
    request: &GenerateRequest,
    weight_files: &[PathBuf],
    cold_loads_from_disk: &mut bool,
    progress: &mut dyn FnMut(&str),
) -> Result<ModeReport, BenchError> {
    *cold_loads_from_disk &= page_cache::evict(weight_files);
    let weights = engine.dtype_name();
    let peak_resettable = reset_peak_rss();
    let started = Instant::now();
    let cold = run_job(&engine, request)?;
    let cold_job_secs = started.elapsed().as_secs_f64();
    let first_unload_rss = unload(&engine)?;
    progress("warm job");
    let warm = run_job(&engine, request)?;
    let peak_rss_bytes = peak_rss_bytes().filter(|_| peak_resettable);
    let after_unload_rss_bytes = unload(&engine)?.max(first_unload_rss);
    let is_load = |stage: &str| stage.starts_with("load ");
    let is_decode = |stage: &str| stage == "decode";
    let mut first_steps = stage_secs(&cold, &is_first_step);
    first_steps.extend(stage_secs(&warm, &is_first_step));
    let mut steps = stage_secs(&cold, &is_later_step);
    steps.extend(stage_secs(&warm, &is_later_step));
    if steps.is_empty() {
        steps = first_steps.clone();
    }
    let mut decodes = stage_secs(&cold, &is_decode);
    decodes.extend(stage_secs(&warm, &is_decode));
    Ok(ModeReport {
        weights,
        load_secs: stage_secs(&cold, &is_load).iter().sum(),
        warm_load_secs: stage_secs(&warm, &is_load).iter().sum(),
        step_secs_median: median(&mut steps),
        first_step_secs_median: median(&mut first_steps),
        vae_decode_secs: median(&mut decodes),
        cold_job_secs,
        peak_rss_bytes,
        estimated_peak_bytes: None,
        after_unload_rss_bytes,
    })
}

/// The seconds of `output`'s stages that `wanted` picks.
fn stage_secs(output: &JobOutput, wanted: &dyn Fn(&str) -> bool) -> Vec<f64> {
    output
        .timings
        .stages
        .iter()
        .filter(|(stage, _)| wanted(stage))
        .map(|(_, took)| took.as_secs_f64())
        .collect()
}

/// A job's first step, which also pays for first-touching its activation memory (given back
/// to the OS at every unload): reported apart, so that the median is the steady step.
fn is_first_step(stage: &str) -> bool {
    stage == "step 1"
}

/// Every step after the first.
fn is_later_step(stage: &str) -> bool {
    stage.starts_with("step ") && !is_first_step(stage)
}

/// Runs `request` to its end.
fn run_job(engine: &Engine, request: &GenerateRequest) -> Result<JobOutput, BenchError> {
    let job = engine
        .generate(request.clone())
        .map_err(|_| BenchError::EngineStopped)?;
    loop {
        match engine
            .events()
            .recv()
            .map_err(|_| BenchError::EngineStopped)?
        {
            Event::Finished { job: done, output } if done == job => return Ok(*output),
            Event::Failed { job: failed, error } if failed == job => return Err(error.into()),
            Event::Cancelled { job: cancelled } if cancelled == job => {
                return Err(BenchError::Cancelled)
            }
            _ => {}
        }
    }
}

/// Unloads everything and returns the RSS the engine reports afterwards.
fn unload(engine: &Engine) -> Result<Option<u64>, BenchError> {
    engine.unload().map_err(|_| BenchError::EngineStopped)?;
    wait_for(engine, |event| matches!(event, Event::Unloaded))?;
    let mut rss = None;
    wait_for(engine, |event| match event {
        Event::Memory(report) => {
            rss = report.process_rss_bytes;
            true
        }
        _ => false,
    })?;
    Ok(rss)
}

fn wait_for(engine: &Engine, mut wanted: impl FnMut(&Event) -> bool) -> Result<(), BenchError> {
    loop {
        let event = engine
            .events()
            .recv()
            .map_err(|_| BenchError::EngineStopped)?;
        if wanted(&event) {
            return Ok(());
        }
    }
}

/// Times the denoiser alone on the shapes of a step: `max(steps, 3)` forwards, the first
/// (which pays one-off allocations, as the engine's first step does) included.
fn bare_denoiser_forward(
    options: &BenchOptions,
    request: &GenerateRequest,
) -> Result<(String, DType, Vec<f64>), BenchError> {
    crate::ops::denormals::init_compute_threads();
    let device = device::open(options.device).map_err(EngineError::from)?;
    let (dtype, _) = device::usable_dtype(&device, options.dtype);
    let mut model = crate::families::open(&request.model, &device, dtype)?;
    let _ = crate::ops::op_times::report();
    let secs = model
        .time_denoiser_forward(request, options.size_px, options.steps.max(3))
        .map_err(EngineError::Pipeline)?;
    if let Some(table) = crate::ops::op_times::report() {
        eprintln!("{table}");
    }
    Ok((device::describe(&device), dtype, secs))
}

/// The median of `values` (0 when empty).
fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}
