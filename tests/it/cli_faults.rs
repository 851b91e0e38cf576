//! The `easel` command against bad input and faults, as a black box: images, masks, weights,
//! configs, tokenizers, GGUF, sizes, paths, downloads and stdout. Each case must end with the
//! exit code it deserves (2 for a command line that cannot be run as given, 1 for a failure,
//! 0 where the input is legitimate), a message naming the problem, no panic and no signal, no
//! temporary file left behind, and an earlier result untouched.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::common::fake_hub::FakeHub;

/// What a case must end with.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Exit 2: the command line is wrong as given.
    Usage,
    /// Exit 1: the command ran and failed.
    Failure,
    /// Exit 0: the input was legitimate.
    Works,
}

/// A folder a case runs in: an earlier result that must survive, and the folders Easel uses.
struct Workspace {
    dir: tempfile::TempDir,
    earlier: Vec<u8>,
}

impl Workspace {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let earlier = b"\x89PNG an earlier result".to_vec();
        std::fs::create_dir_all(dir.path().join("outputs")).expect("outputs");
        std::fs::write(dir.path().join("outputs/00001-1.png"), &earlier).expect("earlier");
        Self { dir, earlier }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `bytes` as `name` and returns its path as text.
    fn file(&self, name: &str, bytes: &[u8]) -> String {
        let path = self.path(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("folder");
        }
        std::fs::write(&path, bytes).expect("write");
        text(&path)
    }

    /// A PNG of `image` as `name`.
    fn png(&self, name: &str, image: &image::DynamicImage) -> String {
        let mut bytes = Vec::new();
        image
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .expect("encode");
        self.file(name, &bytes)
    }

    /// Runs `easel` here with `args`; stdout goes to `stdout` when given.
    fn run(&self, args: &[&str], stdout: Option<std::fs::File>) -> Output {
        let mut command = self.command(args);
        if let Some(file) = stdout {
            command.stdout(Stdio::from(file));
        }
        command.output().expect("run easel")
    }

    /// `easel args` to run here, with its own folders and no reachable hub.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_easel"));
        command
            .current_dir(self.dir.path())
            .env("EASEL_CONFIG", self.path("easel.toml"))
            .env("EASEL_DATA_DIR", self.path("data"))
            .env("EASEL_OUTPUTS_DIR", self.path("outputs"))
            .env("EASEL_MODELS_DIR", self.path("models"))
            .env("HF_HOME", self.path("hf"))
            .env("HF_ENDPOINT", "http://127.0.0.1:9")
            .env_remove("HF_TOKEN")
            .env_remove("HF_HUB_CACHE")
            .args(args);
        command
    }

    /// Asserts how a run ended, and that nothing was left or lost.
    fn check(&self, name: &str, output: &Output, expect: Expect, needle: &str) {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let code = output.status.code();
        assert!(code.is_some(), "{name}: ended by a signal: {stderr}");
        let wanted = match expect {
            Expect::Usage => 2,
            Expect::Failure => 1,
            Expect::Works => 0,
        };
        assert_eq!(code, Some(wanted), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        assert!(
            stderr.to_lowercase().contains(&needle.to_lowercase()),
            "{name}: expected {needle:?} in: {stderr}"
        );
        let leftovers: Vec<String> = common::files_under(self.dir.path())
            .into_iter()
            .filter(|f| f.ends_with(".tmp") || f.ends_with(".incomplete") || f.ends_with(".link"))
            .collect();
        assert!(leftovers.is_empty(), "{name}: left {leftovers:?}");
        let earlier = std::fs::read(self.path("outputs/00001-1.png")).expect("earlier result");
        assert_eq!(earlier, self.earlier, "{name}: the earlier result changed");
    }
}

fn text(path: &Path) -> String {
    path.to_str().expect("utf-8 path").to_string()
}

/// `generate` of a 64x64 image in two steps with `model`, plus `extra`.
fn generate<'a>(model: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = generate_bare(model, &["--steps", "2", "--width", "64", "--height", "64"]);
    args.extend_from_slice(extra);
    args
}

/// `generate` with `model`, plus `extra` (which sets the steps and size).
fn generate_bare<'a>(model: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "generate", "--model", model, "--prompt", "a fox", "--device", "cpu",
    ];
    args.extend_from_slice(extra);
    args
}

/// A model folder that does not matter because the run stops before it is read.
const ANY_MODEL: &str = "/nonexistent/model";

