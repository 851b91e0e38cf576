//! The settings file: TOML in the platform's config folder (or `EASEL_CONFIG`), read as
//! `key = value` entries and written one key at a time (the window saves each change at once).

use std::path::{Path, PathBuf};

use super::values::{Settings, KEYS};
use super::{SettingsProblem, Source};

/// The settings file: `EASEL_CONFIG`, else `easel.toml` in the platform's config folder.
pub fn config_path() -> PathBuf {
    if let Some(path) = std::env::var_os("EASEL_CONFIG") {
        return PathBuf::from(path);
    }
    directories::ProjectDirs::from("", "", "Easel")
        .map(|dirs| dirs.config_dir().join("easel.toml"))
        .unwrap_or_else(|| PathBuf::from("easel.toml"))
}

/// One `key = value` of the file, as text, or why its value is of no usable kind.
pub(super) type FileEntry = (String, Result<String, String>);

/// The file's entries as text (`Err` for a value of a kind no key takes), and the problem
/// that made the whole file unusable, if any. A missing file is no problem.
pub(super) fn read_entries(path: &Path) -> (Vec<FileEntry>, Option<SettingsProblem>) {
    let unusable = |message: String| SettingsProblem {
        message,
        origin: Source::File(path.to_path_buf()),
        fallback: "the defaults for every key the file sets".to_string(),
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Vec::new(), None),
        Err(e) => {
            return (
                Vec::new(),
                Some(unusable(format!("could not read the settings: {e}"))),
            )
        }
    };
    let table: toml::Table = match text.parse() {
        Ok(table) => table,
        Err(e) => {
            let message = format!("the settings file is not valid TOML: {}", e.message());
            return (Vec::new(), Some(unusable(message)));
        }
    };
    let entries = table
        .into_iter()
        .map(|(key, value)| {
            let text = match value {
                toml::Value::String(s) => Ok(s),
                toml::Value::Integer(i) => Ok(i.to_string()),
                toml::Value::Float(f) => Ok(f.to_string()),
                toml::Value::Boolean(b) => Ok(b.to_string()),
                other => Err(format!(
                    "{} is not a string, number or boolean",
                    other.type_str()
                )),
            };
            (key, text)
        })
        .collect();
    (entries, None)
}

/// Sets `key` to `value` in the file at `path` (created if missing), after checking the value;
/// other keys are kept. Written beside and renamed, so a crash leaves the old file whole.
pub fn write_key(path: &Path, key: &str, value: &str) -> Result<(), String> {
    if !KEYS.contains(&key) {
        return Err(format!(
            "unknown key {key:?}; the keys are {}",
            KEYS.join(", ")
        ));
    }
    let mut check = Settings::default();
    check
        .set(key, value)
        .map_err(|why| format!("{key} = {value:?} is not valid: {why}"))?;
    let fail = |e: &dyn std::fmt::Display| format!("could not save {}: {e}", path.display());
    let mut document: toml_edit::DocumentMut = match std::fs::read_to_string(path) {
        Ok(text) => text.parse().map_err(|e| fail(&e))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => toml_edit::DocumentMut::new(),
        Err(e) => return Err(fail(&e)),
    };
    let typed = match check.get(key) {
        text if text.parse::<i64>().is_ok() && key != "default_model" => {
            toml_edit::value(text.parse::<i64>().map_err(|e| fail(&e))?)
        }
        text if text.parse::<f64>().is_ok() && key != "default_model" => {
            toml_edit::value(text.parse::<f64>().map_err(|e| fail(&e))?)
        }
        text if text == "true" || text == "false" => toml_edit::value(text == "true"),
        text => toml_edit::value(text),
    };
    // Only the value changes: the key's place, its comments and every other line stay.
    match document
        .get_mut(key)
        .and_then(toml_edit::Item::as_value_mut)
    {
        Some(existing) => {
            let decor = existing.decor().clone();
            if let Ok(mut value) = typed.into_value() {
                *value.decor_mut() = decor;
                *existing = value;
            }
        }
        None => {
            document.insert(key, typed);
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
    }
    crate::atomic_file::write_bytes(path, document.to_string().as_bytes()).map_err(|e| fail(&e))
}
