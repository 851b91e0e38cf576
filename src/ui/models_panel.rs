//! The Models window: the catalog, with where each model is, its download size, whether it
//! fits this device at its default size (shown before anything is fetched or loaded), and
//! downloads with progress, rate and cancel.

use std::collections::HashMap;
use std::path::PathBuf;

use easel_engine::device::Precision;
use easel_engine::engine::{DownloadId, Event};
use easel_engine::hub::catalog::{self, CatalogEntry};
use easel_engine::hub::fit::{self, format_gb, Verdict};
use easel_engine::hub::{
    self, CacheRoots, DownloadProgress, HubError, HubToken, Located, ModelRef,
};
use eframe::egui;

/// A catalog entry's download, as the window knows it.
#[derive(Debug, Clone, PartialEq)]
pub enum DownloadState {
    /// Under way; the newest progress once there is some.
    Running {
        /// The engine's id for it.
        download: DownloadId,
        /// Bytes and files so far.
        progress: Option<DownloadProgress>,
    },
    /// Ended without the model: why, and what to do.
    Failed(String),
}

/// What the user asked for in the window.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelsAction {
    /// Download this entry, with the token typed in the window (else the user's own).
    Download(&'static CatalogEntry, Option<HubToken>),
    /// Stop this download.
    Cancel(DownloadId),
    /// Pick the model in this folder in the prompt panel.
    Use(PathBuf),
}

/// What the window needs from the app to judge sizes.
pub struct ModelsContext {
    /// The memory a model can use now, where known.
    pub free_bytes: Option<u64>,
    /// What the engine holds weights in, in each residency mode.
    pub precision: Precision,
    /// Whether downloads take fp16 files (the engine runs in 16 bits).
    pub fp16_files: bool,
}

/// The window's state.
#[derive(Default)]
pub struct ModelsPanel {
    /// Whether the window is shown.
    pub open: bool,
    /// Downloads under way or failed, by catalog id.
    pub downloads: HashMap<&'static str, DownloadState>,
    /// Where each entry on disk is, by catalog id.
    located: HashMap<&'static str, Located>,
    /// A token typed for gated models, used for downloads and never saved.
    token_draft: String,
}

impl ModelsPanel {
    /// Looks for every entry on disk (no network); assembles the folders of those found in
    /// the user's hub cache.
    pub fn refresh(&mut self, roots: &CacheRoots) {
        self.located = catalog::entries()
            .iter()
            .filter_map(|e| hub::locate(ModelRef::Catalog(e), roots).map(|l| (e.id, l)))
            .collect();
    }

    /// Where `id` is on disk, if it is.
    #[cfg(test)]
    pub fn located(&self, id: &str) -> Option<&Located> {
        self.located.get(id)
    }

    /// Records that the engine started `download` for `id`.
    pub fn started(&mut self, id: &'static str, download: DownloadId) {
        self.downloads.insert(
            id,
            DownloadState::Running {
                download,
                progress: None,
            },
        );
    }

