//! Inpainting only the masked area: a box around the mask (with some context around it) is
//! cut from the image, scaled to the model's native pixel count, repainted, scaled back and
//! blended in through the feathered mask. A small repair on a large picture is then painted at
//! the resolution the model knows, and every pixel outside the mask keeps its bytes.
//! A1111's "only masked", Krita AI's and InvokeAI's bounding-box inpainting do the same.

use image::{imageops::FilterType, GrayImage, RgbImage};

use super::image::{feather_mask, fit_mask, fit_rgb};
use super::request::{GenerateRequest, InpaintArea, Mode, Reference};

/// A rectangle of the image in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

/// The box around the mask's non-zero pixels, grown by `padding_px` on every side and kept
/// inside the image; `None` for an empty mask.
pub fn crop_box(mask: &GrayImage, padding_px: u32) -> Option<CropBox> {
    let (width, height) = mask.dimensions();
    let mut bounds: Option<(u32, u32, u32, u32)> = None;
    for (x, y, pixel) in mask.enumerate_pixels() {
        if pixel[0] > 0 {
            bounds = Some(match bounds {
                None => (x, y, x, y),
                Some((l, t, r, b)) => (l.min(x), t.min(y), r.max(x), b.max(y)),
            });
        }
    }
    let (left, top, right, bottom) = bounds?;
    Some(grown_box(
        (left, top, right + 1, bottom + 1),
        padding_px,
        (width, height),
    ))
}

/// The box `left..right` x `top..bottom` (exclusive ends) grown by `padding_px` on every side
/// and kept inside an image of `size_px`.
pub fn grown_box(
    (left, top, right, bottom): (u32, u32, u32, u32),
    padding_px: u32,
    size_px: (u32, u32),
) -> CropBox {
    let x = left.saturating_sub(padding_px);
    let y = top.saturating_sub(padding_px);
    let right = right.saturating_add(padding_px).min(size_px.0);
    let bottom = bottom.saturating_add(padding_px).min(size_px.1);
    CropBox {
        x,
        y,
        width: right.saturating_sub(x),
        height: bottom.saturating_sub(y),
    }
}

/// The smallest side any model generates.
const MIN_SIDE_PX: u32 = 64;

/// The size a crop is generated at: its aspect kept, scaled to `native_pixels` in all (more
/// when a side would fall below 64 pixels), each side a multiple of `multiple`.
pub fn generation_size(crop: CropBox, native_pixels: u64, multiple: u32) -> (u32, u32) {
    let multiple = multiple.max(1);
    let area = (u64::from(crop.width) * u64::from(crop.height)).max(1) as f64;
    let shorter = f64::from(crop.width.min(crop.height).max(1));
    let scale = (native_pixels as f64 / area)
        .sqrt()
        .max(f64::from(MIN_SIDE_PX) / shorter);
    let side = |px: u32| {
        let rounded = (f64::from(px) * scale / f64::from(multiple)).round() as u32 * multiple;
        rounded.max(MIN_SIDE_PX.div_ceil(multiple) * multiple)
    };
    (side(crop.width), side(crop.height))
}

/// A masked-area job's whole picture, kept to blend the repainted crop back into.
#[derive(Debug, Clone)]
pub struct MaskedArea {
    /// The init image at the output size.
    original: RgbImage,
    /// The mask at the output size, feathered as asked.
    feathered: GrayImage,
    /// Where the crop lies.
    crop: CropBox,
    /// The context added around the mask.
    padding_px: u32,
}

