//! The engine thread: results, determinism, cancel, crashes, bad requests and bad files.

use crate::common;

use crate::common::jobs::{
    cancel_after_second_step, engine, engine_with, engine_with_slow_steps, failure, finished,
    staged_engine, wait_for, JobEnd, Outcome, WAIT,
};

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use easel_engine::device::DeviceChoice;
use easel_engine::engine::{
    Engine, EngineConfig, EngineError, Event, Fault, FaultPoint, JobId, JobOutput, Request,
    ResidencyPolicy, Strategy,
};
use easel_engine::models::error::ModelError;
use easel_engine::models::sd::Component;
use easel_engine::pipeline::request::{GenerateRequest, Reference, RequestError, SourceImage};
use easel_engine::pipeline::PipelineError;
use easel_engine::schedulers::SamplerKind;

fn tiny_request(model: &Path) -> GenerateRequest {
    GenerateRequest {
        steps: 3,
        width: Some(64),
        height: Some(64),
        seed: 7,
        ..GenerateRequest::new(model, "a red apple on a table")
    }
}

/// Runs a job of `model` and checks that it finishes without loading anything.
fn assert_runs_without_loading(engine: &Engine, model: &Path, why: &str) {
    let job = engine.generate(tiny_request(model)).expect("send");
    let end = wait_for(engine, job);
    assert!(
        !end.events
            .iter()
            .any(|e| matches!(e, Event::Loading { .. })),
        "{why}"
    );
    finished(end);
}

fn request_error(end: JobEnd) -> RequestError {
    assert!(
        !end.events
            .iter()
            .any(|e| matches!(e, Event::Loading { .. } | Event::Step { .. })),
        "a bad request must fail before any loading or step"
    );
    match failure(end) {
        EngineError::Pipeline(PipelineError::Request(error)) => error,
        other => panic!("expected a request error, got {other}"),
    }
}

fn model_error(end: JobEnd) -> ModelError {
    match failure(end) {
        EngineError::Pipeline(PipelineError::Model(error)) => error,
        other => panic!("expected a model error, got {other}"),
    }
}

#[test]
fn txt2img_reports_progress_and_keeps_models_loaded() {
    if common::parity_missing() {
        return;
    }
    let wakes = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&wakes);
    let engine = Engine::spawn(
        EngineConfig {
            device: DeviceChoice::Cpu,
            ..Default::default()
        },
        Arc::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        }),
    )
    .expect("engine");
    let model = common::model("sd15-tiny");
    let job = engine.generate(tiny_request(&model)).expect("send");
    let end = wait_for(&engine, job);
    let loads = end.loads_started();
    assert_eq!(loads, ["text_encoder", "unet", "vae"]);
    let steps = end.steps();
    assert_eq!(steps, [(1, 3), (2, 3), (3, 3)]);
    // Every step carries a live preview, one pixel per latent of the 64x64 result.
    let preview_sizes = end.preview_sizes();
    assert_eq!(preview_sizes, [Some((8, 8)); 3]);
    assert!(matches!(
        end.events[0],
        Event::Memory(_) | Event::Queued { .. }
    ));
    let output = finished(end);
    assert_eq!(output.image.dimensions(), (64, 64));
    assert_eq!(output.parameters.seed, 7);
    assert_eq!(output.parameters.sampler, SamplerKind::Euler);
    let stages: Vec<&str> = output
        .timings
        .stages
        .iter()
        .map(|(s, _)| s.as_str())
        .collect();
    for stage in ["load unet", "encode prompt", "step 3", "decode"] {
        assert!(
            stages.contains(&stage),
            "missing stage {stage} in {stages:?}"
        );
    }
    assert!(
        wakes.load(Ordering::SeqCst) >= 6,
        "the wake-up callback runs after events"
    );

    assert_runs_without_loading(
        &engine,
        &model,
        "a second job of the same model must reuse the loaded components",
    );
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    if common::parity_missing() {
        return;
    }
    let engine = engine();
    let model = common::model("sd15-tiny");
    let run = |seed: u64| {
        let job = engine
            .generate(GenerateRequest {
                seed,
                sampler: SamplerKind::EulerA,
                ..tiny_request(&model)
            })
            .expect("send");
        finished(wait_for(&engine, job)).image
    };
    let first = run(42);
    let again = run(42);
    let other = run(43);
    assert_eq!(first.as_raw(), again.as_raw(), "same seed, same bytes");
    assert_ne!(first.as_raw(), other.as_raw(), "another seed, other bytes");
}