    fn entry_of(&self, download: DownloadId) -> Option<&'static str> {
        self.downloads.iter().find_map(|(id, state)| {
            matches!(state, DownloadState::Running { download: d, .. } if *d == download)
                .then_some(*id)
        })
    }

    /// Takes in a download event; returns the model's folder when one finished.
    pub fn on_event(&mut self, event: &Event) -> Option<PathBuf> {
        match event {
            Event::DownloadProgress { download, progress } => {
                let id = self.entry_of(*download)?;
                self.downloads.insert(
                    id,
                    DownloadState::Running {
                        download: *download,
                        progress: Some(progress.clone()),
                    },
                );
                None
            }
            Event::DownloadFinished { download, outcome } => {
                let id = self.entry_of(*download)?;
                self.downloads.remove(id);
                self.located.insert(id, outcome.located().clone());
                Some(outcome.located().folder.clone())
            }
            Event::DownloadFailed { download, error } => {
                let id = self.entry_of(*download)?;
                match error {
                    HubError::Cancelled => self.downloads.remove(id),
                    other => self
                        .downloads
                        .insert(id, DownloadState::Failed(other.to_string())),
                };
                None
            }
            _ => None,
        }
    }

    /// Draws the window when open.
    pub fn ui(&mut self, ctx: &egui::Context, context: &ModelsContext) -> Option<ModelsAction> {
        let mut action = None;
        let mut open = self.open;
        egui::Window::new("Models")
            .open(&mut open)
            .default_width(640.0)
            .show(ctx, |ui| {
                ui.weak(match context.free_bytes {
                    Some(free) => format!(
                        "{} free for models; estimates at each model's default size",
                        format_gb(free)
                    ),
                    None => "Free memory unknown; estimates at each model's default size".into(),
                });
                ui.horizontal(|ui| {
                    let label = ui.label("Hub token for gated models");
                    ui.add(
                        egui::TextEdit::singleline(&mut self.token_draft)
                            .password(true)
                            .hint_text("HF_TOKEN or the hub token file when empty")
                            .desired_width(260.0),
                    )
                    .labelled_by(label.id);
                });
                egui::ScrollArea::vertical().show(ui, |ui| {
                    for entry in catalog::entries() {
                        ui.separator();
                        if let Some(chosen) = self.entry_ui(ui, entry, context) {
                            action = Some(chosen);
                        }
                    }
                });
            });
        self.open = open;
        action
    }

    fn entry_ui(
        &self,
        ui: &mut egui::Ui,
        entry: &'static CatalogEntry,
        context: &ModelsContext,
    ) -> Option<ModelsAction> {
        let mut action = None;
        let estimate = fit::estimate(
            entry,
            context.precision,
            entry.defaults.width_px,
            entry.defaults.height_px,
        );
        let verdict = Verdict::of(&estimate, context.free_bytes);
        ui.horizontal(|ui| {
            ui.strong(entry.name);
            ui.weak(entry.capabilities.describe());
        });
        let fit_text = format!(
            "Download {} · needs {} ({} in low-memory mode): {}",
            format_gb(entry.approx_download_bytes(context.fp16_files)),
            format_gb(estimate.full_bytes),
            format_gb(estimate.staged_bytes),
            verdict.describe()
        );
        match verdict {
            Verdict::TooBig => ui.colored_label(ui.visuals().warn_fg_color, fit_text),
            _ => ui.label(fit_text),
        };
        ui.weak(entry.licence);
        ui.horizontal(
            |ui| match (self.downloads.get(entry.id), self.located.get(entry.id)) {
                (Some(DownloadState::Running { download, progress }), _) => {
                    let (fraction, text) = match progress {
                        Some(p) if p.bytes_total > 0 => (
                            p.bytes_done as f32 / p.bytes_total as f32,
                            format!(
                                "{} of {} · {:.1} MB/s",
                                format_gb(p.bytes_done),
                                format_gb(p.bytes_total),
                                p.bytes_per_sec / 1e6
                            ),
                        ),
                        _ => (0.0, "Starting…".to_string()),
                    };
                    ui.add(
                        egui::ProgressBar::new(fraction)
                            .text(text)
                            .desired_width(320.0),
                    );
                    if ui.button("Cancel download").clicked() {
                        action = Some(ModelsAction::Cancel(*download));
                    }
                }
                (_, Some(found)) => {
                    ui.label(if found.in_user_cache {
                        "In your Hugging Face cache"
                    } else {
                        "Downloaded"
                    });
                    if ui.button(format!("Use {}", entry.name)).clicked() {
                        action = Some(ModelsAction::Use(found.folder.clone()));
                    }
                }
                (failed, None) => {
                    if let Some(DownloadState::Failed(why)) = failed {
                        ui.colored_label(ui.visuals().error_fg_color, why);
                    }
                    let label = if entry.gated {
                        format!("Download {} (needs a token)", entry.name)
                    } else {
                        format!("Download {}", entry.name)
                    };
                    if ui.button(label).clicked() {
                        let token = HubToken::new(self.token_draft.clone());
                        action = Some(ModelsAction::Download(entry, token));
                    }
                }
            },
        );
        action
    }
}
