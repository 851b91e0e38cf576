//! FLUX.2 [klein] building blocks against the goldens in `../shared/parity/flux2`: the
//! schedule, and the Qwen3 text encoder.

use easel_engine::schedulers::flow_match::{empirical_mu, FlowMatchSchedule};

use crate::common;

#[test]
fn flux2_schedules_match_diffusers_on_both_sides_of_the_jump() {
    if common::parity_missing() {
        return;
    }
    let path = common::parity_dir().join("flux2/components/schedules.json");
    let text = std::fs::read_to_string(&path).expect("schedules.json");
    let golden: serde_json::Value = serde_json::from_str(&text).expect("json");
    let schedules = golden["schedules"].as_array().expect("schedules");
    assert!(schedules.len() >= 60, "{}", schedules.len());
    for case in schedules {
        let tokens = case["image_seq_len"].as_u64().expect("tokens") as usize;
        let steps = case["steps"].as_u64().expect("steps") as usize;
        let mu = case["mu"].as_f64().expect("mu");
        assert!(
            (empirical_mu(tokens, steps) - mu).abs() < 1e-9,
            "{tokens} tokens, {steps} steps: {} vs {mu}",
            empirical_mu(tokens, steps)
        );
        let expected: Vec<f32> = case["sigmas"]
            .as_array()
            .expect("sigmas")
            .iter()
            .map(|s| s.as_f64().expect("sigma") as f32)
            .collect();
        let ours = FlowMatchSchedule::flux2(steps, tokens).sigmas;
        assert_eq!(ours.len(), expected.len());
        for (a, b) in ours.iter().zip(&expected) {
            assert!(
                (a - b).abs() <= 1e-6,
                "{tokens} tokens, {steps} steps: {ours:?} vs {expected:?}"
            );
        }
    }
}

#[test]
fn the_qwen3_encoder_gives_diffusers_hidden_states_and_prompt_embeddings() {
    use candle_core::{DType, Device, Tensor};
    use easel_engine::models::config::read_json;
    use easel_engine::models::qwen3::{concat_hidden_states, Qwen3Config, Qwen3Encoder};
    use easel_engine::models::weights::{component_files, weights_var_builder};
    if common::parity_missing() {
        return;
    }
    let flux2 = common::parity_dir().join("flux2");
    let dir = flux2.join("models/flux2-klein-tiny/text_encoder");
    let config: Qwen3Config = read_json(&dir.join("config.json"), "Qwen3 config").expect("config");
    let files = component_files(&dir).expect("sharded weights");
    let vb = weights_var_builder(&files, DType::F32, &Device::Cpu).expect("weights");
    let encoder = Qwen3Encoder::new(&config, 27, vb).expect("27 layers");
    let golden =
        candle_core::safetensors::load(flux2.join("components/klein.safetensors"), &Device::Cpu)
            .expect("components");
    let ids = golden["te.input_ids"].to_dtype(DType::U32).expect("ids");
    let mask: Vec<u32> = golden["te.attention_mask"]
        .flatten_all()
        .and_then(|m| m.to_vec1::<f32>())
        .expect("mask")
        .into_iter()
        .map(|v| v as u32)
        .collect();
    assert_eq!(mask.iter().filter(|&&m| m == 0).count(), 5, "five pads");
    let states = encoder
        .hidden_states(&ids, &mask, &[9, 18, 27])
        .expect("forward");
    let max_diff = |a: &Tensor, b: &Tensor| -> f32 {
        (a - b)
            .and_then(|d| d.abs())
            .and_then(|d| d.flatten_all())
            .and_then(|d| d.max(0))
            .and_then(|d| d.to_scalar::<f32>())
            .expect("diff")
    };
    for (state, layer) in states.iter().zip([9, 18, 27]) {
        let diff = max_diff(state, &golden[&format!("out.te.hidden_states.{layer}")]);
        assert!(diff < 1e-4, "layer {layer}: {diff}");
    }
    let embeds = concat_hidden_states(&states).expect("concat");
    let diff = max_diff(&embeds, &golden["out.te.prompt_embeds"]);
    assert!(diff < 1e-4, "prompt embeddings: {diff}");
}