#[test]
fn cancel_mid_run_then_a_new_job_succeeds() {
    if common::parity_missing() {
        return;
    }
    // Each step waits a little so that the cancel lands mid-run.
    let engine = engine_with_slow_steps();
    let model = common::model("sd15-tiny");
    let job = engine
        .generate(GenerateRequest {
            steps: 200,
            ..tiny_request(&model)
        })
        .expect("send");
    let end = cancel_after_second_step(&engine, job);
    assert!(
        matches!(end.outcome, Outcome::Cancelled),
        "the job must end as cancelled"
    );
    let steps_done = end
        .events
        .iter()
        .filter(|e| matches!(e, Event::Step { .. }))
        .count();
    assert!(
        steps_done < 200,
        "cancel must stop the loop early ({steps_done} steps ran)"
    );

    assert_runs_without_loading(&engine, &model, "a cancelled job leaves its model loaded");
}

#[test]
fn a_panic_in_a_job_is_reported_and_the_engine_keeps_serving() {
    if common::parity_missing() {
        return;
    }
    let hook = Arc::new(|point: FaultPoint| {
        if point == (FaultPoint::BeforeStep { job: 1, step: 2 }) {
            panic!("injected fault");
        }
        Fault::Proceed
    });
    let engine = engine_with(EngineConfig {
        device: DeviceChoice::Cpu,
        fault_hook: Some(hook),
        ..Default::default()
    });
    let model = common::model("sd15-tiny");
    let first = engine.generate(tiny_request(&model)).expect("send");
    assert_eq!(first, 1);
    match failure(wait_for(&engine, first)) {
        EngineError::Panicked(message) => assert!(message.contains("injected fault")),
        other => panic!("expected a caught panic, got {other}"),
    }
    let second = engine.generate(tiny_request(&model)).expect("send");
    finished(wait_for(&engine, second));
    assert!(engine.is_running());
}

#[test]
fn bad_requests_fail_at_once_with_typed_errors() {
    if common::parity_missing() {
        return;
    }
    let engine = engine();
    let model = common::model("sd15-tiny");
    let run = |request: GenerateRequest| {
        let job = engine.generate(request).expect("send");
        request_error(wait_for(&engine, job))
    };
    assert_eq!(
        run(GenerateRequest {
            width: Some(100),
            ..tiny_request(&model)
        }),
        RequestError::SizeNotMultiple {
            side: "width",
            px: 100,
            multiple: 8
        }
    );
    assert_eq!(
        run(GenerateRequest {
            height: Some(8192),
            ..tiny_request(&model)
        }),
        RequestError::SizeOutOfRange {
            side: "height",
            px: 8192
        }
    );
    assert_eq!(
        run(GenerateRequest {
            steps: 0,
            ..tiny_request(&model)
        }),
        RequestError::Steps(0)
    );
    assert_eq!(
        run(GenerateRequest {
            prompt: "   ".into(),
            ..tiny_request(&model)
        }),
        RequestError::EmptyPrompt
    );
    assert_eq!(
        run(GenerateRequest {
            references: vec![Reference::Init(SourceImage {
                image: common::test_image(64, 64),
                strength: 1.5,
                mask: None,
                feather_px: 0,
            })],
            ..tiny_request(&model)
        }),
        RequestError::Strength(1.5)
    );
    assert_eq!(
        run(GenerateRequest {
            references: vec![Reference::Init(SourceImage {
                image: common::test_image(64, 64),
                strength: 0.5,
                mask: Some(common::test_mask(64, 32)),
                feather_px: 0,
            })],
            ..tiny_request(&model)
        }),
        RequestError::MaskSize {
            mask: (64, 32),
            image: (64, 64)
        }
    );
    // A 9-channel inpainting model needs a mask.
    let inpaint_model = common::model("sd15-tiny-inpaint");
    assert!(matches!(
        run(tiny_request(&inpaint_model)),
        RequestError::ModelCannot(_)
    ));
    // The engine still serves after all of them.
    let job = engine.generate(tiny_request(&model)).expect("send");
    finished(wait_for(&engine, job));
}

