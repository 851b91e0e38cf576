//! Model facts read once, from configs only (`ModelInfo::read`), for every family: what the
//! window, the CLI, the catalog and the engine decide a model's defaults, sizes, abilities and
//! memory from.

use crate::common;

use easel_engine::families::{GuidanceKind, ModelInfo};
use easel_engine::schedulers::SamplerKind;

#[test]
fn each_family_states_its_sizes_defaults_and_controls() {
    if common::parity_missing() {
        return;
    }
    let sd = ModelInfo::read(&common::model("sd15-tiny")).expect("sd15");
    assert_eq!(sd.size_multiple_px, 8);
    assert!(sd.negative_prompt && sd.sampler_choice && !sd.wants_its_defaults);
    assert_eq!(sd.guidance, GuidanceKind::ClassifierFree);
    assert!(sd.capabilities.txt2img && sd.capabilities.inpaint);
    assert!(!sd.capabilities.inpainting_model);
    assert_eq!(sd.native_size_px, (64, 64));

    let inpaint = ModelInfo::read(&common::model("sd15-tiny-inpaint")).expect("inpaint");
    assert!(inpaint.capabilities.inpainting_model && !inpaint.capabilities.txt2img);

    let xl = ModelInfo::read(&common::model("sdxl-tiny")).expect("sdxl");
    assert_eq!(xl.family, "Stable Diffusion XL");
    // No attention at its first level: tokens are counted one level down.
    assert_eq!(xl.footprint.latent_px_per_token, 4);

    let dev = ModelInfo::read(&common::model("flux-tiny-dev")).expect("flux dev");
    assert_eq!(dev.size_multiple_px, 16);
    assert!(!dev.negative_prompt && !dev.sampler_choice && dev.wants_its_defaults);
    assert_eq!(dev.guidance, GuidanceKind::Distilled);
    assert_eq!((dev.defaults.steps, dev.defaults.guidance), (28, 3.5));
    assert_eq!(dev.defaults.sampler, SamplerKind::Euler);
    let schnell = ModelInfo::read(&common::model("flux-tiny-schnell")).expect("schnell");
    assert_eq!(schnell.guidance, GuidanceKind::None);
    assert_eq!(schnell.defaults.steps, 4);
    assert_eq!(dev.round_side(1000), 992);
    assert_eq!(sd.round_side(1000), 1000);
}