#[test]
fn a_prompt_becomes_the_pipelines_512_tokens_and_embeddings() {
    use candle_core::{DType, Device, Tensor};
    use easel_engine::models::config::read_json;
    use easel_engine::models::qwen3::{concat_hidden_states, Qwen3Config, Qwen3Encoder};
    use easel_engine::models::qwen_prompt::{chat_template, QwenPromptTokenizer};
    use easel_engine::models::weights::{component_files, weights_var_builder};
    if common::parity_missing() {
        return;
    }
    let flux2 = common::parity_dir().join("flux2");
    let model = flux2.join("models/flux2-klein-tiny");
    let case_text =
        std::fs::read_to_string(flux2.join("cases/flux2_klein_txt2img.json")).expect("case");
    let case: serde_json::Value = serde_json::from_str(&case_text).expect("json");
    let prompt = case["prompt"].as_str().expect("prompt");
    assert_eq!(
        chat_template(prompt),
        case["prompt_text"].as_str().expect("text")
    );
    let tokenizer = QwenPromptTokenizer::load(&model.join("tokenizer"), 512).expect("tokenizer");
    let tokens = tokenizer.tokenize(prompt).expect("tokens");
    let golden = candle_core::safetensors::load(
        flux2.join("cases/flux2_klein_txt2img.safetensors"),
        &Device::Cpu,
    )
    .expect("case tensors");
    let as_u32 = |key: &str| -> Vec<u32> {
        golden[key]
            .to_vec1::<f32>()
            .expect(key)
            .into_iter()
            .map(|v| v as u32)
            .collect()
    };
    assert_eq!(tokens.ids, as_u32("debug.input_ids"));
    assert_eq!(tokens.mask, as_u32("debug.attention_mask"));
    assert_eq!(
        tokens.mask.iter().filter(|&&m| m == 1).count() as u64,
        case["num_prompt_tokens"].as_u64().expect("count")
    );
    assert_eq!(tokens.cut_off, None);

    let dir = model.join("text_encoder");
    let config: Qwen3Config = read_json(&dir.join("config.json"), "Qwen3 config").expect("config");
    let vb = weights_var_builder(
        &component_files(&dir).expect("files"),
        DType::F32,
        &Device::Cpu,
    )
    .expect("weights");
    let encoder = Qwen3Encoder::new(&config, 27, vb).expect("encoder");
    let ids = Tensor::from_vec(tokens.ids.clone(), (1, 512), &Device::Cpu).expect("ids");
    let states = encoder
        .hidden_states(&ids, &tokens.mask, &[9, 18, 27])
        .expect("forward");
    let embeds = concat_hidden_states(&states)
        .and_then(|e| e.squeeze(0))
        .expect("embeds");
    let diff = (embeds - &golden["debug.prompt_embeds"])
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("diff");
    assert!(diff < 1e-4, "prompt embeddings over 512 positions: {diff}");

    // A prompt past 512 tokens is cut there, the template's tail with it, and says so.
    let long = tokenizer.tokenize(&"fox ".repeat(600)).expect("long");
    assert_eq!(long.ids.len(), 512);
    assert!(long.mask.iter().all(|&m| m == 1));
    assert!(long
        .cut_off
        .is_some_and(|c| c.contains("fox") && c.contains("think")));
}

