//! What the benchmark measured: one JSON object, or a table for people.

use std::fmt::Write;

use serde::Serialize;

/// The whole benchmark's result.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// "sd15", "sdxl" or the model folder benchmarked.
    pub model: String,
    /// Whether the weights are random (built from the published config) or a real folder's.
    pub random_weights: bool,
    /// Output side in pixels (square).
    pub size_px: u32,
    /// Denoising steps per job.
    pub steps: usize,
    /// Guidance scale (SD above 1: every step runs the UNet on a batch of two; FLUX dev: the
    /// distilled guidance, one forward).
    pub guidance: f64,
    /// "cpu", "cuda:0", "metal:0".
    pub device: String,
    /// The weights' precision.
    pub dtype: String,
    /// The machine it ran on.
    pub machine: Machine,
    /// Process RSS with the engine started and nothing loaded, before any job.
    pub idle_rss_bytes: Option<u64>,
    /// The largest process RSS seen after a mode's models were unloaded.
    pub after_unload_rss_bytes: Option<u64>,
    /// The anonymous part (heap, stacks) of the idle RSS; the rest is mapped code and files.
    pub idle_anon_rss_bytes: Option<u64>,
    /// The anonymous part of the RSS after the last unload.
    pub after_unload_anon_rss_bytes: Option<u64>,
    /// Each residency mode.
    pub modes: Modes,
    /// The bare denoiser forward (UNet or FLUX transformer) at the same shapes, outside the
    /// engine (median).
    pub denoiser_forward_secs_median: f64,
    /// How much longer a full-mode step takes than the bare denoiser forward, in percent.
    pub loop_overhead_percent: f64,
    /// Whether weight files could be dropped from the page cache before each cold load.
    pub cold_loads_from_disk: bool,
    /// One job per edit-reference count (models that edit with references).
    pub reference_runs: Vec<ReferenceRun>,
}

/// A job with some edit references, each as large as the output.
#[derive(Debug, Clone, Serialize)]
pub struct ReferenceRun {
    /// Edit references in the job.
    pub references: usize,
    /// Tokens in every attention: the prompt's, the output's and each reference's.
    pub tokens: usize,
    /// Median of the job's steps after the first.
    pub step_secs_median: f64,
    /// Peak process RSS during the job (the weights included).
    pub peak_rss_bytes: Option<u64>,
}

/// The figures of both residency modes.
#[derive(Debug, Clone, Serialize)]
pub struct Modes {
    /// Every component loaded together.
    pub full: ModeReport,
    /// Text encoders, then the denoiser, then the VAE (low-memory mode).
    pub staged: ModeReport,
}

/// One residency mode's figures over a cold job and a warm job.
#[derive(Debug, Clone, Serialize)]
pub struct ModeReport {
    /// The precision the weights were held in ("f32", "f16").
    pub weights: String,
    /// Loading every component the first job needed, weight files not in the page cache.
    pub load_secs: f64,
    /// The same loads again after an unload (files in the page cache).
    pub warm_load_secs: f64,
    /// Median of the denoising steps of both jobs after each job's first (all steps when
    /// a job has only one).
    pub step_secs_median: f64,
    /// Median of each job's first step, which also first-touches the activation memory.
    pub first_step_secs_median: f64,
    /// Median VAE decode of both jobs.
    pub vae_decode_secs: f64,
    /// Wall time of the cold job, loads included.
    pub cold_job_secs: f64,
    /// Peak process RSS over both jobs.
    pub peak_rss_bytes: Option<u64>,
    /// What the will-it-fit estimate (`hub::fit`) says the mode needs at this size, the
    /// runtime's allowance for the window included.
    pub estimated_peak_bytes: Option<u64>,
    /// Process RSS after the mode's models were unloaded.
    pub after_unload_rss_bytes: Option<u64>,
}

/// What the benchmark ran on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Threads available to the process.
    pub cpus: usize,
    /// Total memory, where the OS tells it.
    pub total_memory_bytes: Option<u64>,
    /// `std::env::consts::OS` / `ARCH`.
    pub os: String,
}

