//! The results panel: the live preview while a job denoises, then the result; a history of
//! every result with its parameters, each saved to the outputs folder before it is shown.

use std::path::PathBuf;
use std::sync::Arc;

use easel_engine::engine::{JobId, JobParameters};
use easel_engine::output::a1111_parameters;
use eframe::egui;
use image::RgbImage;

/// One finished result.
pub struct ResultEntry {
    /// The job that made it.
    pub job: JobId,
    /// The image.
    pub image: Arc<RgbImage>,
    /// What it was made with.
    pub parameters: JobParameters,
    /// Where it was saved, or why it could not be.
    pub saved: Result<PathBuf, String>,
    texture: Option<egui::TextureHandle>,
}

impl ResultEntry {
    /// A result as saved (or not) by the outputs writer.
    pub fn new(
        job: JobId,
        image: Arc<RgbImage>,
        parameters: JobParameters,
        saved: Result<PathBuf, String>,
    ) -> Self {
        Self {
            job,
            image,
            parameters,
            saved,
            texture: None,
        }
    }
}

/// What the user asked to do with a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultAction {
    /// Add it to the references as the init image.
    UseAsInit(usize),
    /// Put it on the canvas in place of the init image (which becomes its previous version),
    /// keeping the mask.
    ToCanvas(usize),
    /// Put its parameters into the prompt panel.
    Recall(usize),
    /// Save a copy where the user chooses.
    SaveAs(usize),
}

/// The latest preview of the running job.
struct LivePreview {
    job: JobId,
    step: usize,
    of: usize,
    texture: egui::TextureHandle,
}

/// The results panel.
#[derive(Default)]
pub struct ResultsPanel {
    /// Every result of this session, oldest first.
    pub history: Vec<ResultEntry>,
    /// The result shown large.
    pub selected: Option<usize>,
    preview: Option<LivePreview>,
}

impl ResultsPanel {
    /// Shows `image` as the live preview of `job` at `step` of `of`. Only the newest preview
    /// of a frame is worth uploading; the caller passes just that one.
    pub fn set_preview(
        &mut self,
        ctx: &egui::Context,
        job: JobId,
        step: usize,
        of: usize,
        image: &RgbImage,
    ) {
        let color = egui::ColorImage::from_rgb(
            [image.width() as usize, image.height() as usize],
            image.as_raw(),
        );
        let options = egui::TextureOptions::LINEAR;
        match &mut self.preview {
            Some(preview) if preview.texture.size() == color.size => {
                preview.texture.set(color, options);
                preview.job = job;
                preview.step = step;
                preview.of = of;
            }
            _ => {
                self.preview = Some(LivePreview {
                    job,
                    step,
                    of,
                    texture: ctx.load_texture("live-preview", color, options),
                });
            }
        }
    }

    /// Drops the preview of `job` (it finished, failed or was cancelled).
    pub fn end_preview(&mut self, job: JobId) {
        if self.preview.as_ref().is_some_and(|p| p.job == job) {
            self.preview = None;
        }
    }

    /// Adds a result and shows it.
    pub fn push(&mut self, entry: ResultEntry) {
        self.end_preview(entry.job);
        self.history.push(entry);
        self.selected = Some(self.history.len() - 1);
    }

    /// Draws the panel.
    pub fn ui(&mut self, ui: &mut egui::Ui) -> Option<ResultAction> {
        let mut action = None;
        ui.heading("Results");
        let strip_height = 96.0;
        let main_height = (ui.available_height() - strip_height - 120.0).max(64.0);
        let main_size = egui::vec2(ui.available_width(), main_height);
        if let Some(preview) = &self.preview {
            ui.label(format!("Preview: step {}/{}", preview.step, preview.of));
            ui.add(
                egui::Image::new(&preview.texture)
                    .fit_to_exact_size(fit(preview.texture.size_vec2(), main_size)),
            )
            .on_hover_text("Live preview (approximate colours)");
        } else if let Some(index) = self.selected.filter(|&i| i < self.history.len()) {
            let entry = &mut self.history[index];
            let texture = texture_of(ui.ctx(), entry);
            let size = fit(texture.size_vec2(), main_size);
            ui.add(egui::Image::new(&texture).fit_to_exact_size(size))
                .on_hover_text(a1111_parameters(&entry.parameters));
            match &entry.saved {
                Ok(path) => ui.weak(format!("Saved as {}", path.display())),
                Err(error) => {
                    ui.colored_label(ui.visuals().error_fg_color, format!("Not saved: {error}"))
                }
            };
            ui.horizontal_wrapped(|ui| {
                if ui
                    .button("To canvas")
                    .on_hover_text("Edit on: the result replaces the canvas image, mask kept")
                    .clicked()
                {
                    action = Some(ResultAction::ToCanvas(index));
                }
                if ui.button("Use as init image").clicked() {
                    action = Some(ResultAction::UseAsInit(index));
                }
                if ui.button("Recall parameters").clicked() {
                    action = Some(ResultAction::Recall(index));
                }
                if ui.button("Save as…").clicked() {
                    action = Some(ResultAction::SaveAs(index));
                }
            });
            ui.label(
                egui::RichText::new(a1111_parameters(&entry.parameters))
                    .small()
                    .weak(),
            );
        } else {
            ui.weak("Results appear here.");
        }
        ui.separator();
        ui.label(format!("History ({})", self.history.len()));
        egui::ScrollArea::horizontal()
            .id_salt("history")
            .show(ui, |ui| {
                ui.horizontal(|ui| {
                    for index in (0..self.history.len()).rev() {
                        let entry = &mut self.history[index];
                        let texture = texture_of(ui.ctx(), entry);
                        let size = fit(
                            texture.size_vec2(),
                            egui::vec2(strip_height, strip_height - 16.0),
                        );
                        let chosen = self.selected == Some(index);
                        let button =
                            egui::Button::image(egui::Image::new(&texture).fit_to_exact_size(size))
                                .selected(chosen);
                        let response = ui
                            .add(button)
                            .on_hover_text(a1111_parameters(&entry.parameters));
                        response.widget_info(|| {
                            egui::WidgetInfo::labeled(
                                egui::Role::Button,
                                true,
                                format!("Result {}", index + 1),
                            )
                        });
                        if response.clicked() {
                            self.selected = Some(index);
                            self.preview = None;
                        }
                    }
                });
            });
        action
    }
}

fn texture_of(ctx: &egui::Context, entry: &mut ResultEntry) -> egui::TextureHandle {
    entry
        .texture
        .get_or_insert_with(|| {
            let image = &entry.image;
            ctx.load_texture(
                format!("result-{}", entry.job),
                egui::ColorImage::from_rgb(
                    [image.width() as usize, image.height() as usize],
                    image.as_raw(),
                ),
                egui::TextureOptions::LINEAR,
            )
        })
        .clone()
}

/// `size` scaled to fit in `space`, keeping its aspect.
fn fit(size: egui::Vec2, space: egui::Vec2) -> egui::Vec2 {
    let scale = (space.x / size.x.max(1.0)).min(space.y / size.y.max(1.0));
    size * scale
}