#[test]
fn damaged_model_files_give_errors_naming_the_file() {
    if common::parity_missing() {
        return;
    }
    let engine = engine();

    let (_keep, truncated) = common::copy_model("sd15-tiny");
    let weights = truncated.join("unet/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&weights).expect("read weights");
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).expect("truncate");
    let job = engine.generate(tiny_request(&truncated)).expect("send");
    match model_error(wait_for(&engine, job)) {
        error @ ModelError::BadWeights { .. } => {
            let text = error.to_string();
            assert!(text.contains("truncated"), "{text}");
            assert!(text.contains(&weights.display().to_string()), "{text}");
        }
        other => panic!("expected BadWeights, got {other}"),
    }

    let (_keep, reshaped) = common::copy_model("sd15-tiny");
    let config_path = reshaped.join("text_encoder/config.json");
    let config = std::fs::read_to_string(&config_path).expect("read config");
    std::fs::write(
        &config_path,
        config.replace("\"intermediate_size\": 64", "\"intermediate_size\": 128"),
    )
    .expect("write config");
    let job = engine.generate(tiny_request(&reshaped)).expect("send");
    let text = model_error(wait_for(&engine, job)).to_string();
    assert!(text.contains("text_encoder/model.safetensors"), "{text}");
    assert!(text.contains("text_encoder/config.json"), "{text}");

    let (_keep, untokenized) = common::copy_model("sd15-tiny");
    let tokenizer = untokenized.join("tokenizer/tokenizer.json");
    std::fs::remove_file(&tokenizer).expect("remove tokenizer");
    let job = engine.generate(tiny_request(&untokenized)).expect("send");
    assert_eq!(
        model_error(wait_for(&engine, job)),
        ModelError::MissingFile {
            what: "tokenizer",
            path: tokenizer
        }
    );

    let job = engine
        .generate(tiny_request(Path::new("/nonexistent/model")))
        .expect("send");
    assert!(matches!(
        model_error(wait_for(&engine, job)),
        ModelError::FolderNotFound { .. }
    ));
}

#[test]
fn non_square_inpainting_keeps_unmasked_pixels() {
    if common::parity_missing() {
        return;
    }
    let engine = engine();
    let model = common::model("sd15-tiny");
    let (width, height) = (96, 64);
    let original = common::test_image(width, height);
    let mask = common::test_mask(width, height);
    let job = engine
        .generate(GenerateRequest {
            width: None,
            height: None,
            references: vec![Reference::Init(SourceImage {
                image: original.clone(),
                strength: 0.8,
                mask: Some(mask.clone()),
                feather_px: 0,
            })],
            ..tiny_request(&model)
        })
        .expect("send");
    let output = finished(wait_for(&engine, job));
    assert_eq!(output.image.dimensions(), (width, height));
    let mut repainted = 0;
    for (x, y, pixel) in output.image.enumerate_pixels() {
        match mask.get_pixel(x, y)[0] {
            0 => assert_eq!(
                pixel,
                original.get_pixel(x, y),
                "unmasked pixel ({x},{y}) changed"
            ),
            255 => repainted += usize::from(pixel != original.get_pixel(x, y)),
            _ => {}
        }
    }
    assert!(
        repainted > 100,
        "the masked region must be repainted ({repainted} pixels changed)"
    );

    // The 9-channel inpainting model, non-square too.
    let job = engine
        .generate(GenerateRequest {
            references: vec![Reference::Init(SourceImage {
                image: original,
                strength: 1.0,
                mask: Some(mask),
                feather_px: 0,
            })],
            sampler: SamplerKind::Ddim,
            width: None,
            height: None,
            ..tiny_request(&common::model("sd15-tiny-inpaint"))
        })
        .expect("send");
    assert_eq!(
        finished(wait_for(&engine, job)).image.dimensions(),
        (width, height)
    );
}

#[test]
fn sdxl_and_v_prediction_models_generate_with_every_sampler() {
    if common::parity_missing() {
        return;
    }
    let engine = engine();
    for model in ["sdxl-tiny", "sd2-tiny-v"] {
        for sampler in SamplerKind::ALL {
            let job = engine
                .generate(GenerateRequest {
                    sampler,
                    guidance: if model == "sdxl-tiny" { 0.0 } else { 5.0 },
                    ..tiny_request(&common::model(model))
                })
                .expect("send");
            let image = finished(wait_for(&engine, job)).image;
            assert_eq!(image.dimensions(), (64, 64), "{model} {sampler}");
        }
    }
}

