//! The eframe window: a thin client of the engine. `EaselApp` only wires the panels to the
//! engine and to the files the session keeps; each panel owns its own state and drawing.

mod app_files;
mod app_jobs;
mod app_models;
mod app_settings;
pub mod background;
pub mod canvas;
pub mod engine_link;
pub mod model_list;
pub mod models_panel;
pub mod prompt_panel;
pub mod references;
pub mod results;
pub mod session;
pub mod settings_panel;
pub mod status_bar;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use easel_engine::engine::{EngineConfig, Event, JobId, JobOutput};
use easel_engine::hub::CacheRoots;
use easel_engine::output::{save_new_result, save_png_with_parameters, RecalledParameters};
use easel_engine::pipeline::request::{GenerateRequest, Reference, SourceImage};
use easel_engine::settings::{Resolved, Settings};
use eframe::egui;

use background::Background;
use canvas::{CanvasAction, CanvasPanel};
use engine_link::EngineLink;
use model_list::{read_model, scan_models_dir, ModelEntry};
use models_panel::ModelsPanel;
use prompt_panel::{PromptAction, PromptContext, PromptPanel};
use references::{ReferenceAction, References, Version};
use results::{ResultAction, ResultEntry, ResultsPanel};
use session::{SavedReference, Session, MASKS_DIR, PASTED_DIR};
use settings_panel::SettingsPanel;
use status_bar::StatusBar;

/// How often the session is written when something changed.
const PERSIST_INTERVAL: Duration = Duration::from_secs(2);

/// The folders the window reads and writes.
#[derive(Debug, Clone)]
pub struct AppPaths {
    /// Model folders to offer (`EASEL_MODELS_DIR`, else `./models`).
    pub models_dir: PathBuf,
    /// Where every result is saved (`EASEL_OUTPUTS_DIR`, else `./outputs`).
    pub outputs_dir: PathBuf,
    /// Where the session and its masks live (`EASEL_DATA_DIR`, else the platform's data
    /// folder for Easel).
    pub data_dir: PathBuf,
}

impl AppPaths {
    /// The models and outputs folders of `settings`; the session in `EASEL_DATA_DIR`, else
    /// the platform's data folder.
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            models_dir: settings.models_dir.clone(),
            outputs_dir: settings.outputs_dir.clone(),
            data_dir: std::path::absolute(
                std::env::var_os("EASEL_DATA_DIR")
                    .map(PathBuf::from)
                    .or_else(|| eframe::storage_dir("Easel"))
                    .unwrap_or_else(|| PathBuf::from(".easel")),
            )
            .unwrap_or_else(|_| PathBuf::from("/tmp/easel")),
        }
    }

    /// What is wrong with the folders Easel writes to (created when missing), one message
    /// each: said at start rather than at the first save.
    pub fn problems(&self) -> Vec<String> {
        [
            ("results", &self.outputs_dir),
            ("models", &self.models_dir),
            ("the session", &self.data_dir),
        ]
        .into_iter()
        .filter_map(|(what, dir)| {
            easel_engine::settings::folders::unwritable_reason(dir).map(|why| {
                format!("{what} cannot be saved: {why}; choose another folder in Settings")
            })
        })
        .collect()
    }
}

/// A result after the outputs writer has handled it.
struct SavedResult {
    job: JobId,
    output: Box<JobOutput>,
    saved: Result<PathBuf, String>,
}

/// The window.
pub struct EaselApp {
    paths: AppPaths,
    engine_config: EngineConfig,
    engine: EngineLink,
    /// The prompt panel.
    pub prompt: PromptPanel,
    /// The references panel (init image and masks).
    pub references: References,
    /// The canvas panel.
    pub canvas: CanvasPanel,
    /// The results panel.
    pub results: ResultsPanel,
    /// The status bar.
    pub status: StatusBar,
    models: Vec<ModelEntry>,
    opened_models: Vec<PathBuf>,
    /// Jobs sent and not yet ended, in order.
    jobs: Vec<JobId>,
    saving: Background<SavedResult>,
    prompt_cut_off: Option<String>,
    restore: Option<Vec<SavedReference>>,
    saved_session: Option<Session>,
    /// Mask file name -> (reference id, mask revision) last written to it.
    saved_masks: HashMap<String, (u64, u64)>,
    mask_writes: Background<Result<(), String>>,
    last_persist: Instant,
    /// The settings in force and where they came from.
    settings: Resolved,
    /// Resolves the settings again after the window wrote the file (same flags and env).
    resolve_settings: Box<dyn Fn() -> Resolved>,
    /// The settings window.
    pub settings_panel: SettingsPanel,
    /// The Models window (catalog, downloads).
    pub models_panel: ModelsPanel,
    /// The hub's address for downloads; `None` for `HF_ENDPOINT` or huggingface.co.
    hub_endpoint: Option<String>,
}

