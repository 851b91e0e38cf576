//! Conversions between `image` buffers and the tensors the pipelines use, and the inpainting
//! mask in its pixel and latent forms.

use candle_core::{DType, Device, Result, Tensor};
use image::{imageops::FilterType, GrayImage, RgbImage};

use super::request::{Mode, SourceImage};

/// An RGB image as a `[1, 3, h, w]` f32 tensor in -1..1.
pub fn image_to_tensor(image: &RgbImage, device: &Device) -> Result<Tensor> {
    let (w, h) = image.dimensions();
    let data: Vec<f32> = image
        .as_raw()
        .iter()
        .map(|&v| f32::from(v) / 255.0)
        .collect();
    let hwc = Tensor::from_vec(data, (h as usize, w as usize, 3), device)?;
    (hwc.permute((2, 0, 1))?.unsqueeze(0)? * 2.0)? - 1.0
}

/// A `[1, 3, h, w]` tensor in -1..1 as `[h, w, 3]` f32 in 0..1 (diffusers' `output_type="np"`).
pub fn decoded_to_unit_hwc(decoded: &Tensor) -> Result<Tensor> {
    ((decoded.squeeze(0)? / 2.0)? + 0.5)?
        .clamp(0f32, 1f32)?
        .permute((1, 2, 0))?
        .contiguous()
}

/// `[h, w, 3]` in 0..1 to 8-bit RGB, rounding as PIL does from diffusers' numpy output.
pub fn unit_hwc_to_image(hwc: &Tensor) -> Result<RgbImage> {
    let (h, w, _) = hwc.dims3()?;
    let bytes: Vec<u8> = hwc
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(|v| (v * 255.0).round().clamp(0.0, 255.0) as u8)
        .collect();
    RgbImage::from_raw(w as u32, h as u32, bytes)
        .ok_or_else(|| candle_core::Error::Msg("decoded image has the wrong size".into()))
}

/// Resizes `image` to `width` x `height` (Lanczos) unless it already is that size.
pub fn fit_rgb(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    if image.dimensions() == (width, height) {
        image.clone()
    } else {
        image::imageops::resize(image, width, height, FilterType::Lanczos3)
    }
}

/// Resizes a mask to `width` x `height` (bilinear) unless it already is that size.
pub fn fit_mask(mask: &GrayImage, width: u32, height: u32) -> GrayImage {
    if mask.dimensions() == (width, height) {
        mask.clone()
    } else {
        image::imageops::resize(mask, width, height, FilterType::Triangle)
    }
}

/// The mask as painted, `[h, w]` f32 in 0..1 (1 = repaint).
pub fn mask_to_unit(mask: &GrayImage, device: &Device) -> Result<Tensor> {
    let (w, h) = mask.dimensions();
    let data: Vec<f32> = mask
        .as_raw()
        .iter()
        .map(|&v| f32::from(v) / 255.0)
        .collect();
    Tensor::from_vec(data, (h as usize, w as usize), device)
}

/// The mask binarised at 0.5 as diffusers does, `[1, 1, h, w]`.
pub fn binarize(mask_unit: &Tensor) -> Result<Tensor> {
    mask_unit
        .ge(0.5f32)?
        .to_dtype(DType::F32)?
        .unsqueeze(0)?
        .unsqueeze(0)
}

/// Nearest-neighbour down-sampling of a `[1, 1, h, w]` mask by `scale`, as torch's default
/// `interpolate` picks pixel `i * scale` (rows and columns kept apart: sizes need not be square).
pub fn mask_to_latent(mask: &Tensor, scale: usize) -> Result<Tensor> {
    let (_, _, h, w) = mask.dims4()?;
    let rows: Vec<u32> = (0..h / scale).map(|i| (i * scale) as u32).collect();
    let cols: Vec<u32> = (0..w / scale).map(|j| (j * scale) as u32).collect();
    let device = mask.device();
    let rows = Tensor::from_vec(rows, h / scale, device)?;
    let cols = Tensor::from_vec(cols, w / scale, device)?;
    mask.index_select(&rows, 2)?.index_select(&cols, 3)
}