#[test]
fn a_long_prompt_is_cut_at_77_tokens_and_says_where() {
    if common::parity_missing() {
        return;
    }
    let engine = engine();
    // 90 one-token words, then one that falls beyond the 75 the encoder takes.
    let prompt = format!("{}zebra", "red ".repeat(90));
    let job = engine
        .generate(GenerateRequest {
            prompt,
            ..tiny_request(&common::model("sd15-tiny"))
        })
        .expect("send");
    let output = finished(wait_for(&engine, job));
    let cut = output
        .prompt_cut_off
        .expect("the cut-off words are reported");
    assert!(cut.ends_with("zebra"), "{cut}");
    assert_eq!(cut.matches("red").count(), 15, "75 of 90 words fit: {cut}");
}

#[test]
fn half_precision_on_the_cpu_holds_the_weights_without_a_fallback() {
    for asked in [candle_core::DType::F16, candle_core::DType::BF16] {
        let engine = Engine::spawn(
            EngineConfig {
                device: DeviceChoice::Cpu,
                dtype: Some(asked),
                ..Default::default()
            },
            Arc::new(|| {}),
        )
        .expect("engine");
        assert_eq!(engine.dtype(), asked);
        assert!(engine.half_precision());
        assert!(
            engine.dtype_warning().is_none(),
            "{:?}",
            engine.dtype_warning()
        );
    }
}

#[test]
fn the_estimates_precision_is_what_the_engine_loads_in_each_mode() {
    use candle_core::DType;
    // Unasked, low-memory mode holds f16 on the CPU and full mode f32; an asked dtype holds
    // in both.
    for (asked, staged, loads) in [
        (None, false, DType::F32),
        (None, true, DType::F16),
        (Some(DType::BF16), false, DType::BF16),
        (Some(DType::F32), true, DType::F32),
    ] {
        let engine = Engine::spawn(
            EngineConfig {
                device: DeviceChoice::Cpu,
                dtype: asked,
                staged,
                ..Default::default()
            },
            Arc::new(|| {}),
        )
        .expect("engine");
        assert_eq!(engine.dtype(), loads, "{asked:?}, staged {staged}");
        assert_eq!(engine.precision().in_mode(staged), loads);
        assert_eq!(engine.half_precision(), loads != DType::F32);
    }
}

#[test]
fn warm_up_runs_once_after_loading_and_changes_no_result() {
    if common::parity_missing() {
        return;
    }
    let model = common::model("sd15-tiny");
    let warm = engine_with(EngineConfig {
        device: DeviceChoice::Cpu,
        warm_up: true,
        ..Default::default()
    });
    let stages = |output: &JobOutput| -> Vec<String> {
        output
            .timings
            .stages
            .iter()
            .map(|(s, _)| s.clone())
            .collect()
    };
    let first = finished(wait_for(
        &warm,
        warm.generate(tiny_request(&model)).expect("send"),
    ));
    assert!(
        stages(&first).contains(&"warm-up".to_string()),
        "{:?}",
        stages(&first)
    );
    let second = finished(wait_for(
        &warm,
        warm.generate(tiny_request(&model)).expect("send"),
    ));
    assert!(
        !stages(&second).contains(&"warm-up".to_string()),
        "loaded already: no warm-up"
    );

    let cold = engine();
    let plain = finished(wait_for(
        &cold,
        cold.generate(tiny_request(&model)).expect("send"),
    ));
    assert_eq!(
        plain.image, first.image,
        "the warm-up step leaves the result as it was"
    );
}

/// Events until `Unloaded`, or panics after `WAIT`.
fn wait_for_unload(engine: &Engine) -> Vec<Event> {
    let mut seen = Vec::new();
    loop {
        let event = engine
            .events()
            .recv_timeout(WAIT)
            .expect("an Unloaded event");
        let done = matches!(event, Event::Unloaded);
        seen.push(event);
        if done {
            return seen;
        }
    }
}

