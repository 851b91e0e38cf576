//! Conversions between `image` buffers and the tensors the pipelines use, and the inpainting
//! mask in its pixel and latent forms.

use candle_core::{DType, Device, Result, Tensor};
use image::{imageops::FilterType, GrayImage, RgbImage};

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
