//! The painted mask of one image: an image-sized buffer edited per stroke segment, with undo
//! over whole strokes and a record of the region changed since the texture was last updated.

use std::path::Path;

use image::GrayImage;

/// A rectangle of image pixels: `x0..x1`, `y0..y1` (exclusive ends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelRect {
    /// Left edge.
    pub x0: u32,
    /// Top edge.
    pub y0: u32,
    /// One past the right edge.
    pub x1: u32,
    /// One past the bottom edge.
    pub y1: u32,
}

impl PixelRect {
    fn union(self, other: PixelRect) -> PixelRect {
        PixelRect {
            x0: self.x0.min(other.x0),
            y0: self.y0.min(other.y0),
            x1: self.x1.max(other.x1),
            y1: self.y1.max(other.y1),
        }
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.x1 - self.x0
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.y1 - self.y0
    }
}

/// Brush or eraser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Tool {
    /// Adds to the mask (the region to repaint).
    Brush,
    /// Removes from the mask.
    Eraser,
}

/// How a stroke marks pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BrushTip {
    /// Brush or eraser.
    pub tool: Tool,
    /// Radius in image pixels.
    pub radius_px: f32,
    /// 0 is a hard edge; 1 fades from the centre.
    pub softness: f32,
}

impl BrushTip {
    /// Coverage 0..=1 at `distance_px` from the centre.
    fn coverage(&self, distance_px: f32) -> f32 {
        let radius = self.radius_px.max(0.5);
        let hard = radius * (1.0 - self.softness.clamp(0.0, 1.0));
        if distance_px <= hard {
            1.0
        } else if distance_px >= radius {
            0.0
        } else {
            1.0 - (distance_px - hard) / (radius - hard)
        }
    }
}

/// One undoable change: the pixels of `rect` before and after.
#[derive(Debug)]
struct MaskEdit {
    rect: PixelRect,
    before: Vec<u8>,
    after: Vec<u8>,
}

/// The stroke being painted: the buffer as it was when the stroke began, and where it drew.
#[derive(Debug)]
struct OpenStroke {
    touched: Option<PixelRect>,
    last_point: (f32, f32),
}

/// Which way through the history.
#[derive(Debug, Clone, Copy)]
enum HistoryStep {
    Undo,
    Redo,
}

/// Undo steps kept per mask; older strokes fall off.
const UNDO_LIMIT: usize = 100;
/// Side of the blocks a stroke saves before it first paints on them (for its undo step), so
/// that beginning a stroke on a large mask copies nothing.
const SAVED_BLOCK_PX: u32 = 128;

/// What is known of the masked pixels' bounding box at a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KnownBounds {
    revision: u64,
    /// `None`: nothing is masked.
    bounds: Option<PixelRect>,
    /// Erasing may have shrunk the box without this knowing: `bounds` holds every masked
    /// pixel but may be larger than they need.
    loose: bool,
}

/// The box around the non-zero pixels of `pixels`, by one scan.
fn measure_bounds(pixels: &GrayImage) -> Option<PixelRect> {
    let width = pixels.width() as usize;
    let mut bounds: Option<PixelRect> = None;
    for (y, row) in pixels.as_raw().chunks(width.max(1)).enumerate() {
        let Some(first) = row.iter().position(|&v| v > 0) else {
            continue;
        };
        let last = row.iter().rposition(|&v| v > 0).unwrap_or(first);
        let rect = PixelRect {
            x0: first as u32,
            y0: y as u32,
            x1: last as u32 + 1,
            y1: y as u32 + 1,
        };
        bounds = Some(bounds.map_or(rect, |b| b.union(rect)));
    }
    bounds
}

/// A mask the size of its image: 255 repaints, 0 keeps.
#[derive(Debug)]
pub struct MaskLayer {
    pixels: GrayImage,
    /// Blocks of the buffer as they were when the open stroke began, saved before the stroke
    /// first painted on each (by block index).
    stroke_start: std::collections::HashMap<(u32, u32), Vec<u8>>,
    stroke: Option<OpenStroke>,
    undo: Vec<MaskEdit>,
    redo: Vec<MaskEdit>,
    changed: Option<PixelRect>,
    /// Bumped on every change, so views and savers know when to refresh.
    revision: u64,
    /// The masked pixels' box as last known: the mode and the masked area are asked every
    /// frame, and scanning a large mask that often would cost more than painting it. Brush
    /// dabs grow it as they paint; other edits leave it to be measured again.
    known_bounds: std::cell::Cell<Option<KnownBounds>>,
}

