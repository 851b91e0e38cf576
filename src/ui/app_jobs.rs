//! The window's jobs: sending generations and cancels, taking in the engine's events, and
//! saving each result to the outputs folder before it is shown.

use super::*;

impl EaselApp {
    pub(super) fn start_engine(&mut self, ctx: &egui::Context) {
        self.jobs.clear();
        self.engine.start(ctx, &self.engine_config);
        match self.engine.engine() {
            Ok(engine) => {
                self.status.device = engine.device_name().to_string();
                self.status.dtype = engine.dtype_name();
                if let Some(warning) = engine.dtype_warning() {
                    self.status.show_error(warning.to_string());
                }
            }
            Err(_) => self.status.device = "engine stopped".to_string(),
        }
    }

    /// Drains the engine's events; keeps only the newest preview of the frame.
    pub(super) fn take_engine_events(&mut self, ctx: &egui::Context) {
        let mut newest_preview = None;
        for event in self.engine.drain() {
            self.status.on_event(&event);
            if let Some(folder) = self.models_panel.on_event(&event) {
                self.use_model_folder(&folder, self.prompt.settings.model.is_none());
            }
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
    pub(super) fn save_result(&mut self, ctx: &egui::Context, job: JobId, output: Box<JobOutput>) {
        let dir = self.paths.outputs_dir.clone();
        let spawned = self.saving.spawn("save-result", ctx, move || {
            let saved =
                save_new_result(&dir, &output.image, &output.parameters).map_err(|e| e.to_string());
            SavedResult { job, output, saved }
        });
        if let Err(error) = spawned {
            self.status.show_error(error);
        }
    }

    pub(super) fn take_background_results(&mut self) {
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

    /// Queues the batch the prompt panel describes.
    pub fn generate(&mut self) {
        let feather_px = self.canvas.brush.feather_px;
        let inpaint = self.canvas.brush.inpaint();
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
        let mut references: Vec<Reference> = source.map(Reference::Init).into_iter().collect();
        references.extend(self.references.edit_references().map(|r| {
            Reference::Edit {
                image: (*r.image).clone(),
                name: r
                    .path
                    .as_ref()
                    .filter(|p| !p.starts_with(self.paths.data_dir.join(PASTED_DIR)))
                    .and_then(|p| p.file_name())
                    .map_or_else(
                        || "pasted".to_string(),
                        |n| n.to_string_lossy().into_owned(),
                    ),
            }
        }));
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
                references: references.clone(),
                adapters: Vec::new(),
                paste_back: true,
                inpaint,
                max_sequence_length: None,
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
}
