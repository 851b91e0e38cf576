//! Settings and the session: taking in resolved settings, writing a changed key, and saving
//! the session and its masks.

use super::*;

impl EaselApp {
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
    pub(super) fn change_setting(&mut self, ctx: &egui::Context, key: &str, value: &str) {
        if let Err(error) = easel_engine::settings::write_key(&self.settings.file, key, value) {
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
                if let Err(error) = engine.send(easel_engine::engine::Request::SetResidency(policy))
                {
                    self.status.show_error(error.to_string());
                }
            }
        }
        if now.device != before.device
            || now.dtype != before.dtype
            || now.low_memory != before.low_memory
        {
            self.engine_config.device = now.device;
            self.engine_config.dtype = easel_engine::settings::dtype_of(now.dtype);
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
                settings.model = Some(entry.dir.clone());
            }
        }
        if fresh_session {
            settings.sampler = defaults.sampler;
            settings.steps = defaults.steps;
            settings.guidance = defaults.guidance;
            (settings.width_px, settings.height_px) = (defaults.width, defaults.height);
        }
    }

    /// The session as it stands.
    pub(super) fn session(&self) -> Session {
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
                    is_edit: r.edit,
                    versions: r.saved_versions(),
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
    /// on background threads woken through `background` (a 4096 px mask takes a while), or here
    /// and now when it is `None`, as at exit;
    /// the session file is small.
    pub fn persist(&mut self, background: Option<&egui::Context>) {
        self.last_persist = Instant::now();
        // Mid-stroke, or while the last session's images are still being read back, what is
        // on screen is not yet the whole session: keep the file as it is.
        let painting = self.references.items.iter().any(|r| r.mask.is_painting());
        if painting || self.references.is_loading() || self.restore.is_some() {
            return;
        }
        self.keep_images_without_files(background);
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
            let write = move || write_png_atomically(&path, &pixels);
            let outcome = match background {
                Some(ctx) => self.mask_writes.spawn("save-mask", ctx, write),
                None => write(),
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

impl EaselApp {
    /// Pasted images (and results used as init whose save failed) have no file: each gets
    /// one in the data folder, written now, so that the session brings them back with their
    /// masks after a restart (and written again if that write failed).
    fn keep_images_without_files(&mut self, background: Option<&egui::Context>) {
        let folder = self.paths.data_dir.join(PASTED_DIR);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        // With no write under way, a pasted image whose file is missing (its write failed, or
        // the file went) is written again: the pixels are still here, so nothing is lost.
        let writing = self.mask_writes.is_busy();
        let mut writes = Vec::new();
        for reference in &mut self.references.items {
            let path = match &reference.path {
                None => folder.join(format!("pasted-{stamp}-{}.png", reference.id)),
                Some(path) if !writing && path.starts_with(&folder) && !path.is_file() => {
                    path.clone()
                }
                Some(_) => continue,
            };
            reference.path = Some(path.clone());
            writes.push((path, std::sync::Arc::clone(&reference.image)));
        }
        for (path, image) in writes {
            let write = move || write_png_atomically(&path, &*image);
            let outcome = match background {
                Some(ctx) => self.mask_writes.spawn("save-pasted", ctx, write),
                None => write(),
            };
            if let Err(error) = outcome {
                self.status.show_error(error);
            }
        }
    }
}

/// The file a reference's mask is kept in, inside the masks folder.
fn mask_file_name(reference: u64) -> String {
    format!("mask-{reference}.png")
}

/// Writes a PNG (a mask, a pasted image) whole or not at all, creating its folder.
fn write_png_atomically<P>(
    path: &Path,
    pixels: &image::ImageBuffer<P, Vec<P::Subpixel>>,
) -> Result<(), String>
where
    P: image::PixelWithColorType,
    [P::Subpixel]: image::EncodableLayout,
{
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("could not create {}: {e}", dir.display()))?;
    }
    let mut encoded = Vec::new();
    pixels
        .write_to(
            &mut std::io::Cursor::new(&mut encoded),
            image::ImageFormat::Png,
        )
        .map_err(|e| format!("could not encode {}: {e}", path.display()))?;
    easel_engine::atomic_file::write_bytes(path, &encoded)
        .map_err(|e| format!("could not save {}: {e}", path.display()))
}
