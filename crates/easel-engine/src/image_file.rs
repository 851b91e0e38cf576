//! Reading the images a user hands Easel (init images, masks, references) as users have them:
//! the format found from the content, not the name (a PNG saved as `.jpg`, a file without
//! extension); a phone photo turned upright by its EXIF orientation; transparency laid on
//! white (and said); 16-bit channels rounded to 8. One size limit and one set of messages for
//! the command line and the window.

use std::path::Path;

use image::{DynamicImage, ImageDecoder, RgbImage};

/// Largest side accepted, in pixels: past this, decoding and masking would exhaust memory.
pub const MAX_IMAGE_SIDE_PX: u32 = 8192;

/// An image as read, with what was done to it that the user should know.
#[derive(Debug, Clone)]
pub struct ReadImage {
    /// The pixels, upright.
    pub image: DynamicImage,
    /// Things said about the reading ("transparent pixels were laid on white").
    pub notes: Vec<String>,
}

/// Reads an image file, decoded by its content and turned upright; the error names the file
/// and says what to do.
pub fn read_user_image(path: &Path) -> Result<ReadImage, String> {
    let unreadable = |e: &dyn std::fmt::Display| {
        format!(
            "{} is not an image Easel can read (PNG, JPEG or WebP): {e}",
            path.display()
        )
    };
    let open = || {
        image::ImageReader::open(path)
            .and_then(|r| r.with_guessed_format())
            .map_err(|e| format!("could not open {}: {e}", path.display()))
    };
    let reader = open()?;
    if reader.format().is_none() {
        return Err(unreadable(&"its content is of no known image format"));
    }
    let (width, height) = reader.into_dimensions().map_err(|e| unreadable(&e))?;
    if width.max(height) > MAX_IMAGE_SIDE_PX {
        return Err(format!(
            "{} is {width}x{height}; images up to {MAX_IMAGE_SIDE_PX} px a side can be used, so scale it down first",
            path.display()
        ));
    }
    let mut decoder = open()?.into_decoder().map_err(|e| unreadable(&e))?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| unreadable(&e))?;
    let mut notes = Vec::new();
    if orientation != image::metadata::Orientation::NoTransforms {
        image.apply_orientation(orientation);
        notes.push(format!(
            "{} was turned upright as its EXIF orientation says",
            path.display()
        ));
    }
    Ok(ReadImage { image, notes })
}

/// Reads an image file as RGB, transparent pixels laid on white, with the notes to show.
pub fn read_rgb_image(path: &Path) -> Result<(RgbImage, Vec<String>), String> {
    let ReadImage { image, mut notes } = read_user_image(path)?;
    let (rgb, had_transparency) = on_white(&image);
    if had_transparency {
        notes.push(format!(
            "{} has transparent pixels; they were laid on white",
            path.display()
        ));
    }
    Ok((rgb, notes))
}

/// Reads an image file as RGB (see `read_rgb_image`); the notes go to the log.
pub fn read_image_file(path: &Path) -> Result<RgbImage, String> {
    let (image, notes) = read_rgb_image(path)?;
    for note in notes {
        tracing::info!("{note}");
    }
    Ok(image)
}

/// Reads a mask file as grey (white repaints): transparent pixels count as black, that is
/// unpainted, so a mask drawn on a transparent layer means what it shows.
pub fn read_mask_file(path: &Path) -> Result<image::GrayImage, String> {
    let ReadImage { image, notes } = read_user_image(path)?;
    for note in notes {
        tracing::info!("{note}");
    }
    let (rgb, _) = over_background(&image, 0.0);
    Ok(DynamicImage::ImageRgb8(rgb).to_luma8())
}

/// `image` as 8-bit RGB over white, and whether any pixel was less than opaque.
pub fn on_white(image: &DynamicImage) -> (RgbImage, bool) {
    over_background(image, 1.0)
}

