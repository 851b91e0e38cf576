//! The eframe window: a thin client of the engine. `EaselApp` only wires the panels to the
//! engine and to the files the session keeps; each panel owns its own state and drawing.

pub mod background;
pub mod canvas;
pub mod engine_link;
pub mod model_list;
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

use easel::engine::{EngineConfig, Event, JobId, JobOutput};
use easel::output::save_png_with_parameters;
use easel::pipeline::request::{GenerateRequest, SourceImage};
use easel::settings::{Resolved, Settings};
use eframe::egui;

use background::Background;
use canvas::{CanvasAction, CanvasPanel};
use engine_link::EngineLink;
use model_list::{scan_models_dir, ModelEntry};
use prompt_panel::{PromptAction, PromptContext, PromptPanel};
use references::{ReferenceAction, References};
use results::{ResultAction, ResultEntry, ResultsPanel};
use session::{SavedReference, Session, MASKS_DIR};
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
            data_dir: std::env::var_os("EASEL_DATA_DIR")
                .map(PathBuf::from)
                .or_else(|| eframe::storage_dir("Easel"))
                .unwrap_or_else(|| PathBuf::from(".easel")),
        }
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
}

impl EaselApp {
    /// The window state, restored from the session in `paths.data_dir`; the engine starts
    /// on the first frame.
    pub fn new(paths: AppPaths, engine_config: EngineConfig) -> Self {
        let (session, problem) = Session::load(&paths.data_dir);
        let mut models = scan_models_dir(&paths.models_dir);
        for dir in &session.opened_models {
            if let Ok(entry) = ModelEntry::read(dir) {
                if !models.iter().any(|m| m.path == entry.path) {
                    models.push(entry);
                }
            }
        }
        let mut prompt = PromptPanel {
            settings: session.prompt.clone(),
        };
        if prompt.settings.model.is_none() {
            if let Some(first) = models.first() {
                prompt.settings.model = Some(first.path.clone());
                (prompt.settings.width_px, prompt.settings.height_px) = first.native_size_px;
            }
        }
        // Until `with_settings` says otherwise: a file beside the session, no environment.
        let default_settings_file = paths.data_dir.join("easel.toml");
        let mut status = StatusBar::default();
        if let Some(problem) = problem {
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
            settings: easel::settings::resolve(&default_settings_file, &|_| None, &[]),
            resolve_settings: Box::new(move || {
                easel::settings::resolve(&default_settings_file, &|_| None, &[])
            }),
            settings_panel: SettingsPanel::default(),
            paths,
        }
    }

    /// Where the settings come from: `resolve` is called again whenever the window writes the
    /// settings file, so flags and environment keep their precedence.
    pub fn with_settings(
        mut self,
        resolve: Box<dyn Fn() -> Resolved>,
        fresh_session: bool,
    ) -> Self {
        let resolved = resolve();
        self.apply_settings(&resolved, fresh_session);
        self.settings = resolved;
        self.resolve_settings = resolve;
        self
    }

    /// Writes one setting to the file, then takes in what it changes: folders at once, the
    /// device and precision by restarting the engine when no job runs.
    fn change_setting(&mut self, ctx: &egui::Context, key: &str, value: &str) {
        if let Err(error) = easel::settings::write_key(&self.settings.file, key, value) {
            self.status.show_error(error);
            return;
        }
        let before = self.settings.settings.clone();
        self.settings = (self.resolve_settings)();
        let now = &self.settings.settings;
        if now.models_dir != before.models_dir {
            self.paths.models_dir = now.models_dir.clone();
            self.models = scan_models_dir(&self.paths.models_dir);
        }
        self.paths.outputs_dir = now.outputs_dir.clone();
        self.engine_config.warm_up = now.warm_up;
        let policy = now.residency_policy();
        if policy != self.engine_config.residency {
            self.engine_config.residency = policy;
            if let Ok(engine) = self.engine.engine() {
                if let Err(error) = engine.send(easel::engine::Request::SetResidency(policy)) {
                    self.status.show_error(error.to_string());
                }
            }
        }
        if now.device != before.device
            || now.dtype != before.dtype
            || now.low_memory != before.low_memory
        {
            self.engine_config.device = now.device;
            self.engine_config.dtype = easel::settings::dtype_of(now.dtype);
            self.engine_config.staged = now.low_memory;
            if self.is_busy() {
                self.status.show_error("The new device, precision or low-memory mode applies after the running jobs: restart the engine then");
            } else {
                self.engine = EngineLink::NotStarted;
                self.start_engine(ctx);
            }
        }
    }

