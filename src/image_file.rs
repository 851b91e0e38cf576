//! Reading the images a user hands Easel (init images, masks, references), with one limit and
//! one set of messages for the command line and the window.

use std::path::Path;

use image::RgbImage;

/// Largest side accepted, in pixels: past this, decoding and masking would exhaust memory.
pub const MAX_IMAGE_SIDE_PX: u32 = 8192;

/// Reads an image file as RGB; the error names the file and says what to do.
pub fn read_image_file(path: &Path) -> Result<RgbImage, String> {
    let unreadable = |e: &dyn std::fmt::Display| {
        format!(
            "{} is not an image Easel can read (PNG, JPEG or WebP): {e}",
            path.display()
        )
    };
    let reader = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| format!("could not open {}: {e}", path.display()))?;
    let (width, height) = reader.into_dimensions().map_err(|e| unreadable(&e))?;
    if width.max(height) > MAX_IMAGE_SIDE_PX {
        return Err(format!(
            "{} is {width}x{height}; images up to {MAX_IMAGE_SIDE_PX} px a side can be used, so scale it down first",
            path.display()
        ));
    }
    image::open(path)
        .map(|i| i.to_rgb8())
        .map_err(|e| unreadable(&e))
}
