//! Writing results: PNG files carrying their parameters in the A1111 `parameters` text chunk,
//! which the tools artists already use can read back.

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

/// Parameters read back from an A1111-style `parameters` text: what a result was made with.
/// Fields the text lacks (or that Easel can't use) are `None`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RecalledParameters {
    /// The prompt (may span lines).
    pub prompt: String,
    /// The negative prompt.
    pub negative_prompt: Option<String>,
    /// Steps.
    pub steps: Option<usize>,
    /// The sampler, when it is one Easel has.
    pub sampler: Option<SamplerKind>,
    /// CFG scale.
    pub guidance: Option<f64>,
    /// Seed.
    pub seed: Option<u64>,
    /// `(width, height)` in pixels.
    pub size_px: Option<(u32, u32)>,
    /// The model's name (a folder name for Easel's own results).
    pub model_name: Option<String>,
    /// img2img / inpaint strength.
    pub strength: Option<f64>,
}

impl RecalledParameters {
    /// What Easel's own result parameters say, in the same form as parameters read back.
    pub fn of(parameters: &JobParameters) -> Self {
        Self {
            prompt: parameters.prompt.clone(),
            negative_prompt: parameters.negative_prompt.clone(),
            steps: Some(parameters.steps),
            sampler: Some(parameters.sampler),
            guidance: Some(parameters.guidance),
            seed: Some(parameters.seed),
            size_px: Some((parameters.width, parameters.height)),
            model_name: parameters
                .model
                .file_name()
                .map(|n| n.to_string_lossy().into_owned()),
            strength: parameters.strength,
        }
    }
}

/// Reads A1111's format back: prompt lines, an optional `Negative prompt:` line, then a last
/// line of `Key: value` pairs starting with `Steps:`.
pub fn parse_a1111_parameters(text: &str) -> RecalledParameters {
    let lines: Vec<&str> = text.lines().collect();
    let settings_at = lines.iter().rposition(|l| l.starts_with("Steps: "));
    let (text_lines, settings) = match settings_at {
        Some(at) => (&lines[..at], Some(lines[at])),
        None => (&lines[..], None),
    };
    let negative_at = text_lines
        .iter()
        .position(|l| l.starts_with("Negative prompt: "));
    let (prompt_lines, negative_lines) = match negative_at {
        Some(at) => (&text_lines[..at], Some(&text_lines[at..])),
        None => (text_lines, None),
    };
    let mut recalled = RecalledParameters {
        prompt: prompt_lines.join("\n"),
        negative_prompt: negative_lines.map(|l| {
            l.join("\n")
                .trim_start_matches("Negative prompt: ")
                .to_string()
        }),
        ..Default::default()
    };
    for pair in settings.into_iter().flat_map(|l| l.split(", ")) {
        let Some((key, value)) = pair.split_once(": ") else {
            continue;
        };
        let value = value.trim();
        match key {
            "Steps" => recalled.steps = value.parse().ok(),
            "Sampler" => {
                recalled.sampler = SamplerKind::ALL
                    .into_iter()
                    .find(|k| a1111_sampler(*k).eq_ignore_ascii_case(value))
            }
            "CFG scale" => recalled.guidance = value.parse().ok(),
            "Seed" => recalled.seed = value.parse().ok(),
            "Size" => {
                recalled.size_px = value
                    .split_once('x')
                    .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
            }
            "Model" => recalled.model_name = Some(value.to_string()),
            "Denoising strength" => recalled.strength = value.parse().ok(),
            _ => {}
        }
    }
    recalled
}

