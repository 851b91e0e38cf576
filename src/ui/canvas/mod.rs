//! The canvas: the init image fitted to the panel with zoom and pan, and the mask painted on
//! it with brush and eraser, shown as a translucent overlay.

pub mod bench;
mod frame;
pub mod mask;
pub mod tiles;
pub mod view;

use easel_engine::pipeline::masked_area::{grown_box, CropBox};
use easel_engine::pipeline::outpaint::{extend_canvas, Extend, ExtendFill};
use easel_engine::pipeline::request::{InpaintArea, InpaintOptions, DEFAULT_MASK_PADDING_PX};
use eframe::egui::{self, Color32, Key, Modifiers, Sense, Vec2};
use serde::{Deserialize, Serialize};

use super::background::Background;
use super::references::{Reference, Version};
use frame::{FrameDrag, MAX_EXTEND_PX};
use mask::{BrushTip, MaskLayer, Tool};
use tiles::{rgb_pixels, TiledTexture};
use view::CanvasView;

/// The overlay colour (alpha is the mask value scaled by `OVERLAY_OPACITY`).
const OVERLAY_RGB: [u8; 3] = [255, 48, 96];
const OVERLAY_OPACITY: f32 = 0.55;

/// Brush settings; saved with the session.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BrushSettings {
    /// Brush or eraser.
    pub tool: Tool,
    /// Brush radius in image pixels.
    pub radius_px: f32,
    /// 0 hard .. 1 soft.
    pub softness: f32,
    /// Feather radius applied to the mask a job gets, in image pixels.
    pub feather_px: u32,
    /// Whether the mask overlay is drawn.
    pub overlay_visible: bool,
    /// Where an inpaint is painted (the masked area's box is drawn on the canvas).
    pub inpaint_area: InpaintArea,
    /// Context around the mask's box, in image pixels.
    pub mask_padding_px: u32,
    /// Match the repaint's colours to the pixels around the mask.
    pub match_colours: bool,
}

impl Default for BrushSettings {
    fn default() -> Self {
        Self {
            tool: Tool::Brush,
            radius_px: 24.0,
            softness: 0.3,
            feather_px: 0,
            overlay_visible: true,
            inpaint_area: InpaintArea::Auto,
            mask_padding_px: DEFAULT_MASK_PADDING_PX,
            match_colours: true,
        }
    }
}

impl BrushSettings {
    /// The inpaint options a job takes.
    pub fn inpaint(&self) -> InpaintOptions {
        InpaintOptions {
            area: self.inpaint_area,
            mask_padding_px: self.mask_padding_px,
            match_colours: self.match_colours,
        }
    }

    fn tip(&self) -> BrushTip {
        BrushTip {
            tool: self.tool,
            radius_px: self.radius_px,
            softness: self.softness,
        }
    }
}

/// What the canvas asks the app to do (file dialogs live in the app).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanvasAction {
    /// Save the mask as PNG.
    SaveMask,
    /// Load a mask PNG.
    LoadMask,
}

/// GPU copies of the init image and its overlay, kept while the same reference is shown.
struct CanvasTextures {
    reference: u64,
    /// Which of the reference's images they show.
    image_revision: u64,
    image: TiledTexture,
    overlay: TiledTexture,
    /// What the overlay shows when it shows a feathered mask.
    feathered: Option<FeatherKey>,
}

/// One image of one reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ImageKey {
    reference: u64,
    image_revision: u64,
}

/// Which mask, at which edit, with how much feathering a preview shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FeatherKey {
    reference: u64,
    image_revision: u64,
    revision: u64,
    feather_px: u32,
}

/// The canvas panel.
#[derive(Default)]
pub struct CanvasPanel {
    /// Brush settings.
    pub brush: BrushSettings,
    /// Zoom and pan.
    pub view: CanvasView,
    textures: Option<CanvasTextures>,
    panning: bool,
    feather_previews: Background<(FeatherKey, image::GrayImage)>,
    /// Pixels to add left, top, right and bottom with "Extend canvas" (typed, or set by
    /// dragging the frame).
    pub extend_px: [u32; 4],
    /// Whether the frame tool is chosen: a drag grows the frame instead of painting.
    pub framing: bool,
    /// The sides the frame drag in progress moves.
    frame_drag: Option<FrameDrag>,
    /// Whether the canvas shows the previous version instead of the current image.
    pub compare: bool,
    /// The previous version's textures while comparing: for which image they were made.
    previous: Option<(ImageKey, TiledTexture)>,
    /// Extended canvases being made off the UI thread: for which reference and image.
    extensions: Background<(ImageKey, image::RgbImage, image::GrayImage)>,
    feather_requested: Option<FeatherKey>,
}