#[test]
fn the_flux2_autoencoder_and_its_normalised_latents_match_diffusers() {
    use candle_core::{DType, Device, Tensor};
    use easel_engine::models::config::{read_json, VaeConfig};
    use easel_engine::models::flux2_latents::{
        pack, patchify, unpack, unpatchify, Flux2LatentNorm,
    };
    use easel_engine::models::vae::Vae;
    use easel_engine::models::weights::{component_files, weights_var_builder};
    if common::parity_missing() {
        return;
    }
    let flux2 = common::parity_dir().join("flux2");
    let dir = flux2.join("models/flux2-klein-tiny/vae");
    let mut config: VaeConfig = read_json(&dir.join("config.json"), "VAE config").expect("config");
    // FLUX.2's latents are normalised by the BatchNorm statistics instead of a scale/shift.
    config.scaling_factor = 1.0;
    config.shift_factor = None;
    let vb = weights_var_builder(
        &component_files(&dir).expect("files"),
        DType::F32,
        &Device::Cpu,
    )
    .expect("weights");
    let vae = Vae::new(vb.clone(), &config).expect("the FLUX.2 autoencoder");
    let norm = Flux2LatentNorm::new(&vb, 128, 1e-4).expect("BatchNorm statistics");
    let golden =
        candle_core::safetensors::load(flux2.join("components/klein.safetensors"), &Device::Cpu)
            .expect("components");
    let max_diff = |a: &Tensor, b: &Tensor| -> f32 {
        (a - b)
            .and_then(|d| d.abs())
            .and_then(|d| d.flatten_all())
            .and_then(|d| d.max(0))
            .and_then(|d| d.to_scalar::<f32>())
            .expect("diff")
    };
    // Encode: the posterior mean, patchified and normalised (the references' latents).
    let posterior = vae.encode(&golden["vae.x"]).expect("encode");
    let mean_golden = golden["out.encoder_moments"]
        .narrow(1, 0, 32)
        .expect("mean");
    assert!(max_diff(&posterior.mean, &mean_golden) < 2e-4);
    let normalized = norm
        .normalize(&patchify(&posterior.mean).expect("patchify"))
        .expect("norm");
    let diff = max_diff(&normalized, &golden["out.encode_normalized"]);
    assert!(diff < 2e-4, "normalised reference latents: {diff}");
    // Decode: post_quant_conv and decoder.
    let decoded = vae.decode(&golden["vae.z"]).expect("decode");
    assert!(max_diff(&decoded, &golden["out.decode"]) < 2e-4);
    // The pipeline's decode of packed, normalised latents.
    let packed = &golden["pd.packed_latents"];
    let latents = unpatchify(
        &norm
            .denormalize(&unpack(packed, 3, 4).expect("unpack"))
            .expect("denorm"),
    )
    .expect("unpatchify");
    assert!(max_diff(&latents, &golden["debug.pd.vae_input"]) < 1e-5);
    let image = vae.decode(&latents).expect("decode");
    assert!(max_diff(&image, &golden["out.pipeline_decode"]) < 2e-4);
    assert_eq!(
        pack(&unpack(packed, 3, 4).expect("unpack"))
            .expect("pack")
            .dims(),
        packed.dims()
    );
}

#[test]
fn the_flux2_transformer_gives_diffusers_velocities() {
    use candle_core::{DType, Device};
    use easel_engine::models::config::read_json;
    use easel_engine::models::flux2_transformer::{Flux2Transformer, Flux2TransformerConfig};
    use easel_engine::models::flux2_weights::Flux2Weights;
    use easel_engine::models::weights::{component_files, weights_var_builder};
    if common::parity_missing() {
        return;
    }
    let flux2 = common::parity_dir().join("flux2");
    let dir = flux2.join("models/flux2-klein-tiny/transformer");
    let config: Flux2TransformerConfig =
        read_json(&dir.join("config.json"), "FLUX.2 transformer config").expect("config");
    let vb = weights_var_builder(
        &component_files(&dir).expect("files"),
        DType::F32,
        &Device::Cpu,
    )
    .expect("weights");
    let transformer = Flux2Transformer::new(&config, &Flux2Weights::Full(vb)).expect("transformer");
    let golden =
        candle_core::safetensors::load(flux2.join("components/klein.safetensors"), &Device::Cpu)
            .expect("components");
    let sigma = golden["tr.timestep"]
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("timestep")[0];
    let squeeze = |key: &str| golden[key].squeeze(0).expect(key);
    let out = transformer
        .forward(
            &golden["tr.hidden_states"],
            &squeeze("tr.img_ids"),
            &golden["tr.encoder_hidden_states"],
            &squeeze("tr.txt_ids"),
            sigma,
        )
        .expect("forward");
    let diff = (out - &golden["out.transformer"])
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("diff");
    assert!(diff < 1e-4, "velocity: {diff}");
}

