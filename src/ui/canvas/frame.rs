//! The frame tool: dragging an edge or a corner of the picture outwards sets how far
//! "Extend canvas" grows it on that side, and the grown frame is drawn around the picture.

use eframe::egui::{self, Color32, Pos2, Rect, Vec2};

/// Extensions snap to multiples of this many pixels (every family's size multiple divides
/// it or is met by the job's own rounding).
pub const FRAME_SNAP_PX: u32 = 8;

/// The most a side may grow in one extension, in pixels.
pub const MAX_EXTEND_PX: u32 = 4096;

/// Which sides a frame drag moves: -1 the left (top), 1 the right (bottom), 0 neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameDrag {
    horizontal: i8,
    vertical: i8,
}

impl FrameDrag {
    /// The sides grabbed by a press at image pixel `at` of a picture of `image_px`: the outer
    /// thirds of each axis grab that side (outside the picture too); the middle grabs none.
    /// `None` when the press is in the middle of the picture.
    pub fn grab(at: Pos2, image_px: Vec2) -> Option<Self> {
        let side = |position: f32, length: f32| {
            let relative = position / length.max(1.0);
            if relative < 1.0 / 3.0 {
                -1
            } else if relative > 2.0 / 3.0 {
                1
            } else {
                0
            }
        };
        let drag = Self {
            horizontal: side(at.x, image_px.x),
            vertical: side(at.y, image_px.y),
        };
        (drag.horizontal != 0 || drag.vertical != 0).then_some(drag)
    }

    /// Sets the grabbed sides of `extend_px` (left, top, right, bottom) to how far `at` lies
    /// beyond them, snapped; the other sides keep their values.
    pub fn drag_to(&self, at: Pos2, image_px: Vec2, extend_px: &mut [u32; 4]) {
        let beyond = |distance: f32| {
            let snapped = (distance.max(0.0) / FRAME_SNAP_PX as f32).round() as u32;
            (snapped * FRAME_SNAP_PX).min(MAX_EXTEND_PX)
        };
        match self.horizontal {
            -1 => extend_px[0] = beyond(-at.x),
            1 => extend_px[2] = beyond(at.x - image_px.x),
            _ => {}
        }
        match self.vertical {
            -1 => extend_px[1] = beyond(-at.y),
            1 => extend_px[3] = beyond(at.y - image_px.y),
            _ => {}
        }
    }
}

/// The screen rectangle of the picture grown by `extend_px`, drawn at `scale` points per pixel.
pub fn grown_rect(image_rect: Rect, scale: f32, extend_px: [u32; 4]) -> Rect {
    let [left, top, right, bottom] = extend_px.map(|side| side as f32 * scale);
    Rect::from_min_max(
        image_rect.min - Vec2::new(left, top),
        image_rect.max + Vec2::new(right, bottom),
    )
}

/// Draws the grown frame: its new area shaded, its outline dashed.
pub fn paint_frame(painter: &egui::Painter, image_rect: Rect, scale: f32, extend_px: [u32; 4]) {
    if extend_px == [0; 4] {
        return;
    }
    let grown = grown_rect(image_rect, scale, extend_px);
    let shade = Color32::from_rgba_unmultiplied(120, 170, 255, 40);
    // The new area as up to four bands around the picture.
    let bands = [
        Rect::from_min_max(grown.min, Pos2::new(grown.max.x, image_rect.min.y)),
        Rect::from_min_max(Pos2::new(grown.min.x, image_rect.max.y), grown.max),
        Rect::from_min_max(
            Pos2::new(grown.min.x, image_rect.min.y),
            Pos2::new(image_rect.min.x, image_rect.max.y),
        ),
        Rect::from_min_max(
            Pos2::new(image_rect.max.x, image_rect.min.y),
            Pos2::new(grown.max.x, image_rect.max.y),
        ),
    ];
    for band in bands.into_iter().filter(|band| band.is_positive()) {
        painter.rect_filled(band, 0.0, shade);
    }
    let stroke = egui::Stroke::new(1.5, Color32::from_rgb(120, 170, 255));
    let corners = [
        grown.left_top(),
        grown.right_top(),
        grown.right_bottom(),
        grown.left_bottom(),
        grown.left_top(),
    ];
    for pair in corners.windows(2) {
        painter.extend(egui::Shape::dashed_line(pair, stroke, 6.0, 4.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drag_moves_only_the_sides_it_grabbed_snapped_to_eight_pixels() {
        let image = Vec2::new(90.0, 60.0);
        assert_eq!(FrameDrag::grab(Pos2::new(45.0, 30.0), image), None);
        let right = FrameDrag::grab(Pos2::new(80.0, 30.0), image).expect("right edge");
        let mut extend = [8, 0, 0, 16];
        right.drag_to(Pos2::new(113.0, 5.0), image, &mut extend);
        assert_eq!(extend, [8, 0, 24, 16]);
        // Dragging back inside the picture takes the side back to nothing.
        right.drag_to(Pos2::new(70.0, 5.0), image, &mut extend);
        assert_eq!(extend, [8, 0, 0, 16]);
        let top_left = FrameDrag::grab(Pos2::new(-3.0, 2.0), image).expect("corner");
        top_left.drag_to(Pos2::new(-21.0, -5000.0), image, &mut extend);
        assert_eq!(extend, [24, MAX_EXTEND_PX, 0, 16]);
    }

    #[test]
    fn the_grown_rect_adds_each_side_at_the_view_scale() {
        let image = Rect::from_min_max(Pos2::new(10.0, 10.0), Pos2::new(110.0, 60.0));
        let grown = grown_rect(image, 0.5, [8, 0, 16, 4]);
        assert_eq!(
            grown,
            Rect::from_min_max(Pos2::new(6.0, 10.0), Pos2::new(118.0, 62.0))
        );
    }
}
