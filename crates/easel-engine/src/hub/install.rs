//! A model on disk: finding a catalog entry or a hub repository in the cache roots (no
//! network), downloading what is missing, and the model folder the engine opens.
//!
//! A catalog model's folder is assembled in `models_dir/catalog/<id>` from links: to the
//! snapshot's files, wherever it is (Easel's folder or the user's hub cache, which is never
//! written to), and to the files borrowed from other repositories (tokenizers, GGUF).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use super::cache::{link_file, CacheRoots, RepoFolder};
use super::catalog::{self, CatalogEntry};
use super::download::{pick_path, DownloadProgress, HubClient, RepoListing, RepoPlan};
use super::error::HubError;

/// What a name on the command line or in a request refers to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ModelRef<'a> {
    /// A catalog entry.
    Catalog(&'static CatalogEntry),
    /// Any diffusers repository on the hub, `org/name`.
    Repo(&'a str),
}

impl<'a> ModelRef<'a> {
    /// A catalog id or repository, else `UnknownModel`.
    pub fn parse(name: &'a str) -> Result<Self, HubError> {
        if let Some(entry) = catalog::find(name) {
            return Ok(ModelRef::Catalog(entry));
        }
        let is_repo =
            name.split('/').count() == 2 && !name.starts_with('/') && !name.ends_with('/');
        if is_repo {
            Ok(ModelRef::Repo(name))
        } else {
            Err(HubError::UnknownModel {
                name: name.to_string(),
            })
        }
    }

    fn repo(&self) -> &str {
        match self {
            ModelRef::Catalog(entry) => entry.repo,
            ModelRef::Repo(repo) => repo,
        }
    }

    fn revision(&self) -> &str {
        match self {
            ModelRef::Catalog(entry) => entry.revision,
            ModelRef::Repo(_) => "main",
        }
    }

    fn display_name(&self) -> String {
        match self {
            ModelRef::Catalog(entry) => entry.name.to_string(),
            ModelRef::Repo(repo) => repo.to_string(),
        }
    }

    fn download_id(&self) -> &str {
        match self {
            ModelRef::Catalog(entry) => entry.id,
            ModelRef::Repo(repo) => repo,
        }
    }
}

/// Where a model was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The folder the engine opens.
    pub folder: PathBuf,
    /// The main repository's snapshot.
    pub snapshot: PathBuf,
    /// Whether the snapshot is in the user's own hub cache rather than Easel's folder.
    pub in_user_cache: bool,
}

/// How a download ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Downloaded {
    /// Every file is now in Easel's folder (fetched, or found intact and checked).
    Fetched(Located),
    /// Already complete in the user's hub cache; nothing was fetched.
    InUserCache(Located),
    /// Already complete in Easel's folder, but the hub could not be reached to check it.
    Unchecked(Located),
}

impl Downloaded {
    /// Where the model is.
    pub fn located(&self) -> &Located {
        match self {
            Downloaded::Fetched(l) | Downloaded::InUserCache(l) | Downloaded::Unchecked(l) => l,
        }
    }
}

/// The model's folder if every file it needs is on disk; no network.
pub fn locate(model: ModelRef<'_>, roots: &CacheRoots) -> Option<Located> {
    match model {
        ModelRef::Catalog(entry) => locate_entry(entry, roots),
        ModelRef::Repo(repo) => {
            let (snapshot, in_user_cache) =
                find_snapshot(roots, repo, "main", &["model_index.json"])?;
            Some(Located {
                folder: snapshot.clone(),
                snapshot,
                in_user_cache,
            })
        }
    }
}

/// The folder to open for `name` (a catalog id or a repository), else a "download first"
/// error. No network.
pub fn model_folder(name: &str, roots: &CacheRoots) -> Result<PathBuf, HubError> {
    let model = ModelRef::parse(name)?;
    locate(model, roots)
        .map(|l| l.folder)
        .ok_or_else(|| not_downloaded(model))
}

fn not_downloaded(model: ModelRef<'_>) -> HubError {
    HubError::NotDownloaded {
        model: model.display_name(),
        id: model.download_id().to_string(),
    }
}

