//! Outpainting: the canvas extended beyond the picture's frame, the new area filled with
//! something the model can continue (the edge colours stretched outwards and blurred, or
//! noise), and a mask that repaints exactly the new area, so that every original pixel keeps
//! its bytes through paste-back.

use image::{GrayImage, Luma, Rgb, RgbImage};
use rand::{Rng, SeedableRng};

use super::image::feather_mask;

/// Pixels added on each side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Extend {
    /// Added on the left.
    pub left: u32,
    /// Added on the top.
    pub top: u32,
    /// Added on the right.
    pub right: u32,
    /// Added at the bottom.
    pub bottom: u32,
}

impl Extend {
    /// Parses `L,T,R,B` in pixels.
    pub fn parse(text: &str) -> Result<Self, String> {
        let sides: Vec<u32> = text
            .split(',')
            .map(|side| side.trim().parse::<u32>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("{text:?}: give four pixel counts, left,top,right,bottom"))?;
        match sides[..] {
            [left, top, right, bottom] if left.max(top).max(right).max(bottom) <= MAX_EXTEND_PX => {
                Ok(Self {
                    left,
                    top,
                    right,
                    bottom,
                })
            }
            [_, _, _, _] => Err(format!("{text:?}: at most {MAX_EXTEND_PX} pixels a side")),
            _ => Err(format!(
                "{text:?}: give four pixel counts, left,top,right,bottom"
            )),
        }
    }

    /// Whether nothing is added.
    pub fn is_empty(&self) -> bool {
        self.left == 0 && self.top == 0 && self.right == 0 && self.bottom == 0
    }
}

/// The most a side may grow in one extension.
pub const MAX_EXTEND_PX: u32 = 8192;

/// What the new area starts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExtendFill {
    /// The nearest edge pixel, stretched outwards, then blurred (the default: the model
    /// continues the picture's colours).
    #[default]
    Edge,
    /// Seeded noise around the edge colours (more freedom, less continuity).
    Noise,
}

impl ExtendFill {
    /// `edge` or `noise`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "edge" => Ok(ExtendFill::Edge),
            "noise" => Ok(ExtendFill::Noise),
            other => Err(format!("{other:?}: the fill is edge or noise")),
        }
    }
}

/// `image` on a canvas grown by `extend`, the new area filled as `fill` says, and the mask
/// to repaint: white over the new area, and `mask` (if any) over the original.
pub fn extend_canvas(
    image: &RgbImage,
    mask: Option<&GrayImage>,
    extend: Extend,
    fill: ExtendFill,
    seed: u64,
) -> (RgbImage, GrayImage) {
    let (width, height) = image.dimensions();
    let new_width = width + extend.left + extend.right;
    let new_height = height + extend.top + extend.bottom;
    let inside = |x: u32, y: u32| {
        (extend.left..extend.left + width).contains(&x)
            && (extend.top..extend.top + height).contains(&y)
    };
    let nearest = |x: u32, y: u32| {
        let sx = x.saturating_sub(extend.left).min(width - 1);
        let sy = y.saturating_sub(extend.top).min(height - 1);
        *image.get_pixel(sx, sy)
    };
    let stretched = RgbImage::from_fn(new_width, new_height, nearest);
    let blur_px = extend
        .left
        .max(extend.top)
        .max(extend.right)
        .max(extend.bottom)
        / 4;
    let mut canvas = blur_rgb(&stretched, blur_px);
    if fill == ExtendFill::Noise {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        for (x, y, pixel) in canvas.enumerate_pixels_mut() {
            if !inside(x, y) {
                for c in 0..3 {
                    let jitter: i16 = rng.random_range(-96..=96);
                    pixel[c] = (i16::from(pixel[c]) + jitter).clamp(0, 255) as u8;
                }
            }
        }
    }
    // The original's pixels, exactly.
    for (x, y, pixel) in image.enumerate_pixels() {
        canvas.put_pixel(x + extend.left, y + extend.top, *pixel);
    }
    let new_mask = GrayImage::from_fn(new_width, new_height, |x, y| {
        if inside(x, y) {
            mask.map_or(Luma([0]), |m| *m.get_pixel(x - extend.left, y - extend.top))
        } else {
            Luma([255])
        }
    });
    (canvas, new_mask)
}

/// Each channel blurred like a mask is feathered.
fn blur_rgb(image: &RgbImage, radius_px: u32) -> RgbImage {
    if radius_px == 0 {
        return image.clone();
    }
    let (width, height) = image.dimensions();
    let channel = |c: usize| {
        let plane = GrayImage::from_fn(width, height, |x, y| Luma([image.get_pixel(x, y)[c]]));
        feather_mask(&plane, radius_px)
    };
    let (r, g, b) = (channel(0), channel(1), channel(2));
    RgbImage::from_fn(width, height, |x, y| {
        Rgb([
            r.get_pixel(x, y)[0],
            g.get_pixel(x, y)[0],
            b.get_pixel(x, y)[0],
        ])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extending_keeps_the_picture_and_masks_exactly_the_new_area() {
        let image = RgbImage::from_fn(20, 10, |x, y| Rgb([x as u8 * 10, y as u8 * 20, 7]));
        let extend = Extend::parse("3,0,5,2").expect("parse");
        for fill in [ExtendFill::Edge, ExtendFill::Noise] {
            let (canvas, mask) = extend_canvas(&image, None, extend, fill, 1);
            assert_eq!(canvas.dimensions(), (28, 12));
            for (x, y, pixel) in image.enumerate_pixels() {
                assert_eq!(canvas.get_pixel(x + 3, y), pixel);
                assert_eq!(mask.get_pixel(x + 3, y)[0], 0);
            }
            assert_eq!(mask.get_pixel(0, 0)[0], 255);
            assert_eq!(mask.get_pixel(27, 11)[0], 255);
            assert_eq!(mask.get_pixel(10, 11)[0], 255);
        }
    }

    #[test]
    fn bad_extensions_are_refused_with_the_form_to_use() {
        assert!(Extend::parse("1,2,3")
            .unwrap_err()
            .contains("left,top,right,bottom"));
        assert!(Extend::parse("1,2,x,4").is_err());
        assert!(Extend::parse("1,2,3,99999")
            .unwrap_err()
            .contains("at most"));
    }
}