#[test]
fn command_lines_that_cannot_run_exit_2_before_any_work() {
    let ws = Workspace::new();
    let init = ws.png("photo.png", &image::DynamicImage::new_rgb8(64, 64));
    let mask = ws.png("mask.png", &image::DynamicImage::new_luma8(64, 64));
    let init_link = ws.path("link-to-photo.png");
    std::os::unix::fs::symlink(&init, &init_link).expect("link");
    let init_link = text(&init_link);
    let folder = text(ws.dir.path());
    let missing_folder = text(&ws.path("missing/out.png"));
    let inside_a_file = format!("{init}/out.png");
    let jpg_out = text(&ws.path("out.jpg"));
    let checkpoint = ws.file("dreamshaper_8.safetensors", b"not really");
    let pickle = ws.file("v1-5-pruned.ckpt", b"pickle");
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "out is the init image",
            generate(ANY_MODEL, &["--init", &init, "--out", &init]),
            "never writes over",
        ),
        (
            "out is the mask",
            generate(
                ANY_MODEL,
                &["--init", &init, "--mask", &mask, "--out", &mask],
            ),
            "never writes over",
        ),
        (
            "out links to the init image",
            generate(ANY_MODEL, &["--init", &init, "--out", &init_link]),
            "never writes over",
        ),
        (
            "out is a folder",
            generate(ANY_MODEL, &["--out", &folder]),
            "is a folder",
        ),
        (
            "out's folder is missing",
            generate(ANY_MODEL, &["--out", &missing_folder]),
            "does not exist",
        ),
        (
            "out's folder is a file",
            generate(ANY_MODEL, &["--out", &inside_a_file]),
            "is not a folder",
        ),
        (
            "out is not a png",
            generate(ANY_MODEL, &["--out", &jpg_out]),
            "ending in .png",
        ),
        (
            "out cannot be written",
            generate(ANY_MODEL, &["--out", "/proc/easel-result.png"]),
            "nothing can be written",
        ),
        (
            "a single-file checkpoint",
            generate(&checkpoint, &[]),
            "single-file checkpoint",
        ),
        ("a pickled checkpoint", generate(&pickle, &[]), "pickled"),
        (
            "--set without =",
            vec!["config", "--set", "steps"],
            "KEY=VALUE",
        ),
        (
            "an unknown command",
            vec!["paint"],
            "unrecognized subcommand",
        ),
        (
            "steps that are not a number",
            generate_bare(ANY_MODEL, &["--steps", "many", "--width", "64"]),
            "invalid value",
        ),
        (
            "an unknown scheduler",
            generate(ANY_MODEL, &["--scheduler", "heun"]),
            "unknown scheduler",
        ),
        (
            "a mask without an init image",
            generate(ANY_MODEL, &["--mask", &mask]),
            "--init",
        ),
        (
            "replay of a missing case",
            vec!["replay", "/no/case.json", "--models", "/no/models"],
            "could not be replayed",
        ),
    ];
    for (name, args, needle) in cases {
        let output = ws.run(&args, None);
        ws.check(name, &output, Expect::Usage, needle);
    }
    assert_eq!(std::fs::read(&init).expect("init"), {
        let mut bytes = Vec::new();
        image::DynamicImage::new_rgb8(64, 64)
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .expect("encode");
        bytes
    });
}

#[test]
fn a_closed_or_full_stdout_is_an_error_not_a_panic() {
    let ws = Workspace::new();
    for args in [vec!["models"], vec!["config"], vec!["config", "--path"]] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full");
        let output = ws.run(&args, Some(full));
        ws.check(
            &format!("{args:?} > /dev/full"),
            &output,
            Expect::Failure,
            "standard output",
        );
    }
}

#[test]
fn downloads_that_cannot_happen_say_why() {
    let ws = Workspace::new();
    let output = ws.run(&["download", "sd15"], None);
    ws.check("no hub", &output, Expect::Failure, "127.0.0.1:9");

    let hub = FakeHub::start();
    hub.serve_file("easel-test/hostile", "model_index.json", b"{}".to_vec());
    hub.set_commit("easel-test/hostile", "../../../../../tmp/escaped");
    let output = ws
        .command(&["download", "easel-test/hostile"])
        .env("HF_ENDPOINT", hub.url())
        .output()
        .expect("run easel");
    ws.check(
        "a hostile commit",
        &output,
        Expect::Failure,
        "not a commit hash",
    );
    assert!(!Path::new("/tmp/escaped").exists());

    let output = ws.run(&["download", "not a repo name"], None);
    ws.check(
        "a name that is no repository",
        &output,
        Expect::Failure,
        "not a repo name",
    );
}

