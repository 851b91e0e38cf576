//! Colour matching of a repainted region to its surroundings. A repaint drifts in colour
//! (the autoencoder's round trip, the model's own palette), which shows as a seam where it
//! meets the kept pixels. Just outside the mask the raw decode should equal the original: the
//! difference there, per channel, measures the drift. The repainted pixels are shifted and
//! scaled by it (mean and spread of that band matched to the original's), before the
//! original is pasted back outside the mask.

use image::{GrayImage, RgbImage};

/// How far around the mask the band reaches, as a fraction of the image's shorter side
/// (clamped to `MIN_BAND_PX..=MAX_BAND_PX`).
const BAND_FRACTION: f32 = 1.0 / 32.0;
const MIN_BAND_PX: u32 = 4;
const MAX_BAND_PX: u32 = 32;
/// Fewer band pixels than this say too little about the drift; nothing is changed.
const MIN_BAND_PIXELS: usize = 32;
/// The spread is matched within these ratios, so a flat band cannot blow a repaint up.
const SPREAD_RATIO_RANGE: (f32, f32) = (0.5, 2.0);

/// `raw` with its pixels under `mask` (any non-zero value) shifted and scaled per channel so
/// that the band just outside the mask matches `original` there. Pixels outside the mask are
/// returned as they are.
pub fn match_colours(raw: &RgbImage, original: &RgbImage, mask: &GrayImage) -> RgbImage {
    let (width, height) = raw.dimensions();
    if original.dimensions() != (width, height) || mask.dimensions() != (width, height) {
        return raw.clone();
    }
    let band_px =
        ((width.min(height) as f32 * BAND_FRACTION) as u32).clamp(MIN_BAND_PX, MAX_BAND_PX);
    let band = band_around(mask, band_px);
    let Some(correction) = Correction::measure(raw, original, &band) else {
        return raw.clone();
    };
    let mut out = raw.clone();
    for (pixel, &painted) in out.pixels_mut().zip(mask.as_raw()) {
        if painted == 0 {
            continue;
        }
        for c in 0..3 {
            pixel[c] = correction.apply(c, pixel[c]);
        }
    }
    out
}

/// Per-channel `(value - raw_mean) * ratio + original_mean`.
#[derive(Debug, Clone, Copy)]
struct Correction {
    raw_mean: [f32; 3],
    original_mean: [f32; 3],
    ratio: [f32; 3],
}

impl Correction {
    fn measure(raw: &RgbImage, original: &RgbImage, band: &[bool]) -> Option<Self> {
        let count = band.iter().filter(|&&b| b).count();
        if count < MIN_BAND_PIXELS {
            return None;
        }
        let stats = |image: &RgbImage| -> ([f32; 3], [f32; 3]) {
            let mut sum = [0f64; 3];
            let mut squares = [0f64; 3];
            for (pixel, _) in image.pixels().zip(band).filter(|(_, &b)| b) {
                for c in 0..3 {
                    let v = f64::from(pixel[c]);
                    sum[c] += v;
                    squares[c] += v * v;
                }
            }
            let n = count as f64;
            let mean = sum.map(|s| s / n);
            let spread = [0, 1, 2].map(|c| (squares[c] / n - mean[c] * mean[c]).max(0.0).sqrt());
            (mean.map(|m| m as f32), spread.map(|s| s as f32))
        };
        let (raw_mean, raw_spread) = stats(raw);
        let (original_mean, original_spread) = stats(original);
        let ratio = [0, 1, 2].map(|c| {
            if raw_spread[c] < 1.0 || original_spread[c] < 1.0 {
                1.0
            } else {
                (original_spread[c] / raw_spread[c])
                    .clamp(SPREAD_RATIO_RANGE.0, SPREAD_RATIO_RANGE.1)
            }
        });
        Some(Self {
            raw_mean,
            original_mean,
            ratio,
        })
    }

    fn apply(&self, channel: usize, value: u8) -> u8 {
        let corrected = (f32::from(value) - self.raw_mean[channel]) * self.ratio[channel]
            + self.original_mean[channel];
        corrected.round().clamp(0.0, 255.0) as u8
    }
}

/// The pixels outside the mask within `band_px` (a square neighbourhood) of a masked pixel,
/// row-major. A summed-area table makes it linear in the image's size.
fn band_around(mask: &GrayImage, band_px: u32) -> Vec<bool> {
    let (width, height) = (mask.width() as usize, mask.height() as usize);
    let stride = width + 1;
    let mut table = vec![0u32; stride * (height + 1)];
    for y in 0..height {
        let mut row_sum = 0;
        for x in 0..width {
            row_sum += u32::from(mask.as_raw()[y * width + x] > 0);
            table[(y + 1) * stride + x + 1] = table[y * stride + x + 1] + row_sum;
        }
    }
    let reach = band_px as usize;
    let mut band = vec![false; width * height];
    for y in 0..height {
        let (top, bottom) = (y.saturating_sub(reach), (y + reach + 1).min(height));
        for x in 0..width {
            if mask.as_raw()[y * width + x] > 0 {
                continue;
            }
            let (left, right) = (x.saturating_sub(reach), (x + reach + 1).min(width));
            let inside = table[bottom * stride + right] + table[top * stride + left]
                - table[top * stride + right]
                - table[bottom * stride + left];
            band[y * width + x] = inside > 0;
        }
    }
    band
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Luma, Rgb};

    fn centre_mask(side: u32) -> GrayImage {
        GrayImage::from_fn(side, side, |x, y| {
            let inside =
                (side / 4..3 * side / 4).contains(&x) && (side / 4..3 * side / 4).contains(&y);
            Luma([if inside { 255 } else { 0 }])
        })
    }

    #[test]
    fn a_colour_drift_seen_around_the_mask_is_taken_out_of_the_repaint() {
        let side = 64;
        let original = RgbImage::from_fn(side, side, |x, y| {
            Rgb([100 + (x % 7) as u8, 80 + (y % 5) as u8, 60])
        });
        // The raw decode: the same picture 20 levels too red and 10 too dark in blue.
        let drifted = |p: &Rgb<u8>| Rgb([p[0] + 20, p[1], p[2] - 10]);
        let raw = RgbImage::from_fn(side, side, |x, y| drifted(original.get_pixel(x, y)));
        let matched = match_colours(&raw, &original, &centre_mask(side));
        let centre = matched.get_pixel(32, 32);
        let expected = original.get_pixel(32, 32);
        for c in 0..3 {
            assert!(
                centre[c].abs_diff(expected[c]) <= 1,
                "{centre:?} against {expected:?}"
            );
        }
        // Outside the mask nothing changes (paste-back puts the original there).
        assert_eq!(matched.get_pixel(2, 2), raw.get_pixel(2, 2));
    }

    #[test]
    fn without_a_band_to_measure_nothing_changes() {
        let side = 32;
        let full = GrayImage::from_pixel(side, side, Luma([255]));
        let raw = RgbImage::from_pixel(side, side, Rgb([10, 20, 30]));
        let original = RgbImage::from_pixel(side, side, Rgb([200, 200, 200]));
        assert_eq!(match_colours(&raw, &original, &full), raw);
    }

    #[test]
    fn the_band_is_the_ring_around_the_mask() {
        let band = band_around(&centre_mask(32), 2);
        let at = |x: usize, y: usize| band[y * 32 + x];
        assert!(at(7, 16) && at(6, 16), "just left of the mask");
        assert!(!at(5, 16), "beyond the band");
        assert!(!at(16, 16), "inside the mask");
    }
}
