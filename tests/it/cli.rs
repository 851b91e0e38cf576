//! The `easel generate` command end to end: a PNG on success, a clear message and a non-zero
//! exit code on bad input.

use crate::common;

use std::path::Path;
use std::process::{Command, Output};

pub(crate) fn easel(args: &[&str]) -> Output {
    easel_with_env(args, &[])
}

/// `easel` with `env` added to its environment.
fn easel_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    // No settings file of the machine's own may change what the tests see.
    Command::new(env!("CARGO_BIN_EXE_easel"))
        .env("EASEL_CONFIG", "/nonexistent/easel.toml")
        .env(
            "EASEL_DATA_DIR",
            std::env::temp_dir().join("easel-cli-tests"),
        )
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("run easel")
}

pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn generate_writes_a_png_for_each_mode() {
    if common::parity_missing() {
        return;
    }
    let temp = tempfile::tempdir().expect("temp dir");
    let model = common::model("sd15-tiny");
    let model = model.to_str().expect("utf-8 path");
    let out = temp.path().join("out.png");
    let out = out.to_str().expect("utf-8 path");
    let base = [
        "generate", "--model", model, "--prompt", "a cat", "--steps", "2", "--seed", "3",
        "--width", "64", "--height", "64", "--device", "cpu", "--out", out,
    ];

    let run = easel(&base);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(
        stderr(&run).contains("step 2/2"),
        "progress on stderr: {}",
        stderr(&run)
    );
    let image = image::open(out).expect("a PNG").to_rgb8();
    assert_eq!(image.dimensions(), (64, 64));
    let reader = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(out).expect("open the PNG"),
    ))
    .read_info()
    .expect("PNG header");
    let parameters = &reader.info().uncompressed_latin1_text;
    assert!(
        parameters.iter().any(|t| t.keyword == "parameters"
            && t.text
                .starts_with("a cat\nSteps: 2, Sampler: Euler, CFG scale: 7.5, Seed: 3")),
        "the PNG carries its parameters in A1111's format"
    );

    let init = temp.path().join("init.png");
    common::test_image(64, 64).save(&init).expect("save init");
    let mask = temp.path().join("mask.png");
    common::test_mask(64, 64).save(&mask).expect("save mask");
    let init = init.to_str().expect("utf-8 path");
    let mask = mask.to_str().expect("utf-8 path");

    let mut img2img = base.to_vec();
    img2img.extend(["--init", init, "--strength", "0.5", "--timings"]);
    let run = easel(&img2img);
    assert!(run.status.success(), "{}", stderr(&run));
    let table = String::from_utf8_lossy(&run.stdout);
    assert!(
        table.contains("decode") && table.contains("total"),
        "{table}"
    );

    let mut inpaint = img2img.clone();
    inpaint.extend(["--mask", mask]);
    let run = easel(&inpaint);
    assert!(run.status.success(), "{}", stderr(&run));
}

#[test]
fn bad_input_exits_non_zero_with_a_message() {
    if common::parity_missing() {
        return;
    }
    let temp = tempfile::tempdir().expect("temp dir");
    let model = common::model("sd15-tiny");
    let model = model.to_str().expect("utf-8 path");
    let out = temp.path().join("out.png");
    let out = out.to_str().expect("utf-8 path");
    let not_an_image = temp.path().join("notes.png");
    std::fs::write(&not_an_image, "just text").expect("write");
    let not_an_image = not_an_image.to_str().expect("utf-8 path");

    let cases: [(&[&str], &str); 4] = [
        (&["--width", "100"], "multiple of 8"),
        (&["--init", not_an_image], "is not an image"),
        (&["--scheduler", "heun"], "unknown scheduler"),
        (&["--init", "/no/such/file.png"], "could not open"),
    ];
    for (extra, message) in cases {
        let mut args = vec![
            "generate", "--model", model, "--prompt", "a cat", "--steps", "1", "--device", "cpu",
            "--out", out,
        ];
        args.extend_from_slice(extra);
        let run = easel(&args);
        assert!(!run.status.success(), "{extra:?} must fail");
        assert!(
            stderr(&run).contains(message),
            "{extra:?}: {}",
            stderr(&run)
        );
    }
    assert!(!std::path::Path::new(out).exists(), "no output on failure");
}

