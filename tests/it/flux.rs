//! FLUX through the engine and the command line: the three modes, determinism, staged runs,
//! cancel, bad sizes, and a GGUF quantized transformer.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::jobs::{
    cancel_after_second_step, engine, engine_out_of_memory_at_first_step, engine_with_slow_steps,
    failure, finished, largest_pixel_difference, staged_engine, staged_f32_engine,
    transformer_bytes, wait_for, Outcome,
};
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::Device;
use easel_engine::engine::{EngineError, Event, Strategy};
use easel_engine::pipeline::request::{GenerateRequest, Reference, RequestError, SourceImage};
use easel_engine::pipeline::PipelineError;

fn flux_request(model: &Path) -> GenerateRequest {
    GenerateRequest {
        steps: 3,
        guidance: 3.5,
        width: Some(96),
        height: Some(64),
        seed: 11,
        ..GenerateRequest::new(model, "a lighthouse on a cliff at dusk")
    }
}

fn easel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_easel"))
        .env("EASEL_CONFIG", "/nonexistent/easel.toml")
        .env(
            "EASEL_DATA_DIR",
            std::env::temp_dir().join("easel-flux-tests"),
        )
        .args(args)
        .output()
        .expect("run easel")
}

#[test]
fn generate_command_runs_flux_in_all_three_modes() {
    if common::parity_missing() {
        return;
    }
    let temp = tempfile::tempdir().expect("temp dir");
    let model = common::model("flux-tiny-dev");
    let model = model.to_str().expect("utf-8 path");
    let init = temp.path().join("init.png");
    let mask = temp.path().join("mask.png");
    // Non-square, so that a swapped height and width would show.
    common::test_image(96, 64).save(&init).expect("save init");
    common::test_mask(96, 64).save(&mask).expect("save mask");
    let out = |name: &str| temp.path().join(name).to_string_lossy().into_owned();
    let base = |out: &str| -> Vec<String> {
        [
            "generate", "--model", model, "--prompt", "a fox", "--steps", "3", "--seed", "5",
            "--device", "cpu", "--out", out,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = easel(&refs);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{stderr}");
        stderr
    };

    let txt2img = out("txt2img.png");
    let mut args = base(&txt2img);
    args.extend(["--width", "80", "--height", "64"].map(String::from));
    let stderr = run(args);
    assert!(stderr.contains("step 3/3"), "progress on stderr: {stderr}");
    let image = image::open(&txt2img).expect("a PNG").to_rgb8();
    assert_eq!(image.dimensions(), (80, 64));

    let img2img = out("img2img.png");
    let mut args = base(&img2img);
    args.extend(["--init", init.to_str().unwrap(), "--strength", "0.7"].map(String::from));
    run(args);
    assert_eq!(
        image::open(&img2img).expect("a PNG").to_rgb8().dimensions(),
        (96, 64)
    );

    let inpaint = out("inpaint.png");
    let mut args = base(&inpaint);
    args.extend(
        [
            "--init",
            init.to_str().unwrap(),
            "--mask",
            mask.to_str().unwrap(),
            "--strength",
            "1.0",
        ]
        .map(String::from),
    );
    run(args);
    let result = image::open(&inpaint).expect("a PNG").to_rgb8();
    let original = common::test_image(96, 64);
    let painted = common::test_mask(96, 64);
    assert_eq!(result.dimensions(), (96, 64));
    // Paste-back keeps every unmasked pixel; the masked region is repainted.
    let mut kept = 0;
    let mut changed = 0;
    for (x, y, pixel) in result.enumerate_pixels() {
        match painted.get_pixel(x, y)[0] {
            0 => {
                assert_eq!(pixel, original.get_pixel(x, y), "kept pixel ({x}, {y})");
                kept += 1;
            }
            255 => changed += usize::from(pixel != original.get_pixel(x, y)),
            _ => {}
        }
    }
    assert!(kept > 0 && changed > 100, "kept {kept}, changed {changed}");
}

#[test]
fn flux_is_deterministic_and_staged_gives_the_same_bytes() {
    if common::parity_missing() {
        return;
    }
    let model = common::model("flux-tiny-schnell");
    let full = engine();
    let first = finished(wait_for(
        &full,
        full.generate(flux_request(&model)).expect("send"),
    ));
    let again = finished(wait_for(
        &full,
        full.generate(flux_request(&model)).expect("send"),
    ));
    assert_eq!(first.image.dimensions(), (96, 64));
    assert_eq!(first.image, again.image, "same seed, same bytes");
    // FLUX samples with flow-matching Euler, whatever sampler the request carried.
    assert_eq!(first.parameters.sampler.name(), "euler");
    let other_seed = finished(wait_for(
        &full,
        full.generate(GenerateRequest {
            seed: 12,
            ..flux_request(&model)
        })
        .expect("send"),
    ));
    assert_ne!(first.image, other_seed.image, "another seed, another image");

    let staged = staged_engine();
    let end = wait_for(
        &staged,
        staged.generate(flux_request(&model)).expect("send"),
    );
    // T5 and CLIP are gone before the transformer loads.
    let mut reports_with_transformer = 0;
    for event in &end.events {
        if let Event::Memory(report) = event {
            let held: Vec<&str> = report.weights_bytes.iter().map(|w| w.component).collect();
            if held.contains(&"transformer") {
                reports_with_transformer += 1;
                assert!(
                    !held.contains(&"text_encoder_2") && !held.contains(&"text_encoder"),
                    "staged: text encoders held beside the transformer: {held:?}"
                );
            }
        }
    }
    assert!(reports_with_transformer > 0, "a report during denoising");
    // With no precision asked, low-memory mode holds the transformer in f16 on the CPU (half
    // its f32 bytes; Easel's layers widen them): the image is the f32 one within the
    // rounding of the weights.
    let staged_transformer = transformer_bytes(&end.events);
    let staged_output = finished(end);
    let difference = largest_pixel_difference(&staged_output.image, &first.image);
    assert!(difference <= 2, "{difference}");
    // Staging itself changes nothing: in f32 it gives the very bytes.
    let staged_f32 = staged_f32_engine();
    let end = wait_for(
        &staged_f32,
        staged_f32.generate(flux_request(&model)).expect("send"),
    );
    let f32_transformer = transformer_bytes(&end.events);
    assert_eq!(
        finished(end).image,
        first.image,
        "staged gives the same bytes"
    );
    let (half, whole) = (staged_transformer[0], f32_transformer[0]);
    assert!(
        half < whole * 51 / 100 + 64 * 1024 && half > whole * 49 / 100,
        "{half} of {whole}"
    );
}

#[test]
fn flux_cancel_mid_run_then_a_new_job_succeeds() {
    if common::parity_missing() {
        return;
    }
    let engine = engine_with_slow_steps();
    let model = common::model("flux-tiny-dev");
    let job = engine
        .generate(GenerateRequest {
            steps: 200,
            ..flux_request(&model)
        })
        .expect("send");
    let end = cancel_after_second_step(&engine, job);
    assert!(matches!(end.outcome, Outcome::Cancelled), "cancelled");
    let steps = end
        .events
        .iter()
        .filter(|e| matches!(e, Event::Step { .. }))
        .count();
    assert!(
        steps < 200,
        "cancel stops the loop early ({steps} steps ran)"
    );
    // Previews come at every step, one pixel per latent.
    let preview = end.events.iter().find_map(|e| match e {
        Event::Step {
            preview: Some(p), ..
        } => Some(p.dimensions()),
        _ => None,
    });
    assert_eq!(preview, Some((12, 8)));
    let next = engine.generate(flux_request(&model)).expect("send");
    finished(wait_for(&engine, next));
}

#[test]
fn flux_sizes_must_be_multiples_of_16() {
    if common::parity_missing() {
        return;
    }
    let engine = engine();
    let model = common::model("flux-tiny-schnell");
    let job = engine
        .generate(GenerateRequest {
            width: Some(72),
            ..flux_request(&model)
        })
        .expect("send");
    let error = failure(wait_for(&engine, job));
    assert_eq!(
        error,
        EngineError::Pipeline(PipelineError::Request(RequestError::SizeNotMultiple {
            side: "width",
            px: 72,
            multiple: 16
        }))
    );
    assert!(error.to_string().contains("use 64 or 80"), "{error}");
    // An init image of an odd size is rounded down to a multiple of 16.
    let job = engine
        .generate(GenerateRequest {
            width: None,
            height: None,
            references: vec![Reference::Init(SourceImage {
                image: common::test_image(100, 70),
                strength: 0.5,
                mask: None,
                feather_px: 0,
            })],
            ..flux_request(&model)
        })
        .expect("send");
    assert_eq!(
        finished(wait_for(&engine, job)).image.dimensions(),
        (96, 64)
    );
}

/// The tiny schnell folder with its transformer as a GGUF (Q8_0 where the rows allow it),
/// beside the single safetensors file or (`keep_full` false) in its place.
fn quantized_copy(keep_full: bool) -> (tempfile::TempDir, PathBuf) {
    let (temp, folder) = common::copy_model("flux-tiny-schnell");
    let bfl = folder.join("flux1-schnell.safetensors");
    let tensors = candle_core::safetensors::load(&bfl, &Device::Cpu).expect("load BFL file");
    let mut quantized = Vec::new();
    for (name, tensor) in &tensors {
        let rows_fit = tensor.rank() == 2 && tensor.dims()[1] % 32 == 0;
        let dtype = if rows_fit {
            GgmlDType::Q8_0
        } else {
            GgmlDType::F32
        };
        quantized.push((
            name.clone(),
            QTensor::quantize(tensor, dtype).expect("quantize"),
        ));
    }
    let refs: Vec<(&str, &QTensor)> = quantized.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut file = std::fs::File::create(folder.join("flux1-schnell-Q8_0.gguf")).expect("create");
    gguf_file::write(&mut file, &[], &refs).expect("write GGUF");
    if !keep_full {
        std::fs::remove_file(&bfl).expect("remove the full transformer");
    }
    (temp, folder)
}

#[test]
fn a_gguf_transformer_loads_and_generates_close_to_the_full_one() {
    if common::parity_missing() {
        return;
    }
    let (_temp, quantized) = quantized_copy(false);
    let engine = engine();
    let full = finished(wait_for(
        &engine,
        engine
            .generate(flux_request(&common::model("flux-tiny-schnell")))
            .expect("send"),
    ));
    let end = wait_for(
        &engine,
        engine.generate(flux_request(&quantized)).expect("send"),
    );
    let held = transformer_bytes(&end.events);
    let gguf_bytes = std::fs::metadata(quantized.join("flux1-schnell-Q8_0.gguf"))
        .expect("gguf")
        .len();
    assert!(held.contains(&gguf_bytes), "reports hold the GGUF's bytes");
    let output = finished(end);
    let differences: Vec<f64> = output
        .image
        .as_raw()
        .iter()
        .zip(full.image.as_raw())
        .map(|(a, b)| f64::from(a.abs_diff(*b)))
        .collect();
    let mean = differences.iter().sum::<f64>() / differences.len() as f64;
    // 8-bit weights: close to the f32 result, but not the same computation.
    assert!(mean < 4.0, "mean difference {mean} of 255");
    assert!(
        mean > 0.0,
        "the GGUF path must not silently run the f32 weights"
    );
}

#[test]
fn out_of_memory_falls_back_to_the_gguf_transformer_when_the_folder_has_one() {
    if common::parity_missing() {
        return;
    }
    let (_temp, folder) = quantized_copy(true);
    // The first step runs out of memory with the full transformer, in every f32 strategy.
    let engine = engine_out_of_memory_at_first_step(3);
    let end = wait_for(
        &engine,
        engine.generate(flux_request(&folder)).expect("send"),
    );
    let ladder = end.fallbacks();
    assert_eq!(
        ladder,
        [
            (Strategy::Full, Some(Strategy::Staged)),
            (Strategy::Staged, Some(Strategy::StagedTiledVae)),
            (Strategy::StagedTiledVae, Some(Strategy::StagedQuantized)),
        ]
    );
    let gguf_bytes = std::fs::metadata(folder.join("flux1-schnell-Q8_0.gguf"))
        .expect("gguf")
        .len();
    let transformer_bytes = transformer_bytes(&end.events);
    assert_eq!(
        transformer_bytes.last(),
        Some(&gguf_bytes),
        "{transformer_bytes:?}"
    );
    assert_eq!(finished(end).strategy, Strategy::StagedQuantized);

    // The next job starts again from the full-precision transformer.
    let next = wait_for(
        &engine,
        engine.generate(flux_request(&folder)).expect("send"),
    );
    let output = finished(next);
    assert_eq!(output.strategy, Strategy::Full);
}