/// Fetches what `model` lacks into `roots.models_dir`, unless it is complete in the user's
/// hub cache. `prefer_fp16` picks the half-precision files where a repository has them.
pub fn download(
    model: ModelRef<'_>,
    client: &HubClient,
    roots: &CacheRoots,
    prefer_fp16: bool,
    cancel: &AtomicBool,
    on_progress: &mut dyn FnMut(&DownloadProgress),
) -> Result<Downloaded, HubError> {
    let on_disk = locate(model, roots);
    if let Some(found) = on_disk.clone().filter(|l| l.in_user_cache) {
        return Ok(Downloaded::InUserCache(found));
    }
    let plans = match (plan(model, client, prefer_fp16), on_disk) {
        (Ok(plans), _) => plans,
        (Err(HubError::Unreachable { .. }), Some(found)) => {
            return Ok(Downloaded::Unchecked(found))
        }
        (Err(error), _) => return Err(error),
    };
    client.fetch(&plans, &roots.models_dir, cancel, on_progress)?;
    let only_ours = CacheRoots::only(&roots.models_dir);
    let found = locate(model, &only_ours).ok_or_else(|| not_downloaded(model))?;
    Ok(Downloaded::Fetched(found))
}

/// Lists the repositories and picks the files to fetch.
fn plan(
    model: ModelRef<'_>,
    client: &HubClient,
    prefer_fp16: bool,
) -> Result<Vec<RepoPlan>, HubError> {
    let listing = client.list(model.repo(), model.revision())?;
    let ModelRef::Catalog(entry) = model else {
        let paths = diffusers_files(&listing, prefer_fp16);
        return Ok(vec![RepoPlan { listing, paths }]);
    };
    let mut paths = Vec::new();
    for file in entry.files {
        if file.is_folder() {
            // Every weight file the repository has there (shard names are the repo's own).
            let found = folder_weights(listing.files.keys().map(String::as_str), file.path);
            if found.is_empty() {
                return Err(HubError::FileNotInRepo {
                    repo: listing.repo.clone(),
                    path: format!("{}*.safetensors", file.path),
                });
            }
            paths.extend(found);
        } else {
            paths.push(pick_path(&listing, file.path_for(prefer_fp16), file.path)?);
        }
    }
    let mut plans = vec![RepoPlan { listing, paths }];
    for borrowed in entry.borrowed {
        let listing = client.list(borrowed.repo, borrowed.revision)?;
        let path = pick_path(&listing, borrowed.path, borrowed.path)?;
        plans.push(RepoPlan {
            listing,
            paths: vec![path],
        });
    }
    Ok(plans)
}

/// The snapshot of `repo` at `revision` holding `paths`, in the first root that has one.
fn find_snapshot(
    roots: &CacheRoots,
    repo: &str,
    revision: &str,
    paths: &[&str],
) -> Option<(PathBuf, bool)> {
    roots
        .all()
        .into_iter()
        .enumerate()
        .find_map(|(index, root)| {
            RepoFolder::new(root, repo)
                .snapshot_with(revision, paths)
                .map(|snapshot| (snapshot, index > 0))
        })
}

fn locate_entry(entry: &'static CatalogEntry, roots: &CacheRoots) -> Option<Located> {
    // Any snapshot that holds each file in one of its precisions will do.
    let (snapshot, in_user_cache) = roots.all().into_iter().enumerate().find_map(|(i, root)| {
        let snapshot = RepoFolder::new(root, entry.repo).snapshot_with(entry.revision, &[])?;
        let complete = entry.files.iter().all(|f| {
            if f.is_folder() {
                complete_folder(&snapshot.join(f.path)).is_some()
            } else {
                snapshot.join(f.path).is_file() || snapshot.join(f.path_for(true)).is_file()
            }
        });
        complete.then_some((snapshot, i > 0))
    })?;
    let mut links: Vec<(PathBuf, PathBuf)> = Vec::new();
    for file in entry.files.iter().filter(|f| f.is_folder()) {
        for name in complete_folder(&snapshot.join(file.path))? {
            let relative = format!("{}{name}", file.path);
            links.push((PathBuf::from(&relative), snapshot.join(&relative)));
        }
    }
    for file in entry.files.iter().filter(|f| !f.is_folder()) {
        // The half-precision file when it is all there is or the full one is missing.
        let path = [file.path, file.path_for(true)]
            .into_iter()
            .find(|p| snapshot.join(p).is_file())?;
        links.push((
            PathBuf::from(file.path_for(path != file.path)),
            snapshot.join(path),
        ));
    }
    for borrowed in entry.borrowed {
        let (borrowed_snapshot, _) =
            find_snapshot(roots, borrowed.repo, borrowed.revision, &[borrowed.path])?;
        links.push((
            PathBuf::from(borrowed.place_at),
            borrowed_snapshot.join(borrowed.path),
        ));
    }
    let folder = roots.models_dir.join("catalog").join(entry.id);
    assemble(&folder, &links).ok()?;
    Some(Located {
        folder,
        snapshot,
        in_user_cache,
    })
}