impl BenchReport {
    /// A table for the terminal.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let weights = if self.random_weights {
            " (random weights)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "easel bench: {model}{weights}, {size}x{size} px, {steps} steps, guidance {guidance}, \
             {device} {dtype}",
            model = self.model,
            size = self.size_px,
            steps = self.steps,
            guidance = self.guidance,
            device = self.device,
            dtype = self.dtype,
        );
        let _ = writeln!(
            out,
            "machine: {} threads, {} memory, {}",
            self.machine.cpus,
            bytes(self.machine.total_memory_bytes),
            self.machine.os
        );
        let _ = writeln!(
            out,
            "idle RSS before any job: {} ({} anonymous); after unload: {} ({} anonymous)",
            bytes(self.idle_rss_bytes),
            bytes(self.idle_anon_rss_bytes),
            bytes(self.after_unload_rss_bytes),
            bytes(self.after_unload_anon_rss_bytes)
        );
        let _ = writeln!(
            out,
            "{:<8} {:>7} {:>10} {:>10} {:>11} {:>12} {:>11} {:>10} {:>10} {:>13}",
            "mode",
            "weights",
            "load cold",
            "load warm",
            "first step",
            "step median",
            "VAE decode",
            "peak RSS",
            "estimated",
            "after unload"
        );
        for (name, mode) in [("full", &self.modes.full), ("staged", &self.modes.staged)] {
            let _ = writeln!(
                out,
                "{:<8} {:>7} {:>9.2}s {:>9.2}s {:>10.3}s {:>11.3}s {:>10.2}s {:>10} {:>10} {:>13}",
                name,
                mode.weights,
                mode.load_secs,
                mode.warm_load_secs,
                mode.first_step_secs_median,
                mode.step_secs_median,
                mode.vae_decode_secs,
                bytes(mode.peak_rss_bytes),
                bytes(mode.estimated_peak_bytes),
                bytes(mode.after_unload_rss_bytes)
            );
        }
        let _ = writeln!(
            out,
            "bare denoiser forward (median): {:.3}s; Easel's step overhead over it: {:+.1}%",
            self.denoiser_forward_secs_median, self.loop_overhead_percent
        );
        if let (Some(full), Some(staged)) = (
            self.modes.full.peak_rss_bytes,
            self.modes.staged.peak_rss_bytes,
        ) {
            let _ = writeln!(
                out,
                "staged peak is {:.0}% of full",
                100.0 * staged as f64 / full.max(1) as f64
            );
        }
        if !self.reference_runs.is_empty() {
            let _ = writeln!(
                out,
                "{:<11} {:>7} {:>12} {:>10}",
                "references", "tokens", "step median", "peak RSS"
            );
            for run in &self.reference_runs {
                let _ = writeln!(
                    out,
                    "{:<11} {:>7} {:>11.3}s {:>10}",
                    run.references,
                    run.tokens,
                    run.step_secs_median,
                    bytes(run.peak_rss_bytes)
                );
            }
        }
        if !self.cold_loads_from_disk {
            let _ = writeln!(
                out,
                "note: weight files could not be dropped from the page cache; cold loads may be warm"
            );
        }
        out
    }
}

/// `bytes` in MB or GB, or "?" when unknown.
fn bytes(bytes: Option<u64>) -> String {
    match bytes {
        None => "?".to_string(),
        Some(b) if b >= 1 << 30 => format!("{:.2} GB", b as f64 / (1u64 << 30) as f64),
        Some(b) => format!("{:.0} MB", b as f64 / (1u64 << 20) as f64),
    }
}

/// What `forward_only` measured.
#[derive(Debug, Clone, Serialize)]
pub struct ForwardReport {
    /// The model's name or folder.
    pub model: String,
    /// Output side in pixels.
    pub size_px: u32,
    /// The device it ran on.
    pub device: String,
    /// The weights' precision.
    pub dtype: String,
    /// Each forward's seconds, the first (which pays one-off allocations) included.
    pub forward_secs: Vec<f64>,
}

impl ForwardReport {
    /// One line: the median and every forward.
    pub fn line(&self) -> String {
        let mut secs = self.forward_secs.clone();
        let each: Vec<String> = self
            .forward_secs
            .iter()
            .map(|s| format!("{s:.3}"))
            .collect();
        format!(
            "{} at {} px on {} ({}): bare denoiser forward median {:.3}s ({} s)",
            self.model,
            self.size_px,
            self.device,
            self.dtype,
            super::median(&mut secs),
            each.join(", ")
        )
    }
}