#[test]
fn residency_policies_give_memory_back_after_each_job_or_when_idle() {
    if common::parity_missing() {
        return;
    }
    let model = common::model("sd15-tiny");
    let after_job = engine_with(EngineConfig {
        device: DeviceChoice::Cpu,
        residency: ResidencyPolicy::UnloadAfterJob,
        ..Default::default()
    });
    let end = wait_for(
        &after_job,
        after_job.generate(tiny_request(&model)).expect("send"),
    );
    assert!(
        end.events.iter().any(|e| matches!(e, Event::Unloaded)),
        "unloaded as the job ended"
    );
    finished(end);
    let report = after_job
        .events()
        .recv_timeout(WAIT)
        .expect("a memory report");
    assert!(
        matches!(&report, Event::Memory(m) if m.total_weights_bytes() == 0),
        "{report:?}"
    );
    if cfg!(target_os = "linux") {
        assert!(
            matches!(&report, Event::Memory(m)
                if m.system_bytes.is_some_and(|(total, free)| total >= free && free > 0)),
            "the machine's memory is reported: {report:?}"
        );
    }

    let idle = engine();
    idle.send(Request::SetResidency(ResidencyPolicy::UnloadWhenIdle(
        Duration::from_millis(200),
    )))
    .expect("send");
    let end = wait_for(&idle, idle.generate(tiny_request(&model)).expect("send"));
    assert!(!end.events.iter().any(|e| matches!(e, Event::Unloaded)));
    finished(end);
    wait_for_unload(&idle);
    // Loaded again on demand.
    finished(wait_for(
        &idle,
        idle.generate(tiny_request(&model)).expect("send"),
    ));
}

#[test]
fn staged_mode_holds_one_stage_at_a_time_in_f16_and_staging_changes_no_pixel() {
    if common::parity_missing() {
        return;
    }
    let model = common::model("sdxl-tiny");
    let staged = staged_engine();
    let end = wait_for(
        &staged,
        staged.generate(tiny_request(&model)).expect("send"),
    );
    let held: Vec<Vec<&str>> = end
        .memory_reports()
        .iter()
        .map(|m| m.weights_bytes.iter().map(|w| w.component).collect())
        .collect();
    assert!(
        held.iter().any(|c| c.contains(&"text_encoder_2")),
        "{held:?}"
    );
    assert!(held.iter().any(|c| c.contains(&"unet")), "{held:?}");
    for components in &held {
        let encoders = components.iter().any(|c| c.starts_with("text_encoder"));
        assert!(
            !(encoders && components.contains(&"unet")),
            "text encoders and UNet held together: {held:?}"
        );
        // Text to image needs no VAE until the UNet is gone.
        assert!(
            !(components.contains(&"unet") && components.contains(&"vae")),
            "UNet and VAE held together in a txt2img job: {held:?}"
        );
    }
    assert!(
        held.iter().any(|c| c == &["vae"]),
        "{held:?} {:?}",
        end.outcome
    );
    let staged_output = finished(end);
    let after = staged.events().recv_timeout(WAIT).expect("a memory report");
    assert!(
        matches!(&after, Event::Memory(m) if m.weights_bytes.iter().all(|w| w.component == "vae")),
        "only the VAE stays: {after:?}"
    );

    let full = engine();
    let full_output = finished(wait_for(
        &full,
        full.generate(tiny_request(&model)).expect("send"),
    ));
    // With no precision asked, low-memory mode holds the weights in f16 on the CPU: the image
    // is the f32 one within the rounding of the weights.
    assert_eq!(staged.dtype(), candle_core::DType::F16);
    assert_eq!(full.dtype(), candle_core::DType::F32);
    let difference =
        crate::common::jobs::largest_pixel_difference(&staged_output.image, &full_output.image);
    assert!(difference <= 2, "{difference}");
    // Staging itself changes nothing: in f32 it gives the very image.
    let staged_f32 = engine_with(EngineConfig {
        device: DeviceChoice::Cpu,
        staged: true,
        dtype: Some(candle_core::DType::F32),
        ..Default::default()
    });
    let staged_f32_output = finished(wait_for(
        &staged_f32,
        staged_f32.generate(tiny_request(&model)).expect("send"),
    ));
    assert_eq!(staged_f32_output.image, full_output.image);
    // A second staged job reloads what it dropped and still works.
    finished(wait_for(
        &staged,
        staged.generate(tiny_request(&model)).expect("send"),
    ));
}