#[test]
fn config_lists_every_value_with_its_source() {
    let temp = tempfile::tempdir().expect("temp dir");
    let file = temp.path().join("easel.toml");
    std::fs::write(&file, "steps = 30\nsampler = \"ddim\"\ndtype = \"f8\"\n").expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_easel"))
        .env("EASEL_CONFIG", &file)
        .env("EASEL_SAMPLER", "euler_a")
        .env_remove("EASEL_DEVICE")
        .env_remove("EASEL_GUIDANCE")
        .args(["config", "--device", "cpu", "--set", "guidance=4"])
        .output()
        .expect("run easel");
    assert!(output.status.success(), "{}", stderr(&output));
    let listing = String::from_utf8_lossy(&output.stdout).into_owned();
    let line = |key: &str| {
        listing
            .lines()
            .find(|l| l.starts_with(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no line for {key} in:\n{listing}"))
            .to_string()
    };
    let file_name = file.display().to_string();
    assert!(
        line("steps").contains("\"30\"") && line("steps").contains(&format!("# file {file_name}"))
    );
    assert!(
        line("sampler").contains("\"euler_a\"") && line("sampler").ends_with("# env EASEL_SAMPLER")
    );
    assert!(line("guidance").contains("\"4\"") && line("guidance").ends_with("# flag"));
    assert!(line("device").contains("\"cpu\"") && line("device").ends_with("# flag"));
    assert!(line("width").contains("\"512\"") && line("width").ends_with("# default"));
    assert!(line("dtype").contains("\"auto\"") && line("dtype").ends_with("# default"));
    assert!(
        listing.contains("# problem: dtype = \"f8\" is not valid") && listing.contains(&file_name),
        "{listing}"
    );

    let path = Command::new(env!("CARGO_BIN_EXE_easel"))
        .env("EASEL_CONFIG", &file)
        .args(["config", "--path"])
        .output()
        .expect("run easel");
    assert_eq!(String::from_utf8_lossy(&path.stdout).trim(), file_name);
}

#[test]
fn json_log_lines_carry_the_job_and_its_stage_timings() {
    if common::parity_missing() {
        return;
    }
    let temp = tempfile::tempdir().expect("temp dir");
    let model = common::model("sd15-tiny");
    let out = temp.path().join("out.png");
    let output = Command::new(env!("CARGO_BIN_EXE_easel"))
        .env("EASEL_CONFIG", "/nonexistent/easel.toml")
        .env("EASEL_DATA_DIR", temp.path())
        .env("EASEL_LOG_FORMAT", "json")
        .env_remove("EASEL_LOG")
        .env_remove("RUST_LOG")
        .env_remove("EASEL_LOG_LEVEL")
        .args(["generate", "--model"])
        .arg(&model)
        .args([
            "--prompt", "a cat", "--steps", "2", "--width", "64", "--height", "64",
        ])
        .args(["--device", "cpu", "--out"])
        .arg(&out)
        .output()
        .expect("run easel");
    assert!(output.status.success(), "{}", stderr(&output));
    let lines: Vec<serde_json::Value> = stderr(&output)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let finished = lines
        .iter()
        .find(|l| l["fields"]["message"] == "job finished")
        .unwrap_or_else(|| panic!("no 'job finished' line in {lines:#?}"));
    assert_eq!(finished["fields"]["job"], 1);
    let stages: serde_json::Value = serde_json::from_str(
        finished["fields"]["stages"]
            .as_str()
            .expect("stages as JSON text"),
    )
    .expect("stages parse");
    let names: Vec<&str> = stages
        .as_array()
        .expect("a list")
        .iter()
        .map(|s| s["stage"].as_str().expect("a name"))
        .collect();
    for stage in ["load unet", "encode prompt", "step 2", "decode"] {
        assert!(names.contains(&stage), "{stage} missing from {names:?}");
    }
    assert!(lines
        .iter()
        .any(|l| l["fields"]["message"] == "engine starting"));
    let file = std::fs::read_to_string(temp.path().join("easel.log")).expect("the log file");
    assert!(file.contains("job finished"), "{file}");
}

#[test]
fn bench_reports_every_mode_as_json() {
    if common::parity_missing() {
        return;
    }
    let model = common::model("sd15-tiny");
    let model = model.to_str().expect("utf-8 path");
    let run = easel(&[
        "bench", "--model", model, "--size", "64", "--steps", "2", "--json", "--device", "cpu",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let report: serde_json::Value =
        serde_json::from_slice(&run.stdout).expect("one JSON object on stdout");
    let idle = report["idle_rss_bytes"].as_u64().expect("idle RSS");
    let after_unload = report["after_unload_rss_bytes"]
        .as_u64()
        .expect("RSS after unload");
    assert!(idle > 1 << 20 && after_unload > 1 << 20, "{report}");
    for mode in ["full", "staged"] {
        let figures = &report["modes"][mode];
        for key in ["load_secs", "step_secs_median", "vae_decode_secs"] {
            let secs = figures[key].as_f64().expect(key);
            assert!(secs > 0.0 && secs < 60.0, "{mode}.{key} = {secs}");
        }
        let peak = figures["peak_rss_bytes"].as_u64().expect("peak RSS");
        assert!(peak >= idle, "{mode}: peak {peak} below idle {idle}");
    }
    assert!(
        report["denoiser_forward_secs_median"]
            .as_f64()
            .expect("denoiser")
            > 0.0
    );
}

#[test]
fn bench_times_the_bare_forward_alone_with_each_ops_time() {
    if common::parity_missing() {
        return;
    }
    let model = common::model("sd15-tiny");
    let model = model.to_str().expect("utf-8 path");
    let run = easel_with_env(
        &[
            "bench",
            "--model",
            model,
            "--size",
            "64",
            "--forward-only",
            "--json",
            "--device",
            "cpu",
        ],
        &[("EASEL_OP_TIMES", "1")],
    );
    assert!(run.status.success(), "{}", stderr(&run));
    let report: serde_json::Value =
        serde_json::from_slice(&run.stdout).expect("one JSON object on stdout");
    let forwards = report["forward_secs"].as_array().expect("forward times");
    // max(steps, 3) forwards, each timed.
    assert_eq!(forwards.len(), 3, "{report}");
    assert!(forwards.iter().all(|s| s.as_f64().is_some_and(|s| s > 0.0)));
    assert_eq!(report["dtype"], "f32", "{report}");
    // No job ran: only the forward's op table follows, convolutions and attention in it.
    let log = stderr(&run);
    assert!(log.contains("op times"), "{log}");
    assert!(
        log.contains("conv3x3") && log.contains("attention"),
        "{log}"
    );
    assert!(!log.contains("full mode"), "{log}");
}

#[test]
fn bench_measures_each_count_of_edit_references() {
    if common::parity_missing() {
        return;
    }
    let klein = common::parity_dir().join("flux2/models/flux2-klein-tiny");
    let klein = klein.to_str().expect("utf-8 path");
    let bench = |references: &str| {
        easel(&[
            "bench",
            "--model",
            klein,
            "--size",
            "64",
            "--steps",
            "2",
            "--json",
            "--device",
            "cpu",
            "--references",
            references,
        ])
    };
    let run = bench("0,2");
    assert!(run.status.success(), "{}", stderr(&run));
    let report: serde_json::Value =
        serde_json::from_slice(&run.stdout).expect("one JSON object on stdout");
    let runs = report["reference_runs"].as_array().expect("reference runs");
    // 512 prompt tokens and 16 tokens per 64x64 picture, the output's and each reference's.
    let counts: Vec<(u64, u64)> = runs
        .iter()
        .map(|r| {
            (
                r["references"].as_u64().expect("count"),
                r["tokens"].as_u64().expect("tokens"),
            )
        })
        .collect();
    assert_eq!(counts, [(0, 528), (2, 560)]);
    for run in runs {
        assert!(
            run["step_secs_median"].as_f64().expect("step") > 0.0,
            "{run}"
        );
        assert!(
            run["peak_rss_bytes"].as_u64().expect("peak") > 1 << 20,
            "{run}"
        );
    }
    let too_many = bench("5");
    assert!(!too_many.status.success());
    assert!(
        stderr(&too_many).contains("at most 4 references; --references asked for 5"),
        "{}",
        stderr(&too_many)
    );
}

#[test]
fn bench_times_the_canvas_frames() {
    let run = easel(&["bench", "--canvas", "--canvas-size", "512", "--json"]);
    assert!(run.status.success(), "{}", stderr(&run));
    let report: serde_json::Value =
        serde_json::from_slice(&run.stdout).expect("one JSON object on stdout");
    let p50 = report["p50_ms"].as_f64().expect("p50");
    let p99 = report["p99_ms"].as_f64().expect("p99");
    assert!(p50 > 0.0 && p50 <= p99, "{report}");
    assert!(
        report["painted_px"].as_u64().expect("painted") > 0,
        "{report}"
    );
    let too_small = easel(&["bench", "--canvas", "--canvas-size", "8"]);
    assert_eq!(too_small.status.code(), Some(2), "{}", stderr(&too_small));
}

#[test]
fn bench_refuses_an_unknown_model_clearly() {
    let run = easel(&["bench", "--model", "sd99", "--json"]);
    assert!(!run.status.success());
    assert!(
        stderr(&run).contains("give sd15, sdxl, flux, flux2-klein or a diffusers model folder"),
        "{}",
        stderr(&run)
    );
}

/// `easel generate` without --out, started as a Mac app from Finder is: in `/`, with no
/// folder configured. `user_dirs` is the XDG `user-dirs.dirs` text, if any.
fn generate_from_the_root_folder(home: &Path, user_dirs: Option<&str>) -> Output {
    let config = home.join("config");
    std::fs::create_dir_all(&config).expect("config folder");
    if let Some(text) = user_dirs {
        std::fs::write(config.join("user-dirs.dirs"), text).expect("user-dirs.dirs");
    }
    let model = common::model("sd15-tiny");
    Command::new(env!("CARGO_BIN_EXE_easel"))
        .current_dir("/")
        .env("HOME", home)
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CONFIG_HOME", &config)
        .env("EASEL_CONFIG", home.join("no-easel.toml"))
        .env_remove("EASEL_DATA_DIR")
        .env_remove("EASEL_OUTPUTS_DIR")
        .env_remove("EASEL_MODELS_DIR")
        .args(["generate", "--model", model.to_str().expect("utf-8")])
        .args([
            "--prompt", "a fox", "--steps", "2", "--width", "64", "--height", "64",
        ])
        .args(["--device", "cpu"])
        .output()
        .expect("run easel")
}

#[test]
fn started_in_the_root_folder_results_land_in_the_platform_folders() {
    if common::parity_missing() {
        return;
    }
    let home = tempfile::tempdir().expect("temp dir");
    let run = generate_from_the_root_folder(home.path(), None);
    assert!(run.status.success(), "{}", stderr(&run));
    let result = home.path().join("data/easel/outputs/00001-0.png");
    assert!(result.is_file(), "{}", stderr(&run));
    assert!(
        stderr(&run).contains(&result.display().to_string()),
        "{}",
        stderr(&run)
    );
    assert!(!Path::new("/outputs").exists() && !Path::new("/models").exists());

    // With a Pictures folder, results go to Pictures/Easel.
    let run =
        generate_from_the_root_folder(home.path(), Some("XDG_PICTURES_DIR=\"$HOME/Pictures\"\n"));
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(
        home.path().join("Pictures/Easel/00001-0.png").is_file(),
        "{}",
        stderr(&run)
    );
}
