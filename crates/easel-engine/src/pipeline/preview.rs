//! A cheap live preview: latents mapped to RGB by a fixed linear map per latent space (each
//! family names its map), so the window can show every step without running the VAE.

use candle_core::{DType, Result, Tensor};
use image::RgbImage;

/// Least-squares fits of RGB to SD 1.x/2.x latents (rows: latent channels; columns: R, G, B),
/// as the community previewers use them.
const SD_LATENT_TO_RGB: [[f32; 3]; 4] = [
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
];
/// The same fit for SDXL's latent space, with its bias.
const SDXL_LATENT_TO_RGB: [[f32; 3]; 4] = [
    [0.3651, 0.4232, 0.4341],
    [-0.2533, -0.0042, 0.1068],
    [0.1076, 0.1111, -0.0362],
    [-0.3165, -0.2492, -0.2188],
];
const SDXL_RGB_BIAS: [f32; 3] = [0.1084, -0.0175, -0.0011];
/// The same fit for FLUX's 16-channel latent space, with its bias.
const FLUX_LATENT_TO_RGB: [[f32; 3]; 16] = [
    [-0.0346, 0.0244, 0.0681],
    [0.0034, 0.0210, 0.0687],
    [0.0275, -0.0668, -0.0433],
    [-0.0174, 0.0160, 0.0617],
    [0.0859, 0.0721, 0.0329],
    [0.0004, 0.0383, 0.0115],
    [0.0405, 0.0861, 0.0915],
    [-0.0236, -0.0185, -0.0259],
    [-0.0245, 0.0250, 0.1180],
    [0.1008, 0.0755, -0.0421],
    [-0.0515, 0.0201, 0.0011],
    [0.0428, -0.0012, -0.0036],
    [0.0817, 0.0765, 0.0749],
    [-0.1264, -0.0522, -0.1103],
    [-0.0280, -0.0881, -0.0499],
    [-0.1262, -0.0982, -0.0778],
];
const FLUX_RGB_BIAS: [f32; 3] = [-0.0329, -0.0718, -0.0851];

/// A latent space's linear map to RGB.
#[derive(Debug, PartialEq)]
pub struct PreviewMap {
    /// One row of RGB weights per latent channel.
    pub factors: &'static [[f32; 3]],
    /// Added to every pixel.
    pub bias: [f32; 3],
}

/// SD 1.x and 2.x latents.
pub const SD_PREVIEW: PreviewMap = PreviewMap {
    factors: &SD_LATENT_TO_RGB,
    bias: [0.0; 3],
};
/// SDXL latents.
pub const SDXL_PREVIEW: PreviewMap = PreviewMap {
    factors: &SDXL_LATENT_TO_RGB,
    bias: SDXL_RGB_BIAS,
};
/// FLUX.2's normalised 128-channel latents: no fitted map yet, so the first three channels
/// (one latent pixel's first channel under each of three patch positions) as a rough picture
/// of the composition.
pub const FLUX2_PREVIEW: PreviewMap = PreviewMap {
    factors: &[[0.5, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.5]],
    bias: [0.0; 3],
};
/// FLUX.1 latents.
pub const FLUX_PREVIEW: PreviewMap = PreviewMap {
    factors: &FLUX_LATENT_TO_RGB,
    bias: FLUX_RGB_BIAS,
};

/// An RGB approximation of `latents` (`1 x c x h x w`), one pixel per latent.
pub fn latent_preview(latents: &Tensor, map: &PreviewMap) -> Result<RgbImage> {
    let (factors, bias) = (map.factors, map.bias);
    let (_, channels, height, width) = latents.dims4()?;
    let latents = latents.get(0)?.to_dtype(DType::F32)?;
    let used = channels.min(factors.len());
    let flat: Vec<f32> = factors.iter().flatten().copied().collect();
    let factors =
        Tensor::from_vec(flat, (factors.len(), 3), latents.device())?.narrow(0, 0, used)?;
    let bias = Tensor::new(&bias, latents.device())?;
    // (h*w, c) x (c, 3) -> (h*w, 3), in -1..1.
    let hwc = latents
        .narrow(0, 0, used)?
        .permute((1, 2, 0))?
        .reshape((height * width, used))?;
    let rgb = hwc.matmul(&factors)?.broadcast_add(&bias)?;
    let bytes = ((rgb + 1.0)? * 127.5)?
        .clamp(0.0, 255.0)?
        .round()?
        .to_dtype(DType::U8)?
        .flatten_all()?
        .to_vec1::<u8>()?;
    RgbImage::from_raw(width as u32, height as u32, bytes)
        .ok_or_else(|| candle_core::Error::Msg("preview buffer has the wrong size".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn preview_has_one_pixel_per_latent_and_follows_the_latents() -> Result<()> {
        let device = Device::Cpu;
        let zeros = Tensor::zeros((1, 4, 3, 5), DType::F32, &device)?;
        let grey = latent_preview(&zeros, &SD_PREVIEW)?;
        assert_eq!(grey.dimensions(), (5, 3));
        assert!(grey.pixels().all(|p| p.0 == [128, 128, 128]));
        // Channel 0 alone pushes every colour up for SD.
        let first = Tensor::ones((1, 1, 3, 5), DType::F32, &device)?;
        let rest = Tensor::zeros((1, 3, 3, 5), DType::F32, &device)?;
        let bright = latent_preview(&Tensor::cat(&[first, rest], 1)?, &SD_PREVIEW)?;
        assert!(bright.pixels().all(|p| p.0.iter().all(|&c| c > 150)));
        Ok(())
    }
}