#[test]
fn every_flux2_klein_case_matches_diffusers() {
    use easel_engine::replay::{ParityCase, IMAGE_TOLERANCE, LATENT_TOLERANCE};
    if common::parity_missing() {
        return;
    }
    let flux2 = common::parity_dir().join("flux2");
    let mut checked = Vec::new();
    for name in [
        "flux2_klein_txt2img",
        "flux2_klein_edit_1ref",
        "flux2_klein_edit_2ref",
    ] {
        let case = ParityCase::load(&flux2.join(format!("cases/{name}.json"))).expect("case");
        let report = case
            .run(&flux2.join("models"), &candle_core::Device::Cpu)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            report.image_max_diff <= IMAGE_TOLERANCE,
            "{name}: image {}",
            report.image_max_diff
        );
        assert_eq!(report.step_max_diffs.len(), 4, "{name}");
        for (step, diff) in report.step_max_diffs.iter().enumerate() {
            assert!(*diff <= LATENT_TOLERANCE, "{name}: step {step}: {diff}");
        }
        checked.push((name, report.image_max_diff));
    }
    assert_eq!(checked.len(), 3);
}

/// The tiny FLUX.2 [klein] model folder.
fn klein() -> std::path::PathBuf {
    common::parity_dir().join("flux2/models/flux2-klein-tiny")
}

fn klein_request(prompt: &str) -> easel_engine::pipeline::request::GenerateRequest {
    easel_engine::pipeline::request::GenerateRequest {
        steps: 2,
        guidance: 1.0,
        width: Some(96),
        height: Some(64),
        seed: 5,
        ..easel_engine::pipeline::request::GenerateRequest::new(klein(), prompt)
    }
}

fn edit_reference(
    width: u32,
    height: u32,
    name: &str,
) -> easel_engine::pipeline::request::Reference {
    easel_engine::pipeline::request::Reference::Edit {
        image: common::test_image(width, height),
        name: name.into(),
    }
}

#[test]
fn klein_generates_deterministically_and_staged_gives_the_same_bytes() {
    use crate::common::jobs;
    if common::parity_missing() {
        return;
    }
    let engine = jobs::engine();
    let run = |engine: &easel_engine::engine::Engine| {
        let job = engine
            .generate(klein_request("a red fox"))
            .expect("engine running");
        jobs::finished(jobs::wait_for(engine, job))
    };
    let first = run(&engine);
    let again = run(&engine);
    assert_eq!(first.image.dimensions(), (96, 64));
    assert_eq!(first.image, again.image, "same seed, same bytes");
    assert_eq!(first.parameters.negative_prompt, None);
    let staged = run(&jobs::staged_f32_engine());
    assert_eq!(first.image, staged.image, "staged runs give the same bytes");
    // With no precision asked, low-memory mode holds the transformer in f16 on the CPU (half
    // its bytes): the image is the f32 one within the rounding of the weights.
    let half = jobs::staged_engine();
    let end = jobs::wait_for(
        &half,
        half.generate(klein_request("a red fox"))
            .expect("engine running"),
    );
    let half_bytes = jobs::transformer_bytes(&end.events)[0];
    let half_image = jobs::finished(end).image;
    let difference = jobs::largest_pixel_difference(&first.image, &half_image);
    assert!(difference <= 2, "{difference}");
    let f32_engine = jobs::staged_f32_engine();
    let end = jobs::wait_for(
        &f32_engine,
        f32_engine
            .generate(klein_request("a red fox"))
            .expect("engine running"),
    );
    let whole_bytes = jobs::transformer_bytes(&end.events)[0];
    assert!(
        half_bytes < whole_bytes * 51 / 100 + 64 * 1024 && half_bytes > whole_bytes * 49 / 100,
        "{half_bytes} of {whole_bytes}"
    );
    let other = engine
        .generate(klein_request("a blue whale"))
        .expect("engine running");
    let other = jobs::finished(jobs::wait_for(&engine, other));
    assert_ne!(first.image, other.image, "the prompt matters");
}

