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
    let transformer = Flux2Transformer::new(&config, vb).expect("transformer");
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
