//! Command-line parsing and the headless commands.

use std::io::Write;

use crate::console::{note, out};
use crate::progress::{Progress, Unit};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use easel_engine::bench::{Architecture, BenchModel, BenchOptions};
use easel_engine::engine::{Engine, EngineConfig, Event};
use easel_engine::families::ModelInfo;
use easel_engine::image_file::{read_mask_file, read_rgb_image};
use easel_engine::output::{save_new_result, save_png_with_parameters};

pub use crate::cli_checks::UsageError;
use easel_engine::pipeline::outpaint::{extend_canvas, Extend, ExtendFill};
use easel_engine::pipeline::request::{
    Adapter, GenerateRequest, InpaintArea, InpaintOptions, Reference, SourceImage,
    DEFAULT_MASK_PADDING_PX,
};
use easel_engine::replay::{ParityCase, IMAGE_TOLERANCE, LATENT_TOLERANCE};
use easel_engine::schedulers::SamplerKind;
use easel_engine::settings;

/// Easel: generate and edit images with local diffusion models.
#[derive(Debug, Parser)]
#[command(name = "easel", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Device: auto, cpu, cuda, cuda:N or metal (setting `device`).
    #[arg(long, global = true, help_heading = "Global options")]
    device: Option<String>,
    /// Weight precision: auto, f32, f16 or bf16 (setting `dtype`).
    #[arg(long, global = true, help_heading = "Global options")]
    dtype: Option<String>,
    /// Where models are found (setting `models_dir`).
    #[arg(long, global = true, help_heading = "Global options")]
    models_dir: Option<String>,
    /// Where results are saved (setting `outputs_dir`).
    #[arg(long, global = true, help_heading = "Global options")]
    outputs_dir: Option<String>,
    /// Any setting, as KEY=VALUE (repeatable); `easel config` lists the keys.
    #[arg(
        long = "set",
        global = true,
        value_name = "KEY=VALUE",
        help_heading = "Global options"
    )]
    set: Vec<String>,
}

impl Cli {
    /// The settings given as flags, as `(key, value)`.
    fn setting_flags(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut flags = Vec::new();
        for (key, value) in [
            ("device", &self.device),
            ("dtype", &self.dtype),
            ("models_dir", &self.models_dir),
            ("outputs_dir", &self.outputs_dir),
        ] {
            if let Some(value) = value {
                flags.push((key.to_string(), value.clone()));
            }
        }
        for pair in &self.set {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| UsageError(format!("--set {pair:?}: write it as KEY=VALUE")))?;
            flags.push((key.trim().to_string(), value.trim().to_string()));
        }
        Ok(flags)
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate one image (txt2img; img2img with --init; inpaint with --init and --mask).
    Generate(Box<GenerateArgs>),
    /// Replay a parity case and compare with its golden; exits 1 beyond tolerance.
    Replay(ReplayArgs),
    /// Measure load, step and decode times and memory, full and staged (see README).
    Bench(BenchArgs),
    /// Download a catalog model (`easel models` lists them) or a diffusers repository
    /// (org/name) into the models folder; resumes what a cut download left.
    Download {
        /// A catalog id (sd15, sdxl, flux-schnell, ...) or a hub repository.
        model: String,
    },
    /// List the catalog: what each model does, whether it is downloaded, its size and
    /// whether it fits this device.
    Models,
    /// Print every setting with where its value came from (flag, env, file, default).
    Config {
        /// Print only the settings file's path.
        #[arg(long)]
        path: bool,
    },
}

