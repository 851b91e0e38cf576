//! The settings' keys, their types, defaults, and how each reads from and prints as text.

use std::path::PathBuf;

use crate::device::DeviceChoice;
use crate::schedulers::SamplerKind;

/// Every key, in the order `easel config` lists them.
pub const KEYS: [&str; 17] = [
    "models_dir",
    "outputs_dir",
    "device",
    "dtype",
    "residency",
    "idle_minutes",
    "memory_budget_gb",
    "low_memory",
    "default_model",
    "sampler",
    "steps",
    "guidance",
    "width",
    "height",
    "warm_up",
    "log_level",
    "log_format",
];

/// Weight precision asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtypeChoice {
    /// The device's best: f16 on GPUs, f32 on the CPU.
    Auto,
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    Bf16,
}

/// When loaded models are dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residency {
    /// Never, until asked.
    KeepLoaded,
    /// After every job.
    UnloadAfterJob,
    /// After `idle_minutes` without a job.
    UnloadWhenIdle,
    /// Keep the most recently used within `memory_budget_gb`.
    MemoryBudget,
}

/// How much the log says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// And warnings.
    Warn,
    /// And what happens (default).
    Info,
    /// And details.
    Debug,
    /// Everything.
    Trace,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// For people.
    Human,
    /// One JSON object a line.
    Json,
}

/// Every setting, typed.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Where models are found and downloaded.
    pub models_dir: PathBuf,
    /// Where results are saved.
    pub outputs_dir: PathBuf,
    /// The device.
    pub device: DeviceChoice,
    /// Weight precision.
    pub dtype: DtypeChoice,
    /// When models are dropped.
    pub residency: Residency,
    /// Idle minutes before `UnloadWhenIdle` unloads.
    pub idle_minutes: u32,
    /// Memory budget for `MemoryBudget`, in GB; `None` is no budget.
    pub memory_budget_gb: Option<f64>,
    /// Staged loading: text encoders dropped after encoding, the UNet before decoding.
    pub low_memory: bool,
    /// The model picked at start, by folder name.
    pub default_model: Option<String>,
    /// Default sampler.
    pub sampler: SamplerKind,
    /// Default steps.
    pub steps: usize,
    /// Default guidance scale.
    pub guidance: f64,
    /// Default width in pixels.
    pub width: u32,
    /// Default height in pixels.
    pub height: u32,
    /// Run one tiny step after a model loads, to compile device kernels early.
    pub warm_up: bool,
    /// Log level.
    pub log_level: LogLevel,
    /// Log format.
    pub log_format: LogFormat,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            models_dir: PathBuf::from("models"),
            outputs_dir: PathBuf::from("outputs"),
            device: DeviceChoice::Auto,
            dtype: DtypeChoice::Auto,
            residency: Residency::UnloadWhenIdle,
            idle_minutes: 10,
            memory_budget_gb: None,
            low_memory: false,
            default_model: None,
            sampler: SamplerKind::Euler,
            steps: 20,
            guidance: 7.5,
            width: 512,
            height: 512,
            warm_up: false,
            log_level: LogLevel::Info,
            log_format: LogFormat::Human,
        }
    }
}

/// Picks `text` among `(name, value)` pairs; the error lists the names.
fn one_of<T: Copy>(text: &str, choices: &[(&str, T)]) -> Result<T, String> {
    choices
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(text))
        .map(|(_, value)| *value)
        .ok_or_else(|| {
            let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
            format!("use one of {}", names.join(", "))
        })
}