impl CanvasPanel {
    /// A canvas with these brush settings, fitted view.
    pub fn with_brush(brush: BrushSettings) -> Self {
        Self {
            brush,
            ..Self::default()
        }
    }

    /// Draws the tool bar and the canvas for `init` (the init image and its mask);
    /// `native_px` is the picked model's native size, for where an inpaint is painted.
    pub fn ui(
        &mut self,
        ui: &mut egui::Ui,
        init: Option<&mut Reference>,
        native_px: Option<(u32, u32)>,
    ) -> Option<CanvasAction> {
        let mut action = None;
        let Some(reference) = init else {
            self.textures = None;
            ui.centered_and_justified(|ui| {
                ui.weak(
                    "Add an image and choose it as init image to paint a mask (img2img, inpaint)",
                );
            });
            return None;
        };
        self.toolbar(ui, &mut reference.mask, &mut action);
        self.versions_bar(ui, reference);
        self.extend_bar(ui, reference);
        let crop = self.masked_area_box(reference, native_px);
        self.inpaint_bar(ui, crop);
        self.shortcuts(ui, &mut reference.mask);
        self.canvas(ui, reference, crop);
        action
    }

    fn toolbar(
        &mut self,
        ui: &mut egui::Ui,
        mask: &mut MaskLayer,
        action: &mut Option<CanvasAction>,
    ) {
        let framing = &mut self.framing;
        let b = &mut self.brush;
        ui.horizontal_wrapped(|ui| {
            for (tool, name) in [(Tool::Brush, "Brush"), (Tool::Eraser, "Eraser")] {
                if ui
                    .selectable_label(!*framing && b.tool == tool, name)
                    .clicked()
                {
                    b.tool = tool;
                    *framing = false;
                }
            }
            if ui
                .selectable_label(*framing, "Frame")
                .on_hover_text("Drag an edge or a corner outwards to extend the canvas there")
                .clicked()
            {
                *framing = true;
            }
            let label = ui.label("Size");
            ui.add(
                egui::DragValue::new(&mut b.radius_px)
                    .range(1.0..=1024.0)
                    .suffix(" px"),
            )
            .labelled_by(label.id)
            .on_hover_text("[ and ] change it");
            let label = ui.label("Softness");
            ui.add(egui::Slider::new(&mut b.softness, 0.0..=1.0).show_value(false))
                .labelled_by(label.id);
            let label = ui.label("Feather");
            ui.add(
                egui::DragValue::new(&mut b.feather_px)
                    .range(0..=256)
                    .suffix(" px"),
            )
            .labelled_by(label.id)
            .on_hover_text("Blur the mask edge so the repainted part blends in");
            ui.checkbox(&mut b.overlay_visible, "Show mask");
            ui.separator();
            if ui
                .add_enabled(mask.can_undo(), egui::Button::new("Undo"))
                .clicked()
            {
                mask.undo();
            }
            if ui
                .add_enabled(mask.can_redo(), egui::Button::new("Redo"))
                .clicked()
            {
                mask.redo();
            }
            if ui.button("Clear").clicked() {
                mask.clear();
            }
            if ui.button("Invert").clicked() {
                mask.invert();
            }
            if ui.button("Fill").clicked() {
                mask.fill();
            }
            ui.separator();
            if ui.button("Save mask…").clicked() {
                *action = Some(CanvasAction::SaveMask);
            }
            if ui.button("Load mask…").clicked() {
                *action = Some(CanvasAction::LoadMask);
            }
            if ui
                .button("Fit")
                .on_hover_text("Fit the image to the panel (0)")
                .clicked()
            {
                self.view.reset();
            }
        });
    }