impl MaskLayer {
    /// An empty mask of `width x height` pixels.
    pub fn new(width: u32, height: u32) -> Self {
        Self::from_image(GrayImage::new(width, height))
    }

    /// A mask with these pixels (no undo history).
    pub fn from_image(pixels: GrayImage) -> Self {
        let (width, height) = pixels.dimensions();
        Self {
            pixels,
            stroke_start: std::collections::HashMap::new(),
            stroke: None,
            undo: Vec::new(),
            redo: Vec::new(),
            changed: Some(PixelRect {
                x0: 0,
                y0: 0,
                x1: width,
                y1: height,
            }),
            revision: 0,
            known_bounds: std::cell::Cell::new(None),
        }
    }

    /// The mask pixels, without the history.
    pub fn into_pixels(self) -> GrayImage {
        self.pixels
    }

    /// The mask pixels.
    pub fn pixels(&self) -> &GrayImage {
        &self.pixels
    }

    /// Whether nothing is masked.
    pub fn is_empty(&self) -> bool {
        self.bounds().is_none()
    }

    /// The box around every masked pixel (`None` when nothing is masked). While an eraser
    /// stroke is open it may be larger than the pixels need; it is exact otherwise.
    pub fn bounds(&self) -> Option<PixelRect> {
        match self.known_bounds.get() {
            Some(known)
                if known.revision == self.revision && (!known.loose || self.stroke.is_some()) =>
            {
                known.bounds
            }
            _ => {
                let bounds = measure_bounds(&self.pixels);
                self.known_bounds.set(Some(KnownBounds {
                    revision: self.revision,
                    bounds,
                    loose: false,
                }));
                bounds
            }
        }
    }

    /// Changes with every edit.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Whether a stroke is being painted.
    pub fn is_painting(&self) -> bool {
        self.stroke.is_some()
    }

    /// The region changed since the last call, for a partial texture update.
    pub fn take_changed(&mut self) -> Option<PixelRect> {
        self.changed.take()
    }

    fn full_rect(&self) -> PixelRect {
        let (x1, y1) = self.pixels.dimensions();
        PixelRect {
            x0: 0,
            y0: 0,
            x1,
            y1,
        }
    }

    fn mark_changed(&mut self, rect: PixelRect) {
        self.changed = Some(match self.changed {
            Some(before) => before.union(rect),
            None => rect,
        });
        self.revision += 1;
    }

    /// Starts a stroke with a dab at `point_px` (image pixels).
    pub fn begin_stroke(&mut self, tip: BrushTip, point_px: (f32, f32)) {
        if self.stroke.is_some() {
            self.end_stroke();
        }
        self.stroke_start.clear();
        self.stroke = Some(OpenStroke {
            touched: None,
            last_point: point_px,
        });
        self.dab_segment(tip, point_px, point_px);
    }

    /// Continues the open stroke to `point_px`.
    pub fn extend_stroke(&mut self, tip: BrushTip, point_px: (f32, f32)) {
        let Some(from) = self.stroke.as_ref().map(|s| s.last_point) else {
            self.begin_stroke(tip, point_px);
            return;
        };
        self.dab_segment(tip, from, point_px);
        if let Some(stroke) = &mut self.stroke {
            stroke.last_point = point_px;
        }
    }

    /// Closes the open stroke as one undo step.
    pub fn end_stroke(&mut self) {
        let Some(stroke) = self.stroke.take() else {
            return;
        };
        let Some(rect) = stroke.touched else {
            return;
        };
        let after = crop(self.pixels.as_raw(), self.pixels.width(), rect);
        let before = self.before_stroke(rect, &after);
        if before != after {
            self.push_edit(MaskEdit {
                rect,
                before,
                after,
            });
        }
    }

