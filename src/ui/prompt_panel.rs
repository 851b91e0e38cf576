//! The prompt panel: model, prompts, sampler and numbers, Generate and Cancel.

use std::path::PathBuf;

use easel_engine::device::Precision;
use easel_engine::hub::fit::{format_gb, Verdict};
use easel_engine::output::RecalledParameters;
use easel_engine::pipeline::request::Mode;
use easel_engine::schedulers::SamplerKind;
use eframe::egui;
use serde::{Deserialize, Serialize};

use super::model_list::ModelEntry;
use easel_engine::families::GuidanceKind;

/// Everything the panel edits; saved with the session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PromptSettings {
    /// The chosen model folder.
    pub model: Option<PathBuf>,
    /// What to draw.
    pub prompt: String,
    /// What to steer away from (empty: none).
    pub negative_prompt: String,
    /// The sampler.
    pub sampler: SamplerKind,
    /// Inference steps.
    pub steps: usize,
    /// Guidance scale.
    pub guidance: f64,
    /// The seed of the next job.
    pub seed: u64,
    /// Keep `seed` for the next job instead of drawing a new one.
    pub seed_locked: bool,
    /// Output width in pixels.
    pub width_px: u32,
    /// Output height in pixels.
    pub height_px: u32,
    /// img2img / inpaint strength.
    pub strength: f64,
    /// Jobs per press of Generate (seeds counting up).
    pub batch_count: usize,
}

impl Default for PromptSettings {
    fn default() -> Self {
        Self {
            model: None,
            prompt: String::new(),
            negative_prompt: String::new(),
            sampler: SamplerKind::Euler,
            steps: 20,
            guidance: 7.5,
            seed: 0,
            seed_locked: false,
            width_px: 512,
            height_px: 512,
            strength: 0.75,
            batch_count: 1,
        }
    }
}

impl PromptSettings {
    /// Picks `entry`: its native size, and its steps, guidance and sampler when it runs
    /// only as they say (a distilled or catalog model).
    pub fn pick_model(&mut self, entry: &ModelEntry) {
        self.model = Some(entry.dir.clone());
        (self.width_px, self.height_px) = entry.native_size_px;
        if entry.wants_its_defaults {
            self.steps = entry.defaults.steps;
            self.guidance = entry.defaults.guidance;
            self.sampler = entry.defaults.sampler;
        }
    }

    /// Takes the parameters a result was made with ("recall parameters"): `model` when the
    /// caller knows the folder, else the one of `models` named in them; fields they lack stay
    /// as they are. The seed is locked so the next job reproduces the result.
    pub fn recall(
        &mut self,
        recalled: &RecalledParameters,
        model: Option<PathBuf>,
        models: &[ModelEntry],
    ) {
        self.prompt = recalled.prompt.clone();
        self.negative_prompt = recalled.negative_prompt.clone().unwrap_or_default();
        let named = recalled
            .model_name
            .as_ref()
            .and_then(|name| models.iter().find(|m| &m.name == name))
            .map(|m| m.dir.clone());
        if let Some(model) = model.or(named) {
            self.model = Some(model);
        }
        self.sampler = recalled.sampler.unwrap_or(self.sampler);
        self.steps = recalled.steps.unwrap_or(self.steps);
        self.guidance = recalled.guidance.unwrap_or(self.guidance);
        if let Some(seed) = recalled.seed {
            self.seed = seed;
            self.seed_locked = true;
        }
        if let Some((width, height)) = recalled.size_px {
            (self.width_px, self.height_px) = (width, height);
        }
        self.strength = recalled.strength.unwrap_or(self.strength);
    }
}

/// What the user asked for in the panel this frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptAction {
    /// Start a generation (a batch).
    Generate,
    /// Cancel the running and queued jobs.
    Cancel,
    /// Pick a model folder with a dialog.
    OpenModelFolder,
}

/// What the panel shows but does not own.
pub struct PromptContext<'a> {
    /// Models to pick from.
    pub models: &'a [ModelEntry],
    /// The mode the references imply.
    pub mode: Mode,
    /// The mode as the panel says it ("edit" for references without an init image).
    pub mode_name: &'static str,
    /// Whether jobs are running or queued.
    pub busy: bool,
    /// Text the last prompt lost at the 77-token limit.
    pub prompt_cut_off: Option<&'a str>,
    /// The init image's size, which the output takes when there is one.
    pub init_size_px: Option<(u32, u32)>,
    /// The edit references' sizes, for the memory estimate.
    pub reference_sizes_px: &'a [(u32, u32)],
    /// The memory a model can use now, where known (for the will-it-fit line).
    pub free_bytes: Option<u64>,
    /// What the engine holds weights in, in each residency mode.
    pub precision: Precision,
}

