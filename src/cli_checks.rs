//! Checks on what the command line names, made before any work: where `generate` writes its
//! result (never over its own init image or mask), and what `--model` names.

use std::path::{Path, PathBuf};

/// A command line that cannot be run as given: exit code 2, with what to change.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Checks that `out` can take a PNG: it ends in `.png`, is not a folder, its folder exists and
/// can be written, and it is none of `sources` (`(flag, path)`, the images the run reads).
/// Returns the path to write.
pub fn check_out_path(out: &Path, sources: &[(&str, &Path)]) -> Result<PathBuf, UsageError> {
    let usage = |message: String| Err(UsageError(message));
    let shown = out.display();
    if out.is_dir() {
        return usage(format!(
            "--out {shown} is a folder; give a file name in it, such as {}",
            out.join("result.png").display()
        ));
    }
    let is_png = out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if !is_png {
        return usage(format!(
            "--out {shown}: Easel writes PNG files (they carry the parameters); give a name ending in .png"
        ));
    }
    let folder = match out.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder,
        _ => Path::new("."),
    };
    if !folder.exists() {
        return usage(format!(
            "--out {shown}: the folder {} does not exist; create it first",
            folder.display()
        ));
    }
    if !folder.is_dir() {
        return usage(format!(
            "--out {shown}: {} is not a folder",
            folder.display()
        ));
    }
    if let Err(e) = tempfile::tempfile_in(folder) {
        return usage(format!(
            "--out {shown}: nothing can be written in {} ({e}); choose another folder",
            folder.display()
        ));
    }
    for (flag, source) in sources {
        if is_same_file(out, source) {
            return usage(format!(
                "--out {shown} is the {flag} image; Easel never writes over its own input, so give another file name"
            ));
        }
    }
    Ok(out.to_path_buf())
}

/// Whether `a` and `b` name one file (through links, `..` or another spelling).
fn is_same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(a), Ok(b)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return a.dev() == b.dev() && a.ino() == b.ino();
        }
    }
    let canonical = |path: &Path| {
        path.canonicalize().ok().or_else(|| {
            let folder = path.parent().filter(|p| !p.as_os_str().is_empty());
            let folder = folder
                .unwrap_or_else(|| Path::new("."))
                .canonicalize()
                .ok()?;
            Some(folder.join(path.file_name()?))
        })
    };
    matches!((canonical(a), canonical(b)), (Some(a), Some(b)) if a == b)
}

/// What a `--model` that is a single file is, and what to do instead; `None` for anything
/// else. Easel loads model folders and catalog models; single files come in a later version.
pub fn single_file_message(model: &Path) -> Option<String> {
    if !model.is_file() {
        return None;
    }
    let extension = model
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let what = match extension.as_str() {
        "safetensors" => "a single-file checkpoint (all components in one .safetensors)",
        "ckpt" | "pt" | "pth" | "bin" => {
            "a pickled PyTorch checkpoint (a format that can run code when loaded)"
        }
        "gguf" => "a GGUF quantized transformer",
        _ => "a file, not a model folder",
    };
    Some(format!(
        "--model {}: this is {what}. Easel does not load single files yet; give a diffusers \
         model folder (with model_index.json) or a catalog id (`easel models` lists them, \
         `easel download ID` fetches one). A FLUX GGUF goes in the FLUX folder beside its \
         full-precision transformer.",
        model.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_out_path_is_refused_for_each_way_it_can_be_wrong() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let init = dir.path().join("photo.png");
        std::fs::write(&init, b"png")?;
        let sources = [("--init", init.as_path())];
        let refused = |out: PathBuf, needle: &str| {
            let message = check_out_path(&out, &sources)
                .err()
                .map(|e| e.0)
                .unwrap_or_default();
            assert!(message.contains(needle), "{}: {message}", out.display());
        };
        refused(dir.path().to_path_buf(), "is a folder");
        refused(dir.path().join("result.jpg"), "ending in .png");
        refused(dir.path().join("missing/result.png"), "does not exist");
        refused(init.join("result.png"), "is not a folder");
        refused(init.clone(), "never writes over");
        refused(dir.path().join(".").join("photo.png"), "never writes over");
        let fine = dir.path().join("result.PNG");
        assert_eq!(check_out_path(&fine, &sources).ok(), Some(fine.clone()));
        Ok(())
    }

    #[test]
    fn single_files_are_named_for_what_they_are() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let checkpoint = dir.path().join("dreamshaper_8.safetensors");
        std::fs::write(&checkpoint, b"x")?;
        let message = single_file_message(&checkpoint).unwrap_or_default();
        assert!(message.contains("single-file checkpoint"), "{message}");
        assert!(!message.contains("not downloaded"), "{message}");
        assert_eq!(single_file_message(dir.path()), None);
        Ok(())
    }
}