    /// Stamps dabs along `from..to` at a spacing of a quarter radius.
    fn dab_segment(&mut self, tip: BrushTip, from: (f32, f32), to: (f32, f32)) {
        let length = ((to.0 - from.0).powi(2) + (to.1 - from.1).powi(2)).sqrt();
        let spacing = (tip.radius_px * 0.25).max(0.5);
        let dabs = (length / spacing).ceil().max(1.0) as usize;
        for i in 0..=dabs {
            let t = i as f32 / dabs as f32;
            let centre = (from.0 + (to.0 - from.0) * t, from.1 + (to.1 - from.1) * t);
            let known = self
                .known_bounds
                .get()
                .filter(|k| k.revision == self.revision);
            if let Some(rect) = self.dab(tip, centre) {
                if let Some(stroke) = &mut self.stroke {
                    stroke.touched = Some(match stroke.touched {
                        Some(r) => r.union(rect),
                        None => rect,
                    });
                }
                self.mark_changed(rect);
                // A brush dab grows the box by what it covered; an eraser's leaves it loose.
                let grown = known.map(|k| match tip.tool {
                    Tool::Brush => KnownBounds {
                        revision: self.revision,
                        bounds: Some(k.bounds.map_or(rect, |b| b.union(rect))),
                        loose: k.loose,
                    },
                    Tool::Eraser => KnownBounds {
                        revision: self.revision,
                        bounds: k.bounds,
                        loose: true,
                    },
                });
                self.known_bounds.set(grown);
            }
        }
    }

    /// Saves the blocks under `rect` that the open stroke has not touched yet.
    fn save_blocks(&mut self, rect: PixelRect) {
        let width = self.pixels.width();
        for by in rect.y0 / SAVED_BLOCK_PX..=(rect.y1 - 1) / SAVED_BLOCK_PX {
            for bx in rect.x0 / SAVED_BLOCK_PX..=(rect.x1 - 1) / SAVED_BLOCK_PX {
                if self.stroke_start.contains_key(&(bx, by)) {
                    continue;
                }
                let block = self.block_rect(bx, by);
                let saved = crop(self.pixels.as_raw(), width, block);
                self.stroke_start.insert((bx, by), saved);
            }
        }
    }

    fn block_rect(&self, bx: u32, by: u32) -> PixelRect {
        let (width, height) = self.pixels.dimensions();
        PixelRect {
            x0: bx * SAVED_BLOCK_PX,
            y0: by * SAVED_BLOCK_PX,
            x1: ((bx + 1) * SAVED_BLOCK_PX).min(width),
            y1: ((by + 1) * SAVED_BLOCK_PX).min(height),
        }
    }

    /// The pixels of `rect` as they were when the open stroke began: the saved blocks, and
    /// `after` (the pixels now) where the stroke never painted.
    fn before_stroke(&self, rect: PixelRect, after: &[u8]) -> Vec<u8> {
        let mut before = after.to_vec();
        let rect_width = rect.width() as usize;
        for (&(bx, by), saved) in &self.stroke_start {
            let block = self.block_rect(bx, by);
            let block_width = block.width() as usize;
            let x0 = block.x0.max(rect.x0);
            let x1 = block.x1.min(rect.x1);
            if x0 >= x1 {
                continue;
            }
            for y in block.y0.max(rect.y0)..block.y1.min(rect.y1) {
                let from = (y - block.y0) as usize * block_width + (x0 - block.x0) as usize;
                let to = (y - rect.y0) as usize * rect_width + (x0 - rect.x0) as usize;
                let len = (x1 - x0) as usize;
                before[to..to + len].copy_from_slice(&saved[from..from + len]);
            }
        }
        before
    }