fn name_of<T: PartialEq>(value: &T, choices: &[(&'static str, T)]) -> &'static str {
    choices
        .iter()
        .find(|(_, v)| v == value)
        .map_or("?", |(n, _)| *n)
}

const DTYPES: [(&str, DtypeChoice); 4] = [
    ("auto", DtypeChoice::Auto),
    ("f32", DtypeChoice::F32),
    ("f16", DtypeChoice::F16),
    ("bf16", DtypeChoice::Bf16),
];
const RESIDENCIES: [(&str, Residency); 4] = [
    ("keep_loaded", Residency::KeepLoaded),
    ("unload_after_job", Residency::UnloadAfterJob),
    ("unload_when_idle", Residency::UnloadWhenIdle),
    ("memory_budget", Residency::MemoryBudget),
];
const LOG_LEVELS: [(&str, LogLevel); 5] = [
    ("error", LogLevel::Error),
    ("warn", LogLevel::Warn),
    ("info", LogLevel::Info),
    ("debug", LogLevel::Debug),
    ("trace", LogLevel::Trace),
];
const LOG_FORMATS: [(&str, LogFormat); 2] =
    [("human", LogFormat::Human), ("json", LogFormat::Json)];

fn number<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, String> {
    text.trim().parse().map_err(|_| format!("expected {what}"))
}

fn boolean(text: &str) -> Result<bool, String> {
    match text {
        "true" | "on" | "1" => Ok(true),
        "false" | "off" | "0" => Ok(false),
        _ => Err("expected true or false".to_string()),
    }
}

fn size_px(text: &str) -> Result<u32, String> {
    let px: u32 = number(text, "a whole number of pixels")?;
    if !px.is_multiple_of(8) || !(64..=4096).contains(&px) {
        return Err("expected a multiple of 8 from 64 to 4096".to_string());
    }
    Ok(px)
}

impl Settings {
    /// The engine's residency policy for these settings. A memory budget left unset is half
    /// the machine's memory.
    pub fn residency_policy(&self) -> crate::engine::ResidencyPolicy {
        use crate::engine::ResidencyPolicy;
        match self.residency {
            Residency::MemoryBudget => {
                let budget_bytes =
                    self.memory_budget_gb
                        .map(|gb| (gb * 1e9) as u64)
                        .or_else(|| {
                            crate::engine::memory::system_memory_bytes().map(|(total, _)| total / 2)
                        });
                match budget_bytes {
                    Some(bytes) => ResidencyPolicy::MemoryBudget(bytes),
                    None => ResidencyPolicy::KeepLoaded,
                }
            }
            Residency::KeepLoaded => ResidencyPolicy::KeepLoaded,
            Residency::UnloadAfterJob => ResidencyPolicy::UnloadAfterJob,
            Residency::UnloadWhenIdle => ResidencyPolicy::UnloadWhenIdle(
                std::time::Duration::from_secs(u64::from(self.idle_minutes) * 60),
            ),
        }
    }

    /// Sets `key` from its text form; the error says what would be valid.
    pub fn set(&mut self, key: &str, text: &str) -> Result<(), String> {
        let text = text.trim();
        match key {
            "models_dir" => self.models_dir = PathBuf::from(text),
            "outputs_dir" => self.outputs_dir = PathBuf::from(text),
            "device" => self.device = DeviceChoice::parse(text)?,
            "dtype" => self.dtype = one_of(text, &DTYPES)?,
            "residency" => self.residency = one_of(text, &RESIDENCIES)?,
            "idle_minutes" => {
                self.idle_minutes = number(text, "a whole number of minutes, 0 or more")?
            }
            "memory_budget_gb" => {
                self.memory_budget_gb = if text == "none" {
                    None
                } else {
                    let gb: f64 = number(text, "a number of GB or \"none\"")?;
                    if !(gb.is_finite() && gb > 0.0) {
                        return Err("expected a number of GB above 0, or \"none\"".to_string());
                    }
                    Some(gb)
                }
            }
            "default_model" => {
                self.default_model = (!text.is_empty() && text != "none").then(|| text.to_string())
            }
            "sampler" => {
                self.sampler = SamplerKind::from_name(text).ok_or_else(|| {
                    let names: Vec<&str> = SamplerKind::ALL.iter().map(|k| k.name()).collect();
                    format!("use one of {}", names.join(", "))
                })?
            }
            "steps" => {
                let steps: usize = number(text, "a whole number of steps")?;
                if !(1..=1000).contains(&steps) {
                    return Err("expected 1 to 1000 steps".to_string());
                }
                self.steps = steps;
            }
            "guidance" => {
                let guidance: f64 = number(text, "a number")?;
                if !(guidance.is_finite() && (0.0..=100.0).contains(&guidance)) {
                    return Err("expected a number from 0 to 100".to_string());
                }
                self.guidance = guidance;
            }
            "width" => self.width = size_px(text)?,
            "height" => self.height = size_px(text)?,
            "warm_up" => self.warm_up = boolean(text)?,
            "low_memory" => self.low_memory = boolean(text)?,
            "log_level" => self.log_level = one_of(text, &LOG_LEVELS)?,
            "log_format" => self.log_format = one_of(text, &LOG_FORMATS)?,
            other => return Err(format!("unknown key {other:?}")),
        }
        Ok(())
    }

    /// The text form of `key`'s value (what `set` reads back).
    pub fn get(&self, key: &str) -> String {
        match key {
            "models_dir" => self.models_dir.display().to_string(),
            "outputs_dir" => self.outputs_dir.display().to_string(),
            "device" => self.device.to_string(),
            "dtype" => name_of(&self.dtype, &DTYPES).to_string(),
            "residency" => name_of(&self.residency, &RESIDENCIES).to_string(),
            "idle_minutes" => self.idle_minutes.to_string(),
            "memory_budget_gb" => self
                .memory_budget_gb
                .map_or("none".to_string(), |gb| gb.to_string()),
            "default_model" => self.default_model.clone().unwrap_or("none".to_string()),
            "sampler" => self.sampler.name().to_string(),
            "steps" => self.steps.to_string(),
            "guidance" => self.guidance.to_string(),
            "width" => self.width.to_string(),
            "height" => self.height.to_string(),
            "warm_up" => self.warm_up.to_string(),
            "low_memory" => self.low_memory.to_string(),
            "log_level" => name_of(&self.log_level, &LOG_LEVELS).to_string(),
            "log_format" => name_of(&self.log_format, &LOG_FORMATS).to_string(),
            _ => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_reads_back_what_it_prints() {
        let defaults = Settings::default();
        let mut copy = Settings::default();
        for key in KEYS {
            copy.set(key, &defaults.get(key))
                .unwrap_or_else(|e| panic!("{key}: {e}"));
        }
        assert_eq!(copy, defaults);
    }
}
