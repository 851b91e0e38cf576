//! The cost of edit references: for a model that edits with references, one job per count
//! (0, 1, 2, 4 by default) at the benchmark's size, each reference as large as the output, so
//! each adds as many tokens to every attention as the image itself. Step time and peak memory
//! of each are what planning a machine for multi-reference editing needs.

use image::{Rgb, RgbImage};

use super::report::ReferenceRun;
use super::{
    is_first_step, is_later_step, median, peak_rss_bytes, reset_peak_rss, run_job, spawn,
    stage_secs, BenchError, BenchOptions,
};
use crate::pipeline::request::{GenerateRequest, Reference};

/// The counts run when none are asked for.
pub const DEFAULT_COUNTS: [usize; 4] = [0, 1, 2, 4];

/// Runs `request` with each of `counts` references on one engine (full mode, weights kept
/// loaded after the first job, so each peak is the weights plus that job's activations).
pub(super) fn measure(
    options: &BenchOptions,
    request: &GenerateRequest,
    counts: &[usize],
    text_tokens: usize,
    patch_px: u32,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<ReferenceRun>, BenchError> {
    let engine = spawn(options, false)?;
    let side_tokens = (options.size_px / patch_px.max(1)) as usize;
    let image_tokens = side_tokens * side_tokens;
    // The first job loads the weights, so that every measured job starts with them held.
    run_job(&engine, request)?;
    counts
        .iter()
        .map(|&count| {
            progress(&format!("{count} edit references"));
            let mut job = request.clone();
            job.references = (0..count)
                .map(|index| Reference::Edit {
                    image: reference_image(options.size_px, index),
                    name: format!("reference-{}.png", index + 1),
                })
                .collect();
            let peak_resettable = reset_peak_rss();
            let output = run_job(&engine, &job)?;
            let mut steps = stage_secs(&output, &is_later_step);
            if steps.is_empty() {
                steps = stage_secs(&output, &is_first_step);
            }
            Ok(ReferenceRun {
                references: count,
                tokens: text_tokens + image_tokens * (1 + count),
                step_secs_median: median(&mut steps),
                peak_rss_bytes: peak_rss_bytes().filter(|_| peak_resettable),
            })
        })
        .collect()
}

/// A different smooth picture for each reference.
fn reference_image(side_px: u32, index: usize) -> RgbImage {
    let tint = (index as u32 * 60 % 256) as u8;
    RgbImage::from_fn(side_px, side_px, |x, y| {
        Rgb([
            (x * 255 / side_px.max(1)) as u8,
            (y * 255 / side_px.max(1)) as u8,
            tint,
        ])
    })
}