/// An engine whose fault hook fails allocations at the points `fails` picks, given how many
/// points it has seen before.
fn engine_failing(fails: impl Fn(FaultPoint, usize) -> bool + Send + Sync + 'static) -> Engine {
    let seen = AtomicUsize::new(0);
    engine_with(EngineConfig {
        device: DeviceChoice::Cpu,
        fault_hook: Some(Arc::new(move |point| {
            if fails(point, seen.fetch_add(1, Ordering::SeqCst)) {
                Fault::OutOfMemory
            } else {
                Fault::Proceed
            }
        })),
        ..Default::default()
    })
}

/// The out-of-memory events of a job, as `(strategy, retrying_with)`.
fn fallbacks(end: &JobEnd) -> Vec<(Strategy, Option<Strategy>)> {
    end.fallbacks()
}

fn undisturbed_image(model: &Path) -> image::RgbImage {
    let plain = engine();
    finished(wait_for(
        &plain,
        plain.generate(tiny_request(model)).expect("send"),
    ))
    .image
}

#[test]
fn out_of_memory_while_loading_falls_back_to_staged_and_succeeds() {
    if common::parity_missing() {
        return;
    }
    let model = common::model("sd15-tiny");
    let first_unet_load = std::sync::atomic::AtomicBool::new(false);
    let engine = engine_failing(move |point, _| {
        point == FaultPoint::BeforeLoad(Component::Unet)
            && !first_unet_load.swap(true, Ordering::SeqCst)
    });
    let end = wait_for(
        &engine,
        engine.generate(tiny_request(&model)).expect("send"),
    );
    assert_eq!(fallbacks(&end), [(Strategy::Full, Some(Strategy::Staged))]);
    // Everything was dropped before the retry, and the report says so.
    let after_failure = end
        .events
        .iter()
        .skip_while(|e| !matches!(e, Event::OutOfMemory { .. }))
        .find_map(|e| match e {
            Event::Memory(report) => Some(report.total_weights_bytes()),
            _ => None,
        });
    assert_eq!(after_failure, Some(0));
    let output = finished(end);
    assert_eq!(output.strategy, Strategy::Staged);
    assert_eq!(output.image, undisturbed_image(&model));
}

#[test]
fn out_of_memory_in_each_untiled_decode_ends_with_a_tiled_vae() {
    if common::parity_missing() {
        return;
    }
    let model = common::model("sd15-tiny");
    let decodes = AtomicUsize::new(0);
    let engine = engine_failing(move |point, _| {
        matches!(point, FaultPoint::BeforeDecode(_)) && decodes.fetch_add(1, Ordering::SeqCst) < 2
    });
    let end = wait_for(
        &engine,
        engine.generate(tiny_request(&model)).expect("send"),
    );
    assert_eq!(
        fallbacks(&end),
        [
            (Strategy::Full, Some(Strategy::Staged)),
            (Strategy::Staged, Some(Strategy::StagedTiledVae))
        ]
    );
    let output = finished(end);
    assert_eq!(output.strategy, Strategy::StagedTiledVae);
    assert_eq!(output.image, undisturbed_image(&model));
}

#[test]
fn out_of_memory_at_every_strategy_fails_clearly_and_the_engine_goes_on() {
    if common::parity_missing() {
        return;
    }
    let model = common::model("sd15-tiny");
    let engine = engine_failing(|point, _| point == (FaultPoint::BeforeStep { job: 1, step: 2 }));
    let end = wait_for(
        &engine,
        engine.generate(tiny_request(&model)).expect("send"),
    );
    assert_eq!(
        fallbacks(&end),
        [
            (Strategy::Full, Some(Strategy::Staged)),
            (Strategy::Staged, Some(Strategy::StagedTiledVae)),
            (Strategy::StagedTiledVae, None)
        ]
    );
    match failure(end) {
        EngineError::Pipeline(PipelineError::OutOfMemory(message)) => {
            assert!(message.contains("injected"), "{message}")
        }
        other => panic!("expected out of memory, got {other:?}"),
    }
    let next = engine.generate(tiny_request(&model)).expect("send");
    assert_eq!(finished(wait_for(&engine, next)).strategy, Strategy::Full);
}

