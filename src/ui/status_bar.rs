//! The status bar: device and precision, model state, memory, step progress, the last error.

use std::time::Duration;

use easel_engine::engine::memory::MemoryReport;
use easel_engine::engine::Event;
use easel_engine::hub::HubError;
use eframe::egui;

/// Where the models stand, as the engine last said.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelState {
    /// Nothing loaded yet.
    NotLoaded,
    /// A component is loading.
    Loading {
        /// `unet`, `vae`, ...
        component: &'static str,
        /// 0..=1.
        progress: f32,
    },
    /// Loaded and running or waiting for a job.
    Ready,
    /// Unloaded on request.
    Unloaded,
}

/// Denoising progress of the running job.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepProgress {
    /// Steps done.
    pub step: usize,
    /// Steps in the job.
    pub of: usize,
    /// Time since the first step began.
    pub elapsed: Duration,
}

impl StepProgress {
    /// Steps per second so far.
    pub fn steps_per_sec(&self) -> f64 {
        self.step as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Estimated time to the last step.
    pub fn remaining(&self) -> Duration {
        let per_step = self.elapsed.as_secs_f64() / self.step.max(1) as f64;
        Duration::from_secs_f64(per_step * self.of.saturating_sub(self.step) as f64)
    }
}

/// What the status bar shows.
#[derive(Debug, Clone)]
pub struct StatusBar {
    /// "cpu", "cuda:0", ...
    pub device: String,
    /// "f32", "f16", ...
    pub dtype: String,
    /// Model state.
    pub model_state: ModelState,
    /// The last memory report.
    pub memory: Option<MemoryReport>,
    /// The running job's progress.
    pub progress: Option<StepProgress>,
    /// The last error; stays until dismissed.
    pub last_error: Option<String>,
    /// Something the user should know that is not an error (an out-of-memory fallback).
    pub notice: Option<String>,
}

impl Default for StatusBar {
    fn default() -> Self {
        Self {
            device: "starting".to_string(),
            dtype: String::new(),
            model_state: ModelState::NotLoaded,
            memory: None,
            progress: None,
            last_error: None,
            notice: None,
        }
    }
}

impl StatusBar {
    /// Takes in what an engine event says about state, memory and progress.
    pub fn on_event(&mut self, event: &Event) {
        match event {
            Event::Queued { .. } => {}
            Event::Loading {
                component,
                progress,
                ..
            } => {
                self.model_state = if *progress < 1.0 {
                    ModelState::Loading {
                        component,
                        progress: *progress,
                    }
                } else {
                    ModelState::Ready
                };
            }
            Event::Step {
                step, of, elapsed, ..
            } => {
                self.model_state = ModelState::Ready;
                self.progress = Some(StepProgress {
                    step: *step,
                    of: *of,
                    elapsed: *elapsed,
                });
            }
            Event::Finished { output, .. } => {
                self.progress = None;
                if self.notice.is_some() {
                    self.notice = Some(format!(
                        "Out of memory: the job finished in {} mode",
                        output.strategy.describe()
                    ));
                }
            }
            Event::Cancelled { .. } => self.progress = None,
            Event::OutOfMemory {
                strategy,
                retrying_with,
                ..
            } => {
                self.notice = retrying_with.map(|next| {
                    format!(
                        "Out of memory in {} mode: retrying in {} mode",
                        strategy.describe(),
                        next.describe()
                    )
                });
            }
            Event::Failed { error, .. } => {
                self.progress = None;
                self.last_error = Some(error.to_string());
            }
            Event::Memory(report) => {
                if report.total_weights_bytes() > 0 {
                    self.model_state = match &self.model_state {
                        loading @ ModelState::Loading { .. } => loading.clone(),
                        _ => ModelState::Ready,
                    };
                }
                self.memory = Some(report.clone());
            }
            Event::Unloaded => self.model_state = ModelState::Unloaded,
            // The Models window shows downloads; a failure is also the last error here, in
            // case that window is closed.
            Event::DownloadFailed { error, .. } if !matches!(error, HubError::Cancelled) => {
                self.last_error = Some(error.to_string());
            }
            Event::DownloadProgress { .. }
            | Event::DownloadFinished { .. }
            | Event::DownloadFailed { .. } => {}
        }
    }

    /// Shows `message` as the last error.
    pub fn show_error(&mut self, message: impl Into<String>) {
        self.last_error = Some(message.into());
    }

    /// Draws the bar.
    pub fn ui(&mut self, ui: &mut egui::Ui) {
        ui.horizontal_wrapped(|ui| {
            ui.label(format!("{} {}", self.device, self.dtype));
            ui.separator();
            ui.label(match &self.model_state {
                ModelState::NotLoaded => "model: not loaded".to_string(),
                ModelState::Loading {
                    component,
                    progress,
                } => format!("loading {component} {:.0}%", progress * 100.0),
                ModelState::Ready => "model: ready".to_string(),
                ModelState::Unloaded => "model: unloaded".to_string(),
            });
            if let Some(memory) = &self.memory {
                ui.separator();
                let rss = memory
                    .process_rss_bytes
                    .map_or("?".to_string(), format_bytes);
                let machine = memory.system_bytes.map_or(String::new(), |(total, free)| {
                    format!(" of {} ({} free)", format_bytes(total), format_bytes(free))
                });
                let gpu = memory.device_bytes.map_or(String::new(), |(used, limit)| {
                    format!(", GPU {} of {}", format_bytes(used), format_bytes(limit))
                });
                ui.label(format!(
                    "memory: {rss} in use{machine}{gpu}, {} weights",
                    format_bytes(memory.total_weights_bytes())
                ))
                .on_hover_text(
                    memory
                        .weights_bytes
                        .iter()
                        .map(|w| format!("{} {}: {}", w.model, w.component, format_bytes(w.bytes)))
                        .collect::<Vec<_>>()
                        .join("\n"),
                );
            }
            if let Some(progress) = self.progress {
                ui.separator();
                ui.label(format!(
                    "step {}/{}  {:.2} it/s  {:.0} s left",
                    progress.step,
                    progress.of,
                    progress.steps_per_sec(),
                    progress.remaining().as_secs_f64()
                ));
            }
            if let Some(notice) = self.notice.clone() {
                ui.separator();
                ui.colored_label(ui.visuals().warn_fg_color, notice);
                if ui.small_button("OK").clicked() {
                    self.notice = None;
                }
            }
            if let Some(error) = self.last_error.clone() {
                ui.separator();
                ui.colored_label(ui.visuals().error_fg_color, format!("Error: {error}"));
                if ui.small_button("Dismiss").clicked() {
                    self.last_error = None;
                }
            }
        });
    }
}

/// "1.2 GB", "340 MB", "12 KB".
pub fn format_bytes(bytes: u64) -> String {
    let bytes = bytes as f64;
    if bytes >= 1e9 {
        format!("{:.1} GB", bytes / 1e9)
    } else if bytes >= 1e6 {
        format!("{:.0} MB", bytes / 1e6)
    } else {
        format!("{:.0} KB", bytes / 1e3)
    }
}
