//! `easel bench --canvas`: the canvas's frames on a large image, timed. A headless egui
//! context runs the real canvas code (tool bars, input, mask dabs, the changed rectangle of
//! the overlay, the masked area's box) and tessellates what it draws, frame after frame of
//! synthetic brush strokes, zooms and pans. What a GPU then does with the frame (uploading the
//! changed texture rectangle, drawing two textured quads) is not in these figures: no GPU
//! runs here.

use std::time::Instant;

use eframe::egui::{self, Event, Modifiers, PointerButton, Pos2, Rect, Vec2};
use image::RgbImage;
use serde::Serialize;

use super::CanvasPanel;
use crate::ui::references::References;

/// The window the frames are drawn in, in points.
const SCREEN: Vec2 = Vec2::new(1600.0, 1000.0);
/// Strokes painted, and frames per stroke.
const STROKES: usize = 24;
const FRAMES_PER_STROKE: usize = 20;
/// Zoom and pan frames after each stroke.
const VIEW_FRAMES: usize = 8;

/// What the canvas benchmark measured.
#[derive(Debug, Clone, Serialize)]
pub struct CanvasReport {
    /// The image's side in pixels (square).
    pub side_px: u32,
    /// Frames timed.
    pub frames: usize,
    /// Median and 99th percentile of every frame, in milliseconds.
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
    /// The slowest frame.
    pub max_ms: f64,
    /// The same over the frames that paint.
    pub stroke_p50_ms: f64,
    /// See `stroke_p50_ms`.
    pub stroke_p99_ms: f64,
    /// The same over the frames that zoom or pan.
    pub view_p50_ms: f64,
    /// See `view_p50_ms`.
    pub view_p99_ms: f64,
    /// Mask pixels the strokes painted.
    pub painted_px: usize,
}

impl CanvasReport {
    /// A few lines for the terminal.
    pub fn table(&self) -> String {
        format!(
            "easel bench --canvas: {side}x{side} image, {frames} frames (CPU side: canvas code and \
             tessellation; no GPU upload)\n\
             all frames     p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms\n\
             brush strokes  p50 {:>7.2} ms  p99 {:>7.2} ms\n\
             zoom and pan   p50 {:>7.2} ms  p99 {:>7.2} ms\n",
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.stroke_p50_ms,
            self.stroke_p99_ms,
            self.view_p50_ms,
            self.view_p99_ms,
            side = self.side_px,
            frames = self.frames,
        )
    }
}

/// Runs the frames on a `side_px` square image (a model of native size 1024 picked, so the
/// masked area's box is drawn).
pub fn run(side_px: u32) -> CanvasReport {
    let ctx = egui::Context::default();
    let mut canvas = CanvasPanel::default();
    canvas.brush.radius_px = side_px as f32 / 128.0;
    let mut references = References::default();
    let image = RgbImage::from_fn(side_px, side_px, |x, y| {
        image::Rgb([(x / 32) as u8, (y / 32) as u8, ((x + y) / 64) as u8])
    });
    references.add(image, None, true);
    let mut frame = |events: Vec<Event>, canvas: &mut CanvasPanel, time: f64| -> f64 {
        let input = egui::RawInput {
            screen_rect: Some(Rect::from_min_size(Pos2::ZERO, SCREEN)),
            time: Some(time),
            events,
            ..Default::default()
        };
        let started = Instant::now();
        let output = ctx.run_ui(input, |ui| {
            canvas.ui(ui, references.init_mut(), Some((1024, 1024)));
        });
        let egui::FullOutput {
            shapes,
            pixels_per_point,
            mut textures_delta,
            ..
        } = output;
        let _primitives = ctx.tessellate(shapes, pixels_per_point);
        // The texture updates the frame made would go to the GPU here.
        textures_delta.clear();
        started.elapsed().as_secs_f64() * 1000.0
    };
    let mut time = 0.0;
    let mut tick = || {
        time += 1.0 / 60.0;
        time
    };
    // Two frames to lay the canvas out and make its textures (not timed: opening an image).
    frame(Vec::new(), &mut canvas, tick());
    frame(Vec::new(), &mut canvas, tick());
    let mut stroke_ms = Vec::new();
    let mut view_ms = Vec::new();
    let centre = Pos2::new(SCREEN.x / 2.0, SCREEN.y / 2.0 + 40.0);
    for stroke in 0..STROKES {
        let angle = stroke as f32 * 0.7;
        let direction = Vec2::new(angle.cos(), angle.sin());
        let start = centre - direction * 200.0;
        let button = |pressed: bool, pos: Pos2| Event::PointerButton {
            pos,
            button: PointerButton::Primary,
            pressed,
            modifiers: Modifiers::NONE,
        };
        for step in 0..FRAMES_PER_STROKE {
            let pos = start + direction * (400.0 * step as f32 / FRAMES_PER_STROKE as f32);
            let mut events = vec![Event::PointerMoved(pos)];
            if step == 0 {
                events.push(button(true, pos));
            }
            if step + 1 == FRAMES_PER_STROKE {
                events.push(button(false, pos));
            }
            stroke_ms.push(frame(events, &mut canvas, tick()));
        }
        for view_step in 0..VIEW_FRAMES {
            let panel = Rect::from_min_size(Pos2::ZERO, SCREEN);
            let image_px = Vec2::splat(side_px as f32);
            if view_step % 2 == 0 {
                let factor = if stroke % 2 == 0 { 1.15 } else { 1.0 / 1.15 };
                canvas.view.zoom_about(panel, image_px, centre, factor);
            } else {
                canvas.view.pan += Vec2::new(12.0, -7.0) * if stroke % 2 == 0 { 1.0 } else { -1.0 };
            }
            view_ms.push(frame(
                vec![Event::PointerMoved(centre)],
                &mut canvas,
                tick(),
            ));
        }
    }
    let painted_px = references.init().map_or(0, |r| {
        r.mask.pixels().as_raw().iter().filter(|&&v| v > 0).count()
    });
    let mut all: Vec<f64> = stroke_ms.iter().chain(&view_ms).copied().collect();
    CanvasReport {
        side_px,
        frames: all.len(),
        p50_ms: percentile(&mut all, 0.5),
        p99_ms: percentile(&mut all, 0.99),
        max_ms: percentile(&mut all, 1.0),
        stroke_p50_ms: percentile(&mut stroke_ms, 0.5),
        stroke_p99_ms: percentile(&mut stroke_ms, 0.99),
        view_p50_ms: percentile(&mut view_ms, 0.5),
        view_p99_ms: percentile(&mut view_ms, 0.99),
        painted_px,
    }
}

/// The value below which a fraction `q` of `values` lie (nearest rank).
fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canvas_bench_paints_and_reports_every_frame() {
        let report = run(512);
        assert_eq!(report.frames, STROKES * (FRAMES_PER_STROKE + VIEW_FRAMES));
        assert!(report.p50_ms > 0.0 && report.p50_ms <= report.p99_ms);
        assert!(report.p99_ms <= report.max_ms);
        assert!(
            report.painted_px > 512 * 4,
            "the strokes painted {}",
            report.painted_px
        );
    }
}