    /// Takes in the resolved settings: their problems are shown, and a fresh session starts
    /// from their defaults (model, sampler, steps, guidance, size).
    pub fn apply_settings(&mut self, resolved: &Resolved, fresh_session: bool) {
        if let Some(problem) = resolved.problems.first() {
            let more = resolved.problems.len() - 1;
            let more = if more > 0 {
                format!(" (and {more} more: see `easel config`)")
            } else {
                String::new()
            };
            self.status.show_error(format!("Settings: {problem}{more}"));
        }
        let defaults = &resolved.settings;
        let settings = &mut self.prompt.settings;
        if let Some(entry) = defaults
            .default_model
            .as_ref()
            .and_then(|name| self.models.iter().find(|m| &m.name == name))
        {
            if fresh_session || settings.model.is_none() {
                settings.model = Some(entry.path.clone());
            }
        }
        if fresh_session {
            settings.sampler = defaults.sampler;
            settings.steps = defaults.steps;
            settings.guidance = defaults.guidance;
            (settings.width_px, settings.height_px) = (defaults.width, defaults.height);
        }
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
        self.saving.is_busy() || self.references.is_loading() || self.mask_writes.is_busy()
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
                if self.has_background_work() {
                    ui.spinner().on_hover_text("Saving results or reading images");
                }
                self.status.ui(ui);
            });
        });
        egui::Panel::left("prompt")
            .resizable(true)
            .default_size(320.0)
            .show(ui, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| {
                    let context = PromptContext {
                        models: &self.models,
                        mode: self.references.mode(),
                        busy: self.is_busy(),
                        prompt_cut_off: self.prompt_cut_off.as_deref(),
                        init_size_px: self.references.init().map(|r| r.image.dimensions()),
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
            canvas_action = self.canvas.ui(ui, self.references.init_mut());
        });

        if let Some((key, value)) = self.settings_panel.ui(&ctx, &self.settings) {
            self.change_setting(&ctx, key, &value);
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
                    self.prompt.settings.recall_text(&recalled, &self.models);
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
            self.persist(&ctx, false);
        }
    }

    fn start_engine(&mut self, ctx: &egui::Context) {
        self.jobs.clear();
        self.engine.start(ctx, &self.engine_config);
        match self.engine.engine() {
            Ok(engine) => {
                self.status.device = engine.device_name().to_string();
                self.status.dtype = format!("{:?}", engine.dtype()).to_lowercase();
                if let Some(warning) = engine.dtype_warning() {
                    self.status.show_error(warning.to_string());
                }
            }
            Err(_) => self.status.device = "engine stopped".to_string(),
        }
    }

    /// Drains the engine's events; keeps only the newest preview of the frame.
    fn take_engine_events(&mut self, ctx: &egui::Context) {
        let mut newest_preview = None;
        for event in self.engine.drain() {
            self.status.on_event(&event);
            match event {
                Event::Step {
                    job,
                    step,
                    of,
                    preview: Some(preview),
                    ..
                } => newest_preview = Some((job, step, of, preview)),
                Event::Finished { job, output } => {
                    self.jobs.retain(|j| *j != job);
                    self.prompt_cut_off = output.prompt_cut_off.clone();
                    self.save_result(ctx, job, output);
                }
                Event::Failed { job, .. } | Event::Cancelled { job } => {
                    self.jobs.retain(|j| *j != job);
                    self.results.end_preview(job);
                    if newest_preview.as_ref().is_some_and(|p| p.0 == job) {
                        newest_preview = None;
                    }
                }
                _ => {}
            }
        }
        if let Some((job, step, of, preview)) = newest_preview {
            if self.jobs.contains(&job) {
                self.results.set_preview(ctx, job, step, of, &preview);
            }
        }
        if !self.engine_is_running() {
            self.jobs.clear();
        }
    }

    /// Writes a result to the outputs folder on a background thread; it is shown when written.
    fn save_result(&mut self, ctx: &egui::Context, job: JobId, output: Box<JobOutput>) {
        let dir = self.paths.outputs_dir.clone();
        let spawned = self.saving.spawn("save-result", ctx, move || {
            let saved = next_output_path(&dir, output.parameters.seed).and_then(|path| {
                save_png_with_parameters(&path, &output.image, &output.parameters)
                    .map(|()| path)
                    .map_err(|e| e.to_string())
            });
            SavedResult { job, output, saved }
        });
        if let Err(error) = spawned {
            self.status.show_error(error);
        }
    }

    fn take_background_results(&mut self) {
        for result in self.saving.poll() {
            if let Err(error) = &result.saved {
                self.status
                    .show_error(format!("The result is shown but was not saved: {error}"));
            }
            let output = *result.output;
            self.results.push(ResultEntry::new(
                result.job,
                Arc::new(output.image),
                output.parameters,
                result.saved,
            ));
        }
        for error in self.references.poll_loads() {
            self.status.show_error(error);
        }
        for written in self.mask_writes.poll() {
            if let Err(error) = written {
                self.status.show_error(error);
            }
        }
    }

    /// Files dropped on the window and images or image paths pasted (outside text fields).
    fn take_dropped_and_pasted(&mut self, ctx: &egui::Context) {
        let (dropped, pasted) = ctx.input(|i| {
            let dropped: Vec<PathBuf> = i
                .raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_path_buf())
                .filter(|p| !p.as_os_str().is_empty())
                .collect();
            let pasted: Vec<egui::Event> = i
                .events
                .iter()
                .filter(|e| matches!(e, egui::Event::PasteImage(_) | egui::Event::Paste(_)))
                .cloned()
                .collect();
            (dropped, pasted)
        });
        for path in dropped {
            self.add_image_file(ctx, path);
        }
        let typing = ctx.egui_wants_keyboard_input();
        for event in pasted {
            match event {
                egui::Event::PasteImage(image) => {
                    let rgba: Vec<u8> = image.pixels.iter().flat_map(|c| c.to_array()).collect();
                    let rgb = image::RgbaImage::from_raw(
                        image.size[0] as u32,
                        image.size[1] as u32,
                        rgba,
                    )
                    .map(|i| image::DynamicImage::ImageRgba8(i).to_rgb8());
                    match rgb {
                        Some(rgb) => {
                            self.references.add(rgb, None, true);
                        }
                        None => self.status.show_error("the pasted image could not be read"),
                    }
                }
                egui::Event::Paste(text) if !typing => {
                    let path = PathBuf::from(text.trim().trim_start_matches("file://"));
                    if path.is_file() {
                        self.add_image_file(ctx, path);
                    }
                }
                _ => {}
            }
        }
    }

    /// Adds an image file as the new init image: the path a drop, a dialog and a pasted path
    /// all take.
    pub fn add_image_file(&mut self, ctx: &egui::Context, path: PathBuf) {
        if let Err(error) = self.references.load_file(ctx, path, None, true) {
            self.status.show_error(error);
        }
    }

    fn restore_references(&mut self, ctx: &egui::Context, saved: Vec<SavedReference>) {
        let masks_dir = self.paths.data_dir.join(MASKS_DIR);
        for reference in saved {
            let mask = reference.mask_file.map(|name| masks_dir.join(name));
            if let Err(error) =
                self.references
                    .load_file(ctx, reference.path, mask, reference.is_init)
            {
                self.status.show_error(error);
            }
        }
    }

    /// Queues the batch the prompt panel describes.
    pub fn generate(&mut self) {
        let feather_px = self.canvas.brush.feather_px;
        let settings = &mut self.prompt.settings;
        let Some(model) = settings.model.clone() else {
            self.status
                .show_error("Choose a model first (Open… picks a diffusers model folder).");
            return;
        };
        if !settings.seed_locked {
            settings.seed = u64::from(rand::random::<u32>());
        }
        let source = self.references.init().map(|reference| SourceImage {
            image: (*reference.image).clone(),
            strength: settings.strength,
            mask: (!reference.mask.is_empty()).then(|| reference.mask.pixels().clone()),
            feather_px,
        });
        // With an init image the output takes its size, so the mask lines up pixel for pixel.
        let size = match source {
            Some(_) => (None, None),
            None => (Some(settings.width_px), Some(settings.height_px)),
        };
        let negative = settings.negative_prompt.trim();
        for index in 0..settings.batch_count.max(1) {
            let request = GenerateRequest {
                model: model.clone(),
                prompt: settings.prompt.clone(),
                negative_prompt: (!negative.is_empty()).then(|| negative.to_string()),
                sampler: settings.sampler,
                steps: settings.steps,
                guidance: settings.guidance,
                seed: settings.seed.wrapping_add(index as u64),
                width: size.0,
                height: size.1,
                source: source.clone(),
                paste_back: true,
            };
            match self.engine.generate(request) {
                Ok(job) => self.jobs.push(job),
                Err(error) => {
                    self.status.show_error(error.to_string());
                    break;
                }
            }
        }
    }

    /// Cancels every queued and running job.
    pub fn cancel_all(&mut self) {
        for job in self.jobs.clone() {
            if let Err(error) = self.engine.cancel(job) {
                self.status.show_error(error.to_string());
                break;
            }
        }
    }

    fn open_model_folder(&mut self) {
        let Some(dir) = rfd::FileDialog::new()
            .set_title("Open a diffusers model folder")
            .pick_folder()
        else {
            return;
        };
        match ModelEntry::read(&dir) {
            Ok(entry) => {
                self.prompt.settings.model = Some(entry.path.clone());
                (
                    self.prompt.settings.width_px,
                    self.prompt.settings.height_px,
                ) = entry.native_size_px;
                if !self.models.iter().any(|m| m.path == entry.path) {
                    self.opened_models.push(entry.path.clone());
                    self.models.push(entry);
                }
            }
            Err(error) => self.status.show_error(error),
        }
    }

    fn add_images_by_dialog(&mut self, ctx: &egui::Context) {
        let picked = rfd::FileDialog::new()
            .set_title("Add reference images")
            .add_filter("Images", &["png", "jpg", "jpeg", "webp"])
            .pick_files()
            .unwrap_or_default();
        for path in picked {
            self.add_image_file(ctx, path);
        }
    }

    fn save_mask_by_dialog(&mut self) {
        let Some(reference) = self.references.init() else {
            return;
        };
        let name = format!("{}-mask.png", reference.name.trim_end_matches(".png"));
        let Some(path) = rfd::FileDialog::new()
            .set_file_name(name)
            .add_filter("PNG", &["png"])
            .save_file()
        else {
            return;
        };
        if let Err(error) = reference.mask.save_png(&path) {
            self.status.show_error(error);
        }
    }

    fn load_mask_by_dialog(&mut self) {
        let Some(path) = rfd::FileDialog::new()
            .add_filter("Images", &["png", "jpg", "jpeg", "webp"])
            .pick_file()
        else {
            return;
        };
        if let Err(error) = self.load_mask_file(&path) {
            self.status.show_error(error);
        }
    }

    /// Replaces the init image's mask by the one in `path` (undoable).
    pub fn load_mask_file(&mut self, path: &Path) -> Result<(), String> {
        let pixels = canvas::mask::MaskLayer::read_png(path)?;
        let reference = self
            .references
            .init_mut()
            .ok_or("choose an init image before loading a mask")?;
        reference.mask.replace(&pixels)
    }

    fn act_on_result(&mut self, action: ResultAction) {
        match action {
            ResultAction::UseAsInit(index) => {
                if let Some(entry) = self.results.history.get(index) {
                    let path = entry.saved.as_ref().ok().cloned();
                    self.references.add((*entry.image).clone(), path, true);
                }
            }
            ResultAction::Recall(index) => {
                if let Some(entry) = self.results.history.get(index) {
                    self.prompt.settings.recall(&entry.parameters);
                }
            }
            ResultAction::SaveAs(index) => {
                let Some(entry) = self.results.history.get(index) else {
                    return;
                };
                let name = format!("easel-{}.png", entry.parameters.seed);
                if let Some(path) = rfd::FileDialog::new()
                    .set_file_name(name)
                    .add_filter("PNG", &["png"])
                    .save_file()
                {
                    if let Err(error) =
                        save_png_with_parameters(&path, &entry.image, &entry.parameters)
                    {
                        self.status.show_error(error.to_string());
                    }
                }
            }
        }
    }

    /// The session as it stands.
    fn session(&self) -> Session {
        let references = self
            .references
            .items
            .iter()
            .filter_map(|r| {
                let path = r.path.clone()?;
                Some(SavedReference {
                    path,
                    mask_file: (!r.mask.is_empty()).then(|| mask_file_name(r.id)),
                    is_init: self.references.init == Some(r.id),
                })
            })
            .collect();
        Session {
            prompt: self.prompt.settings.clone(),
            brush: self.canvas.brush,
            references,
            opened_models: self.opened_models.clone(),
        }
    }

    /// Writes the session and any mask changed since it was last written. Masks are encoded
    /// on background threads (a 4096 px mask takes a while) unless `wait` is set, as at exit;
    /// the session file is small.
    pub fn persist(&mut self, ctx: &egui::Context, wait: bool) {
        self.last_persist = Instant::now();
        // Mid-stroke, or while the last session's images are still being read back, what is
        // on screen is not yet the whole session: keep the file as it is.
        let painting = self.references.items.iter().any(|r| r.mask.is_painting());
        if painting || self.references.is_loading() || self.restore.is_some() {
            return;
        }
        let session = self.session();
        let masks_dir = self.paths.data_dir.join(MASKS_DIR);
        let ids_by_file: HashMap<String, u64> = self
            .references
            .items
            .iter()
            .filter(|r| r.path.is_some() && !r.mask.is_empty())
            .map(|r| (mask_file_name(r.id), r.id))
            .collect();
        for (name, id) in ids_by_file {
            let Some(reference) = self.references.items.iter().find(|r| r.id == id) else {
                continue;
            };
            let stamp = (id, reference.mask.revision());
            if self.saved_masks.get(&name) == Some(&stamp) {
                continue;
            }
            let pixels = reference.mask.pixels().clone();
            let path = masks_dir.join(&name);
            let write = move || write_mask_atomically(&path, &pixels);
            let outcome = if wait {
                write()
            } else {
                self.mask_writes.spawn("save-mask", ctx, write)
            };
            match outcome {
                Ok(()) => {
                    self.saved_masks.insert(name, stamp);
                }
                Err(error) => self.status.show_error(error),
            }
        }
        if self.saved_session.as_ref() != Some(&session) {
            match session.save(&self.paths.data_dir) {
                Ok(()) => self.saved_session = Some(session),
                Err(error) => self.status.show_error(error),
            }
        }
    }
}