    /// Where an inpaint is painted, its context and colour matching; the masked area's box
    /// when it applies.
    fn inpaint_bar(&mut self, ui: &mut egui::Ui, crop: Option<CropBox>) {
        let b = &mut self.brush;
        ui.horizontal_wrapped(|ui| {
            let label = ui.label("Inpaint area");
            egui::ComboBox::from_id_salt("inpaint-area")
                .selected_text(area_name(b.inpaint_area))
                .show_ui(ui, |ui| {
                    for area in [InpaintArea::Auto, InpaintArea::Masked, InpaintArea::Whole] {
                        ui.selectable_value(&mut b.inpaint_area, area, area_name(area));
                    }
                })
                .response
                .labelled_by(label.id)
                .on_hover_text(
                    "Masked: a box around the mask is painted at the model's native size and \
                     blended back. Auto: masked when the image is larger than native.",
                );
            let label = ui.label("Padding");
            ui.add(
                egui::DragValue::new(&mut b.mask_padding_px)
                    .range(0..=1024)
                    .suffix(" px"),
            )
            .labelled_by(label.id)
            .on_hover_text("Context around the mask that the masked area includes");
            ui.checkbox(&mut b.match_colours, "Match colours")
                .on_hover_text("Match the repaint's colours to the pixels around the mask");
            if let Some(crop) = crop {
                ui.label(format!(
                    "Masked area: {}x{} px at {},{}",
                    crop.width, crop.height, crop.x, crop.y
                ));
            }
        });
    }

    /// Outpainting: the canvas grown on any side, the new area filled from the edges and
    /// masked (the grown image is a new version: "Previous version" takes it back). The fill
    /// is made off the UI thread and shown when it arrives, if the image is still the same.
    fn extend_bar(&mut self, ui: &mut egui::Ui, reference: &mut Reference) {
        let current = ImageKey {
            reference: reference.id,
            image_revision: reference.versions.image_revision,
        };
        for (key, image, mask) in self.extensions.poll() {
            if key == current {
                reference.replace_image(Version {
                    image: std::sync::Arc::new(image),
                    path: None,
                    mask: Some(mask),
                });
                self.view.reset();
            }
        }
        ui.horizontal_wrapped(|ui| {
            ui.label("Extend").on_hover_text(
                "Pixels to add on each side; or choose Frame and drag the picture's edges",
            );
            for (value, side) in self
                .extend_px
                .iter_mut()
                .zip(["left", "top", "right", "bottom"])
            {
                let label = ui.label(side);
                ui.add(
                    egui::DragValue::new(value)
                        .range(0..=MAX_EXTEND_PX)
                        .suffix(" px"),
                )
                .labelled_by(label.id);
            }
            let [left, top, right, bottom] = self.extend_px;
            let extend = Extend {
                left,
                top,
                right,
                bottom,
            };
            let idle = !self.extensions.is_busy();
            if ui
                .add_enabled(
                    idle && !extend.is_empty(),
                    egui::Button::new("Extend canvas"),
                )
                .on_hover_text("Grow the picture; the new area is masked for the next generation")
                .clicked()
            {
                let image = reference.image.clone();
                let mask = reference.mask.pixels().clone();
                let spawned = self.extensions.spawn("extend-canvas", ui.ctx(), move || {
                    let (image, mask) =
                        extend_canvas(&image, Some(&mask), extend, ExtendFill::Edge, 0);
                    (current, image, mask)
                });
                if spawned.is_ok() {
                    self.extend_px = [0; 4];
                }
            }
            if !idle {
                ui.spinner();
            }
            if !extend.is_empty() {
                let (width, height) = reference.image.dimensions();
                ui.label(format!(
                    "New size: {}x{} px",
                    width + left + right,
                    height + top + bottom
                ));
            }
        });
    }