/// The prompt panel.
#[derive(Debug, Default)]
pub struct PromptPanel {
    /// The values being edited.
    pub settings: PromptSettings,
}

impl PromptPanel {
    /// Draws the panel; returns the action the user took, if any.
    pub fn ui(&mut self, ui: &mut egui::Ui, context: &PromptContext<'_>) -> Option<PromptAction> {
        let mut action = None;
        let s = &mut self.settings;
        ui.heading("Prompt");
        ui.horizontal(|ui| {
            let label = ui.label("Model");
            let selected = s
                .model
                .as_ref()
                .and_then(|m| context.models.iter().find(|e| &e.dir == m))
                .map(|e| e.name.clone())
                .or_else(|| s.model.as_ref().map(|m| m.display().to_string()))
                .unwrap_or_else(|| "none: open a model folder".to_string());
            egui::ComboBox::from_id_salt("model")
                .selected_text(selected)
                .show_ui(ui, |ui| {
                    for entry in context.models {
                        let chosen = s.model.as_ref() == Some(&entry.dir);
                        if ui.selectable_label(chosen, &entry.name).clicked() && !chosen {
                            s.pick_model(entry);
                        }
                    }
                })
                .response
                .labelled_by(label.id);
            if ui
                .button("Open…")
                .on_hover_text("Use a Stable Diffusion (diffusers) or FLUX model folder")
                .clicked()
            {
                action = Some(PromptAction::OpenModelFolder);
            }
        });
        let label = ui.label("Prompt");
        ui.add(
            egui::TextEdit::multiline(&mut s.prompt)
                .desired_rows(4)
                .desired_width(f32::INFINITY)
                .hint_text("what to draw"),
        )
        .labelled_by(label.id);
        if let Some(cut) = context.prompt_cut_off {
            ui.colored_label(
                ui.visuals().warn_fg_color,
                format!("Cut off at the text encoder's token limit: \"{cut}\""),
            );
        }
        // A model without a negative prompt or a sampler choice (FLUX) rests those fields
        // (kept for the next model that takes them).
        let picked = s
            .model
            .as_ref()
            .and_then(|m| context.models.iter().find(|e| &e.dir == m));
        let negative_controls = picked.is_none_or(|e| e.negative_prompt);
        let picked_multiple = picked.map(|e| e.size_multiple_px);
        let multiple = picked_multiple.unwrap_or(8);
        let sampler_controls = picked.is_none_or(|e| e.sampler_choice);
        let label = ui.label("Negative prompt");
        let family = picked.map_or("", |e| e.family);
        let no_negative = format!("{family} takes no negative prompt");
        ui.add_enabled(
            negative_controls,
            egui::TextEdit::multiline(&mut s.negative_prompt)
                .desired_rows(2)
                .desired_width(f32::INFINITY)
                .hint_text(if negative_controls {
                    "what to avoid"
                } else {
                    no_negative.as_str()
                }),
        )
        .labelled_by(label.id);

        egui::Grid::new("numbers").num_columns(2).show(ui, |ui| {
            let label = ui.label("Sampler");
            if sampler_controls {
                egui::ComboBox::from_id_salt("sampler")
                    .selected_text(s.sampler.name())
                    .show_ui(ui, |ui| {
                        for kind in SamplerKind::ALL {
                            ui.selectable_value(&mut s.sampler, kind, kind.name());
                        }
                    })
                    .response
                    .labelled_by(label.id);
            } else {
                let own = picked.map_or("", |e| e.own_sampler);
                ui.label(own).labelled_by(label.id);
            }
            ui.end_row();
            labelled_drag(
                ui,
                "Steps",
                egui::DragValue::new(&mut s.steps).range(1..=150),
            );
            // A timestep-distilled model (FLUX.1 schnell, FLUX.2 [klein]) ignores guidance.
            let takes_guidance = picked.is_none_or(|e| e.guidance != GuidanceKind::None);
            let label = ui.label("Guidance");
            ui.add_enabled(
                takes_guidance,
                egui::DragValue::new(&mut s.guidance)
                    .range(0.0..=30.0)
                    .speed(0.1),
            )
            .labelled_by(label.id)
            .on_disabled_hover_text(format!("{family} takes no guidance"));
            ui.end_row();
            let label = ui.label("Seed");
            ui.horizontal(|ui| {
                ui.add(egui::DragValue::new(&mut s.seed))
                    .labelled_by(label.id);
                ui.checkbox(&mut s.seed_locked, "Lock")
                    .on_hover_text("Unlocked: a new random seed for every Generate");
                if ui
                    .button("New")
                    .on_hover_text("A new random seed")
                    .clicked()
                {
                    s.seed = rand::random();
                }
            });
            ui.end_row();
            if let Some((width, height)) = context.init_size_px {
                ui.label("Size");
                ui.label(format!(
                    "{}×{} (the init image's)",
                    width / multiple * multiple,
                    height / multiple * multiple
                ));
                ui.end_row();
            } else {
                labelled_drag(
                    ui,
                    "Width",
                    egui::DragValue::new(&mut s.width_px)
                        .range(64..=4096)
                        .speed(multiple),
                );
                labelled_drag(
                    ui,
                    "Height",
                    egui::DragValue::new(&mut s.height_px)
                        .range(64..=4096)
                        .speed(multiple),
                );
                if let Some(entry) = s
                    .model
                    .as_ref()
                    .and_then(|m| context.models.iter().find(|e| &e.dir == m))
                {
                    ui.label("Presets");
                    ui.horizontal_wrapped(|ui| {
                        for (w, h) in entry.size_presets() {
                            if ui.small_button(format!("{w}×{h}")).clicked() {
                                (s.width_px, s.height_px) = (w, h);
                            }
                        }
                    });
                    ui.end_row();
                }
            }
            let picked = s
                .model
                .as_ref()
                .and_then(|m| context.models.iter().find(|e| &e.dir == m));
            if let Some(entry) = picked {
                let size_px = context.init_size_px.unwrap_or((s.width_px, s.height_px));
                // Each edit reference adds its tokens to every attention.
                let estimate = entry.memory_estimate_with_references(
                    size_px,
                    context.reference_sizes_px,
                    context.precision,
                );
                let verdict = Verdict::of(&estimate, context.free_bytes);
                ui.label("Memory");
                let line = format!(
                    "≈ {} ({} low-memory): {}",
                    format_gb(estimate.full_bytes),
                    format_gb(estimate.staged_bytes),
                    verdict.describe()
                );
                let hover = "Estimated from the weight files and the size: weights plus the largest activations";
                match verdict {
                    Verdict::TooBig => ui.colored_label(ui.visuals().warn_fg_color, line),
                    _ => ui.label(line),
                }
                .on_hover_text(hover);
                ui.end_row();
            }
            if context.mode != Mode::TextToImage {
                labelled_drag(
                    ui,
                    "Strength",
                    egui::DragValue::new(&mut s.strength)
                        .range(0.0..=1.0)
                        .speed(0.01),
                );
            }
            labelled_drag(
                ui,
                "Batch",
                egui::DragValue::new(&mut s.batch_count).range(1..=64),
            );
        });
        // Sizes the picked model can take: multiples of 8 (Stable Diffusion) or 16 (FLUX).
        s.width_px = (s.width_px / multiple).max(1) * multiple;
        s.height_px = (s.height_px / multiple).max(1) * multiple;

        ui.label(format!("Mode: {}", context.mode_name));
        ui.horizontal(|ui| {
            let generate = ui
                .add_enabled(s.model.is_some(), egui::Button::new("Generate"))
                .on_hover_text("Ctrl/Cmd+Enter");
            if generate.clicked() {
                action = Some(PromptAction::Generate);
            }
            let cancel = ui
                .add_enabled(context.busy, egui::Button::new("Cancel"))
                .on_hover_text("Esc");
            if cancel.clicked() {
                action = Some(PromptAction::Cancel);
            }
        });
        let (generate_keys, cancel_key) = ui.input_mut(|i| {
            (
                i.consume_key(egui::Modifiers::COMMAND, egui::Key::Enter),
                i.consume_key(egui::Modifiers::NONE, egui::Key::Escape),
            )
        });
        if generate_keys && s.model.is_some() {
            action = Some(PromptAction::Generate);
        }
        if cancel_key && context.busy {
            action = Some(PromptAction::Cancel);
        }
        action
    }
}

/// A label and a drag value named by it, as one grid row.
fn labelled_drag(ui: &mut egui::Ui, name: &str, drag: egui::DragValue<'_>) {
    let label = ui.label(name);
    ui.add(drag).labelled_by(label.id);
    ui.end_row();
}