impl eframe::App for EaselApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.show(ui);
    }

    /// Called by eframe on exit (and periodically): write everything before returning.
    fn save(&mut self, _storage: &mut dyn eframe::Storage) {
        self.persist(&egui::Context::default(), true);
    }
}

/// The file a reference's mask is kept in, inside the masks folder.
fn mask_file_name(reference: u64) -> String {
    format!("mask-{reference}.png")
}

/// Writes a mask PNG beside its target and renames it, so a crash keeps the last good mask.
fn write_mask_atomically(path: &Path, pixels: &image::GrayImage) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("could not create {}: {e}", dir.display()))?;
    }
    let partial = path.with_extension("png.tmp");
    pixels
        .save_with_format(&partial, image::ImageFormat::Png)
        .and_then(|()| std::fs::rename(&partial, path).map_err(image::ImageError::IoError))
        .map_err(|e| format!("could not save the mask to {}: {e}", path.display()))
}

/// The next free `NNNNN-SEED.png` in `dir` (numbered as A1111 numbers its outputs).
fn next_output_path(dir: &Path, seed: u64) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("could not create the outputs folder {}: {e}", dir.display()))?;
    let highest = std::fs::read_dir(dir)
        .map_err(|e| format!("could not read the outputs folder {}: {e}", dir.display()))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.split('-').next()?.parse::<u64>().ok()
        })
        .max()
        .unwrap_or(0);
    Ok(dir.join(format!("{:05}-{seed}.png", highest + 1)))
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
