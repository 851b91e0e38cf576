//! Tiled VAE decode and encode give the untiled result (within float rounding), for maps
//! that are not square and whose sides are not multiples of the tile.

use crate::common;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use easel_engine::models::config::VaeConfig;
use easel_engine::models::sd::{Component, ModelWeights, SdModel};
use easel_engine::models::vae::{Vae, VaeTiling};
use easel_engine::pipeline::noise::{NoiseRole, NoiseSource, SeededNoise};

/// Largest absolute difference between two tensors of the same shape.
fn max_difference(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn seeded(shape: &[usize], seed: u64) -> Tensor {
    SeededNoise::new(seed)
        .draw(NoiseRole::PrepareLatents, shape, &Device::Cpu)
        .unwrap()
}

fn parity_vae() -> (SdModel, Device) {
    let device = Device::Cpu;
    let mut model = SdModel::open(&common::model("sd15-tiny"), &device, DType::F32).unwrap();
    model.load(Component::Vae).unwrap();
    (model, device)
}

/// SD's VAE depth (four levels, two resnets each) with few channels and random weights.
fn deep_random_vae() -> Vae {
    let config: VaeConfig = serde_json::from_str(
        r#"{"block_out_channels": [16, 16, 32, 32], "layers_per_block": 2,
            "norm_num_groups": 8, "latent_channels": 4}"#,
    )
    .unwrap();
    let vars = VarMap::new();
    Vae::new(
        VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu),
        &config,
    )
    .unwrap()
}

fn check_decode(vae: &Vae, latents: &Tensor, core: usize) {
    let whole = vae.decode_with(latents, VaeTiling::Off).unwrap();
    let tiled = vae.decode_with(latents, VaeTiling::Cores(core)).unwrap();
    let scale = max_difference(&whole, &whole.zeros_like().unwrap());
    let difference = max_difference(&whole, &tiled);
    assert!(scale > 1e-3, "the decode is not trivially zero");
    assert!(
        difference <= 1e-4 * scale.max(1.0),
        "tiled decode (cores of {core}) differs by {difference} (values up to {scale})"
    );
}

fn check_encode(vae: &Vae, images: &Tensor, core: usize) {
    let whole = vae.encode_with(images, VaeTiling::Off).unwrap();
    let tiled = vae.encode_with(images, VaeTiling::Cores(core)).unwrap();
    for (name, a, b) in [
        ("mean", &whole.mean, &tiled.mean),
        ("std", &whole.std, &tiled.std),
    ] {
        let difference = max_difference(a, b);
        assert!(
            difference <= 1e-4,
            "tiled encode (cores of {core} latents): {name} differs by {difference}"
        );
    }
}

#[test]
fn tiled_decode_matches_the_whole_decode() {
    if common::parity_missing() {
        return;
    }
    let (model, _) = parity_vae();
    let vae = model.vae().unwrap();
    // 40 x 56 latents in cores of 16: a 3 x 4 grid with partial last tiles.
    let latents = seeded(&[1, 4, 40, 56], 7);
    check_decode(vae, &latents, 16);
    check_decode(vae, &latents, 24);
}

#[test]
fn tiled_decode_matches_at_sd_depth() {
    let vae = deep_random_vae();
    let latents = seeded(&[1, 4, 36, 44], 8);
    check_decode(&vae, &latents, 16);
}

#[test]
fn tiled_encode_matches_the_whole_encode() {
    if common::parity_missing() {
        return;
    }
    let (model, _) = parity_vae();
    let vae = model.vae().unwrap();
    let images = seeded(&[1, 3, 320, 448], 9).clamp(-1f32, 1f32).unwrap();
    check_encode(vae, &images, 16);
    check_encode(&deep_random_vae(), &images, 16);
}

#[test]
fn automatic_tiling_leaves_small_images_whole() {
    if common::parity_missing() {
        return;
    }
    let (model, _) = parity_vae();
    let vae = model.vae().unwrap();
    let latents = seeded(&[1, 4, 16, 24], 10);
    let auto = vae.decode(&latents).unwrap();
    let whole = vae.decode_with(&latents, VaeTiling::Off).unwrap();
    assert_eq!(max_difference(&auto, &whole), 0.0);
}