    /// Steps through the images results replaced, when there are any, and compares with the
    /// previous one.
    fn versions_bar(&mut self, ui: &mut egui::Ui, reference: &mut Reference) {
        let versions = &reference.versions;
        if versions.earlier.is_empty() && versions.later.is_empty() {
            self.compare = false;
            return;
        }
        let (earlier, later) = (versions.earlier.len(), versions.later.len());
        ui.horizontal_wrapped(|ui| {
            ui.label(format!(
                "Version {} of {}",
                earlier + 1,
                earlier + later + 1
            ));
            if ui
                .add_enabled(earlier > 0, egui::Button::new("Previous version"))
                .on_hover_text("Back to the image before the last result replaced it")
                .clicked()
            {
                reference.previous_version();
            }
            if ui
                .add_enabled(later > 0, egui::Button::new("Next version"))
                .clicked()
            {
                reference.next_version();
            }
            ui.add_enabled(
                earlier > 0,
                egui::Checkbox::new(&mut self.compare, "Compare with previous"),
            )
            .on_hover_text("Show the previous version in place of this one");
            if self.is_comparing() {
                ui.weak("(the previous version is shown)");
            }
        });
        if reference.versions.earlier.is_empty() {
            self.compare = false;
        }
    }

    /// The previous version's textures, made when a comparison first shows them.
    fn previous_textures(
        &mut self,
        ctx: &egui::Context,
        reference: &Reference,
    ) -> Option<&TiledTexture> {
        let previous = reference.versions.earlier.last()?;
        if previous.image.dimensions() != reference.image.dimensions() {
            return None;
        }
        let key = ImageKey {
            reference: reference.id,
            image_revision: reference.versions.image_revision,
        };
        if self
            .previous
            .as_ref()
            .is_none_or(|(made_for, _)| *made_for != key)
        {
            let image = &previous.image;
            let texture = TiledTexture::new(
                ctx,
                &format!("previous-{}", reference.id),
                image.dimensions(),
                egui::TextureOptions::LINEAR,
                |rect| rgb_pixels(image, rect),
            );
            self.previous = Some((key, texture));
        }
        self.previous.as_ref().map(|(_, texture)| texture)
    }

    /// Whether the canvas shows the previous version now.
    pub fn is_comparing(&self) -> bool {
        self.compare && self.previous.is_some()
    }

    /// Whether an extended canvas is still being made.
    pub fn is_extending(&self) -> bool {
        self.extensions.is_busy()
    }

    /// The box a job would cut around `reference`'s mask, when the masked area is painted:
    /// the mask's bounds (kept by the mask as it is painted) grown by the padding and the
    /// feather radius.
    fn masked_area_box(
        &self,
        reference: &Reference,
        native_px: Option<(u32, u32)>,
    ) -> Option<CropBox> {
        let size = reference.image.dimensions();
        let masked = native_px
            .is_some_and(|native| self.brush.inpaint_area.paints_masked_area(size, native));
        if !masked {
            return None;
        }
        let bounds = reference.mask.bounds()?;
        Some(grown_box(
            (bounds.x0, bounds.y0, bounds.x1, bounds.y1),
            self.brush.mask_padding_px + self.brush.feather_px,
            size,
        ))
    }

    /// Keys that act on the canvas while no text field has the keyboard.
    fn shortcuts(&mut self, ui: &mut egui::Ui, mask: &mut MaskLayer) {
        if ui.ctx().egui_wants_keyboard_input() {
            return;
        }
        let shift_command = Modifiers::COMMAND | Modifiers::SHIFT;
        ui.input_mut(|i| {
            if i.consume_key(shift_command, Key::Z) {
                mask.redo();
            } else if i.consume_key(Modifiers::COMMAND, Key::Z) {
                mask.undo();
            }
            if i.consume_key(Modifiers::NONE, Key::OpenBracket) {
                self.brush.radius_px = (self.brush.radius_px / 1.25).max(1.0);
            }
            if i.consume_key(Modifiers::NONE, Key::CloseBracket) {
                self.brush.radius_px = (self.brush.radius_px * 1.25).min(1024.0);
            }
            if i.consume_key(Modifiers::NONE, Key::Num0) {
                self.view.reset();
            }
        });
    }

