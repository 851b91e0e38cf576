//! The models and outputs folders as absolute paths, decided once at start. A Mac app started
//! from Finder runs in `/`, where `./models` and `./outputs` are nowhere a user can write:
//! the defaults are the working directory's `models` and `outputs` only where that directory
//! is a writable folder meant to hold them (a checkout, as with `cargo run`, or a folder that
//! already has them); otherwise the platform's data folder for models and the user's
//! Pictures folder (else the data folder) for results. A relative folder the user set is
//! taken from the working directory (flags, environment) or from the settings file's folder.

use std::path::{Path, PathBuf};

use super::{Resolved, Source};

/// The platform folders the defaults fall back to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformFolders {
    /// Easel's data folder (`~/Library/Application Support/Easel`, `~/.local/share/easel`).
    pub data_dir: PathBuf,
    /// The user's Pictures folder, if the platform names one.
    pub pictures_dir: Option<PathBuf>,
}

impl PlatformFolders {
    /// As the platform names them; the working directory's `.easel` if it names none.
    pub fn of_this_user(cwd: &Path) -> Self {
        let data_dir = directories::ProjectDirs::from("", "", "Easel")
            .map(|dirs| dirs.data_dir().to_path_buf())
            .unwrap_or_else(|| cwd.join(".easel"));
        let pictures_dir =
            directories::UserDirs::new().and_then(|dirs| dirs.picture_dir().map(Path::to_path_buf));
        Self {
            data_dir,
            pictures_dir,
        }
    }
}

/// Makes `models_dir` and `outputs_dir` absolute, as the module says.
pub fn make_absolute(resolved: &mut Resolved, cwd: &Path, platform: &PlatformFolders) {
    let home_for_defaults = if is_meant_for_folders(cwd) {
        None
    } else {
        Some(platform)
    };
    let file_dir = resolved
        .file
        .parent()
        .map_or_else(|| cwd.to_path_buf(), Path::to_path_buf);
    for key in ["models_dir", "outputs_dir"] {
        let source = resolved.source_of(key).cloned().unwrap_or(Source::Default);
        let slot = match key {
            "models_dir" => &mut resolved.settings.models_dir,
            _ => &mut resolved.settings.outputs_dir,
        };
        if slot.is_absolute() {
            continue;
        }
        *slot = match (&source, home_for_defaults) {
            (Source::Default, Some(platform)) if key == "models_dir" => {
                platform.data_dir.join("models")
            }
            (Source::Default, Some(platform)) => platform
                .pictures_dir
                .as_ref()
                .map_or_else(|| platform.data_dir.join("outputs"), |p| p.join("Easel")),
            (Source::File(_), _) => file_dir.join(&*slot),
            _ => cwd.join(&*slot),
        };
    }
}

/// Whether `cwd` is a folder Easel's `models` and `outputs` belong in: it already holds one
/// of them or is a checkout (`Cargo.toml`), and it can be written. `/`, system folders and
/// anything inside an app bundle never are.
pub fn is_meant_for_folders(cwd: &Path) -> bool {
    let inside_bundle = cwd
        .components()
        .any(|c| c.as_os_str().to_string_lossy().ends_with(".app"));
    if cwd.parent().is_none() || inside_bundle {
        return false;
    }
    let holds_them = ["models", "outputs", "Cargo.toml"]
        .iter()
        .any(|name| cwd.join(name).exists());
    holds_them && is_writable_folder(cwd)
}

/// Whether a file can be made in `dir` (made and removed at once).
pub fn is_writable_folder(dir: &Path) -> bool {
    dir.is_dir() && tempfile::tempfile_in(dir).is_ok()
}

/// Why `dir` cannot take Easel's files, if it cannot: created when missing, then written to.
pub fn unwritable_reason(dir: &Path) -> Option<String> {
    if let Err(e) = std::fs::create_dir_all(dir) {
        return Some(format!("{} cannot be created: {e}", dir.display()));
    }
    match tempfile::tempfile_in(dir) {
        Ok(_) => None,
        Err(e) => Some(format!("{} cannot be written: {e}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved_with(sources: &[(&'static str, Source)], file: &Path) -> Resolved {
        let mut all: Vec<(&'static str, Source)> = super::super::KEYS
            .iter()
            .map(|k| (*k, Source::Default))
            .collect();
        for (key, source) in sources {
            if let Some(slot) = all.iter_mut().find(|(k, _)| k == key) {
                slot.1 = source.clone();
            }
        }
        Resolved {
            settings: super::super::Settings::default(),
            sources: all,
            problems: Vec::new(),
            file: file.to_path_buf(),
        }
    }

    fn platform() -> PlatformFolders {
        PlatformFolders {
            data_dir: PathBuf::from("/home/ada/.local/share/easel"),
            pictures_dir: Some(PathBuf::from("/home/ada/Pictures")),
        }
    }

    #[test]
    fn an_app_started_in_the_root_folder_uses_the_platform_folders() {
        let mut resolved = resolved_with(&[], Path::new("/etc/easel.toml"));
        make_absolute(&mut resolved, Path::new("/"), &platform());
        assert_eq!(
            resolved.settings.models_dir,
            PathBuf::from("/home/ada/.local/share/easel/models")
        );
        assert_eq!(
            resolved.settings.outputs_dir,
            PathBuf::from("/home/ada/Pictures/Easel")
        );
        let mut without_pictures = platform();
        without_pictures.pictures_dir = None;
        let mut resolved = resolved_with(&[], Path::new("/etc/easel.toml"));
        make_absolute(
            &mut resolved,
            Path::new("/Applications/Easel.app/Contents/MacOS"),
            &without_pictures,
        );
        assert_eq!(
            resolved.settings.outputs_dir,
            PathBuf::from("/home/ada/.local/share/easel/outputs")
        );
    }

    #[test]
    fn a_checkout_keeps_its_own_folders_and_set_folders_are_taken_from_their_source(
    ) -> std::io::Result<()> {
        let checkout = tempfile::tempdir()?;
        std::fs::write(checkout.path().join("Cargo.toml"), "[package]\n")?;
        let mut resolved = resolved_with(&[], Path::new("/etc/easel.toml"));
        make_absolute(&mut resolved, checkout.path(), &platform());
        assert_eq!(resolved.settings.models_dir, checkout.path().join("models"));
        assert_eq!(
            resolved.settings.outputs_dir,
            checkout.path().join("outputs")
        );

        let mut resolved = resolved_with(
            &[
                ("models_dir", Source::File(PathBuf::from("/cfg/easel.toml"))),
                ("outputs_dir", Source::Flag),
            ],
            Path::new("/cfg/easel.toml"),
        );
        resolved.settings.models_dir = PathBuf::from("weights");
        resolved.settings.outputs_dir = PathBuf::from("art");
        make_absolute(&mut resolved, Path::new("/"), &platform());
        assert_eq!(resolved.settings.models_dir, PathBuf::from("/cfg/weights"));
        assert_eq!(resolved.settings.outputs_dir, PathBuf::from("/art"));
        Ok(())
    }

    #[test]
    fn an_unwritable_folder_is_named_with_its_reason() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x")?;
        let reason = unwritable_reason(&file.join("outputs")).unwrap_or_default();
        assert!(reason.contains("a-file/outputs"), "{reason}");
        assert_eq!(unwritable_reason(&dir.path().join("new/outputs")), None);
        Ok(())
    }
}