#[test]
fn klein_edits_with_references_named_in_order_and_sized_from_the_first() {
    use crate::common::jobs;
    if common::parity_missing() {
        return;
    }
    let engine = jobs::engine();
    let mut request = klein_request("the cat from the first picture in the garden of the second");
    (request.width, request.height) = (None, None);
    request.references = vec![
        edit_reference(100, 70, "cat.png"),
        edit_reference(64, 64, "garden.png"),
    ];
    let job = engine.generate(request.clone()).expect("engine running");
    let output = jobs::finished(jobs::wait_for(&engine, job));
    // The first reference centre-cropped to multiples of 16.
    assert_eq!(output.image.dimensions(), (96, 64));
    assert_eq!(output.parameters.references, ["cat.png", "garden.png"]);
    let text = easel_engine::output::a1111_parameters(&output.parameters);
    assert!(
        text.contains("References: \"cat.png; garden.png\""),
        "{text}"
    );
    // Low-memory runs load the autoencoder beside the transformer to encode the references.
    let staged = jobs::staged_f32_engine();
    let job = staged.generate(request.clone()).expect("engine running");
    let staged_output = jobs::finished(jobs::wait_for(&staged, job));
    assert_eq!(
        output.image, staged_output.image,
        "staged edits give the same bytes"
    );
    // The references matter, and so does their order.
    request.references.reverse();
    let job = engine.generate(request).expect("engine running");
    let swapped = jobs::finished(jobs::wait_for(&engine, job));
    assert_ne!(output.image, swapped.image);
}

#[test]
fn a_klein_edit_cancelled_mid_run_stops_and_the_next_job_runs() {
    use crate::common::jobs;
    if common::parity_missing() {
        return;
    }
    let engine = jobs::engine_with_slow_steps();
    let mut request = klein_request("the fox in the garden");
    request.steps = 200;
    request.references = vec![edit_reference(64, 64, "garden.png")];
    let job = engine.generate(request.clone()).expect("engine running");
    let end = jobs::cancel_after_second_step(&engine, job);
    assert!(matches!(end.outcome, jobs::Outcome::Cancelled), "cancelled");
    let steps = end.steps().len();
    assert!(
        steps < 200,
        "cancel stops the loop early ({steps} steps ran)"
    );
    request.steps = 2;
    let next = engine.generate(request).expect("engine running");
    assert_eq!(
        jobs::finished(jobs::wait_for(&engine, next))
            .image
            .dimensions(),
        (96, 64)
    );
}

#[test]
fn klein_refuses_too_many_or_too_small_references_naming_them() {
    use easel_engine::families::{open, plan};
    if common::parity_missing() {
        return;
    }
    let model = open(&klein(), &candle_core::Device::Cpu, candle_core::DType::F32).expect("open");
    let mut five = klein_request("five pictures");
    five.references = (0..5)
        .map(|i| edit_reference(64, 64, &format!("{i}.png")))
        .collect();
    let error = plan(model.as_ref(), &five)
        .expect_err("refused")
        .to_string();
    assert!(
        error.contains("at most 4 edit references") || error.contains("1 to 4"),
        "{error}"
    );
    let mut small = klein_request("a stamp");
    small.references = vec![edit_reference(40, 64, "stamp.png")];
    let error = plan(model.as_ref(), &small)
        .expect_err("refused")
        .to_string();
    assert!(
        error.contains("stamp.png") && error.contains("64 px"),
        "{error}"
    );
}

#[test]
fn klein_inpaints_only_the_mask_and_keeps_every_other_pixel() {
    use crate::common::jobs;
    use easel_engine::pipeline::request::SourceImage;
    if common::parity_missing() {
        return;
    }
    let engine = jobs::engine();
    let original = common::test_image(96, 64);
    let mask = common::test_mask(96, 64);
    let mut request = klein_request("a small boat").with_init(SourceImage {
        image: original.clone(),
        strength: 1.0,
        mask: Some(mask.clone()),
        feather_px: 0,
    });
    request.references.push(edit_reference(64, 64, "boat.png"));
    let run = |request: &easel_engine::pipeline::request::GenerateRequest| {
        let job = engine.generate(request.clone()).expect("engine running");
        jobs::finished(jobs::wait_for(&engine, job))
    };
    let first = run(&request);
    let again = run(&request);
    assert_eq!(first.image, again.image, "deterministic");
    let mut kept = 0;
    let mut changed = 0;
    for (x, y, pixel) in first.image.enumerate_pixels() {
        match mask.get_pixel(x, y).0[0] {
            0 => {
                assert_eq!(pixel, original.get_pixel(x, y), "unmasked ({x}, {y})");
                kept += 1;
            }
            255 if pixel != original.get_pixel(x, y) => changed += 1,
            _ => {}
        }
    }
    assert!(kept > 1000, "{kept}");
    assert!(changed > 100, "the masked region is repainted: {changed}");
}