/// Bytes of a model folder's weight files.
fn weights_on_disk(model: &Path) -> u64 {
    ["text_encoder", "text_encoder_2", "unet", "vae"]
        .iter()
        .filter_map(|c| std::fs::read_dir(model.join(c)).ok())
        .flat_map(|entries| entries.flatten())
        .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
        .map(|e| e.metadata().expect("metadata").len())
        .sum()
}

/// `(model, component)` of every weight in the memory report that follows job `job`'s end.
fn held_after(engine: &Engine, job: JobId) -> (Vec<(String, &'static str)>, u64) {
    finished(wait_for(engine, job));
    match engine.events().recv_timeout(WAIT).expect("a memory report") {
        Event::Memory(report) => (
            report
                .weights_bytes
                .iter()
                .map(|w| (w.model.clone(), w.component))
                .collect(),
            report.total_weights_bytes(),
        ),
        other => panic!("expected a memory report, got {other:?}"),
    }
}

#[test]
fn memory_budget_keeps_recent_models_and_evicts_least_recently_used_components() {
    if common::parity_missing() {
        return;
    }
    let first = common::model("sd15-tiny");
    let second = common::model("sd2-tiny-v");
    let budget = weights_on_disk(&first) + weights_on_disk(&second) - 1;
    let engine = engine_with(EngineConfig {
        device: DeviceChoice::Cpu,
        residency: ResidencyPolicy::MemoryBudget(budget),
        ..Default::default()
    });
    let (held, _) = held_after(
        &engine,
        engine.generate(tiny_request(&first)).expect("send"),
    );
    assert_eq!(held.len(), 3, "the first model stays whole: {held:?}");

    // Both don't fit by one byte: the first model's text encoder, used longest ago, goes.
    let (held, total) = held_after(
        &engine,
        engine.generate(tiny_request(&second)).expect("send"),
    );
    let first_name = "sd15-tiny".to_string();
    assert!(
        !held.contains(&(first_name.clone(), "text_encoder")),
        "{held:?}"
    );
    assert!(held.contains(&(first_name.clone(), "unet")), "{held:?}");
    assert!(held.contains(&(first_name, "vae")), "{held:?}");
    assert_eq!(
        held.iter().filter(|(m, _)| m == "sd2-tiny-v").count(),
        3,
        "{held:?}"
    );
    assert!(total <= budget);
}

#[test]
fn memory_budget_below_one_model_drops_its_oldest_components_after_the_job() {
    if common::parity_missing() {
        return;
    }
    let model = common::model("sd15-tiny");
    let engine = engine_with(EngineConfig {
        device: DeviceChoice::Cpu,
        residency: ResidencyPolicy::MemoryBudget(weights_on_disk(&model) - 1),
        ..Default::default()
    });
    let (held, _) = held_after(
        &engine,
        engine.generate(tiny_request(&model)).expect("send"),
    );
    let components: Vec<&str> = held.iter().map(|(_, c)| *c).collect();
    assert_eq!(components, ["unet", "vae"]);
    // The next job reloads what went and runs.
    let (held, _) = held_after(
        &engine,
        engine.generate(tiny_request(&model)).expect("send"),
    );
    assert_eq!(held.len(), 2);
}

#[test]
fn memory_reports_have_sane_values_on_the_cpu() {
    if common::parity_missing() {
        return;
    }
    let model = common::model("sd15-tiny");
    let engine = engine();
    let job = engine.generate(tiny_request(&model)).expect("send");
    let end = wait_for(&engine, job);
    let reports = end.memory_reports();
    // One at start, one with the model loaded.
    assert!(reports.len() >= 2, "{reports:?}");
    for report in &reports {
        assert_eq!(report.device, "cpu");
        assert!(report.process_rss_bytes.expect("RSS on Linux") > 1 << 20);
        let (total, available) = report.system_bytes.expect("meminfo on Linux");
        assert!(available > 0 && available <= total, "{report:?}");
        assert_eq!(report.device_bytes, None, "no GPU memory on the CPU");
    }
    let loaded = reports.last().expect("a report");
    assert!(loaded.weights_bytes.iter().all(|w| w.model == "sd15-tiny"));
    assert_eq!(loaded.total_weights_bytes(), weights_on_disk(&model));
    finished(end);
}