/// The weight files (`*.safetensors`, and a sharded set's `*.safetensors.index.json`) directly
/// in `folder/` among the repository's `paths`.
fn folder_weights<'a>(paths: impl Iterator<Item = &'a str>, folder: &str) -> Vec<String> {
    paths
        .filter(|p| {
            p.strip_prefix(folder).is_some_and(|name| {
                !name.contains('/')
                    && (name.ends_with(".safetensors") || name.ends_with(".safetensors.index.json"))
            })
        })
        .map(str::to_string)
        .collect()
}

/// The weight files of a downloaded folder, when it is complete: at least one safetensors,
/// and every shard a `*.safetensors.index.json` names. `None` when something is missing.
fn complete_folder(folder: &Path) -> Option<Vec<String>> {
    let names: Vec<String> = std::fs::read_dir(folder)
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".safetensors") || n.ends_with(".safetensors.index.json"))
        .collect();
    if !names.iter().any(|n| n.ends_with(".safetensors")) {
        return None;
    }
    for index in names.iter().filter(|n| n.ends_with(".index.json")) {
        let text = std::fs::read_to_string(folder.join(index)).ok()?;
        let parsed: serde_json::Value = serde_json::from_str(&text).ok()?;
        let shards = parsed.get("weight_map")?.as_object()?;
        if !shards
            .values()
            .filter_map(serde_json::Value::as_str)
            .all(|shard| folder.join(shard).is_file())
        {
            return None;
        }
    }
    Some(names)
}

/// Makes `folder/<relative>` link to each target, leaving links already right alone (a job
/// may be reading them).
fn assemble(folder: &Path, links: &[(PathBuf, PathBuf)]) -> std::io::Result<()> {
    for (relative, target) in links {
        let link = folder.join(relative);
        let target = std::path::absolute(target)?;
        if std::fs::read_link(&link).is_ok_and(|current| current == target) {
            continue;
        }
        link_file(&target, &link)?;
    }
    Ok(())
}

/// The files of a diffusers repository that Easel reads: the model index, every config,
/// the tokenizers, and one precision of each component's safetensors weights. A FLUX
/// repository's transformer and VAE weights come from its single files at the root.
pub fn diffusers_files(listing: &RepoListing, prefer_fp16: bool) -> Vec<String> {
    let paths: Vec<&str> = listing.files.keys().map(String::as_str).collect();
    let has_bfl_files = paths
        .iter()
        .any(|p| p.starts_with("flux1-") && p.ends_with(".safetensors") && !p.contains('/'));
    let folder_has_fp16 = |folder: &str| {
        paths
            .iter()
            .any(|p| p.starts_with(&format!("{folder}/")) && p.ends_with(".fp16.safetensors"))
    };
    let mut chosen = Vec::new();
    for path in &paths {
        let (folder, name) = path.rsplit_once('/').unwrap_or(("", path));
        let keep = if folder.is_empty() {
            let bfl_file = name.starts_with("flux1-") || name == "ae.safetensors";
            name == "model_index.json"
                || (has_bfl_files && bfl_file && name.ends_with(".safetensors"))
        } else if folder.contains('/') {
            false
        } else if name.ends_with(".json") && !name.contains(".fp16.") {
            !(has_bfl_files && name.ends_with(".index.json") && is_bfl_replaced(folder))
        } else if folder.starts_with("tokenizer") {
            matches!(name, "vocab.json" | "merges.txt" | "spiece.model")
        } else if name.ends_with(".safetensors") && !(has_bfl_files && is_bfl_replaced(folder)) {
            let fp16 = name.ends_with(".fp16.safetensors");
            let other_variant = !fp16 && name.split('.').count() > 2;
            !other_variant && fp16 == (prefer_fp16 && folder_has_fp16(folder))
        } else {
            false
        };
        if keep {
            chosen.push(path.to_string());
        }
    }
    chosen
}

/// The diffusers folders whose weights a FLUX repository's single files replace.
fn is_bfl_replaced(folder: &str) -> bool {
    folder == "transformer" || folder == "vae"
}