#[test]
fn the_command_line_edits_with_references_and_says_so_in_the_png() {
    if common::parity_missing() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let reference = dir.path().join("cat photo.png");
    common::test_image(100, 70)
        .save(&reference)
        .expect("reference");
    let out = dir.path().join("edit.png");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_easel"))
        .env("EASEL_CONFIG", "/nonexistent/easel.toml")
        .env("EASEL_DATA_DIR", dir.path().join("data"))
        .args(["generate", "--model"])
        .arg(klein())
        .args([
            "--prompt",
            "the cat, sleeping",
            "--steps",
            "2",
            "--device",
            "cpu",
        ])
        .arg("--reference")
        .arg(&reference)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run easel");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let written = image::open(&out).expect("the result");
    assert_eq!((written.width(), written.height()), (96, 64));
    let text = easel_engine::output::read_png_parameters(&out).expect("parameters");
    assert!(text.contains("References: \"cat photo.png\""), "{text}");
    assert!(text.contains("Steps: 2"), "{text}");
}

#[test]
fn klein_downloads_by_repository_name_and_generates() {
    use crate::common::fake_hub::FakeHub;
    use crate::common::jobs;
    use easel_engine::hub::{self, CacheRoots, Downloaded, HubClient, ModelRef};
    if common::parity_missing() {
        return;
    }
    let repo = "black-forest-labs/FLUX.2-klein-4B";
    let hub = FakeHub::start();
    hub.serve_folder(repo, &klein(), &[], false);
    let models = tempfile::tempdir().expect("temp dir");
    let client = HubClient::new(Some(hub.url()), None).expect("client");
    let downloaded = hub::download(
        ModelRef::Repo(repo),
        &client,
        &CacheRoots::only(models.path()),
        false,
        &std::sync::atomic::AtomicBool::new(false),
        &mut |_| {},
    )
    .expect("downloads");
    let Downloaded::Fetched(located) = downloaded else {
        panic!("expected a fetch, got {downloaded:?}");
    };
    // The diffusers folders, not Black Forest Labs' single file beside them.
    assert!(!located
        .folder
        .join("flux-2-klein-tiny.safetensors")
        .exists());
    let info = easel_engine::families::ModelInfo::read(&located.folder).expect("facts");
    assert_eq!(info.family, "FLUX.2 [klein]");
    assert_eq!(info.capabilities.edit_references, 4);
    let engine = jobs::engine();
    let mut request = klein_request("a fox");
    request.model = located.folder.clone();
    let job = engine.generate(request).expect("engine running");
    let output = jobs::finished(jobs::wait_for(&engine, job));
    assert_eq!(output.image.dimensions(), (96, 64));
}

#[test]
fn the_black_forest_labs_single_file_gives_the_same_transformer() {
    use crate::common::jobs;
    if common::parity_missing() {
        return;
    }
    // The folder without the diffusers transformer weights: the root's BFL file stands in.
    let (_keep, copy) = common::copy_model_from(&klein());
    for entry in std::fs::read_dir(copy.join("transformer"))
        .expect("transformer folder")
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != "config.json" {
            std::fs::remove_file(entry.path()).expect("remove a shard");
        }
    }
    let engine = jobs::engine();
    let run = |model: &std::path::Path| {
        let mut request = klein_request("a fox");
        request.model = model.to_path_buf();
        request.references = vec![edit_reference(64, 64, "ref.png")];
        let job = engine.generate(request).expect("engine running");
        jobs::finished(jobs::wait_for(&engine, job))
    };
    let from_folder = run(&klein());
    let from_single_file = run(&copy);
    assert_eq!(from_folder.image, from_single_file.image);
}