impl EaselApp {
    /// The window state, restored from the session in `paths.data_dir`; the engine starts
    /// on the first frame.
    pub fn new(paths: AppPaths, engine_config: EngineConfig) -> Self {
        let (session, problem) = Session::load(&paths.data_dir);
        // Catalog models found on disk (the user's hub cache included) get their folders
        // assembled before the scan, so the picker offers them.
        let mut models_panel = ModelsPanel::default();
        models_panel.refresh(&CacheRoots::with_user_cache(&paths.models_dir));
        let mut models = scan_models_dir(&paths.models_dir);
        for dir in &session.opened_models {
            if let Ok(entry) = read_model(dir) {
                if !models.iter().any(|m| m.dir == entry.dir) {
                    models.push(entry);
                }
            }
        }
        let mut prompt = PromptPanel {
            settings: session.prompt.clone(),
        };
        if prompt.settings.model.is_none() {
            if let Some(first) = models.first() {
                prompt.settings.pick_model(first);
            }
        }
        // Until `with_settings` says otherwise: a file beside the session, no environment.
        let default_settings_file = paths.data_dir.join("easel.toml");
        let mut status = StatusBar::default();
        for problem in paths.problems().into_iter().chain(problem) {
            status.show_error(problem);
        }
        Self {
            engine_config,
            engine: EngineLink::NotStarted,
            prompt,
            references: References::default(),
            canvas: CanvasPanel::with_brush(session.brush),
            results: ResultsPanel::default(),
            status,
            models,
            opened_models: session.opened_models.clone(),
            jobs: Vec::new(),
            saving: Background::default(),
            prompt_cut_off: None,
            restore: Some(session.references.clone()),
            saved_session: Some(session),
            saved_masks: HashMap::new(),
            mask_writes: Background::default(),
            last_persist: Instant::now(),
            settings: easel_engine::settings::resolve(&default_settings_file, &|_| None, &[]),
            resolve_settings: Box::new(move || {
                easel_engine::settings::resolve(&default_settings_file, &|_| None, &[])
            }),
            settings_panel: SettingsPanel::default(),
            models_panel,
            hub_endpoint: None,
            paths,
        }
    }