/// A copy of the tiny SD 1.5 in the workspace, changed by `damage`.
fn damaged_sd15(ws: &Workspace, name: &str, damage: impl FnOnce(&Path)) -> String {
    let (_keep, copy) = common::copy_model("sd15-tiny");
    let target = ws.path(&format!("models/{name}"));
    std::fs::create_dir_all(target.parent().expect("parent")).expect("models");
    std::fs::rename(&copy, &target)
        .or_else(|_| copy_tree(&copy, &target))
        .expect("move the copy");
    damage(&target);
    text(&target)
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Rewrites a safetensors file's JSON header through `edit`, keeping its data.
fn edit_header(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let bytes = std::fs::read(path).expect("weights");
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let mut header: serde_json::Value =
        serde_json::from_slice(&bytes[8..8 + header_len]).expect("header");
    edit(&mut header);
    let mut new_header = serde_json::to_vec(&header).expect("json");
    new_header.resize(new_header.len().div_ceil(8) * 8, b' ');
    let mut out = (new_header.len() as u64).to_le_bytes().to_vec();
    out.extend(new_header);
    out.extend(&bytes[8 + header_len..]);
    std::fs::write(path, out).expect("write weights");
}

/// The first tensor of a header (not `__metadata__`).
fn first_tensor(header: &mut serde_json::Value) -> &mut serde_json::Value {
    header
        .as_object_mut()
        .expect("object")
        .iter_mut()
        .find(|(name, _)| name.as_str() != "__metadata__")
        .map(|(_, v)| v)
        .expect("a tensor")
}

/// Edits one JSON config of a model folder.
fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("config")).expect("json");
    edit(&mut value);
    std::fs::write(path, value.to_string()).expect("write config");
}

const UNET_WEIGHTS: &str = "unet/diffusion_pytorch_model.safetensors";

#[test]
fn damaged_models_fail_with_the_file_and_the_problem_named() {
    if common::parity_missing() {
        return;
    }
    let ws = Workspace::new();
    let out = text(&ws.path("out.png"));
    type Damage = Box<dyn FnOnce(&Path)>;
    let cases: Vec<(&str, Damage, &str)> = vec![
        (
            "a header longer than the file",
            Box::new(|m: &Path| {
                let path = m.join(UNET_WEIGHTS);
                let mut bytes = std::fs::read(&path).unwrap();
                bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
                std::fs::write(&path, bytes).unwrap();
            }),
            "header claims",
        ),
        (
            "a shape whose size overflows",
            Box::new(|m: &Path| {
                edit_header(&m.join(UNET_WEIGHTS), |h| {
                    first_tensor(h)["shape"] = serde_json::json!([u64::MAX / 2, 4, 4]);
                })
            }),
            "holds more bytes than any file",
        ),
        (
            "offsets beyond any file",
            Box::new(|m: &Path| {
                edit_header(&m.join(UNET_WEIGHTS), |h| {
                    first_tensor(h)["data_offsets"] = serde_json::json!([u64::MAX - 8, u64::MAX]);
                })
            }),
            "diffusion_pytorch_model.safetensors",
        ),
        (
            "a truncated weight file",
            Box::new(|m: &Path| {
                let path = m.join(UNET_WEIGHTS);
                let bytes = std::fs::read(&path).unwrap();
                std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
            }),
            "truncated",
        ),
        (
            "a weight file of text",
            Box::new(|m: &Path| {
                std::fs::write(
                    m.join(UNET_WEIGHTS),
                    b"version https://git-lfs.github.com/spec/v1\n",
                )
                .unwrap();
            }),
            "diffusion_pytorch_model.safetensors",
        ),
        (
            "num_train_timesteps 0",
            Box::new(|m: &Path| {
                edit_json(&m.join("scheduler/scheduler_config.json"), |c| {
                    c["num_train_timesteps"] = serde_json::json!(0);
                })
            }),
            "num_train_timesteps = 0",
        ),
        (
            "num_train_timesteps 1e15",
            Box::new(|m: &Path| {
                edit_json(&m.join("scheduler/scheduler_config.json"), |c| {
                    c["num_train_timesteps"] = serde_json::json!(1_000_000_000_000_000u64);
                })
            }),
            "num_train_timesteps",
        ),
        (
            "a billion channels",
            Box::new(|m: &Path| {
                edit_json(&m.join("unet/config.json"), |c| {
                    c["block_out_channels"] = serde_json::json!([32, 1_000_000_000]);
                })
            }),
            "block_out_channels",
        ),
        (
            "a VAE of a billion latent channels",
            Box::new(|m: &Path| {
                edit_json(&m.join("vae/config.json"), |c| {
                    c["latent_channels"] = serde_json::json!(1_000_000_000);
                })
            }),
            "latent_channels",
        ),
        (
            "a text encoder of a huge vocabulary",
            Box::new(|m: &Path| {
                edit_json(&m.join("text_encoder/config.json"), |c| {
                    c["vocab_size"] = serde_json::json!(1u64 << 40);
                })
            }),
            "vocab_size",
        ),
        (
            "a config that is not JSON",
            Box::new(|m: &Path| {
                std::fs::write(m.join("unet/config.json"), b"{ in_channels: 4").unwrap();
            }),
            "unet",
        ),
        (
            "a missing tokenizer",
            Box::new(|m: &Path| {
                std::fs::remove_file(m.join("tokenizer/tokenizer.json")).unwrap();
            }),
            "tokenizer",
        ),
        (
            "a tokenizer of garbage",
            Box::new(|m: &Path| {
                std::fs::write(m.join("tokenizer/tokenizer.json"), b"{\"model\": 7}").unwrap();
            }),
            "tokenizer could not be loaded",
        ),
        (
            "a merges file with a bad line",
            Box::new(|m: &Path| {
                std::fs::remove_file(m.join("tokenizer/tokenizer.json")).unwrap();
                std::fs::write(
                    m.join("tokenizer/vocab.json"),
                    b"{\"<|startoftext|>\": 0, \"<|endoftext|>\": 1}",
                )
                .unwrap();
                std::fs::write(m.join("tokenizer/merges.txt"), b"#version: 0.2\nab\n").unwrap();
            }),
            "merges.txt",
        ),
        (
            "a missing VAE config",
            Box::new(|m: &Path| {
                std::fs::remove_file(m.join("vae/config.json")).unwrap();
            }),
            "vae",
        ),
        (
            "a model_index of garbage",
            Box::new(|m: &Path| {
                std::fs::write(m.join("model_index.json"), b"\x00\x01binary").unwrap();
            }),
            "model_index.json",
        ),
    ];
    for (index, (name, damage, needle)) in cases.into_iter().enumerate() {
        let model = damaged_sd15(&ws, &format!("sd15-{index}"), damage);
        let output = ws.run(&generate(&model, &["--out", &out]), None);
        ws.check(name, &output, Expect::Failure, needle);
        assert!(!ws.path("out.png").exists(), "{name}: wrote a result");
    }
}