impl MaskedArea {
    /// Splits `request` into the crop's request and what puts its result back, when it is an
    /// inpaint whose area is (or, for `Auto`, should be, the output being larger than
    /// `native_px`) the masked area; `None` runs the request as it is.
    pub fn prepare(
        request: &GenerateRequest,
        native_px: (u32, u32),
        size_multiple_px: u32,
    ) -> Option<(GenerateRequest, MaskedArea)> {
        if request.mode() != Mode::Inpaint {
            return None;
        }
        let source = request.init()?;
        let mask = source.mask.as_ref()?;
        let (width, height) = (
            request.width.unwrap_or(source.image.width()),
            request.height.unwrap_or(source.image.height()),
        );
        let native_pixels = u64::from(native_px.0) * u64::from(native_px.1);
        if !request
            .inpaint
            .area
            .paints_masked_area((width, height), native_px)
        {
            return None;
        }
        let original = fit_rgb(&source.image, width, height);
        let mask = fit_mask(mask, width, height);
        let feathered = feather_mask(&mask, source.feather_px);
        let padding_px = request.inpaint.mask_padding_px;
        let crop = crop_box(&feathered, padding_px)?;
        let (gen_width, gen_height) = generation_size(crop, native_pixels, size_multiple_px);
        let scale = f64::from(gen_width) / f64::from(crop.width);
        let cut_image =
            image::imageops::crop_imm(&original, crop.x, crop.y, crop.width, crop.height)
                .to_image();
        let cut_mask =
            image::imageops::crop_imm(&mask, crop.x, crop.y, crop.width, crop.height).to_image();
        let mut inner = request.clone();
        inner.width = Some(gen_width);
        inner.height = Some(gen_height);
        inner.inpaint.area = InpaintArea::Whole;
        if let Some(Reference::Init(init)) = inner
            .references
            .iter_mut()
            .find(|r| matches!(r, Reference::Init(_)))
        {
            init.image =
                image::imageops::resize(&cut_image, gen_width, gen_height, FilterType::Lanczos3);
            init.mask = Some(fit_mask(&cut_mask, gen_width, gen_height));
            init.feather_px = (f64::from(source.feather_px) * scale).round() as u32;
        }
        Some((
            inner,
            MaskedArea {
                original,
                feathered,
                crop,
                padding_px,
            },
        ))
    }

    /// Where the crop lies in the output.
    pub fn crop(&self) -> CropBox {
        self.crop
    }

    /// The context around the mask.
    pub fn padding_px(&self) -> u32 {
        self.padding_px
    }

    /// The output size.
    pub fn size_px(&self) -> (u32, u32) {
        self.original.dimensions()
    }

    /// The whole picture with the repainted crop (`generated`, at the generation size) scaled
    /// back and blended in through the feathered mask; unmasked pixels are the original's.
    pub fn blend(&self, generated: &RgbImage) -> RgbImage {
        let crop = self.crop;
        let repainted = fit_rgb(generated, crop.width, crop.height);
        let mut out = self.original.clone();
        for y in 0..crop.height {
            for x in 0..crop.width {
                let (ox, oy) = (crop.x + x, crop.y + y);
                let alpha = f32::from(self.feathered.get_pixel(ox, oy)[0]) / 255.0;
                if alpha == 0.0 {
                    continue;
                }
                let new = repainted.get_pixel(x, y);
                let pixel = out.get_pixel_mut(ox, oy);
                for c in 0..3 {
                    let mixed = f32::from(pixel[c]) * (1.0 - alpha) + f32::from(new[c]) * alpha;
                    pixel[c] = mixed.round().clamp(0.0, 255.0) as u8;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Luma;

    #[test]
    fn the_box_is_the_mask_grown_by_the_padding_inside_the_image() {
        let mut mask = GrayImage::new(100, 80);
        mask.put_pixel(10, 70, Luma([255]));
        mask.put_pixel(40, 20, Luma([1]));
        let crop = crop_box(&mask, 16).expect("a box");
        assert_eq!(
            crop,
            CropBox {
                x: 0,
                y: 4,
                width: 57,
                height: 76
            }
        );
        assert_eq!(crop_box(&GrayImage::new(8, 8), 4), None);
    }

    #[test]
    fn a_crop_is_generated_at_the_native_pixel_count_in_its_aspect() {
        let crop = CropBox {
            x: 0,
            y: 0,
            width: 200,
            height: 100,
        };
        let (w, h) = generation_size(crop, 512 * 512, 8);
        assert_eq!((w % 8, h % 8), (0, 0));
        assert!((f64::from(w) / f64::from(h) - 2.0).abs() < 0.05, "{w}x{h}");
        let pixels = f64::from(w * h);
        assert!(
            (pixels / f64::from(512 * 512) - 1.0).abs() < 0.05,
            "{w}x{h}"
        );
        // A long thin crop keeps its shorter side at 64 or more.
        let strip = CropBox {
            width: 256,
            height: 40,
            ..crop
        };
        let (w, h) = generation_size(strip, 64 * 64, 16);
        assert_eq!((w % 16, h % 16), (0, 0));
        assert!(h >= 64 && w > 3 * h, "{w}x{h}");
    }
}