/// Inpainting paste-back: the original where the mask is 0, the result where it is 1, mixed
/// through the painted (soft) mask between.
pub fn paste_back(original: &RgbImage, generated: &RgbImage, mask: &GrayImage) -> RgbImage {
    let mut out = generated.clone();
    for (x, y, pixel) in out.enumerate_pixels_mut() {
        let alpha = f32::from(mask.get_pixel(x, y)[0]) / 255.0;
        let source = original.get_pixel(x, y);
        for c in 0..3 {
            let mixed = f32::from(source[c]) * (1.0 - alpha) + f32::from(pixel[c]) * alpha;
            pixel[c] = mixed.round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}
/// The mask an inpainting request painted, at the output size and feathered as asked; `None`
/// for other modes. Every pipeline blends and pastes back through it.
pub fn painted_mask(
    source: Option<&SourceImage>,
    mode: Mode,
    width: u32,
    height: u32,
) -> Option<GrayImage> {
    match (source.and_then(|s| s.mask.as_ref()), mode) {
        (Some(mask), Mode::Inpaint) => Some(feather_mask(
            &fit_mask(mask, width, height),
            source.map_or(0, |s| s.feather_px),
        )),
        _ => None,
    }
}

/// `mask` blurred by about `radius_px` (three box passes, close to a Gaussian), so that a
/// repainted region blends into the kept pixels when pasted back. 0 returns it unchanged; a
/// radius beyond the image's longer side blurs no more than that side does.
pub fn feather_mask(mask: &GrayImage, radius_px: u32) -> GrayImage {
    let radius_px = radius_px.min(mask.width().max(mask.height()));
    if radius_px == 0 {
        return mask.clone();
    }
    let (width, height) = (mask.width() as usize, mask.height() as usize);
    // Values scaled by 256 in u32 keep the sums exact and fast.
    let mut values: Vec<u32> = mask.as_raw().iter().map(|&v| u32::from(v) << 8).collect();
    let mut scratch = vec![0u32; values.len()];
    let pass_radius = (radius_px / 3).max(1) as usize;
    for _ in 0..3 {
        box_blur(
            &values,
            &mut scratch,
            width,
            height,
            pass_radius,
            (1, width),
        );
        box_blur(
            &scratch,
            &mut values,
            height,
            width,
            pass_radius,
            (width, 1),
        );
    }
    let bytes = values
        .iter()
        .map(|&v| ((v + 128) >> 8).min(255) as u8)
        .collect();
    GrayImage::from_raw(mask.width(), mask.height(), bytes).unwrap_or_else(|| mask.clone())
}

/// A running-sum box blur along lines of `length` pixels, `lines` of them, with edges
/// clamped; `(step, line_stride)` walk along a line and from line to line.
fn box_blur(
    src: &[u32],
    dst: &mut [u32],
    length: usize,
    lines: usize,
    radius: usize,
    (step, line_stride): (usize, usize),
) {
    let window = (2 * radius + 1) as u32;
    let last = length - 1;
    for line in 0..lines {
        let base = line * line_stride;
        let at = |i: usize| src[base + i.min(last) * step];
        let mut sum: u32 = at(0) * (radius as u32 + 1) + (1..=radius).map(at).sum::<u32>();
        for i in 0..length {
            dst[base + i * step] = sum / window;
            let leaving = at(i.saturating_sub(radius));
            sum = sum + at(i + radius + 1) - leaving;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_feather_is_clamped_to_the_image() {
        let edge = GrayImage::from_fn(16, 8, |x, _| image::Luma([if x < 8 { 0 } else { 255 }]));
        assert_eq!(feather_mask(&edge, u32::MAX), feather_mask(&edge, 16));
    }

    #[test]
    fn feathering_keeps_flat_regions_and_softens_an_edge_symmetrically() {
        let edge = GrayImage::from_fn(40, 9, |x, _| image::Luma([if x < 20 { 0 } else { 255 }]));
        assert_eq!(feather_mask(&edge, 0), edge);
        let soft = feather_mask(&edge, 9);
        let row: Vec<u8> = (0..40).map(|x| soft.get_pixel(x, 4).0[0]).collect();
        assert_eq!(
            (row[0], row[39]),
            (0, 255),
            "far from the edge nothing changes: {row:?}"
        );
        assert!(
            row[18] > 0 && row[21] < 255,
            "the edge is softened: {row:?}"
        );
        for offset in 0..8 {
            let (inside, outside) = (u16::from(row[20 + offset]), u16::from(row[19 - offset]));
            assert!(
                (inside + outside).abs_diff(255) <= 2,
                "symmetric about the edge: {row:?}"
            );
        }
        assert!(row.windows(2).all(|w| w[0] <= w[1]), "monotonic: {row:?}");
    }
}
