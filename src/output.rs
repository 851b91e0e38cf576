//! Writing results: PNG files carrying their parameters in the A1111 `parameters` text chunk,
//! which the tools artists already use can read back.

use std::io::BufWriter;
use std::path::{Path, PathBuf};

use image::RgbImage;

use crate::engine::JobParameters;
use crate::schedulers::SamplerKind;

/// A result could not be written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("could not write {path}: {message}. Check that the folder exists and the disk has room; the result is still in memory.")]
pub struct OutputError {
    /// The file that was being written.
    pub path: PathBuf,
    /// What the system said.
    pub message: String,
}

/// The sampler's name as A1111 writes it.
fn a1111_sampler(sampler: SamplerKind) -> &'static str {
    match sampler {
        SamplerKind::Euler => "Euler",
        SamplerKind::EulerA => "Euler a",
        SamplerKind::Ddim => "DDIM",
        SamplerKind::Dpmpp2m => "DPM++ 2M",
        SamplerKind::Dpmpp2mKarras => "DPM++ 2M Karras",
    }
}

/// The parameters in A1111's format: prompt, `Negative prompt:` line, then `Key: value` pairs.
pub fn a1111_parameters(parameters: &JobParameters) -> String {
    let mut text = parameters.prompt.clone();
    if let Some(negative) = parameters
        .negative_prompt
        .as_deref()
        .filter(|n| !n.is_empty())
    {
        text.push_str("\nNegative prompt: ");
        text.push_str(negative);
    }
    let model = parameters
        .model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    text.push_str(&format!(
        "\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {}, Size: {}x{}, Model: {}",
        parameters.steps,
        a1111_sampler(parameters.sampler),
        parameters.guidance,
        parameters.seed,
        parameters.width,
        parameters.height,
        model
    ));
    if let Some(strength) = parameters.strength {
        text.push_str(&format!(", Denoising strength: {strength}"));
    }
    text
}

/// Writes `image` as PNG with `parameters` in its text chunk. The file appears whole or not at
/// all: it is written beside the target and renamed, so a full disk leaves no broken file.
pub fn save_png_with_parameters(
    path: &Path,
    image: &RgbImage,
    parameters: &JobParameters,
) -> Result<(), OutputError> {
    let fail = |message: String| OutputError {
        path: path.to_path_buf(),
        message,
    };
    let text = a1111_parameters(parameters);
    let partial = path.with_extension("png.tmp");
    let result = (|| -> Result<(), String> {
        let file = std::fs::File::create(&partial).map_err(|e| e.to_string())?;
        let mut encoder = png::Encoder::new(BufWriter::new(file), image.width(), image.height());
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let latin1 = text.chars().all(|c| u32::from(c) < 256);
        let chunk = if latin1 {
            encoder.add_text_chunk("parameters".into(), text.clone())
        } else {
            encoder.add_itxt_chunk("parameters".into(), text.clone())
        };
        chunk.map_err(|e| e.to_string())?;
        let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
        writer
            .write_image_data(image.as_raw())
            .map_err(|e| e.to_string())?;
        writer.finish().map_err(|e| e.to_string())
    })();
    if let Err(message) = result {
        // The partial file is useless; failing to remove it changes nothing for the user.
        std::fs::remove_file(&partial).ok();
        return Err(fail(message));
    }
    std::fs::rename(&partial, path).map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::request::Mode;

    fn parameters() -> JobParameters {
        JobParameters {
            model: PathBuf::from("/models/sd15"),
            mode: Mode::ImageToImage,
            prompt: "a lighthouse".into(),
            negative_prompt: Some("blurry".into()),
            sampler: SamplerKind::EulerA,
            steps: 20,
            guidance: 7.5,
            seed: 42,
            width: 64,
            height: 48,
            strength: Some(0.6),
        }
    }

    #[test]
    fn parameters_read_as_a1111_writes_them() {
        assert_eq!(
            a1111_parameters(&parameters()),
            "a lighthouse\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7.5, \
             Seed: 42, Size: 64x48, Model: sd15, Denoising strength: 0.6"
        );
    }

    #[test]
    fn the_png_carries_its_parameters() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("result.png");
        let image = RgbImage::from_pixel(64, 48, image::Rgb([10, 20, 30]));
        save_png_with_parameters(&path, &image, &parameters()).expect("saved");
        let decoder = png::Decoder::new(std::io::BufReader::new(
            std::fs::File::open(&path).expect("open"),
        ));
        let reader = decoder.read_info().expect("a PNG");
        let text = &reader.info().uncompressed_latin1_text;
        assert_eq!(text.len(), 1);
        assert_eq!(text[0].keyword, "parameters");
        assert!(text[0].text.contains("Seed: 42"));
        assert_eq!(image::open(&path).expect("readable").to_rgb8(), image);
        assert!(!path.with_extension("png.tmp").exists());
    }

    #[test]
    fn an_unwritable_path_is_a_clear_error() {
        let image = RgbImage::new(8, 8);
        let error =
            save_png_with_parameters(Path::new("/no/such/dir/x.png"), &image, &parameters())
                .expect_err("cannot write there");
        assert!(error.to_string().contains("/no/such/dir/x.png"));
    }
}
