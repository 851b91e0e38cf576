//! A picture of any size as GPU textures: cut into tiles no larger than the GPU allows (and
//! at most `MAX_TILE_PX`), each drawn in its place and updated on its own, so that a 16384 px
//! image neither exceeds a texture limit nor re-uploads more than the tiles a brush touched.

use eframe::egui::{self, Color32, Pos2, Rect, Vec2};

use super::mask::PixelRect;

/// The largest tile side: small enough that a dab's update stays small, large enough that a
/// fitted 8192 px image is a few quads.
pub const MAX_TILE_PX: u32 = 2048;

/// One picture's tiles.
pub struct TiledTexture {
    tiles: Vec<(PixelRect, egui::TextureHandle)>,
    options: egui::TextureOptions,
}

impl TiledTexture {
    /// Textures for a `size` picture whose pixels in a rectangle `pixels` gives, named after
    /// `name`, with tiles no larger than `ctx` allows.
    pub fn new(
        ctx: &egui::Context,
        name: &str,
        size: (u32, u32),
        options: egui::TextureOptions,
        pixels: impl Fn(PixelRect) -> egui::ColorImage,
    ) -> Self {
        let side = (ctx.input(|i| i.max_texture_side) as u32).clamp(64, MAX_TILE_PX);
        let mut tiles = Vec::new();
        for y0 in (0..size.1).step_by(side as usize) {
            for x0 in (0..size.0).step_by(side as usize) {
                let rect = PixelRect {
                    x0,
                    y0,
                    x1: (x0 + side).min(size.0),
                    y1: (y0 + side).min(size.1),
                };
                let texture = ctx.load_texture(format!("{name}-{x0}-{y0}"), pixels(rect), options);
                tiles.push((rect, texture));
            }
        }
        Self { tiles, options }
    }

    /// Updates the part of every tile that `changed` covers (all of each tile when `None`).
    pub fn update(
        &mut self,
        changed: Option<PixelRect>,
        pixels: impl Fn(PixelRect) -> egui::ColorImage,
    ) {
        for (tile, texture) in &mut self.tiles {
            match changed {
                None => texture.set(pixels(*tile), self.options),
                Some(rect) => {
                    let Some(part) = intersection(*tile, rect) else {
                        continue;
                    };
                    texture.set_partial(
                        [(part.x0 - tile.x0) as usize, (part.y0 - tile.y0) as usize],
                        pixels(part),
                        self.options,
                    );
                }
            }
        }
    }

    /// Draws the picture into `image_rect` (screen points) at `scale` points per pixel,
    /// skipping tiles outside `clip`.
    pub fn paint(&self, painter: &egui::Painter, image_rect: Rect, scale: f32, clip: Rect) {
        let uv = Rect::from_min_max(Pos2::ZERO, Pos2::new(1.0, 1.0));
        for (tile, texture) in &self.tiles {
            let min = image_rect.min + Vec2::new(tile.x0 as f32, tile.y0 as f32) * scale;
            let size = Vec2::new(tile.width() as f32, tile.height() as f32) * scale;
            let screen = Rect::from_min_size(min, size);
            if screen.intersects(clip) {
                painter.image(texture.id(), screen, uv, Color32::WHITE);
            }
        }
    }
}

fn intersection(a: PixelRect, b: PixelRect) -> Option<PixelRect> {
    let rect = PixelRect {
        x0: a.x0.max(b.x0),
        y0: a.y0.max(b.y0),
        x1: a.x1.min(b.x1),
        y1: a.y1.min(b.y1),
    };
    (rect.x0 < rect.x1 && rect.y0 < rect.y1).then_some(rect)
}

/// The RGB pixels of `rect` of `image`.
pub fn rgb_pixels(image: &image::RgbImage, rect: PixelRect) -> egui::ColorImage {
    let mut pixels = Vec::with_capacity((rect.width() * rect.height()) as usize);
    for y in rect.y0..rect.y1 {
        for x in rect.x0..rect.x1 {
            let [r, g, b] = image.get_pixel(x, y).0;
            pixels.push(Color32::from_rgb(r, g, b));
        }
    }
    egui::ColorImage::new([rect.width() as usize, rect.height() as usize], pixels)
}