/// The `parameters` text of a PNG file, if it has one.
pub fn read_png_parameters(path: &Path) -> Option<String> {
    let file = std::fs::File::open(path).ok()?;
    let reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .ok()?;
    let info = reader.info();
    info.uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == "parameters")
        .map(|t| t.text.clone())
        .or_else(|| {
            info.utf8_text
                .iter()
                .find(|t| t.keyword == "parameters")
                .and_then(|t| t.get_text().ok())
        })
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
    if !parameters.references.is_empty() {
        // Quoted, as A1111 quotes values with commas; names in order, "; " between them.
        let names = parameters.references.join("; ").replace('"', "'");
        text.push_str(&format!(", References: \"{names}\""));
    }
    if let Some(padding) = parameters.masked_area_padding_px {
        // A1111's names for "only masked" inpainting.
        text.push_str(&format!(
            ", Inpaint area: Only masked, Masked area padding: {padding}"
        ));
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
    crate::atomic_file::write_with(path, |out| encode_png(out, image, parameters)).map_err(|e| {
        OutputError {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    })
}

/// Saves a result as the next free `NNNNN-SEED.png` in `dir` (numbered as A1111 numbers its
/// outputs; the folder is created when missing) and returns its path. An earlier result is
/// never replaced, even when another Easel saves into the same folder at the same moment.
pub fn save_new_result(
    dir: &Path,
    image: &RgbImage,
    parameters: &JobParameters,
) -> Result<PathBuf, OutputError> {
    let fail = |path: &Path, message: String| OutputError {
        path: path.to_path_buf(),
        message,
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| fail(dir, format!("the folder cannot be created: {e}")))?;
    let highest = std::fs::read_dir(dir)
        .map_err(|e| fail(dir, format!("the folder cannot be read: {e}")))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.split('-').next()?.parse::<u64>().ok()
        })
        .max()
        .unwrap_or(0);
    for number in highest + 1..highest + 1000 {
        let path = dir.join(format!("{number:05}-{}.png", parameters.seed));
        match crate::atomic_file::write_new_with(&path, |out| encode_png(out, image, parameters)) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(fail(&path, e.to_string())),
        }
    }
    Err(fail(
        dir,
        "no free result number after 1000 tries".to_string(),
    ))
}

/// The PNG of `image` with `parameters` in its text chunk.
fn encode_png(
    out: &mut dyn std::io::Write,
    image: &RgbImage,
    parameters: &JobParameters,
) -> std::io::Result<()> {
    let text = a1111_parameters(parameters);
    {
        let invalid = |e: &dyn std::fmt::Display| std::io::Error::other(e.to_string());
        let mut encoder = png::Encoder::new(out, image.width(), image.height());
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let latin1 = text.chars().all(|c| u32::from(c) < 256);
        let chunk = if latin1 {
            encoder.add_text_chunk("parameters".into(), text.clone())
        } else {
            encoder.add_itxt_chunk("parameters".into(), text.clone())
        };
        chunk.map_err(|e| invalid(&e))?;
        let mut writer = encoder.write_header().map_err(|e| invalid(&e))?;
        writer
            .write_image_data(image.as_raw())
            .map_err(|e| invalid(&e))?;
        writer.finish().map_err(|e| invalid(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::request::Mode;

    fn parameters() -> JobParameters {
        JobParameters {
            masked_area_padding_px: None,
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
            references: Vec::new(),
        }
    }

    #[test]
    fn edit_references_are_named_in_order() {
        let mut edit = parameters();
        edit.references = vec!["cat.png".into(), "pasted".into()];
        let text = a1111_parameters(&edit);
        assert!(
            text.ends_with(", References: \"cat.png; pasted\""),
            "{text}"
        );
        // The recall of the other parameters is unaffected.
        let recalled = parse_a1111_parameters(&text);
        assert_eq!(recalled.seed, Some(42));
        assert_eq!(recalled.strength, Some(0.6));
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
    fn written_parameters_read_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("result.png");
        let mut written = parameters();
        written.prompt = "a lighthouse,\nat dusk".into();
        save_png_with_parameters(&path, &RgbImage::new(8, 8), &written).expect("saved");
        let text = read_png_parameters(&path).expect("a parameters chunk");
        let recalled = parse_a1111_parameters(&text);
        assert_eq!(
            recalled,
            RecalledParameters {
                prompt: "a lighthouse,\nat dusk".into(),
                negative_prompt: Some("blurry".into()),
                steps: Some(20),
                sampler: Some(SamplerKind::EulerA),
                guidance: Some(7.5),
                seed: Some(42),
                size_px: Some((64, 48)),
                model_name: Some("sd15".into()),
                strength: Some(0.6),
            }
        );
        assert_eq!(
            parse_a1111_parameters("just a prompt").prompt,
            "just a prompt"
        );
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
