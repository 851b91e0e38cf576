//! The settings window: every key of the settings file, edited in place. Each change is
//! checked and written to the file at once, so it survives a crash.

use std::collections::HashMap;

use easel_engine::settings::{Resolved, Source, KEYS};
use eframe::egui;

/// The settings window's state.
#[derive(Default)]
pub struct SettingsPanel {
    /// Whether the window is shown.
    pub open: bool,
    /// Text being edited, per key, until it is committed.
    drafts: HashMap<&'static str, String>,
}

impl SettingsPanel {
    /// Draws the window when open; returns the `(key, value)` the user committed (Enter or
    /// leaving the field with a changed value).
    pub fn ui(
        &mut self,
        ctx: &egui::Context,
        resolved: &Resolved,
    ) -> Option<(&'static str, String)> {
        let mut committed = None;
        let mut open = self.open;
        egui::Window::new("Settings")
            .open(&mut open)
            .default_width(480.0)
            .show(ctx, |ui| {
                ui.weak(format!("Saved to {}", resolved.file.display()));
                egui::Grid::new("settings").num_columns(3).show(ui, |ui| {
                    for key in KEYS {
                        let current = resolved.settings.get(key);
                        let draft = self.drafts.entry(key).or_insert_with(|| current.clone());
                        let label = ui.label(key);
                        let response = ui
                            .add(egui::TextEdit::singleline(draft).desired_width(220.0))
                            .labelled_by(label.id);
                        let done = response.lost_focus() || ui.input(|i| i.key_pressed(egui::Key::Enter)) && response.has_focus();
                        if done && *draft != current {
                            committed = Some((key, draft.clone()));
                        }
                        let source = resolved.source_of(key).cloned().unwrap_or(Source::Default);
                        let overridden = matches!(source, Source::Env(_) | Source::Flag);
                        let note = ui.weak(source.to_string());
                        if overridden {
                            note.on_hover_text("Set outside the file: a change here is saved but this source still wins");
                        }
                        ui.end_row();
                    }
                });
            });
        self.open = open;
        if let Some((key, _)) = &committed {
            // The next frame shows the value as resolved, accepted or not.
            self.drafts.remove(key);
        }
        committed
    }
}