    /// One round dab; returns the box of the pixels it covered (clipped to the image).
    fn dab(&mut self, tip: BrushTip, centre: (f32, f32)) -> Option<PixelRect> {
        let (width, height) = self.pixels.dimensions();
        let radius = tip.radius_px.max(0.5);
        let x0 = (centre.0 - radius).floor().max(0.0) as u32;
        let y0 = (centre.1 - radius).floor().max(0.0) as u32;
        let x1 = ((centre.0 + radius).ceil().max(0.0) as u32 + 1).min(width);
        let y1 = ((centre.1 + radius).ceil().max(0.0) as u32 + 1).min(height);
        if x0 >= x1 || y0 >= y1 {
            return None;
        }
        if self.stroke.is_some() {
            self.save_blocks(PixelRect { x0, y0, x1, y1 });
        }
        // Only the pixels the tip covers: the box kept around the mask stays exact.
        let mut covered: Option<PixelRect> = None;
        for y in y0..y1 {
            for x in x0..x1 {
                // Pixel centres are at +0.5.
                let dx = x as f32 + 0.5 - centre.0;
                let dy = y as f32 + 0.5 - centre.1;
                let coverage = tip.coverage((dx * dx + dy * dy).sqrt());
                if coverage <= 0.0 {
                    continue;
                }
                covered = Some(covered.map_or(
                    PixelRect {
                        x0: x,
                        y0: y,
                        x1: x + 1,
                        y1: y + 1,
                    },
                    |r: PixelRect| {
                        r.union(PixelRect {
                            x0: x,
                            y0: y,
                            x1: x + 1,
                            y1: y + 1,
                        })
                    },
                ));
                let value = (coverage * 255.0).round() as u8;
                let pixel = &mut self.pixels.get_pixel_mut(x, y).0[0];
                // Max/min rather than adding, so overlapping dabs never build up.
                *pixel = match tip.tool {
                    Tool::Brush => (*pixel).max(value),
                    Tool::Eraser => (*pixel).min(255 - value),
                };
            }
        }
        covered
    }

    fn push_edit(&mut self, edit: MaskEdit) {
        self.undo.push(edit);
        if self.undo.len() > UNDO_LIMIT {
            self.undo.remove(0);
        }
        self.redo.clear();
    }

    /// Replaces every pixel by `f(pixel)` as one undo step.
    fn edit_all(&mut self, f: impl Fn(u8) -> u8) {
        self.end_stroke();
        let before = self.pixels.as_raw().clone();
        for value in self.pixels.iter_mut() {
            *value = f(*value);
        }
        self.commit_whole_mask(before);
    }

    /// Records a change of the whole mask from `before` as one undo step (none when nothing
    /// changed).
    fn commit_whole_mask(&mut self, before: Vec<u8>) {
        if before != *self.pixels.as_raw() {
            let rect = self.full_rect();
            self.push_edit(MaskEdit {
                rect,
                before,
                after: self.pixels.as_raw().clone(),
            });
            self.mark_changed(rect);
        }
    }

    /// Unmasks everything.
    pub fn clear(&mut self) {
        self.edit_all(|_| 0);
    }

    /// Masks everything.
    pub fn fill(&mut self) {
        self.edit_all(|_| 255);
    }

    /// Swaps masked and kept.
    pub fn invert(&mut self) {
        self.edit_all(|v| 255 - v);
    }

    /// Replaces the mask by `pixels` (same size) as one undo step.
    pub fn replace(&mut self, pixels: &GrayImage) -> Result<(), String> {
        if pixels.dimensions() != self.pixels.dimensions() {
            return Err(format!(
                "the mask is {}x{} but the image is {}x{}; paint or load a mask of the image's size",
                pixels.width(),
                pixels.height(),
                self.pixels.width(),
                self.pixels.height()
            ));
        }
        self.end_stroke();
        let before = self.pixels.as_raw().clone();
        self.pixels.copy_from_slice(pixels.as_raw());
        self.commit_whole_mask(before);
        Ok(())
    }

    /// Undoes the last stroke or whole-mask edit; false when there is none.
    pub fn undo(&mut self) -> bool {
        self.step_history(HistoryStep::Undo)
    }

    /// Redoes the last undone edit; false when there is none.
    pub fn redo(&mut self) -> bool {
        self.step_history(HistoryStep::Redo)
    }

    /// Moves one edit from one history stack to the other, putting back its pixels.
    fn step_history(&mut self, step: HistoryStep) -> bool {
        self.end_stroke();
        let (from, to) = match step {
            HistoryStep::Undo => (&mut self.undo, &mut self.redo),
            HistoryStep::Redo => (&mut self.redo, &mut self.undo),
        };
        let Some(edit) = from.pop() else {
            return false;
        };
        let pixels = match step {
            HistoryStep::Undo => &edit.before,
            HistoryStep::Redo => &edit.after,
        };
        paste(&mut self.pixels, edit.rect, pixels);
        let rect = edit.rect;
        to.push(edit);
        self.mark_changed(rect);
        true
    }