/// A GGUF v3 header with `general.alignment` = `alignment` and no tensors.
fn gguf_with_alignment(alignment: u32) -> Vec<u8> {
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(0u64.to_le_bytes());
    bytes.extend(1u64.to_le_bytes());
    let key = b"general.alignment";
    bytes.extend((key.len() as u64).to_le_bytes());
    bytes.extend(key);
    bytes.extend(4u32.to_le_bytes());
    bytes.extend(alignment.to_le_bytes());
    bytes.resize(256, 0);
    bytes
}

#[test]
fn a_gguf_with_alignment_zero_is_refused_naming_the_key() {
    if common::parity_missing() {
        return;
    }
    let ws = Workspace::new();
    let (_keep, flux) = common::copy_model("flux-tiny-schnell");
    std::fs::remove_file(flux.join("flux1-schnell.safetensors")).expect("remove the full file");
    std::fs::write(flux.join("flux1-schnell-Q4_0.gguf"), gguf_with_alignment(0)).expect("gguf");
    let out = text(&ws.path("out.png"));
    let output = ws.run(&generate(&text(&flux), &["--out", &out]), None);
    ws.check(
        "GGUF alignment 0",
        &output,
        Expect::Failure,
        "general.alignment = 0",
    );
}

/// The CRC-32 PNG chunks carry.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = u32::MAX;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn images_as_users_have_them_work_and_bad_ones_are_named() {
    if common::parity_missing() {
        return;
    }
    let ws = Workspace::new();
    let model = text(&common::model("sd15-tiny"));
    let out = text(&ws.path("out.png"));
    let picture = image::DynamicImage::ImageRgb8(common::test_image(64, 64));
    let png_as_jpg = ws.png("holiday.jpg", &picture);
    let no_extension = ws.png("scan", &picture);
    let transparent = ws.png(
        "cutout.png",
        &image::DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
            64,
            64,
            image::Rgba([9, 9, 9, 0]),
        )),
    );
    let deep = ws.png(
        "deep.png",
        &image::DynamicImage::ImageRgb16(image::ImageBuffer::from_pixel(
            64,
            64,
            image::Rgb([60000u16, 100, 5000]),
        )),
    );
    let mask = ws.png(
        "mask.png",
        &image::DynamicImage::ImageLuma8(common::test_mask(64, 64)),
    );
    let small_mask = ws.png(
        "small-mask.png",
        &image::DynamicImage::ImageLuma8(common::test_mask(32, 32)),
    );
    let text_file = ws.file("notes.png", b"shopping list");
    let truncated = {
        let mut bytes = Vec::new();
        picture
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .expect("encode");
        ws.file("cut.png", &bytes[..bytes.len() / 3])
    };
    let huge = {
        // A PNG header that claims 100000 x 100000 pixels.
        let mut bytes = Vec::new();
        image::DynamicImage::new_luma8(1, 1)
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .expect("encode");
        bytes[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        ws.file("bomb.png", &bytes)
    };
    let cases: Vec<(&str, Vec<&str>, Expect, &str)> = vec![
        (
            "a PNG named .jpg",
            generate(&model, &["--init", &png_as_jpg, "--out", &out]),
            Expect::Works,
            "wrote",
        ),
        (
            "an image without extension",
            generate(&model, &["--init", &no_extension, "--out", &out]),
            Expect::Works,
            "wrote",
        ),
        (
            "a transparent image",
            generate(&model, &["--init", &transparent, "--out", &out]),
            Expect::Works,
            "laid on white",
        ),
        (
            "a 16-bit image",
            generate(&model, &["--init", &deep, "--out", &out]),
            Expect::Works,
            "wrote",
        ),
        (
            "a huge feather",
            generate(
                &model,
                &[
                    "--init",
                    &no_extension,
                    "--mask",
                    &mask,
                    "--feather",
                    "4294967295",
                    "--out",
                    &out,
                ],
            ),
            Expect::Works,
            "wrote",
        ),
        (
            "no --out: the outputs folder",
            generate(&model, &[]),
            Expect::Works,
            "00002-0.png",
        ),
        (
            "an init image of text",
            generate(&model, &["--init", &text_file, "--out", &out]),
            Expect::Failure,
            "notes.png",
        ),
        (
            "a truncated init image",
            generate(&model, &["--init", &truncated, "--out", &out]),
            Expect::Failure,
            "cut.png",
        ),
        (
            "a decompression bomb",
            generate(&model, &["--init", &huge, "--out", &out]),
            Expect::Failure,
            "scale it down",
        ),
        (
            "a mask of text",
            generate(
                &model,
                &["--init", &png_as_jpg, "--mask", &text_file, "--out", &out],
            ),
            Expect::Failure,
            "notes.png",
        ),
        (
            "a missing init image",
            generate(&model, &["--init", "/no/such.png", "--out", &out]),
            Expect::Failure,
            "/no/such.png",
        ),
        (
            "a mask of another size",
            generate(
                &model,
                &["--init", &png_as_jpg, "--mask", &small_mask, "--out", &out],
            ),
            Expect::Usage,
            "mask",
        ),
        (
            "a width not a multiple of 8",
            generate_bare(&model, &["--steps", "2", "--width", "65", "--out", &out]),
            Expect::Usage,
            "multiple of 8",
        ),
        (
            "a side beyond the limit",
            generate_bare(
                &model,
                &["--steps", "2", "--width", "100000", "--out", &out],
            ),
            Expect::Usage,
            "100000",
        ),
        (
            "zero steps",
            generate_bare(&model, &["--steps", "0", "--width", "64", "--out", &out]),
            Expect::Usage,
            "steps",
        ),
        (
            "guidance that is not a number",
            generate(&model, &["--guidance", "NaN", "--out", &out]),
            Expect::Usage,
            "guidance",
        ),
        (
            "an empty prompt",
            vec![
                "generate", "--model", &model, "--prompt", " ", "--device", "cpu", "--out", &out,
            ],
            Expect::Usage,
            "prompt",
        ),
        (
            "strength beyond 1",
            generate(
                &model,
                &["--init", &png_as_jpg, "--strength", "5", "--out", &out],
            ),
            Expect::Usage,
            "strength",
        ),
        (
            "a model folder that is missing",
            generate("/no/such/model", &["--out", &out]),
            Expect::Failure,
            "/no/such/model",
        ),
    ];
    for (name, args, expect, needle) in cases {
        let output = ws.run(&args, None);
        ws.check(name, &output, expect, needle);
        if expect != Expect::Works {
            continue;
        }
        let written = if args.contains(&"--out") {
            ws.path("out.png")
        } else {
            ws.path("outputs/00002-0.png")
        };
        let result = image::open(&written).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((result.width(), result.height()), (64, 64), "{name}");
    }
}