/// `image` as 8-bit RGB over a grey `background` (0 black, 1 white), and whether any pixel
/// was less than opaque.
fn over_background(image: &DynamicImage, background: f32) -> (RgbImage, bool) {
    if !image.color().has_alpha() {
        return (image.to_rgb8(), false);
    }
    let rgba = image.to_rgba32f();
    let mut had_transparency = false;
    let rgb = RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let a = a.clamp(0.0, 1.0);
        had_transparency |= a < 1.0;
        let over =
            |c: f32| ((c.clamp(0.0, 1.0) * a + background * (1.0 - a)) * 255.0).round() as u8;
        image::Rgb([over(r), over(g), over(b)])
    });
    (rgb, had_transparency)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(
        dir: &Path,
        name: &str,
        image: &DynamicImage,
        format: image::ImageFormat,
    ) -> std::path::PathBuf {
        let path = dir.join(name);
        let mut bytes = Vec::new();
        image
            .write_to(&mut std::io::Cursor::new(&mut bytes), format)
            .unwrap_or_default();
        std::fs::write(&path, bytes).unwrap_or_default();
        path
    }

    #[test]
    fn images_are_read_by_content_with_transparency_on_white_and_16_bits() -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let rgba = image::RgbaImage::from_fn(4, 2, |x, _| {
            image::Rgba([0, 0, 0, if x < 2 { 0 } else { 255 }])
        });
        let png_named_jpg = write(
            dir.path(),
            "photo.jpg",
            &DynamicImage::ImageRgba8(rgba),
            image::ImageFormat::Png,
        );
        let (rgb, notes) = read_rgb_image(&png_named_jpg)?;
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(rgb.get_pixel(3, 1).0, [0, 0, 0]);
        assert!(
            notes.iter().any(|n| n.contains("laid on white")),
            "{notes:?}"
        );

        let deep = image::ImageBuffer::<image::Rgb<u16>, _>::from_pixel(
            3,
            3,
            image::Rgb([65535, 32896, 0]),
        );
        let no_extension = write(
            dir.path(),
            "scan",
            &DynamicImage::ImageRgb16(deep),
            image::ImageFormat::Png,
        );
        let (rgb, notes) = read_rgb_image(&no_extension)?;
        assert_eq!(rgb.get_pixel(1, 1).0, [255, 128, 0]);
        assert!(notes.is_empty(), "{notes:?}");

        let text = dir.path().join("notes.png");
        std::fs::write(&text, "not an image").map_err(|e| e.to_string())?;
        let error = read_rgb_image(&text).err().unwrap_or_default();
        assert!(
            error.contains("notes.png") && error.contains("not an image Easel can read"),
            "{error}"
        );
        Ok(())
    }

    /// A JPEG of `image` with an EXIF orientation of `orientation` in an APP1 segment.
    fn jpeg_with_orientation(image: &RgbImage, orientation: u16) -> Vec<u8> {
        let mut jpeg = Vec::new();
        DynamicImage::ImageRgb8(image.clone())
            .write_to(
                &mut std::io::Cursor::new(&mut jpeg),
                image::ImageFormat::Jpeg,
            )
            .unwrap_or_default();
        let mut exif = b"Exif\0\0II*\0".to_vec();
        exif.extend(8u32.to_le_bytes());
        exif.extend(1u16.to_le_bytes());
        exif.extend(0x0112u16.to_le_bytes());
        exif.extend(3u16.to_le_bytes());
        exif.extend(1u32.to_le_bytes());
        exif.extend(u32::from(orientation).to_le_bytes());
        exif.extend(0u32.to_le_bytes());
        let mut segment = vec![0xFF, 0xE1];
        segment.extend(((exif.len() + 2) as u16).to_be_bytes());
        segment.extend(exif);
        let mut out = jpeg[..2].to_vec();
        out.extend(segment);
        out.extend(&jpeg[2..]);
        out
    }

    #[test]
    fn a_phone_photo_is_turned_upright() -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let landscape = RgbImage::from_pixel(32, 16, image::Rgb([200, 30, 30]));
        let path = dir.path().join("IMG_0001.JPG");
        std::fs::write(&path, jpeg_with_orientation(&landscape, 6)).map_err(|e| e.to_string())?;
        let (rgb, notes) = read_rgb_image(&path)?;
        assert_eq!(rgb.dimensions(), (16, 32));
        assert!(notes.iter().any(|n| n.contains("upright")), "{notes:?}");
        Ok(())
    }
}