    fn canvas(&mut self, ui: &mut egui::Ui, reference: &mut Reference, crop: Option<CropBox>) {
        let (panel, response) =
            ui.allocate_exact_size(ui.available_size(), Sense::click_and_drag());
        response.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Image, true, "Mask canvas"));
        let image_px = Vec2::new(
            reference.image.width() as f32,
            reference.image.height() as f32,
        );

        // Zoom: wheel, pinch, keys; about the pointer when it is over the canvas.
        let (scroll, pinch, space, middle, primary, zoom_keys) = ui.input(|i| {
            let zoom_keys = if i.key_pressed(Key::Plus) || i.key_pressed(Key::Equals) {
                1.25
            } else if i.key_pressed(Key::Minus) {
                0.8
            } else {
                1.0
            };
            (
                i.smooth_scroll_delta.y,
                i.zoom_delta(),
                i.key_down(Key::Space),
                i.pointer.middle_down(),
                i.pointer.primary_down(),
                zoom_keys,
            )
        });
        let anchor = response.hover_pos().unwrap_or(panel.center());
        if response.hovered() {
            let factor = (scroll * 0.002).exp() * pinch;
            if (factor - 1.0).abs() > 1e-4 {
                self.view.zoom_about(panel, image_px, anchor, factor);
            }
        }
        if zoom_keys != 1.0 && !ui.ctx().egui_wants_keyboard_input() {
            self.view.zoom_about(panel, image_px, anchor, zoom_keys);
        }

        // Pan: middle-drag or space-drag. Paint: primary press and drag.
        let pressed_here = response.is_pointer_button_down_on();
        self.panning = pressed_here && (middle || (space && primary));
        if self.panning {
            self.view.pan += response.drag_delta();
        }
        let mask = &mut reference.mask;
        let pointer_px = response
            .interact_pointer_pos()
            .map(|p| self.view.image_px_at(panel, image_px, p));
        let painting = pressed_here && primary && !self.panning;
        if self.framing {
            // The frame tool: the grabbed sides follow the pointer; the mask is untouched.
            match pointer_px {
                Some(p) if painting => {
                    if self.frame_drag.is_none() {
                        self.frame_drag = FrameDrag::grab(p, image_px);
                    }
                    if let Some(drag) = self.frame_drag {
                        drag.drag_to(p, image_px, &mut self.extend_px);
                    }
                }
                _ => self.frame_drag = None,
            }
        }
        match pointer_px {
            Some(p) if painting && !self.framing => {
                if mask.is_painting() {
                    mask.extend_stroke(self.brush.tip(), (p.x, p.y));
                } else {
                    mask.begin_stroke(self.brush.tip(), (p.x, p.y));
                }
            }
            _ => mask.end_stroke(),
        }

        let image_rect = self.view.image_rect(panel, image_px);
        let overlay_visible = self.brush.overlay_visible;
        let scale = self.view.scale(panel, image_px);
        let painter = ui.painter_at(panel);
        painter.rect_filled(panel, 0.0, ui.visuals().extreme_bg_color);
        self.textures_for(ui.ctx(), reference);
        let comparing = self.compare && self.previous_textures(ui.ctx(), reference).is_some();
        if !comparing {
            self.previous = None;
        }
        let Some(textures) = self.textures.as_ref() else {
            return;
        };
        match self.previous.as_ref().filter(|_| comparing) {
            // The previous version, without the mask: what the result replaced.
            Some((_, previous)) => previous.paint(&painter, image_rect, scale, panel),
            None => {
                textures.image.paint(&painter, image_rect, scale, panel);
                if overlay_visible {
                    textures.overlay.paint(&painter, image_rect, scale, panel);
                }
            }
        }
        // The masked area's box, where the model will paint.
        if let Some(crop) = crop {
            let scale = self.view.scale(panel, image_px);
            let min = image_rect.min + Vec2::new(crop.x as f32, crop.y as f32) * scale;
            let size = Vec2::new(crop.width as f32, crop.height as f32) * scale;
            painter.rect_stroke(
                egui::Rect::from_min_size(min, size),
                0.0,
                (1.5, Color32::from_rgb(255, 200, 40)),
                egui::StrokeKind::Outside,
            );
        }
        frame::paint_frame(&painter, image_rect, scale, self.extend_px);
        // The brush outline, so the artist sees its size at this zoom.
        if let Some(hover) = response.hover_pos().filter(|_| !self.framing) {
            let radius = self.brush.radius_px * self.view.scale(panel, image_px);
            painter.circle_stroke(hover, radius, (1.0, ui.visuals().strong_text_color()));
        }
    }

    /// The textures for `reference`, made when it is first shown and updated where its
    /// mask changed since.
    fn textures_for(&mut self, ctx: &egui::Context, reference: &mut Reference) -> &CanvasTextures {
        let stale = self.textures.as_ref().is_none_or(|t| {
            t.reference != reference.id || t.image_revision != reference.versions.image_revision
        });
        if stale {
            let image = &reference.image;
            let mask = reference.mask.pixels();
            let image_texture = TiledTexture::new(
                ctx,
                &format!("canvas-{}", reference.id),
                image.dimensions(),
                egui::TextureOptions::LINEAR,
                |rect| rgb_pixels(image, rect),
            );
            let overlay = TiledTexture::new(
                ctx,
                &format!("overlay-{}", reference.id),
                mask.dimensions(),
                egui::TextureOptions::NEAREST,
                |rect| overlay_image(mask, Some(rect)),
            );
            reference.mask.take_changed();
            self.textures = Some(CanvasTextures {
                reference: reference.id,
                image_revision: reference.versions.image_revision,
                image: image_texture,
                overlay,
                feathered: None,
            });
        }
        let feather = self.brush.feather_px;
        let mask = &mut reference.mask;
        let Some(textures) = self.textures.as_mut() else {
            unreachable!("textures were made above")
        };
        let wanted = FeatherKey {
            reference: reference.id,
            image_revision: reference.versions.image_revision,
            revision: mask.revision(),
            feather_px: feather,
        };
        let mut ready = None;
        for (key, soft) in self.feather_previews.poll() {
            if key == wanted {
                ready = Some(soft);
            }
        }
        if feather > 0 && !mask.is_painting() {
            // Live feather preview: the blurred mask is computed off the UI thread (seconds
            // on a 4096 px mask in a debug build) and shown when it arrives; the plain mask
            // stays on screen meanwhile.
            if let Some(soft) = ready {
                textures
                    .overlay
                    .update(None, |rect| overlay_image(&soft, Some(rect)));
                textures.feathered = Some(wanted);
                mask.take_changed();
            } else if textures.feathered != Some(wanted) && self.feather_requested != Some(wanted) {
                let pixels = mask.pixels().clone();
                let spawned = self
                    .feather_previews
                    .spawn("feather-preview", ctx, move || {
                        let soft = easel_engine::pipeline::image::feather_mask(&pixels, feather);
                        (wanted, soft)
                    });
                if spawned.is_ok() {
                    self.feather_requested = Some(wanted);
                }
            }
        } else if textures.feathered.take().is_some() {
            let pixels = mask.pixels();
            textures
                .overlay
                .update(None, |rect| overlay_image(pixels, Some(rect)));
            mask.take_changed();
        }
        if textures.feathered.is_none() {
            if let Some(rect) = mask.take_changed() {
                // Only the changed pixels of the touched tiles go to the GPU: painting on a
                // large image stays cheap.
                let pixels = mask.pixels();
                textures
                    .overlay
                    .update(Some(rect), |part| overlay_image(pixels, Some(part)));
            }
        }
        textures
    }
}

fn area_name(area: InpaintArea) -> &'static str {
    match area {
        InpaintArea::Auto => "Auto",
        InpaintArea::Masked => "Masked area",
        InpaintArea::Whole => "Whole image",
    }
}

/// The overlay pixels for `rect` of `mask` (all of it when `None`).
fn overlay_image(mask: &image::GrayImage, rect: Option<mask::PixelRect>) -> egui::ColorImage {
    let rect = rect.unwrap_or(mask::PixelRect {
        x0: 0,
        y0: 0,
        x1: mask.width(),
        y1: mask.height(),
    });
    let mut pixels = Vec::with_capacity((rect.width() * rect.height()) as usize);
    for y in rect.y0..rect.y1 {
        for x in rect.x0..rect.x1 {
            let alpha = (f32::from(mask.get_pixel(x, y).0[0]) * OVERLAY_OPACITY) as u8;
            let [r, g, b] = OVERLAY_RGB;
            pixels.push(Color32::from_rgba_unmultiplied(r, g, b, alpha));
        }
    }
    egui::ColorImage::new([rect.width() as usize, rect.height() as usize], pixels)
}