#[derive(Debug, clap::Args)]
struct GenerateArgs {
    /// A catalog id (`easel models`), a downloaded hub repository (org/name), or a model
    /// folder: Stable Diffusion in the diffusers layout, or FLUX.1 as its hub repo ships it.
    #[arg(long)]
    model: String,
    /// What to draw.
    #[arg(long)]
    prompt: String,
    /// What to avoid.
    #[arg(long)]
    negative: Option<String>,
    /// Init image for img2img and inpainting.
    #[arg(long)]
    init: Option<PathBuf>,
    /// An edit reference (repeatable, in the order the prompt refers to them), for models
    /// that edit with references.
    #[arg(long = "reference", value_name = "IMG")]
    references: Vec<PathBuf>,
    /// A LoRA file and its scale, as FILE or FILE:SCALE (repeatable), for models that take
    /// LoRA.
    #[arg(long = "lora", value_name = "FILE[:SCALE]")]
    loras: Vec<String>,
    /// Inpainting mask (white repaints), the init image's size.
    #[arg(long, requires = "init")]
    mask: Option<PathBuf>,
    /// Blur of the mask's edge in pixels, so the repainted region blends in (at most the
    /// image's longer side).
    #[arg(long, default_value_t = 0)]
    feather: u32,
    /// How much to change the init image, 0 to 1 (default 0.75; 1 with --extend).
    #[arg(long)]
    strength: Option<f64>,
    /// Inpainting: auto (the masked area when the image is larger than the model's native
    /// size), masked (a box around the mask, painted at the model's native pixel count and
    /// blended back) or whole.
    #[arg(long, value_parser = InpaintArea::parse, default_value = "auto")]
    inpaint_area: InpaintArea,
    /// Context around the mask's box when the masked area is painted, in pixels.
    #[arg(long, default_value_t = DEFAULT_MASK_PADDING_PX)]
    mask_padding: u32,
    /// Keep the repaint's colours as generated instead of matching them to the pixels
    /// around the mask.
    #[arg(long)]
    no_colour_match: bool,
    /// Outpaint: grow the init image's canvas by L,T,R,B pixels and paint the new area (the
    /// original pixels are kept).
    #[arg(long, value_name = "L,T,R,B", value_parser = Extend::parse, requires = "init")]
    extend: Option<Extend>,
    /// What the new area starts as: edge (the border's colours stretched and blurred) or
    /// noise.
    #[arg(long, value_parser = ExtendFill::parse, default_value = "edge")]
    extend_fill: ExtendFill,
    /// Denoising steps (default: setting `steps`; FLUX: 4 schnell, 28 dev).
    #[arg(long)]
    steps: Option<usize>,
    /// Classifier-free guidance scale, 0 or 1 disables it (default: setting `guidance`);
    /// FLUX dev: the distilled guidance (default 3.5); schnell ignores it.
    #[arg(long)]
    guidance: Option<f64>,
    /// FLUX: T5 tokens the prompt is padded to (default 256 schnell, 512 dev).
    #[arg(long)]
    max_sequence_length: Option<usize>,
    /// euler, euler_a, ddim, dpmpp_2m or dpmpp_2m_karras (default: setting `sampler`).
    #[arg(long, value_parser = parse_sampler)]
    scheduler: Option<SamplerKind>,
    /// Noise seed; the same seed and parameters give the same image.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Width in pixels, 64 to 4096: a multiple of 8 for Stable Diffusion (SD 1.x, 2.x, SDXL),
    /// of 16 for FLUX; default: the init image's size, else the model's (512 SD 1.5, 768
    /// SD 2.x, 1024 SDXL and FLUX).
    #[arg(long)]
    width: Option<u32>,
    /// Height in pixels, as --width.
    #[arg(long)]
    height: Option<u32>,
    /// Keep the raw decode outside the mask instead of pasting the original back.
    #[arg(long)]
    no_paste_back: bool,
    /// Print per-stage timings after the run.
    #[arg(long)]
    timings: bool,
    /// Where to write the PNG (a new file or one to replace, never the init image or mask);
    /// default: the next numbered file in the outputs folder.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct ReplayArgs {
    /// The case's JSON file (its .safetensors beside it).
    case: PathBuf,
    /// The folder holding the case's model folders.
    #[arg(long)]
    models: PathBuf,
    /// Where to write Easel's image for a look.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// sd15, sdxl, flux or flux2-klein (random weights of the real architecture, FLUX.1 dev
    /// and FLUX.2 [klein] 4B at reduced depth, built once and cached), or a model folder.
    #[arg(long, default_value = "sd15")]
    model: String,
    /// Output side in pixels (square, a multiple of 8; 16 for FLUX).
    #[arg(long, default_value_t = 256)]
    size: u32,
    /// Denoising steps per job.
    #[arg(long, default_value_t = 2)]
    steps: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Where random-weight models are kept (default: `bench` in the models folder).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Edit-reference counts to run a job each with, e.g. `0,1,2,4` (the default for models
    /// that edit with references; `none` runs no such job).
    #[arg(long, value_parser = parse_reference_counts)]
    references: Option<ReferenceCounts>,
    /// Time the canvas instead: brush strokes, zooms and pans on a large image (no model).
    #[arg(long)]
    canvas: bool,
    /// The canvas benchmark's image side in pixels.
    #[arg(long, default_value_t = 8192, requires = "canvas")]
    canvas_size: u32,
    /// Time only the bare denoiser forward (`max(steps, 3)` of them), for profiling; with
    /// `EASEL_OP_TIMES=1` each op's time follows on stderr.
    #[arg(long, conflicts_with = "canvas")]
    forward_only: bool,
}

/// The `--references` of `easel bench`.
#[derive(Debug, Clone)]
struct ReferenceCounts(Vec<usize>);

fn parse_reference_counts(text: &str) -> Result<ReferenceCounts, String> {
    if text == "none" {
        return Ok(ReferenceCounts(Vec::new()));
    }
    text.split(',')
        .map(|count| {
            count
                .trim()
                .parse::<usize>()
                .map_err(|_| format!("{count:?} is not a count: give counts like 0,1,2,4 or none"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(ReferenceCounts)
}

/// `FILE` (scale 1) or `FILE:SCALE` as a LoRA adapter.
fn parse_lora(text: &str) -> Result<Adapter, UsageError> {
    let (file, scale) = match text.rsplit_once(':') {
        Some((file, scale)) if scale.parse::<f64>().is_ok() => {
            (file, scale.parse::<f64>().unwrap_or(1.0))
        }
        _ => (text, 1.0),
    };
    let file = PathBuf::from(file);
    if !file.is_file() {
        return Err(UsageError(format!(
            "--lora {text}: {} is not a file",
            file.display()
        )));
    }
    Ok(Adapter::Lora { file, scale })
}

fn parse_sampler(name: &str) -> Result<SamplerKind, String> {
    SamplerKind::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = SamplerKind::ALL.iter().map(|k| k.name()).collect();
        format!(
            "unknown scheduler {name:?}; use one of {}",
            names.join(", ")
        )
    })
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let flags = cli.setting_flags()?;
    let resolved = settings::resolve_from_process(&flags);
    if let Some(Command::Config { path }) = &cli.command {
        return print_config(&resolved, *path);
    }
    let data_dir = crate::ui::AppPaths::from_settings(&resolved.settings).data_dir;
    crate::logging::init(&resolved.settings, &data_dir);
    // Bad settings never stop Easel: each has fallen back; say so once.
    for problem in &resolved.problems {
        tracing::warn!("settings: {problem}");
    }
    let engine = EngineConfig {
        device: resolved.settings.device,
        dtype: settings::dtype_of(resolved.settings.dtype),
        warm_up: resolved.settings.warm_up,
        residency: resolved.settings.residency_policy(),
        staged: resolved.settings.low_memory,
        ..Default::default()
    };
    match cli.command {
        Some(Command::Generate(args)) => generate(*args, engine, &resolved.settings),
        // Exit 1 means the outputs differ; 2 that the case could not be run at all.
        Some(Command::Replay(args)) => replay(args).or_else(|error| {
            note!("easel: the case could not be replayed: {error:#}");
            Ok(ExitCode::from(2))
        }),
        Some(Command::Bench(args)) => bench(args, engine, &resolved.settings),
        Some(Command::Download { model }) => {
            crate::cli_models::download(&model, &resolved.settings)
        }
        Some(Command::Models) => crate::cli_models::list(&resolved.settings),
        Some(Command::Config { .. }) => Ok(ExitCode::SUCCESS),
        None => {
            let paths = crate::ui::AppPaths::from_settings(&resolved.settings);
            let resolve = Box::new(move || settings::resolve_from_process(&flags));
            crate::ui::run_window(paths, engine, resolve)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `easel bench`: the table (or JSON) on stdout, progress on stderr.
fn bench(
    args: BenchArgs,
    config: EngineConfig,
    settings: &settings::Settings,
) -> anyhow::Result<ExitCode> {
    if args.canvas {
        if !(64..=16384).contains(&args.canvas_size) {
            return Err(UsageError(format!(
                "--canvas-size {}: give a side from 64 to 16384 pixels",
                args.canvas_size
            ))
            .into());
        }
        let report = crate::ui::canvas::bench::run(args.canvas_size);
        if args.json {
            out!("{}", serde_json::to_string_pretty(&report)?)?;
        } else {
            out!("{}", report.table())?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let model = match Architecture::from_name(&args.model) {
        Some(architecture) => BenchModel::Architecture(architecture),
        None if Path::new(&args.model).is_dir() => BenchModel::Folder(PathBuf::from(&args.model)),
        None => bail!(
            "--model {:?}: give sd15, sdxl, flux, flux2-klein or a diffusers model folder",
            args.model
        ),
    };
    let options = BenchOptions {
        model,
        size_px: args.size,
        steps: args.steps,
        device: config.device,
        dtype: config.dtype,
        cache_dir: args
            .cache
            .unwrap_or_else(|| settings.models_dir.join("bench")),
        reference_counts: args.references.map(|counts| counts.0),
    };
    let started = std::time::Instant::now();
    if args.forward_only {
        let report = easel_engine::bench::forward_only(&options, &mut |phase| {
            note!("[{:>6.1}s] {phase}", started.elapsed().as_secs_f64());
        })
        .context("the benchmark failed")?;
        if args.json {
            out!("{}", serde_json::to_string_pretty(&report)?)?;
        } else {
            out!("{}", report.line())?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let report = easel_engine::bench::run(&options, &mut |phase| {
        note!("[{:>6.1}s] {phase}", started.elapsed().as_secs_f64());
    })
    .context("the benchmark failed")?;
    if args.json {
        out!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        std::io::stdout()
            .write_all(report.table().as_bytes())
            .and_then(|()| std::io::stdout().flush())
            .context("could not write to standard output; is it closed or full?")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `easel config`: every key, its value and its source; then the problems.
fn print_config(resolved: &settings::Resolved, path_only: bool) -> anyhow::Result<ExitCode> {
    if path_only {
        out!("{}", resolved.file.display())?;
        return Ok(ExitCode::SUCCESS);
    }
    out!("# settings file: {}", resolved.file.display())?;
    for (key, source) in &resolved.sources {
        let value = resolved.settings.get(key);
        out!("{key:<18} = {:<28} # {source}", format!("{value:?}"))?;
    }
    for problem in &resolved.problems {
        out!("# problem: {problem}")?;
    }
    Ok(ExitCode::SUCCESS)
}

fn load_rgb(path: &Path) -> anyhow::Result<image::RgbImage> {
    let (image, notes) = read_rgb_image(path).map_err(anyhow::Error::msg)?;
    for text in notes {
        note!("note: {text}");
    }
    Ok(image)
}

fn generate(
    args: GenerateArgs,
    config: EngineConfig,
    defaults: &settings::Settings,
) -> anyhow::Result<ExitCode> {
    // Where the result goes is settled before anything is read or loaded.
    if let Some(out) = &args.out {
        let sources: Vec<(&str, &Path)> = [("--init", &args.init), ("--mask", &args.mask)]
            .into_iter()
            .filter_map(|(flag, path)| path.as_deref().map(|p| (flag, p)))
            .collect();
        crate::cli_checks::check_out_path(out, &sources)?;
    }
    if let Some(message) = crate::cli_checks::single_file_message(Path::new(&args.model)) {
        return Err(UsageError(message).into());
    }
    let source = match &args.init {
        Some(init) => {
            let image = load_rgb(init)?;
            let mask = args
                .mask
                .as_deref()
                .map(|m| read_mask_file(m).map_err(anyhow::Error::msg))
                .transpose()?;
            Some(match args.extend.filter(|e| !e.is_empty()) {
                Some(extend) => {
                    if let Some(mask) = mask
                        .as_ref()
                        .filter(|m| m.dimensions() != image.dimensions())
                    {
                        return Err(UsageError(format!(
                            "--mask is {}x{} but --init is {}x{}: with --extend the mask covers the init image",
                            mask.width(), mask.height(), image.width(), image.height()
                        ))
                        .into());
                    }
                    let (image, mask) =
                        extend_canvas(&image, mask.as_ref(), extend, args.extend_fill, args.seed);
                    SourceImage {
                        image,
                        strength: args.strength.unwrap_or(1.0),
                        mask: Some(mask),
                        feather_px: args.feather,
                    }
                }
                None => SourceImage {
                    image,
                    strength: args.strength.unwrap_or(0.75),
                    mask,
                    feather_px: args.feather,
                },
            })
        }
        None => None,
    };
    let mut references: Vec<Reference> = source.map(Reference::Init).into_iter().collect();
    for path in &args.references {
        references.push(Reference::Edit {
            image: load_rgb(path)?,
            name: path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            ),
        });
    }
    let adapters = args
        .loras
        .iter()
        .map(|text| parse_lora(text))
        .collect::<Result<Vec<_>, _>>()?;
    let model = crate::cli_models::model_folder(&args.model, defaults)?;
    // A model that runs only as its defaults say (a catalog model, FLUX's distilled ones)
    // takes them; other models take the user's settings.
    let info = ModelInfo::read(&model)?;
    let (default_steps, default_guidance, default_sampler) = if info.wants_its_defaults {
        (
            info.defaults.steps,
            info.defaults.guidance,
            info.defaults.sampler,
        )
    } else {
        (defaults.steps, defaults.guidance, defaults.sampler)
    };
    let request = GenerateRequest {
        model,
        prompt: args.prompt.clone(),
        negative_prompt: args.negative.clone(),
        sampler: args.scheduler.unwrap_or(default_sampler),
        steps: args.steps.unwrap_or(default_steps),
        guidance: args.guidance.unwrap_or(default_guidance),
        max_sequence_length: args.max_sequence_length,
        seed: args.seed,
        width: args.width,
        height: args.height,
        references,
        adapters,
        paste_back: !args.no_paste_back,
        inpaint: InpaintOptions {
            area: args.inpaint_area,
            mask_padding_px: args.mask_padding,
            match_colours: !args.no_colour_match,
        },
    };
    // Checked against the model's configs before the engine starts (no weights load): what
    // the model cannot take is a command line to change.
    let opened = easel_engine::families::open(
        &request.model,
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
    )?;
    // A masked-area inpaint runs on its crop: that is what the model must take.
    easel_engine::families::plan_as_run(opened.as_ref(), &request)
        .map_err(|e| UsageError(format!("{e}")))?;
    drop(opened);
    let engine = Engine::spawn(config, Arc::new(|| {}))?;

    let job = engine.generate(request)?;
    let mut steps: Option<Progress> = None;
    loop {
        let event = engine
            .events()
            .recv()
            .context("the engine stopped before the job ended")?;
        match event {
            Event::Loading {
                component,
                progress,
                ..
            } => {
                let state = if progress < 1.0 { "loading" } else { "loaded" };
                note!("{state} {component}");
            }
            Event::Step {
                step, of, elapsed, ..
            } => {
                let per_step = elapsed.as_secs_f64() / step as f64;
                let timing = format!(
                    "{per_step:.2} s/step  {:.0} s left",
                    per_step * (of - step) as f64
                );
                steps
                    .get_or_insert_with(|| Progress::new(Unit::Steps))
                    .update(step as u64, of as u64, &timing);
            }
            Event::Finished {
                job: done,
                mut output,
            } if done == job => {
                if let Some(bar) = &steps {
                    bar.finish();
                }
                if let Some(cut) = &output.prompt_cut_off {
                    note!("note: the prompt was cut at 77 tokens; ignored: {cut:?}");
                }
                let started = std::time::Instant::now();
                let written = match &args.out {
                    Some(out) => save_png_with_parameters(out, &output.image, &output.parameters)
                        .map(|()| out.clone())?,
                    None => {
                        save_new_result(&defaults.outputs_dir, &output.image, &output.parameters)?
                    }
                };
                output.timings.push("save", started.elapsed());
                note!("wrote {}", written.display());
                if args.timings {
                    for (stage, took) in &output.timings.stages {
                        out!("{stage:<20} {:>9.3} s", took.as_secs_f64())?;
                    }
                    out!(
                        "{:<20} {:>9.3} s",
                        "total",
                        output.timings.total().as_secs_f64()
                    )?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            Event::OutOfMemory {
                strategy,
                retrying_with: Some(next),
                ..
            } => {
                let text = format!(
                    "out of memory in {} mode; retrying in {} mode",
                    strategy.describe(),
                    next.describe()
                );
                match &steps {
                    Some(bar) => bar.say(&text),
                    None => note!("{text}"),
                }
            }
            Event::Failed { job: done, error } if done == job => bail!(error),
            Event::Cancelled { job: done } if done == job => bail!("the job was cancelled"),
            _ => {}
        }
    }
}

fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let case = ParityCase::load(&args.case)?;
    let report = case
        .run(&args.models, &candle_core::Device::Cpu)
        .with_context(|| format!("replaying {}", args.case.display()))?;
    out!("case {}", report.name)?;
    for (index, diff) in report.step_max_diffs.iter().enumerate() {
        let verdict = if *diff <= LATENT_TOLERANCE {
            "ok"
        } else {
            "FAIL"
        };
        out!(
            "  step {:>2} latents max |diff| {diff:.3e} {verdict}",
            index + 1
        )?;
    }
    let verdict = if report.image_max_diff <= IMAGE_TOLERANCE {
        "ok"
    } else {
        "FAIL"
    };
    out!("  image max |diff| {:.3e} {verdict}", report.image_max_diff)?;
    out!(
        "  tolerance: image {IMAGE_TOLERANCE:e}, latents {LATENT_TOLERANCE:e}; took {:.2} s",
        report.elapsed.as_secs_f64()
    )?;
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("could not create {}", dir.display()))?;
        let path = dir.join(format!("{}.png", report.name));
        report
            .image
            .save(&path)
            .with_context(|| format!("could not write {}", path.display()))?;
    }
    if report.passed() {
        out!("PASS")?;
        Ok(ExitCode::SUCCESS)
    } else {
        out!("FAIL")?;
        Ok(ExitCode::FAILURE)
    }
}