    /// Downloads from `endpoint` instead of `HF_ENDPOINT` or huggingface.co (tests' fake hub).
    #[cfg(test)]
    pub fn with_hub_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.hub_endpoint = Some(endpoint.into());
        self
    }

    /// Whether jobs are queued or running.
    pub fn is_busy(&self) -> bool {
        !self.jobs.is_empty()
    }

    /// Whether the engine thread is running.
    pub fn engine_is_running(&self) -> bool {
        matches!(self.engine, EngineLink::Running(_))
    }

    /// Whether results are being written or images read.
    pub fn has_background_work(&self) -> bool {
        self.saving.is_busy()
            || self.references.is_loading()
            || self.mask_writes.is_busy()
            || self.canvas.is_extending()
    }

    /// One frame: take in what the engine and background work sent, then draw the panels and
    /// act on what the user did.
    pub fn show(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        if matches!(self.engine, EngineLink::NotStarted) {
            self.start_engine(&ctx);
        }
        if let Some(saved) = self.restore.take() {
            self.restore_references(&ctx, saved);
        }
        self.take_engine_events(&ctx);
        self.take_background_results();
        self.take_dropped_and_pasted(&ctx);

        let mut prompt_action = None;
        let mut reference_action = None;
        let mut canvas_action = None;
        let mut result_action = None;
        egui::Panel::bottom("status").show(ui, |ui| {
            if let EngineLink::Stopped { reason } = &self.engine {
                let reason = reason.clone();
                ui.horizontal(|ui| {
                    ui.colored_label(
                        ui.visuals().error_fg_color,
                        format!("The engine stopped ({reason}). Your prompt, mask and results are kept."),
                    );
                    if ui.button("Restart engine").clicked() {
                        self.start_engine(&ctx);
                    }
                });
            }
            ui.horizontal_wrapped(|ui| {
                if ui.button("Settings").clicked() {
                    self.settings_panel.open = !self.settings_panel.open;
                }
                if ui.button("Models").clicked() {
                    self.models_panel.open = !self.models_panel.open;
                }
                if self.has_background_work() {
                    ui.spinner().on_hover_text("Saving results or reading images");
                }
                self.status.ui(ui);
            });
        });
        let models_context = self.models_context();
        let reference_sizes_px: Vec<(u32, u32)> = self
            .references
            .edit_references()
            .map(|r| r.image.dimensions())
            .collect();
        egui::Panel::left("prompt")
            .resizable(true)
            .default_size(320.0)
            .show(ui, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| {
                    let context = PromptContext {
                        models: &self.models,
                        mode: self.references.mode(),
                        mode_name: self.references.mode_name(),
                        busy: self.is_busy(),
                        prompt_cut_off: self.prompt_cut_off.as_deref(),
                        init_size_px: self.references.init().map(|r| r.image.dimensions()),
                        reference_sizes_px: &reference_sizes_px,
                        free_bytes: models_context.free_bytes,
                        precision: models_context.precision,
                    };
                    prompt_action = self.prompt.ui(ui, &context);
                });
            });
        egui::Panel::right("results")
            .resizable(true)
            .default_size(380.0)
            .show(ui, |ui| result_action = self.results.ui(ui));
        egui::CentralPanel::default().show(ui, |ui| {
            reference_action = self.references.ui(ui);
            ui.separator();
            let native_px = self
                .models
                .iter()
                .find(|m| Some(&m.dir) == self.prompt.settings.model.as_ref())
                .map(|m| m.native_size_px);
            canvas_action = self.canvas.ui(ui, self.references.init_mut(), native_px);
        });

        if let Some((key, value)) = self.settings_panel.ui(&ctx, &self.settings) {
            self.change_setting(&ctx, key, &value);
        }
        if let Some(action) = self.models_panel.ui(&ctx, &models_context) {
            self.act_on_models(action);
        }
        match prompt_action {
            Some(PromptAction::Generate) => self.generate(),
            Some(PromptAction::Cancel) => self.cancel_all(),
            Some(PromptAction::OpenModelFolder) => self.open_model_folder(),
            None => {}
        }
        match reference_action {
            Some(ReferenceAction::Add) => self.add_images_by_dialog(&ctx),
            Some(ReferenceAction::Recall(id)) => {
                let recalled = self
                    .references
                    .items
                    .iter()
                    .find(|r| r.id == id)
                    .and_then(|r| r.parameters.clone());
                if let Some(recalled) = recalled {
                    self.prompt.settings.recall(&recalled, None, &self.models);
                }
            }
            None => {}
        }
        match canvas_action {
            Some(CanvasAction::SaveMask) => self.save_mask_by_dialog(),
            Some(CanvasAction::LoadMask) => self.load_mask_by_dialog(),
            None => {}
        }
        if let Some(action) = result_action {
            self.act_on_result(action);
        }
        if self.last_persist.elapsed() >= PERSIST_INTERVAL {
            self.persist(Some(&ctx));
        }
    }
}

impl eframe::App for EaselApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.show(ui);
    }

    /// Called by eframe on exit (and periodically): write everything before returning.
    fn save(&mut self, _storage: &mut dyn eframe::Storage) {
        self.persist(None);
    }
}

/// Opens the window; returns when it closes.
pub fn run_window(
    paths: AppPaths,
    engine_config: EngineConfig,
    resolve: Box<dyn Fn() -> Resolved>,
) -> anyhow::Result<()> {
    let fresh_session = !paths.data_dir.join(session::SESSION_FILE).exists();
    let icon = eframe::icon_data::from_png_bytes(include_bytes!("../../assets/icon.png")).ok();
    let mut viewport = egui::ViewportBuilder::default()
        .with_title("Easel")
        .with_inner_size([1400.0, 900.0])
        .with_min_inner_size([800.0, 500.0])
        .with_drag_and_drop(true);
    if let Some(icon) = icon {
        viewport = viewport.with_icon(Arc::new(icon));
    }
    let options = eframe::NativeOptions {
        viewport,
        ..Default::default()
    };
    eframe::run_native(
        "Easel",
        options,
        Box::new(move |_cc| {
            Ok(Box::new(
                EaselApp::new(paths, engine_config).with_settings(resolve, fresh_session),
            ))
        }),
    )
    .map_err(|e| anyhow::anyhow!("could not open the window: {e}"))
}