    /// Whether there is something to undo.
    pub fn can_undo(&self) -> bool {
        !self.undo.is_empty() || self.stroke.is_some()
    }

    /// Whether there is something to redo.
    pub fn can_redo(&self) -> bool {
        !self.redo.is_empty()
    }

    /// Writes the mask as a greyscale PNG, whole or not at all.
    pub fn save_png(&self, path: &Path) -> Result<(), String> {
        let fail = |e: &dyn std::fmt::Display| {
            format!("could not save the mask to {}: {e}", path.display())
        };
        let mut encoded = Vec::new();
        self.pixels
            .write_to(
                &mut std::io::Cursor::new(&mut encoded),
                image::ImageFormat::Png,
            )
            .map_err(|e| fail(&e))?;
        easel_engine::atomic_file::write_bytes(path, &encoded).map_err(|e| fail(&e))
    }

    /// Reads a mask image (any format `image` reads, by content; colour becomes grey,
    /// transparent pixels unpainted).
    pub fn read_png(path: &Path) -> Result<GrayImage, String> {
        easel_engine::image_file::read_mask_file(path)
            .map_err(|e| format!("could not read the mask: {e}"))
    }
}

fn crop(buffer: &[u8], width: u32, rect: PixelRect) -> Vec<u8> {
    let mut out = Vec::with_capacity((rect.width() * rect.height()) as usize);
    for y in rect.y0..rect.y1 {
        let start = (y * width + rect.x0) as usize;
        out.extend_from_slice(&buffer[start..start + rect.width() as usize]);
    }
    out
}

