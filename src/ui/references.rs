//! The references panel: images added by dialog, drop or paste, one of them the init image
//! for img2img and inpaint. Each image owns its mask, so a mask stays with its image.

use std::path::PathBuf;
use std::sync::Arc;

use easel_engine::pipeline::request::Mode;
use eframe::egui;
use image::{GrayImage, RgbImage};

use easel_engine::image_file::read_image_file;
use easel_engine::output::{parse_a1111_parameters, read_png_parameters, RecalledParameters};

use super::background::Background;
use super::canvas::mask::MaskLayer;

/// Thumbnail height in points.
const THUMBNAIL_PT: f32 = 72.0;

/// One reference image and its mask.
pub struct Reference {
    /// Stable id (textures follow it).
    pub id: u64,
    /// What the panel calls it.
    pub name: String,
    /// The file it came from; a pasted image gets one in the data folder when the session
    /// is next written.
    pub path: Option<PathBuf>,
    /// The pixels.
    pub image: Arc<RgbImage>,
    /// The mask painted on it.
    pub mask: MaskLayer,
    /// What it was made with, when it is a result carrying A1111 `parameters`.
    pub parameters: Option<RecalledParameters>,
    /// Whether it goes to an edit model as an edit reference (in panel order).
    pub edit: bool,
    /// The images it showed before results replaced it, oldest first, and those a step back
    /// put aside (newest last); `image_revision` counts every replacement.
    pub versions: Versions,
    /// Thumbnail pixels made off the UI thread, waiting to become a texture.
    thumbnail_pixels: Option<egui::ColorImage>,
    thumbnail: Option<egui::TextureHandle>,
}

/// Earlier versions a session keeps per reference (each is read again at the next start).
pub const KEPT_VERSIONS: usize = 16;

/// One image a reference showed: its pixels and the file they are in, if any.
#[derive(Clone)]
pub struct Version {
    /// The pixels.
    pub image: Arc<RgbImage>,
    /// Where they are saved.
    pub path: Option<PathBuf>,
    /// Its own mask, when it is not the canvas's size: the mask it had when an image of
    /// another size replaced it, or the one it comes with.
    pub mask: Option<GrayImage>,
}

impl Version {
    /// An image (saved at `path`, if it is) that keeps the canvas's mask.
    pub fn new(image: Arc<RgbImage>, path: Option<PathBuf>) -> Self {
        Self {
            image,
            path,
            mask: None,
        }
    }
}

/// A reference's history across generations: undo and redo of "result to canvas".
#[derive(Clone, Default)]
pub struct Versions {
    /// Earlier images, oldest first.
    pub earlier: Vec<Version>,
    /// Images a step back put aside, the next one last.
    pub later: Vec<Version>,
    /// Bumped whenever the image is replaced (its textures follow it).
    pub image_revision: u64,
}

impl Reference {
    /// The files of its earlier versions that a session keeps (the newest
    /// `KEPT_VERSIONS`; pasted pixels without a file are not kept).
    pub fn saved_versions(&self) -> Vec<PathBuf> {
        let paths: Vec<PathBuf> = self
            .versions
            .earlier
            .iter()
            .filter_map(|v| v.path.clone())
            .collect();
        let skip = paths.len().saturating_sub(KEPT_VERSIONS);
        paths.into_iter().skip(skip).collect()
    }

    /// Shows `next` in place of the current image, which becomes the previous version. The
    /// mask stays when the sizes match (it survives generations); across a size change each
    /// version keeps its own (see `swap_in`).
    pub fn replace_image(&mut self, next: Version) {
        let outgoing = self.swap_in(next);
        self.versions.earlier.push(outgoing);
        self.versions.later.clear();
    }

    /// Back to the previous version; false when there is none.
    pub fn previous_version(&mut self) -> bool {
        self.step_version(Step::Back)
    }

    /// Forward to the version a step back put aside; false when there is none.
    pub fn next_version(&mut self) -> bool {
        self.step_version(Step::Forward)
    }

