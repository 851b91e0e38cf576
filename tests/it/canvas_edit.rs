//! Editing a picture larger than the model's native size: inpainting only the masked area,
//! outpainting beyond the frame, and colour matching around a repaint, through the engine
//! and the command line. What must hold: output sizes, every unmasked or original pixel
//! byte-identical, the masked or new region repainted, the same bytes for the same seed.

use std::path::{Path, PathBuf};

use easel_engine::pipeline::outpaint::{extend_canvas, Extend, ExtendFill};
use easel_engine::pipeline::request::{
    GenerateRequest, InpaintArea, InpaintOptions, Reference, SourceImage,
};
use image::{GrayImage, Luma, RgbImage};

use crate::cli::{easel, stderr};
use crate::common;
use crate::common::jobs::{engine, finished, wait_for};

/// A picture several times the tiny models' native 64x64.
const WIDTH: u32 = 160;
const HEIGHT: u32 = 120;

/// A mask over a 24x20 patch, well inside the picture.
fn small_mask() -> GrayImage {
    GrayImage::from_fn(WIDTH, HEIGHT, |x, y| {
        Luma([if (100..124).contains(&x) && (40..60).contains(&y) {
            255
        } else {
            0
        }])
    })
}

fn inpaint_request(model: &Path, area: InpaintArea, match_colours: bool) -> GenerateRequest {
    GenerateRequest {
        steps: 3,
        guidance: 3.5,
        seed: 9,
        references: vec![Reference::Init(SourceImage {
            image: common::test_image(WIDTH, HEIGHT),
            strength: 1.0,
            mask: Some(small_mask()),
            feather_px: 0,
        })],
        inpaint: InpaintOptions {
            area,
            mask_padding_px: 16,
            match_colours,
        },
        ..GenerateRequest::new(model, "a red boat on a lake")
    }
}

/// Counts pixels that differ, `(under the mask, outside it)`.
fn changed(original: &RgbImage, result: &RgbImage, mask: &GrayImage) -> (usize, usize) {
    let mut inside = 0;
    let mut outside = 0;
    for (x, y, pixel) in result.enumerate_pixels() {
        if pixel != original.get_pixel(x, y) {
            if mask.get_pixel(x, y)[0] > 0 {
                inside += 1;
            } else {
                outside += 1;
            }
        }
    }
    (inside, outside)
}

#[test]
fn the_masked_area_is_painted_at_native_size_and_every_other_pixel_is_kept() {
    if common::parity_missing() {
        return;
    }
    let engine = engine();
    for model in ["sd15-tiny", "flux-tiny-schnell"] {
        let model = common::model(model);
        let run = |area| {
            let job = engine
                .generate(inpaint_request(&model, area, true))
                .expect("send");
            wait_for(&engine, job)
        };
        let end = run(InpaintArea::Masked);
        // The steps ran on the crop: the previews are the crop's latents, not the picture's.
        let preview = end.preview_sizes().into_iter().flatten().last();
        assert!(
            preview.is_some_and(|(w, h)| w < WIDTH / 8 && h < HEIGHT / 8),
            "{model:?}: previews {preview:?}"
        );
        let masked = finished(end);
        assert_eq!(masked.image.dimensions(), (WIDTH, HEIGHT));
        assert_eq!(masked.parameters.masked_area_padding_px, Some(16));
        assert_eq!(
            (masked.parameters.width, masked.parameters.height),
            (WIDTH, HEIGHT)
        );
        let (inside, outside) = changed(
            &common::test_image(WIDTH, HEIGHT),
            &masked.image,
            &small_mask(),
        );
        assert_eq!(outside, 0, "{model:?}: pixels outside the mask changed");
        assert!(
            inside > 24 * 20 / 2,
            "{model:?}: only {inside} masked pixels changed"
        );
        let again = finished(run(InpaintArea::Masked));
        assert_eq!(
            masked.image, again.image,
            "{model:?}: same seed, same bytes"
        );
        // Auto takes the masked area for a picture larger than native; whole paints it all.
        assert_eq!(finished(run(InpaintArea::Auto)).image, masked.image);
        let whole = finished(run(InpaintArea::Whole));
        assert_eq!(whole.parameters.masked_area_padding_px, None);
        assert_ne!(whole.image, masked.image);
    }
}

#[test]
fn colour_matching_changes_only_the_repaint_and_can_be_turned_off() {
    if common::parity_missing() {
        return;
    }
    let engine = engine();
    let model = common::model("sd15-tiny");
    let run = |match_colours| {
        let job = engine
            .generate(inpaint_request(&model, InpaintArea::Whole, match_colours))
            .expect("send");
        finished(wait_for(&engine, job)).image
    };
    let matched = run(true);
    let raw = run(false);
    let original = common::test_image(WIDTH, HEIGHT);
    assert_eq!(changed(&original, &matched, &small_mask()).1, 0);
    assert_eq!(changed(&original, &raw, &small_mask()).1, 0);
    assert_ne!(matched, raw, "matching moved the repaint's colours");
}

/// The test picture and mask as files, and where the result goes.
fn files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let init = dir.join("init.png");
    let mask = dir.join("mask.png");
    common::test_image(WIDTH, HEIGHT).save(&init).expect("init");
    small_mask().save(&mask).expect("mask");
    (init, mask, dir.join("out.png"))
}

