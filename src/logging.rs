//! Logs: `tracing` events to stderr and to `easel.log` in the data folder, human-readable or as
//! JSON lines (setting `log_format`), at the level of setting `log_level`. The file is kept to a
//! bounded size: at start, a log past `MAX_LOG_BYTES` becomes `easel.log.1` (the one before is
//! dropped).

use std::path::Path;
use std::sync::{Arc, Mutex};

use easel_engine::settings::{LogFormat, LogLevel, Settings};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;

/// Size past which the log file is rotated at start.
const MAX_LOG_BYTES: u64 = 8 * 1024 * 1024;

/// A log file shared by the writer handles `tracing` asks for.
#[derive(Clone)]
struct LogFile(Arc<Mutex<std::fs::File>>);

impl std::io::Write for LogFile {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match self.0.lock() {
            Ok(mut file) => file.write(bytes),
            // A writer that panicked mid-line leaves the file usable; keep logging.
            Err(poisoned) => poisoned.into_inner().write(bytes),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogFile {
    type Writer = LogFile;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

fn level_filter(level: LogLevel) -> tracing_subscriber::filter::LevelFilter {
    use tracing_subscriber::filter::LevelFilter;
    match level {
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    }
}

/// Opens `easel.log` in `data_dir` for appending, rotating it first when too big.
fn open_log_file(data_dir: &Path) -> std::io::Result<LogFile> {
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join("easel.log");
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > MAX_LOG_BYTES) {
        std::fs::rename(&path, data_dir.join("easel.log.1"))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    Ok(LogFile(Arc::new(Mutex::new(file))))
}

/// Starts logging for the process. A log file that can't be opened is reported on stderr and
/// logging goes on there alone.
pub fn init(settings: &Settings, data_dir: &Path) {
    let level = level_filter(settings.log_level);
    let file = match open_log_file(data_dir) {
        Ok(file) => Some(file),
        Err(e) => {
            crate::console::note!(
                "easel: no log file in {} ({e}); logging to stderr only",
                data_dir.display()
            );
            None
        }
    };
    // Easel's own events at the chosen level; the libraries' (winit, wgpu) only when they
    // warn, unless the chosen level is quieter still.
    let filter = tracing_subscriber::filter::Targets::new()
        .with_default(level.min(tracing_subscriber::filter::LevelFilter::WARN))
        .with_target("easel", level);
    let registry = tracing_subscriber::registry().with(filter);
    let result = match settings.log_format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .with(file.map(|f| tracing_subscriber::fmt::layer().json().with_writer(f)))
            .try_init(),
        LogFormat::Human => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .with(file.map(|f| {
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(f)
            }))
            .try_init(),
    };
    if let Err(e) = result {
        crate::console::note!("easel: logging could not start: {e}");
    }
}