    /// Shows the version `step` reaches, putting the current one on the other side.
    fn step_version(&mut self, step: Step) -> bool {
        let source = match step {
            Step::Back => &mut self.versions.earlier,
            Step::Forward => &mut self.versions.later,
        };
        let Some(incoming) = source.pop() else {
            return false;
        };
        let outgoing = self.swap_in(incoming);
        match step {
            Step::Back => self.versions.later.push(outgoing),
            Step::Forward => self.versions.earlier.push(outgoing),
        }
        true
    }

    /// Shows `incoming` and returns what it replaced. When the size changes, the outgoing
    /// version takes the mask with it and the incoming one brings its own (or an empty one),
    /// so stepping back across an extension finds the mask that was painted there.
    fn swap_in(&mut self, incoming: Version) -> Version {
        let (width, height) = incoming.image.dimensions();
        let outgoing_mask = if (width, height) != self.image.dimensions() {
            let mask = incoming
                .mask
                .filter(|mask| mask.dimensions() == (width, height))
                .map(MaskLayer::from_image)
                .unwrap_or_else(|| MaskLayer::new(width, height));
            Some(std::mem::replace(&mut self.mask, mask).into_pixels())
        } else {
            None
        };
        let outgoing = Version {
            image: std::mem::replace(&mut self.image, incoming.image),
            path: std::mem::replace(&mut self.path, incoming.path),
            mask: outgoing_mask,
        };
        self.parameters = None;
        // The panel makes the new thumbnail when it next draws it.
        self.thumbnail = None;
        self.thumbnail_pixels = None;
        self.versions.image_revision += 1;
        outgoing
    }
}

/// Which way a step through the versions goes.
#[derive(Debug, Clone, Copy)]
enum Step {
    Back,
    Forward,
}

/// A decoded image (and its saved mask) from a background load.
pub struct LoadedImage {
    /// Where it came from; `None` for pasted pixels.
    pub path: Option<PathBuf>,
    /// The image, or why it could not be read.
    pub image: Result<RgbImage, String>,
    /// The mask saved with it last session, if asked for and readable.
    pub mask: Option<GrayImage>,
    /// The reference's id, taken when the load began.
    pub id: u64,
    /// Whether it becomes the init image.
    pub make_init: bool,
    /// Whether it is an edit reference.
    pub edit: bool,
    /// Its A1111 `parameters`, when it is a PNG that carries them.
    pub parameters: Option<RecalledParameters>,
    /// Its thumbnail, made on the loading thread.
    pub thumbnail: Option<egui::ColorImage>,
    /// The images it showed before, oldest first (a restored session's versions).
    pub versions: Vec<Version>,
}

/// What the user did in the panel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferenceAction {
    /// Open the file dialog.
    Add,
    /// Put the parameters the image carries into the prompt panel.
    Recall(u64),
}

/// The references panel.
#[derive(Default)]
pub struct References {
    /// The images, in the order they were added.
    pub items: Vec<Reference>,
    /// Which one is the init image (its id).
    pub init: Option<u64>,
    next_id: u64,
    loads: Background<LoadedImage>,
}

impl References {
    /// Starts reading `path` in the background: the path every way of adding a file takes
    /// (dialog, drop, pasted path, session restore, which also gives the files of its earlier
    /// `versions`; those that cannot be read are left out).
    pub fn load_file(
        &mut self,
        ctx: &egui::Context,
        path: PathBuf,
        mask_path: Option<PathBuf>,
        make_init: bool,
        edit: bool,
        versions: Vec<PathBuf>,
    ) -> Result<(), String> {
        self.next_id += 1;
        let id = self.next_id;
        self.loads.spawn("image-load", ctx, move || {
            let versions = versions
                .into_iter()
                .filter_map(|path| {
                    let image = read_image_file(&path).ok()?;
                    Some(Version::new(Arc::new(image), Some(path)))
                })
                .collect();
            let image = read_image_file(&path);
            let mask = mask_path.and_then(|m| MaskLayer::read_png(&m).ok());
            let parameters = read_png_parameters(&path).map(|t| parse_a1111_parameters(&t));
            let thumbnail = image.as_ref().ok().map(thumbnail);
            LoadedImage {
                id,
                path: Some(path),
                image,
                mask,
                make_init,
                edit,
                parameters,
                thumbnail,
                versions,
            }
        })
    }

