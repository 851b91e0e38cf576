//! FLUX.2 [klein] with its transformer as a GGUF quantization: made here from the tiny
//! model's own weights (BFL names under sd.cpp's prefix, or diffusers names), it loads,
//! generates close to the full-precision transformer, and is the out-of-memory ladder's last
//! rung when the folder has both.

use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use easel_engine::engine::Strategy;
use easel_engine::pipeline::request::{GenerateRequest, Reference};

use crate::common;
use crate::common::jobs::{
    engine, engine_out_of_memory_at_first_step, failure, finished, transformer_bytes, wait_for,
};

fn klein() -> PathBuf {
    common::parity_dir().join("flux2/models/flux2-klein-tiny")
}

/// An edit with one reference, so that reference tokens go through the quantized layers too.
fn edit_request(model: &Path) -> GenerateRequest {
    GenerateRequest {
        steps: 2,
        guidance: 1.0,
        width: Some(64),
        height: Some(64),
        seed: 21,
        references: vec![Reference::Edit {
            image: common::test_image(80, 64),
            name: "ref.png".into(),
        }],
        ..GenerateRequest::new(model, "the fox in the snow")
    }
}

/// Writes `tensors` as a GGUF at `path`: matrices whose rows hold whole blocks as `dtype`,
/// everything else as f32 (as converters keep norms), each name after `prefix`.
fn write_gguf(path: &Path, tensors: &[(String, Tensor)], dtype: GgmlDType, prefix: &str) {
    let quantized: Vec<(String, QTensor)> = tensors
        .iter()
        .map(|(name, tensor)| {
            let rows_fit = tensor.rank() == 2 && tensor.dims()[1] % dtype.block_size() == 0;
            let stored = if rows_fit { dtype } else { GgmlDType::F32 };
            (
                format!("{prefix}{name}"),
                QTensor::quantize(tensor, stored).expect("quantize"),
            )
        })
        .collect();
    let refs: Vec<(&str, &QTensor)> = quantized.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut file = std::fs::File::create(path).expect("create GGUF");
    gguf_file::write(&mut file, &[], &refs).expect("write GGUF");
}

fn sorted_tensors(files: &[PathBuf]) -> Vec<(String, Tensor)> {
    let mut tensors: Vec<(String, Tensor)> = files
        .iter()
        .flat_map(|file| candle_core::safetensors::load(file, &Device::Cpu).expect("load"))
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    tensors
}

/// How the test GGUFs are made.
#[derive(Debug, Clone, Copy)]
enum Made {
    /// From BFL's single file, names under `model.diffusion_model.` as stable-diffusion.cpp
    /// writes them, Q8_0.
    BflQ8,
    /// From the diffusers shards, their own names, Q4_0.
    DiffusersQ4,
}

/// A copy of the tiny klein with a GGUF transformer; the full weights (the shards and the
/// BFL file) are removed unless `keep_full`.
fn gguf_copy(made: Made, keep_full: bool) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let (temp, folder) = common::copy_model_from(&klein());
    let bfl = folder.join("flux-2-klein-tiny.safetensors");
    let shards: Vec<PathBuf> = std::fs::read_dir(folder.join("transformer"))
        .expect("transformer folder")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n != "config.json"))
        .collect();
    let gguf = folder.join("flux-2-klein-tiny-Q.gguf");
    match made {
        Made::BflQ8 => write_gguf(
            &gguf,
            &sorted_tensors(std::slice::from_ref(&bfl)),
            GgmlDType::Q8_0,
            "model.diffusion_model.",
        ),
        Made::DiffusersQ4 => {
            let safetensors: Vec<PathBuf> = shards
                .iter()
                .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
                .cloned()
                .collect();
            write_gguf(&gguf, &sorted_tensors(&safetensors), GgmlDType::Q4_0, "");
        }
    }
    if !keep_full {
        for file in shards.iter().chain([&bfl]) {
            std::fs::remove_file(file).expect("remove a full-precision file");
        }
    }
    (temp, folder, gguf)
}

fn mean_difference(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    let total: f64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| f64::from(x.abs_diff(*y)))
        .sum();
    total / a.as_raw().len() as f64
}

#[test]
fn klein_gguf_transformers_in_either_naming_generate_close_to_the_full_one() {
    if common::parity_missing() {
        return;
    }
    let engine = engine();
    let full = finished(wait_for(
        &engine,
        engine.generate(edit_request(&klein())).expect("send"),
    ));
    // Q8_0 keeps 8 bits a weight, Q4_0 4: both near the f32 result, neither the same.
    for (made, largest_mean) in [(Made::BflQ8, 1.0), (Made::DiffusersQ4, 8.0)] {
        let (_temp, folder, gguf) = gguf_copy(made, false);
        let end = wait_for(
            &engine,
            engine.generate(edit_request(&folder)).expect("send"),
        );
        let gguf_bytes = std::fs::metadata(&gguf).expect("gguf").len();
        assert!(
            transformer_bytes(&end.events).contains(&gguf_bytes),
            "{made:?}: the reports hold the GGUF's bytes"
        );
        let output = finished(end);
        assert_eq!(output.image.dimensions(), (64, 64));
        let mean = mean_difference(&output.image, &full.image);
        assert!(
            mean < largest_mean,
            "{made:?}: mean difference {mean} of 255"
        );
        assert!(
            mean > 0.0,
            "{made:?}: the GGUF must not run the f32 weights"
        );
        let again = finished(wait_for(
            &engine,
            engine.generate(edit_request(&folder)).expect("send"),
        ));
        assert_eq!(output.image, again.image, "{made:?}: same seed, same bytes");
    }
}