#[test]
fn the_command_line_paints_the_masked_area_and_says_so_in_the_png() {
    if common::parity_missing() {
        return;
    }
    let temp = tempfile::tempdir().expect("temp");
    let (init, mask, out) = files(temp.path());
    let model = common::model("sd15-tiny");
    let run = easel(&[
        "generate",
        "--model",
        model.to_str().expect("utf-8"),
        "--prompt",
        "a red boat",
        "--init",
        init.to_str().expect("utf-8"),
        "--mask",
        mask.to_str().expect("utf-8"),
        "--inpaint-area",
        "masked",
        "--mask-padding",
        "16",
        "--steps",
        "2",
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let result = image::open(&out).expect("result").to_rgb8();
    assert_eq!(result.dimensions(), (WIDTH, HEIGHT));
    let (inside, outside) = changed(&common::test_image(WIDTH, HEIGHT), &result, &small_mask());
    assert_eq!(outside, 0);
    assert!(inside > 0);
    let text = easel_engine::output::read_png_parameters(&out).expect("parameters");
    assert!(
        text.contains(&format!("Size: {WIDTH}x{HEIGHT}"))
            && text.contains("Inpaint area: Only masked, Masked area padding: 16"),
        "{text}"
    );
}

#[test]
fn the_command_line_outpaints_and_keeps_the_original_pixels() {
    if common::parity_missing() {
        return;
    }
    let temp = tempfile::tempdir().expect("temp");
    let (init, _, out) = files(temp.path());
    let model = common::model("sd15-tiny");
    let run = easel(&[
        "generate",
        "--model",
        model.to_str().expect("utf-8"),
        "--prompt",
        "a wider view",
        "--init",
        init.to_str().expect("utf-8"),
        "--extend",
        "32,0,64,16",
        "--steps",
        "2",
        "--seed",
        "4",
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let result = image::open(&out).expect("result").to_rgb8();
    assert_eq!(result.dimensions(), (WIDTH + 96, HEIGHT + 16));
    let original = common::test_image(WIDTH, HEIGHT);
    for (x, y, pixel) in original.enumerate_pixels() {
        assert_eq!(result.get_pixel(x + 32, y), pixel, "original pixel {x},{y}");
    }
    // The new area was generated, not left as the fill it started from.
    let extend = Extend::parse("32,0,64,16").expect("extend");
    let (filled, new_area) = extend_canvas(&original, None, extend, ExtendFill::Edge, 4);
    let (repainted, kept) = changed(&filled, &result, &new_area);
    assert_eq!(kept, 0);
    assert!(
        repainted > (96 * HEIGHT + 16 * (WIDTH + 96)) as usize / 2,
        "{repainted}"
    );
}

#[test]
fn bad_canvas_options_are_refused_before_any_work() {
    let cases: [(&[&str], &str); 4] = [
        (
            &["--init", "x.png", "--extend", "1,2,3"],
            "left,top,right,bottom",
        ),
        (
            &["--init", "x.png", "--extend", "1,2,3,99999"],
            "at most 8192",
        ),
        (&["--extend", "1,2,3,4"], "--init"),
        (&["--inpaint-area", "sideways"], "auto, masked or whole"),
    ];
    for (args, expected) in cases {
        let mut all = vec!["generate", "--model", "m", "--prompt", "p"];
        all.extend_from_slice(args);
        let run = easel(&all);
        assert_eq!(run.status.code(), Some(2), "{args:?}: {}", stderr(&run));
        assert!(
            stderr(&run).contains(expected),
            "{args:?}: {}",
            stderr(&run)
        );
    }
}

#[test]
fn an_edit_model_paints_the_masked_area_with_its_references() {
    if common::parity_missing() {
        return;
    }
    // The tiny klein says it is native at 1024 px, as the real one; at 128 its crops are
    // quick to paint.
    let (_keep, klein) =
        common::copy_model_from(&common::parity_dir().join("flux2/models/flux2-klein-tiny"));
    let vae_config = klein.join("vae/config.json");
    let config = std::fs::read_to_string(&vae_config).expect("vae config");
    std::fs::write(
        &vae_config,
        config.replace("\"sample_size\": 1024", "\"sample_size\": 128"),
    )
    .expect("write vae config");
    let mut request = inpaint_request(&klein, InpaintArea::Masked, true);
    request.guidance = 1.0;
    request.steps = 2;
    request.references.push(Reference::Edit {
        image: common::test_image(64, 64),
        name: "boat.png".into(),
    });
    let engine = engine();
    let job = engine.generate(request.clone()).expect("send");
    let output = finished(wait_for(&engine, job));
    assert_eq!(output.image.dimensions(), (WIDTH, HEIGHT));
    assert_eq!(output.parameters.references, ["boat.png"]);
    assert_eq!(output.parameters.masked_area_padding_px, Some(16));
    let (inside, outside) = changed(
        &common::test_image(WIDTH, HEIGHT),
        &output.image,
        &small_mask(),
    );
    assert_eq!(outside, 0);
    assert!(inside > 0);
    // The reference matters inside the crop too.
    request.references.pop();
    request.references.push(Reference::Edit {
        image: RgbImage::from_pixel(64, 64, image::Rgb([0, 0, 255])),
        name: "blue.png".into(),
    });
    let job = engine.generate(request).expect("send");
    assert_ne!(finished(wait_for(&engine, job)).image, output.image);
}
