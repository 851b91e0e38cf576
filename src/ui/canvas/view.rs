//! Where the image sits on screen: fitted to the panel, then zoomed and panned. Maps between
//! screen points and image pixels, so strokes are kept in image pixels.

use eframe::egui::{Pos2, Rect, Vec2};

/// Zoom limits, relative to "fit to panel".
const MIN_ZOOM: f32 = 0.1;
const MAX_ZOOM: f32 = 64.0;

/// Zoom and pan of the canvas; the image is centred and fitted when both are at rest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CanvasView {
    /// Multiplier on the fitted scale.
    pub zoom: f32,
    /// Offset of the image centre from the panel centre, in screen points.
    pub pan: Vec2,
}

impl Default for CanvasView {
    fn default() -> Self {
        Self {
            zoom: 1.0,
            pan: Vec2::ZERO,
        }
    }
}

impl CanvasView {
    /// Screen points per image pixel in `panel` for an image of `image_px`.
    pub fn scale(&self, panel: Rect, image_px: Vec2) -> f32 {
        let fit = (panel.width() / image_px.x).min(panel.height() / image_px.y);
        fit.max(f32::MIN_POSITIVE) * self.zoom
    }

    /// The screen rectangle the image covers.
    pub fn image_rect(&self, panel: Rect, image_px: Vec2) -> Rect {
        let size = image_px * self.scale(panel, image_px);
        Rect::from_center_size(panel.center() + self.pan, size)
    }

    /// The image pixel under `screen` (may lie outside the image).
    pub fn image_px_at(&self, panel: Rect, image_px: Vec2, screen: Pos2) -> Pos2 {
        let rect = self.image_rect(panel, image_px);
        let scale = self.scale(panel, image_px);
        Pos2::new(
            (screen.x - rect.min.x) / scale,
            (screen.y - rect.min.y) / scale,
        )
    }

    /// Zooms by `factor`, keeping the image point under `anchor` where it is.
    pub fn zoom_about(&mut self, panel: Rect, image_px: Vec2, anchor: Pos2, factor: f32) {
        let before = self.image_px_at(panel, image_px, anchor);
        self.zoom = (self.zoom * factor).clamp(MIN_ZOOM, MAX_ZOOM);
        let rect = self.image_rect(panel, image_px);
        let scale = self.scale(panel, image_px);
        let now_at = rect.min + before.to_vec2() * scale;
        self.pan += anchor - now_at;
    }

    /// Back to "fit to panel".
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn screen_and_image_pixels_map_both_ways_at_any_zoom() {
        let panel = Rect::from_min_size(Pos2::new(100.0, 50.0), Vec2::new(400.0, 300.0));
        let image = Vec2::new(800.0, 600.0);
        let mut view = CanvasView::default();
        // Fitted: 800x600 into 400x300 is half scale, image fills the panel.
        assert_eq!(view.image_rect(panel, image), panel);
        assert_eq!(
            view.image_px_at(panel, image, Pos2::new(300.0, 200.0)),
            Pos2::new(400.0, 300.0)
        );
        let anchor = Pos2::new(150.0, 80.0);
        let under = view.image_px_at(panel, image, anchor);
        view.zoom_about(panel, image, anchor, 3.0);
        let after = view.image_px_at(panel, image, anchor);
        assert!((under - after).length() < 1e-3, "{under:?} {after:?}");
        // A bigger window keeps the same image point under the same relative spot.
        let wide = Rect::from_min_size(Pos2::ZERO, Vec2::new(1600.0, 1200.0));
        view.reset();
        assert_eq!(
            view.image_px_at(wide, image, Pos2::new(800.0, 600.0)),
            Pos2::new(400.0, 300.0)
        );
    }
}