#[test]
fn out_of_memory_falls_back_to_the_klein_gguf_transformer() {
    if common::parity_missing() {
        return;
    }
    let (_temp, folder, gguf) = gguf_copy(Made::BflQ8, true);
    // The first step runs out of memory with the full transformer, in every f32 strategy.
    let engine = engine_out_of_memory_at_first_step(3);
    let end = wait_for(
        &engine,
        engine.generate(edit_request(&folder)).expect("send"),
    );
    assert_eq!(
        end.fallbacks(),
        [
            (Strategy::Full, Some(Strategy::Staged)),
            (Strategy::Staged, Some(Strategy::StagedTiledVae)),
            (Strategy::StagedTiledVae, Some(Strategy::StagedQuantized)),
        ]
    );
    let gguf_bytes = std::fs::metadata(&gguf).expect("gguf").len();
    let held = transformer_bytes(&end.events);
    assert_eq!(held.last(), Some(&gguf_bytes), "{held:?}");
    assert_eq!(finished(end).strategy, Strategy::StagedQuantized);
    // The next job starts again from the full weights.
    let next = finished(wait_for(
        &engine,
        engine.generate(edit_request(&folder)).expect("send"),
    ));
    assert_eq!(next.strategy, Strategy::Full);
}

#[test]
fn a_gguf_of_another_model_is_refused_naming_the_file() {
    if common::parity_missing() {
        return;
    }
    let (_temp, folder, gguf) = gguf_copy(Made::BflQ8, false);
    let unrelated = Tensor::zeros((4, 32), candle_core::DType::F32, &Device::Cpu).expect("zeros");
    write_gguf(
        &gguf,
        &[("model.layers.0.mlp.weight".into(), unrelated)],
        GgmlDType::Q8_0,
        "",
    );
    let engine = engine();
    let error = failure(wait_for(
        &engine,
        engine.generate(edit_request(&folder)).expect("send"),
    ))
    .to_string();
    assert!(
        error.contains("holds no FLUX.2 transformer") && error.contains("flux-2-klein-tiny-Q.gguf"),
        "{error}"
    );
    // The engine goes on: the full model still generates.
    let full = engine.generate(edit_request(&klein())).expect("send");
    assert_eq!(
        finished(wait_for(&engine, full)).image.dimensions(),
        (64, 64)
    );
}

#[test]
fn the_klein_gguf_catalog_entry_borrows_the_quantized_transformer_and_generates() {
    use crate::common::fake_hub::FakeHub;
    use easel_engine::hub::catalog;
    if common::parity_missing() {
        return;
    }
    let entry = catalog::find("flux2-klein-4b-q8").expect("in the catalog");
    let borrowed = entry.borrowed[0];
    assert_eq!(
        (borrowed.repo, borrowed.path),
        ("leejet/FLUX.2-klein-4B-GGUF", "flux-2-klein-4b-Q8_0.gguf")
    );
    assert!(catalog::find("flux2-klein-4b-q4").is_some());
    // The GGUF repository holds the tiny model's transformer under the real file's name.
    let (_made, made_folder, made_gguf) = gguf_copy(Made::BflQ8, false);
    let gguf_repo = tempfile::tempdir().expect("temp dir");
    std::fs::copy(&made_gguf, gguf_repo.path().join(borrowed.path)).expect("copy GGUF");
    drop(made_folder);
    let hub = FakeHub::start();
    hub.serve_folder(entry.repo, &klein(), &[], false);
    hub.serve_folder(borrowed.repo, gguf_repo.path(), &[], false);
    let models = tempfile::tempdir().expect("temp dir");
    let located = hub.fetch_catalog_entry(entry, models.path());
    // Neither the full transformer's shards nor BFL's single file were fetched.
    let requests = hub.requests();
    assert!(
        !requests
            .iter()
            .any(|r| r.contains("transformer/diffusion_pytorch_model")
                || r.contains("flux-2-klein-tiny.safetensors")),
        "{requests:?}"
    );
    let gguf = located.folder.join(borrowed.path);
    assert!(gguf.is_file());
    let info = easel_engine::families::ModelInfo::read(&located.folder).expect("facts");
    // A GGUF's blocks are held as stored.
    assert_eq!(
        info.weights.denoiser,
        easel_engine::models::weights::WeightCount {
            float_values: 0,
            stored_bytes: std::fs::metadata(&gguf).expect("gguf").len(),
        }
    );
    let engine = engine();
    let end = wait_for(
        &engine,
        engine
            .generate(edit_request(&located.folder))
            .expect("send"),
    );
    assert_eq!(finished(end).image.dimensions(), (64, 64));
}
