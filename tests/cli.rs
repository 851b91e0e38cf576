//! The `easel generate` command end to end: a PNG on success, a clear message and a non-zero
//! exit code on bad input.

// Tests may panic on setup failures: that is how a test reports them.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::process::{Command, Output};

fn easel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_easel"))
        .args(args)
        .output()
        .expect("run easel")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn generate_writes_a_png_for_each_mode() {
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