    /// Whether images are still being read.
    pub fn is_loading(&self) -> bool {
        self.loads.is_busy()
    }

    /// Collects finished loads; returns the errors to show.
    pub fn poll_loads(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        for loaded in self.loads.poll() {
            match loaded.image {
                Ok(image) => {
                    let id =
                        self.insert(loaded.id, image, loaded.path, loaded.make_init, loaded.edit);
                    if let Some(item) = self.get_mut(id) {
                        item.parameters = loaded.parameters;
                        item.thumbnail_pixels = loaded.thumbnail;
                        item.versions.earlier = loaded.versions;
                        if let Some(mask) = loaded.mask {
                            if mask.dimensions() == item.image.dimensions() {
                                item.mask = MaskLayer::from_image(mask);
                            }
                        }
                    }
                }
                Err(message) => errors.push(message),
            }
        }
        errors
    }

    /// Adds decoded pixels (a paste, a result used as init) at the end; returns the new id.
    pub fn add(&mut self, image: RgbImage, path: Option<PathBuf>, make_init: bool) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.insert(id, image, path, make_init, false)
    }

    /// Adds an image under `id` (taken when its load began), before the first reference with
    /// a later id: loads that finish out of order still land in the order they were asked
    /// for, so restored edit references keep their order.
    fn insert(
        &mut self,
        id: u64,
        image: RgbImage,
        path: Option<PathBuf>,
        make_init: bool,
        edit: bool,
    ) -> u64 {
        let name = path
            .as_ref()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("pasted {id}"));
        let (width, height) = image.dimensions();
        let at = self
            .items
            .iter()
            .position(|r| r.id > id)
            .unwrap_or(self.items.len());
        self.items.insert(
            at,
            Reference {
                id,
                name,
                path,
                image: Arc::new(image),
                mask: MaskLayer::new(width, height),
                parameters: None,
                edit,
                versions: Versions::default(),
                thumbnail_pixels: None,
                thumbnail: None,
            },
        );
        // The first image added becomes the init image (an edit reference never does);
        // later ones only when asked.
        if make_init || (self.init.is_none() && !edit) {
            self.init = Some(id);
        }
        id
    }

    /// The reference with `id`.
    pub fn get_mut(&mut self, id: u64) -> Option<&mut Reference> {
        self.items.iter_mut().find(|r| r.id == id)
    }

    /// The init image and its mask.
    pub fn init(&self) -> Option<&Reference> {
        self.init
            .and_then(|id| self.items.iter().find(|r| r.id == id))
    }

    /// The init image and its mask, to paint on.
    pub fn init_mut(&mut self) -> Option<&mut Reference> {
        let id = self.init?;
        self.get_mut(id)
    }

    /// The edit references, in panel order (the init image is never one).
    pub fn edit_references(&self) -> impl Iterator<Item = &Reference> {
        self.items
            .iter()
            .filter(|r| r.edit && Some(r.id) != self.init)
    }

    /// Moves the reference `id` one place earlier (`-1`) or later (`+1`) in the panel.
    pub fn move_by(&mut self, id: u64, step: isize) {
        let Some(from) = self.items.iter().position(|r| r.id == id) else {
            return;
        };
        let to = from as isize + step;
        if (0..self.items.len() as isize).contains(&to) {
            self.items.swap(from, to as usize);
        }
    }

    /// What the panel's mode line says: "edit" when there are edit references and no init
    /// image, else the request's mode.
    pub fn mode_name(&self) -> &'static str {
        if self.init().is_none() && self.edit_references().next().is_some() {
            "edit"
        } else {
            self.mode().name()
        }
    }

    /// The mode the references imply: no init image is txt2img; an init image with a
    /// painted mask is inpaint; without one, img2img.
    pub fn mode(&self) -> Mode {
        match self.init() {
            None => Mode::TextToImage,
            Some(r) if r.mask.is_empty() => Mode::ImageToImage,
            Some(_) => Mode::Inpaint,
        }
    }

    /// Draws the panel.
    pub fn ui(&mut self, ui: &mut egui::Ui) -> Option<ReferenceAction> {
        let mut action = None;
        let mut remove = None;
        let mut moves: Vec<(u64, isize)> = Vec::new();
        ui.horizontal(|ui| {
            ui.strong("References");
            if ui.button("Add image…").clicked() {
                action = Some(ReferenceAction::Add);
            }
            ui.weak("or drop / paste an image");
            if self.loads.is_busy() {
                ui.spinner();
            }
        });
        egui::ScrollArea::horizontal()
            .id_salt("references")
            .show(ui, |ui| {
                ui.horizontal(|ui| {
                    ui.radio_value(&mut self.init, None, "No init image (txt2img)");
                    for item in &mut self.items {
                        ui.vertical(|ui| {
                            let texture = item.thumbnail.get_or_insert_with(|| {
                                let pixels = item
                                    .thumbnail_pixels
                                    .take()
                                    .unwrap_or_else(|| thumbnail(&item.image));
                                ui.ctx().load_texture(
                                    format!("reference-{}", item.id),
                                    pixels,
                                    egui::TextureOptions::LINEAR,
                                )
                            });
                            let size = texture.size_vec2();
                            let scale = THUMBNAIL_PT / size.y.max(1.0);
                            ui.add(egui::Image::new(&*texture).fit_to_exact_size(size * scale))
                                .on_hover_text(&item.name);
                            ui.horizontal(|ui| {
                                ui.radio_value(&mut self.init, Some(item.id), "Init")
                                    .on_hover_text(format!("Use {} as the init image", item.name));
                                if item.parameters.is_some()
                                    && ui
                                        .small_button("Recall")
                                        .on_hover_text(
                                            "Use the parameters this image was made with",
                                        )
                                        .clicked()
                                {
                                    action = Some(ReferenceAction::Recall(item.id));
                                }
                                if ui
                                    .small_button("Remove")
                                    .on_hover_text(format!("Remove {}", item.name))
                                    .clicked()
                                {
                                    remove = Some(item.id);
                                }
                            });
                            ui.horizontal(|ui| {
                                ui.checkbox(&mut item.edit, "Edit ref")
                                    .on_hover_text(format!(
                                        "Give {} to an edit model as a reference (in this order)",
                                        item.name
                                    ));
                                for (text, step, words) in [("<", -1, "earlier"), (">", 1, "later")]
                                {
                                    let label = format!("Move {} {words}", item.name);
                                    let button = ui.small_button(text);
                                    // Screen readers and tests hear what the arrow does.
                                    button.widget_info(|| {
                                        egui::WidgetInfo::labeled(
                                            egui::Role::Button,
                                            true,
                                            label.clone(),
                                        )
                                    });
                                    if button.on_hover_text(label.clone()).clicked() {
                                        moves.push((item.id, step));
                                    }
                                }
                            });
                        });
                    }
                });
            });
        for (id, step) in moves {
            self.move_by(id, step);
        }
        if let Some(id) = remove {
            self.items.retain(|r| r.id != id);
            if self.init == Some(id) {
                self.init = None;
            }
        }
        action
    }
}

/// A small copy of `image` for the panel.
fn thumbnail(image: &RgbImage) -> egui::ColorImage {
    let scale = 128.0 / image.width().max(image.height()).max(1) as f32;
    let small = if scale < 1.0 {
        image::imageops::thumbnail(
            image,
            ((image.width() as f32 * scale) as u32).max(1),
            ((image.height() as f32 * scale) as u32).max(1),
        )
    } else {
        image.clone()
    };
    egui::ColorImage::from_rgb(
        [small.width() as usize, small.height() as usize],
        small.as_raw(),
    )
}