#[test]
fn klein_states_its_facts_and_counts_reference_tokens_in_its_memory() {
    use easel_engine::families::{GuidanceKind, ModelInfo};
    if common::parity_missing() {
        return;
    }
    let mut info = ModelInfo::read(&klein()).expect("facts");
    assert_eq!(info.size_multiple_px, 16);
    assert_eq!(info.guidance, GuidanceKind::None);
    assert!(!info.negative_prompt && !info.sampler_choice && info.wants_its_defaults);
    assert_eq!(info.defaults.steps, 4);
    // At klein 4B's widths (24 heads of 128): on CUDA, where its scores are materialised and
    // outweigh the VAE's decode, every reference's tokens add to the activations.
    info.footprint = easel_engine::families::DenoiserFootprint::FLUX2_KLEIN_4B;
    let references = [(1024, 1024), (768, 512)];
    let cuda = easel_engine::device::Precision {
        backend: easel_engine::device::Backend::Cuda,
        full: candle_core::DType::BF16,
        staged: candle_core::DType::BF16,
    };
    let plain = info.memory_estimate((1024, 1024), cuda);
    let with_two = info.memory_estimate_with_references((1024, 1024), &references, cuda);
    assert!(with_two.activations_bytes > plain.activations_bytes);
    assert_eq!(
        info.memory_estimate_with_references((1024, 1024), &[], cuda),
        plain
    );
}

#[test]
fn the_klein_catalog_entry_takes_the_repositorys_own_shards_and_generates() {
    use crate::common::fake_hub::FakeHub;
    use crate::common::jobs;
    use easel_engine::hub::{self, catalog, CacheRoots, ModelRef};
    if common::parity_missing() {
        return;
    }
    let entry = catalog::find("flux2-klein-4b").expect("in the catalog");
    assert!(!entry.gated && entry.licence.starts_with("Apache-2.0"));
    assert!(catalog::find("flux2-klein-9b").is_some_and(|e| e.gated));
    let hub = FakeHub::start();
    hub.serve_folder(entry.repo, &klein(), &[], false);
    let models = tempfile::tempdir().expect("temp dir");
    let roots = CacheRoots::only(models.path());
    assert!(hub::locate(ModelRef::Catalog(entry), &roots).is_none());
    let located = hub.fetch_catalog_entry(entry, models.path());
    // Both shards of each sharded folder and their indexes, not the single file at the root.
    for folder in ["text_encoder", "transformer"] {
        let files = std::fs::read_dir(located.folder.join(folder))
            .expect(folder)
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
            })
            .count();
        assert_eq!(files, 2, "{folder}");
    }
    let requests = hub.requests();
    assert!(
        !requests
            .iter()
            .any(|r| r.contains("flux-2-klein-tiny.safetensors")),
        "{requests:?}"
    );
    let info = easel_engine::families::ModelInfo::read(&located.folder).expect("facts");
    assert_eq!(info.name, entry.name);
    let engine = jobs::engine();
    let mut request = klein_request("a fox");
    request.model = located.folder.clone();
    let job = engine.generate(request).expect("engine running");
    assert_eq!(
        jobs::finished(jobs::wait_for(&engine, job))
            .image
            .dimensions(),
        (96, 64)
    );
    // Found again without the network.
    assert_eq!(
        hub::locate(ModelRef::Catalog(entry), &roots).map(|l| l.folder),
        Some(located.folder)
    );
}

#[test]
fn text_layers_the_encoder_lacks_or_the_transformer_cannot_take_are_refused() {
    if common::parity_missing() {
        return;
    }
    let (_keep, copy) = common::copy_model_from(&klein());
    let index_path = copy.join("model_index.json");
    let index = std::fs::read_to_string(&index_path).expect("index");
    for (layers, expected) in [
        ("[9, 18, 40]", "must name layers 1 to 36"),
        (
            "[9, 18]",
            "2 text layers of 32 values make 64, but the transformer takes 96",
        ),
    ] {
        let changed = index.replacen(
            "\"is_distilled\": true",
            &format!("\"is_distilled\": true, \"text_encoder_out_layers\": {layers}"),
            1,
        );
        std::fs::write(&index_path, changed).expect("write index");
        let error = easel_engine::families::ModelInfo::read(&copy)
            .expect_err("refused")
            .to_string();
        assert!(
            error.contains(expected) && error.contains("model_index.json"),
            "{error}"
        );
    }
}
