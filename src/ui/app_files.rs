//! Files coming into the window and going out of it: drops, pastes, dialogs, the last session's
//! references, masks, and what the user does with a result.

use super::*;

impl EaselApp {
    /// Files dropped on the window and images or image paths pasted (outside text fields).
    pub(super) fn take_dropped_and_pasted(&mut self, ctx: &egui::Context) {
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
        if let Err(error) = self
            .references
            .load_file(ctx, path, None, true, false, Vec::new())
        {
            self.status.show_error(error);
        }
    }

    pub(super) fn restore_references(&mut self, ctx: &egui::Context, saved: Vec<SavedReference>) {
        let masks_dir = self.paths.data_dir.join(MASKS_DIR);
        for reference in saved {
            let mask = reference.mask_file.map(|name| masks_dir.join(name));
            if let Err(error) = self.references.load_file(
                ctx,
                reference.path,
                mask,
                reference.is_init,
                reference.is_edit,
                reference.versions,
            ) {
                self.status.show_error(error);
            }
        }
    }

    pub(super) fn open_model_folder(&mut self) {
        let Some(dir) = rfd::FileDialog::new()
            .set_title("Open a diffusers model folder")
            .pick_folder()
        else {
            return;
        };
        match read_model(&dir) {
            Ok(entry) => {
                self.prompt.settings.model = Some(entry.dir.clone());
                (
                    self.prompt.settings.width_px,
                    self.prompt.settings.height_px,
                ) = entry.native_size_px;
                if !self.models.iter().any(|m| m.dir == entry.dir) {
                    self.opened_models.push(entry.dir.clone());
                    self.models.push(entry);
                }
            }
            Err(error) => self.status.show_error(error),
        }
    }

    pub(super) fn add_images_by_dialog(&mut self, ctx: &egui::Context) {
        let picked = rfd::FileDialog::new()
            .set_title("Add reference images")
            .add_filter("Images", &["png", "jpg", "jpeg", "webp"])
            .pick_files()
            .unwrap_or_default();
        for path in picked {
            self.add_image_file(ctx, path);
        }
    }

    pub(super) fn save_mask_by_dialog(&mut self) {
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

    pub(super) fn load_mask_by_dialog(&mut self) {
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

    pub(super) fn act_on_result(&mut self, action: ResultAction) {
        match action {
            ResultAction::UseAsInit(index) => {
                if let Some(entry) = self.results.history.get(index) {
                    let path = entry.saved.as_ref().ok().cloned();
                    self.references.add((*entry.image).clone(), path, true);
                }
            }
            ResultAction::ToCanvas(index) => {
                let Some(entry) = self.results.history.get(index) else {
                    return;
                };
                let version = Version::new(entry.image.clone(), entry.saved.as_ref().ok().cloned());
                match self.references.init_mut() {
                    Some(init) => init.replace_image(version),
                    None => {
                        self.references
                            .add((*version.image).clone(), version.path, true);
                    }
                }
            }
            ResultAction::Recall(index) => {
                if let Some(entry) = self.results.history.get(index) {
                    let recalled = RecalledParameters::of(&entry.parameters);
                    let model = Some(entry.parameters.model.clone());
                    self.prompt.settings.recall(&recalled, model, &self.models);
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
}
