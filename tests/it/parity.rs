//! Every case in `../shared/parity/cases`, Stable Diffusion and FLUX, reproduces diffusers'
//! output.

use crate::common;

use std::path::PathBuf;

use candle_core::Device;
use easel_engine::replay::ParityCase;

fn case_files() -> Vec<PathBuf> {
    let dir = common::parity_dir().join("cases");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read the cases folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

/// Replays every case whose model name passes `wanted`; returns the names checked and the
/// failures.
fn replay_cases(wanted: impl Fn(&str) -> bool) -> (Vec<String>, Vec<String>) {
    let models = common::parity_dir().join("models");
    let mut checked = Vec::new();
    let mut failures = Vec::new();
    for file in case_files() {
        let case = ParityCase::load(&file).expect("a readable case");
        if !wanted(&case.spec.model) {
            continue;
        }
        let report = case
            .run(&models, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        eprintln!(
            "{}: image {:.2e}, worst step {:.2e}",
            case.name,
            report.image_max_diff,
            report.step_max_diffs.iter().copied().fold(0.0, f32::max)
        );
        assert_eq!(
            report.step_max_diffs.len(),
            case.spec.timesteps.len(),
            "{}: every step diffusers ran must be compared",
            case.name
        );
        if !report.passed() {
            failures.push(format!(
                "{}: image {:.3e}, steps {:?}",
                case.name, report.image_max_diff, report.step_max_diffs
            ));
        }
        checked.push(case.name);
    }
    (checked, failures)
}

#[test]
fn every_stable_diffusion_case_matches_diffusers() {
    if common::parity_missing() {
        return;
    }
    let (checked, failures) = replay_cases(|model| !model.starts_with("flux"));
    assert!(failures.is_empty(), "cases beyond tolerance: {failures:#?}");
    assert!(
        checked.len() >= 8,
        "expected at least the 8 shipped SD cases, checked {checked:?}"
    );
}

#[test]
fn weights_held_in_f16_on_the_cpu_stay_close_to_diffusers_f32_result() {
    if common::parity_missing() {
        return;
    }
    let models = common::parity_dir().join("models");
    for name in ["sd15_txt2img_euler", "sdxl_txt2img_euler"] {
        let file = common::parity_dir()
            .join("cases")
            .join(format!("{name}.json"));
        let case = ParityCase::load(&file).expect("a readable case");
        let full = case.run(&models, &Device::Cpu).expect("f32 weights");
        let half = case
            .run_with_weights(&models, &Device::Cpu, candle_core::DType::F16)
            .expect("f16 weights");
        eprintln!(
            "{name}: f16 weights image {:.2e} (f32 {:.2e})",
            half.image_max_diff, full.image_max_diff
        );
        // Rounded weights give another image (the f16 really is what is held) ...
        assert_ne!(
            half.image, full.image,
            "{name}: f16 weights changed nothing"
        );
        // ... still within the parity tolerance on these models.
        assert!(
            half.image_max_diff < easel_engine::replay::IMAGE_TOLERANCE,
            "{name}: {}",
            half.image_max_diff
        );
    }
}

#[test]
fn every_flux_case_matches_diffusers() {
    if common::parity_missing() {
        return;
    }
    let (checked, failures) = replay_cases(|model| model.starts_with("flux"));
    assert!(failures.is_empty(), "cases beyond tolerance: {failures:#?}");
    for mode in [
        "schnell_txt2img",
        "dev_txt2img",
        "dev_img2img",
        "dev_inpaint",
    ] {
        assert!(
            checked.iter().any(|name| name.contains(mode)),
            "the FLUX {mode} case was not checked: {checked:?}"
        );
    }
}

#[test]
fn replay_command_passes_a_case_and_fails_a_tampered_one() {
    if common::parity_missing() {
        return;
    }
    let parity = common::parity_dir();
    let exe = env!("CARGO_BIN_EXE_easel");
    let case = parity.join("cases/sd15_txt2img_euler.json");
    let out = std::process::Command::new(exe)
        .arg("replay")
        .arg(&case)
        .arg("--models")
        .arg(parity.join("models"))
        .output()
        .expect("run easel replay");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "replay failed: {stdout}");
    assert!(
        stdout.contains("PASS") && stdout.contains("step  4"),
        "{stdout}"
    );

    // A FLUX case through the command: packed step latents and its own noise roles.
    let flux = std::process::Command::new(exe)
        .arg("replay")
        .arg(parity.join("cases/flux_dev_inpaint.json"))
        .arg("--models")
        .arg(parity.join("models"))
        .output()
        .expect("run easel replay");
    let flux_stdout = String::from_utf8_lossy(&flux.stdout);
    assert!(flux.status.success(), "FLUX replay failed: {flux_stdout}");
    assert!(
        flux_stdout.contains("PASS") && flux_stdout.contains("step  5"),
        "{flux_stdout}"
    );

    // The same case with its golden image nudged beyond tolerance must fail.
    let temp = tempfile::tempdir().expect("temp dir");
    let tampered = temp.path().join("tampered.json");
    std::fs::copy(&case, &tampered).expect("copy json");
    let mut tensors =
        candle_core::safetensors::load(case.with_extension("safetensors"), &Device::Cpu)
            .expect("load case tensors");
    let image = tensors.get("output.image").expect("golden image").clone();
    tensors.insert("output.image".into(), (image + 0.01).expect("nudge"));
    candle_core::safetensors::save(&tensors, tampered.with_extension("safetensors"))
        .expect("save tampered tensors");
    let out = std::process::Command::new(exe)
        .arg("replay")
        .arg(&tampered)
        .arg("--models")
        .arg(parity.join("models"))
        .output()
        .expect("run easel replay");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL"), "{stdout}");
}
