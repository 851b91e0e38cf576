//! `easel download` and `easel models`: the catalog on the command line, downloads with
//! progress on stderr.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use anyhow::Context;

use crate::console::{note, out};
use crate::progress::{Progress, Unit};

use easel_engine::device::{self, Precision};
use easel_engine::engine::memory::system_memory_bytes;
use easel_engine::hub::catalog::{self, CatalogEntry};
use easel_engine::hub::fit::{self, format_gb, Verdict};
use easel_engine::hub::{self, CacheRoots, Downloaded, HubClient, ModelRef};
use easel_engine::settings::{self, Settings};

/// Where models are looked for: Easel's folder, then the user's hub cache.
pub fn cache_roots(settings: &Settings) -> CacheRoots {
    CacheRoots::with_user_cache(&settings.models_dir)
}

/// The device the engine would run on, as the engine picks it and its precision.
struct RunTarget {
    /// "cpu", "cuda:0", "metal:0".
    name: String,
    /// Memory a model can use there now, where known.
    free_bytes: Option<u64>,
    /// What each residency mode holds weights in there.
    precision: Precision,
    /// Whether weights load in 16 bits in the configured mode (so downloads take fp16 files).
    half_precision: bool,
}

impl RunTarget {
    /// Opens the configured device (the CPU if it cannot be opened) and resolves the dtype
    /// setting on it the way the engine does.
    fn of(settings: &Settings) -> Self {
        let device = device::open(settings.device).unwrap_or(candle_core::Device::Cpu);
        let precision = Precision::on(&device, settings::dtype_of(settings.dtype));
        Self {
            name: device::describe(&device),
            free_bytes: fit::free_bytes(
                device::device_memory_bytes(&device),
                system_memory_bytes(),
            ),
            precision,
            half_precision: precision.in_mode(settings.low_memory) != candle_core::DType::F32,
        }
    }
}

/// The folder to open for `--model`: a folder as given, else a catalog id or a hub
/// repository found on disk (never fetched here).
pub fn model_folder(name: &str, settings: &Settings) -> anyhow::Result<PathBuf> {
    let path = PathBuf::from(name);
    if path.is_dir() {
        return Ok(path);
    }
    Ok(hub::model_folder(name, &cache_roots(settings))?)
}

/// `easel download NAME`: fetches a catalog model or a diffusers repository.
pub fn download(name: &str, settings: &Settings) -> anyhow::Result<ExitCode> {
    let model = ModelRef::parse(name)?;
    let client = HubClient::from_environment()?;
    let roots = cache_roots(settings);
    let fp16 = RunTarget::of(settings).half_precision;
    if let ModelRef::Catalog(entry) = model {
        let bytes = entry.approx_download_bytes(fp16);
        note!(
            "{}: about {} from {} ({})",
            entry.name,
            format_gb(bytes),
            entry.repo,
            entry.licence
        );
    }
    let mut bar = Progress::new(Unit::Bytes);
    let cancel = AtomicBool::new(false);
    let outcome = hub::download(model, &client, &roots, fp16, &cancel, &mut |progress| {
        let file = format!(
            "file {}/{} {}",
            (progress.files_done + 1).min(progress.files_total),
            progress.files_total,
            progress.file
        );
        bar.update(progress.bytes_done, progress.bytes_total, &file);
    })
    .with_context(|| format!("downloading {name}"))?;
    bar.finish();
    let located = outcome.located();
    let how = match &outcome {
        Downloaded::Fetched(_) => "downloaded and checked",
        Downloaded::InUserCache(_) => "already in your Hugging Face cache; nothing downloaded",
        Downloaded::Unchecked(_) => {
            "already downloaded (the hub is unreachable, so not re-checked)"
        }
    };
    note!("{name}: {how}");
    out!("{}", located.folder.display())?;
    Ok(ExitCode::SUCCESS)
}

/// `easel models`: every catalog entry, where it is, its size and whether it fits.
pub fn list(settings: &Settings) -> anyhow::Result<ExitCode> {
    let roots = cache_roots(settings);
    let target = RunTarget::of(settings);
    let name = |dtype: candle_core::DType| format!("{dtype:?}").to_lowercase();
    out!(
        "# {}, {} free; sizes at each model's default size, weights in {} (low-memory {})",
        target.name,
        target.free_bytes.map_or("unknown".to_string(), format_gb),
        name(target.precision.full),
        name(target.precision.staged),
    )?;
    for entry in catalog::entries() {
        out!("{}", describe_entry(entry, &roots, &target))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn describe_entry(entry: &'static CatalogEntry, roots: &CacheRoots, target: &RunTarget) -> String {
    let estimate = fit::estimate(
        entry,
        target.precision,
        entry.defaults.width_px,
        entry.defaults.height_px,
    );
    let verdict = Verdict::of(&estimate, target.free_bytes);
    let place = match hub::locate(ModelRef::Catalog(entry), roots) {
        Some(found) if found.in_user_cache => {
            format!("in your Hugging Face cache ({})", found.snapshot.display())
        }
        Some(found) => format!("downloaded ({})", found.folder.display()),
        None => "not downloaded".to_string(),
    };
    format!(
        "{:<18} {}\n    {} | {} | download {} | needs {} (low-memory {}): {}{}\n    {}",
        entry.id,
        entry.name,
        entry.capabilities.describe(),
        place,
        format_gb(entry.approx_download_bytes(target.half_precision)),
        format_gb(estimate.full_bytes),
        format_gb(estimate.staged_bytes),
        verdict.describe(),
        if entry.gated {
            " | gated: needs a token"
        } else {
            ""
        },
        entry.licence,
    )
}
