//! One typed configuration, resolved from (highest first) command-line flags, `EASEL_*`
//! environment variables, a TOML file in the platform's config folder, and defaults; with
//! where each value came from, and every problem found on the way (a bad value falls back to
//! the next source down rather than stopping Easel).

mod file;
pub mod folders;
mod values;

use std::fmt;
use std::path::{Path, PathBuf};

pub use file::{config_path, write_key};
pub use values::{DtypeChoice, LogFormat, LogLevel, Residency, Settings, KEYS};

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Easel's default.
    Default,
    /// The settings file.
    File(PathBuf),
    /// An environment variable (its name).
    Env(String),
    /// A command-line flag.
    Flag,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => write!(f, "default"),
            Source::File(path) => write!(f, "file {}", path.display()),
            Source::Env(name) => write!(f, "env {name}"),
            Source::Flag => write!(f, "flag"),
        }
    }
}

/// Something wrong in the settings; the value it concerns fell back to the next source down.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} (from {origin}); using {fallback} instead")]
pub struct SettingsProblem {
    /// What is wrong, naming the key and value.
    pub message: String,
    /// Where the bad value came from.
    pub origin: Source,
    /// What is used instead.
    pub fallback: String,
}

/// The settings with the source of every value and the problems met.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// The values to use.
    pub settings: Settings,
    /// `(key, source)` for every key, in `KEYS` order.
    pub sources: Vec<(&'static str, Source)>,
    /// Problems, each already answered by a fallback.
    pub problems: Vec<SettingsProblem>,
    /// The settings file consulted.
    pub file: PathBuf,
}

impl Resolved {
    /// The source of `key`.
    pub fn source_of(&self, key: &str) -> Option<&Source> {
        self.sources.iter().find(|(k, _)| *k == key).map(|(_, s)| s)
    }
}

/// The environment variable of `key`: `EASEL_` and the key in capitals.
pub fn env_var_of(key: &str) -> String {
    format!("EASEL_{}", key.to_uppercase())
}

/// Resolves every key: defaults, then `file`, then the environment (`env` looks variables
/// up), then `flags` (`(key, value)` pairs) on top.
pub fn resolve(
    file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    flags: &[(String, String)],
) -> Resolved {
    let mut resolver = Resolver {
        settings: Settings::default(),
        sources: KEYS.iter().map(|k| (*k, Source::Default)).collect(),
        problems: Vec::new(),
    };
    let file_source = Source::File(file.to_path_buf());
    let (entries, file_problem) = file::read_entries(file);
    resolver.problems.extend(file_problem);
    for (key, value) in entries {
        match value {
            Ok(value) => resolver.apply(&key, &value, file_source.clone()),
            Err(why) => resolver.problems.push(SettingsProblem {
                message: format!("{key} has a value of the wrong kind: {why}"),
                origin: file_source.clone(),
                fallback: resolver.settings.get(&key),
            }),
        }
    }
    for key in KEYS {
        let mut names = vec![env_var_of(key)];
        if key == "log_level" {
            // The usual names for a log level, below Easel's own.
            names.insert(0, "RUST_LOG".to_string());
            names.insert(1, "EASEL_LOG".to_string());
        }
        for name in names {
            let Some(value) = env(&name).filter(|v| !v.is_empty()) else {
                continue;
            };
            // RUST_LOG often holds per-crate filters meant for other tools: use it only when
            // it is a plain level.
            if name == "RUST_LOG" && Settings::default().set(key, &value).is_err() {
                continue;
            }
            resolver.apply(key, &value, Source::Env(name));
        }
    }
    for (key, value) in flags {
        resolver.apply(key, value, Source::Flag);
    }
    Resolved {
        settings: resolver.settings,
        sources: resolver.sources,
        problems: resolver.problems,
        file: file.to_path_buf(),
    }
}

/// Settings being resolved, source by source.
struct Resolver {
    settings: Settings,
    sources: Vec<(&'static str, Source)>,
    problems: Vec<SettingsProblem>,
}

impl Resolver {
    /// Applies one value; a bad one is a problem and the value from below stays.
    fn apply(&mut self, key: &str, value: &str, source: Source) {
        let Some(known) = KEYS.iter().find(|k| **k == key) else {
            self.problems.push(SettingsProblem {
                message: format!("unknown key {key:?}; the keys are {}", KEYS.join(", ")),
                origin: source,
                fallback: "nothing (the key is ignored)".to_string(),
            });
            return;
        };
        match self.settings.set(known, value) {
            Ok(()) => {
                if let Some(slot) = self.sources.iter_mut().find(|(k, _)| k == known) {
                    slot.1 = source;
                }
            }
            Err(why) => self.problems.push(SettingsProblem {
                message: format!("{known} = {value:?} is not valid: {why}"),
                origin: source,
                fallback: self.settings.get(known),
            }),
        }
    }
}

/// The candle dtype a setting asks for (`None`: the device's default).
pub fn dtype_of(choice: DtypeChoice) -> Option<candle_core::DType> {
    match choice {
        DtypeChoice::Auto => None,
        DtypeChoice::F32 => Some(candle_core::DType::F32),
        DtypeChoice::F16 => Some(candle_core::DType::F16),
        DtypeChoice::Bf16 => Some(candle_core::DType::BF16),
    }
}

/// Resolves with the real environment and the config file `config_path` names, with the
/// models and outputs folders made absolute (see `folders`).
pub fn resolve_from_process(flags: &[(String, String)]) -> Resolved {
    let mut resolved = resolve(&config_path(), &|name| std::env::var(name).ok(), flags);
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    folders::make_absolute(
        &mut resolved,
        &cwd,
        &folders::PlatformFolders::of_this_user(&cwd),
    );
    resolved
}