#[test]
fn memory_follows_the_heads_the_config_states_not_the_sd15_guess() {
    if common::parity_missing() {
        return;
    }
    // The same UNet with SD 2.x's layout of heads (fewer at the first level than SD 1.5's
    // 8) needs less for its attention at the same size where the scores are materialised
    // (on CUDA; the CPU's and Metal's attention hold none).
    let (_keep, sd2) = common::copy_model("sd15-tiny");
    let config_path = sd2.join("unet/config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["attention_head_dim"] = serde_json::json!([2, 4]);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let sd15 = ModelInfo::read(&common::model("sd15-tiny")).expect("sd15");
    let sd2 = ModelInfo::read(&sd2).expect("sd2 layout");
    assert_eq!((sd15.footprint.heads, sd2.footprint.heads), (8, 2));
    let cuda = easel_engine::device::Precision {
        backend: easel_engine::device::Backend::Cuda,
        full: candle_core::DType::F16,
        staged: candle_core::DType::F16,
    };
    let at_512 = |info: &ModelInfo| info.memory_estimate((512, 512), cuda).activations_bytes;
    assert!(
        at_512(&sd2) < at_512(&sd15),
        "{} vs {}",
        at_512(&sd2),
        at_512(&sd15)
    );
}

#[test]
fn memory_counts_the_values_a_folder_holds_not_the_bytes_of_its_files() {
    use easel_engine::device::Precision;
    if common::parity_missing() {
        return;
    }
    // The same UNet saved in f16: half the bytes on disk, the same values, and the same
    // estimate where the engine holds them in f32 (the CPU with everything loaded).
    let (_keep, half) = common::copy_model("sd15-tiny");
    let unet_file = half.join("unet/diffusion_pytorch_model.safetensors");
    let tensors = candle_core::safetensors::load(&unet_file, &candle_core::Device::Cpu)
        .expect("the UNet's tensors");
    let halved: std::collections::HashMap<String, candle_core::Tensor> = tensors
        .into_iter()
        .map(|(name, t)| (name, t.to_dtype(candle_core::DType::F16).expect("f16")))
        .collect();
    candle_core::safetensors::save(&halved, &unet_file).expect("saved in f16");
    let full = ModelInfo::read(&common::model("sd15-tiny")).expect("f32 folder");
    let half = ModelInfo::read(&half).expect("f16 folder");
    assert!(full.weights.denoiser.float_values > 0);
    assert_eq!(
        full.weights.denoiser.float_values,
        half.weights.denoiser.float_values
    );
    let cpu = Precision::CPU_DEFAULT;
    let (from_f32, from_f16) = (
        full.memory_estimate((512, 512), cpu),
        half.memory_estimate((512, 512), cpu),
    );
    let unet_header_bytes = |info: &ModelInfo| info.weights.denoiser.stored_bytes;
    assert_eq!(
        from_f32.weights_bytes - unet_header_bytes(&full),
        from_f16.weights_bytes - unet_header_bytes(&half)
    );
}

#[test]
fn a_catalog_models_folder_runs_with_the_catalogs_name_and_defaults() {
    if common::parity_missing() {
        return;
    }
    let models = tempfile::tempdir().expect("temp dir");
    let folder = models.path().join("catalog/sd-turbo");
    std::fs::create_dir_all(folder.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(common::model("sd15-tiny"), &folder).unwrap();
    let info = ModelInfo::read(&folder).expect("catalog folder");
    let entry = easel_engine::hub::catalog::find("sd-turbo").expect("in the catalog");
    assert_eq!(info.name, entry.name);
    assert_eq!(info.defaults.steps, entry.defaults.steps);
    assert!(info.wants_its_defaults);
}

#[test]
fn a_folder_that_is_missing_or_of_no_family_is_named() {
    let missing = ModelInfo::read(std::path::Path::new("/no/such/model")).unwrap_err();
    assert!(missing.to_string().contains("/no/such/model"), "{missing}");
    let empty = tempfile::tempdir().expect("temp dir");
    let error = ModelInfo::read(empty.path()).unwrap_err().to_string();
    assert!(error.contains("model_index.json"), "{error}");
}

#[test]
fn a_request_is_checked_once_into_a_plan_against_what_the_model_takes() {
    use easel_engine::families::{open, plan};
    use easel_engine::pipeline::request::{GenerateRequest, Mode, Reference, SourceImage};
    if common::parity_missing() {
        return;
    }
    let folder = common::model("sd15-tiny");
    let model = open(&folder, &candle_core::Device::Cpu, candle_core::DType::F32).expect("open");
    let init = SourceImage {
        image: common::test_image(96, 64),
        strength: 0.5,
        mask: None,
        feather_px: 0,
    };
    let request = GenerateRequest::new(&folder, "a fox").with_init(init.clone());
    let planned = plan(model.as_ref(), &request).expect("a plan");
    assert_eq!(planned.size_px, (96, 64));
    assert_eq!(planned.mode, Mode::ImageToImage);
    assert!(planned.guided);
    assert_eq!(planned.text_encoders().len(), 1);
    assert_eq!(
        planned.denoising_stage().len(),
        2,
        "the VAE encodes the init image"
    );

    let refused = |request: &GenerateRequest| {
        plan(model.as_ref(), request)
            .map(|_| String::new())
            .unwrap_or_else(|e| e.to_string())
    };
    let mut edit = request.clone();
    edit.references.push(Reference::Edit {
        image: common::test_image(64, 64),
        name: "cat.png".into(),
    });
    assert!(
        refused(&edit).contains("takes no edit references"),
        "{}",
        refused(&edit)
    );
    let mut control = request.clone();
    control.references.push(Reference::Control {
        image: common::test_image(64, 64),
        controlnet: "/models/canny".into(),
        scale: 1.0,
    });
    assert!(
        refused(&control).contains("ControlNet"),
        "{}",
        refused(&control)
    );
    let mut two_inits = request.clone();
    two_inits.references.push(Reference::Init(init));
    assert!(
        refused(&two_inits).contains("2 init images"),
        "{}",
        refused(&two_inits)
    );
}

#[test]
fn weights_held_in_f16_on_the_cpu_are_counted_at_half_their_f32_bytes() {
    use easel_engine::families::open;
    use easel_engine::models::component::Component;
    if common::parity_missing() {
        return;
    }
    let folder = common::model("sd15-tiny");
    let held = |dtype| {
        let mut model = open(&folder, &candle_core::Device::Cpu, dtype).expect("open");
        model.load(Component::Unet).expect("unet");
        model.load(Component::TextEncoder).expect("text encoder");
        let bytes = |wanted| {
            model
                .loaded_bytes()
                .iter()
                .find(|(component, _)| *component == wanted)
                .map(|(_, bytes)| *bytes)
                .expect("loaded")
        };
        (bytes(Component::Unet), bytes(Component::TextEncoder))
    };
    let (unet_f32, text_f32) = held(candle_core::DType::F32);
    let (unet_f16, text_f16) = held(candle_core::DType::F16);
    // The UNet's and the text encoder's floats at 2 bytes instead of 4 (the header counted as
    // it is).
    for (f16, f32) in [(unet_f16, unet_f32), (text_f16, text_f32)] {
        assert!(f16 < f32 * 51 / 100 + 64 * 1024, "{f16} of {f32}");
        assert!(f16 > f32 * 49 / 100, "{f16} of {f32}");
    }
}