fn paste(image: &mut GrayImage, rect: PixelRect, pixels: &[u8]) {
    let width = image.width();
    let buffer: &mut [u8] = image;
    for (row, y) in (rect.y0..rect.y1).enumerate() {
        let start = (y * width + rect.x0) as usize;
        let from = row * rect.width() as usize;
        buffer[start..start + rect.width() as usize]
            .copy_from_slice(&pixels[from..from + rect.width() as usize]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HARD: BrushTip = BrushTip {
        tool: Tool::Brush,
        radius_px: 3.0,
        softness: 0.0,
    };

    fn stroke(mask: &mut MaskLayer, tip: BrushTip, from: (f32, f32), to: (f32, f32)) {
        mask.begin_stroke(tip, from);
        mask.extend_stroke(tip, to);
        mask.end_stroke();
    }

    #[test]
    fn a_stroke_masks_along_its_path_and_reports_only_what_changed() {
        let mut mask = MaskLayer::new(64, 32);
        mask.take_changed();
        stroke(&mut mask, HARD, (10.0, 10.0), (30.0, 10.0));
        assert_eq!(mask.pixels().get_pixel(20, 10).0[0], 255);
        assert_eq!(mask.pixels().get_pixel(20, 25).0[0], 0);
        let changed = mask.take_changed().expect("changed");
        assert!(changed.x0 >= 6 && changed.x1 <= 35 && changed.y0 >= 6 && changed.y1 <= 15);
        assert_eq!(mask.take_changed(), None);
    }

    #[test]
    fn the_bounds_follow_brush_and_eraser_and_match_a_scan() {
        let mut mask = MaskLayer::new(300, 200);
        assert_eq!(mask.bounds(), None);
        stroke(&mut mask, HARD, (20.0, 20.0), (40.0, 30.0));
        stroke(&mut mask, HARD, (250.0, 150.0), (260.0, 150.0));
        assert_eq!(mask.bounds(), measure_bounds(mask.pixels()));
        assert!(mask.bounds().is_some_and(|b| b.x0 <= 17 && b.x1 >= 263));
        let eraser = BrushTip {
            tool: Tool::Eraser,
            radius_px: 12.0,
            ..HARD
        };
        stroke(&mut mask, eraser, (245.0, 150.0), (265.0, 150.0));
        assert_eq!(mask.bounds(), measure_bounds(mask.pixels()));
        assert!(
            mask.bounds().is_some_and(|b| b.x1 <= 44),
            "{:?}",
            mask.bounds()
        );
        mask.clear();
        assert!(mask.is_empty());
    }

    #[test]
    fn a_stroke_across_saved_blocks_undoes_to_the_pixels_before_it() {
        let mut mask = MaskLayer::new(400, 300);
        stroke(&mut mask, HARD, (10.0, 10.0), (390.0, 290.0));
        let before = mask.pixels().clone();
        let wide = BrushTip {
            radius_px: 40.0,
            ..HARD
        };
        stroke(&mut mask, wide, (390.0, 10.0), (10.0, 290.0));
        assert_ne!(mask.pixels(), &before);
        assert!(mask.undo());
        assert_eq!(mask.pixels(), &before);
        assert!(mask.redo());
        assert_ne!(mask.pixels(), &before);
    }

    #[test]
    fn undo_and_redo_work_on_whole_strokes() {
        let mut mask = MaskLayer::new(32, 32);
        stroke(&mut mask, HARD, (5.0, 5.0), (25.0, 5.0));
        let one_stroke = mask.pixels().clone();
        stroke(&mut mask, HARD, (5.0, 20.0), (25.0, 20.0));
        assert!(mask.undo());
        assert_eq!(mask.pixels(), &one_stroke);
        assert!(mask.undo());
        assert!(mask.is_empty());
        assert!(!mask.undo());
        assert!(mask.redo());
        assert_eq!(mask.pixels(), &one_stroke);
    }

    #[test]
    fn invert_fill_clear_and_eraser() {
        let mut mask = MaskLayer::new(16, 16);
        mask.invert();
        assert!(mask.pixels().iter().all(|&v| v == 255));
        let eraser = BrushTip {
            tool: Tool::Eraser,
            ..HARD
        };
        stroke(&mut mask, eraser, (8.0, 8.0), (8.0, 8.0));
        assert_eq!(mask.pixels().get_pixel(8, 8).0[0], 0);
        mask.clear();
        assert!(mask.is_empty());
        mask.fill();
        assert!(!mask.is_empty());
        assert!(mask.undo() && mask.undo());
        assert_eq!(mask.pixels().get_pixel(8, 8).0[0], 0);
    }

    #[test]
    fn a_soft_brush_fades_and_feathering_spreads_the_edge() {
        let mut mask = MaskLayer::new(40, 40);
        let soft = BrushTip {
            softness: 1.0,
            radius_px: 10.0,
            ..HARD
        };
        stroke(&mut mask, soft, (20.0, 20.0), (20.0, 20.0));
        let centre = mask.pixels().get_pixel(19, 19).0[0];
        let edge = mask.pixels().get_pixel(19, 27).0[0];
        assert!(centre > 200 && edge > 0 && edge < centre, "{centre} {edge}");

        let mut hard = MaskLayer::new(40, 40);
        stroke(&mut hard, HARD, (20.0, 20.0), (20.0, 20.0));
        let feathered = easel_engine::pipeline::image::feather_mask(hard.pixels(), 6);
        let outside = feathered.get_pixel(20, 26).0[0];
        assert_eq!(hard.pixels().get_pixel(20, 26).0[0], 0);
        assert!(outside > 0, "feathering spreads the mask outwards");
    }

    #[test]
    fn replace_refuses_another_size_and_round_trips_through_png() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut mask = MaskLayer::new(20, 10);
        stroke(&mut mask, HARD, (3.0, 3.0), (15.0, 6.0));
        let path = dir.path().join("mask.png");
        mask.save_png(&path).expect("save");
        let read = MaskLayer::read_png(&path).expect("read");
        assert_eq!(&read, mask.pixels());
        let mut other = MaskLayer::new(20, 10);
        other.replace(&read).expect("same size");
        assert_eq!(other.pixels(), mask.pixels());
        let error = other
            .replace(&GrayImage::new(5, 5))
            .expect_err("wrong size");
        assert!(error.contains("5x5") && error.contains("20x10"), "{error}");
    }
}
